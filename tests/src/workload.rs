//! Workloads whose state at a recorded moment can be compared exactly with a restored cluster,
//! and the steps of restoring one (`wal-archiver restore`, start, integrity checks).
//!
//! **The ledger.** A table of small, immutable rows written by one background client
//! (`pgbench -c 1`) and by [`Ledger::cut_xid`]. At most one ledger transaction is ever in
//! flight (the background load has one client; a cut holds a lock that excludes it), so row
//! ids are handed out in commit order and any state recovery can produce is a *prefix* of the
//! ids. That makes "exactly the rows committed before the target" checkable: count and digest
//! of the restored rows against the source's rows with the same ids.
//!
//! **Cuts.** To tie a recovery target to a ledger state while the load keeps committing, a cut
//! takes `LOCK TABLE ledger IN SHARE ROW EXCLUSIVE MODE` (which waits for the load's
//! transaction in flight to commit and holds the next one off), then reads the ledger together
//! with the WAL insert position, the clock and, optionally, makes a restore point. Every ledger
//! commit before the lock lies before all of these in WAL and in time; every one after the
//! lock is released lies after them. Recovery to any of them must therefore yield exactly the
//! ledger the cut read, however busy the server is.
//!
//! **The world.** Everything else a test changes with DDL (tables created, dropped, truncated,
//! rewritten; indexes; databases): [`world`] describes it in one comparable text, computed
//! the same way on the source (at a cut) and on a restored cluster. Only the test thread runs
//! DDL, so the world does not change between a cut and the test's next statement.

use std::path::Path;
use std::time::Duration;

use crate::{pg_bin, postgres_command, run, sql_status, wait_until, Archiver, Background, Cluster, RunResult, COMMAND_TIMEOUT};

/// Upper bound for a restored cluster to finish archive recovery and promote.
pub const RECOVERY_WAIT: Duration = Duration::from_secs(300);

/// The ledger's content in one line: row count, highest id and a digest of every (id, v) pair
/// in id (= commit) order; a scalar subquery, so it can sit in a larger select list.
pub const LEDGER_FINGERPRINT: &str = "(SELECT count(*) || ' rows, max id ' || coalesce(max(id), 0) || ', ' \
     || coalesce(md5(string_agg(id || ':' || v, ',' ORDER BY id)), '-') FROM ledger)";

/// The current moment as a UTC timestamp with an explicit zone (microseconds), the form
/// `--target-time` documents; an expression.
pub const UTC_NOW_EXPR: &str = "to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'";

// ---------------------------------------------------------------------------
// SQL in any database
// ---------------------------------------------------------------------------

/// Like [`Cluster::try_psql`], in database `db`.
pub fn try_psql_db(c: &Cluster, db: &str, sql: &str) -> RunResult {
    let mut cmd = postgres_command(pg_bin("psql"));
    cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-U", "postgres", "-d", db, "-h"])
        .arg(&c.sockdir)
        .args(["-p", &c.port.to_string(), "-c", sql]);
    run(cmd, COMMAND_TIMEOUT)
}

/// Like [`Cluster::psql`], in database `db`; must succeed.
#[track_caller]
pub fn psql_db(c: &Cluster, db: &str, sql: &str) -> String {
    let r = try_psql_db(c, db, sql);
    assert!(r.success(), "psql on cluster {} (database {db}):\n{r}\n--- server log ---\n{}", c.name, c.log_tail(20));
    r.stdout.trim_end_matches('\n').to_string()
}

/// Run a PostgreSQL client program (pg_amcheck, pg_checksums, …) as postgres.
pub fn pg_tool(name: &str, args: &[&str]) -> RunResult {
    let mut cmd = postgres_command(pg_bin(name));
    cmd.args(args);
    run(cmd, COMMAND_TIMEOUT)
}

// ---------------------------------------------------------------------------
// The ledger
// ---------------------------------------------------------------------------

/// The ledger of one cluster.
pub struct Ledger<'a> {
    pub c: &'a Cluster,
}

/// A moment recorded by [`Ledger::cut`]: the ledger as committed then, and the recovery
/// targets that reach exactly that state.
#[derive(Debug, Clone)]
pub struct Cut {
    pub ledger: String,
    pub rows: i64,
    /// `pg_current_wal_insert_lsn()`, read under the lock.
    pub lsn: String,
    /// The clock, read under the lock (UTC, with zone).
    pub time: String,
    /// The restore point made under the lock, if one was asked for.
    pub restore_point: Option<String>,
}

/// A transaction recorded by [`Ledger::cut_xid`]: its xid and the ledger once it committed
/// (including the row it wrote).
#[derive(Debug, Clone)]
pub struct XidCut {
    pub xid: String,
    pub ledger: String,
    pub rows: i64,
}

/// How a cut makes its restore point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestorePoint {
    /// `pg_create_restore_point(name)`: the server alone, nothing recorded in the repository.
    Plain,
    /// `backup.create_restore_point(name)` (pg_backup_ext), which also records it.
    Extension,
}

impl<'a> Ledger<'a> {
    /// Create the table (ids from 1, in commit order, see the module documentation).
    pub fn create(c: &'a Cluster) -> Ledger<'a> {
        c.psql(
            "CREATE TABLE ledger (id bigserial PRIMARY KEY, v int NOT NULL, \
             at timestamptz NOT NULL DEFAULT clock_timestamp())",
        );
        Ledger { c }
    }

    /// The ledger an earlier [`Ledger::create`] made (on a restored cluster, say).
    pub fn of(c: &'a Cluster) -> Ledger<'a> {
        Ledger { c }
    }

    pub fn count(&self) -> i64 {
        self.c.psql("SELECT count(*) FROM ledger").parse().unwrap()
    }

    pub fn fingerprint(&self) -> String {
        self.c.psql(&format!("SELECT {LEDGER_FINGERPRINT}"))
    }

    /// The fingerprint of the source's rows up to id `max_id` (what a restored prefix must equal).
    pub fn fingerprint_upto(&self, max_id: i64) -> String {
        self.c.psql(&format!(
            "SELECT count(*) || ' rows, max id ' || coalesce(max(id), 0) || ', ' \
             || coalesce(md5(string_agg(id || ':' || v, ',' ORDER BY id)), '-') FROM ledger WHERE id <= {max_id}"
        ))
    }

    /// One committed row, written by the test thread.
    pub fn commit(&self, v: i64) {
        self.c.psql(&format!("INSERT INTO ledger (v) VALUES ({v})"));
    }

    /// Small committed transactions into the ledger (one client, about `rate` per second)
    /// until stopped; waits for the first commits.
    pub fn start_load(&self, rate: u32) -> Background {
        let script =
            self.c.dir().write("ledger.pgbench", "\\set v random(1, 1000)\nINSERT INTO ledger (v) VALUES (:v);\n");
        let script = script.to_string_lossy().into_owned();
        let before = self.count();
        let rate = rate.to_string();
        let load = self.c.spawn_pgbench(&["-n", "-f", &script, "-c", "1", "-R", &rate, "-T", "1800"]);
        wait_until("the ledger load's first commits", Duration::from_secs(60), || self.count() > before);
        load
    }

    /// The ledger, WAL position and time at one moment between ledger commits, and
    /// optionally a restore point `name` made at that moment (see the module documentation).
    #[track_caller]
    pub fn cut(&self, restore_point: Option<(&str, RestorePoint)>) -> Cut {
        let rp = match restore_point {
            None => String::new(),
            Some((name, RestorePoint::Plain)) => format!(" || '|' || pg_create_restore_point('{name}')"),
            Some((name, RestorePoint::Extension)) => format!(" || '|' || backup.create_restore_point('{name}')"),
        };
        let row = self.locked(&format!(
            "SELECT {LEDGER_FINGERPRINT} || '|' || pg_current_wal_insert_lsn() || '|' || {UTC_NOW_EXPR}{rp};"
        ));
        let f: Vec<&str> = row.split('|').collect();
        assert_eq!(f.len(), if restore_point.is_some() { 4 } else { 3 }, "cut: unexpected row {row:?}");
        Cut {
            ledger: f[0].to_string(),
            rows: rows_of(f[0]),
            lsn: f[1].to_string(),
            time: f[2].to_string(),
            restore_point: restore_point.map(|(n, _)| n.to_string()),
        }
    }

    /// Commit one ledger row in a transaction of its own (under the lock) and return its xid
    /// and the ledger including it: `--target-xid` of it must restore exactly that.
    #[track_caller]
    pub fn cut_xid(&self, v: i64) -> XidCut {
        let row = self.locked(&format!(
            "INSERT INTO ledger (v) VALUES ({v}); SELECT txid_current() || '|' || {LEDGER_FINGERPRINT};"
        ));
        let (xid, ledger) = row.split_once('|').unwrap_or_else(|| panic!("cut_xid: unexpected row {row:?}"));
        assert!(xid.parse::<u64>().is_ok(), "cut_xid: txid_current() returned {xid:?}");
        XidCut { xid: xid.to_string(), ledger: ledger.to_string(), rows: rows_of(ledger) }
    }

    /// `statements` in one transaction holding the ledger lock; the last output line.
    #[track_caller]
    fn locked(&self, statements: &str) -> String {
        let sql = format!("BEGIN; LOCK TABLE ledger IN SHARE ROW EXCLUSIVE MODE; {statements} COMMIT;");
        let out = self.c.psql(&sql);
        out.lines().last().unwrap_or("").to_string()
    }
}

/// The row count at the start of a ledger fingerprint.
fn rows_of(fingerprint: &str) -> i64 {
    fingerprint
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a ledger fingerprint: {fingerprint:?}"))
}

/// Stop load generators and wait until their sessions have left the server, so that none of
/// their transactions can still commit afterwards.
pub fn stop_loads(c: &Cluster, loads: Vec<Background>) {
    for load in loads {
        load.stop();
    }
    wait_until("the pgbench sessions to end", Duration::from_secs(60), || {
        c.psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgbench'") == "0"
    });
}

/// pgbench's TPC-B-like transactions keep four sums equal (accounts, tellers, branches, and
/// the history of deltas); a state recovery produced by cutting one of them in half does not.
/// Returns the four sums, which must be equal.
#[track_caller]
pub fn pgbench_balances(c: &Cluster) -> [i64; 4] {
    let row = c.psql(
        "SELECT (SELECT coalesce(sum(abalance), 0) FROM pgbench_accounts) || '|' \
         || (SELECT coalesce(sum(tbalance), 0) FROM pgbench_tellers) || '|' \
         || (SELECT coalesce(sum(bbalance), 0) FROM pgbench_branches) || '|' \
         || (SELECT coalesce(sum(delta), 0) FROM pgbench_history)",
    );
    let f: Vec<i64> = row.split('|').map(|x| x.parse().unwrap()).collect();
    [f[0], f[1], f[2], f[3]]
}

// ---------------------------------------------------------------------------
// The world: what DDL made of the cluster
// ---------------------------------------------------------------------------

/// The tables, indexes and databases of a cluster, with the content of every logged table
/// (unlogged ones by name only: a restore empties them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct World {
    /// One comparable text.
    pub text: String,
    /// (database, table) of each unlogged table.
    pub unlogged: Vec<(String, String)>,
}

/// Tables whose content the world leaves to other checks (they change under the load).
fn checked_elsewhere(table: &str) -> bool {
    table == "ledger" || table.starts_with("pgbench_")
}

/// The [`World`] of `c`: every connectable non-template database; in each, schema `public`'s
/// tables (count and digest of the rows, except the ledger and pgbench's tables) and indexes;
/// in `postgres`, how many pgbench accounts carry each `tag…` filler.
pub fn world(c: &Cluster) -> World {
    let dbs = c.psql(
        "SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database WHERE datallowconn AND NOT datistemplate",
    );
    let mut text = format!("databases: {dbs}\n");
    let mut unlogged = Vec::new();
    for db in dbs.split(',') {
        let tables = psql_db(
            c,
            db,
            "SELECT c.relname || ' ' || c.relpersistence::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'public' AND c.relkind = 'r' ORDER BY c.relname",
        );
        for line in tables.lines() {
            let (table, persistence) = line.rsplit_once(' ').unwrap();
            let content = if checked_elsewhere(table) {
                "(checked separately)".to_string()
            } else if persistence == "u" {
                unlogged.push((db.to_string(), table.to_string()));
                "unlogged".to_string()
            } else {
                psql_db(
                    c,
                    db,
                    &format!(
                        "SELECT count(*) || ' rows, ' || coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '-') \
                         FROM public.{table} t"
                    ),
                )
            };
            text.push_str(&format!("{db}.{table}: {content}\n"));
        }
        let indexes = psql_db(
            c,
            db,
            "SELECT coalesce(string_agg(c.relname || ' ON ' || t.relname, ', ' ORDER BY c.relname), '') \
             FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'",
        );
        text.push_str(&format!("{db} indexes: {indexes}\n"));
    }
    if c.psql("SELECT to_regclass('public.pgbench_accounts') IS NOT NULL") == "t" {
        let tags = c.psql(
            "SELECT coalesce(string_agg(tag || '=' || n, ', ' ORDER BY tag), '') FROM \
             (SELECT rtrim(filler) AS tag, count(*) AS n FROM pgbench_accounts WHERE filler LIKE 'tag%' GROUP BY 1) s",
        );
        text.push_str(&format!("pgbench_accounts tags: {tags}\n"));
    }
    World { text, unlogged }
}

// ---------------------------------------------------------------------------
// Backups from the command line, restores
// ---------------------------------------------------------------------------

/// Whether `s` has the form `backup_YYYYMMDD_HHMMSS`.
pub fn is_backup_id(s: &str) -> bool {
    let b = s.as_bytes();
    s.len() == 22
        && s.starts_with("backup_")
        && b[15] == b'_'
        && b[7..15].iter().chain(&b[16..22]).all(|c| c.is_ascii_digit())
}

/// `wal-archiver backup [--incremental]` of a running cluster, which may fail.
pub fn try_cli_backup(archiver: &Archiver, c: &Cluster, incremental: bool) -> RunResult {
    let mut args = vec!["backup", "--pgdata", c.pgdata.to_str().unwrap(), "--dbname"];
    let conninfo = c.conninfo();
    args.push(&conninfo);
    if incremental {
        args.push("--incremental");
    }
    archiver.run(&args)
}

/// `wal-archiver backup [--incremental]`, which must succeed; returns the new backup's id.
/// Waits a second first: ids have one-second resolution, and a backup of a small cluster can
/// follow the previous one within the same second.
#[track_caller]
pub fn cli_backup(archiver: &Archiver, c: &Cluster, incremental: bool, step: &str) -> String {
    std::thread::sleep(Duration::from_millis(1100));
    let r = try_cli_backup(archiver, c, incremental);
    assert!(
        r.success(),
        "{step}: wal-archiver backup (incremental: {incremental})\n{r}\n--- server log ---\n{}",
        c.log_tail(20)
    );
    let id = r.stdout.split(':').next().unwrap_or("").trim().to_string();
    assert!(is_backup_id(&id), "{step}: backup must print `backup_YYYYMMDD_HHMMSS: …`\n{r}");
    id
}

/// `wal-archiver restore --pgdata DEST ARGS…`, as postgres.
pub fn restore_into(archiver: &Archiver, dest: &Path, args: &[&str]) -> RunResult {
    let mut all = vec!["restore", "--pgdata", dest.to_str().unwrap()];
    all.extend_from_slice(args);
    archiver.run(&all)
}

/// Restore into a new cluster directory; the restore must succeed and name the backup it used
/// (`expect_backup`, when given) in its report.
#[track_caller]
pub fn restore_cluster(archiver: &Archiver, name: &str, args: &[&str], expect_backup: Option<&str>) -> Cluster {
    let c = Cluster::unpopulated(name);
    let r = restore_into(archiver, &c.pgdata, args);
    r.assert_ok(&format!("{name}: wal-archiver restore {}", args.join(" ")));
    if let Some(id) = expect_backup {
        assert!(
            r.stdout.contains(&format!("restored {id} ")),
            "{name}: restore {} must use backup {id} (the newest consistent before the target)\n{r}",
            args.join(" ")
        );
    }
    for file in ["backup_label", "recovery.signal", "PG_VERSION", "global/pg_control"] {
        assert!(c.pgdata.join(file).is_file(), "{name}: restore did not write {file}\n{r}");
    }
    c
}

/// Start a restored cluster (its own socket and port, no archiving, no preloaded extension)
/// and wait until recovery has reached its target and promoted.
#[track_caller]
pub fn start_restored(c: &Cluster) {
    c.set(&[("archive_mode", "off"), ("shared_preload_libraries", "")]);
    c.start();
    wait_until(&format!("cluster {} to finish recovery and promote", c.name), RECOVERY_WAIT, || {
        assert!(c.is_running(), "cluster {}: server stopped during recovery\n{}", c.name, c.log_tail(40));
        let r = c.try_psql("SELECT pg_is_in_recovery()");
        r.success() && r.stdout.trim() == "f"
    });
}

/// `pg_amcheck --heapallindexed` over every database of the running cluster `c`, then stop it
/// and `pg_checksums --check` its data directory. `c` is stopped afterwards.
#[track_caller]
pub fn check_integrity_and_stop(c: &Cluster, step: &str) {
    let port = c.port.to_string();
    let sock = c.sockdir.to_string_lossy().into_owned();
    let amcheck = pg_tool(
        "pg_amcheck",
        &["-U", "postgres", "-h", &sock, "-p", &port, "--all", "--install-missing", "--heapallindexed"],
    );
    assert!(
        amcheck.success(),
        "{step}: pg_amcheck on cluster {}\n{amcheck}\n--- server log ---\n{}",
        c.name,
        c.log_tail(30)
    );
    c.stop();
    let checksums = pg_tool("pg_checksums", &["--check", "-D", c.pgdata.to_str().unwrap()]);
    assert!(checksums.success(), "{step}: pg_checksums --check on cluster {}\n{checksums}", c.name);
}

/// Nothing at `dir`, or an empty directory.
pub fn absent_or_empty(dir: &Path) -> bool {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_none(),
        Err(_) => !dir.exists(),
    }
}

/// Lines of the server log that contain `needle`.
pub fn log_count(c: &Cluster, needle: &str) -> usize {
    std::fs::read_to_string(&c.log).unwrap_or_default().lines().filter(|l| l.contains(needle)).count()
}

/// The pid of the background worker running backup `id`: the catalog's `worker_pid` if it
/// has one, else the only `pg_backup_ext…` process in pg_stat_activity.
#[track_caller]
pub fn backup_worker_pid(c: &Cluster, id: &str) -> i32 {
    let r = c.try_psql(&format!("SELECT worker_pid FROM backup.backups WHERE id = '{id}'"));
    if let Some(pid) = r.success().then(|| r.stdout.trim().parse::<i32>().ok()).flatten() {
        return pid;
    }
    let rows =
        c.psql("SELECT pid || ' ' || backend_type FROM pg_stat_activity WHERE backend_type = 'pg_backup_ext backup'");
    let pids: Vec<&str> = rows.lines().collect();
    assert_eq!(pids.len(), 1, "backup {id}: expected one pg_backup_ext worker in pg_stat_activity, found {pids:?}");
    pids[0].split(' ').next().unwrap().parse().unwrap()
}

/// `kill -9` a process of a cluster the test started.
pub fn kill9(pid: i32, what: &str) {
    // SAFETY: plain syscall; the process belongs to a cluster this test started.
    let r = unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(r, 0, "kill -9 {what} (pid {pid}): {}", std::io::Error::last_os_error());
}

/// `backup.start_full(wait => true)` or `backup.start_incremental(wait => true)`: must return
/// the id of a backup that `backup.list()` then shows as completed.
#[track_caller]
pub fn sql_backup(c: &Cluster, incremental: bool, step: &str) -> String {
    let function = if incremental { "start_incremental" } else { "start_full" };
    let r = c.try_psql(&format!("SELECT backup.{function}(wait => true)"));
    assert!(r.success(), "{step}: backup.{function}(wait => true) failed\n{r}\n--- server log ---\n{}", c.log_tail(30));
    let id = r.stdout.trim().to_string();
    assert!(is_backup_id(&id), "{step}: backup.{function}(wait => true) returned {id:?}");
    let status = sql_status(c, &id);
    assert_eq!(
        status.as_ref().map(|(s, _)| s.as_str()),
        Some("completed"),
        "{step}: after backup.{function}(wait => true) returned, {id} is {status:?}"
    );
    id
}
