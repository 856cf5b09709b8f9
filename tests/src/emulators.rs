//! Remote stores for the end-to-end tests: a real S3 protocol server (moto) on a loopback
//! port, and a TCP relay in front of it that a test can cut and restore, so that "the
//! endpoint went away" happens for real (connections refused, connections cut mid-transfer)
//! while the store keeps its contents (moto holds them in memory: killing it would lose them).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backup_core::storage::{Ctx, Location, S3Credentials, S3Location, S3Storage, Secret};

use crate::{wait_until, Background, TestDir};

/// Any key works with moto; this one must never show up in output.
pub const S3_ACCESS_KEY: &str = "AKIDE2ETEST";
pub const S3_SECRET_KEY: &str = "e2e-s3-secret-must-never-be-printed";

fn moto_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("MOTO_SERVER").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let venv = Path::new("/opt/pg_backup_ext-test/venv/bin/moto_server");
    if venv.exists() {
        return venv.to_path_buf();
    }
    std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).map(|d| d.join("moto_server")).find(|p| p.is_file()))
        .unwrap_or_else(|| panic!("moto_server (the S3 emulator) was not found: run `make test-deps`, or set MOTO_SERVER"))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// moto in server mode on a free port, stopped when dropped.
pub struct S3Server {
    _process: Background,
    pub port: u16,
    _dir: TestDir,
}

impl S3Server {
    pub fn start(label: &str) -> S3Server {
        let dir = TestDir::new(&format!("{label}-moto"));
        let port = free_port();
        let mut cmd = Command::new(moto_binary());
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]).stdin(Stdio::null());
        let process = Background::spawn(cmd, &dir.join("moto.log"));
        wait_until("moto listening", Duration::from_secs(60), || TcpStream::connect(("127.0.0.1", port)).is_ok());
        S3Server { _process: process, port, _dir: dir }
    }

    /// A bucket reached through `endpoint_port` (the server's, or a relay's).
    pub fn location(endpoint_port: u16, bucket: &str, prefix: &str) -> S3Location {
        let mut l = S3Location::new(bucket, prefix, "us-east-1");
        l.endpoint = Some(format!("http://127.0.0.1:{endpoint_port}"));
        l.force_path_style = true;
        l.credentials = S3Credentials::Static { access_key_id: S3_ACCESS_KEY.into(), secret_access_key: Secret::new(S3_SECRET_KEY) };
        l
    }

    pub fn create_bucket(&self, bucket: &str) {
        let store = S3Storage::open(&S3Server::location(self.port, bucket, "")).unwrap();
        store.create_bucket(&Ctx::background().with_timeout(Duration::from_secs(30))).unwrap();
    }

    /// A `[[repos]]` table for `bucket` through `endpoint_port`, with `extra` lines.
    pub fn repo_toml(name: &str, endpoint_port: u16, bucket: &str, prefix: &str, extra: &str) -> String {
        format!(
            "\n[[repos]]\nname = \"{name}\"\ntype = \"s3\"\nbucket = \"{bucket}\"\nprefix = \"{prefix}\"\nregion = \"us-east-1\"\n\
             endpoint = \"http://127.0.0.1:{endpoint_port}\"\nforce_path_style = true\naccess_key_id = \"{S3_ACCESS_KEY}\"\n\
             secret_access_key = \"{S3_SECRET_KEY}\"\n{extra}\n"
        )
    }

    pub fn location_of(endpoint_port: u16, bucket: &str, prefix: &str) -> Location {
        Location::S3(Box::new(S3Server::location(endpoint_port, bucket, prefix)))
    }
}

/// Azurite's published development account and key (not a secret: the emulator's).
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Azurite's blob service on a free port, stopped when dropped.
pub struct AzureServer {
    _process: Background,
    pub port: u16,
    _dir: TestDir,
}

impl AzureServer {
    pub fn start(label: &str) -> AzureServer {
        let dir = TestDir::new(&format!("{label}-azurite"));
        let port = free_port();
        let binary = std::env::var_os("AZURITE_BLOB")
            .map(PathBuf::from)
            .or_else(|| ["/usr/local/bin/azurite-blob", "/usr/bin/azurite-blob"].iter().map(PathBuf::from).find(|p| p.is_file()))
            .or_else(|| std::env::var_os("PATH").and_then(|path| std::env::split_paths(&path).map(|d| d.join("azurite-blob")).find(|p| p.is_file())))
            .unwrap_or_else(|| panic!("azurite-blob (the Azure Blob emulator) was not found: run `make test-deps`, or set AZURITE_BLOB"));
        let mut cmd = Command::new(binary);
        cmd.args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string(), "--location"])
            .arg(dir.join("data"))
            .args(["--skipApiVersionCheck", "--loose", "--silent"])
            .stdin(Stdio::null());
        let process = Background::spawn(cmd, &dir.join("azurite.log"));
        wait_until("azurite listening", Duration::from_secs(60), || TcpStream::connect(("127.0.0.1", port)).is_ok());
        AzureServer { _process: process, port, _dir: dir }
    }

    /// Create `container` (a repository never creates its own).
    pub fn create_container(&self, container: &str) {
        let mut l = backup_core::storage::AzureLocation::new(AZURITE_ACCOUNT, container, "");
        l.common.endpoint = Some(format!("http://127.0.0.1:{}/{AZURITE_ACCOUNT}", self.port));
        l.credentials = backup_core::storage::AzureCredentials::AccessKey(Secret::new(AZURITE_KEY));
        backup_core::storage::cloud::create_azure_container(&l, &Ctx::background().with_timeout(Duration::from_secs(30))).unwrap();
    }

    /// A `[[repos]]` table for `container`.
    pub fn repo_toml(&self, name: &str, container: &str, prefix: &str) -> String {
        format!(
            "\n[[repos]]\nname = \"{name}\"\ntype = \"azure\"\naccount = \"{AZURITE_ACCOUNT}\"\ncontainer = \"{container}\"\nprefix = \"{prefix}\"\n\
             endpoint = \"http://127.0.0.1:{}/{AZURITE_ACCOUNT}\"\naccess_key = \"{AZURITE_KEY}\"\n",
            self.port
        )
    }
}

/// A TCP relay from its own port to `target`: [`Relay::cut`] closes the listener and every
/// open connection (clients then get "connection refused"), [`Relay::restore`] listens again
/// on the same port. Two more faults on demand: [`Relay::cut_after`] cuts everything once a
/// number of bytes went up (an endpoint dying in the middle of an upload), and
/// [`Relay::throttle`] answers the next requests with S3's `503 SlowDown` itself.
pub struct Relay {
    pub port: u16,
    target: u16,
    up: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    faults: Arc<Faults>,
}

#[derive(Default)]
struct Faults {
    /// Bytes clients may still send before everything is cut; `u64::MAX`: no limit.
    upload_budget: std::sync::atomic::AtomicU64,
    /// Connections still to answer with 503 SlowDown.
    throttle: std::sync::atomic::AtomicU32,
    /// SlowDown answers given.
    throttled: std::sync::atomic::AtomicU32,
}

impl Relay {
    pub fn start(target: u16) -> Relay {
        let faults = Arc::new(Faults::default());
        faults.upload_budget.store(u64::MAX, Ordering::SeqCst);
        let relay = Relay { port: free_port(), target, up: Arc::new(AtomicBool::new(false)), streams: Arc::default(), faults };
        relay.restore();
        relay
    }

    pub fn restore(&self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).expect("relay port free again");
        listener.set_nonblocking(true).unwrap();
        self.up.store(true, Ordering::SeqCst);
        let (up, streams, target, faults) = (self.up.clone(), self.streams.clone(), self.target, self.faults.clone());
        std::thread::spawn(move || {
            while up.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let throttle = faults.throttle.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
                        if throttle {
                            faults.throttled.fetch_add(1, Ordering::SeqCst);
                            slow_down(client);
                            continue;
                        }
                        let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else { continue };
                        let mut held = streams.lock().unwrap();
                        held.push(client.try_clone().unwrap());
                        held.push(server.try_clone().unwrap());
                        let cut = Cut { up: up.clone(), streams: streams.clone(), faults: faults.clone() };
                        pipe(client.try_clone().unwrap(), server.try_clone().unwrap(), Some(cut));
                        pipe(server, client, None);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            // The listener drops here: the port refuses connections.
        });
    }

    /// Cut everything (as [`Relay::cut`]) once clients have sent `bytes` more bytes.
    pub fn cut_after(&self, bytes: u64) {
        self.faults.upload_budget.store(bytes, Ordering::SeqCst);
    }

    /// Answer the next `connections` connections with `503 SlowDown` (one response, then
    /// closed) instead of relaying them.
    pub fn throttle(&self, connections: u32) {
        self.faults.throttle.store(connections, Ordering::SeqCst);
    }

    /// How many SlowDown answers the relay gave.
    pub fn throttled(&self) -> u32 {
        self.faults.throttled.load(Ordering::SeqCst)
    }

    /// Whether the relay is accepting connections (a [`Relay::cut_after`] may have cut it).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }

    pub fn cut(&self) {
        self.faults.upload_budget.store(u64::MAX, Ordering::SeqCst);
        self.up.store(false, Ordering::SeqCst);
        for s in self.streams.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        // Until the accept loop has noticed, the port still accepts.
        wait_until("relay closed", Duration::from_secs(10), || TcpStream::connect(("127.0.0.1", self.port)).is_err());
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.up.store(false, Ordering::SeqCst);
    }
}

/// What a client-to-server pipe needs to cut the whole relay when the upload budget runs out.
struct Cut {
    up: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    faults: Arc<Faults>,
}

impl Cut {
    /// Take `n` bytes from the budget; false (and everything cut) when it runs out.
    fn spend(&self, n: usize) -> bool {
        let budget = &self.faults.upload_budget;
        let left = budget.load(Ordering::SeqCst);
        if left == u64::MAX {
            return true;
        }
        if left >= n as u64 {
            budget.fetch_sub(n as u64, Ordering::SeqCst);
            return true;
        }
        budget.store(u64::MAX, Ordering::SeqCst);
        self.up.store(false, Ordering::SeqCst);
        for s in self.streams.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        false
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream, cut: Option<Cut>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if cut.as_ref().is_some_and(|c| !c.spend(n)) {
                        break;
                    }
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

/// Read one request's head and answer it as S3 does when it throttles.
fn slow_down(mut client: TcpStream) {
    std::thread::spawn(move || {
        client.set_read_timeout(Some(Duration::from_secs(5))).ok();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && client.read(&mut byte).is_ok_and(|n| n == 1) {
            head.push(byte[0]);
        }
        let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
        let answer = format!(
            "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = client.write_all(answer.as_bytes());
        let _ = client.shutdown(Shutdown::Both);
    });
}
