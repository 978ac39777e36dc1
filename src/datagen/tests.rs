//! The generator's promises: determinism, parallel signing equal to sequential, valid events,
//! the documented mix, references to earlier events only, skewed activity, and samplers that
//! agree with the stream.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use super::*;
use crate::event::{Event, EventId, Keys, Limits, Pubkey};

const STREAM: usize = 20_000;

/// One 20,000-event stream with the default config, shared by the tests that only read it.
fn stream() -> &'static (Generator, Vec<Event>) {
    static STREAM_CELL: OnceLock<(Generator, Vec<Event>)> = OnceLock::new();
    STREAM_CELL.get_or_init(|| {
        let mut generator = Generator::new(GenConfig::default());
        let events = generator.batch(STREAM, 2);
        (generator, events)
    })
}

fn small(seed: u64) -> Generator {
    Generator::new(GenConfig {
        seed,
        authors: 300,
        ..GenConfig::default()
    })
}

fn jsonl(events: &[Event]) -> Vec<u8> {
    let mut out = Vec::new();
    write_jsonl(events, &mut out).unwrap();
    out
}

#[test]
fn same_seed_same_bytes_other_seed_other_events() {
    let a: Vec<Event> = small(7).take(1_500).collect();
    let b: Vec<Event> = small(7).take(1_500).collect();
    assert_eq!(jsonl(&a), jsonl(&b));
    let c: Vec<Event> = small(8).take(1_500).collect();
    assert_ne!(jsonl(&a), jsonl(&c));
    let ids: HashSet<EventId> = a.iter().map(|e| e.id).collect();
    assert!(c.iter().all(|e| !ids.contains(&e.id)));
    let authors: HashSet<Pubkey> = small(7).pubkeys().iter().copied().collect();
    assert!(small(8).pubkeys().iter().all(|p| !authors.contains(p)));
}

#[test]
fn parallel_signing_equals_sequential() {
    let sequential: Vec<Event> = small(3).take(2_000).collect();
    let mut generator = small(3);
    let mut parallel = generator.batch(700, 3);
    parallel.extend(generator.batch(1, 4));
    parallel.extend(generator.batch(0, 2));
    parallel.extend(generator.batch(1_299, 2));
    assert_eq!(parallel.len(), sequential.len());
    for (i, (p, s)) in parallel.iter().zip(&sequential).enumerate() {
        assert_eq!(p, s, "event {i}");
    }
    assert_eq!(generator.stats().events, 2_000);
}

#[test]
fn jsonl_is_one_event_per_line_and_round_trips() {
    let events: Vec<Event> = small(5).take(300).collect();
    let text = String::from_utf8(jsonl(&events)).unwrap();
    assert!(text.ends_with('\n'));
    let parsed: Vec<Event> = text.lines().map(|l| Event::from_json(l).unwrap()).collect();
    assert_eq!(parsed, events);
}

#[test]
fn every_event_verifies_and_fits_the_default_limits() {
    let (_, events) = stream();
    let limits = Limits::default();
    let mut ids = HashSet::new();
    for (i, event) in events.iter().enumerate() {
        event.verify().unwrap_or_else(|e| panic!("event {i}: {e}"));
        event
            .check_limits(&limits)
            .unwrap_or_else(|e| panic!("event {i}: {e}"));
        assert!(ids.insert(event.id), "event {i} repeats an id");
        assert!(event.expiration().is_none());
    }
}

#[test]
fn the_largest_contact_list_fits_and_a_thousand_follows_would_not() {
    let keys = Keys::from_seed(1);
    let list = |n: usize| {
        let tags = (0..n)
            .map(|i| vec!["p".to_owned(), Keys::from_seed(i as u64).pubkey().to_hex()])
            .collect();
        keys.sign(9_999_999_999, 3, tags, String::new())
    };
    list(GenConfig::FOLLOWS_THAT_FIT)
        .check_limits(&Limits::default())
        .unwrap();
    assert!(list(1_000).check_limits(&Limits::default()).is_err());
    let mut generator = Generator::new(GenConfig {
        authors: 2_000,
        max_follows: 5_000,
        ..GenConfig::default()
    });
    let biggest = (0..3_000)
        .map(|_| generator.next_event())
        .filter(|e| e.kind == 3)
        .map(|e| e.tags.len())
        .max()
        .unwrap();
    assert!(biggest <= GenConfig::FOLLOWS_THAT_FIT, "{biggest}");
}

#[test]
fn the_kind_mix_matches_the_documented_shares() {
    let (generator, events) = stream();
    let mut counts: HashMap<u16, usize> = HashMap::new();
    for event in events {
        *counts.entry(event.kind).or_default() += 1;
    }
    assert_eq!(KIND_MIX.iter().map(|(_, share)| share).sum::<u64>(), 100);
    assert_eq!(counts.len(), KIND_MIX.len(), "{counts:?}");
    for (kind, percent) in KIND_MIX {
        let actual = 100.0 * counts[&kind] as f64 / events.len() as f64;
        let tolerance = 0.4 + 0.04 * percent as f64;
        assert!(
            (actual - percent as f64).abs() <= tolerance,
            "kind {kind}: {actual:.2}% instead of {percent}%"
        );
        assert_eq!(generator.stats().by_kind[&kind], counts[&kind] as u64);
    }
}

#[test]
fn note_lengths_are_log_normal_with_a_long_tail() {
    let (generator, events) = stream();
    let mut lengths: Vec<usize> = events
        .iter()
        .filter(|e| e.kind == 1)
        .map(|e| e.content.len())
        .collect();
    lengths.sort_unstable();
    let median = lengths[lengths.len() / 2];
    assert!((105..=150).contains(&median), "median {median}");
    let long = lengths.iter().filter(|&&n| n > 1_000).count();
    assert!(long > lengths.len() / 200, "{long} notes over 1,000 bytes");
    let cap = generator.config().max_note_bytes + 300;
    assert!(lengths[lengths.len() - 1] <= cap);
    assert!(lengths[0] >= 1);
}

/// The first value of every tag named `name`.
fn values<'a>(event: &'a Event, name: &str) -> Vec<&'a str> {
    event
        .tags
        .iter()
        .filter(|tag| tag.len() >= 2 && tag[0] == name)
        .map(|tag| tag[1].as_str())
        .collect()
}

#[test]
fn references_name_earlier_events_of_the_right_kind() {
    let (generator, events) = stream();
    let authors: HashSet<String> = generator.pubkeys().iter().map(Pubkey::to_hex).collect();
    let mut kinds: HashMap<String, (u16, String)> = HashMap::new();
    let mut addresses: HashSet<String> = HashSet::new();
    let mut replies = 0;
    let mut with_address = 0;
    for (i, event) in events.iter().enumerate() {
        for name in ["e", "E"] {
            for id in values(event, name) {
                let (kind, author) = kinds.get(id).unwrap_or_else(|| {
                    panic!("event {i} (kind {}) names unknown {id}", event.kind)
                });
                if event.kind == 5 {
                    assert_eq!(
                        author,
                        &event.pubkey.to_hex(),
                        "event {i} deletes another's"
                    );
                }
                if event.kind == 1 {
                    assert_eq!(*kind, 1);
                    replies += 1;
                }
                if event.kind == 6 {
                    assert_eq!(*kind, 1);
                    let reposted = Event::from_json(&event.content).unwrap();
                    reposted.verify().unwrap();
                    assert_eq!(reposted.id.to_hex(), id);
                }
                if name == "e" && matches!(event.kind, 7 | 16 | 5) {
                    assert_eq!(values(event, "k"), vec![kind.to_string().as_str()]);
                }
            }
        }
        for name in ["a", "A"] {
            for address in values(event, name) {
                assert!(
                    addresses.contains(address),
                    "event {i} names unknown {address}"
                );
                with_address += 1;
            }
        }
        for name in ["p", "P"] {
            for pubkey in values(event, name) {
                assert!(authors.contains(pubkey), "event {i} names unknown {pubkey}");
            }
        }
        if matches!(event.kind, 7 | 6 | 16 | 1_111 | 5) {
            assert!(!values(event, "e").is_empty(), "event {i} points nowhere");
        }
        if event.kind == 1_111 {
            for name in ["A", "K", "P", "e", "k", "p"] {
                assert_eq!(values(event, name).len(), 1, "event {i}: {name}");
            }
        }
        kinds.insert(event.id.to_hex(), (event.kind, event.pubkey.to_hex()));
        if event.kind >= 30_000 {
            addresses.insert(format!("{}:{}:{}", event.kind, event.pubkey, event.d_tag()));
        }
    }
    assert!(replies > STREAM / 10, "{replies} reply references");
    assert!(with_address > 300, "{with_address} address references");
}

#[test]
fn videos_carry_the_nip71_tags() {
    let (_, events) = stream();
    let videos: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(e.kind, 34_235 | 34_236))
        .collect();
    assert!(videos.len() > 300);
    for video in videos {
        for name in ["d", "title", "published_at", "t", "imeta"] {
            assert!(!values(video, name).is_empty(), "{name} missing: {video:?}");
        }
        let imeta = video.tags.iter().find(|t| t[0] == "imeta").unwrap();
        for field in ["url ", "m ", "dim ", "x ", "image ", "duration "] {
            assert!(
                imeta.iter().any(|f| f.starts_with(field)),
                "{field}: {imeta:?}"
            );
        }
        let published: u64 = video.tag_value("published_at").unwrap().parse().unwrap();
        assert!(published <= video.created_at);
    }
}

#[test]
fn activity_is_skewed_towards_the_top_authors() {
    let (generator, events) = stream();
    let activity = generator.authors_by_activity();
    assert_eq!(
        activity.iter().map(|(_, n)| n).sum::<u64>(),
        events.len() as u64
    );
    let top = activity.len() / 100;
    let top_mean = activity[..top].iter().map(|(_, n)| n).sum::<u64>() as f64 / top as f64;
    let median = activity[activity.len() / 2].1 as f64;
    assert!(
        top_mean > 20.0 * median.max(1.0),
        "top 1% {top_mean}, median {median}"
    );
    // The generator's rank order is the activity order, give or take chance.
    assert_eq!(activity[0].0, generator.pubkeys()[0]);
}

#[test]
fn timestamps_move_forward_with_ties_and_stay_in_the_past() {
    let (generator, events) = stream();
    let start = generator.config().start_time;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut newest = start;
    for (i, event) in events.iter().enumerate() {
        assert!(
            event.created_at >= start && event.created_at < now,
            "event {i}"
        );
        if event.created_at < newest {
            // Only a root note may be late, and by two minutes at most.
            assert_eq!(event.kind, 1, "event {i}");
            assert!(values(event, "e").is_empty(), "event {i}");
            assert!(newest - event.created_at < 120, "event {i}");
        }
        newest = newest.max(event.created_at);
    }
    assert_eq!(events[0].created_at, start);
    let seconds: HashSet<u64> = events.iter().map(|e| e.created_at).collect();
    assert!(
        seconds.len() < events.len() / 2,
        "{} distinct seconds",
        seconds.len()
    );
}

#[test]
fn replaceable_versions_are_strictly_newer() {
    let (generator, events) = stream();
    let mut latest: HashMap<(u16, Pubkey, &str), u64> = HashMap::new();
    let mut replacements = 0;
    for event in events {
        if matches!(event.kind, 0 | 3 | 10_002 | 34_235 | 34_236) {
            let key = (event.kind, event.pubkey, event.d_tag());
            if let Some(before) = latest.insert(key, event.created_at) {
                assert!(event.created_at > before, "{event:?}");
                replacements += 1;
            }
        }
    }
    assert_eq!(generator.stats().replacements, replacements);
    assert!(replacements > 100, "{replacements}");
}

#[test]
fn samplers_agree_with_the_stream() {
    let (generator, events) = stream();
    let by_id: HashMap<EventId, &Event> = events.iter().map(|e| (e.id, e)).collect();
    let deleted: HashSet<&str> = events
        .iter()
        .filter(|e| e.kind == 5)
        .flat_map(|e| values(e, "e"))
        .collect();
    assert_eq!(deleted.len() as u64, generator.stats().deleted);

    let mut sampler = generator.sampler(11);
    for _ in 0..50 {
        let id = sampler.existing_id().unwrap();
        assert!(by_id.contains_key(&id));
        assert!(!deleted.contains(id.to_hex().as_str()));
    }

    let (author, notes) = sampler.active_author().unwrap();
    let live = events
        .iter()
        .filter(|e| e.kind == 1 && e.pubkey == author && !deleted.contains(e.id.to_hex().as_str()))
        .count();
    assert_eq!(notes, live);
    assert!(notes >= 1);
    // Drawn by activity: the busiest of a few draws has hundreds of notes.
    let busiest = (0..20)
        .filter_map(|_| sampler.active_author())
        .map(|(_, notes)| notes)
        .max()
        .unwrap();
    assert!(busiest > 200, "{busiest}");

    let (follower, follows) = sampler.follow_list(300).unwrap();
    assert!(follows.len() >= 300);
    let last_list = events
        .iter()
        .rev()
        .find(|e| e.kind == 3 && e.pubkey == follower)
        .unwrap();
    let listed: Vec<String> = values(last_list, "p")
        .into_iter()
        .map(str::to_owned)
        .collect();
    let expected: Vec<String> = follows.iter().map(Pubkey::to_hex).collect();
    assert_eq!(listed, expected);
    assert_eq!(generator.follows(&follower), Some(follows));
    assert!(sampler.follow_list(100_000).is_none());

    let most = sampler.most_reactions();
    assert!(most >= 5, "{most}");
    for min in [1, 3] {
        let note = sampler.reacted_note(min).unwrap();
        assert!(note.reactions >= min);
        let hex = note.id.to_hex();
        let counted = events
            .iter()
            .filter(|e| e.kind == 7 && values(e, "e").first() == Some(&hex.as_str()))
            .count();
        assert_eq!(counted as u32, note.reactions);
        assert_eq!(by_id[&note.id].pubkey, note.author);
    }
    assert!(sampler.reacted_note(most + 1).is_none());

    // The same seed gives the same samples.
    let mut first = generator.sampler(4);
    let mut second = generator.sampler(4);
    assert_eq!(first.existing_id(), second.existing_id());
    assert_eq!(first.active_author(), second.active_author());
}

#[test]
fn sampling_does_not_change_what_comes_next() {
    let mut sampled = small(9);
    let mut plain = small(9);
    sampled.batch(500, 1);
    plain.batch(500, 1);
    let mut sampler = sampled.sampler(1);
    sampler.existing_id();
    sampler.active_author();
    sampler.reacted_note(1);
    assert_eq!(sampled.batch(200, 2), plain.batch(200, 2));
}

#[test]
fn relay_lists_and_hints_name_only_the_given_relays() {
    let local = vec![
        "ws://127.0.0.1:7001".to_string(),
        "ws://127.0.0.1:7002".to_string(),
    ];
    let mut generator = Generator::new(GenConfig {
        seed: 3,
        authors: 300,
        relays: Some(local.clone()),
        ..GenConfig::default()
    });
    let events = generator.batch(5_000, 2);
    let mut lists = 0;
    for event in &events {
        for tag in &event.tags {
            if event.kind == 10_002 && tag[0] == "r" {
                assert!(local.contains(&tag[1]), "{tag:?}");
            }
            if matches!(tag[0].as_str(), "e" | "a" | "A") && tag.len() > 2 && !tag[2].is_empty() {
                assert!(local.contains(&tag[2]), "a hint names {tag:?}");
            }
        }
        if event.kind == 10_002 {
            lists += 1;
            let r: Vec<_> = event.tags.iter().filter(|t| t[0] == "r").collect();
            assert!(!r.is_empty() && r.len() <= 2, "{:?}", event.tags);
        }
    }
    assert!(lists > 20, "{lists}");
}

/// The share of the latest contact lists' follows that name one of the
/// 1% busiest note authors of the stream.
fn follows_of_the_busiest(follows: Follows) -> f64 {
    let mut generator = Generator::new(GenConfig {
        seed: 7,
        authors: 3_000,
        follows,
        ..GenConfig::default()
    });
    let events = generator.batch(30_000, 2);
    let mut notes: HashMap<Pubkey, usize> = HashMap::new();
    let mut lists: HashMap<Pubkey, &Event> = HashMap::new();
    for event in &events {
        match event.kind {
            1 => *notes.entry(event.pubkey).or_default() += 1,
            3 => {
                lists.insert(event.pubkey, event);
            }
            _ => {}
        }
    }
    let mut ranked: Vec<(Pubkey, usize)> = notes.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let busiest: HashSet<String> = ranked[..30].iter().map(|(pk, _)| pk.to_hex()).collect();
    let (mut all, mut theirs) = (0usize, 0usize);
    for list in lists.values() {
        for tag in &list.tags {
            if tag.first().map(String::as_str) == Some("p") {
                all += 1;
                theirs += usize::from(busiest.contains(&tag[1]));
            }
        }
    }
    assert!(all > 1_000, "too few follows to judge: {all}");
    theirs as f64 / all as f64
}

#[test]
fn uniform_follows_spread_over_every_author_and_popular_ones_do_not() {
    let popular = follows_of_the_busiest(Follows::Popular);
    let uniform = follows_of_the_busiest(Follows::Uniform);
    // 30 of 3,000 authors: a uniform draw names them about 1% of the time.
    assert!(
        uniform < 0.03,
        "uniform follows name the busiest 1% in {uniform:.3}"
    );
    assert!(
        popular > 0.15,
        "popular follows name the busiest 1% in {popular:.3}"
    );
}
