//! The figures kept incrementally: the store says which events it added
//! and which it removed (replaced, deleted, expired), and the counts follow.
//! Every figure is a function of the live set and of the ids video versions
//! ever had, so the order in which the changes of different authors arrive
//! does not matter (docs/analytics.md, "Where the state lives").

use std::cmp::Reverse;
use std::collections::BTreeMap;

use super::FastMap;
use super::active::Active;
use super::lists::{CreatorFigures, Listed, Lists, Place, Sort, TagFigures};
use super::video::{Figures, VIDEO_KINDS, VideoKey, hashtags, tag_values, trend_key, video_key};
use crate::event::{Event, EventId, EventRef, Pubkey};

/// What the store did.
#[derive(Debug, Clone)]
pub enum Change {
    /// Stored and served from now on.
    Added(Event),
    /// No longer served: replaced by a newer version, deleted, vanished or
    /// expired.
    Removed(Event),
}

/// The acts deduplicated per (actor, target): reactions and reposts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Class {
    Reaction,
    Repost,
}

/// Order of a person's acts on one target: the newest counts (later
/// `created_at`, then the lowest id); the value says whether it is a
/// downvote.
pub(crate) type Acts = BTreeMap<(u64, Reverse<EventId>), bool>;

/// Where an act points, before its `e` target is known as a video version.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Target {
    /// An address (`a`), or an id already known as a version of a video.
    Key(VideoKey),
    /// An id not (yet) known as a video's: kept under `VideoKey::Id` and
    /// moved to the video's key if a version with that id arrives.
    Id(EventId),
}

/// Figures of the live videos, kept as the store adds and removes events.
#[derive(Debug, Default)]
pub struct LiveAnalytics {
    pub(crate) versions: FastMap<EventId, VideoKey>,
    pub(crate) videos: FastMap<VideoKey, Event>,
    pub(crate) acts: FastMap<(Class, Pubkey, VideoKey), Acts>,
    /// The keys (actor, class) with acts on each target, to move them.
    actors: FastMap<VideoKey, Vec<(Class, Pubkey)>>,
    pub(crate) counts: FastMap<VideoKey, Figures>,
    /// The live videos in every order the API reads.
    pub(crate) lists: Lists,
    pub(crate) active: Active,
    /// Counted events with a NIP-40 expiration, by when they leave.
    pub(crate) expiring: BTreeMap<(u64, EventId), Expiring>,
    /// Keys whose figures or video changed in the change being applied.
    touched: Vec<VideoKey>,
}

/// What an event with an expiration leaves behind until it expires.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expiring {
    /// One that counts for videos, whole (its removal needs its tags).
    Event(Event),
    /// Any other: its author and `created_at` (its day's activity).
    Activity(Pubkey, u64),
}

/// [`counts_for_videos`] of an owned event.
fn counts_for_videos_owned(event: &Event) -> bool {
    match event.kind {
        7 | 6 | 16 | 1_111 => true,
        1 => event
            .tags
            .iter()
            .any(|t| t.first().is_some_and(|n| n == "e")),
        kind => VIDEO_KINDS.contains(&kind),
    }
}

/// Whether the figures can depend on an event beyond its author's
/// activity: a video, a reaction, a repost, a comment, or a kind 1 with an
/// `e` tag (a reply).
pub fn counts_for_videos(event: &EventRef<'_>) -> bool {
    match event.kind() {
        7 | 6 | 16 | 1_111 => true,
        1 => event
            .tags()
            .any(|tag| tag.name().is_some_and(|name| name.eq_str("e"))),
        kind => VIDEO_KINDS.contains(&kind),
    }
}

impl LiveAnalytics {
    pub fn new() -> LiveAnalytics {
        LiveAnalytics::default()
    }

    /// Applies one change of the store, with no clock: an event with an
    /// expiration counts until it is removed (see [`LiveAnalytics::apply_at`]).
    pub fn apply(&mut self, change: &Change) {
        self.apply_at(change, 0);
    }

    /// Applies one change seen at `now` (seconds): an event whose NIP-40
    /// expiration has passed is not counted (the store keeps serving no
    /// such event), one that expires later leaves at [`LiveAnalytics::sweep`].
    pub fn apply_at(&mut self, change: &Change, now: u64) {
        match change {
            Change::Added(event) => self.change(event, true, now),
            Change::Removed(event) => self.change(event, false, now),
        }
    }

    /// [`LiveAnalytics::apply_at`] of an event in the store's encoding,
    /// which is only copied when it can count for a video.
    pub fn apply_ref(&mut self, added: bool, event: &EventRef<'_>, now: u64) {
        if event.expiration().is_some() || counts_for_videos(event) {
            self.change(&event.to_event(), added, now);
        } else {
            self.active
                .change(event.pubkey(), event.created_at(), added);
        }
    }

    fn change(&mut self, event: &Event, added: bool, now: u64) {
        if let Some(at) = event.expiration() {
            let slot = (at, event.id);
            if added && at <= now {
                // Never served, but an id of a video version all the same:
                // acts that named it move to its address, as in `add`.
                if let Some(key) = video_key(event) {
                    self.learn_version(event.id, key);
                    self.rank_touched();
                }
                return;
            }
            if added {
                // What `remove` needs later: the whole event only when it
                // can count for a video; else its author's day.
                let kept = if counts_for_videos_owned(event) {
                    Expiring::Event(event.clone())
                } else {
                    Expiring::Activity(event.pubkey, event.created_at)
                };
                self.expiring.insert(slot, kept);
            } else if self.expiring.remove(&slot).is_none() {
                // Expired (and taken out) already, or never counted.
                return;
            }
        }
        self.active.change(event.pubkey, event.created_at, added);
        if added {
            self.add(event);
        } else {
            self.remove(event);
        }
        self.rank_touched();
    }

    /// Whether an event expires at or before `now` (a [`LiveAnalytics::sweep`]
    /// has work).
    pub fn expired_by(&self, now: u64) -> bool {
        self.expiring
            .keys()
            .next()
            .is_some_and(|(at, _)| *at <= now)
    }

    /// Takes out every counted event whose expiration is at or before `now`.
    pub fn sweep(&mut self, now: u64) {
        while let Some(entry) = self.expiring.first_entry() {
            if entry.key().0 > now {
                break;
            }
            match entry.remove() {
                Expiring::Event(event) => {
                    self.active.change(event.pubkey, event.created_at, false);
                    self.remove(&event);
                }
                Expiring::Activity(author, created_at) => {
                    self.active.change(author, created_at, false);
                }
            }
            self.rank_touched();
        }
    }

    fn rank_touched(&mut self) {
        for key in std::mem::take(&mut self.touched) {
            self.rank(key);
        }
    }

    /// Live videos by trending score at `now`, highest first, ties by key:
    /// those created in the last 7 days, at most `limit`.
    pub fn trending(&self, now: u64, limit: usize) -> Vec<&VideoKey> {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let (page, next) =
                self.page(Sort::Trending, None, after.as_ref(), limit - out.len(), now);
            out.extend(page.into_iter().map(|(_, key)| key));
            match next {
                Some(place) if out.len() < limit => after = Some(place),
                _ => return out,
            }
        }
    }

    /// Puts `key` at its place in every list (or takes it out).
    pub(crate) fn rank(&mut self, key: VideoKey) {
        let listed = self.videos.get(&key).map(|video| {
            let engagement = self.counts.get(&key).map_or(0, Figures::engagement);
            // The same version keeps its hashtags (parsed once).
            let tags = match self.lists.get(&key) {
                Some(old) if old.id == video.id => std::sync::Arc::clone(&old.hashtags),
                _ => hashtags(video).into(),
            };
            Listed {
                id: video.id,
                kind: video.kind,
                author: video.pubkey,
                created_at: video.created_at,
                engagement,
                trend: trend_key(engagement, video.created_at),
                hashtags: tags,
            }
        });
        self.lists.set(&key, listed);
    }

    /// What differs between two states (at most `limit` lines): versions,
    /// current videos, acts, figures, activity and expiring events.
    pub(crate) fn differences(&self, other: &LiveAnalytics, limit: usize) -> Vec<String> {
        let mut out = Vec::new();
        let mut note = |line: String| {
            if out.len() < limit {
                out.push(line);
            }
        };
        for (id, key) in &self.versions {
            if other.versions.get(id) != Some(key) {
                note(format!("version {id} of {} is not in the logs", key.text()));
            }
        }
        for (id, key) in &other.versions {
            if !self.versions.contains_key(id) {
                note(format!("version {id} of {} is missing", key.text()));
            }
        }
        let ids = |live: &LiveAnalytics| -> BTreeMap<VideoKey, EventId> {
            live.videos.iter().map(|(k, e)| (k.clone(), e.id)).collect()
        };
        let (mine, theirs) = (ids(self), ids(other));
        for key in mine
            .keys()
            .chain(theirs.keys())
            .collect::<std::collections::BTreeSet<_>>()
        {
            if mine.get(key) != theirs.get(key) {
                note(format!(
                    "video {}: checkpoint has {:?}, the logs {:?}",
                    key.text(),
                    mine.get(key),
                    theirs.get(key)
                ));
            }
        }
        for (slot, acts) in &self.acts {
            if other.acts.get(slot) != Some(acts) {
                note(format!("acts of {} on {} differ", slot.1, slot.2.text()));
            }
        }
        for slot in other.acts.keys() {
            if !self.acts.contains_key(slot) {
                note(format!(
                    "acts of {} on {} are missing",
                    slot.1,
                    slot.2.text()
                ));
            }
        }
        let counted = |live: &LiveAnalytics| -> BTreeMap<VideoKey, Figures> {
            live.counts
                .iter()
                .filter(|(_, f)| **f != Figures::default())
                .map(|(k, f)| (k.clone(), *f))
                .collect()
        };
        let (mine, theirs) = (counted(self), counted(other));
        for key in mine
            .keys()
            .chain(theirs.keys())
            .collect::<std::collections::BTreeSet<_>>()
        {
            if mine.get(key) != theirs.get(key) {
                note(format!(
                    "figures of {}: checkpoint {:?}, the logs {:?}",
                    key.text(),
                    mine.get(key),
                    theirs.get(key)
                ));
            }
        }
        let active = |live: &LiveAnalytics| -> std::collections::BTreeSet<(u32, Pubkey, u32)> {
            live.active.entries().map(|(d, p, n)| (d, *p, n)).collect()
        };
        let (mine, theirs) = (active(self), active(other));
        for entry in mine.symmetric_difference(&theirs) {
            note(format!(
                "active authors: day {} author {} events {} is in only one of checkpoint and logs",
                entry.0, entry.1, entry.2
            ));
        }
        let mine: Vec<_> = self.expiring.keys().collect();
        let theirs: Vec<_> = other.expiring.keys().collect();
        if mine != theirs {
            note(format!(
                "expiring events: checkpoint has {}, the logs {}",
                mine.len(),
                theirs.len()
            ));
        }
        out
    }

    /// Rebuilds what is derived from the acts and videos (after a snapshot
    /// is loaded): who acted on each target, and every list.
    pub(crate) fn derive(&mut self) {
        self.actors.clear();
        for (class, actor, key) in self.acts.keys() {
            self.actors
                .entry(key.clone())
                .or_default()
                .push((*class, *actor));
        }
        let keys: Vec<VideoKey> = self.videos.keys().cloned().collect();
        for key in keys {
            self.rank(key);
        }
    }

    /// A live video's figures (zero when nothing counts for it; none when
    /// no such video is live).
    pub fn figures(&self, key: &VideoKey) -> Option<Figures> {
        self.videos
            .contains_key(key)
            .then(|| self.counts.get(key).copied().unwrap_or_default())
    }

    /// A live video's event (its current version).
    pub fn video(&self, key: &VideoKey) -> Option<&Event> {
        self.videos.get(key)
    }

    /// Live videos.
    pub fn video_count(&self) -> usize {
        self.videos.len()
    }

    /// The key a text names: an event id of any version (64 hex), an
    /// `naddr1...`, or `kind:pubkey:d`; none when it names no video kind
    /// or does not parse. The video need not be live.
    pub fn resolve(&self, text: &str) -> Option<VideoKey> {
        if let Ok(id) = EventId::from_hex(text) {
            return Some(self.versions.get(&id).cloned().unwrap_or(VideoKey::Id(id)));
        }
        if text.starts_with("naddr1") {
            let (kind, pubkey, d) = crate::event::nip19::decode_naddr(text).ok()?;
            return matches!(kind, 34_235 | 34_236).then_some(VideoKey::Address {
                kind,
                pubkey,
                d,
            });
        }
        VideoKey::parse_address(text)
    }

    /// A page of live videos in `sort` order after `after`, of `kind` when
    /// given ([`Sort::Trending`]: only videos of the 7 days before `now`),
    /// and the place the next page starts after (none: the list ended). A
    /// page may hold fewer than `limit` videos and still have a next place:
    /// it examines at most [`PAGE_BUDGET`](super::lists::PAGE_BUDGET)
    /// entries (a rare `kind` is found page by page, never by one long scan).
    pub fn page(
        &self,
        sort: Sort,
        kind: Option<u16>,
        after: Option<&Place>,
        limit: usize,
        now: u64,
    ) -> (Vec<(Place, &VideoKey)>, Option<Place>) {
        let since = now.saturating_sub(7 * 86_400);
        self.lists.page(sort, after, limit, since, |_, listed| {
            kind.is_none_or(|k| k == listed.kind)
                && (sort != Sort::Trending || listed.created_at >= since)
        })
    }

    /// An author's live videos, newest first.
    pub fn by_author(
        &self,
        author: &Pubkey,
        after: Option<&Place>,
        limit: usize,
    ) -> Vec<(Place, &VideoKey)> {
        self.lists.by_author(author, after, limit)
    }

    /// Live videos with hashtag `tag` (any case), newest first.
    pub fn by_tag(
        &self,
        tag: &str,
        after: Option<&Place>,
        limit: usize,
    ) -> Vec<(Place, &VideoKey)> {
        self.lists.by_tag(&tag.to_lowercase(), after, limit)
    }

    /// The hashtags on most live videos.
    pub fn top_tags(&self, limit: usize) -> Vec<(String, TagFigures)> {
        self.lists.top_tags(limit)
    }

    /// Distinct hashtags on live videos.
    pub fn tag_count(&self) -> usize {
        self.lists.tag_count()
    }

    /// Creators by their live videos' engagement.
    pub fn top_creators(&self, limit: usize) -> Vec<(Pubkey, CreatorFigures)> {
        self.lists.top_creators(limit)
    }

    /// A creator's totals (none without live videos).
    pub fn creator(&self, author: &Pubkey) -> Option<CreatorFigures> {
        self.lists.creator(author)
    }

    /// Authors with live videos.
    pub fn creator_count(&self) -> usize {
        self.lists.creator_count()
    }

    /// Distinct authors with a live event created in the `days` UTC days
    /// ending with day number `day` (`created_at / 86400`).
    pub fn active_authors(&self, day: u64, days: u64) -> u64 {
        self.active.distinct(day, days)
    }

    /// For each of the `days` UTC days ending with day number `last`,
    /// oldest first, the distinct authors active over the `window` days
    /// ending with it (1: that day).
    pub fn active_series(&self, last: u64, days: u64, window: u64) -> Vec<u64> {
        self.active.series(last, days, window)
    }

    /// The figures of every live video, summed.
    pub fn totals(&self) -> Figures {
        let mut sum = Figures::default();
        for key in self.videos.keys() {
            if let Some(f) = self.counts.get(key) {
                sum.reactions += f.reactions;
                sum.downvotes += f.downvotes;
                sum.comments += f.comments;
                sum.legacy_comments += f.legacy_comments;
                sum.reposts += f.reposts;
            }
        }
        sum
    }

    /// The live videos.
    pub fn videos(&self) -> impl Iterator<Item = (&VideoKey, &Event)> {
        self.videos.iter()
    }

    /// The live video an id of any of its versions names.
    pub fn video_by_id(&self, id: &EventId) -> Option<(&VideoKey, &Event)> {
        self.videos.get_key_value(self.versions.get(id)?)
    }

    /// Records `id` as a version of `key`; acts that named the id before
    /// it was known move to the key.
    fn learn_version(&mut self, id: EventId, key: VideoKey) {
        let known = self.versions.insert(id, key.clone());
        if known.is_none() && key != VideoKey::Id(id) {
            self.move_target(&VideoKey::Id(id), &key);
        }
    }

    fn add(&mut self, event: &Event) {
        if let Some(key) = video_key(event) {
            self.learn_version(event.id, key.clone());
            self.videos.insert(key.clone(), event.clone());
            self.touched.push(key);
        } else {
            self.count(event, true);
        }
    }

    fn remove(&mut self, event: &Event) {
        if let Some(key) = video_key(event) {
            // Only the current version leaves the lists; the id stays a
            // version of the key.
            if self.videos.get(&key).is_some_and(|v| v.id == event.id) {
                self.videos.remove(&key);
                self.touched.push(key);
            }
        } else {
            self.count(event, false);
        }
    }

    /// Counts an act or a comment in (`added`) or out.
    fn count(&mut self, event: &Event, added: bool) {
        match event.kind {
            7 | 6 | 16 => {
                let class = if event.kind == 7 {
                    Class::Reaction
                } else {
                    Class::Repost
                };
                if let Some(target) = self.act_target(event) {
                    let key = self.key_of(target);
                    let at = (event.created_at, Reverse(event.id));
                    let down = class == Class::Reaction && event.content == "-";
                    self.change_acts(class, event.pubkey, key, |acts| {
                        if added {
                            acts.insert(at, down);
                        } else {
                            acts.remove(&at);
                        }
                    });
                }
            }
            1_111 | 1 => {
                if let Some(target) = self.comment_target(event) {
                    let key = self.key_of(target);
                    self.touched.push(key.clone());
                    let f = self.counts.entry(key).or_default();
                    let field = if event.kind == 1_111 {
                        &mut f.comments
                    } else {
                        &mut f.legacy_comments
                    };
                    *field = if added {
                        *field + 1
                    } else {
                        field.saturating_sub(1)
                    };
                }
            }
            _ => {}
        }
    }

    /// A reaction's or repost's target: the last `a` (a kind 16's, a kind
    /// 7's), else the last `e`.
    fn act_target(&self, event: &Event) -> Option<Target> {
        let by_address = matches!(event.kind, 7 | 16)
            .then(|| {
                tag_values(event, "a")
                    .last()
                    .and_then(VideoKey::parse_address)
            })
            .flatten();
        by_address.map(Target::Key).or_else(|| {
            tag_values(event, "e")
                .last()
                .and_then(|id| EventId::from_hex(id).ok())
                .map(Target::Id)
        })
    }

    /// A comment's video: kind 1111's root `A`, else its root `E`; kind 1's
    /// `e` marked `root`, else its first `e`.
    fn comment_target(&self, event: &Event) -> Option<Target> {
        let id = |text: &str| EventId::from_hex(text).ok().map(Target::Id);
        if event.kind == 1_111 {
            return tag_values(event, "A")
                .next()
                .and_then(VideoKey::parse_address)
                .map(Target::Key)
                .or_else(|| tag_values(event, "E").next().and_then(id));
        }
        event
            .tags
            .iter()
            .find(|t| t.len() >= 4 && t[0] == "e" && t[3] == "root")
            .map(|t| t[1].as_str())
            .or_else(|| tag_values(event, "e").next())
            .and_then(id)
    }

    /// Where a target's counts are kept now.
    fn key_of(&self, target: Target) -> VideoKey {
        match target {
            Target::Key(key) => key,
            Target::Id(id) => self.versions.get(&id).cloned().unwrap_or(VideoKey::Id(id)),
        }
    }

    /// Changes one person's acts on a target, keeping the counts right:
    /// the group's contribution (its newest act) is taken out before and
    /// put back after.
    fn change_acts(
        &mut self,
        class: Class,
        actor: Pubkey,
        key: VideoKey,
        change: impl FnOnce(&mut Acts),
    ) {
        let slot = (class, actor, key.clone());
        let before = self.acts.get(&slot).and_then(newest);
        let acts = self.acts.entry(slot.clone()).or_default();
        let was_empty = acts.is_empty();
        change(acts);
        let after = newest(acts);
        if acts.is_empty() {
            self.acts.remove(&slot);
            if let Some(list) = self.actors.get_mut(&key) {
                list.retain(|a| *a != (class, actor));
            }
        } else if was_empty {
            self.actors
                .entry(key.clone())
                .or_default()
                .push((class, actor));
        }
        self.touched.push(key.clone());
        let f = self.counts.entry(key).or_default();
        contribute(f, class, before, false);
        contribute(f, class, after, true);
    }

    /// Moves every act and count kept under `from` to `to` (an id learnt to
    /// be a version of an addressable video).
    fn move_target(&mut self, from: &VideoKey, to: &VideoKey) {
        // Comments move as counts; reactions and reposts are merged per
        // person (one may have acted on both the id and the address), and
        // counted again under `to`.
        self.touched.push(from.clone());
        self.touched.push(to.clone());
        if let Some(moved) = self.counts.remove(from) {
            let f = self.counts.entry(to.clone()).or_default();
            f.comments += moved.comments;
            f.legacy_comments += moved.legacy_comments;
        }
        for (class, actor) in self.actors.remove(from).unwrap_or_default() {
            if let Some(acts) = self.acts.remove(&(class, actor, from.clone())) {
                self.change_acts(class, actor, to.clone(), |kept| kept.extend(acts));
            }
        }
    }
}

/// The newest act of a group: whether it is a downvote.
fn newest(acts: &Acts) -> Option<bool> {
    acts.iter().next_back().map(|(_, down)| *down)
}

/// Adds (or takes away) a group's contribution: its newest act.
fn contribute(f: &mut Figures, class: Class, newest: Option<bool>, add: bool) {
    let Some(down) = newest else {
        return;
    };
    let field = match (class, down) {
        (Class::Reaction, false) => &mut f.reactions,
        (Class::Reaction, true) => &mut f.downvotes,
        (Class::Repost, _) => &mut f.reposts,
    };
    if add {
        *field += 1;
    } else {
        *field = field.saturating_sub(1);
    }
}
