//! E-mail: one plain-text message to every recipient through the configured SMTP server, with
//! lettre's blocking client.
//!
//! lettre bounds each connect, read and write by the `timeout` it is given, but not the whole
//! conversation, nor the DNS lookup before it; so the send runs on the storage runtime's
//! blocking pool (threads that take no signal) and the caller waits for it no longer than
//! `timeout`. An abandoned send ends by itself at lettre's next timeout.
//!
//! TLS is rustls with the repositories' policy: lettre builds the rustls configuration, from
//! the minimum version we give it (1.3, or 1.2 with `allow_tls12`) and the roots (the system's,
//! or `ca_file` alone).

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters, TlsVersion};
use lettre::{Message, SmtpTransport, Transport};

use super::{tls_refusal, ChannelKind, DeliveryError, EmailConfig, Notification, SmtpTls, DEADLINE_GRACE};
use crate::storage::https::walk_chain;
use crate::storage::runtime;
use crate::storage::{Ctx, StorageErrorKind};

pub(super) fn send(c: &EmailConfig, n: &Notification, timeout: Duration) -> Result<(), DeliveryError> {
    let server = format!("{}:{}", c.smtp_host, c.smtp_port);
    let target = format!("via {server}");
    let fail = |message: String, transient: bool| DeliveryError::new(ChannelKind::Email, &target, message, transient);

    let message = message(c, n).map_err(|e| fail(e, false))?;
    let mut builder = SmtpTransport::builder_dangerous(c.smtp_host.as_str()).port(c.smtp_port).timeout(Some(timeout));
    builder = match c.tls {
        SmtpTls::StartTls => builder.tls(Tls::Required(tls_parameters(c).map_err(|e| fail(e, false))?)),
        SmtpTls::Implicit => builder.tls(Tls::Wrapper(tls_parameters(c).map_err(|e| fail(e, false))?)),
        SmtpTls::None => builder.tls(Tls::None),
    };
    if let Some(login) = &c.login {
        let password = login.password.read().map_err(|e| fail(format!("the SMTP password_file: {e}"), false))?;
        builder = builder.credentials(Credentials::new(login.username.clone(), password.expose().to_string()));
    }
    let transport = builder.build();

    let ctx = Ctx::background().with_timeout(timeout + DEADLINE_GRACE);
    let sent = runtime::block_on(&ctx, "sending e-mail via", &server, async move {
        tokio::time::timeout(timeout, tokio::task::spawn_blocking(move || transport.send(&message))).await
    });
    match sent {
        Ok(Ok(Ok(Ok(_)))) => Ok(()),
        Ok(Ok(Ok(Err(e)))) => Err(smtp_failure(c, &target, e)),
        Ok(Ok(Err(join))) => Err(fail("the SMTP client failed".into(), true).with_source(join)),
        Err(e) if e.kind() != StorageErrorKind::Timeout => Err(fail("the I/O runtime failed".into(), true).with_source(e)),
        Ok(Err(_)) | Err(_) => Err(fail(
            format!("no answer within {timeout:?}; check that smtp_host and smtp_port (BACKUP_SMTP_HOST, BACKUP_SMTP_PORT) reach the SMTP server and that it is up"),
            true,
        )),
    }
}

/// The message: subject and a plain-text body from the notification, to all recipients at once.
fn message(c: &EmailConfig, n: &Notification) -> Result<Message, String> {
    let mailbox = |field: &str, a: &str| a.parse::<Mailbox>().map_err(|e| format!("{field} {a:?} is not an e-mail address: {e}"));
    let mut b = Message::builder().from(mailbox("from", &c.from)?).subject(n.title()).header(ContentType::TEXT_PLAIN);
    for r in &c.recipients {
        b = b.to(mailbox("recipient", r)?);
    }
    b.body(n.text_body()).map_err(|e| format!("cannot build the message: {e}"))
}

/// rustls through lettre: TLS 1.3 (or 1.2 too), the system's roots or `ca_file` alone.
fn tls_parameters(c: &EmailConfig) -> Result<TlsParameters, String> {
    let version = if c.tls_policy.allow_tls12 { TlsVersion::Tlsv12 } else { TlsVersion::Tlsv13 };
    let mut b = TlsParameters::builder(c.smtp_host.clone()).set_min_tls_version(version);
    if let Some(path) = &c.tls_policy.ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("cannot read ca_file {}: {e}", path.display()))?;
        if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
            return Err(format!("ca_file {} holds no PEM certificate", path.display()));
        }
        let certs = Certificate::from_pem(&pem).map_err(|e| format!("ca_file {}: not a PEM certificate bundle ({e})", path.display()))?;
        b = b.certificate_store(CertificateStore::None).add_root_certificate(certs);
    }
    b.build().map_err(|e| format!("TLS settings: {e}"))
}

/// What went wrong, in words that say what to change, the client's own words last (the
/// error's source, which a report prints after it); transient when a later attempt may pass.
fn smtp_failure(c: &EmailConfig, target: &str, e: lettre::transport::smtp::Error) -> DeliveryError {
    let reach = "check smtp_host and smtp_port (BACKUP_SMTP_HOST, BACKUP_SMTP_PORT) and that the server is up";
    let (message, transient) = if let Some(tls) = tls_refusal(&e, &c.smtp_host, c.tls_policy.allow_tls12) {
        (tls, false)
    } else if let Some(code) = e.status() {
        let advice = match u16::from(code) {
            530 if c.login.is_none() => "the server requires a login: set username and password (BACKUP_SMTP_USER, BACKUP_SMTP_PASSWORD)",
            530 | 534 | 535 | 538 => "the server refused the login: check username and password or password_file (BACKUP_SMTP_USER, BACKUP_SMTP_PASSWORD)",
            550..=553 => "the server refused the sender or a recipient: check from and recipients (BACKUP_SMTP_FROM, BACKUP_EMAIL_RECIPIENTS) and that this server relays for them",
            _ if e.is_transient() => "the server asks to try again later",
            _ => "the server refused the message",
        };
        (advice.to_string(), e.is_transient())
    } else if e.is_timeout() {
        (format!("the server stopped answering; {reach}"), true)
    } else if e.is_client() {
        if e.to_string().contains("STARTTLS") {
            ("the server offers no STARTTLS: use tls = \"tls\" if it speaks implicit TLS (port 465), or check smtp_port".to_string(), false)
        } else {
            ("check [notifications.email]".to_string(), false)
        }
    } else {
        // Connection refused, reset, unresolvable name: the server may be back later.
        let mut closed = false;
        walk_chain(&e, &mut |err| {
            closed |= err.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::UnexpectedEof);
        });
        // Some servers hang up on a handshake they refuse, without a TLS alert to say why.
        let hint = match c.tls {
            SmtpTls::None => "",
            _ if closed && !c.tls_policy.allow_tls12 => {
                "; if it hangs up during the TLS handshake, it may offer no TLS 1.3 (required; allow_tls12 = true accepts TLS 1.2) or not speak this tls mode on this port"
            }
            _ if closed => "; if it hangs up during the TLS handshake, it may not speak this tls mode on this port",
            _ => "",
        };
        (format!("cannot talk to the SMTP server; {reach}{hint}"), true)
    };
    DeliveryError::new(ChannelKind::Email, target, message, transient).with_source(e)
}
