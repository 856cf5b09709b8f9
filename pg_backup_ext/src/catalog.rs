//! Writing the catalog table `backup.backups` from what the repository says.

use backup_core::backup::Manifest;
use pgrx::prelude::*;

/// Record `m` as a completed backup, inserting or updating its row. Used when a worker
/// finishes and when `backup.resync()` rebuilds the catalog from the repository.
pub fn upsert_completed(m: &Manifest) -> Result<(), pgrx::spi::Error> {
    Spi::run_with_args(
        "INSERT INTO backup.backups (id, type, status, start_lsn, stop_lsn, timeline, start_time, stop_time, size_bytes,
                                     stored_bytes, file_count, duration, page_checksum_failures)
         VALUES ($1, $2, 'completed', $3::pg_lsn, $4::pg_lsn, $5, $6::timestamptz, $7::timestamptz, $8, $9, $10,
                 ($11 || ' milliseconds')::interval, $12)
         ON CONFLICT (id) DO UPDATE SET status = 'completed', error = NULL, phase = NULL, start_lsn = excluded.start_lsn,
             stop_lsn = excluded.stop_lsn, timeline = excluded.timeline, start_time = excluded.start_time,
             stop_time = excluded.stop_time, size_bytes = excluded.size_bytes, stored_bytes = excluded.stored_bytes,
             file_count = excluded.file_count, duration = excluded.duration,
             page_checksum_failures = excluded.page_checksum_failures,
             bytes_done = excluded.size_bytes, bytes_total = excluded.size_bytes, progress_at = now()",
        &[
            m.id.to_string().into(),
            m.kind.to_string().into(),
            m.start_lsn.to_string().into(),
            m.stop_lsn.to_string().into(),
            (m.timeline.0 as i32).into(),
            m.start_time.to_rfc3339().into(),
            m.stop_time.to_rfc3339().into(),
            (m.stats.bytes as i64).into(),
            (m.stats.stored_bytes as i64).into(),
            (m.stats.files as i64).into(),
            m.stats.duration_ms.to_string().into(),
            (m.page_checksum_failures.len() as i32).into(),
        ],
    )
}
