//! `backup.stats(period)`: the product's `/backup/stats`, as one JSON document (see
//! [`crate::stats`]); `backup.stats_daily(period)` (SQL, `sql/finalize.sql`) is its daily
//! series as rows.

use pgrx::prelude::*;
use pgrx::JsonB;

use super::sql;

/// Backups per type over `period` (completed, failed, success rate, sizes, stored bytes,
/// compression ratio, size growth per day, durations and their trend), a series per day
/// (backups, sizes, durations, WAL files and bytes archived), each repository's storage used
/// and free space, the archiver's counters, the current RPO and its bound (archive_timeout),
/// and the RTO (null until restore tests measure it, with the reason).
#[pg_extern(volatile)]
fn stats(period: default!(pgrx::datum::Interval, "'30 days'")) -> JsonB {
    JsonB(sql(crate::stats::stats(period)))
}
