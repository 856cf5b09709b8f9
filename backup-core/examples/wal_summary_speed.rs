//! Summarize a WAL segment file and report the rate: `cargo run --release -p backup-core
//! --example wal_summary_speed -- SEGMENT_FILE`.
use backup_core::pg::wal::{Lsn, TimelineId, WalFileName};
use backup_core::pg::walsummary::summarize_segment;
use std::time::Instant;

fn main() {
    let path = std::env::args().nth(1).expect("a WAL segment file");
    let data = std::fs::read(&path).expect("read the file");
    let name = std::path::Path::new(&path).file_name().unwrap().to_string_lossy().into_owned();
    let Ok(WalFileName::Segment(pos)) = WalFileName::parse(&name) else { panic!("{name} is not a WAL segment name") };
    let size = data.len() as u32;
    let start = Lsn(pos.segno(size) * u64::from(size));
    let t = Instant::now();
    let s = summarize_segment(&data, TimelineId(pos.timeline.0), start, size, None).unwrap();
    let secs = t.elapsed().as_secs_f64();
    let bytes = s.to_bytes().len();
    println!("{} records, {} forks with blocks, summary {bytes} bytes, in {secs:.3}s = {:.0} MB/s", s.records, s.blocks.len(), data.len() as f64 / secs / 1e6);
}
