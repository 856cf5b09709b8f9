//! Copying a completed backup into another repository of the same cluster: the off-site copy
//! of last night's full backup costs network, not a second read of the database.
//!
//! Objects are copied as stored: both repositories belong to the same cluster and are opened
//! with the same key ring and codec settings, so the bytes are valid in either. A backup is
//! copied with the backups it builds on (those the destination lacks), the WAL it needs to
//! become consistent, and every timeline history file; its manifest goes last, so an
//! interrupted copy leaves an incomplete backup (no manifest: not restorable, collected by
//! retention) and running the copy again completes it.

use std::io::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::Serialize;

use super::manifest::{BackupId, Manifest};
use crate::pg::repos::{copy_wal, same_cluster};
use crate::pg::wal::WalFileName;
use crate::pg::{PgRepo, PgRepoError};
use crate::repo::RepoError;
use crate::storage::{PutMode, StorageError};

/// Objects copied at once: the stores are remote, so latency, not bandwidth, bounds one stream.
pub const COPY_STREAMS: usize = 4;

#[derive(Debug, Default, Serialize)]
pub struct CopyReport {
    /// Backups copied, ancestors first.
    pub copied: Vec<String>,
    /// Backups the destination had already (the asked one included, if so).
    pub already_there: Vec<String>,
    pub objects: u64,
    pub bytes: u64,
    pub wal_files: u64,
    /// The manifests of `copied` and `already_there`: what a catalog records of the copy.
    #[serde(skip)]
    pub manifests: Vec<Manifest>,
}

/// Copy backup `id` (and what it needs) from `from` to `to`.
pub fn copy_backup(from: &PgRepo, to: &PgRepo, id: &BackupId) -> Result<CopyReport, PgRepoError> {
    same_cluster(to, from)?;
    let manifest = from.backups().read_manifest(id)?;
    let chain = from.backups().chain(manifest)?;
    let mut report = CopyReport::default();
    copy_histories(from, to, &mut report)?;
    for m in chain.manifests() {
        let dst = to.objects();
        if dst.storage().exists(&dst.ctx(), &m.id.manifest_key())? {
            report.already_there.push(m.id.to_string());
        } else {
            copy_one(from, to, m, &mut report)?;
            report.copied.push(m.id.to_string());
        }
        report.manifests.push(m.clone());
    }
    Ok(report)
}

fn copy_one(from: &PgRepo, to: &PgRepo, m: &Manifest, report: &mut CopyReport) -> Result<(), PgRepoError> {
    let (src, ctx) = (from.objects().storage(), from.objects().ctx());
    let manifest_key = m.id.manifest_key();
    let objects: Vec<_> = src.list_all(&ctx, &m.id.prefix())?.into_iter().filter(|o| o.key != manifest_key).collect();
    let next = AtomicUsize::new(0);
    let (count, bytes) = (AtomicU64::new(0), AtomicU64::new(0));
    let failure: Mutex<Option<PgRepoError>> = Mutex::new(None);
    let work = |_: usize| loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= objects.len() || failure.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
            return;
        }
        match copy_object(from, to, &objects[i].key) {
            Ok(n) => {
                count.fetch_add(1, Ordering::Relaxed);
                bytes.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => {
                failure.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
                return;
            }
        }
    };
    std::thread::scope(|scope| {
        for h in crate::threads::spawn_blocking_signals(scope, COPY_STREAMS.min(objects.len().max(1)), &work) {
            h.join().expect("copy thread panicked");
        }
    });
    if let Some(e) = failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    report.objects += count.into_inner();
    report.bytes += bytes.into_inner();
    // The WAL that makes it consistent; the rest of the archive follows by archiving (a
    // required repository) or catch-up (a best-effort one).
    for name in m.wal_range(from.cluster().wal_segment_size) {
        if !copy_wal(from, to, &name)? {
            return Err(PgRepoError::NoBackupForTarget(format!(
                "backup {} needs WAL file {name}, which {} does not hold; it cannot be copied in a restorable state",
                m.id,
                from.location()
            )));
        }
        report.wal_files += 1;
    }
    // Last: from now on the copy exists.
    let n = copy_object(from, to, &manifest_key)?;
    report.objects += 1;
    report.bytes += n;
    Ok(())
}

/// Timeline history files are a few bytes each and recovery may need any of them.
fn copy_histories(from: &PgRepo, to: &PgRepo, report: &mut CopyReport) -> Result<(), PgRepoError> {
    let (src, ctx) = (from.objects().storage(), from.objects().ctx());
    for h in src.list_all(&ctx, "wal/history/")? {
        if let Ok(name) = WalFileName::parse(h.key.trim_start_matches("wal/history/")) {
            if copy_wal(from, to, &name)? {
                report.wal_files += 1;
            }
        }
    }
    Ok(())
}

/// Stream one object across as stored; returns its size.
fn copy_object(from: &PgRepo, to: &PgRepo, key: &str) -> Result<u64, PgRepoError> {
    let (src, ctx) = (from.objects().storage(), from.objects().ctx());
    let (dst, dctx) = (to.objects().storage(), to.objects().ctx());
    let mut reader = src.get(&ctx, key)?;
    let mut writer = dst.writer(&dctx, key, PutMode::Overwrite)?;
    let n = std::io::copy(&mut reader, &mut writer).map_err(|e| RepoError::from(StorageError::from_stream("copying", key, e)))?;
    writer.flush().map_err(|e| RepoError::from(StorageError::from_stream("copying", key, e)))?;
    writer.commit()?;
    Ok(n)
}
