//! Query parameters drawn from what a generator produced, for benchmarks and tests: ids that
//! a store holds after the stream is inserted, active authors, real follow lists, notes with
//! reactions and how many.
//!
//! A sampler has its own seeded stream: sampling never changes the events the generator
//! produces next, and the same generator state and seed give the same samples.

use super::generator::Generator;
use super::rng::Rng;
use crate::event::{EventId, Pubkey};

/// A kind 1 note that has reactions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReactedNote {
    /// The note's id.
    pub id: EventId,
    /// The note's author.
    pub author: Pubkey,
    /// The kind 7 events that name this note in their first `e` tag, each by a different
    /// author: what `{"kinds":[7],"#e":[id]}` counts once the stream is inserted.
    pub reactions: u32,
    /// Whether a later kind 5 of the stream deleted the note (its reactions stay stored).
    pub deleted: bool,
}

/// Draws query parameters from a [`Generator`]'s history. Made by [`Generator::sampler`].
#[derive(Debug)]
pub struct QuerySampler<'g> {
    generator: &'g Generator,
    rng: Rng,
}

impl Generator {
    /// A sampler of what this generator has produced so far, with its own `seed`.
    pub fn sampler(&self, seed: u64) -> QuerySampler<'_> {
        QuerySampler {
            generator: self,
            rng: Rng::new(seed ^ 0x7361_6d70_6c65_7221), // "sampler!"
        }
    }
}

impl QuerySampler<'_> {
    /// The id of a regular event (a note, reaction, repost, comment or deletion) that no
    /// deletion names, so a store holds it once the stream is inserted; uniform over the
    /// stream. None if there is none.
    pub fn existing_id(&mut self) -> Option<EventId> {
        let posted = &self.generator.history.posted;
        if posted.is_empty() {
            return None;
        }
        // Deleted events are at most a few percent: rejection ends fast.
        for _ in 0..64 {
            let event = &posted[self.rng.index(posted.len())];
            if !event.deleted {
                return Some(event.id);
            }
        }
        posted
            .iter()
            .find(|event| !event.deleted)
            .map(|event| event.id)
    }

    /// An author drawn by activity (Zipf) among those with notes, and how many of their kind
    /// 1 notes a store holds once the stream is inserted (deleted notes left out).
    pub fn active_author(&mut self) -> Option<(Pubkey, usize)> {
        let generator = self.generator;
        let history = &generator.history;
        let with_notes = (0..64)
            .map(|_| generator.activity.sample(&mut self.rng))
            .find(|&author| !history.authors[author].notes.is_empty())
            .or_else(|| {
                (0..history.authors.len()).max_by_key(|&author| history.authors[author].notes.len())
            })?;
        let live = history.authors[with_notes]
            .notes
            .iter()
            .filter(|&&note| !history.note_posted(note).deleted)
            .count();
        (live > 0).then(|| (generator.pubkeys[with_notes], live))
    }

    /// An author (uniform among those with a contact list of at least `min_follows`) and
    /// the accounts their latest kind 3 follows, in tag order. None if no list is that long.
    pub fn follow_list(&mut self, min_follows: usize) -> Option<(Pubkey, Vec<Pubkey>)> {
        let generator = self.generator;
        let candidates: Vec<usize> = generator
            .history
            .authors
            .iter()
            .enumerate()
            .filter(|(_, state)| state.replaceable_at[1].is_some())
            .filter(|(_, state)| state.follows.len() >= min_follows)
            .map(|(author, _)| author)
            .collect();
        let author = *candidates.get(self.rng.index(candidates.len()))?;
        let follows = generator.history.authors[author]
            .follows
            .iter()
            .map(|&followed| generator.pubkeys[followed as usize])
            .collect();
        Some((generator.pubkeys[author], follows))
    }

    /// A note with at least `min_reactions` reactions (uniform among such notes, notes that
    /// were not deleted first). None if there is none.
    pub fn reacted_note(&mut self, min_reactions: u32) -> Option<ReactedNote> {
        let history = &self.generator.history;
        let qualifies = |note: &&u32| history.notes[**note as usize].reactions >= min_reactions;
        let mut candidates: Vec<u32> = history
            .reacted_notes
            .iter()
            .filter(qualifies)
            .filter(|&&note| !history.note_posted(note).deleted)
            .copied()
            .collect();
        if candidates.is_empty() {
            candidates = history
                .reacted_notes
                .iter()
                .filter(qualifies)
                .copied()
                .collect();
        }
        let note = *candidates.get(self.rng.index(candidates.len()))?;
        let posted = history.note_posted(note);
        Some(ReactedNote {
            id: posted.id,
            author: self.generator.pubkeys[posted.author as usize],
            reactions: history.notes[note as usize].reactions,
            deleted: posted.deleted,
        })
    }

    /// The most reactions any note has.
    pub fn most_reactions(&self) -> u32 {
        let history = &self.generator.history;
        history
            .reacted_notes
            .iter()
            .map(|&note| history.notes[note as usize].reactions)
            .max()
            .unwrap_or(0)
    }
}
