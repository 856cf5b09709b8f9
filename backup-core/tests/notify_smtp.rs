//! E-mail notifications against a real SMTP server: aiosmtpd, one per test on a free loopback
//! port, writing each message it accepts (parsed by Python's `email` package: decoded subject,
//! headers and body) as JSON into a directory. Plain, STARTTLS and implicit TLS with a private
//! CA, SMTP AUTH, a server that offers only TLS 1.2, and endpoints that refuse or never answer.
//!
//! aiosmtpd is found in `$AIOSMTPD_PYTHON`'s interpreter, else the test venv's
//! (`/opt/pg_backup_ext-test/venv/bin/python`); without it these tests fail and say to run
//! `make test-deps`.

mod support;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use backup_core::config::Config;
use backup_core::error::report;
use backup_core::health::Status;
use backup_core::notify::{self, AlertState, Channel, Notification};
use support::{free_port, silent_endpoint, Pki, Server};

const TIMEOUT: Duration = Duration::from_secs(10);
const PASSWORD: &str = "smtp-Pa55word-never-printed";

/// The server: `argv` = port, output directory, mode (plain, starttls, implicit, implicit12:
/// implicit TLS 1.2 at most), certificate, key, `user:password` to require or `-`.
const SERVER: &str = r#"
import email, email.policy, json, os, ssl, sys, time
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

port, out, mode, cert, key, login = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]

class Handler:
    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "subject": str(msg["subject"]),
            "from": str(msg["from"]),
            "to": str(msg["to"]),
            "content_type": msg.get_content_type(),
            "body": msg.get_content(),
            "login": session.auth_data,
            "tls": session.ssl is not None or server.transport.get_extra_info("ssl_object") is not None,
        }
        name = os.path.join(out, "%d.json" % time.time_ns())
        with open(name + ".tmp", "w") as f:
            json.dump(record, f)
        os.rename(name + ".tmp", name)
        return "250 OK"

def authenticator(server, session, envelope, mechanism, auth_data):
    if isinstance(auth_data, LoginPassword) and login == "%s:%s" % (auth_data.login.decode(), auth_data.password.decode()):
        return AuthResult(success=True, auth_data=auth_data.login.decode())
    return AuthResult(success=False, handled=False)

kwargs = {}
if login != "-":
    kwargs.update(authenticator=authenticator, auth_required=True, auth_require_tls=(mode != "plain"))
ctx = None
if mode != "plain":
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    if mode.endswith("12"):
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
if mode == "starttls":
    kwargs.update(tls_context=ctx, require_starttls=True)
if mode.startswith("implicit"):
    controller = Controller(Handler(), hostname="127.0.0.1", port=port, ssl_context=ctx, **kwargs)
else:
    controller = Controller(Handler(), hostname="127.0.0.1", port=port, **kwargs)
controller.start()
print("listening on", port, flush=True)
while True:
    time.sleep(3600)
"#;

/// The interpreter that has aiosmtpd; panics saying how to get it.
fn python() -> PathBuf {
    let python = std::env::var_os("AIOSMTPD_PYTHON")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/pg_backup_ext-test/venv/bin/python"));
    let has = Command::new(&python).args(["-c", "import aiosmtpd"]).output();
    match has {
        Ok(out) if out.status.success() => python,
        Ok(out) => panic!(
            "aiosmtpd (the SMTP server these tests send to) is not installed for {}: run `make test-deps` (or pip install aiosmtpd into that venv, or set AIOSMTPD_PYTHON)\n{}",
            python.display(),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!(
            "{} ({e}) is missing, and with it aiosmtpd, the SMTP server these tests send to: run `make test-deps` (or set AIOSMTPD_PYTHON to a Python that has aiosmtpd)",
            python.display()
        ),
    }
}

/// aiosmtpd on a free port; the messages it accepts land in `mails`.
struct Smtp {
    server: Server,
    mails: tempfile::TempDir,
}

impl Smtp {
    fn start(mode: &str, pki: Option<&Pki>, login: Option<&str>) -> Smtp {
        let port = free_port();
        let mails = tempfile::tempdir().unwrap();
        let (cert, key) = pki.map(|p| (p.cert(), p.key())).unwrap_or_default();
        let mut cmd = Command::new(python());
        cmd.arg("-c").arg(SERVER).arg(port.to_string()).arg(mails.path()).arg(mode).arg(&cert).arg(&key).arg(login.unwrap_or("-"));
        let server = Server::spawn("aiosmtpd", cmd, port, tempfile::tempdir().unwrap());
        Smtp { server, mails }
    }

    fn port(&self) -> u16 {
        self.server.port
    }

    /// The messages received so far, oldest first.
    fn received(&self) -> Vec<serde_json::Value> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(self.mails.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        names.sort();
        names.iter().map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()).collect()
    }
}

/// The e-mail channel of `[notifications.email]` with `settings` (TOML lines) on top of two
/// recipients and a sender.
fn email_channel(port: u16, settings: &str) -> Channel {
    let text = format!(
        "[notifications]\nenabled = true\n[notifications.email]\nrecipients = [\"dba@example.com\", \"Ops Team <ops@example.com>\"]\n\
         smtp_host = \"127.0.0.1\"\nsmtp_port = {port}\nfrom = \"pg_backup_ext <backup@db1.example.com>\"\n{settings}"
    );
    let config = Config::parse(&text, "test", |_| None).unwrap();
    let mut channels = notify::channels(&config.notifications);
    assert_eq!(channels.len(), 1);
    channels.remove(0)
}

fn password_file(dir: &Path, password: &str) -> PathBuf {
    let path = dir.join("smtp.pass");
    std::fs::write(&path, format!("{password}\n")).unwrap();
    path
}

fn alert(state: AlertState, severity: Status) -> Notification {
    Notification {
        key: "archiving".into(),
        state,
        severity,
        summary: "archiving is failing".into(),
        details: "archive_command failed 12 times in a row; see the server log and run 'wal-archiver check'".into(),
        value: Some("12 failures".into()),
        threshold: Some("1".into()),
        at: "2024-01-15T14:30:00Z".parse().unwrap(),
        source: "db1 (system 7312345678901234567)".into(),
        test: false,
    }
}

#[test]
fn one_message_reaches_every_recipient_through_a_local_relay() {
    let smtp = Smtp::start("plain", None, None);
    let channel = email_channel(smtp.port(), "tls = \"none\"\n");
    assert_eq!(channel.describe(), format!("email to 2 recipients via 127.0.0.1:{}", smtp.port()));
    notify::deliver(&channel, &alert(AlertState::Firing, Status::Critical), TIMEOUT).unwrap();

    let mails = smtp.received();
    assert_eq!(mails.len(), 1, "one message for all recipients: {mails:?}");
    let m = &mails[0];
    assert_eq!(m["subject"], "[pg_backup_ext] CRITICAL: archiving is failing — db1");
    assert_eq!(m["mail_from"], "backup@db1.example.com");
    assert_eq!(m["rcpt_tos"], serde_json::json!(["dba@example.com", "ops@example.com"]));
    assert_eq!(m["from"], "pg_backup_ext <backup@db1.example.com>");
    assert!(m["to"].as_str().unwrap().contains("dba@example.com") && m["to"].as_str().unwrap().contains("Ops Team <ops@example.com>"), "{m}");
    assert_eq!(m["content_type"], "text/plain");
    let body = m["body"].as_str().unwrap();
    for part in [
        "archiving is failing (critical)",
        "run 'wal-archiver check'",
        "Value:     12 failures",
        "Threshold: 1",
        "Time:      2024-01-15T14:30:00Z",
        "Source:    db1 (system 7312345678901234567)",
    ] {
        assert!(body.contains(part), "{part:?} not in:\n{body}");
    }

    let mut resolved = alert(AlertState::Resolved, Status::Critical);
    notify::deliver(&channel, &resolved, TIMEOUT).unwrap();
    resolved.test = true;
    resolved.state = AlertState::Firing;
    resolved.severity = Status::Warning;
    notify::deliver(&channel, &resolved, TIMEOUT).unwrap();
    let mails = smtp.received();
    assert_eq!(mails[1]["subject"], "[pg_backup_ext] RESOLVED: archiving is failing — db1");
    assert_eq!(mails[2]["subject"], "[pg_backup_ext] TEST WARNING: archiving is failing — db1");
    assert!(mails[2]["body"].as_str().unwrap().starts_with("This is a test notification"), "{}", mails[2]["body"]);
}

#[test]
fn starttls_with_a_private_ca_and_a_login() {
    let pki = Pki::new();
    let smtp = Smtp::start("starttls", Some(&pki), Some(&format!("backup:{PASSWORD}")));
    let secrets = tempfile::tempdir().unwrap();
    let settings = format!(
        "tls = \"starttls\"\nca_file = \"{}\"\nusername = \"backup\"\npassword_file = \"{}\"\n",
        pki.ca().display(),
        password_file(secrets.path(), PASSWORD).display()
    );
    let channel = email_channel(smtp.port(), &settings);
    assert!(!format!("{channel:?}").contains(PASSWORD));
    notify::deliver(&channel, &alert(AlertState::Firing, Status::Warning), TIMEOUT).unwrap();
    let mails = smtp.received();
    assert_eq!(mails.len(), 1);
    assert_eq!((mails[0]["tls"].as_bool(), mails[0]["login"].as_str()), (Some(true), Some("backup")));
    assert_eq!(mails[0]["subject"], "[pg_backup_ext] WARNING: archiving is failing — db1");

    // A wrong password: refused, not worth retrying, and not printed.
    let wrong = settings.replace(&password_file(secrets.path(), PASSWORD).display().to_string(), &password_file(secrets.path(), "wrong-Pa55").display().to_string());
    let e = notify::deliver(&email_channel(smtp.port(), &wrong), &alert(AlertState::Firing, Status::Warning), TIMEOUT).unwrap_err();
    let text = report(&e);
    assert!(!e.transient(), "{text}");
    assert!(text.starts_with(&format!("email notification via 127.0.0.1:{} failed", smtp.port())), "{text}");
    assert!(text.contains("535") && text.contains("check username and password"), "{text}");
    println!("wrong password: {text}");
    assert!(!text.contains("wrong-Pa55") && !format!("{e:?}").contains("wrong-Pa55"), "{text}");

    // A missing password file says which.
    let missing = settings.replace(&password_file(secrets.path(), PASSWORD).display().to_string(), "/nonexistent/smtp.pass");
    let e = notify::deliver(&email_channel(smtp.port(), &missing), &alert(AlertState::Firing, Status::Warning), TIMEOUT).unwrap_err();
    assert!(!e.transient() && report(&e).contains("/nonexistent/smtp.pass"), "{}", report(&e));
}

#[test]
fn implicit_tls_needs_tls13_unless_allowed() {
    let pki = Pki::new();
    let ca = format!("ca_file = \"{}\"\n", pki.ca().display());
    let smtp = Smtp::start("implicit", Some(&pki), None);
    let channel = email_channel(smtp.port(), &format!("tls = \"tls\"\n{ca}"));
    notify::deliver(&channel, &alert(AlertState::Firing, Status::Critical), TIMEOUT).unwrap();
    assert_eq!(smtp.received()[0]["tls"], true);

    // A TLS 1.2 server that says why it refuses (a protocol_version alert): not retried.
    let port = free_port();
    let mut cmd = Command::new("openssl");
    cmd.args(["s_server", "-tls1_2", "-www", "-accept", &port.to_string(), "-cert"]).arg(pki.cert()).arg("-key").arg(pki.key());
    let _tls12 = Server::spawn("openssl s_server", cmd, port, tempfile::tempdir().unwrap());
    let e = notify::deliver(&email_channel(port, &format!("tls = \"tls\"\n{ca}")), &alert(AlertState::Firing, Status::Critical), TIMEOUT).unwrap_err();
    let text = report(&e);
    assert!(!e.transient(), "{text}");
    assert!(text.contains("offers no TLS 1.3") && text.contains("allow_tls12 = true"), "{text}");
    println!("TLS 1.2-only server: {text}");

    // aiosmtpd (asyncio) hangs up without an alert: the error still points at TLS 1.3.
    let old = Smtp::start("implicit12", Some(&pki), None);
    let e = notify::deliver(&email_channel(old.port(), &format!("tls = \"tls\"\n{ca}")), &alert(AlertState::Firing, Status::Critical), TIMEOUT).unwrap_err();
    let text = report(&e);
    assert!(text.contains("no TLS 1.3") && text.contains("allow_tls12 = true"), "{text}");
    println!("TLS 1.2-only server hanging up: {text}");
    assert!(old.received().is_empty());
    let allowed = email_channel(old.port(), &format!("tls = \"tls\"\nallow_tls12 = true\n{ca}"));
    notify::deliver(&allowed, &alert(AlertState::Firing, Status::Critical), TIMEOUT).unwrap();
    assert_eq!(old.received().len(), 1);
}

#[test]
fn an_untrusted_certificate_is_refused() {
    let pki = Pki::new();
    let smtp = Smtp::start("starttls", Some(&pki), None);
    // The system's roots do not know the test CA.
    let e = notify::deliver(&email_channel(smtp.port(), "tls = \"starttls\"\n"), &alert(AlertState::Firing, Status::Critical), TIMEOUT).unwrap_err();
    let text = report(&e);
    assert!(!e.transient(), "{text}");
    assert!(text.contains("not trusted") && text.contains("ca_file"), "{text}");
    println!("untrusted certificate: {text}");
    assert!(smtp.received().is_empty());
}

#[test]
fn an_unreachable_server_fails_within_the_timeout() {
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let started = Instant::now();
    let e = notify::deliver(&email_channel(closed, "tls = \"none\"\n"), &alert(AlertState::Firing, Status::Critical), TIMEOUT).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2), "a refused connection took {:?}", started.elapsed());
    let text = report(&e);
    assert!(e.transient(), "{text}");
    assert!(text.contains(&format!("via 127.0.0.1:{closed}")) && text.contains("check smtp_host and smtp_port"), "{text}");
    println!("refused: {text}");

    // Accepts the connection, never greets.
    let silent = silent_endpoint();
    let started = Instant::now();
    let e = notify::deliver(&email_channel(silent, "tls = \"none\"\n"), &alert(AlertState::Firing, Status::Critical), Duration::from_secs(1)).unwrap_err();
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(4), "took {took:?}");
    assert!(e.transient(), "{}", report(&e));
    println!("silent: {}", report(&e));
}
