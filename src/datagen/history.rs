//! What the generator remembers of the events it drafted: the targets later events point at
//! (notes, comments, videos), per-author state (notes, follows, replaceable versions), and the
//! counts query samplers need. About 60 bytes per event.

use std::collections::{HashSet, VecDeque};

use crate::event::{Event, EventId};

/// Notes kept whole (unsigned) for kind 6 reposts, which embed the reposted note's JSON.
pub(super) const RECENT_NOTES: usize = 1_024;

/// Entries of the attention window: each note enters it once when posted and
/// `ATTENTION_PER_ENGAGEMENT` times each time it is replied to, reacted to or reposted.
/// Drawing uniformly from it is preferential attachment (a Yule process) that forgets after
/// about 20,000 events: engagement decays as a note ages.
const ATTENTION_WINDOW: usize = 32_768;

/// How much more one engagement counts than being posted: high enough that attention goes
/// mostly to notes that already have it, which gives the heavy tail of real reaction counts.
const ATTENTION_PER_ENGAGEMENT: usize = 4;

/// A regular event (stored as is when inserted, unless a later deletion names it).
#[derive(Debug, Clone)]
pub(super) struct Posted {
    pub(super) id: EventId,
    pub(super) author: u32,
    pub(super) kind: u16,
    pub(super) deleted: bool,
}

/// A kind 1 note: its place in `posted`, its thread root (a note index; itself for a root
/// note) and how many reactions name it.
#[derive(Debug, Clone)]
pub(super) struct Note {
    pub(super) posted: u32,
    pub(super) root: u32,
    pub(super) reactions: u32,
}

/// A kind 1111 comment: its place in `posted` and the video at the root of its thread.
#[derive(Debug, Clone)]
pub(super) struct Comment {
    pub(super) posted: u32,
    pub(super) video: u32,
}

/// An addressable NIP-71 video (kind 34235 or 34236) and its latest version.
#[derive(Debug, Clone)]
pub(super) struct Video {
    pub(super) kind: u16,
    pub(super) author: u32,
    pub(super) d: String,
    pub(super) title: String,
    pub(super) published_at: u64,
    pub(super) latest_id: EventId,
    pub(super) latest_at: u64,
    pub(super) deleted: bool,
}

#[derive(Debug, Clone, Default)]
pub(super) struct AuthorState {
    /// Indexes into `History::notes`, oldest first.
    pub(super) notes: Vec<u32>,
    /// The current contact list, as author indexes (empty before the first kind 3).
    pub(super) follows: Vec<u32>,
    /// `created_at` of the latest version of kinds 0, 3 and 10002, in that order.
    pub(super) replaceable_at: [Option<u64>; 3],
    /// Events this author has written.
    pub(super) events: u64,
}

/// Something a reaction, repost or comment points at.
#[derive(Debug, Clone)]
pub(super) struct Target {
    pub(super) id: EventId,
    pub(super) author: u32,
    pub(super) kind: u16,
    /// `kind:pubkey:d` for an addressable target.
    pub(super) address: Option<String>,
    /// The note's index when the target is a kind 1 note.
    pub(super) note: Option<u32>,
}

#[derive(Debug, Default)]
pub(super) struct History {
    /// Every regular event, in the order drafted.
    pub(super) posted: Vec<Posted>,
    pub(super) notes: Vec<Note>,
    pub(super) comments: Vec<Comment>,
    pub(super) videos: Vec<Video>,
    /// The last `RECENT_NOTES` notes with their note index, unsigned.
    pub(super) recent_notes: VecDeque<(u32, Event)>,
    pub(super) authors: Vec<AuthorState>,
    /// (author, first 8 bytes of the target id, kind) of every reaction and repost, so that no
    /// author reacts to or reposts the same event twice (which could also repeat an id).
    pub(super) engaged: HashSet<(u32, u64, u16)>,
    /// Notes with at least one reaction, in the order of their first.
    pub(super) reacted_notes: Vec<u32>,
    /// Note indexes, recent attention first out (see `ATTENTION_WINDOW`).
    pub(super) attention: VecDeque<u32>,
}

impl History {
    pub(super) fn new(authors: usize) -> History {
        History {
            authors: vec![AuthorState::default(); authors],
            ..History::default()
        }
    }

    pub(super) fn note_posted(&self, note: u32) -> &Posted {
        &self.posted[self.notes[note as usize].posted as usize]
    }

    /// Remembers a first reaction, or one more, to `note`.
    pub(super) fn count_reaction(&mut self, note: u32) {
        let entry = &mut self.notes[note as usize];
        entry.reactions += 1;
        if entry.reactions == 1 {
            self.reacted_notes.push(note);
        }
        self.engaged_with(note);
    }

    /// `note` was just posted: it enters the attention window.
    pub(super) fn posted_note(&mut self, note: u32) {
        self.attend(note, 1);
    }

    /// `note` was replied to, reacted to or reposted: it draws more attention.
    pub(super) fn engaged_with(&mut self, note: u32) {
        self.attend(note, ATTENTION_PER_ENGAGEMENT);
    }

    fn attend(&mut self, note: u32, weight: usize) {
        for _ in 0..weight {
            if self.attention.len() == ATTENTION_WINDOW {
                self.attention.pop_front();
            }
            self.attention.push_back(note);
        }
    }

    /// Records that `author` engaged with `id` by an event of `kind`; false if it already did.
    pub(super) fn engage(&mut self, author: u32, id: &EventId, kind: u16) -> bool {
        let mut prefix = [0u8; 8];
        prefix.copy_from_slice(&id.0[..8]);
        self.engaged
            .insert((author, u64::from_le_bytes(prefix), kind))
    }
}
