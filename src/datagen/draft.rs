//! Drafting one event of each shape: which kind comes next, who writes it, what it points at
//! and its tags, following NIP-01, 10, 18, 22, 25, 02, 65, 71 and 09.

use super::generator::{Draft, Generator};
use super::history::Target;
use super::text::{self, TOPICS};
use crate::event::nip19;

/// The share of each kind in a generated stream, in percent. Drafts that need an earlier
/// event when there is none yet (a reaction as the very first event) become kind 1 notes, and
/// a kind 16 with no video or comment to repost becomes a kind 6, so the first few hundred
/// events hold slightly more notes.
pub const KIND_MIX: [(u16, u64); 11] = [
    (1, 55),
    (7, 20),
    (6, 3),
    (16, 2),
    (1_111, 5),
    (0, 4),
    (3, 4),
    (10_002, 2),
    (34_235, 2),
    (34_236, 1),
    (5, 2),
];

fn tag(fields: &[&str]) -> Vec<String> {
    fields.iter().map(|field| (*field).to_owned()).collect()
}

impl Generator {
    pub(super) fn draft(&mut self) -> Draft {
        self.tick();
        let mut roll = self.rng.below(100);
        let mut kind = 1;
        for (candidate, percent) in KIND_MIX {
            if roll < percent {
                kind = candidate;
                break;
            }
            roll -= percent;
        }
        match kind {
            7 => self.reaction().unwrap_or_else(|| self.note()),
            6 => self.repost().unwrap_or_else(|| self.note()),
            16 => self
                .generic_repost()
                .or_else(|| self.repost())
                .unwrap_or_else(|| self.note()),
            1_111 => self.comment().unwrap_or_else(|| self.note()),
            0 => self.profile(),
            3 => self.contact_list(),
            10_002 => self.relay_list(),
            34_235 | 34_236 => self.video(kind),
            5 => self.deletion().unwrap_or_else(|| self.note()),
            _ => self.note(),
        }
    }

    /// A relay hint: empty half the time, as many clients leave it.
    fn relay_hint(&mut self) -> String {
        if self.rng.chance(50) {
            String::new()
        } else {
            self.relay()
        }
    }

    /// One of the relays the data names.
    fn relay(&mut self) -> String {
        let i = self.rng.index(self.relays.len());
        self.relays[i].clone()
    }

    /// A note that draws engagement. Seven times in ten, a draw from the attention window
    /// (preferential attachment: recent notes that already drew replies and reactions draw
    /// more, which gives reaction counts and thread sizes a heavy tail); otherwise one of the
    /// newest notes of a Zipf-drawn author, or failing that a recent note of anyone.
    fn engaged_note(&mut self) -> Option<u32> {
        if self.history.notes.is_empty() {
            return None;
        }
        if self.rng.chance(70) {
            let attention = &self.history.attention;
            return Some(attention[self.rng.index(attention.len())]);
        }
        for _ in 0..4 {
            let author = self.active_author() as usize;
            let notes = &self.history.authors[author].notes;
            if !notes.is_empty() {
                let depth = self.rng.below(16) + 1;
                let back = (self.rng.below(depth) as usize).min(notes.len() - 1);
                return Some(notes[notes.len() - 1 - back]);
            }
        }
        let count = self.history.notes.len();
        Some((count - 1 - self.rng.index(count.min(256))) as u32)
    }

    fn note_target(&mut self) -> Option<Target> {
        let note = self.engaged_note()?;
        let posted = self.history.note_posted(note);
        Some(Target {
            id: posted.id,
            author: posted.author,
            kind: 1,
            address: None,
            note: Some(note),
        })
    }

    /// A video that is not deleted, most often a recent one.
    fn live_video(&mut self) -> Option<u32> {
        let count = self.history.videos.len();
        for _ in 0..4 {
            if count == 0 {
                return None;
            }
            let index = if self.rng.chance(50) {
                count - 1 - self.rng.index(count.min(64))
            } else {
                self.rng.index(count)
            };
            if !self.history.videos[index].deleted {
                return Some(index as u32);
            }
        }
        None
    }

    fn video_target(&mut self) -> Option<Target> {
        let index = self.live_video()? as usize;
        let video = &self.history.videos[index];
        Some(Target {
            id: video.latest_id,
            author: video.author,
            kind: video.kind,
            address: Some(format!(
                "{}:{}:{}",
                video.kind, self.pubkeys_hex[video.author as usize], video.d
            )),
            note: None,
        })
    }

    /// A comment, most often a recent one.
    fn comment_index(&mut self) -> Option<usize> {
        let count = self.history.comments.len();
        if count == 0 {
            return None;
        }
        Some(if self.rng.chance(50) {
            count - 1 - self.rng.index(count.min(256))
        } else {
            self.rng.index(count)
        })
    }

    fn comment_target(&mut self) -> Option<Target> {
        let index = self.comment_index()?;
        let comment = &self.history.comments[index];
        let posted = &self.history.posted[comment.posted as usize];
        Some(Target {
            id: posted.id,
            author: posted.author,
            kind: posted.kind,
            address: None,
            note: None,
        })
    }

    /// An author who has not yet engaged with `target` by a `kind` event (an active one, or
    /// after a few tries anyone), and records the engagement; None if none is found.
    fn engaging_author(&mut self, target: &Target, kind: u16) -> Option<u32> {
        for attempt in 0..8 {
            let author = if attempt < 4 {
                self.active_author()
            } else {
                self.rng.index(self.keys.len()) as u32
            };
            if author != target.author && self.history.engage(author, &target.id, kind) {
                return Some(author);
            }
        }
        None
    }

    /// Kind 1: a root note or (30%) a NIP-10 reply with marked `e` tags; log-normal length;
    /// some with hashtags, a NIP-27 mention or an image.
    pub(super) fn note(&mut self) -> Draft {
        let author = self.active_author();
        let mut tags = Vec::new();
        let mut created_at = self.clock;
        let parent = if self.rng.chance(30) {
            self.engaged_note()
        } else {
            None
        };
        let root = match parent {
            Some(parent) => {
                let root = self.history.notes[parent as usize].root;
                let root_event = self.history.note_posted(root);
                let parent_event = self.history.note_posted(parent);
                let root_author = &self.pubkeys_hex[root_event.author as usize];
                let parent_author = &self.pubkeys_hex[parent_event.author as usize];
                tags.push(tag(&[
                    "e",
                    &root_event.id.to_hex(),
                    "",
                    "root",
                    root_author,
                ]));
                if root != parent {
                    tags.push(tag(&[
                        "e",
                        &parent_event.id.to_hex(),
                        "",
                        "reply",
                        parent_author,
                    ]));
                }
                tags.push(tag(&["p", parent_author]));
                if root_author != parent_author {
                    tags.push(tag(&["p", root_author]));
                }
                Some(root)
            }
            None => {
                // Some clients' clocks run late: a root note may be up to two minutes older
                // than the events before it (nothing points at it yet).
                if self.rng.chance(10) {
                    created_at = (self.clock - self.rng.below(120)).max(self.config.start_time);
                }
                None
            }
        };
        let median = self.config.note_median_bytes as f64;
        let length = self.rng.log_normal(median, 1.0).round() as usize;
        let mut content = text::body(&mut self.rng, length.clamp(1, self.config.max_note_bytes));
        if self.rng.chance(20) {
            let mut topics: Vec<&str> = Vec::new();
            for _ in 0..self.rng.between(1, 3) {
                let topic = TOPICS[self.topics.sample(&mut self.rng)];
                if !topics.contains(&topic) {
                    topics.push(topic);
                }
            }
            for topic in topics {
                content.push_str(" #");
                content.push_str(topic);
                tags.push(tag(&["t", topic]));
            }
        }
        if self.rng.chance(8) {
            let mentioned = self.active_author() as usize;
            content.push_str(" nostr:");
            content.push_str(&nip19::encode_npub(&self.pubkeys[mentioned]));
            tags.push(tag(&["p", &self.pubkeys_hex[mentioned]]));
        }
        if self.rng.chance(6) {
            let (url, mime) = text::image(&mut self.rng);
            let (width, height) = *self
                .rng
                .pick(&[(1_080, 1_350), (1_920, 1_080), (1_024, 1_024)]);
            content.push('\n');
            content.push_str(&url);
            tags.push(vec![
                "imeta".into(),
                format!("url {url}"),
                format!("m {mime}"),
                format!("dim {width}x{height}"),
            ]);
        }
        let draft = self.finish(author, created_at, 1, tags, content);
        self.remember_note(&draft, root, parent);
        draft
    }

    /// Kind 7 (NIP-25): `e`, `p` and `k` of the target (and `a` for a video); 80% of
    /// reactions are to notes, 15% to videos, 5% to comments. No author reacts twice to one
    /// event.
    fn reaction(&mut self) -> Option<Draft> {
        let roll = self.rng.below(100);
        let target = match roll {
            0..15 => self.video_target(),
            15..20 => self.comment_target(),
            _ => None,
        };
        let target = match target {
            Some(target) => target,
            None => self.note_target()?,
        };
        let author = self.engaging_author(&target, 7)?;
        let relay = self.relay_hint();
        let target_author = &self.pubkeys_hex[target.author as usize];
        let mut tags = vec![
            tag(&["e", &target.id.to_hex(), &relay, target_author]),
            tag(&["p", target_author]),
        ];
        if let Some(address) = &target.address {
            tags.push(tag(&["a", address]));
        }
        tags.push(tag(&["k", &target.kind.to_string()]));
        let content = text::reaction(&mut self.rng).to_owned();
        let draft = self.finish(author, self.clock, 7, tags, content);
        if let Some(note) = target.note {
            self.history.count_reaction(note);
        }
        Some(draft)
    }

    /// Kind 6 (NIP-18): a repost of a recent note, with the note's signed JSON as content.
    fn repost(&mut self) -> Option<Draft> {
        if self.history.recent_notes.is_empty() {
            return None;
        }
        let pick = self.rng.index(self.history.recent_notes.len());
        let (note, mut reposted) = self.history.recent_notes[pick].clone();
        let posted = self.history.note_posted(note);
        let target = Target {
            id: posted.id,
            author: posted.author,
            kind: 1,
            address: None,
            note: Some(note),
        };
        let author = self.engaging_author(&target, 6)?;
        self.history.engaged_with(note);
        // The same signature the note gets when its batch is signed (signing is deterministic).
        reposted.sig = self.keys[target.author as usize].sign_id(&reposted.id);
        let relay = self.relay();
        let tags = vec![
            tag(&["e", &target.id.to_hex(), &relay]),
            tag(&["p", &self.pubkeys_hex[target.author as usize]]),
        ];
        Some(self.finish(author, self.clock, 6, tags, reposted.to_json()))
    }

    /// Kind 16 (NIP-18): a generic repost of a video (with `a`) or a comment, with `k`.
    fn generic_repost(&mut self) -> Option<Draft> {
        let target = if self.rng.chance(60) {
            self.video_target().or_else(|| self.comment_target())
        } else {
            self.comment_target().or_else(|| self.video_target())
        }?;
        let author = self.engaging_author(&target, 16)?;
        let relay = self.relay();
        let mut tags = vec![
            tag(&["e", &target.id.to_hex(), &relay]),
            tag(&["p", &self.pubkeys_hex[target.author as usize]]),
            tag(&["k", &target.kind.to_string()]),
        ];
        if let Some(address) = &target.address {
            tags.push(tag(&["a", address, &relay]));
        }
        Some(self.finish(author, self.clock, 16, tags, String::new()))
    }

    /// Kind 1111 (NIP-22): a comment on a video (root and parent both the video: `A`/`K`/`P`
    /// and `a`/`e`/`k`/`p`), or (30%) a reply to an earlier comment (parent `e`/`k`/`p`).
    fn comment(&mut self) -> Option<Draft> {
        let parent_comment = if self.rng.chance(30) {
            self.comment_index()
        } else {
            None
        };
        let video = match parent_comment {
            Some(comment) => self.history.comments[comment].video,
            None => self.live_video()?,
        };
        let author = self.active_author();
        let relay = self.relay_hint();
        let (video_kind, video_author, address, video_id) = {
            let video = &self.history.videos[video as usize];
            let author_hex = &self.pubkeys_hex[video.author as usize];
            (
                video.kind.to_string(),
                author_hex.clone(),
                format!("{}:{author_hex}:{}", video.kind, video.d),
                video.latest_id.to_hex(),
            )
        };
        let mut tags = vec![
            tag(&["A", &address, &relay]),
            tag(&["K", &video_kind]),
            tag(&["P", &video_author]),
        ];
        match parent_comment {
            Some(comment) => {
                let parent = &self.history.posted[self.history.comments[comment].posted as usize];
                let parent_author = &self.pubkeys_hex[parent.author as usize];
                tags.push(tag(&["e", &parent.id.to_hex(), &relay, parent_author]));
                tags.push(tag(&["k", "1111"]));
                tags.push(tag(&["p", parent_author]));
            }
            None => {
                tags.push(tag(&["a", &address, &relay]));
                tags.push(tag(&["e", &video_id, &relay]));
                tags.push(tag(&["k", &video_kind]));
                tags.push(tag(&["p", &video_author]));
            }
        }
        let length = self.rng.log_normal(80.0, 0.9).round() as usize;
        let content = text::body(&mut self.rng, length.clamp(1, 2_000));
        let draft = self.finish(author, self.clock, 1_111, tags, content);
        self.history.comments.push(super::history::Comment {
            posted: self.history.posted.len() as u32 - 1,
            video,
        });
        Some(draft)
    }

    /// Kind 0: profile metadata JSON; the author keeps one name across versions.
    fn profile(&mut self) -> Draft {
        let author = self.upkeep_author();
        let (created_at, replaces) = self.replaceable_time(author, 0);
        let name = text::name(&mut super::rng::Rng::new(
            self.config.seed ^ u64::from(author).rotate_left(32),
        ));
        let content = text::profile_json(&mut self.rng, &name);
        self.stats.replacements += u64::from(replaces);
        self.finish(author, created_at, 0, Vec::new(), content)
    }

    /// Kind 3 (NIP-02): `p` tags of Zipf-drawn authors (popular authors are followed most),
    /// or of uniformly drawn ones with [`Follows::Uniform`](super::Follows::Uniform).
    /// A first list has a log-normal size (median 60, capped at `max_follows`); an update adds
    /// one to five follows and sometimes drops a few.
    fn contact_list(&mut self) -> Draft {
        let author = self.upkeep_author();
        let limit = self
            .config
            .max_follows
            .min(super::GenConfig::FOLLOWS_THAT_FIT)
            .min(self.keys.len() - 1);
        let mut follows = std::mem::take(&mut self.history.authors[author as usize].follows);
        let (target, drops) = if follows.is_empty() {
            let size = self.rng.log_normal(60.0, 1.1).round() as usize;
            (size.clamp(1, limit.max(1)).min(limit), 0)
        } else {
            let drops = if self.rng.chance(20) {
                self.rng.between(1, 3) as usize
            } else {
                0
            };
            let adds = self.rng.between(1, 5) as usize;
            ((follows.len() + adds).min(limit), drops)
        };
        for _ in 0..drops.min(follows.len()) {
            let at = self.rng.index(follows.len());
            follows.remove(at);
        }
        let mut known: std::collections::HashSet<u32> = follows.iter().copied().collect();
        let mut attempts = 0;
        while follows.len() < target {
            attempts += 1;
            // Zipf first; uniform once the popular accounts are all taken
            // (or from the start, when asked for).
            let popular = self.config.follows == super::Follows::Popular;
            let candidate = if popular && attempts < target * 8 {
                self.active_author()
            } else {
                self.rng.index(self.keys.len()) as u32
            };
            if candidate != author && known.insert(candidate) {
                follows.push(candidate);
            }
        }
        let tags = follows
            .iter()
            .map(|&followed| tag(&["p", &self.pubkeys_hex[followed as usize]]))
            .collect();
        self.history.authors[author as usize].follows = follows;
        let (created_at, replaces) = self.replaceable_time(author, 1);
        self.stats.replacements += u64::from(replaces);
        self.finish(author, created_at, 3, tags, String::new())
    }

    /// Kind 10002 (NIP-65): two to seven distinct relays, each for reading and writing or
    /// marked `read` or `write`.
    fn relay_list(&mut self) -> Draft {
        let author = self.upkeep_author();
        let mut relays = self.relays.clone();
        let count = (self.rng.between(2, 7) as usize).min(relays.len());
        let mut tags = Vec::with_capacity(count);
        for i in 0..count {
            let pick = i + self.rng.index(relays.len() - i);
            relays.swap(i, pick);
            tags.push(match self.rng.below(10) {
                0..6 => tag(&["r", &relays[i]]),
                6..8 => tag(&["r", &relays[i], "read"]),
                _ => tag(&["r", &relays[i], "write"]),
            });
        }
        let (created_at, replaces) = self.replaceable_time(author, 2);
        self.stats.replacements += u64::from(replaces);
        self.finish(author, created_at, 10_002, tags, String::new())
    }

    /// NIP-71 video, kind 34235 (normal) or 34236 (short): `d`, `title`, `published_at`,
    /// `alt`, hashtags and an `imeta` with url, m, dim, x, image and duration. A quarter are
    /// new versions of an earlier video of the kind (same `d`, one second newer at least).
    fn video(&mut self, kind: u16) -> Draft {
        let update = if self.rng.chance(25) {
            (0..4).find_map(|_| {
                let video = self.live_video()?;
                (self.history.videos[video as usize].kind == kind).then_some(video)
            })
        } else {
            None
        };
        let (author, d, title, published_at, created_at) = match update {
            Some(index) => {
                let new_title = self.rng.chance(50).then(|| text::title(&mut self.rng));
                let video = &mut self.history.videos[index as usize];
                if let Some(title) = new_title {
                    video.title = title;
                }
                let created_at = self.clock.max(video.latest_at + 1);
                self.clock = created_at;
                (
                    video.author,
                    video.d.clone(),
                    video.title.clone(),
                    video.published_at,
                    created_at,
                )
            }
            None => (
                self.active_author(),
                self.rng.hex(8),
                text::title(&mut self.rng),
                self.clock,
                self.clock,
            ),
        };
        let short = kind == 34_236;
        let (dim, seconds) = if short {
            ("1080x1920", self.rng.between(5, 90))
        } else {
            (
                *self.rng.pick(&["1920x1080", "1280x720", "3840x2160"]),
                self.rng.between(30, 3_600),
            )
        };
        let file = self.rng.hex(32);
        let mut tags = vec![
            tag(&["d", &d]),
            tag(&["title", &title]),
            tag(&["published_at", &published_at.to_string()]),
            tag(&["alt", &format!("Video: {title}")]),
        ];
        for _ in 0..self.rng.between(1, 3) {
            let topic = TOPICS[self.topics.sample(&mut self.rng)];
            if !tags.iter().any(|t| t[0] == "t" && t[1] == topic) {
                tags.push(tag(&["t", topic]));
            }
        }
        tags.push(vec![
            "imeta".into(),
            format!("url https://video.nostr.build/{file}.mp4"),
            "m video/mp4".into(),
            format!("dim {dim}"),
            format!("x {file}"),
            format!("image https://image.nostr.build/{file}.jpg"),
            format!("duration {seconds}.{:03}", self.rng.below(1_000)),
        ]);
        let length = self.rng.log_normal(100.0, 1.0).round() as usize;
        let content = text::body(&mut self.rng, length.clamp(1, 4_000));
        let draft = self.finish(author, created_at, kind, tags, content);
        match update {
            Some(index) => {
                let video = &mut self.history.videos[index as usize];
                video.latest_id = draft.event.id;
                video.latest_at = created_at;
                self.stats.replacements += 1;
            }
            None => self.history.videos.push(super::history::Video {
                kind,
                author,
                d,
                title,
                published_at,
                latest_id: draft.event.id,
                latest_at: created_at,
                deleted: false,
            }),
        }
        draft
    }

    /// Kind 5 (NIP-09): an author deletes one of their own recent notes (`e` and `k`), or
    /// (25%) one of their videos (`e` of its latest version, `a` of its address, `k`).
    fn deletion(&mut self) -> Option<Draft> {
        let video = if self.rng.chance(25) {
            self.live_video()
        } else {
            None
        };
        let reason = if self.rng.chance(30) {
            (*self
                .rng
                .pick(&["posted by mistake", "typo", "wrong account", "spam"]))
            .to_owned()
        } else {
            String::new()
        };
        if let Some(index) = video {
            let video = &mut self.history.videos[index as usize];
            video.deleted = true;
            let author = video.author;
            let kind = video.kind.to_string();
            let tags = vec![
                tag(&["e", &video.latest_id.to_hex()]),
                tag(&[
                    "a",
                    &format!("{kind}:{}:{}", self.pubkeys_hex[author as usize], video.d),
                ]),
                tag(&["k", &kind]),
            ];
            self.stats.deleted += 1;
            return Some(self.finish(author, self.clock, 5, tags, reason));
        }
        let count = self.history.notes.len();
        if count == 0 {
            return None;
        }
        let note = (0..4).find_map(|_| {
            let note = count - 1 - self.rng.index(count.min(2_000));
            let posted = self.history.notes[note].posted as usize;
            (!self.history.posted[posted].deleted).then_some(posted)
        })?;
        let target = &mut self.history.posted[note];
        target.deleted = true;
        let author = target.author;
        let tags = vec![tag(&["e", &target.id.to_hex()]), tag(&["k", "1"])];
        self.stats.deleted += 1;
        Some(self.finish(author, self.clock, 5, tags, reason))
    }
}
