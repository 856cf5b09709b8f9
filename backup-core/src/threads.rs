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
    with_all_signals_blocked(|| (0..count).map(|i| scope.spawn(move || work(i))).collect())
}

fn with_all_signals_blocked<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: plain libc calls on properly initialized sigset_t values of this thread.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut previous: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut previous);
        let r = f();
        libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut());
        r
    }
}

/// Worker threads that tell the thread waiting for them (and doing something else every so
/// often meanwhile, such as progress reports) when they end, so that it moves on at once rather
/// than at its next poll: a 200 ms poll left the CPU idle for up to 200 ms at the end of every
/// backup.
#[derive(Default)]
pub struct WorkerGroup {
    count: std::sync::Mutex<usize>,
    changed: std::sync::Condvar,
}

/// Counts its worker as ended when dropped: on return and on panic alike.
struct EndGuard<'a>(&'a WorkerGroup);

impl Drop for EndGuard<'_> {
    fn drop(&mut self) {
        *self.0.count.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.0.changed.notify_all();
    }
}

impl WorkerGroup {
    /// [`spawn_blocking_signals`], each worker counted here when it ends (returns or panics).
    pub fn spawn<'scope, 'env, F, T>(
        &'scope self,
        scope: &'scope Scope<'scope, 'env>,
        count: usize,
        work: &'scope F,
    ) -> Vec<ScopedJoinHandle<'scope, T>>
    where
        F: Fn(usize) -> T + Sync,
        T: Send + 'scope,
    {
        with_all_signals_blocked(|| {
            (0..count)
                .map(|i| {
                    scope.spawn(move || {
                        let _end = EndGuard(self);
                        work(i)
                    })
                })
                .collect()
        })
    }

    /// Wait until `workers` have ended (true) or `interval` has passed, or one more of them
    /// ended (false).
    pub fn wait_all(&self, workers: usize, interval: std::time::Duration) -> bool {
        let count = self.count.lock().unwrap_or_else(|p| p.into_inner());
        if *count >= workers {
            return true;
        }
        let before = *count;
        let (count, _) = self
            .changed
            .wait_timeout_while(count, interval, |c| *c == before)
            .unwrap_or_else(|p| p.into_inner());
        *count >= workers
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn the_waiter_wakes_when_the_last_worker_ends_even_by_panic() {
        let group = WorkerGroup::default();
        let work = |i: usize| {
            std::thread::sleep(Duration::from_millis(30 * (i as u64 + 1)));
            if i == 1 {
                panic!("worker {i} fails");
            }
        };
        std::thread::scope(|scope| {
            let handles = group.spawn(scope, 2, &work);
            let t = Instant::now();
            let mut polls = 0;
            while !group.wait_all(2, Duration::from_secs(5)) {
                polls += 1;
            }
            assert!(t.elapsed() < Duration::from_secs(2), "waited {:?} for workers that ended in 60 ms", t.elapsed());
            assert_eq!(polls, 1, "one early wake when the first worker ended");
            let panicked = handles.into_iter().map(|h| h.join().is_err()).collect::<Vec<_>>();
            assert_eq!(panicked, [false, true]);
        });
    }
}
