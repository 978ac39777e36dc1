//! A seeded, deterministic generator of realistic, really signed Nostr events, for tests,
//! benchmarks and peer comparisons (`megalith generate` writes its output as JSONL).
//!
//! The same [`GenConfig`] always gives the same events, whether signed on one thread
//! ([`Generator::next_event`], the [`Iterator`]) or several ([`Generator::batch`]). Every event
//! has a correct id and BIP-340 signature and fits the default [`Limits`](crate::Limits).
//!
//! # The mix
//!
//! | kind | share | what |
//! |---|---|---|
//! | 1 | 55% | notes: log-normal content length (median 120 bytes, shape 1.0, cut at 8 KiB); 30% are NIP-10 replies (`e` with `root`/`reply` markers and the authors' pubkeys, `p` of the parent's and root's authors); 20% carry one to three `t` hashtags (also in the text), 8% a NIP-27 `nostr:npub` mention with its `p`, 6% an image URL with an `imeta` |
//! | 7 | 20% | NIP-25 reactions: `e` (with relay hint and author), `p` and `k` of the target, `a` too for a video; 80% to notes, 15% to videos, 5% to comments; content `+` (62%), an emoji or `-`; no author reacts twice to one event |
//! | 6 | 3% | NIP-18 reposts of one of the last 1,024 notes: `e` with relay, `p`; content is the note's signed JSON |
//! | 16 | 2% | NIP-18 generic reposts of a video (with `a`) or a comment: `e`, `p`, `k` |
//! | 1111 | 5% | NIP-22 comments on a video (`A`/`K`/`P` root, `a`/`e`/`k`/`p` parent), 30% replies to an earlier comment (parent `e`/`k`/`p`) |
//! | 0 | 4% | profile metadata JSON (name, display_name, about, picture, sometimes nip05, lud16, website) |
//! | 3 | 4% | NIP-02 contact lists: `p` tags of Zipf-drawn authors; a first list has a log-normal size (median 60, shape 1.1, at most [`GenConfig::max_follows`]), later versions add one to five follows and sometimes drop some |
//! | 10002 | 2% | NIP-65 relay lists: two to seven `r` tags, unmarked, `read` or `write` |
//! | 34235 | 2% | NIP-71 normal videos: `d`, `title`, `published_at`, `alt`, `t`, `imeta` (url, m, dim, x, image, duration) |
//! | 34236 | 1% | NIP-71 short videos, the same tags, vertical |
//! | 5 | 2% | NIP-09 deletions by an author of their own recent note (`e`, `k`) or, one in four, their video (`e`, `a`, `k`) |
//!
//! Drafts that need an earlier event when there is none yet become notes, so the first few
//! hundred events hold a few more notes than the table says.
//!
//! # Authors, time and versions
//!
//! Authors are ranked by activity: notes, reactions, reposts, comments and videos are written
//! by an author drawn with a Zipf law ([`GenConfig::zipf_exponent`], default 1.05: with 10,000
//! authors the top 1% write about half of these events), and followed in the same proportion.
//! Replies, reactions and reposts go to notes by preferential attachment over the last 20,000
//! or so events (a note that drew attention draws more), and partly to the newest notes of
//! Zipf-drawn authors: in a million events about three notes in four get no reaction, one in
//! a hundred of those reacted to gets six or more, the most reacted note about seventy, and
//! the longest threads a few hundred replies. Profiles, contact lists and relay lists are
//! updated by authors drawn with half that exponent: everyone has them, active users update
//! them more often.
//!
//! `created_at` starts at [`GenConfig::start_time`] and never decreases from one event to the
//! next, except that one root note in ten is up to two minutes older than the events before it
//! (a late client clock): three events in four share the previous event's second, about 2.7
//! events per second. Nothing points at an event newer than itself, and there are no
//! `expiration` tags: with the default start, 100 million events end in early 2025, in the
//! past, and a store accepts them all.
//!
//! A quarter of video events and every profile, contact list or relay list after an
//! author's first are new versions: each is at least one second newer than the version it
//! replaces (the clock moves on when needed), so inserting the stream replaces every older
//! version. No two events share an id. Inserting a whole stream into an empty store leaves
//! [`GenStats::expected_stored`] events.
//!
//! # Query parameters
//!
//! [`Generator::sampler`] draws parameters for realistic queries from what was generated:
//! ids of events a store holds ([`QuerySampler::existing_id`]), an active author and their
//! note count, a real follow list of a given length, a note with reactions and their count.
//!
//! # Cost
//!
//! Drafting (text, ids) is sequential and takes a few µs per event; signing takes about
//! 20-30 µs per event and runs on as many threads as [`Generator::batch`] is given. The
//! generator remembers about 60 bytes per event for the references and samplers.

mod config;
mod draft;
mod generator;
mod history;
mod jsonl;
pub(crate) mod rng;
mod sampler;
mod text;

#[cfg(test)]
mod tests;

pub use config::{Follows, GenConfig};
pub use draft::KIND_MIX;
pub use generator::{GenStats, Generator};
pub use jsonl::write_jsonl;
pub use sampler::{QuerySampler, ReactedNote};
