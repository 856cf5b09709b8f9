//! Scratch restores: `backup.restore()` records a row in `backup.restores` and launches this
//! dynamic worker, which restores the backup into a directory under `backup.scratch_dir`, sets
//! the copy up to stay apart from the live cluster, starts it with `pg_ctl` and waits until it
//! has recovered to its target and been promoted. The instance then runs on its own (a
//! postmaster of its own, not a child of this server) until `backup.restore_stop()`.
//!
//! A scratch instance never archives (`archive_mode = off`: its new timeline must not reach the
//! live repository), never loads this extension (no scheduler, alerts or HTTP server of its
//! own), listens on a socket in its own directory only (or on localhost when a port was asked
//! for), and has small shared memory. `hot_standby = off`: nobody reads a half-recovered copy,
//! and recovery does not insist on the live cluster's connection limits.
//!
//! Like the backup worker, the copy runs on plain threads (`backup-core`), the main thread
//! owning the catalog row, progress and signals.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use backup_core::error::report;
use backup_core::pg::backup::inventory::RecoveryTarget;
use backup_core::pg::backup::restore::{self, RestoreOptions, RestoreProgress, TargetAction};
use backup_core::pg::backup::BackupId;
use backup_core::storage::CancelToken;
use pgrx::prelude::*;

use crate::catalog::restores::{self as rows, NewRestore, Restore};

mod restore_test;
use crate::gucs;
use crate::postgres::bgworker::{self, transaction, Liveness, Worker};

pub const WORKER_TYPE: &str = "pg_backup_ext restore";

/// Room a restore wants beyond the backup's size (WAL replayed, the new timeline's first
/// segments, logs).
const HEADROOM_BYTES: u64 = 256 << 20;

/// What `backup.restore()` asks for.
pub struct Request<'a> {
    pub backup_id: Option<&'a str>,
    pub target: RecoveryTarget,
    pub into: Option<&'a str>,
    pub port: Option<i32>,
    /// `backup.restore_table()`: copy this table's rows back, then remove the instance.
    pub table: Option<TableRequest<'a>>,
    /// `backup.restore_test()`: check the instance, record the outcome, remove it.
    pub test: bool,
}

/// What `backup.restore_table()` copies back, and how.
pub struct TableRequest<'a> {
    pub table: &'a str,
    pub mode: TableMode,
    /// The table the rows go into (`new_table`; default `restored.<table>_<time>`).
    pub into_table: Option<&'a str>,
    /// Which rows (SQL, run on the scratch instance; in `replace`, also the rows deleted live).
    pub where_clause: Option<&'a str>,
}

/// How a table's rows come back into the live database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableMode {
    /// Into a new table beside the live one.
    NewTable,
    /// Rows whose primary key is no longer in the live table (deleted by mistake).
    MergeMissing,
    /// The live rows (matching `where_clause`) replaced by the restored ones, in one
    /// transaction. Superuser only.
    Replace,
}

impl TableMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TableMode::NewTable => "new_table",
            TableMode::MergeMissing => "merge_missing",
            TableMode::Replace => "replace",
        }
    }
}

impl std::str::FromStr for TableMode {
    type Err = String;
    fn from_str(s: &str) -> Result<TableMode, String> {
        [TableMode::NewTable, TableMode::MergeMissing, TableMode::Replace]
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| format!("mode {s:?} is not one of new_table, merge_missing, replace"))
    }
}

/// Record the restore and launch its worker; the worker starts once the caller's transaction
/// commits the row.
pub fn start(req: &Request) -> Result<i64, String> {
    if let Some(id) = req.backup_id {
        id.parse::<BackupId>().map_err(|e| e.to_string())?;
    }
    let live = crate::postgres::data_directory();
    let id = rows::next_id().map_err(|e| e.to_string())?;
    let pgdata = match req.into {
        Some(dir) => PathBuf::from(dir),
        None => gucs::scratch_dir().join(format!("restore-{id}")),
    };
    if !pgdata.is_absolute() {
        return Err(format!("into => {:?} is not an absolute path", pgdata.display()));
    }
    // Compared after resolving what exists of each path, so a symbolic link cannot hide it.
    let resolved = resolve_existing(&pgdata);
    let live_resolved = live.canonicalize().unwrap_or(live.clone());
    if resolved.starts_with(&live_resolved) || live_resolved.starts_with(&resolved) {
        return Err(format!(
            "scratch restores may not go inside the live data directory {} (nor contain it): {} was asked for; set backup.scratch_dir elsewhere",
            live.display(),
            pgdata.display()
        ));
    }
    if pgdata.exists() && std::fs::read_dir(&pgdata).map(|mut d| d.next().is_some()).unwrap_or(true) {
        return Err(format!("{} exists and is not empty; restore into a new directory", pgdata.display()));
    }
    if let Some(t) = &req.table {
        // The live table must be there to merge into or replace (a dropped one comes back
        // with new_table).
        if t.mode != TableMode::NewTable && Spi::get_one_with_args::<bool>("SELECT to_regclass($1) IS NULL", &[t.table.into()]).map_err(|e| e.to_string())?.unwrap_or(true) {
            return Err(format!("table {} does not exist in this database; restore it with mode => 'new_table'", t.table));
        }
        if t.mode == TableMode::Replace && !Spi::get_one::<bool>("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").map_err(|e| e.to_string())?.unwrap_or(false) {
            return Err("mode => 'replace' rewrites live rows: superuser only; use merge_missing or new_table".into());
        }
    }
    let (target_kind, target_value) = target_columns(&req.target);
    let port = req.port.unwrap_or_else(|| crate::postgres::server_port());
    if !(1..=65535).contains(&port) {
        return Err(format!("port {port} is not a TCP port"));
    }
    let new = NewRestore {
        id,
        backup_id: req.backup_id,
        target_kind,
        target_value: target_value.as_deref(),
        pgdata: &pgdata.to_string_lossy(),
        socket_dir: &pgdata.to_string_lossy(),
        port,
        listen_tcp: req.port.is_some(),
        purpose: if req.table.is_some() { "table" } else if req.test { "test" } else { "instance" },
        table_name: req.table.as_ref().map(|t| t.table),
        mode: req.table.as_ref().map(|t| t.mode.as_str()),
        into_table: req.table.as_ref().and_then(|t| t.into_table),
        where_clause: req.table.as_ref().and_then(|t| t.where_clause),
    };
    rows::insert(&new).map_err(|e| e.to_string())?;
    let extra = format!("{id} {}", crate::postgres::database_oid());
    bgworker::launch(WORKER_TYPE, "pg_backup_ext_restore_main", &extra).map_err(|e| e.to_string())?;
    Ok(id)
}

fn target_columns(t: &RecoveryTarget) -> (&'static str, Option<String>) {
    match t {
        RecoveryTarget::Latest => ("latest", None),
        RecoveryTarget::Immediate => ("immediate", None),
        RecoveryTarget::Time { text, .. } => ("time", Some(text.clone())),
        RecoveryTarget::Lsn(l) => ("lsn", Some(l.to_string())),
        RecoveryTarget::Xid(x) => ("xid", Some(x.to_string())),
        RecoveryTarget::Name(n) => ("name", Some(n.clone())),
    }
}

fn target_of(r: &Restore) -> Result<RecoveryTarget, String> {
    let value = || r.target_value.clone().ok_or_else(|| format!("restore {}: target {} without a value", r.id, r.target_kind));
    Ok(match r.target_kind.as_str() {
        "latest" => RecoveryTarget::Latest,
        "immediate" => RecoveryTarget::Immediate,
        "time" => {
            let text = value()?;
            let at = chrono::DateTime::parse_from_rfc3339(&text).map_err(|e| format!("target time {text:?}: {e}"))?.with_timezone(&chrono::Utc);
            RecoveryTarget::Time { text, at }
        }
        "lsn" => RecoveryTarget::Lsn(value()?.parse().map_err(|e| format!("{e}"))?),
        "xid" => RecoveryTarget::Xid(value()?.parse().map_err(|_| "target xid is not a whole number".to_string())?),
        "name" => RecoveryTarget::Name(value()?),
        other => return Err(format!("unknown target kind {other:?}")),
    })
}

/// The deepest existing ancestor of `p`, resolved, with the rest appended.
fn resolve_existing(p: &Path) -> PathBuf {
    let mut existing = p.to_path_buf();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.file_name().map(|n| n.to_os_string()), existing.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => break,
        }
    }
    let mut out = existing.canonicalize().unwrap_or(existing);
    for name in rest.into_iter().rev() {
        out.push(name);
    }
    out
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_backup_ext_restore_main(_arg: pg_sys::Datum) {
    let worker = Worker::attach();
    let extra = worker.extra();
    let mut parts = extra.split(' ');
    let (Some(id), Some(dboid)) = (parts.next().and_then(|i| i.parse::<i64>().ok()), parts.next().and_then(|d| d.parse::<u32>().ok())) else {
        log!("pg_backup_ext: restore worker started with bad arguments {extra:?}");
        return;
    };
    worker.connect(dboid);
    // The row becomes visible when backup.restore()'s transaction commits; a rolled-back
    // request never does.
    let waited = Instant::now();
    let row = loop {
        match transaction(|| Ok(if rows::claim(id)? { rows::get(id)? } else { None })) {
            Ok(Some(r)) => break r,
            Ok(None) if waited.elapsed() < Duration::from_secs(600) => {}
            Ok(None) => {
                log!("pg_backup_ext: restore {id} was never committed (rolled back?); nothing to do");
                return;
            }
            Err(e) => {
                log!("pg_backup_ext: restore {id}: {e}");
                return;
            }
        }
        match worker.sleep(Duration::from_millis(100)) {
            Liveness::Running => {}
            Liveness::Terminate => return,
            Liveness::PostmasterDied => worker.exit_after_postmaster_death(),
        }
    };
    let pgdata = PathBuf::from(&row.pgdata);
    let result = run(&worker, &row, &pgdata).and_then(|replayed| match &row.table_name {
        None if row.purpose == "test" => {
            // Ready is where the recovery time ends; the checks are timed after it.
            transaction(|| Ok(rows::ready(id, replayed)?)).map_err(|e| e.to_string())?;
            let problems = restore_test::check(&row);
            stop_instance(&pgdata);
            remove_scratch(&pgdata);
            let passed = problems.is_empty();
            transaction(|| {
                rows::record_test(id, passed, problems.clone())?;
                Ok(rows::done(id, 0, "")?)
            })
            .map_err(|e| e.to_string())?;
            match problems.first() {
                None => log!("pg_backup_ext: restore test {id} passed"),
                Some(p) => warning!("pg_backup_ext: restore test {id} failed: {p}"),
            }
            Err(String::new()) // done: nothing left running
        }
        None => Ok(replayed),
        Some(_) => {
            let copied = copy_table(&row, &pgdata);
            // The instance served its purpose, whatever came of the copy.
            stop_instance(&pgdata);
            remove_scratch(&pgdata);
            let (rows, into) = copied?;
            transaction(|| Ok(rows::done(id, rows, &into)?)).map_err(|e| e.to_string())?;
            log!("pg_backup_ext: restore {id}: {rows} row(s) of {} copied into {into}", row.table_name.as_deref().unwrap_or_default());
            Err(String::new()) // done: no instance to report ready
        }
    });
    match result {
        Err(e) if e.is_empty() => {}
        Ok(replayed) => {
            if let Err(e) = transaction(|| Ok(rows::ready(id, replayed)?)) {
                log!("pg_backup_ext: restore {id} is ready but could not be recorded: {e}");
            }
            log!("pg_backup_ext: restore {id} ready in {} (socket directory {}, port {})", row.pgdata, row.socket_dir, row.port);
        }
        Err(e) => {
            log!("pg_backup_ext: restore {id} failed: {e}");
            // Nothing half-restored is left to fill the disk; the server log of the scratch
            // instance, if it ran, stays beside it.
            stop_instance(&pgdata);
            if pgdata.join("PG_VERSION").exists() || pgdata.join("backup_label").exists() {
                let _ = std::fs::remove_dir_all(&pgdata);
            }
            let _ = transaction(|| {
                rows::failed(id, &e)?;
                if row.purpose == "test" {
                    rows::record_test(id, false, vec![format!("the restore failed: {e}")])?;
                }
                Ok(())
            });
        }
    }
}

/// Restore, configure, start, wait for the promoted instance; the WAL replayed, in bytes.
fn run(worker: &Worker, row: &Restore, pgdata: &Path) -> Result<Option<i64>, String> {
    let target = target_of(row)?;
    let config = gucs::load_config().map_err(|e| report(&e))?;
    let id = row.backup_id.as_deref().map(str::parse::<BackupId>).transpose().map_err(|e| e.to_string())?;
    let source = restore::find_source(&config, &config.repositories(), false, id.as_ref(), &target, &mut |m| log!("pg_backup_ext: restore {}: {m}", row.id))
        .map_err(|e| report(&e))?;
    let manifest = source.chain.target();
    let parent = pgdata.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    if let Ok((free, _)) = backup_core::storage::filesystem_space(parent) {
        let need = manifest.stats.bytes + HEADROOM_BYTES;
        if free < need {
            return Err(format!(
                "{} has {free} bytes free; restoring {} needs about {need}: give it room or set backup.scratch_dir to a larger filesystem",
                parent.display(),
                manifest.id
            ));
        }
    }
    let backup_id = manifest.id.to_string();
    let start_lsn = manifest.start_lsn.to_string();
    let only = source.pinned.as_ref().map(|r| format!(" --repo {r}")).unwrap_or_default();
    let config_arg = gucs::config_file().map(|p| format!(" --config {}", p.display())).unwrap_or_default();
    let opts = RestoreOptions {
        workers: gucs::WORKERS.get() as usize,
        target,
        action: TargetAction::Promote,
        restore_command: format!("{}{config_arg}{only} fetch %f %p", gucs::wal_archiver()),
        archive_off: true,
        tablespace_map: tablespace_map(manifest, pgdata),
        target_timeline: None,
    };
    let mut repo = source.repo;
    let stop = CancelToken::new();
    repo.objects_mut().set_cancel(stop.clone());
    repo.objects_mut().set_codec_threads(opts.workers);
    let progress = RestoreProgress::default();
    let chain = &source.chain;
    let work = |_: usize| restore::restore_backup(&repo, chain, pgdata, &opts, &progress);
    let result = std::thread::scope(|scope| {
        let handle = backup_core::threads::spawn_blocking_signals(scope, 1, &work).pop().expect("one thread");
        let mut last = Instant::now();
        while !handle.is_finished() {
            if worker.sleep(Duration::from_millis(200)) != Liveness::Running {
                stop.cancel();
            }
            if last.elapsed() >= Duration::from_millis(500) {
                last = Instant::now();
                let (done, total) = (progress.bytes_done.load(Ordering::Relaxed) as i64, progress.bytes_total.load(Ordering::Relaxed) as i64);
                let _ = transaction(|| Ok(rows::progress(row.id, done, total)?));
            }
        }
        handle.join().unwrap_or_else(|_| Err(restore::RestoreError::Write { path: pgdata.display().to_string(), cause: std::io::Error::other("the restore thread panicked") }))
    });
    if stop.is_cancelled() {
        return Err("stopped: the worker was asked to stop (backup.restore_stop(), SIGTERM or server shutdown)".into());
    }
    result.map_err(|e| report(&e))?;
    let listen = if row.listen_tcp { "localhost" } else { "" };
    restore::append_settings(
        pgdata,
        &format!("pg_backup_ext scratch restore {}: local only, archives nothing, loads nothing, small", row.id),
        &[
            ("port", row.port.to_string()),
            ("listen_addresses", listen.to_string()),
            ("unix_socket_directories", row.socket_dir.clone()),
            ("archive_mode", "off".into()),
            ("archive_command", String::new()),
            ("archive_library", String::new()),
            ("shared_preload_libraries", String::new()),
            ("hot_standby", "off".into()),
            ("shared_buffers", "32MB".into()),
            ("ssl", "off".into()),
            ("logging_collector", "off".into()),
            ("cluster_name", format!("pg_backup_ext restore {}", row.id)),
        ],
    )
    .map_err(|e| report(&e))?;
    // Said here too: a small restore ends before its first progress report.
    let bytes = progress.bytes_total.load(Ordering::Relaxed) as i64;
    transaction(|| Ok(rows::recovering(row.id, &backup_id, bytes)?)).map_err(|e| e.to_string())?;
    start_instance(worker, pgdata)?;
    wait_promoted(worker, pgdata, row)?;
    let replayed = scratch_sql(row, "postgres", &format!("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{start_lsn}')::bigint")).ok().and_then(|s| s.trim().parse().ok());
    Ok(replayed)
}

/// Quote a SQL string literal.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Copy the table's rows from the scratch instance into the live database (this worker's), as
/// the row's mode says; rows copied and the table they went into.
fn copy_table(row: &Restore, pgdata: &Path) -> Result<(i64, String), String> {
    let table = row.table_name.as_deref().unwrap_or_default();
    let mode: TableMode = row.mode.as_deref().unwrap_or("new_table").parse()?;
    transaction(|| Ok(rows::copying(row.id)?)).map_err(|e| e.to_string())?;
    let database = transaction(|| Ok(Spi::get_one::<String>("SELECT current_database()::text")?.unwrap_or_default())).map_err(|e| e.to_string())?;
    // The table as it was at the target: its columns (name and type), in order.
    let columns = scratch_sql(
        row,
        &database,
        &format!(
            "SELECT quote_ident(attname) || ' ' || format_type(atttypid, atttypmod) FROM pg_attribute
              WHERE attrelid = to_regclass({})::oid AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            literal(table)
        ),
    )?;
    let defs: Vec<(String, String)> = columns
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split_once(' ').map(|(n, t)| (n.to_string(), t.to_string())).unwrap_or_default())
        .collect();
    if defs.is_empty() {
        return Err(format!("table {table} did not exist in database {database} at the target; pick another target or check the name"));
    }
    let names: Vec<&str> = defs.iter().map(|(n, _)| n.as_str()).collect();
    let filter = row.where_clause.as_deref().map(|w| format!(" WHERE {w}")).unwrap_or_default();
    // Rows to a file beside the scratch directory, read by the live server's COPY.
    let file = PathBuf::from(format!("{}.rows", pgdata.display()));
    let out = std::fs::File::create(&file).map_err(|e| format!("cannot create {}: {e}", file.display()))?;
    let copy = format!("COPY (SELECT {} FROM {table}{filter}) TO STDOUT", names.join(", "));
    let status = Command::new(crate::postgres::bin_directory().join("psql"))
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-h", &row.socket_dir, "-p", &row.port.to_string(), "-d", &database, "-c", &copy])
        .stdout(out)
        .stderr(std::process::Stdio::piped())
        .output()
        .map_err(|e| e.to_string())?;
    if !status.status.success() {
        return Err(format!("reading {table} from the restored instance failed: {}", String::from_utf8_lossy(&status.stderr).trim()));
    }
    let defs_sql = defs.iter().map(|(n, t)| format!("{n} {t}")).collect::<Vec<_>>().join(", ");
    let file_lit = literal(&file.to_string_lossy());
    let result = transaction(|| {
        let copied = match mode {
            TableMode::NewTable => {
                let into = match &row.into_table {
                    Some(t) => t.clone(),
                    None => {
                        let base = table.rsplit('.').next().unwrap_or(table).trim_matches('"');
                        Spi::run("CREATE SCHEMA IF NOT EXISTS restored")?;
                        format!("restored.{}", Spi::get_one_with_args::<String>("SELECT quote_ident($1 || to_char(now(), '_YYYYMMDD_HH24MISS'))", &[base.into()])?.unwrap_or_default())
                    }
                };
                Spi::run(&format!("CREATE TABLE {into} ({defs_sql})"))?;
                Spi::run(&format!("COPY {into} ({}) FROM {file_lit}", names.join(", ")))?;
                let n = Spi::get_one::<i64>(&format!("SELECT count(*) FROM {into}"))?.unwrap_or(0);
                (n, into)
            }
            TableMode::MergeMissing | TableMode::Replace => {
                let live: Vec<String> = Spi::get_one_with_args::<Vec<String>>(
                    "SELECT array_agg(quote_ident(attname)::text ORDER BY attnum) FROM pg_attribute WHERE attrelid = to_regclass($1)::oid AND attnum > 0 AND NOT attisdropped",
                    &[table.into()],
                )?
                .unwrap_or_default();
                // Columns added or dropped since the target: only those both have are copied.
                let common: Vec<&str> = names.iter().copied().filter(|n| live.iter().any(|l| l == n)).collect();
                let pk = Spi::get_one_with_args::<String>(
                    "SELECT string_agg(quote_ident(a.attname), ', ') FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
                      WHERE i.indrelid = to_regclass($1)::oid AND i.indisprimary",
                    &[table.into()],
                )?;
                Spi::run(&format!("CREATE TEMP TABLE pg_backup_ext_restored ({defs_sql}) ON COMMIT DROP"))?;
                Spi::run(&format!("COPY pg_backup_ext_restored ({}) FROM {file_lit}", names.join(", ")))?;
                let cols = common.join(", ");
                let n = if mode == TableMode::MergeMissing {
                    let Some(pk) = pk else {
                        return Ok(Err(format!("table {table} has no primary key: merge_missing cannot tell which rows are missing; use mode => 'new_table' and merge by hand")));
                    };
                    // Rows whose key the live table no longer has; a key written since (or
                    // concurrently) wins.
                    Spi::get_one::<i64>(&format!(
                        "WITH ins AS (INSERT INTO {table} ({cols}) SELECT {cols} FROM pg_backup_ext_restored ON CONFLICT ({pk}) DO NOTHING RETURNING 1) SELECT count(*) FROM ins"
                    ))?
                    .unwrap_or(0)
                } else {
                    Spi::run(&format!("DELETE FROM {table}{filter}"))?;
                    Spi::get_one::<i64>(&format!("WITH ins AS (INSERT INTO {table} ({cols}) SELECT {cols} FROM pg_backup_ext_restored RETURNING 1) SELECT count(*) FROM ins"))?.unwrap_or(0)
                };
                (n, table.to_string())
            }
        };
        Ok(Ok(copied))
    });
    let _ = std::fs::remove_file(&file);
    result.map_err(|e| format!("copying into the live database: {e}"))?
}

/// One query on the scratch instance, in `database`.
pub(crate) fn scratch_sql(row: &Restore, database: &str, sql: &str) -> Result<String, String> {
    let out = Command::new(crate::postgres::bin_directory().join("psql"))
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", &row.socket_dir, "-p", &row.port.to_string(), "-d", database, "-c", sql])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("the restored instance: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn remove_scratch(pgdata: &Path) {
    for dir in [pgdata.to_path_buf(), PathBuf::from(format!("{}_tablespaces", pgdata.display()))] {
        if dir.exists() {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    let _ = std::fs::remove_file(log_file(pgdata));
}

/// Tablespaces go beside the scratch data directory (never onto the live ones).
fn tablespace_map(m: &backup_core::pg::backup::Manifest, pgdata: &Path) -> std::collections::BTreeMap<u32, PathBuf> {
    let base = PathBuf::from(format!("{}_tablespaces", pgdata.display()));
    m.tablespaces.iter().map(|t| (t.oid, base.join(t.oid.to_string()))).collect()
}

fn log_file(pgdata: &Path) -> PathBuf {
    PathBuf::from(format!("{}.log", pgdata.display()))
}

/// `pg_ctl start`, waiting (and watching this worker's signals) until the instance has started
/// recovery or given up.
fn start_instance(worker: &Worker, pgdata: &Path) -> Result<(), String> {
    let pg_ctl = crate::postgres::bin_directory().join("pg_ctl");
    let log = log_file(pgdata);
    let mut child = Command::new(&pg_ctl)
        .args(["start", "-w", "-t", "86400", "-D"])
        .arg(pgdata)
        .arg("-l")
        .arg(&log)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", pg_ctl.display()))?;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            if status.success() {
                return Ok(());
            }
            return Err(format!("the restored instance did not start or stopped during recovery; its log ({}) ends:\n{}", log.display(), tail(&log, 8)));
        }
        if worker.sleep(Duration::from_millis(200)) != Liveness::Running {
            let _ = child.kill();
            let _ = child.wait();
            return Err("stopped: the worker was asked to stop during recovery".into());
        }
    }
}

/// `pg_ctl start -w` returns once recovery has started; the copy is ready once it has recovered
/// to its target and been promoted (with `hot_standby = off` it refuses connections until then).
fn wait_promoted(worker: &Worker, pgdata: &Path, row: &Restore) -> Result<(), String> {
    loop {
        if !pgdata.join("postmaster.pid").exists() {
            let log = log_file(pgdata);
            return Err(format!("the restored instance stopped during recovery; its log ({}) ends:\n{}", log.display(), tail(&log, 8)));
        }
        if scratch_sql(row, "postgres", "SELECT pg_is_in_recovery()").is_ok_and(|s| s.trim() == "f") {
            return Ok(());
        }
        if worker.sleep(Duration::from_millis(200)) != Liveness::Running {
            return Err("stopped: the worker was asked to stop during recovery".into());
        }
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Stop a scratch instance if one runs in `pgdata` (fast shutdown).
pub fn stop_instance(pgdata: &Path) {
    if pgdata.join("postmaster.pid").exists() {
        let _ = Command::new(crate::postgres::bin_directory().join("pg_ctl"))
            .args(["stop", "-m", "fast", "-w", "-t", "60", "-D"])
            .arg(pgdata)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// `backup.restore_stop(id)`: stop the worker if it still restores, stop the instance, remove
/// its directory (and its tablespaces' and log).
pub fn stop(id: i64) -> Result<(), String> {
    let row = rows::get(id).map_err(|e| e.to_string())?.ok_or_else(|| format!("there is no restore {id}; see backup.restores"))?;
    if row.status == "stopped" || row.status == "done" {
        return Ok(());
    }
    if let Some(pid) = row.worker_pid {
        Spi::run_with_args("SELECT pg_terminate_backend($1)", &[pid.into()]).map_err(|e| e.to_string())?;
        let started = Instant::now();
        while rows::worker_alive(pid).map_err(|e| e.to_string())? && started.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(100));
            crate::postgres::check_for_interrupts();
        }
    }
    let pgdata = PathBuf::from(&row.pgdata);
    stop_instance(&pgdata);
    remove_scratch(&pgdata);
    if pgdata.exists() {
        return Err(format!("cannot remove {}; remove it by hand", pgdata.display()));
    }
    rows::stopped(id).map_err(|e| e.to_string())
}
