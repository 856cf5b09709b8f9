//! The one Tokio runtime that every async backend (S3, GCS, Azure) runs on, and the bridge from
//! the blocking [`super::Storage`] trait into it.
//!
//! The runtime is created on first use, from a thread spawned with every signal blocked
//! ([`crate::threads`]), so its worker threads inherit a mask that keeps every signal on the
//! caller's threads (a PostgreSQL backend's handlers belong to its main thread). Each request
//! runs as a task of that runtime, so what it starts (connections, DNS lookups on the blocking
//! pool) is spawned by those blocked threads, never by the caller's; the caller [`block_on`]s
//! the task's result from its own thread, looking at the [`Ctx`] every [`CTX_POLL`]: past the
//! deadline or cancelled, the task is aborted, which closes its connection. No runtime exists
//! until a remote store is opened.

use std::future::Future;
use std::pin::pin;
use std::sync::OnceLock;
use std::task::Poll;
use std::time::Duration;

use super::{Ctx, StorageError, StorageErrorKind};

/// How often a call waiting on the runtime looks at its [`Ctx`] (cancellation has no wake-up).
pub(crate) const CTX_POLL: Duration = Duration::from_millis(50);

/// The process's runtime for async backends, started on first use with signals blocked.
pub(crate) fn runtime() -> Result<&'static tokio::runtime::Runtime, StorageError> {
    static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    let rt = RUNTIME.get_or_init(|| {
        let build = |_: usize| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("storage-io")
                // Threads inherit the mask of the thread that spawns them, and ours are spawned
                // by our (blocked) threads; this also covers a blocking-pool thread that some
                // code starts from an outside thread.
                .on_thread_start(block_all_signals)
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        };
        std::thread::scope(|scope| {
            let handles = crate::threads::spawn_blocking_signals(scope, 1, &build);
            handles.into_iter().next().expect("one thread").join().unwrap_or_else(|_| Err("runtime start panicked".into()))
        })
    });
    rt.as_ref()
        .map_err(|e| StorageError::new(StorageErrorKind::Other, "starting the I/O runtime for", "").with_source(e.clone()))
}

fn block_all_signals() {
    // SAFETY: plain libc calls on an initialized sigset_t, changing only this thread's mask.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
    }
}

/// Run `fut` as a task of the runtime and wait for it on this thread, unless `ctx` is cancelled
/// or past its deadline first (then the task is aborted, and its request with it).
///
/// A task, not a future polled here: what a request starts (connections, DNS lookups on the
/// blocking pool) is then spawned from the runtime's threads, never from the caller's, so it
/// inherits their blocked signal mask.
pub(crate) fn block_on<F>(ctx: &Ctx, op: &'static str, key: &str, fut: F) -> Result<F::Output, StorageError>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    ctx.check(op, key)?;
    let mut task = runtime()?.spawn(fut);
    let out = wait(ctx, op, key, &mut task);
    if out.is_err() {
        task.abort();
    }
    out?.map_err(|e| StorageError::new(StorageErrorKind::Other, op, key).with_source(e))
}

/// Wait on this thread for a task's result (a future that spawns nothing), watching `ctx`.
pub(crate) fn wait<T>(
    ctx: &Ctx,
    op: &'static str,
    key: &str,
    task: &mut tokio::task::JoinHandle<T>,
) -> Result<Result<T, tokio::task::JoinError>, StorageError> {
    ctx.check(op, key)?;
    runtime()?.block_on(async {
        let mut tick = pin!(tokio::time::sleep(CTX_POLL));
        std::future::poll_fn(|cx| {
            if let Poll::Ready(v) = std::pin::Pin::new(&mut *task).poll(cx) {
                return Poll::Ready(Ok(v));
            }
            while tick.as_mut().poll(cx).is_ready() {
                if let Err(e) = ctx.check(op, key) {
                    return Poll::Ready(Err(e));
                }
                tick.as_mut().reset(tokio::time::Instant::now() + CTX_POLL);
            }
            Poll::Pending
        })
        .await
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Its threads must never run a signal handler (a PostgreSQL backend's handlers belong to
    /// its main thread), also the blocking-pool threads started later for DNS lookups.
    #[test]
    fn runtime_threads_block_every_signal() {
        let rt = runtime().unwrap();
        let blocked = |_: ()| {
            // SAFETY: reads this thread's signal mask into a zeroed sigset_t.
            unsafe {
                let mut mask: libc::sigset_t = std::mem::zeroed();
                libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut mask);
                [libc::SIGTERM, libc::SIGINT, libc::SIGUSR1, libc::SIGHUP].iter().all(|s| libc::sigismember(&mask, *s) == 1)
            }
        };
        assert!(rt.block_on(rt.spawn(async move { blocked(()) })).unwrap(), "a worker thread takes signals");
        let from_worker = rt.spawn(async move { tokio::task::spawn_blocking(move || blocked(())).await.unwrap() });
        assert!(rt.block_on(from_worker).unwrap(), "a blocking-pool thread (as for DNS) takes signals");
        assert!(rt.block_on(rt.spawn_blocking(move || blocked(()))).unwrap(), "a blocking-pool thread started from outside takes signals");
        assert!(!blocked(()), "the test thread itself should take signals");
    }

}
