//! The S3 backend against a real S3 protocol server: moto in server mode, one per test on a
//! free loopback port, plus endpoints that misbehave on purpose (a listener that never
//! answers, an `openssl s_server` that speaks only TLS 1.2).
//!
//! moto is found through `$MOTO_SERVER`, then `/opt/pg_backup_ext-test/venv/bin/moto_server`,
//! then `PATH`; without it these tests fail and say to run `make test-deps`.

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use backup_core::storage::s3::MIN_PART_SIZE;
use backup_core::storage::{
    self, conformance, Ctx, Location, PutMode, PutOutcome, S3Credentials, S3Location, S3Storage, S3Timeouts, Secret,
    Storage, StorageError, StorageErrorKind,
};
use support::{chain, find_binary, free_port, multipart_round_trip_stays_conditional, silent_endpoint, Pki, Server};

const ACCESS_KEY: &str = "AKIDPGBACKUPTEST";
const SECRET: &str = "s3cr3t-Wj4lrXUtnFEMI-K7MDENG-must-never-be-printed";

fn moto_binary() -> PathBuf {
    find_binary("MOTO_SERVER", &["/opt/pg_backup_ext-test/venv/bin/moto_server".into()], "moto_server")
}

/// moto on a fresh port; HTTPS with `cert`/`key` if given.
fn moto(tls: Option<(&Path, &Path)>) -> Server {
    let port = free_port();
    let mut cmd = Command::new(moto_binary());
    cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
    if let Some((cert, key)) = tls {
        cmd.arg("-c").arg(cert).arg("-k").arg(key);
    }
    Server::spawn("moto_server", cmd, port, tempfile::tempdir().unwrap())
}

fn location(endpoint: &str, bucket: &str) -> S3Location {
    let mut l = S3Location::new(bucket, "cluster-a", "us-east-1");
    l.endpoint = Some(endpoint.to_string());
    l.force_path_style = true;
    l.credentials = S3Credentials::Static { access_key_id: ACCESS_KEY.into(), secret_access_key: Secret::new(SECRET) };
    l.part_size = MIN_PART_SIZE;
    l.timeouts = S3Timeouts { connect: Duration::from_secs(5), request: Duration::from_secs(30), read_idle: Duration::from_secs(30) };
    l
}

/// A store on a new bucket of `server`.
fn fresh_store(endpoint: &str, bucket: &str) -> S3Storage {
    let s = S3Storage::open(&location(endpoint, bucket)).unwrap();
    s.create_bucket(&Ctx::background().with_timeout(Duration::from_secs(30))).unwrap();
    s
}

#[test]
fn conformance_against_moto() {
    let moto = moto(None);
    let store = fresh_store(&format!("http://127.0.0.1:{}", moto.port), "conformance");
    assert_eq!(store.location(), "s3://conformance/cluster-a/");
    conformance::run_all(&store);
    // Keys live under the prefix: a store on the same bucket without it sees them there.
    let mut bare = location(&format!("http://127.0.0.1:{}", moto.port), "conformance");
    bare.prefix = String::new();
    let bare = S3Storage::open(&bare).unwrap();
    assert!(bare.exists(&Ctx::background(), "cluster-a/basic/one").unwrap());
    assert!(bare.list_with_delimiter(&Ctx::background(), "").unwrap().prefixes == ["cluster-a/"]);
}

#[test]
fn multipart_objects_round_trip_and_stay_conditional() {
    let moto = moto(None);
    let store = fresh_store(&format!("http://127.0.0.1:{}", moto.port), "multipart");
    multipart_round_trip_stays_conditional(&store, MIN_PART_SIZE);
    let ctx = Ctx::background();
    assert_eq!(store.abort_stale_uploads(&ctx, "", Duration::ZERO).unwrap(), 0, "the refused upload was left open");

    // A writer dropped mid-upload aborts its upload; one whose process died leaves it to
    // abort_stale_uploads, by prefix and age.
    let mut w = store.writer(&ctx, "wal/dropped", PutMode::IfAbsent).unwrap();
    w.write_all(&vec![1u8; MIN_PART_SIZE + 1]).unwrap();
    drop(w);
    assert_eq!(store.abort_stale_uploads(&ctx, "", Duration::ZERO).unwrap(), 0, "a dropped writer left its upload open");
    assert!(!store.exists(&ctx, "wal/dropped").unwrap());
    let mut w = store.writer(&ctx, "wal/killed", PutMode::IfAbsent).unwrap();
    w.write_all(&vec![2u8; MIN_PART_SIZE]).unwrap();
    std::mem::forget(w);
    // (moto reports every upload as initiated in 2010, so "too young to abort" is not testable
    // here; the age filter is the same comparison as the local backend's.)
    assert_eq!(store.abort_stale_uploads(&ctx, "base/", Duration::ZERO).unwrap(), 0, "another prefix");
    assert_eq!(store.abort_stale_uploads(&ctx, "wal/", Duration::ZERO).unwrap(), 1);
    assert_eq!(store.put(&ctx, "wal/killed", b"whole", PutMode::IfAbsent).unwrap(), PutOutcome::Created);
}

#[test]
fn a_missing_bucket_is_not_found_and_named() {
    let moto = moto(None);
    let endpoint = format!("http://127.0.0.1:{}", moto.port);
    let store = S3Storage::open(&location(&endpoint, "no-such-bucket")).unwrap();
    let ctx = Ctx::background();
    for err in [
        store.get_bytes(&ctx, "repo.json").unwrap_err(),
        store.put(&ctx, "repo.json", b"{}", PutMode::IfAbsent).unwrap_err(),
        store.list(&ctx, "").map(|_| ()).unwrap_err(),
        store.list_with_delimiter(&ctx, "backups/").unwrap_err(),
    ] {
        let text = chain(&err);
        assert_eq!(err.kind(), StorageErrorKind::NotFound, "{text}");
        assert!(text.contains("\"no-such-bucket\"") && text.contains("create it"), "{text}");
        println!("missing bucket: {text}");
    }
}

#[test]
fn a_hanging_endpoint_fails_in_bounded_time() {
    let port = silent_endpoint();
    let mut loc = location(&format!("http://127.0.0.1:{port}"), "hang");
    // Default timeouts: the caller's deadline is what ends the wait.
    loc.timeouts = S3Timeouts::default();
    let store = S3Storage::open(&loc).unwrap();
    for (what, call) in [
        ("head", Box::new(|ctx: &Ctx| store.head(ctx, "x").map(|_| ())) as Box<dyn Fn(&Ctx) -> Result<(), StorageError>>),
        ("put", Box::new(|ctx: &Ctx| store.put(ctx, "x", b"data", PutMode::IfAbsent).map(|_| ()))),
        ("get", Box::new(|ctx: &Ctx| store.get_bytes(ctx, "x").map(|_| ()))),
    ] {
        let t = Instant::now();
        let err = call(&Ctx::background().with_timeout(Duration::from_secs(1))).unwrap_err();
        let took = t.elapsed();
        assert_eq!(err.kind(), StorageErrorKind::Timeout, "{what}: {}", chain(&err));
        println!("hanging endpoint, {what}: {} after {took:?}", chain(&err));
        assert!(took < Duration::from_millis(1500), "{what} took {took:?} past a 1 s deadline");
    }
    // No deadline at all: the store's own timeouts still end the call (retries included).
    loc.timeouts = S3Timeouts { connect: Duration::from_secs(1), request: Duration::from_millis(500), read_idle: Duration::from_secs(1) };
    let store = S3Storage::open(&loc).unwrap();
    let t = Instant::now();
    let err = store.head(&Ctx::background(), "x").unwrap_err();
    let took = t.elapsed();
    assert!(matches!(err.kind(), StorageErrorKind::Timeout | StorageErrorKind::Transient), "{}", chain(&err));
    assert!(took < Duration::from_secs(15), "took {took:?} with a 0.5 s request timeout");
    println!("hanging endpoint, no deadline: {} after {took:?}", chain(&err));
}

#[test]
fn tls_needs_a_trusted_certificate_and_tls13() {
    let pki = Pki::new();
    let moto = moto(Some((&pki.cert(), &pki.key())));
    let endpoint = format!("https://127.0.0.1:{}", moto.port);
    let ctx = Ctx::background().with_timeout(Duration::from_secs(30));

    let mut trusted = location(&endpoint, "tls-bucket");
    trusted.ca_file = Some(pki.ca());
    let store = S3Storage::open(&trusted).unwrap();
    store.create_bucket(&ctx).unwrap();
    store.put(&ctx, "over/tls13", b"secret data", PutMode::IfAbsent).unwrap();
    assert_eq!(store.get_bytes(&ctx, "over/tls13").unwrap(), b"secret data");

    let untrusted = S3Storage::open(&location(&endpoint, "tls-bucket")).unwrap();
    let err = untrusted.get_bytes(&ctx, "over/tls13").unwrap_err();
    let text = chain(&err);
    assert!(text.contains("not trusted") && text.contains("ca_file"), "{text}");
    println!("untrusted certificate: {text}");
    assert_ne!(err.kind(), StorageErrorKind::NotFound, "{text}");

    // A server that speaks TLS 1.2 at most.
    let port = free_port();
    let mut cmd = Command::new("openssl");
    cmd.args(["s_server", "-tls1_2", "-www", "-accept", &port.to_string(), "-cert"]).arg(pki.cert()).arg("-key").arg(pki.key());
    let _tls12 = Server::spawn("openssl s_server", cmd, port, tempfile::tempdir().unwrap());
    let mut old = location(&format!("https://127.0.0.1:{port}"), "tls-bucket");
    old.ca_file = Some(pki.ca());
    let t = Instant::now();
    let err = S3Storage::open(&old).unwrap().get_bytes(&ctx, "x").unwrap_err();
    let text = chain(&err);
    assert!(text.contains("TLS 1.3") && text.contains("protocol version") && text.contains("allow_tls12"), "{text}");
    assert!(t.elapsed() < Duration::from_secs(5), "a refused handshake was retried for {:?}", t.elapsed());
    println!("TLS 1.2-only endpoint: {text}");

    // Allowed explicitly, the handshake succeeds; what answers is not S3, so the call may
    // still fail, but not on TLS.
    old.allow_tls12 = true;
    match S3Storage::open(&old).unwrap().get_bytes(&ctx, "x") {
        Ok(body) => println!("TLS 1.2 allowed: the server answered {} bytes", body.len()),
        Err(e) => {
            let text = chain(&e);
            println!("TLS 1.2 allowed: {text}");
            assert!(!text.contains("TLS") && !text.contains("protocol version"), "{text}");
        }
    }
}

#[test]
fn the_secret_key_never_shows() {
    let moto = moto(None);
    let endpoint = format!("http://127.0.0.1:{}", moto.port);
    let loc = location(&endpoint, "no-such-bucket");
    let store = S3Storage::open(&loc).unwrap();
    let ctx = Ctx::background();
    let errors = [
        store.get_bytes(&ctx, "repo.json").unwrap_err(),
        store.put(&ctx, "wal/x", b"x", PutMode::IfAbsent).unwrap_err(),
        S3Storage::open(&location("http://127.0.0.1:1", "b")).unwrap().head(&ctx, "x").unwrap_err(),
    ];
    let mut shown = vec![
        format!("{store:?}"),
        store.location(),
        format!("{loc:?}"),
        format!("{:?}", Location::S3(Box::new(loc.clone()))),
        Location::S3(Box::new(loc.clone())).to_string(),
        format!("{:?}", storage::open(&Location::S3(Box::new(loc.clone()))).unwrap()),
    ];
    for e in &errors {
        shown.push(chain(e));
        shown.push(format!("{e:?}"));
    }
    let mut no_file = loc.clone();
    no_file.credentials = S3Credentials::SecretFile { access_key_id: ACCESS_KEY.into(), secret_access_key_file: "/nonexistent/secret".into() };
    let e = S3Storage::open(&no_file).unwrap_err();
    assert!(chain(&e).contains("/nonexistent/secret"), "{}", chain(&e));
    for text in &shown {
        assert!(!text.contains(SECRET), "the secret key is in: {text}");
    }
    assert!(format!("{loc:?}").contains("<redacted>"));
}

/// One form POST to moto's IAM API (answered without a signature check while moto's
/// unauthenticated allowance lasts); the response body.
fn iam(port: u16, form: &str) -> String {
    use std::io::Read;
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let auth = "AWS4-HMAC-SHA256 Credential=AKIDSETUP/20260101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=0";
    write!(
        s,
        "POST / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: {auth}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{form}",
        form.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{form}: {answer}");
    answer
}

fn between<'a>(text: &'a str, open: &str, close: &str) -> &'a str {
    let start = text.find(open).unwrap_or_else(|| panic!("no {open} in {text}")) + open.len();
    &text[start..start + text[start..].find(close).unwrap()]
}

/// moto with its IAM checks on (INITIAL_NO_AUTH_ACTION_COUNT: the first three requests go
/// unchecked, enough to make a user, its key and a bucket). Every wrong credential is then
/// refused as a real S3 would: an unknown key and a wrong secret as "unauthenticated" with a
/// message that says which settings to check, a valid key without a policy as "permission";
/// each names the repository and none shows a secret.
#[test]
fn wrong_credentials_are_refused_clearly_and_never_shown() {
    let port = free_port();
    let mut cmd = Command::new(moto_binary());
    cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]).env("INITIAL_NO_AUTH_ACTION_COUNT", "3");
    let _moto = Server::spawn("moto_server", cmd, port, tempfile::tempdir().unwrap());
    iam(port, "Action=CreateUser&UserName=backup&Version=2010-05-08");
    let key = iam(port, "Action=CreateAccessKey&UserName=backup&Version=2010-05-08");
    let (key_id, secret) = (between(&key, "<AccessKeyId>", "<"), between(&key, "<SecretAccessKey>", "<"));
    let endpoint = format!("http://127.0.0.1:{port}");
    fresh_store(&endpoint, "guarded");

    let with = |id: &str, secret: &str| {
        let mut l = location(&endpoint, "guarded");
        l.credentials = S3Credentials::Static { access_key_id: id.into(), secret_access_key: Secret::new(secret) };
        S3Storage::open(&l).unwrap()
    };
    let wrong_secret = "wrong-secret-for-a-real-key-never-to-be-printed";
    let ctx = Ctx::background().with_timeout(Duration::from_secs(30));
    let cases = [
        ("unknown key", with("AKIANOSUCHKEY0000000", SECRET), StorageErrorKind::Unauthenticated),
        ("wrong secret", with(key_id, wrong_secret), StorageErrorKind::Unauthenticated),
        ("no policy", with(key_id, secret), StorageErrorKind::Permission),
    ];
    for (case, store, kind) in cases {
        for err in [store.get_bytes(&ctx, "repo.json").unwrap_err(), store.put(&ctx, "wal/x", b"x", PutMode::IfAbsent).unwrap_err()] {
            let text = chain(&err);
            assert_eq!(err.kind(), kind, "{case}: {text}");
            assert!(text.contains("s3://guarded/cluster-a/"), "{case}: the repository is not named: {text}");
            if kind == StorageErrorKind::Unauthenticated {
                assert!(text.contains("access_key_id") && text.contains("secret_access_key"), "{case}: {text}");
            } else {
                assert!(text.contains("grant them s3:ListBucket"), "{case}: says what to grant: {text}");
            }
            for shown in [&text, &format!("{err:?}")] {
                assert!(!shown.contains(SECRET) && !shown.contains(wrong_secret) && !shown.contains(secret), "{case}: a secret is in: {shown}");
            }
            println!("{case}: {}", text.lines().next().unwrap_or_default());
        }
    }
}

#[test]
fn remote_plain_http_is_refused() {
    let e = S3Storage::open(&location("http://s3.example.com", "b")).unwrap_err();
    assert!(chain(&e).contains("must use https://"), "{}", chain(&e));
    let mut small = location("https://s3.example.com", "b");
    small.part_size = 1 << 20;
    assert!(chain(&S3Storage::open(&small).unwrap_err()).contains("minimum"));
}

/// With Object Lock every object is written with a retention date; until then the store
/// refuses to delete it (its versions), and the backend says so with its own error kind,
/// which retention skips. Large objects (multipart) are locked too. A store without a lock
/// on the same server deletes as usual.
#[test]
fn object_lock_refuses_deletes_before_the_retention_date() {
    use backup_core::storage::s3::{LockMode, ObjectLock};
    let moto = moto(None);
    let endpoint = format!("http://127.0.0.1:{}", moto.port);
    let mut locked = location(&endpoint, "locked-bucket");
    locked.object_lock = Some(ObjectLock { mode: LockMode::Compliance, days: 1 });
    let store = S3Storage::open(&locked).unwrap();
    let ctx = Ctx::background().with_timeout(Duration::from_secs(60));
    store.create_bucket(&ctx).unwrap();

    assert_eq!(store.put(&ctx, "wal/0000000100000000/000000010000000000000001", b"segment", PutMode::IfAbsent).unwrap(), PutOutcome::Created);
    let big: Vec<u8> = (0..(MIN_PART_SIZE * 2 + 1000)).map(|i| (i % 253) as u8).collect();
    store.put(&ctx, "backup/b/data/000001", &big, PutMode::Overwrite).unwrap();
    for key in ["wal/0000000100000000/000000010000000000000001", "backup/b/data/000001"] {
        let e = store.delete(&ctx, key).unwrap_err();
        assert_eq!(e.kind(), StorageErrorKind::Locked, "{key}: {}", chain(&e));
        assert!(store.exists(&ctx, key).unwrap(), "{key}: gone after a refused delete");
        println!("{key}: {}", chain(&e));
    }
    assert_eq!(store.get_bytes(&ctx, "backup/b/data/000001").unwrap(), big);

    let plain = fresh_store(&endpoint, "plain-bucket");
    plain.put(&ctx, "x", b"y", PutMode::IfAbsent).unwrap();
    plain.delete(&ctx, "x").unwrap();
    assert!(!plain.exists(&ctx, "x").unwrap());
}
