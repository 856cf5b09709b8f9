//! What an operator or Prometheus sees of the backups: the text exposition format and a status
//! page, rendered from a [`Snapshot`].
//!
//! The extension's HTTP worker gathers a [`Snapshot`] with SQL on every request (the catalog,
//! `pg_stat_archiver`, `backup.health()`, the scheduler's jobs, the repositories) and hands it to
//! [`render_metrics`] or [`render_status_page`]. Rendering is pure and total so that:
//! - every metric name, label and escape is a unit test, with no server behind it;
//! - a scrape never fails half-way: whatever the worker could gather is rendered, and what it
//!   could not is `None` and left out (a missing series is an honest "unknown"; a zero would
//!   claim a fact);
//! - the page and the metrics cannot disagree, as both read the same snapshot.
//!
//! [`Snapshot`] is `Deserialize` so that the worker can build it in one SQL statement as JSON
//! (field names are the JSON's; a missing field is its default), and `Serialize` so that it can
//! serve it as JSON to scripts that want more than the metrics carry.
//!
//! ```
//! use backup_core::monitor::{render_metrics, render_status_page, Snapshot};
//! let s = Snapshot { cluster: "system 7312345678901234567".into(), ..Default::default() };
//! assert!(render_metrics(&s).contains("pg_backup_up 1\n"));
//! assert!(render_status_page(&s).contains("no backups in the last 30 days"));
//! ```

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::health::{Check, Status};

mod metrics;
mod status_page;

pub use metrics::{render_metrics, Exposition, Family, MetricType, Value};
pub use status_page::render_status_page;

/// The period `Snapshot::backups` covers, ending at `generated_at`: the status page's chart
/// spans it and says so when it is empty.
pub const PERIOD_DAYS: i64 = 30;

/// Everything the renderers show, as the extension found it at `generated_at`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Snapshot {
    pub generated_at: DateTime<Utc>,
    /// Which cluster this is, e.g. `system 7312345678901234567`: the page's title, so that two
    /// clusters' pages open side by side are told apart.
    pub cluster: String,
    /// `backup.health()`: `overall` first, then one row per check.
    pub checks: Vec<Check>,
    /// Now minus the time the last WAL file was archived: the data a lost server would take
    /// with it. `None` when nothing has been archived yet.
    pub rpo_seconds: Option<f64>,
    /// `archive_timeout`, the bound the RPO should stay under; `None` or 0 when it is off.
    pub archive_timeout_s: Option<i64>,
    pub wal: WalCounters,
    /// Backups started in the last [`PERIOD_DAYS`] days, whatever their status, OLDEST FIRST.
    pub backups: Vec<BackupSummary>,
    /// Every backup in the catalog, counted per (kind, status).
    pub counts: Vec<KindCount>,
    pub repositories: Vec<RepositoryUsage>,
    /// The scheduler's jobs.
    pub jobs: Vec<JobSummary>,
    /// Alerts currently firing (not yet resolved).
    pub alerts_firing: u64,
}

/// `pg_stat_archiver` and `pg_wal/archive_status`. The counts are the server's statistics, which
/// reset with `pg_stat_reset_shared('archiver')`; Prometheus' `rate()` copes with that.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct WalCounters {
    pub archived_count: u64,
    pub failed_count: u64,
    /// `wal_segment_size` in bytes.
    pub segment_size: u64,
    /// WAL files waiting for `archive_command` (`.ready`).
    pub ready_count: u64,
    pub last_archived_time: Option<DateTime<Utc>>,
    pub last_failed_time: Option<DateTime<Utc>>,
}

/// One backup of the catalog.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct BackupSummary {
    pub id: String,
    /// `full` or `incremental`.
    pub kind: String,
    /// `completed`, `failed` or `running`.
    pub status: String,
    pub start_time: Option<DateTime<Utc>>,
    pub stop_time: Option<DateTime<Utc>>,
    pub duration_s: Option<f64>,
    /// Bytes of the cluster's files the backup holds, before compression.
    pub size_bytes: Option<u64>,
    /// Bytes the backup takes in the repository (compressed, encrypted).
    pub stored_bytes: Option<u64>,
    pub error: Option<String>,
}

impl BackupSummary {
    /// `duration_s`, or the time between start and stop when the catalog has no duration.
    pub fn duration(&self) -> Option<f64> {
        self.duration_s.or_else(|| match (self.start_time, self.stop_time) {
            (Some(start), Some(stop)) => Some((stop - start).num_milliseconds() as f64 / 1000.0),
            _ => None,
        })
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct KindCount {
    pub kind: String,
    pub status: String,
    pub count: u64,
}

/// One repository: what our backups and WAL take there, and its filesystem's room where it has
/// such a thing (a local directory; an object store has none).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RepositoryUsage {
    pub name: String,
    pub stored_bytes: Option<u64>,
    pub free_bytes: Option<u64>,
    pub total_bytes: Option<u64>,
}

/// One of the scheduler's jobs.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct JobSummary {
    pub name: String,
    /// What it runs: `full`, `incremental`, `verify`, `retention`, ...
    pub kind: String,
    pub enabled: bool,
    pub next_run: Option<DateTime<Utc>>,
    /// `next_run` in the job's time zone, e.g. `2026-12-08 02:00 +07 (Asia/Ho_Chi_Minh)`: the
    /// schedule was written in that zone, so that is the time the operator recognises.
    pub next_run_local: Option<String>,
    pub last_status: Option<String>,
    pub last_run: Option<DateTime<Utc>>,
    /// Due and not started.
    pub late: bool,
}

impl Snapshot {
    /// The overall status: the `overall` row, else the worst check; `None` with no checks at all
    /// (nothing gathered is not "ok").
    pub fn overall_status(&self) -> Option<Status> {
        self.checks.iter().find(|c| c.name == "overall").or_else(|| self.checks.iter().max_by_key(|c| c.status)).map(|c| c.status)
    }

    /// The newest completed backup of each kind, by stop time (start time when it has none;
    /// the later one in `backups` on a tie).
    pub fn newest_completed_by_kind(&self) -> BTreeMap<&str, &BackupSummary> {
        let mut newest: BTreeMap<&str, &BackupSummary> = BTreeMap::new();
        for b in self.backups.iter().filter(|b| b.status == "completed") {
            let when = |b: &BackupSummary| b.stop_time.or(b.start_time);
            match newest.get(b.kind.as_str()) {
                Some(n) if when(n) > when(b) => {}
                _ => {
                    newest.insert(&b.kind, b);
                }
            }
        }
        newest
    }
}

/// Bytes in decimal units with three significant digits: `512 B`, `1.5 kB`, `12.3 MB`, `105 GB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["kB", "MB", "GB", "TB", "PB", "EB"];
    if n < 1000 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut unit = 0;
    v /= 1000.0;
    while v >= 999.5 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    let digits = if v >= 99.95 {
        0
    } else if v >= 9.995 {
        1
    } else {
        2
    };
    format!("{} {}", trim_zeros(format!("{v:.digits$}")), UNITS[unit])
}

/// Seconds as a person says them: `0.4 s`, `42 s`, `3 min 20 s`, `42 min`, `5 h 12 min`,
/// `3 d 4 h`. Negative values (a clock a little behind) are 0; non-finite ones are `-`.
pub fn human_duration(seconds: f64) -> String {
    if !seconds.is_finite() {
        return "-".into();
    }
    let s = seconds.max(0.0);
    if s < 10.0 {
        return format!("{} s", trim_zeros(format!("{s:.1}")));
    }
    let s = s.round() as u64;
    let (d, h, m, sec) = (s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
    let two = |big: u64, big_unit: &str, small: u64, small_unit: &str| if small == 0 { format!("{big} {big_unit}") } else { format!("{big} {big_unit} {small} {small_unit}") };
    if s < 60 {
        format!("{s} s")
    } else if s < 600 {
        two(m, "min", sec, "s")
    } else if s < 3600 {
        format!("{} min", (s + 30) / 60)
    } else if s < 86400 {
        two(h, "h", m, "min")
    } else {
        two(d, "d", h, "h")
    }
}

fn trim_zeros(s: String) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Seconds since the epoch, with milliseconds: Prometheus' unit for a point in time.
fn epoch_seconds(t: DateTime<Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn check(name: &str, status: Status) -> Check {
        Check { name: name.into(), status, value: None, threshold: None, message: format!("{name} says so") }
    }

    pub(super) fn fixture() -> Snapshot {
        let backup = |id: &str, kind: &str, status: &str, start: &str, stop: &str, dur: f64, size: u64, stored: u64| BackupSummary {
            id: id.into(),
            kind: kind.into(),
            status: status.into(),
            start_time: Some(at(start)),
            stop_time: Some(at(stop)),
            duration_s: Some(dur),
            size_bytes: Some(size),
            stored_bytes: Some(stored),
            error: None,
        };
        Snapshot {
            generated_at: at("2026-12-07T12:00:00Z"),
            cluster: "system 7312345678901234567".into(),
            checks: vec![check("overall", Status::Critical), check("archiving", Status::Critical), check("full_backup_age", Status::Ok), check("full_backup_age", Status::Warning), check("scheduler", Status::Ok)],
            rpo_seconds: Some(42.5),
            archive_timeout_s: Some(60),
            wal: WalCounters { archived_count: 1000, failed_count: 3, segment_size: 16 << 20, ready_count: 2, last_archived_time: Some(at("2026-12-07T11:59:17.5Z")), last_failed_time: None },
            backups: vec![
                backup("backup_20261206_020000", "full", "completed", "2026-12-06T02:00:00Z", "2026-12-06T02:20:00Z", 1200.0, 10_000_000_000, 3_000_000_000),
                backup("backup_20261206_140000", "incremental", "completed", "2026-12-06T14:00:00Z", "2026-12-06T14:02:00Z", 120.0, 500_000_000, 100_000_000),
                backup("backup_20261207_020000", "full", "completed", "2026-12-07T02:00:00Z", "2026-12-07T02:21:00Z", 1260.5, 10_100_000_000, 3_050_000_000),
                BackupSummary { error: Some("disk full".into()), ..backup("backup_20261207_110000", "incremental", "failed", "2026-12-07T11:00:00Z", "2026-12-07T11:00:05Z", 5.0, 0, 0) },
            ],
            counts: vec![
                KindCount { kind: "full".into(), status: "completed".into(), count: 12 },
                KindCount { kind: "incremental".into(), status: "completed".into(), count: 40 },
                KindCount { kind: "incremental".into(), status: "failed".into(), count: 1 },
            ],
            repositories: vec![
                RepositoryUsage { name: "local".into(), stored_bytes: Some(80_000_000_000), free_bytes: Some(400_000_000_000), total_bytes: Some(1_000_000_000_000) },
                RepositoryUsage { name: "s3".into(), stored_bytes: Some(80_000_000_000), free_bytes: None, total_bytes: None },
            ],
            jobs: vec![
                JobSummary { name: "nightly full".into(), kind: "full".into(), enabled: true, next_run: Some(at("2026-12-07T19:00:00Z")), next_run_local: Some("2026-12-08 02:00 +07 (Asia/Ho_Chi_Minh)".into()), last_status: Some("succeeded".into()), last_run: Some(at("2026-12-06T19:00:00Z")), late: false },
                JobSummary { name: "hourly".into(), kind: "incremental".into(), enabled: true, next_run: None, late: true, ..Default::default() },
            ],
            alerts_firing: 2,
        }
    }

    #[test]
    fn bytes_are_humanised_in_decimal_units() {
        let cases = [
            (0, "0 B"),
            (999, "999 B"),
            (1000, "1 kB"),
            (1500, "1.5 kB"),
            (12_345_678, "12.3 MB"),
            (999_499_999, "999 MB"),
            (999_500_000, "1 GB"),
            (105_000_000_000, "105 GB"),
            (1_230_000_000_000, "1.23 TB"),
            (u64::MAX, "18.4 EB"),
        ];
        for (n, want) in cases {
            assert_eq!(human_bytes(n), want, "{n}");
        }
    }

    #[test]
    fn durations_are_humanised() {
        let cases = [
            (0.0, "0 s"),
            (0.42, "0.4 s"),
            (-3.0, "0 s"),
            (9.96, "10 s"),
            (42.0, "42 s"),
            (180.0, "3 min"),
            (200.0, "3 min 20 s"),
            (2520.0, "42 min"),
            (3599.0, "60 min"),
            (3600.0, "1 h"),
            (5.0 * 3600.0 + 12.0 * 60.0, "5 h 12 min"),
            (3.0 * 86400.0 + 4.0 * 3600.0 + 59.0, "3 d 4 h"),
            (f64::NAN, "-"),
        ];
        for (s, want) in cases {
            assert_eq!(human_duration(s), want, "{s}");
        }
    }

    #[test]
    fn the_newest_completed_backup_of_each_kind() {
        let b = |id: &str, kind: &str, status: &str, stop: &str| BackupSummary { id: id.into(), kind: kind.into(), status: status.into(), stop_time: Some(at(stop)), ..Default::default() };
        let s = Snapshot {
            backups: vec![
                b("f1", "full", "completed", "2026-12-06T02:10:00Z"),
                b("i1", "incremental", "completed", "2026-12-06T14:05:00Z"),
                b("f2", "full", "completed", "2026-12-07T02:10:00Z"),
                b("f3", "full", "failed", "2026-12-07T03:00:00Z"),
            ],
            ..Default::default()
        };
        let newest = s.newest_completed_by_kind();
        assert_eq!(newest.iter().map(|(k, b)| (*k, b.id.as_str())).collect::<Vec<_>>(), [("full", "f2"), ("incremental", "i1")]);
    }

    #[test]
    fn the_overall_status_is_the_overall_row_else_the_worst() {
        let c = |name: &str, status| Check { name: name.into(), status, value: None, threshold: None, message: String::new() };
        let mut s = Snapshot::default();
        assert_eq!(s.overall_status(), None);
        s.checks = vec![c("archiving", Status::Warning), c("scheduler", Status::Ok)];
        assert_eq!(s.overall_status(), Some(Status::Warning));
        s.checks.insert(0, c("overall", Status::Critical));
        assert_eq!(s.overall_status(), Some(Status::Critical));
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["checks"][0]["status"], "critical");
        assert_eq!(json["checks"][1]["name"], "archiving");
    }

    #[test]
    fn a_snapshot_reads_from_the_extensions_json() {
        let s: Snapshot = serde_json::from_str(
            r#"{"generated_at":"2026-12-07T19:00:00.123456+07:00","cluster":"system 7312345678901234567",
                "checks":[{"name":"overall","status":"warning","value":"9 check(s)","threshold":null,"message":"warning: missed_runs"}],
                "rpo_seconds":42.5,"archive_timeout_s":60,
                "wal":{"archived_count":1000,"failed_count":3,"segment_size":16777216,"ready_count":2,"last_archived_time":"2026-12-07T11:59:17+00:00","last_failed_time":null},
                "backups":[{"id":"backup_20261207_020000","kind":"full","status":"completed","start_time":"2026-12-07T02:00:00+00:00","stop_time":"2026-12-07T02:21:00+00:00",
                            "duration_s":1260.5,"size_bytes":10100000000,"stored_bytes":3050000000,"error":null}],
                "counts":[{"kind":"full","status":"completed","count":12}],
                "jobs":[{"name":"nightly full","kind":"full","enabled":true,"next_run":"2026-12-07T19:00:00+00:00","next_run_local":"2026-12-08 02:00 +07 (Asia/Ho_Chi_Minh)",
                         "last_status":"succeeded","last_run":null,"late":false}],
                "alerts_firing":2}"#,
        )
        .unwrap();
        assert_eq!(s.generated_at, at("2026-12-07T12:00:00.123456Z"));
        assert_eq!(s.overall_status(), Some(Status::Warning));
        assert_eq!(s.backups[0].size_bytes, Some(10_100_000_000));
        assert_eq!(s.jobs[0].next_run_local.as_deref(), Some("2026-12-08 02:00 +07 (Asia/Ho_Chi_Minh)"));
        assert!(s.repositories.is_empty(), "missing: the default");
        let back: Snapshot = serde_json::from_value(serde_json::to_value(fixture()).unwrap()).unwrap();
        assert_eq!(render_metrics(&back), render_metrics(&fixture()));
    }
}
