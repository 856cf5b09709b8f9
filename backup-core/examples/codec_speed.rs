//! Encode a file with the repository codec and report the rate: `cargo run --release -p
//! backup-core --example codec_speed -- FILE [LEVEL] [THREADS]`.
use backup_core::codec::{encode, Compression, EncodeParams};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let data = std::fs::read(&args[1]).expect("read the file");
    let level = args.get(2).map_or(3, |l| l.parse().unwrap());
    let threads = args.get(3).map_or(1, |t| t.parse().unwrap());
    let params = EncodeParams { compression: Compression::Zstd { level }, key: None, threads };
    let t = Instant::now();
    let mut out = std::io::sink();
    let s = encode(&mut &data[..], &mut out, "x", params).unwrap();
    let secs = t.elapsed().as_secs_f64();
    println!("{} bytes -> {} in {secs:.3}s = {:.1} MB/s", data.len(), s.stored_size, data.len() as f64 / secs / 1e6);
}
