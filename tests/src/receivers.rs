//! Where the alert tests' notifications land, for real: an SMTP server (Python's aiosmtpd,
//! from the test virtualenv `make test-deps` fills) that writes each message it accepts to a
//! directory, and an HTTP server (a thread of the test) that records every request, for the
//! Slack, SMS and webhook channels. Both listen on 127.0.0.1 only.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{free_port, wait_until, Background, TestDir};

const TEST_PYTHON: &str = "/opt/pg_backup_ext-test/venv/bin/python";

/// aiosmtpd's controller with a handler that writes, per message, one file (renamed into
/// place, so a reader never sees half of one): the recipients, the subject, then the text of
/// the body as a mail reader shows it (transfer encoding undone).
const SMTP_SINK: &str = r#"
import email, email.policy, os, sys, time
from aiosmtpd.controller import Controller
out = sys.argv[2]
class Sink:
    async def handle_DATA(self, server, session, envelope):
        path = os.path.join(out, "%d.eml" % time.time_ns())
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        part = msg.get_body(preferencelist=("plain", "html")) or msg
        with open(path + ".tmp", "w") as f:
            f.write(",".join(envelope.rcpt_tos) + "\n" + str(msg["subject"]) + "\n" + part.get_content())
        os.rename(path + ".tmp", path)
        return "250 OK"
c = Controller(Sink(), hostname="127.0.0.1", port=int(sys.argv[1]))
c.start()
print("listening", flush=True)
while True:
    time.sleep(3600)
"#;

/// A real SMTP server on a free loopback port, stopped when dropped.
pub struct SmtpSink {
    _process: Background,
    pub port: u16,
    dir: TestDir,
}

/// One message the SMTP server accepted.
#[derive(Clone, Debug)]
pub struct Mail {
    pub recipients: String,
    pub subject: String,
    pub text: String,
}

impl SmtpSink {
    pub fn start(label: &str) -> SmtpSink {
        assert!(
            Command::new(TEST_PYTHON).args(["-c", "import aiosmtpd"]).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success()),
            "aiosmtpd (the SMTP server of the alert tests) is not installed in {TEST_PYTHON}: run `make test-deps`"
        );
        let dir = TestDir::new(&format!("{label}-smtp"));
        let mail = dir.mkdir("mail");
        let port = free_port();
        let mut cmd = Command::new(TEST_PYTHON);
        cmd.args(["-c", SMTP_SINK, &port.to_string(), &mail.to_string_lossy()]);
        let process = Background::spawn(cmd, &dir.join("smtp.log"));
        wait_until("the SMTP server listening", Duration::from_secs(30), || TcpStream::connect(("127.0.0.1", port)).is_ok());
        SmtpSink { _process: process, port, dir }
    }

    /// Every message received so far, oldest first.
    pub fn mails(&self) -> Vec<Mail> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(self.dir.join("mail"))
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "eml")).collect())
            .unwrap_or_default();
        paths.sort();
        paths.iter().map(|p| parse_mail(p)).collect()
    }
}

fn parse_mail(path: &Path) -> Mail {
    let raw = std::fs::read_to_string(path).unwrap_or_default();
    let mut lines = raw.splitn(3, '\n');
    let (recipients, subject, text) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""), lines.next().unwrap_or(""));
    Mail { recipients: recipients.to_string(), subject: subject.to_string(), text: text.to_string() }
}

/// One request the HTTP server received.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

/// An HTTP server on a free loopback port that answers 200 to everything and keeps each
/// request; runs until the test process ends.
pub struct HttpSink {
    pub port: u16,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl HttpSink {
    pub fn start() -> HttpSink {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the HTTP receiver");
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let kept = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let kept = kept.clone();
                std::thread::spawn(move || {
                    if let Some(r) = serve(stream) {
                        kept.lock().unwrap().push(r);
                    }
                });
            }
        });
        HttpSink { port, requests }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The requests to `path` so far, in arrival order.
    pub fn requests_to(&self, path: &str) -> Vec<Request> {
        self.requests.lock().unwrap().iter().filter(|r| r.path == path).cloned().collect()
    }
}

fn serve(stream: TcpStream) -> Option<Request> {
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let length: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    let mut out = stream;
    let _ = out.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
    Some(Request { method, path, headers, body: String::from_utf8_lossy(&body).into_owned() })
}

/// A loopback port nothing listens on: connections to it are refused.
pub fn refusing_port() -> u16 {
    free_port()
}
