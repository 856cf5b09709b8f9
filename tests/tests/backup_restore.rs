//! End-to-end tests of base backups and point-in-time restore on real PostgreSQL 15
//! clusters: `wal-archiver backup / list / verify / restore` from the command line, and
//! the same capability driven from SQL through the `pg_backup_ext` extension
//! (`backup.start_full()`, `backup.list()`, `backup.get()`, `backup.verify()`, …).
//!
//! Each test function owns one archiving cluster and its repository. Restored clusters
//! always get `archive_mode = off` (they must never write into the repository they came
//! from) and `shared_preload_libraries = ''` (their extension, if any, must not act on
//! that repository either).
//!
//! The extension tests first check that every SQL object of the contract exists, so an
//! unfinished extension fails them with one message listing what is missing.

use e2e::workload::{
    absent_or_empty, backup_worker_pid, cli_backup, is_backup_id, kill9, log_count, pg_tool, restore_cluster, restore_into, sql_backup,
    start_restored,
};
use e2e::*;
use serde_json::Value;
use std::fs;
use std::path::Path;
use std::thread;
use std::time::Duration;

/// Generous: archiving and backups compete for 2 cores with the load and the other tests.
const ARCHIVE_WAIT: Duration = Duration::from_secs(180);
/// Upper bound for one backup started from SQL to finish.
const BACKUP_WAIT: Duration = Duration::from_secs(300);

/// The content of `ledger` in one line: row count, sum of `v`, and a digest of every
/// (id, v) pair, so that one transaction more or less always shows.
const LEDGER_FINGERPRINT: &str = "SELECT count(*) || ' rows, sum(v) ' || coalesce(sum(v), 0) || ', ' \
     || coalesce(md5(string_agg(id || ':' || v, ',' ORDER BY id)), '-') FROM ledger";

/// The current moment as a UTC timestamp with an explicit zone, in the form the
/// contract documents for `--target-time`.
const UTC_NOW: &str = "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'";

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn create_ledger(c: &Cluster) {
    c.psql(
        "CREATE TABLE ledger (id serial PRIMARY KEY, v int NOT NULL, \
         at timestamptz NOT NULL DEFAULT clock_timestamp())",
    );
}

fn ledger_count(c: &Cluster) -> i64 {
    c.psql("SELECT count(*) FROM ledger").parse().unwrap()
}

/// Small committed transactions into `ledger` (one client, about 100 per second)
/// until stopped; waits for the first commits.
fn start_ledger_load(c: &Cluster) -> Background {
    let script = c.dir().write("ledger.pgbench", "\\set v random(1, 1000)\nINSERT INTO ledger (v) VALUES (:v);\n");
    let script = script.to_string_lossy().into_owned();
    let load = c.spawn_pgbench(&["-n", "-f", &script, "-c", "1", "-R", "100", "-T", "900"]);
    wait_until("the ledger load's first commits", Duration::from_secs(60), || ledger_count(c) > 0);
    load
}

/// Stop the load and wait until its session has left the server, so that no
/// transaction of it can still commit afterwards.
fn stop_ledger_load(c: &Cluster, load: Background) {
    load.stop();
    wait_until("the pgbench session to end", Duration::from_secs(60), || {
        c.psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgbench'") == "0"
    });
}



/// `wal-archiver verify ID --output json`: the run and its parsed report.
fn cli_verify(archiver: &Archiver, id: &str, step: &str) -> (RunResult, Value) {
    let r = archiver.run(&["verify", id, "--output", "json"]);
    let v =
        serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{step}: verify printed invalid JSON ({e}):\n{r}"));
    (r, v)
}




/// The text of `postgresql.auto.conf` in `pgdata` (empty if missing).
fn auto_conf(pgdata: &Path) -> String {
    fs::read_to_string(pgdata.join("postgresql.auto.conf")).unwrap_or_default()
}

/// The path of every file and directory below `dir`, relative to it, sorted; parts
/// the server rewrites on its own while running are left out.
fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            let rel = path.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            if rel.starts_with("pg_wal") || rel.starts_with("pg_stat_tmp") {
                continue;
            }
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(path);
            }
            out.push(rel);
        }
    }
    out.sort();
    out
}


/// The key of the largest data object of backup `id` in the repository
/// (`backup/<id>/data/NNNNNN`).
fn largest_data_object(archiver: &Archiver, id: &str) -> String {
    let prefix = format!("backup/{id}/data/");
    let objects = archiver.storage().objects(&prefix);
    objects.into_iter().max_by_key(|o| o.size).unwrap_or_else(|| panic!("no data objects under {prefix}")).key
}


// ---------------------------------------------------------------------------
// 1. Point-in-time restore to times, LSNs, xids and names (command line only)
// ---------------------------------------------------------------------------

/// A recovery target and the `ledger` content committed at that moment.
struct Target {
    label: String,
    args: Vec<String>,
    expected: String,
    backup: String,
}

/// Commits one transaction into `ledger` with a value of its own.
struct Writer<'a> {
    c: &'a Cluster,
    next_v: i64,
}

impl Writer<'_> {
    fn commit(&mut self) {
        self.next_v += 7;
        self.c.psql(&format!("INSERT INTO ledger (v) VALUES ({})", self.next_v));
    }

    /// A time, an LSN and an xid target, each between committed transactions, and
    /// the data as committed at each; `backup` is the backup a restore must pick.
    fn record_targets(&mut self, phase: &str, backup: &str, targets: &mut Vec<Target>) {
        let c = self.c;
        let mut push = |kind: &str, option: &str, value: String| {
            targets.push(Target {
                label: format!("{kind} {phase}"),
                args: vec![option.to_string(), value],
                expected: c.psql(LEDGER_FINGERPRINT),
                backup: backup.to_string(),
            });
        };
        self.commit();
        self.commit();

        // (a) a moment between two commits, well clear of both.
        thread::sleep(Duration::from_millis(200));
        push("time", "--target-time", c.psql(UTC_NOW));
        thread::sleep(Duration::from_millis(200));
        self.commit();

        // (b) the insert position right after a commit (its own statement: a second
        // statement in the same psql -c would run inside the same transaction).
        self.commit();
        push("lsn", "--target-lsn", c.psql("SELECT pg_current_wal_insert_lsn()"));
        self.commit();

        // (c) the xid of a committed transaction (recovery_target_inclusive is on by
        // default: the data includes it).
        self.next_v += 7;
        let xid = c.psql(&format!("INSERT INTO ledger (v) VALUES ({}) RETURNING txid_current()", self.next_v));
        assert!(xid.parse::<u64>().is_ok(), "txid_current() returned {xid:?}");
        push("xid", "--target-xid", xid);
        self.commit();
        self.commit();
    }
}

#[test]
fn pitr_to_times_lsns_xids_and_names() {
    let (archiver, c) = archiving_cluster("pitr", &[]);
    create_ledger(&c);
    // Some bulk, so that the backup takes a while and the restores have data to copy.
    c.pgbench(&["-i", "-s", "2", "-q"]);

    // Step 1: the first base backup, taken while small transactions keep committing.
    let load = start_ledger_load(&c);
    let before = ledger_count(&c);
    let b1 = cli_backup(&archiver, &c, false, "step 1");
    let after = ledger_count(&c);
    stop_ledger_load(&c, load);
    assert!(after > before, "step 1: the load committed nothing while the backup ran ({before} -> {after} rows)");
    let list = cli_list(&archiver, "step 1");
    let m1 = list.iter().find(|b| b["id"] == b1.as_str()).unwrap_or_else(|| panic!("step 1: {b1} not listed"));
    for key in ["start_lsn", "stop_lsn", "start_wal", "stop_wal", "start_time", "stop_time"] {
        assert!(m1[key].as_str().is_some_and(|s| !s.is_empty()), "step 1: list entry lacks {key}: {m1:#}");
    }
    assert_eq!(m1["type"], "full", "step 1: {m1:#}");
    assert_eq!(m1["page_checksum_failures"], 0, "step 1: {m1:#}");
    assert!(m1["files"].as_u64().unwrap_or(0) > 100, "step 1: {m1:#}");
    let during: i64 = c
        .psql(&format!(
            "SELECT count(*) FROM ledger WHERE at > '{}'::timestamptz AND at < '{}'::timestamptz",
            m1["start_time"].as_str().unwrap(),
            m1["stop_time"].as_str().unwrap()
        ))
        .parse()
        .unwrap();
    assert!(during > 0, "step 1: no ledger row committed between the backup's start and stop time: {m1:#}");

    // Step 2: targets after the first backup, then a second backup (no load), then
    // more targets and a named restore point. Targets of phase A lie before the
    // second backup is consistent, so restore must pick the first one for them.
    let mut w = Writer { c: &c, next_v: 0 };
    let mut targets = Vec::new();
    w.record_targets("A", &b1, &mut targets);
    let b2 = cli_backup(&archiver, &c, false, "step 2");
    assert_ne!(b1, b2, "step 2: two backups got the same id");
    assert_eq!(cli_list_ids(&archiver, "step 2"), vec![b1.clone(), b2.clone()], "step 2: list");
    w.record_targets("B", &b2, &mut targets);
    w.commit();
    let rp = c.psql("SELECT pg_create_restore_point('rp1')");
    assert!(!rp.is_empty(), "step 2: pg_create_restore_point");
    targets.push(Target {
        label: "name rp1".into(),
        args: vec!["--target-name".into(), "rp1".into()],
        expected: c.psql(LEDGER_FINGERPRINT),
        backup: b2.clone(),
    });
    w.commit();
    w.commit();
    let last = c.switch_wal();
    c.wait_archived(&last, ARCHIVE_WAIT);

    // The targets must really be distinct moments, or the comparisons prove little.
    let mut distinct: Vec<&str> = targets.iter().map(|t| t.expected.as_str()).collect();
    distinct.dedup();
    assert_eq!(distinct.len(), targets.len(), "step 2: targets with the same data");
    let final_fp = c.psql(LEDGER_FINGERPRINT);

    // Step 3: restore to each target into a fresh directory; the data must be what
    // was committed at that moment.
    for t in &targets {
        let name = format!("pitr-{}", t.label.replace(' ', "-"));
        let args: Vec<&str> = t.args.iter().map(String::as_str).collect();
        let r = restore_cluster(&archiver, &name, &args, Some(&t.backup));
        let conf = auto_conf(&r.pgdata);
        let setting = match t.args[0].as_str() {
            "--target-time" => "recovery_target_time",
            "--target-lsn" => "recovery_target_lsn",
            "--target-xid" => "recovery_target_xid",
            _ => "recovery_target_name",
        };
        for key in ["restore_command", setting, "recovery_target_action"] {
            assert!(conf.contains(key), "step 3 ({}): postgresql.auto.conf lacks {key}:\n{conf}", t.label);
        }
        start_restored(&r);
        let got = r.psql(LEDGER_FINGERPRINT);
        assert_eq!(
            got, t.expected,
            "step 3 ({}): restored data differs from the data at the target {:?}",
            t.label, t.args
        );
        assert_ne!(got, final_fp, "step 3 ({}): restore went past the target to the end of the archive", t.label);

        // Step 4, on one of them: no corruption, no page checksum failure.
        if t.label == "xid B" {
            let port = r.port.to_string();
            let sock = r.sockdir.to_string_lossy().into_owned();
            let amcheck = pg_tool(
                "pg_amcheck",
                &["-U", "postgres", "-h", &sock, "-p", &port, "--all", "--install-missing", "--heapallindexed"],
            );
            amcheck.assert_ok(&format!("step 4 ({}): pg_amcheck on the restored cluster", t.label));
            r.stop();
            let checksums = pg_tool("pg_checksums", &["--check", "-D", r.pgdata.to_str().unwrap()]);
            checksums.assert_ok(&format!("step 4 ({}): pg_checksums --check on the restored cluster", t.label));
        }
    }
}

// ---------------------------------------------------------------------------
// 2. What restore refuses
// ---------------------------------------------------------------------------

#[test]
fn restore_refusals_and_bad_input() {
    // No autovacuum: it could add a relation fork while (1) compares directory listings.
    let (archiver, c) = archiving_cluster("refuse", &[("autovacuum", "off")]);
    c.psql("CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 10000) g");
    let id = cli_backup(&archiver, &c, false, "setup");
    let dests = TestDir::new("refuse-dest");
    let fresh = |name: &str| dests.join(name);

    // (1) Onto a running cluster's data directory: refused, nothing changed.
    c.psql("CHECKPOINT");
    let before = listing(&c.pgdata);
    let auto_before = auto_conf(&c.pgdata);
    let r = restore_into(&archiver, &c.pgdata, &["--backup-id", &id]);
    assert_eq!(r.code, 1, "(1) restore onto a running cluster must exit 1\n{r}");
    assert!(
        r.stderr.contains("running") || r.stderr.contains("postmaster.pid"),
        "(1) message must say a server is running (postmaster.pid)\n{r}"
    );
    assert_eq!(listing(&c.pgdata), before, "(1) refused restore changed the data directory's files");
    assert_eq!(auto_conf(&c.pgdata), auto_before, "(1) refused restore changed postgresql.auto.conf");
    assert!(
        !c.pgdata.join("backup_label").exists() && !c.pgdata.join("recovery.signal").exists(),
        "(1) recovery files written"
    );
    assert_eq!(c.psql("SELECT count(*) FROM t"), "10000", "(1) the running cluster must be unaffected");

    // (2) Onto a non-empty directory: refused, contents untouched.
    let nonempty = dests.write("nonempty/keep.txt", "keep me");
    let nonempty_dir = nonempty.parent().unwrap();
    let r = restore_into(&archiver, nonempty_dir, &["--backup-id", &id]);
    assert_eq!(r.code, 1, "(2) restore into a non-empty directory must exit 1\n{r}");
    assert!(!r.stderr.trim().is_empty(), "(2) a refusal must say why\n{r}");
    assert_eq!(listing(nonempty_dir), vec!["keep.txt".to_string()], "(2) refused restore wrote into the directory");
    assert_eq!(fs::read_to_string(&nonempty).unwrap(), "keep me", "(2) refused restore changed a file");

    // (3)–(5) Bad ids and targets: exit 1, a message naming the problem, nothing written.
    let cases: &[(&str, &[&str], &str)] = &[
        ("(3) unknown backup id", &["--backup-id", "backup_19990101_000000"], "backup_19990101_000000"),
        ("(3) malformed backup id", &["--backup-id", "nonsense-id"], "nonsense-id"),
        ("(4) garbage time", &["--target-time", "garbage"], "garbage"),
        ("(4) time without zone", &["--target-time", "2030-01-15 14:30:00"], "zone"),
        ("(4) malformed LSN", &["--target-lsn", "zz/yy"], "zz/yy"),
        ("(4) malformed xid", &["--target-xid", "abc"], "abc"),
        (
            "(5) time before the first backup",
            &["--target-time", "2000-01-01 00:00:00+00"],
            "no backup is consistent before",
        ),
        ("(5) LSN before the first backup", &["--target-lsn", "0/10"], "no backup is consistent before"),
        ("(5) xid before the first backup", &["--target-xid", "3"], "no backup is consistent before"),
    ];
    for (i, (what, args, needle)) in cases.iter().enumerate() {
        let dest = fresh(&format!("bad-{i}"));
        let r = restore_into(&archiver, &dest, args);
        assert_eq!(r.code, 1, "{what}: restore {} must exit 1\n{r}", args.join(" "));
        assert!(r.stderr.contains(needle), "{what}: message must contain {needle:?}\n{r}");
        assert!(!dest.exists(), "{what}: refused restore created {}", dest.display());
    }
    let dest = fresh("two-targets");
    let r = restore_into(&archiver, &dest, &["--target-time", "2030-01-15 14:30:00+00", "--target-lsn", "0/10"]);
    assert_ne!(r.code, 0, "(4) two targets at once must be refused\n{r}");
    assert!(!dest.exists(), "(4) refused restore created {}", dest.display());

    // (6) A key that did not write the repository: fails, writes nothing.
    let wrong = archiver.with_other_key("refuse-wrongkey");
    let dest = fresh("wrong-key");
    let r = restore_into(&wrong, &dest, &["--backup-id", &id]);
    assert_ne!(r.code, 0, "(6) restore with the wrong key must fail\n{r}");
    assert!(r.signal.is_none(), "(6) restore with the wrong key crashed\n{r}");
    assert!(absent_or_empty(&dest), "(6) failed restore left files in {}: {:?}", dest.display(), listing(&dest));

    // Control: the same restore with the right key works, so the refusals above
    // were about their input.
    let dest = fresh("control");
    restore_into(&archiver, &dest, &["--backup-id", &id]).assert_ok("(control) restore with the right key");
    assert!(dest.join("backup_label").is_file(), "(control) no backup_label written");
}

// ---------------------------------------------------------------------------
// 3. verify finds a flipped bit and names the object
// ---------------------------------------------------------------------------

#[test]
fn verify_names_a_flipped_object() {
    let (archiver, c) = archiving_cluster("verify", &[]);
    c.psql("CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 200000) g");
    let id = cli_backup(&archiver, &c, false, "setup");

    let (r, report) = cli_verify(&archiver, &id, "intact");
    assert_eq!(r.code, 0, "intact backup must verify with exit 0\n{r}");
    assert_eq!(report["backup"], id.as_str(), "intact: {report:#}");
    assert_eq!(report["problems"], Value::Array(vec![]), "intact: {report:#}");
    for key in ["files_checked", "objects_checked", "wal_checked"] {
        assert!(report[key].as_u64().unwrap_or(0) > 0, "intact: {key} must be > 0: {report:#}");
    }

    let key = largest_data_object(&archiver, &id);
    archiver.storage().flip_middle_bit(&key, 0x10);
    let (r, report) = cli_verify(&archiver, &id, "flipped");
    assert_eq!(r.code, 1, "verify must exit 1 after a bit flip in {key}\n{r}");
    let problems: Vec<&str> =
        report["problems"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    assert!(!problems.is_empty(), "flipped: no problem reported: {report:#}");
    assert!(problems.iter().any(|p| p.contains(&key)), "flipped: no problem names {key}: {problems:#?}");
    assert!(
        problems.iter().all(|p| p.contains(&key)),
        "flipped: problems reported beyond the flipped object {key}: {problems:#?}"
    );
}

// ---------------------------------------------------------------------------
// 4. The same from SQL (pg_backup_ext)
// ---------------------------------------------------------------------------

/// `extension_cluster` (a cluster archiving into a fresh repository with pg_backup_ext
/// preloaded, configured with the archiver's file and created), with every SQL object of
/// the contract present (else the test fails here, listing what is missing).
#[track_caller]
fn sql_api_cluster(label: &str, extra: &[(&str, &str)]) -> (Archiver, Cluster) {
    let (archiver, cluster) = extension_cluster(label, extra);
    require_sql_api(&cluster);
    (archiver, cluster)
}


/// Poll `backup.list()` until backup `id` is neither queued nor running; returns its
/// final status and error. While it is not listed the poll goes on (the worker may not
/// have written its row yet) unless `absent_settles` (after a restart, nothing will
/// write it any more). Each poll also reads `backup.progress` and checks any row it
/// catches for `id`; their number is added to `progress_rows`.
#[track_caller]
fn wait_backup_settled(
    c: &Cluster,
    id: &str,
    timeout: Duration,
    absent_settles: bool,
    progress_rows: &mut u32,
) -> Option<(String, String)> {
    let mut last = None;
    wait_until(&format!("backup {id} to be listed as completed or failed in backup.list()"), timeout, || {
        let progress = c.psql(&format!(
            "SELECT coalesce(phase, '') || '|' || coalesce(bytes_done, -1) || '|' || coalesce(bytes_total, -1) \
             FROM backup.progress WHERE id = '{id}'"
        ));
        if let Some(row) = progress.lines().next() {
            let f: Vec<&str> = row.rsplitn(3, '|').collect();
            let (total, done): (i64, i64) = (f[0].parse().unwrap(), f[1].parse().unwrap());
            assert!(total < 0 || done <= total, "backup.progress of {id}: bytes_done > bytes_total: {row}");
            *progress_rows += 1;
        }
        last = sql_status(c, id);
        match last.as_ref().map(|(s, _)| s.as_str()) {
            Some("queued" | "running") => false,
            Some(_) => true,
            None => absent_settles,
        }
    });
    last
}

/// `backup.start_full(wait => true)` must return the id of a completed backup that
/// verifies, and the repository must list it.
#[track_caller]
fn sql_backup_and_check(c: &Cluster, archiver: &Archiver, step: &str) -> String {
    let id = sql_backup(c, false, step);
    let verify = sql_json(c, &format!("SELECT backup.verify('{id}')"));
    assert_eq!(verify["ok"], true, "{step}: backup.verify('{id}'): {verify:#}");
    assert!(cli_list_ids(archiver, step).contains(&id), "{step}: wal-archiver list does not list {id}");
    id
}

#[test]
fn sql_full_backup_under_load_and_restore() {
    let (archiver, c) = sql_api_cluster("sqlfull", &[]);
    c.pgbench(&["-i", "-s", "2", "-q"]);
    create_ledger(&c);
    let load = start_ledger_load(&c);

    // Step 1: start a backup under load and, from the same session right after it
    // (no reconnection, so certainly while it is queued or running), a second one.
    let r = c.try_psql_commands(&["SELECT backup.start_full()", "SELECT backup.start_full()"]);
    let id1 = r.stdout.lines().next().unwrap_or("").trim().to_string();
    assert!(is_backup_id(&id1), "step 1: backup.start_full() must return the new backup's id at once\n{r}");
    assert!(!r.success(), "step 1: a second start_full() while {id1} runs must raise an ERROR, it returned\n{r}");
    assert!(r.stderr.contains("already running"), "step 1: the second start_full() must say \"already running\"\n{r}");

    // Step 2: it completes (progress rows, if caught, are for it and consistent).
    let mut progress_rows = 0;
    let status = wait_backup_settled(&c, &id1, BACKUP_WAIT, false, &mut progress_rows);
    assert_eq!(
        status.as_ref().map(|(s, _)| s.as_str()),
        Some("completed"),
        "step 2: backup {id1} ended as {status:?}\n--- server log ---\n{}",
        c.log_tail(30)
    );
    eprintln!("step 2: {progress_rows} backup.progress row(s) seen for {id1}");
    let window = c.psql(&format!("SELECT start_time || '|' || stop_time FROM backup.list() WHERE id = '{id1}'"));
    let (start, stop) =
        window.split_once('|').unwrap_or_else(|| panic!("step 2: start/stop time of {id1}: {window:?}"));
    let during = c.psql(&format!("SELECT count(*) FROM ledger WHERE at > '{start}' AND at < '{stop}'"));
    stop_ledger_load(&c, load);
    assert_ne!(during, "0", "step 2: no ledger row committed between {id1}'s start ({start}) and stop ({stop})");

    // Step 3: details, verification, find, and the repository's own list.
    let details = sql_json(&c, &format!("SELECT backup.get('{id1}')"));
    assert!(
        details["stop_lsn"].as_str().is_some_and(|s| !s.is_empty()),
        "step 3: backup.get('{id1}') has no stop_lsn: {details:#}"
    );
    let same = c.psql(&format!(
        "SELECT (backup.get('{id1}')->>'stop_lsn')::pg_lsn = stop_lsn FROM backup.list() WHERE id = '{id1}'"
    ));
    assert_eq!(same, "t", "step 3: backup.get() and backup.list() disagree on stop_lsn: {details:#}");
    let verify = sql_json(&c, &format!("SELECT backup.verify('{id1}')"));
    assert_eq!(verify["ok"], true, "step 3: backup.verify('{id1}'): {verify:#}");
    assert_eq!(verify["problems"], Value::Array(vec![]), "step 3: backup.verify('{id1}'): {verify:#}");
    assert_eq!(c.psql("SELECT backup.find(now())"), id1, "step 3: backup.find(now())");
    let stop_lsn1 = c.psql(&format!("SELECT stop_lsn FROM backup.list() WHERE id = '{id1}'"));
    let repo_list = cli_list(&archiver, "step 3");
    let entry = repo_list
        .iter()
        .find(|b| b["id"] == id1.as_str())
        .unwrap_or_else(|| panic!("step 3: wal-archiver list lacks {id1}: {repo_list:#?}"));
    assert_eq!(entry["stop_lsn"], stop_lsn1.as_str(), "step 3: repository and catalog disagree on stop_lsn");

    // Step 4: a restore point recorded through the extension, then a second backup.
    let rp_lsn = c.psql("SELECT backup.create_restore_point('after_first')");
    assert!(rp_lsn.contains('/'), "step 4: create_restore_point returned {rp_lsn:?}");
    let rp_fp = c.psql(LEDGER_FINGERPRINT);
    c.psql("INSERT INTO ledger (v) VALUES (-1)");
    let id2 = sql_backup_and_check(&c, &archiver, "step 4");
    assert_ne!(id2, id1, "step 4: second backup got the first one's id");
    assert_eq!(c.psql("SELECT backup.find(now())"), id2, "step 4: backup.find(now()) after the second backup");
    c.psql("INSERT INTO ledger (v) VALUES (-2)");
    let last = c.switch_wal();
    c.wait_archived(&last, ARCHIVE_WAIT);

    // Step 5: restore the first backup, recovering only until it is consistent.
    let r1 = Cluster::unpopulated("sqlfull-immediate");
    let r = restore_into(&archiver, &r1.pgdata, &["--backup-id", &id1, "--target", "immediate"]);
    assert!(
        r.success(),
        "step 5: wal-archiver restore --backup-id {id1} --target immediate failed (exit 2 with \"cannot be used \
         with\" means the CLI's target_choice argument group still puts --backup-id among the targets)\n{r}"
    );
    start_restored(&r1);
    assert_ne!(r1.psql("SELECT count(*) FROM ledger"), "0", "step 5: restored {id1} has an empty ledger");
    assert_eq!(r1.psql("SELECT count(*) FROM pgbench_accounts"), "200000", "step 5: restored {id1}");
    drop(r1);

    // Step 6: the recorded restore point makes restore pick the first backup, though
    // a newer one exists, and recovery stops at it.
    let r2 = restore_cluster(&archiver, "sqlfull-name", &["--target-name", "after_first"], Some(&id1));
    start_restored(&r2);
    assert_eq!(r2.psql(LEDGER_FINGERPRINT), rp_fp, "step 6: data restored to restore point after_first");
    drop(r2);

    // Step 7: the catalog is rebuilt from the repository.
    let ids_before =
        c.psql("SELECT string_agg(id || ' ' || status || ' ' || stop_lsn, ', ' ORDER BY id) FROM backup.list()");
    c.psql("DELETE FROM backup.backups");
    assert_eq!(c.psql("SELECT count(*) FROM backup.list()"), "0", "step 7: catalog not emptied");
    assert_eq!(c.psql("SELECT backup.resync()"), "2", "step 7: backup.resync() must count the repository's 2 backups");
    let ids_after =
        c.psql("SELECT string_agg(id || ' ' || status || ' ' || stop_lsn, ', ' ORDER BY id) FROM backup.list()");
    assert_eq!(ids_after, ids_before, "step 7: catalog after resync");
    assert!(ids_after.contains(&id1) && ids_after.contains(&id2), "step 7: {ids_after}");
}


/// Start a backup from SQL and wait until it has copied something (but is still
/// running); returns its id.
#[track_caller]
fn start_and_wait_for_copying(c: &Cluster, step: &str) -> String {
    let id = c.psql("SELECT backup.start_full()");
    assert!(is_backup_id(&id), "{step}: start_full() returned {id:?}");
    wait_until(&format!("{step}: backup.progress to show bytes_done > 0 for {id}"), BACKUP_WAIT, || {
        let done = c.psql(&format!("SELECT coalesce(max(bytes_done), 0) FROM backup.progress WHERE id = '{id}'"));
        if done.parse::<i64>().unwrap_or(0) > 0 {
            return true;
        }
        let status = sql_status(c, &id);
        assert!(
            matches!(status.as_ref().map(|(s, _)| s.as_str()), Some("queued" | "running")),
            "{step}: backup {id} is {status:?} before any progress was seen (too fast to interrupt? \
             make the dataset larger)\n{}",
            c.log_tail(20)
        );
        false
    });
    id
}


/// Processes whose parent is `ppid`.
fn children_of(ppid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else { continue };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else { continue };
        if rest.split_whitespace().nth(1).and_then(|p| p.parse::<i32>().ok()) == Some(ppid) {
            out.push(pid);
        }
    }
    out
}

/// State letter of a process (`R`, `S`, `Z`, …), None when it no longer exists.
fn process_state(pid: i32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].chars().next()
}


/// After an interruption: backup `id` must end up failed (or, with `may_vanish`,
/// not listed), never completed, in the catalog, and must not be in the repository.
#[track_caller]
fn assert_interrupted(c: &Cluster, archiver: &Archiver, id: &str, may_vanish: bool, step: &str) {
    let mut progress_rows = 0;
    let status = wait_backup_settled(c, id, Duration::from_secs(120), may_vanish, &mut progress_rows);
    match status.as_ref().map(|(s, _)| s.as_str()) {
        Some("failed") => {}
        None if may_vanish => {}
        _ => panic!("{step}: interrupted backup {id} must show as failed in backup.list(), it is {status:?}"),
    }
    assert!(
        !cli_list_ids(archiver, step).contains(&id.to_string()),
        "{step}: wal-archiver list shows the interrupted backup {id} as complete"
    );
}

#[test]
fn kill_worker_and_postmaster_mid_backup() {
    // One copying thread, ~100 MB of data and a read limit of 10 MB/s: an interrupted
    // backup is certainly still copying when it is killed, however fast the machine.
    // The backups that must succeed run unthrottled.
    let (archiver, c) = sql_api_cluster("sqlkill", &[("backup.workers", "1"), ("backup.max_rate", "10MB")]);
    c.pgbench(&["-i", "-s", "5", "-q"]);
    let throttle = |rate: &str| {
        c.psql(&format!("ALTER SYSTEM SET backup.max_rate = '{rate}'"));
        c.psql("SELECT pg_reload_conf()");
    };

    // Step 1: kill -9 the backup worker; the server restarts after the crash.
    let id1 = start_and_wait_for_copying(&c, "step 1");
    let worker = backup_worker_pid(&c, &id1);
    let ready = log_count(&c, "database system is ready to accept connections");
    kill9(worker, "the backup worker");
    wait_until("step 1: the crash restart after killing the worker", Duration::from_secs(120), || {
        log_count(&c, "database system is ready to accept connections") > ready
    });
    assert!(log_count(&c, "was terminated by signal 9") > 0, "step 1: no crash in the server log\n{}", c.log_tail(30));
    wait_until("step 1: the server to accept connections again", Duration::from_secs(60), || {
        c.try_psql("SELECT 1").success()
    });
    assert_interrupted(&c, &archiver, &id1, false, "step 1");
    throttle("0");
    let id2 = sql_backup_and_check(&c, &archiver, "step 1 (next backup)");
    assert_ne!(id2, id1);
    throttle("10MB");

    // Step 2: kill -9 the postmaster mid-backup; its children must go away on their
    // own, and a plain pg_ctl start must then work.
    let id3 = start_and_wait_for_copying(&c, "step 2");
    let postmaster = c.postmaster_pid().expect("step 2: postmaster.pid");
    let children = children_of(postmaster);
    assert!(!children.is_empty(), "step 2: the postmaster {postmaster} has no children?");
    kill9(postmaster, "the postmaster");
    // A zombie postmaster still "exists" for the next one's lock file check, so wait
    // for it to be reaped too (PID 1 does that, on its own schedule).
    let watched: Vec<i32> = std::iter::once(postmaster).chain(children).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let left: Vec<(i32, char)> = watched.iter().filter_map(|&p| process_state(p).map(|s| (p, s))).collect();
        if left.is_empty() {
            break;
        }
        if std::time::Instant::now() >= deadline {
            let alive: Vec<String> = left
                .iter()
                .filter(|(_, s)| *s != 'Z')
                .map(|(p, s)| {
                    let cmd = fs::read_to_string(format!("/proc/{p}/cmdline")).unwrap_or_default().replace('\0', " ");
                    format!("{p} ({s}) {cmd}")
                })
                .collect();
            for (p, s) in &left {
                if *s != 'Z' {
                    // SAFETY: plain syscall on a leftover process of this test's cluster.
                    unsafe { libc::kill(*p, libc::SIGKILL) };
                }
            }
            panic!(
                "step 2: 90 s after kill -9 of the postmaster, processes of the cluster remain: alive {alive:?}, \
                 all {left:?}\n{}",
                c.log_tail(30)
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
    c.start();
    assert_interrupted(&c, &archiver, &id3, true, "step 2");
    throttle("0");
    let id4 = sql_backup_and_check(&c, &archiver, "step 2 (next backup)");
    assert_ne!(id4, id3);
}

#[test]
fn sql_verify_names_flipped_object() {
    let (archiver, c) = sql_api_cluster("sqlverify", &[]);

    // Bad input: errors that name what was asked for.
    let r = c.try_psql("SELECT backup.get('backup_19990101_000000')");
    assert!(!r.success(), "backup.get() of an unknown id must raise an ERROR\n{r}");
    assert!(r.stderr.contains("backup_19990101_000000"), "backup.get(): the error must name the id\n{r}");
    let r = c.try_psql("SELECT backup.verify('nonsense')");
    assert!(!r.success(), "backup.verify('nonsense') must raise an ERROR\n{r}");
    assert!(r.stderr.contains("nonsense"), "backup.verify(): the error must name the id\n{r}");
    let r = c.try_psql("SELECT backup.find('1999-01-01')");
    assert!(!r.success(), "backup.find() before any backup must raise an ERROR\n{r}");
    assert!(r.stderr.contains("ERROR"), "backup.find(): {r}");

    // A backup, intact, then with one flipped bit.
    c.psql("CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 200000) g");
    let id = sql_backup_and_check(&c, &archiver, "setup");
    let r = c.try_psql("SELECT backup.find('1999-01-01')");
    assert!(!r.success(), "backup.find() before the first backup must raise an ERROR\n{r}");

    let key = largest_data_object(&archiver, &id);
    archiver.storage().flip_middle_bit(&key, 0x10);
    let report = sql_json(&c, &format!("SELECT backup.verify('{id}')"));
    assert_eq!(report["ok"], false, "backup.verify() after a bit flip in {key}: {report:#}");
    let problems: Vec<&str> =
        report["problems"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    assert!(problems.iter().any(|p| p.contains(&key)), "backup.verify(): no problem names {key}: {report:#}");
    let (r, _) = cli_verify(&archiver, &id, "flipped (CLI)");
    assert_eq!(r.code, 1, "wal-archiver verify must agree with backup.verify()\n{r}");

    // delete: gone from the catalog and from the repository.
    c.psql(&format!("SELECT backup.delete('{id}')"));
    assert_eq!(sql_status(&c, &id), None, "backup.delete(): {id} still in backup.list()");
    assert!(
        !cli_list_ids(&archiver, "after delete").contains(&id),
        "backup.delete(): wal-archiver list still shows {id}"
    );
    assert!(
        !archiver.storage().exists(&format!("backup/{id}/manifest")),
        "backup.delete(): the manifest of {id} is still in the repository"
    );
}

/// `archive_library = 'pg_backup_ext'`: segments reach the repository from inside the archiver
/// (no archive_command, no process per segment), a configuration that cannot work fails loudly
/// and recovers with a reload, and a backup whose WAL came that way restores and recovers.
#[test]
fn archive_library_module() {
    let archiver = Archiver::new("module");
    let c = Cluster::initdb("module");
    archiver.init(&c.pgdata).assert_ok("module: init repository");
    let config = archiver.config_path.to_string_lossy().into_owned();
    c.set(&[
        ("wal_level", "replica"),
        ("archive_mode", "on"),
        ("archive_library", "pg_backup_ext"),
        ("shared_preload_libraries", "pg_backup_ext"),
        ("backup.config_file", config.as_str()),
        ("backup.scheduler", "off"),
    ]);
    c.start();
    c.psql("CREATE EXTENSION pg_backup_ext");
    assert_eq!(c.psql("SHOW archive_command"), "", "module: archive_command must stay empty in this test");
    c.pgbench(&["-i", "-s", "1", "-q"]);
    c.psql("CREATE TABLE walgen (v text)");
    // A switch closes a segment only if something was written since the last one.
    let write_and_switch = || {
        c.psql("INSERT INTO walgen SELECT md5(g::text) FROM generate_series(1, 1000) g");
        c.switch_wal()
    };

    // Step 1: closed segments are archived by the module, valid in the repository.
    let segments: Vec<String> = (0..3).map(|_| write_and_switch()).collect();
    assert_eq!(segments.iter().collect::<std::collections::BTreeSet<_>>().len(), 3, "step 1: three segments {segments:?}");
    c.wait_archived(segments.last().unwrap(), ARCHIVE_WAIT);
    let list = archiver.run(&["wal-list", "--verify"]);
    list.assert_ok("step 1: wal-list --verify");
    for s in &segments {
        assert!(list.stdout.contains(s.as_str()), "step 1: {s} archived by the module is not in the repository\n{list}");
    }
    let pgdata = c.pgdata.to_string_lossy().into_owned();
    archiver
        .run(&["check", "--pgdata", &pgdata, "--dbname", &c.conninfo(), "--archive-timeout", "60"])
        .assert_ok("step 1: wal-archiver check accepts archive_library = 'pg_backup_ext' and sees a switch archived");

    // Step 2: the configuration file now names an uninitialized repository (the module reads
    // it for every segment): attempts fail, the server log names the segment and the cause; the
    // right file back and a reload (which wakes the archiver) let archiving catch up.
    let good = fs::read_to_string(&archiver.config_path).unwrap();
    let missing = archiver.dir().join("no-such-repository");
    let broken = ArchiverConfig { repo_path: missing, ..archiver.config.clone() };
    fs::write(&archiver.config_path, broken.to_toml()).unwrap();
    let failed_before = c.archiver_stats().failed_count;
    let stuck = write_and_switch();
    wait_until("step 2: a failed archiving attempt", ARCHIVE_WAIT, || c.archiver_stats().failed_count > failed_before);
    let log = c.log_tail(60);
    assert!(
        log.contains(&format!("pg_backup_ext: archiving {stuck} failed")) && log.contains("no-such-repository"),
        "step 2: the server log must say which segment failed and name the repository\n{log}"
    );
    assert!(!c.is_archived(&stuck), "step 2: {stuck} counted as archived into a repository that does not exist");
    fs::write(&archiver.config_path, good).unwrap();
    c.psql("SELECT pg_reload_conf()");
    c.wait_archived(&stuck, ARCHIVE_WAIT);

    // Step 3: a backup (whose last segment the module archives) restores and recovers.
    c.psql("CREATE TABLE marks AS SELECT g AS id FROM generate_series(1, 12345) g");
    let id = sql_backup_and_check(&c, &archiver, "step 3");
    let r = Cluster::unpopulated("module-restored");
    restore_into(&archiver, &r.pgdata, &["--backup-id", &id, "--target", "immediate", "--archive-mode", "off"])
        .assert_ok("step 3: restore");
    start_restored(&r);
    assert_eq!(r.psql("SELECT count(*) FROM marks"), "12345", "step 3: restored {id}");
    assert_eq!(r.psql("SELECT count(*) FROM pgbench_accounts"), "100000", "step 3: restored {id}");
}
