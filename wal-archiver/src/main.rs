//! `wal-archiver`: the server's `archive_command` and `restore_command`, and the offline tool
//! for a repository (init, check, info, listing). Argument parsing and exit codes live here;
//! the work is in `backup-core`.

mod backup_cmd;
mod check;
mod expire_cmd;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use backup_core::config::{refuse_repo_inside_pgdata, Config};
use backup_core::error::report;
use backup_core::keys::{default_key_id, KeyId, KeyRing, MasterKey};
use backup_core::pg::archive::{self, FetchError, PushOutcome};
use backup_core::pg::backup::restore::TargetAction;
use backup_core::pg::backup::run::WalSummaries;
use backup_core::pg::backup::BackupKind;
use backup_core::pg::cluster::ClusterIdentity;
use backup_core::pg::prefetch::{self, Served, Spool};
use backup_core::pg::wal::WalFileName;
use backup_core::pg::repos::RepoSet;
use backup_core::pg::PgRepo;
use backup_core::repo::{Encryption, InitOutcome, Repository};
use backup_core::storage;
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;

/// Exit status that makes PostgreSQL abort recovery rather than treat the file as missing:
/// `restore_command` statuses above 125 are fatal to the startup process.
const EXIT_ABORT_RECOVERY: u8 = 128;

#[derive(Parser)]
#[command(name = "wal-archiver", version, about = "WAL archiving, restore and repository tool for pg_backup_ext",
    long_about = "WAL archiving, restore and repository tool for pg_backup_ext.\n\n\
In postgresql.conf:\n  archive_command = 'wal-archiver --config /etc/pg_backup_ext/pg_backup_ext.conf push %p'\n  \
restore_command = 'wal-archiver --config /etc/pg_backup_ext/pg_backup_ext.conf fetch %f %p'\n\n\
Run it as the OS user that runs PostgreSQL, so the files it creates stay writable by the server.")]
struct Cli {
    /// Configuration file (TOML). Default: $BACKUP_CONFIG, else /etc/pg_backup_ext/pg_backup_ext.conf
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Repository to use, by its [[repos]] name (`local` for repo_path): backup, list, info,
    /// verify, delete, expire, wal-list, copy (its source). Default: the primary (first) one;
    /// restore looks in each in order unless this is given
    #[arg(long, global = true, value_name = "NAME")]
    repo: Option<String>,
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// Generate a master key; appends to an existing key file (the new key encrypts from now on)
    Keygen {
        #[arg(long, value_name = "FILE")]
        output: PathBuf,
        /// Key id (default: k<timestamp>-<random>)
        #[arg(long)]
        name: Option<String>,
        /// Seal the key file with the passphrase in this file (argon2id)
        #[arg(long, value_name = "FILE")]
        passphrase_file: Option<PathBuf>,
    },
    /// Create the repository for the cluster in DATADIR
    Init {
        #[arg(long, value_name = "DATADIR")]
        pgdata: PathBuf,
    },
    /// archive_command: store one WAL file (%p) durably
    Push { path: PathBuf },
    /// restore_command: write WAL file NAME (%f) to DEST (%p) from the first repository that
    /// has it (or only --repo); exit 1 if not archived, 128 on errors
    Fetch { name: String, dest: PathBuf },
    /// (internal) restore_command's prefetcher, started by fetch: spool the COUNT segments
    /// after FROM (and after what recovery asks for meanwhile) into PGDATA/pg_wal/pg_backup_ext.spool
    #[command(hide = true)]
    Prefetch {
        #[arg(long, value_name = "NAME")]
        from: String,
        #[arg(long)]
        count: usize,
        #[arg(long, value_name = "DATADIR")]
        pgdata: PathBuf,
    },
    /// Copy the WAL files owed to best-effort repositories (archived while they were down)
    CatchUp {
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Check configuration, key, repository, and (with --dbname) that archiving works end to end
    Check {
        /// Data directory of the cluster: its system identifier must match the repository
        #[arg(long, value_name = "DATADIR")]
        pgdata: Option<PathBuf>,
        /// libpq connection string, e.g. "host=/var/run/postgresql user=postgres dbname=postgres"
        #[arg(long, value_name = "CONNINFO")]
        dbname: Option<String>,
        /// Seconds to wait for a forced WAL switch to reach the repository
        #[arg(long, default_value_t = 60)]
        archive_timeout: u64,
    },
    /// Show the repository: cluster identity, encryption, WAL per timeline and gaps
    Info {
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Take a base backup of a running cluster (the extension's backup.start_full() and
    /// backup.start_incremental() do the same from SQL)
    Backup {
        #[arg(long, value_name = "DATADIR")]
        pgdata: PathBuf,
        /// libpq connection string to the same cluster
        #[arg(long, value_name = "CONNINFO")]
        dbname: String,
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Store only the pages changed since the newest backup of the server's timeline
        #[arg(long)]
        incremental: bool,
        /// With --incremental: also read whole every file the WAL summaries vouch for, and
        /// report (and store) any changed page they did not name
        #[arg(long, requires = "incremental")]
        check_wal_summaries: bool,
        /// With --incremental: ignore the WAL summaries and judge every page of every relation
        /// file by its LSN (reads the whole data directory)
        #[arg(long, requires = "incremental", conflicts_with = "check_wal_summaries")]
        no_wal_summaries: bool,
    },
    /// Restore a backup into an empty data directory, set up to recover to a target
    Restore {
        #[arg(long, value_name = "DATADIR")]
        pgdata: PathBuf,
        /// Restore this backup (default: the newest consistent before the target)
        #[arg(long, value_name = "ID")]
        backup_id: Option<String>,
        /// Newest backup, recover to the end of the archive
        #[arg(long)]
        latest: bool,
        /// Recover to this moment, e.g. '2024-01-15 14:30:00+00'
        #[arg(long, value_name = "TIMESTAMP")]
        target_time: Option<String>,
        #[arg(long, value_name = "LSN")]
        target_lsn: Option<String>,
        #[arg(long, value_name = "XID")]
        target_xid: Option<String>,
        /// A restore point made with pg_create_restore_point / backup.create_restore_point
        #[arg(long, value_name = "NAME")]
        target_name: Option<String>,
        /// 'immediate': stop as soon as the backup is consistent
        #[arg(long, value_parser = ["immediate"])]
        target: Option<String>,
        #[arg(long, value_enum, default_value_t = Action::Promote)]
        target_action: Action,
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// 'off' stops the restored server from archiving (a copy beside its source must not
        /// push a new timeline into the source's repository); 'preserve' keeps the backup's setting
        #[arg(long, value_enum, default_value_t = ArchiveMode::Preserve)]
        archive_mode: ArchiveMode,
        /// Restore tablespace OID into DIRECTORY instead of its original location (repeatable)
        #[arg(long, value_name = "OID=DIRECTORY")]
        tablespace_map: Vec<String>,
        /// Timeline to recover along: current (the backup's), latest (PostgreSQL's default), or a number
        #[arg(long, value_name = "TIMELINE")]
        target_timeline: Option<String>,
    },
    /// List completed backups
    List {
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Re-read a backup: every object authenticated and checksummed, manifest consistent, WAL range present
    Verify {
        id: String,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Delete a backup (refused when incremental backups build on it, unless --cascade)
    Delete {
        id: String,
        /// Also delete the incremental backups that build on it
        #[arg(long)]
        cascade: bool,
    },
    /// Apply the retention policy: list every backup, WAL range and leftover with what
    /// happens to it and why, then delete what the policy lets go
    Expire {
        /// List only; delete nothing
        #[arg(long)]
        dry_run: bool,
        /// Judge ages as of this moment instead of the clock, e.g. '2026-12-01 00:00:00+00'
        /// (leftovers of killed runs are still judged by the clock)
        #[arg(long, value_name = "TIMESTAMP")]
        now: Option<String>,
        #[arg(long, value_enum, default_value_t = Output::Text, alias = "format")]
        output: Output,
    },
    /// Copy a completed backup (with the backups it builds on and the WAL it needs) from
    /// --repo (default: the primary) into repository TO
    Copy {
        id: String,
        #[arg(long, value_name = "NAME")]
        to: String,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// List archived WAL files
    WalList {
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
        /// Decrypt and checksum every file (exit 1 if any is corrupt)
        #[arg(long)]
        verify: bool,
    },
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum ArchiveMode {
    Off,
    Preserve,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Action {
    Promote,
    Pause,
    Shutdown,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
pub enum Output {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config_path = cli.config.as_deref();
    let repo = cli.repo.as_deref();
    let result = match cli.verb {
        // fetch has its own exit statuses: PostgreSQL reads them.
        Verb::Fetch { name, dest } => return fetch(config_path, repo, &name, &dest),
        Verb::Prefetch { from, count, pgdata } => prefetch_verb(config_path, repo, &from, count, &pgdata),
        Verb::Keygen { output, name, passphrase_file } => keygen(&output, name, passphrase_file.as_deref()),
        Verb::Init { pgdata } => init(config_path, &pgdata),
        Verb::Push { path } => push(config_path, &path),
        Verb::CatchUp { output } => catch_up(config_path, output),
        Verb::Check { pgdata, dbname, archive_timeout } => {
            check::run(config_path, pgdata.as_deref(), dbname.as_deref(), Duration::from_secs(archive_timeout))
        }
        Verb::Info { output } => info(config_path, repo, output),
        Verb::WalList { output, verify } => wal_list(config_path, repo, output, verify),
        Verb::Expire { dry_run, now, output } => load_config(config_path).and_then(|c| expire_cmd::expire(&c, repo, dry_run, now.as_deref(), output)),
        Verb::Delete { id, cascade } => load_config(config_path).and_then(|c| backup_cmd::delete(&c, repo, &id, cascade)),
        Verb::Copy { id, to, output } => load_config(config_path).and_then(|c| backup_cmd::copy(&c, repo, &id, &to, output)),
        Verb::Backup { pgdata, dbname, workers, incremental, check_wal_summaries, no_wal_summaries } => {
            let kind = if incremental { BackupKind::Incremental } else { BackupKind::Full };
            let summaries = match (check_wal_summaries, no_wal_summaries) {
                (true, _) => WalSummaries::Check,
                (_, true) => WalSummaries::Ignore,
                _ => WalSummaries::Use,
            };
            load_config(config_path).and_then(|c| backup_cmd::backup(&c, repo, &pgdata, &dbname, workers, kind, summaries))
        }
        Verb::Restore { pgdata, backup_id, latest, target_time, target_lsn, target_xid, target_name, target, target_action, workers, archive_mode, tablespace_map, target_timeline } => {
            let req = backup_cmd::RestoreRequest {
                backup_id: backup_id.as_deref(),
                latest,
                target_time: target_time.as_deref(),
                target_lsn: target_lsn.as_deref(),
                target_xid: target_xid.as_deref(),
                target_name: target_name.as_deref(),
                target_immediate: target.is_some(),
                action: match target_action {
                    Action::Promote => TargetAction::Promote,
                    Action::Pause => TargetAction::Pause,
                    Action::Shutdown => TargetAction::Shutdown,
                },
                workers,
                archive_off: archive_mode == ArchiveMode::Off,
                tablespace_map: &tablespace_map,
                target_timeline: target_timeline.as_deref(),
                repo,
            };
            load_config(config_path).and_then(|c| backup_cmd::restore(&c, config_path, &pgdata, &req))
        }
        Verb::List { output } => load_config(config_path).and_then(|c| backup_cmd::list(&c, repo, output)),
        Verb::Verify { id, output } => load_config(config_path).and_then(|c| backup_cmd::verify(&c, repo, &id, output)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("wal-archiver: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(path: Option<&Path>) -> Result<Config> {
    Ok(Config::load(path)?)
}

fn keygen(output: &Path, name: Option<String>, passphrase_file: Option<&Path>) -> Result<ExitCode> {
    let passphrase = passphrase_file.map(backup_core::keys::read_passphrase_file).transpose()?;
    let id = match name {
        Some(n) => KeyId::new(&n)?,
        None => default_key_id(),
    };
    let key = MasterKey::generate(id.clone());
    let ring = if output.exists() {
        let mut ring = KeyRing::load(output, passphrase.as_deref())?;
        ring.push(key)?;
        ring
    } else {
        KeyRing::new(vec![key])?
    };
    ring.save(output, passphrase.as_deref())?;
    println!("{id}");
    eprintln!("wal-archiver: key {id} written to {}; it encrypts from now on. Keep a copy of this file off this machine: without it the repository cannot be read.", output.display());
    Ok(ExitCode::SUCCESS)
}

/// Create every configured repository (those that exist already are checked to be this
/// cluster's): adding a repository to the configuration and running `init` again sets it up.
fn init(config_path: Option<&Path>, pgdata: &Path) -> Result<ExitCode> {
    let config = load_config(config_path)?;
    let repos = config.repositories();
    if repos.is_empty() {
        config.primary_repo()?;
    }
    let cluster = ClusterIdentity::from_pgdata(pgdata)?;
    let encryption = if config.encryption {
        // Load the keys now: a repository nobody can write to is better refused at init.
        Repository::keys_for(&config)?;
        Encryption::Aes256Gcm
    } else {
        Encryption::None
    };
    let mut failed = false;
    for repo in &repos {
        let result = refuse_repo_inside_pgdata(&repo.location, pgdata)
            .map_err(anyhow::Error::from)
            .and_then(|_| Ok(storage::open(&repo.location)?))
            .and_then(|storage| Ok(PgRepo::init(storage.as_ref(), &cluster, encryption)?));
        let label = if repos.len() > 1 { format!("repository {} ({})", repo.name, repo.location) } else { format!("repository {}", repo.location) };
        match result {
            Ok(InitOutcome::Created) => println!(
                "{label} created for database system {} (PostgreSQL {}, encryption {encryption})",
                cluster.system_id, cluster.pg_version
            ),
            Ok(InitOutcome::AlreadyInitialized(_)) => println!("{label} is already initialized for database system {}", cluster.system_id),
            Err(e) if repos.len() == 1 => return Err(e),
            Err(e) => {
                eprintln!("wal-archiver: error: {label}: {e:#}");
                failed = true;
            }
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn push(config_path: Option<&Path>, path: &Path) -> Result<ExitCode> {
    let mut repos = RepoSet::for_archiving(&load_config(config_path)?)?;
    let report = repos.push(path)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    if let PushOutcome::AlreadyArchived = report.outcome {
        eprintln!("wal-archiver: {name} was already archived with identical content; nothing to do");
    }
    for f in &report.owed {
        eprintln!("wal-archiver: WARNING: {name} archived, but not into best-effort repository {}: {}; it is noted as owed and copied there once the repository answers again", f.repo, f.error);
    }
    if report.caught_up > 0 {
        eprintln!("wal-archiver: caught up {} owed WAL file(s)", report.caught_up);
    }
    // The first archive_command after promotion: the prefetch spool of the recovery is garbage.
    if let Some(cwd) = std::env::current_dir().ok().filter(|d| d.join("PG_VERSION").is_file()) {
        if let Err(e) = Spool::for_pgdata(&cwd).remove_after_recovery() {
            eprintln!("wal-archiver: WARNING: cannot remove the prefetch spool {}: {e}", Spool::for_pgdata(&cwd).dir().display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Copy every WAL file owed to best-effort repositories (archived during their outage).
fn catch_up(config_path: Option<&Path>, output: Output) -> Result<ExitCode> {
    let mut repos = RepoSet::new(&load_config(config_path)?)?;
    let results = repos.catch_up_all();
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else if results.is_empty() {
        println!("no best-effort repository is configured: nothing is ever owed");
    }
    let mut failed = false;
    for c in &results {
        if output == Output::Text {
            println!("{}: {} copied, {} still owed{}", c.repo, c.copied, c.remaining, c.error.as_ref().map(|e| format!(" ({e})")).unwrap_or_default());
            for d in &c.dropped {
                println!("  {d}: no longer in the primary repository; note dropped");
            }
        }
        failed |= c.error.is_some();
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// restore_command. Not archived → 1 at once (recovery asks for files past the end of the
/// archive routinely). Anything else is retried, then 128: exiting 1 there would let recovery
/// end early, at the wrong point, and promote.
fn fetch(config_path: Option<&Path>, repo: Option<&str>, name: &str, dest: &Path) -> ExitCode {
    let Ok(wal_name) = WalFileName::parse(name) else {
        eprintln!("wal-archiver: {name} is not a WAL file name; it cannot be in the archive");
        return ExitCode::from(1);
    };
    let config = match load_config(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wal-archiver: error: {e:#}; aborting recovery");
            return ExitCode::from(EXIT_ABORT_RECOVERY);
        }
    };
    // Prefetch is for segments restored into a data directory's pg_wal (not for history files,
    // nor a hand-run fetch elsewhere).
    let spool = if config.prefetch > 0 && wal_name.segment().is_some() { Spool::for_restore_dest(dest) } else { None };
    if let Some(spool) = &spool {
        // Where recovery is, first: a running prefetcher then never downloads again what this
        // call takes from the spool. (Failing here fails start_prefetch too, which says so.)
        if spool.in_recovery() {
            let _ = spool.want(&wal_name);
        }
        if serve_from_spool(spool, &wal_name, dest) {
            start_prefetch(spool, config_path, repo, &wal_name, config.prefetch);
            return ExitCode::SUCCESS;
        }
    }
    let attempts = config.fetch_retries + 1;
    let mut delay = Duration::from_millis(config.fetch_retry_delay_ms);
    for attempt in 1..=attempts {
        let repos = match repo {
            Some(r) => RepoSet::only(&config, r),
            None => RepoSet::new(&config),
        };
        let outcome = repos.map_err(FetchError::from).and_then(|mut repos| repos.fetch(&wal_name, dest));
        match outcome {
            Ok(_) => {
                if let Some(spool) = &spool {
                    start_prefetch(spool, config_path, repo, &wal_name, config.prefetch);
                }
                return ExitCode::SUCCESS;
            }
            // No prefetch after a miss: past the end of the archive (a standby polling for
            // the next segment) the next ones are not there either.
            Err(FetchError::NotFound(_)) => return ExitCode::from(1),
            Err(e) if attempt < attempts => {
                eprintln!("wal-archiver: fetch {name} failed (attempt {attempt} of {attempts}): {}; retrying in {delay:?}", report(&e));
                std::thread::sleep(delay);
                delay *= 2;
            }
            Err(e) => {
                eprintln!("wal-archiver: fetch {name} failed after {attempts} attempts: {}; aborting recovery (exit {EXIT_ABORT_RECOVERY}) rather than ending it early", report(&e));
            }
        }
    }
    ExitCode::from(EXIT_ABORT_RECOVERY)
}

/// `name` from the prefetch spool into `dest`, waiting for it if the prefetcher is downloading
/// it right now. `false`: fetch it from the repository (a bad spooled file is only a warning).
fn serve_from_spool(spool: &Spool, name: &WalFileName, dest: &Path) -> bool {
    for attempt in 0..2 {
        match spool.take(name, dest) {
            Ok(Some(Served::Spooled)) => {
                eprintln!("wal-archiver: {name} restored from the prefetch spool");
                return true;
            }
            Ok(Some(Served::Again)) => {
                eprintln!("wal-archiver: {name} restored again from the prefetch spool (checked against its SHA-256)");
                return true;
            }
            Ok(None) => {}
            Err(e) => {
                eprintln!("wal-archiver: WARNING: {e}; fetching {name} from the repository instead");
                return false;
            }
        }
        if attempt == 0 && !spool.wait_for_download(name, Duration::from_secs(10)) {
            return false;
        }
    }
    false
}

/// After segment `name` was restored during recovery: unless a prefetcher runs (it follows
/// `want`), start one, a detached process: this restore_command returns at once. A failure here
/// only costs speed, so it is a warning.
fn start_prefetch(spool: &Spool, config_path: Option<&Path>, repo: Option<&str>, name: &WalFileName, count: u32) {
    if !spool.in_recovery() {
        return; // pg_rewind, or a hand-run fetch into a live data directory
    }
    let started = (|| -> Result<()> {
        if spool.is_busy() {
            return Ok(());
        }
        let mut args: Vec<std::ffi::OsString> = Vec::new();
        if let Some(c) = config_path {
            args.extend(["--config".into(), c.into()]);
        }
        if let Some(r) = repo {
            args.extend(["--repo".into(), r.into()]);
        }
        args.extend(["prefetch".into(), "--from".into(), name.to_string().into(), "--count".into(), count.to_string().into()]);
        args.extend(["--pgdata".into(), spool.pgdata().into()]);
        prefetch::spawn_detached(&std::env::current_exe()?, &args, spool.open_log()?)?;
        Ok(())
    })();
    if let Err(e) = started {
        eprintln!("wal-archiver: WARNING: cannot prefetch the WAL after {name} into {}: {e:#}; recovery continues without prefetch", spool.dir().display());
    }
}

/// The prefetcher (`prefetch` verb): one repository set per download thread, each opening its
/// repositories on first use. Its stderr is the spool's log.
fn prefetch_verb(config_path: Option<&Path>, repo: Option<&str>, from: &str, count: usize, pgdata: &Path) -> Result<ExitCode> {
    let config = load_config(config_path)?;
    let from = WalFileName::parse(from)?;
    let repos = || match repo {
        Some(r) => RepoSet::only(&config, r),
        None => RepoSet::new(&config),
    };
    let mut first = repos()?;
    let segment_size = (0..first.members().len())
        .find_map(|i| first.open(i).ok().map(|r| r.cluster().wal_segment_size))
        .ok_or_else(|| anyhow::anyhow!("no repository could be opened to learn the WAL segment size"))?;
    let mut fetchers = vec![first];
    for _ in 1..count.clamp(1, prefetch::MAX_THREADS) {
        fetchers.push(repos()?);
    }
    prefetch::run(&Spool::for_pgdata(pgdata), &from, count, segment_size, prefetch::LINGER, fetchers)?;
    Ok(ExitCode::SUCCESS)
}

fn info(config_path: Option<&Path>, repo_name: Option<&str>, output: Output) -> Result<ExitCode> {
    let config = load_config(config_path)?;
    let rc = config.repo_or_primary(repo_name)?;
    let repo = PgRepo::open_repo(&config, &rc)?;
    // Everything the store holds, by area (what expiry frees shows here), from one listing.
    let usage = backup_core::pg::usage::usage(&repo)?;
    let files = &usage.wal;
    let c = repo.cluster();
    let manifests = repo.backups().list()?;
    let ranges: Vec<archive::BackupWalRange> = manifests.iter().filter_map(|m| archive::BackupWalRange::of(m, c.wal_segment_size)).collect();
    let timelines = archive::summarize_timelines(files, c.wal_segment_size, &ranges);
    let stored = usage.wal_bytes;
    let (total, backup_bytes, summary_bytes) = (usage.total_bytes, usage.backup_bytes, usage.summary_bytes);
    let backups = manifests.len();
    let i = &repo.objects().info;
    // WAL owed to best-effort repositories (archived while they were down), by repository.
    let owed = repo.wal().owed()?;
    let others: Vec<serde_json::Value> = config
        .repositories()
        .iter()
        .map(|r| json!({ "name": r.name, "location": r.location.to_string(), "archive": format!("{:?}", r.wal).to_lowercase(), "this": r.name == rc.name }))
        .collect();
    if output == Output::Json {
        let doc = json!({
            "repository": repo.location(),
            "name": rc.name,
            "repositories": others,
            "owed_wal": owed,
            "format": i.format,
            "system_identifier": c.system_id,
            "pg_version": c.pg_version,
            "wal_segment_size": c.wal_segment_size,
            "encryption": i.encryption,
            "created": i.created,
            "key_ids": repo.objects().keys().map(|k| k.ids().map(|id| id.0.clone()).collect::<Vec<_>>()),
            "wal": { "files": files.len(), "stored_bytes": stored, "summary_bytes": summary_bytes, "timelines": timelines },
            "backups": { "completed": backups, "stored_bytes": backup_bytes },
            "stored_bytes": total,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("repository:         {} ({})", repo.location(), rc.name);
    if others.len() > 1 {
        let names: Vec<String> = config
            .repositories()
            .iter()
            .enumerate()
            .map(|(n, r)| {
                let role = if n == 0 { "primary" } else if r.wal == backup_core::config::WalArchiving::BestEffort { "best effort" } else { "required" };
                format!("{} ({role})", r.name)
            })
            .collect();
        println!("all repositories:   {} (--repo NAME shows another)", names.join(", "));
    }
    for (name, n) in &owed {
        println!("owed WAL:           {n} file(s) to {name}, archived while it was unreachable; 'wal-archiver catch-up' copies them");
    }
    println!("database system:    {} (PostgreSQL {})", c.system_id, c.pg_version);
    println!("WAL segment size:   {} MB", c.wal_segment_size >> 20);
    println!("encryption:         {}", i.encryption);
    println!("created:            {}", i.created.format("%Y-%m-%d %H:%M:%S UTC"));
    println!("stored:             {} ({total} bytes)", human_bytes(total));
    println!("backups:            {backups} completed, {} stored (incomplete ones included)", human_bytes(backup_bytes));
    println!("archived WAL:       {} files, {} (+ {} of block summaries)", files.len(), human_bytes(stored), human_bytes(summary_bytes));
    for t in &timelines {
        println!("  timeline {:>3}:     {} .. {} ({} segments)", t.timeline, t.first, t.last, t.segments);
        if !t.gaps.is_empty() {
            println!("    MISSING {} segment(s), first {}: recovery cannot cross this gap", t.gaps.len(), t.gaps[0]);
        }
        if !t.expired.is_empty() {
            println!("    expired {} segment(s), first {}: removed by retention, the next backup starts after them", t.expired.len(), t.expired[0]);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn wal_list(config_path: Option<&Path>, repo_name: Option<&str>, output: Output, verify: bool) -> Result<ExitCode> {
    let config = load_config(config_path)?;
    let repo = PgRepo::open_repo(&config, &config.repo_or_primary(repo_name)?)?;
    let wal = repo.wal();
    let files = wal.list()?;
    let mut corrupt = 0;
    let mut rows = Vec::with_capacity(files.len());
    for f in &files {
        let mut row = serde_json::to_value(f)?;
        if verify {
            let status = match wal.verify(f) {
                Ok(()) => "ok".to_string(),
                Err(e) => {
                    corrupt += 1;
                    format!("corrupt: {}", report(&e))
                }
            };
            row["status"] = json!(status);
        }
        rows.push(row);
    }
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&json!({ "files": rows }))?);
    } else {
        for (f, row) in files.iter().zip(&rows) {
            let status = row.get("status").and_then(|s| s.as_str()).unwrap_or("");
            println!("{:<42} {:<8} {:>10}  {status}", f.name.to_string(), f.kind, human_bytes(f.stored_bytes));
        }
        println!("{} files{}", files.len(), if verify { format!(", {corrupt} corrupt") } else { String::new() });
    }
    if corrupt > 0 {
        eprintln!("wal-archiver: {corrupt} archived WAL file(s) failed verification");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
