//! Several repositories for one cluster: WAL pushed into all of them, fetched from the first
//! that has it, best-effort repositories caught up after an outage.
//!
//! The configuration lists repositories primary first ([`Config::repositories`]). Every one
//! belongs to the same cluster (checked on open) and shares the key ring and codec settings,
//! so a WAL file is read and encoded once and the same bytes go to every repository, in
//! parallel.
//!
//! **When a push succeeds.** `archive_command` may report success only once the file is safe
//! where it is needed: in every [`WalArchiving::Required`] repository. A required repository
//! that is down fails the push; PostgreSQL keeps the segment in `pg_wal` and retries, so nothing
//! is lost, but `pg_wal` grows for as long as the outage lasts. A repository marked
//! `archive = "best_effort"` does not hold the push back: what it could not take is noted in the
//! primary repository (`owed/<repository>/<file>`, see [`super::archive::owed_key`]), retention
//! keeps those files in the primary, and every later push that reaches the repository again
//! copies up to [`CATCH_UP_PER_PUSH`] owed files over (`wal-archiver catch-up` copies them all).
//! The primary repository cannot be best-effort: it is where owed files wait.
//!
//! **Fetching.** Repositories are asked in order (local first, as configured); "not there" moves
//! to the next one, and so does an error. A file is reported missing (exit 1: recovery ends
//! there) only when every repository that answered said "not there" and every one that could
//! not be asked is best-effort: a best-effort repository may lag behind, never lead, so it
//! cannot hold what the required ones lack. An error from a required repository is a failure
//! (recovery is aborted rather than ended early at the wrong point).

use std::path::Path;
use std::time::{Duration, Instant};

use super::archive::{owed_key, FetchError, Prepared, PushError, PushOutcome, RepoFailure, OWED_PREFIX};
use super::wal::WalFileName;
use super::{PgRepo, PgRepoError};
use crate::config::{Config, RepoConfig, WalArchiving};
use crate::error::report;
use crate::codec::EncodeParams;
use crate::keys::KeyRing;
use crate::repo::{RepoError, Repository};
use crate::storage::PutMode;

/// Owed files a push copies to a repository that is reachable again, at most: catching up
/// must not stall archiving for long.
pub const CATCH_UP_PER_PUSH: usize = 16;

/// One configured repository, opened when first needed and reopened after a failure.
pub struct Member {
    pub config: RepoConfig,
    repo: Option<PgRepo>,
}

pub struct RepoSet {
    config: Config,
    members: Vec<Member>,
    codec_threads: usize,
    /// The configuration's key ring, read on first need, for every member.
    keys: Option<Option<KeyRing>>,
}

/// What a push did beyond storing the file.
#[derive(Debug)]
pub struct PushReport {
    /// What the primary repository answered.
    pub outcome: PushOutcome,
    /// Best-effort repositories that could not take the file: noted as owed.
    pub owed: Vec<RepoFailure>,
    /// Owed files copied to repositories that are reachable again.
    pub caught_up: usize,
}

/// What catching up one repository did.
#[derive(Debug, Default, serde::Serialize)]
pub struct CatchUp {
    pub repo: String,
    pub copied: usize,
    /// Owed files still waiting (the budget ran out, or the repository failed).
    pub remaining: usize,
    /// Notes for files the primary no longer holds (deleted by hand): dropped, named here.
    pub dropped: Vec<String>,
    pub error: Option<String>,
}

impl RepoSet {
    /// Every repository of `config`, none opened yet.
    pub fn new(config: &Config) -> Result<RepoSet, PgRepoError> {
        let members: Vec<Member> = config.repositories().into_iter().map(|config| Member { config, repo: None }).collect();
        if members.is_empty() {
            return Err(RepoError::from(crate::config::ConfigError::NoRepository).into());
        }
        Ok(RepoSet { config: config.clone(), members, codec_threads: 1, keys: None })
    }

    /// Only repository `name` (`--repo`): a restore from it fetches its WAL there only.
    pub fn only(config: &Config, name: &str) -> Result<RepoSet, PgRepoError> {
        let member = Member { config: config.repo_named(name).map_err(RepoError::from)?, repo: None };
        Ok(RepoSet { config: config.clone(), members: vec![member], codec_threads: 1, keys: None })
    }

    /// As `archive_command` and `archive_library` use them: they run in the data directory, so
    /// a repository inside it is refused; and they handle one segment at a time, so its
    /// compression is spread over the cores.
    pub fn for_archiving(config: &Config) -> Result<RepoSet, PgRepoError> {
        let mut set = RepoSet::new(config)?;
        if let Ok(cwd) = std::env::current_dir() {
            if cwd.join("PG_VERSION").is_file() {
                for m in &set.members {
                    crate::config::refuse_repo_inside_pgdata(&m.config.location, &cwd).map_err(RepoError::from)?;
                }
            }
        }
        set.codec_threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(4);
        Ok(set)
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Member `i`, opened if it is not yet, and checked to belong to the primary's cluster.
    pub fn open(&mut self, i: usize) -> Result<&PgRepo, PgRepoError> {
        if self.members[i].repo.is_none() {
            self.key_ring()?;
            let repo = self.open_fresh(i)?;
            if i > 0 {
                same_cluster(&repo, self.open(0)?)?;
            }
            self.members[i].repo = Some(repo);
        }
        Ok(self.members[i].repo.as_ref().expect("opened above"))
    }

    /// The configuration's key ring, read once for all members.
    fn key_ring(&mut self) -> Result<Option<&KeyRing>, PgRepoError> {
        if self.keys.is_none() {
            self.keys = Some(Repository::keys_for(&self.config)?);
        }
        Ok(self.keys.as_ref().and_then(Option::as_ref))
    }

    /// Open member `i` with the key ring ([`RepoSet::key_ring`] has read it).
    fn open_fresh(&self, i: usize) -> Result<PgRepo, PgRepoError> {
        let keys = self.keys.as_ref().expect("the key ring is read before a member is opened").clone();
        let mut repo = PgRepo::from_repository(Repository::open_keyed(&self.config, &self.members[i].config, keys)?)?;
        repo.objects_mut().set_codec_threads(self.codec_threads);
        Ok(repo)
    }

    /// Forget an opened repository (after a failure: the next use opens it afresh).
    fn forget(&mut self, i: usize) {
        self.members[i].repo = None;
    }

    /// `archive_command`: store the WAL file at `path` in every repository; see the module
    /// docs for when that counts as success.
    pub fn push(&mut self, path: &Path) -> Result<PushReport, PushError> {
        self.key_ring()?;
        let key = self.keys.as_ref().and_then(Option::as_ref).map(KeyRing::newest);
        let params = EncodeParams { compression: self.config.compression(), key, threads: self.codec_threads };
        // The file is read and encoded while the repositories not open yet are opened, in
        // parallel: for `archive_command` (a process per file) each is a round trip to its
        // store, as long as reading the file.
        let closed: Vec<usize> = (0..self.members.len()).filter(|i| self.members[*i].repo.is_none()).collect();
        let open_closed = |_: usize| parallel(closed.len(), |k| self.open_fresh(closed[k]));
        let (prepared, opened) = std::thread::scope(|scope| {
            let opener = (!closed.is_empty()).then(|| crate::threads::spawn_blocking_signals(scope, 1, &open_closed).pop().expect("one thread"));
            let prepared = Prepared::encode(path, params);
            (prepared, opener.map(|h| h.join().expect("repository thread panicked")).unwrap_or_default())
        });
        let mut open_errors: Vec<Option<PgRepoError>> = (0..self.members.len()).map(|_| None).collect();
        for (k, result) in opened.into_iter().enumerate() {
            match result {
                Ok(repo) => self.members[closed[k]].repo = Some(repo),
                Err(e) => open_errors[closed[k]] = Some(e),
            }
        }
        if self.members.len() == 1 {
            if let Some(e) = open_errors[0].take() {
                return Err(e.into());
            }
            let outcome = prepared.and_then(|p| self.members[0].repo.as_ref().expect("opened").wal().push_prepared(&p));
            if outcome.is_err() {
                self.forget(0);
            }
            return Ok(PushReport { outcome: outcome?, owed: Vec::new(), caught_up: 0 });
        }
        let mut open_errors: Vec<Option<String>> = open_errors.iter().map(|e| e.as_ref().map(|e| report(e))).collect();
        let Some(primary) = self.members[0].repo.as_ref() else {
            let error = open_errors[0].take().unwrap_or_default();
            return Err(PushError::Repositories { failures: vec![RepoFailure { repo: self.members[0].config.name.clone(), error }] });
        };
        let foreign: Vec<(usize, PgRepoError)> = (1..self.members.len())
            .filter_map(|i| self.members[i].repo.as_ref().and_then(|r| same_cluster(r, primary).err()).map(|e| (i, e)))
            .collect();
        for (i, e) in foreign {
            open_errors[i] = Some(report(&e));
            self.forget(i);
        }
        let prepared = prepared?;
        let members = &self.members;
        let results = parallel(members.len(), |i| members[i].repo.as_ref().map(|r| r.wal().push_prepared(&prepared)));

        let (mut fatal, mut owed, mut outcome) = (Vec::new(), Vec::new(), None);
        for (i, result) in results.into_iter().enumerate() {
            let m = &self.members[i];
            let error = match result {
                Some(Ok(o)) => {
                    if i == 0 {
                        outcome = Some(o);
                    }
                    continue;
                }
                // Different content under the same name is never "best effort": stop and say so.
                Some(Err(e @ PushError::Conflict { .. })) => {
                    fatal.push(RepoFailure { repo: m.config.name.clone(), error: report(&e) });
                    continue;
                }
                Some(Err(e)) => report(&e),
                None => open_errors[i].take().unwrap_or_default(),
            };
            let failure = RepoFailure { repo: m.config.name.clone(), error };
            match m.config.wal {
                WalArchiving::Required => fatal.push(failure),
                WalArchiving::BestEffort => owed.push((i, failure)),
            }
        }
        for (i, f) in &owed {
            self.forget(*i);
            if let Err(e) = self.note_owed(&f.repo, &prepared.name, &f.error) {
                fatal.push(RepoFailure { repo: f.repo.clone(), error: format!("{}; and the note that it is owed could not be written to the primary repository: {}", f.error, report(&e)) });
            }
        }
        if !fatal.is_empty() {
            for f in &fatal {
                if let Some(i) = self.members.iter().position(|m| m.config.name == f.repo) {
                    self.forget(i);
                }
            }
            return Err(PushError::Repositories { failures: fatal });
        }
        // Best-effort repositories that took this file are reachable: pay some of what they are owed.
        let mut caught_up = 0;
        let reachable: Vec<usize> = (1..self.members.len())
            .filter(|i| self.members[*i].config.wal == WalArchiving::BestEffort && !owed.iter().any(|(o, _)| o == i))
            .collect();
        for i in reachable {
            let c = self.catch_up(i, CATCH_UP_PER_PUSH);
            if let Some(e) = &c.error {
                eprintln!("wal-archiver: WARNING: catching up repository {}: {e}", c.repo);
            }
            caught_up += c.copied;
        }
        Ok(PushReport { outcome: outcome.expect("the primary succeeded"), owed: owed.into_iter().map(|(_, f)| f).collect(), caught_up })
    }

    fn note_owed(&self, repo: &str, name: &WalFileName, error: &str) -> Result<(), PgRepoError> {
        let primary = self.members[0].repo.as_ref().expect("the primary is open");
        let note = serde_json::json!({ "since": chrono::Utc::now(), "error": error });
        primary.objects().put_object(&owed_key(repo, name), &mut note.to_string().as_bytes(), PutMode::Overwrite)?;
        Ok(())
    }

    /// Copy up to `limit` files owed to best-effort member `i` from the primary, oldest first.
    pub fn catch_up(&mut self, i: usize, limit: usize) -> CatchUp {
        let mut out = CatchUp { repo: self.members[i].config.name.clone(), ..CatchUp::default() };
        for member in [0, i] {
            if let Err(e) = self.open(member) {
                out.error = Some(report(&e));
                return out;
            }
        }
        let (primary, target) = (self.members[0].repo.as_ref().expect("open"), self.members[i].repo.as_ref().expect("open"));
        let (from, ctx) = (primary.objects().storage(), primary.objects().ctx());
        let prefix = format!("{OWED_PREFIX}{}/", out.repo);
        let notes = match from.list_all(&ctx, &prefix) {
            Ok(n) => n,
            Err(e) => {
                out.error = Some(report(&e));
                return out;
            }
        };
        let mut names: Vec<(WalFileName, String)> =
            notes.into_iter().filter_map(|n| WalFileName::parse(n.key.trim_start_matches(&prefix)).ok().map(|w| (w, n.key))).collect();
        // Timeline history first (recovery needs it to follow a timeline), then in WAL order.
        names.sort_by_key(|(w, _)| (!matches!(w, WalFileName::History(_)), w.to_string()));
        out.remaining = names.len();
        let started = Instant::now();
        for (name, note) in names.into_iter().take(limit) {
            match copy_wal(primary, target, &name) {
                Ok(true) => out.copied += 1,
                Ok(false) => out.dropped.push(name.to_string()),
                Err(e) => {
                    out.error = Some(format!("{name}: {}", report(&e)));
                    break;
                }
            }
            if let Err(e) = from.delete(&ctx, &note) {
                out.error = Some(format!("{name} copied, but its note could not be removed: {}", report(&e)));
                break;
            }
            out.remaining -= 1;
            if started.elapsed() > Duration::from_secs(60) && limit <= CATCH_UP_PER_PUSH {
                break;
            }
        }
        if out.error.is_some() {
            self.forget(i);
        }
        out
    }

    /// Catch up every best-effort repository completely (`wal-archiver catch-up`).
    pub fn catch_up_all(&mut self) -> Vec<CatchUp> {
        let best_effort: Vec<usize> = (1..self.members.len()).filter(|i| self.members[*i].config.wal == WalArchiving::BestEffort).collect();
        best_effort.into_iter().map(|i| self.catch_up(i, usize::MAX)).collect()
    }

    /// `restore_command`: write WAL file `name` to `dest` from the first repository that has
    /// it; see the module docs for when it counts as missing.
    pub fn fetch(&mut self, name: &WalFileName, dest: &Path) -> Result<Fetched, FetchError> {
        let mut required_failure = None;
        let mut unasked = Vec::new();
        for i in 0..self.members.len() {
            let result = self.open(i).map_err(FetchError::from).and_then(|repo| repo.wal().fetch(name, dest));
            let m = &self.members[i].config;
            match result {
                Ok(trailer) => return Ok(Fetched { repo: m.name.clone(), trailer }),
                Err(FetchError::NotFound(_)) => {}
                Err(e) => {
                    let what = format!("repository {}: {}", m.name, report(&e));
                    match m.wal {
                        WalArchiving::Required if required_failure.is_none() => required_failure = Some(e),
                        _ => unasked.push(what),
                    }
                    self.forget(i);
                }
            }
        }
        if let Some(e) = required_failure {
            return Err(e);
        }
        if !unasked.is_empty() && self.members.len() > 1 {
            eprintln!("wal-archiver: {name} is in no reachable repository; best-effort ones that could not be asked: {}", unasked.join("; "));
        }
        Err(FetchError::NotFound(name.to_string()))
    }
}

/// A WAL file [`RepoSet::fetch`] wrote: which repository it came from, and its trailer (size
/// and SHA-256 of the plaintext, checked).
#[derive(Clone, Debug)]
pub struct Fetched {
    pub repo: String,
    pub trailer: crate::codec::Trailer,
}

/// Every repository of the set belongs to the primary's cluster.
pub(crate) fn same_cluster(repo: &PgRepo, primary: &PgRepo) -> Result<(), PgRepoError> {
    let (theirs, ours) = (repo.cluster().system_id, primary.cluster().system_id);
    if theirs == ours {
        return Ok(());
    }
    Err(PgRepoError::OtherCluster { location: repo.location(), repo: theirs, cluster: ours })
}

/// Copy WAL file `name` (and its block summary) from `from` to `to` as stored: same cluster,
/// same key ring, so the bytes are valid there as they are. `Ok(false)` when `from` no longer
/// has it.
pub(crate) fn copy_wal(from: &PgRepo, to: &PgRepo, name: &WalFileName) -> Result<bool, PgRepoError> {
    let key = name.object_key();
    let (src, ctx) = (from.objects().storage(), from.objects().ctx());
    let bytes = match src.get_bytes(&ctx, &key) {
        Ok(b) => b,
        Err(e) if e.is_not_found() => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    let (dst, dctx) = (to.objects().storage(), to.objects().ctx());
    if dst.put(&dctx, &key, &bytes, PutMode::IfAbsent)? == crate::storage::PutOutcome::AlreadyExists {
        let (theirs, ours) = (to.objects().object_trailer(&key)?, from.objects().object_trailer(&key)?);
        if theirs.sha256 != ours.sha256 {
            return Err(PgRepoError::Repo(RepoError::codec(
                &key,
                crate::codec::CodecError::Corrupt(format!("{} holds other content under this name than {}; investigate before touching either", to.location(), from.location())),
            )));
        }
    }
    let skey = super::archive::summary_key(name);
    match src.get_bytes(&ctx, &skey) {
        Ok(summary) => {
            dst.put(&dctx, &skey, &summary, PutMode::Overwrite)?;
        }
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(e.into()),
    }
    Ok(true)
}

/// Run `work(0..n)` on threads with every signal blocked (see [`crate::threads`]), results in order.
fn parallel<T: Send>(n: usize, work: impl Fn(usize) -> T + Sync) -> Vec<T> {
    std::thread::scope(|scope| {
        crate::threads::spawn_blocking_signals(scope, n, &work).into_iter().map(|h| h.join().expect("repository thread panicked")).collect()
    })
}
