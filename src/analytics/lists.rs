//! The orders the REST API reads top-down: live videos by time, by
//! engagement, by trending key, by author and by hashtag; hashtags by use;
//! creators by engagement. Each live video has one [`Listed`] record, and a
//! change of it takes the old record's entries out and puts the new one's
//! in, so every list is exact after every change.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use super::FastMap;
use super::video::VideoKey;
use crate::event::Pubkey;

/// What the lists know of a live video.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Listed {
    /// The version listed.
    pub id: crate::event::EventId,
    pub kind: u16,
    pub author: Pubkey,
    pub created_at: u64,
    pub engagement: u64,
    /// [`super::trend_key`] of the engagement and time.
    pub trend: i64,
    /// Shared with the next record of the same version (an act changes
    /// only the engagement).
    pub hashtags: std::sync::Arc<[String]>,
}

/// A hashtag's figures over the live videos.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TagFigures {
    /// Live videos with the tag.
    pub videos: u64,
    /// Distinct authors of those videos.
    pub creators: u64,
    /// The newest such video's `created_at`.
    pub last_used: u64,
}

/// A creator's totals over their live videos.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreatorFigures {
    /// Normal videos (kinds 21 and 34235).
    pub normal: u64,
    /// Short videos (kinds 22 and 34236).
    pub short: u64,
    /// The oldest and newest video's `created_at`.
    pub first: u64,
    pub last: u64,
    /// The sum of their videos' engagement.
    pub engagement: u64,
}

impl CreatorFigures {
    pub fn videos(&self) -> u64 {
        self.normal + self.short
    }
}

#[derive(Debug, Default)]
struct TagState {
    videos: u64,
    creators: FastMap<Pubkey, u64>,
}

#[derive(Debug, Default)]
struct CreatorState {
    normal: u64,
    short: u64,
    engagement: u64,
    /// `created_at` of each live video (several may share one).
    times: BTreeMap<u64, u64>,
}

/// Whether a video kind is a short one.
pub fn is_short(kind: u16) -> bool {
    matches!(kind, 22 | 34_236)
}

/// A position in a list: the entry a page ended with. Every list sorts
/// highest first, ties by key; `score` is the list's own (time,
/// engagement or trending key), `time` the video's `created_at` (the
/// popular list's second order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub score: i64,
    pub time: u64,
    pub key: VideoKey,
}

/// Entries one page may examine (those a filter passes over included);
/// past that, the page ends early with the place to go on from.
pub const PAGE_BUDGET: usize = 20_000;

/// Trending keys of videos without engagement start here (see
/// `trend_key`); below every engaged video's.
const ZERO_PART: i64 = super::video::ZERO_TRENDS + (1 << 40);

#[derive(Debug, Default)]
pub(crate) struct Lists {
    listed: FastMap<VideoKey, Listed>,
    recent: BTreeSet<(Reverse<u64>, VideoKey)>,
    /// Engagement, then time.
    popular: BTreeSet<(Reverse<u64>, Reverse<u64>, VideoKey)>,
    trending: BTreeSet<(Reverse<i64>, VideoKey)>,
    by_author: BTreeSet<(Pubkey, Reverse<u64>, VideoKey)>,
    by_tag: BTreeSet<(String, Reverse<u64>, VideoKey)>,
    tags: FastMap<String, TagState>,
    /// Tags by live videos, then name.
    tag_order: BTreeSet<(Reverse<u64>, String)>,
    creators: FastMap<Pubkey, CreatorState>,
    /// Creators by engagement, then videos, then key.
    creator_order: BTreeSet<(Reverse<u64>, Reverse<u64>, Pubkey)>,
}

/// Which order [`Lists::page`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    /// Newest first.
    Recent,
    /// Highest engagement first, then newest.
    Popular,
    /// Highest trending score first (see `trend_key`).
    Trending,
}

impl Lists {
    /// Sets `key`'s record (none: it left the lists).
    pub fn set(&mut self, key: &VideoKey, new: Option<Listed>) {
        let old = self.listed.remove(key);
        if old == new {
            if let Some(old) = old {
                self.listed.insert(key.clone(), old);
            }
            return;
        }
        if let (Some(old), Some(new)) = (&old, &new)
            && old.id == new.id
        {
            // The same version: only the orders by engagement move (a
            // video's hashtags are not walked again for every act).
            self.engage(key, old, false);
            self.engage(key, new, true);
            self.listed.insert(key.clone(), new.clone());
            return;
        }
        if let Some(old) = &old {
            self.enter(key, old, false);
        }
        if let Some(new) = new {
            self.enter(key, &new, true);
            self.listed.insert(key.clone(), new);
        }
    }

    /// Puts a record's engagement entries in (`add`) or takes them out:
    /// popular, trending and its creator's total.
    fn engage(&mut self, key: &VideoKey, l: &Listed, add: bool) {
        toggle(
            &mut self.popular,
            (Reverse(l.engagement), Reverse(l.created_at), key.clone()),
            add,
        );
        toggle(&mut self.trending, (Reverse(l.trend), key.clone()), add);
        if let Some(state) = self.creators.get_mut(&l.author) {
            let videos = state.normal + state.short;
            self.creator_order
                .remove(&(Reverse(state.engagement), Reverse(videos), l.author));
            if add {
                state.engagement += l.engagement;
            } else {
                state.engagement = state.engagement.saturating_sub(l.engagement);
            }
            self.creator_order
                .insert((Reverse(state.engagement), Reverse(videos), l.author));
        }
    }

    pub fn get(&self, key: &VideoKey) -> Option<&Listed> {
        self.listed.get(key)
    }

    /// Puts a record's entries in (`add`) or takes them out.
    fn enter(&mut self, key: &VideoKey, l: &Listed, add: bool) {
        toggle(&mut self.recent, (Reverse(l.created_at), key.clone()), add);
        toggle(
            &mut self.popular,
            (Reverse(l.engagement), Reverse(l.created_at), key.clone()),
            add,
        );
        toggle(&mut self.trending, (Reverse(l.trend), key.clone()), add);
        toggle(
            &mut self.by_author,
            (l.author, Reverse(l.created_at), key.clone()),
            add,
        );
        for tag in l.hashtags.iter() {
            toggle(
                &mut self.by_tag,
                (tag.clone(), Reverse(l.created_at), key.clone()),
                add,
            );
            let state = self.tags.entry(tag.clone()).or_default();
            self.tag_order.remove(&(Reverse(state.videos), tag.clone()));
            bump(&mut state.videos, add);
            let by = state.creators.entry(l.author).or_default();
            bump(by, add);
            if *by == 0 {
                state.creators.remove(&l.author);
            }
            if state.videos == 0 {
                self.tags.remove(tag);
            } else {
                self.tag_order.insert((Reverse(state.videos), tag.clone()));
            }
        }
        let state = self.creators.entry(l.author).or_default();
        self.creator_order.remove(&(
            Reverse(state.engagement),
            Reverse(state.normal + state.short),
            l.author,
        ));
        bump(
            if is_short(l.kind) {
                &mut state.short
            } else {
                &mut state.normal
            },
            add,
        );
        if add {
            state.engagement += l.engagement;
        } else {
            state.engagement = state.engagement.saturating_sub(l.engagement);
        }
        let at = state.times.entry(l.created_at).or_default();
        bump(at, add);
        if *at == 0 {
            state.times.remove(&l.created_at);
        }
        if state.normal + state.short == 0 {
            self.creators.remove(&l.author);
        } else {
            self.creator_order.insert((
                Reverse(state.engagement),
                Reverse(state.normal + state.short),
                l.author,
            ));
        }
    }

    /// Up to `limit` keys of `sort` after `after` that `keep` accepts,
    /// examining at most [`PAGE_BUDGET`] entries, and the place to go on
    /// from (none: the list ended). [`Sort::Trending`] lists videos created
    /// from `since` on: it skips the engaged ones whose key says they are
    /// older, and stops at the first older one without engagement.
    pub fn page<'s>(
        &'s self,
        sort: Sort,
        after: Option<&Place>,
        limit: usize,
        since: u64,
        mut keep: impl FnMut(&VideoKey, &Listed) -> bool,
    ) -> (Vec<(Place, &'s VideoKey)>, Option<Place>) {
        let mut out = Vec::new();
        let mut examined = 0;
        let mut last: Option<Place> = None;
        // Visits one entry; false when the page is full or out of budget.
        let mut visit = |key: &VideoKey, out: &mut Vec<(Place, &'s VideoKey)>| -> bool {
            let (key, listed) = self.listed.get_key_value(key).expect("listed");
            let place = Place {
                score: match sort {
                    Sort::Recent => listed.created_at as i64,
                    Sort::Popular => listed.engagement as i64,
                    Sort::Trending => listed.trend,
                },
                time: listed.created_at,
                key: key.clone(),
            };
            if keep(key, listed) {
                out.push((place.clone(), key));
            }
            last = Some(place);
            examined += 1;
            out.len() < limit && examined < PAGE_BUDGET
        };
        if limit == 0 {
            return (out, after.cloned());
        }
        let mut ended = true;
        match sort {
            Sort::Recent => {
                let from = after.map_or(Bound::Unbounded, |p| {
                    Bound::Excluded((Reverse(p.time), p.key.clone()))
                });
                for (_, key) in self.recent.range((from, Bound::Unbounded)) {
                    if !visit(key, &mut out) {
                        ended = false;
                        break;
                    }
                }
            }
            Sort::Popular => {
                let from = after.map_or(Bound::Unbounded, |p| {
                    Bound::Excluded((
                        Reverse(p.score.max(0) as u64),
                        Reverse(p.time),
                        p.key.clone(),
                    ))
                });
                for (_, _, key) in self.popular.range((from, Bound::Unbounded)) {
                    if !visit(key, &mut out) {
                        ended = false;
                        break;
                    }
                }
            }
            Sort::Trending => {
                // Engaged videos whose key is below this are all older
                // than `since` (ln(engagement) >= 0).
                let floor = super::video::trend_key(1, since);
                let mut from = after.map_or(Bound::Unbounded, |p| {
                    Bound::Excluded((Reverse(p.score), p.key.clone()))
                });
                'parts: for part in 0..2 {
                    for (Reverse(trend), key) in
                        self.trending.range((from.clone(), Bound::Unbounded))
                    {
                        if part == 0 && *trend < floor && *trend > ZERO_PART {
                            // The rest of the engaged part is too old: on
                            // to the videos without engagement.
                            from = Bound::Included((Reverse(ZERO_PART), VideoKey::min()));
                            continue 'parts;
                        }
                        if *trend <= ZERO_PART && self.listed[key].created_at < since {
                            break 'parts;
                        }
                        if !visit(key, &mut out) {
                            ended = false;
                            break 'parts;
                        }
                    }
                    break;
                }
            }
        }
        (out, if ended { None } else { last })
    }

    /// An author's live videos, newest first, after `after`.
    pub fn by_author(
        &self,
        author: &Pubkey,
        after: Option<&Place>,
        limit: usize,
    ) -> Vec<(Place, &VideoKey)> {
        newest_first(&self.by_author, author, after, limit)
    }

    /// Live videos with hashtag `tag` (lower case), newest first.
    pub fn by_tag(
        &self,
        tag: &str,
        after: Option<&Place>,
        limit: usize,
    ) -> Vec<(Place, &VideoKey)> {
        newest_first(&self.by_tag, &tag.to_string(), after, limit)
    }

    /// The most used hashtags, most videos first.
    pub fn top_tags(&self, limit: usize) -> Vec<(String, TagFigures)> {
        self.tag_order
            .iter()
            .take(limit)
            .map(|(_, tag)| (tag.clone(), self.tag_figures(tag).unwrap_or_default()))
            .collect()
    }

    pub fn tag_figures(&self, tag: &str) -> Option<TagFigures> {
        let state = self.tags.get(tag)?;
        let last_used = self
            .by_tag
            .range((tag.to_string(), Reverse(u64::MAX), VideoKey::min())..)
            .next()
            .filter(|(t, _, _)| t == tag)
            .map_or(0, |(_, Reverse(time), _)| *time);
        Some(TagFigures {
            videos: state.videos,
            creators: state.creators.len() as u64,
            last_used,
        })
    }

    /// Distinct hashtags on live videos.
    pub fn tag_count(&self) -> usize {
        self.tags.len()
    }

    /// Creators by the engagement of their live videos, highest first.
    pub fn top_creators(&self, limit: usize) -> Vec<(Pubkey, CreatorFigures)> {
        self.creator_order
            .iter()
            .take(limit)
            .filter_map(|(_, _, author)| Some((*author, self.creator(author)?)))
            .collect()
    }

    pub fn creator(&self, author: &Pubkey) -> Option<CreatorFigures> {
        let state = self.creators.get(author)?;
        Some(CreatorFigures {
            normal: state.normal,
            short: state.short,
            first: state.times.keys().next().copied().unwrap_or(0),
            last: state.times.keys().next_back().copied().unwrap_or(0),
            engagement: state.engagement,
        })
    }

    /// Authors with at least one live video.
    pub fn creator_count(&self) -> usize {
        self.creators.len()
    }
}

/// The entries of `set` under `prefix` (an author, a hashtag), newest
/// first, after `after`, at most `limit`.
fn newest_first<'s, P: Ord + Clone>(
    set: &'s BTreeSet<(P, Reverse<u64>, VideoKey)>,
    prefix: &P,
    after: Option<&Place>,
    limit: usize,
) -> Vec<(Place, &'s VideoKey)> {
    let from = match after {
        Some(p) => Bound::Excluded((prefix.clone(), Reverse(p.time), p.key.clone())),
        None => Bound::Included((prefix.clone(), Reverse(u64::MAX), VideoKey::min())),
    };
    set.range((from, Bound::Unbounded))
        .take_while(|(p, _, _)| p == prefix)
        .take(limit)
        .map(|(_, Reverse(time), key)| {
            let place = Place {
                score: *time as i64,
                time: *time,
                key: key.clone(),
            };
            (place, key)
        })
        .collect()
}

fn toggle<T: Ord>(set: &mut BTreeSet<T>, item: T, add: bool) {
    if add {
        set.insert(item);
    } else {
        set.remove(&item);
    }
}

fn bump(n: &mut u64, add: bool) {
    if add {
        *n += 1;
    } else {
        *n = n.saturating_sub(1);
    }
}
