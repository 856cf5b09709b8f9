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
