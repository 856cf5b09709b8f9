//! The behaviour every [`Storage`] backend must show, written once.
//!
//! Each backend's tests call [`run_all`] on a fresh, empty store (a temporary directory, a new
//! bucket on an emulator). It panics with the name of the first broken promise.

use std::io::{Read, Write};

use super::{PutMode, PutOutcome, Storage, StorageError};

pub fn run_all(store: &dyn Storage) {
    put_then_get(store);
    empty_object(store);
    overwrite_replaces(store);
    if_absent_never_overwrites(store);
    uncommitted_upload_is_invisible(store);
    streaming_large_object(store);
    missing_object_is_not_found(store);
    ranged_get(store);
    list_by_prefix(store);
    delete_is_idempotent(store);
    invalid_keys_are_refused(store);
}

fn put_then_get(s: &dyn Storage) {
    assert_eq!(s.put("basic/one", b"first object", PutMode::Overwrite).unwrap(), PutOutcome::Created);
    assert_eq!(s.get_bytes("basic/one").unwrap(), b"first object");
    let meta = s.head("basic/one").unwrap().expect("head of a written object");
    assert_eq!(meta.size, 12);
    assert!(s.exists("basic/one").unwrap());
}

fn empty_object(s: &dyn Storage) {
    s.put("basic/empty", b"", PutMode::IfAbsent).unwrap();
    assert_eq!(s.get_bytes("basic/empty").unwrap(), b"");
    assert_eq!(s.head("basic/empty").unwrap().unwrap().size, 0);
}

fn overwrite_replaces(s: &dyn Storage) {
    s.put("basic/over", b"old contents, longer", PutMode::Overwrite).unwrap();
    s.put("basic/over", b"new", PutMode::Overwrite).unwrap();
    assert_eq!(s.get_bytes("basic/over").unwrap(), b"new");
}

fn if_absent_never_overwrites(s: &dyn Storage) {
    assert_eq!(s.put("cond/x", b"original", PutMode::IfAbsent).unwrap(), PutOutcome::Created);
    assert_eq!(s.put("cond/x", b"impostor", PutMode::IfAbsent).unwrap(), PutOutcome::AlreadyExists);
    assert_eq!(s.get_bytes("cond/x").unwrap(), b"original");
}

fn uncommitted_upload_is_invisible(s: &dyn Storage) {
    let mut w = s.writer("pending/obj", PutMode::IfAbsent).unwrap();
    w.write_all(b"half").unwrap();
    assert!(!s.exists("pending/obj").unwrap(), "object visible before commit");
    assert!(s.list("pending/").unwrap().is_empty(), "listing shows an uncommitted upload");
    drop(w);
    assert!(!s.exists("pending/obj").unwrap(), "abandoned upload became visible");
    // The name is still free for a real write.
    assert_eq!(s.put("pending/obj", b"whole", PutMode::IfAbsent).unwrap(), PutOutcome::Created);
}

fn streaming_large_object(s: &dyn Storage) {
    let pattern: Vec<u8> = (0..=255u8).cycle().take(7919).collect();
    let mut w = s.writer("big/stream", PutMode::IfAbsent).unwrap();
    for _ in 0..1000 {
        w.write_all(&pattern).unwrap();
    }
    w.commit().unwrap();
    let mut r = s.get("big/stream").unwrap();
    let mut buf = vec![0u8; pattern.len()];
    for i in 0..1000 {
        r.read_exact(&mut buf).unwrap_or_else(|e| panic!("short read in block {i}: {e}"));
        assert_eq!(buf, pattern, "block {i} differs");
    }
    assert_eq!(r.read(&mut buf).unwrap(), 0, "bytes after the end");
}

fn missing_object_is_not_found(s: &dyn Storage) {
    assert!(matches!(s.get("nowhere/x"), Err(StorageError::NotFound { .. })));
    assert!(matches!(s.get_range("nowhere/x", 0..4), Err(StorageError::NotFound { .. })));
    assert!(s.head("nowhere/x").unwrap().is_none());
    assert!(!s.exists("nowhere/x").unwrap());
}

fn ranged_get(s: &dyn Storage) {
    s.put("range/r", b"0123456789", PutMode::Overwrite).unwrap();
    assert_eq!(s.get_range("range/r", 2..5).unwrap(), b"234");
    assert_eq!(s.get_range("range/r", 7..100).unwrap(), b"789", "range past the end is cut");
    assert_eq!(s.get_range("range/r", 0..10).unwrap(), b"0123456789");
}

fn list_by_prefix(s: &dyn Storage) {
    for key in ["ls/a/1", "ls/a/2", "ls/ab/3", "ls/b/4", "ls/b/deep/5", "lsx/6"] {
        s.put(key, key.as_bytes(), PutMode::Overwrite).unwrap();
    }
    let keys = |p: &str| s.list(p).unwrap().into_iter().map(|m| m.key).collect::<Vec<_>>();
    assert_eq!(keys("ls/"), ["ls/a/1", "ls/a/2", "ls/ab/3", "ls/b/4", "ls/b/deep/5"]);
    assert_eq!(keys("ls/a"), ["ls/a/1", "ls/a/2", "ls/ab/3"], "prefix not at a '/' boundary");
    assert_eq!(keys("ls/a/"), ["ls/a/1", "ls/a/2"]);
    assert_eq!(keys("ls/b/deep/"), ["ls/b/deep/5"]);
    assert!(keys("ls/zzz").is_empty());
    let sizes: Vec<u64> = s.list("ls/a/").unwrap().into_iter().map(|m| m.size).collect();
    assert_eq!(sizes, [6, 6]);
}

fn delete_is_idempotent(s: &dyn Storage) {
    s.put("del/x", b"x", PutMode::Overwrite).unwrap();
    s.delete("del/x").unwrap();
    assert!(!s.exists("del/x").unwrap());
    s.delete("del/x").unwrap();
    assert_eq!(s.put("del/x", b"again", PutMode::IfAbsent).unwrap(), PutOutcome::Created);
}

fn invalid_keys_are_refused(s: &dyn Storage) {
    for key in ["", "/abs", "a//b", "../escape", "a/../b", "a/.hidden", "sp ace", "trailing/"] {
        assert!(
            matches!(s.put(key, b"x", PutMode::Overwrite), Err(StorageError::InvalidKey { .. })),
            "key {key:?} accepted"
        );
    }
}
