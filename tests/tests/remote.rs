//! Several repositories end to end: a local primary and an S3 repository (moto, reached through
//! a relay the test cuts and restores, so the endpoint really goes away while the store keeps
//! its contents), wired into a real cluster as `archive_command`, then a disaster restore from
//! S3 alone.

use std::time::Duration;

use e2e::workload::{restore_into, start_restored};
use e2e::*;

const WAIT: Duration = Duration::from_secs(180);
const BUCKET: &str = "pgb-multi";

/// Every output of the archiver in this test, to check no secret ever shows.
#[derive(Default)]
struct Outputs(String);

impl Outputs {
    fn keep(&mut self, r: RunResult) -> RunResult {
        self.0.push_str(&r.stdout);
        self.0.push_str(&r.stderr);
        r
    }
}

#[test]
fn local_primary_and_s3_repository_through_an_outage_and_a_disaster() {
    let moto = S3Server::start("multi");
    moto.create_bucket(BUCKET);
    let relay = Relay::start(moto.port);
    let base = Archiver::new("multi");
    let best = base.with_extra_toml("multi-be", &S3Server::repo_toml("offsite", relay.port, BUCKET, "c1", "archive = \"best_effort\""));
    // What is in the bucket, looked at directly (not through the relay).
    let s3 = RepoInspector::open(S3Server::location_of(moto.port, BUCKET, "c1"));
    let mut out = Outputs::default();

    // Step 1: init creates both repositories; WAL goes into both.
    let cluster = Cluster::initdb("multi");
    let r = out.keep(best.init(&cluster.pgdata));
    r.assert_ok("step 1: init");
    assert!(r.stdout.contains("repository local") && r.stdout.contains("repository offsite"), "step 1: init names both repositories:\n{r}");
    cluster.enable_archiving(&best);
    cluster.start();
    cluster.psql("CREATE TABLE t AS SELECT g AS id, 'before'::text AS phase FROM generate_series(1, 50000) g");
    let first = cluster.switch_wal();
    cluster.wait_archived(&first, WAIT);
    assert!(base.storage().exists(&wal_object_key(&first)), "step 1: {first} is not in the local repository");
    assert!(s3.exists(&wal_object_key(&first)), "step 1: {first} is not in the S3 repository");

    // Step 2: a full backup into the local repository, copied to S3, verified there.
    let pgdata = cluster.pgdata.to_string_lossy().into_owned();
    out.keep(best.run(&["backup", "--pgdata", &pgdata, "--dbname", &cluster.conninfo()])).assert_ok("step 2: backup");
    let id = cli_list_ids(&best, "step 2").pop().expect("step 2: a backup");
    let r = out.keep(best.run(&["copy", &id, "--to", "offsite"]));
    r.assert_ok("step 2: copy to S3");
    assert!(r.stdout.contains(&format!("copied {id}")), "step 2: copy reports what it copied:\n{r}");
    assert!(s3.exists(&format!("backup/{id}/manifest")), "step 2: the copy's manifest is not in S3");
    out.keep(best.run(&["--repo", "offsite", "verify", &id])).assert_ok("step 2: verify the copy in S3");
    let again = out.keep(best.run(&["copy", &id, "--to", "offsite"]));
    assert!(again.success() && again.stdout.contains("already in offsite"), "step 2: a second copy is a no-op:\n{again}");

    // Step 3: S3 goes away. A best-effort repository does not hold archiving back; what it
    // missed is noted as owed.
    relay.cut();
    cluster.psql("INSERT INTO t SELECT g, 'outage' FROM generate_series(50001, 60000) g");
    let during = cluster.switch_wal();
    cluster.wait_archived(&during, WAIT);
    assert!(!s3.exists(&wal_object_key(&during)), "step 3: {during} reached S3 through a cut relay?");
    let info = best.info();
    assert!(info["owed_wal"]["offsite"].as_u64().unwrap_or(0) >= 1, "step 3: info does not show WAL owed to offsite:\n{info:#}");
    let text = out.keep(best.run(&["info"]));
    assert!(text.stdout.contains("owed WAL") && text.stdout.contains("offsite"), "step 3: info text:\n{text}");

    // Step 4: S3 is back; the next push pays what is owed.
    relay.restore();
    cluster.psql("INSERT INTO t SELECT g, 'after' FROM generate_series(60001, 70000) g");
    let after = cluster.switch_wal();
    cluster.wait_archived(&after, WAIT);
    wait_until("owed WAL to reach S3", Duration::from_secs(60), || s3.exists(&wal_object_key(&during)) && s3.exists(&wal_object_key(&after)));
    let info = best.info();
    assert!(info["owed_wal"].as_object().is_none_or(|o| o.is_empty()), "step 4: still owed after catching up:\n{info:#}");

    // Step 5: the same outage with S3 required: the segment stays .ready in pg_wal, then goes
    // out once S3 answers again.
    let required = base.with_extra_toml("multi-req", &S3Server::repo_toml("offsite", relay.port, BUCKET, "c1", ""));
    cluster.set(&[("archive_command", &required.archive_command())]);
    cluster.psql("SELECT pg_reload_conf()");
    let failed_before = cluster.archiver_stats().failed_count;
    relay.cut();
    cluster.psql("INSERT INTO t SELECT g, 'held' FROM generate_series(70001, 80000) g");
    let held = cluster.switch_wal();
    wait_until("archive_command to fail while S3 is down", WAIT, || cluster.archiver_stats().failed_count > failed_before);
    assert!(!cluster.is_archived(&held), "step 5: {held} counted archived while a required repository was down");
    assert!(cluster.ready_files().iter().any(|f| f.starts_with(&held)), "step 5: {held} is not waiting in archive_status: {:?}", cluster.ready_files());
    assert!(cluster.pg_wal().join(&held).exists(), "step 5: {held} left pg_wal");
    relay.restore();
    let last = cluster.switch_wal(); // wakes the archiver
    cluster.wait_archived(&last, WAIT);
    assert!(s3.exists(&wal_object_key(&held)) && s3.exists(&wal_object_key(&last)), "step 5: S3 lacks {held} or {last}");
    let rows = cluster.psql("SELECT count(*) FROM t");
    assert_eq!(rows, "80000");

    // Step 6: disaster: the local repository is lost. A restore without --repo falls back to
    // S3 and pins recovery's WAL to it; the restored server has every row.
    std::fs::rename(base.repo(), base.dir().join("lost-repo")).unwrap();
    let restored = Cluster::unpopulated("multi-restored");
    let r = out.keep(restore_into(&best, &restored.pgdata, &["--latest", "--archive-mode", "off"]));
    r.assert_ok("step 6: restore with the local repository gone");
    assert!(r.stderr.contains("restoring from repository offsite") && r.stderr.contains("repository local"), "step 6: restore says where from and why:\n{r}");
    let auto_conf = std::fs::read_to_string(restored.pgdata.join("postgresql.auto.conf")).unwrap();
    assert!(auto_conf.contains("--repo offsite fetch"), "step 6: recovery is not pinned to offsite:\n{auto_conf}");
    start_restored(&restored);
    assert_eq!(restored.psql("SELECT count(*) FROM t"), "80000", "step 6: restored from S3");
    assert_eq!(restored.psql("SELECT count(*) FROM t WHERE phase = 'outage'"), "10000", "step 6: the WAL archived during the outage came back through catch-up");

    // Step 7: no output ever showed the secret key.
    assert!(!out.0.contains(S3_SECRET_KEY), "the S3 secret key was printed:\n{}", out.0);
}

/// The SQL side over two local repositories: backups into either, a copy, the catalog's view
/// of which repository holds what, per-repository cleanup and delete, bad names refused, the
/// scheduler's copy job run by itself, and a restore from the second repository.
#[test]
fn sql_functions_over_two_repositories() {
    let base = Archiver::new("sqlmulti");
    let second_dir = base.dir().mkdir("second");
    let toml = format!("\n[[repos]]\nname = \"second\"\ntype = \"local\"\npath = \"{}\"\nretention_days = 90\n", second_dir.display());
    let (archiver, c) = extension_cluster_for(base.with_extra_toml("sqlmulti2", &toml), "sqlmulti", &[]);
    c.psql("CREATE TABLE marks AS SELECT g FROM generate_series(1, 1234) g");

    // Step 1: both repositories are listed, reachable, the first primary.
    let repos = c.psql("SELECT string_agg(name || ' ' || archive || ' ' || is_primary || ' ' || reachable || ' ' || backups, ', ' ORDER BY is_primary DESC) FROM backup.repositories()");
    assert_eq!(repos, "local required true true 0, second required false true 0", "step 1: backup.repositories()");

    // Step 2: a backup into the primary, copied to the second; the catalog knows both hold it.
    let id1 = c.psql("SELECT backup.start_full(wait => true)");
    assert_eq!(c.psql(&format!("SELECT repos FROM backup.list() WHERE id = '{id1}'")), "{local}", "step 2");
    let copied = sql_json(&c, &format!("SELECT backup.copy('{id1}', 'second')"));
    assert_eq!(copied["copied"], serde_json::json!([id1]), "step 2: copy report {copied:#}");
    assert!(copied["objects"].as_u64().unwrap_or(0) > 1 && copied["wal_files"].as_u64().unwrap_or(0) >= 1, "step 2: {copied:#}");
    assert_eq!(c.psql(&format!("SELECT repos FROM backup.list() WHERE id = '{id1}'")), "{local,second}", "step 2");
    let verified = sql_json(&c, &format!("SELECT backup.verify('{id1}', repo => 'second')"));
    assert_eq!(verified["ok"], true, "step 2: the copy verifies: {verified:#}");

    // Step 3: a backup straight into the second repository.
    c.psql("INSERT INTO marks SELECT g FROM generate_series(1235, 2000) g");
    let id2 = c.psql("SELECT backup.start_full(wait => true, repo => 'second')");
    assert_eq!(c.psql(&format!("SELECT repos FROM backup.list() WHERE id = '{id2}'")), "{second}", "step 3");
    assert!(second_dir.join(format!("backup/{id2}/manifest")).exists(), "step 3: no manifest in the second repository");
    assert!(!archiver.storage().exists(&format!("backup/{id2}/manifest")), "step 3: the backup went to the primary too");

    // Step 4: names that do not exist are refused, naming them and what there is.
    let bad = c.try_psql("SELECT backup.start_full(repo => 'nowhere')");
    assert!(!bad.success() && bad.stderr.contains("\"nowhere\"") && bad.stderr.contains("local, second"), "step 4: {bad}");
    let bad = c.try_psql("SELECT backup.copy('backup_19990101_000000', 'second')");
    assert!(!bad.success() && bad.stderr.contains("backup_19990101_000000"), "step 4: {bad}");
    let bad = c.try_psql("SELECT backup.schedule('offsite', '0 5 * * *', kind => 'copy')");
    assert!(!bad.success() && bad.stderr.contains("options"), "step 4: a copy job without options.to: {bad}");
    let bad = c.try_psql("SELECT backup.schedule('offsite', '0 5 * * *', kind => 'copy', options => '{\"to\": \"nowhere\"}')");
    assert!(!bad.success() && bad.stderr.contains("\"nowhere\""), "step 4: {bad}");
    c.psql("SELECT backup.schedule('offsite', '0 5 * * *', kind => 'copy', options => '{\"to\": \"second\"}')");

    // Step 5: cleanup plans each repository with its own policy.
    let plans = c.psql("SELECT string_agg(DISTINCT repo, ',') FROM backup.cleanup(dry_run => true)");
    assert_eq!(plans, "local,second", "step 5: cleanup covers both repositories");

    // Step 6: delete from one repository, then resync agrees with the repositories.
    c.psql(&format!("SELECT backup.delete('{id1}', repo => 'second')"));
    assert_eq!(c.psql(&format!("SELECT repos FROM backup.list() WHERE id = '{id1}'")), "{local}", "step 6");
    assert!(!second_dir.join(format!("backup/{id1}/manifest")).exists(), "step 6: still in the second repository");
    c.psql("DELETE FROM backup.backups");
    assert_eq!(c.psql("SELECT backup.resync()"), "2", "step 6: resync finds both backups");
    let holders = c.psql("SELECT string_agg(id || '=' || repos::text, ' ' ORDER BY id) FROM backup.list()");
    assert_eq!(holders, format!("{id1}={{local}} {id2}={{second}}"), "step 6: after resync");

    // Step 7: the scheduler runs the copy job by itself: what the second repository lacks
    // (id1, deleted from it in step 6) goes there, and the catalog says so.
    c.psql("SELECT backup.unschedule(name) FROM backup.schedules WHERE name <> 'offsite'");
    c.psql("SELECT backup.schedule('offsite', '5 seconds', kind => 'copy', options => '{\"to\": \"second\"}')");
    c.psql("ALTER SYSTEM SET backup.scheduler = on");
    c.psql("SELECT pg_reload_conf()");
    let mut run = String::new();
    wait_until("step 7: a scheduled copy run", Duration::from_secs(90), || {
        run = c.psql("SELECT coalesce(string_agg(status || ': ' || coalesce(message, ''), ' | ' ORDER BY id), '') FROM backup.job_runs WHERE job = 'offsite' AND status <> 'running'");
        !run.is_empty()
    });
    assert!(run.starts_with("succeeded: copied 1 backup(s) to second") && run.contains(&id1), "step 7: the first run copies {id1}: {run}");
    assert!(second_dir.join(format!("backup/{id1}/manifest")).exists(), "step 7: the scheduled copy is not in the second repository");
    assert_eq!(c.psql(&format!("SELECT repos FROM backup.list() WHERE id = '{id1}'")), "{local,second}", "step 7");
    c.psql("ALTER SYSTEM SET backup.scheduler = off");
    c.psql("SELECT pg_reload_conf()");

    // Step 8: a restore from the second repository, WAL from there too.
    let r = Cluster::unpopulated("sqlmulti-restored");
    restore_into(&archiver, &r.pgdata, &["--repo", "second", "--backup-id", &id2, "--target", "immediate", "--archive-mode", "off"])
        .assert_ok("step 8: restore from the second repository");
    start_restored(&r);
    assert_eq!(r.psql("SELECT count(*) FROM marks"), "2000", "step 8: restored {id2}");
}

/// The S3 endpoint misbehaving under the storage layer, through the relay: it dies in the
/// middle of a multipart upload (nothing partial becomes visible, the retry succeeds), and it
/// throttles (503 SlowDown is retried with backoff; past the attempts, a transient error).
#[test]
fn s3_endpoint_killed_mid_upload_and_throttling() {
    use backup_core::storage::{Ctx, PutMode, PutOutcome, S3Storage, Storage, StorageErrorKind};
    let moto = S3Server::start("faults");
    moto.create_bucket("pgb-faults");
    let relay = Relay::start(moto.port);
    let through = S3Storage::open(&S3Server::location(relay.port, "pgb-faults", "f")).unwrap();
    let direct = S3Storage::open(&S3Server::location(moto.port, "pgb-faults", "f")).unwrap();
    let ctx = || Ctx::background().with_timeout(Duration::from_secs(120));
    // 20 MiB, streamed: three parts of a multipart upload (an in-memory put of that size is
    // one request).
    let data: Vec<u8> = (0..20u32 << 20).map(|i| (i.wrapping_mul(7) % 251) as u8).collect();
    let streamed = |data: &[u8]| -> Result<PutOutcome, backup_core::storage::StorageError> {
        use std::io::Write;
        let mut w = through.writer(&ctx(), "big", PutMode::IfAbsent)?;
        for piece in data.chunks(1 << 20) {
            if let Err(e) = w.write_all(piece) {
                return Err(backup_core::storage::StorageError::from_stream("writing", "big", e));
            }
        }
        w.commit()
    };

    // Step 1: the endpoint dies after 12 MiB went up.
    relay.cut_after(12 << 20);
    let failed = streamed(&data);
    assert!(failed.is_err(), "step 1: an upload through a dead endpoint succeeded");
    assert!(!relay.is_up(), "step 1: the relay was never cut (the upload sent under 12 MiB?)");
    assert!(direct.head(&ctx(), "big").unwrap().is_none(), "step 1: a partial object became visible");
    // What the dead upload left behind is for abort_stale_uploads (its writer could not abort it).
    let leftovers = direct.abort_stale_uploads(&ctx(), "", Duration::ZERO).unwrap();
    println!("step 1: {} -> {leftovers} unfinished upload(s) aborted", backup_core::error::report(&failed.unwrap_err()));

    // Step 2: the endpoint is back; the same upload succeeds and reads back whole.
    relay.restore();
    assert_eq!(streamed(&data).unwrap(), PutOutcome::Created, "step 2");
    assert!(direct.get_bytes(&ctx(), "big").unwrap() == data, "step 2: the object read back differs");

    // Step 3: throttling. Fresh connections (the pool's are closed by a cut), two of them
    // answered 503 SlowDown: the read is retried and succeeds.
    relay.cut();
    relay.restore();
    relay.throttle(2);
    let started = std::time::Instant::now();
    assert_eq!(through.get_bytes(&ctx(), "big").unwrap().len(), data.len(), "step 3");
    assert_eq!(relay.throttled(), 2, "step 3: the relay did not throttle as asked");
    println!("step 3: two SlowDown answers cost {:?}", started.elapsed());

    // Step 4: throttled past the attempts: a transient error that says so, in bounded time.
    relay.throttle(20);
    let started = std::time::Instant::now();
    let e = through.get_bytes(&ctx(), "big").unwrap_err();
    let text = backup_core::error::report(&e);
    assert_eq!(e.kind(), StorageErrorKind::Transient, "step 4: {text}");
    assert!(text.contains("SlowDown") || text.contains("503"), "step 4: the error does not say it was throttled: {text}");
    assert!(started.elapsed() < Duration::from_secs(60), "step 4: gave up after {:?}", started.elapsed());
    println!("step 4: {text} (after {:?})", started.elapsed());
    relay.throttle(0);
}

/// An Azure Blob repository (Azurite) as the only one: init, WAL archived by archive_command,
/// a base backup, more WAL, then a restore that recovers to the end of the archive and has
/// every row.
#[test]
fn azure_repository_end_to_end() {
    let azurite = AzureServer::start("azure-e2e");
    azurite.create_container("pgb-azure");
    let base = Archiver::new("azure-e2e"); // holds the key file
    let archiver = base.with_only_repos("azure-only", &azurite.repo_toml("azure", "pgb-azure", "cluster-a"));
    let cluster = Cluster::initdb("azure-e2e");
    let r = archiver.init(&cluster.pgdata);
    r.assert_ok("init the Azure repository");
    assert!(r.stdout.contains("azure://devstoreaccount1/pgb-azure/cluster-a"), "init names the repository:\n{r}");
    cluster.enable_archiving(&archiver);
    cluster.start();
    cluster.psql("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 30000) g");
    let pgdata = cluster.pgdata.to_string_lossy().into_owned();
    archiver.run(&["backup", "--pgdata", &pgdata, "--dbname", &cluster.conninfo()]).assert_ok("backup into Azure");
    cluster.psql("INSERT INTO t SELECT g FROM generate_series(30001, 45000) g");
    let last = cluster.switch_wal();
    cluster.wait_archived(&last, WAIT);
    let id = cli_list_ids(&archiver, "azure").pop().expect("a backup in Azure");
    archiver.run(&["verify", &id]).assert_ok("verify in Azure");

    let restored = Cluster::unpopulated("azure-restored");
    restore_into(&archiver, &restored.pgdata, &["--latest", "--archive-mode", "off"]).assert_ok("restore from Azure");
    start_restored(&restored);
    assert_eq!(restored.psql("SELECT count(*) FROM t"), "45000", "restored from Azure");
    assert!(!archiver.info().to_string().contains(AZURITE_KEY), "info printed the access key");
}
