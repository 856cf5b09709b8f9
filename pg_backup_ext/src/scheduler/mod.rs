//! The scheduler: a static background worker (registered while `shared_preload_libraries`
//! load, started once recovery is over, so never on a standby: the primary's scheduler takes
//! the backups, and a promoted standby starts its own) that runs the jobs of
//! `backup.schedules`.
//!
//! Once a second it settles what is due ([`backup_core::jobs::decide`]: late, superseded,
//! missed while down, catch-up), records skipped runs in `backup.job_runs`, and starts the
//! earliest due run. One run at a time: a backup job launches the backup worker and is then
//! followed through its catalog row, so the loop stays responsive (signals, reloads) while a
//! backup takes hours, and every other job waits in the queue until it ends. Verify, cleanup
//! and health run in this process ([`tasks`]).
//!
//! Surviving what kills pg_cron's launcher: on SIGTERM (`pg_terminate_backend`) the worker
//! exits with status 1, which the postmaster answers by starting it again after
//! [`RESTART_AFTER`]; a crash restarts it the same way. A backup it launched outlives it (the
//! backup worker is its own process) and is adopted by the next scheduler through the run's
//! row; a run cut short by a crash is marked `interrupted` and, for jobs that catch up, run
//! again.

mod tasks;

pub use tasks::expire;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use backup_core::jobs;
use backup_core::pg::backup::{BackupId, BackupKind};
use backup_core::schedule::{JobKind, Schedule};
use chrono::{DateTime, Utc};
use pgrx::prelude::*;

use crate::backup_worker::{self, StartError};
use crate::catalog::jobs::{self as runs, Job, RunStatus};
use crate::catalog::{self, BackupStatus};
use crate::gucs;
use crate::postgres::bgworker::{self, transaction, Liveness, SqlError, Worker};

pub const WORKER_TYPE: &str = runs::SCHEDULER_WORKER_TYPE;

/// How soon the postmaster starts the scheduler again after it exits with status 1 or crashes.
pub const RESTART_AFTER: Duration = Duration::from_secs(5);

/// How often the loop looks at the schedule: the resolution of the seconds form.
const TICK: Duration = Duration::from_secs(1);

/// Called from `_PG_init`: register the worker when loading through `shared_preload_libraries`.
pub fn register() {
    if crate::postgres::loading_shared_preload_libraries() {
        bgworker::register_static(WORKER_TYPE, "pg_backup_ext_scheduler_main", RESTART_AFTER);
    }
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_backup_ext_scheduler_main(_arg: pg_sys::Datum) {
    let worker = Worker::attach();
    let database = gucs::scheduler_database();
    // A database that does not exist ends this process with FATAL; the postmaster retries.
    worker.connect_by_name(&database);
    log!("pg_backup_ext scheduler started in database {database:?}");
    let mut scheduler = Scheduler { up_since: Utc::now(), database, in_flight: None, settled: false, last_prune: None, complained: HashSet::new(), waited_for: HashMap::new() };
    loop {
        match worker.poll() {
            Liveness::Running => {}
            Liveness::Terminate => {
                // Status 1 asks the postmaster for a restart (pg_terminate_backend must not
                // stop the schedule); during a shutdown it restarts nothing.
                log!("pg_backup_ext scheduler: terminating; the server restarts it in {} s unless it is shutting down", RESTART_AFTER.as_secs());
                crate::postgres::exit_process(1);
            }
            Liveness::PostmasterDied => worker.exit_after_postmaster_death(),
        }
        if gucs::SCHEDULER.get() {
            if let Err(e) = scheduler.tick() {
                log!("pg_backup_ext scheduler: {e}");
            }
        }
        if worker.sleep(TICK) == Liveness::PostmasterDied {
            worker.exit_after_postmaster_death();
        }
    }
}

/// A backup job whose backup worker is running.
struct InFlight {
    run: i64,
    backup: BackupId,
}

struct Scheduler {
    up_since: DateTime<Utc>,
    database: String,
    in_flight: Option<InFlight>,
    /// Runs left `running` by an earlier scheduler have been adopted or closed.
    settled: bool,
    last_prune: Option<DateTime<Utc>>,
    /// Problems already logged (a missing extension, a job whose expression no longer parses):
    /// said once, not every second.
    complained: HashSet<String>,
    /// Jobs held back by someone else's backup, and which: said in the run's row once it starts.
    waited_for: HashMap<String, String>,
}

impl Scheduler {
    fn complain_once(&mut self, key: &str, message: impl FnOnce() -> String) {
        if self.complained.insert(key.to_string()) {
            warning!("pg_backup_ext scheduler: {}", message());
        }
    }

    fn tick(&mut self) -> Result<(), SqlError> {
        let installed = transaction(|| Ok(Spi::get_one::<bool>("SELECT to_regclass('backup.schedules') IS NOT NULL")?.unwrap_or(false)))?;
        if !installed {
            let db = self.database.clone();
            self.complain_once("not installed", || {
                format!("extension pg_backup_ext is not installed in database {db:?}: run CREATE EXTENSION pg_backup_ext there, or set backup.scheduler_database")
            });
            return Ok(());
        }
        self.complained.remove("not installed");
        if !self.settled {
            self.settle_leftovers()?;
            self.settled = true;
        }
        if !self.follow_in_flight()? {
            return Ok(());
        }
        let now = Utc::now();
        if self.last_prune.is_none_or(|t| now - t > chrono::Duration::hours(1)) {
            transaction(|| Ok(runs::prune_runs(gucs::JOB_HISTORY_DAYS.get())?))?;
            self.last_prune = Some(now);
        }
        let (jobs, baselines) = transaction(|| Ok((runs::jobs()?, runs::baselines()?)))?;
        let mut next: Option<(Job, jobs::DueRun)> = None;
        for job in jobs.into_iter().filter(|j| j.enabled) {
            let schedule = match Schedule::parse(&job.cron, &job.time_zone) {
                Ok(s) => s,
                Err(e) => {
                    self.complain_once(&format!("{}|{}|{}", job.name, job.cron, job.time_zone), || format!("job {:?} is not run: {e}; fix it with backup.schedule()", job.name));
                    continue;
                }
            };
            let baseline = job.baseline(&baselines);
            let decision = jobs::decide(&schedule, job.catch_up(), baseline, now, self.up_since);
            if !decision.skipped.is_empty() {
                transaction(|| {
                    for s in &decision.skipped {
                        runs::record_skipped(&job.name, job.kind, s.scheduled_for, &s.reason)?;
                    }
                    Ok(())
                })?;
            }
            if let Some(run) = decision.run {
                if next.as_ref().is_none_or(|(_, n)| run.scheduled_for < n.scheduled_for) {
                    next = Some((job, run));
                }
            }
        }
        if let Some((job, run)) = next {
            self.run(&job, &run)?;
        }
        Ok(())
    }

    /// Runs a previous scheduler left `running`: a backup still going is adopted, one that
    /// completed is recorded, anything else was cut short.
    fn settle_leftovers(&mut self) -> Result<(), SqlError> {
        transaction(|| {
            catalog::reap_stale()?;
            for r in runs::running_runs()? {
                let backup = r.backup_id.as_deref().and_then(|b| b.parse::<BackupId>().ok());
                let status = match &backup {
                    Some(b) => catalog::status(b)?.map(|(s, _)| s),
                    None => None,
                };
                match (backup, status) {
                    (Some(b), Some(BackupStatus::Running)) if self.in_flight.is_none() => {
                        log!("pg_backup_ext scheduler: following backup {b} of job {:?}, started before this scheduler", r.job);
                        self.in_flight = Some(InFlight { run: r.id, backup: b });
                    }
                    (Some(b), Some(BackupStatus::Completed)) => runs::finish_run(r.id, RunStatus::Succeeded, &format!("backup {b} completed"))?,
                    _ => runs::finish_run(r.id, RunStatus::Interrupted, "interrupted: the scheduler or the server stopped during the run")?,
                }
            }
            Ok(())
        })
    }

    /// Whether the queue is free: the backup in flight (if any) has ended and its run is
    /// recorded.
    fn follow_in_flight(&mut self) -> Result<bool, SqlError> {
        let Some(f) = &self.in_flight else {
            return Ok(true);
        };
        let ended = transaction(|| {
            catalog::reap_stale()?;
            Ok(match catalog::status(&f.backup)? {
                Some((BackupStatus::Running, _)) => None,
                Some((BackupStatus::Completed, _)) => Some((RunStatus::Succeeded, format!("backup {} completed", f.backup))),
                Some((BackupStatus::Failed, error)) => Some((RunStatus::Failed, format!("backup {} failed: {}", f.backup, error.unwrap_or_default()))),
                None => Some((RunStatus::Failed, format!("backup {} is no longer in backup.backups (deleted while running?)", f.backup))),
            })
        })?;
        let Some((status, message)) = ended else {
            return Ok(false);
        };
        transaction(|| Ok(runs::finish_run(f.run, status, &message)?))?;
        self.in_flight = None;
        Ok(true)
    }

    fn run(&mut self, job: &Job, due: &jobs::DueRun) -> Result<(), SqlError> {
        match job.kind {
            JobKind::Full | JobKind::Incremental => self.start_backup(job, due),
            kind => {
                let run = transaction(|| Ok(runs::start_run(&job.name, kind, due.scheduled_for, due.note.as_deref())?))?;
                let (status, message) = match kind {
                    JobKind::Verify => tasks::verify(job.verify_count()),
                    JobKind::Cleanup => tasks::cleanup(),
                    JobKind::Health => tasks::health(),
                    JobKind::Copy => tasks::copy(job.repo(), job.copy_to()),
                    JobKind::RestoreTest => tasks::restore_test(),
                    JobKind::Full | JobKind::Incremental => unreachable!("handled above"),
                };
                transaction(|| Ok(runs::finish_run(run, status, &message)?))
            }
        }
    }

    fn start_backup(&mut self, job: &Job, due: &jobs::DueRun) -> Result<(), SqlError> {
        // Someone else's backup (backup.start_full(), wal-archiver backup) holds the cluster:
        // this run stays due and starts when that one ends.
        if let Some(other) = transaction(|| {
            catalog::reap_stale()?;
            Ok(catalog::running_backup()?)
        })? {
            if self.waited_for.insert(job.name.clone(), other.clone()).is_none() {
                log!("pg_backup_ext scheduler: job {:?} waits for backup {other} to finish", job.name);
            }
            return Ok(());
        }
        let mut kind = match job.kind {
            JobKind::Incremental => BackupKind::Incremental,
            _ => BackupKind::Full,
        };
        let mut note = due.note.clone();
        if let Some(other) = self.waited_for.remove(&job.name) {
            let why = format!("queued behind backup {other}");
            note = Some(note.map_or(why.clone(), |n| format!("{n}; {why}")));
        }
        if kind == BackupKind::Incremental && !transaction(|| Ok(catalog::has_backup_on_current_timeline()?))? {
            kind = BackupKind::Full;
            let why = "no completed backup of this timeline to build on: took a full backup instead";
            note = Some(note.map_or(why.to_string(), |n| format!("{n}; {why}")));
        }
        let run = transaction(|| Ok(runs::start_run(&job.name, job.kind, due.scheduled_for, note.as_deref())?))?;
        let started = transaction(|| {
            Ok(match backup_worker::start(kind, job.repo()) {
                Ok((id, _handle)) => {
                    runs::set_run_backup(run, id.as_str())?;
                    Ok(id)
                }
                Err(e) => Err(e),
            })
        })?;
        match started {
            Ok(id) => {
                log!("pg_backup_ext scheduler: job {:?} started {kind} backup {id}", job.name);
                self.in_flight = Some(InFlight { run, backup: id });
                Ok(())
            }
            Err(e) => {
                // Another backup won the race to the cluster's backup lock (a backup.start_full()
                // between our check and the worker's claim): this run did not happen.
                let (status, message) = match &e {
                    StartError::AlreadyRunning(_) => (RunStatus::Skipped, format!("skipped: {e}")),
                    StartError::Failed { error, .. } if error == &catalog::ClaimRefused::AnotherRunning.to_string() => {
                        (RunStatus::Skipped, format!("skipped: {e}"))
                    }
                    _ => (RunStatus::Failed, e.to_string()),
                };
                transaction(|| Ok(runs::finish_run(run, status, &message)?))
            }
        }
    }
}
