//! WAL summaries checked against PostgreSQL 15 itself: a throwaway cluster runs a workload that
//! touches every kind of record the summaries care about, and for the WAL it wrote the block
//! sets must be exactly those `pg_waldump` reports, per segment and over a range that needs
//! records stitched across segment boundaries.
//!
//! Skipped (with a message) where PostgreSQL 15 is not installed. The cluster runs as the OS
//! user `postgres` (the server refuses root), on a Unix socket in its own temporary directory.
//! It runs twice: with 1 MB WAL segments, so that a small workload crosses many segment
//! boundaries and a 2.5 MB record fills whole segments, and with the default 16 MB.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use backup_core::pg::wal::{Lsn, SegmentPos, TimelineId, WalFileName};
use backup_core::pg::walsummary::{
    changed_between, summarize_segment, ChangedBlocks, DatabaseChange, Fork, RelFileNode, RelationChange, RelationFile, SegmentSummary,
};

const BIN: &str = "/usr/lib/postgresql/15/bin";
const TIMELINE: TimelineId = TimelineId(1);

type BlockSet = BTreeSet<(RelFileNode, Fork, u32)>;

/// A cluster in a temporary directory, stopped when dropped (also when a check fails).
struct Cluster {
    dir: tempfile::TempDir,
    port: u16,
}

impl Cluster {
    fn start(segment_size: u32) -> Cluster {
        let dir = tempfile::Builder::new().prefix("walsummary-").tempdir_in("/tmp").expect("temporary directory");
        let (uid, gid) = (id("-u"), id("-g"));
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown the cluster directory to postgres");
        // Only a Unix socket in our own directory: the port just names the socket, but pick one
        // nothing else uses anyway.
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let cluster = Cluster { dir, port };
        let data = cluster.data();
        cluster.run_ok(&[
            &format!("{BIN}/initdb"),
            "-k",
            "-A",
            "trust",
            "-U",
            "postgres",
            &format!("--wal-segsize={}", segment_size >> 20),
            "--no-sync",
            "--no-instructions",
            "-D",
            data.to_str().unwrap(),
        ]);
        let options = format!(
            "-c listen_addresses='' -c unix_socket_directories='{}' -p {port} -c wal_level=replica -c fsync=off \
             -c wal_keep_size=1GB -c max_wal_size=1GB -c checkpoint_timeout=1h -c autovacuum=off",
            cluster.dir.path().display()
        );
        let log = cluster.dir.path().join("server.log");
        cluster.run_ok(&[&format!("{BIN}/pg_ctl"), "-D", data.to_str().unwrap(), "-l", log.to_str().unwrap(), "-o", &options, "-w", "start"]);
        cluster
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn pg_wal(&self) -> PathBuf {
        self.data().join("pg_wal")
    }

    /// Run a program as `postgres`, from the cluster directory (root's working directory may
    /// not be readable by it).
    fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).args(args).current_dir(self.dir.path());
        command.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() }).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
        if let Some(input) = stdin {
            child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        }
        child.wait_with_output().unwrap()
    }

    fn run_ok(&self, args: &[&str]) -> String {
        let out = self.run(args, None);
        assert!(out.status.success(), "{args:?} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// Run a script, statement by statement (CREATE DATABASE refuses a transaction block).
    fn psql(&self, script: &str) -> String {
        let socket = self.dir.path().to_str().unwrap().to_string();
        let port = self.port.to_string();
        let psql = format!("{BIN}/psql");
        let args =
            [&psql, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", &socket, "-p", &port, "-U", "postgres", "-d", "postgres", "-f", "-"];
        let out = self.run(&args, Some(script));
        assert!(out.status.success(), "psql failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    fn waldump(&self, args: &[&str]) -> Output {
        let dump = format!("{BIN}/pg_waldump");
        let pg_wal = self.pg_wal();
        let mut all = vec![dump.as_str(), "--bkp-details", "-p", pg_wal.to_str().unwrap()];
        all.extend_from_slice(args);
        self.run(&all, None)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self.run(&[&format!("{BIN}/pg_ctl"), "-D", data.to_str().unwrap(), "-m", "immediate", "-w", "stop"], None);
    }
}

fn id(flag: &str) -> u32 {
    let out = Command::new("id").args([flag, "postgres"]).output().expect("id postgres");
    String::from_utf8(out.stdout).unwrap().trim().parse().expect("postgres's uid/gid")
}

/// What pg_waldump says about a stretch of WAL.
#[derive(Default)]
struct Dump {
    blocks: BlockSet,
    /// Block references per record start, to tell which records a block came from.
    blocks_by_record: BTreeMap<Lsn, BlockSet>,
    /// `rmgr`, `desc` of each record, by its start.
    records: BTreeMap<Lsn, (String, String)>,
    compression_methods: BTreeSet<String>,
}

impl Dump {
    fn parse(text: &str) -> Dump {
        let mut dump = Dump::default();
        let mut current = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("rmgr: ") {
                let rmgr = rest.split_whitespace().next().unwrap().to_string();
                let lsn_text = rest.split("lsn: ").nth(1).unwrap().split(',').next().unwrap();
                let lsn: Lsn = lsn_text.parse().unwrap();
                // A logical message's description prints its whole payload.
                let desc = rest.split("desc: ").nth(1).unwrap_or("").chars().take(10_000).collect::<String>();
                dump.records.insert(lsn, (rmgr, desc.trim().to_string()));
                current = Some(lsn);
            } else if let Some(rest) = line.trim_start().strip_prefix("blkref #") {
                // "0: rel 1663/5/16384 fork main blk 14 (FPW); hole: ..., method: pglz"
                let words: Vec<&str> = rest.split_whitespace().collect();
                let rel: RelFileNode = words[2].parse().unwrap();
                assert_eq!(words[3], "fork", "{line}");
                let fork = [Fork::Main, Fork::Fsm, Fork::Vm, Fork::Init].into_iter().find(|f| f.name() == words[4]).unwrap();
                assert_eq!(words[5], "blk", "{line}");
                let block: u32 = words[6].trim_end_matches(';').parse().unwrap();
                dump.blocks.insert((rel, fork, block));
                dump.blocks_by_record.entry(current.unwrap()).or_default().insert((rel, fork, block));
                if let Some(method) = rest.split("method: ").nth(1) {
                    dump.compression_methods.insert(method.trim().to_string());
                }
            }
        }
        dump
    }

    fn records_of(&self, rmgr: &str) -> BTreeMap<Lsn, &str> {
        self.records.iter().filter(|(_, (r, _))| r == rmgr).map(|(lsn, (_, desc))| (*lsn, desc.as_str())).collect()
    }
}

fn changed_set(c: &ChangedBlocks) -> BlockSet {
    c.relations().flat_map(|(r, f, ranges)| ranges.iter().flat_map(move |x| (x.start..x.end).map(move |b| (r, f, b)))).collect()
}

fn segment_blocks(s: &SegmentSummary) -> BlockSet {
    s.blocks.iter().flat_map(|((r, f), runs)| runs.iter().flat_map(move |run| (run.start..run.end).map(move |b| (*r, *f, b)))).collect()
}

fn segment_name(start: Lsn, size: u32) -> String {
    WalFileName::Segment(SegmentPos::from_segno(TIMELINE, start.0 / u64::from(size), size)).to_string()
}

fn value(output: &str, key: &str) -> Lsn {
    let line = output.lines().find_map(|l| l.strip_prefix(&format!("{key}="))).unwrap_or_else(|| panic!("no {key}= in {output}"));
    line.parse().unwrap()
}

fn summarize_range(pg_wal: &Path, from: Lsn, to: Lsn, size: u32) -> Vec<SegmentSummary> {
    let mut summaries = Vec::new();
    let mut start = from;
    let mut busy = std::time::Duration::ZERO;
    let mut stored = 0;
    while start < to {
        let bytes = std::fs::read(pg_wal.join(segment_name(start, size))).unwrap();
        let began = std::time::Instant::now();
        let summary = summarize_segment(&bytes, TIMELINE, start, size, None).unwrap();
        busy += began.elapsed();
        let json = summary.to_bytes();
        stored += json.len();
        assert_eq!(SegmentSummary::from_bytes(&json).unwrap(), summary);
        summaries.push(summary);
        start = Lsn(start.0 + u64::from(size));
    }
    let mb = (to.0 - from.0) as f64 / f64::from(1 << 20);
    eprintln!("summarized {mb} MB of WAL in {busy:?} ({:.0} MB/s) into {stored} bytes of JSON", mb / busy.as_secs_f64());
    summaries
}

#[test]
fn walsummary_agrees_with_pg_waldump_1mb_segments() {
    check_against_pg_waldump(1 << 20);
}

#[test]
fn walsummary_agrees_with_pg_waldump_16mb_segments() {
    check_against_pg_waldump(16 << 20);
}

fn check_against_pg_waldump(segment_size: u32) {
    if !Path::new(&format!("{BIN}/initdb")).exists() {
        eprintln!("skipped: PostgreSQL 15 is not installed at {BIN}");
        return;
    }
    let small = segment_size == 1 << 20;
    let cluster = Cluster::start(segment_size);
    // Start on a fresh segment; end with a switch, so that every segment compared is complete
    // and written out. Checkpoints in between make the next changes full-page images, written
    // with each compression method in turn.
    // With 1 MB segments the 2.5 MB message leaves a segment that is nothing but its
    // continuation; with 16 MB ones more rows make several segments.
    let rows = if small { 20_000 } else { 100_000 };
    let out = cluster.psql(&format!(
        "SELECT pg_switch_wal();
         SELECT 'start=' || pg_current_wal_lsn();
         CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series(1, {rows}) g;
         CHECKPOINT;
         SET wal_compression = pglz;
         UPDATE t SET v = 'y' WHERE id % 7 = 0;
         CHECKPOINT;
         SET wal_compression = lz4;
         UPDATE t SET v = 'z' WHERE id % 11 = 0;
         CHECKPOINT;
         SET wal_compression = zstd;
         UPDATE t SET v = 'w' WHERE id % 13 = 0;
         RESET wal_compression;
         CREATE INDEX t_v ON t (v);
         CREATE TABLE t2 AS SELECT * FROM t WHERE id < 1000;
         TRUNCATE t2;
         BEGIN;
         CREATE TABLE t3 (x int);
         INSERT INTO t3 SELECT generate_series(1, 1000);
         TRUNCATE t3;
         COMMIT;
         CREATE TABLE t4 AS SELECT generate_series(1, 10000) AS x;
         DELETE FROM t4 WHERE x > 100;
         VACUUM t4;
         CREATE DATABASE d1 STRATEGY wal_log;
         CREATE DATABASE d2 STRATEGY file_copy;
         DROP DATABASE d2;
         SELECT 'rp=' || pg_create_restore_point('rp1');
         SELECT pg_logical_emit_message(true, 'big', repeat('x', 2500000)) IS NOT NULL;
         UPDATE t SET v = 'after' WHERE id < 50;
         SELECT pg_switch_wal();
         SELECT 'end=' || pg_current_wal_lsn();"
    ));
    let (start, end, rp_end) = (value(&out, "start"), value(&out, "end"), value(&out, "rp"));
    assert_eq!(start.0 % u64::from(segment_size), 0);
    assert_eq!(end.0 % u64::from(segment_size), 0);
    let summaries = summarize_range(&cluster.pg_wal(), start, end, segment_size);
    assert!(summaries.len() >= 3, "the workload wrote {} segments", summaries.len());

    // Per segment: the records that start and end in it, as pg_waldump reads a lone segment.
    for s in &summaries {
        let name = segment_name(s.start, segment_size);
        assert!(!s.is_partial(), "{name}: {:?}", s.end);
        let out = cluster.waldump(&[&name]);
        let dump = Dump::parse(&String::from_utf8_lossy(&out.stdout));
        assert_eq!(segment_blocks(s), dump.blocks, "block references of {name}");
        assert_eq!(s.first_record, dump.records.keys().next().copied().or(s.tail.as_ref().map(|t| t.lsn)), "{name}");
    }
    assert!(summaries.iter().any(|s| s.tail.is_some()), "some record crosses a segment boundary");
    assert!(!small || summaries.iter().any(|s| s.first_record.is_none()), "the 2.5 MB message fills a segment");
    assert!(summaries.last().unwrap().tail.is_none());

    // The whole range: split records stitched.
    let from = summaries[0].first_record.unwrap();
    let changed = changed_between(&summaries, from, end).unwrap();
    let out = cluster.waldump(&["-s", &from.to_string(), "-e", &end.to_string()]);
    assert!(out.status.success(), "pg_waldump: {}", String::from_utf8_lossy(&out.stderr));
    let dump = Dump::parse(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(changed_set(&changed), dump.blocks, "block references over {from}..{end}");
    assert_eq!(
        dump.compression_methods,
        ["lz4", "pglz", "zstd"].into_iter().map(String::from).collect(),
        "full-page images of every compression method were checked"
    );

    // The restore point, where pg_waldump lists it and where pg_create_restore_point() said.
    let rp = changed.restore_points();
    assert_eq!(rp.len(), 1);
    assert_eq!(rp[0].name, "rp1");
    assert_eq!(rp[0].end, rp_end);
    let (rmgr, desc) = &dump.records[&rp[0].lsn];
    assert_eq!((rmgr.as_str(), desc.as_str()), ("XLOG", "RESTORE_POINT rp1"));

    // Every smgr and dbase record, with what it names.
    let storage = dump.records_of("Storage");
    let (dropped, ours): (Vec<_>, Vec<_>) = changed.unsafe_relations().iter().partition(|e| e.change == RelationChange::Dropped);
    let ours: BTreeMap<Lsn, _> = ours.into_iter().map(|e| (e.lsn, e)).collect();
    assert_eq!(ours.keys().collect::<Vec<_>>(), storage.keys().collect::<Vec<_>>());
    assert!(storage.values().any(|d| d.starts_with("TRUNCATE")), "the workload truncates: {storage:?}");
    for (lsn, desc) in &storage {
        let event = ours[lsn];
        let words: Vec<&str> = desc.split_whitespace().collect();
        let file = RelationFile::parse(words[1]).unwrap_or_else(|| panic!("{desc}"));
        assert_eq!(event.rel, file.rel, "{desc}");
        match (&event.change, words[0]) {
            (RelationChange::Created { fork }, "CREATE") => assert_eq!(*fork, file.fork, "{desc}"),
            (RelationChange::Truncated { blocks, flags }, "TRUNCATE") => {
                assert_eq!(desc, &format!("TRUNCATE {} to {blocks} blocks flags {flags}", words[1]));
            }
            other => panic!("{desc}: {other:?}"),
        }
        assert!(!changed.is_vouched(event.rel, Fork::Main), "{desc}");
    }
    // Relations unlinked by commits and aborts: "COMMIT <time>; rels: base/5/16395 base/5/16394; ...".
    let mut theirs_dropped = BTreeSet::new();
    for (lsn, desc) in dump.records_of("Transaction") {
        if let Some(rels) = desc.split("rels: ").nth(1) {
            for path in rels.split(';').next().unwrap().split_whitespace() {
                theirs_dropped.insert((lsn, RelationFile::parse(path).unwrap_or_else(|| panic!("{desc}")).rel));
            }
        }
    }
    let ours_dropped: BTreeSet<_> = dropped.iter().map(|e| (e.lsn, e.rel)).collect();
    assert!(!theirs_dropped.is_empty(), "the workload drops relations");
    assert_eq!(ours_dropped, theirs_dropped);
    let databases = dump.records_of("Database");
    assert_eq!(databases.len(), 3, "{databases:?}");
    for (lsn, desc) in &databases {
        let ours: BTreeSet<(u32, u32)> = changed.unsafe_databases().iter().filter(|e| e.lsn == *lsn).map(|e| (e.spc, e.db)).collect();
        let theirs: BTreeSet<(u32, u32)> = match desc.split_whitespace().next().unwrap() {
            // "CREATE_FILE_COPY copy dir 1663/1 to 1663/16390", "CREATE_WAL_LOG create dir 1663/16391"
            "CREATE_FILE_COPY" | "CREATE_WAL_LOG" => vec![desc.split_whitespace().last().unwrap()],
            // "DROP dir 1663/16390"
            "DROP" => desc.split_whitespace().skip(2).collect::<Vec<_>>(),
            other => panic!("unexpected dbase record {other}"),
        }
        .into_iter()
        .map(|t| {
            let (spc, db) = t.split_once('/').unwrap();
            (spc.parse().unwrap(), db.parse().unwrap())
        })
        .collect();
        assert_eq!(ours, theirs, "{desc}");
        let event = changed.unsafe_databases().iter().find(|e| e.lsn == *lsn).unwrap();
        let expected = match desc.split_whitespace().next().unwrap() {
            "CREATE_FILE_COPY" => matches!(event.change, DatabaseChange::CopiedFrom { .. }),
            "CREATE_WAL_LOG" => event.change == DatabaseChange::Created,
            _ => event.change == DatabaseChange::Dropped,
        };
        assert!(expected, "{desc}: {:?}", event.change);
        assert!(!changed.is_vouched(RelFileNode { spc: event.spc, db: event.db, rel: 1259 }, Fork::Main));
    }
    assert!(changed.unsafe_cluster().is_empty(), "{:?}", changed.unsafe_cluster());
    let (t_rel, t_fork, _) =
        *dump.blocks.iter().find(|(r, f, _)| r.db == 5 && *f == Fork::Main && !changed.unsafe_relations().iter().any(|e| e.rel == *r)).unwrap();
    assert!(changed.is_vouched(t_rel, t_fork));

    // A range with both ends inside segments: every record in it is counted; the extra blocks
    // come only from records of the two boundary segments (runs are bounded as a whole).
    let starts: Vec<Lsn> = dump.records.keys().copied().collect();
    let (from, to) = (starts[starts.len() / 4], starts[starts.len() * 3 / 4]);
    let segment_of = |lsn: Lsn| summaries.iter().find(|s| s.start <= lsn && lsn < s.end_lsn()).unwrap();
    let (lo, hi) = (segment_of(from), segment_of(to));
    assert!(lo.start < hi.start, "the range spans segments");
    let inner = changed_between(&summaries, from, to).unwrap();
    let out = cluster.waldump(&["-s", &from.to_string(), "-e", &to.to_string()]);
    let exact = Dump::parse(&String::from_utf8_lossy(&out.stdout));
    let ours = changed_set(&inner);
    assert!(ours.is_superset(&exact.blocks), "missing {:?}", exact.blocks.difference(&ours).take(5).collect::<Vec<_>>());
    let boundary: BlockSet = dump
        .blocks_by_record
        .iter()
        .filter(|(lsn, _)| (lo.start..lo.end_lsn()).contains(lsn) || (hi.start..hi.end_lsn()).contains(lsn))
        .flat_map(|(_, b)| b.iter().copied())
        .collect();
    let extra: Vec<_> = ours.difference(&exact.blocks).filter(|b| !boundary.contains(b)).take(5).collect();
    assert!(extra.is_empty(), "blocks from outside the range and its boundary segments: {extra:?}");
    eprintln!(
        "{} segments, {} records, {} blocks; range {from}..{to}: {} blocks exactly, {} counted",
        summaries.len(),
        dump.records.len(),
        dump.blocks.len(),
        exact.blocks.len(),
        ours.len()
    );
}
