//! What `backup.health()` judges, read in one statement from the catalog, `pg_stat_archiver`
//! and `pg_wal/archive_status` (`pg_ls_archive_statusdir()`: superuser or `pg_monitor`).

use backup_core::health::Observations;
use chrono::{DateTime, Utc};
use pgrx::prelude::*;
use pgrx::JsonB;
use serde::Deserialize;

use super::CatalogResult;

/// The newest completed backup of a kind (or of any kind), for the age checks.
#[derive(Clone, Debug, Deserialize)]
pub struct Newest {
    pub id: String,
    pub start_time: DateTime<Utc>,
}

/// The observations the catalog and the server hold (the scheduler's, the repositories' and
/// the jobs' freshness are the caller's), and the newest full and newest backup of any type.
pub fn observations() -> CatalogResult<(Observations, Option<Newest>, Option<Newest>)> {
    let json = Spi::get_one::<JsonB>(
        r#"SELECT jsonb_build_object(
             'archive_mode', current_setting('archive_mode'),
             'last_archived_wal', a.last_archived_wal, 'last_archived_time', a.last_archived_time,
             'last_failed_wal', a.last_failed_wal, 'last_failed_time', a.last_failed_time,
             'ready_count', r.n, 'oldest_ready', r.oldest,
             'last_backup', (SELECT jsonb_build_object('id', id, 'status', status, 'error', error)
                               FROM backup.backups ORDER BY id DESC LIMIT 1),
             'last_verified', (SELECT jsonb_build_object('id', id, 'ok', verify_ok, 'at', verified_at)
                                 FROM backup.backups WHERE verified_at IS NOT NULL AND verify_ok IS NOT NULL
                                 ORDER BY verified_at DESC LIMIT 1),
             'last_completed', (SELECT jsonb_build_object('id', b.id, 'kind', b.type, 'duration_s', extract(epoch FROM b.duration),
                                  'previous_s', coalesce((SELECT jsonb_agg(extract(epoch FROM p.duration) ORDER BY p.id DESC)
                                                            FROM (SELECT id, duration FROM backup.backups p
                                                                   WHERE p.status = 'completed' AND p.type = b.type AND p.id < b.id
                                                                     AND p.duration IS NOT NULL ORDER BY p.id DESC LIMIT 10) p), '[]'))
                                  FROM backup.backups b WHERE b.status = 'completed' AND b.duration IS NOT NULL
                                  ORDER BY b.id DESC LIMIT 1),
             'missed_runs', coalesce((SELECT jsonb_agg(jsonb_build_object('job', job, 'scheduled_for', scheduled_for,
                                                                          'status', status, 'message', message))
                                        FROM backup.job_runs r WHERE status = 'skipped' AND scheduled_for > now() - interval '24 hours'
                                         -- a later success of the job makes up for it
                                         AND NOT EXISTS (SELECT 1 FROM backup.job_runs s WHERE s.job = r.job AND s.status = 'succeeded'
                                                           AND s.scheduled_for > r.scheduled_for)), '[]'),
             'last_restore_test', (SELECT jsonb_build_object('id', id, 'backup_id', backup_id, 'status', status, 'problems', problems,
                                                              'rto_seconds', rto_seconds, 'finished_at', finished_at)
                                     FROM backup.restore_tests ORDER BY id DESC LIMIT 1),
             'newest_full', (SELECT jsonb_build_object('id', id, 'start_time', start_time) FROM backup.backups
                               WHERE status = 'completed' AND type = 'full' ORDER BY id DESC LIMIT 1),
             'newest_any', (SELECT jsonb_build_object('id', id, 'start_time', start_time) FROM backup.backups
                              WHERE status = 'completed' ORDER BY id DESC LIMIT 1),
             'scheduler_enabled', false, 'scheduler_running', false)
           FROM pg_stat_archiver a,
                LATERAL (SELECT count(*) AS n, min(modification) AS oldest
                           FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready') r"#,
    )?
    .map(|j| j.0)
    .unwrap_or_default();
    let newest = |key: &str| json.get(key).and_then(|v| serde_json::from_value::<Newest>(v.clone()).ok());
    let (full, any) = (newest("newest_full"), newest("newest_any"));
    // Built by the statement above: a mismatch is a bug in it.
    let observations = serde_json::from_value(json).unwrap_or_else(|e| panic!("health observations do not match their type: {e}"));
    Ok((observations, full, any))
}

/// A completed backup's WAL needs, for telling WAL gaps from what retention removed.
#[derive(Clone, Debug, Deserialize)]
pub struct BackupLsns {
    pub timeline: u32,
    pub start_lsn: String,
    pub stop_lsn: String,
    pub repos: Vec<String>,
}

pub fn completed_backup_lsns() -> CatalogResult<Vec<BackupLsns>> {
    let json = Spi::get_one::<JsonB>(
        "SELECT coalesce(jsonb_agg(jsonb_build_object('timeline', timeline, 'start_lsn', start_lsn::text, 'stop_lsn', stop_lsn::text, 'repos', repos)), '[]')
           FROM backup.backups WHERE status = 'completed' AND timeline IS NOT NULL AND start_lsn IS NOT NULL AND stop_lsn IS NOT NULL",
    )?;
    Ok(json.map(|j| serde_json::from_value(j.0).unwrap_or_else(|e| panic!("backup.backups LSNs do not match their type: {e}"))).unwrap_or_default())
}
