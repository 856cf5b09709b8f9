//! The HTTPS client of every remote backend, so that one TLS policy holds for all of them.
//!
//! hyper + rustls with the `ring` provider. A remote endpoint must speak TLS 1.3 unless the
//! repository says `allow_tls12 = true`. Certificates are always verified, against the
//! system's roots or, when `ca_file` is set, against that bundle only. Plain `http://` is
//! accepted only to loopback addresses (emulators, tests). A TLS failure says what to change:
//! a server that only offers TLS 1.2 yields "... offers no TLS 1.3 (TLS 1.3 is required);
//! upgrade the endpoint or set allow_tls12 = true ...". The S3 SDK and object_store (GCS,
//! Azure) each get an adapter over [`client`]; neither brings a TLS stack of its own.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Bounds on every network wait of a remote store, independent of the caller's deadline, so a
/// hanging endpoint fails a call even with [`super::Ctx::background`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpTimeouts {
    /// TCP connect and TLS handshake.
    pub connect: Duration,
    /// One attempt of a request, from sending it to the response headers (uploads included).
    pub request: Duration,
    /// Silence while streaming a response body.
    pub read_idle: Duration,
}

impl Default for HttpTimeouts {
    fn default() -> HttpTimeouts {
        HttpTimeouts { connect: Duration::from_secs(10), request: Duration::from_secs(120), read_idle: Duration::from_secs(60) }
    }
}

pub(crate) type Client<B> = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    B,
>;

/// A pooled HTTP/1.1 client over `tls` (plain http too: [`check_endpoint`] and the adapters
/// keep that to loopback), connecting within `connect`.
pub(crate) fn client<B>(tls: &rustls::ClientConfig, connect: Duration) -> Client<B>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
{
    let mut tcp = hyper_util::client::legacy::connect::HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_connect_timeout(Some(connect));
    tcp.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls.clone()).https_or_http().enable_http1().wrap_connector(tcp);
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .build(https)
}

/// Whether `host` (as in a URI, IPv6 in brackets or not) is this machine.
pub(crate) fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h == "localhost" || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Remote endpoints speak TLS; plain HTTP only to this machine (an emulator).
pub(crate) fn check_endpoint(endpoint: &str) -> Result<(), String> {
    // Never echoed: `user:password@` would be printed with it.
    if endpoint.contains('@') {
        return Err("the endpoint URL must not hold credentials (user@ or user:password@); put keys in the repository's credential settings".into());
    }
    let uri: http::Uri = endpoint.parse().map_err(|e| format!("endpoint {endpoint:?} is not a URL: {e}"))?;
    let host = uri.host().ok_or_else(|| format!("endpoint {endpoint:?} has no host"))?;
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") => {
            if is_loopback_host(host) {
                Ok(())
            } else {
                Err(format!("endpoint {endpoint} is plain HTTP; remote endpoints must use https:// (plain HTTP is accepted only on loopback addresses)"))
            }
        }
        _ => Err(format!("endpoint {endpoint:?} must start with https://")),
    }
}

/// rustls with TLS 1.3 only (1.2 too when allowed), verifying against the system roots or
/// against `ca_file` only.
pub(crate) fn tls_config(ca_file: Option<&Path>, allow_tls12: bool) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| format!("cannot read ca_file {}: {e}", path.display()))?;
            use rustls::pki_types::pem::PemObject;
            let mut count = 0;
            for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| format!("ca_file {}: not a PEM certificate bundle: {e}", path.display()))?;
                roots.add(cert).map_err(|e| format!("ca_file {}: unusable certificate: {e}", path.display()))?;
                count += 1;
            }
            if count == 0 {
                return Err(format!("ca_file {} holds no PEM certificate", path.display()));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err("no trusted CA certificates found on this system; install ca-certificates or set ca_file".into());
            }
        }
    }
    let versions: &[&'static rustls::SupportedProtocolVersion] =
        if allow_tls12 { &[&rustls::version::TLS13, &rustls::version::TLS12] } else { &[&rustls::version::TLS13] };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| format!("TLS settings: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// A TLS refusal in words; not retried (it will not heal by itself).
#[derive(Debug)]
pub(crate) struct TlsRefused {
    pub(crate) message: String,
    source: hyper_util::client::legacy::Error,
}

impl fmt::Display for TlsRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TlsRefused {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Why a request could not be sent.
pub(crate) enum SendFailure {
    /// The TLS handshake was refused: a sentence saying what to change. Not worth retrying.
    Tls(TlsRefused),
    Timeout(String),
    Io(hyper_util::client::legacy::Error),
}

/// Sort a hyper client error into what a caller can do about it.
pub(crate) fn send_failure(e: hyper_util::client::legacy::Error, host: &str, allow_tls12: bool) -> SendFailure {
    let mut timed_out = false;
    let mut tls = None;
    walk_chain(&e, &mut |err| {
        if let Some(t) = err.downcast_ref::<rustls::Error>() {
            tls.get_or_insert_with(|| tls_message(t, host, allow_tls12));
        }
        if err.downcast_ref::<io::Error>().is_some_and(|io| io.kind() == io::ErrorKind::TimedOut) {
            timed_out = true;
        }
    });
    if let Some(message) = tls {
        return SendFailure::Tls(TlsRefused { message, source: e });
    }
    if timed_out {
        return SendFailure::Timeout(format!("connecting to {host} timed out"));
    }
    SendFailure::Io(e)
}

/// Every error of a chain, including those an `io::Error` wraps (its `source()` skips them).
pub(crate) fn walk_chain(err: &(dyn std::error::Error + 'static), visit: &mut dyn FnMut(&(dyn std::error::Error + 'static))) {
    let mut next = Some(err);
    while let Some(e) = next {
        visit(e);
        if let Some(inner) = e.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
            walk_chain(inner, visit);
        }
        next = e.source();
    }
}

fn tls_message(e: &rustls::Error, host: &str, allow_tls12: bool) -> String {
    use rustls::{AlertDescription, CertificateError, Error};
    let wanted = if allow_tls12 { "TLS 1.3 or 1.2" } else { "TLS 1.3" };
    match e {
        Error::AlertReceived(AlertDescription::ProtocolVersion) | Error::PeerIncompatible(_) if !allow_tls12 => format!(
            "TLS handshake with {host} refused: the server offers no TLS 1.3 (protocol version not accepted: {e}); \
             TLS 1.3 is required; upgrade the endpoint, or set allow_tls12 = true for this repository to accept TLS 1.2"
        ),
        Error::AlertReceived(AlertDescription::ProtocolVersion) | Error::PeerIncompatible(_) => {
            format!("TLS handshake with {host} refused: the server offers neither {wanted} ({e})")
        }
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => format!(
            "TLS certificate of {host} is not trusted (unknown issuer); if the endpoint uses a private CA, set ca_file to its PEM bundle"
        ),
        Error::InvalidCertificate(c) => format!("TLS certificate of {host} rejected: {c:?}"),
        other => format!("TLS handshake with {host} failed ({wanted} required): {other}"),
    }
}

/// The innermost message of an error chain (the outer ones are the SDK's generic words).
pub(crate) fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut last = String::new();
    walk_chain(err, &mut |e| last = e.to_string());
    last
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert!(check_endpoint("https://s3.eu-west-1.amazonaws.com").is_ok());
        assert!(check_endpoint("http://127.0.0.1:9000").is_ok());
        assert!(check_endpoint("http://[::1]:9000").is_ok());
        assert!(check_endpoint("http://localhost:9000").is_ok());
        assert!(check_endpoint("http://minio.lan:9000").unwrap_err().contains("must use https://"));
        assert!(check_endpoint("ftp://x").is_err());
        let e = check_endpoint("https://AKID:topsecret@minio.lan").unwrap_err();
        assert!(!e.contains("topsecret") && e.contains("must not hold credentials"), "{e}");
    }
}
