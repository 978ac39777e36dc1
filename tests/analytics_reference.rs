//! The incremental analytics (`megalith::analytics::LiveAnalytics`) against
//! the brute-force counting rules (`megalith::reference::analytics`), over
//! random video streams: videos and their edits, reactions by `e` and by
//! `a` (also to a version before it arrives), repeated reactions by one
//! person, downvotes, kind 1111 and kind 1 comments, reposts 6 and 16,
//! deletions of each, expiry, replays. The store's decisions come from the
//! brute-force reference store: what it adds and removes at each event is
//! what the analytics are told. Then the same changes again, shard by
//! shard in another interleaving: the figures must not depend on it.

#[path = "common/mod.rs"]
mod common;

use std::collections::HashMap;

use common::video_stream::Stream;
use megalith::analytics::{Change, LiveAnalytics, VideoKey};
use megalith::reference::Reference;
use megalith::reference::analytics::Analytics;
use megalith::{Event, EventId};

/// The reference store's live events at `now`, by id.
fn live_set(reference: &Reference, now: u64) -> HashMap<EventId, Event> {
    reference
        .events()
        .filter(|e| e.expiration().is_none_or(|at| at > now))
        .map(|e| (e.id, e.clone()))
        .collect()
}

/// What changed between two live sets.
fn diff(before: &HashMap<EventId, Event>, after: &HashMap<EventId, Event>) -> Vec<Change> {
    let mut out: Vec<Change> = before
        .iter()
        .filter(|(id, _)| !after.contains_key(id))
        .map(|(_, e)| Change::Removed(e.clone()))
        .collect();
    out.extend(
        after
            .iter()
            .filter(|(id, _)| !before.contains_key(id))
            .map(|(_, e)| Change::Added(e.clone())),
    );
    out
}

fn compare(live: &LiveAnalytics, reference: &Analytics, history: &[Event], now: u64, what: &str) {
    let mut keys: Vec<&VideoKey> = live.videos().map(|(k, _)| k).collect();
    let mut want: Vec<&VideoKey> = reference.videos.keys().collect();
    keys.sort();
    want.sort();
    assert_eq!(keys, want, "{what}: the live videos");
    for key in want {
        assert_eq!(
            live.figures(key),
            Some(reference.figures_of(key)),
            "{what}: figures of {}",
            key.text()
        );
        assert_eq!(
            live.videos().find(|(k, _)| *k == key).map(|(_, e)| e.id),
            Some(reference.videos[key].id),
            "{what}: the current version of {}",
            key.text()
        );
    }
    let ranked: Vec<VideoKey> = reference
        .trending(now)
        .into_iter()
        .map(|(k, _)| k)
        .take(25)
        .collect();
    let got: Vec<VideoKey> = live.trending(now, 25).into_iter().cloned().collect();
    assert_eq!(got, ranked, "{what}: the trending order");
    for event in history {
        assert_eq!(
            live.video_by_id(&event.id).map(|(k, _)| k.clone()),
            reference.video_by_id(&event.id).map(|(k, _)| k.clone()),
            "{what}: the video of id {}",
            event.id
        );
    }
}

#[test]
fn incremental_figures_agree_with_the_counting_rules() {
    for seed in 1..=6 {
        let mut stream = Stream::new(seed);
        let mut reference = Reference::new();
        let mut live = LiveAnalytics::new();
        let mut history: Vec<Event> = Vec::new();
        let mut changes: Vec<(megalith::Pubkey, Change)> = Vec::new();
        let mut now = stream.now;
        let mut before = live_set(&reference, now);
        let mut counted = 0u64;
        for step in 0..1_500 {
            let event = stream.next();
            reference.insert(&event, now);
            if step == 1_000 {
                // Time passes: expiring acts leave.
                now += 400;
            }
            let after = live_set(&reference, now);
            for change in diff(&before, &after) {
                if let Change::Added(e) = &change
                    && megalith::analytics::video_key(e).is_some()
                {
                    history.push(e.clone());
                }
                let author = match &change {
                    Change::Added(e) | Change::Removed(e) => e.pubkey,
                };
                live.apply(&change);
                changes.push((author, change));
            }
            before = after;
            if step % 250 == 249 {
                let brute = Analytics::compute(&reference, &history, now);
                counted += brute.figures.values().map(|f| f.engagement()).sum::<u64>();
                compare(
                    &live,
                    &brute,
                    &history,
                    now,
                    &format!("seed {seed}, step {step}"),
                );
            }
        }
        assert!(
            counted > 100,
            "seed {seed}: the streams must count things ({counted})"
        );
        assert!(
            stream.early_acts > 2,
            "seed {seed}: {} acts named a video version by id before it arrived",
            stream.early_acts
        );

        // The same changes, two "shards" by author, one after the other:
        // another interleaving the engine's shards could produce.
        let brute = Analytics::compute(&reference, &history, now);
        let mut regrouped = LiveAnalytics::new();
        for shard in 0..2u8 {
            for (author, change) in &changes {
                if author.0[0] % 2 == shard {
                    regrouped.apply(change);
                }
            }
        }
        compare(
            &regrouped,
            &brute,
            &history,
            now,
            &format!("seed {seed}, by shard"),
        );
    }
}
