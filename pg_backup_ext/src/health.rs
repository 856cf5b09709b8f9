//! `backup.health()` and the scheduler's `health` job: gathers what the checks judge (the
//! catalog's and the server's observations, the scheduled backup jobs' intervals, the scheduler
//! worker, every repository) and hands it to [`backup_core::health`], where the policy is.

use backup_core::config::{Config, WalArchiving};
use backup_core::pg::archive::{summarize_timelines, BackupWalRange};
use backup_core::pg::wal::Lsn;
use backup_core::pg::PgRepo;
use backup_core::error::report;
use backup_core::health::{self, Check, Freshness, RepositoryState};
use backup_core::schedule::{JobKind, Schedule};
use chrono::Utc;

use crate::catalog::health::BackupLsns;
use crate::catalog::{self, CatalogResult};
use crate::gucs;

/// Every check, the `overall` one first.
pub fn checks() -> CatalogResult<Vec<Check>> {
    let now = Utc::now();
    let (mut o, newest_full, newest_any) = catalog::health::observations()?;
    let jobs = catalog::jobs::jobs()?;
    for kind in [JobKind::Full, JobKind::Incremental] {
        // Of several jobs of a kind, the one with the shortest interval sets the bar.
        let strictest = jobs
            .iter()
            .filter(|j| j.enabled && j.kind == kind)
            .map(|j| (j, Schedule::parse(&j.cron, &j.time_zone).ok().and_then(|s| s.longest_interval(now)).map(|d| d.num_seconds())))
            .min_by_key(|(_, interval)| interval.unwrap_or(i64::MAX));
        if let Some((job, interval_s)) = strictest {
            // A full backup also restarts what an incremental job keeps fresh.
            let newest = if kind == JobKind::Full { &newest_full } else { &newest_any };
            o.freshness.push(Freshness {
                kind: kind.as_str().to_string(),
                job: job.name.clone(),
                interval_s,
                newest_id: newest.as_ref().map(|n| n.id.clone()),
                newest_start: newest.as_ref().map(|n| n.start_time),
            });
        }
    }
    o.scheduler_enabled = gucs::SCHEDULER.get();
    o.scheduler_running = catalog::jobs::scheduler_running()?;
    match gucs::load_config() {
        Ok(config) => {
            o.notifications_error = config.notifications_error.clone();
            o.repositories = repositories(&config, &catalog::health::completed_backup_lsns()?);
        }
        Err(e) => o.config_error = Some(report(&e)),
    }
    let mut checks = health::evaluate(&o, &gucs::health_thresholds(), now);
    checks.insert(0, health::overall(&checks));
    Ok(checks)
}

/// Each configured repository: does it answer, is it owed WAL, how full is its filesystem,
/// and (those that must take every WAL file) does its WAL have gaps.
fn repositories(config: &Config, backups: &[BackupLsns]) -> Vec<RepositoryState> {
    let opened = gucs::open_all(config);
    opened
        .repos
        .iter()
        .enumerate()
        .map(|(i, (rc, repo))| RepositoryState {
            name: rc.name.clone(),
            // The primary answering but unable to list its owed notes is its problem too.
            error: match (repo, &opened.owed) {
                (Err(e), _) => Some(e.clone()),
                (Ok(_), Err(e)) if i == 0 => Some(e.clone()),
                _ => None,
            },
            space: rc.location.local_path().and_then(|p| backup_core::storage::filesystem_space(p).ok()),
            owed_wal: opened.owed.as_ref().ok().and_then(|o| o.get(&rc.name).copied()).unwrap_or(0),
            // A best-effort repository misses what it is owed by design.
            wal_gaps: match repo {
                Ok(repo) if rc.wal == WalArchiving::Required => {
                    if rc.location.local_path().is_some() {
                        wal_gaps(repo, &rc.name, backups)
                    } else {
                        remembered_gaps(&rc.name, || wal_gaps(repo, &rc.name, backups))
                    }
                }
                _ => None,
            },
        })
        .collect()
}

/// The segments missing between archived ones that some restore would need (not those
/// retention removed before a kept backup): the first few names and how many. None when the
/// WAL could not be listed (the repository check says why).
fn wal_gaps(repo: &PgRepo, name: &str, backups: &[BackupLsns]) -> Option<(Vec<String>, usize)> {
    let files = repo.wal().list().ok()?;
    let size = repo.cluster().wal_segment_size;
    let seg = |lsn: &str| lsn.parse::<Lsn>().ok().map(|l| l.0 / u64::from(size));
    let ranges: Vec<BackupWalRange> = backups
        .iter()
        .filter(|b| b.repos.iter().any(|r| r == name))
        .filter_map(|b| Some(BackupWalRange { timeline: b.timeline, start: seg(&b.start_lsn)?, stop: seg(&b.stop_lsn)? }))
        .collect();
    let gaps: Vec<String> = summarize_timelines(&files, size, &ranges).into_iter().flat_map(|t| t.gaps).collect();
    Some((gaps.iter().take(3).cloned().collect(), gaps.len()))
}

/// How long a remote repository's WAL gaps are reused: the check lists every WAL object, and
/// the alert worker evaluates every minute (LIST requests cost money on object stores; a local
/// directory is listed every time).
const REMOTE_GAPS_TTL: std::time::Duration = std::time::Duration::from_secs(600);

/// This process's last answer for a remote repository, while it is fresh.
fn remembered_gaps(name: &str, look: impl FnOnce() -> Option<(Vec<String>, usize)>) -> Option<(Vec<String>, usize)> {
    type Seen = std::collections::HashMap<String, (std::time::Instant, Option<(Vec<String>, usize)>)>;
    static SEEN: std::sync::Mutex<Option<Seen>> = std::sync::Mutex::new(None);
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    let seen = seen.get_or_insert_with(Default::default);
    if let Some((_, gaps)) = seen.get(name).filter(|(at, _)| at.elapsed() < REMOTE_GAPS_TTL) {
        return gaps.clone();
    }
    let gaps = look();
    seen.insert(name.to_string(), (std::time::Instant::now(), gaps.clone()));
    gaps
}
