//! End-to-end test of `backup.health()` on a real PostgreSQL 15 cluster: what a new install
//! reports (no full backup yet, the scheduler off), then archiving broken for real
//! (`archive_command` failing, WAL piling up in `archive_status`) turning the archiving checks
//! critical, and back to ok once it is fixed; the thresholds are the `backup.health_*`
//! settings.

use e2e::*;
use std::collections::BTreeMap;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(120);

/// `backup.health()` by check name: (status, value, message); and the first row's name.
#[track_caller]
fn health(c: &Cluster) -> (String, BTreeMap<String, (String, String, String)>) {
    let text = c.psql("SELECT name || '|' || status || '|' || coalesce(value, '') || '|' || replace(message, E'\\n', ' ') FROM backup.health()");
    let mut first = String::new();
    let mut rows = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.splitn(4, '|').collect();
        assert_eq!(f.len(), 4, "a backup.health() row: {line:?}");
        if first.is_empty() {
            first = f[0].to_string();
        }
        assert!(rows.insert(f[0].to_string(), (f[1].to_string(), f[2].to_string(), f[3].to_string())).is_none(), "check {} twice:\n{text}", f[0]);
    }
    (first, rows)
}

#[track_caller]
fn status_of(c: &Cluster, check: &str) -> String {
    let (_, rows) = health(c);
    rows.get(check).unwrap_or_else(|| panic!("no check {check}: {rows:#?}")).0.clone()
}

#[test]
fn health_follows_archiving_broken_and_fixed() {
    // The host's disk is not what this test is about: no free-space limit to trip over.
    let (_archiver, c) = extension_cluster("health", &[("backup.health_space_warning", "0"), ("backup.health_space_critical", "0")]);

    // A new install: overall first; no full backup although the default schedule has a full
    // job (critical), the scheduler off (a warning), archiving fine, the repository answering.
    let (first, rows) = health(&c);
    assert_eq!(first, "overall", "{rows:#?}");
    assert_eq!(rows["full_backup_age"].0, "critical", "{rows:#?}");
    assert!(rows["full_backup_age"].2.contains("backup.start_full()"), "{rows:#?}");
    assert_eq!(rows["scheduler"].0, "warning", "{rows:#?}");
    assert_eq!(rows["archiving"].0, "ok", "{rows:#?}");
    assert_eq!(rows["repository:local"].0, "ok", "{rows:#?}");
    assert!(rows["repository_space:local"].1.ends_with("% free"), "{rows:#?}");
    assert_eq!(rows["overall"].0, "critical", "{rows:#?}");

    // A full backup: fresh now; the newest backup did not fail.
    let id = c.psql("SELECT backup.start_full(wait => true)").trim().to_string();
    let (_, rows) = health(&c);
    assert_eq!(rows["full_backup_age"].0, "ok", "{rows:#?}");
    assert!(rows["full_backup_age"].1.contains(&id), "{rows:#?}");
    assert_eq!(rows["last_backup"].0, "ok", "{rows:#?}");

    // Archiving breaks: archive_command fails, segments wait. With the backlog's warning at
    // one second, both archiving checks go bad.
    let working = c.psql("SHOW archive_command").trim().to_string();
    c.psql("ALTER SYSTEM SET archive_command = '/bin/false'");
    c.psql("ALTER SYSTEM SET backup.health_archive_lag_warning = '1s'");
    c.psql("SELECT pg_reload_conf()");
    c.psql("CREATE TABLE filler AS SELECT g, md5(g::text) FROM generate_series(1, 1000) g; SELECT pg_switch_wal()");
    wait_until("archiving to fail", WAIT, || status_of(&c, "archiving") == "critical");
    std::thread::sleep(Duration::from_secs(2));
    let (_, rows) = health(&c);
    assert_eq!(rows["archiving"].0, "critical", "{rows:#?}");
    assert!(rows["archiving"].2.contains("archiving is failing"), "{rows:#?}");
    assert_eq!(rows["archive_backlog"].0, "warning", "{rows:#?}");
    assert!(rows["archive_backlog"].1.contains("file(s) waiting"), "{rows:#?}");
    assert_eq!(rows["overall"].0, "critical", "{rows:#?}");
    assert!(rows["overall"].2.contains("archiving"), "{rows:#?}");

    // Fixed: the working archive_command again; the waiting segments go out and both
    // checks are ok again. What is left is the scheduler being off: a warning overall.
    c.psql(&format!("ALTER SYSTEM SET archive_command = '{}'", working.replace('\'', "''")));
    c.psql("SELECT pg_reload_conf()");
    c.psql("SELECT pg_switch_wal()");
    wait_until("archiving to recover", WAIT, || {
        let (_, rows) = health(&c);
        rows["archiving"].0 == "ok" && rows["archive_backlog"].0 == "ok"
    });
    let (_, rows) = health(&c);
    assert_eq!(rows["overall"].0, "warning", "{rows:#?}");
    assert_eq!(rows["overall"].2, "warning: scheduler", "{rows:#?}");
}
