//! The backups a repository holds, read from their manifests: list, find the one for a
//! recovery target, verify, delete. The SQL catalog mirrors this; this is the truth.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::incremental::{dependants, intact_chains, Chain, ChainError};
use super::manifest::{BackupId, Manifest, MANIFEST_FORMAT};
use crate::codec;
use crate::error::report as report_chain;
use crate::pg::wal::Lsn;
use crate::pg::{PgRepo, PgRepoError};
use crate::repo::Repository;
use crate::storage::PutMode;

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

/// What [`Backups::inventory`] found.
pub struct Inventory {
    /// Restorable backups, oldest first.
    pub completed: Vec<Manifest>,
    /// Backups that left data but never wrote a manifest (failed or killed runs).
    pub incomplete: Vec<String>,
}

/// The backups a repository holds: `backup/<id>/manifest` and `backup/<id>/data/…`, plus the
/// restore points recorded beside them.
pub struct Backups<'r> {
    repo: &'r PgRepo,
}

impl<'r> Backups<'r> {
    pub(in crate::pg) fn new(repo: &'r PgRepo) -> Backups<'r> {
        Backups { repo }
    }

    fn objects(&self) -> &'r Repository {
        self.repo.objects()
    }

    fn unknown(&self, id: &BackupId) -> PgRepoError {
        PgRepoError::UnknownBackup { id: id.to_string(), location: self.repo.location() }
    }

    pub fn read_manifest(&self, id: &BackupId) -> Result<Manifest, PgRepoError> {
        let mut json = Vec::new();
        match self.objects().get_object(&id.manifest_key(), &mut json) {
            Ok(_) => {}
            Err(e) if e.is_not_found() => return Err(self.unknown(id)),
            Err(e) => return Err(e.into()),
        }
        let manifest: Manifest = serde_json::from_slice(&json)
            .map_err(|e| PgRepoError::codec(&id.manifest_key(), codec::CodecError::Corrupt(format!("manifest is not valid: {e}"))))?;
        if manifest.format > MANIFEST_FORMAT {
            return Err(PgRepoError::NewerManifest { id: id.to_string(), format: manifest.format, known: MANIFEST_FORMAT });
        }
        Ok(manifest)
    }

    /// Whether anything (a manifest, or data of a failed run) is stored under `id`: a new
    /// backup must take another id.
    pub fn id_taken(&self, id: &BackupId) -> Result<bool, PgRepoError> {
        let objects = self.objects();
        Ok(objects.storage().list(&objects.ctx(), &id.prefix())?.next().is_some())
    }

    /// Completed backups (those with a manifest), oldest first.
    pub fn list(&self) -> Result<Vec<Manifest>, PgRepoError> {
        Ok(self.inventory()?.completed)
    }

    /// Completed backups and the leftovers of failed ones, from one listing of `backup/` and
    /// one manifest check per backup: never a listing of their data objects.
    pub fn inventory(&self) -> Result<Inventory, PgRepoError> {
        let (complete, incomplete) = self.ids()?;
        let completed = complete.iter().map(|id| self.read_manifest(id)).collect::<Result<_, _>>()?;
        Ok(Inventory { completed, incomplete })
    }

    /// The ids of completed backups (oldest first), without reading their manifests.
    pub fn completed_ids(&self) -> Result<Vec<BackupId>, PgRepoError> {
        Ok(self.ids()?.0)
    }

    /// Completed backup ids (sorted) and the names of incomplete ones.
    fn ids(&self) -> Result<(Vec<BackupId>, Vec<String>), PgRepoError> {
        let storage = self.objects().storage();
        let ctx = self.objects().ctx();
        let (mut complete, mut incomplete) = (Vec::new(), Vec::new());
        for prefix in storage.list_with_delimiter(&ctx, "backup/")?.prefixes {
            let name = prefix.trim_start_matches("backup/").trim_end_matches('/');
            match name.parse::<BackupId>() {
                Ok(id) if storage.exists(&ctx, &id.manifest_key())? => complete.push(id),
                _ => incomplete.push(name.to_string()),
            }
        }
        complete.sort();
        Ok((complete, incomplete))
    }

    /// The backup to restore from to reach `target`: the newest one that is consistent
    /// before the target.
    pub fn find(&self, target: &RecoveryTarget) -> Result<Manifest, PgRepoError> {
        let all = self.list()?;
        // An incremental whose chain lost a member cannot be restored: never pick it.
        let intact = intact_chains(&all);
        let backups: Vec<Manifest> = all.iter().filter(|m| intact.contains(&m.id)).cloned().collect();
        let none = |why: String| PgRepoError::NoBackupForTarget(why);
        if backups.is_empty() {
            return Err(none(format!("repository {} holds no completed backup", self.repo.location())));
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
            RecoveryTarget::Name(name) => {
                // Recorded by backup.create_restore_point(), else made with plain
                // pg_create_restore_point(): then its record in the archived WAL says where.
                let lsn = match self.restore_point(name)? {
                    Some(lsn) => lsn,
                    None => match self.repo.wal().find_restore_point(name)? {
                        Some(point) => point.end,
                        None => {
                            return Err(none(format!(
                                "restore point {name:?} is neither recorded in repository {} nor in its archived WAL; \
                                 check the name, or choose the backup yourself with --backup-id (it must end before the point)",
                                self.repo.location()
                            )))
                        }
                    },
                };
                pick(&|m| m.stop_lsn <= lsn, format!("restore point {name} (LSN {lsn})"))
            }
        }
    }

    /// Record a named restore point's LSN so that `--target-name` can pick the right backup.
    pub fn record_restore_point(&self, name: &str, lsn: Lsn) -> Result<(), PgRepoError> {
        let key = restore_point_key(name)?;
        self.objects().put_object(&key, &mut lsn.to_string().as_bytes(), PutMode::Overwrite)?;
        Ok(())
    }

    pub fn restore_point(&self, name: &str) -> Result<Option<Lsn>, PgRepoError> {
        // A name no key can hold was never recorded.
        let Ok(key) = restore_point_key(name) else { return Ok(None) };
        let mut text = Vec::new();
        match self.objects().get_object(&key, &mut text) {
            Ok(_) => {}
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let text = String::from_utf8_lossy(&text);
        text.parse().map(Some).map_err(|_| PgRepoError::codec(&key, codec::CodecError::Corrupt(format!("restore point holds {text:?}, not an LSN"))))
    }

    /// `target` and the backups it builds on, read from their manifests, full backup first.
    pub fn chain(&self, target: Manifest) -> Result<Chain, PgRepoError> {
        let mut manifests = vec![target];
        while let Some(parent) = manifests.last().expect("not empty").parent.clone() {
            match self.read_manifest(&parent) {
                Ok(m) => manifests.push(m),
                Err(PgRepoError::UnknownBackup { .. }) => {
                    return Err(ChainError::MissingAncestor { id: manifests[0].id.clone(), missing: parent }.into());
                }
                Err(e) => return Err(e),
            }
        }
        manifests.reverse();
        Ok(Chain::new(manifests))
    }

    /// Re-read everything a restore of `id` would need: every file of it and of the backups it
    /// builds on (authentication, SHA-256, size), the objects against the manifests, that every
    /// delta has the file it applies to, and the WAL from start to stop segment.
    pub fn verify(&self, id: &BackupId) -> Result<VerifyReport, PgRepoError> {
        let manifest = self.read_manifest(id)?;
        let mut report = VerifyReport { backup: id.to_string(), files_checked: 0, objects_checked: 0, wal_checked: 0, problems: Vec::new() };
        let chain = match self.chain(manifest.clone()) {
            Ok(chain) => Some(chain),
            Err(e) => {
                report.problems.push(report_chain(&e));
                None
            }
        };
        let members: Vec<&Manifest> = match &chain {
            Some(c) => c.manifests().iter().rev().collect(),
            None => vec![&manifest],
        };
        for m in members {
            // Problems in an ancestor name it: that is the backup to look at.
            let prefix = if m.id == *id { String::new() } else { format!("ancestor {}: ", m.id) };
            for p in self.verify_objects(m, &mut report)? {
                report.problems.push(format!("{prefix}{p}"));
            }
        }
        if let Some(chain) = &chain {
            for file in manifest.files.iter().filter(|f| f.delta.is_some()) {
                if let Err(e) = chain.layers(file) {
                    report.problems.push(report_chain(&e));
                }
            }
        }
        for name in manifest.wal_range(self.repo.cluster().wal_segment_size) {
            report.wal_checked += 1;
            match self.objects().get_object(&name.object_key(), &mut std::io::sink()) {
                Ok(_) => {}
                Err(e) if e.is_not_found() => report.problems.push(format!("WAL {name}: not in the archive; the backup cannot be made consistent")),
                Err(e) => report.problems.push(format!("WAL {name}: {}", report_chain(&e))),
            }
        }
        Ok(report)
    }

    /// Check one backup's own objects and files against its manifest; returns the problems.
    fn verify_objects(&self, manifest: &Manifest, report: &mut VerifyReport) -> Result<Vec<String>, PgRepoError> {
        let objects = self.objects();
        let id = &manifest.id;
        let mut problems = Vec::new();
        let stored: std::collections::BTreeMap<String, u64> =
            objects.storage().list_all(&objects.ctx(), &id.prefix())?.into_iter().map(|m| (m.key, m.size)).collect();
        let referenced: BTreeSet<&str> = manifest.files.iter().map(|f| f.object.as_str()).collect();
        for object in &referenced {
            match stored.get(*object) {
                None => problems.push(format!("object {object}: missing (listed in the manifest)")),
                Some(size) => {
                    report.objects_checked += 1;
                    let end = manifest.files.iter().filter(|f| f.object == *object).map(|f| f.offset + f.stored_size).max().unwrap_or(0);
                    if end != *size {
                        problems.push(format!("object {object}: {size} bytes, the manifest accounts for {end}"));
                    }
                }
            }
        }
        for file in &manifest.files {
            if !stored.contains_key(&file.object) {
                continue;
            }
            report.files_checked += 1;
            if let Err(e) = objects.check_file(file) {
                problems.push(format!("object {} (file {}): {}", file.object, file.path, report_chain(&e)));
            }
        }
        Ok(problems)
    }

    /// Remove a backup, and with `cascade` the incrementals built on it (newest first); without
    /// it, a backup others depend on is refused, naming them. Returns the ids deleted.
    pub fn delete(&self, id: &BackupId, cascade: bool) -> Result<Vec<BackupId>, PgRepoError> {
        let dependants = dependants(&self.list()?, id);
        if !dependants.is_empty() && !cascade {
            let names: Vec<String> = dependants.iter().map(ToString::to_string).collect();
            return Err(PgRepoError::HasDependants { id: id.to_string(), dependants: names.join(", ") });
        }
        for d in &dependants {
            self.delete_one(d)?;
        }
        self.delete_one(id)?;
        let mut deleted = dependants;
        deleted.push(id.clone());
        Ok(deleted)
    }

    /// Remove one backup: the manifest first, so it stops being restorable before any data goes
    /// (interrupted, it leaves a directory without a manifest: an orphan retention collects).
    /// The caller makes sure no kept backup builds on it. Returns the bytes its objects held.
    pub(crate) fn delete_one(&self, id: &BackupId) -> Result<u64, PgRepoError> {
        let storage = self.objects().storage();
        let ctx = self.objects().ctx();
        let objects = storage.list_all(&ctx, &id.prefix())?;
        // Uploads a killed worker left half-written (callers never delete a running backup).
        let aborted = storage.abort_stale_uploads(&ctx, &id.prefix(), std::time::Duration::ZERO)?;
        if objects.is_empty() && aborted == 0 {
            return Err(self.unknown(id));
        }
        storage.delete(&ctx, &id.manifest_key())?;
        for o in &objects {
            storage.delete(&ctx, &o.key)?;
        }
        Ok(objects.iter().map(|o| o.size).sum())
    }

    /// The manifest goes last and only once: it is what makes the backup exist.
    pub fn write_manifest(&self, manifest: &Manifest) -> Result<(), PgRepoError> {
        let json = serde_json::to_vec(manifest).expect("serializable");
        let key = manifest.id.manifest_key();
        match self.objects().put_object(&key, &mut &json[..], PutMode::IfAbsent)? {
            Some(_) => Ok(()),
            None => Err(PgRepoError::BackupExists(manifest.id.to_string())),
        }
    }
}

fn restore_point_key(name: &str) -> Result<String, PgRepoError> {
    // Names are free text; the key uses their hex so any name is a valid key.
    if name.is_empty() || name.len() > 64 {
        return Err(PgRepoError::NoBackupForTarget(format!("restore point name {name:?} must be 1-64 bytes")));
    }
    Ok(format!("restore_point/{}", hex::encode(name)))
}
