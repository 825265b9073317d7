//! CPU work on one provider answer (parsing a body of megabytes, searching it for the review,
//! anchoring what it says) kept off the async worker threads.
//!
//! Those threads also run every other job, the health server and the leader's token renewal: an
//! answer that takes them a second to read stalls all of that for a second. Large inputs are
//! read on tokio's blocking pool instead, a few at a time so that they cannot take every core
//! either; small ones are read in place, where a thread hop would cost more than the work.

use std::num::NonZero;
use std::sync::LazyLock;

use tokio::sync::Semaphore;
use tokio::task::JoinError;

/// Below this many bytes of input, the work takes well under a millisecond.
pub(crate) const INLINE_BYTES: usize = 64 * 1024;

/// One core stays for the async threads (on one core, the work and they share it).
static PERMITS: LazyLock<Semaphore> = LazyLock::new(|| {
    let cores = std::thread::available_parallelism().map_or(1, NonZero::get);
    Semaphore::new(cores.saturating_sub(1).max(1))
});

/// Runs `work`, whose cost grows with `size` bytes of input, where it stalls no other task. An
/// error means `work` panicked (or the runtime is shutting down).
pub(crate) async fn heavy<T: Send + 'static>(
    size: usize,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, JoinError> {
    if size < INLINE_BYTES {
        return Ok(work());
    }
    // The permit moves into the work, so a caller that gives up (its job abandoned) does not
    // free a place while the work still runs.
    let permit = PERMITS.acquire().await.ok();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        work()
    })
    .await
}

/// Runs `work` (cost growing with `size`) on this thread, for work that borrows and so cannot
/// move to the blocking pool: when it is large, tokio first hands this thread's other tasks to
/// the other worker threads (`block_in_place`), so they do not wait for it. On a
/// current-thread runtime (tests) it simply runs.
pub(crate) fn heavy_in_place<T>(size: usize, work: impl FnOnce() -> T) -> T {
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if size >= INLINE_BYTES && multi_thread {
        tokio::task::block_in_place(work)
    } else {
        work()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn large_work_leaves_the_async_threads_free() {
        // The work waits for a message from another task. Had it taken the only async thread,
        // that task could never run and the wait would end empty.
        let (tx, rx) = std::sync::mpsc::channel();
        let work = tokio::spawn(heavy(INLINE_BYTES, move || {
            rx.recv_timeout(Duration::from_secs(10)).is_ok()
        }));
        let _other = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            tx.send(())
        });
        assert!(work.await.unwrap().unwrap(), "another task ran while the work ran");
    }

    #[tokio::test]
    async fn a_panic_in_the_work_is_an_error_not_a_crash() {
        let result = heavy(INLINE_BYTES, || -> u8 { panic!("bad input") }).await;
        assert!(result.is_err_and(|e| e.is_panic()));
    }

    #[tokio::test]
    async fn small_work_runs_in_place() {
        let here = std::thread::current().id();
        let there = heavy(10, move || std::thread::current().id()).await.unwrap();
        assert_eq!(here, there);
    }
}
