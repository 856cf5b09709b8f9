//! What `/metrics` and the status page show, read in one statement: the health checks, the
//! archiver, the last 30 days of backups, the counts per type and status, the scheduler's jobs
//! and the alerts firing. The repositories' usage is the caller's (it lists the stores).

use pgrx::prelude::*;
use pgrx::JsonB;

use super::CatalogResult;

/// A [`backup_core::monitor::Snapshot`] as JSON, without its repositories; `cluster` names the
/// cluster.
pub fn snapshot(cluster: &str) -> CatalogResult<serde_json::Value> {
    Ok(Spi::get_one_with_args::<JsonB>(
        r#"SELECT jsonb_build_object(
             'generated_at', now(),
             'cluster', $1,
             'checks', (SELECT coalesce(jsonb_agg(jsonb_build_object('name', name, 'status', status, 'value', value,
                                                                     'threshold', threshold, 'message', message)), '[]')
                          FROM backup.health()),
             'rpo_seconds', extract(epoch FROM now() - a.last_archived_time)::float8,
             'archive_timeout_s', extract(epoch FROM current_setting('archive_timeout')::interval)::bigint,
             'wal', jsonb_build_object('archived_count', a.archived_count, 'failed_count', a.failed_count,
                                       'segment_size', pg_size_bytes(current_setting('wal_segment_size')),
                                       'ready_count', (SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'),
                                       'last_archived_time', a.last_archived_time, 'last_failed_time', a.last_failed_time),
             'backups', (SELECT coalesce(jsonb_agg(jsonb_build_object('id', id, 'kind', type, 'status', status, 'start_time', start_time,
                                                                      'stop_time', stop_time, 'duration_s', extract(epoch FROM duration)::float8,
                                                                      'size_bytes', size_bytes, 'stored_bytes', stored_bytes, 'error', error)
                                               ORDER BY id), '[]')
                           FROM backup.backups WHERE start_time > now() - interval '30 days'),
             'counts', (SELECT coalesce(jsonb_agg(jsonb_build_object('kind', type, 'status', status, 'count', n)), '[]')
                          FROM (SELECT type, status, count(*) AS n FROM backup.backups GROUP BY type, status) c),
             'jobs', (SELECT coalesce(jsonb_agg(jsonb_build_object('name', job, 'kind', kind, 'enabled', enabled, 'next_run', next_run,
                                                                   'next_run_local', next_run_local, 'last_status', last_status,
                                                                   'last_run', last_finished, 'late', late) ORDER BY next_run NULLS LAST), '[]')
                        FROM backup.scheduler_status()),
             'alerts_firing', (SELECT count(*) FROM backup.alerts WHERE status = 'firing'),
             'repositories', '[]'::jsonb)
           FROM pg_stat_archiver a"#,
        &[cluster.into()],
    )?
    .map(|j| j.0)
    .unwrap_or_default())
}
