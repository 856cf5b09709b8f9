//! What the storage tests against emulators share: finding an emulator's binary, running it
//! on a free loopback port for the length of a test, an endpoint that never answers, and an
//! error printed with its causes as a report would print it, a throwaway CA for TLS.

// Each test binary uses its own part of this.
#![allow(dead_code)]

use std::error::Error;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::io::Write;

use backup_core::storage::{ByteRange, Ctx, PutMode, PutOutcome, Storage, StorageError};

/// An emulator's binary: `$var` when set, else the first of `candidates` that exists, else
/// `name` on `PATH`. Panics saying how to install it.
pub fn find_binary(var: &str, candidates: &[PathBuf], name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(var).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "{var}={} does not exist: run `make test-deps`, or point {var} at {name}", p.display());
        return p;
    }
    if let Some(p) = candidates.iter().find(|p| p.is_file()) {
        return p.clone();
    }
    if let Some(found) = std::env::var_os("PATH").and_then(|path| std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())) {
        return found;
    }
    panic!("{name} (the emulator these tests run against) was not found: run `make test-deps`, or set {var} to its path");
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A server process, killed when the test ends (also on panic); its output goes to a log in
/// `dir`, which lives as long as the server.
pub struct Server {
    child: Child,
    pub port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Start `cmd` and wait until something listens on `port`.
    pub fn spawn(name: &str, mut cmd: Command, port: u16, dir: tempfile::TempDir) -> Server {
        let log = dir.path().join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        cmd.stdin(Stdio::null()).stdout(out.try_clone().unwrap()).stderr(out);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        let mut server = Server { child, port, log, _dir: dir };
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("{name} exited ({status}) before listening:\n{}", server.log_text());
            }
            assert!(started.elapsed() < Duration::from_secs(60), "{name} not listening after 60 s:\n{}", server.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Accepts connections and never answers.
pub fn silent_endpoint() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            held.push(conn);
        }
    });
    port
}

/// The error and all its sources, as a report would print them.
pub fn chain(e: &StorageError) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out.push_str(": ");
        out.push_str(&s.to_string());
        next = s.source();
    }
    out
}

/// The multipart path of a remote backend: an object of 2.5 parts of `part_size`, written in
/// odd-sized pieces, reads back whole, across a part boundary and as a suffix; then a large
/// and a small create-if-absent over it both change nothing. Leaves `base/big.bundle`.
pub fn multipart_round_trip_stays_conditional(store: &dyn Storage, part_size: usize) {
    let ctx = Ctx::background();
    // 2.5 parts, written in odd-sized pieces.
    let data: Vec<u8> = (0..(part_size * 5 / 2) as u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let mut w = store.writer(&ctx, "base/big.bundle", PutMode::IfAbsent).unwrap();
    for piece in data.chunks(99_991) {
        w.write_all(piece).unwrap();
    }
    assert_eq!(w.commit().unwrap(), PutOutcome::Created);
    assert_eq!(store.head(&ctx, "base/big.bundle").unwrap().unwrap().size, data.len() as u64);
    assert!(store.get_bytes(&ctx, "base/big.bundle").unwrap() == data, "multipart object differs after a round trip");
    let edge = part_size as u64;
    let across = store.get_range_bytes(&ctx, "base/big.bundle", ByteRange::Bounded(edge - 10..edge + 10)).unwrap();
    assert_eq!(across, &data[edge as usize - 10..edge as usize + 10], "range across a part boundary");
    assert_eq!(store.get_range_bytes(&ctx, "base/big.bundle", ByteRange::Suffix(5)).unwrap(), &data[data.len() - 5..]);

    // Create-if-absent on an existing key: a large and a small attempt both change nothing.
    let mut w = store.writer(&ctx, "base/big.bundle", PutMode::IfAbsent).unwrap();
    w.write_all(&vec![0u8; part_size + 1]).unwrap();
    assert_eq!(w.commit().unwrap(), PutOutcome::AlreadyExists, "multipart IfAbsent over an existing object");
    assert_eq!(store.put(&ctx, "base/big.bundle", b"small", PutMode::IfAbsent).unwrap(), PutOutcome::AlreadyExists);
    assert!(store.get_bytes(&ctx, "base/big.bundle").unwrap() == data, "a conditional write replaced the object");
}

/// A throwaway CA and a server certificate for 127.0.0.1 / localhost, as PEM files.
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "pg_backup_ext test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut server = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        server.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        server.distinguished_name.push(DnType::CommonName, "127.0.0.1");
        let cert = server.signed_by(&key, &issuer).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(dir.path().join("server.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("server.key"), key.serialize_pem()).unwrap();
        Pki { dir }
    }
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }
    pub fn key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }
}
