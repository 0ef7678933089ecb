//! Sharing one request among the callers that want the same answer.
//!
//! Scalers that name the same query tick independently; when their fetches
//! fall into the same evaluation second they want the same answer. The first
//! caller runs the request; callers that arrive while it is in flight wait
//! for it, and callers that arrive shortly after it finished take its result.
//! If the first caller is cancelled mid-request (its tick was abandoned), the
//! next waiter runs the request instead (`tokio::sync::OnceCell` semantics).
//!
//! Entries live briefly: a finished one for `finished_ttl` after it
//! finished, an unfinished one (its caller gone, nobody waiting) for
//! `abandoned_after` after it was created. The map holds at most
//! `max_entries`; past that, new keys run uncached rather than evicting
//! requests others may be waiting on.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::OnceCell;
use tokio::time::Instant;

/// Coalesces concurrent and near-simultaneous runs of the same key.
#[derive(Debug)]
pub(crate) struct Coalescer<K, V> {
    entries: Mutex<HashMap<K, Entry<V>>>,
    finished_ttl: Duration,
    abandoned_after: Duration,
    max_entries: usize,
}

#[derive(Debug)]
struct Entry<V> {
    created: Instant,
    /// The result and when it was ready.
    cell: Arc<OnceCell<(V, Instant)>>,
}

impl<K: Eq + Hash + Clone, V: Clone> Coalescer<K, V> {
    /// A coalescer keeping finished results for `finished_ttl` and giving up
    /// on unfinished entries after `abandoned_after`.
    pub(crate) fn new(
        finished_ttl: Duration,
        abandoned_after: Duration,
        max_entries: usize,
    ) -> Self {
        Coalescer {
            entries: Mutex::new(HashMap::new()),
            finished_ttl,
            abandoned_after,
            max_entries,
        }
    }

    /// The result for `key`: shared with a run in flight or just finished,
    /// or from running `run` now.
    pub(crate) async fn run<F, Fut>(&self, key: K, run: F) -> V
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V>,
    {
        // The lock is released before any await: `None` means the map is
        // full and this key runs uncached.
        let cell = {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let live = entries
                .get(&key)
                .filter(|e| self.is_live(e, now))
                .map(|e| e.cell.clone());
            live.or_else(|| {
                self.purge(&mut entries, now);
                (entries.len() < self.max_entries).then(|| {
                    let cell = Arc::new(OnceCell::new());
                    entries.insert(
                        key,
                        Entry {
                            created: now,
                            cell: cell.clone(),
                        },
                    );
                    cell
                })
            })
        };
        let Some(cell) = cell else {
            return run().await;
        };
        let (value, _) = cell
            .get_or_init(|| async { (run().await, Instant::now()) })
            .await;
        value.clone()
    }

    /// How many entries are held (finished or not).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn is_live(&self, entry: &Entry<V>, now: Instant) -> bool {
        match entry.cell.get() {
            Some((_, finished)) => now.duration_since(*finished) <= self.finished_ttl,
            None => now.duration_since(entry.created) <= self.abandoned_after,
        }
    }

    fn purge(&self, entries: &mut HashMap<K, Entry<V>>, now: Instant) {
        entries.retain(|_, entry| self.is_live(entry, now));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn coalescer() -> Coalescer<&'static str, usize> {
        Coalescer::new(Duration::from_secs(1), Duration::from_secs(10), 3)
    }

    /// A run that counts how often it really ran and takes `delay`.
    async fn counted(runs: &AtomicUsize, delay: Duration) -> usize {
        let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
        tokio::time::sleep(delay).await;
        n
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_one_run() {
        let c = coalescer();
        let runs = AtomicUsize::new(0);
        let results = futures_join(&c, &runs, "q", 10).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(results.iter().all(|&r| r == 1));
    }

    async fn futures_join(
        c: &Coalescer<&'static str, usize>,
        runs: &AtomicUsize,
        key: &'static str,
        n: usize,
    ) -> Vec<usize> {
        let mut set = Vec::new();
        for _ in 0..n {
            set.push(c.run(key, || counted(runs, Duration::from_millis(200))));
        }
        let mut out = Vec::new();
        // Poll them all together, as concurrent scalers would.
        let joined = tokio_join_all(set).await;
        out.extend(joined);
        out
    }

    async fn tokio_join_all<F: Future<Output = usize>>(futs: Vec<F>) -> Vec<usize> {
        let mut pinned: Vec<_> = futs.into_iter().map(Box::pin).collect();
        let mut results = vec![None; pinned.len()];
        std::future::poll_fn(|cx| {
            let mut pending = false;
            for (i, f) in pinned.iter_mut().enumerate() {
                if results[i].is_none() {
                    match f.as_mut().poll(cx) {
                        std::task::Poll::Ready(v) => results[i] = Some(v),
                        std::task::Poll::Pending => pending = true,
                    }
                }
            }
            if pending {
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(())
            }
        })
        .await;
        results.into_iter().map(Option::unwrap).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn finished_result_is_reused_briefly_then_expires() {
        let c = coalescer();
        let runs = AtomicUsize::new(0);
        let d = Duration::from_millis(10);
        assert_eq!(c.run("q", || counted(&runs, d)).await, 1);
        tokio::time::advance(Duration::from_millis(900)).await;
        assert_eq!(c.run("q", || counted(&runs, d)).await, 1, "within the ttl");
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(c.run("q", || counted(&runs, d)).await, 2, "after the ttl");
        assert_eq!(c.run("other", || counted(&runs, d)).await, 3, "other key");
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_first_caller_hands_over_to_the_next() {
        let c = coalescer();
        let runs = AtomicUsize::new(0);
        let first = c.run("q", || counted(&runs, Duration::from_secs(5)));
        // The first caller gives up after 100 ms (its tick was abandoned).
        assert!(
            tokio::time::timeout(Duration::from_millis(100), first)
                .await
                .is_err()
        );
        let second = c
            .run("q", || counted(&runs, Duration::from_millis(10)))
            .await;
        assert_eq!(second, 2, "the second caller ran the request itself");
    }

    #[tokio::test(start_paused = true)]
    async fn size_is_bounded_and_expired_entries_are_purged() {
        let c = coalescer();
        let runs = AtomicUsize::new(0);
        let d = Duration::from_millis(1);
        for key in ["a", "b", "c"] {
            c.run(key, || counted(&runs, d)).await;
        }
        assert_eq!(c.len(), 3);
        // Full: a new key runs without being cached, so it runs again next time.
        c.run("d", || counted(&runs, d)).await;
        c.run("d", || counted(&runs, d)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 5);
        assert_eq!(c.len(), 3);
        // Once the others expired, inserting purges them.
        tokio::time::advance(Duration::from_secs(2)).await;
        c.run("d", || counted(&runs, d)).await;
        assert_eq!(c.len(), 1);
    }
}
