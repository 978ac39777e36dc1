//! The timeline read: the person's follows from their stored contact list,
//! one query for a page of their posts, one for the profiles on it. All of
//! it at request time, from the engine's author indexes (docs/web.md says
//! why no per-person timeline is kept).

use std::collections::{HashMap, HashSet};

use megalith::{Event, EventId, EventStore, Filter, Pubkey};
use megalith_ingest::feed::follows_of;

use crate::page::{Mode, PostView};
use crate::profile::Profile;

/// The posts a feed shows: notes and reposts.
pub const POST_KINDS: [u16; 2] = [1, 6];

/// Where an older page starts: after the post at (`created_at`, `id`) in
/// NIP-01 order (newest first, ties by lowest id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: u64,
    pub id: EventId,
}

impl Cursor {
    /// `1733346605:ab12…` (Unix seconds, then the id in hex).
    pub fn parse(text: &str) -> Result<Cursor, String> {
        let (time, id) = text
            .split_once(':')
            .ok_or("`until` is <created_at>:<event id>, as in the \"Older posts\" link")?;
        let created_at = time
            .parse()
            .map_err(|_| format!("`until` starts with {time:?}, not a Unix time"))?;
        let id = EventId::from_hex(id).map_err(|e| format!("`until`: {e}"))?;
        Ok(Cursor { created_at, id })
    }

    pub fn of(event: &Event) -> Cursor {
        Cursor {
            created_at: event.created_at,
            id: event.id,
        }
    }

    /// Comes after this cursor in NIP-01 order.
    fn before(&self, event: &Event) -> bool {
        event.created_at < self.created_at
            || (event.created_at == self.created_at && event.id > self.id)
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.created_at, self.id.to_hex())
    }
}

/// A page of a timeline.
#[derive(Debug, Default)]
pub struct Page {
    pub posts: Vec<PostView>,
    /// Where the next older page starts, when there are older posts.
    pub older: Option<Cursor>,
    /// The person's contact list is stored (always true in author mode).
    pub has_contacts: bool,
    /// The person's own profile.
    pub profile: Profile,
}

/// The authors whose posts the person's feed shows: the follows of their
/// newest stored contact list (at most `max_follows`), the posts a feed job
/// fetches; none when no contact list is stored.
pub fn feed_authors(
    store: &EventStore,
    person: &Pubkey,
    max_follows: usize,
) -> Result<Option<Vec<Pubkey>>, String> {
    let lists = store
        .query(&[Filter::new().authors([*person]).kinds([3]).limit(1)])
        .map_err(|e| format!("reading the contact list: {e}"))?;
    Ok(lists.first().map(|list| follows_of(list, max_follows)))
}

/// Reads one page: up to `limit` posts after `cursor` (from the newest when
/// none), with their authors' profiles.
pub fn page(
    store: &EventStore,
    person: &Pubkey,
    mode: Mode,
    cursor: Option<Cursor>,
    limit: usize,
    max_follows: usize,
) -> Result<Page, String> {
    let authors = match mode {
        Mode::Author => Some(vec![*person]),
        Mode::Feed => feed_authors(store, person, max_follows)?,
    };
    let mut page = Page {
        has_contacts: authors.is_some(),
        ..Page::default()
    };
    let mut posts = match &authors {
        Some(authors) => posts(store, authors, cursor, limit + 1)?,
        None => Vec::new(),
    };
    if posts.len() > limit {
        posts.truncate(limit);
        page.older = posts.last().map(Cursor::of);
    }
    let reposted = reposted_notes(store, &posts)?;
    let mut people: HashSet<Pubkey> = posts.iter().map(|p| p.pubkey).collect();
    people.extend(reposted.values().map(|e| e.pubkey));
    people.insert(*person);
    let profiles = profiles(store, people)?;
    let profile_of = |p: &Pubkey| profiles.get(p).cloned().unwrap_or_default();
    page.profile = profile_of(person);
    page.posts = posts
        .into_iter()
        .map(|event| PostView {
            author: profile_of(&event.pubkey),
            reposted: reposted
                .get(&event.id)
                .map(|inner| (inner.clone(), profile_of(&inner.pubkey))),
            event,
        })
        .collect();
    Ok(page)
}

/// Up to `want` posts of `authors` after `cursor`, newest first. Posts at
/// the cursor's second that come before it are dropped; when they took
/// places in the answer, it is asked again with room for them.
fn posts(
    store: &EventStore,
    authors: &[Pubkey],
    cursor: Option<Cursor>,
    want: usize,
) -> Result<Vec<Event>, String> {
    let mut room = 0;
    loop {
        let mut filter = Filter::new()
            .authors(authors.iter().copied())
            .kinds(POST_KINDS)
            .limit(want + room);
        if let Some(c) = cursor {
            filter = filter.until(c.created_at);
        }
        let got = store
            .query(&[filter])
            .map_err(|e| format!("reading posts: {e}"))?;
        let full = got.len() == want + room;
        let before = got.len();
        let kept: Vec<Event> = match cursor {
            Some(c) => got.into_iter().filter(|e| c.before(e)).collect(),
            None => got,
        };
        let dropped = before - kept.len();
        if kept.len() >= want || !full || dropped <= room {
            let mut kept = kept;
            kept.truncate(want);
            return Ok(kept);
        }
        room = dropped;
    }
}

/// The notes reposts point at, by the repost's id: the stored note when the
/// store holds it (so it was verified), else the embedded JSON when it
/// parses and its signature verifies, and is the note the `e` tag names.
fn reposted_notes(store: &EventStore, posts: &[Event]) -> Result<HashMap<EventId, Event>, String> {
    let target = |repost: &Event| {
        repost
            .tags
            .iter()
            .find(|t| t.len() >= 2 && t[0] == "e")
            .and_then(|t| EventId::from_hex(&t[1]).ok())
    };
    let reposts: Vec<(&Event, EventId)> = posts
        .iter()
        .filter(|e| e.kind == 6)
        .filter_map(|e| target(e).map(|t| (e, t)))
        .collect();
    if reposts.is_empty() {
        return Ok(HashMap::new());
    }
    let stored: HashMap<EventId, Event> = store
        .query(&[Filter::new().ids(reposts.iter().map(|(_, t)| *t))])
        .map_err(|e| format!("reading reposted notes: {e}"))?
        .into_iter()
        .map(|e| (e.id, e))
        .collect();
    let mut out = HashMap::new();
    for (repost, target) in reposts {
        let note = stored.get(&target).cloned().or_else(|| {
            Event::from_json(&repost.content)
                .ok()
                .filter(|e| e.id == target && e.kind == 1 && e.verify().is_ok())
        });
        if let Some(note) = note {
            out.insert(repost.id, note);
        }
    }
    Ok(out)
}

/// The newest kind 0 profile of each of `people` the store holds.
fn profiles(
    store: &EventStore,
    people: HashSet<Pubkey>,
) -> Result<HashMap<Pubkey, Profile>, String> {
    let events = store
        .query(&[Filter::new().authors(people).kinds([0])])
        .map_err(|e| format!("reading profiles: {e}"))?;
    let mut out = HashMap::new();
    // Newest first: the first of each author wins.
    for event in events {
        out.entry(event.pubkey)
            .or_insert_with(|| Profile::from_metadata(&event.content));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_bad_ones_say_why() {
        let c = Cursor {
            created_at: 1_733_346_605,
            id: EventId([7; 32]),
        };
        assert_eq!(Cursor::parse(&c.to_string()), Ok(c));
        assert!(
            Cursor::parse("123")
                .unwrap_err()
                .contains("<created_at>:<event id>")
        );
        assert!(
            Cursor::parse("x:00")
                .unwrap_err()
                .contains("not a Unix time")
        );
        assert!(Cursor::parse("5:zz").unwrap_err().starts_with("`until`:"));
    }
}
