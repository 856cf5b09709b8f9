//! Repositories in Google Cloud Storage and Azure Blob Storage, through the `object_store` crate.
//!
//! **Why object_store.** One well-kept crate (Apache Arrow's) covers both stores behind one
//! trait, with what a backup tool needs already built and tested against the real services:
//! retries with backoff, multipart uploads (GCS XML multipart, Azure block lists), conditional
//! create (`PutMode::Create`: `x-goog-if-generation-match: 0` on GCS, `If-None-Match: *` on
//! Azure), ranged reads, paginated listing by string prefix and delimiter, and the credential
//! chains (service-account keys, application default credentials, instance metadata; shared
//! keys, managed identity, workload identity). The alternative, the two official SDKs, would
//! bring two more HTTP stacks, two async styles and two error models to wrap. object_store
//! 0.14 with only its `gcp-base`/`azure-base`/`ring` features brings no HTTP client and no
//! TLS stack of its own (no reqwest, no aws-lc): it must be handed one, and that is ours.
//!
//! **TLS and timeouts.** [`PolicyConnector`] is object_store's `HttpConnector` over the same
//! hyper + rustls client as the S3 backend ([`super::https`]): TLS 1.3 only unless
//! `allow_tls12`, verified certificates against the system's roots or `ca_file`, and plain
//! HTTP only to loopback (plus the link-local instance-metadata address the default credential
//! chains use). Every request, token requests included, goes through it. Connecting, waiting
//! for response headers and each silence within a body are bounded ([`HttpTimeouts`]);
//! object_store retries transient failures ([`MAX_ATTEMPTS`] attempts, backoff 200 ms to 10 s,
//! all retries of one request within [`RETRY_BUDGET`]).
//!
//! **Blocking over async.** As for S3: every call is a task of the process's one runtime
//! ([`super::runtime`]), waited for from the caller's thread while watching its [`Ctx`].
//!
//! **Uploads.** A writer buffers up to one part ([`CloudLocation::part_size`]). An object that
//! fits is one `put` (with `PutMode::Create` for [`PutMode::IfAbsent`], which the store decides
//! atomically). A larger one is a multipart upload, one part in flight while the next fills.
//! object_store has no conditional mode for completing a multipart upload, so a large
//! create-if-absent looks (`head`) just before completing: the race narrows to a concurrent
//! writer creating the key between that look and our completion (the same fallback the S3
//! backend keeps for stores that ignore `If-None-Match` on completion).
//!
//! **Stale uploads.** object_store cannot list unfinished multipart uploads, so
//! [`Storage::abort_stale_uploads`] returns `Ok(0)` here. A writer dropped before commit aborts
//! its upload; what a killed process leaves behind is cleaned by the store itself: Azure
//! discards uncommitted blocks after 7 days, and on GCS a bucket lifecycle rule
//! (`AbortIncompleteMultipartUpload`) does it.
//!
//! **Secrets.** Keys live in [`Secret`]; no location, `Debug` or error text holds them.

use std::fmt;
use std::future::Future;
use std::io::{self, Write};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::stream::StreamExt;
use hyper::body::{Body, Frame, SizeHint};
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpRequestBody, HttpResponse, HttpResponseBody, HttpService,
};
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, ClientOptions, GetOptions, GetRange, MultipartUpload, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};

use super::https::{self, check_endpoint, HttpTimeouts, SendFailure};
use super::runtime::{block_on, runtime, wait};
use super::s3::{normalize_prefix, Secret};
use super::parts::PartBuffer;
use super::remote_io::{failure, BodyError, BodyReader, PageSource, Pages, RemoteFailure};
use super::{
    validate_key, validate_prefix, ByteRange, Ctx, Listing, ObjectMeta, ObjectReader, ObjectStream, ObjectWriter, PutMode, PutOutcome,
    Storage, StorageError, StorageErrorKind,
};

/// GCS's smallest multipart part (all but the last); Azure blocks may be smaller.
pub const MIN_PART_SIZE: usize = 5 << 20;
pub const DEFAULT_PART_SIZE: usize = 8 << 20;
/// Attempts per request, the first included.
pub const MAX_ATTEMPTS: usize = 4;
/// All attempts of one request, backoff included, end within this.
pub const RETRY_BUDGET: Duration = Duration::from_secs(180);

/// Where a GCS client's credentials come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GcsCredentials {
    /// Application default credentials (`GOOGLE_APPLICATION_CREDENTIALS`, gcloud's file), then
    /// the instance metadata server (GCE, GKE workload identity).
    DefaultChain,
    /// A service account's JSON key file.
    ServiceAccountFile(PathBuf),
}

/// Where an Azure client's credentials come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AzureCredentials {
    /// object_store's chain: `AZURE_*` environment (client secret, workload identity, SAS),
    /// then managed identity.
    DefaultChain,
    /// The storage account's shared key.
    AccessKey(Secret),
    /// A file holding the shared key (read when the store is opened).
    AccessKeyFile(PathBuf),
}

/// What both stores share: prefix, endpoint, TLS, timeouts, part size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloudLocation {
    /// Keys are stored under it: empty, or ending in `/`.
    pub prefix: String,
    /// Base URL of an emulator or private endpoint; `None` for the public service.
    pub endpoint: Option<String>,
    /// PEM bundle of the CAs to trust instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// Accept TLS 1.2 (TLS 1.3 only otherwise).
    pub allow_tls12: bool,
    pub timeouts: HttpTimeouts,
    /// Bytes per multipart part, at least [`MIN_PART_SIZE`]; objects up to it are one request.
    pub part_size: usize,
}

impl CloudLocation {
    fn new(prefix: &str) -> CloudLocation {
        CloudLocation {
            prefix: normalize_prefix(prefix),
            endpoint: None,
            ca_file: None,
            allow_tls12: false,
            timeouts: HttpTimeouts::default(),
            part_size: DEFAULT_PART_SIZE,
        }
    }
}

/// A repository in a GCS bucket, as the configuration names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcsLocation {
    pub bucket: String,
    pub credentials: GcsCredentials,
    pub common: CloudLocation,
}

impl GcsLocation {
    pub fn new(bucket: &str, prefix: &str) -> GcsLocation {
        GcsLocation { bucket: bucket.to_string(), credentials: GcsCredentials::DefaultChain, common: CloudLocation::new(prefix) }
    }

    /// `gs://bucket/prefix`, for messages.
    pub fn url(&self) -> String {
        format!("gs://{}/{}", self.bucket, self.common.prefix)
    }
}

/// A repository in an Azure Blob container, as the configuration names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AzureLocation {
    pub account: String,
    pub container: String,
    pub credentials: AzureCredentials,
    pub common: CloudLocation,
}

impl AzureLocation {
    pub fn new(account: &str, container: &str, prefix: &str) -> AzureLocation {
        AzureLocation {
            account: account.to_string(),
            container: container.to_string(),
            credentials: AzureCredentials::DefaultChain,
            common: CloudLocation::new(prefix),
        }
    }

    /// `azure://account/container/prefix`, for messages.
    pub fn url(&self) -> String {
        format!("azure://{}/{}/{}", self.account, self.container, self.common.prefix)
    }
}

/// What object_store offers that we use: the store, and listing by string prefix, page by page.
trait Backend: ObjectStore + PaginatedListStore {}
impl<T: ObjectStore + PaginatedListStore> Backend for T {}

/// A GCS bucket or an Azure container (under a prefix) as a [`Storage`].
#[derive(Clone)]
pub struct CloudStorage {
    store: Arc<dyn Backend>,
    url: String,
    /// "bucket" or "container", and its name: for "does not exist" messages.
    holder: (&'static str, String),
    endpoint: Option<String>,
    common: CloudLocation,
    /// To scrub from any text we build, whatever a lower layer might have echoed.
    secret: Option<Secret>,
}

impl fmt::Debug for CloudStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloudStorage").field("location", &self.url).field("endpoint", &self.endpoint).finish_non_exhaustive()
    }
}

fn retry_config(timeouts: &HttpTimeouts) -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig { init_backoff: Duration::from_millis(200), max_backoff: Duration::from_secs(10), base: 2.0 },
        max_retries: MAX_ATTEMPTS - 1,
        retry_timeout: RETRY_BUDGET.min((timeouts.connect + timeouts.request) * MAX_ATTEMPTS as u32 + Duration::from_secs(20)),
    }
}

impl CloudStorage {
    /// A GCS bucket: TLS settings, credentials, timeouts. Sends no request.
    pub fn open_gcs(location: &GcsLocation) -> Result<CloudStorage, StorageError> {
        use object_store::gcp::GoogleCloudStorageBuilder;
        let url = location.url();
        let bad = |message: String| failure(StorageErrorKind::Other, "opening", &url, message);
        if location.bucket.is_empty() {
            return Err(bad("no bucket configured".into()));
        }
        let connector = PolicyConnector::new(&location.common).map_err(bad)?;
        let mut builder = match &location.credentials {
            GcsCredentials::DefaultChain => GoogleCloudStorageBuilder::from_env(),
            GcsCredentials::ServiceAccountFile(path) => {
                // object_store's own message for an unreadable file does not say which setting.
                std::fs::metadata(path).map_err(|e| {
                    StorageError::new(StorageErrorKind::Permission, "opening", &url).with_source(RemoteFailure {
                        message: format!("cannot read service_account_file {}", path.display()),
                        source: Some(Box::new(e)),
                    })
                })?;
                GoogleCloudStorageBuilder::new().with_service_account_path(path.to_string_lossy())
            }
        };
        builder = builder
            .with_bucket_name(&location.bucket)
            .with_http_connector(connector)
            .with_retry(retry_config(&location.common.timeouts))
            // Our connector enforces the plain-HTTP rule (loopback only), for every request.
            .with_client_options(ClientOptions::new().with_allow_http(true));
        if let Some(endpoint) = &location.common.endpoint {
            builder = builder.with_base_url(endpoint.trim_end_matches('/'));
        }
        let store = builder.build().map_err(|e| open_failure(&url, e, None))?;
        Ok(CloudStorage {
            store: Arc::new(store),
            url,
            holder: ("bucket", location.bucket.clone()),
            endpoint: location.common.endpoint.clone(),
            common: location.common.clone(),
            secret: None,
        })
    }

    /// An Azure container: TLS settings, credentials, timeouts. Sends no request.
    pub fn open_azure(location: &AzureLocation) -> Result<CloudStorage, StorageError> {
        use object_store::azure::MicrosoftAzureBuilder;
        let url = location.url();
        let bad = |message: String| failure(StorageErrorKind::Other, "opening", &url, message);
        if location.account.is_empty() {
            return Err(bad("no storage account configured".into()));
        }
        if location.container.is_empty() {
            return Err(bad("no container configured".into()));
        }
        let connector = PolicyConnector::new(&location.common).map_err(bad)?;
        let secret = match &location.credentials {
            AzureCredentials::DefaultChain => None,
            AzureCredentials::AccessKey(key) => Some(key.clone()),
            AzureCredentials::AccessKeyFile(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    StorageError::new(StorageErrorKind::Permission, "opening", &url).with_source(RemoteFailure {
                        message: format!("cannot read access_key_file {}", path.display()),
                        source: Some(Box::new(e)),
                    })
                })?;
                let key = text.trim();
                if key.is_empty() {
                    return Err(bad(format!("access_key_file {} is empty", path.display())));
                }
                Some(Secret::new(key))
            }
        };
        let mut builder = match &secret {
            None => MicrosoftAzureBuilder::from_env(),
            Some(key) => MicrosoftAzureBuilder::new().with_access_key(key.expose()),
        };
        builder = builder
            .with_account(&location.account)
            .with_container_name(&location.container)
            .with_http_connector(connector)
            .with_retry(retry_config(&location.common.timeouts))
            .with_client_options(ClientOptions::new().with_allow_http(true));
        if let Some(endpoint) = &location.common.endpoint {
            // `http://127.0.0.1:10000/devstoreaccount1` for Azurite: path-style account URL.
            builder = builder.with_endpoint(endpoint.trim_end_matches('/').to_string());
        }
        let store = builder.build().map_err(|e| open_failure(&url, e, secret.as_ref()))?;
        Ok(CloudStorage {
            store: Arc::new(store),
            url,
            holder: ("container", location.container.clone()),
            endpoint: location.common.endpoint.clone(),
            common: location.common.clone(),
            secret,
        })
    }

    fn full_key(&self, key: &str) -> Result<ObjectPath, StorageError> {
        validate_key(key)?;
        ObjectPath::parse(format!("{}{key}", self.common.prefix)).map_err(|e| StorageError::new(StorageErrorKind::InvalidKey, "using", key).with_source(e))
    }

    fn full_prefix(&self, prefix: &str) -> Result<String, StorageError> {
        validate_prefix(prefix)?;
        Ok(format!("{}{prefix}", self.common.prefix))
    }

    fn meta(&self, m: &object_store::ObjectMeta) -> Option<ObjectMeta> {
        let key = m.location.as_ref().strip_prefix(&self.common.prefix)?;
        Some(ObjectMeta { key: key.to_string(), size: m.size, modified: Some(SystemTime::from(m.last_modified)) })
    }

    fn scrub(&self, text: String) -> String {
        match &self.secret {
            Some(s) if !s.expose().is_empty() && text.contains(s.expose()) => text.replace(s.expose(), "<redacted>"),
            _ => text,
        }
    }

    /// An object_store error as a [`StorageError`] of the kind a caller can act on, with a
    /// sentence.
    fn fail(&self, op: &'static str, key: &str, err: object_store::Error) -> StorageError {
        use object_store::Error as E;
        use StorageErrorKind as K;
        let text = https::root_cause(&err);
        let whole = chain_text(&err);
        let mut tls = None;
        let mut http_kind = None;
        https::walk_chain(&err, &mut |e| {
            if let Some(t) = e.downcast_ref::<https::TlsRefused>() {
                tls.get_or_insert_with(|| t.message.clone());
            }
            if let Some(h) = e.downcast_ref::<HttpError>() {
                http_kind.get_or_insert(h.kind());
            }
        });
        let holder_missing = ["ContainerNotFound", "BucketNotFound", "bucket does not exist", "NoSuchBucket", "The specified bucket"]
            .iter()
            .any(|w| whole.contains(w));
        let (holder, name) = (self.holder.0, &self.holder.1);
        let at = self.endpoint.as_deref().map(|e| format!(" at {e}")).unwrap_or_default();
        // Azure says AuthenticationFailed (Azurite AuthorizationFailure) with this sentence
        // for a wrong shared key; GCS says 401.
        let refused_credentials = ["AuthenticationFailed", "failed to authenticate", "InvalidAuthenticationInfo"].iter().any(|w| whole.contains(w));
        let missing = (K::NotFound, Some(format!("{holder} {name:?} does not exist{at}; create it (or fix the {holder} name)")));
        let (kind, hint) = match &err {
            _ if tls.is_some() => (K::Other, None),
            // Listing errors come back generic: the store's own words tell.
            _ if holder_missing => missing,
            E::NotFound { .. } if op != "reading" => missing,
            E::NotFound { .. } => (K::NotFound, None),
            E::AlreadyExists { .. } => (K::AlreadyExists, None),
            E::Precondition { .. } => (K::Precondition, None),
            E::Unauthenticated { .. } => (K::Unauthenticated, Some(credential_hint(holder))),
            _ if refused_credentials => (K::Unauthenticated, Some(credential_hint(holder))),
            E::PermissionDenied { .. } => (K::Permission, None),
            _ if whole.contains("status code: 401") => (K::Unauthenticated, Some(credential_hint(holder))),
            _ if whole.contains("status code: 403") => (K::Permission, None),
            _ if whole.contains("status code: 404") => (K::NotFound, None),
            _ if whole.contains("status code: 412") => (K::Precondition, None),
            _ => match http_kind {
                Some(HttpErrorKind::Timeout) => (K::Timeout, None),
                Some(HttpErrorKind::Connect | HttpErrorKind::Request | HttpErrorKind::Interrupted) => (K::Transient, None),
                _ if whole.contains("status code: 5") || whole.contains("status code: 429") => (K::Transient, None),
                _ => (K::Other, None),
            },
        };
        let detail = tls.unwrap_or(text);
        let message = match hint {
            Some(h) => format!("{}: {h} [{detail}]", self.url),
            None => format!("{}: {detail}", self.url),
        };
        StorageError::new(kind, op, key).with_source(RemoteFailure { message: self.scrub(message), source: Some(Box::new(err)) })
    }

    async fn put_async(store: Arc<dyn Backend>, path: ObjectPath, body: Vec<u8>, mode: PutMode) -> object_store::Result<()> {
        let mode = match mode {
            PutMode::Overwrite => object_store::PutMode::Overwrite,
            PutMode::IfAbsent => object_store::PutMode::Create,
        };
        store.put_opts(&path, PutPayload::from(body), mode.into()).await.map(|_| ())
    }
}

fn credential_hint(holder: &str) -> String {
    let what = if holder == "bucket" { "service_account_file or the default credential chain" } else { "access_key / access_key_file or the default credential chain" };
    format!("the store refuses our credentials; check {what}")
}

fn chain_text(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = String::new();
    https::walk_chain(err, &mut |e| {
        out.push_str(&e.to_string());
        out.push_str(": ");
    });
    out
}

fn open_failure(url: &str, err: object_store::Error, secret: Option<&Secret>) -> StorageError {
    let mut message = format!("{url}: {}", https::root_cause(&err));
    if let Some(s) = secret.filter(|s| !s.expose().is_empty()) {
        message = message.replace(s.expose(), "<redacted>");
    }
    // The builder's error may quote what it was given; keep only our sentence.
    StorageError::new(StorageErrorKind::Other, "opening", url).with_source(RemoteFailure { message, source: None })
}

/// object_store's HTTP connector: our hyper + rustls client, our TLS policy, our timeouts.
#[derive(Debug)]
struct PolicyConnector {
    tls: Arc<rustls::ClientConfig>,
    timeouts: HttpTimeouts,
    allow_tls12: bool,
}

impl PolicyConnector {
    fn new(location: &CloudLocation) -> Result<PolicyConnector, String> {
        if location.part_size < MIN_PART_SIZE {
            return Err(format!("part size {} is below the minimum of {MIN_PART_SIZE} bytes", location.part_size));
        }
        if let Some(endpoint) = &location.endpoint {
            check_endpoint(endpoint)?;
        }
        let tls = https::tls_config(location.ca_file.as_deref(), location.allow_tls12)?;
        Ok(PolicyConnector { tls: Arc::new(tls), timeouts: location.timeouts, allow_tls12: location.allow_tls12 })
    }
}

impl HttpConnector for PolicyConnector {
    fn connect(&self, _options: &ClientOptions) -> object_store::Result<HttpClient> {
        Ok(HttpClient::new(PolicyService {
            client: https::client(&self.tls, self.timeouts.connect),
            timeouts: self.timeouts,
            allow_tls12: self.allow_tls12,
        }))
    }
}

#[derive(Debug)]
struct PolicyService {
    client: https::Client<HttpRequestBody>,
    timeouts: HttpTimeouts,
    allow_tls12: bool,
}

/// Plain HTTP is fine to this machine, and to the link-local instance-metadata service the
/// default credential chains ask for tokens (it never leaves the host).
fn plain_http_allowed(host: &str) -> bool {
    https::is_loopback_host(host) || host == "169.254.169.254" || host == "metadata.google.internal"
}

#[derive(Debug)]
struct Refused(String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

#[async_trait::async_trait]
impl HttpService for PolicyService {
    async fn call(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        let host = request.uri().authority().map(|a| a.to_string()).unwrap_or_default();
        let https = request.uri().scheme_str() == Some("https");
        if !https && !request.uri().host().is_some_and(plain_http_allowed) {
            let message = format!("plain HTTP to {host} refused; remote endpoints must use https:// (plain HTTP only on loopback addresses)");
            return Err(HttpError::new(HttpErrorKind::Unknown, Refused(message)));
        }
        let timeout = self.timeouts.request;
        let response = match tokio::time::timeout(timeout, self.client.request(request)).await {
            Err(_) => {
                let e = io::Error::new(io::ErrorKind::TimedOut, format!("no response from {host} within {timeout:?}"));
                return Err(HttpError::new(HttpErrorKind::Timeout, e));
            }
            Ok(Err(e)) => {
                return Err(match https::send_failure(e, &host, self.allow_tls12) {
                    // Not retried: it will not heal by itself.
                    SendFailure::Tls(refused) => HttpError::new(HttpErrorKind::Unknown, refused),
                    SendFailure::Timeout(message) => HttpError::new(HttpErrorKind::Timeout, io::Error::new(io::ErrorKind::TimedOut, message)),
                    SendFailure::Io(e) if e.is_connect() => HttpError::new(HttpErrorKind::Connect, e),
                    SendFailure::Io(e) => HttpError::new(HttpErrorKind::Request, e),
                })
            }
            Ok(Ok(r)) => r,
        };
        let idle = self.timeouts.read_idle;
        Ok(response.map(|body| HttpResponseBody::new(IdleBody { inner: body, idle, timer: Box::pin(tokio::time::sleep(idle)) })))
    }
}

/// A response body that fails once the server stays silent for `idle`.
struct IdleBody {
    inner: hyper::body::Incoming,
    idle: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl Body for IdleBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let next = tokio::time::Instant::now() + this.idle;
                this.timer.as_mut().reset(next);
                Poll::Ready(frame.map(|r| r.map_err(|e| HttpError::new(HttpErrorKind::Interrupted, e))))
            }
            Poll::Pending if this.timer.as_mut().poll(cx).is_ready() => {
                let e = io::Error::new(io::ErrorKind::TimedOut, format!("no data for {:?} while reading the body", this.idle));
                Poll::Ready(Some(Err(HttpError::new(HttpErrorKind::Timeout, e))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Storage for CloudStorage {
    fn location(&self) -> String {
        self.url.clone()
    }

    fn writer(&self, ctx: &Ctx, key: &str, mode: PutMode) -> Result<Box<dyn ObjectWriter + '_>, StorageError> {
        let path = self.full_key(key)?;
        ctx.check("writing", key)?;
        Ok(Box::new(CloudWriter { store: self, ctx: ctx.clone(), key: key.to_string(), path, mode, buf: PartBuffer::new(self.common.part_size), upload: None }))
    }

    fn get_range(&self, ctx: &Ctx, key: &str, range: ByteRange) -> Result<ObjectReader<'_>, StorageError> {
        let path = self.full_key(key)?;
        ctx.check("reading", key)?;
        let (start, wanted) = match range {
            ByteRange::Bounded(r) if r.start >= r.end => (0, None),
            ByteRange::Suffix(0) => (0, None),
            ByteRange::Bounded(r) if r.start == 0 && r.end == u64::MAX => (0, Some(None)),
            ByteRange::Bounded(r) if r.end == u64::MAX => (r.start, Some(Some(GetRange::Offset(r.start)))),
            ByteRange::Bounded(r) => (r.start, Some(Some(GetRange::Bounded(r)))),
            ByteRange::Suffix(n) => (0, Some(Some(GetRange::Suffix(n)))),
        };
        let Some(mut wanted) = wanted else {
            // Nothing to read, but a missing object is still an error.
            return match self.head(ctx, key)? {
                Some(_) => Ok(Box::new(io::empty())),
                None => Err(StorageError::not_found("reading", key)),
            };
        };
        // Azure takes no suffix range: ask the size first.
        let store = self.store.clone();
        let get = |range: Option<GetRange>| {
            let (store, path) = (store.clone(), path.clone());
            let options = GetOptions { range, ..Default::default() };
            block_on(ctx, "reading", key, async move { store.get_opts(&path, options).await })
        };
        let mut result = get(wanted.clone())?;
        if let (Err(object_store::Error::NotSupported { .. }), Some(GetRange::Suffix(n))) = (&result, &wanted) {
            let n = *n;
            let Some(meta) = self.head(ctx, key)? else { return Err(StorageError::not_found("reading", key)) };
            wanted = Some(GetRange::Offset(meta.size.saturating_sub(n)));
            if meta.size == 0 {
                return Ok(Box::new(io::empty()));
            }
            result = get(wanted.clone())?;
        }
        match result {
            Ok(got) => {
                let body = got.into_stream().map(|chunk| chunk.map_err(|e| Box::new(e) as BodyError)).boxed();
                // A second over the HTTP layer's own bound: object_store may resume a broken body.
                Ok(Box::new(BodyReader::new(ctx, key, body, self.common.timeouts.read_idle + Duration::from_secs(1))))
            }
            Err(e @ object_store::Error::NotFound { .. }) => Err(self.fail("reading", key, e)),
            // A range starting at or past the end: no bytes, as from a file.
            Err(e) if start > 0 => match self.head(ctx, key)? {
                Some(meta) if start >= meta.size => Ok(Box::new(io::empty())),
                _ => Err(self.fail("reading", key, e)),
            },
            Err(e) => Err(self.fail("reading", key, e)),
        }
    }

    fn head(&self, ctx: &Ctx, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        let path = self.full_key(key)?;
        let store = self.store.clone();
        match block_on(ctx, "inspecting", key, async move { store.head(&path).await })? {
            Ok(m) => Ok(self.meta(&m)),
            // HEAD has no body: a 404 cannot tell a missing key from a missing bucket.
            Err(object_store::Error::NotFound { .. }) => Ok(None),
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
            let (store, full) = (self.store.clone(), full.clone());
            let options = PaginatedListOptions { delimiter: Some("/".into()), page_token: token.take(), ..Default::default() };
            let page = block_on(ctx, "listing", prefix, async move { store.list_paginated(Some(&full), options).await })?
                .map_err(|e| self.fail("listing", prefix, e))?;
            for p in &page.result.common_prefixes {
                if let Some(p) = p.as_ref().strip_prefix(&self.common.prefix) {
                    listing.prefixes.push(format!("{p}/"));
                }
            }
            listing.objects.extend(page.result.objects.iter().filter_map(|m| self.meta(m)));
            token = page.page_token;
            if token.is_none() {
                listing.prefixes.sort();
                listing.prefixes.dedup();
                listing.objects.sort_by(|a, b| a.key.cmp(&b.key));
                return Ok(listing);
            }
        }
    }

    fn delete(&self, ctx: &Ctx, key: &str) -> Result<(), StorageError> {
        let path = self.full_key(key)?;
        let store = self.store.clone();
        match block_on(ctx, "deleting", key, async move { store.delete(&path).await })? {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.fail("deleting", key, e)),
        }
    }

    /// `Ok(0)`: object_store cannot list unfinished uploads (see the module docs).
    fn abort_stale_uploads(&self, ctx: &Ctx, prefix: &str, _older_than: Duration) -> Result<u64, StorageError> {
        validate_prefix(prefix)?;
        ctx.check("aborting uploads under", prefix)?;
        Ok(0)
    }
}

/// Paginated listing by string prefix.
struct ListPages<'a> {
    store: &'a CloudStorage,
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
        let (store, full) = (s.store.clone(), self.full.clone());
        let options = PaginatedListOptions { page_token: self.token.take(), ..Default::default() };
        let page = block_on(&self.ctx, "listing", &self.prefix, async move { store.list_paginated(Some(&full), options).await })?
            .map_err(|e| s.fail("listing", &self.prefix, e))?;
        let mut objects: Vec<ObjectMeta> = page.result.objects.iter().filter_map(|m| s.meta(m)).collect();
        // Both stores list in key order; a page is sorted all the same (cheap, and the promise
        // of the trait).
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        self.token = page.page_token;
        self.exhausted = self.token.is_none();
        Ok(Some(objects))
    }
}

struct Multipart {
    /// `None` only while a completion is under way.
    upload: Option<Box<dyn MultipartUpload>>,
    /// The part being sent while the next one fills.
    in_flight: Option<tokio::task::JoinHandle<object_store::Result<()>>>,
}

struct CloudWriter<'a> {
    store: &'a CloudStorage,
    ctx: Ctx,
    key: String,
    path: ObjectPath,
    mode: PutMode,
    buf: PartBuffer,
    upload: Option<Multipart>,
}

impl CloudWriter<'_> {
    /// Wait for the part in flight, if any.
    fn settle(&mut self) -> Result<(), StorageError> {
        let Some(up) = self.upload.as_mut() else { return Ok(()) };
        if let Some(handle) = up.in_flight.as_mut() {
            let joined = wait(&self.ctx, "writing", &self.key, handle)?;
            up.in_flight = None;
            joined
                .map_err(|e| StorageError::new(StorageErrorKind::Other, "writing", &self.key).with_source(e))?
                .map_err(|e| self.store.fail("writing", &self.key, e))?;
        }
        Ok(())
    }

    /// Send the buffer as the next part (starting the upload first if need be).
    fn ship_part(&mut self) -> Result<(), StorageError> {
        let s = self.store;
        if self.upload.is_none() {
            let (store, path) = (s.store.clone(), self.path.clone());
            let upload = block_on(&self.ctx, "writing", &self.key, async move { store.put_multipart(&path).await })?
                .map_err(|e| s.fail("writing", &self.key, e))?;
            self.upload = Some(Multipart { upload: Some(upload), in_flight: None });
        }
        self.settle()?;
        let body = self.buf.take_part();
        let up = self.upload.as_mut().expect("started above");
        let part = up.upload.as_mut().expect("upload open").put_part(PutPayload::from(body));
        up.in_flight = Some(runtime()?.spawn(part));
        Ok(())
    }

    fn complete(&mut self) -> Result<PutOutcome, StorageError> {
        let s = self.store;
        if !self.buf.is_empty() {
            self.ship_part()?;
        }
        self.settle()?;
        // No conditional completion in object_store (see the module docs); the upload stays
        // open and dropping the writer aborts it.
        if self.mode == PutMode::IfAbsent && s.head(&self.ctx, &self.key)?.is_some() {
            return Ok(PutOutcome::AlreadyExists);
        }
        let mut upload = self.upload.as_mut().and_then(|u| u.upload.take()).expect("multipart upload");
        let done = block_on(&self.ctx, "committing", &self.key, async move { upload.complete().await.map(|_| ()) })?;
        self.upload = None;
        done.map_err(|e| s.fail("committing", &self.key, e))?;
        Ok(PutOutcome::Created)
    }
}

impl Write for CloudWriter<'_> {
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

impl ObjectWriter for CloudWriter<'_> {
    fn commit(mut self: Box<Self>) -> Result<PutOutcome, StorageError> {
        self.ctx.check("committing", &self.key)?;
        if self.upload.is_some() {
            return self.complete();
        }
        let s = self.store;
        let (store, path, body, mode) = (s.store.clone(), self.path.clone(), self.buf.take_rest(), self.mode);
        match block_on(&self.ctx, "committing", &self.key, CloudStorage::put_async(store, path, body, mode))? {
            Ok(()) => Ok(PutOutcome::Created),
            Err(object_store::Error::AlreadyExists { .. }) if mode == PutMode::IfAbsent => Ok(PutOutcome::AlreadyExists),
            Err(e) => Err(s.fail("committing", &self.key, e)),
        }
    }
}

impl Drop for CloudWriter<'_> {
    fn drop(&mut self) {
        let Some(up) = self.upload.take() else { return };
        if let Some(handle) = up.in_flight {
            handle.abort();
        }
        // Best effort and bounded, even when the writer's own Ctx is cancelled.
        if let Some(mut upload) = up.upload {
            let ctx = Ctx::background().with_timeout(Duration::from_secs(10));
            let _ = block_on(&ctx, "aborting upload of", &self.key, async move { upload.abort().await });
        }
    }
}

/// Creating the container (setup and tests: a repository never creates its container by
/// itself, as an S3 repository never creates its bucket). object_store has no call for it, so
/// this is one SharedKey-signed `PUT ?restype=container` over the same HTTPS client and TLS
/// rules as everything else. Needs the account's access key.
pub fn create_azure_container(location: &AzureLocation, ctx: &Ctx) -> Result<(), StorageError> {
    use base64::Engine;
    let container = location.container.clone();
    let fail = |message: String| failure(StorageErrorKind::Other, "creating container", &container, message);
    let key = match &location.credentials {
        AzureCredentials::AccessKey(key) => key.expose().to_string(),
        AzureCredentials::AccessKeyFile(path) => {
            std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read access_key_file {}: {e}", path.display())))?.trim().to_string()
        }
        AzureCredentials::DefaultChain => return Err(fail("creating a container needs the account's access key".into())),
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = b64.decode(key).map_err(|_| fail("the access key is not base64".into()))?;
    let account = &location.account;
    let endpoint = location.common.endpoint.clone().unwrap_or_else(|| format!("https://{account}.blob.core.windows.net"));
    check_endpoint(&endpoint).map_err(fail)?;
    let uri: http::Uri = format!("{}/{container}?restype=container", endpoint.trim_end_matches('/')).parse().map_err(|e| fail(format!("{e}")))?;
    let date = chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    let version = "2021-08-06";
    let to_sign = format!("PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n/{account}{}\nrestype:container", uri.path());
    let signature = b64.encode(hmac_sha256(&key, to_sign.as_bytes()));
    let request = http::Request::put(uri)
        .header("x-ms-date", date)
        .header("x-ms-version", version)
        .header("authorization", format!("SharedKey {account}:{signature}"))
        .header("content-length", "0")
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| fail(format!("{e}")))?;
    let tls = https::tls_config(location.common.ca_file.as_deref(), location.common.allow_tls12).map_err(fail)?;
    let client = https::client(&tls, location.common.timeouts.connect);
    let sent = block_on(ctx, "creating container", &container, async move { client.request(request).await })?;
    let status = sent.map_err(|e| fail(https::root_cause(&e)))?.status().as_u16();
    match status {
        // 409: it exists already.
        201 | 409 => Ok(()),
        403 => Err(StorageError::new(StorageErrorKind::Unauthenticated, "creating container", &container)
            .with_source(RemoteFailure { message: format!("{}: the access key was refused (HTTP 403)", location.url()), source: None })),
        other => Err(fail(format!("{}: HTTP {other}", location.url()))),
    }
}

/// HMAC-SHA256 (RFC 2104) for the one SharedKey signature above; object_store signs its own.
fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new().chain_update(pad(0x36)).chain_update(data).finalize();
    Sha256::new().chain_update(pad(0x5c)).chain_update(inner).finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_never_hold_keys() {
        let mut azure = AzureLocation::new("acct", "cont", "/a/b/");
        azure.credentials = AzureCredentials::AccessKey(Secret::new("c2VjcmV0LWtleQ=="));
        assert_eq!(azure.url(), "azure://acct/cont/a/b/");
        assert!(!format!("{azure:?}").contains("c2VjcmV0LWtleQ=="));
        assert_eq!(GcsLocation::new("bkt", "").url(), "gs://bkt/");
        assert!(plain_http_allowed("127.0.0.1") && plain_http_allowed("[::1]") && plain_http_allowed("169.254.169.254"));
        assert!(!plain_http_allowed("storage.googleapis.com"));
    }

    #[test]
    fn bad_settings_fail_at_open() {
        let mut gcs = GcsLocation::new("bkt", "p");
        gcs.common.endpoint = Some("http://gcs.example.com".into());
        let e = CloudStorage::open_gcs(&gcs).unwrap_err();
        assert!(format!("{:?}", std::error::Error::source(&e)).contains("must use https://"), "{e:?}");
        let mut small = AzureLocation::new("acct", "cont", "");
        small.common.part_size = 1 << 20;
        assert!(format!("{:?}", CloudStorage::open_azure(&small).unwrap_err()).contains("minimum"));
        assert!(CloudStorage::open_azure(&AzureLocation::new("acct", "", "")).is_err());
    }
}
