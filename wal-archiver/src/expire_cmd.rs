//! `expire`: apply the retention policy to a repository (the primary, or `--repo`), listing
//! what goes and why first. Each repository has its own policy (its `retention_days`).

use std::io::Write;
use std::process::ExitCode;

use anyhow::{anyhow, Result};
use backup_core::config::Config;
use backup_core::pg::retention::{self, Action, ExpireReport, Plan, RetentionPolicy};
use backup_core::pg::PgRepo;
use chrono::Utc;
use serde_json::json;

use crate::backup_cmd::parse_timestamp;
use crate::{human_bytes, Output};

pub fn expire(config: &Config, repo: Option<&str>, dry_run: bool, now: Option<&str>, output: Output) -> Result<ExitCode> {
    let now = match now {
        Some(text) => parse_timestamp(text).map_err(|e| anyhow!("--now: {e}"))?,
        None => Utc::now(),
    };
    let rc = config.repo_or_primary(repo)?;
    let repo = PgRepo::open_repo(config, &rc)?;
    let policy = RetentionPolicy::for_repo(config, &rc);
    let plan = retention::plan(&repo, &policy, now, None)?;
    if output == Output::Text {
        print_plan(&plan);
        if !dry_run && plan.deletions().next().is_some() {
            println!("deleting …");
        }
        // The list is out before the first deletion: an interrupted run has said what it was doing.
        std::io::stdout().flush()?;
    }
    let report = if dry_run { None } else { Some(retention::execute(&repo, &plan)?) };
    match output {
        Output::Json => {
            let doc = json!({
                "now": plan.now,
                "dry_run": dry_run,
                "policy": plan.policy,
                "pitr_window_start": plan.window_start,
                "anchor": plan.anchor,
                "items": plan.items,
                "bytes_to_free": plan.bytes_to_free(),
                "result": report,
            });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        Output::Text => match &report {
            None => println!(
                "would free {} bytes ({}); nothing was deleted (dry run)",
                plan.bytes_to_free(),
                human_bytes(plan.bytes_to_free())
            ),
            Some(r) => print_report(r),
        },
    }
    Ok(ExitCode::SUCCESS)
}

fn print_plan(plan: &Plan) {
    println!("retention: {} (now {})", plan.policy, plan.now.format("%Y-%m-%d %H:%M:%S UTC"));
    match &plan.anchor {
        Some(a) => println!("PITR window: from {} on, restored from {a}", plan.window_start.format("%Y-%m-%d %H:%M:%S UTC")),
        None => println!(
            "PITR window: no backup is consistent before {}; it starts at the oldest kept backup",
            plan.window_start.format("%Y-%m-%d %H:%M:%S UTC")
        ),
    }
    for i in &plan.items {
        println!("{:<6} {:<6} {:<62} {:>10}  {}", i.action.as_str(), i.kind.as_str(), i.name, human_bytes(i.bytes), i.reason);
    }
    let (n, keep) = (plan.items.len(), plan.items.iter().filter(|i| i.action == Action::Keep).count());
    println!("{} to delete, {keep} kept ({n} items)", n - keep);
}

fn print_report(r: &ExpireReport) {
    for s in &r.skipped {
        println!("skipped: {s}");
    }
    println!(
        "freed {} bytes ({}): {} backup(s), {} WAL file(s), {} orphan(s) deleted; {} uncommitted upload(s) aborted",
        r.bytes_freed,
        human_bytes(r.bytes_freed),
        r.backups_deleted.len(),
        r.wal_files_deleted,
        r.orphans_deleted,
        r.uploads_aborted
    );
}
