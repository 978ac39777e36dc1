//! Text for generated events: note bodies of a requested byte length, titles, names, profile
//! JSON, hashtags, relay URLs and reaction contents.
//!
//! Bodies mix ASCII words with multi-byte UTF-8 (accents, CJK, emoji), quotes and newlines, so
//! that the NIP-01 escaping and UTF-8 handling of whoever reads the stream are exercised.

use super::rng::Rng;

const WORDS: [&str; 96] = [
    "the",
    "a",
    "and",
    "of",
    "to",
    "in",
    "is",
    "it",
    "that",
    "for",
    "on",
    "with",
    "this",
    "you",
    "not",
    "but",
    "are",
    "be",
    "have",
    "just",
    "what",
    "so",
    "all",
    "about",
    "when",
    "more",
    "some",
    "out",
    "like",
    "time",
    "people",
    "think",
    "today",
    "good",
    "new",
    "know",
    "really",
    "one",
    "now",
    "would",
    "gm",
    "nostr",
    "relay",
    "bitcoin",
    "zap",
    "sats",
    "client",
    "keys",
    "notes",
    "freedom",
    "protocol",
    "open",
    "source",
    "build",
    "ship",
    "coffee",
    "morning",
    "weekend",
    "music",
    "photo",
    "video",
    "thread",
    "follow",
    "feed",
    "signal",
    "noise",
    "rust",
    "code",
    "node",
    "lightning",
    "wallet",
    "privacy",
    "censorship",
    "resistant",
    "decentralized",
    "community",
    "meetup",
    "conference",
    "podcast",
    "article",
    "café",
    "naïve",
    "über",
    "日本",
    "おはよう",
    "ノストル",
    "привет",
    "мир",
    "中文",
    "😂",
    "🔥",
    "🤙",
    "💜",
    "⚡",
    "\"quoted\"",
    "it's",
];

const SEPARATORS: [&str; 16] = [
    " ", " ", " ", " ", " ", " ", " ", " ", " ", " ", ", ", ". ", "! ", "? ", "\n", "\n\n",
];

/// Hashtags (`t` tags), most popular first: drawn with a Zipf law over this order.
pub(crate) const TOPICS: [&str; 32] = [
    "nostr",
    "bitcoin",
    "gm",
    "art",
    "photography",
    "music",
    "zaps",
    "memes",
    "news",
    "plebchain",
    "foodstr",
    "grownostr",
    "lightning",
    "privacy",
    "rust",
    "dev",
    "catstr",
    "dogstr",
    "travel",
    "books",
    "science",
    "running",
    "coffee",
    "asknostr",
    "introductions",
    "nature",
    "gaming",
    "movies",
    "politics",
    "sports",
    "japan",
    "español",
];

/// Relay URLs for relay lists (kind 10002) and relay hints.
pub(crate) const RELAYS: [&str; 16] = [
    "wss://relay.damus.io",
    "wss://nos.lol",
    "wss://relay.nostr.band",
    "wss://relay.primal.net",
    "wss://nostr.wine",
    "wss://relay.snort.social",
    "wss://purplepag.es",
    "wss://nostr.mom",
    "wss://relay.nostr.bg",
    "wss://offchain.pub",
    "wss://nostr.oxtr.dev",
    "wss://relay.current.fyi",
    "wss://nostr-pub.wellorder.net",
    "wss://eden.nostr.land",
    "wss://nostr.fmt.wiz.biz",
    "wss://relay.nostr.net",
];

/// Reaction contents with their weights in percent: mostly likes.
const REACTIONS: [(&str, u64); 9] = [
    ("+", 62),
    ("❤️", 10),
    ("🤙", 8),
    ("🔥", 6),
    ("😂", 5),
    ("⚡", 3),
    ("👀", 2),
    ("-", 2),
    ("🫂", 2),
];

const SYLLABLES: [&str; 24] = [
    "ka", "ri", "to", "na", "mi", "lo", "sa", "ve", "jo", "an", "el", "or", "us", "ben", "dan",
    "mar", "lin", "ron", "zoe", "kai", "tan", "sol", "pix", "wen",
];

const EXTENSIONS: [(&str, &str); 3] = [
    ("jpg", "image/jpeg"),
    ("png", "image/png"),
    ("webp", "image/webp"),
];

/// Words until the body reaches `target` bytes, cut on a character boundary, with no trailing
/// whitespace. Always at least one word.
pub(crate) fn body(rng: &mut Rng, target: usize) -> String {
    let mut out = String::with_capacity(target + 16);
    loop {
        out.push_str(rng.pick::<&str>(&WORDS));
        if out.len() >= target {
            break;
        }
        out.push_str(rng.pick::<&str>(&SEPARATORS));
    }
    let mut end = target.max(1).min(out.len());
    while !out.is_char_boundary(end) {
        end -= 1;
    }
    out.truncate(end);
    let trimmed = out.trim_end().len();
    out.truncate(trimmed.max(1));
    if out.trim().is_empty() {
        out = "gm".to_owned();
    }
    out
}

/// A title of three to eight words, first letter capitalized.
pub(crate) fn title(rng: &mut Rng) -> String {
    let words = rng.between(3, 8);
    let mut out = String::new();
    for i in 0..words {
        if i > 0 {
            out.push(' ');
        }
        let word = loop {
            let word = *rng.pick(&WORDS);
            if word.chars().all(char::is_alphabetic) {
                break word;
            }
        };
        out.push_str(word);
    }
    let mut chars = out.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => out,
    }
}

/// A lowercase ASCII user name of two to four syllables.
pub(crate) fn name(rng: &mut Rng) -> String {
    let syllables = rng.between(2, 4);
    (0..syllables).map(|_| *rng.pick(&SYLLABLES)).collect()
}

/// NIP-01 kind 0 content: a JSON object with the usual profile fields.
pub(crate) fn profile_json(rng: &mut Rng, name: &str) -> String {
    let about_len = rng.log_normal(60.0, 0.8).clamp(0.0, 600.0) as usize;
    let mut profile = serde_json::Map::new();
    profile.insert("name".into(), name.into());
    let mut display = name.to_owned();
    if let Some(first) = display.get_mut(0..1) {
        first.make_ascii_uppercase();
    }
    profile.insert("display_name".into(), display.into());
    profile.insert("about".into(), body(rng, about_len).into());
    profile.insert(
        "picture".into(),
        format!("https://image.nostr.build/{}.jpg", rng.hex(16)).into(),
    );
    if rng.chance(40) {
        profile.insert("nip05".into(), format!("{name}@{name}.example").into());
    }
    if rng.chance(50) {
        profile.insert("lud16".into(), format!("{name}@getalby.com").into());
    }
    if rng.chance(30) {
        profile.insert("website".into(), format!("https://{name}.example").into());
    }
    serde_json::Value::Object(profile).to_string()
}

/// A reaction's content (NIP-25): "+" most of the time, otherwise an emoji or "-".
pub(crate) fn reaction(rng: &mut Rng) -> &'static str {
    let mut roll = rng.below(100);
    for (content, weight) in REACTIONS {
        if roll < weight {
            return content;
        }
        roll -= weight;
    }
    "+"
}

/// An image URL and its MIME type.
pub(crate) fn image(rng: &mut Rng) -> (String, &'static str) {
    let (extension, mime) = *rng.pick(&EXTENSIONS);
    (
        format!("https://image.nostr.build/{}.{extension}", rng.hex(32)),
        mime,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_have_the_requested_length() {
        let mut rng = Rng::new(9);
        for target in [0, 1, 2, 5, 50, 120, 3_000] {
            for _ in 0..50 {
                let text = body(&mut rng, target);
                assert!(!text.is_empty());
                assert!(text.len() <= target.max(2), "{target}: {}", text.len());
                if target >= 50 {
                    assert!(text.len() + 8 >= target, "{target}: {}", text.len());
                }
                assert_eq!(text.trim_end(), text);
            }
        }
    }

    #[test]
    fn reactions_titles_names_and_profiles() {
        assert_eq!(REACTIONS.iter().map(|(_, w)| w).sum::<u64>(), 100);
        let mut rng = Rng::new(4);
        let likes = (0..1_000).filter(|_| reaction(&mut rng) == "+").count();
        assert!((550..700).contains(&likes), "{likes}");
        let title = title(&mut rng);
        assert!(title.split(' ').count() >= 3, "{title}");
        let name = name(&mut rng);
        assert!(name.bytes().all(|b| b.is_ascii_lowercase()), "{name}");
        let profile: serde_json::Value =
            serde_json::from_str(&profile_json(&mut rng, &name)).unwrap();
        assert_eq!(profile["name"], name.as_str());
    }
}
