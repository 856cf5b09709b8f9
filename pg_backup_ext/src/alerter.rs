//! The alert worker: a static background worker (registered while `shared_preload_libraries`
//! load, started once recovery is over, in `backup.scheduler_database`) that turns
//! `backup.health()` into notifications.
//!
//! Every `backup.alert_interval` it evaluates the health checks ([`crate::health::checks`]),
//! lets [`backup_core::alerts::decide`] say what is new, worse, due a reminder or over, records
//! that in `backup.alerts` and queues one delivery per channel that wants the severity
//! (`[notifications]` in the configuration file, [`backup_core::notify`]). Once a second it
//! delivers what is due, outside any transaction, each attempt bounded by
//! [`DELIVERY_TIMEOUT`]; a failed attempt is retried with backoff
//! ([`backup_core::alerts::retry_after`]) and recorded in `backup.alert_deliveries`.
//!
//! Its own process, so that nothing else waits for a channel: not the archiver, not a user's
//! transaction, not the scheduler or a backup. A channel that hangs delays only the next
//! notification.

use std::time::{Duration, Instant};

use backup_core::alerts::{self, Action, Event};
use backup_core::error::report;
use backup_core::health::Status;
use backup_core::notify::{self, AlertState, Channel, Notification};
use chrono::Utc;
use pgrx::prelude::*;

use crate::catalog::alerts::{self as rows, Attempt, NewDelivery, Pending};
use crate::gucs;
use crate::postgres::bgworker::{self, transaction, Liveness, SqlError, Worker};

pub const WORKER_TYPE: &str = "pg_backup_ext alerts";

/// One attempt to reach a channel, connect to answer.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(15);

const RESTART_AFTER: Duration = Duration::from_secs(10);

/// How often due deliveries are looked for.
const TICK: Duration = Duration::from_secs(1);

/// Called from `_PG_init`.
pub fn register() {
    if crate::postgres::loading_shared_preload_libraries() {
        bgworker::register_static(WORKER_TYPE, "pg_backup_ext_alerts_main", RESTART_AFTER);
    }
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_backup_ext_alerts_main(_arg: pg_sys::Datum) {
    let worker = Worker::attach();
    let database = gucs::scheduler_database();
    worker.connect_by_name(&database);
    log!("pg_backup_ext alerts started in database {database:?}");
    let mut last_evaluation: Option<Instant> = None;
    let mut complained = None::<String>;
    loop {
        match worker.poll() {
            Liveness::Running => {}
            Liveness::Terminate => crate::postgres::exit_process(1),
            Liveness::PostmasterDied => worker.exit_after_postmaster_death(),
        }
        let interval = Duration::from_secs(gucs::ALERT_INTERVAL_S.get().max(1) as u64);
        let step = (|| -> Result<(), String> {
            if !transaction(|| Ok(Spi::get_one::<bool>("SELECT to_regclass('backup.alert_deliveries') IS NOT NULL")?.unwrap_or(false))).map_err(|e| e.to_string())? {
                return Err(format!("extension pg_backup_ext is not installed in database {database:?}: run CREATE EXTENSION pg_backup_ext there, or set backup.scheduler_database"));
            }
            // The configuration file is read when there is something to route or send, not
            // every second.
            let mut channels: Option<Vec<Channel>> = None;
            if last_evaluation.is_none_or(|t| t.elapsed() >= interval) {
                last_evaluation = Some(Instant::now());
                evaluate(channels.get_or_insert_with(configured_channels)).map_err(|e| format!("evaluating the health checks: {e}"))?;
            }
            deliver_due(&worker, || channels.unwrap_or_else(configured_channels)).map_err(|e| format!("delivering alerts: {e}"))
        })();
        match step {
            Ok(()) => complained = None,
            // Said once, not every second.
            Err(e) if complained.as_ref() != Some(&e) => {
                warning!("pg_backup_ext alerts: {e}");
                complained = Some(e);
            }
            Err(_) => {}
        }
        if worker.sleep(TICK) == Liveness::PostmasterDied {
            worker.exit_after_postmaster_death();
        }
    }
}

/// The channels of the configuration file; none when it cannot be read (the `configuration`
/// check fires, and is recorded, though nobody can be told).
fn configured_channels() -> Vec<Channel> {
    gucs::load_config().ok().map(|c| notify::channels(&c.notifications)).unwrap_or_default()
}

/// One evaluation: the checks against the open alerts, recorded and queued in one transaction.
fn evaluate(channels: &[Channel]) -> Result<(), SqlError> {
    transaction(|| {
        let checks = crate::health::checks()?;
        let open = rows::open_alerts()?;
        let repeat = match gucs::ALERT_REPEAT_INTERVAL_S.get() {
            0 => None,
            s => Some(chrono::Duration::seconds(i64::from(s))),
        };
        for action in alerts::decide(&open, &checks, Utc::now(), repeat) {
            match action {
                Action::Open { check } => {
                    let summary = alerts::summary(&check.name, check.status);
                    let id = rows::open(&check, &summary)?;
                    log!("pg_backup_ext alerts: {} ({}): {}", summary, check.status, check.message);
                    queue(channels, Some(id), Event::Firing, check.status, &summary, &check.message)?;
                }
                Action::Notify { id, event, check } => {
                    rows::update(id, &check, true)?;
                    let summary = alerts::summary(&check.name, check.status);
                    queue(channels, Some(id), event, check.status, &summary, &check.message)?;
                }
                Action::Update { id, check } => rows::update(id, &check, false)?,
                Action::Resolve { id, key, severity, check } => {
                    let message = check.map(|c| c.message).unwrap_or_else(|| format!("{key} is no longer checked (removed from the configuration?)"));
                    rows::resolve(id, &message)?;
                    let summary = alerts::summary(&key, Status::Ok);
                    log!("pg_backup_ext alerts: {summary}");
                    queue(channels, Some(id), Event::Resolved, severity, &summary, &message)?;
                }
            }
        }
        Ok(())
    })
}

/// One delivery per channel that wants `severity` (a resolve goes where the firing went: the
/// alert's worst severity routes both).
fn queue(channels: &[Channel], alert_id: Option<i64>, event: Event, severity: Status, summary: &str, message: &str) -> Result<(), SqlError> {
    for c in channels.iter().filter(|c| c.wants(severity)) {
        rows::queue(&NewDelivery { alert_id, event, channel: c.kind(), severity, summary, message })?;
    }
    Ok(())
}

/// Deliver what is due, each attempt recorded as soon as it ends.
fn deliver_due(worker: &Worker, channels: impl FnOnce() -> Vec<Channel>) -> Result<(), SqlError> {
    let due = transaction(|| Ok(rows::due(20)?))?;
    if due.is_empty() {
        return Ok(());
    }
    let channels = channels();
    let source = transaction(|| Ok(source()?))?;
    for p in due {
        if worker.poll() != Liveness::Running {
            break;
        }
        let outcome = match channels.iter().find(|c| c.kind().as_str() == p.channel) {
            Some(c) => notify::deliver(c, &notification(&p, &source), DELIVERY_TIMEOUT).map_err(|e| (report(&e), e.transient())),
            None => Err((format!("channel {} is no longer configured in [notifications]", p.channel), false)),
        };
        let attempt = match &outcome {
            Ok(()) => Attempt::Sent,
            Err((error, transient)) => {
                let max = gucs::ALERT_MAX_ATTEMPTS.get().max(1) as u32;
                let retry = if *transient { alerts::retry_after(p.attempts as u32 + 1, max) } else { None };
                if retry.is_none() {
                    warning!("pg_backup_ext alerts: gave up delivering {:?} to {}: {error}", p.summary, p.channel);
                }
                Attempt::Failed { error, retry_at: retry.map(|d| Utc::now() + d) }
            }
        };
        transaction(|| Ok(rows::record_attempt(p.id, &attempt)?))?;
    }
    Ok(())
}

fn notification(p: &Pending, source: &str) -> Notification {
    Notification {
        key: p.key.clone().unwrap_or_else(|| "test".into()),
        state: if p.event == Event::Resolved.as_str() { AlertState::Resolved } else { AlertState::Firing },
        severity: p.severity.parse().unwrap_or(Status::Critical),
        summary: p.summary.clone(),
        details: p.message.clone(),
        value: p.value.clone(),
        threshold: p.threshold.clone(),
        at: p.created_at,
        source: source.to_string(),
        test: p.event == Event::Test.as_str(),
    }
}

/// Which cluster speaks: `cluster_name` or the host name, and the system identifier.
pub fn source() -> Result<String, pgrx::spi::Error> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "localhost".into());
    Ok(Spi::get_one_with_args::<String>(
        "SELECT coalesce(nullif(current_setting('cluster_name'), ''), $1) || ' (system ' || system_identifier || ')' FROM pg_control_system()",
        &[host.into()],
    )?
    .unwrap_or_default())
}

/// `backup.test_alert()`: a test notification through each chosen channel, sent now by the
/// caller (it asked for an answer) and recorded like any other delivery.
pub fn send_test(channel: Option<&str>) -> Result<Vec<(String, bool, String)>, String> {
    let config = gucs::load_config().map_err(|e| report(&e))?;
    if let Some(e) = &config.notifications_error {
        return Err(e.clone());
    }
    let channels = notify::channels(&config.notifications);
    if channels.is_empty() {
        return Err("no notification channel is configured: set enabled = true and a channel ([notifications.email], .slack, .sms or .webhook) in the configuration file, or BACKUP_NOTIFICATIONS_ENABLED=true with BACKUP_EMAIL_RECIPIENTS / BACKUP_SLACK_WEBHOOK_URL in the server's environment".into());
    }
    let chosen: Vec<&Channel> = match channel {
        None => channels.iter().collect(),
        Some(name) => {
            let kind: notify::ChannelKind = name.parse()?;
            let found: Vec<&Channel> = channels.iter().filter(|c| c.kind() == kind).collect();
            if found.is_empty() {
                let names: Vec<&str> = channels.iter().map(|c| c.kind().as_str()).collect();
                return Err(format!("channel {name} is not configured; configured: {}", names.join(", ")));
            }
            found
        }
    };
    let source = source().map_err(|e| e.to_string())?;
    let summary = "test notification from pg_backup_ext";
    let message = "backup.test_alert() was called: if you read this, alerts reach you through this channel";
    let mut out = Vec::new();
    for c in chosen {
        let id = rows::queue(&NewDelivery { alert_id: None, event: Event::Test, channel: c.kind(), severity: Status::Warning, summary, message }).map_err(|e| e.to_string())?;
        let n = Notification {
            key: "test".into(),
            state: AlertState::Firing,
            severity: Status::Warning,
            summary: summary.into(),
            details: message.into(),
            value: None,
            threshold: None,
            at: Utc::now(),
            source: source.clone(),
            test: true,
        };
        let result = notify::deliver(c, &n, DELIVERY_TIMEOUT).map_err(|e| report(&e));
        let attempt = match &result {
            Ok(()) => Attempt::Sent,
            Err(e) => Attempt::Failed { error: e, retry_at: None },
        };
        rows::record_attempt(id, &attempt).map_err(|e| e.to_string())?;
        out.push(match result {
            Ok(()) => (c.kind().as_str().to_string(), true, format!("sent: {}", c.describe())),
            Err(e) => (c.kind().as_str().to_string(), false, e),
        });
    }
    Ok(out)
}
