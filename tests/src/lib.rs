//! Harness for the end-to-end tests of `wal-archiver`.
//!
//! The tests drive real programs only: PostgreSQL 15 clusters (`initdb`, `pg_ctl`,
//! `psql`, `pg_basebackup`, `pgbench`) and the `wal-archiver` binary, exactly as an
//! operator would wire them together with `archive_command` / `restore_command`.
//!
//! Two facts of the environment shape this module:
//!
//! * The test runner is root, but PostgreSQL refuses to run as root. Every child
//!   process is therefore started as the OS user `postgres`, and every directory a
//!   child touches is owned by `postgres`. `wal-archiver` itself also runs as
//!   `postgres`, because the repository files it creates from a test must later be
//!   writable by the server's `archive_command`.
//! * Tests run in parallel threads of one process. Each cluster gets its own
//!   temporary directory (with its own Unix socket directory, no TCP) and its own
//!   port number, and is stopped in `Drop`, so a failing test leaves nothing running.
//!
//! Children are started with `Command::uid/gid` rather than through `runuser`: the
//! effect (run as `postgres`) is the same, but the program under test is then our
//! direct child, so `wait4` reports *its* exit status and peak RSS rather than
//! those of a wrapper, and no PAM session is opened for each of the hundreds of
//! short commands a test run issues.
//!
//! Clusters wired to a fresh repository and the helpers several test files need
//! (backup catalog rows, the repository's backup list) are in `fixtures`; what the
//! repository holds is looked at through the storage trait, by object key
//! (`inspect`, [`Archiver::storage`]), never by opening its files.

mod emulators;
mod fixtures;
mod inspect;
mod receivers;
pub mod workload;

pub use emulators::*;
pub use fixtures::*;
pub use inspect::*;
pub use receivers::*;

use backup_core::storage::Location;
use std::ffi::CString;
use std::fmt;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

/// Where Debian puts the PostgreSQL 15 server binaries.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// Clusters are created with the default segment size.
pub const WAL_SEGMENT_SIZE: usize = 16 * 1024 * 1024;
/// Size of one WAL page (the first one carries the long header with the system id).
pub const XLOG_BLCKSZ: usize = 8192;
/// Upper bound for any single short command (psql, push, fetch, ...): a hung child
/// fails the test instead of hanging the whole run.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

// ---------------------------------------------------------------------------
// The `postgres` OS user
// ---------------------------------------------------------------------------

/// uid and gid of the OS user `postgres`, looked up once.
pub fn postgres_ids() -> (u32, u32) {
    static IDS: OnceLock<(u32, u32)> = OnceLock::new();
    *IDS.get_or_init(|| {
        let name = CString::new("postgres").unwrap();
        // SAFETY: getpwnam returns a pointer to static storage; OnceLock makes this
        // the only call in the process, and the fields are copied out at once.
        unsafe {
            let pw = libc::getpwnam(name.as_ptr());
            assert!(!pw.is_null(), "the OS user `postgres` does not exist");
            ((*pw).pw_uid, (*pw).pw_gid)
        }
    })
}

/// Make `path` (not recursively) owned by `postgres`.
pub fn give_to_postgres(path: &Path) {
    let (uid, gid) = postgres_ids();
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown postgres {}: {e}", path.display()));
}

/// A `Command` that runs `program` as `postgres`, with a clean environment for
/// the programs involved (no inherited `PG*` variable can redirect a client to the
/// wrong server, no `BACKUP_*` variable can override the archiver's configuration
/// file; servers pass this environment on to archive/restore commands) and a
/// working directory `postgres` may enter.
pub fn postgres_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let (uid, gid) = postgres_ids();
    let mut cmd = Command::new(program);
    cmd.uid(uid).gid(gid).current_dir("/tmp").env("HOME", "/tmp").env("LC_ALL", "C");
    for (key, _) in std::env::vars_os() {
        let key_str = key.to_string_lossy();
        if key_str.starts_with("PG") || key_str.starts_with("BACKUP_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// Path of a PostgreSQL server-side binary such as `initdb`.
pub fn pg_bin(name: &str) -> PathBuf {
    Path::new(PG_BIN).join(name)
}

// ---------------------------------------------------------------------------
// Running children
// ---------------------------------------------------------------------------

/// What a finished child left behind.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// Human-readable command line, for assertion messages.
    pub command: String,
    /// Exit status, or -1 when the child was killed by a signal.
    pub code: i32,
    /// The signal that killed the child, if any.
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// Peak resident set size in KiB, as reported by `wait4`'s `ru_maxrss` (which
    /// covers the descendants the child waited for). From `run` this figure
    /// includes the test process's own RSS, inherited at fork; use
    /// `run_measuring_rss` for a program's own peak.
    pub max_rss_kib: i64,
}

impl RunResult {
    pub fn success(&self) -> bool {
        self.code == 0
    }
    /// stdout and stderr together, for "the output mentions X" checks.
    pub fn output(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
    /// Panic with the full output unless the exit status is 0.
    #[track_caller]
    pub fn assert_ok(&self, step: &str) -> &Self {
        assert!(self.success(), "{step}: expected success\n{self}");
        self
    }
}

impl fmt::Display for RunResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.signal {
            Some(sig) => writeln!(f, "`{}` was killed by signal {sig}", self.command)?,
            None => writeln!(f, "`{}` exited with status {}", self.command, self.code)?,
        }
        writeln!(f, "--- stdout ---\n{}", self.stdout.trim_end())?;
        write!(f, "--- stderr ---\n{}", self.stderr.trim_end())
    }
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Run `cmd` to completion with stdin closed and stdout/stderr captured, killing it
/// after `timeout`. The child is reaped with `wait4` so its rusage is available
/// (`std::process::Child::wait` discards it); its `ru_maxrss` is only an upper
/// bound here, see `run_measuring_rss`.
pub fn run(mut cmd: Command, timeout: Duration) -> RunResult {
    let command = describe(&cmd);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start `{command}`: {e}"));
    let reader = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = reader(Box::new(child.stdout.take().unwrap()));
    let err = reader(Box::new(child.stderr.take().unwrap()));

    let pid = child.id() as libc::pid_t;
    let deadline = Instant::now() + timeout;
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data; all-zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let mut nap = Duration::from_millis(1);
    loop {
        // SAFETY: pid is our own unreaped child; status and usage are valid pointers.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            break;
        }
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            panic!("wait4 for `{command}`: {e}");
        }
        if Instant::now() >= deadline {
            // SAFETY: plain syscalls on our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::wait4(pid, &mut status, 0, &mut usage);
            }
            panic!("`{command}` did not finish within {timeout:?} and was killed");
        }
        thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(20));
    }
    // `child` is dropped without `wait`: it has been reaped above.
    drop(child);

    let (code, signal) =
        if libc::WIFEXITED(status) { (libc::WEXITSTATUS(status), None) } else { (-1, Some(libc::WTERMSIG(status))) };
    RunResult {
        command,
        code,
        signal,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
        max_rss_kib: usage.ru_maxrss as i64,
    }
}

/// Run a command as root (chmod and friends) and insist that it succeeds.
#[track_caller]
pub fn run_root_ok(program: &str, args: &[&str]) {
    let mut cmd = Command::new(program);
    cmd.args(args);
    run(cmd, COMMAND_TIMEOUT).assert_ok(&format!("{program} {}", args.join(" ")));
}

/// A child left running while the test goes on (a load generator such as
/// `pgbench -T …`), its stdout and stderr going to a log file. Stopped with
/// `stop`, or killed (SIGKILL) and reaped on drop, so a failing test leaves no
/// load running.
pub struct Background {
    command: String,
    child: Option<std::process::Child>,
    /// Where the child's stdout and stderr go.
    pub log: PathBuf,
}

impl Background {
    /// Start `cmd` with stdin closed and stdout/stderr appended to `log`
    /// (created by root if missing: the child inherits the open descriptor).
    pub fn spawn(mut cmd: Command, log: &Path) -> Background {
        let command = describe(&cmd);
        let open = || {
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .unwrap_or_else(|e| panic!("open {}: {e}", log.display()))
        };
        cmd.stdin(Stdio::null()).stdout(open()).stderr(open());
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start `{command}`: {e}"));
        Background { command, child: Some(child), log: log.to_path_buf() }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Whether the child has not exited yet.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().unwrap().try_wait(), Ok(None))
    }

    /// SIGTERM, then wait (up to 30 s, then SIGKILL) until the child has exited;
    /// returns what it wrote to its log. An exit before the SIGTERM is an error: a
    /// load generator that stopped early did not run for as long as the test thinks.
    #[track_caller]
    pub fn stop(mut self) -> String {
        let mut child = self.child.take().unwrap();
        let early = child.try_wait().expect("try_wait");
        // SAFETY: plain syscall on our own, not yet reaped child.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().expect("try_wait").is_none() {
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        if let Some(status) = early {
            panic!("`{}` ended on its own ({status}) before it was stopped:\n{}", self.command, log.trim_end());
        }
        log
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Poll `ready` every 100 ms until it returns true; panic after `timeout`, naming
/// `what` so the failing wait is easy to identify.
#[track_caller]
pub fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------
// Temporary directories
// ---------------------------------------------------------------------------

/// A temporary directory under /tmp owned by `postgres` (mode 0700, so only the
/// servers, the archiver and root can enter it), removed on drop.
///
/// Set `E2E_KEEP=1` to keep every directory (and the server logs in them) for
/// post-mortem inspection; the path is printed when it is kept.
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
}

impl TestDir {
    pub fn new(label: &str) -> TestDir {
        let dir = tempfile::Builder::new()
            .prefix(&format!("e2e-{label}-"))
            .tempdir_in("/tmp")
            .expect("create temporary directory under /tmp");
        give_to_postgres(dir.path());
        TestDir { dir: Some(dir) }
    }

    pub fn path(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }

    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path().join(rel)
    }

    /// Create `rel` (and its missing parents inside this directory), owned by postgres.
    pub fn mkdir(&self, rel: impl AsRef<Path>) -> PathBuf {
        let target = self.join(rel);
        fs::create_dir_all(&target).unwrap_or_else(|e| panic!("mkdir {}: {e}", target.display()));
        let mut p = target.as_path();
        while p != self.path() {
            give_to_postgres(p);
            p = p.parent().unwrap();
        }
        target
    }

    /// Write a file (creating its parent directories), owned by postgres.
    pub fn write(&self, rel: impl AsRef<Path>, contents: impl AsRef<[u8]>) -> PathBuf {
        let target = self.join(rel);
        if let Ok(parent_rel) = target.parent().unwrap().strip_prefix(self.path()) {
            self.mkdir(parent_rel);
        }
        fs::write(&target, contents).unwrap_or_else(|e| panic!("write {}: {e}", target.display()));
        give_to_postgres(&target);
        target
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::env::var_os("E2E_KEEP").is_some() {
            let path = self.dir.take().unwrap().keep();
            eprintln!("E2E_KEEP: kept {}", path.display());
        }
    }
}

// ---------------------------------------------------------------------------
// PostgreSQL clusters
// ---------------------------------------------------------------------------

/// A port number no other cluster of this test process uses. The servers listen
/// on Unix sockets in their own directories only, so the number merely has to be
/// unique per process; the pid-based base keeps concurrent runs apart too.
fn next_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed) % 50;
    40000 + (std::process::id() % 400) as u16 * 50 + n
}

/// One row of `pg_stat_archiver`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiverStats {
    pub archived_count: i64,
    pub last_archived_wal: String,
    pub failed_count: i64,
    pub last_failed_wal: String,
}

/// A PostgreSQL 15 cluster living in its own temporary directory:
/// `DIR/pgdata`, `DIR/sock` (Unix socket directory) and `DIR/server.log`.
/// Dropping it stops the server (immediate mode) and removes the directory.
pub struct Cluster {
    pub name: String,
    pub pgdata: PathBuf,
    pub sockdir: PathBuf,
    pub port: u16,
    pub log: PathBuf,
    dir: TestDir,
}

impl Cluster {
    /// Directories for a cluster whose data directory does not exist yet.
    fn empty(name: &str) -> Cluster {
        let dir = TestDir::new(name);
        let sockdir = dir.mkdir("sock");
        Cluster {
            name: name.to_string(),
            pgdata: dir.join("pgdata"),
            sockdir,
            port: next_port(),
            log: dir.join("server.log"),
            dir,
        }
    }

    /// `initdb` a new cluster (data checksums, trust auth, superuser `postgres`)
    /// with settings that keep tests fast and deterministic; not started.
    pub fn initdb(name: &str) -> Cluster {
        let c = Cluster::empty(name);
        let mut cmd = postgres_command(pg_bin("initdb"));
        cmd.arg("--data-checksums")
            .arg("--auth=trust")
            .args(["-U", "postgres", "--locale=C", "-E", "UTF8", "--no-sync", "-D"])
            .arg(&c.pgdata);
        run(cmd, COMMAND_TIMEOUT).assert_ok(&format!("initdb for cluster {name}"));
        c.set(&[
            // fsync only protects the server against OS crashes, which these tests
            // do not simulate; turning it off saves a lot of time on a small machine.
            ("fsync", "off"),
            // No time-driven checkpoints: segments are not recycled behind a test's
            // back while it compares pg_wal files with fetched copies.
            ("checkpoint_timeout", "1h"),
            ("log_line_prefix", "%m [%p] "),
        ]);
        c
    }

    /// A new, not yet started cluster whose data directory is a fresh
    /// `pg_basebackup -X none` of `source` (so recovery needs the WAL archive).
    pub fn from_base_backup(source: &Cluster, name: &str) -> Cluster {
        let c = Cluster::empty(name);
        let mut cmd = postgres_command(pg_bin("pg_basebackup"));
        cmd.args(["-X", "none", "-c", "fast", "-U", "postgres", "-h"])
            .arg(&source.sockdir)
            .args(["-p", &source.port.to_string(), "-D"])
            .arg(&c.pgdata);
        run(cmd, COMMAND_TIMEOUT).assert_ok(&format!("pg_basebackup of {} into {name}", source.name));
        c
    }

    /// Directories for a cluster whose data directory does not exist yet, e.g. the
    /// destination of `wal-archiver restore`; `pgdata` is created by whoever fills it.
    pub fn unpopulated(name: &str) -> Cluster {
        Cluster::empty(name)
    }

    /// The temporary directory holding this cluster (for scratch files).
    pub fn dir(&self) -> &TestDir {
        &self.dir
    }

    pub fn pg_wal(&self) -> PathBuf {
        self.pgdata.join("pg_wal")
    }

    /// Append settings to `postgresql.auto.conf`, which is read last, so they win
    /// over anything in `postgresql.conf` or copied from a base backup's source.
    /// Takes effect on the next (re)start.
    pub fn set(&self, settings: &[(&str, &str)]) {
        let path = self.pgdata.join("postgresql.auto.conf");
        let mut text = fs::read_to_string(&path).unwrap_or_default();
        for (key, value) in settings {
            text.push_str(&format!("{key} = '{}'\n", value.replace('\'', "''")));
        }
        fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        give_to_postgres(&path);
    }

    /// Archive every completed segment with `wal-archiver push`.
    pub fn enable_archiving(&self, archiver: &Archiver) {
        self.set(&[("wal_level", "replica"), ("archive_mode", "on"), ("archive_command", &archiver.archive_command())]);
    }

    /// Turn this (base backup) cluster into one that performs archive recovery
    /// from `archiver`'s repository on its next start.
    pub fn enable_archive_recovery(&self, archiver: &Archiver) {
        self.set(&[("archive_mode", "off"), ("restore_command", &archiver.restore_command())]);
        let signal = self.pgdata.join("recovery.signal");
        fs::write(&signal, "").unwrap();
        give_to_postgres(&signal);
    }

    pub fn is_running(&self) -> bool {
        self.pgdata.join("postmaster.pid").exists()
    }

    /// Start the server and wait (up to 5 minutes) until it accepts connections.
    pub fn start(&self) {
        let mut cmd = postgres_command(pg_bin("pg_ctl"));
        cmd.arg("-D")
            .arg(&self.pgdata)
            .arg("-o")
            .arg(format!("-p {} -k {} -c listen_addresses=''", self.port, self.sockdir.display()))
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", "300", "start"]);
        let r = run(cmd, Duration::from_secs(330));
        assert!(r.success(), "starting cluster {}:\n{r}\n--- server log ---\n{}", self.name, self.log_tail(40));
    }

    /// Stop the server cleanly (fast mode).
    pub fn stop(&self) {
        self.pg_ctl_stop("fast").assert_ok(&format!("stopping cluster {}", self.name));
    }

    pub fn restart(&self) {
        self.stop();
        self.start();
    }

    fn pg_ctl_stop(&self, mode: &str) -> RunResult {
        let mut cmd = postgres_command(pg_bin("pg_ctl"));
        cmd.arg("-D").arg(&self.pgdata).args(["-m", mode, "-w", "-t", "120", "stop"]);
        run(cmd, Duration::from_secs(150))
    }

    /// The last `lines` lines of the server log (for failure messages).
    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// libpq keyword/value connection string for this cluster.
    pub fn conninfo(&self) -> String {
        format!("host={} port={} user=postgres dbname=postgres", self.sockdir.display(), self.port)
    }

    /// Run SQL with psql; returns the unaligned, tuples-only output without the
    /// trailing newline (for several statements: the last one's result).
    pub fn try_psql(&self, sql: &str) -> RunResult {
        let mut cmd = postgres_command(pg_bin("psql"));
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-U", "postgres", "-d", "postgres", "-h"])
            .arg(&self.sockdir)
            .args(["-p", &self.port.to_string(), "-c", sql]);
        run(cmd, COMMAND_TIMEOUT)
    }

    /// Like `try_psql`, but the statement must succeed.
    #[track_caller]
    pub fn psql(&self, sql: &str) -> String {
        let r = self.try_psql(sql);
        assert!(r.success(), "psql on cluster {}:\n{r}", self.name);
        r.stdout.trim_end_matches('\n').to_string()
    }

    /// Several SQL commands in one psql session, each its own `-c` and hence its own
    /// transaction (unlike `try_psql("A; B")`, which runs both in one), with no
    /// reconnection in between. Stops at the first error (its output is then on
    /// stderr, the earlier results on stdout, one line each).
    pub fn try_psql_commands(&self, sqls: &[&str]) -> RunResult {
        let mut cmd = postgres_command(pg_bin("psql"));
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-U", "postgres", "-d", "postgres", "-h"])
            .arg(&self.sockdir)
            .args(["-p", &self.port.to_string()]);
        for sql in sqls {
            cmd.args(["-c", sql]);
        }
        run(cmd, COMMAND_TIMEOUT)
    }

    /// pgbench against this cluster's `postgres` database, left running in the
    /// background (stop it with `Background::stop`); output goes to a log file
    /// next to the server log.
    pub fn spawn_pgbench(&self, args: &[&str]) -> Background {
        static N: AtomicU16 = AtomicU16::new(0);
        let log = self.dir.join(format!("pgbench-{}.log", N.fetch_add(1, Ordering::Relaxed)));
        Background::spawn(self.pgbench_command(args), &log)
    }

    fn pgbench_command(&self, args: &[&str]) -> Command {
        let mut cmd = postgres_command(pg_bin("pgbench"));
        cmd.args(["-U", "postgres", "-h"])
            .arg(&self.sockdir)
            .args(["-p", &self.port.to_string()])
            .args(args)
            .arg("postgres");
        cmd
    }

    /// The postmaster's pid, from the first line of `postmaster.pid` (None when the
    /// file is missing or unreadable).
    pub fn postmaster_pid(&self) -> Option<i32> {
        fs::read_to_string(self.pgdata.join("postmaster.pid")).ok()?.lines().next()?.trim().parse().ok()
    }

    /// Run pgbench against this cluster's `postgres` database; must succeed.
    #[track_caller]
    pub fn pgbench(&self, args: &[&str]) {
        let r = run(self.pgbench_command(args), Duration::from_secs(600));
        assert!(r.success(), "pgbench on cluster {}:\n{r}", self.name);
    }

    /// Name of the WAL segment currently being written.
    pub fn current_walfile(&self) -> String {
        self.psql("SELECT pg_walfile_name(pg_current_wal_lsn())")
    }

    /// Force a WAL switch and return the name of the segment that was closed (the
    /// one that must be archived next). `pg_walfile_name` of the switch position,
    /// which lies on a segment boundary, names the segment before the boundary.
    pub fn switch_wal(&self) -> String {
        self.psql("SELECT pg_walfile_name(pg_switch_wal())")
    }

    pub fn archiver_stats(&self) -> ArchiverStats {
        let row = self.psql(
            "SELECT archived_count, coalesce(last_archived_wal, ''), failed_count, \
             coalesce(last_failed_wal, '') FROM pg_stat_archiver",
        );
        let f: Vec<&str> = row.split('|').collect();
        assert_eq!(f.len(), 4, "unexpected pg_stat_archiver row {row:?}");
        ArchiverStats {
            archived_count: f[0].parse().unwrap(),
            last_archived_wal: f[1].to_string(),
            failed_count: f[2].parse().unwrap(),
            last_failed_wal: f[3].to_string(),
        }
    }

    /// Whether the server considers segment `wal` archived: its `.done` marker is
    /// present, or no `.ready` marker is left and `pg_stat_archiver` has gone past
    /// it (the archiver works oldest first, and `.done` files vanish at checkpoints).
    pub fn is_archived(&self, wal: &str) -> bool {
        let status = self.pg_wal().join("archive_status");
        if status.join(format!("{wal}.done")).exists() {
            return true;
        }
        let last = self.archiver_stats().last_archived_wal;
        !status.join(format!("{wal}.ready")).exists() && !last.is_empty() && last.as_str() >= wal
    }

    /// Wait until `wal` has been archived; on timeout the message includes the
    /// archiver statistics and the end of the server log.
    pub fn wait_archived(&self, wal: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.is_archived(wal) {
            if Instant::now() >= deadline {
                panic!(
                    "cluster {}: segment {wal} not archived within {timeout:?}; {:?}\n--- server log ---\n{}",
                    self.name,
                    self.archiver_stats(),
                    self.log_tail(30)
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Wait until archive recovery has finished and the server accepts writes.
    pub fn wait_recovery_done(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.try_psql("SELECT pg_is_in_recovery()");
            if r.success() && r.stdout.trim() == "f" {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "cluster {}: still in recovery after {timeout:?} (last psql: {})\n--- server log ---\n{}",
                    self.name,
                    r.output().trim(),
                    self.log_tail(40)
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Names of the segments with a `.ready` marker (waiting to be archived).
    pub fn ready_files(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.pg_wal().join("archive_status"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".ready").map(str::to_string))
            .collect();
        v.sort();
        v
    }

    /// "Database system identifier" from `pg_controldata`.
    pub fn system_identifier(&self) -> String {
        let mut cmd = postgres_command(pg_bin("pg_controldata"));
        cmd.arg("-D").arg(&self.pgdata);
        let r = run(cmd, COMMAND_TIMEOUT);
        r.assert_ok("pg_controldata");
        r.stdout
            .lines()
            .find_map(|l| l.strip_prefix("Database system identifier:"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| panic!("no system identifier in pg_controldata output:\n{r}"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("--- cluster {}: end of server log ---\n{}", self.name, self.log_tail(30));
        }
        if self.is_running() {
            let r = self.pg_ctl_stop("immediate");
            if !r.success() {
                eprintln!("cluster {}: could not stop server:\n{r}", self.name);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The binary under test
// ---------------------------------------------------------------------------

/// A binary of this workspace: `$env_var` if set, else `name` in the profile
/// directory this test executable was built into (`target/debug/deps/… →
/// target/debug/name`). Panics with a clear message when it is missing or when
/// user `postgres` (who runs it) cannot reach it.
fn workspace_binary(name: &str, env_var: &str, how_to_build: &str) -> PathBuf {
    let bin = match std::env::var_os(env_var) {
        Some(p) => PathBuf::from(p),
        None => {
            let exe = std::env::current_exe().expect("current_exe");
            let mut dir = exe.parent().unwrap().to_path_buf();
            if dir.ends_with("deps") {
                dir.pop();
            }
            dir.join(name)
        }
    };
    assert!(bin.is_file(), "{name} binary not found at {} ({how_to_build}, or point {env_var} at it)", bin.display());
    let bin = bin.canonicalize().unwrap();
    for dir in bin.ancestors().skip(1) {
        let mode = fs::metadata(dir).unwrap().permissions().mode();
        assert!(
            mode & 0o001 != 0,
            "{} is not searchable by others (mode {mode:o}); user postgres cannot run {}",
            dir.display(),
            bin.display()
        );
    }
    bin
}

/// Path of the `wal-archiver` binary under test (`$WAL_ARCHIVER_BIN` overrides).
pub fn archiver_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        workspace_binary("wal-archiver", "WAL_ARCHIVER_BIN", "build it with `cargo build -p wal-archiver`")
    })
    .clone()
}

/// Path of this crate's `e2e-rss-probe` helper (built with the tests).
pub fn rss_probe_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| workspace_binary("e2e-rss-probe", "E2E_RSS_PROBE", "build it with `cargo test -p e2e --no-run`"))
        .clone()
}

/// Run `program args…` as postgres through `e2e-rss-probe`, so that `max_rss_kib`
/// is the program's own peak RSS (see that binary for why `run` cannot tell).
/// Exit status, signal, stdout and stderr are the program's.
pub fn run_measuring_rss(program: &Path, args: &[&str], timeout: Duration) -> RunResult {
    let report_dir = TestDir::new("rss-report");
    let report = report_dir.join("report");
    let mut cmd = postgres_command(rss_probe_bin());
    cmd.arg(&report).arg(program).args(args);
    let mut r = run(cmd, timeout);
    let text = fs::read_to_string(&report).unwrap_or_else(|e| panic!("no report from e2e-rss-probe ({e}):\n{r}"));
    let f: Vec<i64> = text.split_whitespace().map(|x| x.parse().unwrap()).collect();
    assert_eq!(f.len(), 3, "bad e2e-rss-probe report {text:?}");
    r.command = describe(Command::new(program).args(args));
    r.code = f[0] as i32;
    r.signal = (f[1] != 0).then_some(f[1] as i32);
    r.max_rss_kib = f[2];
    r
}

/// Settings written to the archiver's TOML configuration file.
#[derive(Debug, Clone)]
pub struct ArchiverConfig {
    pub repo_path: PathBuf,
    /// Name the repository in a `[[repos]]` table with this name instead of `repo_path`.
    pub repos_table: Option<String>,
    pub key_file: Option<PathBuf>,
    pub encryption: bool,
    pub compression_level: i32,
    pub fetch_retries: u32,
    pub fetch_retry_delay_ms: u64,
    /// Appended as is, last (more `[[repos]]` tables).
    pub extra_toml: String,
    /// No local repository at all: `extra_toml` names the only ones.
    pub remote_only: bool,
}

impl ArchiverConfig {
    pub fn to_toml(&self) -> String {
        fn s(p: &Path) -> String {
            format!("\"{}\"", p.display().to_string().replace('\\', "\\\\").replace('"', "\\\""))
        }
        let mut t = String::new();
        if self.repos_table.is_none() && !self.remote_only {
            t.push_str(&format!("repo_path = {}\n", s(&self.repo_path)));
        }
        if let Some(k) = &self.key_file {
            t.push_str(&format!("key_file = {}\n", s(k)));
        }
        t.push_str(&format!(
            "encryption = {}\ncompression_level = {}\nfetch_retries = {}\nfetch_retry_delay_ms = {}\n",
            self.encryption, self.compression_level, self.fetch_retries, self.fetch_retry_delay_ms
        ));
        // Tables last: TOML puts every key after a table header into that table.
        if let Some(name) = self.repos_table.as_ref().filter(|_| !self.remote_only) {
            t.push_str(&format!("\n[[repos]]\nname = \"{name}\"\ntype = \"local\"\npath = {}\n", s(&self.repo_path)));
        }
        t.push_str(&self.extra_toml);
        t
    }
}

/// One `wal-archiver` configuration: a temporary directory (owned by postgres)
/// holding `archiver.toml`, `keys.json` and, unless the repository is shared
/// with another `Archiver`, the repository itself at `repo/`.
pub struct Archiver {
    pub config_path: PathBuf,
    pub config: ArchiverConfig,
    dir: TestDir,
    inspector: OnceLock<RepoInspector>,
}

impl Archiver {
    /// Fresh key (via `keygen`), repository path `DIR/repo` (created by `init`),
    /// encryption on, one quick fetch retry.
    pub fn new(label: &str) -> Archiver {
        let dir = TestDir::new(&format!("{label}-archiver"));
        let key_file = dir.join("keys.json");
        keygen(&key_file, None).assert_ok("keygen for a new archiver");
        let config = ArchiverConfig {
            repo_path: dir.join("repo"),
            repos_table: None,
            key_file: Some(key_file),
            encryption: true,
            compression_level: 3,
            fetch_retries: 1,
            fetch_retry_delay_ms: 100,
            extra_toml: String::new(),
            remote_only: false,
        };
        Archiver::with_config(dir, config)
    }

    /// A second configuration on the same repository, with its own, different key.
    pub fn with_other_key(&self, label: &str) -> Archiver {
        let dir = TestDir::new(&format!("{label}-archiver"));
        let key_file = dir.join("keys.json");
        keygen(&key_file, None).assert_ok("keygen for a second key");
        let config = ArchiverConfig { key_file: Some(key_file), ..self.config.clone() };
        Archiver::with_config(dir, config)
    }

    /// The same repository, key and settings, the repository named in a `[[repos]]` table.
    pub fn with_repos_table(&self, label: &str, name: &str) -> Archiver {
        let dir = TestDir::new(&format!("{label}-archiver"));
        let config = ArchiverConfig { repos_table: Some(name.to_string()), ..self.config.clone() };
        Archiver::with_config(dir, config)
    }

    /// Same key and settings, but the repository is `repo_path` (which may not exist).
    pub fn with_repo_path(&self, label: &str, repo_path: &Path) -> Archiver {
        let dir = TestDir::new(&format!("{label}-archiver"));
        let config = ArchiverConfig { repo_path: repo_path.to_path_buf(), ..self.config.clone() };
        Archiver::with_config(dir, config)
    }

    /// Same repository, key and settings, plus `toml` at the end of the file (more
    /// repositories).
    pub fn with_extra_toml(&self, label: &str, toml: &str) -> Archiver {
        let dir = TestDir::new(&format!("{label}-archiver"));
        let config = ArchiverConfig { extra_toml: toml.to_string(), ..self.config.clone() };
        Archiver::with_config(dir, config)
    }

    /// Same key and settings, and `toml`'s repositories instead of the local one.
    pub fn with_only_repos(&self, label: &str, toml: &str) -> Archiver {
        let dir = TestDir::new(&format!("{label}-archiver"));
        let config = ArchiverConfig { extra_toml: toml.to_string(), remote_only: true, ..self.config.clone() };
        Archiver::with_config(dir, config)
    }

    fn with_config(dir: TestDir, config: ArchiverConfig) -> Archiver {
        let config_path = dir.write("archiver.toml", config.to_toml());
        Archiver { config_path, config, dir, inspector: OnceLock::new() }
    }

    /// The repository directory itself. Only for what is about the local filesystem (making
    /// it unwritable, placing it somewhere on purpose); look at its contents through
    /// [`Archiver::storage`].
    pub fn repo(&self) -> &Path {
        &self.config.repo_path
    }

    /// Scratch space next to the configuration, owned by postgres.
    pub fn dir(&self) -> &TestDir {
        &self.dir
    }

    /// `wal-archiver --config CONF ARGS...`, run as postgres.
    pub fn run(&self, args: &[&str]) -> RunResult {
        let mut cmd = postgres_command(archiver_bin());
        cmd.arg("--config").arg(&self.config_path).args(args);
        run(cmd, COMMAND_TIMEOUT)
    }

    pub fn init(&self, pgdata: &Path) -> RunResult {
        self.run(&["init", "--pgdata", &pgdata.to_string_lossy()])
    }

    pub fn push(&self, path: &Path) -> RunResult {
        self.run(&["push", &path.to_string_lossy()])
    }

    /// `push`, run through `e2e-rss-probe` so `max_rss_kib` is the archiver's own peak.
    pub fn push_measuring_rss(&self, path: &Path) -> RunResult {
        let config = self.config_path.to_string_lossy();
        let path = path.to_string_lossy();
        run_measuring_rss(&archiver_bin(), &["--config", &config, "push", &path], COMMAND_TIMEOUT)
    }

    pub fn fetch(&self, name: &str, dest: &Path) -> RunResult {
        self.run(&["fetch", name, &dest.to_string_lossy()])
    }

    /// `info --output json`, which must succeed and print JSON.
    pub fn info(&self) -> serde_json::Value {
        let r = self.run(&["info", "--output", "json"]);
        r.assert_ok("wal-archiver info");
        serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("info printed invalid JSON ({e}):\n{r}"))
    }

    /// `wal-list --output json [--verify]`: the run and its parsed stdout.
    pub fn wal_list(&self, verify: bool) -> (RunResult, serde_json::Value) {
        let mut args = vec!["wal-list", "--output", "json"];
        if verify {
            args.push("--verify");
        }
        let r = self.run(&args);
        let v = serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("wal-list printed invalid JSON ({e}):\n{r}"));
        (r, v)
    }

    pub fn archive_command(&self) -> String {
        format!("{} --config {} push %p", archiver_bin().display(), self.config_path.display())
    }

    pub fn restore_command(&self) -> String {
        format!("{} --config {} fetch %f %p", archiver_bin().display(), self.config_path.display())
    }

    /// Where the repository lives, for the storage layer: the one constructor to change for
    /// running these tests against another backend.
    pub fn location(&self) -> Location {
        Location::Local { path: self.config.repo_path.clone() }
    }

    /// The repository seen through `backup_core::storage` (opened on first use): how tests
    /// look at and damage objects, by key, wherever the repository lives.
    pub fn storage(&self) -> &RepoInspector {
        self.inspector.get_or_init(|| RepoInspector::open(self.location()))
    }
}

/// `wal-archiver keygen --output FILE [--name NAME]`, as postgres. Run without
/// `--config`: the key file does not exist yet, so no configuration could name it.
pub fn keygen(output: &Path, name: Option<&str>) -> RunResult {
    let mut cmd = postgres_command(archiver_bin());
    cmd.arg("keygen").arg("--output").arg(output);
    if let Some(n) = name {
        cmd.args(["--name", n]);
    }
    run(cmd, COMMAND_TIMEOUT)
}

// ---------------------------------------------------------------------------
// WAL file names and file helpers
// ---------------------------------------------------------------------------

/// Timeline and segment number of a 24-hex-digit segment name (16 MB segments).
pub fn parse_segment_name(name: &str) -> Option<(u32, u64)> {
    if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let tli = u32::from_str_radix(&name[0..8], 16).ok()?;
    let log = u64::from_str_radix(&name[8..16], 16).ok()?;
    let seg = u64::from_str_radix(&name[16..24], 16).ok()?;
    Some((tli, log * 0x100 + seg))
}

/// Segment name for a timeline and segment number (16 MB segments: 256 per "log").
pub fn segment_name(tli: u32, segno: u64) -> String {
    format!("{tli:08X}{:08X}{:08X}", segno / 0x100, segno % 0x100)
}

/// Every file (not directory) below `dir`, recursively, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap_or_else(|e| panic!("read_dir {}: {e}", d.display())) {
            let entry = entry.unwrap();
            let ft = entry.file_type().unwrap();
            if ft.is_dir() {
                stack.push(entry.path());
            } else if ft.is_file() {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    out
}

/// Whether `needle` occurs anywhere in `haystack` (scans for the first byte, then
/// compares; fast enough for hundreds of MB of WAL).
pub fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    if needle.is_empty() {
        return true;
    }
    let Some(last_start) = haystack.len().checked_sub(needle.len()) else { return false };
    let mut start = 0;
    while start <= last_start {
        match haystack[start..=last_start].iter().position(|&b| b == needle[0]) {
            None => return false,
            Some(p) => {
                let at = start + p;
                if &haystack[at..at + needle.len()] == needle {
                    return true;
                }
                start = at + 1;
            }
        }
    }
    false
}

/// `n` bytes from the kernel's random source (incompressible test data).
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    fs::File::open("/dev/urandom").unwrap().read_exact(&mut buf).unwrap();
    buf
}
