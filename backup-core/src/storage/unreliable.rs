//! Fault injection as a storage backend: any store, with chosen calls failing.
//!
//! Tests wrap a real backend in [`UnreliableStorage`] and say which calls fail, how (a
//! [`StorageErrorKind`]) and how often, to show that a failure at any step of a push, a backup
//! or a restore is reported with its kind and leaves nothing half-done behind. With no fault
//! injected it is a transparent wrapper, and runs the conformance suite like any backend.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use super::{ByteRange, Ctx, Listing, ObjectMeta, ObjectReader, ObjectStream, ObjectWriter, PutMode, PutOutcome, Storage, StorageError, StorageErrorKind};

/// The calls a fault can hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Starting an upload ([`Storage::writer`]).
    Write,
    /// Committing an upload: the bytes were sent, the object must still not appear.
    Commit,
    Read,
    Head,
    List,
    Delete,
}

#[derive(Clone, Debug)]
pub struct Fault {
    pub op: Op,
    /// Only keys (or listing prefixes) starting with this fail.
    pub key_prefix: String,
    pub kind: StorageErrorKind,
    /// Matching calls that go through before the first failure.
    pub after: u32,
    /// How many calls fail once failing starts (`u32::MAX`: all of them).
    pub times: u32,
}

impl Fault {
    /// Every `op` on keys under `key_prefix` fails with `kind`.
    pub fn always(op: Op, key_prefix: &str, kind: StorageErrorKind) -> Fault {
        Fault { op, key_prefix: key_prefix.to_string(), kind, after: 0, times: u32::MAX }
    }

    /// The next `times` such calls fail, then the store recovers (a blip).
    pub fn times(op: Op, key_prefix: &str, kind: StorageErrorKind, times: u32) -> Fault {
        Fault { times, ..Fault::always(op, key_prefix, kind) }
    }
}

#[derive(Debug, Default)]
struct Plan {
    faults: Vec<(Fault, u32)>,
    injected: u64,
}

impl Plan {
    fn hit(&mut self, op: Op, key: &str) -> Option<StorageErrorKind> {
        for (fault, seen) in &mut self.faults {
            if fault.op != op || !key.starts_with(&fault.key_prefix) {
                continue;
            }
            *seen += 1;
            if *seen > fault.after && *seen - fault.after <= fault.times {
                self.injected += 1;
                return Some(fault.kind);
            }
        }
        None
    }
}

#[derive(Debug)]
pub struct UnreliableStorage {
    inner: Box<dyn Storage>,
    plan: Arc<Mutex<Plan>>,
}

impl UnreliableStorage {
    pub fn new(inner: Box<dyn Storage>) -> UnreliableStorage {
        UnreliableStorage { inner, plan: Arc::default() }
    }

    pub fn inject(&self, fault: Fault) {
        self.plan.lock().unwrap().faults.push((fault, 0));
    }

    /// Forget every fault: the store works again.
    pub fn heal(&self) {
        self.plan.lock().unwrap().faults.clear();
    }

    /// How many calls failed on purpose so far.
    pub fn injected(&self) -> u64 {
        self.plan.lock().unwrap().injected
    }

    fn check(&self, op: Op, what: &'static str, key: &str) -> Result<(), StorageError> {
        match self.plan.lock().unwrap().hit(op, key) {
            Some(kind) => Err(injected(kind, what, key)),
            None => Ok(()),
        }
    }
}

fn injected(kind: StorageErrorKind, what: &'static str, key: &str) -> StorageError {
    StorageError::new(kind, what, key).with_source("failure injected by UnreliableStorage")
}

impl Storage for UnreliableStorage {
    fn location(&self) -> String {
        format!("unreliable:{}", self.inner.location())
    }

    fn writer(&self, ctx: &Ctx, key: &str, mode: PutMode) -> Result<Box<dyn ObjectWriter + '_>, StorageError> {
        self.check(Op::Write, "writing", key)?;
        let inner = self.inner.writer(ctx, key, mode)?;
        Ok(Box::new(UnreliableWriter { inner, key: key.to_string(), plan: self.plan.clone() }))
    }

    fn get_range(&self, ctx: &Ctx, key: &str, range: ByteRange) -> Result<ObjectReader<'_>, StorageError> {
        self.check(Op::Read, "reading", key)?;
        self.inner.get_range(ctx, key, range)
    }

    fn head(&self, ctx: &Ctx, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        self.check(Op::Head, "inspecting", key)?;
        self.inner.head(ctx, key)
    }

    fn list(&self, ctx: &Ctx, prefix: &str) -> Result<ObjectStream<'_>, StorageError> {
        self.check(Op::List, "listing", prefix)?;
        self.inner.list(ctx, prefix)
    }

    fn list_with_delimiter(&self, ctx: &Ctx, prefix: &str) -> Result<Listing, StorageError> {
        self.check(Op::List, "listing", prefix)?;
        self.inner.list_with_delimiter(ctx, prefix)
    }

    fn delete(&self, ctx: &Ctx, key: &str) -> Result<(), StorageError> {
        self.check(Op::Delete, "deleting", key)?;
        self.inner.delete(ctx, key)
    }

    fn abort_stale_uploads(&self, ctx: &Ctx, prefix: &str, older_than: std::time::Duration) -> Result<u64, StorageError> {
        self.check(Op::Delete, "aborting uploads under", prefix)?;
        self.inner.abort_stale_uploads(ctx, prefix, older_than)
    }
}

struct UnreliableWriter<'a> {
    inner: Box<dyn ObjectWriter + 'a>,
    key: String,
    plan: Arc<Mutex<Plan>>,
}

impl Write for UnreliableWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl ObjectWriter for UnreliableWriter<'_> {
    fn commit(self: Box<Self>) -> Result<PutOutcome, StorageError> {
        if let Some(kind) = self.plan.lock().unwrap().hit(Op::Commit, &self.key) {
            // Dropping the inner writer abandons the upload, as a failed commit would.
            return Err(injected(kind, "committing", &self.key));
        }
        self.inner.commit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::LocalStorage;

    #[test]
    fn transparent_without_faults() {
        let dir = tempfile::tempdir().unwrap();
        crate::storage::conformance::run_all(&UnreliableStorage::new(Box::new(LocalStorage::new(dir.path()))));
    }

    #[test]
    fn faults_hit_the_chosen_calls_then_heal() {
        let dir = tempfile::tempdir().unwrap();
        let s = UnreliableStorage::new(Box::new(LocalStorage::new(dir.path())));
        let ctx = Ctx::background();
        s.inject(Fault::times(Op::Commit, "wal/", StorageErrorKind::Transient, 1));
        let err = s.put(&ctx, "wal/a", b"x", PutMode::IfAbsent).unwrap_err();
        assert_eq!(err.kind(), StorageErrorKind::Transient);
        assert!(!s.exists(&ctx, "wal/a").unwrap(), "a failed commit left the object visible");
        assert_eq!(s.put(&ctx, "wal/a", b"x", PutMode::IfAbsent).unwrap(), PutOutcome::Created, "the blip is over");
        s.inject(Fault::always(Op::Read, "wal/", StorageErrorKind::Permission));
        assert_eq!(s.get_bytes(&ctx, "wal/a").unwrap_err().kind(), StorageErrorKind::Permission);
        s.put(&ctx, "other/b", b"y", PutMode::IfAbsent).unwrap();
        assert_eq!(s.get_bytes(&ctx, "other/b").unwrap(), b"y", "a fault hit another prefix");
        assert_eq!(s.injected(), 2);
        s.heal();
        assert_eq!(s.get_bytes(&ctx, "wal/a").unwrap(), b"x");
    }
}
