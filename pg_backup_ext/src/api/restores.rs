//! Scratch restores from SQL: `backup.restore()` (a SQL wrapper in `sql/finalize.sql` over
//! `backup.restore_scratch()`), `backup.restore_stop()`; where each stands is
//! `backup.restores`. The work is [`crate::restore_worker`]'s.

use backup_core::pg::backup::inventory::RecoveryTarget;
use pgrx::prelude::*;

/// Behind `backup.restore()`: the target as text (time as `2024-01-15 14:30:00.000000+00:00`,
/// UTC: RFC 3339 that `recovery_target_time` also reads). At most one target.
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
    let given = [target_time.is_some(), target_lsn.is_some(), target_xid.is_some(), target_name.is_some(), target_immediate].iter().filter(|g| **g).count();
    if given > 1 {
        error!("give at most one of target_time, target_lsn, target_xid, target_name, target_immediate");
    }
    let target = if let Some(t) = target_time {
        let at = chrono::DateTime::parse_from_rfc3339(t).unwrap_or_else(|e| error!("bad timestamp {t:?}: {e}")).with_timezone(&chrono::Utc);
        RecoveryTarget::Time { text: t.to_string(), at }
    } else if let Some(l) = target_lsn {
        RecoveryTarget::Lsn(l.parse().unwrap_or_else(|e| error!("{e}")))
    } else if let Some(x) = target_xid {
        RecoveryTarget::Xid(x.parse().unwrap_or_else(|_| error!("target_xid {x:?} is not a transaction id (a whole number)")))
    } else if let Some(n) = target_name {
        RecoveryTarget::Name(n.to_string())
    } else if target_immediate {
        RecoveryTarget::Immediate
    } else {
        RecoveryTarget::Latest
    };
    let req = crate::restore_worker::Request { backup_id, target, into, port };
    crate::restore_worker::start(&req).unwrap_or_else(|e| error!("pg_backup_ext: {e}"))
}

/// Stop a scratch restore (its worker, if it still restores, and its instance) and remove its
/// directory. Stopping one already stopped does nothing.
#[pg_extern(volatile)]
fn restore_stop(id: i64) {
    crate::restore_worker::stop(id).unwrap_or_else(|e| error!("pg_backup_ext: {e}"))
}
