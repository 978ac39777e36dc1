//! A random stream of video-app events for the analytics tests: videos
//! and their edits (some held back while acts already name them),
//! reactions by `e` and by `a`, downvotes, kind 1111 and kind 1 comments,
//! reposts 6 and 16, deletions, expiring acts, replays.

use megalith::Event;
use megalith::analytics::VideoKey;
use megalith::event::Keys;

use super::Rng;

pub struct Stream {
    rng: Rng,
    pub now: u64,
    creators: Vec<Keys>,
    fans: Vec<Keys>,
    /// Every event made so far (for replays and deletions).
    made: Vec<Event>,
    /// Video versions made, some not yet sent.
    videos: Vec<Event>,
    /// Videos made but held back: acts name them before they arrive.
    held: Vec<Event>,
    /// Acts sent that name a video not yet sent.
    pub early_acts: usize,
    /// Requests to vanish sent.
    pub vanished: usize,
    /// Expiring acts expire this many seconds after `now`, or up to 300 more.
    pub expire_after: u64,
}

impl Stream {
    pub fn new(seed: u64) -> Stream {
        Stream::starting(seed, 1_764_000_000)
    }

    /// A stream whose events are created around `now`.
    pub fn starting(seed: u64, now: u64) -> Stream {
        Stream {
            rng: Rng::new(seed),
            now,
            creators: (0..4).map(|i| Keys::from_seed(seed * 100 + i)).collect(),
            fans: (0..12)
                .map(|i| Keys::from_seed(seed * 100 + 50 + i))
                .collect(),
            made: Vec::new(),
            videos: Vec::new(),
            held: Vec::new(),
            early_acts: 0,
            vanished: 0,
            expire_after: 1,
        }
    }

    fn time(&mut self) -> u64 {
        if self.rng.chance(20) {
            // Days back: older videos and activity on other days.
            self.now - self.rng.below(12) * 86_400 - self.rng.below(4_000)
        } else {
            self.now - 5_000 + self.rng.below(4_000)
        }
    }

    fn address(video: &Event) -> Option<String> {
        match video_key_text(video) {
            Some(VideoKey::Address { .. }) => Some(video_key_text(video).unwrap().text()),
            _ => None,
        }
    }

    /// The next event to send.
    pub fn next(&mut self) -> Event {
        // Release a held video now and then.
        if !self.held.is_empty() && self.rng.chance(8) {
            let at = self.rng.below(self.held.len() as u64) as usize;
            let video = self.held.swap_remove(at);
            self.made.push(video.clone());
            return video;
        }
        // Now and then a person asks to vanish (NIP-62): what they made up
        // to then leaves every count.
        if self.rng.below(300) == 0 {
            let who = self.rng.pick(&self.fans).clone();
            let at = self.time();
            let request = who.sign(
                at,
                62,
                vec![vec!["relay".into(), "ALL_RELAYS".into()]],
                String::new(),
            );
            self.made.push(request.clone());
            self.vanished += 1;
            return request;
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
            for tag in ["cats", "Music", "dance", "music"] {
                if self.rng.chance(30) {
                    list.push(vec!["t".into(), tag.into()]);
                }
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
                    (self.now + self.expire_after + self.rng.below(300)).to_string(),
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

pub fn video_key_text(event: &Event) -> Option<VideoKey> {
    megalith::analytics::video_key(event)
}
