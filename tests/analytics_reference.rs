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

use common::Rng;
use megalith::analytics::{Change, LiveAnalytics, VideoKey};
use megalith::event::Keys;
use megalith::reference::Reference;
use megalith::reference::analytics::Analytics;
use megalith::{Event, EventId};

struct Stream {
    rng: Rng,
    now: u64,
    creators: Vec<Keys>,
    fans: Vec<Keys>,
    /// Every event made so far (for replays and deletions).
    made: Vec<Event>,
    /// Video versions made, some not yet sent.
    videos: Vec<Event>,
    /// Videos made but held back: acts name them before they arrive.
    held: Vec<Event>,
    /// Acts sent that name a video not yet sent.
    early_acts: usize,
}

impl Stream {
    fn new(seed: u64) -> Stream {
        Stream {
            rng: Rng::new(seed),
            now: 1_764_000_000,
            creators: (0..4).map(|i| Keys::from_seed(seed * 100 + i)).collect(),
            fans: (0..12)
                .map(|i| Keys::from_seed(seed * 100 + 50 + i))
                .collect(),
            made: Vec::new(),
            videos: Vec::new(),
            held: Vec::new(),
            early_acts: 0,
        }
    }

    fn time(&mut self) -> u64 {
        self.now - 5_000 + self.rng.below(4_000)
    }

    fn address(video: &Event) -> Option<String> {
        match video_key_text(video) {
            Some(VideoKey::Address { .. }) => Some(video_key_text(video).unwrap().text()),
            _ => None,
        }
    }

    /// The next event to send.
    fn next(&mut self) -> Event {
        // Release a held video now and then.
        if !self.held.is_empty() && self.rng.chance(8) {
            let at = self.rng.below(self.held.len() as u64) as usize;
            let video = self.held.swap_remove(at);
            self.made.push(video.clone());
            return video;
        }
        let roll = self.rng.below(100);
        let t = self.time();
        let event = if roll < 14 || self.videos.is_empty() {
            let creator = self.rng.pick(&self.creators).clone();
            let kind = *self.rng.pick(&[21u16, 22, 34_235, 34_236, 34_235]);
            let d = format!("clip-{}", self.rng.below(3));
            let mut list = vec![vec![
                "title".to_string(),
                format!("video {}", self.made.len()),
            ]];
            if kind >= 34_235 {
                list.push(vec!["d".into(), d]);
            }
            let video = creator.sign(t, kind, list, String::new());
            self.videos.push(video.clone());
            if self.rng.chance(15) {
                // Acts will name it before it arrives.
                self.held.push(video);
                return self.next();
            }
            video
        } else if roll < 95 {
            let video = if !self.held.is_empty() && self.rng.chance(25) {
                self.rng.pick(&self.held).clone()
            } else {
                self.rng.pick(&self.videos).clone()
            };
            let id = video.id.to_hex();
            let address = Stream::address(&video);
            let fan = self.rng.pick(&self.fans).clone();
            let random_id = format!("{:064x}", self.rng.next_u64());
            let expiring = self.rng.chance(6);
            let mut list: Vec<Vec<String>> = Vec::new();
            let kind;
            let mut content = String::new();
            match roll {
                14..45 => {
                    kind = 7;
                    if self.rng.chance(20) {
                        list.push(vec!["e".into(), random_id]);
                    }
                    list.push(vec!["e".into(), id.clone()]);
                    if let Some(a) = &address
                        && self.rng.chance(50)
                    {
                        list.push(vec!["a".into(), a.clone()]);
                    }
                    content = self.rng.pick(&["+", "-", "🔥", "+"]).to_string();
                }
                45..58 => {
                    kind = *self.rng.pick(&[6u16, 16]);
                    list.push(vec!["e".into(), id.clone()]);
                    if kind == 16
                        && let Some(a) = &address
                        && self.rng.chance(60)
                    {
                        list.push(vec!["a".into(), a.clone()]);
                    }
                }
                58..75 => {
                    kind = 1_111;
                    match &address {
                        Some(a) if self.rng.chance(50) => list.push(vec!["A".into(), a.clone()]),
                        _ => list.push(vec!["E".into(), id.clone()]),
                    }
                    content = "a comment".into();
                }
                75..85 => {
                    kind = 1;
                    if self.rng.chance(50) {
                        list.push(vec!["e".into(), id.clone(), String::new(), "root".into()]);
                    } else {
                        list.push(vec!["e".into(), id.clone()]);
                        list.push(vec!["e".into(), random_id]);
                    }
                    content = "a reply".into();
                }
                _ => {
                    // A deletion by someone of one of their own events (or,
                    // now and then, of someone else's, which removes nothing).
                    let target = self.rng.pick(&self.made).clone();
                    let keys = self
                        .creators
                        .iter()
                        .chain(&self.fans)
                        .find(|k| k.pubkey() == target.pubkey || self.rng.chance(3))
                        .unwrap()
                        .clone();
                    let mut list = vec![vec!["e".to_string(), target.id.to_hex()]];
                    if let Some(a) = Stream::address(&target)
                        && self.rng.chance(50)
                    {
                        list = vec![vec!["a".to_string(), a]];
                    }
                    let deletion = keys.sign(self.now - 100, 5, list, String::new());
                    self.made.push(deletion.clone());
                    return deletion;
                }
            }
            // By the id alone, of an addressable version not yet sent: its
            // count must move to the address when the version arrives.
            if address.is_some()
                && self.held.iter().any(|h| h.id == video.id)
                && !list.iter().any(|t| t[0] == "a" || t[0] == "A")
            {
                self.early_acts += 1;
            }
            if expiring {
                list.push(vec![
                    "expiration".into(),
                    (self.now + 1 + self.rng.below(300)).to_string(),
                ]);
            }
            fan.sign(t, kind, list, content)
        } else {
            // A replay of something sent before.
            return self.rng.pick(&self.made).clone();
        };
        self.made.push(event.clone());
        event
    }
}

fn video_key_text(event: &Event) -> Option<VideoKey> {
    megalith::analytics::video_key(event)
}

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
