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

mod findings {
    //! Cases a review found, each checked against the brute force or the
    //! rule it states.
    use megalith::analytics::{Change, LiveAnalytics, PAGE_BUDGET, Sort, VideoKey};
    use megalith::event::Keys;

    const NOW: u64 = 1_764_000_000;

    fn video(keys: &Keys, at: u64, d: &str, extra: Vec<Vec<String>>) -> megalith::Event {
        let mut tags = vec![vec!["d".to_string(), d.to_string()]];
        tags.extend(extra);
        keys.sign(at, 34_235, tags, String::new())
    }

    fn react(keys: &Keys, at: u64, id: &megalith::EventId) -> megalith::Event {
        keys.sign(at, 7, vec![vec!["e".into(), id.to_hex()]], "+".into())
    }

    #[test]
    fn an_expired_version_still_moves_the_acts_that_named_it() {
        let creator = Keys::from_seed(1);
        let expired = video(
            &creator,
            NOW - 500,
            "clip",
            vec![vec!["expiration".into(), (NOW - 10).to_string()]],
        );
        let current = video(&creator, NOW - 100, "clip", vec![]);
        let fan = Keys::from_seed(2);
        let mut live = LiveAnalytics::new();
        // Replayed after the expiration: the act first (another shard),
        // then the expired version, then the current one.
        live.apply_at(&Change::Added(react(&fan, NOW - 50, &expired.id)), NOW);
        live.apply_at(&Change::Added(expired.clone()), NOW);
        live.apply_at(&Change::Added(current), NOW);
        let key = VideoKey::Address {
            kind: 34_235,
            pubkey: creator.pubkey(),
            d: "clip".into(),
        };
        assert_eq!(live.figures(&key).unwrap().reactions, 1);
    }

    #[test]
    fn a_video_key_uses_the_first_d_tag_as_the_store_does() {
        let creator = Keys::from_seed(3);
        let event = creator.sign(
            NOW,
            34_235,
            vec![vec!["d".into()], vec!["d".into(), "clip".into()]],
            String::new(),
        );
        assert_eq!(
            megalith::analytics::video_key(&event),
            Some(VideoKey::Address {
                kind: 34_235,
                pubkey: creator.pubkey(),
                d: String::new(),
            })
        );
    }

    #[test]
    fn a_popular_page_goes_on_after_its_last_video_is_deleted() {
        // Three videos with equal engagement, by time: 300, 200, 100.
        let fan = Keys::from_seed(9);
        let mut live = LiveAnalytics::new();
        let mut videos = Vec::new();
        for (i, at) in [300u64, 200, 100].into_iter().enumerate() {
            let v = video(&Keys::from_seed(10 + i as u64), NOW - at, "v", vec![]);
            live.apply_at(&Change::Added(v.clone()), NOW);
            live.apply_at(&Change::Added(react(&fan, NOW - 1, &v.id)), NOW);
            videos.push(v);
        }
        let (first, next) = live.page(Sort::Popular, None, None, 1, NOW);
        assert_eq!(first.len(), 1);
        let first_key = first[0].1.clone();
        assert_eq!(
            Some(&first_key),
            megalith::analytics::video_key(&videos[2]).as_ref(),
            "the newest first"
        );
        // That video leaves; the next page still starts after it.
        live.apply_at(&Change::Removed(videos[2].clone()), NOW);
        let (rest, _) = live.page(Sort::Popular, None, next.as_ref(), 10, NOW);
        let rest: Vec<VideoKey> = rest.into_iter().map(|(_, k)| k.clone()).collect();
        let want: Vec<VideoKey> = [&videos[1], &videos[0]]
            .iter()
            .map(|v| megalith::analytics::video_key(v).unwrap())
            .collect();
        assert_eq!(rest, want);
    }

    #[test]
    fn trending_skips_old_engaged_videos_without_reading_them() {
        // More old engaged videos than a page may examine, then three of
        // this week: one page finds them and says the list ended.
        let fan = Keys::from_seed(20);
        let mut live = LiveAnalytics::new();
        let old = PAGE_BUDGET + 100;
        for i in 0..old {
            let creator = Keys::from_seed(1_000 + i as u64 % 50);
            let v = video(
                &creator,
                NOW - 30 * 86_400 - i as u64,
                &format!("o{i}"),
                vec![],
            );
            live.apply_at(&Change::Added(v.clone()), NOW);
            live.apply_at(&Change::Added(react(&fan, NOW - 1, &v.id)), NOW);
        }
        let mut fresh = Vec::new();
        for i in 0..3u64 {
            let v = video(&Keys::from_seed(2_000 + i), NOW - 60 - i, "f", vec![]);
            live.apply_at(&Change::Added(v.clone()), NOW);
            fresh.push(megalith::analytics::video_key(&v).unwrap());
        }
        let (page, next) = live.page(Sort::Trending, None, None, 50, NOW);
        let got: Vec<VideoKey> = page.into_iter().map(|(_, k)| k.clone()).collect();
        assert_eq!(got, fresh, "newest first among videos without engagement");
        assert_eq!(next, None);
    }
}
