//! The dataset: every event of the JSONL file, in memory as the JSON text
//! every peer ingests, plus what the query workloads sample from it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use megalith::Event;
use serde_json::value::RawValue;

/// What one event contributes to query sampling.
#[derive(Debug, Clone)]
pub struct EventMeta {
    pub id: [u8; 32],
    /// Index into [`Dataset::authors`].
    pub author: u32,
    pub kind: u16,
}

/// The events of one JSONL file, deduplicated by id, in file order.
#[derive(Debug)]
pub struct Dataset {
    pub path: PathBuf,
    pub file_bytes: u64,
    /// The event object of each line, exactly as the file has it.
    pub events: Vec<String>,
    /// Sum of the event objects' lengths: the "raw JSON" W8 compares with.
    pub json_bytes: u64,
    pub meta: Vec<EventMeta>,
    /// Distinct authors, in order of first appearance.
    pub authors: Vec<[u8; 32]>,
    /// Kind 7 reactions per event id: how many reactions have that id as
    /// the value of one of their `e` tags (what `{"#e":[id],"kinds":[7]}`
    /// matches).
    pub reactions: HashMap<[u8; 32], usize>,
    /// Kind 3 follow lists (`p` tags decoded), newest last, for W4.
    pub follow_lists: Vec<Vec<[u8; 32]>>,
    /// Lines that are not an event (or `["EVENT", ...]` holding one).
    pub malformed: usize,
    /// Events whose id an earlier line already had.
    pub duplicates: usize,
    /// The first few problems, as `line N: reason`.
    pub problems: Vec<String>,
}

const PROBLEMS_KEPT: usize = 5;

impl Dataset {
    /// Reads and parses `path`. Blank lines are ignored; malformed lines and
    /// duplicate ids are skipped and counted. Fails when nothing usable is left.
    pub fn load(path: &Path) -> anyhow::Result<Dataset> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the dataset {}", path.display()))?;
        let mut data = Dataset {
            path: path.to_path_buf(),
            file_bytes: text.len() as u64,
            events: Vec::new(),
            json_bytes: 0,
            meta: Vec::new(),
            authors: Vec::new(),
            reactions: HashMap::new(),
            follow_lists: Vec::new(),
            malformed: 0,
            duplicates: 0,
            problems: Vec::new(),
        };
        let mut author_index: HashMap<[u8; 32], u32> = HashMap::new();
        let mut seen: std::collections::HashSet<[u8; 32]> = std::collections::HashSet::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let (object, event) = match parse_line(line) {
                Ok(parsed) => parsed,
                Err(reason) => {
                    data.malformed += 1;
                    if data.problems.len() < PROBLEMS_KEPT {
                        data.problems.push(format!("line {}: {reason}", n + 1));
                    }
                    continue;
                }
            };
            if !seen.insert(event.id.0) {
                data.duplicates += 1;
                continue;
            }
            let next = author_index.len() as u32;
            let author = *author_index.entry(event.pubkey.0).or_insert_with(|| {
                data.authors.push(event.pubkey.0);
                next
            });
            if event.kind == 7 {
                let mut targets: Vec<[u8; 32]> = event
                    .tags
                    .iter()
                    .filter(|t| t.len() >= 2 && t[0] == "e")
                    .filter_map(|t| hex32(&t[1]))
                    .collect();
                targets.sort_unstable();
                targets.dedup();
                for target in targets {
                    *data.reactions.entry(target).or_default() += 1;
                }
            }
            if event.kind == 3 {
                let follows: Vec<[u8; 32]> = event
                    .tags
                    .iter()
                    .filter(|t| t.len() >= 2 && t[0] == "p")
                    .filter_map(|t| hex32(&t[1]))
                    .collect();
                data.follow_lists.push(follows);
            }
            data.meta.push(EventMeta {
                id: event.id.0,
                author,
                kind: event.kind,
            });
            data.json_bytes += object.len() as u64;
            data.events.push(object.to_string());
        }
        if data.events.is_empty() {
            bail!(
                "{} holds no usable event ({} malformed lines{})",
                path.display(),
                data.malformed,
                data.problems
                    .first()
                    .map(|p| format!(", first: {p}"))
                    .unwrap_or_default()
            );
        }
        Ok(data)
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Every distinct kind, for a filter that matches the whole dataset.
    pub fn kinds(&self) -> Vec<u16> {
        let mut kinds: Vec<u16> = self.meta.iter().map(|m| m.kind).collect();
        kinds.sort_unstable();
        kinds.dedup();
        kinds
    }
}

/// The event object of a line (a bare object, `["EVENT", e]` or
/// `["EVENT", sub, e]`) and its strict parse.
fn parse_line(line: &str) -> Result<(&str, Event), String> {
    let object: &str = if line.starts_with('[') {
        let items: Vec<&RawValue> =
            serde_json::from_str(line).map_err(|e| format!("malformed JSON: {e}"))?;
        match items.as_slice() {
            [tag, .., last] if tag.get() == "\"EVENT\"" && items.len() <= 3 => last.get(),
            _ => {
                return Err(
                    "an array line must be [\"EVENT\", event] or [\"EVENT\", sub, event]".into(),
                );
            }
        }
    } else {
        line
    };
    let event = Event::from_json(object).map_err(|e| e.to_string())?;
    Ok((object, event))
}

/// 64 lowercase hex characters as 32 bytes.
pub fn hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use megalith::Keys;

    #[test]
    fn loads_objects_and_event_arrays_and_counts_bad_lines() {
        let keys = Keys::from_seed(1);
        let a = keys.sign(1_700_000_000, 1, vec![], "a".into()).to_json();
        let b = keys.sign(1_700_000_001, 1, vec![], "b".into()).to_json();
        let c = keys.sign(1_700_000_002, 1, vec![], "c".into()).to_json();
        let text = format!(
            "{a}\n[\"EVENT\",{b}]\n\n[\"EVENT\",\"sub\",{c}]\n{a}\nnot json\n{{\"id\":1}}\n"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, text).unwrap();
        let data = Dataset::load(&path).unwrap();
        assert_eq!(data.len(), 3);
        assert_eq!(data.events[1], b);
        assert_eq!(data.duplicates, 1);
        assert_eq!(data.malformed, 2);
        assert!(
            data.problems[0].starts_with("line 6:"),
            "{:?}",
            data.problems
        );
        assert_eq!(data.authors.len(), 1);
    }

    #[test]
    fn reactions_count_every_e_tag_once() {
        let keys = Keys::from_seed(2);
        let (root, note) = ("aa".repeat(32), "bb".repeat(32));
        let e = |v: &str| vec!["e".to_string(), v.to_string()];
        let r1 = keys.sign(1, 7, vec![e(&root), e(&note)], "+".into());
        let r2 = keys.sign(2, 7, vec![e(&note), e(&note)], "+".into());
        let text = format!("{}\n{}\n", r1.to_json(), r2.to_json());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, text).unwrap();
        let data = Dataset::load(&path).unwrap();
        assert_eq!(data.reactions[&[0xaa; 32]], 1);
        assert_eq!(data.reactions[&[0xbb; 32]], 2);
    }

    #[test]
    fn a_file_without_events_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.jsonl");
        std::fs::write(&path, "nope\n").unwrap();
        let err = Dataset::load(&path).unwrap_err().to_string();
        assert!(err.contains("no usable event"), "{err}");
    }
}
