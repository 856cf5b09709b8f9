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

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    /// With no backup and no readable configuration: counts of zero, a daily row per day of
    /// the period, the configuration's error in place of the repositories, RTO null with a
    /// reason.
    #[pg_test]
    fn stats_of_an_empty_catalog() {
        let days = Spi::get_one::<i64>("SELECT jsonb_array_length(backup.stats('6 days')->'daily')::bigint").unwrap().unwrap();
        assert!(days == 7 || days == 8, "{days}");
        let total = Spi::get_one::<i64>("SELECT (backup.stats()->'total'->>'completed')::bigint").unwrap().unwrap();
        assert_eq!(total, 0);
        let repo_error = Spi::get_one::<String>("SELECT backup.stats()->'repositories'->0->>'error'").unwrap().unwrap();
        assert!(repo_error.contains("/nonexistent/pg_backup_ext.conf"), "{repo_error}");
        let rto = Spi::get_one::<bool>("SELECT backup.stats()->'rto'->'seconds' = 'null'::jsonb").unwrap().unwrap();
        assert!(rto);
        let rows = Spi::get_one::<i64>("SELECT count(*) FROM backup.stats_daily('2 days')").unwrap().unwrap();
        assert!(rows == 3 || rows == 4, "{rows}");
    }
}
