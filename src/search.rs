//! NIP-50 search terms: which events are searchable, the words an event is
//! found by, and the words a `search` string asks for.
//!
//! Both sides use one tokenizer, so an event matches a search exactly when
//! its term set holds every term of the search:
//!
//! - whitespace-separated words that contain `://` or start with `nostr:`
//!   (links and NIP-21 references) are skipped;
//! - the rest splits into runs of alphanumeric characters, lowercased
//!   (Unicode); a run longer than [`MAX_TERM_BYTES`] is skipped (hashes,
//!   base64);
//! - Han, Hiragana and Katakana characters, which are written without spaces,
//!   are one term each, so `日本語` asks for the three characters anywhere.
//!
//! An event's terms come from its content and the first value of its
//! `title`, `summary`, `alt`, `subject` and `t` tags; for a profile (kind 0)
//! from the `name`, `display_name`, `about` and `nip05` fields of its JSON
//! content. Only [`is_searchable`] kinds have terms, and an event keeps its
//! first [`MAX_EVENT_TERMS`] distinct ones.
//!
//! In a `search` string, words of the form `key:value` (NIP-50 extensions
//! such as `sort:hot`, `language:en`) are ignored.

use std::borrow::Cow;
use std::collections::HashSet;

use crate::event::{Event, EventRef, TagField};

/// Distinct terms an event is indexed under, at most.
pub const MAX_EVENT_TERMS: usize = 256;

/// Longest term, in bytes of its lowercase UTF-8.
pub const MAX_TERM_BYTES: usize = 40;

/// Longest `search` string a filter may carry, in bytes.
pub const MAX_SEARCH_BYTES: usize = 1024;

/// The kinds whose events can be found by search: profiles, notes, pictures
/// and short/normal videos (NIP-68, NIP-71), comments, highlights, articles
/// and addressable videos.
pub const SEARCHABLE_KINDS: [u16; 10] = [0, 1, 20, 21, 22, 1111, 9802, 30023, 34235, 34236];

/// Whether events of `kind` are indexed for search.
pub fn is_searchable(kind: u16) -> bool {
    SEARCHABLE_KINDS.contains(&kind)
}

/// Tags whose first value is searchable text.
const TEXT_TAGS: [&str; 5] = ["title", "summary", "alt", "subject", "t"];

/// Profile fields (kind 0 content) that are searchable text.
const PROFILE_FIELDS: [&str; 4] = ["name", "display_name", "about", "nip05"];

/// The distinct terms of `event` in first-seen order, at most
/// [`MAX_EVENT_TERMS`]; empty for kinds that are not searchable.
pub fn event_terms(event: &EventRef<'_>) -> Vec<String> {
    let mut terms = Distinct::default();
    for_each_event_term(event, |term| terms.add(term));
    terms.list
}

/// [`event_terms`] of an owned event.
pub fn owned_event_terms(event: &Event) -> Vec<String> {
    let mut terms = Distinct::default();
    let text_tags = event
        .tags
        .iter()
        .filter(|tag| tag.len() >= 2 && TEXT_TAGS.contains(&tag[0].as_str()))
        .map(|tag| Cow::Borrowed(tag[1].as_str()));
    for_each_term_of(event.kind, &event.content, text_tags, &mut |term| {
        terms.add(term)
    });
    terms.list
}

/// The distinct [`term_hash`]es of [`event_terms`], ascending: what the
/// index stores. Without allocating a string per term when the event has no
/// more term occurrences than the cap (then every term is kept).
pub fn event_term_hashes(event: &EventRef<'_>) -> Vec<u64> {
    let mut hashes = Vec::new();
    let mut occurrences = 0;
    for_each_event_term(event, |term| {
        occurrences += 1;
        hashes.push(term_hash(term));
        occurrences <= MAX_EVENT_TERMS
    });
    if occurrences > MAX_EVENT_TERMS {
        hashes = event_terms(event).iter().map(|t| term_hash(t)).collect();
    }
    hashes.sort_unstable();
    hashes.dedup();
    hashes
}

/// Whether `event` is found by a search for `query_terms`: it is of a
/// searchable kind and [`event_terms`] holds every term. Stops reading the
/// text once every term was seen.
pub fn event_has_terms(event: &EventRef<'_>, query_terms: &[String]) -> bool {
    if !is_searchable(event.kind()) {
        return false;
    }
    let mut found = vec![false; query_terms.len()];
    let mut missing = query_terms.len();
    let mut occurrences = 0;
    let mut past_cap = false;
    for_each_event_term(event, |term| {
        occurrences += 1;
        for (wanted, seen) in query_terms.iter().zip(found.iter_mut()) {
            if !*seen && wanted == term {
                *seen = true;
                missing -= 1;
                past_cap |= occurrences > MAX_EVENT_TERMS;
            }
        }
        missing > 0
    });
    if missing > 0 {
        return false;
    }
    // A term first seen within the first MAX_EVENT_TERMS occurrences is
    // among the first MAX_EVENT_TERMS distinct terms; past that, count.
    !past_cap || terms_match(&event_terms(event), query_terms)
}

/// Whether an event with terms `event_terms` is found by a search for
/// `query_terms` (every term of the search is one of the event's).
pub fn terms_match(event_terms: &[String], query_terms: &[String]) -> bool {
    query_terms.iter().all(|t| event_terms.contains(t))
}

/// Calls `f` with every term occurrence of `event` in order, until it
/// returns false.
fn for_each_event_term(event: &EventRef<'_>, mut f: impl FnMut(&str) -> bool) {
    let text_tags = event.tags().filter_map(|tag| {
        let (name, value) = (tag.name()?, tag.value()?);
        if !TEXT_TAGS.iter().any(|t| name.eq_str(t)) {
            return None;
        }
        Some(match value {
            TagField::Text(text) => Cow::Borrowed(text),
            hex => Cow::Owned(hex.to_string()),
        })
    });
    for_each_term_of(event.kind(), event.content(), text_tags, &mut f);
}

fn for_each_term_of<'a>(
    kind: u16,
    content: &str,
    text_tags: impl Iterator<Item = Cow<'a, str>>,
    f: &mut impl FnMut(&str) -> bool,
) {
    if !is_searchable(kind) {
        return;
    }
    let mut run = String::new();
    if kind == 0 {
        if let Ok(serde_json::Value::Object(profile)) =
            serde_json::from_str::<serde_json::Value>(content)
        {
            for field in PROFILE_FIELDS {
                if let Some(text) = profile.get(field).and_then(|v| v.as_str())
                    && !each_term(text, &mut run, f)
                {
                    return;
                }
            }
        }
    } else if !each_term(content, &mut run, f) {
        return;
    }
    for text in text_tags {
        if !each_term(&text, &mut run, f) {
            return;
        }
    }
}

/// Calls `f` with each term occurrence of `text` (built in `run`); false
/// as soon as `f` is.
fn each_term(text: &str, run: &mut String, f: &mut impl FnMut(&str) -> bool) -> bool {
    for word in text.split_whitespace() {
        if !each_word_term(word, run, f) {
            return false;
        }
    }
    true
}

fn each_word_term(word: &str, run: &mut String, f: &mut impl FnMut(&str) -> bool) -> bool {
    if word.contains("://") || word.starts_with("nostr:") {
        return true;
    }
    run.clear();
    for c in word.chars() {
        if c.is_ascii() {
            if c.is_ascii_alphanumeric() {
                run.push(c.to_ascii_lowercase());
            } else if !end_run(run, f) {
                return false;
            }
        } else if is_ideograph(c) {
            if !end_run(run, f) {
                return false;
            }
            run.push(c);
            if !end_run(run, f) {
                return false;
            }
        } else if c.is_alphanumeric() {
            run.extend(c.to_lowercase());
        } else if !end_run(run, f) {
            return false;
        }
    }
    end_run(run, f)
}

/// Passes the run (if any, and not too long) to `f` and empties it.
fn end_run(run: &mut String, f: &mut impl FnMut(&str) -> bool) -> bool {
    let go_on = run.is_empty() || run.len() > MAX_TERM_BYTES || f(run);
    run.clear();
    go_on
}

/// The distinct terms a `search` string asks for, in first-seen order
/// (extensions left out). Empty when it names no searchable word.
pub fn query_terms(search: &str) -> Vec<String> {
    let mut terms = Distinct {
        cap: usize::MAX,
        ..Distinct::default()
    };
    let mut run = String::new();
    for word in search.split_whitespace() {
        if !is_extension(word) {
            each_word_term(word, &mut run, &mut |term| terms.add(term));
        }
    }
    terms.list
}

/// `key:value` with a key of ASCII letters, digits, `_` or `-` that starts
/// with a letter (so `12:30` stays two numbers).
fn is_extension(word: &str) -> bool {
    match word.split_once(':') {
        Some((key, value)) => {
            key.starts_with(|c: char| c.is_ascii_alphabetic())
                && !value.is_empty()
                && !value.starts_with("//")
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                && key != "nostr"
        }
        None => false,
    }
}

/// 64-bit FNV-1a of the term's UTF-8 bytes: the key of its index entries.
pub fn term_hash(term: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in term.as_bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Collects distinct terms up to a cap.
struct Distinct {
    list: Vec<String>,
    seen: HashSet<String>,
    cap: usize,
}

impl Default for Distinct {
    fn default() -> Distinct {
        Distinct {
            list: Vec::new(),
            seen: HashSet::new(),
            cap: MAX_EVENT_TERMS,
        }
    }
}

impl Distinct {
    /// Adds `term` if new; false once the cap is reached (nothing more can
    /// be added).
    fn add(&mut self, term: &str) -> bool {
        if self.list.len() < self.cap && !self.seen.contains(term) {
            self.seen.insert(term.to_string());
            self.list.push(term.to_string());
        }
        self.list.len() < self.cap
    }
}

/// Scripts written without spaces between words: each character is a term.
fn is_ideograph(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF       // Hiragana, Katakana
        | 0x3400..=0x4DBF     // CJK extension A
        | 0x4E00..=0x9FFF     // CJK unified ideographs
        | 0xF900..=0xFAFF     // CJK compatibility ideographs
        | 0x20000..=0x2FA1F) // CJK extensions B-F, compatibility supplement
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, Keys};

    fn note(kind: u16, tags: Vec<Vec<String>>, content: &str) -> Event {
        Keys::from_seed(7).sign(1_700_000_000, kind, tags, content.to_string())
    }

    /// The terms of the stored form, which must equal the owned event's.
    fn event_terms_of(event: &Event) -> Vec<String> {
        let mut payload = Vec::new();
        event.encode_payload(&mut payload).unwrap();
        let stored = event_terms(&EventRef::parse(&payload).unwrap());
        assert_eq!(stored, owned_event_terms(event));
        stored
    }

    #[test]
    fn words_are_lowercased_runs_of_letters_and_digits() {
        assert_eq!(
            query_terms("Hello, WORLD! Rust-2024 café"),
            ["hello", "world", "rust", "2024", "café"]
        );
        assert_eq!(query_terms("ÄBC Straße"), ["äbc", "straße"]);
        assert_eq!(query_terms("  "), Vec::<String>::new());
    }

    #[test]
    fn links_references_extensions_and_long_runs_are_skipped() {
        assert_eq!(
            query_terms("see https://example.com/x.jpg nostr:npub1abc sort:hot cats"),
            ["see", "cats"]
        );
        assert_eq!(query_terms(&"a".repeat(41)), Vec::<String>::new());
        assert_eq!(query_terms(&"a".repeat(40)), ["a".repeat(40)]);
        assert_eq!(query_terms("language:en 12:30"), ["12", "30"]);
        assert_eq!(query_terms("ratio: 3"), ["ratio", "3"]);
    }

    #[test]
    fn ideographs_are_one_term_each() {
        assert_eq!(query_terms("日本語です"), ["日", "本", "語", "で", "す"]);
        assert_eq!(query_terms("abc漢字def"), ["abc", "漢", "字", "def"]);
    }

    #[test]
    fn events_take_content_text_tags_and_profile_fields() {
        let video = note(
            34235,
            vec![
                vec!["d".into(), "clip".into()],
                vec!["title".into(), "Sunset Timelapse".into()],
                vec!["t".into(), "nature".into()],
                vec!["p".into(), "ab".repeat(32)],
            ],
            "Shot on a hill",
        );
        assert_eq!(
            event_terms_of(&video),
            ["shot", "on", "a", "hill", "sunset", "timelapse", "nature"]
        );
        let profile = note(
            0,
            vec![],
            r#"{"name":"Alice","about":"Rust dev","picture":"https://x/y.png","lud16":"alice@x"}"#,
        );
        assert_eq!(event_terms_of(&profile), ["alice", "rust", "dev"]);
        let broken_profile = note(0, vec![], "not json");
        assert!(event_terms_of(&broken_profile).is_empty());
        let reaction = note(7, vec![], "great post");
        assert!(
            event_terms_of(&reaction).is_empty(),
            "kind 7 is not searchable"
        );
    }

    #[test]
    fn an_event_keeps_its_first_distinct_terms_only() {
        let words: Vec<String> = (0..400).map(|i| format!("w{i}")).collect();
        let content = format!("{} {}", words.join(" "), words.join(" "));
        let terms = event_terms_of(&note(1, vec![], &content));
        assert_eq!(terms.len(), MAX_EVENT_TERMS);
        assert_eq!(terms[..], words[..MAX_EVENT_TERMS]);
    }

    #[test]
    fn the_fast_checks_agree_with_the_term_list_past_the_cap() {
        let distinct: Vec<String> = (0..400).map(|i| format!("w{i}")).collect();
        let repeats = format!("{} late", "a b ".repeat(300));
        for content in [distinct.join(" "), repeats, "short text".to_string()] {
            let event = note(1, vec![], &content);
            let mut payload = Vec::new();
            event.encode_payload(&mut payload).unwrap();
            let stored = EventRef::parse(&payload).unwrap();
            let terms = event_terms(&stored);
            let mut hashes: Vec<u64> = terms.iter().map(|t| term_hash(t)).collect();
            hashes.sort_unstable();
            hashes.dedup();
            assert_eq!(event_term_hashes(&stored), hashes);
            for probe in ["w10", "w255", "w256", "w399", "a", "late", "text", "nope"] {
                let wanted = vec![probe.to_string()];
                assert_eq!(
                    event_has_terms(&stored, &wanted),
                    terms.contains(&wanted[0]),
                    "{probe} in {}...",
                    &content[..20]
                );
            }
        }
    }

    #[test]
    fn term_hash_is_fnv1a() {
        assert_eq!(term_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(term_hash("a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(term_hash("nostr"), term_hash("Nostr"));
    }
}
