//! Restore: a backup into an empty data directory, set up to recover to a target.
//!
//! Nothing is written until every precondition holds (empty destination, no running server,
//! empty tablespace locations, a readable manifest): a refused restore changes nothing.

use std::fs;
use std::io::{BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use super::incremental::{reconstruct, Chain, ReconstructError};
use super::inventory::RecoveryTarget;
use super::manifest::{FileEntry, Manifest};
use super::BackupId;
use crate::config::{Config, RepoConfig};
use crate::pg::{PgRepo, PgRepoError};
use crate::repo::files::{file_runs, FileRun, RUN_MAX_GAP, RUN_MAX_SIZE};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetAction {
    Promote,
    Pause,
    Shutdown,
}

impl TargetAction {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetAction::Promote => "promote",
            TargetAction::Pause => "pause",
            TargetAction::Shutdown => "shutdown",
        }
    }
}

pub struct RestoreOptions {
    pub workers: usize,
    pub target: RecoveryTarget,
    pub action: TargetAction,
    /// Written as `restore_command` (e.g. `wal-archiver --config … fetch %f %p`).
    pub restore_command: String,
    /// Write `archive_mode = off`: a copy restored beside its source must not archive a new
    /// timeline into the source's repository. In-place disaster recovery keeps archiving.
    pub archive_off: bool,
    /// New locations for tablespaces, by OID (restoring beside the original, or onto other disks).
    pub tablespace_map: std::collections::BTreeMap<u32, PathBuf>,
    /// `recovery_target_timeline` ('current', 'latest' or a number); `None` leaves PostgreSQL's
    /// default ('latest').
    pub target_timeline: Option<String>,
}

#[derive(Debug, Default)]
pub struct RestoreProgress {
    pub bytes_total: AtomicU64,
    pub bytes_done: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("a server is running in {0} (postmaster.pid exists); stop it and restore into an empty directory")]
    Running(String),
    #[error("{0} is not empty; restore needs an empty or missing directory (move the old one aside first)")]
    NotEmpty(String),
    #[error("tablespace {oid} location {path} is not empty; empty it or move it aside first")]
    TablespaceNotEmpty { oid: u32, path: String },
    #[error("--tablespace-map names tablespace {0}, which is not in this backup")]
    UnknownTablespace(u32),
    #[error("writing {path}")]
    Write { path: String, #[source] cause: std::io::Error },
    #[error("restoring {path}")]
    Reconstruct { path: String, #[source] cause: Box<ReconstructError> },
    #[error(transparent)]
    Repo(#[from] PgRepoError),
}

impl From<crate::repo::RepoError> for RestoreError {
    fn from(e: crate::repo::RepoError) -> Self {
        RestoreError::Repo(e.into())
    }
}

fn write_err(path: &Path) -> impl FnOnce(std::io::Error) -> RestoreError + '_ {
    move |cause| RestoreError::Write { path: path.display().to_string(), cause }
}

/// Refuse unless `dir` is missing or empty.
fn check_empty(dir: &Path) -> Result<(), RestoreError> {
    if dir.join("postmaster.pid").exists() {
        return Err(RestoreError::Running(dir.display().to_string()));
    }
    match fs::read_dir(dir) {
        Ok(mut entries) => match entries.next() {
            Some(_) => Err(RestoreError::NotEmpty(dir.display().to_string())),
            None => Ok(()),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(RestoreError::Write { path: dir.display().to_string(), cause: e }),
    }
}

/// Restore the last backup of `chain` (a full backup alone, or with the incrementals leading to
/// it: [`super::inventory::Backups::chain`]).
pub fn restore_backup(
    repo: &PgRepo,
    chain: &Chain,
    pgdata: &Path,
    opts: &RestoreOptions,
    progress: &RestoreProgress,
) -> Result<(), RestoreError> {
    let manifest = chain.target();
    check_empty(pgdata)?;
    let locations: Vec<(u32, PathBuf)> = manifest
        .tablespaces
        .iter()
        .map(|ts| (ts.oid, opts.tablespace_map.get(&ts.oid).cloned().unwrap_or_else(|| PathBuf::from(&ts.location))))
        .collect();
    if let Some(oid) = opts.tablespace_map.keys().find(|oid| !manifest.tablespaces.iter().any(|t| t.oid == **oid)) {
        return Err(RestoreError::UnknownTablespace(*oid));
    }
    for (oid, location) in &locations {
        if check_empty(location).is_err() {
            return Err(RestoreError::TablespaceNotEmpty { oid: *oid, path: location.display().to_string() });
        }
    }

    fs::DirBuilder::new().recursive(true).mode(0o700).create(pgdata).map_err(write_err(pgdata))?;
    fs::set_permissions(pgdata, fs::Permissions::from_mode(0o700)).map_err(write_err(pgdata))?;
    for (oid, location) in &locations {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(location).map_err(write_err(location))?;
        let link = pgdata.join("pg_tblspc").join(oid.to_string());
        fs::create_dir_all(pgdata.join("pg_tblspc")).map_err(write_err(&link))?;
        std::os::unix::fs::symlink(location, &link).map_err(write_err(&link))?;
    }
    for dir in &manifest.directories {
        let path = pgdata.join(&dir.path);
        if dir.path.starts_with("pg_tblspc/") && dir.path.matches('/').count() == 1 {
            continue; // the tablespace link itself, made above
        }
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&path).map_err(write_err(&path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(dir.mode & 0o7777)).map_err(write_err(&path))?;
    }

    // Everything durable before anyone starts the server on it; written back while the files
    // are restored (restore_files) and once more at the end for the last of them.
    let mut roots: Vec<PathBuf> = vec![pgdata.to_path_buf()];
    roots.extend(locations.iter().map(|(_, l)| l.clone()));
    let writeback = Writeback::open(&roots)?;

    restore_files(repo, chain, pgdata, opts.workers, progress, &writeback)?;

    write_file(&pgdata.join("backup_label"), manifest.backup_label.as_bytes())?;
    // PostgreSQL recreates pg_tblspc links from tablespace_map at recovery start: it must name
    // the locations we restored into, not the original ones.
    if manifest.tablespace_map.is_some() || !locations.is_empty() {
        let map: String = locations.iter().map(|(oid, loc)| format!("{oid} {}\n", loc.display())).collect();
        write_file(&pgdata.join("tablespace_map"), map.as_bytes())?;
    }
    write_recovery_settings(pgdata, manifest, opts)?;
    writeback.sync()?;
    Ok(())
}

/// The filesystems a restore writes to, synced with `syncfs`.
///
/// Syncing only at the end leaves the device idle while we decode, then the CPU idle while the
/// device writes everything back (on a virtual disk, a cache flush of a gigabyte costs about as
/// much as decoding it). Syncing every [`WRITEBACK_INTERVAL`] while the workers run keeps the
/// device writing in step with them; the final sync then finds little left. `syncfs` rather than
/// an `fsync` per file: a thousand small files would be a thousand cache flushes.
struct Writeback {
    roots: Vec<(PathBuf, fs::File)>,
}

const WRITEBACK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

impl Writeback {
    fn open(roots: &[PathBuf]) -> Result<Writeback, RestoreError> {
        let roots = roots.iter().map(|r| fs::File::open(r).map(|f| (r.clone(), f)).map_err(write_err(r))).collect::<Result<_, _>>()?;
        Ok(Writeback { roots })
    }

    fn sync(&self) -> Result<(), RestoreError> {
        for (path, dir) in &self.roots {
            // SAFETY: a valid open descriptor. syncfs reports writeback errors of the filesystem.
            if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(dir)) } != 0 {
                return Err(write_err(path)(std::io::Error::last_os_error()));
            }
        }
        Ok(())
    }
}

/// What one worker restores at a time: a run of files stored side by side (one ranged read),
/// or one file of an incremental backup rebuilt from its layers.
enum Unit<'f> {
    Run(FileRun<'f>),
    Delta(&'f FileEntry),
}

impl Unit<'_> {
    fn files(&self) -> &[&FileEntry] {
        match self {
            Unit::Run(run) => &run.files,
            Unit::Delta(file) => std::slice::from_ref(file),
        }
    }
}

fn restore_files(
    repo: &PgRepo,
    chain: &Chain,
    pgdata: &Path,
    workers: usize,
    progress: &RestoreProgress,
    writeback: &Writeback,
) -> Result<(), RestoreError> {
    let files = &chain.target().files;
    // Files stored next to each other are read together: one request per run rather than per
    // file, which against an object store is most of a restore's time (each request is a round
    // trip). Largest first, so that no big file starts last.
    let mut units: Vec<Unit> = file_runs(files.iter().filter(|f| f.delta.is_none()), RUN_MAX_GAP, RUN_MAX_SIZE)
        .into_iter()
        .map(Unit::Run)
        .chain(files.iter().filter(|f| f.delta.is_some()).map(Unit::Delta))
        .collect();
    units.sort_by_key(|u| std::cmp::Reverse(u.files().iter().map(|f| f.size).sum::<u64>()));
    // Where each unit's files end in `order`, the order in which files are created.
    let order: Vec<&FileEntry> = units.iter().flat_map(|u| u.files().iter().copied()).collect();
    let ends: Vec<usize> = units
        .iter()
        .scan(0, |end, u| {
            *end += u.files().len();
            Some(*end)
        })
        .collect();
    progress.bytes_total.store(files.iter().map(|f| f.size).sum(), Ordering::Relaxed);
    // Files are created by this thread alone, in the workers' order, while they restore:
    // workers creating files side by side in one directory contend on its lock (most of a
    // restore's kernel time otherwise), and creating them all before starting costs a quarter
    // of a second per thousand files.
    let created = AtomicUsize::new(0);
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<RestoreError>> = Mutex::new(None);
    let fail = |e: RestoreError| {
        failed.store(true, Ordering::Relaxed);
        first_error.lock().unwrap().get_or_insert(e);
    };
    let group = crate::threads::WorkerGroup::default();
    let work = |_: usize| {
        while !failed.load(Ordering::Relaxed) {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(unit) = units.get(i) else { break };
            while created.load(Ordering::Acquire) < ends[i] {
                if failed.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            let done = match unit {
                Unit::Run(run) => restore_run(repo, run, pgdata, progress),
                Unit::Delta(file) => restore_delta(repo, chain, file, pgdata).map(|()| {
                    progress.bytes_done.fetch_add(file.size, Ordering::Relaxed);
                }),
            };
            if let Err(e) = done {
                fail(e);
                break;
            }
        }
    };
    std::thread::scope(|scope| {
        let handles = group.spawn(scope, workers.max(1), &work);
        for (i, file) in order.iter().enumerate() {
            if failed.load(Ordering::Relaxed) {
                break;
            }
            let path = pgdata.join(&file.path);
            match fs::OpenOptions::new().write(true).create_new(true).mode(file.mode & 0o777).open(&path) {
                Ok(_) => created.store(i + 1, Ordering::Release),
                Err(e) => fail(write_err(&path)(e)),
            }
        }
        while !group.wait_all(workers.max(1), WRITEBACK_INTERVAL) {
            if let Err(e) = writeback.sync() {
                fail(e);
            }
        }
        for h in handles {
            h.join().expect("restore worker panicked");
        }
    });
    match first_error.into_inner().unwrap() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The files of `run`, read with one request, each written to its (created) file.
fn restore_run(repo: &PgRepo, run: &FileRun, pgdata: &Path, progress: &RestoreProgress) -> Result<(), RestoreError> {
    let mut reader = repo.objects().read_run(run)?;
    for file in &run.files {
        let path: PathBuf = pgdata.join(&file.path);
        let out = fs::OpenOptions::new().write(true).open(&path).map_err(write_err(&path))?;
        let mut out = BufWriter::with_capacity((1 << 20).min(file.size.max(1) as usize), out);
        reader.decode_next(file, &mut out)?;
        // Written back by restore_files' periodic syncfs, which also makes it durable.
        out.flush().map_err(write_err(&path))?;
        progress.bytes_done.fetch_add(file.size, Ordering::Relaxed);
    }
    Ok(())
}

/// A file of an incremental backup, rebuilt from the layers of the chain.
fn restore_delta(repo: &PgRepo, chain: &Chain, file: &FileEntry, pgdata: &Path) -> Result<(), RestoreError> {
    let path: PathBuf = pgdata.join(&file.path);
    let failed = |cause: ReconstructError| RestoreError::Reconstruct { path: file.path.clone(), cause: Box::new(cause) };
    let layers = chain.layers(file).map_err(|e| failed(e.into()))?;
    let out = fs::OpenOptions::new().read(true).write(true).open(&path).map_err(write_err(&path))?;
    let page_checksums = chain.target().data_checksums == Some(true);
    reconstruct(repo.objects(), &layers, &chain.ids(), page_checksums, &out).map_err(failed)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), RestoreError> {
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(write_err(path))?;
    f.write_all(bytes).map_err(write_err(path))
}

/// Quote a value for postgresql.conf.
fn conf_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

/// Where a restore reads from: the repository, the chain of backups to restore, and the
/// repository recovery must fetch WAL from alone, if any.
pub struct Source {
    pub repo: PgRepo,
    pub chain: Chain,
    pub pinned: Option<String>,
}

/// The first of `candidates` (in the configured order, local first) that has backup `id`, or
/// one consistent before `target`. A repository that fails is skipped (told to `say`); if none
/// has it, the first answer is the error. `named`: the caller chose the repository, so recovery
/// fetches WAL there only (also when one before the chosen one failed: the others may be gone,
/// and a required repository that fails would abort recovery).
pub fn find_source(
    config: &Config,
    candidates: &[RepoConfig],
    named: bool,
    id: Option<&BackupId>,
    target: &RecoveryTarget,
    say: &mut dyn FnMut(String),
) -> Result<Source, PgRepoError> {
    let find = |repo: &PgRepo| -> Result<Chain, PgRepoError> {
        let manifest = match id {
            Some(id) => repo.backups().read_manifest(id)?,
            None => repo.backups().find(target)?,
        };
        repo.backups().chain(manifest)
    };
    let mut first_error = None;
    let mut failed = false;
    for rc in candidates {
        match PgRepo::open_repo(config, rc).and_then(|repo| find(&repo).map(|chain| (repo, chain))) {
            Ok((repo, chain)) => {
                if candidates.len() > 1 {
                    say(format!("restoring from repository {} ({})", rc.name, repo.location()));
                }
                let pinned = (named || failed).then(|| rc.name.clone());
                return Ok(Source { repo, chain, pinned });
            }
            Err(e) => {
                // Lacking the backup is an answer; anything else is a failing repository.
                failed |= !matches!(e, PgRepoError::UnknownBackup { .. } | PgRepoError::NoBackupForTarget(_));
                if candidates.len() > 1 {
                    say(format!("repository {}: {}", rc.name, crate::error::report(&e)));
                }
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.unwrap_or(PgRepoError::NoBackupForTarget("no repository is configured".into())))
}

/// Append settings to a restored data directory's `postgresql.auto.conf` (after the recovery
/// settings, so they win), under a comment saying why.
pub fn append_settings(pgdata: &Path, why: &str, settings: &[(&str, String)]) -> Result<(), RestoreError> {
    let mut conf = format!("\n# {why}\n");
    for (name, value) in settings {
        conf.push_str(&format!("{name} = {}\n", conf_quote(value)));
    }
    let auto = pgdata.join("postgresql.auto.conf");
    let mut f = fs::OpenOptions::new().append(true).create(true).mode(0o600).open(&auto).map_err(write_err(&auto))?;
    f.write_all(conf.as_bytes()).map_err(write_err(&auto))
}

fn write_recovery_settings(pgdata: &Path, manifest: &Manifest, opts: &RestoreOptions) -> Result<(), RestoreError> {
    let mut conf = format!(
        "\n# Added by wal-archiver restore of {} on {}\nrestore_command = {}\n",
        manifest.id,
        chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC"),
        conf_quote(&opts.restore_command)
    );
    let target = match &opts.target {
        RecoveryTarget::Latest => None,
        RecoveryTarget::Immediate => Some(("recovery_target", "immediate".to_string())),
        RecoveryTarget::Time { text, .. } => Some(("recovery_target_time", text.clone())),
        RecoveryTarget::Lsn(lsn) => Some(("recovery_target_lsn", lsn.to_string())),
        RecoveryTarget::Xid(xid) => Some(("recovery_target_xid", xid.to_string())),
        RecoveryTarget::Name(name) => Some(("recovery_target_name", name.clone())),
    };
    if let Some(tl) = &opts.target_timeline {
        conf.push_str(&format!("recovery_target_timeline = {}\n", conf_quote(tl)));
    }
    if opts.archive_off {
        conf.push_str("archive_mode = 'off'\n");
    }
    if let Some((setting, value)) = target {
        conf.push_str(&format!("{setting} = {}\nrecovery_target_action = {}\n", conf_quote(&value), conf_quote(opts.action.as_str())));
    }
    let auto = pgdata.join("postgresql.auto.conf");
    let mut f = fs::OpenOptions::new().append(true).create(true).mode(0o600).open(&auto).map_err(write_err(&auto))?;
    f.write_all(conf.as_bytes()).map_err(write_err(&auto))?;
    write_file(&pgdata.join("recovery.signal"), b"")
}

/// One line per schema object of a database (tables and their columns, indexes, constraints,
/// functions and procedures, triggers, sequences, views, extensions), in a stable order: what a
/// restore test compares between the restored copy and the live cluster.
pub const SCHEMA_QUERY: &str = r#"
WITH ns AS (SELECT oid, nspname FROM pg_namespace
             WHERE nspname NOT IN ('pg_catalog', 'information_schema') AND nspname NOT LIKE 'pg\_toast%' AND nspname NOT LIKE 'pg\_temp%')
SELECT line FROM (
  SELECT 'relation ' || ns.nspname || '.' || c.relname || ' (' || c.relkind::text || ')' ||
         coalesce(': ' || (SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod) || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END, ', ' ORDER BY a.attnum)
                             FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '') AS line
    FROM pg_class c JOIN ns ON ns.oid = c.relnamespace WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
  UNION ALL
  SELECT 'index ' || ns.nspname || '.' || c.relname || ': ' || pg_get_indexdef(c.oid)
    FROM pg_class c JOIN ns ON ns.oid = c.relnamespace WHERE c.relkind IN ('i', 'I')
  UNION ALL
  SELECT 'constraint ' || ns.nspname || '.' || co.conname || ' on ' || coalesce(co.conrelid::regclass::text, '-') || ': ' || pg_get_constraintdef(co.oid)
    FROM pg_constraint co JOIN ns ON ns.oid = co.connamespace
  UNION ALL
  SELECT 'function ' || p.oid::regprocedure::text || ' ' || p.prokind::text FROM pg_proc p JOIN ns ON ns.oid = p.pronamespace
  UNION ALL
  SELECT 'trigger ' || t.tgrelid::regclass::text || '.' || t.tgname FROM pg_trigger t WHERE NOT t.tgisinternal
  UNION ALL
  SELECT 'extension ' || extname || ' ' || extversion FROM pg_extension) o
ORDER BY line"#;

/// What differs between two object lists of [`SCHEMA_QUERY`]: lines only the live cluster has,
/// then lines only the restored copy has.
pub fn schema_differences(live: &str, restored: &str) -> Vec<String> {
    let live: std::collections::BTreeSet<&str> = live.lines().filter(|l| !l.is_empty()).collect();
    let restored: std::collections::BTreeSet<&str> = restored.lines().filter(|l| !l.is_empty()).collect();
    let only_live = live.difference(&restored).map(|l| format!("only in the live cluster: {l}"));
    let only_restored = restored.difference(&live).map(|l| format!("only in the restored copy: {l}"));
    only_live.chain(only_restored).collect()
}

#[cfg(test)]
mod schema_tests {
    use super::schema_differences;

    #[test]
    fn differences_name_each_side() {
        let live = "relation public.a (r): id integer\nrelation public.b (r): x text\n";
        let restored = "relation public.a (r): id integer\nrelation public.b (r): x integer\n";
        assert_eq!(
            schema_differences(live, restored),
            ["only in the live cluster: relation public.b (r): x text", "only in the restored copy: relation public.b (r): x integer"]
        );
        assert!(schema_differences(live, live).is_empty());
    }
}
