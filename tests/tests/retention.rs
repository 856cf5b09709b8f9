//! End-to-end test of retention (`wal-archiver expire`) on a real PostgreSQL 15 cluster: a
//! repository holding two chains of backups and the WAL around them, expired with an explicit
//! `--now` a week after the moment chosen as the PITR window's start (so the test need not
//! wait a week). What goes must be exactly what the policy says; what stays must restore: the
//! oldest moment of the window and the end of the archive, each to exactly the ledger committed
//! then (see `e2e::workload`), every kept backup verifying whole.
//!
//! The history, oldest first (each step commits ledger rows and switches WAL):
//!
//! ```text
//!   B1 full ── B2 incr(B1) ── B3 full ── B4 incr(B3) ── cut ── B5 incr(B4) ── end
//! ```
//!
//! With full, incremental and WAL windows of 7 days, monthly archive 12 months, and `now` =
//! cut + 7 days: the PITR window starts at the cut, so B4 (the newest backup consistent
//! before it) is its anchor and B3 stays because B4 builds on it; B5 is within the
//! incremental window and the newest; B1 is past the full window but the first full backup of
//! its month (the monthly archive); B2 is past the incremental window and nothing kept builds
//! on it: it goes. WAL from B4's start on stays; before it only B1's and B3's own start..stop
//! segments (so they stay consistent) — everything else goes, with its block summaries.

use e2e::workload::*;
use e2e::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

const ARCHIVE_WAIT: Duration = Duration::from_secs(180);

/// A configuration file for the test's repository with retention settings on top.
fn retention_config(archiver: &Archiver, name: &str, settings: &str) -> PathBuf {
    archiver.dir().write(name, format!("{}{settings}", archiver.config.to_toml()))
}

/// `wal-archiver --config CONFIG expire ARGS… --output json`, which must succeed.
#[track_caller]
fn expire(config: &PathBuf, args: &[&str], step: &str) -> Value {
    let mut cmd = postgres_command(archiver_bin());
    cmd.arg("--config").arg(config).arg("expire").args(args).args(["--output", "json"]);
    let r = run(cmd, COMMAND_TIMEOUT);
    r.assert_ok(&format!("{step}: wal-archiver expire {}", args.join(" ")));
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{step}: expire printed invalid JSON ({e}):\n{r}"))
}

/// The plan's items of `kind` with `action`: (name, reason).
fn items(plan: &Value, kind: &str, action: &str) -> Vec<(String, String)> {
    plan["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|i| i["kind"] == kind && i["action"] == action)
        .map(|i| (i["name"].as_str().unwrap().to_string(), i["reason"].as_str().unwrap().to_string()))
        .collect()
}

/// The reason given for backup `id`, which the plan must list with `action`.
#[track_caller]
fn backup_reason(plan: &Value, id: &str, action: &str, step: &str) -> String {
    let found = items(plan, "backup", action).into_iter().find(|(n, _)| n == id);
    found.unwrap_or_else(|| panic!("{step}: backup {id} is not listed to {action}: {plan:#}")).1
}

/// Segment number of a WAL file name (segment, `.partial` or `.backup`: its first 24 digits).
fn segno(name: &str) -> u64 {
    parse_segment_name(&name[..24]).unwrap_or_else(|| panic!("{name} is not a WAL file name")).1
}

/// The files of `all` a plan item's name covers: `NAME`, or `FIRST..LAST (N files)`, which
/// must cover exactly N.
#[track_caller]
fn expand(item: &str, all: &[String]) -> Vec<String> {
    let Some((first, rest)) = item.split_once("..") else { return vec![item.to_string()] };
    let (last, count) = rest.split_once(" (").unwrap_or_else(|| panic!("WAL item {item:?}: expected FIRST..LAST (N files)"));
    let count: usize = count.trim_end_matches(" files)").parse().unwrap();
    let covered: Vec<String> = all.iter().filter(|n| n.as_str() >= first && n.as_str() <= last).cloned().collect();
    assert_eq!(covered.len(), count, "WAL item {item:?} covers {covered:?}");
    covered
}

/// Names of the archived WAL files.
fn wal_names(archiver: &Archiver) -> Vec<String> {
    let (r, v) = archiver.wal_list(false);
    r.assert_ok("wal-list");
    v["files"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap().to_string()).collect()
}

/// A backup as `list --output json` shows it.
fn listed<'a>(list: &'a [Value], id: &str) -> &'a Value {
    list.iter().find(|b| b["id"] == id).unwrap_or_else(|| panic!("backup {id} not listed: {list:#?}"))
}

#[track_caller]
fn assert_verifies(archiver: &Archiver, id: &str, step: &str) {
    let r = archiver.run(&["verify", id, "--output", "json"]);
    let report: Value = serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{step}: verify {id} printed invalid JSON ({e}):\n{r}"));
    assert!(r.success() && report["problems"].as_array().is_some_and(|p| p.is_empty()), "{step}: verify {id}\n{r}");
}

#[test]
fn expire_follows_the_policy_and_the_window_stays_restorable() {
    let (archiver, c) = archiving_cluster("retention", &[]);
    let ledger = Ledger::create(&c);
    c.psql("CREATE TABLE bulk AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g");
    c.psql("VACUUM (FREEZE) bulk");
    let mut v = 0;
    let mut step = |c: &Cluster, what: &str| {
        for _ in 0..3 {
            v += 1;
            ledger.commit(v);
        }
        c.psql(&format!("UPDATE bulk SET v = '{what}' WHERE id % 50 = {}", v % 50));
        c.switch_wal();
    };

    // Step 1: the history.
    step(&c, "before b1");
    let b1 = cli_backup(&archiver, &c, false, "B1");
    step(&c, "after b1");
    let b2 = cli_backup(&archiver, &c, true, "B2");
    step(&c, "after b2");
    let b3 = cli_backup(&archiver, &c, false, "B3");
    step(&c, "after b3");
    let b4 = cli_backup(&archiver, &c, true, "B4");
    step(&c, "after b4");
    let cut = ledger.cut(None);
    step(&c, "after the cut");
    let b5 = cli_backup(&archiver, &c, true, "B5");
    step(&c, "after b5");
    let end = ledger.fingerprint();
    let last = c.switch_wal();
    c.wait_archived(&last, ARCHIVE_WAIT);
    let week_later = |days: u32| {
        c.psql(&format!(
            "SELECT to_char(('{}'::timestamptz + interval '{days} days') AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
            cut.time
        ))
    };
    let now = week_later(7);
    let far = week_later(400);
    // Nothing more reaches the repository: what expire frees is all that changes.
    c.stop();
    let list = cli_list(&archiver, "step 1");
    assert_eq!(cli_list_ids(&archiver, "step 1"), [b1.as_str(), &b2, &b3, &b4, &b5], "step 1: backups");
    for (id, parent) in [(&b2, &b1), (&b4, &b3), (&b5, &b4)] {
        assert_eq!(listed(&list, id)["parent"], parent.as_str(), "step 1: {id} must build on {parent}");
    }

    // Leftovers: a killed backup's data (untouched for two hours), a directory being written
    // right now (a backup in progress elsewhere), an upload a killed writer never committed.
    let dead = "backup/backup_20200101_000000/data/000001";
    let busy = "backup/backup_20991231_000000/data/000001";
    archiver.storage().write(dead, &random_bytes(5000));
    archiver.storage().write(busy, &random_bytes(3000));
    // Ages and uncommitted uploads are the local backend's files: set them on the filesystem.
    let upload = archiver.repo().join("wal/0000000100000000/.000000010000000000000099.1.deadbeef.tmp");
    std::fs::write(&upload, random_bytes(1000)).unwrap();
    for path in [archiver.repo().join(dead), upload.clone()] {
        run_root_ok("touch", &["-d", "2 hours ago", path.to_str().unwrap()]);
    }

    // What the policy must do, worked out here from the listing.
    let range = |id: &str| (segno(listed(&list, id)["start_wal"].as_str().unwrap()), segno(listed(&list, id)["stop_wal"].as_str().unwrap()));
    let (window_from, b1_range, b3_range) = (range(&b4).0, range(&b1), range(&b3));
    let wal_before = wal_names(&archiver);
    let expected_gone: BTreeSet<String> = wal_before
        .iter()
        .filter(|n| {
            let s = segno(n);
            s < window_from && !(b1_range.0..=b1_range.1).contains(&s) && !(b3_range.0..=b3_range.1).contains(&s)
        })
        .cloned()
        .collect();
    assert!(
        expected_gone.iter().any(|n| segno(n) > b1_range.1 && segno(n) < b3_range.0) && expected_gone.iter().any(|n| segno(n) < b1_range.0),
        "step 1: the history must leave WAL to expire before B1 and between B1 and B3: {wal_before:?}"
    );

    // Step 2: a dry run lists exactly that, with reasons, and deletes nothing.
    let config = retention_config(&archiver, "expire.toml", "retention_days = 7\nretention_incremental_days = 7\nretention_wal_days = 7\nretention_monthly_months = 12\n");
    let keys_before = archiver.storage().keys("");
    let info_before = archiver.info();
    let plan = expire(&config, &["--dry-run", "--now", &now], "step 2");
    assert_eq!(archiver.storage().keys(""), keys_before, "step 2: a dry run changed the repository");
    assert!(plan["result"].is_null(), "step 2: a dry run reports a result: {plan:#}");
    assert_eq!(plan["anchor"], b4.as_str(), "step 2: the PITR window's anchor");
    let deleted_backups: Vec<String> = items(&plan, "backup", "delete").into_iter().map(|(n, _)| n).collect();
    assert_eq!(deleted_backups, [b2.as_str()], "step 2: backups to delete: {plan:#}");
    let why = |id: &str, action: &str| backup_reason(&plan, id, action, "step 2");
    assert!(why(&b2, "delete").contains("before the 7-day incremental backup window"), "step 2: {}", why(&b2, "delete"));
    assert!(why(&b1, "keep").contains("monthly archive, kept until"), "step 2: B1: {}", why(&b1, "keep"));
    assert_eq!(why(&b3, "keep"), format!("incremental {b4} builds on it"), "step 2: B3");
    assert!(why(&b4, "keep").contains("anchor of the 7-day PITR window") && why(&b4, "keep").contains(&format!("incremental {b5} builds on it")), "step 2: B4: {}", why(&b4, "keep"));
    assert!(why(&b5, "keep").contains("within the 7-day incremental backup window") && why(&b5, "keep").contains("newest restorable backup"), "step 2: B5: {}", why(&b5, "keep"));
    let planned_gone: BTreeSet<String> = items(&plan, "wal", "delete").iter().flat_map(|(n, _)| expand(n, &wal_before)).collect();
    assert_eq!(planned_gone, expected_gone, "step 2: WAL to delete");
    assert!(items(&plan, "wal", "delete").iter().all(|(_, r)| r.contains("needed by no kept backup")), "step 2: {plan:#}");
    let kept_reasons: Vec<String> = items(&plan, "wal", "keep").into_iter().map(|(_, r)| r).collect();
    for needle in [format!("makes backup {b1} consistent"), format!("makes backup {b3} consistent"), "PITR window".to_string()] {
        assert!(kept_reasons.iter().any(|r| r.contains(&needle)), "step 2: no kept WAL range says {needle:?}: {kept_reasons:#?}");
    }
    assert_eq!(items(&plan, "orphan", "delete"), [("backup/backup_20200101_000000/".to_string(), "left by a backup that never completed (no manifest; untouched for 60 min or more)".to_string())]);
    let busy_item = items(&plan, "orphan", "keep");
    assert!(busy_item.len() == 1 && busy_item[0].1.contains("perhaps a backup in progress"), "step 2: {busy_item:?}");
    let to_free = plan["bytes_to_free"].as_u64().unwrap();
    let summed: u64 = plan["items"].as_array().unwrap().iter().filter(|i| i["action"] == "delete").map(|i| i["bytes"].as_u64().unwrap()).sum();
    assert_eq!(to_free, summed, "step 2: bytes_to_free is the deletions' sum");

    // The same repository under other settings and moments (dry runs): an incremental past
    // its window kept because a kept one builds on it, and the newest chain outliving
    // every window.
    let other = retention_config(&archiver, "expire-b.toml", "retention_days = 7\nretention_incremental_days = 7\nretention_wal_days = 8\nretention_monthly_months = 0\n");
    let plan_b = expire(&other, &["--dry-run", "--now", &now], "step 2b");
    assert!(plan_b["anchor"].is_null(), "step 2b: no backup is consistent a day before all of them: {plan_b:#}");
    let gone_b: Vec<String> = items(&plan_b, "backup", "delete").into_iter().map(|(n, _)| n).collect();
    assert_eq!(gone_b, [b1.as_str(), &b2], "step 2b: {plan_b:#}");
    assert_eq!(backup_reason(&plan_b, &b4, "keep", "step 2b"), format!("incremental {b5} builds on it"));
    let plan_far = expire(&config, &["--dry-run", "--now", &far], "step 2c");
    let gone_far: Vec<String> = items(&plan_far, "backup", "delete").into_iter().map(|(n, _)| n).collect();
    assert_eq!(gone_far, [b1.as_str(), &b2], "step 2c: only the newest chain outlives every window: {plan_far:#}");
    assert!(backup_reason(&plan_far, &b5, "keep", "step 2c").contains("newest restorable backup"));
    let r = { let mut cmd = postgres_command(archiver_bin()); cmd.arg("--config").arg(&config).args(["expire", "--now", "next tuesday"]); run(cmd, COMMAND_TIMEOUT) };
    assert!(!r.success() && r.stderr.contains("--now") && r.stderr.contains("next tuesday"), "step 2: a bad --now must be refused, naming it\n{r}");
    assert_eq!(archiver.storage().keys(""), keys_before, "step 2: dry runs changed the repository");

    // Step 3: the real run deletes exactly the plan, and info shows the bytes freed.
    let done = expire(&config, &["--now", &now], "step 3");
    let result = &done["result"];
    // (The busy directory's reason says how many minutes ago it was written.)
    let steady = |p: &Value| -> Vec<Value> { p["items"].as_array().unwrap().iter().filter(|i| i["kind"] != "orphan" || i["action"] != "keep").cloned().collect() };
    assert_eq!(steady(&done), steady(&plan), "step 3: the run planned other than the dry run");
    assert_eq!(result["backups_deleted"], serde_json::json!([b2]), "step 3: {result:#}");
    assert_eq!(result["wal_files_deleted"].as_u64(), Some(expected_gone.len() as u64), "step 3: {result:#}");
    assert_eq!(result["orphans_deleted"].as_u64(), Some(1), "step 3: {result:#}");
    assert_eq!(result["uploads_aborted"].as_u64(), Some(1), "step 3: {result:#}");
    assert_eq!(result["skipped"], serde_json::json!([]), "step 3: {result:#}");
    assert_eq!(result["bytes_freed"].as_u64(), Some(to_free), "step 3: freed other than planned: {result:#}");
    assert_eq!(cli_list_ids(&archiver, "step 3"), [b1.as_str(), &b3, &b4, &b5], "step 3: backups left");
    let wal_after: BTreeSet<String> = wal_names(&archiver).into_iter().collect();
    let expected_left: BTreeSet<String> = wal_before.iter().filter(|n| !expected_gone.contains(*n)).cloned().collect();
    assert_eq!(wal_after, expected_left, "step 3: WAL left");
    for name in &expected_gone {
        let summary = format!("wal-summary/{}", wal_object_key(name).trim_start_matches("wal/"));
        assert!(!archiver.storage().exists(&summary), "step 3: {summary} outlived its segment");
    }
    assert!(!archiver.storage().exists(dead) && archiver.storage().exists(busy), "step 3: orphans");
    assert!(!upload.exists(), "step 3: the uncommitted upload is still there");
    let info_after = archiver.info();
    let stored = |i: &Value| i["stored_bytes"].as_u64().unwrap_or_else(|| panic!("info has no stored_bytes: {i:#}"));
    assert_eq!(stored(&info_before) - stored(&info_after), to_free, "step 3: info must show the bytes freed");
    for area in ["backups", "wal"] {
        assert!(info_after[area]["stored_bytes"].as_u64() < info_before[area]["stored_bytes"].as_u64(), "step 3: info's {area} bytes did not drop");
    }
    assert_eq!(info_after["backups"]["completed"], 4);
    // The holes retention made are reported as expired, not as gaps recovery cannot cross.
    let timelines = info_after["wal"]["timelines"].as_array().unwrap();
    assert!(timelines.iter().all(|t| t["gaps"].as_array().unwrap().is_empty()), "step 3: info reports gaps: {timelines:#?}");
    assert!(timelines.iter().any(|t| !t["expired"].as_array().unwrap().is_empty()), "step 3: info reports no expired range: {timelines:#?}");
    for id in [&b1, &b3, &b4, &b5] {
        assert_verifies(&archiver, id, "step 3");
    }
    // Run again at once: nothing more to do.
    let again = expire(&config, &["--dry-run", "--now", &now], "step 3 (again)");
    assert_eq!(again["bytes_to_free"], 0, "step 3: a second run finds more to delete: {again:#}");

    // Step 4: the oldest moment of the window and the end of the archive both restore exactly.
    let r = restore_cluster(&archiver, "retention-window-start", &["--target-time", &cut.time], Some(&b4));
    start_restored(&r);
    assert_eq!(Ledger::of(&r).fingerprint(), cut.ledger, "step 4: the window's first moment");
    check_integrity_and_stop(&r, "step 4 (window start)");
    drop(r);
    let r = restore_cluster(&archiver, "retention-latest", &["--latest"], Some(&b5));
    start_restored(&r);
    assert_eq!(Ledger::of(&r).fingerprint(), end, "step 4: the end of the archive");
    check_integrity_and_stop(&r, "step 4 (latest)");
}
