//! `backup.stats(period)`: the catalog's figures ([`crate::catalog::stats`]) with each
//! repository's usage (one listing each, [`backup_core::pg::usage`]) and the WAL archived per
//! day, from the primary repository's write times, merged into the daily series.

use backup_core::error::report;
use backup_core::pg::usage::{usage, RepoUsage};
use backup_core::pg::PgRepo;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::catalog::{self, CatalogResult};
use crate::gucs;

/// Why RTO is not reported yet.
const RTO_UNKNOWN: &str = "not measured: no restore test has run (the recovery time is what a real restore of the newest backup takes; restore tests measure it)";

pub fn stats(period: pgrx::datum::Interval) -> CatalogResult<Value> {
    let mut doc = catalog::stats::stats(period)?;
    let since: Option<DateTime<Utc>> = doc.get("from").and_then(|v| serde_json::from_value(v.clone()).ok());
    let mut repositories = Vec::new();
    let mut primary: Option<RepoUsage> = None;
    match repository_figures() {
        Err(e) => repositories.push(json!({ "error": e })),
        Ok(figures) => {
            for (i, f) in figures.into_iter().enumerate() {
                let mut entry = json!({
                    "name": f.name,
                    "location": f.location,
                    "free_bytes": f.space.map(|s| s.0),
                    "filesystem_bytes": f.space.map(|s| s.1),
                });
                match f.usage {
                    Ok(u) => {
                        entry["stored_bytes"] = json!(u.total_bytes);
                        entry["backup_bytes"] = json!(u.backup_bytes);
                        entry["wal_bytes"] = json!(u.wal_bytes);
                        entry["wal_files"] = json!(u.wal.len());
                        entry["wal_summary_bytes"] = json!(u.summary_bytes);
                        if i == 0 {
                            primary = Some(u);
                        }
                    }
                    Err(e) => entry["error"] = json!(e),
                }
                repositories.push(entry);
            }
        }
    }
    // WAL archived per day into the daily series (the primary takes every WAL file).
    if let (Some(u), Some(since), Some(days)) = (&primary, since, doc.get_mut("daily").and_then(Value::as_array_mut)) {
        let per_day = u.wal_per_day(since);
        for d in days.iter_mut() {
            let day = d.get("day").and_then(Value::as_str).and_then(|s| s.parse::<chrono::NaiveDate>().ok());
            let (files, bytes) = day.and_then(|day| per_day.get(&day).copied()).unwrap_or((0, 0));
            d["wal_files"] = json!(files);
            d["wal_bytes"] = json!(bytes);
        }
    }
    doc["repositories"] = json!(repositories);
    doc["rto"] = catalog::stats::rto()?.unwrap_or_else(|| json!({ "seconds": null, "reason": RTO_UNKNOWN }));
    Ok(doc)
}

/// One configured repository's figures: where it is, how full its filesystem is (local ones),
/// what it holds (one listing), or why it could not be read.
pub struct RepoFigures {
    pub name: String,
    pub location: String,
    pub space: Option<(u64, u64)>,
    pub usage: Result<RepoUsage, String>,
}

/// Every configured repository's figures, in order; `backup.stats()` and `/metrics` show them.
pub fn repository_figures() -> Result<Vec<RepoFigures>, String> {
    let config = gucs::load_config().map_err(|e| report(&e))?;
    Ok(config
        .repositories()
        .into_iter()
        .map(|rc| {
            let space = rc.location.local_path().and_then(|p| backup_core::storage::filesystem_space(p).ok());
            let usage = PgRepo::open_repo(&config, &rc).map_err(|e| report(&e)).and_then(|r| usage(&r).map_err(|e| report(&e)));
            RepoFigures { name: rc.name.clone(), location: rc.location.to_string(), space, usage }
        })
        .collect())
}
