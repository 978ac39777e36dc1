//! nostrdb (the damus crate). It ingests asynchronously: `process_client_event`
//! copies the `["EVENT", {...}]` message into a queue of its ingester threads
//! (which parse and, unless told not to, verify), and a single writer thread
//! commits to LMDB. The harness counts an event as ingested when a
//! subscription over the dataset's kinds reports it written, which nostrdb
//! does after the write transaction commits.

use std::ffi::{c_char, c_int, c_void};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use nostrdb::{Config as NdbConfig, Filter, Ndb, Note, Transaction};

use super::{Config, Ingested, Peer};
use crate::dataset::Dataset;
use crate::workload::{NOTE, Query, REACTION};

// nostrdb.h: the flags `ndb_config.flags` takes.
const NDB_FLAG_NO_FULLTEXT: i32 = 1 << 2;
const NDB_FLAG_NO_NOTE_BLOCKS: i32 = 1 << 3;
const NDB_FLAG_NO_STATS: i32 = 1 << 4;

/// Events handed over but not yet reported written. Half of the writer
/// thread's inbox (32,768): nostrdb drops notes silently when that inbox is
/// full, so the harness never lets it fill.
const IN_FLIGHT: u64 = 16_384;
/// How long ingest waits without a single event written before it gives up
/// (events nostrdb refused, e.g. a bad signature, are never reported).
const STALL: Duration = Duration::from_secs(10);

unsafe extern "C" {
    /// nostrdb.h: writes the note's NIP-01 JSON and a NUL into `buf`;
    /// returns the bytes written including the NUL, 0 if `buflen` is too small.
    fn ndb_note_json(note: *mut c_void, buf: *mut c_char, buflen: c_int) -> c_int;
}

pub fn how_driven(config: &Config) -> String {
    format!(
        "`Ndb::new` with default config ({} ingester threads = cores, 32 GiB map){}; W1 with \
         signature verification on, W1b with `skip_validation(true)`; one feeder thread passes \
         each `[\"EVENT\",{{...}}]` to `process_client_event` (retrying while its queue is \
         full) and keeps at most {IN_FLIGHT} events in flight; ingest ends when a subscription \
         has reported every event written; LMDB's default sync commit (fsync per writer \
         transaction) whatever the durability class; queries via `Ndb::query` / \
         `get_note_by_id` in a fresh `Transaction`, JSON by `ndb_note_json` into a reused \
         buffer; W6 counts the results of the W5 query (capacity {}). Its `until` leaves out \
         events at exactly `until` (NIP-01 includes them), so its W4 pages differ from the \
         others' by the boundary event",
        available_cores(),
        if config.nostrdb_full {
            ", full-text index, note blocks and reaction stats on (nostrdb's defaults)"
        } else {
            ", full-text index, note blocks and reaction stats off (work the others do not do)"
        },
        config.unlimited_capacity
    )
}

fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub struct NostrdbPeer {
    ndb: Ndb,
    config: Config,
}

impl NostrdbPeer {
    pub fn open(dir: &Path, config: &Config, verify: bool) -> anyhow::Result<NostrdbPeer> {
        let flags = if config.nostrdb_full {
            0
        } else {
            NDB_FLAG_NO_FULLTEXT | NDB_FLAG_NO_NOTE_BLOCKS | NDB_FLAG_NO_STATS
        };
        let ndb_config = NdbConfig::new().set_flags(flags).skip_validation(!verify);
        let path = dir
            .to_str()
            .ok_or_else(|| anyhow!("nostrdb needs a UTF-8 path, not {}", dir.display()))?;
        let ndb = Ndb::new(path, &ndb_config)
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("cannot open nostrdb at {}", dir.display()))?;
        Ok(NostrdbPeer {
            ndb,
            config: config.clone(),
        })
    }
}

/// Appends `note`'s JSON and a newline to `out`.
fn write_json(note: &Note<'_>, size: usize, out: &mut Vec<u8>) -> anyhow::Result<()> {
    let mut room = size * 2 + 1024;
    loop {
        out.reserve(room);
        let spare = out.spare_capacity_mut();
        // SAFETY: `note` points into the open transaction it was read in;
        // `spare` has at least `room` writable bytes, which is what
        // `ndb_note_json` is told it may write.
        let written = unsafe {
            ndb_note_json(
                note.as_ptr() as *mut c_void,
                spare.as_mut_ptr() as *mut c_char,
                room.min(c_int::MAX as usize) as c_int,
            )
        };
        if written > 0 {
            // SAFETY: `ndb_note_json` initialized the first `written` bytes.
            unsafe { out.set_len(out.len() + written as usize) };
            if out.last() == Some(&0) {
                out.pop();
            }
            out.push(b'\n');
            return Ok(());
        }
        if room > 64 << 20 {
            bail!("nostrdb could not write a note's JSON into 64 MiB");
        }
        room *= 4;
    }
}

/// Counts the events a subscription reports written.
struct Watch<'a> {
    ndb: &'a Ndb,
    sub: nostrdb::Subscription,
    written: u64,
    last_progress: Instant,
}

impl Watch<'_> {
    /// Takes what the subscription has reported; true if anything.
    fn poll(&mut self) -> bool {
        let got = self.ndb.poll_for_notes(self.sub, 4096).len() as u64;
        if got > 0 {
            self.written += got;
            self.last_progress = Instant::now();
        }
        got > 0
    }

    /// Polls, sleeping briefly when nothing came; false once nothing has
    /// come for [`STALL`].
    fn wait(&mut self) -> bool {
        if !self.poll() {
            if self.last_progress.elapsed() > STALL {
                return false;
            }
            std::thread::sleep(Duration::from_micros(20));
        }
        true
    }
}

impl Peer for NostrdbPeer {
    fn ingest(&mut self, data: &Dataset, _verify: bool) -> anyhow::Result<Ingested> {
        let kinds = self.config.kinds.iter().map(|k| *k as u64);
        let watch = Filter::new().kinds(kinds).build();
        let sub = self
            .ndb
            .subscribe(&[watch])
            .map_err(|e| anyhow!("nostrdb subscribe failed: {e}"))?;
        let mut watch = Watch {
            ndb: &self.ndb,
            sub,
            written: 0,
            last_progress: Instant::now(),
        };
        let mut message = String::new();
        let mut submitted: u64 = 0;
        let mut stalled = false;
        'events: for json in &data.events {
            message.clear();
            message.push_str("[\"EVENT\",");
            message.push_str(json);
            message.push(']');
            loop {
                if submitted.saturating_sub(watch.written) < IN_FLIGHT
                    && watch.ndb.process_client_event(&message).is_ok()
                {
                    break;
                }
                // In flight at the limit, or an ingester queue full: wait for the writer.
                if !watch.wait() {
                    stalled = true;
                    break 'events;
                }
            }
            submitted += 1;
            if submitted.is_multiple_of(512) {
                watch.poll();
            }
        }
        while !stalled && watch.written < submitted {
            stalled = !watch.wait();
        }
        let written = watch.written;
        self.ndb
            .unsubscribe(sub)
            .map_err(|e| anyhow!("nostrdb unsubscribe failed: {e}"))?;
        let stored = written.min(data.len() as u64);
        Ok(Ingested {
            stored,
            refused: data.len() as u64 - stored,
            invalid: 0,
        })
    }

    fn query(&mut self, query: &Query<'_>, out: &mut Vec<u8>) -> anyhow::Result<u64> {
        let txn = Transaction::new(&self.ndb).map_err(|e| anyhow!("nostrdb transaction: {e}"))?;
        let (filter, capacity) = match *query {
            Query::Id(id) => {
                return match self.ndb.get_note_by_id(&txn, id) {
                    Ok(note) => {
                        write_json(&note, note.size(), out)?;
                        Ok(1)
                    }
                    Err(nostrdb::Error::NotFound) => Ok(0),
                    Err(e) => Err(anyhow!("nostrdb get_note_by_id: {e}")),
                };
            }
            Query::AuthorFeed { author, limit } => (
                Filter::new()
                    .authors([author])
                    .kinds([NOTE as u64])
                    .limit(limit as u64)
                    .build(),
                limit,
            ),
            Query::FollowFeed {
                authors,
                limit,
                until,
            } => {
                let mut filter = Filter::new()
                    .authors(authors.iter())
                    .kinds([NOTE as u64])
                    .limit(limit as u64);
                if let Some(until) = until {
                    filter = filter.until(until);
                }
                (filter.build(), limit)
            }
            Query::Reactions(target) | Query::CountReactions(target) => (
                Filter::new().event(target).kinds([REACTION as u64]).build(),
                self.config.unlimited_capacity,
            ),
        };
        let results = self
            .ndb
            .query(&txn, &[filter], capacity as i32)
            .map_err(|e| anyhow!("nostrdb query: {e}"))?;
        if let Query::CountReactions(_) = query {
            return Ok(results.len() as u64);
        }
        for result in &results {
            write_json(&result.note, result.note_size as usize, out)?;
        }
        Ok(results.len() as u64)
    }

    fn close(self: Box<Self>) -> anyhow::Result<()> {
        // `ndb_destroy` stops the ingester and writer threads and closes LMDB.
        drop(self);
        Ok(())
    }
}
