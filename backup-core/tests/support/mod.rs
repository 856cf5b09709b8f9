//! What the storage tests against emulators share: finding an emulator's binary, running it
//! on a free loopback port for the length of a test, an endpoint that never answers, and an
//! error printed with its causes as a report would print it.

// Each test binary uses its own part of this.
#![allow(dead_code)]

use std::error::Error;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use backup_core::storage::StorageError;

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
