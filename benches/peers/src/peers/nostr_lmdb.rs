//! rust-nostr's LMDB store through its `NostrDatabase` API. It has no batch
//! call: a batch is every `save_event` future of the batch polled at once,
//! which its single ingester thread drains into one LMDB write transaction.
//! It never verifies, so W1 parses and verifies with rust-nostr in the harness.

use std::path::Path;

use anyhow::{Context, anyhow};
use futures::future::join_all;
use nostr::prelude::*;
use nostr_database::{NostrDatabase, SaveEventStatus};
use nostr_lmdb::NostrLmdb;

use super::{Config, Ingested, Peer, parse_nostr_batch, run_batches};
use crate::dataset::Dataset;
use crate::workload::{NOTE, Query, REACTION};

pub fn how_driven(config: &Config) -> String {
    format!(
        "`NostrLmdb::open` defaults (32 GiB map, NIP-09/NIP-62 processing on); W1: rust-nostr \
         `Event::from_json` + `Event::verify` in the harness, W1b: `from_json` only; then \
         `save_event` for each event of a batch of {} polled together (one LMDB write \
         transaction per drain of its ingester queue), {} writer thread(s); LMDB's default \
         sync commit (fsync per transaction) whatever the durability class; queries via \
         `query` / `event_by_id` (owned `Event`s, serialized with serde_json), W6 via `count`",
        config.batch, config.writers
    )
}

pub struct NostrLmdbPeer {
    db: NostrLmdb,
    runtime: tokio::runtime::Runtime,
    config: Config,
}

impl NostrLmdbPeer {
    pub fn open(dir: &Path, config: &Config) -> anyhow::Result<NostrLmdbPeer> {
        // Its reads run on tokio's blocking pool: a runtime must exist.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let db = runtime
            .block_on(NostrLmdb::open(dir))
            .with_context(|| format!("cannot open nostr-lmdb at {}", dir.display()))?;
        Ok(NostrLmdbPeer {
            db,
            runtime,
            config: config.clone(),
        })
    }
}

fn write_json(event: &Event, out: &mut Vec<u8>) -> anyhow::Result<()> {
    serde_json::to_writer(&mut *out, event)?;
    out.push(b'\n');
    Ok(())
}

impl Peer for NostrLmdbPeer {
    fn ingest(&mut self, data: &Dataset, verify: bool) -> anyhow::Result<Ingested> {
        let (db, runtime) = (&self.db, &self.runtime);
        run_batches(
            data.len(),
            self.config.batch,
            self.config.writers,
            |range| {
                let (events, invalid) = parse_nostr_batch(data, range, verify);
                let statuses = runtime.block_on(join_all(events.iter().map(|e| db.save_event(e))));
                let mut stored = 0;
                let mut refused = 0;
                for status in statuses {
                    match status.map_err(|e| anyhow!("nostr-lmdb save_event failed: {e}"))? {
                        SaveEventStatus::Success => stored += 1,
                        SaveEventStatus::Rejected(_) => refused += 1,
                    }
                }
                Ok(Ingested {
                    stored,
                    refused,
                    invalid,
                })
            },
        )
    }

    fn query(&mut self, query: &Query<'_>, out: &mut Vec<u8>) -> anyhow::Result<u64> {
        let filter = match *query {
            Query::Id(id) => {
                let found = self
                    .runtime
                    .block_on(self.db.event_by_id(&EventId::from_byte_array(*id)))?;
                return match found {
                    Some(event) => write_json(&event, out).map(|()| 1),
                    None => Ok(0),
                };
            }
            Query::AuthorFeed { author, limit } => Filter::new()
                .author(PublicKey::from_byte_array(*author))
                .kind(Kind::from(NOTE))
                .limit(limit),
            Query::FollowFeed {
                authors,
                limit,
                until,
            } => {
                let filter = Filter::new()
                    .authors(authors.iter().map(|a| PublicKey::from_byte_array(*a)))
                    .kind(Kind::from(NOTE))
                    .limit(limit);
                match until {
                    Some(until) => filter.until(Timestamp::from_secs(until)),
                    None => filter,
                }
            }
            Query::Reactions(target) | Query::CountReactions(target) => Filter::new()
                .event(EventId::from_byte_array(*target))
                .kind(Kind::from(REACTION)),
        };
        if let Query::CountReactions(_) = query {
            return Ok(self.runtime.block_on(self.db.count(filter))? as u64);
        }
        let events = self.runtime.block_on(self.db.query(filter))?;
        // A BTreeSet ordered newest first (ties by id), as NIP-01 wants.
        for event in &events {
            write_json(event, out)?;
        }
        Ok(events.len() as u64)
    }

    fn close(self: Box<Self>) -> anyhow::Result<()> {
        let NostrLmdbPeer { db, runtime, .. } = *self;
        // Dropping the store ends its ingester thread, which closes LMDB.
        drop(db);
        runtime.shutdown_timeout(std::time::Duration::from_secs(10));
        Ok(())
    }
}
