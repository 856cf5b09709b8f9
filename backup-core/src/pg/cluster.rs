//! What a data directory says about the cluster that owns it, read from its files, so that
//! `init` and `check` work with or without a running server.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::wal::{LongPageHeader, SystemId, WalFileName, LONG_PAGE_HEADER_LEN};

/// `pg_control_version` of PostgreSQL 15 (`PG_CONTROL_VERSION` in `catalog/pg_control.h`).
const PG15_CONTROL_VERSION: u32 = 1300;

/// Recorded in `repo.json` under these names: a repository belongs to one cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterIdentity {
    #[serde(rename = "system_identifier")]
    pub system_id: SystemId,
    pub pg_version: u32,
    pub wal_segment_size: u32,
}

impl ClusterIdentity {
    pub fn from_pgdata(pgdata: &Path) -> Result<ClusterIdentity, ClusterError> {
        let read = |p: PathBuf| fs::read(&p).map_err(|e| ClusterError::Read { path: p.display().to_string(), cause: e });
        let version_text = read(pgdata.join("PG_VERSION"))?;
        let pg_version: u32 = String::from_utf8_lossy(&version_text)
            .trim()
            .parse()
            .map_err(|_| ClusterError::NotADataDirectory(pgdata.display().to_string()))?;
        if pg_version != 15 {
            return Err(ClusterError::Unsupported(pg_version));
        }
        // ControlFileData begins with system_identifier (u64) and pg_control_version (u32),
        // in the server's byte order; those offsets are stable across versions.
        let control = read(pgdata.join("global/pg_control"))?;
        if control.len() < 16 {
            return Err(ClusterError::NotADataDirectory(pgdata.display().to_string()));
        }
        let system_id = SystemId(u64::from_ne_bytes(control[0..8].try_into().unwrap()));
        let control_version = u32::from_ne_bytes(control[8..12].try_into().unwrap());
        if control_version != PG15_CONTROL_VERSION {
            return Err(ClusterError::BadControlFile { path: pgdata.display().to_string(), version: control_version });
        }
        let wal_segment_size = segment_size_from_pg_wal(pgdata, system_id)?;
        Ok(ClusterIdentity { system_id, pg_version, wal_segment_size })
    }
}

/// The segment size is in pg_control too, but at a version-dependent offset; every segment's
/// long page header states it plainly, along with the system identifier we can cross-check.
fn segment_size_from_pg_wal(pgdata: &Path, system_id: SystemId) -> Result<u32, ClusterError> {
    let dir = pgdata.join("pg_wal");
    let entries = fs::read_dir(&dir).map_err(|e| ClusterError::Read { path: dir.display().to_string(), cause: e })?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !matches!(WalFileName::parse(&name), Ok(WalFileName::Segment(_))) {
            continue;
        }
        let mut head = [0u8; LONG_PAGE_HEADER_LEN];
        let ok = fs::File::open(entry.path()).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head)).is_ok();
        if let (true, Ok(h)) = (ok, LongPageHeader::parse(&head)) {
            if h.system_id == system_id && h.segment_size.is_power_of_two() {
                return Ok(h.segment_size);
            }
        }
    }
    Err(ClusterError::NoWal(dir.display().to_string()))
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot read {path}")]
    Read { path: String, #[source] cause: std::io::Error },
    #[error("{0} is not a PostgreSQL data directory")]
    NotADataDirectory(String),
    #[error("PostgreSQL {0} is not supported; this version supports PostgreSQL 15")]
    Unsupported(u32),
    #[error("{path}/global/pg_control has control version {version}, not PostgreSQL 15's")]
    BadControlFile { path: String, version: u32 },
    #[error("found no readable WAL segment of this cluster in {0}")]
    NoWal(String),
}
