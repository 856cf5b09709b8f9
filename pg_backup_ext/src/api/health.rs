//! `backup.health()`: one row per check, the overall status first (see [`crate::health`]).

use pgrx::prelude::*;

use super::sql;

/// The health checks: name, status (ok, warning, critical), the value judged, the threshold
/// it was held against, and what to do. Thresholds: the `backup.health_*` settings.
#[pg_extern(volatile)]
fn health() -> TableIterator<
    'static,
    (name!(name, String), name!(status, String), name!(value, Option<String>), name!(threshold, Option<String>), name!(message, String)),
> {
    let checks = sql(crate::health::checks());
    TableIterator::new(checks.into_iter().map(|c| (c.name, c.status.as_str().to_string(), c.value, c.threshold, c.message)))
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    /// The test cluster archives nothing and names a configuration file that does not exist:
    /// both are critical, named, and the overall row comes first with the worst status.
    #[pg_test]
    fn health_reports_archiving_off_and_a_missing_configuration() {
        let rows = Spi::get_one::<String>("SELECT string_agg(name || '=' || status, ',') FROM backup.health()").unwrap().unwrap();
        assert!(rows.starts_with("overall=critical,"), "{rows}");
        assert!(rows.contains("archiving=critical"), "{rows}");
        assert!(rows.contains("configuration=critical"), "{rows}");
        let message = Spi::get_one::<String>("SELECT message FROM backup.health() WHERE name = 'configuration'").unwrap().unwrap();
        assert!(message.contains("/nonexistent/pg_backup_ext.conf"), "{message}");
    }
}
