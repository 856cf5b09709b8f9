//! `backup`, `restore`, `list`, `verify`: base backups from the command line. The extension
//! runs the same engine from a background worker; here the server is a client connection.

use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use backup_core::config::Config;
use backup_core::pg::backup::copy::Progress;
use backup_core::pg::backup::incremental::Chain;
use backup_core::pg::backup::inventory::RecoveryTarget;
use backup_core::pg::backup::restore::{self, restore_backup, RestoreOptions, RestoreProgress, TargetAction};
use backup_core::pg::backup::run::{run_backup, BackupOptions, WalSummaries};
use backup_core::pg::backup::session::{ServerError, SqlSession};
use backup_core::pg::backup::{BackupId, BackupKind, Manifest};
use backup_core::pg::PgRepo;
use chrono::{DateTime, NaiveDateTime, Utc};

use crate::{human_bytes, Output};

/// The backup's session: one client connection (`pg_backup_start` and `pg_backup_stop` must
/// come from the same one).
struct ClientSession(postgres::Client);

impl SqlSession for ClientSession {
    fn query_row(&mut self, sql: &str, args: &[&str]) -> Result<Vec<Option<String>>, ServerError> {
        let params: Vec<&(dyn postgres::types::ToSql + Sync)> = args.iter().map(|a| a as &(dyn postgres::types::ToSql + Sync)).collect();
        let row = self.0.query_one(sql, &params).map_err(ServerError::from_client)?;
        (0..row.len()).map(|i| row.try_get::<_, Option<String>>(i).map_err(ServerError::from_client)).collect()
    }
}

pub fn backup(config: &Config, repo: Option<&str>, pgdata: &Path, conninfo: &str, workers: usize, kind: BackupKind, wal_summaries: WalSummaries) -> Result<ExitCode> {
    let mut repo = PgRepo::open_repo(config, &config.repo_or_primary(repo)?)?;
    // Large files compress on several threads, so the last big file does not run alone.
    repo.objects_mut().set_codec_threads(workers);
    let client = postgres::Client::connect(conninfo, postgres::NoTls).context("connecting to the server")?;
    let mut session = ClientSession(client);
    // Ids have one-second resolution: never reuse one.
    let mut id = BackupId::at(Utc::now());
    while repo.backups().id_taken(&id)? {
        std::thread::sleep(Duration::from_millis(200));
        id = BackupId::at(Utc::now());
    }
    let progress = Progress::default();
    let opts = BackupOptions { workers, verify_checksums: true, max_rate: 0, wal_timeout: Duration::from_secs(300), wal_summaries };
    let manifest = run_backup(&repo, pgdata, &mut session, &id, kind, &opts, &progress, &mut |_| true)?;
    report_page_failures(&manifest);
    let on_top = match &manifest.parent {
        Some(p) => format!(" (incremental on {p}: {} changed blocks, {} read)", manifest.stats.changed_blocks, human_bytes(manifest.stats.bytes_read)),
        None => String::new(),
    };
    if let Some(method) = &manifest.incremental {
        match &method.wal_unusable {
            Some(why) => eprintln!("wal-archiver: WAL summaries not usable ({why}): scanned every relation file page by page"),
            None => eprintln!(
                "wal-archiver: changed pages found from WAL summaries: {} relation files read only where they changed, {} scanned page by page",
                method.files_from_wal, method.files_scanned
            ),
        }
        if let Some(missed) = &method.wal_missed {
            eprintln!("wal-archiver: WAL summaries checked against a page scan: {} changed pages missed (stored anyway)", missed.len());
            for m in missed.iter().take(20) {
                eprintln!("wal-archiver: WARNING: WAL summaries missed {m}");
            }
        }
    }
    println!(
        "{}: {} files, {} -> {} stored, LSN {} .. {}{on_top}",
        manifest.id,
        manifest.stats.files,
        human_bytes(manifest.stats.bytes),
        human_bytes(manifest.stats.stored_bytes),
        manifest.start_lsn,
        manifest.stop_lsn
    );
    Ok(ExitCode::SUCCESS)
}

fn report_page_failures(m: &Manifest) {
    for f in m.page_checksum_failures.iter().take(20) {
        eprintln!("wal-archiver: WARNING: page checksum failure in {} block {} (expected {}, found {})", f.path, f.block, f.expected, f.found);
    }
}

/// Which backup and target `restore` was asked for.
pub struct RestoreRequest<'a> {
    pub backup_id: Option<&'a str>,
    pub latest: bool,
    pub target_time: Option<&'a str>,
    pub target_lsn: Option<&'a str>,
    pub target_xid: Option<&'a str>,
    pub target_name: Option<&'a str>,
    pub target_immediate: bool,
    pub action: TargetAction,
    pub workers: usize,
    pub archive_off: bool,
    pub tablespace_map: &'a [String],
    pub target_timeline: Option<&'a str>,
    /// `--repo`: restore from this repository only.
    pub repo: Option<&'a str>,
}

impl RestoreRequest<'_> {
    fn target(&self) -> Result<RecoveryTarget> {
        let given = [self.target_time.is_some(), self.target_lsn.is_some(), self.target_xid.is_some(), self.target_name.is_some(), self.target_immediate, self.latest];
        if given.iter().filter(|g| **g).count() > 1 {
            bail!("give at most one of --latest, --target-time, --target-lsn, --target-xid, --target-name, --target immediate");
        }
        Ok(if let Some(t) = self.target_time {
            RecoveryTarget::Time { text: t.to_string(), at: parse_timestamp(t)? }
        } else if let Some(l) = self.target_lsn {
            RecoveryTarget::Lsn(l.parse()?)
        } else if let Some(x) = self.target_xid {
            RecoveryTarget::Xid(x.parse().map_err(|_| anyhow!("--target-xid {x:?} is not a transaction id (a whole number)"))?)
        } else if let Some(n) = self.target_name {
            RecoveryTarget::Name(n.to_string())
        } else if self.target_immediate {
            RecoveryTarget::Immediate
        } else {
            RecoveryTarget::Latest
        })
    }
}

/// Timestamps with an explicit zone, in the forms DBAs type: `2024-01-15 14:30:00+00`,
/// `2024-01-15T14:30:00Z`, `2024-01-15 14:30:00.123 UTC`. Without a zone the moment would
/// depend on whose clock reads it, so it is refused.
pub fn parse_timestamp(s: &str) -> Result<DateTime<Utc>> {
    let t = s.trim();
    if let Ok(d) = DateTime::parse_from_rfc3339(t) {
        return Ok(d.with_timezone(&Utc));
    }
    for fmt in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%.f %#z"] {
        if let Ok(d) = DateTime::parse_from_str(t, fmt) {
            return Ok(d.with_timezone(&Utc));
        }
    }
    for suffix in [" UTC", " GMT", "Z"] {
        if let Some(naive) = t.strip_suffix(suffix) {
            if let Ok(d) = NaiveDateTime::parse_from_str(naive.trim_end(), "%Y-%m-%d %H:%M:%S%.f") {
                return Ok(d.and_utc());
            }
        }
    }
    if NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f").is_ok() {
        bail!("timestamp {s:?} has no time zone; add one, e.g. '{t}+00' or '{t} UTC'");
    }
    bail!("{s:?} is not a timestamp; use the form '2024-01-15 14:30:00+00'")
}

pub fn restore(config: &Config, config_path: Option<&Path>, pgdata: &Path, req: &RestoreRequest) -> Result<ExitCode> {
    let target = req.target()?;
    let (mut repo, chain, pinned) = restore_source(config, req, &target)?;
    // The largest files decompress on several threads, so one big file does not run alone.
    repo.objects_mut().set_codec_threads(req.workers);
    let manifest = chain.target();
    let exe = std::env::current_exe().context("locating wal-archiver")?;
    // Restored from a repository named on purpose, or because one before it failed: recovery
    // fetches its WAL there only (the others may be gone, and a required repository that
    // fails would abort recovery).
    let only = pinned.map(|r| format!(" --repo {r}")).unwrap_or_default();
    let restore_command = match config_path.map(|p| p.canonicalize().unwrap_or_else(|_| p.to_path_buf())) {
        Some(c) => format!("{} --config {}{only} fetch %f %p", exe.display(), c.display()),
        None => format!("{}{only} fetch %f %p", exe.display()),
    };
    let mut tablespace_map = std::collections::BTreeMap::new();
    for m in req.tablespace_map {
        let (oid, dir) = m.split_once('=').ok_or_else(|| anyhow!("--tablespace-map {m:?}: expected OID=DIRECTORY"))?;
        let oid: u32 = oid.parse().map_err(|_| anyhow!("--tablespace-map {m:?}: {oid:?} is not a tablespace OID"))?;
        tablespace_map.insert(oid, std::path::PathBuf::from(dir));
    }
    if let Some(tl) = req.target_timeline {
        if !(tl == "current" || tl == "latest" || tl.parse::<u32>().is_ok_and(|n| n > 0)) {
            bail!("--target-timeline {tl:?}: expected current, latest or a timeline number");
        }
    }
    let opts = RestoreOptions {
        workers: req.workers,
        target,
        action: req.action,
        restore_command,
        archive_off: req.archive_off,
        tablespace_map,
        target_timeline: req.target_timeline.map(str::to_string),
    };
    let progress = RestoreProgress::default();
    let through = match chain.manifests().len() {
        1 => String::new(),
        n => format!(" through a chain of {n} backups ({})", chain.ids().iter().map(|i| i.as_str()).collect::<Vec<_>>().join(" + ")),
    };
    eprintln!("wal-archiver: restoring {} ({} files, {}){through} into {}", manifest.id, manifest.stats.files, human_bytes(manifest.stats.bytes), pgdata.display());
    restore_backup(&repo, &chain, pgdata, &opts, &progress)?;
    let then = match opts.target {
        RecoveryTarget::Latest => String::new(),
        _ => format!(", then {}", opts.action.as_str()),
    };
    println!(
        "restored {} into {} ({} bytes); start the server to recover to {}{then}",
        manifest.id,
        pgdata.display(),
        progress.bytes_done.load(Ordering::Relaxed),
        opts.target,
    );
    Ok(ExitCode::SUCCESS)
}

/// The repository to restore from and the chain to restore: the one named by `--repo`, else
/// the first repository, in the configured order (local first), that has the backup asked
/// for, or one consistent before the target. A repository that fails is skipped with a
/// warning; if none has it, the primary's answer is the error. The third value names the
/// repository recovery must fetch WAL from alone, if any.
fn restore_source(config: &Config, req: &RestoreRequest, target: &RecoveryTarget) -> Result<(PgRepo, Chain, Option<String>)> {
    let candidates = match req.repo {
        Some(name) => vec![config.repo_named(name)?],
        None => config.repositories(),
    };
    let id = req.backup_id.map(str::parse::<BackupId>).transpose()?;
    let source = restore::find_source(config, &candidates, req.repo.is_some(), id.as_ref(), target, &mut |m| eprintln!("wal-archiver: {m}"))?;
    Ok((source.repo, source.chain, source.pinned))
}

pub fn list(config: &Config, repo: Option<&str>, output: Output) -> Result<ExitCode> {
    let repo = PgRepo::open_repo(config, &config.repo_or_primary(repo)?)?;
    let inventory = repo.backups().inventory()?;
    let backups = inventory.completed;
    if output == Output::Json {
        let rows: Vec<_> = backups.iter().map(summary_json).collect();
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "backups": rows }))?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<24} {:<11} {:<20} {:<20} {:>10} {:>10}  parent", "id", "type", "started (UTC)", "LSN range", "size", "stored");
    for m in &backups {
        println!(
            "{:<24} {:<11} {:<20} {:<20} {:>10} {:>10}  {}",
            m.id.as_str(),
            m.kind.to_string(),
            m.start_time.format("%Y-%m-%d %H:%M:%S").to_string(),
            format!("{}..{}", m.start_lsn, m.stop_lsn),
            human_bytes(m.stats.bytes),
            human_bytes(m.stats.stored_bytes),
            m.parent.as_ref().map_or("-", |p| p.as_str())
        );
    }
    if !inventory.incomplete.is_empty() {
        println!("incomplete (no manifest, not restorable): {}", inventory.incomplete.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn summary_json(m: &Manifest) -> serde_json::Value {
    serde_json::json!({
        "id": m.id, "type": m.kind, "parent": m.parent, "chain_depth": m.chain_depth,
        "changed_blocks": m.changed_blocks(), "bytes_read": m.stats.bytes_read,
        "incremental": m.incremental, "timeline": m.timeline,
        "start_lsn": m.start_lsn, "stop_lsn": m.stop_lsn, "start_wal": m.start_wal, "stop_wal": m.stop_wal,
        "start_time": m.start_time, "stop_time": m.stop_time, "stop_next_xid": m.stop_next_xid,
        "files": m.stats.files, "bytes": m.stats.bytes, "stored_bytes": m.stats.stored_bytes,
        "duration_ms": m.stats.duration_ms, "page_checksum_failures": m.page_checksum_failures.len(),
    })
}

pub fn delete(config: &Config, repo: Option<&str>, id: &str, cascade: bool) -> Result<ExitCode> {
    let repo = PgRepo::open_repo(config, &config.repo_or_primary(repo)?)?;
    for gone in repo.backups().delete(&id.parse()?, cascade)? {
        println!("deleted {gone}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn verify(config: &Config, repo: Option<&str>, id: &str, output: Output) -> Result<ExitCode> {
    let repo = PgRepo::open_repo(config, &config.repo_or_primary(repo)?)?;
    let report = repo.backups().verify(&id.parse()?)?;
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}: {} files in {} objects, {} WAL segments checked", report.backup, report.files_checked, report.objects_checked, report.wal_checked);
        for p in &report.problems {
            println!("PROBLEM  {p}");
        }
        println!("{}", if report.problems.is_empty() { "backup is intact" } else { "backup is NOT restorable as is" });
    }
    Ok(if report.problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

pub fn copy(config: &Config, from: Option<&str>, id: &str, to: &str, output: Output) -> Result<ExitCode> {
    let (src, dst) = (config.repo_or_primary(from)?, config.repo_named(to)?);
    if src.name == dst.name {
        bail!("backup {id} is already in repository {to}: --to must name another repository than the source (--repo, default the primary)");
    }
    let from_repo = PgRepo::open_repo(config, &src)?;
    let to_repo = PgRepo::open_repo(config, &dst).with_context(|| format!("repository {to} (initialize it with 'wal-archiver init --pgdata DATADIR')"))?;
    let started = std::time::Instant::now();
    let report = backup_core::pg::backup::replicate::copy_backup(&from_repo, &to_repo, &id.parse()?)?;
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    for b in &report.already_there {
        println!("{b}: already in {to}");
    }
    if !report.copied.is_empty() {
        let secs = started.elapsed().as_secs_f64();
        println!(
            "copied {} from {} to {}: {} objects, {} ({}/s), {} WAL files",
            report.copied.join(" + "),
            src.name,
            dst.name,
            report.objects,
            human_bytes(report.bytes),
            human_bytes((report.bytes as f64 / secs.max(0.001)) as u64),
            report.wal_files
        );
    }
    Ok(ExitCode::SUCCESS)
}
