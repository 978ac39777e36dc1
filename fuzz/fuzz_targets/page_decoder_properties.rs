//! Properties of the index page decoders and the index file checker, shared
//! by the `page_decoder` fuzz target and `tests/fuzz_properties_index.rs`.
//! Every function takes arbitrary bytes; a panic is a bug.

use megalith::IndexKind;
use megalith::inspect::index::{
    FileCheck, MetaInfo, PAGE_SIZE, TreePage, check_index_bytes, check_index_bytes_with,
    decode_free_list_page, decode_meta_page, decode_tree_page, encode_free_list_page,
    encode_meta_page, encode_tree_page, reseal_page,
};
use megalith::{Location, Lsn, SegmentId};

/// `data` as one page: padded with zeros or cut to `PAGE_SIZE`.
pub fn as_page(data: &[u8]) -> Vec<u8> {
    let mut page = vec![0u8; PAGE_SIZE];
    let n = data.len().min(PAGE_SIZE);
    page[..n].copy_from_slice(&data[..n]);
    page
}

/// Every decoder on one page (as given, and re-sealed so the structure,
/// not the checksum, is what gets tested); whatever decodes re-encodes to
/// a page that decodes the same.
pub fn single_page(page: &[u8], id: u64) {
    for slot in 0..2 {
        if let Ok(meta) = decode_meta_page(page, slot) {
            let again = encode_meta_page(&meta, slot);
            assert_eq!(decode_meta_page(&again, slot), Ok(meta));
        }
    }
    let mut sealed = page.to_vec();
    let resealed = reseal_page(&mut sealed, id).is_ok();
    for bytes in [page, &sealed[..]] {
        if let Ok(list) = decode_free_list_page(bytes, id) {
            let again = encode_free_list_page(id, &list).expect("a decoded list fits a page");
            assert_eq!(decode_free_list_page(&again, id), Ok(list));
        }
        for kind in IndexKind::ALL {
            for verify in [true, false] {
                if let Ok(node) = decode_tree_page(bytes, id, kind.width(), verify) {
                    tree_page_round_trip(&node, kind.width(), id);
                }
            }
        }
    }
    if resealed {
        // A re-sealed page passes its checksum: whatever fails now fails on structure.
        assert!(
            decode_tree_page(&sealed, id, 24, true).is_ok()
                == decode_tree_page(&sealed, id, 24, false).is_ok()
        );
    }
}

fn tree_page_round_trip(node: &TreePage, width: usize, id: u64) {
    let keys = match node {
        TreePage::Leaf { entries } => entries,
        TreePage::Branch { separators, .. } => separators,
    };
    let ascending = keys.windows(2).all(|pair| pair[0] < pair[1]);
    match encode_tree_page(node, width, id) {
        Ok(again) => {
            assert!(ascending);
            let decoded =
                decode_tree_page(&again, id, width, true).expect("an encoded page decodes");
            assert_eq!(&decoded, node);
        }
        // What a page held always fits a page again, once its keys are in order.
        Err(reason) => assert!(!ascending, "{reason}"),
    }
}

/// A small index file from fuzz bytes: meta page 0 built from the first
/// bytes (so it is valid and points into the file), meta page 1 and the
/// tree pages taken from the rest and, when the first byte says so,
/// re-sealed. The checker must not panic, and a file it calls clean must
/// be consistent.
pub fn small_file(data: &[u8]) {
    let byte = |i: usize| data.get(i).copied().unwrap_or(0);
    let kind = IndexKind::ALL[usize::from(byte(1)) % IndexKind::ALL.len()];
    let body = data.get(16..).unwrap_or(&[]);
    // Up to 8 pages after the metas, each filled from a 512-byte chunk
    // placed after its checksum field (header and body come from the fuzzer).
    let chunks: Vec<&[u8]> = body.chunks(512).take(8).collect();
    let pages = 2 + chunks.len() as u64;
    let mut file = vec![0u8; pages as usize * PAGE_SIZE];
    for (i, chunk) in chunks.iter().enumerate() {
        let id = 2 + i as u64;
        let start = id as usize * PAGE_SIZE;
        let page = &mut file[start..start + PAGE_SIZE];
        page[8..8 + chunk.len()].copy_from_slice(chunk);
        if byte(0) & 1 == 0 {
            let _ = reseal_page(page, id);
        }
    }
    let pick = |b: u8, below: u64| u64::from(b) % below.max(1);
    let meta = MetaInfo {
        index_kind: if byte(0) & 2 == 0 { kind.id() } else { byte(2) },
        entry_width: if byte(0) & 4 == 0 {
            kind.width() as u16
        } else {
            u16::from(byte(3))
        },
        generation: u64::from(byte(4)),
        root: Some(pick(byte(5), pages + 2)).filter(|&r| r != 0),
        entry_count: u64::from(byte(6)) * 4,
        page_count: if byte(0) & 8 == 0 {
            pages
        } else {
            pick(byte(7), pages + 3)
        },
        checkpoint_lsn: Lsn(u64::from(byte(8))),
        checkpoint_position: Location {
            segment: SegmentId(1),
            offset: 32,
        },
        free_list_head: Some(pick(byte(9), pages + 2)).filter(|&h| h != 0),
        free_page_count: u64::from(byte(10)),
        past_floor: byte(0) & 32 != 0,
    };
    file[..PAGE_SIZE].copy_from_slice(&encode_meta_page(&meta, 0));
    if byte(0) & 16 != 0 {
        // Slot 1 gets the last chunk's bytes: usually an invalid meta page.
        let n = body.len().min(PAGE_SIZE);
        file[PAGE_SIZE..PAGE_SIZE + n].copy_from_slice(&body[..n]);
    }
    let cut = if byte(0) & 32 != 0 {
        file.len().saturating_sub(usize::from(byte(11)) * 37)
    } else {
        file.len()
    };
    whole_file(&file[..cut], kind);
}

/// The checker on any bytes: no panic, and a clean report is consistent.
pub fn whole_file(file: &[u8], kind: IndexKind) {
    let mut entries: Vec<Vec<u8>> = Vec::new();
    let check = check_index_bytes_with(file, kind, |e| entries.push(e.to_vec()));
    if check.problems.is_empty() {
        assert_clean_is_consistent(&check, &entries, kind);
    }
    // Without entries, the same verdict.
    assert_eq!(check_index_bytes(file, kind), check);
}

/// What "clean" promises: every page accounted for once, the count right,
/// entries strictly ascending and of the index's width.
pub fn assert_clean_is_consistent(check: &FileCheck, entries: &[Vec<u8>], kind: IndexKind) {
    let meta = check.meta.expect("a clean file has a meta page in use");
    let s = check.stats;
    assert_eq!(
        2 + s.tree_pages + s.free_pages + s.free_list_pages,
        s.pages,
        "{check:?}"
    );
    assert_eq!(s.entries, meta.entry_count);
    assert_eq!(entries.len() as u64, s.entries);
    assert!(entries.iter().all(|e| e.len() == kind.width()));
    assert!(entries.windows(2).all(|pair| pair[0] < pair[1]));
    assert_eq!(s.depth == 0, meta.root.is_none());
}
