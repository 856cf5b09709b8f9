//! `restore_command` prefetch: while recovery replays segment N, the next segments are
//! fetched, authenticated, decompressed and checksummed in parallel into a spool inside the data
//! directory, so the next `restore_command` calls are served from local disk instead of paying
//! a repository round trip (and the codec) each, one after the other.
//!
//! **Layout.** `<pgdata>/pg_wal/pg_backup_ext.spool/`: every file there named exactly as a WAL
//! segment is complete plaintext WAL, already authenticated and SHA-256-checked by the codec;
//! it got its name by `rename` after `fsync`, never before. Downloads in flight are
//! `NAME.tmp` (and the codec's own `.NAME.tmp.wal-archiver.tmp`); `lock` is held (`flock`) by
//! the one prefetcher allowed per spool; `want` names the newest segment recovery asked for;
//! `prefetch.log` is the prefetcher's log. `NAME.sha256` holds the SHA-256 of NAME's plaintext
//! as the codec checked it; `NAME.served` is a segment already handed to recovery (see below). The spool is in `pg_wal` because that is the one
//! place known to be on the same filesystem as `%p` (serving is a `rename`) and that no base
//! backup copies (its contents are excluded).
//!
//! **Flow.** During recovery, `fetch NAME` (see `wal-archiver`) records NAME in `want`, serves
//! it from the spool when it is there ([`Spool::take`]), else fetches it as without prefetch;
//! once the segment is restored it starts a prefetcher, unless one runs, as a detached process
//! ([`spawn_detached`]). The prefetcher ([`run`]) keeps the window of the
//! `count` segments after `want` filled (same timeline), downloads with a few threads, deletes
//! every other file (older, already replayed, another timeline), and ends when the window is
//! full and recovery stops asking, at the end of the archive (first "not archived"), at the
//! first error, or when recovery is over. Its errors never matter to correctness: a segment not
//! in the spool is fetched by `fetch` itself.
//!
//! **Asked again.** At the end of the archive PostgreSQL asks for the last segment again, twice
//! (after the first "not archived", and once more to pick the new timeline): without a copy at
//! hand each is a full download and decode (0.1-0.3 s each in the S3 benchmark, where `cp`
//! takes milliseconds). So serving hard-links the file into place and keeps the spool's link
//! as `NAME.served` (for the newest two segments only). That inode is PostgreSQL's afterwards:
//! it renames the file into `pg_wal` and may later recycle it (rename it to a future segment
//! and write new WAL into it). So a served file is served again only after its whole content
//! was hashed and found equal to `NAME.sha256` (the digest the codec checked), and then linked
//! again rather than copied: copying would write 16 MB in the path recovery waits on (which
//! took 0.2 s, not 5 ms, in 3 of 4 benchmark runs, with the disk busy with replay's writes).
//! Between that check and the read, only PostgreSQL could write to the file, and it does not
//! recycle the segment it is asking for (a restartpoint keeps every segment from its redo
//! pointer on), and a standby's WAL receiver would write the very same WAL into it.
//!
//! **What others got wrong, and what we do about it.**
//! - WAL-E (#144) linked an empty file into place when a prefetch download failed, and
//!   PostgreSQL replayed it: a spooled name exists here only after the codec verified the whole
//!   file and it was synced; temporary names never parse as WAL names, so they are never served.
//!   [`Spool::take`] still checks the long page header (this cluster's system identifier, the
//!   page address the name implies, length equal to the segment size) before it serves a file,
//!   and deletes what does not pass, so a foreign or misnamed file falls back to the repository.
//! - pgBackRest's asynchronous archive-get (#1357, fixed by #1371) trusted "not found" markers a
//!   previous restore had left in its spool, ending recovery early. This spool holds no
//!   negative answers at all: a file missing from it means "ask the repository".
//! - pgBackRest (#2275) looked at every file in a large queue on every call; WAL-G (#892) ran
//!   several prefetchers for overlapping ranges. Here the foreground looks up one exact name, the
//!   spool holds the `count` files of the window (and the one being served), and one
//!   `flock` admits one prefetcher per spool.
//! - WAL-G (#60) re-executed itself through `$PATH` and failed silently: we use
//!   `current_exe`. WAL-G (#1146) prefetched past the end of the archive on every poll of a
//!   standby: we start a prefetcher only after a segment was found, and it stops at the first
//!   missing one, quietly.
//! - pghoard (#638): no prefetch of timeline history files, and `…FF` segments are ordinary
//!   segments ([`window`] counts segment numbers).
//! - WAL-G's prefetch directory in `pg_wal` made `pg_rewind` (which runs `restore_command`
//!   itself) trip over files appearing and vanishing: nothing is started unless
//!   `recovery.signal` or `standby.signal` is present, and the prefetcher stops when neither is.
//!
//! **Timelines and promotion.** Names carry the timeline, and archived WAL is never
//! overwritten, so an exact name is the same content whoever asks. After promotion the spool is
//! garbage: `push` (`archive_command`, which first runs right after promotion) removes it
//! ([`Spool::remove_after_recovery`]), and a prefetcher that finds recovery over empties it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::archive::FetchError;
use super::repos::RepoSet;
use super::wal::{xlog_page_magic, LongPageHeader, SegmentPos, WalFileName, LONG_PAGE_HEADER_LEN};
use crate::codec::Sha256Digest;
use crate::error::report;

/// The spool directory's name inside `pg_wal`.
pub const SPOOL_DIR: &str = "pg_backup_ext.spool";
const LOCK_FILE: &str = "lock";
const WANT_FILE: &str = "want";
pub const LOG_FILE: &str = "prefetch.log";
/// Suffix of a download in flight: `NAME.tmp` never parses as a WAL file name.
const TMP_SUFFIX: &str = ".tmp";
/// A segment already served, kept to serve again (after checking it against its digest).
const SERVED_SUFFIX: &str = ".served";
/// Beside a spooled segment: the SHA-256 of its plaintext, hex.
const DIGEST_SUFFIX: &str = ".sha256";
/// The log is started afresh beyond this size.
const LOG_MAX_BYTES: u64 = 1 << 20;
/// Download threads, at most.
pub const MAX_THREADS: usize = 4;
/// The prefetcher's nice value (see [`spawn_detached`]).
const PREFETCH_NICE: libc::c_int = 10;
/// How long a prefetcher with a full window waits for recovery to ask for more before it ends:
/// long enough to span the replay of a segment or two, so one prefetcher (with its repository
/// connections) usually serves a whole recovery.
pub const LINGER: Duration = Duration::from_secs(2);

/// The prefetch spool of one data directory.
#[derive(Clone, Debug)]
pub struct Spool {
    pgdata: PathBuf,
    dir: PathBuf,
}

impl Spool {
    pub fn for_pgdata(pgdata: &Path) -> Spool {
        Spool { pgdata: pgdata.to_path_buf(), dir: pgdata.join("pg_wal").join(SPOOL_DIR) }
    }

    /// The spool of the data directory whose `pg_wal` `dest` (`%p`, e.g. `pg_wal/RECOVERYXLOG`,
    /// relative to the data directory) is in. `None` when `dest` is not in the `pg_wal` of a
    /// data directory (a hand-run `fetch NAME /tmp/x`): then there is nothing to prefetch into.
    pub fn for_restore_dest(dest: &Path) -> Option<Spool> {
        Spool::for_restore_dest_in(dest, &std::env::current_dir().ok()?)
    }

    /// [`Spool::for_restore_dest`] with a relative `dest` taken from `cwd`.
    fn for_restore_dest_in(dest: &Path, cwd: &Path) -> Option<Spool> {
        let pg_wal = dest.parent()?;
        if pg_wal.file_name()? != "pg_wal" {
            return None;
        }
        // Absolute, and without `.` or a trailing `/`: the prefetcher gets it as an argument.
        let pgdata = match pg_wal.parent() {
            Some(p) if !p.as_os_str().is_empty() => cwd.join(p),
            _ => cwd.to_path_buf(),
        };
        pgdata.join("PG_VERSION").is_file().then(|| Spool::for_pgdata(&pgdata))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn pgdata(&self) -> &Path {
        &self.pgdata
    }

    /// Where spooled segment `name` lives once complete.
    pub fn path_of(&self, name: &WalFileName) -> PathBuf {
        self.dir.join(name.to_string())
    }

    fn tmp_path_of(&self, name: &WalFileName) -> PathBuf {
        self.dir.join(format!("{name}{TMP_SUFFIX}"))
    }

    fn served_path_of(&self, name: &WalFileName) -> PathBuf {
        self.dir.join(format!("{name}{SERVED_SUFFIX}"))
    }

    fn digest_path_of(&self, name: &WalFileName) -> PathBuf {
        self.dir.join(format!("{name}{DIGEST_SUFFIX}"))
    }

    fn digest_of(&self, name: &WalFileName) -> Option<Sha256Digest> {
        fs::read_to_string(self.digest_path_of(name)).ok()?.trim().parse().ok()
    }

    /// Whether the server is (still) recovering: `recovery.signal` or `standby.signal` is there.
    /// PostgreSQL removes them at promotion.
    pub fn in_recovery(&self) -> bool {
        self.pgdata.join("recovery.signal").exists() || self.pgdata.join("standby.signal").exists()
    }

    /// Put spooled `name` at `dest`. `Ok(None)`: not spooled, or spooled but failing the header
    /// check (then deleted, and the reason returned for the log).
    pub fn take(&self, name: &WalFileName, dest: &Path) -> Result<Option<Served>, String> {
        let path = self.path_of(name);
        match self.check(name, &path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return self.serve_again(name, dest),
            Err(e) => {
                let _ = fs::remove_file(&path);
                let _ = fs::remove_file(self.digest_path_of(name));
                return Err(format!("spooled {name} discarded: {e}"));
            }
        }
        // With its digest known, keep a link to serve it again (see the module docs);
        // without, or where links fail, move it (same filesystem: a rename).
        if self.digest_of(name).is_some() {
            let link = temp_beside(dest, "spool-link");
            let _ = fs::remove_file(&link);
            match fs::hard_link(&path, &link) {
                Ok(()) => {
                    // The prefetcher may delete `path` meanwhile (it moved on): the link holds it.
                    let _ = fs::rename(&path, self.served_path_of(name));
                    return fs::rename(&link, dest).map(|()| Some(Served::Spooled)).map_err(|e| {
                        let _ = fs::remove_file(&link);
                        format!("cannot move spooled {name} to {}: {e}", dest.display())
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(_) => {}
            }
        }
        match fs::rename(&path, dest) {
            Ok(()) => Ok(Some(Served::Spooled)),
            // The prefetcher deleted it in between (it moved on): not spooled after all.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot move spooled {name} to {}: {e}", dest.display())),
        }
    }

    /// Serve `name` a second time from its `.served` link: linked into place again only when
    /// its SHA-256 is still the one recorded when it was spooled (see the module docs).
    fn serve_again(&self, name: &WalFileName, dest: &Path) -> Result<Option<Served>, String> {
        let served = self.served_path_of(name);
        let Some(expected) = self.digest_of(name) else { return Ok(None) };
        let mut hasher = Sha256::new();
        match File::open(&served).and_then(|mut f| io::copy(&mut f, &mut hasher)) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read served {name} again: {e}")),
        }
        let actual = Sha256Digest(hasher.finalize().into());
        let verdict = if actual == expected {
            self.check(name, &served).map_err(|e| e.to_string())
        } else {
            Err(format!("its SHA-256 is now {actual}, not {expected}: rewritten since it was served"))
        };
        if let Err(why) = verdict {
            let _ = fs::remove_file(&served);
            return Err(format!("served {name} not served again: {why}"));
        }
        let link = temp_beside(dest, "spool-link");
        let _ = fs::remove_file(&link);
        fs::hard_link(&served, &link).and_then(|()| fs::rename(&link, dest)).map(|()| Some(Served::Again)).map_err(|e| {
            let _ = fs::remove_file(&link);
            format!("cannot link served {name} to {}: {e}", dest.display())
        })
    }

    /// A spooled segment must be this cluster's (system identifier from `pg_control`), start at
    /// the page address its name implies, and be exactly one segment long.
    fn check(&self, name: &WalFileName, path: &Path) -> io::Result<()> {
        let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        let mut head = [0u8; LONG_PAGE_HEADER_LEN];
        file.read_exact(&mut head).map_err(|_| bad(format!("{len} bytes: shorter than a WAL page header")))?;
        let header = LongPageHeader::parse(&head).map_err(|e| bad(e.to_string()))?;
        let mut control = [0u8; 8];
        File::open(self.pgdata.join("global/pg_control"))
            .and_then(|mut f| f.read_exact(&mut control))
            .map_err(|e| bad(format!("cannot read pg_control to check it: {e}")))?;
        let system_id = u64::from_ne_bytes(control);
        let Some(pos) = name.segment() else { return Err(bad("not a segment".into())) };
        if xlog_page_magic(15) != Some(header.magic) {
            return Err(bad(format!("page magic {:#06X} is not PostgreSQL 15's", header.magic)));
        }
        if header.system_id.0 != system_id {
            return Err(bad(format!("WAL of database system {}, not of this one ({system_id})", header.system_id)));
        }
        if !header.segment_size.is_power_of_two() || len != u64::from(header.segment_size) {
            return Err(bad(format!("{len} bytes, but segments are {} bytes", header.segment_size)));
        }
        let expected = pos.segno(header.segment_size) * u64::from(header.segment_size);
        if header.page_addr.0 != expected {
            return Err(bad(format!("starts at {}, not where its name says", header.page_addr)));
        }
        Ok(())
    }

    /// Record `name` as the newest segment recovery asked for (a running prefetcher moves its
    /// window there). Best effort: without it a new prefetcher starts from its `--from`.
    pub fn want(&self, name: &WalFileName) -> io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        let tmp = self.dir.join(format!("{WANT_FILE}.{}{TMP_SUFFIX}", std::process::id()));
        fs::write(&tmp, name.to_string())?;
        fs::rename(&tmp, self.dir.join(WANT_FILE)).inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })
    }

    fn wanted(&self) -> Option<WalFileName> {
        WalFileName::parse(fs::read_to_string(self.dir.join(WANT_FILE)).ok()?.trim()).ok()
    }

    /// Take the prefetcher's lock; `None` when another process holds it.
    pub fn try_lock(&self) -> io::Result<Option<SpoolLock>> {
        let file = OpenOptions::new().create(true).truncate(false).write(true).open(self.dir.join(LOCK_FILE))?;
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(Some(SpoolLock { _file: file }));
        }
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock {
            Ok(None)
        } else {
            Err(e)
        }
    }

    /// Whether a prefetcher holds the lock now.
    pub fn is_busy(&self) -> bool {
        self.dir.join(LOCK_FILE).exists() && matches!(self.try_lock(), Ok(None))
    }

    /// While a running prefetcher is downloading `name`, wait for it rather than download the
    /// same file a second time; give up when the download makes no progress for `stall`.
    /// Returns whether it waited at all.
    pub fn wait_for_download(&self, name: &WalFileName, stall: Duration) -> bool {
        let tmp = self.tmp_path_of(name);
        let codec_tmp = self.dir.join(format!(".{name}{TMP_SUFFIX}.wal-archiver.tmp"));
        let size = || fs::metadata(&codec_tmp).or_else(|_| fs::metadata(&tmp)).ok().map(|m| m.len());
        if size().is_none() || !self.is_busy() {
            return false;
        }
        let (mut last, mut since) = (size(), Instant::now());
        while let Some(now) = size() {
            if Some(now) != last {
                (last, since) = (Some(now), Instant::now());
            } else if since.elapsed() > stall {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// WAL file names spooled (complete), in name order.
    pub fn spooled(&self) -> Vec<WalFileName> {
        let mut out: Vec<WalFileName> = self.entries().into_iter().filter_map(|n| WalFileName::parse(&n).ok()).collect();
        out.sort();
        out
    }

    fn entries(&self) -> Vec<String> {
        fs::read_dir(&self.dir)
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    }

    /// Delete every WAL file not in `keep`, every served one not in `keep_served` (already
    /// replayed, another timeline, beyond the window), every digest of neither, and every
    /// download leftover not of a name `in_flight`. Only the lock holder may call it:
    /// downloads are in flight only under the lock. Returns how many it removed.
    fn retain(&self, keep: &[WalFileName], keep_served: &[WalFileName], in_flight: &[WalFileName]) -> usize {
        let parse = |s: &str| WalFileName::parse(s).ok();
        let mut removed = 0;
        for entry in self.entries() {
            if entry == LOCK_FILE || entry.starts_with(LOG_FILE) || entry.starts_with(WANT_FILE) {
                continue;
            }
            let kept = if let Some(n) = parse(&entry) {
                keep.contains(&n)
            } else if let Some(n) = entry.strip_suffix(SERVED_SUFFIX).and_then(parse) {
                keep_served.contains(&n)
            } else if let Some(n) = entry.strip_suffix(DIGEST_SUFFIX).and_then(parse) {
                keep.contains(&n) || keep_served.contains(&n) || in_flight.contains(&n)
            } else {
                // `NAME.tmp`, and the codec's `.NAME.tmp.wal-archiver.tmp` inside it.
                entry.trim_start_matches('.').split(TMP_SUFFIX).next().and_then(parse).is_some_and(|n| in_flight.contains(&n))
            };
            if !kept && fs::remove_file(self.dir.join(&entry)).is_ok() {
                removed += 1;
            }
        }
        removed
    }

    /// `archive_command` after promotion: the spool is garbage once recovery is over. Cheap
    /// when there is none (one `stat`). Never while recovering: a standby with
    /// `archive_mode = always` archives during recovery too.
    pub fn remove_after_recovery(&self) -> io::Result<bool> {
        if !self.dir.exists() || self.in_recovery() {
            return Ok(false);
        }
        fs::remove_dir_all(&self.dir).map(|_| true)
    }

    fn log(&self, line: &str) {
        let stamp = chrono::Utc::now().format("%Y-%m-%d %H:%M:%S%.3f UTC");
        if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(self.dir.join(LOG_FILE)) {
            let _ = writeln!(f, "{stamp} [{}] {line}", std::process::id());
        }
    }

    /// The log file for a new prefetcher's stderr, started afresh when it has grown large.
    pub fn open_log(&self) -> io::Result<File> {
        fs::create_dir_all(&self.dir)?;
        let path = self.dir.join(LOG_FILE);
        if fs::metadata(&path).is_ok_and(|m| m.len() > LOG_MAX_BYTES) {
            let _ = fs::rename(&path, self.dir.join(format!("{LOG_FILE}.old")));
        }
        OpenOptions::new().create(true).append(true).open(path)
    }
}

/// How [`Spool::take`] served a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Served {
    /// Spooled by the prefetcher, served for the first time.
    Spooled,
    /// Served before, and again now, from a copy checked against its digest.
    Again,
}

/// `dest`'s temporary sibling for `what`: never a WAL file name.
fn temp_beside(dest: &Path, what: &str) -> PathBuf {
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "wal".into());
    dest.with_file_name(format!(".{name}.{what}{TMP_SUFFIX}"))
}

/// Held by the one prefetcher of a spool; released when dropped (or when the process dies).
pub struct SpoolLock {
    _file: File,
}

/// The `count` segments after `after` on its timeline, in order: what recovery asks for next.
/// Nothing after a file that is not a segment (history files are not prefetched).
pub fn window(after: &WalFileName, count: usize, segment_size: u32) -> Vec<WalFileName> {
    let Some(pos) = after.segment() else { return Vec::new() };
    let first = pos.segno(segment_size) + 1;
    (first..first + count as u64).map(|n| WalFileName::Segment(SegmentPos::from_segno(pos.timeline, n, segment_size))).collect()
}

/// Downloads one WAL file from the repositories (each prefetch thread has its own); returns
/// the SHA-256 of what it wrote, as checked against the repository's.
pub trait Fetcher: Send {
    fn fetch(&mut self, name: &WalFileName, dest: &Path) -> Result<Sha256Digest, FetchError>;
}

impl Fetcher for RepoSet {
    fn fetch(&mut self, name: &WalFileName, dest: &Path) -> Result<Sha256Digest, FetchError> {
        RepoSet::fetch(self, name, dest).map(|f| f.trailer.sha256)
    }
}

/// Why a prefetcher ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Another prefetcher holds the spool.
    Busy,
    /// The window is full and recovery asked for nothing new for a while.
    WindowFull,
    /// A segment is not archived (yet): the end of the archive.
    EndOfArchive(String),
    /// Recovery is over (promoted): the spool was emptied.
    RecoveryOver,
    /// The server stopped (no `postmaster.pid`).
    ServerStopped,
    /// A download failed; `fetch` will do that one itself.
    Error(String),
}

/// The prefetcher: keep the `count` segments after the newest one recovery wants (`from`, or
/// what `want` says when it is newer) spooled, one download per fetcher at a time. There is no
/// batch: a thread that finishes a file picks the first missing one of the window as it is
/// then, so one slow download holds up only itself. With a full window it waits up to `linger`
/// for recovery to ask for more. Disk use: the window's `count` files, and for a moment the
/// downloads in flight that recovery overtook (deleted at the next pick).
pub fn run<F: Fetcher>(spool: &Spool, from: &WalFileName, count: usize, segment_size: u32, linger: Duration, fetchers: Vec<F>) -> io::Result<Ended> {
    // `fetch` probes the lock for an instant (`is_busy`): a few tries tell that from a
    // prefetcher holding it.
    let mut lock = None;
    for _ in 0..5 {
        lock = spool.try_lock()?;
        if lock.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let Some(_lock) = lock else { return Ok(Ended::Busy) };
    let state = Mutex::new(Window { base: from.clone(), in_flight: Vec::new(), seen: Vec::new(), fetched: 0, ended: None });
    let fetchers: Vec<Mutex<F>> = fetchers.into_iter().map(Mutex::new).collect();
    let work = |t: usize| {
        let mut fetcher = fetchers[t].lock().unwrap_or_else(|p| p.into_inner());
        while let Some(name) = next_to_fetch(spool, &state, count, segment_size, linger) {
            let started = Instant::now();
            let outcome = spool_one(spool, &name, &mut *fetcher);
            let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
            st.in_flight.retain(|n| *n != name);
            match outcome {
                Ok(()) => {
                    st.fetched += 1;
                    st.seen.push(name.clone());
                    spool.log(&format!("prefetched {name} in {} ms", started.elapsed().as_millis()));
                }
                Err(FetchError::NotFound(_)) => {
                    st.ended.get_or_insert(Ended::EndOfArchive(name.to_string()));
                }
                Err(e) => {
                    st.ended.get_or_insert(Ended::Error(format!("{name}: {}", report(&e))));
                }
            }
        }
    };
    std::thread::scope(|scope| {
        for handle in crate::threads::spawn_blocking_signals(scope, fetchers.len().max(1), &work) {
            let _ = handle.join();
        }
    });
    let st = state.into_inner().unwrap_or_else(|p| p.into_inner());
    let ended = st.ended.unwrap_or(Ended::WindowFull);
    if ended == Ended::RecoveryOver {
        spool.retain(&[], &[], &[]);
    }
    spool.log(&format!("prefetcher ends after {} file(s): {ended:?}", st.fetched));
    Ok(ended)
}

/// What the prefetcher's threads share.
struct Window {
    /// The newest segment recovery asked for: the window is the `count` after it.
    base: WalFileName,
    in_flight: Vec<WalFileName>,
    /// Window names seen complete in the spool: one missing now was served (taken by `fetch`)
    /// before `want` said so, and must not be downloaded again.
    seen: Vec<WalFileName>,
    fetched: usize,
    /// Set once: every thread stops picking.
    ended: Option<Ended>,
}

/// The next segment for a thread to download, or `None` when the prefetcher is done.
fn next_to_fetch(spool: &Spool, state: &Mutex<Window>, count: usize, segment_size: u32, linger: Duration) -> Option<WalFileName> {
    loop {
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        if st.ended.is_some() {
            return None;
        }
        if !spool.in_recovery() {
            st.ended = Some(Ended::RecoveryOver);
            return None;
        }
        if !spool.pgdata.join("postmaster.pid").exists() {
            st.ended = Some(Ended::ServerStopped);
            return None;
        }
        // Names order by (timeline, segment): a newer timeline (recovery followed a switch) or
        // a later segment moves the window.
        if let Some(w) = spool.wanted().filter(|w| w.segment().is_some() && *w > st.base) {
            st.base = w;
        }
        let window = window(&st.base, count, segment_size);
        // `fetch` names the segment in `want` just before it takes it from the spool: keep it.
        let keep: Vec<WalFileName> = window.iter().chain([&st.base]).cloned().collect();
        // Served copies: of where recovery is, and of the segment before (asked again after
        // the first "not archived").
        let keep_served: Vec<WalFileName> = [Some(st.base.clone()), previous_segment(&st.base, segment_size)].into_iter().flatten().collect();
        spool.retain(&keep, &keep_served, &st.in_flight);
        let have = spool.spooled();
        st.seen.retain(|n| window.contains(n));
        for n in have.iter().filter(|n| window.contains(n)) {
            if !st.seen.contains(n) {
                st.seen.push(n.clone());
            }
        }
        if let Some(name) = window.into_iter().find(|n| !st.seen.contains(n) && !st.in_flight.contains(n)) {
            st.in_flight.push(name.clone());
            return Some(name);
        }
        let (base, idle) = (st.base.clone(), st.in_flight.is_empty());
        drop(st);
        if !idle {
            // Others are still downloading: their outcome may end it, or recovery moves on.
            std::thread::sleep(Duration::from_millis(20));
        } else if !wait_for_want(spool, &base, linger) {
            state.lock().unwrap_or_else(|p| p.into_inner()).ended.get_or_insert(Ended::WindowFull);
            return None;
        }
    }
}

/// Wait up to `linger` for recovery to ask for a segment after `base`.
fn wait_for_want(spool: &Spool, base: &WalFileName, linger: Duration) -> bool {
    let until = Instant::now() + linger;
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
        if spool.wanted().is_some_and(|w| w > *base) {
            return true;
        }
        if !spool.in_recovery() {
            return true; // the loop ends it
        }
    }
    false
}

/// Fetch `name` into `NAME.tmp`, sync it, note its digest, and only then give it its name.
fn spool_one(spool: &Spool, name: &WalFileName, fetcher: &mut dyn Fetcher) -> Result<(), FetchError> {
    let tmp = spool.tmp_path_of(name);
    let write_err = |path: &Path, cause: io::Error| FetchError::Write { path: path.display().to_string(), cause };
    let result = fetcher.fetch(name, &tmp).and_then(|digest| {
        File::open(&tmp).and_then(|f| f.sync_all()).map_err(|e| write_err(&tmp, e))?;
        // Not synced: a digest lost or torn in a crash only means no second serving.
        let digest_path = spool.digest_path_of(name);
        fs::write(&digest_path, digest.to_string()).map_err(|e| write_err(&digest_path, e))?;
        fs::rename(&tmp, spool.path_of(name)).map_err(|e| write_err(&tmp, e))?;
        File::open(&spool.dir).and_then(|d| d.sync_all()).map_err(|e| write_err(&spool.dir, e))
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        let _ = fs::remove_file(spool.digest_path_of(name));
    }
    result
}

/// The segment before `name` on its timeline, if any.
fn previous_segment(name: &WalFileName, segment_size: u32) -> Option<WalFileName> {
    let pos = name.segment()?;
    let segno = pos.segno(segment_size).checked_sub(1)?;
    Some(WalFileName::Segment(SegmentPos::from_segno(pos.timeline, segno, segment_size)))
}

/// Start `exe args` as a detached process: its own session, stdin and stdout on `/dev/null`,
/// stderr to `log`, and no other inherited descriptor, so that whoever waits for the caller
/// (PostgreSQL waits for `restore_command`; a harness may read the server's output pipe) does
/// not wait for it. The child is not waited for: when the caller exits, init reaps it.
pub fn spawn_detached(exe: &Path, args: &[std::ffi::OsString], log: File) -> io::Result<u32> {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(args).stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(log);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            // Descriptors the server leaked to restore_command (not close-on-exec) end at exec.
            const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
            if libc::syscall(libc::SYS_close_range, 3 as libc::c_uint, libc::c_uint::MAX, CLOSE_RANGE_CLOEXEC) != 0 {
                for fd in 3..4096 {
                    let flags = libc::fcntl(fd, libc::F_GETFD);
                    if flags >= 0 {
                        libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
                    }
                }
            }
            // The server runs restore_command with some signals blocked or ignored; the
            // prefetcher should die of SIGTERM like any process.
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGQUIT, libc::SIGHUP] {
                libc::signal(sig, libc::SIG_DFL);
            }
            // Below the server's priority: replay (one process) is what recovery waits for,
            // and the prefetcher only has to stay ahead of it, which it does with the CPU
            // replay leaves; at equal priority its decoding took CPU from replay.
            libc::setpriority(libc::PRIO_PROCESS, 0, PREFETCH_NICE);
            Ok(())
        });
    }
    cmd.spawn().map(|child| child.id())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::wal::TimelineId;

    const SEG: u32 = 16 << 20;
    const L: Duration = Duration::from_millis(50);

    fn name(s: &str) -> WalFileName {
        WalFileName::parse(s).unwrap()
    }

    /// A data directory with pg_control naming system `sysid`, a spool, and recovery.signal.
    fn pgdata(sysid: u64) -> (tempfile::TempDir, Spool) {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        fs::create_dir_all(data.join("global")).unwrap();
        fs::create_dir_all(data.join("pg_wal")).unwrap();
        fs::write(data.join("PG_VERSION"), "15\n").unwrap();
        let mut control = sysid.to_ne_bytes().to_vec();
        control.extend_from_slice(&[0u8; 8]);
        fs::write(data.join("global/pg_control"), control).unwrap();
        fs::write(data.join("recovery.signal"), "").unwrap();
        fs::write(data.join("postmaster.pid"), "1\n").unwrap();
        let spool = Spool::for_pgdata(&data);
        fs::create_dir_all(spool.dir()).unwrap();
        (dir, spool)
    }

    /// A segment `name` of system `sysid`: long header, the rest zeros, `len` bytes.
    fn segment_bytes(name: &WalFileName, sysid: u64, len: usize) -> Vec<u8> {
        let pos = name.segment().unwrap();
        let mut b = vec![0u8; len];
        b[0..2].copy_from_slice(&0xD110u16.to_ne_bytes());
        b[2..4].copy_from_slice(&2u16.to_ne_bytes());
        b[4..8].copy_from_slice(&pos.timeline.0.to_ne_bytes());
        b[8..16].copy_from_slice(&(pos.segno(SEG) * u64::from(SEG)).to_ne_bytes());
        b[24..32].copy_from_slice(&sysid.to_ne_bytes());
        b[32..36].copy_from_slice(&SEG.to_ne_bytes());
        b[36..40].copy_from_slice(&8192u32.to_ne_bytes());
        b
    }

    /// An archive in memory: the names it holds, and the names it was asked for.
    #[derive(Clone)]
    struct FakeArchive {
        sysid: u64,
        last: u64,
        asked: std::sync::Arc<Mutex<Vec<String>>>,
        fail: Option<u64>,
    }

    impl Fetcher for FakeArchive {
        fn fetch(&mut self, name: &WalFileName, dest: &Path) -> Result<Sha256Digest, FetchError> {
            self.asked.lock().unwrap().push(name.to_string());
            let segno = name.segment().unwrap().segno(SEG);
            if Some(segno) == self.fail {
                return Err(FetchError::Write { path: "x".into(), cause: io::Error::other("injected") });
            }
            if segno > self.last {
                return Err(FetchError::NotFound(name.to_string()));
            }
            let bytes = segment_bytes(name, self.sysid, SEG as usize);
            fs::write(dest, &bytes).unwrap();
            Ok(Sha256Digest(Sha256::digest(&bytes).into()))
        }
    }

    fn archive(sysid: u64, last: u64) -> FakeArchive {
        FakeArchive { sysid, last, asked: Default::default(), fail: None }
    }

    #[test]
    fn spool_lives_in_pg_wal_of_the_data_directory_of_dest() {
        let (_d, spool) = pgdata(7);
        let dest = spool.pgdata().join("pg_wal/RECOVERYXLOG");
        let found = Spool::for_restore_dest(&dest).unwrap();
        assert_eq!(found.dir(), spool.pgdata().join("pg_wal").join(SPOOL_DIR));
        // restore_command's cwd is the data directory and %p is relative.
        let relative = Spool::for_restore_dest_in(Path::new("pg_wal/RECOVERYXLOG"), spool.pgdata()).unwrap();
        assert_eq!(relative.pgdata(), spool.pgdata());
        assert_eq!(relative.pgdata().to_str().unwrap(), spool.pgdata().to_str().unwrap(), "no trailing '/' or '.'");
        assert_eq!(spool.path_of(&name("000000010000000000000003")), spool.dir().join("000000010000000000000003"));
        // Not a data directory's pg_wal: no spool (a hand-run fetch into /tmp).
        assert!(Spool::for_restore_dest(&spool.pgdata().join("RECOVERYXLOG")).is_none());
        assert!(Spool::for_restore_dest(Path::new("/tmp/pg_wal/x")).is_none());
        // The temporary name of a download never parses as a WAL file name.
        let tmp = spool.tmp_path_of(&name("000000010000000000000003"));
        assert!(WalFileName::parse(tmp.file_name().unwrap().to_str().unwrap()).is_err());
    }

    #[test]
    fn window_is_the_next_segments_on_the_same_timeline() {
        let w = window(&name("0000000200000000000000FE"), 3, SEG);
        let names: Vec<String> = w.iter().map(|n| n.to_string()).collect();
        // …FF is an ordinary segment, and the window crosses into the next xlogid.
        assert_eq!(names, ["0000000200000000000000FF", "000000020000000100000000", "000000020000000100000001"]);
        assert!(w.iter().all(|n| n.timeline() == TimelineId(2)));
        assert!(window(&name("00000002.history"), 8, SEG).is_empty());
        assert!(window(&name("000000010000000000000001"), 0, SEG).is_empty());
        // 1 GB segments: 4 per xlogid.
        let big = window(&name("000000010000000000000003"), 1, 1 << 30);
        assert_eq!(big[0].to_string(), "000000010000000100000000");
    }

    #[test]
    fn take_serves_complete_checked_files_only() {
        let (_d, spool) = pgdata(7);
        let dest = spool.pgdata().join("pg_wal/RECOVERYXLOG");
        let n = name("000000010000000000000005");
        assert_eq!(spool.take(&n, &dest), Ok(None), "nothing spooled");
        // A download in flight is not served.
        fs::write(spool.tmp_path_of(&n), segment_bytes(&n, 7, SEG as usize)).unwrap();
        assert_eq!(spool.take(&n, &dest), Ok(None));
        // A complete file without a digest is moved into place, and cannot be served again.
        fs::write(spool.path_of(&n), segment_bytes(&n, 7, SEG as usize)).unwrap();
        assert_eq!(spool.take(&n, &dest), Ok(Some(Served::Spooled)));
        assert!(!spool.path_of(&n).exists());
        assert_eq!(spool.take(&n, &dest), Ok(None));
        assert_eq!(fs::metadata(&dest).unwrap().len(), u64::from(SEG));
        // Truncated, another cluster's, or under the wrong name: discarded, never served.
        for (bytes, why) in [
            (segment_bytes(&n, 7, 1 << 20), "bytes"),
            (segment_bytes(&n, 8, SEG as usize), "database system"),
            (segment_bytes(&name("000000010000000000000006"), 7, SEG as usize), "name"),
            (vec![0u8; 10], "shorter"),
        ] {
            fs::write(spool.path_of(&n), bytes).unwrap();
            let e = spool.take(&n, &dest).unwrap_err();
            assert!(e.contains(why), "{e}");
            assert!(!spool.path_of(&n).exists(), "{why}: a bad file stays spooled");
        }
    }

    #[test]
    fn a_served_segment_is_served_again_only_as_it_was() {
        let (_d, spool) = pgdata(7);
        let dest = spool.pgdata().join("pg_wal/RECOVERYXLOG");
        let n = name("000000010000000000000005");
        let bytes = segment_bytes(&n, 7, SEG as usize);
        fs::write(spool.path_of(&n), &bytes).unwrap();
        fs::write(spool.digest_path_of(&n), Sha256Digest(Sha256::digest(&bytes).into()).to_string()).unwrap();
        assert_eq!(spool.take(&n, &dest), Ok(Some(Served::Spooled)));
        assert!(!spool.path_of(&n).exists(), "no longer spooled as new");
        // PostgreSQL renames what it was given into pg_wal under its own name.
        let kept = spool.pgdata().join("pg_wal").join(n.to_string());
        fs::rename(&dest, &kept).unwrap();
        assert_eq!(spool.take(&n, &dest), Ok(Some(Served::Again)));
        assert_eq!(fs::read(&dest).unwrap(), bytes);
        // As PostgreSQL does: its old copy unlinked first (a rename between two links of one
        // file does nothing).
        fs::remove_file(&kept).unwrap();
        fs::rename(&dest, &kept).unwrap();
        // PostgreSQL recycles its file and writes other WAL into it: the served link sees the
        // change, and the spool refuses to serve it again.
        let mut f = OpenOptions::new().write(true).open(&kept).unwrap();
        f.write_all(&segment_bytes(&name("000000010000000000000009"), 7, 8192)).unwrap();
        drop(f);
        let e = spool.take(&n, &dest).unwrap_err();
        assert!(e.contains("rewritten since it was served"), "{e}");
        assert!(!spool.served_path_of(&n).exists());
        assert_eq!(spool.take(&n, &dest), Ok(None));
        assert!(!dest.exists(), "nothing put in place by the refusal");
    }

    #[test]
    fn prefetcher_fills_the_window_and_removes_what_was_replayed() {
        let (_d, spool) = pgdata(7);
        // Leftovers: replayed segments, another timeline, a dead download, a stray codec temp.
        for old in ["000000010000000000000002", "000000010000000000000003", "000000020000000000000005"] {
            fs::write(spool.dir().join(old), b"old").unwrap();
        }
        fs::write(spool.dir().join("000000010000000000000005.tmp"), b"partial").unwrap();
        fs::write(spool.dir().join(".000000010000000000000005.tmp.wal-archiver.tmp"), b"partial").unwrap();
        let fake = archive(7, 100);
        let ended = run(&spool, &name("000000010000000000000003"), 4, SEG, L, vec![fake.clone(), fake.clone()]).unwrap();
        assert_eq!(ended, Ended::WindowFull);
        let have: Vec<String> = spool.spooled().iter().map(|n| n.to_string()).collect();
        // 3 is where recovery is (`fetch` is about to take it): kept, not fetched.
        assert_eq!(have, ["000000010000000000000003", "000000010000000000000004", "000000010000000000000005", "000000010000000000000006", "000000010000000000000007"]);
        let mut left: Vec<String> = spool.entries();
        left.sort();
        assert_eq!(left.iter().filter(|e| e.contains("tmp")).count(), 0, "temporaries left: {left:?}");
        assert_eq!(fake.asked.lock().unwrap().len(), 4);
        assert!(spool.digest_of(&name("000000010000000000000007")).is_some(), "spooled with its digest");

        // Recovery moved on: the window moves with `want`; replayed files go, only new ones are fetched.
        spool.want(&name("000000010000000000000005")).unwrap();
        fake.asked.lock().unwrap().clear();
        run(&spool, &name("000000010000000000000003"), 4, SEG, L, vec![fake.clone()]).unwrap();
        let have: Vec<String> = spool.spooled().iter().map(|n| n.to_string()).collect();
        assert_eq!(have, ["000000010000000000000005", "000000010000000000000006", "000000010000000000000007", "000000010000000000000008", "000000010000000000000009"]);
        assert_eq!(*fake.asked.lock().unwrap(), ["000000010000000000000008", "000000010000000000000009"]);
        // Recovery took 5 and 6 (6 before `want` said so): served copies of the newest two stay.
        for n in ["000000010000000000000005", "000000010000000000000006"] {
            assert_eq!(spool.take(&name(n), &spool.pgdata().join("pg_wal/RECOVERYXLOG")), Ok(Some(Served::Spooled)));
        }
        spool.want(&name("000000010000000000000006")).unwrap();
        run(&spool, &name("000000010000000000000003"), 4, SEG, L, vec![fake.clone()]).unwrap();
        let mut served: Vec<String> = spool.entries().into_iter().filter(|e| e.ends_with(SERVED_SUFFIX) || e.ends_with(DIGEST_SUFFIX)).collect();
        served.sort();
        assert_eq!(served.iter().filter(|e| e.ends_with(SERVED_SUFFIX)).count(), 2, "{served:?}");
        assert!(served.contains(&"000000010000000000000005.sha256".to_string()) && served.contains(&"00000001000000000000000A.sha256".to_string()), "{served:?}");

        // Recovery followed a timeline switch: the window moves to the new timeline, and
        // nothing of the old one stays.
        spool.want(&name("000000020000000000000007")).unwrap();
        run(&spool, &name("000000010000000000000005"), 2, SEG, L, vec![fake.clone()]).unwrap();
        let have: Vec<String> = spool.spooled().iter().map(|n| n.to_string()).collect();
        assert_eq!(have, ["000000020000000000000008", "000000020000000000000009"]);
    }

    #[test]
    fn cleanup_spares_downloads_in_flight_and_the_bookkeeping() {
        let (_d, spool) = pgdata(7);
        let (flying, dead) = (name("000000010000000000000009"), name("00000001000000000000000A"));
        let files = [
            "000000010000000000000009.tmp",
            ".000000010000000000000009.tmp.wal-archiver.tmp",
            "00000001000000000000000A.tmp",
            ".00000001000000000000000A.tmp.wal-archiver.tmp",
            "000000010000000000000004",
            "lock",
            "want",
            "prefetch.log",
            "prefetch.log.old",
            "stray",
            "000000010000000000000009.sha256",
            "000000010000000000000003.served",
            "000000010000000000000003.sha256",
            "000000010000000000000002.served",
            "000000010000000000000002.sha256",
        ];
        for f in files {
            fs::write(spool.dir().join(f), b"x").unwrap();
        }
        assert_eq!(spool.retain(&[], &[name("000000010000000000000003")], &[flying]), 6);
        let mut left = spool.entries();
        left.sort();
        assert_eq!(
            left,
            [
                ".000000010000000000000009.tmp.wal-archiver.tmp",
                "000000010000000000000003.served",
                "000000010000000000000003.sha256",
                "000000010000000000000009.sha256",
                "000000010000000000000009.tmp",
                "lock",
                "prefetch.log",
                "prefetch.log.old",
                "want"
            ]
        );
        assert!(!spool.dir().join(format!("{dead}.tmp")).exists());
    }

    #[test]
    fn prefetcher_stops_at_the_end_of_the_archive_and_on_errors() {
        let (_d, spool) = pgdata(7);
        let fake = archive(7, 5);
        let ended = run(&spool, &name("000000010000000000000003"), 8, SEG, L, vec![fake.clone()]).unwrap();
        assert_eq!(ended, Ended::EndOfArchive("000000010000000000000006".into()));
        assert_eq!(spool.spooled().len(), 2, "{:?}", spool.spooled());
        assert_eq!(fake.asked.lock().unwrap().len(), 3, "asks nothing after the first missing file");

        let failing = FakeArchive { fail: Some(5), ..archive(7, 100) };
        let (_d2, spool) = pgdata(7);
        let ended = run(&spool, &name("000000010000000000000003"), 8, SEG, L, vec![failing]).unwrap();
        assert!(matches!(ended, Ended::Error(ref e) if e.contains("injected")), "{ended:?}");
        assert_eq!(spool.spooled(), [name("000000010000000000000004")]);
        assert!(!spool.tmp_path_of(&name("000000010000000000000005")).exists());
    }

    #[test]
    fn one_prefetcher_per_spool_and_none_after_recovery() {
        let (_d, spool) = pgdata(7);
        let held = spool.try_lock().unwrap().expect("free");
        assert!(spool.is_busy());
        assert_eq!(run(&spool, &name("000000010000000000000003"), 4, SEG, L, vec![archive(7, 100)]).unwrap(), Ended::Busy);
        drop(held);
        assert!(!spool.is_busy());

        // Promoted: the prefetcher empties the spool, and push removes it (not before).
        fs::write(spool.path_of(&name("000000010000000000000004")), b"x").unwrap();
        assert!(!spool.remove_after_recovery().unwrap(), "removed while recovering");
        fs::remove_file(spool.pgdata().join("recovery.signal")).unwrap();
        assert_eq!(run(&spool, &name("000000010000000000000003"), 4, SEG, L, vec![archive(7, 100)]).unwrap(), Ended::RecoveryOver);
        assert!(spool.spooled().is_empty());
        assert!(spool.remove_after_recovery().unwrap());
        assert!(!spool.dir().exists());
        assert!(!spool.remove_after_recovery().unwrap(), "nothing to remove is not an error");
    }
}
