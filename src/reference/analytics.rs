//! The counting rules of docs/analytics.md as brute force: every figure is
//! computed from scratch over the live events of a [`Reference`] store
//! (deletions, replacements and expiry already applied there) and the ids
//! every video version ever had. The engine's derived state must agree with
//! it (issue 16's differential tests). Nothing here is incremental or
//! indexed; it shares no code with the engine's analytics.

use std::collections::{BTreeSet, HashMap};

use super::Reference;
#[cfg(test)]
use crate::analytics::video_fields;
use crate::analytics::{Figures, VideoKey, tag_values, trending_score, video_key};
use crate::event::{Event, EventId, Pubkey};

/// The analytics of a set of live events, computed from scratch.
#[derive(Debug, Default)]
pub struct Analytics {
    /// Live videos, by key: the live event (the current version).
    pub videos: HashMap<VideoKey, Event>,
    /// Figures of live videos (absent: all zero).
    pub figures: HashMap<VideoKey, Figures>,
    /// Every id a video version ever had, to its key.
    pub versions: HashMap<EventId, VideoKey>,
    /// (UTC day, author) for every live event.
    pub active: BTreeSet<(u64, Pubkey)>,
}

impl Analytics {
    /// Computes everything from `reference`'s live events at `now`, with
    /// `history` the video events ever stored (their ids resolve to their
    /// keys even once replaced).
    pub fn compute<'a>(
        reference: &Reference,
        history: impl IntoIterator<Item = &'a Event>,
        now: u64,
    ) -> Analytics {
        let live: Vec<&Event> = reference
            .events()
            .filter(|e| e.expiration().is_none_or(|at| at > now))
            .collect();
        let mut out = Analytics::default();
        for event in history {
            if let Some(key) = video_key(event) {
                out.versions.insert(event.id, key);
            }
        }
        for event in &live {
            out.active.insert((event.created_at / 86_400, event.pubkey));
            if let Some(key) = video_key(event) {
                out.versions.insert(event.id, key.clone());
                out.videos.insert(key, (*event).clone());
            }
        }
        let by_id = |id: &str| {
            EventId::from_hex(id)
                .ok()
                .and_then(|id| out.versions.get(&id).cloned())
        };
        let by_address = |a: &str| VideoKey::parse_address(a);

        // Reactions and reposts: the newest per (actor, target) counts.
        let mut reactions: HashMap<(Pubkey, VideoKey), &Event> = HashMap::new();
        let mut reposts: HashMap<(Pubkey, VideoKey), &Event> = HashMap::new();
        let mut comments: Vec<VideoKey> = Vec::new();
        let mut legacy: Vec<VideoKey> = Vec::new();
        for &event in &live {
            match event.kind {
                7 => {
                    let target = tag_values(event, "a")
                        .last()
                        .and_then(by_address)
                        .or_else(|| tag_values(event, "e").last().and_then(by_id));
                    if let Some(target) = target {
                        keep_newest(&mut reactions, event.pubkey, target, event);
                    }
                }
                6 | 16 => {
                    let target = (event.kind == 16)
                        .then(|| tag_values(event, "a").last().and_then(by_address))
                        .flatten()
                        .or_else(|| tag_values(event, "e").last().and_then(by_id));
                    if let Some(target) = target {
                        keep_newest(&mut reposts, event.pubkey, target, event);
                    }
                }
                1_111 => {
                    let target = tag_values(event, "A")
                        .next()
                        .and_then(by_address)
                        .or_else(|| tag_values(event, "E").next().and_then(by_id));
                    if let Some(target) = target {
                        comments.push(target);
                    }
                }
                1 => {
                    let root = event
                        .tags
                        .iter()
                        .find(|t| t.len() >= 4 && t[0] == "e" && t[3] == "root")
                        .map(|t| t[1].as_str())
                        .or_else(|| tag_values(event, "e").next());
                    if let Some(target) = root.and_then(by_id) {
                        legacy.push(target);
                    }
                }
                _ => {}
            }
        }
        let mut figures: HashMap<VideoKey, Figures> = HashMap::new();
        for ((_, target), event) in reactions {
            let f = figures.entry(target).or_default();
            if event.content == "-" {
                f.downvotes += 1;
            } else {
                f.reactions += 1;
            }
        }
        for ((_, target), _) in reposts {
            figures.entry(target).or_default().reposts += 1;
        }
        for target in comments {
            figures.entry(target).or_default().comments += 1;
        }
        for target in legacy {
            figures.entry(target).or_default().legacy_comments += 1;
        }
        figures.retain(|key, _| out.videos.contains_key(key));
        out.figures = figures;
        out
    }

    /// A live video's figures (zero when nothing counts for it).
    pub fn figures_of(&self, key: &VideoKey) -> Figures {
        self.figures.get(key).copied().unwrap_or_default()
    }

    /// The live video an id of any of its versions names.
    pub fn video_by_id(&self, id: &EventId) -> Option<(&VideoKey, &Event)> {
        let key = self.versions.get(id)?;
        self.videos.get_key_value(key)
    }

    /// Live videos by trending score at `now` (created in the last 7 days),
    /// highest first, ties newest first, then by key.
    pub fn trending(&self, now: u64) -> Vec<(VideoKey, f64)> {
        let mut out: Vec<(VideoKey, f64)> = self
            .videos
            .iter()
            .filter(|(_, e)| now.saturating_sub(e.created_at) <= 7 * 86_400)
            .map(|(k, e)| {
                let score = trending_score(self.figures_of(k).engagement(), e.created_at, now);
                (k.clone(), score)
            })
            .collect();
        // Equal scores (videos without engagement): newest first, then key.
        let time = |k: &VideoKey| self.videos[k].created_at;
        out.sort_by(|a, b| {
            b.1.total_cmp(&a.1)
                .then_with(|| time(&b.0).cmp(&time(&a.0)))
                .then_with(|| a.0.cmp(&b.0))
        });
        out
    }

    /// Live videos, newest first, ties by key.
    pub fn recent(&self) -> Vec<VideoKey> {
        let mut keys: Vec<(&VideoKey, &Event)> = self.videos.iter().collect();
        keys.sort_by(|a, b| {
            b.1.created_at
                .cmp(&a.1.created_at)
                .then_with(|| a.0.cmp(b.0))
        });
        keys.into_iter().map(|(k, _)| k.clone()).collect()
    }

    /// Live videos by engagement, then newest, then key.
    pub fn popular(&self) -> Vec<VideoKey> {
        let mut keys: Vec<(&VideoKey, &Event)> = self.videos.iter().collect();
        keys.sort_by(|a, b| {
            let (ea, eb) = (
                self.figures_of(a.0).engagement(),
                self.figures_of(b.0).engagement(),
            );
            eb.cmp(&ea)
                .then_with(|| b.1.created_at.cmp(&a.1.created_at))
                .then_with(|| a.0.cmp(b.0))
        });
        keys.into_iter().map(|(k, _)| k.clone()).collect()
    }

    /// The hashtags of a live video: `t` values, lower-cased, each once.
    fn tags_of(event: &Event) -> BTreeSet<String> {
        tag_values(event, "t")
            .filter(|t| !t.is_empty())
            .map(str::to_lowercase)
            .collect()
    }

    /// Live videos with hashtag `tag`, newest first.
    pub fn with_tag(&self, tag: &str) -> Vec<VideoKey> {
        self.recent()
            .into_iter()
            .filter(|k| Self::tags_of(&self.videos[k]).contains(tag))
            .collect()
    }

    /// Every hashtag: (tag, live videos, distinct creators, newest
    /// `created_at`), most videos first, ties by tag.
    pub fn hashtags(&self) -> Vec<(String, u64, u64, u64)> {
        let mut tags: HashMap<String, (u64, BTreeSet<Pubkey>, u64)> = HashMap::new();
        for video in self.videos.values() {
            for tag in Self::tags_of(video) {
                let entry = tags.entry(tag).or_default();
                entry.0 += 1;
                entry.1.insert(video.pubkey);
                entry.2 = entry.2.max(video.created_at);
            }
        }
        let mut out: Vec<_> = tags
            .into_iter()
            .map(|(tag, (videos, creators, last))| (tag, videos, creators.len() as u64, last))
            .collect();
        out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        out
    }

    /// Every creator: (author, normal videos, short videos, first and last
    /// `created_at`, engagement), by engagement, then videos, then key.
    pub fn creators(&self) -> Vec<(Pubkey, u64, u64, u64, u64, u64)> {
        let mut by: HashMap<Pubkey, (u64, u64, u64, u64, u64)> = HashMap::new();
        for (key, video) in &self.videos {
            let entry = by.entry(video.pubkey).or_insert((0, 0, u64::MAX, 0, 0));
            if matches!(video.kind, 22 | 34_236) {
                entry.1 += 1;
            } else {
                entry.0 += 1;
            }
            entry.2 = entry.2.min(video.created_at);
            entry.3 = entry.3.max(video.created_at);
            entry.4 += self.figures_of(key).engagement();
        }
        let mut out: Vec<_> = by
            .into_iter()
            .map(|(p, (n, s, first, last, e))| (p, n, s, first, last, e))
            .collect();
        out.sort_by(|a, b| {
            b.5.cmp(&a.5)
                .then_with(|| (b.1 + b.2).cmp(&(a.1 + a.2)))
                .then_with(|| a.0.cmp(&b.0))
        });
        out
    }

    /// Distinct authors active over the `days` UTC days ending with `day`.
    pub fn active_authors(&self, day: u64, days: u64) -> usize {
        let first = day.saturating_sub(days.saturating_sub(1));
        self.active
            .range((first, Pubkey([0; 32]))..=(day, Pubkey([0xff; 32])))
            .map(|(_, p)| *p)
            .collect::<BTreeSet<_>>()
            .len()
    }
}

/// Keeps `event` as `who`'s act on `target` if it is newer than the one kept.
fn keep_newest<'e>(
    map: &mut HashMap<(Pubkey, VideoKey), &'e Event>,
    who: Pubkey,
    target: VideoKey,
    event: &'e Event,
) {
    let slot = map.entry((who, target)).or_insert(event);
    if later(event, slot) {
        *slot = event;
    }
}

/// `a` is newer than `b`: later `created_at`, ties to the lowest id.
fn later(a: &Event, b: &Event) -> bool {
    (a.created_at, std::cmp::Reverse(a.id)) > (b.created_at, std::cmp::Reverse(b.id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Keys;

    struct World {
        reference: Reference,
        history: Vec<Event>,
        now: u64,
    }

    impl World {
        fn new() -> World {
            World {
                reference: Reference::new(),
                history: Vec::new(),
                now: 1_764_000_000,
            }
        }

        fn add(&mut self, event: Event) -> Event {
            let outcome = self.reference.insert(&event, self.now);
            if matches!(
                outcome,
                super::super::RefOutcome::Stored | super::super::RefOutcome::Replaced
            ) {
                self.history.push(event.clone());
            }
            event
        }

        fn analytics(&self) -> Analytics {
            Analytics::compute(&self.reference, &self.history, self.now)
        }
    }

    fn tags(list: &[&[&str]]) -> Vec<Vec<String>> {
        list.iter()
            .map(|t| t.iter().map(|s| s.to_string()).collect())
            .collect()
    }

    #[test]
    fn each_counting_rule() {
        let mut w = World::new();
        let t = w.now - 3_600;
        let creator = Keys::from_seed(1);
        let fans: Vec<Keys> = (10..16).map(Keys::from_seed).collect();
        let v1 = w.add(creator.sign(
            t,
            34_235,
            tags(&[
                &["d", "clip"],
                &["title", "first"],
                &["t", "Cats"],
                &["t", "cats"],
            ]),
            String::new(),
        ));
        let address = format!("34235:{}:clip", creator.pubkey().to_hex());
        let key = VideoKey::parse_address(&address).unwrap();
        let v1_id = v1.id.to_hex();
        // A reaction by id of version 1, and one by address.
        w.add(fans[0].sign(t + 1, 7, tags(&[&["e", &v1_id]]), "+".into()));
        w.add(fans[1].sign(
            t + 1,
            7,
            tags(&[&["e", &v1_id], &["a", &address]]),
            "🔥".into(),
        ));
        // Fan 2 reacts twice: only the newer counts, and it is a downvote.
        w.add(fans[2].sign(t + 1, 7, tags(&[&["a", &address]]), "+".into()));
        w.add(fans[2].sign(t + 2, 7, tags(&[&["a", &address]]), "-".into()));
        // Only the last `e` tag is the target (the first names another note).
        w.add(fans[3].sign(
            t + 1,
            7,
            tags(&[&["e", &"ab".repeat(32)], &["e", &v1_id]]),
            "+".into(),
        ));
        // Comments: NIP-22 by root A and by root E; a kind 1 reply (legacy).
        w.add(fans[0].sign(
            t + 3,
            1_111,
            tags(&[&["A", &address], &["K", "34235"]]),
            "nice".into(),
        ));
        w.add(fans[1].sign(t + 3, 1_111, tags(&[&["E", &v1_id]]), "wow".into()));
        w.add(fans[1].sign(t + 4, 1_111, tags(&[&["E", &v1_id]]), "again".into()));
        w.add(fans[4].sign(
            t + 3,
            1,
            tags(&[&["e", &v1_id, "", "root"]]),
            "old style".into(),
        ));
        // Reposts: kind 16 by address, kind 6 by id, and the same fan twice.
        w.add(fans[0].sign(
            t + 5,
            16,
            tags(&[&["a", &address], &["k", "34235"]]),
            String::new(),
        ));
        w.add(fans[5].sign(t + 5, 6, tags(&[&["e", &v1_id]]), String::new()));
        w.add(fans[5].sign(t + 6, 6, tags(&[&["e", &v1_id]]), String::new()));
        // A new version keeps the figures; the old id still finds it.
        let v2 = w.add(creator.sign(
            t + 10,
            34_235,
            tags(&[&["d", "clip"], &["title", "second"]]),
            String::new(),
        ));
        let a = w.analytics();
        let f = a.figures_of(&key);
        assert_eq!(
            f,
            Figures {
                reactions: 3,
                downvotes: 1,
                comments: 3,
                legacy_comments: 1,
                reposts: 2,
            }
        );
        assert_eq!(f.engagement(), 3 + 6 + 6);
        assert_eq!(a.video_by_id(&v1.id).unwrap().1.id, v2.id);
        assert_eq!(a.video_by_id(&v2.id).unwrap().0, &key);
        assert_eq!(
            video_fields(&a.videos[&key]).title.as_deref(),
            Some("second")
        );

        // A deletion by a fan takes their reaction away; a deletion of a
        // comment takes it away; replaying an event changes nothing.
        let reaction = fans[0].sign(t + 20, 7, tags(&[&["a", &address]]), "+".into());
        w.add(reaction.clone());
        let before = w.analytics().figures_of(&key);
        w.add(reaction.clone());
        assert_eq!(
            w.analytics().figures_of(&key),
            before,
            "a replay counts once"
        );
        let comment = w.add(fans[3].sign(t + 21, 1_111, tags(&[&["A", &address]]), "hm".into()));
        assert_eq!(w.analytics().figures_of(&key).comments, 4);
        w.add(fans[3].sign(
            t + 22,
            5,
            tags(&[&["e", &comment.id.to_hex()]]),
            String::new(),
        ));
        assert_eq!(w.analytics().figures_of(&key).comments, 3);
        w.add(fans[5].sign(t + 22, 5, tags(&[&["a", &address]]), String::new()));
        // (A deletion naming someone else's address removes nothing.)
        assert_eq!(w.analytics().videos.len(), 1);
        // The creator deletes the video: it leaves every list.
        w.add(creator.sign(t + 30, 5, tags(&[&["a", &address]]), String::new()));
        let a = w.analytics();
        assert!(a.videos.is_empty() && a.figures.is_empty());
        assert!(a.trending(w.now).is_empty());
    }

    #[test]
    fn expired_acts_leave_the_counts() {
        let mut w = World::new();
        let t = w.now - 100;
        let creator = Keys::from_seed(1);
        let video = w.add(creator.sign(
            t,
            22,
            tags(&[&["url", "https://v.example/a.mp4"]]),
            String::new(),
        ));
        let id = video.id.to_hex();
        let soon = (w.now + 50).to_string();
        w.add(Keys::from_seed(2).sign(
            t,
            7,
            tags(&[&["e", &id], &["expiration", &soon]]),
            "+".into(),
        ));
        w.add(Keys::from_seed(3).sign(t, 7, tags(&[&["e", &id]]), "+".into()));
        let key = VideoKey::Id(video.id);
        assert_eq!(w.analytics().figures_of(&key).reactions, 2);
        w.now += 60;
        assert_eq!(w.analytics().figures_of(&key).reactions, 1);
    }

    #[test]
    fn fields_from_imeta_then_legacy_tags() {
        let k = Keys::from_seed(1);
        let v = k.sign(
            1,
            34_236,
            tags(&[
                &["d", "x"],
                &["title", "A"],
                &["imeta", "dim 480x640", "m video/mp4"],
                &[
                    "imeta",
                    "url https://b.example/v.mp4",
                    "image https://b.example/t.jpg",
                    "duration 6.2",
                    "x abc",
                ],
                &["thumb", "https://old.example/t.jpg"],
                &["t", "Dance"],
                &["t", "dance"],
                &["t", "fun"],
            ]),
            String::new(),
        );
        let f = video_fields(&v);
        assert_eq!(f.url.as_deref(), Some("https://b.example/v.mp4"));
        assert_eq!(f.thumbnail.as_deref(), Some("https://b.example/t.jpg"));
        assert_eq!(f.duration, Some(6.2));
        assert_eq!(f.hash.as_deref(), Some("abc"));
        assert_eq!(f.dim, None, "the first imeta has no url: not the one used");
        assert_eq!(f.hashtags, ["dance", "fun"]);
        let legacy = k.sign(
            1,
            21,
            tags(&[
                &["url", "https://old.example/v.mp4"],
                &["thumb", "https://old.example/t.jpg"],
                &["duration", "x"],
            ]),
            String::new(),
        );
        let f = video_fields(&legacy);
        assert_eq!(f.url.as_deref(), Some("https://old.example/v.mp4"));
        assert_eq!(f.thumbnail.as_deref(), Some("https://old.example/t.jpg"));
        assert_eq!(f.duration, None);
        assert_eq!(f.title, None);
    }

    #[test]
    fn trending_orders_by_decayed_engagement_and_active_days_count_distinct() {
        let now = 1_764_000_000;
        assert!((trending_score(10, now, now) - 10.0).abs() < 1e-9);
        assert!(
            (trending_score(10, now - 24 * 3_600, now) - 10.0 / std::f64::consts::E).abs() < 1e-9
        );
        let mut w = World::new();
        w.now = now;
        let a = Keys::from_seed(1);
        let b = Keys::from_seed(2);
        let old = w.add(a.sign(now - 48 * 3_600, 21, vec![], String::new()));
        let new = w.add(b.sign(now - 3_600, 21, vec![], String::new()));
        let ancient = w.add(a.sign(now - 8 * 86_400, 21, vec![], String::new()));
        for i in 0..5 {
            w.add(Keys::from_seed(100 + i).sign(
                now - 10,
                7,
                tags(&[&["e", &old.id.to_hex()]]),
                "+".into(),
            ));
        }
        w.add(Keys::from_seed(200).sign(
            now - 10,
            7,
            tags(&[&["e", &new.id.to_hex()]]),
            "+".into(),
        ));
        let an = w.analytics();
        let ranked: Vec<VideoKey> = an.trending(now).into_iter().map(|(k, _)| k).collect();
        // 5·e^-2 ≈ 0.68 < 1·e^-(1/24) ≈ 0.96; the 8-day-old video is out.
        assert_eq!(ranked, [VideoKey::Id(new.id), VideoKey::Id(old.id)]);
        assert!(!ranked.contains(&VideoKey::Id(ancient.id)));
        let today = now / 86_400;
        assert_eq!(
            an.active_authors(today, 1),
            7,
            "6 reactors and b today; a's videos are older"
        );
        assert_eq!(an.active_authors(today, 30), 8);
    }
}
