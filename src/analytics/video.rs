//! What the analytics count and show of a video: its key (address or id),
//! its figures and scores, and its fields from `imeta` or the legacy tags
//! (docs/analytics.md, "The counting rules").

use std::collections::{BTreeSet, HashMap};

use crate::event::{Event, EventId, Pubkey};

/// The video kinds: NIP-71 regular (21 normal, 22 short) and addressable
/// (34235 normal, 34236 short).
pub const VIDEO_KINDS: [u16; 4] = [21, 22, 34_235, 34_236];

/// What a video is known by: its address when addressable, else its id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VideoKey {
    Address {
        kind: u16,
        pubkey: Pubkey,
        d: String,
    },
    Id(EventId),
}

impl VideoKey {
    /// The smallest key (for ranges that start at a score).
    pub fn min() -> VideoKey {
        VideoKey::Address {
            kind: 0,
            pubkey: Pubkey([0; 32]),
            d: String::new(),
        }
    }

    /// `kind:pubkey:d`, or the id in hex.
    pub fn text(&self) -> String {
        match self {
            VideoKey::Address { kind, pubkey, d } => format!("{kind}:{}:{d}", pubkey.to_hex()),
            VideoKey::Id(id) => id.to_hex(),
        }
    }

    /// Parses an `a` tag value `kind:pubkey:d` naming a video address.
    pub fn parse_address(text: &str) -> Option<VideoKey> {
        let mut parts = text.splitn(3, ':');
        let kind: u16 = parts.next()?.parse().ok()?;
        let pubkey = Pubkey::from_hex(parts.next()?).ok()?;
        let d = parts.next()?.to_string();
        matches!(kind, 34_235 | 34_236).then_some(VideoKey::Address { kind, pubkey, d })
    }
}

/// Its `t` tags, lower-cased, each once, sorted (as [`VideoFields::hashtags`]).
pub fn hashtags(event: &Event) -> Vec<String> {
    let set: BTreeSet<String> = event
        .tags
        .iter()
        .filter(|t| t.len() >= 2 && t[0] == "t" && !t[1].is_empty())
        .map(|t| t[1].to_lowercase())
        .collect();
    set.into_iter().collect()
}

/// A video event's key, or none when it is not a video.
pub fn video_key(event: &Event) -> Option<VideoKey> {
    match event.kind {
        21 | 22 => Some(VideoKey::Id(event.id)),
        // The store's rule for an address: the first `d` tag's value, ""
        // when it has none (`Event::d_tag`).
        34_235 | 34_236 => Some(VideoKey::Address {
            kind: event.kind,
            pubkey: event.pubkey,
            d: event.d_tag().to_string(),
        }),
        _ => None,
    }
}

/// A video's figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Figures {
    pub reactions: u64,
    pub downvotes: u64,
    pub comments: u64,
    pub legacy_comments: u64,
    pub reposts: u64,
}

impl Figures {
    /// `reactions + 2·comments + 3·reposts`.
    pub fn engagement(&self) -> u64 {
        self.reactions + 2 * self.comments + 3 * self.reposts
    }
}

/// `engagement · exp(−age_hours / 24)`, for a video created at
/// `created_at`, seen at `now`.
pub fn trending_score(engagement: u64, created_at: u64, now: u64) -> f64 {
    let age_hours = now.saturating_sub(created_at) as f64 / 3_600.0;
    engagement as f64 * (-age_hours / 24.0).exp()
}

/// Where the trend keys of videos without engagement start.
pub(crate) const ZERO_TRENDS: i64 = i64::MIN / 2;

/// The order of `engagement · exp(−age_hours/24)` among videos, whatever
/// the time: `ln(engagement) + created_at/86400`, in fixed point (10^-9);
/// no engagement sorts below any (docs/analytics.md, "Scores").
pub fn trend_key(engagement: u64, created_at: u64) -> i64 {
    if engagement == 0 {
        // Below every engaged video, newest first among themselves (so a
        // page can stop at the first one older than 7 days).
        return ZERO_TRENDS + created_at.min(1 << 40) as i64;
    }
    let value = (engagement as f64).ln() + created_at as f64 / 86_400.0;
    (value * 1e9).round() as i64
}

/// What a listed video shows, from its event's tags.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VideoFields {
    pub title: Option<String>,
    pub url: Option<String>,
    pub thumbnail: Option<String>,
    pub dim: Option<String>,
    pub mime: Option<String>,
    pub hash: Option<String>,
    /// Seconds, as written (decimals allowed).
    pub duration: Option<f64>,
    /// `t` tags, lower-cased, each once, sorted.
    pub hashtags: Vec<String>,
}

/// The fields of a video event: `imeta` first (the first one with a
/// `url`), then the legacy `url`, `thumb`, `image` and `duration` tags.
pub fn video_fields(event: &Event) -> VideoFields {
    let imeta: HashMap<&str, &str> = event
        .tags
        .iter()
        .filter(|t| t.first().is_some_and(|n| n == "imeta"))
        .map(|t| {
            t[1..]
                .iter()
                .filter_map(|f| f.split_once(' '))
                .collect::<HashMap<&str, &str>>()
        })
        .find(|fields| fields.contains_key("url"))
        .unwrap_or_default();
    let field = |name: &str| imeta.get(name).map(|v| v.to_string());
    VideoFields {
        title: tag_value(event, "title").map(str::to_string),
        url: field("url").or_else(|| tag_value(event, "url").map(str::to_string)),
        thumbnail: field("image")
            .or_else(|| tag_value(event, "thumb").map(str::to_string))
            .or_else(|| tag_value(event, "image").map(str::to_string)),
        dim: field("dim"),
        mime: field("m"),
        hash: field("x"),
        duration: field("duration")
            .or_else(|| tag_value(event, "duration").map(str::to_string))
            .and_then(|d| d.parse().ok())
            .filter(|d: &f64| d.is_finite() && *d >= 0.0),
        hashtags: hashtags(event),
    }
}

/// The value of the first tag named `name`.
pub fn tag_value<'e>(event: &'e Event, name: &str) -> Option<&'e str> {
    event
        .tags
        .iter()
        .find(|t| t.len() >= 2 && t[0] == name)
        .map(|t| t[1].as_str())
}

/// The values of every tag named `name`, in order.
pub fn tag_values<'e>(event: &'e Event, name: &'e str) -> impl Iterator<Item = &'e str> {
    event
        .tags
        .iter()
        .filter(move |t| t.len() >= 2 && t[0] == name)
        .map(|t| t[1].as_str())
}
