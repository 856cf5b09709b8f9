//! The behaviour every [`Storage`] backend must show, written once.
//!
//! Each backend's tests call [`run_all`] on a fresh, empty store (a temporary directory, a new
//! bucket on an emulator). It panics with the name of the first broken promise. It is public
//! (not test-only) so that backends tested from other crates, against emulators, run it too.

use std::io::{Read, Write};
use std::time::Duration;

use super::{ByteRange, CancelToken, Ctx, PutMode, PutOutcome, Storage, StorageErrorKind};

pub fn run_all(store: &dyn Storage) {
    let ctx = Ctx::background();
    put_then_get(store, &ctx);
    empty_object(store, &ctx);
    overwrite_replaces(store, &ctx);
    if_absent_never_overwrites(store, &ctx);
    uncommitted_upload_is_invisible(store, &ctx);
    streaming_large_object(store, &ctx);
    missing_object_is_not_found(store, &ctx);
    ranged_get(store, &ctx);
    list_by_prefix(store, &ctx);
    list_one_level_with_delimiter(store, &ctx);
    delete_is_idempotent(store, &ctx);
    invalid_keys_are_refused(store, &ctx);
    cancelled_and_late_calls_fail_by_kind(store);
}

fn put_then_get(s: &dyn Storage, ctx: &Ctx) {
    assert_eq!(s.put(ctx, "basic/one", b"first object", PutMode::Overwrite).unwrap(), PutOutcome::Created);
    assert_eq!(s.get_bytes(ctx, "basic/one").unwrap(), b"first object");
    let meta = s.head(ctx, "basic/one").unwrap().expect("head of a written object");
    assert_eq!(meta.size, 12);
    assert!(s.exists(ctx, "basic/one").unwrap());
}

fn empty_object(s: &dyn Storage, ctx: &Ctx) {
    s.put(ctx, "basic/empty", b"", PutMode::IfAbsent).unwrap();
    assert_eq!(s.get_bytes(ctx, "basic/empty").unwrap(), b"");
    assert_eq!(s.head(ctx, "basic/empty").unwrap().unwrap().size, 0);
}

fn overwrite_replaces(s: &dyn Storage, ctx: &Ctx) {
    s.put(ctx, "basic/over", b"old contents, longer", PutMode::Overwrite).unwrap();
    s.put(ctx, "basic/over", b"new", PutMode::Overwrite).unwrap();
    assert_eq!(s.get_bytes(ctx, "basic/over").unwrap(), b"new");
}

fn if_absent_never_overwrites(s: &dyn Storage, ctx: &Ctx) {
    assert_eq!(s.put(ctx, "cond/x", b"original", PutMode::IfAbsent).unwrap(), PutOutcome::Created);
    assert_eq!(s.put(ctx, "cond/x", b"impostor", PutMode::IfAbsent).unwrap(), PutOutcome::AlreadyExists);
    assert_eq!(s.get_bytes(ctx, "cond/x").unwrap(), b"original");
}

fn uncommitted_upload_is_invisible(s: &dyn Storage, ctx: &Ctx) {
    let mut w = s.writer(ctx, "pending/obj", PutMode::IfAbsent).unwrap();
    w.write_all(b"half").unwrap();
    assert!(!s.exists(ctx, "pending/obj").unwrap(), "object visible before commit");
    assert!(s.list_all(ctx, "pending/").unwrap().is_empty(), "listing shows an uncommitted upload");
    drop(w);
    assert!(!s.exists(ctx, "pending/obj").unwrap(), "abandoned upload became visible");
    // The name is still free for a real write.
    assert_eq!(s.put(ctx, "pending/obj", b"whole", PutMode::IfAbsent).unwrap(), PutOutcome::Created);
}

fn streaming_large_object(s: &dyn Storage, ctx: &Ctx) {
    let pattern: Vec<u8> = (0..=255u8).cycle().take(7919).collect();
    let mut w = s.writer(ctx, "big/stream", PutMode::IfAbsent).unwrap();
    for _ in 0..1000 {
        w.write_all(&pattern).unwrap();
    }
    w.commit().unwrap();
    let mut r = s.get(ctx, "big/stream").unwrap();
    let mut buf = vec![0u8; pattern.len()];
    for i in 0..1000 {
        r.read_exact(&mut buf).unwrap_or_else(|e| panic!("short read in block {i}: {e}"));
        assert_eq!(buf, pattern, "block {i} differs");
    }
    assert_eq!(r.read(&mut buf).unwrap(), 0, "bytes after the end");
}

fn missing_object_is_not_found(s: &dyn Storage, ctx: &Ctx) {
    let kind = |r: Result<Vec<u8>, super::StorageError>| r.map(|_| ()).unwrap_err().kind();
    assert_eq!(kind(s.get_bytes(ctx, "nowhere/x")), StorageErrorKind::NotFound);
    assert_eq!(kind(s.get_range_bytes(ctx, "nowhere/x", (0..4).into())), StorageErrorKind::NotFound);
    assert!(s.head(ctx, "nowhere/x").unwrap().is_none());
    assert!(!s.exists(ctx, "nowhere/x").unwrap());
}

fn ranged_get(s: &dyn Storage, ctx: &Ctx) {
    s.put(ctx, "range/r", b"0123456789", PutMode::Overwrite).unwrap();
    let get = |r: ByteRange| s.get_range_bytes(ctx, "range/r", r).unwrap();
    assert_eq!(get((2..5).into()), b"234");
    assert_eq!(get((7..100).into()), b"789", "range past the end is cut");
    assert_eq!(get((0..10).into()), b"0123456789");
    assert_eq!(get(ByteRange::Suffix(3)), b"789");
    assert_eq!(get(ByteRange::Suffix(50)), b"0123456789", "suffix longer than the object");
}

fn list_by_prefix(s: &dyn Storage, ctx: &Ctx) {
    for key in ["ls/a/1", "ls/a/2", "ls/a-x/0", "ls/ab/3", "ls/b/4", "ls/b/deep/5", "lsx/6"] {
        s.put(ctx, key, key.as_bytes(), PutMode::Overwrite).unwrap();
    }
    let keys = |p: &str| s.list_all(ctx, p).unwrap().into_iter().map(|m| m.key).collect::<Vec<_>>();
    // Byte order of whole keys: "a-x/" sorts before "a/" ('-' < '/').
    assert_eq!(keys("ls/"), ["ls/a-x/0", "ls/a/1", "ls/a/2", "ls/ab/3", "ls/b/4", "ls/b/deep/5"]);
    assert_eq!(keys("ls/a"), ["ls/a-x/0", "ls/a/1", "ls/a/2", "ls/ab/3"], "prefix not at a '/' boundary");
    assert_eq!(keys("ls/a/"), ["ls/a/1", "ls/a/2"]);
    assert_eq!(keys("ls/b/deep/"), ["ls/b/deep/5"]);
    assert!(keys("ls/zzz").is_empty());
    let sizes: Vec<u64> = s.list_all(ctx, "ls/a/").unwrap().into_iter().map(|m| m.size).collect();
    assert_eq!(sizes, [6, 6]);
    // Streamed: the first item arrives without collecting the rest.
    let first = s.list(ctx, "ls/").unwrap().next().expect("one item").unwrap();
    assert_eq!(first.key, "ls/a-x/0");
}

fn list_one_level_with_delimiter(s: &dyn Storage, ctx: &Ctx) {
    for key in ["lv/top", "lv/d1/x", "lv/d1/y/z", "lv/d2/w"] {
        s.put(ctx, key, b"v", PutMode::Overwrite).unwrap();
    }
    let l = s.list_with_delimiter(ctx, "lv/").unwrap();
    assert_eq!(l.prefixes, ["lv/d1/", "lv/d2/"]);
    assert_eq!(l.objects.iter().map(|m| m.key.as_str()).collect::<Vec<_>>(), ["lv/top"]);
    let l = s.list_with_delimiter(ctx, "lv/d1/").unwrap();
    assert_eq!(l.prefixes, ["lv/d1/y/"]);
    assert_eq!(l.objects.iter().map(|m| m.key.as_str()).collect::<Vec<_>>(), ["lv/d1/x"]);
    assert_eq!(s.list_with_delimiter(ctx, "nothing-here/").unwrap(), super::Listing::default());
    // A prefix whose objects are all deleted is gone, as on an object store.
    s.delete(ctx, "lv/d2/w").unwrap();
    assert_eq!(s.list_with_delimiter(ctx, "lv/").unwrap().prefixes, ["lv/d1/"]);
}

fn delete_is_idempotent(s: &dyn Storage, ctx: &Ctx) {
    s.put(ctx, "del/x", b"x", PutMode::Overwrite).unwrap();
    s.delete(ctx, "del/x").unwrap();
    assert!(!s.exists(ctx, "del/x").unwrap());
    s.delete(ctx, "del/x").unwrap();
    assert_eq!(s.put(ctx, "del/x", b"again", PutMode::IfAbsent).unwrap(), PutOutcome::Created);
}

fn invalid_keys_are_refused(s: &dyn Storage, ctx: &Ctx) {
    for key in ["", "/abs", "a//b", "../escape", "a/../b", "a/.hidden", "sp ace", "trailing/"] {
        let err = s.put(ctx, key, b"x", PutMode::Overwrite).expect_err(key);
        assert_eq!(err.kind(), StorageErrorKind::InvalidKey, "key {key:?}: {err}");
    }
}

fn cancelled_and_late_calls_fail_by_kind(s: &dyn Storage) {
    s.put(&Ctx::background(), "ctx/x", &[7u8; 64 << 10], PutMode::Overwrite).unwrap();
    let token = CancelToken::new();
    let ctx = Ctx::background().with_cancel(&token);
    let mut reader = s.get(&ctx, "ctx/x").unwrap();
    let mut w = s.writer(&ctx, "ctx/y", PutMode::IfAbsent).unwrap();
    token.cancel();
    for err in [
        s.get_bytes(&ctx, "ctx/x").unwrap_err(),
        s.head(&ctx, "ctx/x").unwrap_err(),
        s.put(&ctx, "ctx/z", b"z", PutMode::IfAbsent).unwrap_err(),
        s.list(&ctx, "ctx/").map(|_| ()).unwrap_err(),
        s.delete(&ctx, "ctx/x").unwrap_err(),
    ] {
        assert_eq!(err.kind(), StorageErrorKind::Cancelled, "{err}");
    }
    let mut buf = [0u8; 1024];
    assert!(reader.read(&mut buf).is_err(), "a body being read went on after cancellation");
    let write_or_commit = w.write_all(b"late").map_err(|e| super::StorageError::from_stream("writing", "ctx/y", e)).and_then(|_| w.commit().map(|_| ()));
    assert_eq!(write_or_commit.unwrap_err().kind(), StorageErrorKind::Cancelled);
    assert!(!s.exists(&Ctx::background(), "ctx/y").unwrap(), "a cancelled upload became visible");
    assert!(s.exists(&Ctx::background(), "ctx/x").unwrap(), "a cancelled delete deleted");
    let late = Ctx::background().with_timeout(Duration::ZERO);
    assert_eq!(s.get_bytes(&late, "ctx/x").unwrap_err().kind(), StorageErrorKind::Timeout);
}
