//! `backup.health()` and the scheduler's `health` job: gathers what the checks judge (the
//! catalog's and the server's observations, the scheduled backup jobs' intervals, the scheduler
//! worker, every repository) and hands it to [`backup_core::health`], where the policy is.

use backup_core::config::Config;
use backup_core::error::report;
use backup_core::health::{self, Check, Freshness, RepositoryState};
use backup_core::schedule::{JobKind, Schedule};
use chrono::Utc;

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
        Ok(config) => o.repositories = repositories(&config),
        Err(e) => o.config_error = Some(report(&e)),
    }
    let mut checks = health::evaluate(&o, &gucs::health_thresholds(), now);
    checks.insert(0, health::overall(&checks));
    Ok(checks)
}

/// Each configured repository: does it answer, is it owed WAL, how full is its filesystem.
fn repositories(config: &Config) -> Vec<RepositoryState> {
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
        })
        .collect()
}
