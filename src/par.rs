//! Small concurrency helpers: a parallel map over a slice on scoped OS threads, for CPU- and
//! disk-bound work such as hashing many files (work is handed out one item at a time, so a few
//! large items do not leave the other threads idle); [`Task`], a spawned task aborted with its
//! owner; [`join_in_order`], futures run together on one task, first polled in order; and
//! [`lock`], a mutex taken even when a panic poisoned it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

/// Number of worker threads to use: the machine's available parallelism, read once per process
/// (std reads `/proc/self/cgroup` and the CPU quota's files at every call; an exec's outputs
/// are installed and promoted with this on the way to its outcome).
pub fn default_threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| {
        thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    })
}

/// Applies `f` to every item on up to `threads` threads and returns the results in input order.
pub fn map<T, R, F>(items: &[T], threads: usize, f: F) -> Vec<R>
where
    T: Sync,
    R: Send,
    F: Fn(&T) -> R + Sync,
{
    let threads = threads.clamp(1, items.len().max(1));
    if threads == 1 {
        return items.iter().map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<R>>> = Mutex::new(items.iter().map(|_| None).collect());
    thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let r = f(item);
                    lock(&results)[i] = Some(r);
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .into_iter()
        .flatten()
        .collect()
}

/// A spawned task that is aborted when dropped, so what it holds (a connection, a file) goes
/// with its owner. Awaiting it gives the task's output, or `None` when it panicked or was
/// aborted (or its output was taken already).
#[derive(Debug)]
pub struct Task<T>(Option<tokio::task::JoinHandle<T>>);

impl<T: Send + 'static> Task<T> {
    /// Spawns `fut` on the current runtime.
    pub fn spawn(fut: impl std::future::Future<Output = T> + Send + 'static) -> Self {
        Task(Some(tokio::spawn(fut)))
    }

    /// Aborts the task and waits until it is gone (it ends at its next await point), so
    /// nothing it does comes after this returns.
    pub async fn cancel(mut self) {
        if let Some(mut handle) = self.0.take() {
            handle.abort();
            let _ = (&mut handle).await;
        }
    }
}

impl<T> std::future::Future for Task<T> {
    type Output = Option<T>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        let Some(handle) = self.0.as_mut() else {
            return std::task::Poll::Ready(None);
        };
        let out = std::task::ready!(std::pin::Pin::new(handle).poll(cx));
        self.0 = None;
        std::task::Poll::Ready(out.ok())
    }
}

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        if let Some(handle) = &self.0 {
            handle.abort();
        }
    }
}

/// Runs `futs` concurrently on the current task and returns their outputs in input order. Each
/// is first polled in input order, whatever their number (unlike `join_all`, whose larger sets
/// go through `FuturesOrdered`): a future that queues work when first polled, such as a
/// publish that queues its frames on a channel, queues it in that order.
pub async fn join_in_order<F: std::future::Future>(
    futs: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    use futures_util::future::{MaybeDone, maybe_done};
    let mut all: Vec<std::pin::Pin<Box<MaybeDone<F>>>> =
        futs.into_iter().map(|f| Box::pin(maybe_done(f))).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for f in &mut all {
            done &= f.as_mut().poll(cx).is_ready();
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    all.iter_mut()
        .filter_map(|f| f.as_mut().take_output())
        .collect()
}

/// Locks `m`, taking its value even when a thread panicked while holding it. Every value kept
/// under these locks (maps, sets, lists, counters) is whole between statements, so a panic
/// elsewhere leaves nothing half changed.
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_order() {
        let v: Vec<u64> = (0..1000).collect();
        assert_eq!(
            super::map(&v, 4, |x| x * 2),
            v.iter().map(|x| x * 2).collect::<Vec<_>>()
        );
        assert!(super::map(&Vec::<u8>::new(), 4, |x| *x).is_empty());
    }

    /// 100 futures (past `join_all`'s small-set path): each is first polled in input order, and
    /// the outputs come in input order though they finish in reverse.
    #[tokio::test]
    async fn join_in_order_polls_first_in_order() {
        let first_polls = std::sync::Mutex::new(Vec::new());
        let futs = (0..100u64).map(|i| {
            let first_polls = &first_polls;
            async move {
                first_polls.lock().unwrap().push(i);
                tokio::time::sleep(std::time::Duration::from_micros(100 * (100 - i))).await;
                i * 2
            }
        });
        let out = super::join_in_order(futs).await;
        assert_eq!(out, (0..100).map(|i| i * 2).collect::<Vec<_>>());
        assert_eq!(*first_polls.lock().unwrap(), (0..100).collect::<Vec<_>>());
        assert!(
            super::join_in_order(Vec::<std::future::Ready<u8>>::new())
                .await
                .is_empty()
        );
    }
}
