//! Damage to an index file never panics and never changes an answer: for
//! single flipped bytes all over `author_time.idx` (every byte of each
//! page's header and meta fields, a stride through the rest) and for
//! truncations at every page boundary and odd offsets, opening the store
//! either sets the file aside and rebuilds it from the log, or opens it and
//! queries then give exactly the undamaged answers or a clean error (a
//! damaged tree page is only noticed when first read).

use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use megalith::inspect::index::PAGE_SIZE;
use megalith::{Durability, Event, EventStore, Filter, Keys};

const FILE: &str = "author_time.idx";

fn open(dir: &Path) -> Result<EventStore, megalith::Error> {
    EventStore::builder(dir)
        .shards(1) // one shard: the test works on shard 0's files
        .durability(Durability::Never)
        .segment_size(1 << 20)
        .create_if_missing(false)
        .open()
}

/// A closed store whose indexes span several pages and went through many
/// checkpoints (so the free lists are not empty). Returns the filters to ask.
fn build(dir: &Path) -> Vec<Vec<Filter>> {
    let store = EventStore::builder(dir)
        .shards(1) // one shard: the test works on shard 0's files
        .durability(Durability::Never)
        .segment_size(1 << 20)
        .checkpoint_dirty_nodes(1)
        // A small in-memory level: author_time (a random-order index) is
        // merged and checkpointed many times, as time_idx is by every
        // background checkpoint.
        .level_entries(64)
        .open()
        .unwrap();
    let authors: Vec<Keys> = (0..6).map(Keys::from_seed).collect();
    let topics = ["nostr", "rust", "art"];
    let mut events: Vec<Event> = Vec::new();
    for i in 0..420u64 {
        let keys = &authors[(i % 6) as usize];
        let t = 1_700_000_000 + i * 7;
        let event = match i % 10 {
            // Profiles: each replaces the author's previous one.
            0 => keys.sign(t, 0, vec![], format!("{{\"name\":\"v{i}\"}}")),
            // Deletions of an earlier note of the same author.
            9 => {
                let target = events
                    .iter()
                    .rev()
                    .find(|e| e.pubkey == keys.pubkey() && e.kind == 1)
                    .map(|e| e.id.to_hex())
                    .unwrap_or_default();
                keys.sign(t, 5, vec![vec!["e".into(), target]], String::new())
            }
            _ => keys.sign(
                t,
                1,
                vec![
                    vec!["t".into(), topics[(i % 3) as usize].into()],
                    vec!["p".into(), authors[(i % 4) as usize].pubkey().to_hex()],
                ],
                format!("note {i}"),
            ),
        };
        events.push(event);
    }
    for chunk in events.chunks(15) {
        store.insert(chunk).unwrap();
    }
    store.close().unwrap();
    let ids: Vec<_> = events.iter().step_by(37).map(|e| e.id).collect();
    vec![
        vec![Filter::new().authors([authors[1].pubkey()])],
        vec![
            Filter::new()
                .authors([authors[2].pubkey(), authors[5].pubkey()])
                .limit(25),
        ],
        vec![Filter::new().kinds([0, 5])],
        vec![Filter::new().tag('t', ["rust".to_string()])],
        vec![Filter::new().ids(ids)],
        vec![Filter::new().limit(60)],
    ]
}

fn answers(
    store: &EventStore,
    filters: &[Vec<Filter>],
) -> Result<Vec<Vec<Event>>, megalith::Error> {
    filters.iter().map(|f| store.query(f)).collect()
}

#[derive(Debug, Default)]
struct Tally {
    rebuilt: usize,
    open_errors: usize,
    query_errors: usize,
    same: usize,
}

/// Writes `bytes` as the index file (every other index file pristine),
/// opens the store and compares answers. Panics (the test fails) on a panic
/// inside the engine or on a wrong answer.
fn try_damage(
    dir: &Path,
    pristine: &[(std::path::PathBuf, Vec<u8>)],
    bytes: &[u8],
    expected: &[Vec<Event>],
    filters: &[Vec<Filter>],
    what: &str,
    tally: &mut Tally,
) {
    let index = dir.join("shard-0000/index");
    for entry in fs::read_dir(&index).unwrap() {
        fs::remove_file(entry.unwrap().path()).unwrap();
    }
    for (path, content) in pristine {
        fs::write(path, content).unwrap();
    }
    fs::write(index.join(FILE), bytes).unwrap();
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let store = match open(dir) {
            Ok(store) => store,
            Err(_) => return Outcome::OpenError,
        };
        let rebuilt = !store.recovery_report().rebuilt_indexes.is_empty();
        let got = answers(&store, filters);
        let _ = store.close();
        match got {
            Err(_) => Outcome::QueryError,
            Ok(got) => Outcome::Answers(got, rebuilt),
        }
    }));
    match outcome {
        Err(_) => panic!("{what}: the engine panicked"),
        Ok(Outcome::OpenError) => tally.open_errors += 1,
        Ok(Outcome::QueryError) => tally.query_errors += 1,
        Ok(Outcome::Answers(got, rebuilt)) => {
            for (i, (got, want)) in got.iter().zip(expected).enumerate() {
                assert!(
                    got == want,
                    "{what}: filter {i} answered {} events, expected {}",
                    got.len(),
                    want.len()
                );
            }
            if rebuilt {
                tally.rebuilt += 1;
            } else {
                tally.same += 1;
            }
        }
    }
}

enum Outcome {
    OpenError,
    QueryError,
    Answers(Vec<Vec<Event>>, bool),
}

fn pristine_files(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut files: Vec<_> = fs::read_dir(dir.join("shard-0000/index"))
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            let bytes = fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    files.sort();
    files
}

/// Offsets to flip in page `page`: every byte of a meta page's fields, of a
/// tree or free-list page's header and first bytes, then a stride.
/// A closed store, its files, the damaged file's bytes and the answers
/// the undamaged store gives.
struct Fixture {
    filters: Vec<Vec<Filter>>,
    pristine: Vec<(std::path::PathBuf, Vec<u8>)>,
    original: Vec<u8>,
    expected: Vec<Vec<Event>>,
}

fn fixture(dir: &Path) -> Fixture {
    let filters = build(dir);
    let pristine = pristine_files(dir);
    let original = pristine
        .iter()
        .find(|(p, _)| p.ends_with(FILE))
        .unwrap()
        .1
        .clone();
    let store = open(dir).unwrap();
    let expected = answers(&store, &filters).unwrap();
    store.close().unwrap();
    Fixture {
        filters,
        pristine,
        original,
        expected,
    }
}

fn offsets_in_page(page: usize) -> impl Iterator<Item = usize> {
    let dense = if page < 2 { 112 } else { 48 };
    (0..dense).chain((dense..PAGE_SIZE).step_by(31))
}

#[test]
fn flipped_bytes_in_an_index_file_are_rebuilt_or_refused_never_misread() {
    let dir = tempfile::tempdir().unwrap();
    let Fixture {
        filters,
        pristine,
        original,
        expected,
    } = fixture(dir.path());
    let pages = original.len() / PAGE_SIZE;
    assert!(pages >= 6, "{FILE} has only {pages} pages");
    assert!(expected.iter().all(|a| !a.is_empty()));

    let mut tally = Tally::default();
    for page in 0..pages {
        for at in offsets_in_page(page) {
            let mut bytes = original.clone();
            bytes[page * PAGE_SIZE + at] ^= 0x10;
            let what = format!("flip at page {page} byte {at}");
            try_damage(
                dir.path(),
                &pristine,
                &bytes,
                &expected,
                &filters,
                &what,
                &mut tally,
            );
        }
    }
    eprintln!("flips over {pages} pages: {tally:?}");
    // Damaged meta pages are set aside and rebuilt, not misread.
    assert!(tally.rebuilt > 0, "{tally:?}");
}

#[test]
fn a_truncated_index_file_is_rebuilt_or_refused_never_misread() {
    let dir = tempfile::tempdir().unwrap();
    let Fixture {
        filters,
        pristine,
        original,
        expected,
    } = fixture(dir.path());
    let mut cuts: Vec<usize> = (0..=original.len() / PAGE_SIZE)
        .map(|p| p * PAGE_SIZE)
        .collect();
    cuts.extend([1, 17, PAGE_SIZE - 1, PAGE_SIZE + 100, 2 * PAGE_SIZE + 1]);
    cuts.extend([original.len() - 1, original.len() - PAGE_SIZE / 2]);
    let mut tally = Tally::default();
    for cut in cuts {
        try_damage(
            dir.path(),
            &pristine,
            &original[..cut],
            &expected,
            &filters,
            &format!("cut at {cut}"),
            &mut tally,
        );
    }
    eprintln!("truncations: {tally:?}");
    assert!(tally.rebuilt > 0, "{tally:?}");
}
