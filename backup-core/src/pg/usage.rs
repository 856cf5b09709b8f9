//! What a repository holds, by area, from one listing: what `wal-archiver info`,
//! `backup.stats()` and the metrics report as storage used, and the WAL archived per day.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;

use super::archive::ArchivedWal;
use super::PgRepo;
use crate::repo::RepoError;

/// Bytes stored, by area; the archived WAL files themselves.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RepoUsage {
    /// Everything the store holds.
    pub total_bytes: u64,
    /// Backups (`backup/`): manifests, bundles, file objects.
    pub backup_bytes: u64,
    /// WAL files (segments, history, backup labels) as stored.
    pub wal_bytes: u64,
    /// Block-reference summaries of the WAL (`wal-summary/`).
    pub summary_bytes: u64,
    #[serde(skip)]
    pub wal: Vec<ArchivedWal>,
}

impl RepoUsage {
    /// WAL files archived per day (UTC, by the store's write time) since `since`: files, bytes.
    pub fn wal_per_day(&self, since: DateTime<Utc>) -> BTreeMap<NaiveDate, (u64, u64)> {
        let mut days: BTreeMap<NaiveDate, (u64, u64)> = BTreeMap::new();
        for w in &self.wal {
            let Some(at) = w.modified.map(DateTime::<Utc>::from) else { continue };
            if at >= since {
                let day = days.entry(at.date_naive()).or_default();
                day.0 += 1;
                day.1 += w.stored_bytes;
            }
        }
        days
    }
}

/// One listing of the whole repository, summed by area.
pub fn usage(repo: &PgRepo) -> Result<RepoUsage, RepoError> {
    let objects = repo.objects();
    let mut u = RepoUsage::default();
    for meta in objects.storage().list(&objects.ctx(), "")? {
        let meta = meta?;
        u.total_bytes += meta.size;
        if meta.key.starts_with("backup/") {
            u.backup_bytes += meta.size;
        } else if meta.key.starts_with("wal-summary/") {
            u.summary_bytes += meta.size;
        } else if meta.key.starts_with("wal/") {
            if let Some(w) = ArchivedWal::from_meta(meta) {
                u.wal_bytes += w.stored_bytes;
                u.wal.push(w);
            }
        }
    }
    Ok(u)
}
