//! The generator: drafts events one after another (ids in order, since later events name
//! earlier ids), signs them on one thread or several, and answers questions about what it
//! generated.
//!
//! An event's id does not depend on its signature, and signing is deterministic (BIP-340
//! without auxiliary randomness), so signing a batch of drafts in parallel gives exactly the
//! events signing them one by one would.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, mpsc};

use super::config::GenConfig;
use super::history::{History, Posted, RECENT_NOTES};
use super::rng::{Rng, Zipf, splitmix64};
use super::text::TOPICS;
use crate::event::{Event, EventId, Keys, KindClass, Pubkey, Signature};

/// Counts of what a [`Generator`] has produced so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GenStats {
    /// Events generated.
    pub events: u64,
    /// Events generated, by kind.
    pub by_kind: BTreeMap<u16, u64>,
    /// Replaceable and addressable events that are newer versions of one generated earlier;
    /// each removes its predecessor when the stream is inserted.
    pub replacements: u64,
    /// Events a later kind 5 of the stream deletes (notes by `e`, videos by `e` and `a`).
    pub deleted: u64,
}

impl GenStats {
    /// How many events a store holds after inserting the whole stream into an empty store:
    /// every event, less the replaced versions and the deleted events.
    pub fn expected_stored(&self) -> u64 {
        self.events - self.replacements - self.deleted
    }
}

/// Events per unit of work handed to a signing thread by [`Generator::batch`].
const SIGNING_CHUNK: usize = 256;

/// An event drafted with its id but not yet its signature, and the index of its author.
#[derive(Debug)]
pub(super) struct Draft {
    pub(super) author: u32,
    pub(super) event: Event,
}

/// A seeded, deterministic stream of signed Nostr events with a realistic mix (see the
/// [module documentation](super)). Also an endless [`Iterator`] of events.
#[derive(Debug)]
pub struct Generator {
    pub(super) config: GenConfig,
    pub(super) rng: Rng,
    /// Authors in activity rank order: index 0 is the most active.
    pub(super) keys: Arc<[Keys]>,
    pub(super) pubkeys: Vec<Pubkey>,
    pub(super) pubkeys_hex: Vec<String>,
    pub(super) author_index: HashMap<Pubkey, u32>,
    pub(super) activity: Zipf,
    /// Who updates profiles, contact lists and relay lists: a flatter Zipf law.
    pub(super) upkeep: Zipf,
    pub(super) topics: Zipf,
    /// `created_at` of the event being drafted (a backdated root note excepted); never
    /// decreases, and no event drafted so far is newer.
    pub(super) clock: u64,
    pub(super) history: History,
    pub(super) stats: GenStats,
    /// What relay lists and hints name: `config.relays`, or the public list.
    pub(super) relays: Vec<String>,
}

impl Generator {
    /// A generator for `config`. Derives every author's key (about 20 µs each). Panics if
    /// `config.authors` is 0.
    pub fn new(config: GenConfig) -> Generator {
        assert!(config.authors > 0, "GenConfig::authors must be at least 1");
        let mut key_seeds = config.seed ^ 0x6b65_7973_5f66_6f72; // "keys_for"
        let keys: Arc<[Keys]> = (0..config.authors)
            .map(|_| Keys::from_seed(splitmix64(&mut key_seeds)))
            .collect();
        let pubkeys: Vec<Pubkey> = keys.iter().map(Keys::pubkey).collect();
        let pubkeys_hex = pubkeys.iter().map(Pubkey::to_hex).collect();
        let author_index = pubkeys
            .iter()
            .enumerate()
            .map(|(i, pubkey)| (*pubkey, i as u32))
            .collect();
        let relays = match &config.relays {
            Some(relays) if !relays.is_empty() => relays.clone(),
            _ => super::text::RELAYS
                .iter()
                .map(|r| (*r).to_owned())
                .collect(),
        };
        Generator {
            relays,
            rng: Rng::new(config.seed),
            activity: Zipf::new(config.authors, config.zipf_exponent),
            upkeep: Zipf::new(config.authors, config.zipf_exponent / 2.0),
            topics: Zipf::new(TOPICS.len(), 1.0),
            clock: config.start_time,
            history: History::new(config.authors),
            stats: GenStats::default(),
            keys,
            pubkeys,
            pubkeys_hex,
            author_index,
            config,
        }
    }

    /// The settings this generator was made with.
    pub fn config(&self) -> &GenConfig {
        &self.config
    }

    /// The next event, signed on the calling thread.
    pub fn next_event(&mut self) -> Event {
        let mut draft = self.draft();
        draft.event.sig = self.keys[draft.author as usize].sign_id(&draft.event.id);
        draft.event
    }

    /// The next `count` events, signed on `threads` threads (at least one): exactly the
    /// events `count` calls of [`Generator::next_event`] return. With more than one thread,
    /// this thread drafts chunks of events while the others sign the chunks drafted before.
    pub fn batch(&mut self, count: usize, threads: usize) -> Vec<Event> {
        if threads <= 1 || count <= SIGNING_CHUNK {
            return (0..count).map(|_| self.next_event()).collect();
        }
        let keys = Arc::clone(&self.keys);
        let (done_tx, done_rx) = mpsc::channel::<(usize, Vec<Event>)>();
        std::thread::scope(|scope| {
            // One queue per signer, chunks dealt round-robin: equal chunks keep them even.
            let queues: Vec<mpsc::SyncSender<(usize, Vec<Draft>)>> = (0..threads)
                .map(|_| {
                    let (work_tx, work_rx) = mpsc::sync_channel::<(usize, Vec<Draft>)>(2);
                    let done_tx = done_tx.clone();
                    let keys = &keys;
                    scope.spawn(move || {
                        for (chunk, drafts) in work_rx {
                            let events = drafts
                                .into_iter()
                                .map(|mut draft| {
                                    draft.event.sig =
                                        keys[draft.author as usize].sign_id(&draft.event.id);
                                    draft.event
                                })
                                .collect();
                            if done_tx.send((chunk, events)).is_err() {
                                break;
                            }
                        }
                    });
                    work_tx
                })
                .collect();
            let mut drafted = 0;
            let mut chunk = 0;
            while drafted < count {
                let size = SIGNING_CHUNK.min(count - drafted);
                let drafts: Vec<Draft> = (0..size).map(|_| self.draft()).collect();
                // A send fails only if that signer died; the scope then re-raises its panic.
                if queues[chunk % threads].send((chunk, drafts)).is_err() {
                    break;
                }
                drafted += size;
                chunk += 1;
            }
        });
        drop(done_tx);
        let mut chunks: Vec<(usize, Vec<Event>)> = done_rx.into_iter().collect();
        chunks.sort_unstable_by_key(|(chunk, _)| *chunk);
        chunks.into_iter().flat_map(|(_, events)| events).collect()
    }

    /// Every author's public key, most active first (the order of the Zipf ranks).
    pub fn pubkeys(&self) -> &[Pubkey] {
        &self.pubkeys
    }

    /// Every author's keys, in the order of [`Generator::pubkeys`].
    pub fn keys(&self) -> &[Keys] {
        &self.keys
    }

    /// Each author with the number of events they wrote so far, most first (ties in rank
    /// order).
    pub fn authors_by_activity(&self) -> Vec<(Pubkey, u64)> {
        let mut authors: Vec<(Pubkey, u64)> = self
            .pubkeys
            .iter()
            .zip(&self.history.authors)
            .map(|(pubkey, state)| (*pubkey, state.events))
            .collect();
        authors.sort_by_key(|(_, events)| std::cmp::Reverse(*events));
        authors
    }

    /// The accounts `author` follows as of their latest contact list (kind 3), in tag order;
    /// None if they have published none or are not one of this generator's authors.
    pub fn follows(&self, author: &Pubkey) -> Option<Vec<Pubkey>> {
        let state = &self.history.authors[*self.author_index.get(author)? as usize];
        state.replaceable_at[1]?;
        Some(
            state
                .follows
                .iter()
                .map(|&i| self.pubkeys[i as usize])
                .collect(),
        )
    }

    /// Counts of what has been generated so far.
    pub fn stats(&self) -> &GenStats {
        &self.stats
    }

    /// Moves the clock on before every event but the first: three events in four share the
    /// previous one's second, so there are about 2.7 events per second.
    pub(super) fn tick(&mut self) {
        if self.stats.events == 0 {
            return;
        }
        self.clock += match self.rng.below(100) {
            0..75 => 0,
            75..95 => 1,
            _ => self.rng.between(2, 5),
        };
    }

    /// A Zipf-drawn author: who writes notes, reacts, reposts and comments.
    pub(super) fn active_author(&mut self) -> u32 {
        self.activity.sample(&mut self.rng) as u32
    }

    /// Who publishes a profile, contact list or relay list: everyone has one, and active
    /// users update theirs more often, with half the skew of [`Generator::active_author`].
    pub(super) fn upkeep_author(&mut self) -> u32 {
        self.upkeep.sample(&mut self.rng) as u32
    }

    /// The time for a new version of `author`'s replaceable `slot`: the clock, or one second
    /// after the previous version so that every update replaces it (the clock moves on to
    /// it). Also says whether there was a previous version.
    pub(super) fn replaceable_time(&mut self, author: u32, slot: usize) -> (u64, bool) {
        let previous = &mut self.history.authors[author as usize].replaceable_at[slot];
        let replaces = previous.is_some();
        let at = previous.map_or(self.clock, |before| self.clock.max(before + 1));
        *previous = Some(at);
        self.clock = at;
        (at, replaces)
    }

    /// Computes the id, counts the event, and remembers it if it is regular.
    pub(super) fn finish(
        &mut self,
        author: u32,
        created_at: u64,
        kind: u16,
        tags: Vec<Vec<String>>,
        content: String,
    ) -> Draft {
        let mut event = Event {
            id: EventId([0; 32]),
            pubkey: self.pubkeys[author as usize],
            created_at,
            kind,
            tags,
            content,
            sig: Signature([0; 64]),
        };
        event.id = event.compute_id();
        self.stats.events += 1;
        *self.stats.by_kind.entry(kind).or_default() += 1;
        self.history.authors[author as usize].events += 1;
        if KindClass::of(kind) == KindClass::Regular {
            self.history.posted.push(Posted {
                id: event.id,
                author,
                kind,
                deleted: false,
            });
        }
        Draft { author, event }
    }

    /// Remembers a just-finished note (the last entry of `posted`) with its thread root and
    /// the note it replies to.
    pub(super) fn remember_note(&mut self, draft: &Draft, root: Option<u32>, parent: Option<u32>) {
        let index = self.history.notes.len() as u32;
        self.history.notes.push(super::history::Note {
            posted: self.history.posted.len() as u32 - 1,
            root: root.unwrap_or(index),
            reactions: 0,
        });
        self.history.authors[draft.author as usize]
            .notes
            .push(index);
        if self.history.recent_notes.len() == RECENT_NOTES {
            self.history.recent_notes.pop_front();
        }
        self.history
            .recent_notes
            .push_back((index, draft.event.clone()));
        self.history.posted_note(index);
        if let Some(parent) = parent {
            self.history.engaged_with(parent);
        }
    }
}

impl Iterator for Generator {
    type Item = Event;

    /// Never ends.
    fn next(&mut self) -> Option<Event> {
        Some(self.next_event())
    }
}
