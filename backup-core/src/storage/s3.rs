//! A repository in an S3 bucket (AWS or an S3-compatible store), through `aws-sdk-s3`.
//!
//! **Blocking over async.** The SDK is async; the [`Storage`] trait is blocking (see the module
//! docs of [`super`]). One Tokio runtime serves every remote store of the process
//! (`storage/runtime.rs`, shared with the GCS and Azure backends). It is created on
//! first use, from a thread spawned with every signal blocked ([`crate::threads`]), so its
//! worker threads inherit a mask that keeps every signal on the caller's threads. Each request
//! runs as a task of that runtime, so what it starts (connections, DNS lookups on the blocking
//! pool) is spawned by those blocked threads, never by the caller's; the caller `block_on`s the
//! task's result from its own thread, looking at the [`Ctx`] every 50 ms: past the
//! deadline or cancelled, the task is aborted, which closes its connection. No runtime exists
//! until an S3 store is opened.
//!
//! **TLS.** The HTTPS client is ours (`storage/https.rs`: hyper + rustls with the `ring`
//! provider, shared with the GCS and Azure backends), not the SDK's
//! default, because the SDK's client cannot restrict protocol versions: a remote endpoint must
//! speak TLS 1.3 unless the repository says `allow_tls12 = true`. Certificates are always
//! verified, against the system's roots or, when `ca_file` is set, against that bundle only.
//! Plain `http://` endpoints are accepted only on loopback addresses (emulators, tests).
//! A TLS failure is not retried and says what to change: a server that only offers TLS 1.2
//! yields "... offers no TLS 1.3 (TLS 1.3 is required); upgrade the endpoint or set
//! allow_tls12 = true ...".
//!
//! **Bounded time.** Connecting, waiting for a response and waiting for each chunk of a body
//! are bounded ([`S3Timeouts`]), independently of the caller's deadline, so a hanging endpoint
//! fails a call even with [`Ctx::background`]. Transient failures (connection errors, 5xx,
//! throttling such as 503 SlowDown) are retried by the SDK's standard retry strategy:
//! [`MAX_ATTEMPTS`] attempts, exponential backoff with jitter from 200 ms to 10 s, under the
//! SDK's client-side retry budget.
//!
//! **Uploads.** A writer buffers up to one part ([`S3Location::part_size`]). An object that fits
//! is one `PutObject`; a larger one becomes a multipart upload in which one part is sent while
//! the next fills, so memory stays at two parts. Create-if-absent is `If-None-Match: *` on the
//! `PutObject` or on `CompleteMultipartUpload`, answered 412 when the key exists: the store
//! decides atomically (moto 5.2 honours both). Some older S3-compatible servers ignore the
//! header on `CompleteMultipartUpload`, which the answer does not reveal; so a large
//! create-if-absent also looks (`HeadObject`) just before completing, and there the race
//! narrows to a concurrent writer creating the key between that look and our completion. A
//! writer dropped without commit aborts its multipart upload (best effort, bounded); what a
//! killed process leaves behind, [`Storage::abort_stale_uploads`] removes.
//!
//! **Secrets.** The secret key lives in [`Secret`], whose `Debug` prints `<redacted>`; no
//! `Display`, location or error text contains it.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_s3::config::Credentials;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use aws_smithy_runtime_api::client::http::{HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use futures_util::stream::StreamExt;

use super::https::{self, check_endpoint, root_cause, walk_chain, SendFailure, TlsRefused};
use super::runtime::{block_on, runtime, wait};
use super::parts::PartBuffer;
use super::remote_io::{failure, BodyError, BodyReader, BodyStream, PageSource, Pages, RemoteFailure};
use super::{
    validate_key, validate_prefix, ByteRange, Ctx, Listing, ObjectMeta, ObjectReader, ObjectStream, ObjectWriter, PutMode,
    PutOutcome, Storage, StorageError, StorageErrorKind,
};

/// S3's smallest part (all but the last); also our default is a few of them.
/// The largest in-memory object [`Storage::put`] sends as one PutObject.
const SINGLE_PUT_MAX: usize = 64 << 20;

pub const MIN_PART_SIZE: usize = 5 << 20;
pub const DEFAULT_PART_SIZE: usize = 8 << 20;
/// Attempts per request, the first included: enough to ride out a few seconds of throttling
/// (503 SlowDown) or a restarting endpoint, few enough that a dead one fails a push in
/// well under a minute.
pub const MAX_ATTEMPTS: u32 = 6;

/// A secret string: compared and cloned, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where the S3 client's credentials come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum S3Credentials {
    /// The SDK's standard chain: environment (`AWS_ACCESS_KEY_ID`...), profile files, web
    /// identity (EKS IRSA), ECS and EC2 instance metadata.
    DefaultChain,
    /// Keys from the configuration.
    Static { access_key_id: String, secret_access_key: Secret },
    /// An access key id, and a file holding the secret key (read when the store is opened).
    SecretFile { access_key_id: String, secret_access_key_file: PathBuf },
}

/// Bounds on every network wait; see the module docs (shared with the other remote backends).
pub type S3Timeouts = super::https::HttpTimeouts;

/// A repository in a bucket, as the configuration names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    /// Keys are stored under it: empty, or ending in `/`.
    pub prefix: String,
    pub region: String,
    /// `https://host:port` of an S3-compatible store; `None` for AWS.
    pub endpoint: Option<String>,
    /// `https://endpoint/bucket/key` instead of `https://bucket.endpoint/key`.
    pub force_path_style: bool,
    pub credentials: S3Credentials,
    /// PEM bundle of the CAs to trust instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// Accept TLS 1.2 (TLS 1.3 only otherwise).
    pub allow_tls12: bool,
    pub timeouts: S3Timeouts,
    /// Bytes per multipart part, at least [`MIN_PART_SIZE`]; objects up to it are one request.
    pub part_size: usize,
    /// S3 Object Lock on every object written (the bucket must have Object Lock enabled).
    pub object_lock: Option<ObjectLock>,
}

/// S3 Object Lock for a repository: every object is written with a retention date `days` after
/// its creation, in `mode`. Until then the store refuses to delete it (compliance: nobody can;
/// governance: only a principal allowed to bypass it, which we never ask for). The bucket is
/// versioned (Object Lock requires it), so a delete here removes the object's versions one by
/// one: refused while the lock holds ([`StorageErrorKind::Locked`], which retention skips and
/// tries again at its next run), real once it has passed. The repository never rewrites an
/// object that matters in place (manifests and WAL are create-only), so versions only pile up
/// for the small objects written with overwrite (summaries, notes), each until its date.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectLock {
    pub mode: LockMode,
    pub days: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockMode {
    Governance,
    Compliance,
}

impl ObjectLock {
    fn mode(self) -> aws_sdk_s3::types::ObjectLockMode {
        match self.mode {
            LockMode::Governance => aws_sdk_s3::types::ObjectLockMode::Governance,
            LockMode::Compliance => aws_sdk_s3::types::ObjectLockMode::Compliance,
        }
    }

    fn retention_mode(self) -> aws_sdk_s3::types::ObjectLockRetentionMode {
        match self.mode {
            LockMode::Governance => aws_sdk_s3::types::ObjectLockRetentionMode::Governance,
            LockMode::Compliance => aws_sdk_s3::types::ObjectLockRetentionMode::Compliance,
        }
    }

    /// The retention date of an object written now.
    fn until(self) -> aws_sdk_s3::primitives::DateTime {
        aws_sdk_s3::primitives::DateTime::from(SystemTime::now() + Duration::from_secs(u64::from(self.days) * 86_400))
    }
}

impl S3Location {
    /// A bucket with defaults: AWS endpoint, virtual-host style, the default credential chain.
    pub fn new(bucket: &str, prefix: &str, region: &str) -> S3Location {
        S3Location {
            bucket: bucket.to_string(),
            prefix: normalize_prefix(prefix),
            region: region.to_string(),
            endpoint: None,
            force_path_style: false,
            credentials: S3Credentials::DefaultChain,
            ca_file: None,
            allow_tls12: false,
            timeouts: S3Timeouts::default(),
            part_size: DEFAULT_PART_SIZE,
            object_lock: None,
        }
    }

    /// `s3://bucket/prefix`, for messages: no endpoint credentials, no keys.
    pub fn url(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }
}

/// `a/b` and `/a/b/` both mean `a/b/`; empty stays empty.
pub fn normalize_prefix(prefix: &str) -> String {
    let p = prefix.trim_matches('/');
    if p.is_empty() {
        String::new()
    } else {
        format!("{p}/")
    }
}

#[derive(Clone)]
pub struct S3Storage {
    client: Client,
    location: S3Location,
    /// To scrub from any text we build, whatever a lower layer might have echoed.
    secret: Option<Secret>,
}

impl fmt::Debug for S3Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Storage")
            .field("location", &self.location.url())
            .field("region", &self.location.region)
            .field("endpoint", &self.location.endpoint)
            .finish_non_exhaustive()
    }
}

impl S3Storage {
    /// One PutObject of `body` at `full` (the key with the prefix), conditional for
    /// [`PutMode::IfAbsent`], locked when the repository asks for Object Lock.
    fn put_object(&self, ctx: &Ctx, key: &str, full: &str, body: Vec<u8>, mode: PutMode) -> Result<PutOutcome, StorageError> {
        let mut request = self.client.put_object().bucket(&self.location.bucket).key(full).body(ByteStream::from(body));
        if let Some(lock) = self.location.object_lock {
            request = request.object_lock_mode(lock.mode()).object_lock_retain_until_date(lock.until());
        }
        if mode == PutMode::IfAbsent {
            request = request.if_none_match("*");
        }
        match block_on(ctx, "committing", key, request.send())? {
            Ok(_) => Ok(PutOutcome::Created),
            Err(e) if mode == PutMode::IfAbsent && is_precondition(&e) => Ok(PutOutcome::AlreadyExists),
            Err(e) => Err(self.fail("committing", key, e)),
        }
    }

    /// Build the client: TLS settings, credentials, timeouts. Sends no request.
    pub fn open(location: &S3Location) -> Result<S3Storage, StorageError> {
        let url = location.url();
        let bad = |message: String| failure(StorageErrorKind::Other, "opening", &url, message);
        if location.bucket.is_empty() {
            return Err(bad("no bucket configured".into()));
        }
        if location.part_size < MIN_PART_SIZE {
            return Err(bad(format!("part size {} is below S3's minimum of {MIN_PART_SIZE} bytes", location.part_size)));
        }
        if let Some(endpoint) = &location.endpoint {
            check_endpoint(endpoint).map_err(bad)?;
        }
        let secret = match &location.credentials {
            S3Credentials::DefaultChain => None,
            S3Credentials::Static { access_key_id, secret_access_key } => Some((access_key_id.clone(), secret_access_key.clone())),
            S3Credentials::SecretFile { access_key_id, secret_access_key_file } => {
                let text = std::fs::read_to_string(secret_access_key_file).map_err(|e| {
                    StorageError::new(StorageErrorKind::Permission, "opening", &url).with_source(RemoteFailure {
                        message: format!("cannot read secret_access_key_file {}", secret_access_key_file.display()),
                        source: Some(Box::new(e)),
                    })
                })?;
                let secret = text.trim();
                if secret.is_empty() {
                    return Err(bad(format!("secret_access_key_file {} is empty", secret_access_key_file.display())));
                }
                Some((access_key_id.clone(), Secret::new(secret)))
            }
        };
        let tls = https::tls_config(location.ca_file.as_deref(), location.allow_tls12).map_err(bad)?;
        let http =
            TlsHttpClient { tls: Arc::new(tls), timeouts: location.timeouts, allow_tls12: location.allow_tls12, connectors: Arc::default() };
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(location.timeouts.connect)
            .read_timeout(location.timeouts.request)
            .operation_attempt_timeout(location.timeouts.request + location.timeouts.connect)
            .build();
        let retry = RetryConfig::standard()
            .with_max_attempts(MAX_ATTEMPTS)
            .with_initial_backoff(Duration::from_millis(200))
            .with_max_backoff(Duration::from_secs(10));
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(location.region.clone()))
            .http_client(http)
            .timeout_config(timeouts)
            .retry_config(retry);
        if let Some(endpoint) = &location.endpoint {
            loader = loader.endpoint_url(endpoint.trim_end_matches('/'));
        }
        if let Some((id, secret)) = &secret {
            loader = loader.credentials_provider(Credentials::new(id, secret.expose(), None, None, "pg_backup_ext configuration"));
        }
        // Reads the environment and profile files only; bounded all the same.
        let sdk = block_on(&Ctx::background().with_timeout(Duration::from_secs(30)), "opening", &url, loader.load())?;
        // AWS_ENDPOINT_URL or a profile may name an endpoint too: the same rule applies.
        if let Some(endpoint) = sdk.endpoint_url() {
            check_endpoint(endpoint).map_err(bad)?;
        }
        let config = aws_sdk_s3::config::Builder::from(&sdk).force_path_style(location.force_path_style).build();
        Ok(S3Storage { client: Client::from_conf(config), location: location.clone(), secret: secret.map(|(_, s)| s) })
    }

    pub fn s3_location(&self) -> &S3Location {
        &self.location
    }

    /// Create the bucket (tests and setup; a repository never creates its bucket by itself).
    pub fn create_bucket(&self, ctx: &Ctx) -> Result<(), StorageError> {
        let bucket = &self.location.bucket;
        let mut request = self.client.create_bucket().bucket(bucket);
        if self.location.object_lock.is_some() {
            request = request.object_lock_enabled_for_bucket(true);
        }
        // us-east-1 is the one region that must not be named.
        if self.location.region != "us-east-1" {
            let constraint = aws_sdk_s3::types::BucketLocationConstraint::from(self.location.region.as_str());
            request = request.create_bucket_configuration(
                aws_sdk_s3::types::CreateBucketConfiguration::builder().location_constraint(constraint).build(),
            );
        }
        let r = block_on(ctx, "creating bucket", bucket, request.send())?;
        match r {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().and_then(|s| s.code()) == Some("BucketAlreadyOwnedByYou") => Ok(()),
            Err(e) => Err(self.fail("creating bucket", bucket, e)),
        }
    }

    fn full_key(&self, key: &str) -> Result<String, StorageError> {
        validate_key(key)?;
        Ok(format!("{}{key}", self.location.prefix))
    }

    fn full_prefix(&self, prefix: &str) -> Result<String, StorageError> {
        validate_prefix(prefix)?;
        Ok(format!("{}{prefix}", self.location.prefix))
    }

    fn meta(&self, full_key: &str, size: Option<i64>, modified: Option<&aws_sdk_s3::primitives::DateTime>) -> Option<ObjectMeta> {
        let key = full_key.strip_prefix(&self.location.prefix)?;
        Some(ObjectMeta {
            key: key.to_string(),
            size: size.unwrap_or(0).max(0) as u64,
            modified: modified.and_then(|d| SystemTime::try_from(*d).ok()),
        })
    }

    fn scrub(&self, text: String) -> String {
        match &self.secret {
            Some(s) if !s.expose().is_empty() && text.contains(s.expose()) => text.replace(s.expose(), "<redacted>"),
            _ => text,
        }
    }

    /// An SDK error as a [`StorageError`] of the kind a caller can act on, with a sentence.
    /// Delete every version of `full` (and its delete markers): under Object Lock a plain
    /// delete would only hide the object behind a marker. A version still locked makes the
    /// store answer AccessDenied: reported as [`StorageErrorKind::Locked`].
    fn delete_versions(&self, ctx: &Ctx, key: &str, full: &str) -> Result<(), StorageError> {
        let request = self.client.list_object_versions().bucket(&self.location.bucket).prefix(full);
        let listed = block_on(ctx, "deleting", key, request.send())?.map_err(|e| self.fail("deleting", key, e))?;
        let versions = listed.versions().iter().filter(|v| v.key() == Some(full)).filter_map(|v| v.version_id());
        let markers = listed.delete_markers().iter().filter(|m| m.key() == Some(full)).filter_map(|m| m.version_id());
        for version in versions.chain(markers).map(str::to_string).collect::<Vec<_>>() {
            let request = self.client.delete_object().bucket(&self.location.bucket).key(full).version_id(&version);
            match block_on(ctx, "deleting", key, request.send())? {
                Ok(_) => {}
                Err(e) if matches!(service_code(&e), (Some("NoSuchKey" | "NoSuchVersion"), _)) => {}
                Err(e) if matches!(service_code(&e), (Some("AccessDenied"), _) | (_, Some(403))) => {
                    return Err(self.fail("deleting", key, e).with_kind(StorageErrorKind::Locked));
                }
                Err(e) => return Err(self.fail("deleting", key, e)),
            }
        }
        Ok(())
    }

    fn fail<E>(&self, op: &'static str, key: &str, err: SdkError<E, HttpResponse>) -> StorageError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let (kind, hint) = classify(&err, &self.location);
        let detail = match &err {
            SdkError::ServiceError(s) => {
                let status = s.raw().status().as_u16();
                match (s.err().code(), s.err().message()) {
                    (Some(code), Some(msg)) => format!("{code} (HTTP {status}): {msg}"),
                    (Some(code), None) => format!("{code} (HTTP {status})"),
                    _ => format!("HTTP {status}"),
                }
            }
            other => tls_refusal(other).unwrap_or_else(|| root_cause(other)),
        };
        let message = match hint {
            Some(h) => format!("{}: {h} [{detail}]", self.location.url()),
            None => format!("{}: {detail}", self.location.url()),
        };
        StorageError::new(kind, op, key).with_source(RemoteFailure { message: self.scrub(message), source: Some(Box::new(err)) })
    }
}

/// The SDK's HTTP client: hyper over our rustls configuration.
///
/// The SDK asks for a connector on every attempt of every request. Each connector owns a
/// hyper client, and with it a connection pool: a new one per request meant a new TCP (and TLS)
/// connection per request (a restore of a thousand files made as many connects). So connectors
/// are kept, one per distinct setting, as the SDK's own client does, and every request of the
/// store shares one pool.
#[derive(Clone, Debug)]
struct TlsHttpClient {
    tls: Arc<rustls::ClientConfig>,
    timeouts: S3Timeouts,
    allow_tls12: bool,
    connectors: Arc<Mutex<HashMap<(Duration, Duration), SharedHttpConnector>>>,
}

type HyperClient = https::Client<SdkBody>;

#[derive(Clone, Debug)]
struct TlsConnector {
    client: HyperClient,
    response_timeout: Duration,
    allow_tls12: bool,
}

impl HttpClient for TlsHttpClient {
    fn http_connector(&self, settings: &HttpConnectorSettings, _components: &RuntimeComponents) -> SharedHttpConnector {
        // The SDK's own callers (instance metadata, STS) ask for shorter timeouts; honour them.
        let connect = settings.connect_timeout().unwrap_or(self.timeouts.connect);
        let response_timeout = settings.read_timeout().unwrap_or(self.timeouts.request);
        let mut connectors = self.connectors.lock().unwrap_or_else(|e| e.into_inner());
        connectors
            .entry((connect, response_timeout))
            .or_insert_with(|| {
                let client = https::client(&self.tls, connect);
                SharedHttpConnector::new(TlsConnector { client, response_timeout, allow_tls12: self.allow_tls12 })
            })
            .clone()
    }
}

impl HttpConnector for TlsConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let client = self.client.clone();
        let timeout = self.response_timeout;
        let allow_tls12 = self.allow_tls12;
        HttpConnectorFuture::new(async move {
            let request = request.try_into_http1x().map_err(|e| ConnectorError::user(e.into()))?;
            let host = request.uri().authority().map(|a| a.to_string()).unwrap_or_default();
            let response = match tokio::time::timeout(timeout, client.request(request)).await {
                Err(_) => return Err(ConnectorError::timeout(format!("no response from {host} within {timeout:?}").into())),
                Ok(Err(e)) => {
                    return Err(match https::send_failure(e, &host, allow_tls12) {
                        SendFailure::Tls(refused) => ConnectorError::other(Box::new(refused), None),
                        SendFailure::Timeout(message) => ConnectorError::timeout(message.into()),
                        SendFailure::Io(e) => ConnectorError::io(e.into()),
                    })
                }
                Ok(Ok(r)) => r,
            };
            HttpResponse::try_from(response.map(SdkBody::from_body_1_x)).map_err(|e| ConnectorError::other(e.into(), None))
        })
    }
}

/// The TLS sentence of a dispatch failure, if that is what it is.
fn tls_refusal<E: std::error::Error + 'static>(err: &SdkError<E, HttpResponse>) -> Option<String> {
    let mut found = None;
    walk_chain(err, &mut |e| {
        if let Some(t) = e.downcast_ref::<TlsRefused>() {
            found.get_or_insert_with(|| t.message.clone());
        }
    });
    found
}

/// The kind of an SDK error, and a hint when we know what the user should do.
fn classify<E: ProvideErrorMetadata + std::error::Error + 'static>(
    err: &SdkError<E, HttpResponse>,
    location: &S3Location,
) -> (StorageErrorKind, Option<String>) {
    use StorageErrorKind as K;
    match err {
        SdkError::TimeoutError(_) => (K::Timeout, None),
        SdkError::DispatchFailure(d) if d.is_timeout() => (K::Timeout, None),
        SdkError::DispatchFailure(d) if d.is_io() => (K::Transient, None),
        SdkError::DispatchFailure(_) if tls_refusal(err).is_some() => (K::Other, None),
        SdkError::ResponseError(_) => (K::Transient, None),
        SdkError::ServiceError(s) => {
            let status = s.raw().status().as_u16();
            match (s.err().code().unwrap_or(""), status) {
                ("NoSuchBucket", _) => (
                    K::NotFound,
                    Some(format!(
                        "bucket {:?} does not exist{}; create it (or fix the bucket name)",
                        location.bucket,
                        location.endpoint.as_deref().map(|e| format!(" at {e}")).unwrap_or_else(|| format!(" in region {}", location.region))
                    )),
                ),
                ("NoSuchKey" | "NotFound" | "NoSuchUpload", _) | (_, 404) => (K::NotFound, None),
                ("PreconditionFailed", _) | (_, 412) => (K::Precondition, None),
                ("InvalidAccessKeyId" | "SignatureDoesNotMatch" | "ExpiredToken" | "InvalidToken" | "TokenRefreshRequired", _) => {
                    (K::Unauthenticated, Some("the store refuses our credentials; check access_key_id / secret_access_key or the credential chain".into()))
                }
                ("AccessDenied" | "AllAccessDisabled" | "AccountProblem", _) | (_, 403) => (
                    K::Permission,
                    Some(format!(
                        "the credentials are accepted but not allowed this; grant them s3:ListBucket, s3:GetObject, s3:PutObject and s3:DeleteObject on bucket {:?}",
                        location.bucket
                    )),
                ),
                ("SlowDown" | "Throttling" | "ThrottlingException" | "RequestTimeout" | "InternalError" | "ServiceUnavailable", _)
                | ("ConditionalRequestConflict" | "OperationAborted", _)
                | (_, 429 | 500..=599) => (K::Transient, None),
                _ => (K::Other, None),
            }
        }
        _ => {
            let text = DisplayErrorContext(err).to_string();
            if text.contains("credentials") || text.contains("identity") {
                (K::Unauthenticated, Some("no usable credentials: set access_key_id and secret_access_key, or provide them through the environment, a profile, web identity or instance metadata".into()))
            } else {
                (K::Other, None)
            }
        }
    }
}

fn service_code<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> (Option<&str>, Option<u16>) {
    match err {
        SdkError::ServiceError(s) => (s.err().code(), Some(s.raw().status().as_u16())),
        _ => (None, None),
    }
}

fn is_precondition<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> bool {
    matches!(service_code(err), (Some("PreconditionFailed"), _) | (_, Some(412)))
}

impl Storage for S3Storage {
    fn location(&self) -> String {
        self.location.url()
    }

    /// Data already in memory goes up in one request (a WAL segment, 16 MB, would otherwise
    /// be a multipart upload: four requests and more); only what is larger than that streams
    /// through the writer's parts.
    fn put(&self, ctx: &Ctx, key: &str, data: &[u8], mode: PutMode) -> Result<PutOutcome, StorageError> {
        if data.len() > SINGLE_PUT_MAX {
            let mut w = self.writer(ctx, key, mode)?;
            w.write_all(data).map_err(|e| StorageError::from_stream("writing", key, e))?;
            return w.commit();
        }
        let full = self.full_key(key)?;
        ctx.check("writing", key)?;
        self.put_object(ctx, key, &full, data.to_vec(), mode)
    }

    fn writer(&self, ctx: &Ctx, key: &str, mode: PutMode) -> Result<Box<dyn ObjectWriter + '_>, StorageError> {
        let full = self.full_key(key)?;
        ctx.check("writing", key)?;
        Ok(Box::new(S3Writer {
            store: self,
            ctx: ctx.clone(),
            key: key.to_string(),
            full,
            mode,
            buf: PartBuffer::new(self.location.part_size),
            upload: None,
        }))
    }

    fn get_range(&self, ctx: &Ctx, key: &str, range: ByteRange) -> Result<ObjectReader<'_>, StorageError> {
        let full = self.full_key(key)?;
        ctx.check("reading", key)?;
        let header = match range {
            ByteRange::Bounded(r) if r.start >= r.end => None,
            ByteRange::Suffix(0) => None,
            ByteRange::Bounded(r) if r.start == 0 && r.end == u64::MAX => Some(None),
            ByteRange::Bounded(r) if r.end == u64::MAX => Some(Some(format!("bytes={}-", r.start))),
            ByteRange::Bounded(r) => Some(Some(format!("bytes={}-{}", r.start, r.end - 1))),
            ByteRange::Suffix(n) => Some(Some(format!("bytes=-{n}"))),
        };
        let Some(header) = header else {
            // Nothing to read, but a missing object is still an error.
            return match self.head(ctx, key)? {
                Some(_) => Ok(Box::new(io::empty())),
                None => Err(StorageError::not_found("reading", key)),
            };
        };
        let request = self.client.get_object().bucket(&self.location.bucket).key(&full).set_range(header);
        match block_on(ctx, "reading", key, request.send())? {
            Ok(out) => Ok(Box::new(BodyReader::new(ctx, key, body_stream(out.body), self.location.timeouts.read_idle))),
            // A range starting at or past the end: no bytes, as from a file.
            Err(e) if matches!(service_code(&e), (Some("InvalidRange"), _) | (_, Some(416))) => Ok(Box::new(io::empty())),
            Err(e) => Err(self.fail("reading", key, e)),
        }
    }

    fn head(&self, ctx: &Ctx, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        let full = self.full_key(key)?;
        let request = self.client.head_object().bucket(&self.location.bucket).key(&full);
        match block_on(ctx, "inspecting", key, request.send())? {
            Ok(out) => Ok(self.meta(&full, out.content_length(), out.last_modified())),
            // HEAD has no body: a 404 cannot tell a missing key from a missing bucket.
            Err(e) if matches!(service_code(&e), (_, Some(404))) || e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
            Err(e) => Err(self.fail("inspecting", key, e)),
        }
    }

    fn list(&self, ctx: &Ctx, prefix: &str) -> Result<ObjectStream<'_>, StorageError> {
        let full = self.full_prefix(prefix)?;
        ctx.check("listing", prefix)?;
        let pages = ListPages { store: self, ctx: ctx.clone(), prefix: prefix.to_string(), full, token: None, exhausted: false };
        Ok(Box::new(Pages::start(pages)?))
    }

    fn list_with_delimiter(&self, ctx: &Ctx, prefix: &str) -> Result<Listing, StorageError> {
        let full = self.full_prefix(prefix)?;
        let mut listing = Listing::default();
        let mut token = None;
        loop {
            let request = self
                .client
                .list_objects_v2()
                .bucket(&self.location.bucket)
                .prefix(&full)
                .delimiter("/")
                .set_continuation_token(token.take());
            let out = block_on(ctx, "listing", prefix, request.send())?.map_err(|e| self.fail("listing", prefix, e))?;
            for p in out.common_prefixes() {
                if let Some(p) = p.prefix().and_then(|p| p.strip_prefix(&self.location.prefix)) {
                    listing.prefixes.push(p.to_string());
                }
            }
            for o in out.contents() {
                if let Some(m) = o.key().and_then(|k| self.meta(k, o.size(), o.last_modified())) {
                    listing.objects.push(m);
                }
            }
            token = out.next_continuation_token().map(str::to_string);
            if !out.is_truncated().unwrap_or(false) || token.is_none() {
                return Ok(listing);
            }
        }
    }

    fn delete(&self, ctx: &Ctx, key: &str) -> Result<(), StorageError> {
        let full = self.full_key(key)?;
        if self.location.object_lock.is_some() {
            return self.delete_versions(ctx, key, &full);
        }
        let request = self.client.delete_object().bucket(&self.location.bucket).key(&full);
        match block_on(ctx, "deleting", key, request.send())? {
            Ok(_) => Ok(()),
            Err(e) if matches!(service_code(&e), (Some("NoSuchKey"), _)) => Ok(()),
            Err(e) => Err(self.fail("deleting", key, e)),
        }
    }

    fn abort_stale_uploads(&self, ctx: &Ctx, prefix: &str, older_than: Duration) -> Result<u64, StorageError> {
        let full = self.full_prefix(prefix)?;
        let cutoff = SystemTime::now().checked_sub(older_than).unwrap_or(SystemTime::UNIX_EPOCH);
        let op = "aborting uploads under";
        let (mut key_marker, mut id_marker) = (None, None);
        let mut aborted = 0;
        loop {
            let request = self
                .client
                .list_multipart_uploads()
                .bucket(&self.location.bucket)
                .prefix(&full)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take());
            let out = block_on(ctx, op, prefix, request.send())?.map_err(|e| self.fail(op, prefix, e))?;
            for u in out.uploads() {
                let (Some(key), Some(id)) = (u.key(), u.upload_id()) else { continue };
                let started = u.initiated().and_then(|d| SystemTime::try_from(*d).ok()).unwrap_or(SystemTime::UNIX_EPOCH);
                if started > cutoff {
                    continue;
                }
                let abort = self.client.abort_multipart_upload().bucket(&self.location.bucket).key(key).upload_id(id);
                match block_on(ctx, op, prefix, abort.send())? {
                    Ok(_) => aborted += 1,
                    // Completed or aborted by someone else meanwhile.
                    Err(e) if matches!(service_code(&e), (Some("NoSuchUpload"), _) | (_, Some(404))) => {}
                    Err(e) => return Err(self.fail(op, key.strip_prefix(&self.location.prefix).unwrap_or(key), e)),
                }
            }
            key_marker = out.next_key_marker().map(str::to_string);
            id_marker = out.next_upload_id_marker().map(str::to_string);
            if !out.is_truncated().unwrap_or(false) || key_marker.is_none() {
                return Ok(aborted);
            }
        }
    }
}

/// `ListObjectsV2`, page by page.
struct ListPages<'a> {
    store: &'a S3Storage,
    ctx: Ctx,
    prefix: String,
    full: String,
    token: Option<String>,
    exhausted: bool,
}

impl PageSource for ListPages<'_> {
    fn next_page(&mut self) -> Result<Option<Vec<ObjectMeta>>, StorageError> {
        if self.exhausted {
            return Ok(None);
        }
        let s = self.store;
        let request = s.client.list_objects_v2().bucket(&s.location.bucket).prefix(&self.full).set_continuation_token(self.token.take());
        let out = block_on(&self.ctx, "listing", &self.prefix, request.send())?.map_err(|e| s.fail("listing", &self.prefix, e))?;
        let page = out.contents().iter().filter_map(|o| o.key().and_then(|k| s.meta(k, o.size(), o.last_modified()))).collect();
        self.token = out.next_continuation_token().map(str::to_string);
        self.exhausted = !out.is_truncated().unwrap_or(false) || self.token.is_none();
        Ok(Some(page))
    }
}

/// The SDK's body as the chunk stream [`BodyReader`] reads.
fn body_stream(body: ByteStream) -> BodyStream {
    futures_util::stream::unfold(body, |mut body| async move {
        match body.try_next().await {
            Ok(Some(chunk)) => Some((Ok(chunk), body)),
            Ok(None) => None,
            Err(e) => Some((Err(Box::new(e) as BodyError), body)),
        }
    })
    .boxed()
}

type PartResult = Result<CompletedPart, StorageError>;

struct Multipart {
    upload_id: String,
    parts: Vec<CompletedPart>,
    /// The part being sent while the next one fills.
    in_flight: Option<tokio::task::JoinHandle<PartResult>>,
}

struct S3Writer<'a> {
    store: &'a S3Storage,
    ctx: Ctx,
    key: String,
    full: String,
    mode: PutMode,
    buf: PartBuffer,
    upload: Option<Multipart>,
}

impl S3Writer<'_> {
    /// Wait for the part in flight, if any.
    fn settle(&mut self) -> Result<(), StorageError> {
        let Some(up) = self.upload.as_mut() else { return Ok(()) };
        if let Some(handle) = up.in_flight.as_mut() {
            let joined = wait(&self.ctx, "writing", &self.key, handle)?;
            up.in_flight = None;
            let part = joined.map_err(|e| StorageError::new(StorageErrorKind::Other, "writing", &self.key).with_source(e))??;
            up.parts.push(part);
        }
        Ok(())
    }

    /// Send the buffer as the next part (starting the upload first if need be).
    fn ship_part(&mut self) -> Result<(), StorageError> {
        let s = self.store;
        if self.upload.is_none() {
            let mut request = s.client.create_multipart_upload().bucket(&s.location.bucket).key(&self.full);
            if let Some(lock) = s.location.object_lock {
                request = request.object_lock_mode(lock.mode()).object_lock_retain_until_date(lock.until());
            }
            let out = block_on(&self.ctx, "writing", &self.key, request.send())?.map_err(|e| s.fail("writing", &self.key, e))?;
            let upload_id = out.upload_id().ok_or_else(|| {
                failure(StorageErrorKind::Other, "writing", &self.key, "CreateMultipartUpload returned no upload id".into())
            })?;
            self.upload = Some(Multipart { upload_id: upload_id.to_string(), parts: Vec::new(), in_flight: None });
        }
        self.settle()?;
        let up = self.upload.as_mut().expect("started above");
        let number = up.parts.len() as i32 + 1;
        let body = self.buf.take_part();
        let request = s
            .client
            .upload_part()
            .bucket(&s.location.bucket)
            .key(&self.full)
            .upload_id(&up.upload_id)
            .part_number(number)
            .body(ByteStream::from(body));
        // The task cannot borrow the store: it gets a handle of its own (the client is shared).
        let (key, store) = (self.key.clone(), s.clone());
        up.in_flight = Some(runtime()?.spawn(async move {
            match request.send().await {
                Ok(out) => Ok(CompletedPart::builder().part_number(number).set_e_tag(out.e_tag().map(str::to_string)).build()),
                Err(e) => Err(store.fail("writing", &key, e)),
            }
        }));
        Ok(())
    }

    fn put_whole(&mut self) -> Result<PutOutcome, StorageError> {
        self.store.put_object(&self.ctx, &self.key, &self.full, self.buf.take_rest(), self.mode)
    }

    fn complete(&mut self) -> Result<PutOutcome, StorageError> {
        let s = self.store;
        if !self.buf.is_empty() {
            self.ship_part()?;
        }
        self.settle()?;
        // The fallback for stores that ignore If-None-Match on completion (see the module docs);
        // the upload stays open and dropping the writer aborts it.
        if self.mode == PutMode::IfAbsent && s.head(&self.ctx, &self.key)?.is_some() {
            return Ok(PutOutcome::AlreadyExists);
        }
        let up = self.upload.as_ref().expect("multipart upload");
        let parts = CompletedMultipartUpload::builder().set_parts(Some(up.parts.clone())).build();
        let mut request = s
            .client
            .complete_multipart_upload()
            .bucket(&s.location.bucket)
            .key(&self.full)
            .upload_id(&up.upload_id)
            .multipart_upload(parts);
        if self.mode == PutMode::IfAbsent {
            request = request.if_none_match("*");
        }
        match block_on(&self.ctx, "committing", &self.key, request.send())? {
            Ok(done) => {
                self.upload = None;
                if let Some(lock) = s.location.object_lock {
                    // The lock asked for at CreateMultipartUpload, set again on the completed
                    // version: some S3-compatible stores (moto among them) drop it on completion.
                    let retention = aws_sdk_s3::types::ObjectLockRetention::builder().mode(lock.retention_mode()).retain_until_date(lock.until()).build();
                    let request = s
                        .client
                        .put_object_retention()
                        .bucket(&s.location.bucket)
                        .key(&self.full)
                        .set_version_id(done.version_id().map(str::to_string))
                        .retention(retention);
                    block_on(&self.ctx, "locking", &self.key, request.send())?.map_err(|e| s.fail("locking", &self.key, e))?;
                }
                Ok(PutOutcome::Created)
            }
            // The upload is still open: dropping the writer aborts it.
            Err(e) if self.mode == PutMode::IfAbsent && is_precondition(&e) => Ok(PutOutcome::AlreadyExists),
            Err(e) => Err(s.fail("committing", &self.key, e)),
        }
    }
}

impl Write for S3Writer<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.ctx.check_io("writing", &self.key)?;
        let (n, full) = self.buf.fill(data);
        if full {
            self.ship_part().map_err(io::Error::other)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ObjectWriter for S3Writer<'_> {
    fn commit(mut self: Box<Self>) -> Result<PutOutcome, StorageError> {
        self.ctx.check("committing", &self.key)?;
        if self.upload.is_none() {
            self.put_whole()
        } else {
            self.complete()
        }
    }
}

impl Drop for S3Writer<'_> {
    fn drop(&mut self) {
        let Some(up) = self.upload.take() else { return };
        if let Some(handle) = up.in_flight {
            handle.abort();
        }
        // Best effort and bounded, even when the writer's own Ctx is cancelled; a failure
        // leaves the upload to abort_stale_uploads.
        let s = self.store;
        let abort = s.client.abort_multipart_upload().bucket(&s.location.bucket).key(&self.full).upload_id(&up.upload_id);
        let _ = block_on(&Ctx::background().with_timeout(Duration::from_secs(10)), "aborting upload of", &self.key, abort.send());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_and_secrets() {
        assert_eq!(normalize_prefix("/a/b/"), "a/b/");
        assert_eq!(normalize_prefix("a"), "a/");
        assert_eq!(normalize_prefix(""), "");
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "<redacted>");
    }

    /// Requests share the store's pool: against a server that keeps connections alive, a
    /// series of reads is one connection (it was one per request when every request got a
    /// client of its own). moto cannot show it: it closes every connection after one response.
    #[test]
    fn requests_reuse_one_connection() {
        use std::io::BufRead;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                counter.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    // Any request: headers only (GETs), answered with five bytes, kept alive.
                    let mut reader = io::BufReader::new(stream.try_clone().unwrap());
                    let mut writer = stream;
                    let mut line = String::new();
                    loop {
                        loop {
                            line.clear();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            if line == "\r\n" {
                                break;
                            }
                        }
                        let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: application/octet-stream\r\n\r\nhello";
                        if writer.write_all(reply).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let mut location = S3Location::new("bucket", "p", "us-east-1");
        location.endpoint = Some(format!("http://127.0.0.1:{port}"));
        location.force_path_style = true;
        location.credentials = S3Credentials::Static { access_key_id: "x".into(), secret_access_key: Secret::new("y") };
        let store = S3Storage::open(&location).unwrap();
        let ctx = Ctx::background().with_timeout(Duration::from_secs(30));
        for i in 0..8 {
            let range = ByteRange::Bounded(i..i + 5);
            assert_eq!(store.get_range_bytes(&ctx, "k", range).unwrap(), b"hello");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "eight reads, one after another, should share one connection");
    }
}
