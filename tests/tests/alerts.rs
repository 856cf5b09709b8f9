//! End-to-end test of alerts on a real PostgreSQL 15 cluster: the alert worker, a real SMTP
//! server (aiosmtpd) and a real HTTP server standing in for Slack and a generic webhook, and an
//! SMS endpoint that refuses connections. Each condition, caused for real, is told once per
//! channel that its severity routes to, then resolved once it clears: a failed backup, a missed
//! scheduled run, archiving failing, a repository low on space, a WAL segment missing from the
//! repository. The refused SMS channel is retried with backoff and delays no backup.

use e2e::*;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(120);

/// (event, status, attempts, last_error) of each delivery about alert `key` to `channel`,
/// oldest first.
fn deliveries(c: &Cluster, key: &str, channel: &str) -> Vec<(String, String, i32, String)> {
    c.psql(&format!(
        "SELECT d.event || '|' || d.status || '|' || d.attempts || '|' || coalesce(d.last_error, '')
           FROM backup.alert_deliveries d JOIN backup.alerts a ON a.id = d.alert_id
          WHERE a.key = '{key}' AND d.channel = '{channel}' ORDER BY d.id"
    ))
    .lines()
    .map(|l| {
        let f: Vec<&str> = l.splitn(4, '|').collect();
        (f[0].to_string(), f[1].to_string(), f[2].parse().unwrap(), f[3].to_string())
    })
    .collect()
}

fn alert_status(c: &Cluster, key: &str) -> String {
    c.psql(&format!("SELECT coalesce((SELECT status FROM backup.alerts WHERE key = '{key}' ORDER BY id DESC LIMIT 1), 'none')"))
}

/// The alert for `key` fired and was resolved, each told once to email, slack and webhook
/// (the SMS channel takes critical alerts only: `sms` says whether it was tried).
#[track_caller]
fn assert_told_once(c: &Cluster, smtp: &SmtpSink, http: &HttpSink, key: &str, summary: &str, sms: bool, step: &str) {
    wait_until(&format!("{step}: every delivery about {key} made"), WAIT, || {
        ["email", "slack", "webhook"].iter().all(|ch| {
            let d = deliveries(c, key, ch);
            d.len() == 2 && d.iter().all(|(_, status, _, _)| status == "sent")
        })
    });
    for ch in ["email", "slack", "webhook"] {
        let events: Vec<String> = deliveries(c, key, ch).into_iter().map(|d| d.0).collect();
        assert_eq!(events, ["firing", "resolved"], "{step}: {ch} about {key}");
    }
    let mails: Vec<Mail> = smtp.mails().into_iter().filter(|m| m.text.contains(summary)).collect();
    assert_eq!(mails.len(), 2, "{step}: one mail firing, one resolved, about {summary:?}: {mails:#?}");
    assert!(mails[0].recipients.contains("dba@example.com"), "{step}: {mails:#?}");
    assert!(!mails[0].subject.contains("RESOLVED") && mails[1].subject.contains("RESOLVED"), "{step}: {mails:#?}");
    let slack: Vec<Request> = http.requests_to("/slack/T0/B0/secret").into_iter().filter(|r| r.body.contains(summary)).collect();
    assert_eq!(slack.len(), 2, "{step}: {slack:#?}");
    let hooks: Vec<serde_json::Value> =
        http.requests_to("/hook").iter().map(|r| serde_json::from_str(&r.body).expect("the webhook sends JSON")).filter(|v: &serde_json::Value| v["key"] == key).collect();
    assert_eq!(hooks.len(), 2, "{step}: {hooks:#?}");
    assert_eq!((hooks[0]["state"].as_str(), hooks[1]["state"].as_str()), (Some("firing"), Some("resolved")), "{step}: {hooks:#?}");
    let sms_tries = deliveries(c, key, "sms");
    if sms {
        assert!(!sms_tries.is_empty(), "{step}: a critical alert goes to SMS too");
        assert!(sms_tries.iter().all(|(_, status, _, _)| status == "pending"), "{step}: the refused SMS channel is retried, not dropped: {sms_tries:?}");
        assert!(sms_tries[0].3.contains("127.0.0.1"), "{step}: the error names the endpoint: {sms_tries:?}");
    } else {
        assert!(sms_tries.is_empty(), "{step}: a warning does not go to SMS: {sms_tries:?}");
    }
}

#[test]
fn alerts_fire_once_and_resolve() {
    let smtp = SmtpSink::start("alerts");
    let http = HttpSink::start();
    let sms_port = refusing_port();
    let notifications = format!(
        r#"
[notifications]
enabled = true
[notifications.email]
recipients = ["dba@example.com"]
smtp_host = "127.0.0.1"
smtp_port = {smtp}
tls = "none"
from = "pg_backup_ext <backup@example.com>"
[notifications.slack]
webhook_url = "{slack}"
min_severity = "warning"
[notifications.sms]
url = "http://127.0.0.1:{sms_port}/sms"
to = ["+15550001"]
from = "+15559999"
account = "AC0001"
token = "sms-token-never-printed"
[notifications.webhook]
url = "{hook}"
"#,
        smtp = smtp.port,
        slack = http.url("/slack/T0/B0/secret"),
        hook = http.url("/hook"),
    );
    // `base` owns the key file and the repository the configuration names.
    let base = Archiver::new("alerts");
    let archiver = base.with_extra_toml("alerts-notify", &notifications);
    let (archiver, c) = extension_cluster_for(
        archiver,
        "alerts",
        &[
            ("backup.scheduler", "on"),
            ("backup.alert_interval", "1s"),
            ("backup.health_space_warning", "0"),
            ("backup.health_space_critical", "0"),
        ],
    );
    // Only the jobs this test makes; the default ones would take backups on their own.
    c.psql("SELECT backup.unschedule(name) FROM backup.schedules");

    // A test message reaches every channel but the refused one, now.
    let test = c.psql("SELECT channel || '|' || delivered FROM backup.test_alert() ORDER BY channel");
    assert_eq!(test.lines().collect::<Vec<_>>(), ["email|true", "slack|true", "sms|false", "webhook|true"], "{test}");
    assert!(smtp.mails().iter().any(|m| m.subject.contains("TEST")), "{:#?}", smtp.mails());
    let refused = c.psql("SELECT message FROM backup.test_alert('sms')");
    assert!(refused.contains("127.0.0.1") && !refused.contains("sms-token-never-printed"), "{refused}");
    let unknown = c.try_psql("SELECT * FROM backup.test_alert('pager')");
    assert!(!unknown.success() && unknown.output().contains("pager"), "{}", unknown.output());

    // (a) A backup fails (its directory in the repository is read-only): critical, told to
    // every channel; the next backup completes while SMS is still refused: resolved.
    let backup_dir = archiver.repo().join("backup");
    std::fs::create_dir_all(&backup_dir).unwrap();
    give_to_postgres(&backup_dir);
    run_root_ok("chmod", &["0555", backup_dir.to_str().unwrap()]);
    let failed = c.try_psql("SELECT backup.start_full(wait => true)");
    assert!(!failed.success(), "a backup into a read-only directory failed: {}", failed.output());
    wait_until("(a) the failed-backup alert", WAIT, || alert_status(&c, "last_backup") == "firing");
    wait_until("(a) SMS tried", WAIT, || deliveries(&c, "last_backup", "sms").iter().any(|d| d.2 >= 1));
    run_root_ok("chmod", &["0700", backup_dir.to_str().unwrap()]);
    c.psql("SELECT backup.start_full(wait => true)");
    wait_until("(a) resolved", WAIT, || alert_status(&c, "last_backup") == "resolved");
    assert_told_once(&c, &smtp, &http, "last_backup", "the last backup failed", true, "(a)");

    // (b) Archiving fails: critical; fixed: resolved.
    let working = c.psql("SHOW archive_command");
    c.psql("ALTER SYSTEM SET archive_command = '/bin/false'");
    c.psql("SELECT pg_reload_conf()");
    c.psql("CREATE TABLE filler AS SELECT g FROM generate_series(1, 1000) g; SELECT pg_switch_wal()");
    wait_until("(b) the archiving alert", WAIT, || alert_status(&c, "archiving") == "firing");
    c.psql(&format!("ALTER SYSTEM SET archive_command = '{}'", working.replace('\'', "''")));
    c.psql("SELECT pg_reload_conf()");
    c.psql("SELECT pg_switch_wal()");
    wait_until("(b) resolved", WAIT, || alert_status(&c, "archiving") == "resolved");
    assert_told_once(&c, &smtp, &http, "archiving", "WAL archiving is failing", true, "(b)");

    // (c) The repository's filesystem "fills up" (the warning threshold above what is free):
    // a warning, not sent by SMS; room again: resolved.
    c.psql("ALTER SYSTEM SET backup.health_space_warning = 99.999");
    c.psql("SELECT pg_reload_conf()");
    wait_until("(c) the space alert", WAIT, || alert_status(&c, "repository_space:local") == "firing");
    c.psql("ALTER SYSTEM SET backup.health_space_warning = 0");
    c.psql("SELECT pg_reload_conf()");
    wait_until("(c) resolved", WAIT, || alert_status(&c, "repository_space:local") == "resolved");
    assert_told_once(&c, &smtp, &http, "repository_space:local", "is running out of space", false, "(c)");

    // (d) A WAL segment between two backups is lost from the repository: critical; put back:
    // resolved.
    let mut segments = Vec::new();
    for i in 0..3 {
        c.psql(&format!("INSERT INTO filler SELECT g FROM generate_series(1, {}) g", 1000 * (i + 1)));
        segments.push(c.switch_wal());
    }
    c.wait_archived(&segments[2], WAIT);
    c.psql("SELECT backup.start_full(wait => true)");
    let key = wal_object_key(&segments[1]);
    let kept = archiver.storage().read(&key);
    archiver.storage().delete(&key);
    wait_until("(d) the WAL gap alert", WAIT, || alert_status(&c, "wal_gaps:local") == "firing");
    let message = c.psql("SELECT message FROM backup.alerts WHERE key = 'wal_gaps:local'");
    assert!(message.contains(&segments[1]), "(d) the alert names the missing segment: {message}");
    archiver.storage().write(&key, &kept);
    wait_until("(d) resolved", WAIT, || alert_status(&c, "wal_gaps:local") == "resolved");
    assert_told_once(&c, &smtp, &http, "wal_gaps:local", "WAL is missing in repository local", true, "(d)");

    // (e) Scheduled runs are missed while the server is down (a verify job every 10 s that
    // does not catch up): a warning; the job's next success resolves it.
    c.psql("SELECT backup.schedule('check', '10 seconds', kind => 'verify', time_zone => 'UTC')");
    wait_until("(e) the verify job ran", WAIT, || c.psql("SELECT count(*) FROM backup.job_runs WHERE job = 'check' AND status = 'succeeded'") != "0");
    c.stop();
    std::thread::sleep(Duration::from_secs(25));
    c.start();
    // It may clear before the test looks: the next run is at most 10 s away.
    wait_until("(e) the missed-runs alert", WAIT, || alert_status(&c, "missed_runs") != "none");
    wait_until("(e) resolved", WAIT, || alert_status(&c, "missed_runs") == "resolved");
    assert_told_once(&c, &smtp, &http, "missed_runs", "scheduled runs were missed", false, "(e)");

    // Nothing anywhere holds the SMS token.
    let everything = c.psql("SELECT string_agg(coalesce(last_error, '') || attempt_log::text, ' ') FROM backup.alert_deliveries");
    assert!(!everything.contains("sms-token-never-printed"), "{everything}");
}
