//! `backup.test_alert()`; the alerts themselves are the tables `backup.alerts` and
//! `backup.alert_deliveries`, written by the alert worker ([`crate::alerter`]).

use pgrx::prelude::*;

/// Send a test notification now through `channel` (email, slack, sms, webhook; default: every
/// configured channel), bypassing routing by severity. One row per channel: delivered or why
/// not. Recorded in `backup.alert_deliveries` (event `test`).
#[pg_extern(volatile)]
fn test_alert(
    channel: default!(Option<&str>, "NULL"),
) -> TableIterator<'static, (name!(channel, String), name!(delivered, bool), name!(message, String))> {
    let rows = crate::alerter::send_test(channel).unwrap_or_else(|e| error!("pg_backup_ext: {e}"));
    TableIterator::new(rows)
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    /// Without a configuration there is no channel: the error names the file.
    #[pg_test(error = "pg_backup_ext: cannot read configuration file /nonexistent/pg_backup_ext.conf: No such file or directory (os error 2)")]
    fn test_alert_without_a_configuration_names_the_file() {
        Spi::run("SELECT * FROM backup.test_alert()").unwrap();
    }

    /// Deliveries are constrained to the known channels and events.
    #[pg_test(error = "new row for relation \"alert_deliveries\" violates check constraint \"alert_deliveries_channel_check\"")]
    fn a_delivery_to_an_unknown_channel_is_refused() {
        Spi::run("INSERT INTO backup.alert_deliveries (event, channel, severity, summary, message) VALUES ('test', 'pager', 'warning', 's', 'm')").unwrap();
    }
}
