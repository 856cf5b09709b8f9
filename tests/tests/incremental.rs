//! End-to-end tests of block-level incremental backups on real PostgreSQL 15 clusters: chains
//! of incrementals taken from SQL (`backup.start_incremental()`) and from the command line
//! (`wal-archiver backup --incremental`) while the server is busy, restored by id and to
//! points in time between them, verified, damaged, deleted and interrupted.
//!
//! What "restores exactly" means here: the ledger (see `e2e::workload`) holds exactly the rows
//! committed before the recovery target, everything DDL did (tables created, dropped,
//! truncated and rewritten, indexes, databases made with either CREATE DATABASE strategy)
//! is as it was at the target, unlogged tables exist and are empty, pgbench's balances add up,
//! and `pg_amcheck --heapallindexed` and `pg_checksums --check` find nothing.
//!
//! Restored clusters always get `archive_mode = off` and `shared_preload_libraries = ''`: they
//! must never write into the repository they came from. Every cluster prints the end of its
//! server log when a test fails while it exists (`Cluster`'s `Drop`).

use e2e::workload::*;
use e2e::*;
use serde_json::Value;
use std::fs;
use std::time::{Duration, Instant};

/// Generous: archiving and backups compete for 2 cores with the load and the other tests.
const ARCHIVE_WAIT: Duration = Duration::from_secs(180);
/// Upper bound for one backup started from SQL to finish.
const BACKUP_WAIT: Duration = Duration::from_secs(300);

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------


/// One completed backup as `backup.list()` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ListRow {
    id: String,
    kind: String,
    parent: Option<String>,
    chain_depth: Option<i64>,
    changed_blocks: Option<i64>,
    stored_bytes: i64,
    size_bytes: i64,
}

/// The completed backups in `backup.list()`, oldest first.
#[track_caller]
fn sql_completed(c: &Cluster) -> Vec<ListRow> {
    let rows = c.psql(
        "SELECT id || '|' || type || '|' || coalesce(parent, '') || '|' || coalesce(chain_depth::text, '') \
         || '|' || coalesce(changed_blocks::text, '') || '|' || coalesce(stored_bytes::text, '-1') \
         || '|' || coalesce(size_bytes::text, '-1') FROM backup.list() WHERE status = 'completed' ORDER BY id",
    );
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
    rows.lines()
        .map(|line| {
            let f: Vec<&str> = line.split('|').collect();
            assert_eq!(f.len(), 7, "backup.list(): unexpected row {line:?}");
            ListRow {
                id: f[0].to_string(),
                kind: f[1].to_string(),
                parent: opt(f[2]),
                chain_depth: opt(f[3]).map(|s| s.parse().unwrap()),
                changed_blocks: opt(f[4]).map(|s| s.parse().unwrap()),
                stored_bytes: f[5].parse().unwrap(),
                size_bytes: f[6].parse().unwrap(),
            }
        })
        .collect()
}

/// The entries of `wal-archiver list --output json` seen as [`ListRow`]s.
#[track_caller]
fn cli_completed(archiver: &Archiver, step: &str) -> Vec<ListRow> {
    cli_list(archiver, step).iter().map(|b| json_row(b, &format!("{step}: wal-archiver list entry"))).collect()
}

/// A backup's description in JSON (`list --output json` entry, `backup.get(id)->'manifest'`)
/// as a [`ListRow`]; `changed_blocks` 0 of a full backup counts as none.
#[track_caller]
fn json_row(v: &Value, what: &str) -> ListRow {
    let text = |key: &str| v[key].as_str().map(str::to_string);
    let int = |key: &str| v[key].as_i64();
    ListRow {
        id: text("id").unwrap_or_default(),
        kind: text("type").unwrap_or_else(|| panic!("{what}: no \"type\": {v:#}")),
        parent: text("parent"),
        chain_depth: int("chain_depth"),
        changed_blocks: int("changed_blocks").filter(|n| !(*n == 0 && v["type"] == "full")),
        stored_bytes: int("stored_bytes").unwrap_or_else(|| panic!("{what}: no \"stored_bytes\": {v:#}")),
        size_bytes: int("bytes").unwrap_or(-1),
    }
}

/// `rows` must be the chain `ids`: the first a full backup, each next an incremental on the
/// one before, one deeper, with changed blocks stored.
#[track_caller]
fn assert_chain(rows: &[ListRow], ids: &[&str], step: &str) {
    let got: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(got, ids, "{step}: completed backups, oldest first: {rows:#?}");
    let full = &rows[0];
    assert_eq!(
        (full.kind.as_str(), full.parent.as_deref(), full.chain_depth, full.changed_blocks),
        ("full", None, Some(0), None),
        "{step}: the full backup {}: {full:?}",
        full.id
    );
    for (depth, pair) in rows.windows(2).enumerate() {
        let (parent, inc) = (&pair[0], &pair[1]);
        let depth = depth as i64 + 1;
        assert_eq!(
            (inc.kind.as_str(), inc.parent.as_deref(), inc.chain_depth),
            ("incremental", Some(parent.id.as_str()), Some(depth)),
            "{step}: {} must be an incremental on {} at chain depth {depth}: {rows:#?}",
            inc.id,
            parent.id
        );
        let changed = inc.changed_blocks.unwrap_or(0);
        assert!(changed > 0, "{step}: {} stored no changed blocks: {inc:?}", inc.id);
    }
}

/// Each incremental of the chain `rows` (a full backup first) stores much less than the full
/// backup: for workloads that change a small part of the cluster between backups.
#[track_caller]
fn assert_incrementals_small(rows: &[ListRow], step: &str) {
    let full = &rows[0];
    for inc in &rows[1..] {
        let changed = inc.changed_blocks.unwrap_or(0);
        assert!(
            changed * 8192 * 2 < full.size_bytes,
            "{step}: {} stored {changed} changed blocks, not much less than the whole cluster ({} bytes): {rows:#?}",
            inc.id,
            full.size_bytes
        );
        assert!(
            inc.stored_bytes > 0 && inc.stored_bytes * 2 < full.stored_bytes,
            "{step}: incremental {} stores {} bytes, not much less than the full backup's {}: {rows:#?}",
            inc.id,
            inc.stored_bytes,
            full.stored_bytes
        );
    }
}

/// `backup.list()`, `backup.get(id)->'manifest'` and `wal-archiver list` must agree on every
/// backup's place in its chain and its sizes; returns the catalog's rows.
#[track_caller]
fn assert_chain_everywhere(c: &Cluster, archiver: &Archiver, ids: &[&str], step: &str) -> Vec<ListRow> {
    let rows = sql_completed(c);
    assert_chain(&rows, ids, &format!("{step} (backup.list())"));
    let cli = cli_completed(archiver, step);
    for row in &rows {
        let entry = cli.iter().find(|e| e.id == row.id);
        let entry = entry.unwrap_or_else(|| panic!("{step}: wal-archiver list lacks {}: {cli:#?}", row.id));
        assert_eq!(
            (&entry.kind, &entry.parent, entry.chain_depth, entry.changed_blocks, entry.stored_bytes),
            (&row.kind, &row.parent, row.chain_depth, row.changed_blocks, row.stored_bytes),
            "{step}: wal-archiver list and backup.list() disagree on {}",
            row.id
        );
        let manifest = sql_json(c, &format!("SELECT backup.get('{}')->'manifest'", row.id));
        let mut m = json_row(&manifest, &format!("{step}: backup.get('{}')->'manifest'", row.id));
        m.id = row.id.clone();
        assert_eq!(
            (&m.kind, &m.parent, m.chain_depth, m.changed_blocks, m.stored_bytes),
            (&row.kind, &row.parent, row.chain_depth, row.changed_blocks, row.stored_bytes),
            "{step}: backup.get('{}')->'manifest' and backup.list() disagree: {manifest:#}",
            row.id
        );
    }
    rows
}

/// `wal-archiver verify ID --output json`: the run and its parsed report.
fn cli_verify(archiver: &Archiver, id: &str, step: &str) -> (RunResult, Value) {
    let r = archiver.run(&["verify", id, "--output", "json"]);
    let v =
        serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{step}: verify printed invalid JSON ({e}):\n{r}"));
    (r, v)
}

/// The `problems` of a verify report.
fn problems(report: &Value) -> Vec<String> {
    report["problems"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default()
}

/// The key of the largest data object of backup `id` (`backup/<id>/data/…`).
#[track_caller]
fn largest_data_object(archiver: &Archiver, id: &str) -> String {
    let prefix = format!("backup/{id}/data/");
    let objects = archiver.storage().objects(&prefix);
    objects.into_iter().max_by_key(|o| o.size).unwrap_or_else(|| panic!("no data objects under {prefix}")).key
}

fn set_max_rate(c: &Cluster, rate: &str) {
    c.psql(&format!("ALTER SYSTEM SET backup.max_rate = '{rate}'"));
    c.psql("SELECT pg_reload_conf()");
}




// ---------------------------------------------------------------------------
// 1. A chain taken under load, restored by id and to points between its backups
// ---------------------------------------------------------------------------

/// A backup of the chain and the ledger's row count just before it started and just after
/// it ended (a restore to its consistency point lies in between), and the world it saw.
struct Taken {
    id: String,
    rows_before: i64,
    rows_after: i64,
    world: World,
}

fn take(c: &Cluster, ledger: &Ledger, incremental: bool, step: &str) -> Taken {
    let world = world(c);
    let rows_before = ledger.count();
    let id = sql_backup(c, incremental, step);
    Taken { id, rows_before, rows_after: ledger.count(), world }
}

/// What the ledger of a restored cluster must hold.
enum LedgerAt {
    /// Exactly this fingerprint (a recorded cut).
    Exactly(String),
    /// Some prefix of the source's rows, of a length in this range (a backup's consistency
    /// point, which lies somewhere within the backup).
    Between(i64, i64),
}

/// One restore of the chain test: the restore's arguments, the backup it must pick and what
/// the restored cluster must hold.
struct Case<'a> {
    name: &'static str,
    args: Vec<String>,
    backup: &'a str,
    ledger: LedgerAt,
    world: &'a World,
    /// pgbench's four sums, when known exactly (the end of the archive).
    balances: Option<[i64; 4]>,
}

#[track_caller]
fn check_restored(r: &Cluster, source: &Ledger, case: &Case, step: &str) {
    let restored = Ledger::of(r);
    let got = restored.fingerprint();
    match &case.ledger {
        LedgerAt::Exactly(expected) => assert_eq!(
            &got, expected,
            "{step}: the restored ledger is not what was committed at the target {:?}",
            case.args
        ),
        LedgerAt::Between(lo, hi) => {
            let n = restored.count();
            assert!(
                lo <= &n && &n <= hi,
                "{step}: the restored ledger has {n} rows; the backup ran while it grew from {lo} to {hi}"
            );
            let max: i64 = r.psql("SELECT coalesce(max(id), 0) FROM ledger").parse().unwrap();
            assert_eq!(
                got,
                source.fingerprint_upto(max),
                "{step}: the restored ledger is not the source's first rows in commit order"
            );
        }
    }
    let w = world(r);
    assert!(
        w == *case.world,
        "{step}: tables, indexes or databases differ from the source's at the target\n\
         --- expected ---\n{}--- restored ---\n{}",
        case.world.text,
        w.text
    );
    for (db, table) in &w.unlogged {
        assert_eq!(
            psql_db(r, db, &format!("SELECT count(*) FROM public.{table}")),
            "0",
            "{step}: unlogged table {db}.{table} must be empty after a restore"
        );
    }
    let balances = pgbench_balances(r);
    assert!(
        balances.iter().all(|b| *b == balances[0]),
        "{step}: pgbench sums (accounts, tellers, branches, history) differ: {balances:?}: a transaction was torn"
    );
    if let Some(expected) = case.balances {
        assert_eq!(balances, expected, "{step}: pgbench sums at the end of the archive");
    }
    check_integrity_and_stop(r, step);
}

#[test]
fn incremental_chain_under_load_restores_exactly() {
    let (archiver, c) = extension_cluster("incchain", &[]);
    require_sql_api(&c);

    // Step 1: data, then every page frozen with its hint bits set, so that merely reading a
    // table later does not rewrite its pages (with data checksums a hint bit is WAL-logged and
    // changes the page) and the incrementals hold what the workload changed.
    c.pgbench(&["-i", "-s", "5", "-q"]);
    let ledger = Ledger::create(&c);
    for (table, rows) in [("keep", 200_000), ("drop_me", 20_000), ("trunc_me", 30_000), ("vf", 60_000)] {
        c.psql(&format!("CREATE TABLE {table} AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, {rows}) g"));
    }
    c.psql("CREATE INDEX keep_v ON keep (v)");
    c.psql("VACUUM (FREEZE, ANALYZE)");
    let loads = vec![ledger.start_load(50), c.spawn_pgbench(&["-n", "-c", "2", "-j", "1", "-R", "40", "-T", "1800"])];
    wait_until("pgbench's first transactions", Duration::from_secs(60), || {
        c.psql("SELECT count(*) > 0 FROM pgbench_history") == "t"
    });

    // Step 2: the full backup, then three incrementals with DDL and updates between them, and
    // recorded points (ledger, LSN, time, xid, restore points) between the backups.
    let full = take(&c, &ledger, false, "full backup");

    c.psql("CREATE TABLE t1 (id int PRIMARY KEY, v text)");
    c.psql("INSERT INTO t1 SELECT g, 'one ' || g FROM generate_series(1, 10000) g");
    c.psql("DROP TABLE drop_me");
    c.psql("CREATE DATABASE d1 STRATEGY wal_log");
    psql_db(&c, "d1", "CREATE TABLE items (id int PRIMARY KEY, v text)");
    psql_db(&c, "d1", "INSERT INTO items SELECT g, 'd1 ' || g FROM generate_series(1, 5000) g");
    c.psql("UPDATE pgbench_accounts SET filler = 'tag1' WHERE aid BETWEEN 1001 AND 3000");
    let m1 = (ledger.cut(None), world(&c));
    let i1 = take(&c, &ledger, true, "first incremental");

    c.psql("TRUNCATE trunc_me");
    c.psql("INSERT INTO trunc_me SELECT g, 'after truncate ' || g FROM generate_series(1, 100) g");
    c.psql("CREATE DATABASE d2 STRATEGY file_copy");
    psql_db(&c, "d2", "CREATE TABLE items (id int PRIMARY KEY, v text)");
    psql_db(&c, "d2", "INSERT INTO items SELECT g, 'd2 ' || g FROM generate_series(1, 3000) g");
    c.psql("CREATE UNLOGGED TABLE u1 AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g");
    c.psql("CREATE INDEX u1_v ON u1 (v)");
    c.psql("CREATE INDEX t1_v ON t1 (v)");
    c.psql("UPDATE pgbench_accounts SET filler = 'tag2' WHERE aid BETWEEN 200001 AND 202000");
    let m2 = (ledger.cut_xid(-2), world(&c));
    let i2 = take(&c, &ledger, true, "second incremental");

    c.psql("DELETE FROM vf WHERE id % 3 <> 0");
    c.psql("VACUUM FULL vf");
    c.psql("VACUUM FULL pgbench_tellers");
    psql_db(&c, "d1", "INSERT INTO items SELECT g, 'd1 ' || g FROM generate_series(5001, 7000) g");
    psql_db(&c, "d1", "UPDATE items SET v = 'changed' WHERE id % 100 = 0");
    c.psql("CREATE TABLE t3 AS SELECT g AS id, 'three ' || g AS v FROM generate_series(1, 5000) g");
    c.psql("UPDATE pgbench_accounts SET filler = 'tag3' WHERE aid BETWEEN 400001 AND 402000");
    let m3a = (ledger.cut(None), world(&c));
    c.psql("INSERT INTO t3 SELECT g, 'three ' || g FROM generate_series(5001, 6000) g");
    c.psql("DROP TABLE t1");
    let m3b = (ledger.cut(Some(("plain_m3b", RestorePoint::Plain))), world(&c));
    let i3 = take(&c, &ledger, true, "third incremental");

    c.psql("INSERT INTO t3 SELECT g, 'three ' || g FROM generate_series(6001, 7000) g");
    c.psql("UPDATE pgbench_accounts SET filler = 'tag4' WHERE aid BETWEEN 100001 AND 101000");
    psql_db(&c, "d2", "DELETE FROM items WHERE id > 2000");
    let m4 = (ledger.cut(None), world(&c));
    c.psql("CREATE TABLE t5 AS SELECT g AS id FROM generate_series(1, 1000) g");
    let m5 = (ledger.cut(Some(("ext_m5", RestorePoint::Extension))), world(&c));
    c.psql("INSERT INTO t3 SELECT g, 'three ' || g FROM generate_series(7001, 7500) g");

    // Step 3: the end of the archive.
    stop_loads(&c, loads);
    let end_ledger = ledger.fingerprint();
    let end_world = world(&c);
    let end_balances = pgbench_balances(&c);
    let last = c.switch_wal();
    c.wait_archived(&last, ARCHIVE_WAIT);
    let exact = [&m1.0.ledger, &m2.0.ledger, &m3a.0.ledger, &m3b.0.ledger, &m4.0.ledger, &m5.0.ledger, &end_ledger];
    let mut distinct = exact.to_vec();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), exact.len(), "step 3: recorded points with the same ledger prove little: {exact:#?}");

    // Step 4: the chain as the catalog, the manifests and the repository describe it.
    let ids = [full.id.as_str(), i1.id.as_str(), i2.id.as_str(), i3.id.as_str()];
    let rows = assert_chain_everywhere(&c, &archiver, &ids, "step 4");
    eprintln!("step 4: chain {rows:#?}");
    assert_incrementals_small(&rows, "step 4");
    let verify = sql_json(&c, &format!("SELECT backup.verify('{}')", i3.id));
    assert_eq!(verify["ok"], true, "step 4: backup.verify('{}') of the intact chain: {verify:#}", i3.id);

    // Step 5: restores, each checked against what the source held at its target.
    let s = |x: &str| x.to_string();
    let cases = [
        Case {
            name: "incchain-i1-immediate",
            args: vec![s("--backup-id"), i1.id.clone(), s("--target"), s("immediate")],
            backup: &i1.id,
            ledger: LedgerAt::Between(i1.rows_before, i1.rows_after),
            world: &i1.world,
            balances: None,
        },
        Case {
            name: "incchain-i2-immediate",
            args: vec![s("--backup-id"), i2.id.clone(), s("--target"), s("immediate")],
            backup: &i2.id,
            ledger: LedgerAt::Between(i2.rows_before, i2.rows_after),
            world: &i2.world,
            balances: None,
        },
        Case {
            name: "incchain-i3-lsn",
            args: vec![s("--backup-id"), i3.id.clone(), s("--target-lsn"), m4.0.lsn.clone()],
            backup: &i3.id,
            ledger: LedgerAt::Exactly(m4.0.ledger.clone()),
            world: &m4.1,
            balances: None,
        },
        Case {
            name: "incchain-lsn-before-i1",
            args: vec![s("--target-lsn"), m1.0.lsn.clone()],
            backup: &full.id,
            ledger: LedgerAt::Exactly(m1.0.ledger.clone()),
            world: &m1.1,
            balances: None,
        },
        Case {
            name: "incchain-xid-before-i2",
            args: vec![s("--target-xid"), m2.0.xid.clone()],
            backup: &i1.id,
            ledger: LedgerAt::Exactly(m2.0.ledger.clone()),
            world: &m2.1,
            balances: None,
        },
        Case {
            name: "incchain-time-before-i3",
            args: vec![s("--target-time"), m3a.0.time.clone()],
            backup: &i2.id,
            ledger: LedgerAt::Exactly(m3a.0.ledger.clone()),
            world: &m3a.1,
            balances: None,
        },
        Case {
            name: "incchain-plain-point-before-i3",
            args: vec![s("--target-name"), s("plain_m3b")],
            backup: &i2.id,
            ledger: LedgerAt::Exactly(m3b.0.ledger.clone()),
            world: &m3b.1,
            balances: None,
        },
        Case {
            name: "incchain-extension-point-after-i3",
            args: vec![s("--target-name"), s("ext_m5")],
            backup: &i3.id,
            ledger: LedgerAt::Exactly(m5.0.ledger.clone()),
            world: &m5.1,
            balances: None,
        },
        Case {
            name: "incchain-latest",
            args: vec![s("--latest")],
            backup: &i3.id,
            ledger: LedgerAt::Exactly(end_ledger.clone()),
            world: &end_world,
            balances: Some(end_balances),
        },
    ];
    for case in &cases {
        let step = format!("step 5 ({}: restore {})", case.name, case.args.join(" "));
        let started = Instant::now();
        let args: Vec<&str> = case.args.iter().map(String::as_str).collect();
        let r = restore_cluster(&archiver, case.name, &args, Some(case.backup));
        start_restored(&r);
        check_restored(&r, &ledger, case, &step);
        eprintln!("{step}: checked in {:.1} s", started.elapsed().as_secs_f64());
    }
}

// ---------------------------------------------------------------------------
// 2. A relation larger than one segment file
// ---------------------------------------------------------------------------

/// Count, sum of `v` and a digest of every row of `big` in id order.
const BIG_FINGERPRINT: &str = "SELECT count(*) || ' rows, sum(v) ' || sum(v) || ', ' \
     || md5(string_agg(md5(t::text), '' ORDER BY id)) FROM big t";

#[test]
fn incremental_past_one_gigabyte() {
    // No autovacuum: nothing but the test may touch the big table's pages.
    let (archiver, c) = archiving_cluster("inc1g", &[("autovacuum", "off"), ("max_wal_size", "4GB")]);

    // Step 1: one row of about 1 KB per 8 KB page (at fillfactor 10 a second row never fits),
    // so 140,000 rows make 1.07 GB and the main fork spills into a second segment file
    // (<relfilenode>.1) for a fraction of a gigabyte of WAL. Rows below 2 KB are never
    // compressed by TOAST. The count(*) sets every hint bit before any checkpoint (so without
    // writing a page image to WAL): later reads leave the pages alone.
    c.psql("CREATE TABLE big (id int PRIMARY KEY, v int NOT NULL, pad text NOT NULL) WITH (fillfactor = 10)");
    c.psql("INSERT INTO big SELECT g, 0, repeat(md5(g::text), 28) FROM generate_series(1, 140000) g");
    assert_eq!(c.psql("SELECT count(*) FROM big"), "140000");
    let path = c.psql("SELECT pg_relation_filepath('big')");
    let second = format!("{path}.1");
    assert!(
        c.pgdata.join(&second).is_file(),
        "step 1: {second} missing; big is only {} bytes",
        c.psql("SELECT pg_relation_size('big')")
    );

    // Step 2: the full backup; rows changed in both segment files, one deleted, rows appended
    // (into the second); the incremental.
    let full = cli_backup(&archiver, &c, false, "step 2 (full)");
    c.psql("UPDATE big SET v = v + 1 WHERE id IN (1, 2, 65000, 131000, 131100, 135000, 139999, 140000)");
    c.psql("DELETE FROM big WHERE id = 70000");
    c.psql("INSERT INTO big SELECT g, 1, repeat(md5(g::text), 28) FROM generate_series(140001, 140500) g");
    let inc = cli_backup(&archiver, &c, true, "step 2 (incremental)");
    // Nothing writes any more: this is the table at the incremental's consistency point.
    let expected = c.psql(BIG_FINGERPRINT);
    let expected_size = c.psql("SELECT pg_relation_size('big')");
    let second_len = fs::metadata(c.pgdata.join(&second)).unwrap().len();

    let list = cli_list(&archiver, "step 2");
    let entry = |id: &str| {
        list.iter().find(|b| b["id"] == id).unwrap_or_else(|| panic!("step 2: {id} not listed: {list:#?}")).clone()
    };
    let (f, i) = (entry(&full), entry(&inc));
    assert_eq!(
        (&i["type"], &i["parent"], &i["chain_depth"]),
        (&Value::from("incremental"), &Value::from(full.as_str()), &Value::from(1)),
        "step 2: {i:#}"
    );
    let changed = i["changed_blocks"].as_i64().unwrap_or(0);
    assert!(
        (500..10_000).contains(&changed),
        "step 2: the incremental must store the 500 appended pages and little else of 140,000: {i:#}"
    );
    let (f_stored, i_stored) = (f["stored_bytes"].as_i64().unwrap_or(0), i["stored_bytes"].as_i64().unwrap_or(-1));
    assert!(
        i_stored > 0 && i_stored * 3 < f_stored,
        "step 2: incremental stores {i_stored} bytes, full {f_stored}: {i:#}\n{f:#}"
    );

    // The WAL summaries named the changed pages: the incremental read them, not the gigabyte.
    let (read, bytes) = (i["bytes_read"].as_i64().unwrap_or(-1), i["bytes"].as_i64().unwrap_or(0));
    assert!(
        read >= 0 && read * 10 < bytes,
        "step 2: the incremental read {read} bytes of a {bytes}-byte cluster; with WAL summaries it must read under 10 %: {i:#}"
    );
    assert!(i["incremental"]["files_from_wal"].as_i64().unwrap_or(0) > 0, "step 2: no file was read from WAL summaries: {i:#}");

    // Step 3: restore the incremental and compare.
    let r = restore_cluster(&archiver, "inc1g-restored", &["--backup-id", &inc, "--target", "immediate"], Some(&inc));
    let restored_len = fs::metadata(r.pgdata.join(&second)).map(|m| m.len());
    assert_eq!(restored_len.ok(), Some(second_len), "step 3: {second} restored with the wrong length (or missing)");
    start_restored(&r);
    assert_eq!(r.psql(BIG_FINGERPRINT), expected, "step 3: big restored from {inc} differs from the source");
    assert_eq!(r.psql("SELECT pg_relation_size('big')"), expected_size, "step 3: size of big");
    r.stop();
    let checksums = pg_tool("pg_checksums", &["--check", "-D", r.pgdata.to_str().unwrap()]);
    checksums.assert_ok("step 3: pg_checksums --check on the restored cluster");
}

// ---------------------------------------------------------------------------
// 3. The command line, and what is refused without a backup to build on
// ---------------------------------------------------------------------------

#[test]
fn incremental_cli_and_refusals() {
    let (archiver, c) = extension_cluster("inccli", &[]);
    require_sql_api(&c);
    c.psql("CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 100000) g");
    // Hint bits set now: the first scan after the full backup would otherwise rewrite (and
    // WAL-log, with data checksums) every page of t, and the incrementals would hold all of it.
    c.psql("VACUUM (FREEZE) t");

    // Step 1: no backup yet, nothing to build on: refused from SQL and from the command line,
    // and nothing is stored.
    for sql in ["SELECT backup.start_incremental()", "SELECT backup.start_incremental(wait => true)"] {
        let r = c.try_psql(sql);
        assert!(!r.success(), "step 1: `{sql}` with no backup must raise an ERROR, it returned\n{r}");
        assert!(
            r.stderr.contains("take a full backup first"),
            "step 1: `{sql}` must say \"take a full backup first\"\n{r}"
        );
    }
    let r = try_cli_backup(&archiver, &c, true);
    assert!(!r.success() && r.signal.is_none(), "step 1: backup --incremental with no backup must fail cleanly\n{r}");
    assert!(
        r.output().contains("take a full backup first"),
        "step 1: backup --incremental must say \"take a full backup first\"\n{r}"
    );
    assert_eq!(cli_list_ids(&archiver, "step 1"), Vec::<String>::new(), "step 1: a refused backup is listed");
    assert_eq!(archiver.storage().keys("backup/"), Vec::<String>::new(), "step 1: a refused backup stored objects");
    assert_eq!(
        c.psql("SELECT count(*) FROM backup.list() WHERE status = 'completed'"),
        "0",
        "step 1: backup.list(): {}",
        c.psql("SELECT string_agg(id || ' ' || status, ', ') FROM backup.list()")
    );

    // Step 2: a full backup and two incrementals on it from the command line.
    let full = cli_backup(&archiver, &c, false, "step 2 (full)");
    c.psql("UPDATE t SET v = 'changed' WHERE id <= 500");
    let i1 = cli_backup(&archiver, &c, true, "step 2 (first incremental)");
    c.psql("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(100001, 101000) g");
    let i2 = cli_backup(&archiver, &c, true, "step 2 (second incremental)");
    let cli = cli_completed(&archiver, "step 2");
    assert_chain(&cli, &[&full, &i1, &i2], "step 2 (wal-archiver list)");
    assert_incrementals_small(&cli, "step 2 (wal-archiver list)");
    let (r, report) = cli_verify(&archiver, &i2, "step 2");
    assert!(r.success() && problems(&report).is_empty(), "step 2: verify of the intact chain\n{r}");

    // Step 3: the catalog learns the chain from the repository, and an incremental started
    // from SQL builds on the newest backup, made by the command line.
    assert_eq!(c.psql("SELECT backup.resync()"), "3", "step 3: backup.resync() must count 3 backups");
    assert_chain_everywhere(&c, &archiver, &[&full, &i1, &i2], "step 3");
    c.psql("DELETE FROM t WHERE id % 1000 = 0");
    let i3 = sql_backup(&c, true, "step 3");
    assert_chain_everywhere(&c, &archiver, &[&full, &i1, &i2, &i3], "step 3 (after an SQL incremental)");
}

// ---------------------------------------------------------------------------
// 4. A damaged ancestor; deleting a backup others build on
// ---------------------------------------------------------------------------

#[test]
fn damaged_ancestor_and_delete_rules() {
    // No autovacuum: `big` must stay untouched after the full backup, so every incremental's
    // restore needs its object from the full one.
    let (archiver, c) = extension_cluster("incdamage", &[("autovacuum", "off")]);
    require_sql_api(&c);
    c.psql("CREATE TABLE big AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 300000) g");
    c.psql("CREATE TABLE small (id int, v text)");
    c.psql("VACUUM (FREEZE) big");
    let full = sql_backup(&c, false, "full");
    c.psql("INSERT INTO small SELECT g, md5(g::text) FROM generate_series(1, 1000) g");
    let i1 = sql_backup(&c, true, "first incremental");
    c.psql("INSERT INTO small SELECT g, md5(g::text) FROM generate_series(1001, 2000) g");
    let i2 = sql_backup(&c, true, "second incremental");
    let rows = assert_chain_everywhere(&c, &archiver, &[&full, &i1, &i2], "setup");
    assert_incrementals_small(&rows, "setup");
    let (r, report) = cli_verify(&archiver, &i2, "intact");
    assert!(r.success() && problems(&report).is_empty(), "intact chain: verify {i2}\n{r}");

    // Step 1: a flipped bit in the full backup's largest object (big's data) is found by
    // verifying the newest incremental, and named with the backup it belongs to.
    let key = largest_data_object(&archiver, &full);
    let relative = key.strip_prefix(&format!("backup/{full}/")).unwrap_or(&key).to_string();
    archiver.storage().flip_middle_bit(&key, 0x10);
    let (r, report) = cli_verify(&archiver, &i2, "step 1");
    assert_eq!(r.code, 1, "step 1: verify {i2} must exit 1 after a bit flip in its ancestor's {key}\n{r}");
    let found = problems(&report);
    assert!(
        found.iter().any(|p| p.contains(&key) && p.contains(&full)),
        "step 1: no problem names {key} of {full}: {found:#?}"
    );
    let report = sql_json(&c, &format!("SELECT backup.verify('{i2}')"));
    assert_eq!(report["ok"], false, "step 1: backup.verify('{i2}'): {report:#}");
    assert!(
        problems(&report).iter().any(|p| p.contains(&key) && p.contains(&full)),
        "step 1: backup.verify('{i2}') names no problem with {key}: {report:#}"
    );

    // Step 2: restoring the newest incremental fails, names the object, and leaves nothing a
    // server could be started on as if it were a restored backup.
    let dest = TestDir::new("incdamage-dest");
    let pgdata = dest.join("pgdata");
    let r = restore_into(&archiver, &pgdata, &["--backup-id", &i2, "--target", "immediate"]);
    assert!(!r.success() && r.signal.is_none(), "step 2: restore of {i2} over a damaged {key} must fail cleanly\n{r}");
    let out = r.output();
    assert!(
        out.contains(&key) || (out.contains(&full) && out.contains(&relative)),
        "step 2: the failed restore must name the damaged object {key}\n{r}"
    );
    for file in ["backup_label", "recovery.signal"] {
        assert!(!pgdata.join(file).exists(), "step 2: the failed restore wrote {file}\n{r}");
    }

    // Step 3: a backup others build on is not deleted, neither from SQL nor from the command
    // line; the refusal names the dependants and nothing goes.
    let r = c.try_psql(&format!("SELECT backup.delete('{full}')"));
    assert!(!r.success(), "step 3: backup.delete('{full}') must raise an ERROR while {i1} and {i2} build on it\n{r}");
    assert!(r.stderr.contains(&i1) && r.stderr.contains(&i2), "step 3: the refusal must name {i1} and {i2}\n{r}");
    let r = c.try_psql(&format!("SELECT backup.delete('{i1}')"));
    assert!(!r.success(), "step 3: backup.delete('{i1}') must raise an ERROR while {i2} builds on it\n{r}");
    assert!(r.stderr.contains(&i2), "step 3: the refusal must name {i2}\n{r}");
    let r = archiver.run(&["delete", &full]);
    assert!(!r.success() && r.signal.is_none(), "step 3: wal-archiver delete {full} must be refused\n{r}");
    assert!(r.output().contains(&i1) && r.output().contains(&i2), "step 3: the refusal must name {i1} and {i2}\n{r}");
    assert_eq!(
        sql_completed(&c).iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
        vec![full.clone(), i1.clone(), i2.clone()],
        "step 3: refused deletes changed the catalog"
    );
    assert_eq!(
        cli_list_ids(&archiver, "step 3"),
        vec![full.clone(), i1.clone(), i2.clone()],
        "step 3: refused deletes"
    );

    // Step 4: cascade deletes the full backup and everything built on it.
    let r = c.try_psql(&format!("SELECT backup.delete('{full}', cascade => true)"));
    assert!(
        r.success(),
        "step 4: backup.delete('{full}', cascade => true)\n{r}\n--- server log ---\n{}",
        c.log_tail(20)
    );
    assert_eq!(c.psql("SELECT count(*) FROM backup.list()"), "0", "step 4: backup.list() after the cascade");
    assert_eq!(cli_list_ids(&archiver, "step 4"), Vec::<String>::new(), "step 4: wal-archiver list after the cascade");
    for id in [&full, &i1, &i2] {
        let left = archiver.storage().keys(&format!("backup/{id}/"));
        assert!(left.is_empty(), "step 4: the repository still holds objects of {id}: {left:?}");
    }
}

// ---------------------------------------------------------------------------
// 5. kill -9 in the middle of an incremental
// ---------------------------------------------------------------------------

/// What pgbench_accounts holds, in one line.
const ACCOUNTS_FINGERPRINT: &str = "SELECT count(*) || ' rows, ' || sum(hashtext(a::text)::bigint) || ', ' \
     || (SELECT string_agg(f || '=' || n, ',' ORDER BY f) FROM \
         (SELECT rtrim(filler) AS f, count(*) AS n FROM pgbench_accounts GROUP BY 1) s) FROM pgbench_accounts a";

#[test]
fn kill9_mid_incremental_keeps_chain() {
    // One copying thread; the interrupted incremental alone runs throttled.
    let (archiver, c) = extension_cluster("inckill", &[("backup.workers", "1")]);
    require_sql_api(&c);
    c.pgbench(&["-i", "-s", "5", "-q"]);
    let full = sql_backup(&c, false, "full");
    c.psql("UPDATE pgbench_accounts SET filler = 'first' WHERE aid <= 1000");
    let i1 = sql_backup(&c, true, "first incremental");

    // Step 1: half the accounts rewritten (every page of the table changes), read at 10 MB/s:
    // the incremental is certainly still copying when it is killed.
    c.psql("UPDATE pgbench_accounts SET filler = 'second' WHERE aid % 2 = 0");
    set_max_rate(&c, "10MB");
    let killed = c.psql("SELECT backup.start_incremental()");
    assert!(is_backup_id(&killed), "step 1: backup.start_incremental() returned {killed:?}");
    wait_until(&format!("step 1: {killed} to copy something"), BACKUP_WAIT, || {
        let done = c.psql(&format!("SELECT coalesce(max(bytes_done), 0) FROM backup.progress WHERE id = '{killed}'"));
        if done.parse::<i64>().unwrap_or(0) > 0 {
            return true;
        }
        let status = sql_status(&c, &killed);
        assert!(
            matches!(status.as_ref().map(|(s, _)| s.as_str()), Some("queued" | "running")),
            "step 1: incremental {killed} is {status:?} before any progress was seen\n{}",
            c.log_tail(20)
        );
        false
    });
    let worker = backup_worker_pid(&c, &killed);
    let ready = log_count(&c, "database system is ready to accept connections");
    kill9(worker, "the backup worker");
    wait_until("step 1: the crash restart after killing the worker", Duration::from_secs(120), || {
        log_count(&c, "database system is ready to accept connections") > ready
    });
    wait_until("step 1: the server to accept connections again", Duration::from_secs(60), || {
        c.try_psql("SELECT 1").success()
    });

    // Step 2: the killed incremental is failed, never completed, and not in the repository.
    let mut status = None;
    wait_until(&format!("step 2: {killed} to settle in backup.list()"), Duration::from_secs(120), || {
        status = sql_status(&c, &killed);
        !matches!(status.as_ref().map(|(s, _)| s.as_str()), Some("queued" | "running"))
    });
    assert_eq!(
        status.as_ref().map(|(s, _)| s.as_str()),
        Some("failed"),
        "step 2: the killed incremental {killed} must show as failed: {status:?}"
    );
    assert!(
        !cli_list_ids(&archiver, "step 2").contains(&killed),
        "step 2: wal-archiver list shows the killed incremental {killed} as complete"
    );

    // Step 3: the next incremental builds on the last good backup, and restores.
    set_max_rate(&c, "0");
    let i3 = sql_backup(&c, true, "step 3");
    assert_ne!(i3, killed);
    assert_chain_everywhere(&c, &archiver, &[&full, &i1, &i3], "step 3");
    let verify = sql_json(&c, &format!("SELECT backup.verify('{i3}')"));
    assert_eq!(verify["ok"], true, "step 3: backup.verify('{i3}'): {verify:#}");
    let expected = c.psql(ACCOUNTS_FINGERPRINT);
    let r = restore_cluster(&archiver, "inckill-restored", &["--backup-id", &i3, "--target", "immediate"], Some(&i3));
    start_restored(&r);
    assert_eq!(r.psql(ACCOUNTS_FINGERPRINT), expected, "step 3: pgbench_accounts restored from {i3}");
    check_integrity_and_stop(&r, "step 3");
}

// ---------------------------------------------------------------------------
// 6. A restore point the extension never heard of
// ---------------------------------------------------------------------------

#[test]
fn restore_point_made_without_the_extension() {
    let (archiver, c) = archiving_cluster("incrp", &[]);
    let ledger = Ledger::create(&c);
    c.psql("CREATE TABLE bulk AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g");
    for v in 1..=5 {
        ledger.commit(v);
    }
    let a = cli_backup(&archiver, &c, false, "backup A");
    for v in 6..=8 {
        ledger.commit(v);
    }
    // Made by the server alone: nothing but the WAL knows where it is.
    let at_point = ledger.fingerprint();
    c.psql("SELECT pg_create_restore_point('before_b')");
    for v in 9..=11 {
        ledger.commit(v);
    }
    let b = cli_backup(&archiver, &c, false, "backup B");
    ledger.commit(12);
    let last = c.switch_wal();
    c.wait_archived(&last, ARCHIVE_WAIT);
    assert_ne!(ledger.fingerprint(), at_point);

    // Step 1: the point lies before B is consistent, so only A can reach it.
    let r = restore_cluster(&archiver, "incrp-named", &["--target-name", "before_b"], Some(&a));
    start_restored(&r);
    assert_eq!(Ledger::of(&r).fingerprint(), at_point, "step 1: data restored to restore point before_b (not {b})");
    assert!(
        log_count(&r, "recovery stopping at restore point \"before_b\"") > 0,
        "step 1: recovery did not stop at the restore point\n{}",
        r.log_tail(30)
    );
    drop(r);

    // Step 2: a name that is nowhere in the archive is refused, pointing to --backup-id.
    let dest = TestDir::new("incrp-dest");
    let pgdata = dest.join("pgdata");
    let r = restore_into(&archiver, &pgdata, &["--target-name", "no_such_point"]);
    assert!(!r.success() && r.signal.is_none(), "step 2: restore to an unknown restore point must be refused\n{r}");
    assert!(
        r.output().contains("no_such_point") && r.output().contains("--backup-id"),
        "step 2: the refusal must name the point and suggest --backup-id\n{r}"
    );
    assert!(absent_or_empty(&pgdata), "step 2: the refused restore wrote into {}", pgdata.display());
}

// ---------------------------------------------------------------------------
// 7. WAL summaries: the same pages as a scan, and a gap falls back to the scan
// ---------------------------------------------------------------------------

/// `wal-archiver backup --incremental --check-wal-summaries`, which must succeed and find the
/// summaries complete; returns the id.
#[track_caller]
fn checked_incremental(archiver: &Archiver, c: &Cluster, step: &str) -> String {
    std::thread::sleep(Duration::from_millis(1100));
    let conninfo = c.conninfo();
    let r = archiver.run(&["backup", "--pgdata", c.pgdata.to_str().unwrap(), "--dbname", &conninfo, "--incremental", "--check-wal-summaries"]);
    assert!(r.success(), "{step}: incremental with --check-wal-summaries\n{r}\n--- server log ---\n{}", c.log_tail(20));
    assert!(r.stderr.contains("read only where they changed"), "{step}: the WAL summaries were not used\n{r}");
    assert!(
        r.stderr.contains("0 changed pages missed"),
        "{step}: the WAL summaries missed pages a page-LSN scan finds (the backup stored them anyway)\n{r}"
    );
    let id = r.stdout.split(':').next().unwrap_or("").trim().to_string();
    assert!(is_backup_id(&id), "{step}: {r}");
    let listed = cli_list(archiver, step);
    let entry = listed.iter().find(|b| b["id"] == id.as_str()).unwrap_or_else(|| panic!("{step}: {id} not listed"));
    assert!(entry["incremental"]["files_from_wal"].as_i64().unwrap_or(0) > 0, "{step}: {entry:#}");
    assert_eq!(entry["incremental"]["wal_missed"], Value::Array(vec![]), "{step}: {entry:#}");
    id
}

/// Under a real workload (pgbench writing, DDL of every kind that moves files), the blocks the
/// WAL summaries name for each relation file include every page a page-LSN scan would store:
/// `--check-wal-summaries` reads each vouched-for file whole and reports any page changed since
/// the parent's start that the summaries left out. Then the chain restores exactly.
#[test]
fn wal_summaries_agree_with_a_page_scan_under_load() {
    let (archiver, c) = archiving_cluster("incsum", &[("autovacuum_naptime", "1s")]);
    c.pgbench(&["-i", "-s", "5", "-q"]);
    c.psql("CREATE TABLE keep (id int PRIMARY KEY, v text); INSERT INTO keep SELECT g, md5(g::text) FROM generate_series(1, 50000) g");
    c.psql("CREATE TABLE doomed AS SELECT g FROM generate_series(1, 10000) g");
    c.psql("VACUUM (FREEZE)");
    let full = cli_backup(&archiver, &c, false, "step 1 (full)");

    let load = c.spawn_pgbench(&["-c", "2", "-T", "60", "-R", "100", "-n"]);
    c.psql("UPDATE keep SET v = 'x' WHERE id % 97 = 0");
    c.psql("CREATE INDEX keep_v ON keep (v)");
    c.psql("DROP TABLE doomed");
    c.psql("CREATE TABLE fresh AS SELECT g FROM generate_series(1, 20000) g");
    c.psql("TRUNCATE pgbench_history");
    c.psql("CREATE DATABASE s1 STRATEGY wal_log");
    c.psql("CREATE DATABASE s2 STRATEGY file_copy");
    let i1 = checked_incremental(&archiver, &c, "step 2 (first incremental, under load)");

    c.psql("VACUUM FULL keep");
    c.psql("DELETE FROM keep WHERE id > 45000");
    c.psql("VACUUM keep");
    c.psql("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 50 = 0");
    psql_db(&c, "s1", "CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g");
    let i2 = checked_incremental(&archiver, &c, "step 3 (second incremental, under load)");
    stop_loads(&c, vec![load]);

    let expected = c.psql("SELECT count(*) || ' ' || md5(string_agg(v, ',' ORDER BY id)) FROM keep");
    let r = restore_cluster(&archiver, "incsum-restored", &["--backup-id", &i2, "--target", "immediate"], Some(&i2));
    start_restored(&r);
    assert_eq!(r.psql("SELECT count(*) || ' ' || md5(string_agg(v, ',' ORDER BY id)) FROM keep"), expected, "step 4: keep restored from {i2}");
    assert_eq!(r.psql("SELECT count(*) FROM fresh"), "20000", "step 4: fresh");
    assert_eq!(r.psql("SELECT to_regclass('doomed') IS NULL"), "t", "step 4: doomed was dropped before {i1}");
    assert_eq!(psql_db(&r, "s1", "SELECT count(*) FROM t"), "1000", "step 4: s1.t");
    check_integrity_and_stop(&r, "step 4");
    let _ = full;
}

/// An incremental whose WAL summaries have a gap (here: unreadable ones) still succeeds by
/// scanning every file, says so in backup.events and in its manifest, and restores exactly.
#[test]
fn summary_gap_falls_back_to_scan_and_says_so() {
    let (archiver, c) = extension_cluster("incgap", &[]);
    require_sql_api(&c);
    c.psql("CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 50000) g");
    c.psql("VACUUM (FREEZE) t");
    sql_backup(&c, false, "step 1 (full)");
    c.psql("UPDATE t SET v = 'changed' WHERE id % 100 = 0");
    let seg = c.switch_wal();
    c.wait_archived(&seg, ARCHIVE_WAIT);

    // Every summary made so far becomes garbage: not one can be trusted.
    let store = archiver.storage();
    let damaged = store.keys("wal-summary/");
    assert!(!damaged.is_empty(), "step 2: push stored no WAL summary");
    for key in &damaged {
        store.write(key, b"not a summary");
    }
    let id = sql_backup(&c, true, "step 2 (incremental over damaged summaries)");
    let events = c.psql(&format!("SELECT string_agg(message, E'\\n') FROM backup.events WHERE backup_id = '{id}'"));
    assert!(events.contains("WAL summaries not usable"), "step 2: backup.events must say the summaries were not used:\n{events}");
    let method = sql_json(&c, &format!("SELECT backup.get('{id}')->'manifest'->'incremental'"));
    assert!(method["wal_unusable"].is_string() && method["files_scanned"].as_i64().unwrap_or(0) > 0, "step 2: {method:#}");

    let expected = c.psql("SELECT count(*) || ' ' || md5(string_agg(v, ',' ORDER BY id)) FROM t");
    let r = restore_cluster(&archiver, "incgap-restored", &["--backup-id", &id, "--target", "immediate"], Some(&id));
    start_restored(&r);
    assert_eq!(r.psql("SELECT count(*) || ' ' || md5(string_agg(v, ',' ORDER BY id)) FROM t"), expected, "step 3: t restored from {id}");
    check_integrity_and_stop(&r, "step 3");
}
