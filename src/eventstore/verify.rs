//! The signature-check pool: BIP-340 checks (about 95% of the cost of
//! verifying an event) run on worker threads before events are routed to
//! their shards, so verified ingest uses every core.
//!
//! A caller queues its checks in chunks as it validates the rest of each
//! event, then helps: it runs queued chunks (its own or other callers') until
//! the queue is empty, and only then waits for the chunks workers took. A
//! pool with no workers therefore still works; the caller does everything.

use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, unbounded};

use crate::event::{Event, EventId, Pubkey, Signature, verify_schnorr};

/// Checks per queued job: large enough that queueing costs little next to
/// the checks (~30-60 µs each), small enough to spread a batch over workers.
const CHUNK: usize = 32;

/// What one signature check needs; copied, so jobs borrow nothing.
#[derive(Clone, Copy)]
struct SigCheck {
    id: EventId,
    pubkey: Pubkey,
    sig: Signature,
}

struct Job {
    /// Position of the job's first check in its batch.
    first: usize,
    checks: Vec<SigCheck>,
    reply: Sender<(usize, Vec<bool>)>,
}

impl Job {
    fn run(self) {
        let valid = self
            .checks
            .iter()
            .map(|c| verify_schnorr(&c.id, &c.pubkey, &c.sig).is_ok())
            .collect();
        // The caller may have gone (it cannot, short of a panic): nothing to do.
        let _ = self.reply.send((self.first, valid));
    }
}

/// Sets the calling thread's nice value (Linux keeps one per thread). A
/// refusal (raising priority needs privileges; lowering it never does) is
/// ignored: the thread runs as it was.
#[cfg(target_os = "linux")]
fn lower_priority(nice: i32) {
    // SAFETY: gettid and setpriority take and return plain integers; the
    // thread id is this thread's own.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, nice);
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority(_nice: i32) {}

#[derive(Debug)]
pub(crate) struct VerifyPool {
    jobs: Option<Sender<Job>>,
    queue: Receiver<Job>,
    workers: Vec<JoinHandle<()>>,
}

impl VerifyPool {
    /// Starts `workers` threads (0: callers check their own signatures) at
    /// the nice value `nice` (see `Options::verify_nice`).
    pub fn start(workers: usize, nice: i32) -> std::io::Result<VerifyPool> {
        let (jobs, queue) = unbounded::<Job>();
        let mut pool = VerifyPool {
            jobs: Some(jobs),
            queue,
            workers: Vec::with_capacity(workers),
        };
        for n in 0..workers {
            let queue = pool.queue.clone();
            let worker = std::thread::Builder::new()
                .name(format!("megalith-verify-{n}"))
                .spawn(move || {
                    if nice != 0 {
                        lower_priority(nice);
                    }
                    while let Ok(job) = queue.recv() {
                        job.run();
                    }
                })?;
            pool.workers.push(worker);
        }
        Ok(pool)
    }

    /// A batch of checks whose results come back in the order they were pushed.
    pub fn batch(&self) -> SigBatch<'_> {
        let (reply, results) = unbounded();
        SigBatch {
            pool: self,
            chunk: Vec::with_capacity(CHUNK),
            pushed: 0,
            jobs: 0,
            reply,
            results,
        }
    }

    fn submit(&self, job: Job) {
        match &self.jobs {
            Some(jobs) => {
                if let Err(unsent) = jobs.send(job) {
                    unsent.into_inner().run();
                }
            }
            None => job.run(),
        }
    }
}

impl Drop for VerifyPool {
    fn drop(&mut self) {
        // Closing the queue ends every worker's loop.
        self.jobs = None;
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

/// Signature checks of one insert call.
pub(crate) struct SigBatch<'p> {
    pool: &'p VerifyPool,
    chunk: Vec<SigCheck>,
    pushed: usize,
    jobs: usize,
    reply: Sender<(usize, Vec<bool>)>,
    results: Receiver<(usize, Vec<bool>)>,
}

impl SigBatch<'_> {
    /// Queues the check of `event`'s signature; its result is at the
    /// returned position of [`SigBatch::finish`]'s vector.
    pub fn push(&mut self, event: &Event) -> usize {
        self.chunk.push(SigCheck {
            id: event.id,
            pubkey: event.pubkey,
            sig: event.sig,
        });
        self.pushed += 1;
        if self.chunk.len() == CHUNK {
            self.flush();
        }
        self.pushed - 1
    }

    fn flush(&mut self) {
        if self.chunk.is_empty() {
            return;
        }
        let checks = std::mem::replace(&mut self.chunk, Vec::with_capacity(CHUNK));
        let first = self.pushed - checks.len();
        self.jobs += 1;
        self.pool.submit(Job {
            first,
            checks,
            reply: self.reply.clone(),
        });
    }

    /// Runs what is left, helping the workers, and returns one result per
    /// pushed check: true when the signature is valid.
    pub fn finish(mut self) -> Vec<bool> {
        if self.jobs == 0 {
            // One chunk or less: not worth a trip through the queue.
            return self
                .chunk
                .iter()
                .map(|c| verify_schnorr(&c.id, &c.pubkey, &c.sig).is_ok())
                .collect();
        }
        self.flush();
        while let Ok(job) = self.pool.queue.try_recv() {
            job.run();
        }
        let mut valid = vec![false; self.pushed];
        for _ in 0..self.jobs {
            // Every job replies exactly once, and we hold a sender ourselves,
            // so this cannot see a closed channel.
            let Ok((first, results)) = self.results.recv() else {
                break;
            };
            valid[first..first + results.len()].copy_from_slice(&results);
        }
        valid
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Keys;

    fn events(n: usize) -> Vec<Event> {
        let keys = Keys::from_seed(3);
        (0..n)
            .map(|i| {
                let mut event = keys.sign(1_700_000_000, 1, vec![], format!("note {i}"));
                if i % 7 == 3 {
                    event.sig.0[5] ^= 1;
                }
                event
            })
            .collect()
    }

    #[test]
    fn results_come_back_in_order_with_and_without_workers() {
        for workers in [0, 1, 3] {
            let pool = VerifyPool::start(workers, 0).unwrap();
            for n in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 7] {
                let events = events(n);
                let mut batch = pool.batch();
                for (i, event) in events.iter().enumerate() {
                    assert_eq!(batch.push(event), i);
                }
                let valid = batch.finish();
                let expected: Vec<bool> = (0..n).map(|i| i % 7 != 3).collect();
                assert_eq!(valid, expected, "{workers} workers, {n} events");
            }
        }
    }

    #[test]
    fn concurrent_callers_share_the_pool() {
        let pool = VerifyPool::start(2, 0).unwrap();
        let events = events(200);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..3 {
                        let mut batch = pool.batch();
                        events.iter().for_each(|e| {
                            batch.push(e);
                        });
                        let valid = batch.finish();
                        assert_eq!(valid.iter().filter(|v| !**v).count(), 29);
                    }
                });
            }
        });
    }
}
