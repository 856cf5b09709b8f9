//! End-to-end tests of WAL archiving and restore through the `wal-archiver` binary,
//! wired into real PostgreSQL 15 clusters as `archive_command` / `restore_command`.
//!
//! Every test owns its clusters and repositories (so tests can run in parallel and a
//! failure in one cannot cascade), but the cheap contract checks (b–g of the test
//! plan) share one archiving cluster inside one test, each step labelled in its
//! assertion messages.

use e2e::*;
use serde_json::Value;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

/// Written in many rows of a table; must never appear in the repository.
const MARKER: &str = "PLAINTEXT-MARKER-7f3a9c";
/// Magic number that starts every zstd frame (0xFD2FB528, little-endian).
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// Generous: archiving competes for 2 cores with the load and the other tests.
const ARCHIVE_WAIT: Duration = Duration::from_secs(180);

/// The entry for `timeline` in `info`'s `wal.timelines`.
fn timeline(info: &Value, timeline: u64) -> &Value {
    info["wal"]["timelines"]
        .as_array()
        .and_then(|tls| tls.iter().find(|t| t["timeline"] == timeline))
        .unwrap_or_else(|| panic!("info has no timeline {timeline}:\n{info:#}"))
}

/// Segment numbers of the timeline-1 segments stored in the repository, read
/// from the storage listing (not from the binary's own listing).
fn stored_segments(archiver: &Archiver) -> Vec<u64> {
    let mut segs: Vec<u64> = archiver
        .storage()
        .keys("wal/")
        .iter()
        .filter_map(|key| parse_segment_name(key_file_name(key)))
        .filter(|(tli, _)| *tli == 1)
        .map(|(_, seg)| seg)
        .collect();
    segs.sort();
    segs
}

/// The repository must hold every timeline-1 segment from 000000010000000000000001
/// through at least `last`, without holes, and `info` must agree.
#[track_caller]
fn assert_archive_complete(step: &str, archiver: &Archiver, last: &str) {
    let last_seg = parse_segment_name(last).unwrap().1;
    let on_disk = stored_segments(archiver);
    let expected: Vec<u64> = (1..=*on_disk.last().unwrap_or(&0)).collect();
    assert_eq!(on_disk, expected, "{step}: segments stored in the repository are not contiguous from 1");
    assert!(
        on_disk.last().copied().unwrap_or(0) >= last_seg,
        "{step}: repository ends at {:?}, before {last}",
        on_disk.last().map(|s| segment_name(1, *s))
    );

    let info = archiver.info();
    let tl = timeline(&info, 1);
    assert_eq!(tl["first"], "000000010000000000000001", "{step}: info first segment\n{info:#}");
    let info_last = tl["last"].as_str().unwrap_or_else(|| panic!("{step}: info last\n{info:#}"));
    assert_eq!(info_last, segment_name(1, *on_disk.last().unwrap()), "{step}: info last segment\n{info:#}");
    assert_eq!(tl["gaps"], Value::Array(vec![]), "{step}: info reports gaps\n{info:#}");
    assert_eq!(tl["segments"], on_disk.len() as u64, "{step}: info segment count\n{info:#}");
}

/// Every string inside a JSON value, recursively.
fn json_strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a.iter().flat_map(json_strings).collect(),
        Value::Object(o) => o.values().flat_map(json_strings).collect(),
        _ => vec![],
    }
}

/// A content fingerprint of every table the load test writes.
fn fingerprint(c: &Cluster) -> String {
    c.psql(
        "SELECT concat_ws(' ', \
           (SELECT count(*) || ':' || coalesce(md5(string_agg(md5(t::text), '' ORDER BY aid)), '-') FROM pgbench_accounts t), \
           (SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, ',' ORDER BY bid)), '-') FROM pgbench_branches t), \
           (SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, ',' ORDER BY tid)), '-') FROM pgbench_tellers t), \
           (SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '-') FROM pgbench_history t), \
           (SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, ',' ORDER BY id)), '-') FROM marker t))",
    )
}

fn insert_markers(c: &Cluster, from: u64, to: u64) {
    c.psql(&format!("INSERT INTO marker SELECT g, '{MARKER} row ' || g FROM generate_series({from}, {to}) g"));
}

/// (a) Archiving under load is complete and confidential, and a base backup taken
/// with `-X none` recovers from the repository alone to exactly the primary's data.
#[test]
fn archive_under_load_then_restore_base_backup() {
    let (archiver, a) = archiving_cluster("load", &[]);

    // Step 1: data the base backup will contain.
    a.psql("CREATE TABLE marker (id bigint PRIMARY KEY, note text NOT NULL)");
    insert_markers(&a, 1, 20_000);
    a.pgbench(&["-i", "-s", "5", "-q"]);

    // Step 2: base backup without WAL (the server waits until its end segment is
    // archived, so this already exercises the archive_command).
    let b = Cluster::from_base_backup(&a, "load-restored");

    // Step 3: load until at least 16 segments are complete.
    let mut round = 0;
    while parse_segment_name(&a.current_walfile()).unwrap().1 < 17 {
        round += 1;
        assert!(round <= 30, "step 3: still at {} after 30 load rounds", a.current_walfile());
        a.pgbench(&["-n", "-c", "2", "-j", "2", "-t", "500"]);
        a.psql(&format!(
            "UPDATE pgbench_accounts SET abalance = abalance + {round}, filler = md5(aid::text || '-{round}')"
        ));
        insert_markers(&a, round * 20_000 + 1, (round + 1) * 20_000);
    }

    // Step 4: fingerprint, then switch so that all of it is in archived WAL.
    let expected = fingerprint(&a);
    let last = a.switch_wal();
    a.wait_archived(&last, ARCHIVE_WAIT);
    let stats = a.archiver_stats();
    assert_eq!(stats.failed_count, 0, "step 4: archive_command failed under load: {stats:?}\n{}", a.log_tail(30));
    assert!(parse_segment_name(&last).unwrap().1 >= 15, "step 4: only up to {last} was written");

    // Step 5: the repository describes this cluster and holds every segment.
    let info = archiver.info();
    assert_eq!(info["system_identifier"], a.system_identifier().as_str(), "step 5: info\n{info:#}");
    assert_eq!(info["pg_version"], 15, "step 5: info\n{info:#}");
    assert_eq!(info["wal_segment_size"], WAL_SEGMENT_SIZE as u64, "step 5: info\n{info:#}");
    assert_eq!(info["encryption"], "aes-256-gcm", "step 5: info\n{info:#}");
    assert_archive_complete("step 5", &archiver, &last);

    // Step 5b: wal-list agrees with the repository's layout, and the base backup's
    // history file was archived too.
    let (r, list) = archiver.wal_list(false);
    r.assert_ok("step 5b: wal-list");
    let files = list["files"].as_array().unwrap_or_else(|| panic!("step 5b: wal-list\n{r}"));
    for seg in stored_segments(&archiver) {
        let name = segment_name(1, seg);
        let entry = files
            .iter()
            .find(|f| f["name"] == name.as_str())
            .unwrap_or_else(|| panic!("step 5b: {name} missing from wal-list"));
        assert_eq!(entry["kind"], "segment", "step 5b: {entry}");
        assert_eq!(entry["timeline"], 1, "step 5b: {entry}");
        assert_eq!(entry["object"], format!("wal/0000000100000000/{name}").as_str(), "step 5b: {entry}");
    }
    for entry in files {
        let object = entry["object"].as_str().unwrap_or_else(|| panic!("step 5b: {entry}"));
        assert!(archiver.storage().exists(object), "step 5b: object of {entry} does not exist");
    }
    assert_eq!(
        files.iter().filter(|f| f["kind"] == "backup").count(),
        1,
        "step 5b: expected the one backup history file of pg_basebackup in\n{list:#}"
    );

    // Step 6: the marker is in the server's WAL, but nowhere in the repository.
    let in_pg_wal = files_under(&a.pg_wal()).iter().any(|p| contains_bytes(&fs::read(p).unwrap(), MARKER.as_bytes()));
    assert!(in_pg_wal, "step 6: marker not found in pg_wal: the check below would prove nothing");
    // Compression alone already hides the marker (entropy-coded literals), so also
    // require that no object starts with a zstd frame in the clear: objects are
    // compressed *then* encrypted, so the frame magic must be inside the ciphertext.
    let repo = archiver.storage();
    for key in repo.keys("") {
        let bytes = repo.read(&key);
        assert!(!contains_bytes(&bytes, MARKER.as_bytes()), "step 6: plaintext marker found in {key}");
        if key.starts_with("wal/") {
            let head = &bytes[..bytes.len().min(256)];
            assert!(!contains_bytes(head, &ZSTD_MAGIC), "step 6: unencrypted zstd frame in {key}");
        }
    }

    // Step 7: archive recovery of the base backup reaches the same data.
    b.enable_archive_recovery(&archiver);
    b.start();
    b.wait_recovery_done(Duration::from_secs(300));
    assert_eq!(fingerprint(&b), expected, "step 7: restored cluster differs from the primary");
}

/// (b)–(g), plus keygen and init basics: the push/fetch contract and its failure
/// modes, on one archiving cluster.
#[test]
fn push_fetch_contract_and_failure_modes() {
    let (archiver, a) = archiving_cluster("contract", &[]);
    let scratch = archiver.dir();

    // Setup: two archived segments; keep the server's own copy of the first.
    a.psql("CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 50000) g");
    let seg = a.switch_wal();
    a.psql("INSERT INTO t SELECT g, 'second' FROM generate_series(1, 50000) g");
    let seg2 = a.switch_wal();
    a.wait_archived(&seg2, ARCHIVE_WAIT);
    let original = fs::read(a.pg_wal().join(&seg)).expect("setup: segment still in pg_wal");
    assert_eq!(original.len(), WAL_SEGMENT_SIZE, "setup: {seg} size");

    // (keygen) mode 0600, prints the id, never the key; a second keygen appends.
    let key_file = scratch.join("extra-keys.json");
    let r = keygen(&key_file, Some("first-key"));
    r.assert_ok("(keygen) keygen --name first-key");
    assert!(r.stdout.contains("first-key"), "(keygen) keygen must print the key id\n{r}");
    keygen(&key_file, Some("second-key")).assert_ok("(keygen) keygen appending a second key");
    let mode = fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "(keygen) key file mode is {mode:o}");
    let key_text = fs::read_to_string(&key_file).unwrap();
    assert!(key_text.contains("first-key") && key_text.contains("second-key"), "(keygen) both keys kept:\n{key_text}");
    // Key material is at least 43 characters in any text encoding of 256 bits.
    let key_json: Value = serde_json::from_str(&key_text).unwrap_or(Value::Null);
    for secret in json_strings(&key_json).into_iter().filter(|v| v.len() >= 40) {
        assert!(!r.output().contains(secret.as_str()), "(keygen) keygen printed a long value of the key file");
    }

    // (init) idempotent for the same cluster; set up above, so a second time is fine.
    archiver.init(&a.pgdata).assert_ok("(init) second init for the same cluster");

    // (b) fetch returns the server's bytes; pushing them again is a no-op success.
    let fetched = scratch.mkdir("fetched").join(&seg);
    archiver.fetch(&seg, &fetched).assert_ok("(b) fetch of an archived segment");
    assert!(fs::read(&fetched).unwrap() == original, "(b) fetched {seg} differs from pg_wal/{seg}");
    archiver.push(&fetched).assert_ok("(b) re-push of identical content");

    // (c) different content under an archived name is refused and changes nothing.
    let repo = archiver.storage();
    let object = wal_object_key(&seg);
    let object_before =
        repo.read_if_exists(&object).unwrap_or_else(|| panic!("(c) object {object} is not in the repository"));
    let mut altered = original.clone();
    altered[XLOG_BLCKSZ + 100] ^= 0xff;
    let altered_path = scratch.write(format!("altered/{seg}"), &altered);
    let r = archiver.push(&altered_path);
    assert_eq!(r.code, 1, "(c) push of different content must fail with 1\n{r}");
    assert!(
        r.stderr.contains(&seg) && r.stderr.contains("different"),
        "(c) stderr must name {seg} and say \"different\"\n{r}"
    );
    assert!(repo.read(&object) == object_before, "(c) the stored object was modified");
    let refetched = scratch.mkdir("refetched").join(&seg);
    archiver.fetch(&seg, &refetched).assert_ok("(c) fetch after refused push");
    assert!(fs::read(&refetched).unwrap() == original, "(c) fetch no longer returns the original bytes");

    // (d) names not in the repository: exit 1, destination untouched.
    let missing_dir = scratch.mkdir("missing");
    for name in ["0000000100000099000000FF", "00000009.history"] {
        let dest = missing_dir.join(name);
        let r = archiver.fetch(name, &dest);
        assert_eq!(r.code, 1, "(d) fetch of missing {name} must exit 1\n{r}");
        assert!(!dest.exists(), "(d) fetch of missing {name} created its destination");
    }

    // (e) a key that did not write the repository: a hard error (> 125).
    let wrong = archiver.with_other_key("contract-wrongkey");
    let dest = wrong.dir().join(&seg);
    let r = wrong.fetch(&seg, &dest);
    assert_eq!((r.code, r.signal), (128, None), "(e) fetch with the wrong key must exit 128\n{r}");
    assert!(r.stderr.contains(&seg), "(e) stderr must name {seg}\n{r}");
    assert!(!dest.exists(), "(e) failed fetch created its destination");

    // (f) a segment of another cluster is refused on its system identifier.
    let foreign = Cluster::initdb("contract-foreign");
    assert_ne!(foreign.system_identifier(), a.system_identifier(), "(f) setup");
    let foreign_name = "000000010000000000000001";
    let foreign_object = wal_object_key(foreign_name);
    let stored_before = repo.read_if_exists(&foreign_object);
    let r = archiver.push(&foreign.pg_wal().join(foreign_name));
    assert_eq!(r.code, 1, "(f) push of a foreign segment must exit 1\n{r}");
    assert!(r.stderr.contains("system identifier"), "(f) stderr must mention \"system identifier\"\n{r}");
    assert_eq!(repo.read_if_exists(&foreign_object), stored_before, "(f) the stored {foreign_name} changed");
    let r = archiver.init(&foreign.pgdata);
    assert_ne!(r.code, 0, "(f) init of the repository for another cluster must fail\n{r}");

    // (g) one flipped byte in a stored object is detected by fetch and by wal-list --verify.
    repo.flip_middle_bit(&object, 0x01);
    let dest = scratch.mkdir("corrupt").join(&seg);
    let r = archiver.fetch(&seg, &dest);
    assert_eq!((r.code, r.signal), (128, None), "(g) fetch of a corrupt object must exit 128\n{r}");
    assert!(r.stderr.contains(&seg), "(g) stderr must name {seg}\n{r}");
    assert!(!dest.exists(), "(g) failed fetch created its destination");
    let (r, list) = archiver.wal_list(true);
    assert_eq!(r.code, 1, "(g) wal-list --verify must exit 1 with a corrupt object\n{r}");
    let files = list["files"].as_array().unwrap_or_else(|| panic!("(g) wal-list\n{r}"));
    let bad: Vec<&Value> = files.iter().filter(|f| f["status"] != "ok").collect();
    assert_eq!(bad.len(), 1, "(g) exactly one object must be reported corrupt\n{list:#}");
    assert_eq!(bad[0]["name"], seg.as_str(), "(g) wrong file reported corrupt\n{list:#}");
    let status = bad[0]["status"].as_str().unwrap_or("");
    assert!(status.starts_with("corrupt"), "(g) status of {seg}: {status:?}");
    assert!(files.iter().any(|f| f["name"] == seg2.as_str()), "(g) {seg2} missing from wal-list\n{list:#}");
}

/// (h) While the repository cannot be written, archiving fails and PostgreSQL keeps
/// the segments; once it is writable again, everything is archived without holes.
#[test]
fn archiving_catches_up_after_repository_was_unwritable() {
    let (archiver, a) = archiving_cluster("unwritable", &[]);
    a.psql("CREATE TABLE t (id int, v text)");
    a.psql("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 10000) g");
    let first = a.switch_wal();
    a.wait_archived(&first, ARCHIVE_WAIT);

    // Outage: the server runs as postgres, so read-only directories stop it.
    let wal_dir = archiver.repo().join("wal");
    let wal_dir = wal_dir.to_str().unwrap();
    run_root_ok("chmod", &["-R", "a-w", wal_dir]);
    let before = a.archiver_stats();
    let mut outage = Vec::new();
    for i in 0..3 {
        a.psql(&format!("INSERT INTO t SELECT g, 'outage {i}' FROM generate_series(1, 10000) g"));
        outage.push(a.switch_wal());
    }
    wait_until("archive failures while the repository is read-only", ARCHIVE_WAIT, || {
        a.archiver_stats().failed_count > before.failed_count
    });
    assert!(!a.is_archived(&outage[0]), "outage: {} was archived into a read-only repository", outage[0]);
    assert!(!archiver.storage().exists(&wal_object_key(&outage[0])), "outage: object for {} exists", outage[0]);

    // Recovery: writable again; the next switch wakes the archiver up.
    run_root_ok("chmod", &["-R", "u+w", wal_dir]);
    a.psql("INSERT INTO t SELECT g, 'after' FROM generate_series(1, 10000) g");
    let last = a.switch_wal();
    a.wait_archived(&last, ARCHIVE_WAIT);
    assert_archive_complete("after outage", &archiver, &last);
    assert_eq!(a.ready_files(), Vec::<String>::new(), "after outage: segments still waiting in archive_status");
    let after = a.archiver_stats();
    assert!(after.archived_count >= before.archived_count + 4, "after outage: {before:?} -> {after:?}");
}

/// (i) push streams: a 16 MB segment, compressible or not, is pushed in at most 64 MB.
#[test]
fn push_memory_is_bounded() {
    const LIMIT_KIB: i64 = 64 * 1024;
    let c = Cluster::initdb("rss");
    let name = "000000010000000000000001";
    let real = fs::read(c.pg_wal().join(name)).unwrap();
    assert_eq!(real.len(), WAL_SEGMENT_SIZE);
    let tail_len = WAL_SEGMENT_SIZE - XLOG_BLCKSZ;
    let mut peaks = Vec::new();
    for (label, tail) in [("random", random_bytes(tail_len)), ("zeros", vec![0u8; tail_len])] {
        // A repository of its own per variant: both files carry the same name.
        let archiver = Archiver::new(&format!("rss-{label}"));
        archiver.init(&c.pgdata).assert_ok(&format!("(i) {label}: init"));
        let mut segment = real[..XLOG_BLCKSZ].to_vec();
        segment.extend_from_slice(&tail);
        let path = archiver.dir().write(format!("in/{name}"), &segment);
        let r = archiver.push_measuring_rss(&path);
        r.assert_ok(&format!("(i) {label}: push"));
        peaks.push(format!("{label}: {} KiB", r.max_rss_kib));

        let back = archiver.dir().mkdir("out").join(name);
        archiver.fetch(name, &back).assert_ok(&format!("(i) {label}: fetch"));
        assert!(fs::read(&back).unwrap() == segment, "(i) {label}: round trip changed the bytes");
        if r.max_rss_kib > LIMIT_KIB {
            peaks.last_mut().unwrap().push_str(" (over the limit)");
        }
    }
    // Both variants are measured before judging, so a failure reports both peaks.
    assert!(
        !peaks.iter().any(|p| p.ends_with("(over the limit)")),
        "(i) peak RSS of push above {LIMIT_KIB} KiB: {peaks:?}"
    );
}

/// (j) `check` passes on a correctly wired cluster and fails on a missing repository
/// or another cluster's data directory.
#[test]
fn check_verb() {
    let (archiver, a) = archiving_cluster("check", &[]);
    let pgdata = a.pgdata.to_str().unwrap();
    let r = archiver.run(&["check", "--pgdata", pgdata, "--dbname", &a.conninfo(), "--archive-timeout", "60"]);
    r.assert_ok("(j) check on a correctly archiving cluster");

    let missing = archiver.dir().join("no-such-repo");
    let bad = archiver.with_repo_path("check-missing", &missing);
    let r = bad.run(&["check", "--pgdata", pgdata]);
    assert_eq!(r.code, 1, "(j) check with a missing repository must exit 1\n{r}");
    assert!(r.output().contains(missing.to_str().unwrap()), "(j) output must name {}\n{r}", missing.display());

    let other = Cluster::initdb("check-foreign");
    let r = archiver.run(&["check", "--pgdata", other.pgdata.to_str().unwrap()]);
    assert_eq!(r.code, 1, "(j) check against another cluster's data directory must exit 1\n{r}");
}

/// (k) The extension loads through shared_preload_libraries and answers.
/// A repository named in a `[[repos]]` table works as `repo_path` does: init, archive_command,
/// info and fetch go to it; a table naming a storage type that does not exist is refused by name.
#[test]
fn repository_named_in_a_repos_table() {
    let plain = Archiver::new("repos-table");
    let archiver = plain.with_repos_table("repos-table-named", "primary");
    let c = Cluster::initdb("repos-table");
    archiver.init(&c.pgdata).assert_ok("init through [[repos]]");
    assert_eq!(archiver.info()["repository"], archiver.repo().display().to_string(), "info names another repository");
    c.enable_archiving(&archiver);
    c.start();
    c.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 10000) g");
    let seg = c.switch_wal();
    c.wait_archived(&seg, ARCHIVE_WAIT);
    assert!(archiver.storage().exists(&wal_object_key(&seg)), "{seg} is not in the [[repos]] repository");
    let (via_table, via_path) = (archiver.dir().join("via-table"), plain.dir().join("via-path"));
    archiver.fetch(&seg, &via_table).assert_ok("fetch through [[repos]]");
    plain.fetch(&seg, &via_path).assert_ok("fetch through repo_path");
    let fetched = fs::read(&via_table).unwrap();
    assert_eq!(fetched.len(), WAL_SEGMENT_SIZE);
    assert!(fetched == fs::read(&via_path).unwrap(), "the two configurations read different bytes");

    let unknown = archiver.dir().write("ftp.toml", "[[repos]]\nname = \"offsite\"\ntype = \"ftp\"\npath = \"/x\"\n");
    let mut cmd = postgres_command(archiver_bin());
    cmd.arg("--config").arg(&unknown).arg("info");
    let r = run(cmd, COMMAND_TIMEOUT);
    assert_eq!(r.code, 1, "an unknown storage type: {r}");
    assert!(
        r.stderr.contains("\"ftp\"") && r.stderr.contains("offsite") && r.stderr.contains("local") && r.stderr.contains("s3"),
        "the refusal must name the type, the repository and what is supported: {r}"
    );
    // A known type with another type's settings is refused too, naming the setting.
    let mixed = archiver.dir().write("s3.toml", "[[repos]]\nname = \"offsite\"\ntype = \"s3\"\npath = \"/x\"\n");
    let mut cmd = postgres_command(archiver_bin());
    cmd.arg("--config").arg(&mixed).arg("info");
    let r = run(cmd, COMMAND_TIMEOUT);
    assert!(r.code == 1 && r.stderr.contains("offsite") && r.stderr.contains("not path"), "an s3 repository with a path: {r}");
}

#[test]
fn extension_loads() {
    let pg_config = |what: &str| {
        let mut cmd = std::process::Command::new(pg_bin("pg_config"));
        cmd.arg(what);
        let r = run(cmd, COMMAND_TIMEOUT);
        r.assert_ok("pg_config");
        r.stdout.trim().to_string()
    };
    let library = Path::new(&pg_config("--pkglibdir")).join("pg_backup_ext.so");
    let control = Path::new(&pg_config("--sharedir")).join("extension/pg_backup_ext.control");
    for file in [&library, &control] {
        assert!(
            file.is_file(),
            "(k) {} is missing: pg_backup_ext is not installed into the system PostgreSQL \
             (the Makefile installs it before the tests run)",
            file.display()
        );
    }

    let c = Cluster::initdb("ext");
    c.set(&[("shared_preload_libraries", "pg_backup_ext"), ("backup.scheduler", "off")]);
    c.start();
    c.psql("CREATE EXTENSION pg_backup_ext");
    let version = c.psql("SELECT backup.version()");
    assert!(!version.trim().is_empty(), "(k) backup.version() returned an empty string");
}
