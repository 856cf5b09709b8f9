//! The WAL archive: what `archive_command` and `restore_command` do, per PostgreSQL's contracts.
//!
//! Push never overwrites: the same name with the same content is success (the server re-sends
//! a segment after a crash between our success and its bookkeeping), the same name with other
//! content is a loud failure. Fetch distinguishes "not in the archive" (normal; recovery asks for
//! files past the end) from real failures, which its caller must turn into an aborted recovery.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read};
use std::path::Path;

use serde::Serialize;

use super::wal::{xlog_page_magic, LongPageHeader, Lsn, SegmentPos, SystemId, TimelineId, WalFileName, LONG_PAGE_HEADER_LEN};
use super::walsummary::{summarize_segment, RestorePoint, SegmentSummary, SummaryError};
use super::{PgRepo, PgRepoError};
use crate::codec::EncodeParams;
use crate::repo::RepoError;
use crate::storage::{ObjectMeta, PutMode};

#[derive(Debug)]
pub enum PushOutcome {
    Archived { plaintext_size: u64, stored_size: u64 },
    /// Already in the archive with identical content.
    AlreadyArchived,
}

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("{path}: file name is not a WAL file name; archive_command must pass %p")]
    NotWal { path: String },
    #[error("cannot read {path}")]
    Read { path: String, #[source] cause: std::io::Error },
    #[error("WAL file {name} belongs to database system {found}, but repository {location} is for system identifier {expected}: this server must archive into its own repository (check archive_command and the configuration)")]
    ForeignSystem { name: String, found: SystemId, expected: SystemId, location: String },
    #[error("WAL file {name}: {reason}")]
    BadSegment { name: String, reason: String },
    #[error("WAL file {name} is already archived with different content (archived sha256 {archived}, this file {local}); refusing to overwrite. Is another server archiving into {location}? Investigate before touching the archive")]
    Conflict { name: String, archived: String, local: String, location: String },
    /// With several repositories: those that could not take the file (and had to).
    #[error("{}", failures.iter().map(|f| format!("repository {}: {}", f.repo, f.error)).collect::<Vec<_>>().join("; "))]
    Repositories { failures: Vec<RepoFailure> },
    #[error(transparent)]
    Repo(#[from] PgRepoError),
}

/// One repository's failure, already reported with its causes.
#[derive(Debug, Clone)]
pub struct RepoFailure {
    pub repo: String,
    pub error: String,
}

impl From<RepoError> for PushError {
    fn from(e: RepoError) -> Self {
        PushError::Repo(e.into())
    }
}

/// The WAL archive of a repository: `wal/<timeline+log>/<segment>`, `wal/history/…`.
pub struct WalArchive<'r> {
    repo: &'r PgRepo,
}

impl<'r> WalArchive<'r> {
    pub(super) fn new(repo: &'r PgRepo) -> WalArchive<'r> {
        WalArchive { repo }
    }

    /// `archive_command`: store the WAL file at `path` durably, once. The file is read and
    /// encoded in memory (a segment is 16 MB) and stored in one conditional write: against an
    /// object store one request, where streaming it would be a multipart upload.
    pub fn push(&self, path: &Path) -> Result<PushOutcome, PushError> {
        self.push_prepared(&Prepared::encode(path, self.repo.objects().encode_params())?)
    }

    /// Store a [`Prepared`] WAL file here, once: the same rules as [`WalArchive::push`] (an
    /// identical copy already there is success, a different one a conflict).
    pub fn push_prepared(&self, p: &Prepared) -> Result<PushOutcome, PushError> {
        p.check(self.repo)?;
        let key = p.name.object_key();
        let objects = self.repo.objects();
        let (storage, ctx) = (objects.storage(), objects.ctx());
        // No look first: the conditional write says whether it was there (an archived file
        // is pushed again only after a crash, so the upload that finds it is rare).
        let outcome = match storage.put(&ctx, &key, &p.encoded, PutMode::IfAbsent).map_err(RepoError::from)? {
            crate::storage::PutOutcome::Created => PushOutcome::Archived { plaintext_size: p.trailer.plaintext_size, stored_size: p.encoded.len() as u64 },
            crate::storage::PutOutcome::AlreadyExists => PushOutcome::AlreadyArchived,
        };
        if let PushOutcome::AlreadyArchived = outcome {
            let archived = objects.object_trailer(&key)?;
            if archived.sha256 != p.trailer.sha256 || archived.plaintext_size != p.trailer.plaintext_size {
                return Err(PushError::Conflict {
                    name: p.name.to_string(),
                    archived: archived.sha256.to_string(),
                    local: p.trailer.sha256.to_string(),
                    location: self.repo.location(),
                });
            }
        }
        if let Some(summary) = &p.summary {
            let skey = summary_key(&p.name);
            let missing = matches!(outcome, PushOutcome::Archived { .. }) || !storage.exists(&ctx, &skey).unwrap_or(true);
            if missing {
                if let Err(e) = storage.put(&ctx, &skey, summary, PutMode::Overwrite) {
                    eprintln!(
                        "wal-archiver: WARNING: {} archived in {}, but its block summary could not be stored ({}); the next incremental backup reads the files it covers",
                        p.name,
                        self.repo.location(),
                        crate::error::report(&e)
                    );
                }
            }
        }
        Ok(outcome)
    }

    fn summarize(&self, pos: SegmentPos, bytes: &[u8], stop_at: Option<Lsn>) -> Result<SegmentSummary, SummaryError> {
        summarize_at(pos, bytes, self.repo.cluster().wal_segment_size, stop_at)
    }

    /// The block summary stored beside archived segment `pos`, if there is one (and it reads).
    pub fn stored_summary(&self, pos: SegmentPos) -> Result<Option<SegmentSummary>, PgRepoError> {
        let mut bytes = Vec::new();
        match self.repo.objects().get_object(&summary_key(&WalFileName::Segment(pos)), &mut bytes) {
            // An unreadable summary is as good as none: never trusted.
            Ok(_) => Ok(SegmentSummary::from_bytes(&bytes).ok()),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The block summary of archived segment `pos`: the stored one, else made now from the
    /// archived segment (archived before summaries existed, or its summary was lost).
    /// `Ok(None)` when the segment is not archived.
    pub fn summary(&self, pos: SegmentPos) -> Result<Option<SegmentSummary>, PgRepoError> {
        if let Some(s) = self.stored_summary(pos)? {
            return Ok(Some(s));
        }
        let name = WalFileName::Segment(pos);
        let mut bytes = Vec::new();
        match self.repo.objects().get_object(&name.object_key(), &mut bytes) {
            Ok(_) => {}
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let summary = self.summarize(pos, &bytes, None).map_err(|e| PgRepoError::codec(&name.object_key(), crate::codec::CodecError::Corrupt(e.to_string())))?;
        Ok(Some(summary))
    }

    /// Summary of segment `pos` read from the file at `path` (being pushed, or still in the
    /// server's `pg_wal`), of the records starting before `stop_at` if given. `Ok(None)`: no
    /// such file.
    pub fn summarize_file(&self, pos: SegmentPos, path: &Path, stop_at: Option<Lsn>) -> Result<Option<SegmentSummary>, String> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("reading {}: {e}", path.display())),
        };
        self.summarize(pos, &bytes, stop_at).map(Some).map_err(|e| e.to_string())
    }

    /// The newest restore point named `name` in the archived WAL (`pg_create_restore_point`
    /// writes a record; it is the only trace of a point not made through the extension).
    /// Searches from the newest segment back.
    pub fn find_restore_point(&self, name: &str) -> Result<Option<RestorePoint>, PgRepoError> {
        let mut segments: Vec<SegmentPos> = self.list()?.into_iter().filter_map(|w| w.name.segment()).collect();
        let seg = self.repo.cluster().wal_segment_size;
        segments.sort_by_key(|p| (p.segno(seg), p.timeline));
        for pos in segments.into_iter().rev() {
            if let Some(summary) = self.summary(pos)? {
                if let Some(point) = summary.restore_points.iter().rev().find(|p| p.name == name) {
                    return Ok(Some(point.clone()));
                }
            }
        }
        Ok(None)
    }

    /// `restore_command`: write WAL file `name` to `dest`, atomically: the bytes go to a
    /// temporary file beside `dest`, which is renamed onto it only once authenticated and
    /// digest-checked. `Err(FetchError::NotFound)` when the archive does not have it. Returns
    /// the object's trailer: the plaintext's size and SHA-256, now checked.
    pub fn fetch(&self, name: &WalFileName, dest: &Path) -> Result<crate::codec::Trailer, FetchError> {
        let key = name.object_key();
        let objects = self.repo.objects();
        let reader = match objects.storage().get(&objects.ctx(), &key) {
            Ok(r) => r,
            Err(e) if e.is_not_found() => return Err(FetchError::NotFound(name.to_string())),
            Err(e) => return Err(FetchError::Failed(e.into())),
        };
        let dest_name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "wal".into());
        let temp = dest.with_file_name(format!(".{dest_name}.wal-archiver.tmp"));
        let result = (|| {
            let file = File::create(&temp).map_err(|e| FetchError::Write { path: temp.display().to_string(), cause: e })?;
            let mut out = BufWriter::with_capacity(1 << 20, file);
            let mut input = BufReader::with_capacity(1 << 20, reader);
            let summary = crate::codec::decode(&mut input, &mut out, &key, objects.keys())
                .map_err(|e| FetchError::Failed(PgRepoError::codec(&key, e)))?;
            out.into_inner().map_err(|e| FetchError::Write { path: temp.display().to_string(), cause: e.into_error() })?;
            std::fs::rename(&temp, dest).map_err(|e| FetchError::Write { path: dest.display().to_string(), cause: e })?;
            Ok(summary.trailer)
        })();
        if result.is_err() {
            // Best effort: the temporary name is ours alone and the next fetch truncates it.
            let _ = std::fs::remove_file(&temp);
        }
        result
    }

    /// WAL files owed to best-effort repositories (see [`owed_key`]), counted by repository.
    /// Only the primary repository holds such notes.
    pub fn owed(&self) -> Result<std::collections::BTreeMap<String, u64>, RepoError> {
        let objects = self.repo.objects();
        let mut owed = std::collections::BTreeMap::new();
        for note in objects.storage().list(&objects.ctx(), OWED_PREFIX)? {
            if let Some((repo, _)) = note?.key.trim_start_matches(OWED_PREFIX).split_once('/') {
                *owed.entry(repo.to_string()).or_insert(0) += 1;
            }
        }
        Ok(owed)
    }

    /// Every file in the WAL archive, in name order.
    pub fn list(&self) -> Result<Vec<ArchivedWal>, RepoError> {
        let objects = self.repo.objects();
        let mut out = Vec::new();
        for meta in objects.storage().list(&objects.ctx(), "wal/")? {
            out.extend(ArchivedWal::from_meta(meta?));
        }
        Ok(out)
    }

    /// Decode an archived file to nowhere: authentication and digest only.
    pub fn verify(&self, wal: &ArchivedWal) -> Result<(), RepoError> {
        self.repo.objects().get_object(&wal.object, &mut std::io::sink()).map(|_| ())
    }
}

/// A WAL file read and encoded once, ready for [`WalArchive::push_prepared`] in any repository
/// of its cluster (they share the key ring and codec settings, so one encoding serves all).
pub struct Prepared {
    pub name: WalFileName,
    /// The stored form: the same bytes in every repository.
    pub encoded: Vec<u8>,
    pub trailer: crate::codec::Trailer,
    /// The segment's encoded block summary, when it could be made.
    pub summary: Option<Vec<u8>>,
    /// The first page's header, for a file that carries WAL pages; checked against each
    /// repository's cluster before the file is stored there.
    header: Option<LongPageHeader>,
}

impl Prepared {
    /// Read the WAL file at `path` and encode it with `params`, its block summary made on a
    /// second thread meanwhile (both CPU only; a segment's records decode in about the time it
    /// compresses). Holds the encoded file in memory (a segment is 16 MB by default;
    /// compressed, usually far less). Needs no open repository: against an object store
    /// opening one is a round trip, which [`super::repos::RepoSet::push`] makes while this
    /// runs. What needs the repository (whose cluster the file is) is [`Prepared::check`],
    /// which [`WalArchive::push_prepared`] calls before it stores anything.
    pub fn encode(path: &Path, params: EncodeParams<'_>) -> Result<Prepared, PushError> {
        let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let name = WalFileName::parse(&file_name).map_err(|_| PushError::NotWal { path: path.display().to_string() })?;
        let read_err = |cause| PushError::Read { path: path.display().to_string(), cause };
        let mut plain = Vec::new();
        File::open(path).and_then(|mut f| f.read_to_end(&mut plain)).map_err(read_err)?;
        let header = if name.carries_wal_pages() { Some(segment_header(&name, &plain)?) } else { None };
        let key = name.object_key();
        let encode = |key: &str, mut bytes: &[u8]| {
            let mut out = Vec::with_capacity(bytes.len() / 2);
            crate::codec::encode(&mut bytes, &mut out, key, params).map(|s| (out, s)).map_err(|e| PgRepoError::codec(key, e))
        };
        let summarize = |_: usize| match (&name, &header) {
            (WalFileName::Segment(pos), Some(h)) => Some(summarize_at(*pos, &plain, h.segment_size, None)),
            _ => None,
        };
        let (encoded, summary) = std::thread::scope(|scope| {
            let summarizer = crate::threads::spawn_blocking_signals(scope, 1, &summarize).pop().expect("one thread");
            let encoded = encode(&key, &plain);
            (encoded, summarizer.join().expect("summarizer panicked"))
        });
        let (encoded, summary_of) = encoded?;
        let summary = match summary {
            Some(Ok(s)) => Some(encode(&summary_key(&name), &s.to_bytes())?.0),
            Some(Err(e)) => {
                eprintln!("wal-archiver: WARNING: no block summary for {name} ({e}); the next incremental backup reads the files it covers");
                None
            }
            None => None,
        };
        Ok(Prepared { name, encoded, trailer: summary_of.trailer, summary, header })
    }

    /// The file belongs in `repo`: WAL of its cluster's system, PostgreSQL version and segment
    /// size (a file of another cluster must never mix into this one's archive).
    pub fn check(&self, repo: &PgRepo) -> Result<(), PushError> {
        let Some(header) = &self.header else { return Ok(()) };
        let name = &self.name;
        let bad = |reason: String| PushError::BadSegment { name: name.to_string(), reason };
        let cluster = repo.cluster();
        if header.system_id != cluster.system_id {
            return Err(PushError::ForeignSystem { name: name.to_string(), found: header.system_id, expected: cluster.system_id, location: repo.location() });
        }
        if Some(header.magic) != xlog_page_magic(cluster.pg_version) {
            return Err(bad(format!("page magic {:#06X} is not PostgreSQL {}'s WAL", header.magic, cluster.pg_version)));
        }
        if header.segment_size != cluster.wal_segment_size {
            return Err(bad(format!("segment size {} differs from the repository's {}", header.segment_size, cluster.wal_segment_size)));
        }
        Ok(())
    }
}

/// The block summary of segment `pos` (its bytes, segments of `segment_size`), of the records
/// starting before `stop_at` if given.
fn summarize_at(pos: SegmentPos, bytes: &[u8], segment_size: u32, stop_at: Option<Lsn>) -> Result<SegmentSummary, SummaryError> {
    summarize_segment(bytes, pos.timeline, Lsn(pos.segno(segment_size) * u64::from(segment_size)), segment_size, stop_at)
}

/// The long page header a WAL segment (or partial segment) starts with; the file's length must
/// be the segment size that header gives.
fn segment_header(name: &WalFileName, plain: &[u8]) -> Result<LongPageHeader, PushError> {
    let bad = |reason: String| PushError::BadSegment { name: name.to_string(), reason };
    if plain.len() < LONG_PAGE_HEADER_LEN {
        return Err(bad(format!("cannot read its first page: the file is {} bytes", plain.len())));
    }
    let header = LongPageHeader::parse(&plain[..LONG_PAGE_HEADER_LEN]).map_err(|e| bad(e.to_string()))?;
    if plain.len() as u64 != u64::from(header.segment_size) {
        return Err(bad(format!("file is {} bytes, a segment is {}", plain.len(), header.segment_size)));
    }
    Ok(header)
}

/// `owed/<repository>/<WAL file>`, in the primary repository: WAL file archived while
/// best-effort repository `repo` could not take it. Catch-up copies the file over and removes
/// the note; retention keeps the file in the primary while the note exists.
pub fn owed_key(repo: &str, name: &WalFileName) -> String {
    format!("{OWED_PREFIX}{repo}/{name}")
}

pub const OWED_PREFIX: &str = "owed/";

/// `wal-summary/<timeline+log>/<segment>`: beside the segment's `wal/…` key, outside `wal/` so
/// that listings of the archive see segments only.
pub fn summary_key(name: &WalFileName) -> String {
    format!("wal-summary/{}", name.object_key().trim_start_matches("wal/"))
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("WAL file {0} is not in the archive")]
    NotFound(String),
    #[error("cannot write {path}")]
    Write { path: String, #[source] cause: std::io::Error },
    #[error(transparent)]
    Failed(#[from] PgRepoError),
}

impl From<RepoError> for FetchError {
    fn from(e: RepoError) -> Self {
        FetchError::Failed(e.into())
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ArchivedWal {
    #[serde(serialize_with = "serialize_display")]
    pub name: WalFileName,
    pub kind: &'static str,
    pub timeline: u32,
    pub stored_bytes: u64,
    pub object: String,
    /// When the store last wrote it (when it was archived), where the store says.
    #[serde(skip)]
    pub modified: Option<std::time::SystemTime>,
}

fn serialize_display<S: serde::Serializer>(v: &WalFileName, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

impl ArchivedWal {
    pub fn from_meta(meta: ObjectMeta) -> Option<ArchivedWal> {
        let file = meta.key.rsplit('/').next()?;
        let name = WalFileName::parse(file).ok()?;
        (name.object_key() == meta.key).then(|| ArchivedWal {
            kind: name.kind(),
            timeline: name.timeline().0,
            name,
            stored_bytes: meta.size,
            object: meta.key,
            modified: meta.modified,
        })
    }
}

/// The segments of one timeline: first, last, and what is missing between them.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct TimelineSummary {
    pub timeline: u32,
    pub first: String,
    pub last: String,
    pub segments: u64,
    /// Missing segments recovery would need: a restore to a moment past them from any older
    /// backup stops there.
    pub gaps: Vec<String>,
    /// Missing segments retention removed on purpose: the range ends where a backup starts,
    /// and no backup needs any of it to become consistent (moments inside it are no longer
    /// restorable, by policy).
    pub expired: Vec<String>,
}

/// The WAL range a backup needs to become consistent, on its timeline (segment numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackupWalRange {
    pub timeline: u32,
    pub start: u64,
    pub stop: u64,
}

impl BackupWalRange {
    pub fn of(m: &super::backup::Manifest, segment_size: u32) -> Option<BackupWalRange> {
        let (start, stop) = (m.start_wal.segment()?, m.stop_wal.segment()?);
        Some(BackupWalRange { timeline: start.timeline.0, start: start.segno(segment_size), stop: stop.segno(segment_size) })
    }
}

/// A gap means recovery through this range would stop early: worth shouting about in `info`,
/// unless retention made it (see [`TimelineSummary::expired`]); `backups` tells the two apart.
pub fn summarize_timelines(files: &[ArchivedWal], segment_size: u32, backups: &[BackupWalRange]) -> Vec<TimelineSummary> {
    let mut by_tli: std::collections::BTreeMap<u32, Vec<u64>> = Default::default();
    for f in files {
        if let Some(pos) = f.name.segment() {
            by_tli.entry(pos.timeline.0).or_default().push(pos.segno(segment_size));
        }
    }
    let name = |tli: u32, segno: u64| WalFileName::Segment(SegmentPos::from_segno(TimelineId(tli), segno, segment_size)).to_string();
    by_tli
        .into_iter()
        .map(|(tli, mut segnos)| {
            segnos.sort_unstable();
            let (mut gaps, mut expired) = (Vec::new(), Vec::new());
            for pair in segnos.windows(2) {
                let (first, last) = (pair[0] + 1, pair[1] - 1);
                if first > last {
                    continue;
                }
                let on_tli = backups.iter().filter(|b| b.timeline == tli);
                let needed = on_tli.clone().any(|b| b.start <= last && b.stop >= first);
                let backup_follows = on_tli.clone().any(|b| b.start == last + 1);
                let list = if backup_follows && !needed { &mut expired } else { &mut gaps };
                for missing in first..=last {
                    if list.len() < 1000 {
                        list.push(name(tli, missing));
                    }
                }
            }
            TimelineSummary {
                timeline: tli,
                first: name(tli, segnos[0]),
                last: name(tli, *segnos.last().unwrap()),
                segments: segnos.len() as u64,
                gaps,
                expired,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Compression;
    use crate::pg::cluster::ClusterIdentity;
    use crate::repo::{Encryption, Repository};
    use crate::storage::unreliable::{Fault, Op, UnreliableStorage};
    use crate::storage::{LocalStorage, StorageErrorKind};
    use std::sync::Arc;

    const SEG: u32 = 16 << 20;

    /// A WAL segment of system 42 with a long page header, as PostgreSQL writes one.
    fn segment(dir: &Path, name: &str, fill: u8) -> std::path::PathBuf {
        let mut bytes = vec![fill; SEG as usize];
        bytes[0..2].copy_from_slice(&0xD110u16.to_ne_bytes());
        bytes[2..4].copy_from_slice(&0x0002u16.to_ne_bytes());
        bytes[4..8].copy_from_slice(&1u32.to_ne_bytes());
        bytes[24..32].copy_from_slice(&42u64.to_ne_bytes());
        bytes[32..36].copy_from_slice(&SEG.to_ne_bytes());
        bytes[36..40].copy_from_slice(&8192u32.to_ne_bytes());
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// A repository over a store whose faults the test controls.
    fn unreliable_repo(dir: &Path) -> (PgRepo, Arc<UnreliableStorage>) {
        let store = Arc::new(UnreliableStorage::new(Box::new(LocalStorage::new(dir.join("repo")))));
        let cluster = ClusterIdentity { system_id: SystemId(42), pg_version: 15, wal_segment_size: SEG };
        PgRepo::init(store.as_ref(), &cluster, Encryption::None).unwrap();
        let objects = Repository::open_with(Box::new(store.clone()), None, Compression::Zstd { level: 1 }).unwrap();
        (PgRepo::from_repository(objects).unwrap(), store)
    }

    #[test]
    fn a_failed_upload_leaves_nothing_and_the_retry_archives() {
        let dir = tempfile::tempdir().unwrap();
        let (repo, store) = unreliable_repo(dir.path());
        let path = segment(dir.path(), "000000010000000000000003", 7);
        store.inject(Fault::times(Op::Commit, "wal/", StorageErrorKind::Transient, 1));
        let err = repo.wal().push(&path).unwrap_err();
        assert!(matches!(&err, PushError::Repo(e) if !e.is_not_found()), "{err:?}");
        assert!(repo.wal().list().unwrap().is_empty(), "a failed push left an object");
        assert!(matches!(repo.wal().push(&path).unwrap(), PushOutcome::Archived { .. }));
        assert!(matches!(repo.wal().push(&path).unwrap(), PushOutcome::AlreadyArchived));
        let elsewhere = dir.path().join("other-server");
        std::fs::create_dir(&elsewhere).unwrap();
        let conflicting = segment(&elsewhere, "000000010000000000000003", 8);
        assert!(matches!(repo.wal().push(&conflicting), Err(PushError::Conflict { .. })), "different content under an archived name");
    }

    /// A file is encoded before any repository is open (RepoSet::push opens them meanwhile),
    /// so what only a repository can tell is checked when it is stored: another system's
    /// segment, or one of another segment size, never gets in. A truncated file is refused
    /// before it is encoded.
    #[test]
    fn prepared_without_a_repository_is_checked_before_it_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let (repo, _store) = unreliable_repo(dir.path());
        let params = crate::codec::EncodeParams { compression: Compression::Zstd { level: 1 }, key: None, threads: 2 };
        let path = segment(dir.path(), "000000010000000000000006", 3);
        let mut foreign = std::fs::read(&path).unwrap();
        foreign[24..32].copy_from_slice(&43u64.to_ne_bytes());
        let other = dir.path().join("other");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join("000000010000000000000006"), &foreign).unwrap();
        let prepared = Prepared::encode(&other.join("000000010000000000000006"), params).unwrap();
        assert!(matches!(repo.wal().push_prepared(&prepared), Err(PushError::ForeignSystem { .. })));
        assert!(repo.wal().list().unwrap().is_empty(), "a foreign segment was stored");

        let half = dir.path().join("half");
        std::fs::create_dir(&half).unwrap();
        std::fs::write(half.join("000000010000000000000006"), &foreign[..SEG as usize / 2]).unwrap();
        let err = Prepared::encode(&half.join("000000010000000000000006"), params).err().expect("a truncated segment is refused");
        assert!(matches!(&err, PushError::BadSegment { reason, .. } if reason.contains("bytes")), "{err:?}");

        let prepared = Prepared::encode(&path, params).unwrap();
        assert!(matches!(repo.wal().push_prepared(&prepared).unwrap(), PushOutcome::Archived { .. }));
    }

    /// restore_command's contract: "not archived" only when the archive says so; a store that
    /// fails is a failure (retried, then recovery aborts), never a missing file.
    #[test]
    fn fetch_tells_not_archived_from_a_failing_store() {
        let dir = tempfile::tempdir().unwrap();
        let (repo, store) = unreliable_repo(dir.path());
        let path = segment(dir.path(), "000000010000000000000004", 9);
        repo.wal().push(&path).unwrap();
        let dest = dir.path().join("restored");
        let missing = WalFileName::parse("000000010000000000000005").unwrap();
        assert!(matches!(repo.wal().fetch(&missing, &dest), Err(FetchError::NotFound(_))));
        let name = WalFileName::parse("000000010000000000000004").unwrap();
        for kind in [StorageErrorKind::Transient, StorageErrorKind::Permission, StorageErrorKind::Timeout] {
            store.inject(Fault::times(Op::Read, "wal/", kind, 1));
            match repo.wal().fetch(&name, &dest) {
                Err(FetchError::Failed(e)) => assert!(!e.is_not_found(), "{kind:?}: {e:?}"),
                other => panic!("{kind:?}: expected a failure, got {other:?}"),
            }
            assert!(!dest.exists(), "{kind:?}: a failed fetch left a file at %p");
        }
        repo.wal().fetch(&name, &dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), std::fs::read(&path).unwrap());
    }

    fn wal(name: &str) -> ArchivedWal {
        let name = WalFileName::parse(name).unwrap();
        ArchivedWal { kind: name.kind(), timeline: name.timeline().0, object: name.object_key(), name, stored_bytes: 1, modified: None }
    }

    #[test]
    fn gaps_across_an_xlogid_boundary() {
        let files = [
            wal("0000000100000000000000FE"),
            wal("000000010000000100000001"),
            wal("00000002.history"),
            wal("000000020000000100000005"),
        ];
        let s = summarize_timelines(&files, 16 << 20, &[]);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].gaps, ["0000000100000000000000FF", "000000010000000100000000"]);
        assert_eq!(s[0].segments, 2);
        assert!(s[1].gaps.is_empty());
    }

    /// Retention leaves islands: a monthly backup's own range, then the window from the anchor
    /// on. The hole before the anchor is expired, not missing; a hole a backup needs, or one
    /// no backup follows, is still a gap.
    #[test]
    fn gaps_left_by_retention_are_told_apart() {
        let files: Vec<ArchivedWal> = [2u64, 3, 10, 11, 12, 20]
            .iter()
            .map(|n| wal(&WalFileName::Segment(SegmentPos::from_segno(TimelineId(1), *n, 16 << 20)).to_string()))
            .collect();
        let monthly = BackupWalRange { timeline: 1, start: 2, stop: 3 };
        let anchor = BackupWalRange { timeline: 1, start: 10, stop: 11 };
        let s = summarize_timelines(&files, 16 << 20, &[monthly, anchor]);
        assert_eq!(s[0].expired.len(), 6, "4..=9 end where the anchor starts: {:?}", s[0]);
        assert_eq!(s[0].gaps.len(), 7, "13..=19: no backup starts at 20: {:?}", s[0]);
        // A backup needing the hole makes it a gap even when another starts right after.
        let straddling = BackupWalRange { timeline: 1, start: 3, stop: 5 };
        let s = summarize_timelines(&files, 16 << 20, &[monthly, anchor, straddling]);
        assert!(s[0].expired.is_empty() && s[0].gaps.len() == 13, "{:?}", s[0]);
    }
}
