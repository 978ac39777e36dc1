//! The in-memory level of a random-order index, saved at a clean close
//! (`index/<name>.level`, docs/format.md) so that the next open does not
//! replay the records it holds, and the close does not merge it into a tree
//! of millions of leaves (what made a small import into a big store cost
//! far more than into a small one).
//!
//! The file is stamped with the tree's durable meta: it is used only by a
//! tree whose meta is that one (the level was staged over exactly that
//! tree), and only if the log still holds every record it covers.
//! Anything else (another checkpoint, damage, a log that ends before it)
//! is no level: the file is removed and replay stages those records again
//! from the log, as after a crash. The log stays the truth; the file only
//! saves the replay.

use super::format::Meta;
use super::level::{FIRST_ADD, LAST_ADD, effect};
use crate::ids::{Location, Lsn, crc64};

const FILE_MAGIC: [u8; 8] = *b"MGLEVEL1";

/// magic; index kind (u8), entry width (u16 LE), past_floor (u8), 4 zero
/// bytes; generation, root page + 1 (0: none), entry count, page count,
/// checkpoint LSN (u64 LE each), checkpoint position (8 bytes, as in index
/// keys); covered LSN (u64 LE), covered position (8 bytes); entries (u64
/// LE).
const HEADER: usize = 8 + 8 + 5 * 8 + 8 + 8 + 8 + 8;

/// What a saved level holds: the log records through `covered_lsn` (ending
/// at `covered_position`) over the tree's checkpoint, as flattened entries.
#[derive(Debug)]
pub(crate) struct SavedLevel {
    pub covered_lsn: Lsn,
    pub covered_position: Location,
    /// Entries of the index's width, ascending, each once.
    pub keys: Vec<u8>,
    /// Each entry's first and last state (`level::FIRST_ADD`, `LAST_ADD`).
    pub flags: Vec<u8>,
    /// What the level changes the index's entry count by.
    pub change: i64,
}

/// The file's bytes for a level staged over the tree whose durable meta is
/// `meta`, covering the log through `covered`.
pub(crate) fn encode(meta: &Meta, covered: (Lsn, Location), keys: &[u8], flags: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + keys.len() + flags.len() + 8);
    out.extend_from_slice(&FILE_MAGIC);
    out.extend_from_slice(&stamp(meta));
    out.extend_from_slice(&covered.0.0.to_le_bytes());
    out.extend_from_slice(&covered.1.to_bytes());
    out.extend_from_slice(&(flags.len() as u64).to_le_bytes());
    out.extend_from_slice(keys);
    out.extend_from_slice(flags);
    let crc = crc64(&[&out]);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// The tree's state the level was staged over, as the header names it.
fn stamp(meta: &Meta) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + 6 * 8);
    out.push(meta.index_kind);
    out.extend_from_slice(&meta.entry_width.to_le_bytes());
    out.push(u8::from(meta.past_floor));
    out.extend_from_slice(&[0; 4]);
    for value in [
        meta.generation,
        meta.root.map_or(0, |p| p.0 + 1),
        meta.entry_count,
        meta.page_count,
        meta.checkpoint_lsn.0,
    ] {
        out.extend_from_slice(&value.to_le_bytes());
    }
    out.extend_from_slice(&meta.checkpoint_position.to_bytes());
    out
}

/// Reads a saved level back for the tree whose durable meta is `meta`, from
/// a log whose last record is `log_last` (the log must still hold every
/// record the level covers); the error says why it cannot be used.
pub(crate) fn decode(bytes: &[u8], meta: &Meta, log_last: Lsn) -> Result<SavedLevel, String> {
    if bytes.len() < HEADER + 8 || bytes[..8] != FILE_MAGIC {
        return Err("not a saved level (bad magic or too short)".into());
    }
    let (body, crc) = bytes.split_at(bytes.len() - 8);
    if crc64(&[body]) != u64::from_le_bytes(crc.try_into().expect("8 bytes")) {
        return Err("checksum mismatch".into());
    }
    let stamp_len = 8 + 6 * 8;
    if body[8..8 + stamp_len] != stamp(meta)[..] {
        return Err("saved for another checkpoint of the index".into());
    }
    let u64_at = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes"));
    let at = 8 + stamp_len;
    let covered_lsn = Lsn(u64_at(at));
    let covered_position = Location::from_bytes(body[at + 8..at + 16].try_into().expect("8 bytes"));
    let entries = u64_at(at + 16);
    let width = usize::from(meta.entry_width);
    let expected = (entries as usize)
        .checked_mul(width + 1)
        .and_then(|n| n.checked_add(HEADER));
    if expected != Some(body.len()) {
        return Err(format!(
            "{} bytes for {entries} entries of {width} bytes",
            body.len()
        ));
    }
    if covered_lsn > log_last {
        return Err(format!(
            "covers the log through LSN {}, past its last record ({})",
            covered_lsn.0, log_last.0
        ));
    }
    if covered_lsn <= meta.checkpoint_lsn {
        return Err(format!(
            "covers the log through LSN {}, not past the index's checkpoint at {}",
            covered_lsn.0, meta.checkpoint_lsn.0
        ));
    }
    let keys_end = HEADER + entries as usize * width;
    let (keys, flags) = (&body[HEADER..keys_end], &body[keys_end..]);
    let mut change = 0;
    for (i, &bits) in flags.iter().enumerate() {
        if bits & !(LAST_ADD | FIRST_ADD) != 0 {
            return Err(format!("entry {i} has unknown flags {bits:#x}"));
        }
        if i > 0 && keys[(i - 1) * width..i * width] >= keys[i * width..(i + 1) * width] {
            return Err(format!("entry {i} is not above the one before it"));
        }
        change += effect(bits);
    }
    Ok(SavedLevel {
        covered_lsn,
        covered_position,
        keys: keys.to_vec(),
        flags: flags.to_vec(),
        change,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{PageId, SegmentId};

    fn meta() -> Meta {
        Meta {
            index_kind: 1,
            entry_width: 4,
            generation: 7,
            root: Some(PageId(9)),
            entry_count: 100,
            page_count: 12,
            checkpoint_lsn: Lsn(50),
            checkpoint_position: Location {
                segment: SegmentId(1),
                offset: 4096,
            },
            free_list_head: None,
            free_page_count: 0,
            past_floor: false,
        }
    }

    #[test]
    fn a_saved_level_reads_back_only_over_its_own_checkpoint() {
        let covered = (
            Lsn(80),
            Location {
                segment: SegmentId(2),
                offset: 64,
            },
        );
        let keys = [0u8, 0, 0, 1, 0, 0, 0, 2];
        let flags = [3u8, 0];
        let bytes = encode(&meta(), covered, &keys, &flags);
        let back = decode(&bytes, &meta(), Lsn(80)).unwrap();
        assert_eq!((back.covered_lsn, back.covered_position), covered);
        assert_eq!((&back.keys[..], &back.flags[..]), (&keys[..], &flags[..]));
        // One entry added, one removed (both states agree in each).
        assert_eq!(back.change, 0);
        // Entries out of order, or unknown flags, under a valid checksum:
        // refused.
        let swapped = [0u8, 0, 0, 2, 0, 0, 0, 1];
        let error = decode(
            &encode(&meta(), covered, &swapped, &flags),
            &meta(),
            Lsn(80),
        )
        .unwrap_err();
        assert!(error.contains("not above"), "{error}");
        let error =
            decode(&encode(&meta(), covered, &keys, &[3, 4]), &meta(), Lsn(80)).unwrap_err();
        assert!(error.contains("unknown flags"), "{error}");
        // Every field of the stamp matters.
        let others = [
            Meta {
                generation: 8,
                ..meta()
            },
            Meta {
                root: Some(PageId(10)),
                ..meta()
            },
            Meta {
                entry_count: 101,
                ..meta()
            },
            Meta {
                page_count: 13,
                ..meta()
            },
            Meta {
                checkpoint_lsn: Lsn(51),
                ..meta()
            },
            Meta {
                past_floor: true,
                ..meta()
            },
        ];
        for other in others {
            assert!(decode(&bytes, &other, Lsn(80)).is_err(), "{other:?}");
        }
        // Any byte flipped, or the file cut short: refused.
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x10;
            assert!(decode(&damaged, &meta(), Lsn(80)).is_err(), "byte {at}");
        }
        assert!(decode(&bytes[..bytes.len() - 1], &meta(), Lsn(80)).is_err());
        // A level that covers nothing past the checkpoint is not one.
        let stale = encode(&meta(), (Lsn(50), covered.1), &keys, &flags);
        assert!(decode(&stale, &meta(), Lsn(80)).is_err());
    }
}
