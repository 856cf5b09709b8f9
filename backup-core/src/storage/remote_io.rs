//! Errors, reading and listing as the remote backends share them (S3 through its SDK, GCS and Azure
//! through object_store): both hand over a response body as an async stream of chunks and a
//! listing as pages; here they become the blocking `Read` and `Iterator` the storage trait
//! promises, every wait bounded and watching the `Ctx`.

use std::fmt;
use std::io::{self, Read};
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures_util::stream::{BoxStream, StreamExt};

use super::runtime::block_on;
use super::{Ctx, ObjectMeta, StorageError, StorageErrorKind};

pub(crate) type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// What went wrong, in words (secrets scrubbed), with the client library's error, if any, as
/// the source.
#[derive(Debug)]
pub(crate) struct RemoteFailure {
    pub(crate) message: String,
    pub(crate) source: Option<super::BoxError>,
}

impl fmt::Display for RemoteFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RemoteFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as _)
    }
}

/// A failure described in words alone.
pub(crate) fn failure(kind: StorageErrorKind, op: &'static str, key: &str, message: String) -> StorageError {
    StorageError::new(kind, op, key).with_source(RemoteFailure { message, source: None })
}

/// A response body as its chunks arrive.
pub(crate) type BodyStream = BoxStream<'static, Result<Bytes, BodyError>>;

/// A response body read chunk by chunk, each wait bounded and watching the `Ctx`.
pub(crate) struct BodyReader {
    ctx: Ctx,
    key: String,
    /// `None` once a read was abandoned half-way (cancelled, timed out).
    body: Option<BodyStream>,
    chunk: Bytes,
    /// The longest wait for the next chunk. The HTTP layer bounds silence on the socket too;
    /// this also covers what a client library does between chunks (object_store resumes a
    /// broken body with a new request).
    idle: Duration,
    done: bool,
}

impl BodyReader {
    pub(crate) fn new(ctx: &Ctx, key: &str, body: BodyStream, idle: Duration) -> BodyReader {
        BodyReader { ctx: ctx.clone(), key: key.to_string(), body: Some(body), chunk: Bytes::new(), idle, done: false }
    }

    fn failure(&self, kind: StorageErrorKind, message: String) -> io::Error {
        io::Error::other(failure(kind, "reading", &self.key, message))
    }
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.ctx.check_io("reading", &self.key)?;
        while self.chunk.is_empty() {
            if self.done || buf.is_empty() {
                return Ok(0);
            }
            let idle = self.idle;
            let Some(mut body) = self.body.take() else {
                return Err(self.failure(StorageErrorKind::Other, "body abandoned by an earlier failure".into()));
            };
            let fetch = async move {
                let next = tokio::time::timeout(idle, body.next()).await;
                (body, next)
            };
            let (body, next) = block_on(&self.ctx, "reading", &self.key, fetch).map_err(io::Error::other)?;
            self.body = Some(body);
            match next {
                Err(_) => return Err(self.failure(StorageErrorKind::Timeout, format!("no data for {idle:?} while reading the body"))),
                Ok(Some(Err(e))) => return Err(io::Error::other(StorageError::new(StorageErrorKind::Transient, "reading", &self.key).with_source(e))),
                Ok(None) => self.done = true,
                Ok(Some(Ok(bytes))) => self.chunk = bytes,
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk.advance(n);
        Ok(n)
    }
}

/// A listing, one page at a time: the backend's request for the next page.
pub(crate) trait PageSource {
    /// The next page, sorted by key; `None` after the last one.
    fn next_page(&mut self) -> Result<Option<Vec<ObjectMeta>>, StorageError>;
}

/// A paginated listing as an iterator, one page in memory at a time; a failed page ends it.
pub(crate) struct Pages<S> {
    source: S,
    page: std::vec::IntoIter<ObjectMeta>,
    finished: bool,
}

impl<S: PageSource> Pages<S> {
    /// Fetches the first page now: a missing bucket or a refusal surfaces when the listing
    /// starts, not in the middle of the iteration.
    pub(crate) fn start(mut source: S) -> Result<Pages<S>, StorageError> {
        let first = source.next_page()?;
        Ok(Pages { finished: first.is_none(), page: first.unwrap_or_default().into_iter(), source })
    }
}

impl<S: PageSource> Iterator for Pages<S> {
    type Item = Result<ObjectMeta, StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(m) = self.page.next() {
                return Some(Ok(m));
            }
            if self.finished {
                return None;
            }
            match self.source.next_page() {
                Ok(Some(page)) => self.page = page.into_iter(),
                Ok(None) => self.finished = true,
                Err(e) => {
                    self.finished = true;
                    return Some(Err(e));
                }
            }
        }
    }
}
