//! Self-test of the harness, independent of `wal-archiver`: when these fail, the
//! environment or the harness is broken, not the binary under test.

use e2e::*;
use std::fs;
use std::process::Command;
use std::time::Duration;

/// A cluster archiving with plain `cp` starts, answers psql, archives a switched
/// segment, survives a restart and stops.
#[test]
fn cluster_with_cp_archiving() {
    let target = TestDir::new("harness-archive");
    let c = Cluster::initdb("harness");
    c.set(&[("archive_mode", "on"), ("archive_command", &format!("cp %p {}/%f", target.path().display()))]);
    c.start();
    assert!(c.is_running());
    assert_eq!(c.psql("SELECT 1 + 1"), "2");
    assert_eq!(c.psql("SHOW archive_mode"), "on");
    assert!(!c.try_psql("SELECT * FROM no_such_table").success(), "psql must report SQL errors");

    c.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g");
    let seg = c.switch_wal();
    assert!(parse_segment_name(&seg).is_some(), "switch_wal returned {seg:?}");
    c.wait_archived(&seg, Duration::from_secs(60));
    let copy = fs::read(target.join(&seg)).expect("cp archive_command wrote the segment");
    assert_eq!(copy.len(), WAL_SEGMENT_SIZE);
    assert_eq!(copy, fs::read(c.pg_wal().join(&seg)).unwrap());
    assert_eq!(c.archiver_stats().failed_count, 0);
    assert!(c.ready_files().is_empty(), "ready: {:?}", c.ready_files());
    assert_eq!(c.system_identifier().len(), 19, "sysid is a 64-bit decimal number");

    c.restart();
    assert_eq!(c.psql("SELECT count(*) FROM t"), "1000");
    c.stop();
    assert!(!c.is_running());
}

/// `run` reports exit codes, signals and a plausible peak RSS.
#[test]
fn run_reports_status_and_rss() {
    let sh = |script: &str| {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", script]);
        run(cmd, Duration::from_secs(30))
    };
    let r = sh("echo out; echo err >&2; exit 3");
    assert_eq!((r.code, r.signal), (3, None));
    assert_eq!((r.stdout.as_str(), r.stderr.as_str()), ("out\n", "err\n"));
    let r = sh("kill -9 $$");
    assert_eq!((r.code, r.signal), (-1, Some(libc::SIGKILL)));
}

/// `run_measuring_rss` reports the program's own peak, whatever the test process
/// holds: here 400 MiB of touched memory, which plain `run` would report.
#[test]
fn measured_rss_is_the_programs_own() {
    let ballast = vec![1u8; 400 << 20];
    let sh =
        |script: &str| run_measuring_rss(std::path::Path::new("/bin/sh"), &["-c", script], Duration::from_secs(60));
    let small = sh("exit 4");
    assert_eq!((small.code, small.signal), (4, None));
    assert!(small.max_rss_kib > 0 && small.max_rss_kib < 20 * 1024, "/bin/sh alone: {} KiB", small.max_rss_kib);
    // A grandchild holding a 50 MiB line (sort keeps it in memory) must show up,
    // because wait4's ru_maxrss covers descendants the child has reaped.
    let big = sh("head -c 52428800 /dev/zero | tr '\\0' a | sort > /dev/null");
    big.assert_ok("sort");
    assert!(big.max_rss_kib > 45 * 1024, "peak RSS with a 50 MiB sort: {} KiB", big.max_rss_kib);
    assert!(big.max_rss_kib < 300 * 1024, "the test process's 400 MiB leaked into the figure: {} KiB", big.max_rss_kib);
    assert_eq!(ballast.iter().map(|&b| b as usize).sum::<usize>(), 400 << 20);
}

#[test]
fn segment_names() {
    assert_eq!(segment_name(1, 0x1FF), "0000000100000001000000FF");
    assert_eq!(parse_segment_name("0000000100000001000000FF"), Some((1, 0x1FF)));
    assert_eq!(parse_segment_name("00000001.history"), None);
    assert!(contains_bytes(b"xxabcxx", b"abc"));
    assert!(!contains_bytes(b"xxabxcx", b"abc"));
    assert!(!contains_bytes(b"ab", b"abc"));
}
