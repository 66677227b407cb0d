//! Group commit: the store writes that acknowledge something (a message
//! accepted from the API, an envelope received, a receipt recorded) queue
//! here, and one blocking worker runs all that are waiting under a single
//! SQLite commit ([`Store::in_one_commit`]), so a burst of N such writes
//! costs one fsync instead of N.
//!
//! Durability is unchanged: a job's result reaches its caller only after the
//! shared commit returned, together with whether it succeeded, so nothing is
//! acknowledged before it is on disk. A job whose own write fails is undone
//! alone (its savepoint); a failed shared commit fails every job in it.
//!
//! With `delivery.group_commit = false` the worker runs the queued jobs one
//! at a time, each write committing on its own (the behaviour before group
//! commit, kept to measure against).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use peercomm_store::{Store, StoreError};
use tokio::sync::oneshot;

use crate::stats::{add, bump, Stats};

/// Most jobs under one commit: bounds how long the store stays locked and
/// how long the first job of a burst waits for the last.
pub(crate) const MAX_JOBS_PER_COMMIT: usize = 256;

/// One queued job: its writes, returning what to hand back once the
/// commit's outcome is known.
type Job = Box<dyn FnOnce(&mut Store) -> Finish + Send>;
/// Hands a job's result back, told whether its writes are durable.
type Finish = Box<dyn FnOnce(Result<(), String>) + Send>;

/// The queue of writes waiting for the next shared commit.
pub(crate) struct Committer {
    store: Arc<Mutex<Store>>,
    stats: Arc<Stats>,
    grouped: bool,
    queue: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    jobs: Vec<Job>,
    /// Whether a worker is draining the queue (at most one is).
    draining: bool,
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committer")
            .field("grouped", &self.grouped)
            .finish_non_exhaustive()
    }
}

/// A job's result, and whether its writes were committed.
#[derive(Debug)]
pub(crate) struct Committed<T> {
    /// What the job returned.
    pub(crate) value: T,
    /// `Err` (the database's message) when the shared commit failed and the
    /// job's writes were rolled back.
    pub(crate) durable: Result<(), String>,
}

impl<T> Committed<T> {
    /// The value if its writes are durable, else the commit failure as a
    /// store error.
    pub(crate) fn into_result(self) -> Result<T, StoreError> {
        match self.durable {
            Ok(()) => Ok(self.value),
            Err(reason) => Err(StoreError::CommitFailed { reason }),
        }
    }
}

/// The job panicked (a bug); its writes were undone.
#[derive(Debug)]
pub(crate) struct JobLost;

impl Committer {
    /// A committer for `store`; `grouped` false commits each job on its own.
    pub(crate) fn new(store: Arc<Mutex<Store>>, stats: Arc<Stats>, grouped: bool) -> Arc<Self> {
        Arc::new(Self {
            store,
            stats,
            grouped,
            queue: Mutex::new(Queue::default()),
        })
    }

    /// Runs `write` with the store in the next shared commit, and returns
    /// its value once that commit's outcome is known.
    pub(crate) async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        write: impl FnOnce(&mut Store) -> T + Send + 'static,
    ) -> Result<Committed<T>, JobLost> {
        let (tx, rx) = oneshot::channel();
        self.submit(Box::new(move |store| {
            let value = write(store);
            Box::new(move |durable| {
                let _ = tx.send(Committed { value, durable });
            })
        }));
        rx.await.map_err(|_| JobLost)
    }

    fn submit(self: &Arc<Self>, job: Job) {
        let start = {
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.jobs.push(job);
            !std::mem::replace(&mut q.draining, true)
        };
        if start {
            let this = self.clone();
            tokio::task::spawn_blocking(move || this.drain());
        }
    }

    /// Takes what is queued, runs it under one commit, hands back the
    /// results; again until the queue is empty.
    fn drain(&self) {
        loop {
            let jobs = {
                let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                if q.jobs.is_empty() {
                    q.draining = false;
                    return;
                }
                let n = q.jobs.len().min(MAX_JOBS_PER_COMMIT);
                q.jobs.drain(..n).collect::<Vec<_>>()
            };
            let n = jobs.len() as u64;
            let (finishes, durable) = {
                let mut store = self.store.lock().unwrap_or_else(|p| p.into_inner());
                if self.grouped && n > 1 {
                    let (finishes, outcome) = store.in_one_commit(|s| run_jobs(jobs, s));
                    (finishes, outcome.map_err(|e| e.to_string()))
                } else {
                    (run_jobs(jobs, &mut store), Ok(()))
                }
            };
            // Ungrouped, every job committed on its own.
            let commits = if self.grouped && n > 1 { 1 } else { n };
            add(&self.stats.store_commit_rounds, commits);
            add(&self.stats.store_commit_jobs, n);
            if let Err(e) = &durable {
                bump(&self.stats.store_commit_failures);
                tracing::warn!("a shared commit of {n} writes failed: {e}");
            }
            for finish in finishes {
                finish(durable.clone());
            }
        }
    }
}

/// Runs each job's writes; a job that panics is dropped (its caller sees
/// [`JobLost`]) and the others go on.
fn run_jobs(jobs: Vec<Job>, store: &mut Store) -> Vec<Finish> {
    jobs.into_iter()
        .filter_map(|job| match catch_unwind(AssertUnwindSafe(|| job(store))) {
            Ok(finish) => Some(finish),
            Err(_) => {
                tracing::error!("a store job panicked; its writes were undone");
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use peercomm_store::{NewOutgoing, Route};

    fn outgoing(n: u8) -> NewOutgoing {
        NewOutgoing {
            id: [n; 16],
            recipient: "bob".into(),
            body: vec![n],
            priority: 3,
            kind: 1,
            created_ms: 10,
            expires_ms: 1_000,
            route: Route::Auto,
        }
    }

    fn committer(grouped: bool) -> (Arc<Committer>, Arc<Stats>, Arc<Mutex<Store>>) {
        let store = Arc::new(Mutex::new(Store::open_in_memory().unwrap()));
        let stats = Arc::new(Stats::default());
        (
            Committer::new(store.clone(), stats.clone(), grouped),
            stats,
            store,
        )
    }

    /// Holds the store on a blocking thread for 300 ms, so that jobs queued
    /// meanwhile wait together; returns once it is held.
    async fn hold(store: &Arc<Mutex<Store>>) -> tokio::task::JoinHandle<()> {
        let store = store.clone();
        let (held_tx, held_rx) = oneshot::channel();
        let holder = tokio::task::spawn_blocking(move || {
            let _guard = store.lock().unwrap();
            let _ = held_tx.send(());
            std::thread::sleep(std::time::Duration::from_millis(300));
        });
        held_rx.await.unwrap();
        holder
    }

    /// Queues 100 inserts at once (one of them a duplicate) while the store
    /// is held, so they wait together; returns each job's outcome.
    async fn burst(c: &Arc<Committer>, store: &Arc<Mutex<Store>>) -> Vec<Result<(), String>> {
        let holder = hold(store).await;
        let jobs: Vec<_> = (0..100u8)
            .map(|i| {
                let n = if i == 50 { 0 } else { i };
                let c = c.clone();
                tokio::spawn(async move {
                    c.run(move |s| s.insert_outgoing(&outgoing(n)))
                        .await
                        .unwrap()
                        .into_result()
                        .and_then(|r| r)
                        .map_err(|e| e.to_string())
                })
            })
            .collect();
        holder.await.unwrap();
        let mut out = Vec::new();
        for j in jobs {
            out.push(j.await.unwrap());
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_shares_few_commits_and_a_failed_write_fails_alone() {
        let (c, stats, store) = committer(true);
        let results = burst(&c, &store).await;
        let failed: Vec<_> = results.iter().filter(|r| r.is_err()).collect();
        assert_eq!(failed.len(), 1, "only the duplicate fails: {failed:?}");
        assert!(failed[0]
            .as_ref()
            .unwrap_err()
            .contains("already in the outbox"));
        assert_eq!(
            store.lock().unwrap().counts().unwrap().outgoing["queued"],
            99
        );
        let rounds = stats
            .store_commit_rounds
            .load(std::sync::atomic::Ordering::Relaxed);
        let jobs = stats
            .store_commit_jobs
            .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(jobs, 100);
        // The first job may run alone before the rest queue; the rest wait
        // for the held store and go in together.
        assert!(rounds <= 3, "{rounds} commits for 100 writes");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ungrouped_jobs_each_commit_alone_with_the_same_results() {
        let (c, stats, store) = committer(false);
        let results = burst(&c, &store).await;
        assert_eq!(results.iter().filter(|r| r.is_err()).count(), 1);
        assert_eq!(
            store.lock().unwrap().counts().unwrap().outgoing["queued"],
            99
        );
        let jobs = stats
            .store_commit_jobs
            .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(jobs, 100);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_shared_commit_fails_every_job_in_it_and_a_panic_loses_one() {
        let (c, stats, store) = committer(true);
        let holder = hold(&store).await;
        let good = {
            let c = c.clone();
            tokio::spawn(async move { c.run(|s| s.insert_outgoing(&outgoing(1))).await })
        };
        let poison = {
            let c = c.clone();
            tokio::spawn(async move {
                c.run(|s| {
                    // Checked only at COMMIT: the write succeeds, the commit fails.
                    s.connection()
                        .execute_batch(
                            "PRAGMA defer_foreign_keys = ON; \
                             INSERT INTO receipts (message_id, recipient, received_ms, signed) \
                             VALUES (x'09090909090909090909090909090909', 'bob', 1, x'00');",
                        )
                        .unwrap();
                })
                .await
            })
        };
        let panics = {
            let c = c.clone();
            tokio::spawn(async move { c.run(|_| -> () { panic!("a bug") }).await })
        };
        holder.await.unwrap();
        let good = good.await.unwrap().unwrap();
        let poison = poison.await.unwrap().unwrap();
        assert!(panics.await.unwrap().is_err(), "the panicking job is lost");
        // Whether or not the first job ran alone, the poison's commit failed.
        assert!(poison.durable.is_err());
        let err = poison.into_result().unwrap_err().to_string();
        assert!(err.contains("FOREIGN KEY"), "{err}");
        let kept = store.lock().unwrap().get_outgoing(&[1; 16]).unwrap();
        assert_eq!(kept.is_some(), good.durable.is_ok(), "told the truth");
        assert!(
            stats
                .store_commit_failures
                .load(std::sync::atomic::Ordering::Relaxed)
                >= 1
        );
        // The committer works on.
        let after = c.run(|s| s.insert_outgoing(&outgoing(2))).await.unwrap();
        after.into_result().unwrap().unwrap();
    }
}
