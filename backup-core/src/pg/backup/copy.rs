//! Copying a data directory's files into the repository: parallel workers, page checksums
//! verified on the way, a read-rate limit.
//!
//! Storing is [`crate::repo::files`]' business (bundles for small files, an object each for
//! large ones); this module reads PostgreSQL's files the way they must be read: page by page,
//! re-reading a page that looks torn, reporting one that is corrupt.
//!
//! The calling thread never copies: it sleeps, runs the caller's `tick` (progress reports,
//! cancellation checks: the only place an embedding server's API may be used), and joins.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::incremental::Baseline;
use super::manifest::{BackupId, FileEntry, PageFailure};
use super::page::{check_page, PageCheck, PageHeader, BLCKSZ};
use super::scan::SourceFile;
use crate::codec::CodecError;
use crate::pg::wal::Lsn;
use crate::pg::PgRepo;
use crate::codec::Sha256Digest;
use crate::repo::files::{BlockDelta, BlockList, FileMeta, FileWriter, ObjectNames};
use crate::repo::RepoError;
use crate::storage::CancelToken;

const READ_CHUNK: usize = 256 * 1024;

/// A relation file the WAL says changed in more than 1/N of its blocks is stored whole rather
/// than as a delta. Restoring a delta costs decoding it *and* everything under it; past half
/// the blocks, a delta saves less than half the space and doubles that cost (measured: a
/// chain of five such deltas restored 2.3x slower than a full backup, stored whole 1.1-1.3x).
const WHOLE_FILE_ABOVE: u64 = 2;

#[derive(Clone, Debug)]
pub struct CopyOptions {
    pub workers: usize,
    /// Pages newer than this were written during the backup: a checksum mismatch there is a
    /// torn read that WAL replay repairs, not corruption.
    pub start_lsn: Lsn,
    pub verify_checksums: bool,
    /// Read at most this many bytes per second in all (0: no limit), to spare production I/O.
    pub max_rate: u64,
    /// Incremental backups: also read every file the WAL summaries vouch for and report any
    /// page changed since the parent that they did not name (and store it anyway). A check of
    /// the summaries themselves, for tests and for the distrustful: it reads everything.
    pub check_wal_summaries: bool,
}

/// Counters the copy updates as it goes, readable from any thread.
#[derive(Debug, Default)]
pub struct Progress {
    pub bytes_total: AtomicU64,
    pub bytes_done: AtomicU64,
    /// Bytes actually read from the data directory (an incremental backup reads less than it
    /// accounts for in `bytes_done`).
    pub bytes_read: AtomicU64,
    pub stored_bytes: AtomicU64,
    pub files_total: AtomicU64,
    pub files_done: AtomicU64,
}

#[derive(Debug, Default)]
pub struct CopyResult {
    pub files: Vec<FileEntry>,
    pub page_failures: Vec<PageFailure>,
    pub objects: u64,
    /// Incremental backups: relation files read only where the WAL changed them, and relation
    /// files read whole and judged page by page.
    pub files_from_wal: u64,
    pub files_scanned: u64,
    /// With [`CopyOptions::check_wal_summaries`]: pages changed since the parent that the WAL
    /// summaries did not name, as `path block N (page LSN L)`.
    pub wal_missed: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("cancelled")]
    Cancelled,
    #[error("reading {path}")]
    Read { path: String, #[source] cause: io::Error },
    #[error(transparent)]
    Repo(#[from] RepoError),
}

impl CopyError {
    /// Sort a repository error out: a source read failure or a cancellation travelled through
    /// the codec as an I/O error; anything else is the repository's.
    fn from_repo(e: RepoError, rel: &str) -> CopyError {
        if e.is_cancelled() {
            return CopyError::Cancelled;
        }
        match e {
            RepoError::Codec { cause: CodecError::Io(io), .. } if io.get_ref().is_some_and(|e| e.is::<CancelMarker>()) => CopyError::Cancelled,
            RepoError::Codec { cause: CodecError::Io(io), .. } if io.get_ref().is_some_and(|e| e.is::<SourceReadError>()) => {
                CopyError::Read { path: rel.to_string(), cause: io }
            }
            other => CopyError::Repo(other),
        }
    }
}

/// The error a source read returns once the copy is cancelled.
#[derive(Debug)]
struct CancelMarker;

impl std::fmt::Display for CancelMarker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("backup cancelled")
    }
}

impl std::error::Error for CancelMarker {}

/// A failure to read the source file (as opposed to writing the repository), carried through
/// the codec's I/O error.
#[derive(Debug)]
struct SourceReadError(io::Error);

impl std::fmt::Display for SourceReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SourceReadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// Copy `files` into `backup/<id>/data/`. `tick` runs on the calling thread about five times a
/// second; returning `false` cancels the copy, including uploads under way.
///
/// With a `baseline` (an incremental backup), a main-fork relation file its parent also holds
/// is read whole but stored as a delta: only the pages changed since the parent started.
pub fn copy_files(
    repo: &PgRepo,
    id: &BackupId,
    mut files: Vec<SourceFile>,
    opts: &CopyOptions,
    baseline: Option<&Baseline>,
    progress: &Progress,
    tick: &mut dyn FnMut() -> bool,
) -> Result<CopyResult, CopyError> {
    // Largest first, so the long files start early and the tail is made of small ones.
    files.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.rel.cmp(&b.rel)));
    progress.bytes_total.store(files.iter().map(|f| f.size).sum(), Ordering::Relaxed);
    progress.files_total.store(files.len() as u64, Ordering::Relaxed);
    let next = AtomicUsize::new(0);
    // Ours alone: a failed worker stops its siblings without cancelling the repository.
    let cancel = CancelToken::new();
    let throttle = Throttle { max_rate: opts.max_rate, started: std::time::Instant::now(), read: AtomicU64::new(0) };
    let names = ObjectNames::new(format!("{}data/", id.prefix()));
    let result = Mutex::new(CopyResult::default());
    let workers = opts.workers.max(1);

    let group = crate::threads::WorkerGroup::default();
    let work = |_worker: usize| {
        let writer = FileWriter::new(repo.objects(), repo.objects().ctx().with_cancel(&cancel), &names);
        let w = Worker { opts, baseline, progress, cancel: &cancel, throttle: &throttle, writer };
        let outcome = w.run(&files, &next);
        let mut r = result.lock().unwrap();
        match outcome {
            Ok(done) => {
                r.files.extend(done.files);
                r.page_failures.extend(done.page_failures);
                r.objects += done.objects;
                r.files_from_wal += done.files_from_wal;
                r.files_scanned += done.files_scanned;
                r.wal_missed.extend(done.wal_missed);
                Ok(())
            }
            Err(e) => {
                cancel.cancel();
                Err(e)
            }
        }
    };
    std::thread::scope(|scope| {
        let handles = group.spawn(scope, workers, &work);
        loop {
            if !tick() {
                cancel.cancel();
            }
            if group.wait_all(workers, Duration::from_millis(200)) {
                break;
            }
        }
        let mut first_error = None;
        for h in handles {
            if let Err(e) = h.join().expect("backup worker panicked") {
                // A worker stopped by another's failure reports Cancelled; keep the real cause.
                if first_error.is_none() || matches!(first_error, Some(CopyError::Cancelled)) {
                    first_error = Some(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None if cancel.is_cancelled() => Err(CopyError::Cancelled),
            None => Ok(()),
        }
    })?;
    let mut r = result.into_inner().unwrap();
    r.files.sort_by(|a, b| a.path.cmp(&b.path));
    r.page_failures.sort_by(|a, b| (&a.path, a.block).cmp(&(&b.path, b.block)));
    Ok(r)
}

struct Worker<'a> {
    opts: &'a CopyOptions,
    baseline: Option<&'a Baseline>,
    progress: &'a Progress,
    cancel: &'a CancelToken,
    throttle: &'a Throttle,
    writer: FileWriter<'a>,
}

impl Worker<'_> {
    fn run(mut self, files: &[SourceFile], next: &AtomicUsize) -> Result<CopyResult, CopyError> {
        let mut out = CopyResult::default();
        loop {
            if self.cancel.is_cancelled() {
                return Err(CopyError::Cancelled);
            }
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(file) = files.get(i) else { break };
            if let Some(entry) = self.copy_one(file, &mut out)? {
                out.files.push(entry);
            }
            self.progress.files_done.fetch_add(1, Ordering::Relaxed);
        }
        out.objects = self.writer.finish().map_err(|e| CopyError::from_repo(e, ""))?;
        Ok(out)
    }

    fn copy_one(&mut self, file: &SourceFile, out: &mut CopyResult) -> Result<Option<FileEntry>, CopyError> {
        let handle = match File::open(&file.abs) {
            Ok(f) => f,
            // Dropped since the scan (a table, a database): WAL replay drops it too.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(CopyError::Read { path: file.abs.display().to_string(), cause: e }),
        };
        // A delta needs the parent's copy of the same file to lay its pages over.
        let parent = self.baseline.filter(|_| file.paged).and_then(|b| b.parent_size(&file.rel).map(|size| (b, size)));
        if let Some((b, parent_size)) = parent {
            if let Some(mut changed) = b.wal_blocks(&file.rel) {
                out.files_from_wal += 1;
                if self.opts.check_wal_summaries {
                    let missed = pages_changed_since(&handle, b.since.0, self.opts.start_lsn.0, parent_size, &changed).map_err(|e| CopyError::Read { path: file.abs.display().to_string(), cause: e })?;
                    for (block, lsn) in missed {
                        out.wal_missed.push(format!("{} block {block} (page LSN {})", file.rel, crate::pg::wal::Lsn(lsn)));
                        changed.push(block);
                    }
                }
                // Most of it changed: stored whole, a restore then needs no older layer of it
                // (a chain of mostly-rewritten deltas costs a restore each layer's decoding,
                // for little saving in space). Read whole, its digest is known again.
                let size = handle.metadata().map_err(|e| CopyError::Read { path: file.abs.display().to_string(), cause: e })?.len();
                if changed.len() as u64 <= size.div_ceil(BLCKSZ as u64) / WHOLE_FILE_ABOVE {
                    return self.copy_blocks(file, handle, size, parent_size, changed, &mut out.page_failures).map(Some);
                }
                return self.copy_read(file, handle, None, &mut out.page_failures).map(Some);
            }
            out.files_scanned += 1;
        }
        let delta = parent.map(|(b, size)| DeltaState {
            since: b.since.0,
            parent_blocks: size.div_ceil(BLCKSZ as u64),
            hasher: Sha256::new(),
            blocks: BlockList::default(),
        });
        self.copy_read(file, handle, delta, &mut out.page_failures).map(Some)
    }

    /// Read a file through, storing it whole or (with `delta`) its pages changed since the parent.
    fn copy_read(&mut self, file: &SourceFile, handle: File, delta: Option<DeltaState>, failures: &mut Vec<PageFailure>) -> Result<FileEntry, CopyError> {
        let mut reader = SourceReader {
            file: handle,
            delta,
            rel: &file.rel,
            first_block: if self.opts.verify_checksums { file.first_block } else { None },
            start_lsn: self.opts.start_lsn.0,
            pos: 0,
            buf: Vec::new(),
            served: 0,
            failures,
            progress: self.progress,
            cancel: self.cancel,
            throttle: self.throttle,
        };
        let meta = FileMeta { path: &file.rel, size: file.size, mode: file.mode, mtime: file.mtime };
        let (mut entry, summary) = self.writer.store(&meta, &mut reader).map_err(|e| CopyError::from_repo(e, &file.rel))?;
        self.progress.stored_bytes.fetch_add(summary.stored_size, Ordering::Relaxed);
        if let Some(d) = reader.delta.take() {
            // The entry describes the stored stream (the changed pages); the file itself is
            // what was read, and its digest is what a restore through the chain must produce.
            entry.delta = Some(BlockDelta { blocks: d.blocks, stored_sha256: entry.sha256, changed_only: false });
            entry.sha256 = Sha256Digest(d.hasher.finalize().into());
            entry.size = reader.pos;
        }
        Ok(entry)
    }

    /// Store only `changed` blocks of a relation file (those the WAL named since the parent)
    /// and any block past the parent's copy, read where they are: the rest of the file is not
    /// read at all.
    #[allow(clippy::too_many_arguments)]
    fn copy_blocks(&mut self, file: &SourceFile, handle: File, size: u64, parent_size: u64, changed: Vec<u32>, failures: &mut Vec<PageFailure>) -> Result<FileEntry, CopyError> {
        let now_blocks = size.div_ceil(BLCKSZ as u64) as u32;
        let parent_blocks = parent_size.div_ceil(BLCKSZ as u64) as u32;
        let mut blocks: Vec<u32> = changed.into_iter().filter(|b| *b < now_blocks).chain(parent_blocks.min(now_blocks)..now_blocks).collect();
        blocks.sort_unstable();
        blocks.dedup();
        let mut reader = BlockReader {
            file: handle,
            size,
            blocks: &blocks,
            next: 0,
            page: Vec::new(),
            served: 0,
            first_block: if self.opts.verify_checksums { file.first_block } else { None },
            rel: &file.rel,
            start_lsn: self.opts.start_lsn.0,
            failures,
            progress: self.progress,
            cancel: self.cancel,
            throttle: self.throttle,
        };
        let meta = FileMeta { path: &file.rel, size: blocks.len() as u64 * BLCKSZ as u64, mode: file.mode, mtime: file.mtime };
        let (mut entry, summary) = self.writer.store(&meta, &mut reader).map_err(|e| CopyError::from_repo(e, &file.rel))?;
        self.progress.stored_bytes.fetch_add(summary.stored_size, Ordering::Relaxed);
        // Accounted as done whole, so that progress reaches 100 %.
        self.progress.bytes_done.fetch_add(size, Ordering::Relaxed);
        entry.delta = Some(BlockDelta { blocks: BlockList::from_sorted(blocks), stored_sha256: entry.sha256, changed_only: true });
        entry.size = size;
        Ok(entry)
    }
}

/// The blocks of a relation file whose page LSN is in `[since, until)` (changed after the parent
/// started and before this backup did) but are not in `named`, within the parent's length
/// (blocks past it are stored whatever the WAL says). What a page-LSN scan would store that
/// the WAL summaries left out: it must be nothing.
fn pages_changed_since(file: &File, since: u64, until: u64, parent_size: u64, named: &[u32]) -> io::Result<Vec<(u32, u64)>> {
    let named: std::collections::HashSet<u32> = named.iter().copied().collect();
    let parent_blocks = parent_size / BLCKSZ as u64;
    let mut missed = Vec::new();
    let mut page = vec![0u8; BLCKSZ];
    for block in 0..parent_blocks {
        if file.read_at(&mut page, block * BLCKSZ as u64)? < BLCKSZ {
            break;
        }
        let h = PageHeader::parse(&page);
        if h.upper != 0 && h.lsn >= since && h.lsn < until && !named.contains(&(block as u32)) {
            missed.push((block as u32, h.lsn));
        }
    }
    Ok(missed)
}

/// Reads the listed blocks of a file, one page at a time, verifying each like [`SourceReader`].
struct BlockReader<'a> {
    file: File,
    /// The file's size when opened: the entry's size. A block the file lost since (a
    /// truncation after our start, which WAL replay repeats) reads as zeros.
    size: u64,
    blocks: &'a [u32],
    next: usize,
    /// The block being served, and how much of it has been.
    page: Vec<u8>,
    served: usize,
    first_block: Option<u32>,
    rel: &'a str,
    start_lsn: u64,
    failures: &'a mut Vec<PageFailure>,
    progress: &'a Progress,
    cancel: &'a CancelToken,
    throttle: &'a Throttle,
}

impl BlockReader<'_> {
    fn read_block(&mut self, block: u32, page: &mut [u8]) -> io::Result<()> {
        let at = u64::from(block) * BLCKSZ as u64;
        let mut n = 0;
        while n < page.len() {
            match self.file.read_at(&mut page[n..], at + n as u64) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io::Error::other(SourceReadError(e))),
            }
        }
        page[n..].fill(0);
        self.progress.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
        self.throttle.account(n as u64, self.cancel);
        Ok(())
    }
}

impl Read for BlockReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.served == self.page.len() {
            if self.cancel.is_cancelled() {
                return Err(io::Error::other(CancelMarker));
            }
            let Some(&block) = self.blocks.get(self.next) else { return Ok(0) };
            self.next += 1;
            let len = (self.size - u64::from(block) * BLCKSZ as u64).min(BLCKSZ as u64) as usize;
            let mut page = std::mem::take(&mut self.page);
            page.resize(len, 0);
            self.read_block(block, &mut page)?;
            if let (Some(first), true) = (self.first_block, len == BLCKSZ) {
                let at = u64::from(block) * BLCKSZ as u64;
                if let Some(f) = verify_page(&self.file, &mut page, at, first + block, self.start_lsn, self.rel) {
                    self.failures.push(f);
                }
            }
            (self.page, self.served) = (page, 0);
        }
        let n = out.len().min(self.page.len() - self.served);
        out[..n].copy_from_slice(&self.page[self.served..self.served + n]);
        self.served += n;
        Ok(n)
    }
}

/// Reads a data file in page-aligned chunks, verifying each complete page's checksum and
/// re-reading a page once when it looks torn.
struct SourceReader<'a> {
    file: File,
    delta: Option<DeltaState>,
    rel: &'a str,
    first_block: Option<u32>,
    start_lsn: u64,
    pos: u64,
    buf: Vec<u8>,
    served: usize,
    failures: &'a mut Vec<PageFailure>,
    progress: &'a Progress,
    cancel: &'a CancelToken,
    throttle: &'a Throttle,
}

/// An incremental backup's view of one relation file: which pages to store.
struct DeltaState {
    /// The parent's start LSN: a page whose LSN is at or past it changed since the parent's
    /// copy (pages the parent copied while they changed carry such an LSN too).
    since: u64,
    /// Blocks the parent's copy of the file had; those past it are new.
    parent_blocks: u64,
    /// Of the whole file as read: what the reconstructed file must hash to.
    hasher: Sha256,
    blocks: BlockList,
}

impl DeltaState {
    /// Hash `data` (the file's bytes from `file_pos`, verified) and move the pages to store to
    /// its front; returns how many bytes those are.
    fn keep_changed(&mut self, data: &mut [u8], file_pos: u64) -> usize {
        self.hasher.update(&*data);
        let mut kept = 0;
        for off in (0..data.len()).step_by(BLCKSZ) {
            let end = (off + BLCKSZ).min(data.len());
            let block = (file_pos + off as u64) / BLCKSZ as u64;
            let page = &data[off..end];
            // A page not yet initialised (all zeros) carries no LSN to judge by; a partial page
            // (the file growing as we read) neither. Both are cheap to store, and wrong to skip:
            // the parent may hold older content for that block (a truncated, re-extended file).
            let changed = block >= self.parent_blocks || page.len() < BLCKSZ || {
                let header = PageHeader::parse(page);
                header.upper == 0 || header.lsn >= self.since
            };
            if changed {
                self.blocks.push(block as u32);
                data.copy_within(off..end, kept);
                kept += end - off;
            }
        }
        kept
    }
}

/// Shared read budget of all workers: after each chunk, a worker sleeps until the total read
/// so far is within `max_rate` of the time elapsed.
struct Throttle {
    max_rate: u64,
    started: std::time::Instant,
    read: AtomicU64,
}

impl Throttle {
    fn account(&self, n: u64, cancel: &CancelToken) {
        if self.max_rate == 0 {
            return;
        }
        let total = self.read.fetch_add(n, Ordering::Relaxed) + n;
        let due = Duration::from_secs_f64(total as f64 / self.max_rate as f64);
        while self.started.elapsed() < due && !cancel.is_cancelled() {
            std::thread::sleep((due - self.started.elapsed()).min(Duration::from_millis(50)));
        }
    }
}

impl SourceReader<'_> {
    /// The next bytes to store: the file's (a full copy), or only its changed pages (a delta).
    fn next_chunk(&mut self, dst: &mut [u8]) -> io::Result<usize> {
        loop {
            let from = self.pos;
            let n = self.read_verified(dst)?;
            let Some(delta) = &mut self.delta else { return Ok(n) };
            if n == 0 {
                return Ok(0);
            }
            // Zero bytes would read as the end of the file: go on until a page is kept.
            let kept = delta.keep_changed(&mut dst[..n], from);
            if kept > 0 {
                return Ok(kept);
            }
        }
    }

    /// Read the next bytes of the file into `dst` (as much as fits, less only at the end),
    /// verifying the pages they hold.
    fn read_verified(&mut self, dst: &mut [u8]) -> io::Result<usize> {
        if self.cancel.is_cancelled() {
            // Not ErrorKind::Interrupted: readers retry that (it means EINTR).
            return Err(io::Error::other(CancelMarker));
        }
        let mut n = 0;
        while n < dst.len() {
            match self.file.read(&mut dst[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io::Error::other(SourceReadError(e))),
            }
        }
        if let Some(first) = self.first_block {
            self.verify_pages(first, &mut dst[..n]);
        }
        self.pos += n as u64;
        self.progress.bytes_done.fetch_add(n as u64, Ordering::Relaxed);
        self.progress.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
        self.throttle.account(n as u64, self.cancel);
        Ok(n)
    }

    /// Check every whole page of `data` (read from `self.pos`); a page that fails is read again
    /// once, in place, since the server may have been writing it as we read it.
    fn verify_pages(&mut self, first_block: u32, data: &mut [u8]) {
        let whole = data.len() / BLCKSZ * BLCKSZ;
        for off in (0..whole).step_by(BLCKSZ) {
            let file_off = self.pos + off as u64;
            let blkno = first_block + (file_off / BLCKSZ as u64) as u32;
            if let Some(f) = verify_page(&self.file, &mut data[off..off + BLCKSZ], file_off, blkno, self.start_lsn, self.rel) {
                self.failures.push(f);
            }
        }
    }
}

/// Check one page read from `file` at `file_off`; a page that fails is read again once and
/// replaced by the new read unless that is corrupt too (the server may have been writing it as
/// we read it). Returns the failure of a page that is corrupt on both reads.
fn verify_page(file: &File, page: &mut [u8], file_off: u64, blkno: u32, start_lsn: u64, rel: &str) -> Option<PageFailure> {
    if matches!(check_page(page, blkno, start_lsn), PageCheck::Valid | PageCheck::New) {
        return None;
    }
    let mut again = vec![0u8; BLCKSZ];
    // Gone since (a truncation): WAL replay repeats it; keep what was read.
    file.read_exact_at(&mut again, file_off).ok()?;
    match check_page(&again, blkno, start_lsn) {
        PageCheck::Corrupt { expected, found } => Some(PageFailure { path: rel.to_string(), block: blkno, expected, found }),
        PageCheck::Valid | PageCheck::New | PageCheck::Torn => {
            page.copy_from_slice(&again);
            None
        }
    }
}

impl Read for SourceReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.served == self.buf.len() {
            // Nothing buffered and room for whole pages: straight into the caller's buffer
            // (the codec reads a megabyte at a time), saving a copy of every byte.
            if out.len() >= BLCKSZ && self.pos.is_multiple_of(BLCKSZ as u64) {
                let whole = out.len() / BLCKSZ * BLCKSZ;
                return self.next_chunk(&mut out[..whole]);
            }
            let mut buf = std::mem::take(&mut self.buf);
            buf.resize(READ_CHUNK, 0);
            let read = self.next_chunk(&mut buf);
            buf.truncate(read.as_ref().map_or(0, |n| *n));
            (self.buf, self.served) = (buf, 0);
            if read? == 0 {
                return Ok(0);
            }
        }
        let n = out.len().min(self.buf.len() - self.served);
        out[..n].copy_from_slice(&self.buf[self.served..self.served + n]);
        self.served += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Compression;
    use crate::pg::cluster::ClusterIdentity;
    use crate::pg::wal::SystemId;
    use crate::repo::{Encryption, Repository};
    use crate::storage::unreliable::{Fault, Op, UnreliableStorage};
    use crate::storage::{LocalStorage, Storage, StorageErrorKind};

    fn repo_on(storage: Box<dyn Storage>) -> PgRepo {
        let cluster = ClusterIdentity { system_id: SystemId(1), pg_version: 15, wal_segment_size: 16 << 20 };
        PgRepo::init(storage.as_ref(), &cluster, Encryption::None).unwrap();
        PgRepo::from_repository(Repository::open_with(storage, None, Compression::Zstd { level: 1 }).unwrap()).unwrap()
    }

    fn repo(dir: &std::path::Path) -> PgRepo {
        repo_on(Box::new(LocalStorage::new(dir.join("repo"))))
    }

    fn source(dir: &std::path::Path, name: &str, size: usize) -> SourceFile {
        let abs = dir.join(name);
        std::fs::write(&abs, (0..size).map(|i| (i % 251) as u8).collect::<Vec<u8>>()).unwrap();
        SourceFile { rel: name.to_string(), abs, size: size as u64, mode: 0o600, mtime: 0, first_block: None, paged: false }
    }

    fn id() -> BackupId {
        "backup_20240115_143000".parse().unwrap()
    }

    fn data_objects(repo: &PgRepo) -> usize {
        let o = repo.objects();
        o.storage().list_all(&o.ctx(), "backup/").unwrap().len()
    }

    #[test]
    fn small_files_share_bundles_and_large_ones_get_objects() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path());
        let files = vec![source(dir.path(), "a", 100), source(dir.path(), "b", 5000), source(dir.path(), "big", 5 << 20)];
        let opts = CopyOptions { workers: 1, start_lsn: Lsn(0), verify_checksums: false, max_rate: 0, check_wal_summaries: false };
        let r = copy_files(&repo, &id(), files, &opts, None, &Progress::default(), &mut || true).unwrap();
        assert_eq!(r.objects, 2, "one bundle for a+b, one object for big");
        let a = r.files.iter().find(|f| f.path == "a").unwrap();
        let b = r.files.iter().find(|f| f.path == "b").unwrap();
        assert_eq!(a.object, b.object);
        let mut out = Vec::new();
        repo.objects().decode_file(b, &mut out).unwrap();
        assert_eq!(out.len(), 5000);
    }

    #[test]
    fn cancelling_stops_the_copy() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path());
        let files = (0..4).map(|i| source(dir.path(), &format!("f{i}"), 8 << 20)).collect();
        let opts = CopyOptions { workers: 2, start_lsn: Lsn(0), verify_checksums: false, max_rate: 0, check_wal_summaries: false };
        let r = copy_files(&repo, &id(), files, &opts, None, &Progress::default(), &mut || false);
        assert!(matches!(r, Err(CopyError::Cancelled)), "{r:?}");
        assert!(data_objects(&repo) < 4, "a cancelled copy went on to the end");
    }

    #[test]
    fn a_failing_store_fails_the_copy_with_its_kind_and_stops_the_other_workers() {
        let dir = tempfile::tempdir().unwrap();
        let unreliable = UnreliableStorage::new(Box::new(LocalStorage::new(dir.path().join("repo"))));
        // The third object's upload is refused.
        unreliable.inject(Fault { after: 2, ..Fault::always(Op::Commit, "backup/", StorageErrorKind::Permission) });
        let repo = repo_on(Box::new(unreliable));
        let files = (0..8).map(|i| source(dir.path(), &format!("f{i}"), 5 << 20)).collect();
        let opts = CopyOptions { workers: 2, start_lsn: Lsn(0), verify_checksums: false, max_rate: 0, check_wal_summaries: false };
        let err = copy_files(&repo, &id(), files, &opts, None, &Progress::default(), &mut || true).unwrap_err();
        match &err {
            CopyError::Repo(e) => assert_eq!(e.storage_error().map(|s| s.kind()), Some(StorageErrorKind::Permission), "{err:?}"),
            other => panic!("expected the store's refusal, got {other:?}"),
        }
        assert!(data_objects(&repo) < 8, "the other worker went on after the failure");
    }
}
