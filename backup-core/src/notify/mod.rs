//! How one notification reaches people through one channel: e-mail (SMTP), Slack (an incoming
//! webhook), SMS (a Twilio-style HTTP API) or a JSON webhook.
//!
//! What to send and when (deduplication, resolves, retries with backoff, the record of each
//! attempt) is the alert worker's business ([`crate::alerts`] and the extension); this module
//! sends one [`Notification`] through one [`Channel`], synchronously, within a bounded time, and
//! says in a [`DeliveryError`] whether trying again later may help
//! ([`DeliveryError::transient`]).
//!
//! **Bounded.** Every delivery ends within the caller's `timeout`: connecting, the TLS
//! handshake, the request and the server's answer together. The HTTP channels run on the
//! storage layer's Tokio runtime (threads that never take a signal, see
//! [`crate::storage`]) with its hyper + rustls client; SMTP is lettre's blocking client on that
//! runtime's blocking pool, each of its reads and writes bounded by the same `timeout`, the
//! whole by a deadline the caller waits no longer than. A refused connection fails at once.
//!
//! **One TLS policy.** Endpoints are verified like the repositories' (TLS 1.3 unless
//! `allow_tls12`, the system's roots or `ca_file`); plain `http://` and `tls = "none"` only to
//! loopback addresses.
//!
//! **Nothing secret is printed.** Passwords and tokens are [`Secret`](crate::storage::Secret)s,
//! URLs whose path is a credential (a Slack webhook's) are [`SecretUrl`]s that show only their
//! host; errors name the channel and the host, and a server's answer quoted in an error is
//! stripped of the channel's secrets first.

mod email;
mod http;

use std::fmt;
use std::time::Duration;

use serde::Serialize;

pub use crate::config::{
    EmailConfig, NotificationsConfig, SecretSetting, SecretUrl, SlackConfig, SmsConfig, SmtpLogin, SmtpTls, TlsPolicy, WebhookConfig,
};
pub use crate::health::Status;

/// The name products put in subjects and titles.
pub const PRODUCT: &str = "pg_backup_ext";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    Firing,
    Resolved,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }
}

/// One thing to tell: a condition that started (or is still) failing, or that is over.
#[derive(Clone, Debug, Serialize)]
pub struct Notification {
    /// The condition, e.g. `archiving`, `repository_space:offsite`.
    pub key: String,
    pub state: AlertState,
    /// Warning or Critical when firing; for a resolve, the severity it had.
    pub severity: Status,
    /// One line, e.g. "archiving is failing".
    pub summary: String,
    /// The health check's message: what is wrong and what to do.
    pub details: String,
    pub value: Option<String>,
    pub threshold: Option<String>,
    pub at: chrono::DateTime<chrono::Utc>,
    /// Which cluster, e.g. "db1 (system 7312…)".
    pub source: String,
    /// Sent by `backup.test_alert()`: every channel says so plainly.
    pub test: bool,
}

impl Notification {
    /// `CRITICAL`, `WARNING`, `RESOLVED`, with `TEST ` in front for a test.
    fn label(&self) -> String {
        let state = match self.state {
            AlertState::Resolved => "RESOLVED",
            AlertState::Firing if self.severity == Status::Critical => "CRITICAL",
            AlertState::Firing if self.severity == Status::Warning => "WARNING",
            AlertState::Firing => "OK",
        };
        if self.test {
            format!("TEST {state}")
        } else {
            state.to_string()
        }
    }

    /// The cluster's name without what follows it in parentheses ("db1" of "db1 (system 73…)"),
    /// for the places where room is short.
    fn short_source(&self) -> &str {
        let s = self.source.split(" (").next().unwrap_or_default().trim();
        if s.is_empty() {
            self.source.trim()
        } else {
            s
        }
    }

    /// `[pg_backup_ext] CRITICAL: archiving is failing — db1`: the e-mail subject.
    fn title(&self) -> String {
        let source = self.short_source();
        if source.is_empty() {
            format!("[{PRODUCT}] {}: {}", self.label(), self.summary)
        } else {
            format!("[{PRODUCT}] {}: {} — {source}", self.label(), self.summary)
        }
    }

    /// Every fact, one per line, for a plain-text body.
    fn text_body(&self) -> String {
        let mut out = String::new();
        if self.test {
            out.push_str("This is a test notification from backup.test_alert(); no action is needed.\n\n");
        }
        match self.state {
            AlertState::Firing => out.push_str(&format!("{} ({}): {}\n\n", self.summary, self.severity, self.key)),
            AlertState::Resolved => out.push_str(&format!("Resolved: {} (it was {}): {}\n\n", self.summary, self.severity, self.key)),
        }
        if !self.details.is_empty() {
            out.push_str(&self.details);
            out.push_str("\n\n");
        }
        if let Some(v) = &self.value {
            out.push_str(&format!("Value:     {v}\n"));
        }
        if let Some(t) = &self.threshold {
            out.push_str(&format!("Threshold: {t}\n"));
        }
        out.push_str(&format!("Time:      {}\n", self.at_text()));
        out.push_str(&format!("Source:    {}\n", self.source));
        out.push_str(&format!("\n-- \n{PRODUCT}: SELECT * FROM backup.health(); shows every check.\n"));
        out
    }

    /// `[pg_backup_ext] CRITICAL db1: archiving is failing`, at most [`SMS_MAX`] characters.
    fn short_text(&self) -> String {
        let text = format!("[{PRODUCT}] {} {}: {}", self.label(), self.short_source(), self.summary);
        truncate_chars(&text, SMS_MAX)
    }

    fn at_text(&self) -> String {
        self.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    }
}

/// One SMS segment in the GSM alphabet; longer texts cost several and arrive split.
const SMS_MAX: usize = 160;

/// `text` cut to `max` characters, `...` marking a cut (plain dots: an ellipsis character would
/// turn an SMS into UCS-2, 70 characters a segment).
fn truncate_chars(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(3)).collect();
    cut.push_str("...");
    cut
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChannelKind {
    Email,
    Slack,
    Sms,
    Webhook,
}

impl ChannelKind {
    pub const ALL: [ChannelKind; 4] = [ChannelKind::Email, ChannelKind::Slack, ChannelKind::Sms, ChannelKind::Webhook];

    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Email => "email",
            ChannelKind::Slack => "slack",
            ChannelKind::Sms => "sms",
            ChannelKind::Webhook => "webhook",
        }
    }
}

impl fmt::Display for ChannelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ChannelKind {
    type Err = String;
    fn from_str(s: &str) -> Result<ChannelKind, String> {
        ChannelKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not a notification channel; the channels are email, slack, sms and webhook"))
    }
}

/// A configured way to reach people. `Debug` shows no secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Channel {
    settings: Settings,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Settings {
    Email(EmailConfig),
    Slack(SlackConfig),
    Sms(SmsConfig),
    Webhook(WebhookConfig),
}

impl Channel {
    pub fn email(config: EmailConfig) -> Channel {
        Channel { settings: Settings::Email(config) }
    }

    pub fn slack(config: SlackConfig) -> Channel {
        Channel { settings: Settings::Slack(config) }
    }

    pub fn sms(config: SmsConfig) -> Channel {
        Channel { settings: Settings::Sms(config) }
    }

    pub fn webhook(config: WebhookConfig) -> Channel {
        Channel { settings: Settings::Webhook(config) }
    }

    pub fn kind(&self) -> ChannelKind {
        match &self.settings {
            Settings::Email(_) => ChannelKind::Email,
            Settings::Slack(_) => ChannelKind::Slack,
            Settings::Sms(_) => ChannelKind::Sms,
            Settings::Webhook(_) => ChannelKind::Webhook,
        }
    }

    /// The least severity this channel is told about (`min_severity`).
    pub fn min_severity(&self) -> Status {
        match &self.settings {
            Settings::Email(c) => c.min_severity,
            Settings::Slack(c) => c.min_severity,
            Settings::Sms(c) => c.min_severity,
            Settings::Webhook(c) => c.min_severity,
        }
    }

    /// Whether a notification of `severity` goes here; never one of [`Status::Ok`].
    pub fn wants(&self, severity: Status) -> bool {
        severity != Status::Ok && severity >= self.min_severity()
    }

    /// Where it sends, for messages and logs: "email to 2 recipients via smtp.example.com:587",
    /// "slack (hooks.slack.com)". Never a credential or a webhook's path.
    pub fn describe(&self) -> String {
        match &self.settings {
            Settings::Email(c) => {
                let n = c.recipients.len();
                let whom = if n == 1 { "1 recipient".to_string() } else { format!("{n} recipients") };
                format!("email to {whom} via {}:{}", c.smtp_host, c.smtp_port)
            }
            Settings::Slack(c) => format!("slack ({})", c.webhook_url.host_port()),
            Settings::Sms(c) => {
                let n = c.to.len();
                let whom = if n == 1 { "1 number".to_string() } else { format!("{n} numbers") };
                format!("sms to {whom} via {}", c.url.host_port())
            }
            Settings::Webhook(c) => format!("webhook ({})", c.url.host_port()),
        }
    }
}

/// The configured channels, in the order email, slack, sms, webhook; none unless `enabled`.
/// The configuration was checked when it was loaded ([`crate::config::Config::parse`]).
pub fn channels(config: &NotificationsConfig) -> Vec<Channel> {
    if !config.enabled {
        return Vec::new();
    }
    let mut out = Vec::new();
    out.extend(config.email.clone().map(Channel::email));
    out.extend(config.slack.clone().map(Channel::slack));
    out.extend(config.sms.clone().map(Channel::sms));
    out.extend(config.webhook.clone().map(Channel::webhook));
    out
}

/// Send `n` through `channel`, returning within about `timeout` (connect, TLS, the request and
/// the answer's status together). For SMS, one request per number: the first failure ends it
/// (numbers before it have their message; a retry sends theirs again).
pub fn deliver(channel: &Channel, n: &Notification, timeout: Duration) -> Result<(), DeliveryError> {
    match &channel.settings {
        Settings::Email(c) => email::send(c, n, timeout),
        Settings::Slack(c) => http::slack(c, n, timeout),
        Settings::Sms(c) => http::sms(c, n, timeout),
        Settings::Webhook(c) => http::webhook(c, n, timeout),
    }
}

/// A delivery that failed: which channel, to which host, what happened and what to do, with
/// the underlying error as its source. Never holds a credential or a webhook's path.
#[derive(Debug, thiserror::Error)]
#[error("{kind} notification {target} failed: {message}")]
pub struct DeliveryError {
    kind: ChannelKind,
    /// `to hooks.slack.com`, `via smtp.example.com:587`.
    target: String,
    message: String,
    transient: bool,
    #[source]
    source: Option<crate::storage::BoxError>,
}

impl DeliveryError {
    fn new(kind: ChannelKind, target: &str, message: impl Into<String>, transient: bool) -> DeliveryError {
        DeliveryError { kind, target: target.to_string(), message: message.into(), transient, source: None }
    }

    fn with_source(mut self, source: impl Into<crate::storage::BoxError>) -> DeliveryError {
        self.source = Some(source.into());
        self
    }

    pub fn kind(&self) -> ChannelKind {
        self.kind
    }

    /// Whether the same delivery may succeed later: the endpoint was unreachable, slow, busy
    /// (5xx, 429) or said "try later". Not so for a refused credential, a rejected request, a
    /// certificate or configuration problem: those need a person.
    pub fn transient(&self) -> bool {
        self.transient
    }
}

/// A TLS handshake or certificate failure anywhere in `err`'s chain, in words.
fn tls_refusal(err: &(dyn std::error::Error + 'static), host: &str, allow_tls12: bool) -> Option<String> {
    use rustls::{AlertDescription, CertificateError, Error};
    let mut found = None;
    crate::storage::https::walk_chain(err, &mut |e| {
        if found.is_none() {
            found = e.downcast_ref::<Error>().cloned();
        }
    });
    let wanted = if allow_tls12 { "TLS 1.3 or 1.2" } else { "TLS 1.3" };
    Some(match found? {
        Error::AlertReceived(AlertDescription::ProtocolVersion) | Error::PeerIncompatible(_) if !allow_tls12 => format!(
            "TLS handshake with {host} refused: the server offers no TLS 1.3, which is required; upgrade the server, or set allow_tls12 = true in this channel's section to accept TLS 1.2"
        ),
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => format!(
            "the TLS certificate of {host} is not trusted (unknown issuer); if the server uses a private CA, set ca_file in this channel's section to its PEM bundle"
        ),
        Error::InvalidCertificate(CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }) => format!(
            "the TLS certificate of {host} is not valid for that name; use the host name the certificate was issued for"
        ),
        Error::InvalidCertificate(other) => format!("the TLS certificate of {host} was rejected: {other:?}"),
        other => format!("TLS handshake with {host} failed ({wanted} required): {other}"),
    })
}

/// Past this long after its deadline a delivery is abandoned even if its own timeouts did not
/// fire (they should: this is a backstop).
const DEADLINE_GRACE: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    pub(crate) fn notification(state: AlertState, severity: Status) -> Notification {
        Notification {
            key: "archiving".into(),
            state,
            severity,
            summary: "archiving is failing".into(),
            details: "archive_command failed 12 times; see the server log and run 'wal-archiver check'".into(),
            value: Some("12 failures".into()),
            threshold: Some("1".into()),
            at: chrono::DateTime::parse_from_rfc3339("2024-01-15T14:30:00Z").unwrap().with_timezone(&chrono::Utc),
            source: "db1 (system 7312345678901234567)".into(),
            test: false,
        }
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    const ALL: &str = "[notifications]\nenabled = true\n\
        [notifications.email]\nrecipients = [\"a@example.com\", \"B <b@example.com>\"]\nsmtp_host = \"smtp.example.com\"\nfrom = \"pg_backup_ext <backup@db1.example.com>\"\n\
        [notifications.slack]\nwebhook_url = \"https://hooks.slack.com/services/T000/B000/XXXXsecretXXXX\"\n\
        [notifications.sms]\nurl = \"https://api.twilio.com/2010-04-01/Accounts/AC123/Messages.json\"\nto = [\"+15550100\", \"+15550101\"]\nfrom = \"+15550199\"\naccount = \"AC123\"\ntoken = \"tok-secret\"\n\
        [notifications.webhook]\nurl = \"https://ops.example.com:8443/hooks/backup?key=hook-secret\"\n";

    #[test]
    fn channels_route_by_severity() {
        let c = Config::parse(ALL, "t", no_env).unwrap();
        let channels = channels(&c.notifications);
        let kinds: Vec<ChannelKind> = channels.iter().map(Channel::kind).collect();
        assert_eq!(kinds, ChannelKind::ALL);
        let wants = |s: Status| channels.iter().filter(|c| c.wants(s)).map(|c| c.kind().as_str()).collect::<Vec<_>>();
        assert_eq!(wants(Status::Critical), ["email", "slack", "sms", "webhook"]);
        assert_eq!(wants(Status::Warning), ["email", "webhook"], "product defaults: Slack and SMS for critical issues only");
        assert!(wants(Status::Ok).is_empty());

        let off = Config::parse(&ALL.replace("enabled = true", "enabled = false"), "t", no_env).unwrap();
        assert!(off.notifications.email.is_some());
        assert!(super::channels(&off.notifications).is_empty(), "disabled: nothing is sent");
    }

    #[test]
    fn describe_shows_no_secret() {
        let c = Config::parse(ALL, "t", no_env).unwrap();
        let described: Vec<String> = channels(&c.notifications).iter().map(Channel::describe).collect();
        assert_eq!(
            described,
            [
                "email to 2 recipients via smtp.example.com:587",
                "slack (hooks.slack.com)",
                "sms to 2 numbers via api.twilio.com",
                "webhook (ops.example.com:8443)"
            ]
        );
        let debug = format!("{:?}", channels(&c.notifications));
        for secret in ["XXXXsecretXXXX", "tok-secret", "hook-secret", "/services/", "AC123/Messages"] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
    }

    #[test]
    fn channel_kinds_parse() {
        for k in ChannelKind::ALL {
            assert_eq!(k.as_str().parse::<ChannelKind>().unwrap(), k);
        }
        let e = "pager".parse::<ChannelKind>().unwrap_err();
        assert!(e.contains("\"pager\"") && e.contains("email, slack, sms and webhook"), "{e}");
    }

    #[test]
    fn texts_say_what_state_and_where() {
        let mut n = notification(AlertState::Firing, Status::Critical);
        assert_eq!(n.title(), "[pg_backup_ext] CRITICAL: archiving is failing — db1");
        assert_eq!(n.short_text(), "[pg_backup_ext] CRITICAL db1: archiving is failing");
        let body = n.text_body();
        for part in ["archiving is failing (critical): archiving", "wal-archiver check", "Value:     12 failures", "Threshold: 1", "Time:      2024-01-15T14:30:00Z", "Source:    db1 (system 7312345678901234567)"] {
            assert!(body.contains(part), "{part:?} not in {body}");
        }
        n.state = AlertState::Resolved;
        assert_eq!(n.title(), "[pg_backup_ext] RESOLVED: archiving is failing — db1");
        assert!(n.text_body().starts_with("Resolved: archiving is failing (it was critical)"));
        n.test = true;
        n.state = AlertState::Firing;
        n.severity = Status::Warning;
        assert_eq!(n.title(), "[pg_backup_ext] TEST WARNING: archiving is failing — db1");
        assert!(n.text_body().starts_with("This is a test notification"));
        n.summary = "x".repeat(300);
        let sms = n.short_text();
        assert_eq!(sms.chars().count(), 160);
        assert!(sms.ends_with("...") && sms.is_ascii());
        n.source = "standalone".into();
        assert!(n.title().ends_with("— standalone"));
    }
}
