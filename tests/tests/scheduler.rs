//! End-to-end tests of the in-database scheduler on real PostgreSQL 15 clusters, in real time:
//! the default schedule, jobs on a seconds schedule taking full and incremental backups by
//! themselves, predictions of `backup.scheduler_status()`, a changed job taking effect without
//! a restart, and the history after a server restart, a kill -9 (crash restart) with a backup
//! in flight, `pg_terminate_backend` of the worker, and a downtime that misses runs.
//!
//! "No run lost or duplicated" is checked on `backup.job_runs`: every instant of the schedule
//! has exactly one settled row (succeeded, failed or skipped with its reason); only an
//! `interrupted` row may share its instant with the row that settled it.

use e2e::workload::*;
use e2e::*;
use std::time::{Duration, Instant};

/// Generous: backups compete for 2 cores with the other test files.
const RUN_WAIT: Duration = Duration::from_secs(150);

#[derive(Debug, Clone)]
struct RunRow {
    /// Unix seconds.
    scheduled_for: i64,
    status: String,
    backup_id: String,
    message: String,
}

#[track_caller]
fn runs(c: &Cluster, job: &str) -> Vec<RunRow> {
    let text = c.psql(&format!(
        "SELECT extract(epoch FROM scheduled_for)::bigint || '|' || status || '|' || coalesce(backup_id, '') || '|' \
         || coalesce(replace(message, E'\\n', ' '), '') FROM backup.job_runs WHERE job = '{job}' ORDER BY scheduled_for, id"
    ));
    text.lines()
        .map(|l| {
            let f: Vec<&str> = l.splitn(4, '|').collect();
            RunRow { scheduled_for: f[0].parse().unwrap(), status: f[1].into(), backup_id: f[2].into(), message: f[3].into() }
        })
        .collect()
}

fn succeeded(c: &Cluster, job: &str) -> usize {
    runs(c, job).iter().filter(|r| r.status == "succeeded").count()
}

#[track_caller]
fn wait_for_succeeded(c: &Cluster, job: &str, n: usize, step: &str) {
    let start = Instant::now();
    while succeeded(c, job) < n {
        assert!(
            start.elapsed() < RUN_WAIT,
            "{step}: job {job} has not succeeded {n} times within {RUN_WAIT:?}: {:#?}\n--- server log ---\n{}",
            runs(c, job),
            c.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The scheduler worker's pid, once the server accepts connections and the worker is up.
fn scheduler_pid(c: &Cluster) -> Option<i32> {
    let r = c.try_psql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_backup_ext scheduler'");
    r.success().then(|| r.stdout.trim().parse().ok()).flatten()
}

#[track_caller]
fn wait_for_new_scheduler(c: &Cluster, old: Option<i32>, step: &str) -> i32 {
    let mut pid = None;
    wait_until(&format!("{step}: a (new) scheduler worker"), Duration::from_secs(60), || {
        pid = scheduler_pid(c).filter(|p| Some(*p) != old);
        pid.is_some()
    });
    pid.unwrap()
}

fn now_epoch() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Every instant of the schedule from the first row to the last has exactly one settled row
/// (an `interrupted` row may precede it), `period` seconds apart.
#[track_caller]
fn assert_every_run_accounted(rows: &[RunRow], period: i64, step: &str) {
    let settled: Vec<&RunRow> = rows.iter().filter(|r| r.status != "interrupted" && r.status != "running").collect();
    assert!(!settled.is_empty(), "{step}: no settled runs");
    for pair in settled.windows(2) {
        assert_eq!(
            pair[1].scheduled_for - pair[0].scheduled_for,
            period,
            "{step}: runs lost or duplicated between {:?} and {:?}; all runs: {rows:#?}",
            pair[0],
            pair[1]
        );
    }
    for r in rows.iter().filter(|r| r.status == "interrupted") {
        assert!(
            settled.iter().any(|s| s.scheduled_for == r.scheduled_for) || r.scheduled_for > settled.last().unwrap().scheduled_for,
            "{step}: interrupted run {r:?} was neither run again nor recorded as skipped: {rows:#?}"
        );
    }
}

#[track_caller]
fn status_field(c: &Cluster, job: &str, expr: &str) -> String {
    c.psql(&format!("SELECT {expr} FROM backup.scheduler_status() WHERE job = '{job}'"))
}

/// The product's default schedule, installed by CREATE EXTENSION in Vietnam time; then the
/// worker takes backups by itself on a seconds schedule (the first incremental becomes a full),
/// predicts its next run, follows a change at once, and loses or repeats nothing across a
/// restart, a crash restart with a backup in flight and pg_terminate_backend.
#[test]
fn scheduled_backups_run_unattended() {
    let (archiver, c) = extension_cluster("sched", &[("backup.scheduler", "on")]);
    c.pgbench(&["-i", "-s", "1", "-q"]);

    // (a) the default schedule
    let defaults = c.psql("SELECT name || ' ' || kind || ' ' || cron || ' ' || time_zone || ' ' || enabled FROM backup.schedules ORDER BY name");
    assert_eq!(
        defaults,
        "cleanup cleanup 0 4 1 * * Asia/Ho_Chi_Minh true\n\
         full full 0 2 * * * Asia/Ho_Chi_Minh true\n\
         health health 0 */6 * * * Asia/Ho_Chi_Minh true\n\
         incremental incremental 0 8-20 * * * Asia/Ho_Chi_Minh true\n\
         restore_test restore_test 0 5 * * 0 Asia/Ho_Chi_Minh true\n\
         verify verify 0 3 * * 0 Asia/Ho_Chi_Minh true",
        "(a) default schedule"
    );
    // 02:00 in Ho Chi Minh City is 19:00 UTC.
    assert!(status_field(&c, "full", "next_run_local").contains(" 02:00:00+07"), "(a) {}", status_field(&c, "full", "next_run_local"));
    assert_eq!(status_field(&c, "full", "to_char(next_run AT TIME ZONE 'UTC', 'HH24:MI')"), "19:00", "(a) next full in UTC");
    wait_until("(a) scheduler_running", Duration::from_secs(30), || status_field(&c, "full", "scheduler_running") == "t");
    assert_eq!(status_field(&c, "full", "late"), "f");

    // (b) bad input is refused, naming it
    for (sql, needle) in [
        ("SELECT backup.schedule('x', '61 * * * *', kind => 'full')", "61 * * * *"),
        ("SELECT backup.schedule('x', '0 2 * * *', kind => 'full', time_zone => 'Mars/Olympus')", "Mars/Olympus"),
        ("SELECT backup.schedule('x', '0 2 * * *', kind => 'fulll')", "fulll"),
        ("SELECT backup.schedule('x', '0 2 * * *')", "kind"),
        ("SELECT backup.unschedule('nope')", "no job named \"nope\""),
        ("SELECT backup.schedule_enable('nope', false)", "no job named \"nope\""),
    ] {
        let r = c.try_psql(sql);
        assert!(!r.success() && r.stderr.contains(needle), "(b) `{sql}` must fail naming {needle:?}:\n{r}");
    }
    assert_eq!(c.psql("SELECT count(*) FROM backup.schedules WHERE name = 'x'"), "0", "(b) nothing half-created");

    // (c) a seconds schedule, from SQL, no restart; the first incremental becomes a full
    c.psql("SELECT backup.unschedule(name) FROM backup.schedules");
    // Slow enough that the first backup (a full) is still running when the scheduler is killed.
    c.psql("ALTER SYSTEM SET backup.max_rate = '1MB'");
    c.psql("SELECT pg_reload_conf()");
    let predicted: i64 = c.psql("SELECT extract(epoch FROM backup.schedule('often', '20 seconds', kind => 'incremental', time_zone => 'UTC'))::bigint").parse().unwrap();
    assert_eq!(predicted % 20, 0, "(c) '20 seconds' runs on multiples of 20 s");
    assert!(predicted > now_epoch() - 2 && predicted <= now_epoch() + 20, "(c) next run {predicted} not within 20 s");
    wait_until("(c) the first run starts", RUN_WAIT, || c.psql("SELECT count(*) FROM backup.backups WHERE status = 'running'") == "1");
    let first = runs(&c, "often");
    assert_eq!(first[0].scheduled_for, predicted, "(c) the first run is the one predicted: {first:?}");
    assert!(first[0].message.contains("took a full backup instead"), "(c) {first:?}");

    // (d) kill -9 of the scheduler while its backup runs: the server restarts everything, the
    // run is recorded interrupted, and the schedule goes on
    let pid = scheduler_pid(&c).expect("scheduler running");
    kill9(pid, "scheduler worker");
    let pid = wait_for_new_scheduler(&c, Some(pid), "(d)");
    c.psql("ALTER SYSTEM RESET backup.max_rate");
    c.psql("SELECT pg_reload_conf()");
    wait_until("(d) the interrupted run is settled", RUN_WAIT, || runs(&c, "often").iter().any(|r| r.status == "interrupted"));
    wait_for_succeeded(&c, "often", 3, "(d)");
    let rows = runs(&c, "often");
    let done: Vec<&RunRow> = rows.iter().filter(|r| r.status == "succeeded").collect();
    let kinds: Vec<String> = done
        .iter()
        .map(|r| c.psql(&format!("SELECT type FROM backup.backups WHERE id = '{}' AND status = 'completed'", r.backup_id)))
        .collect();
    assert_eq!(kinds[0], "full", "(d) the first completed run had no backup to build on: {rows:#?}");
    assert!(kinds[1..].iter().all(|k| k == "incremental"), "(d) later runs are incremental: {kinds:?}");

    // (e) scheduler_status predicts the next run, and it happens then
    let next: i64 = status_field(&c, "often", "extract(epoch FROM next_run)::bigint").parse().unwrap();
    wait_until("(e) the predicted run", RUN_WAIT, || runs(&c, "often").iter().any(|r| r.scheduled_for >= next));
    assert_eq!(runs(&c, "often").iter().find(|r| r.scheduled_for >= next).unwrap().scheduled_for, next, "(e) prediction");
    assert_every_run_accounted(&runs(&c, "often"), 20, "(e)");

    // (f) a changed job takes effect without a restart
    let before = runs(&c, "often").len();
    let changed: i64 = c.psql("SELECT extract(epoch FROM backup.schedule('often', '30 seconds'))::bigint").parse().unwrap();
    assert_eq!(changed % 30, 0, "(f) new schedule");
    assert_eq!(status_field(&c, "often", "cron"), "30 seconds");
    wait_until("(f) a run on the new schedule", RUN_WAIT, || runs(&c, "often").len() > before);
    let after_change: Vec<RunRow> = runs(&c, "often").split_off(before);
    assert_eq!(after_change[0].scheduled_for, changed, "(f) first run on the new schedule: {after_change:?}");

    // (g) a server restart and pg_terminate_backend lose and repeat nothing
    wait_for_succeeded(&c, "often", succeeded(&c, "often") + 1, "(g) before restart");
    c.restart();
    let pid = wait_for_new_scheduler(&c, Some(pid), "(g) after restart");
    wait_for_succeeded(&c, "often", succeeded(&c, "often") + 1, "(g) after restart");
    let postmaster = c.postmaster_pid();
    assert_eq!(c.psql(&format!("SELECT pg_terminate_backend({pid})")), "t");
    let pid2 = wait_for_new_scheduler(&c, Some(pid), "(g) after pg_terminate_backend");
    assert_ne!(pid, pid2);
    assert_eq!(c.postmaster_pid(), postmaster, "(g) pg_terminate_backend must not restart the server");
    wait_for_succeeded(&c, "often", succeeded(&c, "often") + 1, "(g) after pg_terminate_backend");
    let rows = runs(&c, "often");
    assert_every_run_accounted(&rows[before..], 30, "(g)");
    for r in rows.iter().filter(|r| r.status == "skipped") {
        assert!(r.message.starts_with("missed") || r.message.starts_with("superseded"), "(g) skipped without a reason: {r:?}");
    }

    // (h) the backups the scheduler took form an intact chain
    let newest = rows.iter().rev().find(|r| r.status == "succeeded").unwrap().backup_id.clone();
    archiver.run(&["verify", &newest]).assert_ok("(h) verify the newest scheduled backup");
    let status = c.psql("SELECT last_status || ' ' || late FROM backup.scheduler_status() WHERE job = 'often'");
    assert!(status == "succeeded false" || status == "running false", "(h) scheduler_status: {status}");
}

/// While the server is down, runs are missed: on start-up a full backup job catches up once,
/// an incremental job records its missed runs as skipped; both carry on afterwards.
#[test]
fn missed_runs_after_downtime() {
    let (_archiver, c) = extension_cluster("sched-down", &[("backup.scheduler", "on")]);
    c.psql("SELECT backup.unschedule(name) FROM backup.schedules");
    c.psql("SELECT backup.schedule('f', '20 seconds', kind => 'full', time_zone => 'UTC')");
    c.psql("SELECT backup.schedule('i', '20 seconds', kind => 'incremental', time_zone => 'UTC')");
    wait_for_succeeded(&c, "f", 1, "(a)");
    wait_for_succeeded(&c, "i", 1, "(a)");
    // Wait for both runs of one instant to end, so that the stop interrupts nothing.
    wait_until("(a) idle", RUN_WAIT, || {
        c.psql("SELECT count(*) FROM backup.job_runs WHERE status = 'running'") == "0" && (now_epoch() % 20) < 10
    });
    c.stop();
    let stopped = now_epoch();
    // Down for two instants; start 13 s after an instant, past its 10 s grace.
    std::thread::sleep(Duration::from_secs(40));
    while now_epoch() % 20 != 13 {
        std::thread::sleep(Duration::from_millis(200));
    }
    let started = now_epoch();
    c.start();
    let catch_up_at = started - 13;
    wait_until("(b) the catch-up run", RUN_WAIT, || runs(&c, "f").iter().any(|r| r.scheduled_for == catch_up_at && r.status != "running"));
    wait_for_succeeded(&c, "i", succeeded(&c, "i") + 1, "(b) incremental after the downtime");

    let f = runs(&c, "f");
    let i = runs(&c, "i");
    let during = |rows: &[RunRow]| -> Vec<RunRow> { rows.iter().filter(|r| r.scheduled_for > stopped && r.scheduled_for < started).cloned().collect() };
    let f_down = during(&f);
    let i_down = during(&i);
    assert!(f_down.len() >= 2, "(b) two instants fell in the downtime: {f:#?}");
    let (last, older) = f_down.split_last().unwrap();
    assert_eq!(last.scheduled_for, catch_up_at);
    assert_eq!(last.status, "succeeded", "(b) the full backup job caught up: {f:#?}");
    assert!(last.message.starts_with("catch-up"), "(b) {last:?}");
    assert!(older.iter().all(|r| r.status == "skipped" && r.message.starts_with("missed")), "(b) {f:#?}");
    assert!(i_down.iter().all(|r| r.status == "skipped" && r.message.starts_with("missed")), "(b) the incremental job does not catch up: {i:#?}");
    assert_eq!(i_down.len(), f_down.len(), "(b) every missed instant recorded for both jobs");
    assert_every_run_accounted(&f, 20, "(b) f");
    assert_every_run_accounted(&i, 20, "(b) i");
}
