//! A store of format 2 (kind_time and time entries without the author
//! hash) opens in a format 3 build: those indexes are rebuilt from the log,
//! the manifest says 3, and every answer is what it was.

use std::path::Path;

use crate::event::{Event, Keys};
use crate::index::{BTree, IndexKind};
use crate::inspect::index::check_store;
use crate::storage::FileStorage;
use crate::{Durability, EventStore, Filter};

use super::manifest;

/// The entries of `kind` as a format 2 build wrote them: the 4 author-hash
/// bytes after the reversed time and id prefix taken out.
fn format_2_entry(kind: IndexKind, entry: &[u8]) -> Vec<u8> {
    let at = kind.time_prefix_len().unwrap() + crate::index::AUTHOR_HASH_AT;
    let mut old = entry[..at].to_vec();
    old.extend_from_slice(&entry[at + crate::index::AUTHOR_HASH_LEN..]);
    old
}

/// Rewrites the closed store in `dir` as a format 2 build would have left
/// it: its kind_time and time files of the old width, checkpointed at the
/// same log position, and a version 2 manifest.
fn downgrade_to_format_2(dir: &Path) {
    let storage = FileStorage;
    let mut shards = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let shard = entry.unwrap().path();
        if !shard
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("shard-")
        {
            continue;
        }
        shards += 1;
        for kind in [IndexKind::KindTime, IndexKind::Time] {
            let path = shard.join("index").join(kind.file_name());
            let tree = BTree::open(&storage, &path, kind.id(), kind.width()).unwrap();
            let meta = *tree.meta();
            let mut entries = Vec::new();
            let mut cursor = tree.seek(&[]).unwrap();
            while let Some(entry) = cursor.next().unwrap() {
                entries.push(format_2_entry(kind, entry));
            }
            drop(cursor);
            drop(tree);
            assert!(!entries.is_empty(), "{} is empty", path.display());
            std::fs::remove_file(&path).unwrap();
            let mut old = BTree::open(&storage, &path, kind.id(), kind.width() - 4).unwrap();
            for entry in &entries {
                old.insert(entry).unwrap();
            }
            let prepared = old
                .prepare_checkpoint(meta.checkpoint_lsn, meta.checkpoint_position)
                .unwrap()
                .unwrap();
            old.install(prepared).unwrap();
        }
    }
    assert_eq!(shards, 2);
    let current = manifest::load(&storage, dir).unwrap();
    manifest::store_as_version(&storage, dir, current, 2);
    assert_eq!(manifest::load(&storage, dir).unwrap().version, 2);
}

fn events() -> Vec<Event> {
    let keys: Vec<Keys> = (0..60).map(Keys::from_seed).collect();
    (0..3_000u64)
        .map(|n| {
            let author = &keys[(n * 7 % 60) as usize];
            let kind = [1u16, 1, 1, 7, 6, 30023][(n % 6) as usize];
            let mut tags = Vec::new();
            if kind == 30023 {
                tags.push(vec!["d".to_string(), format!("article-{}", n % 5)]);
            }
            if kind == 7 {
                tags.push(vec!["e".to_string(), format!("{:064x}", n - 1)]);
            }
            author.sign(1_700_000_000 + n / 3, kind, tags, format!("note {n}"))
        })
        .collect()
}

fn answers(store: &EventStore, keys: &[Keys]) -> Vec<Vec<Event>> {
    let follows: Vec<_> = keys.iter().step_by(2).map(Keys::pubkey).collect();
    let few: Vec<_> = keys.iter().take(33).map(Keys::pubkey).collect();
    let filters = [
        Filter::new().authors(follows.clone()).kinds([1]).limit(100),
        Filter::new().authors(follows.clone()).limit(150),
        Filter::new()
            .authors(few.clone())
            .kinds([7, 30023])
            .limit(40),
        Filter::new()
            .authors(few)
            .kinds([1, 6])
            .until(1_700_000_500)
            .limit(60),
        Filter::new().kinds([1]).since(1_700_000_200).limit(300),
        Filter::new().kinds([6, 7]),
        Filter::new().until(1_700_000_900).limit(250),
        Filter::new(),
    ];
    filters
        .iter()
        .map(|f| {
            let answer = store.query(std::slice::from_ref(f)).unwrap();
            assert!(!answer.is_empty(), "{f:?} found nothing");
            answer
        })
        .collect()
}

#[test]
fn a_format_2_store_is_migrated_at_open_and_answers_as_before() {
    let dir = tempfile::tempdir().unwrap();
    let keys: Vec<Keys> = (0..60).map(Keys::from_seed).collect();
    let store = EventStore::builder(dir.path())
        .shards(2)
        .durability(Durability::Never)
        .open()
        .unwrap();
    store.insert(&events()).unwrap();
    let before = answers(&store, &keys);
    store.close().unwrap();

    downgrade_to_format_2(dir.path());
    let report = check_store(dir.path()).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.reason.contains("older store format")),
        "index-doctor names the old format: {:?}",
        report.problems
    );

    let store = EventStore::open(dir.path()).unwrap();
    let recovery = store.recovery_report().clone();
    assert_eq!(recovery.format_migration, Some((2, 3)));
    let migrated: Vec<&String> = recovery
        .rebuilt_indexes
        .iter()
        .filter(|r| r.contains("format migration"))
        .collect();
    assert_eq!(migrated.len(), 4, "{:?}", recovery.rebuilt_indexes);
    assert!(migrated.iter().any(|r| r.starts_with("kind_time:")));
    assert!(migrated.iter().any(|r| r.starts_with("time:")));
    assert_eq!(answers(&store, &keys), before);
    store.close().unwrap();

    assert_eq!(
        manifest::load(&FileStorage, dir.path()).unwrap().version,
        manifest::STORE_FORMAT_VERSION
    );
    let report = check_store(dir.path()).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    let store = EventStore::open(dir.path()).unwrap();
    assert_eq!(store.recovery_report().format_migration, None);
    assert!(store.recovery_report().rebuilt_indexes.is_empty());
    assert_eq!(answers(&store, &keys), before);
}
