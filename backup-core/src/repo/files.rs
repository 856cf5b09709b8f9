//! Sets of files in a repository: each file an independent encoded stream, small ones packed
//! into bundles, large ones an object each, all found again through [`FileEntry`]s.
//!
//! A 10,000-relation cluster (or a directory of uploads) is therefore a few dozen objects, not
//! 10,000, and a restore reads each file with one ranged get. The entries go into whatever
//! manifest the caller writes (a base backup's, a file set's); this module only stores and
//! reads files.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::{RepoError, Repository};
use crate::codec::{self, EncodeSummary, Sha256Digest};
use crate::storage::{ByteRange, Ctx, ObjectWriter, PutMode};

/// Files at least this large get an object of their own.
pub const OWN_OBJECT_SIZE: u64 = 4 << 20;
/// A bundle is closed once it holds this much.
const BUNDLE_TARGET: u64 = 16 << 20;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub size: u64,
    pub mode: u32,
    pub mtime: i64,
    /// SHA-256 of the whole file, as a restore writes it (for a delta entry too: it is what
    /// the reconstructed file is checked against).
    pub sha256: Sha256Digest,
    /// Object holding the encoded file, and where in it (small files share bundles).
    pub object: String,
    pub offset: u64,
    pub stored_size: u64,
    /// Incremental backups: only these blocks are stored here; the rest of the file is the
    /// same path's content in the parent backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<BlockDelta>,
}

/// Blocks are [`DELTA_BLOCK`] bytes: PostgreSQL's page size, the unit of change an incremental
/// backup tracks.
pub const DELTA_BLOCK: u64 = 8192;

/// The part of a file an incremental backup stored: its stored stream is these blocks' bytes,
/// in block order (the last one shorter when the file ends inside it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockDelta {
    pub blocks: BlockList,
    /// SHA-256 of the stored stream (the blocks), which the object's trailer must match.
    pub stored_sha256: Sha256Digest,
    /// Only these blocks were read (the WAL said nothing else changed): the whole file's digest
    /// was never computed, and [`FileEntry::sha256`] is the stored blocks' digest. A restore
    /// checks the rebuilt file's page checksums instead.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub changed_only: bool,
}

/// Block numbers as sorted, disjoint `[start, end)` ranges: a manifest lists a million
/// changed pages of one table as a few thousand runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BlockList(Vec<(u32, u32)>);

impl BlockList {
    /// Add `block`, which must be greater than every block added before.
    pub fn push(&mut self, block: u32) {
        match self.0.last_mut() {
            Some((_, end)) if *end == block => *end += 1,
            Some((_, end)) => {
                debug_assert!(*end < block, "blocks must be pushed in order");
                self.0.push((block, block + 1));
            }
            None => self.0.push((block, block + 1)),
        }
    }

    pub fn len(&self) -> u64 {
        self.0.iter().map(|(s, e)| u64::from(e - s)).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().flat_map(|&(s, e)| s..e)
    }

    /// The sorted, distinct `blocks` as a list.
    pub fn from_sorted(blocks: impl IntoIterator<Item = u32>) -> BlockList {
        let mut list = BlockList::default();
        for b in blocks {
            if list.0.last().is_none_or(|&(_, end)| b >= end) {
                list.push(b);
            }
        }
        list
    }
}

/// What a file is, before it is stored.
#[derive(Clone, Debug)]
pub struct FileMeta<'a> {
    pub path: &'a str,
    pub size: u64,
    pub mode: u32,
    pub mtime: i64,
}

/// Names objects `<prefix>000000`, `<prefix>000001`, … for every writer of one file set.
#[derive(Debug)]
pub struct ObjectNames {
    prefix: String,
    next: AtomicU64,
}

impl ObjectNames {
    pub fn new(prefix: impl Into<String>) -> ObjectNames {
        ObjectNames { prefix: prefix.into(), next: AtomicU64::new(0) }
    }

    fn next(&self) -> String {
        format!("{}{:06}", self.prefix, self.next.fetch_add(1, Ordering::Relaxed))
    }
}

/// One writer's share of a file set: its current bundle, and how many objects it committed.
/// Each thread of a parallel copy owns one.
pub struct FileWriter<'r> {
    repo: &'r Repository,
    ctx: Ctx,
    names: &'r ObjectNames,
    bundle: Option<Bundle<'r>>,
    committed: u64,
}

struct Bundle<'r> {
    key: String,
    writer: Box<dyn ObjectWriter + 'r>,
    offset: u64,
}

impl<'r> FileWriter<'r> {
    /// Uploads run under `ctx` (the repository's [`Repository::ctx`], perhaps with a token of
    /// the caller's added).
    pub fn new(repo: &'r Repository, ctx: Ctx, names: &'r ObjectNames) -> FileWriter<'r> {
        FileWriter { repo, ctx, names, bundle: None, committed: 0 }
    }

    /// Store one file read from `input`. Codec errors name the object; an error of `input`
    /// itself arrives as [`codec::CodecError::Io`] carrying it.
    pub fn store(&mut self, file: &FileMeta, input: &mut dyn Read) -> Result<(FileEntry, EncodeSummary), RepoError> {
        let params = self.repo.encode_params();
        if file.size >= OWN_OBJECT_SIZE {
            let key = self.names.next();
            let mut writer = self.repo.storage().writer(&self.ctx, &key, PutMode::IfAbsent)?;
            let summary = codec::encode(input, &mut writer, &file_aad(&key, file.path), params).map_err(|e| RepoError::codec(&key, e))?;
            writer.commit()?;
            self.committed += 1;
            return Ok((entry(file, &summary, key, 0), summary));
        }
        let bundle = match &mut self.bundle {
            Some(b) => b,
            None => {
                let key = self.names.next();
                let writer = self.repo.storage().writer(&self.ctx, &key, PutMode::IfAbsent)?;
                self.bundle.insert(Bundle { key, writer, offset: 0 })
            }
        };
        let summary = codec::encode(input, &mut bundle.writer, &file_aad(&bundle.key, file.path), params)
            .map_err(|e| RepoError::codec(&bundle.key, e))?;
        let stored = entry(file, &summary, bundle.key.clone(), bundle.offset);
        bundle.offset += summary.stored_size;
        if bundle.offset >= BUNDLE_TARGET {
            self.close_bundle()?;
        }
        Ok((stored, summary))
    }

    /// Commit the open bundle; returns how many objects this writer committed in all.
    pub fn finish(mut self) -> Result<u64, RepoError> {
        self.close_bundle()?;
        Ok(self.committed)
    }

    fn close_bundle(&mut self) -> Result<(), RepoError> {
        if let Some(b) = self.bundle.take() {
            b.writer.commit()?;
            self.committed += 1;
        }
        Ok(())
    }
}

/// Bytes a delta entry's stored stream holds: whole blocks, the last one cut at the file's end.
pub fn stored_delta_size(delta: &BlockDelta, file_size: u64) -> u64 {
    delta.blocks.iter().map(|b| (file_size.saturating_sub(u64::from(b) * DELTA_BLOCK)).min(DELTA_BLOCK)).sum()
}

/// Each file's frames are bound to its object and its path: a file served from the wrong
/// place fails authentication.
fn file_aad(object: &str, path: &str) -> String {
    format!("{object}#{path}")
}

fn entry(file: &FileMeta, s: &EncodeSummary, object: String, offset: u64) -> FileEntry {
    FileEntry {
        path: file.path.to_string(),
        size: s.trailer.plaintext_size,
        mode: file.mode,
        mtime: file.mtime,
        sha256: s.trailer.sha256,
        object,
        offset,
        stored_size: s.stored_size,
        delta: None,
    }
}

impl Repository {
    /// Decode one stored file (its own object or its slice of a bundle) into `out`, with one
    /// ranged read and no other request.
    pub fn decode_file(&self, file: &FileEntry, out: &mut dyn Write) -> Result<codec::DecodeSummary, RepoError> {
        let range = ByteRange::Bounded(file.offset..file.offset + file.stored_size);
        let body = self.storage().get_range(&self.ctx(), &file.object, range)?;
        let mut input = std::io::BufReader::with_capacity((1 << 20).min(file.stored_size.max(1) as usize), body);
        // Only a file large enough to have its own object has frames enough to share out.
        let threads = if file.size >= OWN_OBJECT_SIZE { self.codec_threads() } else { 1 };
        codec::decode_with_threads(&mut input, out, &file_aad(&file.object, &file.path), self.keys(), threads)
            .map_err(|e| RepoError::codec(&file.object, e))
    }

    /// Start reading `run` with one ranged read; decode its files in order with
    /// [`RunReader::decode_next`].
    pub fn read_run(&self, run: &FileRun) -> Result<RunReader<'_>, RepoError> {
        let range = ByteRange::Bounded(run.start()..run.end());
        let body = self.storage().get_range(&self.ctx(), run.object, range)?;
        let input = std::io::BufReader::with_capacity((1 << 20).min(run.stored_size().max(1) as usize), body);
        Ok(RunReader { repo: self, object: run.object.to_string(), input, pos: run.start() })
    }

    /// Decode a stored file (or the blocks a delta entry stored) to nowhere and compare it
    /// with its entry.
    pub fn check_file(&self, file: &FileEntry) -> Result<(), RepoError> {
        let (sha256, size) = match &file.delta {
            None => (file.sha256, file.size),
            Some(d) => (d.stored_sha256, stored_delta_size(d, file.size)),
        };
        let summary = self.decode_file(file, &mut std::io::sink())?;
        if summary.trailer.sha256 != sha256 || summary.trailer.plaintext_size != size {
            return Err(RepoError::codec(&file.object, codec::CodecError::Corrupt("content differs from the manifest".into())));
        }
        Ok(())
    }
}

/// Files stored one after another in one object (a bundle's, or a file's own object), in
/// offset order: a restore reads them with one ranged request instead of one each.
///
/// Against an object store every request costs a round trip and the store's own overhead
/// (tens of milliseconds in the clouds), so a thousand small files read one request each
/// spend most of a restore waiting; read as runs, they are a few dozen requests.
#[derive(Clone, Debug)]
pub struct FileRun<'f> {
    pub object: &'f str,
    /// Sorted by offset, not overlapping.
    pub files: Vec<&'f FileEntry>,
}

impl FileRun<'_> {
    pub fn start(&self) -> u64 {
        self.files.first().map_or(0, |f| f.offset)
    }

    pub fn end(&self) -> u64 {
        self.files.last().map_or(0, |f| f.offset + f.stored_size)
    }

    /// Bytes the run's request reads (the files' stored bytes and any gaps between them).
    pub fn stored_size(&self) -> u64 {
        self.end() - self.start()
    }

    /// Plaintext bytes of its files.
    pub fn size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// A gap up to this many stored bytes between two files of an object (bytes of files not
/// restored) is read and skipped rather than costing another request.
pub const RUN_MAX_GAP: u64 = 256 << 10;
/// A run stops growing at this many stored bytes, so that parallel workers share a bundle.
pub const RUN_MAX_SIZE: u64 = 4 << 20;

/// `files` grouped into runs: per object, in offset order, a new run past a gap larger than
/// `max_gap` or once a run holds `max_size` stored bytes.
pub fn file_runs<'f>(files: impl IntoIterator<Item = &'f FileEntry>, max_gap: u64, max_size: u64) -> Vec<FileRun<'f>> {
    let mut sorted: Vec<&FileEntry> = files.into_iter().collect();
    sorted.sort_by(|a, b| (a.object.as_str(), a.offset).cmp(&(b.object.as_str(), b.offset)));
    let mut runs: Vec<FileRun> = Vec::new();
    for file in sorted {
        match runs.last_mut() {
            Some(run)
                if run.object == file.object
                    && file.offset >= run.end()
                    && file.offset - run.end() <= max_gap
                    && run.stored_size() < max_size =>
            {
                run.files.push(file)
            }
            _ => runs.push(FileRun { object: &file.object, files: vec![file] }),
        }
    }
    runs
}

/// The body of one ranged read over a [`FileRun`], decoded file by file.
pub struct RunReader<'r> {
    repo: &'r Repository,
    object: String,
    input: std::io::BufReader<crate::storage::ObjectReader<'r>>,
    /// Offset in the object of the next byte `input` yields.
    pos: u64,
}

impl RunReader<'_> {
    /// Decode the run's next file into `out`: exactly its stored bytes, checked as
    /// [`Repository::decode_file`] checks them (a file must end where its entry says).
    pub fn decode_next(&mut self, file: &FileEntry, out: &mut dyn Write) -> Result<codec::DecodeSummary, RepoError> {
        let object = self.object.as_str();
        if file.object != object || file.offset < self.pos {
            return Err(RepoError::codec(object, codec::CodecError::Corrupt(format!("{} is not the next file of this read", file.path))));
        }
        let gap = file.offset - self.pos;
        let skipped = std::io::copy(&mut (&mut self.input).take(gap), &mut std::io::sink()).map_err(|e| RepoError::codec(object, e.into()))?;
        if skipped != gap {
            return Err(RepoError::codec(object, codec::CodecError::Truncated));
        }
        let mut slice = (&mut self.input).take(file.stored_size);
        let threads = if file.size >= OWN_OBJECT_SIZE { self.repo.codec_threads() } else { 1 };
        let summary = codec::decode_with_threads(&mut slice, out, &file_aad(object, &file.path), self.repo.keys(), threads)
            .map_err(|e| RepoError::codec(object, e))?;
        // The decoder read up to the end of what it was given: a shorter body is truncation.
        if slice.limit() != 0 {
            return Err(RepoError::codec(object, codec::CodecError::Truncated));
        }
        self.pos = file.offset + file.stored_size;
        Ok(summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::LocalStorage;

    fn repo(dir: &std::path::Path) -> Repository {
        use crate::keys::{KeyId, KeyRing, MasterKey};
        let storage = LocalStorage::new(dir.join("repo"));
        Repository::init(&storage, crate::repo::Encryption::Aes256Gcm, Default::default()).unwrap();
        let keys = KeyRing::new(vec![MasterKey::generate(KeyId::new("test").unwrap())]).unwrap();
        Repository::open_with(Box::new(storage), Some(keys), crate::codec::Compression::Zstd { level: 1 }).unwrap()
    }

    #[test]
    fn small_files_share_a_bundle_large_ones_get_objects_and_all_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path());
        let names = ObjectNames::new("set/x/data/");
        let mut w = FileWriter::new(&repo, repo.ctx(), &names);
        let files: Vec<(String, Vec<u8>)> =
            [("a", 100usize), ("b", 5000), ("big", 5 << 20)].iter().map(|(n, size)| (n.to_string(), (0..*size).map(|i| (i % 251) as u8).collect())).collect();
        let mut entries = Vec::new();
        for (name, data) in &files {
            let meta = FileMeta { path: name, size: data.len() as u64, mode: 0o600, mtime: 0 };
            entries.push(w.store(&meta, &mut &data[..]).unwrap().0);
        }
        assert_eq!(w.finish().unwrap(), 2, "one bundle for a+b, one object for big");
        assert_eq!(entries[0].object, entries[1].object);
        assert_ne!(entries[1].offset, 0);
        for (entry, (_, data)) in entries.iter().zip(&files) {
            let mut out = Vec::new();
            repo.decode_file(entry, &mut out).unwrap();
            assert_eq!(&out, data, "{}", entry.path);
            repo.check_file(entry).unwrap();
        }
        // A file entry pointing at another file's bytes fails authentication.
        let swapped = FileEntry { path: "a".into(), ..entries[1].clone() };
        assert!(repo.decode_file(&swapped, &mut std::io::sink()).is_err());
    }

    #[test]
    fn runs_read_neighbours_with_one_request_and_skip_small_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path());
        let names = ObjectNames::new("set/x/data/");
        let mut w = FileWriter::new(&repo, repo.ctx(), &names);
        let files: Vec<(String, Vec<u8>)> = [("a", 100usize), ("b", 5000), ("c", 70), ("d", 3000), ("big", 5 << 20)]
            .iter()
            .map(|(n, size)| (n.to_string(), (0..*size).map(|i| (i * 7 % 253) as u8).collect()))
            .collect();
        let mut entries = Vec::new();
        for (name, data) in &files {
            let meta = FileMeta { path: name, size: data.len() as u64, mode: 0o600, mtime: 0 };
            entries.push(w.store(&meta, &mut &data[..]).unwrap().0);
        }
        w.finish().unwrap();
        let data = |e: &FileEntry| &files.iter().find(|(n, _)| *n == e.path).unwrap().1;

        // All of them: the bundle is one run, the large file another.
        let runs = file_runs(entries.iter().rev(), RUN_MAX_GAP, RUN_MAX_SIZE);
        assert_eq!(runs.len(), 2);
        let bundle = runs.iter().find(|r| r.files.len() == 4).unwrap();
        assert_eq!(bundle.files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(), ["a", "b", "c", "d"]);
        for run in &runs {
            let mut reader = repo.read_run(run).unwrap();
            for f in &run.files {
                let mut out = Vec::new();
                reader.decode_next(f, &mut out).unwrap();
                assert_eq!(&out, data(f), "{}", f.path);
            }
        }

        // b and d only: c's bytes between them are skipped; with no gap allowed, two runs.
        let some = [&entries[1], &entries[3]];
        let runs = file_runs(some, RUN_MAX_GAP, RUN_MAX_SIZE);
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].start(), entries[1].offset);
        let mut reader = repo.read_run(&runs[0]).unwrap();
        for f in &runs[0].files {
            let mut out = Vec::new();
            reader.decode_next(f, &mut out).unwrap();
            assert_eq!(&out, data(f), "{}", f.path);
        }
        assert_eq!(file_runs(some, 0, RUN_MAX_SIZE).len(), 2);
        // A size limit splits a bundle.
        assert_eq!(file_runs(&entries[..4], RUN_MAX_GAP, 1).len(), 4);

        // Out of order, or another file's bytes, fail.
        let swapped = FileEntry { path: "a".into(), ..entries[1].clone() };
        let mut reader = repo.read_run(&FileRun { object: &entries[0].object, files: entries[..2].iter().collect() }).unwrap();
        assert!(reader.decode_next(&swapped, &mut std::io::sink()).is_err(), "b's bytes as a");
        let mut reader = repo.read_run(&FileRun { object: &entries[0].object, files: entries[..2].iter().collect() }).unwrap();
        reader.decode_next(&entries[1], &mut std::io::sink()).unwrap();
        assert!(reader.decode_next(&entries[0], &mut std::io::sink()).is_err(), "going back");
    }
}
