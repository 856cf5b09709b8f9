//! The manifest: everything needed to restore a backup, written last.
//!
//! A backup exists, for every reader, only once `backup/<id>/manifest` is in the repository;
//! data objects without a manifest are leftovers of a failed run. The manifest is an encoded
//! object like any other (compressed, encrypted, authenticated). It leaves room for block-level
//! incremental backups: a `parent`, and per file an optional list of changed blocks, so that
//! they need no format break.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};

pub use crate::repo::files::FileEntry;
use crate::pg::wal::{Lsn, SegmentPos, SystemId, TimelineId, WalFileName};

/// 1: full backups only; 2: incremental backups (a parent, delta file entries). A reader
/// refuses a format newer than it knows rather than misread a delta as a whole file.
pub const MANIFEST_FORMAT: u32 = 2;

/// `backup_YYYYMMDD_HHMMSS` (UTC), the product's backup id form. Sorts by time.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackupId(String);

impl BackupId {
    pub fn at(t: DateTime<Utc>) -> BackupId {
        BackupId(t.format("backup_%Y%m%d_%H%M%S").to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn time(&self) -> DateTime<Utc> {
        NaiveDateTime::parse_from_str(&self.0, "backup_%Y%m%d_%H%M%S").expect("validated on construction").and_utc()
    }

    /// Where the backup's objects live in the repository.
    pub fn prefix(&self) -> String {
        format!("backup/{}/", self.0)
    }

    pub fn manifest_key(&self) -> String {
        format!("backup/{}/manifest", self.0)
    }
}

impl FromStr for BackupId {
    type Err = BadBackupId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match NaiveDateTime::parse_from_str(s, "backup_%Y%m%d_%H%M%S") {
            Ok(_) if s.len() == "backup_YYYYMMDD_HHMMSS".len() => Ok(BackupId(s.to_string())),
            _ => Err(BadBackupId(s.to_string())),
        }
    }
}

impl fmt::Display for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

crate::serde_as_string!(BackupId);

#[derive(Debug, thiserror::Error)]
#[error("'{0}' is not a backup id (expected the form backup_20240115_143000)")]
pub struct BadBackupId(pub String);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupKind {
    Full,
    Incremental,
}

impl fmt::Display for BackupKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackupKind::Full => "full",
            BackupKind::Incremental => "incremental",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub id: BackupId,
    pub kind: BackupKind,
    /// The backup this one is relative to (incremental backups).
    pub parent: Option<BackupId>,
    /// 0 for a full backup, its parent's depth + 1 for an incremental.
    #[serde(default)]
    pub chain_depth: u32,
    pub system_identifier: SystemId,
    pub pg_version: u32,
    pub timeline: TimelineId,
    pub start_lsn: Lsn,
    pub stop_lsn: Lsn,
    /// First and last WAL segment a restore needs to reach consistency.
    pub start_wal: WalFileName,
    pub stop_wal: WalFileName,
    pub start_time: DateTime<Utc>,
    pub stop_time: DateTime<Utc>,
    /// Next transaction id when the backup ended: transactions from here on commit after the
    /// backup is consistent, so it can serve `--target-xid` for them.
    pub stop_next_xid: Option<u64>,
    pub label: String,
    /// Returned by `pg_backup_stop`; a restore writes them into the new data directory.
    pub backup_label: String,
    pub tablespace_map: Option<String>,
    pub tablespaces: Vec<Tablespace>,
    pub directories: Vec<DirEntry>,
    pub files: Vec<FileEntry>,
    pub page_checksum_failures: Vec<PageFailure>,
    pub stats: BackupStats,
    /// Whether the cluster had data checksums: pages were verified, and a restore may verify
    /// them again.
    #[serde(default)]
    pub data_checksums: Option<bool>,
    /// Incremental backups: how the changed pages were found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incremental: Option<IncrementalMethod>,
}

/// How an incremental backup found its changed pages.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncrementalMethod {
    /// Relation files whose changed blocks the WAL summaries named: only those were read.
    pub files_from_wal: u64,
    /// Relation files read whole and judged page by page (page LSN against the parent's start).
    pub files_scanned: u64,
    /// Why the WAL summaries could not be used at all (a gap, a segment not summarized), if so.
    pub wal_unusable: Option<String>,
    /// When the summaries were checked against a page scan: pages they missed (stored anyway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_missed: Option<Vec<String>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tablespace {
    pub oid: u32,
    pub location: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    /// Relative to the data directory; tablespace contents sit under `pg_tblspc/<oid>/`.
    pub path: String,
    pub mode: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageFailure {
    pub path: String,
    pub block: u32,
    pub expected: u16,
    pub found: u16,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupStats {
    pub files: u64,
    pub bytes: u64,
    pub stored_bytes: u64,
    pub objects: u64,
    pub duration_ms: u64,
    /// Incremental backups: relation blocks stored (the rest came from the parent).
    #[serde(default)]
    pub changed_blocks: u64,
    /// Incremental backups: bytes of the data directory read to find them.
    #[serde(default)]
    pub bytes_read: u64,
}

impl Manifest {
    /// Segment name a position falls in, as the archive names it. `stop` positions use the
    /// segment holding the byte before them, as `pg_walfile_name` does.
    pub fn wal_name(timeline: TimelineId, lsn: Lsn, segment_size: u32, is_end: bool) -> WalFileName {
        let pos = if is_end && lsn.0 > 0 { lsn.0 - 1 } else { lsn.0 };
        let segno = pos / u64::from(segment_size);
        WalFileName::Segment(SegmentPos::from_segno(timeline, segno, segment_size))
    }

    /// Relation blocks an incremental backup stored; `None` for a full backup (which stores
    /// files, not blocks).
    pub fn changed_blocks(&self) -> Option<u64> {
        self.parent.as_ref().map(|_| self.stats.changed_blocks)
    }

    /// WAL segments from the backup's start to its stop segment, inclusive: what a restore
    /// needs to reach consistency.
    pub fn wal_range(&self, segment_size: u32) -> Vec<WalFileName> {
        let (Some(first), Some(last)) = (self.start_wal.segment(), self.stop_wal.segment()) else { return Vec::new() };
        (first.segno(segment_size)..=last.segno(segment_size))
            .map(|n| WalFileName::Segment(SegmentPos::from_segno(self.timeline, n, segment_size)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_ids() {
        let t = chrono::DateTime::parse_from_rfc3339("2024-01-15T14:30:00Z").unwrap().with_timezone(&Utc);
        let id = BackupId::at(t);
        assert_eq!(id.as_str(), "backup_20240115_143000");
        assert_eq!(id.time(), t);
        assert_eq!("backup_20240115_143000".parse::<BackupId>().unwrap(), id);
        for bad in ["backup_2024", "backup_20241315_143000", "20240115_143000", "backup_20240115_143000x", "../x"] {
            assert!(bad.parse::<BackupId>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn wal_names_of_start_and_stop() {
        let seg = 16 << 20;
        assert_eq!(Manifest::wal_name(TimelineId(1), Lsn(0x0300_0028), seg, false).to_string(), "000000010000000000000003");
        // A stop exactly on a boundary belongs to the segment before it.
        assert_eq!(Manifest::wal_name(TimelineId(1), Lsn(0x0400_0000), seg, true).to_string(), "000000010000000000000003");
    }
}
