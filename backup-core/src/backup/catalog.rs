//! The backups a repository holds, read from their manifests: list, find the one for a
//! recovery target, verify, delete. The SQL catalog mirrors this; this is the truth.

use std::collections::BTreeSet;
use std::io::Read;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::manifest::{BackupId, FileEntry, Manifest};
use crate::codec;
use crate::repo::{RepoError, Repository};
use crate::storage::{PutMode, StorageError};
use crate::wal::{Lsn, SegmentPos, WalFileName};

/// A moment to recover to, as `recovery_target_*` understands them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// Replay all archived WAL.
    Latest,
    /// Stop as soon as the backup is consistent.
    Immediate,
    /// `text` is passed to PostgreSQL as given (it parses time zones its own way).
    Time { text: String, at: DateTime<Utc> },
    Lsn(Lsn),
    Xid(u64),
    Name(String),
}

impl std::fmt::Display for RecoveryTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecoveryTarget::Latest => f.write_str("the end of the archive"),
            RecoveryTarget::Immediate => f.write_str("the moment the backup is consistent"),
            RecoveryTarget::Time { text, .. } => write!(f, "time {text}"),
            RecoveryTarget::Lsn(lsn) => write!(f, "LSN {lsn}"),
            RecoveryTarget::Xid(xid) => write!(f, "transaction {xid}"),
            RecoveryTarget::Name(name) => write!(f, "restore point {name:?}"),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct VerifyReport {
    pub backup: String,
    pub files_checked: u64,
    pub objects_checked: u64,
    pub wal_checked: u64,
    pub problems: Vec<String>,
}

impl Repository {
    pub fn read_manifest(&self, id: &BackupId) -> Result<Manifest, RepoError> {
        let mut json = Vec::new();
        match self.get_object(&id.manifest_key(), &mut json) {
            Ok(_) => {}
            Err(RepoError::Storage(StorageError::NotFound { .. })) => {
                return Err(RepoError::UnknownBackup { id: id.to_string(), location: self.location() })
            }
            Err(e) => return Err(e),
        }
        serde_json::from_slice(&json).map_err(|e| RepoError::codec(&id.manifest_key(), codec::CodecError::Corrupt(format!("manifest is not valid: {e}"))))
    }

    /// Completed backups (those with a manifest), oldest first.
    pub fn list_backups(&self) -> Result<Vec<Manifest>, RepoError> {
        self.backup_ids_with_manifest()?.iter().map(|id| self.read_manifest(id)).collect()
    }

    fn backup_ids_with_manifest(&self) -> Result<Vec<BackupId>, RepoError> {
        let mut ids: Vec<BackupId> = self
            .storage()
            .list("backup/")?
            .into_iter()
            .filter_map(|m| m.key.strip_prefix("backup/")?.strip_suffix("/manifest")?.parse().ok())
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Backups that left data but never wrote a manifest (failed or killed runs).
    pub fn list_incomplete(&self) -> Result<Vec<String>, RepoError> {
        let complete: BTreeSet<String> = self.backup_ids_with_manifest()?.into_iter().map(|id| id.to_string()).collect();
        let all: BTreeSet<String> =
            self.storage().list("backup/")?.into_iter().filter_map(|m| m.key.split('/').nth(1).map(str::to_string)).collect();
        Ok(all.difference(&complete).cloned().collect())
    }

    /// The backup to restore from to reach `target`: the newest one that is consistent
    /// before the target.
    pub fn find_backup(&self, target: &RecoveryTarget) -> Result<Manifest, RepoError> {
        let backups = self.list_backups()?;
        let none = |why: String| RepoError::NoBackupForTarget(why);
        if backups.is_empty() {
            return Err(none(format!("repository {} holds no completed backup", self.location())));
        }
        let pick = |ok: &dyn Fn(&Manifest) -> bool, what: String| {
            backups.iter().rev().find(|m| ok(m)).cloned().ok_or_else(|| {
                let first = &backups[0];
                none(format!("no backup is consistent before {what}; the earliest, {}, ends at {} (LSN {})", first.id, first.stop_time.format("%Y-%m-%d %H:%M:%S UTC"), first.stop_lsn))
            })
        };
        match target {
            RecoveryTarget::Latest | RecoveryTarget::Immediate => Ok(backups.last().unwrap().clone()),
            RecoveryTarget::Time { text, at } => pick(&|m| m.stop_time <= *at, format!("time {text}")),
            RecoveryTarget::Lsn(lsn) => pick(&|m| m.stop_lsn <= *lsn, format!("LSN {lsn}")),
            RecoveryTarget::Xid(xid) => pick(&|m| m.stop_next_xid.is_some_and(|n| n <= *xid), format!("transaction {xid}")),
            RecoveryTarget::Name(name) => match self.restore_point(name)? {
                Some(lsn) => pick(&|m| m.stop_lsn <= lsn, format!("restore point {name} (LSN {lsn})")),
                // Not recorded through backup.create_restore_point(): assume the newest.
                None => Ok(backups.last().unwrap().clone()),
            },
        }
    }

    /// Record a named restore point's LSN so that `--target-name` can pick the right backup.
    pub fn record_restore_point(&self, name: &str, lsn: Lsn) -> Result<(), RepoError> {
        let key = restore_point_key(name)?;
        self.put_object(&key, &mut lsn.to_string().as_bytes(), PutMode::Overwrite)?;
        Ok(())
    }

    pub fn restore_point(&self, name: &str) -> Result<Option<Lsn>, RepoError> {
        let Ok(key) = restore_point_key(name) else { return Ok(None) };
        let mut text = Vec::new();
        match self.get_object(&key, &mut text) {
            Ok(_) => Ok(String::from_utf8_lossy(&text).parse().ok()),
            Err(RepoError::Storage(StorageError::NotFound { .. })) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Re-read everything a restore of `id` would need: every file (authentication, SHA-256,
    /// size), the objects against the manifest, and the WAL from start to stop segment.
    pub fn verify_backup(&self, id: &BackupId) -> Result<VerifyReport, RepoError> {
        let manifest = self.read_manifest(id)?;
        let mut report = VerifyReport { backup: id.to_string(), files_checked: 0, objects_checked: 0, wal_checked: 0, problems: Vec::new() };
        let stored: std::collections::BTreeMap<String, u64> =
            self.storage().list(&id.prefix())?.into_iter().map(|m| (m.key, m.size)).collect();
        let referenced: BTreeSet<&str> = manifest.files.iter().map(|f| f.object.as_str()).collect();
        for object in &referenced {
            match stored.get(*object) {
                None => report.problems.push(format!("object {object}: missing (listed in the manifest)")),
                Some(size) => {
                    report.objects_checked += 1;
                    let end = manifest.files.iter().filter(|f| f.object == *object).map(|f| f.offset + f.stored_size).max().unwrap_or(0);
                    if end != *size {
                        report.problems.push(format!("object {object}: {size} bytes, the manifest accounts for {end}"));
                    }
                }
            }
        }
        for file in &manifest.files {
            if !stored.contains_key(&file.object) {
                continue;
            }
            report.files_checked += 1;
            if let Err(e) = self.check_file(file) {
                report.problems.push(format!("object {} (file {}): {e}", file.object, file.path));
            }
        }
        for name in wal_range(&manifest, self.info.wal_segment_size) {
            let key = name.object_key();
            report.wal_checked += 1;
            match self.get_object(&key, &mut std::io::sink()) {
                Ok(_) => {}
                Err(RepoError::Storage(StorageError::NotFound { .. })) => {
                    report.problems.push(format!("WAL {name}: not in the archive; the backup cannot be made consistent"))
                }
                Err(e) => report.problems.push(format!("WAL {name}: {e}")),
            }
        }
        Ok(report)
    }

    fn check_file(&self, file: &FileEntry) -> Result<(), RepoError> {
        let mut sink = std::io::sink();
        let summary = self.decode_file(file, &mut sink)?;
        if hex::encode(summary.trailer.sha256) != file.sha256 || summary.trailer.plaintext_size != file.size {
            return Err(RepoError::codec(&file.object, codec::CodecError::Corrupt("content differs from the manifest".into())));
        }
        Ok(())
    }

    /// Decode one backed-up file (from its own object or its slice of a bundle) into `out`.
    pub fn decode_file(&self, file: &FileEntry, out: &mut dyn std::io::Write) -> Result<codec::DecodeSummary, RepoError> {
        let aad = format!("{}#{}", file.object, file.path);
        let storage = self.storage();
        let result = if file.offset == 0 && storage.head(&file.object)?.is_some_and(|m| m.size == file.stored_size) {
            let mut input = std::io::BufReader::with_capacity(1 << 20, storage.get(&file.object)?);
            codec::decode_with_threads(&mut input, out, &aad, self.keys(), self.codec_threads())
        } else {
            let bytes = storage.get_range(&file.object, file.offset..file.offset + file.stored_size)?;
            codec::decode(&mut (&bytes[..]).take(file.stored_size), out, &aad, self.keys())
        };
        result.map_err(|e| RepoError::codec(&file.object, e))
    }

    /// Remove a backup: the manifest first, so it stops being restorable before any data goes.
    pub fn delete_backup(&self, id: &BackupId) -> Result<u64, RepoError> {
        let objects = self.storage().list(&id.prefix())?;
        // Uploads a killed worker left half-written (callers never delete a running backup).
        let aborted = self.storage().abort_stale_uploads(&id.prefix(), std::time::Duration::ZERO)?;
        if objects.is_empty() && aborted == 0 {
            return Err(RepoError::UnknownBackup { id: id.to_string(), location: self.location() });
        }
        self.storage().delete(&id.manifest_key())?;
        for o in &objects {
            self.storage().delete(&o.key)?;
        }
        Ok(objects.len() as u64)
    }
}

/// WAL segments from the backup's start to its stop segment, inclusive.
pub fn wal_range(m: &Manifest, segment_size: u32) -> Vec<WalFileName> {
    let seg = |name: &str| WalFileName::parse(name).ok().and_then(|n| n.segment());
    let (Some(first), Some(last)) = (seg(&m.start_wal), seg(&m.stop_wal)) else { return Vec::new() };
    (first.segno(segment_size)..=last.segno(segment_size))
        .map(|n| WalFileName::Segment(SegmentPos::from_segno(m.timeline, n, segment_size)))
        .collect()
}

fn restore_point_key(name: &str) -> Result<String, RepoError> {
    // Names are free text; the key uses their hex so any name is a valid key.
    if name.is_empty() || name.len() > 64 {
        return Err(RepoError::NoBackupForTarget(format!("restore point name {name:?} must be 1-64 bytes")));
    }
    Ok(format!("restore_point/{}", hex::encode(name)))
}
