//! The `page_decoder` fuzz target's properties, driven by a seeded generator
//! so `cargo test` runs them: random bytes as pages and small files, and
//! mutations of the real pages of a store's index files. Nothing panics; a
//! changed page that is not re-sealed is always reported; a file the checker
//! calls clean is consistent.

mod common;

#[path = "../fuzz/fuzz_targets/page_decoder_properties.rs"]
mod properties;

use std::collections::HashSet;
use std::path::Path;

use common::Rng;
use megalith::inspect::index::{
    PAGE_SIZE, check_index_bytes, check_index_bytes_with, decode_free_list_page, reseal_page,
};
use megalith::{Durability, EventStore, IndexKind, Keys};
use properties::{as_page, assert_clean_is_consistent, single_page, small_file, whole_file};

fn random_bytes(rng: &mut Rng, len: usize) -> Vec<u8> {
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

#[test]
fn random_bytes_as_pages_and_small_files_never_panic() {
    let mut rng = Rng::new(0x1DE5);
    for round in 0..400 {
        let len = rng.below(6000) as usize;
        let mut data = random_bytes(&mut rng, len);
        // Give the structure a chance: plausible page types and small counts.
        if let Some(b) = data.get_mut(16 + 8) {
            *b = 1 + (round % 3) as u8;
        }
        if let Some(b) = data.get_mut(16 + 11) {
            *b = 0;
        }
        let id = rng.below(12);
        single_page(&as_page(&data), id);
        small_file(&data);
    }
}

/// A closed store with a few hundred events, checkpointed often.
fn store(dir: &Path) {
    let store = EventStore::builder(dir)
        .shards(1) // one shard: the test works on shard 0's files
        .durability(Durability::Never)
        .segment_size(1 << 20)
        .checkpoint_dirty_nodes(2)
        .open()
        .unwrap();
    let keys: Vec<Keys> = (0..5).map(|s| Keys::from_seed(100 + s)).collect();
    let events: Vec<_> = (0..300u64)
        .map(|i| {
            let kind = if i % 11 == 0 { 0 } else { 1 };
            keys[(i % 5) as usize].sign(
                1_700_000_000 + i * 13,
                kind,
                vec![vec!["t".into(), format!("topic{}", i % 7)]],
                format!("event {i}"),
            )
        })
        .collect();
    for chunk in events.chunks(10) {
        store.insert(chunk).unwrap();
    }
    // Into the trees: a close alone would save the levels of the
    // random-order indexes beside them.
    store.checkpoint().unwrap();
    store.close().unwrap();
}

/// Pages of `bytes` listed on its free list (their contents are stale, so
/// changing them is not damage).
fn listed_free(bytes: &[u8], kind: IndexKind) -> HashSet<u64> {
    let meta = check_index_bytes(bytes, kind).meta.unwrap();
    let mut free = HashSet::new();
    let mut next = meta.free_list_head;
    while let Some(id) = next {
        let start = id as usize * PAGE_SIZE;
        let list = decode_free_list_page(&bytes[start..start + PAGE_SIZE], id).unwrap();
        free.extend(list.ids);
        next = list.next;
    }
    free
}

#[test]
fn mutated_real_pages_are_reported_or_consistent() {
    let dir = tempfile::tempdir().unwrap();
    store(dir.path());
    let mut rng = Rng::new(77);
    for kind in [
        IndexKind::AuthorTime,
        IndexKind::Primary,
        IndexKind::TagTime,
    ] {
        let path = dir.path().join("shard-0000/index").join(kind.file_name());
        let original = std::fs::read(&path).unwrap();
        let mut entries = Vec::new();
        let check = check_index_bytes_with(&original, kind, |e| entries.push(e.to_vec()));
        assert!(check.problems.is_empty(), "{:?}", check.problems);
        assert_clean_is_consistent(&check, &entries, kind);
        let pages = original.len() / PAGE_SIZE;
        assert!(pages > 4, "{kind:?} has {pages} pages");
        let free = listed_free(&original, kind);
        let mut reported = 0;
        for _ in 0..300 {
            let page = rng.below(pages as u64) as usize;
            let start = page * PAGE_SIZE;
            let mut bytes = original.clone();
            for _ in 0..1 + rng.below(3) {
                // Mostly the header and the first keys, where structure lives.
                let at = if rng.chance(60) {
                    8 + rng.below(120) as usize
                } else {
                    rng.below(PAGE_SIZE as u64) as usize
                };
                match rng.below(3) {
                    0 => bytes[start + at] ^= 1 << rng.below(8),
                    1 => bytes[start + at] = rng.next_u64() as u8,
                    _ => {
                        let other = 16 + rng.below((PAGE_SIZE - 24) as u64) as usize;
                        let (a, b) = (start + at.min(PAGE_SIZE - 8), start + other);
                        let word: Vec<u8> = bytes[a..a + 8].to_vec();
                        bytes.copy_within(b..b + 8, a);
                        bytes[b..b + 8].copy_from_slice(&word);
                    }
                }
            }
            let changed = bytes[start..start + PAGE_SIZE] != original[start..start + PAGE_SIZE];
            let resealed = page >= 2
                && rng.chance(60)
                && reseal_page(&mut bytes[start..start + PAGE_SIZE], page as u64).is_ok();
            single_page(&bytes[start..start + PAGE_SIZE], page as u64);
            whole_file(&bytes, kind);
            let problems = check_index_bytes(&bytes, kind).problems;
            // A damaged meta page (0 or 1) is what an interrupted checkpoint
            // leaves: the other slot is used and the damage is a note, not a
            // problem. Every other page in use must be reported.
            if changed && !resealed && page >= 2 && !free.contains(&(page as u64)) {
                assert!(
                    !problems.is_empty(),
                    "{kind:?}: an unsealed change to page {page} went unnoticed"
                );
            }
            if !problems.is_empty() {
                reported += 1;
            }
        }
        assert!(
            reported > 40,
            "{kind:?}: only {reported} of 300 mutations reported"
        );
    }
}
