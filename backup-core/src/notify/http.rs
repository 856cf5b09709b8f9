//! The HTTP channels: Slack (an incoming webhook), SMS (a Twilio-style messages API) and a JSON
//! webhook, each one POST through the repositories' HTTPS client ([`crate::storage::https`])
//! on the storage runtime.
//!
//! A 2xx answer is success; the body of any other is read (its first few hundred bytes, within
//! the same deadline) for the error, with the channel's secrets cut out. 5xx, 429 and 408, a
//! timeout or a failed connection are transient; another 4xx or a TLS refusal needs a person.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::json;

use super::{ChannelKind, DeliveryError, Notification, SecretUrl, SlackConfig, SmsConfig, Status, TlsPolicy, WebhookConfig, AlertState, DEADLINE_GRACE, PRODUCT};
use crate::storage::https;
use crate::storage::runtime;
use crate::storage::{Ctx, StorageErrorKind};

/// How much of an error answer is quoted.
const QUOTE: usize = 200;

pub(super) fn slack(c: &SlackConfig, n: &Notification, timeout: Duration) -> Result<(), DeliveryError> {
    let color = match (n.state, n.severity) {
        (AlertState::Resolved, _) | (_, Status::Ok) => "#2eb67d",
        (AlertState::Firing, Status::Warning) => "#ecb22e",
        (AlertState::Firing, Status::Critical) => "#e01e5a",
    };
    let mut details = String::new();
    if n.test {
        details.push_str("This is a test notification from backup.test_alert(); no action is needed.\n");
    }
    details.push_str(&n.details);
    let mut fields = Vec::new();
    for (title, value) in [("Value", &n.value), ("Threshold", &n.threshold)] {
        if let Some(v) = value {
            fields.push(json!({"title": title, "value": slack_escape(v), "short": true}));
        }
    }
    fields.push(json!({"title": "Source", "value": slack_escape(&n.source), "short": true}));
    fields.push(json!({"title": "Time", "value": n.at_text(), "short": true}));
    let body = json!({
        "text": slack_escape(&n.title()),
        "attachments": [{
            "color": color,
            "fallback": slack_escape(&n.title()),
            "text": slack_escape(&details),
            "fields": fields,
            "footer": format!("{PRODUCT} · {}", n.key),
            "ts": n.at.timestamp(),
        }],
    });
    let post = Post {
        kind: ChannelKind::Slack,
        url: &c.webhook_url,
        tls: &c.tls_policy,
        content_type: "application/json",
        authorization: None,
        body: body.to_string().into_bytes(),
        secrets: vec![c.webhook_url.expose().to_string(), path_of(&c.webhook_url)],
        refused: "check webhook_url (BACKUP_SLACK_WEBHOOK_URL): Slack answers 403, 404 or 410 for a revoked or mistyped webhook or an archived channel",
    };
    post.send(timeout)
}

/// Slack's mrkdwn gives `&`, `<` and `>` a meaning (links, mentions); a check's message is text.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// One message per number, in order; the first failure ends the delivery.
pub(super) fn sms(c: &SmsConfig, n: &Notification, timeout: Duration) -> Result<(), DeliveryError> {
    let target = format!("to {}", c.url.host_port());
    let token = c.token.read().map_err(|e| DeliveryError::new(ChannelKind::Sms, &target, format!("the token_file: {e}"), false))?;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.account, token.expose()));
    let text = n.short_text();
    for to in &c.to {
        let post = Post {
            kind: ChannelKind::Sms,
            url: &c.url,
            tls: &c.tls_policy,
            content_type: "application/x-www-form-urlencoded",
            authorization: Some(format!("Basic {basic}")),
            body: form_encode(&[("To", to), ("From", &c.from), ("Body", &text)]).into_bytes(),
            secrets: vec![token.expose().to_string(), basic.clone()],
            refused: "check account and token (BACKUP_SMS_ACCOUNT, BACKUP_SMS_TOKEN) for 401/403, url (BACKUP_SMS_URL) for 404, the numbers to and from (BACKUP_SMS_TO, BACKUP_SMS_FROM) for 400",
        };
        post.send(timeout).map_err(|mut e| {
            e.target = format!("{} (sending to {to})", e.target);
            e
        })?;
    }
    Ok(())
}

/// The notification as JSON, with `"product": "pg_backup_ext"`.
pub(super) fn webhook(c: &WebhookConfig, n: &Notification, timeout: Duration) -> Result<(), DeliveryError> {
    let target = format!("to {}", c.url.host_port());
    let fail = |m: String| DeliveryError::new(ChannelKind::Webhook, &target, m, false);
    let token = match &c.bearer_token {
        Some(t) => Some(t.read().map_err(|e| fail(format!("the bearer_token_file: {e}")))?),
        None => None,
    };
    let mut body = serde_json::to_value(n).map_err(|e| fail(format!("cannot encode the notification: {e}")))?;
    body["product"] = json!(PRODUCT);
    let mut secrets = vec![c.url.expose().to_string(), path_of(&c.url)];
    secrets.extend(token.iter().map(|t| t.expose().to_string()));
    let post = Post {
        kind: ChannelKind::Webhook,
        url: &c.url,
        tls: &c.tls_policy,
        content_type: "application/json",
        authorization: token.map(|t| format!("Bearer {}", t.expose())),
        body: body.to_string().into_bytes(),
        secrets,
        refused: "check url (BACKUP_WEBHOOK_URL), bearer_token and what the receiver expects",
    };
    post.send(timeout)
}

/// `name=value&...` as HTML forms encode it: unreserved bytes as they are, space as `+`,
/// everything else `%XX` of its UTF-8 bytes.
fn form_encode(pairs: &[(&str, &str)]) -> String {
    let encode = |s: &str| {
        let mut out = String::with_capacity(s.len());
        for b in s.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => out.push(b as char),
                b' ' => out.push('+'),
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
        out
    };
    pairs.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect::<Vec<_>>().join("&")
}

/// The path and query of `url`: a Slack webhook's secret, to be cut out of quoted answers.
fn path_of(url: &SecretUrl) -> String {
    url.expose().parse::<http::Uri>().ok().and_then(|u| u.path_and_query().map(|p| p.as_str().to_string())).unwrap_or_default()
}

/// One POST and what its answer means.
struct Post<'a> {
    kind: ChannelKind,
    url: &'a SecretUrl,
    tls: &'a TlsPolicy,
    content_type: &'static str,
    /// The `Authorization` header: a credential itself.
    authorization: Option<String>,
    body: Vec<u8>,
    /// Cut out of any text of the server's that an error quotes.
    secrets: Vec<String>,
    /// What to check when the server refuses the request (4xx).
    refused: &'static str,
}

/// How a request ended, before it is put in words.
enum Answer {
    Status(http::StatusCode, Vec<u8>),
    Failed(hyper_util::client::legacy::Error),
    TimedOut,
}

impl Post<'_> {
    fn send(mut self, timeout: Duration) -> Result<(), DeliveryError> {
        let host = self.url.host_port();
        let target = format!("to {host}");
        let fail = |message: String, transient: bool| DeliveryError::new(self.kind, &target, message, transient);
        let uri: http::Uri = self.url.expose().parse().map_err(|_| fail("the URL does not parse".into(), false))?;
        let tls = https::tls_config(self.tls.ca_file.as_deref(), self.tls.allow_tls12).map_err(|e| fail(e, false))?;
        let mut request = http::Request::post(uri)
            .header(http::header::CONTENT_TYPE, self.content_type)
            .header(http::header::USER_AGENT, concat!("pg_backup_ext/", env!("CARGO_PKG_VERSION")));
        if let Some(auth) = &self.authorization {
            let mut value = http::HeaderValue::from_str(auth).map_err(|_| fail("the token holds characters a header cannot carry".into(), false))?;
            value.set_sensitive(true);
            request = request.header(http::header::AUTHORIZATION, value);
        }
        let request = request.body(Full::new(Bytes::from(std::mem::take(&mut self.body)))).map_err(|_| fail("cannot build the request".into(), false))?;
        let client: https::Client<Full<Bytes>> = https::client(&tls, timeout);

        let ctx = Ctx::background().with_timeout(timeout + DEADLINE_GRACE);
        let answer = runtime::block_on(&ctx, "notifying", &host, async move {
            let deadline = tokio::time::Instant::now() + timeout;
            let response = match tokio::time::timeout_at(deadline, client.request(request)).await {
                Err(_) => return Answer::TimedOut,
                Ok(Err(e)) => return Answer::Failed(e),
                Ok(Ok(r)) => r,
            };
            let status = response.status();
            let mut quoted = Vec::new();
            if !status.is_success() {
                // As much of the answer as arrives by the deadline: it often says what is wrong.
                let mut body = response.into_body();
                while quoted.len() < 4 * QUOTE {
                    match tokio::time::timeout_at(deadline, body.frame()).await {
                        Ok(Some(Ok(frame))) => quoted.extend_from_slice(frame.data_ref().map(|d| d.as_ref()).unwrap_or_default()),
                        _ => break,
                    }
                }
            }
            Answer::Status(status, quoted)
        });
        let answer = match answer {
            Ok(a) => a,
            Err(e) if e.kind() == StorageErrorKind::Timeout => Answer::TimedOut,
            Err(e) => return Err(fail("the I/O runtime failed".into(), true).with_source(e)),
        };
        match answer {
            Answer::Status(status, _) if status.is_success() => Ok(()),
            Answer::Status(status, body) => {
                let transient = status.is_server_error() || matches!(status.as_u16(), 408 | 429);
                let quoted = self.quote(&body);
                let reason = status.canonical_reason().map(|r| format!(" {r}")).unwrap_or_default();
                let said = if quoted.is_empty() { String::new() } else { format!(": {quoted}") };
                let advice = if transient { "the service is failing or busy; a later attempt may pass" } else { self.refused };
                Err(fail(format!("HTTP {}{reason}{said}; {advice}", status.as_u16()), transient))
            }
            Answer::TimedOut => Err(fail(format!("no answer within {timeout:?}; check that the endpoint is reachable from this server (firewall, proxy) and up"), true)),
            Answer::Failed(e) => {
                if let Some(tls) = super::tls_refusal(&e, &host, self.tls.allow_tls12) {
                    return Err(fail(tls, false).with_source(e));
                }
                let what = if e.is_connect() { "cannot connect" } else { "the request failed" };
                Err(fail(format!("{what}; check the URL's host and port and that the endpoint is up"), true).with_source(e))
            }
        }
    }

    /// The start of a server's answer, printable and without the channel's secrets.
    fn quote(&self, body: &[u8]) -> String {
        let mut text = String::from_utf8_lossy(body).into_owned();
        for s in self.secrets.iter().filter(|s| s.len() >= 4) {
            text = text.replace(s.as_str(), "<redacted>");
        }
        let text: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
        super::truncate_chars(text.trim(), QUOTE)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::notification;
    use super::super::{deliver, Channel};
    use super::*;
    use crate::config::{SecretSetting, TlsPolicy};
    use crate::storage::Secret;
    use std::collections::HashMap;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::path::PathBuf;
    use std::sync::mpsc;
    use std::time::Instant;

    /// What the test server received.
    #[derive(Debug)]
    struct Received {
        method: String,
        path: String,
        headers: HashMap<String, String>,
        body: Vec<u8>,
    }

    /// A real HTTP/1.1 server on 127.0.0.1: answers each request with `status` and `reply`,
    /// and sends what it read down the channel.
    fn server(status: u16, reply: &'static str) -> (u16, mpsc::Receiver<Received>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let Some(received) = read_request(&conn) else { continue };
                let mut conn = conn;
                let _ = write!(conn, "HTTP/1.1 {status} X\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}", reply.len());
                if tx.send(received).is_err() {
                    return;
                }
            }
        });
        (port, rx)
    }

    fn read_request(conn: impl Read) -> Option<Received> {
        let mut r = BufReader::new(conn);
        let mut line = String::new();
        r.read_line(&mut line).ok()?;
        let mut parts = line.split_whitespace();
        let (method, path) = (parts.next()?.to_string(), parts.next()?.to_string());
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            r.read_line(&mut h).ok()?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':')?;
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
        let len: usize = headers.get("content-length").and_then(|l| l.parse().ok()).unwrap_or(0);
        let mut body = vec![0; len];
        r.read_exact(&mut body).ok()?;
        Some(Received { method, path, headers, body })
    }

    fn form_decode(body: &[u8]) -> HashMap<String, String> {
        let decode = |s: &str| {
            let bytes = s.as_bytes();
            let mut out = Vec::new();
            let mut i = 0;
            while i < bytes.len() {
                match bytes[i] {
                    b'+' => out.push(b' '),
                    b'%' => {
                        out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                        i += 2;
                    }
                    b => out.push(b),
                }
                i += 1;
            }
            String::from_utf8(out).unwrap()
        };
        std::str::from_utf8(body).unwrap().split('&').map(|kv| kv.split_once('=').unwrap()).map(|(k, v)| (decode(k), decode(v))).collect()
    }

    const TIMEOUT: Duration = Duration::from_secs(5);

    fn slack_to(port: u16) -> Channel {
        Channel::slack(SlackConfig {
            webhook_url: SecretUrl::new(&format!("http://127.0.0.1:{port}/services/T000/B000/slacksecret42"), "t").unwrap(),
            min_severity: Status::Critical,
            tls_policy: TlsPolicy::default(),
        })
    }

    fn webhook_to(port: u16, token: Option<&str>) -> Channel {
        Channel::webhook(WebhookConfig {
            url: SecretUrl::new(&format!("http://127.0.0.1:{port}/hooks/backup"), "t").unwrap(),
            bearer_token: token.map(|t| SecretSetting::Value(Secret::new(t))),
            min_severity: Status::Warning,
            tls_policy: TlsPolicy::default(),
        })
    }

    fn report(e: &DeliveryError) -> String {
        crate::error::report(e)
    }

    #[test]
    fn slack_posts_text_and_a_coloured_attachment() {
        let (port, rx) = server(200, "ok");
        let mut n = notification(AlertState::Firing, Status::Critical);
        n.details = "disk <full> & more".into();
        deliver(&slack_to(port), &n, TIMEOUT).unwrap();
        let got = rx.recv_timeout(TIMEOUT).unwrap();
        assert_eq!((got.method.as_str(), got.path.as_str()), ("POST", "/services/T000/B000/slacksecret42"));
        assert_eq!(got.headers["content-type"], "application/json");
        let v: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
        assert_eq!(v["text"], "[pg_backup_ext] CRITICAL: archiving is failing — db1");
        assert_eq!(v["attachments"][0]["color"], "#e01e5a");
        assert_eq!(v["attachments"][0]["text"], "disk &lt;full&gt; &amp; more");
        let fields = v["attachments"][0]["fields"].to_string();
        assert!(fields.contains("12 failures") && fields.contains("2024-01-15T14:30:00Z") && fields.contains("db1 (system"), "{fields}");

        let (port, rx) = server(200, "ok");
        deliver(&slack_to(port), &notification(AlertState::Resolved, Status::Critical), TIMEOUT).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&rx.recv_timeout(TIMEOUT).unwrap().body).unwrap();
        assert!(v["text"].as_str().unwrap().contains("RESOLVED"), "{v}");
        assert_eq!(v["attachments"][0]["color"], "#2eb67d");
    }

    #[test]
    fn sms_posts_a_form_per_number_with_basic_auth() {
        let (port, rx) = server(201, "{}");
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("sms.token");
        std::fs::write(&token_file, "tok3n-secret\n").unwrap();
        let channel = Channel::sms(SmsConfig {
            url: SecretUrl::new(&format!("http://127.0.0.1:{port}/2010-04-01/Accounts/AC42/Messages.json"), "t").unwrap(),
            to: vec!["+84 900 000 001".into(), "+15550100".into()],
            from: "+15550199".into(),
            account: "AC42".into(),
            token: SecretSetting::File(token_file),
            min_severity: Status::Critical,
            tls_policy: TlsPolicy::default(),
        });
        deliver(&channel, &notification(AlertState::Firing, Status::Critical), TIMEOUT).unwrap();
        for to in ["+84 900 000 001", "+15550100"] {
            let got = rx.recv_timeout(TIMEOUT).unwrap();
            assert_eq!((got.method.as_str(), got.path.as_str()), ("POST", "/2010-04-01/Accounts/AC42/Messages.json"));
            assert_eq!(got.headers["content-type"], "application/x-www-form-urlencoded");
            let basic = got.headers["authorization"].strip_prefix("Basic ").unwrap();
            assert_eq!(base64::engine::general_purpose::STANDARD.decode(basic).unwrap(), b"AC42:tok3n-secret");
            let form = form_decode(&got.body);
            assert_eq!(form["To"], to);
            assert_eq!(form["From"], "+15550199");
            assert_eq!(form["Body"], "[pg_backup_ext] CRITICAL db1: archiving is failing");
        }
    }

    #[test]
    fn webhook_posts_the_notification_as_json_with_a_bearer_token() {
        let (port, rx) = server(204, "");
        let mut n = notification(AlertState::Firing, Status::Warning);
        n.test = true;
        deliver(&webhook_to(port, Some("bearer-secret")), &n, TIMEOUT).unwrap();
        let got = rx.recv_timeout(TIMEOUT).unwrap();
        assert_eq!((got.method.as_str(), got.path.as_str()), ("POST", "/hooks/backup"));
        assert_eq!(got.headers["authorization"], "Bearer bearer-secret");
        assert_eq!(got.headers["content-type"], "application/json");
        let v: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
        assert_eq!(v["product"], "pg_backup_ext");
        assert_eq!(v["key"], "archiving");
        assert_eq!(v["state"], "firing");
        assert_eq!(v["severity"], "warning");
        assert_eq!(v["summary"], "archiving is failing");
        assert_eq!(v["value"], "12 failures");
        assert_eq!(v["threshold"], "1");
        assert_eq!(v["at"], "2024-01-15T14:30:00Z");
        assert_eq!(v["source"], "db1 (system 7312345678901234567)");
        assert_eq!(v["test"], true);

        let (port, rx) = server(200, "");
        deliver(&webhook_to(port, None), &notification(AlertState::Resolved, Status::Critical), TIMEOUT).unwrap();
        let got = rx.recv_timeout(TIMEOUT).unwrap();
        assert!(!got.headers.contains_key("authorization"));
        let v: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
        assert_eq!((v["state"].as_str(), v["severity"].as_str()), (Some("resolved"), Some("critical")));
    }

    #[test]
    fn server_errors_are_transient_client_errors_not() {
        let n = notification(AlertState::Firing, Status::Critical);
        let (port, _rx) = server(500, "upstream exploded");
        let e = deliver(&webhook_to(port, None), &n, TIMEOUT).unwrap_err();
        assert!(e.transient(), "{e}");
        let text = report(&e);
        assert!(text.starts_with(&format!("webhook notification to 127.0.0.1:{port} failed: HTTP 500")), "{text}");
        assert!(text.contains("HTTP 500") && text.contains("upstream exploded"), "{text}");
        assert!(!text.contains("/hooks/backup"), "the path shows: {text}");
        println!("HTTP 500: {text}");

        let (port, _rx) = server(429, "slow down");
        assert!(deliver(&webhook_to(port, None), &n, TIMEOUT).unwrap_err().transient());

        // A 4xx quoting the secret path (as some services echo the request): cut out.
        let (port, _rx) = server(404, "no_service for /services/T000/B000/slacksecret42");
        let e = deliver(&slack_to(port), &n, TIMEOUT).unwrap_err();
        assert!(!e.transient(), "{e}");
        let text = report(&e);
        assert!(text.contains("HTTP 404") && text.contains("no_service") && text.contains("check webhook_url"), "{text}");
        assert!(!text.contains("slacksecret42"), "secret in {text}");
        println!("HTTP 404: {text}");
        assert!(!format!("{e:?}").contains("slacksecret42"));

        let (port, _rx) = server(400, "bad request");
        let e = deliver(&webhook_to(port, Some("bearer-secret")), &n, TIMEOUT).unwrap_err();
        assert!(!e.transient() && !report(&e).contains("bearer-secret") && !format!("{e:?}").contains("bearer-secret"), "{e:?}");
    }

    #[test]
    fn a_refused_connection_fails_at_once() {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let started = Instant::now();
        let e = deliver(&slack_to(port), &notification(AlertState::Firing, Status::Critical), Duration::from_secs(10)).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
        assert!(e.transient());
        let text = report(&e);
        assert!(text.starts_with(&format!("slack notification to 127.0.0.1:{port} failed: cannot connect")), "{text}");
        assert!(!text.contains("slacksecret42"), "{text}");
        println!("refused: {text}");
    }

    #[test]
    fn a_silent_server_fails_after_the_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming() {
                held.push(conn);
            }
        });
        let started = Instant::now();
        let e = deliver(&webhook_to(port, None), &notification(AlertState::Firing, Status::Critical), Duration::from_secs(1)).unwrap_err();
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(3), "took {took:?}");
        assert!(e.transient());
        assert!(report(&e).contains("no answer within 1s"), "{}", report(&e));
        println!("silent: {}", report(&e));
    }

    /// A throwaway CA (its PEM in the returned directory as `ca.pem`) and an HTTPS server for
    /// 127.0.0.1 signed by it, speaking only `versions`, answering 200 to each request.
    fn tls_server(versions: &[&'static rustls::SupportedProtocolVersion]) -> (u16, tempfile::TempDir, mpsc::Receiver<Received>) {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "pg_backup_ext notify test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        let cert = params.signed_by(&key, &issuer).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();

        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()))
            .unwrap();
        let config = std::sync::Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let mut tls = rustls::StreamOwned::new(rustls::ServerConnection::new(config.clone()).unwrap(), conn);
                let Some(received) = read_request(&mut tls) else { continue };
                let _ = tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                tls.conn.send_close_notify();
                let _ = tls.flush();
                if tx.send(received).is_err() {
                    return;
                }
            }
        });
        (port, dir, rx)
    }

    fn https_webhook(port: u16, ca_file: Option<PathBuf>, allow_tls12: bool) -> Channel {
        Channel::webhook(WebhookConfig {
            url: SecretUrl::new(&format!("https://127.0.0.1:{port}/hooks/backup"), "t").unwrap(),
            bearer_token: None,
            min_severity: Status::Warning,
            tls_policy: TlsPolicy { ca_file, allow_tls12 },
        })
    }

    #[test]
    fn https_endpoints_follow_the_repositories_tls_policy() {
        let n = notification(AlertState::Firing, Status::Critical);
        let (port, pki, rx) = tls_server(&[&rustls::version::TLS13]);
        deliver(&https_webhook(port, Some(pki.path().join("ca.pem")), false), &n, TIMEOUT).unwrap();
        assert_eq!(rx.recv_timeout(TIMEOUT).unwrap().path, "/hooks/backup");

        // The system's roots do not know the test CA.
        let e = deliver(&https_webhook(port, None, false), &n, TIMEOUT).unwrap_err();
        let text = report(&e);
        assert!(!e.transient() && text.contains("not trusted") && text.contains("ca_file"), "{text}");
        println!("untrusted: {text}");

        let (port, pki, rx) = tls_server(&[&rustls::version::TLS12]);
        let e = deliver(&https_webhook(port, Some(pki.path().join("ca.pem")), false), &n, TIMEOUT).unwrap_err();
        let text = report(&e);
        assert!(!e.transient() && text.contains("offers no TLS 1.3") && text.contains("allow_tls12 = true"), "{text}");
        println!("TLS 1.2 only: {text}");
        deliver(&https_webhook(port, Some(pki.path().join("ca.pem")), true), &n, TIMEOUT).unwrap();
        assert_eq!(rx.recv_timeout(TIMEOUT).unwrap().method, "POST");
    }

    #[test]
    fn form_encoding() {
        assert_eq!(form_encode(&[("To", "+84 9"), ("Body", "a&b=c — ü")]), "To=%2B84+9&Body=a%26b%3Dc+%E2%80%94+%C3%BC");
        assert_eq!(form_decode(form_encode(&[("Body", "x+y z%")]).as_bytes())["Body"], "x+y z%");
    }
}
