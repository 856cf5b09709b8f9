//! A base backup (full or incremental) from start to manifest, independent of how we talk to
//! the server.
//!
//! The server side (`pg_backup_start` / `pg_backup_stop`, from one session) is
//! [`super::session`], over a [`SqlSession`]: the extension's background worker provides one
//! with SPI, the CLI with a client connection. Everything else happens here.

use std::path::Path;
use std::time::{Duration, Instant};

use std::sync::atomic::Ordering;

use super::copy::{copy_files, CopyError, CopyOptions, Progress};
use super::incremental::{choose_parent, wal_changes, Baseline, ChainError};
use super::manifest::{BackupId, BackupKind, BackupStats, IncrementalMethod, Manifest, MANIFEST_FORMAT};
use super::scan::scan_pgdata;
use super::session::{self, SessionError, SqlSession};
use crate::pg::cluster::ClusterIdentity;
use crate::pg::wal::TimelineId;
use crate::pg::{PgRepo, PgRepoError};
use crate::repo::RepoError;

/// What the backup is doing, for `backup.progress`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Starting,
    Copying,
    Stopping,
    WaitingForWal,
    WritingManifest,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Copying => "copying",
            Phase::Stopping => "stopping",
            Phase::WaitingForWal => "waiting for WAL",
            Phase::WritingManifest => "writing manifest",
        }
    }
}

pub struct BackupOptions {
    pub workers: usize,
    pub verify_checksums: bool,
    /// Bytes per second the copy may read in all (0: unlimited).
    pub max_rate: u64,
    /// How long to wait, after `pg_backup_stop`, for the last WAL segment to reach the repository.
    pub wal_timeout: Duration,
    pub wal_summaries: WalSummaries,
}

/// What an incremental backup does with the WAL summaries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalSummaries {
    /// Read only the pages they name, in the files they vouch for (the default).
    Use,
    /// Use them, and check them against a page scan: see [`CopyOptions::check_wal_summaries`].
    Check,
    /// Judge every page by its LSN, reading every file whole.
    Ignore,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("data directory {pgdata} belongs to database system {cluster}, but the repository is for {repo}")]
    WrongCluster { pgdata: String, cluster: String, repo: String },
    #[error("server refused")]
    Server(#[source] SessionError),
    #[error("backup cancelled")]
    Cancelled,
    #[error("WAL segment {segment} needed to make the backup consistent did not reach the repository within {seconds} s; check archive_command (pg_stat_archiver)")]
    WalNotArchived { segment: String, seconds: u64 },
    #[error("the server's timeline changed from {expected} to {found} during the backup (a promotion?); take the backup again")]
    TimelineChanged { expected: TimelineId, found: TimelineId },
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error("cannot read the data directory")]
    Scan(#[source] std::io::Error),
    #[error(transparent)]
    Copy(CopyError),
    #[error(transparent)]
    Repo(#[from] PgRepoError),
    #[error(transparent)]
    Cluster(#[from] crate::pg::cluster::ClusterError),
}

impl From<CopyError> for BackupError {
    fn from(e: CopyError) -> Self {
        match e {
            CopyError::Cancelled => BackupError::Cancelled,
            other => BackupError::Copy(other),
        }
    }
}

impl From<RepoError> for BackupError {
    fn from(e: RepoError) -> Self {
        if e.is_cancelled() {
            return BackupError::Cancelled;
        }
        BackupError::Repo(e.into())
    }
}

/// Take a backup of the cluster at `pgdata` into `repo` as backup `id`: a full one, or an
/// incremental one on top of the newest completed backup of the server's timeline.
///
/// `tick(phase)` runs on this thread several times a second; returning `false` cancels. A
/// cancelled or failed backup leaves data objects but no manifest: it never lists as restorable.
#[allow(clippy::too_many_arguments)]
pub fn run_backup(
    repo: &PgRepo,
    pgdata: &Path,
    session: &mut dyn SqlSession,
    id: &BackupId,
    kind: BackupKind,
    opts: &BackupOptions,
    progress: &Progress,
    tick: &mut dyn FnMut(Phase) -> bool,
) -> Result<Manifest, BackupError> {
    let began = Instant::now();
    let cluster = ClusterIdentity::from_pgdata(pgdata)?;
    if cluster.system_id != repo.cluster().system_id {
        return Err(BackupError::WrongCluster {
            pgdata: pgdata.display().to_string(),
            cluster: cluster.system_id.to_string(),
            repo: repo.cluster().system_id.to_string(),
        });
    }
    if !tick(Phase::Starting) {
        return Err(BackupError::Cancelled);
    }
    // Refused before the server does any work for it.
    let completed = match kind {
        BackupKind::Full => Vec::new(),
        BackupKind::Incremental => repo.backups().list()?,
    };
    if kind == BackupKind::Incremental && completed.is_empty() {
        return Err(ChainError::NoBackup.into());
    }
    // Without data checksums a page's checksum field means nothing: verifying it would call
    // every page corrupt.
    let data_checksums = session::data_checksums(session).map_err(BackupError::Server)?;
    let start_time = chrono::Utc::now();
    let start_lsn = session::start(session, id.as_str()).map_err(BackupError::Server)?;
    let mut wal_unusable = None;
    let baseline = match kind {
        BackupKind::Full => None,
        BackupKind::Incremental => {
            let timeline = session::timeline(session).map_err(BackupError::Server)?;
            let mut baseline = Baseline::of(choose_parent(&completed, timeline)?);
            // The WAL from the parent's start to ours names every page that changed: read
            // only those. Where its summaries fall short, every file is scanned instead.
            if opts.wal_summaries == WalSummaries::Ignore {
                wal_unusable = Some("not used, as asked".to_string());
            } else {
                match wal_changes(repo, pgdata, timeline, baseline.since, start_lsn) {
                    Ok(changes) => baseline.wal = Some(changes),
                    Err(why) => wal_unusable = Some(why),
                }
            }
            Some(baseline)
        }
    };
    let scan = scan_pgdata(pgdata).map_err(BackupError::Scan)?;
    let copy_opts =
        CopyOptions { workers: opts.workers, start_lsn, verify_checksums: opts.verify_checksums && data_checksums,
        max_rate: opts.max_rate,
        check_wal_summaries: opts.wal_summaries == WalSummaries::Check,
    };
    let mut copied = copy_files(repo, id, scan.files, &copy_opts, baseline.as_ref(), progress, &mut || tick(Phase::Copying))?;

    if !tick(Phase::Stopping) {
        return Err(BackupError::Cancelled);
    }
    let stop = session::stop(session).map_err(BackupError::Server)?;
    let stop_time = chrono::Utc::now();
    // Only `--target-xid` needs it, and a backup without it is still a backup: a failure here
    // costs that one use (find() then never picks this backup for an xid target).
    let next_xid = session::next_xid(session).ok();
    let timeline = parse_start_timeline(&stop.backup_label).unwrap_or(TimelineId(1));
    if let Some(b) = &baseline {
        if b.timeline != timeline {
            return Err(BackupError::TimelineChanged { expected: b.timeline, found: timeline });
        }
    }
    let seg = repo.cluster().wal_segment_size;
    let start_wal = Manifest::wal_name(timeline, start_lsn, seg, false);
    let stop_wal = Manifest::wal_name(timeline, stop.lsn, seg, true);

    // The backup is consistent only with WAL up to the stop LSN: wait until the segment
    // holding it is in *this* repository (not merely "archived somewhere").
    let stop_key = stop_wal.object_key();
    let objects = repo.objects();
    let waited = Instant::now();
    while !objects.storage().exists(&objects.ctx(), &stop_key).map_err(RepoError::from)? {
        if waited.elapsed() > opts.wal_timeout {
            return Err(BackupError::WalNotArchived { segment: stop_wal.to_string(), seconds: opts.wal_timeout.as_secs() });
        }
        if !tick(Phase::WaitingForWal) {
            return Err(BackupError::Cancelled);
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    if !tick(Phase::WritingManifest) {
        return Err(BackupError::Cancelled);
    }
    let files = std::mem::take(&mut copied.files);
    let stats = BackupStats {
        files: files.len() as u64,
        bytes: files.iter().map(|f| f.size).sum(),
        stored_bytes: files.iter().map(|f| f.stored_size).sum(),
        objects: copied.objects,
        duration_ms: began.elapsed().as_millis() as u64,
        changed_blocks: files.iter().filter_map(|f| f.delta.as_ref()).map(|d| d.blocks.len()).sum(),
        bytes_read: progress.bytes_read.load(Ordering::Relaxed),
    };
    let manifest = Manifest {
        // A full backup stays readable by programs that know no incrementals.
        format: if baseline.is_some() { MANIFEST_FORMAT } else { 1 },
        id: id.clone(),
        kind,
        parent: baseline.as_ref().map(|b| b.parent.clone()),
        chain_depth: baseline.as_ref().map_or(0, |b| b.parent_depth + 1),
        system_identifier: repo.cluster().system_id,
        pg_version: repo.cluster().pg_version,
        timeline,
        start_lsn,
        stop_lsn: stop.lsn,
        start_wal,
        stop_wal,
        start_time,
        stop_time,
        stop_next_xid: next_xid,
        label: id.to_string(),
        backup_label: stop.backup_label,
        tablespace_map: stop.tablespace_map.filter(|m| !m.is_empty()),
        tablespaces: scan.tablespaces,
        directories: scan.directories,
        files,
        page_checksum_failures: copied.page_failures,
        stats,
        data_checksums: Some(data_checksums),
        incremental: baseline.as_ref().map(|_| IncrementalMethod {
            files_from_wal: copied.files_from_wal,
            files_scanned: copied.files_scanned,
            wal_unusable,
            wal_missed: (opts.wal_summaries == WalSummaries::Check).then(|| std::mem::take(&mut copied.wal_missed)),
        }),
    };
    repo.backups().write_manifest(&manifest)?;
    Ok(manifest)
}

/// `START TIMELINE: 1` in the backup_label text.
fn parse_start_timeline(label: &str) -> Option<TimelineId> {
    label.lines().find_map(|l| l.strip_prefix("START TIMELINE:")).and_then(|v| v.trim().parse().ok()).map(TimelineId)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeline_from_backup_label() {
        let label = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nCHECKPOINT LOCATION: 0/2000060\nBACKUP METHOD: streamed\nBACKUP FROM: primary\nSTART TIME: 2024-01-15 14:30:00 UTC\nLABEL: x\nSTART TIMELINE: 3\n";
        assert_eq!(parse_start_timeline(label), Some(TimelineId(3)));
        assert_eq!(parse_start_timeline("garbage"), None);
    }
}
