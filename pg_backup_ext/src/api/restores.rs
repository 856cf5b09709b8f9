//! Restores from SQL: `backup.restore()` (a scratch instance) and `backup.restore_table()` (a
//! table's rows back into the live database), SQL wrappers in `sql/finalize.sql` over the
//! functions here; `backup.restore_stop()`. Where each stands is `backup.restores`. The work
//! is [`crate::restore_worker`]'s.

use backup_core::pg::backup::inventory::RecoveryTarget;
use pgrx::prelude::*;

use crate::restore_worker::{self, Request, TableMode, TableRequest};

/// At most one target; time as `2024-01-15 14:30:00.000000+00:00` (UTC: RFC 3339 that
/// `recovery_target_time` also reads).
fn target(time: Option<&str>, lsn: Option<&str>, xid: Option<&str>, name: Option<&str>, immediate: bool) -> RecoveryTarget {
    let given = [time.is_some(), lsn.is_some(), xid.is_some(), name.is_some(), immediate].iter().filter(|g| **g).count();
    if given > 1 {
        error!("give at most one of target_time, target_lsn, target_xid, target_name, target_immediate");
    }
    if let Some(t) = time {
        let at = chrono::DateTime::parse_from_rfc3339(t).unwrap_or_else(|e| error!("bad timestamp {t:?}: {e}")).with_timezone(&chrono::Utc);
        RecoveryTarget::Time { text: t.to_string(), at }
    } else if let Some(l) = lsn {
        RecoveryTarget::Lsn(l.parse().unwrap_or_else(|e| error!("{e}")))
    } else if let Some(x) = xid {
        RecoveryTarget::Xid(x.parse().unwrap_or_else(|_| error!("target_xid {x:?} is not a transaction id (a whole number)")))
    } else if let Some(n) = name {
        RecoveryTarget::Name(n.to_string())
    } else if immediate {
        RecoveryTarget::Immediate
    } else {
        RecoveryTarget::Latest
    }
}

/// Behind `backup.restore()`.
#[allow(clippy::too_many_arguments)]
#[pg_extern(volatile)]
fn restore_scratch(
    backup_id: Option<&str>,
    target_time: Option<&str>,
    target_lsn: Option<&str>,
    target_xid: Option<&str>,
    target_name: Option<&str>,
    target_immediate: bool,
    into: Option<&str>,
    port: Option<i32>,
) -> i64 {
    let target = target(target_time, target_lsn, target_xid, target_name, target_immediate);
    let req = Request { backup_id, target, into, port, table: None, test: false };
    restore_worker::start(&req).unwrap_or_else(|e| error!("pg_backup_ext: {e}"))
}

/// Behind `backup.restore_table()`.
#[allow(clippy::too_many_arguments)]
#[pg_extern(volatile)]
fn restore_table_scratch(
    table_name: &str,
    backup_id: Option<&str>,
    target_time: Option<&str>,
    target_lsn: Option<&str>,
    target_xid: Option<&str>,
    target_name: Option<&str>,
    mode: &str,
    into: Option<&str>,
    where_clause: Option<&str>,
) -> i64 {
    let target = target(target_time, target_lsn, target_xid, target_name, false);
    let mode: TableMode = mode.parse().unwrap_or_else(|e: String| error!("{e}"));
    if into.is_some() && mode != TableMode::NewTable {
        error!("into names the new table of mode => 'new_table'; {} writes into {table_name} itself", mode.as_str());
    }
    let req = Request { backup_id, target, into: None, port: None, table: Some(TableRequest { table: table_name, mode, into_table: into, where_clause }), test: false };
    restore_worker::start(&req).unwrap_or_else(|e| error!("pg_backup_ext: {e}"))
}

/// Test a backup (default: the newest) by restoring it: a scratch instance recovered to the end
/// of the archive, then checked (the schema against the live one, `backup.restore_checks`,
/// `pg_amcheck`), timed, and removed. Returns the restore's id; the outcome goes to
/// `backup.restore_tests` (and a failure to the alerts, through `backup.health()`).
#[pg_extern(volatile)]
fn restore_test(backup_id: default!(Option<&str>, "NULL")) -> i64 {
    let req = Request { backup_id, target: RecoveryTarget::Latest, into: None, port: None, table: None, test: true };
    restore_worker::start(&req).unwrap_or_else(|e| error!("pg_backup_ext: {e}"))
}

/// Stop a scratch restore (its worker, if it still restores, and its instance) and remove its
/// directory. Stopping one already stopped does nothing.
#[pg_extern(volatile)]
fn restore_stop(id: i64) {
    restore_worker::stop(id).unwrap_or_else(|e| error!("pg_backup_ext: {e}"))
}
