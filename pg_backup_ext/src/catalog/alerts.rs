//! SQL on `backup.alerts` and `backup.alert_deliveries` (defined in `sql/bootstrap.sql`): the
//! alert worker's memory of what is firing and what it still owes each channel.

use backup_core::alerts::{Event, OpenAlert};
use backup_core::health::{Check, Status};
use backup_core::notify::ChannelKind;
use chrono::{DateTime, Utc};
use pgrx::prelude::*;
use pgrx::JsonB;
use serde::Deserialize;

use super::CatalogResult;

#[derive(Deserialize)]
struct OpenRow {
    id: i64,
    key: String,
    severity: String,
    last_notified: DateTime<Utc>,
}

/// The alerts still firing.
pub fn open_alerts() -> CatalogResult<Vec<OpenAlert>> {
    let json = Spi::get_one::<JsonB>(
        "SELECT coalesce(jsonb_agg(jsonb_build_object('id', id, 'key', key, 'severity', severity, 'last_notified', last_notified) ORDER BY id), '[]')
           FROM backup.alerts WHERE status = 'firing'",
    )?;
    let rows: Vec<OpenRow> = json.map(|j| serde_json::from_value(j.0).unwrap_or_else(|e| panic!("backup.alerts rows do not match their type: {e}"))).unwrap_or_default();
    Ok(rows
        .into_iter()
        .map(|r| OpenAlert { id: r.id, key: r.key, severity: r.severity.parse().unwrap_or(Status::Critical), last_notified: r.last_notified })
        .collect())
}

/// Record a new alert for a bad check; its id.
pub fn open(check: &Check, summary: &str) -> CatalogResult<i64> {
    Ok(Spi::get_one_with_args::<i64>(
        "INSERT INTO backup.alerts (key, severity, status, summary, message, value, threshold)
         VALUES ($1, $2, 'firing', $3, $4, $5, $6) RETURNING id",
        &[check.name.as_str().into(), check.status.as_str().into(), summary.into(), check.message.as_str().into(), check.value.clone().into(), check.threshold.clone().into()],
    )?
    .expect("INSERT ... RETURNING gives a row"))
}

/// The check's latest state into its open alert; `notified`: it is being told now. The severity
/// only ever rises (routing of the resolve reads the worst).
pub fn update(id: i64, check: &Check, notified: bool) -> CatalogResult<()> {
    Spi::run_with_args(
        "UPDATE backup.alerts SET message = $2, value = $3, threshold = $4,
                severity = CASE WHEN severity = 'critical' OR $5 = 'critical' THEN 'critical' ELSE 'warning' END,
                last_notified = CASE WHEN $6 THEN now() ELSE last_notified END
          WHERE id = $1",
        &[id.into(), check.message.as_str().into(), check.value.clone().into(), check.threshold.clone().into(), check.status.as_str().into(), notified.into()],
    )
}

/// The condition is over; `message`: why (the check's ok message, or that it is no longer checked).
pub fn resolve(id: i64, message: &str) -> CatalogResult<()> {
    Spi::run_with_args(
        "UPDATE backup.alerts SET status = 'resolved', resolved_at = now(), last_notified = now(), message = $2 WHERE id = $1",
        &[id.into(), message.into()],
    )
}

/// A notification owed to one channel, due now.
pub struct NewDelivery<'a> {
    pub alert_id: Option<i64>,
    pub event: Event,
    pub channel: ChannelKind,
    pub severity: Status,
    pub summary: &'a str,
    pub message: &'a str,
}

pub fn queue(d: &NewDelivery) -> CatalogResult<i64> {
    Ok(Spi::get_one_with_args::<i64>(
        "INSERT INTO backup.alert_deliveries (alert_id, event, channel, severity, summary, message) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        &[d.alert_id.into(), d.event.as_str().into(), d.channel.as_str().into(), d.severity.as_str().into(), d.summary.into(), d.message.into()],
    )?
    .expect("INSERT ... RETURNING gives a row"))
}

/// A delivery to make: the notification and the alert it is about.
#[derive(Clone, Debug, Deserialize)]
pub struct Pending {
    pub id: i64,
    pub event: String,
    pub channel: String,
    pub severity: String,
    pub summary: String,
    pub message: String,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub key: Option<String>,
    pub value: Option<String>,
    pub threshold: Option<String>,
}

/// Deliveries due now, oldest first.
pub fn due(limit: i64) -> CatalogResult<Vec<Pending>> {
    let json = Spi::get_one_with_args::<JsonB>(
        "SELECT coalesce(jsonb_agg(to_jsonb(d) ORDER BY d.id), '[]') FROM (
           SELECT d.id, d.event, d.channel, d.severity, d.summary, d.message, d.attempts, d.created_at, a.key, a.value, a.threshold
             FROM backup.alert_deliveries d LEFT JOIN backup.alerts a ON a.id = d.alert_id
            WHERE d.status = 'pending' AND d.next_attempt_at <= now()
            ORDER BY d.id LIMIT $1) d",
        &[limit.into()],
    )?;
    Ok(json.map(|j| serde_json::from_value(j.0).unwrap_or_else(|e| panic!("backup.alert_deliveries rows do not match their type: {e}"))).unwrap_or_default())
}

/// What an attempt came to: sent, failed and tried again at `retry_at`, or failed for good.
pub enum Attempt<'a> {
    Sent,
    Failed { error: &'a str, retry_at: Option<DateTime<Utc>> },
}

pub fn record_attempt(id: i64, attempt: &Attempt) -> CatalogResult<()> {
    let (status, error, retry_at) = match attempt {
        Attempt::Sent => ("sent", None, None),
        Attempt::Failed { error, retry_at: Some(at) } => ("pending", Some(*error), Some(*at)),
        Attempt::Failed { error, retry_at: None } => ("gave_up", Some(*error), None),
    };
    Spi::run_with_args(
        "UPDATE backup.alert_deliveries
            SET status = $2, attempts = attempts + 1, last_error = coalesce($3, last_error),
                sent_at = CASE WHEN $2 = 'sent' THEN now() END,
                next_attempt_at = coalesce($4::timestamptz, next_attempt_at),
                attempt_log = attempt_log || jsonb_build_array(jsonb_build_object('at', now(), 'ok', $3 IS NULL, 'error', $3))
          WHERE id = $1",
        &[id.into(), status.into(), error.map(str::to_string).into(), retry_at.map(|t| t.to_rfc3339()).into()],
    )
}
