//! What a generated stream looks like: seed, authors, time, skew and sizes.

/// Settings of a [`Generator`](super::Generator). The kind mix is fixed (see the
/// [module documentation](super)).
#[derive(Debug, Clone, PartialEq)]
pub struct GenConfig {
    /// Seed of every random choice and of the authors' keys: the same config gives the same
    /// events. Default 1.
    pub seed: u64,
    /// Number of distinct authors (keypairs). Deriving each key costs about 20 µs, once.
    /// Default 10_000.
    pub authors: usize,
    /// `created_at` of the first event, in Unix seconds. The clock only moves forward from
    /// here, about 2.7 events per second on average with many events sharing a second, so
    /// 100 million events span about 14 months. Default 1_700_000_000 (2023-11-14).
    pub start_time: u64,
    /// Zipf exponent `s` of author activity: the author of rank r (0 = most active) writes
    /// notes, reactions, reposts, comments and videos in proportion to 1 / (r + 1)^s, and is
    /// followed in the same proportion. Profiles, contact lists and relay lists are updated
    /// with half this exponent (the busiest author does not publish a contact list every few
    /// minutes). Default 1.05.
    pub zipf_exponent: f64,
    /// Median length of a note's content, in bytes (log-normal, shape 1.0). Default 120.
    pub note_median_bytes: usize,
    /// Longest note content, in bytes; longer draws are cut. Default 8_192.
    pub max_note_bytes: usize,
    /// Most follows in a contact list (kind 3; first lists are log-normal with median 60). A kind 3
    /// of 1,000 `p` tags is about 73 KB, over the 64 KiB event limit, so values above
    /// [`GenConfig::FOLLOWS_THAT_FIT`] are lowered to it. Default 850.
    pub max_follows: usize,
    /// The relays that relay lists (kind 10002) and relay hints name; `None`: sixteen
    /// well-known public relays. Tests and local benchmarks name their own loopback relays
    /// here, so that nothing built from the data dials a public host. Default `None`.
    pub relays: Option<Vec<String>>,
    /// Whom contact lists follow. Default [`Follows::Popular`].
    pub follows: Follows,
}

/// How a contact list (kind 3) picks the accounts it follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Follows {
    /// Zipf-drawn, like activity: the busiest authors are followed most, so
    /// a follow feed's authors have many posts.
    #[default]
    Popular,
    /// Uniform over every author: with many authors, most followed accounts
    /// post rarely (the shape of a follow list on a large public network,
    /// and the hard case for a follow feed, whose authors' posts are spread
    /// thin through the store).
    Uniform,
}

impl GenConfig {
    /// The largest contact list whose kind 3 event stays under the default 64 KiB limit.
    pub const FOLLOWS_THAT_FIT: usize = 880;
}

impl Default for GenConfig {
    fn default() -> GenConfig {
        GenConfig {
            seed: 1,
            authors: 10_000,
            start_time: 1_700_000_000,
            zipf_exponent: 1.05,
            note_median_bytes: 120,
            max_note_bytes: 8_192,
            max_follows: 850,
            relays: None,
            follows: Follows::Popular,
        }
    }
}
