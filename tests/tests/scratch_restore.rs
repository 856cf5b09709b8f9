//! End-to-end test of scratch restores from SQL on a real PostgreSQL 15 cluster:
//! `backup.restore()` to a time target and to the end of the archive at once (each gets its own
//! instance), both queried as of their targets, then removed with `backup.restore_stop()`; an
//! unknown backup fails with its reason in `backup.restores`, a directory inside the live data
//! directory is refused.

use e2e::*;
use std::path::Path;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(300);

/// (status, pgdata, socket_dir, port, error) of restore `id`.
fn restore_row(c: &Cluster, id: &str) -> (String, String, String, String, String) {
    let row = c.psql(&format!("SELECT status || '|' || pgdata || '|' || socket_dir || '|' || port || '|' || coalesce(error, '') FROM backup.restores WHERE id = {id}"));
    let f: Vec<&str> = row.splitn(5, '|').collect();
    assert_eq!(f.len(), 5, "restore {id}: {row:?}");
    (f[0].into(), f[1].into(), f[2].into(), f[3].into(), f[4].into())
}

#[track_caller]
fn wait_status(c: &Cluster, id: &str, want: &str) -> (String, String, String, String, String) {
    wait_until(&format!("restore {id} {want}"), WAIT, || {
        let s = restore_row(c, id).0;
        assert!(s == want || !["failed", "ready", "stopped"].contains(&s.as_str()), "restore {id} is {s}, not {want}: {:?}\n{}", restore_row(c, id), c.log_tail(30));
        s == want
    });
    restore_row(c, id)
}

/// One query on a scratch instance, through its socket.
fn scratch_sql(socket_dir: &str, port: &str, sql: &str) -> String {
    let mut cmd = postgres_command(pg_bin("psql"));
    cmd.args(["-X", "-A", "-t", "-h", socket_dir, "-p", port, "-d", "postgres", "-c", sql]);
    let r = run(cmd, COMMAND_TIMEOUT);
    r.assert_ok(&format!("query the scratch instance: {sql}"));
    r.stdout.trim().to_string()
}

/// Scratch instances are postmasters of their own, not children of the test's cluster: if the
/// test fails before `restore_stop()`, stop whatever still runs under the scratch directory.
struct StopLeftovers(std::path::PathBuf);

impl Drop for StopLeftovers {
    fn drop(&mut self) {
        for entry in std::fs::read_dir(&self.0).into_iter().flatten().flatten() {
            if entry.path().join("postmaster.pid").exists() {
                let mut cmd = postgres_command(pg_bin("pg_ctl"));
                cmd.args(["stop", "-m", "immediate", "-D"]).arg(entry.path());
                let _ = run(cmd, COMMAND_TIMEOUT);
            }
        }
    }
}

#[test]
fn scratch_restores_from_sql() {
    let scratch = TestDir::new("scratch-dir");
    let _leftovers = StopLeftovers(scratch.path().to_path_buf());
    let wal_archiver = archiver_bin().to_string_lossy().into_owned();
    let scratch_dir = scratch.path().to_string_lossy().into_owned();
    let (_archiver, c) = extension_cluster("scratch", &[("backup.wal_archiver", wal_archiver.as_str()), ("backup.scratch_dir", scratch_dir.as_str())]);
    c.psql("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 1000) g");
    c.psql("SELECT backup.start_full(wait => true)");
    c.psql("INSERT INTO t SELECT g, 'after the backup' FROM generate_series(1001, 1500) g");
    let target = c.psql("SELECT now()");
    std::thread::sleep(Duration::from_millis(1500));
    c.psql("INSERT INTO t SELECT g, 'after the target' FROM generate_series(1501, 2200) g");
    let last = c.switch_wal();
    c.wait_archived(&last, WAIT);

    // Two restores at once: each its own directory and instance.
    let at_time = c.psql(&format!("SELECT backup.restore(target_time => '{target}')"));
    let latest = c.psql("SELECT backup.restore()");
    assert_ne!(at_time, latest);
    let (_, data1, sock1, port1, _) = wait_status(&c, &at_time, "ready");
    let (_, data2, sock2, port2, _) = wait_status(&c, &latest, "ready");
    assert_ne!(data1, data2);
    assert!(data1.starts_with(&scratch_dir) && data2.starts_with(&scratch_dir), "{data1} {data2}");
    assert_eq!(scratch_sql(&sock1, &port1, "SELECT count(*) FROM t"), "1500", "as of the target time");
    assert_eq!(scratch_sql(&sock2, &port2, "SELECT count(*) FROM t"), "2200", "at the end of the archive");
    assert_eq!(scratch_sql(&sock1, &port1, "SELECT pg_is_in_recovery()"), "f", "promoted");
    assert_eq!(scratch_sql(&sock1, &port1, "SHOW archive_mode"), "off");
    assert_eq!(scratch_sql(&sock1, &port1, "SHOW listen_addresses"), "");
    assert_eq!(scratch_sql(&sock1, &port1, "SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'pg_backup_ext%'"), "0", "no scheduler, alerts or HTTP server of its own");
    let progress = c.psql(&format!("SELECT bytes_done = bytes_total AND bytes_total > 0 AND restored_at <= ready_at AND backup_id IS NOT NULL FROM backup.restores WHERE id = {at_time}"));
    assert_eq!(progress, "t");
    // The live cluster is untouched: its rows and its archiving.
    assert_eq!(c.psql("SELECT count(*) FROM t"), "2200");

    for id in [&at_time, &latest] {
        c.psql(&format!("SELECT backup.restore_stop({id})"));
        let (status, data, ..) = restore_row(&c, id);
        assert_eq!(status, "stopped");
        assert!(!Path::new(&data).exists(), "{data} removed");
    }
    c.psql(&format!("SELECT backup.restore_stop({at_time})")); // stopping twice is fine

    // An unknown backup: the worker fails and says why; nothing is left behind.
    let unknown = c.psql("SELECT backup.restore(backup_id => 'backup_19990101_000000')");
    let (_, data, _, _, error) = wait_status(&c, &unknown, "failed");
    assert!(error.contains("backup_19990101_000000"), "{error}");
    assert!(!Path::new(&data).join("PG_VERSION").exists());
    // Inside the live data directory: refused at once.
    let inside = c.try_psql(&format!("SELECT backup.restore(\"into\" => '{}/scratch')", c.pgdata.display()));
    assert!(!inside.success() && inside.output().contains("inside the live data directory"), "{}", inside.output());
    let stop_unknown = c.try_psql("SELECT backup.restore_stop(999999)");
    assert!(!stop_unknown.success() && stop_unknown.output().contains("no restore 999999"), "{}", stop_unknown.output());
}

/// Wait for a table restore to end; its rows copied and the table they went into.
#[track_caller]
fn wait_done(c: &Cluster, id: &str) -> (i64, String) {
    wait_status(c, id, "done");
    let row = c.psql(&format!("SELECT rows_copied || '|' || into_table FROM backup.restores WHERE id = {id}"));
    let (rows, into) = row.split_once('|').unwrap_or_else(|| panic!("{row:?}"));
    (rows.parse().unwrap(), into.to_string())
}

/// The DBA's case: someone deleted old orders at 14:31; put them back without losing the orders
/// placed since, while the application keeps writing. Then the table as of that moment into a
/// new table, and rows overwritten by mistake replaced.
#[test]
fn table_restore_in_three_modes_under_writes() {
    let scratch = TestDir::new("table-scratch-dir");
    let _leftovers = StopLeftovers(scratch.path().to_path_buf());
    let wal_archiver = archiver_bin().to_string_lossy().into_owned();
    let scratch_dir = scratch.path().to_string_lossy().into_owned();
    let (_archiver, c) = extension_cluster("table-restore", &[("backup.wal_archiver", wal_archiver.as_str()), ("backup.scratch_dir", scratch_dir.as_str())]);
    c.psql(
        "CREATE TABLE orders (id bigserial PRIMARY KEY, created_at timestamptz NOT NULL, item text NOT NULL);
         INSERT INTO orders (created_at, item) SELECT now() - (3000 - g) * interval '1 hour', 'item ' || g FROM generate_series(1, 3000) g",
    );
    c.psql("SELECT backup.start_full(wait => true)");
    c.psql("INSERT INTO orders (created_at, item) SELECT now(), 'after the backup ' || g FROM generate_series(1, 200) g");
    let before_delete = c.psql("SELECT now()");
    std::thread::sleep(Duration::from_millis(1200));
    let deleted = c.psql("WITH d AS (DELETE FROM orders WHERE created_at < now() - interval '2000 hours' RETURNING 1) SELECT count(*) FROM d");
    assert_eq!(deleted, "1000");
    // The application goes on writing orders, before and during the restore.
    let script = c.dir().write("orders.sql", "INSERT INTO orders (created_at, item) VALUES (now(), 'concurrent');\n");
    let writer = c.spawn_pgbench(&["-n", "-c", "2", "-R", "50", "-T", "600", "-f", &script.to_string_lossy()]);
    c.psql("INSERT INTO orders (created_at, item) SELECT now(), 'placed since ' || g FROM generate_series(1, 50) g");
    let last = c.switch_wal();
    c.wait_archived(&last, WAIT);

    // merge_missing: exactly the deleted rows come back, with their ids and values.
    let id = c.psql(&format!("SELECT backup.restore_table('orders', target_time => '{before_delete}', mode => 'merge_missing')"));
    let (rows, into) = wait_done(&c, &id);
    assert_eq!((rows, into.as_str()), (1000, "orders"));
    assert_eq!(c.psql("SELECT count(*) FROM orders WHERE id <= 1000"), "1000");
    assert_eq!(c.psql("SELECT count(*) FROM orders WHERE id <= 1000 AND item <> 'item ' || id"), "0");
    assert_eq!(c.psql("SELECT count(*) FROM orders WHERE item LIKE 'placed since %'"), "50", "rows written since are untouched");
    assert!(!Path::new(&restore_row(&c, &id).1).exists(), "the scratch instance is removed");

    // new_table: the table as it was, beside the live one.
    let id = c.psql(&format!("SELECT backup.restore_table('orders', target_time => '{before_delete}')"));
    let (rows, into) = wait_done(&c, &id);
    assert_eq!(rows, 3200);
    assert!(into.starts_with("restored.orders_"), "{into}");
    assert_eq!(c.psql(&format!("SELECT count(*) FROM {into}")), "3200");

    // replace, with a filter: rows overwritten by mistake get their old values back.
    c.psql("UPDATE orders SET item = 'oops' WHERE id BETWEEN 1 AND 100");
    std::thread::sleep(Duration::from_millis(1200));
    let id = c.psql(&format!("SELECT backup.restore_table('orders', target_time => '{before_delete}', mode => 'replace', where_clause => 'id BETWEEN 1 AND 100')"));
    let (rows, _) = wait_done(&c, &id);
    assert_eq!(rows, 100);
    assert_eq!(c.psql("SELECT count(*) FROM orders WHERE item = 'oops'"), "0");
    assert_eq!(c.psql("SELECT count(*) FROM orders WHERE item LIKE 'placed since %'"), "50");

    let concurrent: i64 = c.psql("SELECT count(*) FROM orders WHERE item = 'concurrent'").parse().unwrap();
    writer.stop();
    assert!(concurrent > 0, "the application wrote while the restores ran");
    assert_eq!(c.psql("SELECT count(*) FROM orders WHERE id <= 1000 AND item LIKE 'item %'"), "1000", "nothing lost by the replace");

    // Refusals: an unknown mode at once.
    let bad = c.try_psql("SELECT backup.restore_table('orders', mode => 'upsert')");
    assert!(!bad.success() && bad.output().contains("upsert"), "{}", bad.output());
}

/// (status, problems joined) of the restore test of restore `id`, once it has ended.
#[track_caller]
fn test_outcome(c: &Cluster, id: &str) -> (String, String) {
    wait_until(&format!("restore test {id} recorded"), WAIT, || c.psql(&format!("SELECT count(*) FROM backup.restore_tests WHERE restore_id = {id}")) == "1");
    let row = c.psql(&format!("SELECT status || '|' || array_to_string(problems, ' // ') FROM backup.restore_tests WHERE restore_id = {id}"));
    let (status, problems) = row.split_once('|').unwrap();
    (status.to_string(), problems.to_string())
}

/// A restore test passes on a sound backup, recording the RTO by phase (in backup.stats() too),
/// and fails naming the problem when a check query fails, when the schema differs, and when a
/// backup object is corrupted; health() then says so.
#[test]
fn restore_tests_pass_and_fail_naming_the_problem() {
    let scratch = TestDir::new("test-scratch-dir");
    let _leftovers = StopLeftovers(scratch.path().to_path_buf());
    let wal_archiver = archiver_bin().to_string_lossy().into_owned();
    let scratch_dir = scratch.path().to_string_lossy().into_owned();
    let (archiver, c) = extension_cluster("restore-test", &[("backup.wal_archiver", wal_archiver.as_str()), ("backup.scratch_dir", scratch_dir.as_str())]);
    c.psql("CREATE TABLE t (id int PRIMARY KEY, v text); CREATE INDEX ON t (v); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 20000) g");
    let backup = c.psql("SELECT backup.start_full(wait => true)");
    c.psql("INSERT INTO backup.restore_checks (name, query) VALUES ('t has rows', 'SELECT count(*) = 20000 FROM t')");

    // Sound.
    let id = c.psql("SELECT backup.restore_test()");
    let (status, problems) = test_outcome(&c, &id);
    assert_eq!(status, "passed", "{problems}");
    let phases = c.psql(&format!("SELECT rto_seconds > 0 AND restore_seconds > 0 AND recovery_seconds >= 0 AND check_seconds > 0 AND abs(rto_seconds - restore_seconds - recovery_seconds) < 0.01 FROM backup.restore_tests WHERE restore_id = {id}"));
    assert_eq!(phases, "t");
    assert_eq!(c.psql("SELECT (backup.stats()->'rto'->>'seconds')::float > 0"), "t");
    assert_eq!(c.psql("SELECT status FROM backup.health() WHERE name = 'restore_test'"), "ok");
    assert!(!Path::new(&restore_row(&c, &id).1).exists(), "the instance is removed");

    // A check that fails.
    c.psql("INSERT INTO backup.restore_checks (name, query) VALUES ('impossible', 'SELECT count(*) > 1000000 FROM t')");
    let (status, problems) = test_outcome(&c, &c.psql("SELECT backup.restore_test()"));
    assert_eq!(status, "failed");
    assert!(problems.contains("check impossible") && !problems.contains("t has rows"), "{problems}");
    c.psql("DELETE FROM backup.restore_checks WHERE name = 'impossible'");

    // The schema differs: a table created since the last archived WAL is not in the copy.
    c.psql("SELECT pg_switch_wal()");
    std::thread::sleep(Duration::from_secs(1));
    c.psql("CREATE TABLE only_live (x int)");
    let (status, problems) = test_outcome(&c, &c.psql("SELECT backup.restore_test()"));
    assert_eq!(status, "failed");
    assert!(problems.contains("only in the live cluster: relation public.only_live"), "{problems}");
    c.psql("SELECT pg_switch_wal()");

    // A corrupted backup object: the restore itself fails, naming it.
    let key = archiver.storage().keys(&format!("backup/{backup}/data/")).into_iter().next().expect("a data object");
    archiver.storage().flip_middle_bit(&key, 0x10);
    let (status, problems) = test_outcome(&c, &c.psql(&format!("SELECT backup.restore_test('{backup}')")));
    assert_eq!(status, "failed");
    assert!(problems.contains("the restore failed") && problems.contains(&key), "{problems}");
    let health = c.psql("SELECT status || ' ' || message FROM backup.health() WHERE name = 'restore_test'");
    assert!(health.starts_with("critical") && health.contains(&key), "{health}");
}
