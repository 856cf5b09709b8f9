//! What `backup.stats()` reads from the catalog and the server, in one statement: counts and
//! rates per backup type, sizes, compression, duration trends, a series per day, the archiver's
//! counters and the current RPO.

use pgrx::prelude::*;
use pgrx::JsonB;

use super::CatalogResult;

/// The catalog's part of `backup.stats(period)`, as JSON (see the function's documentation).
pub fn stats(period: pgrx::datum::Interval) -> CatalogResult<serde_json::Value> {
    Ok(Spi::get_one_with_args::<JsonB>(
        r#"WITH b AS (SELECT *, extract(epoch FROM duration)::float8 AS duration_s, extract(epoch FROM start_time)::float8 AS t
                       FROM backup.backups WHERE start_time >= now() - $1::interval),
           kinds AS (
             SELECT type AS kind,
                    count(*) FILTER (WHERE status = 'completed') AS completed,
                    count(*) FILTER (WHERE status = 'failed') AS failed,
                    count(*) FILTER (WHERE status = 'running') AS running,
                    round(count(*) FILTER (WHERE status = 'completed')::numeric
                          / nullif(count(*) FILTER (WHERE status IN ('completed', 'failed')), 0), 4) AS success_rate,
                    sum(size_bytes) FILTER (WHERE status = 'completed') AS size_bytes,
                    sum(stored_bytes) FILTER (WHERE status = 'completed') AS stored_bytes,
                    round((sum(size_bytes) FILTER (WHERE status = 'completed'))::numeric
                          / nullif(sum(stored_bytes) FILTER (WHERE status = 'completed'), 0), 2) AS compression_ratio,
                    (array_agg(size_bytes ORDER BY start_time DESC) FILTER (WHERE status = 'completed'))[1] AS last_size_bytes,
                    (array_agg(stored_bytes ORDER BY start_time DESC) FILTER (WHERE status = 'completed'))[1] AS last_stored_bytes,
                    -- bytes per day a backup of this type grows by (least squares over the period;
                    -- null until its backups span a day, where a slope would be noise)
                    CASE WHEN max(t) FILTER (WHERE status = 'completed') - min(t) FILTER (WHERE status = 'completed') >= 86400
                         THEN round((regr_slope(size_bytes, t) FILTER (WHERE status = 'completed') * 86400)::numeric) END AS size_growth_bytes_per_day,
                    round(avg(duration_s) FILTER (WHERE status = 'completed')::numeric, 3) AS avg_duration_s,
                    round((percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_s) FILTER (WHERE status = 'completed'))::numeric, 3) AS median_duration_s,
                    round(((array_agg(duration_s ORDER BY start_time DESC) FILTER (WHERE status = 'completed'))[1])::numeric, 3) AS last_duration_s,
                    CASE WHEN max(t) FILTER (WHERE status = 'completed') - min(t) FILTER (WHERE status = 'completed') >= 86400
                         THEN round((regr_slope(duration_s, t) FILTER (WHERE status = 'completed') * 86400)::numeric, 3) END AS duration_trend_s_per_day
               FROM b GROUP BY type),
           days AS (
             SELECT (d AT TIME ZONE 'UTC')::date AS day,
                    count(b.id) FILTER (WHERE b.status = 'completed') AS completed,
                    count(b.id) FILTER (WHERE b.status = 'failed') AS failed,
                    coalesce(sum(b.size_bytes) FILTER (WHERE b.status = 'completed'), 0) AS size_bytes,
                    coalesce(sum(b.stored_bytes) FILTER (WHERE b.status = 'completed'), 0) AS stored_bytes,
                    round(sum(b.duration_s) FILTER (WHERE b.status = 'completed')::numeric, 3) AS duration_s
               FROM generate_series(date_trunc('day', now() - $1::interval, 'UTC'), date_trunc('day', now(), 'UTC'), interval '1 day') d
               LEFT JOIN b ON date_trunc('day', b.start_time, 'UTC') = d
              GROUP BY d)
         SELECT jsonb_build_object(
             'period', $1::interval::text,
             'from', now() - $1::interval,
             'to', now(),
             'backups', (SELECT coalesce(jsonb_agg(to_jsonb(k) ORDER BY k.kind), '[]') FROM kinds k),
             'total', (SELECT jsonb_build_object('completed', count(*) FILTER (WHERE status = 'completed'), 'failed', count(*) FILTER (WHERE status = 'failed'),
                                                 'success_rate', round(count(*) FILTER (WHERE status = 'completed')::numeric
                                                                       / nullif(count(*) FILTER (WHERE status IN ('completed', 'failed')), 0), 4))
                         FROM b),
             'daily', (SELECT jsonb_agg(to_jsonb(d) ORDER BY d.day) FROM days d),
             'wal', (SELECT jsonb_build_object('archived_count', a.archived_count, 'failed_count', a.failed_count,
                                               'last_archived_wal', a.last_archived_wal, 'last_archived_time', a.last_archived_time,
                                               'last_failed_wal', a.last_failed_wal, 'last_failed_time', a.last_failed_time,
                                               'stats_reset', a.stats_reset,
                                               'segment_size', pg_size_bytes(current_setting('wal_segment_size')))
                       FROM pg_stat_archiver a),
             'rpo', (SELECT jsonb_build_object(
                        'seconds', round(extract(epoch FROM now() - a.last_archived_time)::numeric, 3),
                        'last_archived_wal', a.last_archived_wal,
                        'bound_seconds', nullif(extract(epoch FROM current_setting('archive_timeout')::interval)::bigint, 0),
                        'note', CASE WHEN a.last_archived_time IS NULL THEN 'no WAL archived yet'
                                     WHEN current_setting('archive_timeout')::interval = '0' THEN 'archive_timeout is 0: a quiet server may wait long for its segment to fill; set archive_timeout to bound the RPO'
                                     ELSE 'writes are archived at most archive_timeout after they happen' END)
                       FROM pg_stat_archiver a))"#,
        &[period.into()],
    )?
    .map(|j| j.0)
    .unwrap_or_default())
}

/// RTO as the newest passed restore test measured it, by phase; None before any.
pub fn rto() -> CatalogResult<Option<serde_json::Value>> {
    Ok(Spi::get_one::<JsonB>(
        "SELECT (SELECT jsonb_build_object('seconds', round(rto_seconds::numeric, 3), 'restore_seconds', round(restore_seconds::numeric, 3),
                                   'recovery_seconds', round(recovery_seconds::numeric, 3), 'check_seconds', round(check_seconds::numeric, 3),
                                   'measured_at', finished_at, 'restore_test', id, 'backup_id', backup_id)
           FROM backup.restore_tests WHERE status = 'passed' ORDER BY id DESC LIMIT 1)",
    )?
    .map(|j| j.0))
}
