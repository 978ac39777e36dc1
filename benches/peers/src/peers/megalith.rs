//! Megalith through its public API: `insert` / `insert_trusted` in batches,
//! `query_with` writing each hit's JSON straight from the stored bytes, `count`.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use megalith::{Durability, Event, EventId, EventStore, Filter, InsertOutcome, Pubkey};

use super::{Config, DurabilityClass, Ingested, Peer, run_batches};
use crate::dataset::Dataset;
use crate::workload::{NOTE, Query, REACTION};

pub fn how_driven(config: &Config) -> String {
    format!(
        "`EventStore::insert` (id and signature checked inside) for W1, `insert_trusted` for W1b, \
         batches of {} from {} writer thread(s), `{}`, NIP-50 search index {}; default \
         options otherwise (shards, checkpoints); queries via `query_with` + \
         `EventRef::write_json`, W6 via `count`",
        config.batch,
        config.writers,
        durability_name(config.durability),
        if config.megalith_search { "on" } else { "off" }
    )
}

fn durability(class: DurabilityClass) -> Durability {
    match class {
        DurabilityClass::Always => Durability::Always,
        DurabilityClass::Relaxed => Durability::Batch(Duration::from_secs(1)),
    }
}

fn durability_name(class: DurabilityClass) -> &'static str {
    match class {
        DurabilityClass::Always => "Durability::Always (one fsync per group commit)",
        DurabilityClass::Relaxed => "Durability::Batch(1 s)",
    }
}

pub struct MegalithPeer {
    store: EventStore,
    config: Config,
}

impl MegalithPeer {
    pub fn open(dir: &Path, config: &Config) -> anyhow::Result<MegalithPeer> {
        let store = EventStore::builder(dir)
            .durability(durability(config.durability))
            .search(config.megalith_search)
            .open()
            .with_context(|| format!("cannot open Megalith at {}", dir.display()))?;
        Ok(MegalithPeer {
            store,
            config: config.clone(),
        })
    }
}

impl Peer for MegalithPeer {
    fn ingest(&mut self, data: &Dataset, verify: bool) -> anyhow::Result<Ingested> {
        let store = &self.store;
        run_batches(
            data.len(),
            self.config.batch,
            self.config.writers,
            |range| {
                let mut invalid = 0;
                let events: Vec<Event> = data.events[range]
                    .iter()
                    .filter_map(|json| match Event::from_json(json) {
                        Ok(event) => Some(event),
                        Err(_) => {
                            invalid += 1;
                            None
                        }
                    })
                    .collect();
                let outcomes = if verify {
                    store.insert(&events)?
                } else {
                    store.insert_trusted(&events)?
                };
                let stored = outcomes
                    .iter()
                    .filter(|o| matches!(o, InsertOutcome::Stored | InsertOutcome::Replaced { .. }))
                    .count() as u64;
                Ok(Ingested {
                    stored,
                    refused: outcomes.len() as u64 - stored,
                    invalid,
                })
            },
        )
    }

    fn query(&mut self, query: &Query<'_>, out: &mut Vec<u8>) -> anyhow::Result<u64> {
        let filter = match *query {
            Query::Id(id) => Filter::new().ids([EventId(*id)]),
            Query::AuthorFeed { author, limit } => Filter::new()
                .authors([Pubkey(*author)])
                .kinds([NOTE])
                .limit(limit),
            Query::FollowFeed {
                authors,
                limit,
                until,
            } => {
                let filter = Filter::new()
                    .authors(authors.iter().map(|a| Pubkey(*a)))
                    .kinds([NOTE])
                    .limit(limit);
                match until {
                    Some(until) => filter.until(until),
                    None => filter,
                }
            }
            Query::Reactions(target) | Query::CountReactions(target) => Filter::new()
                .tag('e', [hex::encode(target)])
                .kinds([REACTION]),
        };
        if let Query::CountReactions(_) = query {
            return Ok(self.store.count(&[filter])?);
        }
        let n = self.store.query_with(&[filter], |event| {
            event.write_json(out);
            out.push(b'\n');
            Ok(())
        })?;
        Ok(n as u64)
    }

    fn close(self: Box<Self>) -> anyhow::Result<()> {
        Ok(self.store.close()?)
    }
}
