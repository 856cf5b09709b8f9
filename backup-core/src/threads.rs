//! Threads that never run signal handlers.
//!
//! Inside a PostgreSQL backend, signal handlers touch backend state and must run on the main
//! thread (pgrx panics otherwise). A thread inherits its creator's signal mask, so blocking
//! every signal around `spawn` keeps all signals on the main thread. Harmless elsewhere.

use std::thread::{Scope, ScopedJoinHandle};

pub fn spawn_blocking_signals<'scope, 'env, F, T>(
    scope: &'scope Scope<'scope, 'env>,
    count: usize,
    work: &'scope F,
) -> Vec<ScopedJoinHandle<'scope, T>>
where
    F: Fn(usize) -> T + Sync,
    T: Send + 'scope,
{
    // SAFETY: plain libc calls on properly initialized sigset_t values of this thread.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut previous: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut previous);
        let handles = (0..count).map(|i| scope.spawn(move || work(i))).collect();
        libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut());
        handles
    }
}
