//! `restore_command` prefetch end to end: a restored cluster replays a few dozen archived
//! segments, most of them served from the spool in `pg_wal` that a detached prefetcher fills
//! ahead of recovery; the spool is gone after promotion. And the end of the archive: `fetch`
//! answers "not archived" at once, and never waits for the prefetcher it started.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use e2e::workload::{log_count, restore_into, RECOVERY_WAIT};
use e2e::*;

const WAIT: Duration = Duration::from_secs(180);
const SPOOL: &str = "pg_backup_ext.spool";

/// Pids of `wal-archiver prefetch` processes working on data directory `pgdata`.
fn prefetchers(pgdata: &Path) -> Vec<u32> {
    let needle = pgdata.to_string_lossy().into_owned();
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if args.iter().any(|a| a == "prefetch") && args.iter().any(|a| a.starts_with(&needle)) {
            out.push(pid);
        }
    }
    out
}

/// A cluster archiving into a fresh repository, a full backup, then `segments` more archived
/// segments holding rows 1..=N of table `t`. Returns the row count and the last segment.
fn archive_after_backup(archiver: &Archiver, a: &Cluster, segments: usize) -> (i64, String) {
    a.psql("CREATE TABLE t (id bigint PRIMARY KEY, note text NOT NULL)");
    let pgdata = a.pgdata.to_string_lossy().into_owned();
    archiver.run(&["backup", "--pgdata", &pgdata, "--dbname", &a.conninfo()]).assert_ok("backup");
    assert_eq!(cli_list_ids(archiver, "backup").len(), 1, "one backup");
    let rows_per_segment = 20_000i64;
    let mut last = String::new();
    for round in 0..segments as i64 {
        a.psql(&format!(
            "INSERT INTO t SELECT g, md5(g::text) FROM generate_series({}, {}) g",
            round * rows_per_segment + 1,
            (round + 1) * rows_per_segment
        ));
        last = a.switch_wal();
    }
    a.wait_archived(&last, WAIT);
    (segments as i64 * rows_per_segment, last)
}

/// Recovery of 24+ archived segments: most come from the spool, the data is complete, the
/// archive's end ends recovery normally, and the first archive_command after promotion removes
/// the spool; no prefetcher is left behind.
#[test]
fn recovery_is_served_from_the_prefetch_spool() {
    let (archiver, a) = archiving_cluster("prefetch", &[]);
    let (rows, last) = archive_after_backup(&archiver, &a, 24);
    let expected = a.psql("SELECT count(*) || ':' || md5(string_agg(note, ',' ORDER BY id)) FROM t");
    a.stop();

    // Restore, keep archiving on (into the same repository: the new timeline is this
    // cluster's), and recover to the end of the archive.
    let r = Cluster::unpopulated("prefetch-restored");
    restore_into(&archiver, &r.pgdata, &["--latest"]).assert_ok("restore");
    r.set(&[("shared_preload_libraries", ""), ("archive_mode", "on"), ("archive_command", &archiver.archive_command())]);
    let started = Instant::now();
    r.start();
    r.wait_recovery_done(RECOVERY_WAIT);
    eprintln!(
        "recovery of {} segments ({} from the spool) took {:?}",
        log_count(&r, "restored log file"),
        log_count(&r, "from the prefetch spool"),
        started.elapsed()
    );

    assert_eq!(r.psql("SELECT count(*) || ':' || md5(string_agg(note, ',' ORDER BY id)) FROM t"), expected, "restored data");
    assert_eq!(r.psql("SELECT count(*) FROM t"), rows.to_string());
    let restored = log_count(&r, "restored log file");
    let spooled = log_count(&r, "from the prefetch spool");
    assert!(restored >= 24, "only {restored} segments restored:\n{}", r.log_tail(40));
    assert!(
        spooled * 2 > restored,
        "only {spooled} of {restored} segments came from the spool:\n{}",
        r.log_tail(60)
    );
    assert_eq!(log_count(&r, "wal-archiver: WARNING"), 0, "warnings during recovery:\n{}", r.log_tail(60));
    // The archive ended at `last`: the next segment was "not archived" and recovery promoted.
    assert!(log_count(&r, &format!("restored log file \"{last}\"")) >= 1, "{last} was not replayed:\n{}", r.log_tail(40));
    assert!(log_count(&r, "selected new timeline ID: 2") == 1, "no promotion:\n{}", r.log_tail(40));
    // At the end of the archive PostgreSQL reads the last segment again: from the spool.
    assert!(log_count(&r, "restored again from the prefetch spool") >= 1, "the last segment was downloaded again:\n{}", r.log_tail(40));

    // Promotion: the first archive_command (the timeline history file) removes the spool, and
    // the prefetcher has ended.
    let spool = r.pg_wal().join(SPOOL);
    wait_until("the spool to be removed after promotion", WAIT, || !spool.exists());
    wait_until("every prefetcher to end", Duration::from_secs(30), || prefetchers(&r.pgdata).is_empty());
    r.psql("INSERT INTO t VALUES (0, 'after promotion')");
    let after = r.switch_wal();
    r.wait_archived(&after, WAIT);
    assert!(!spool.exists(), "the spool came back after promotion");
}

/// `fetch` by hand on a restored (not started) data directory, the end of the archive two
/// segments ahead: fetch returns at once while its prefetcher still runs (no pipe holds it),
/// the next segments come from the spool, the first missing one is "not archived" (exit 1)
/// without waiting, and `prefetch = 0` leaves no spool.
#[test]
fn end_of_archive_and_a_detached_prefetcher() {
    let (archiver, a) = archiving_cluster("prefetch-end", &[]);
    let (_, last) = archive_after_backup(&archiver, &a, 4);
    a.stop();
    let (tli, last_seg) = parse_segment_name(&last).unwrap();
    let name = |seg: u64| segment_name(tli, seg);

    // A window of 2 that the archive can fill: the prefetcher lingers with a full window.
    let two = archiver.with_extra_toml("prefetch-two", "prefetch = 2\n");
    let r = Cluster::unpopulated("prefetch-end-restored");
    restore_into(&two, &r.pgdata, &["--latest"]).assert_ok("restore");
    // The prefetcher only works for a running server in recovery.
    fs::write(r.pgdata.join("postmaster.pid"), "0\n").unwrap();
    let dest = r.pg_wal().join("RECOVERYXLOG");
    let spool = r.pg_wal().join(SPOOL);

    let t = Instant::now();
    let first = two.fetch(&name(last_seg - 2), &dest);
    let took = t.elapsed();
    first.assert_ok("fetch from the repository");
    assert!(!first.stderr.contains("prefetch spool"), "nothing was spooled yet:\n{first}");
    // Had fetch waited for its prefetcher (through a pipe the harness reads), that one would
    // be gone by now: with its window full it lingers for seconds.
    assert!(!prefetchers(&r.pgdata).is_empty(), "no prefetcher runs after fetch returned (fetch took {took:?})");
    wait_until("the prefetcher to spool two segments", WAIT, || {
        spool.join(name(last_seg - 1)).exists() && spool.join(name(last_seg)).exists()
    });
    wait_until("the prefetcher to end", Duration::from_secs(30), || prefetchers(&r.pgdata).is_empty());
    let log = fs::read_to_string(spool.join("prefetch.log")).unwrap_or_default();
    assert!(log.contains("WindowFull"), "prefetch.log:\n{log}");

    let second = two.fetch(&name(last_seg - 1), &dest);
    second.assert_ok("fetch from the spool");
    assert!(second.stderr.contains("from the prefetch spool"), "{second}");
    assert_eq!(fs::metadata(&dest).unwrap().len(), WAL_SEGMENT_SIZE as u64);
    assert!(!spool.join(name(last_seg - 1)).exists(), "a served file stays spooled");
    // The prefetcher started now finds the end of the archive right after `last`.
    let third = two.fetch(&last, &dest);
    third.assert_ok("fetch the last segment");
    assert!(third.stderr.contains("from the prefetch spool"), "{third}");
    wait_until("the prefetcher to reach the end of the archive", WAIT, || {
        fs::read_to_string(spool.join("prefetch.log")).unwrap_or_default().contains("EndOfArchive")
    });
    wait_until("the prefetcher to end", Duration::from_secs(30), || prefetchers(&r.pgdata).is_empty());

    let t = Instant::now();
    let missing = two.fetch(&name(last_seg + 1), &dest);
    assert_eq!(missing.code, 1, "past the end of the archive:\n{missing}");
    assert!(t.elapsed() < Duration::from_secs(5), "'not archived' took {:?}", t.elapsed());
    assert!(prefetchers(&r.pgdata).is_empty(), "a prefetcher started after a miss");
    let spooled: Vec<String> = fs::read_dir(&spool).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    // Disk use is bounded by the window (normally nothing is left: everything was served).
    assert!(spooled.iter().filter(|f| parse_segment_name(f).is_some()).count() <= 2, "spool beyond its window: {spooled:?}");

    // After the first miss PostgreSQL asks for the last segment again: served again from the
    // spool (checked against its digest), the same bytes, without the repository.
    let kept = r.pg_wal().join(&last);
    let _ = fs::remove_file(&kept);
    fs::rename(&dest, &kept).unwrap(); // as PostgreSQL keeps a restored file
    let again = two.fetch(&last, &dest);
    again.assert_ok("fetch the last segment again");
    assert!(again.stderr.contains("restored again from the prefetch spool"), "{again}");
    assert_eq!(fs::read(&dest).unwrap(), fs::read(&kept).unwrap(), "served again, other bytes");

    // Promotion (the signal file gone) and the next push remove the spool.
    fs::remove_file(r.pgdata.join("recovery.signal")).unwrap();
    let mut push = postgres_command(archiver_bin());
    // `dest` holds `last`, as fetched above: pushing it again is "already archived".
    push.current_dir(&r.pgdata).arg("--config").arg(&two.config_path).arg("push").arg(format!("pg_wal/{last}"));
    fs::remove_file(&kept).unwrap();
    fs::rename(&dest, &kept).unwrap();
    give_to_postgres(&r.pg_wal().join(&last));
    run(push, COMMAND_TIMEOUT).assert_ok("push after promotion (already archived)");
    assert!(!spool.exists(), "push after promotion left the spool");

    // prefetch = 0: fetch as before, no spool at all.
    fs::write(r.pgdata.join("recovery.signal"), "").unwrap();
    let off = archiver.with_extra_toml("prefetch-off", "prefetch = 0\n");
    off.fetch(&name(last_seg - 2), &dest).assert_ok("fetch without prefetch");
    assert!(!spool.exists(), "prefetch = 0 made a spool");
    fs::remove_file(r.pgdata.join("postmaster.pid")).unwrap();
}
