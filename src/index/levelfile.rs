//! Spilled runs of a random-order index's level (`index/<name>.<from>.run`,
//! docs/format.md): the sorted in-memory level written out when it is full
//! (instead of merged into a tree of millions of leaves) and at a clean
//! close, so that neither the writer nor the next open pays for a merge
//! that grows with the tree. The runs of an index form a chain over the
//! log: the first starts where the tree's checkpoint ends, each next one
//! where the one before ends, and replay starts where the last one ends.
//!
//! Each file is stamped with the tree's durable meta: it is used only by a
//! tree whose meta is that one (its entries were staged over exactly that
//! tree), only as a link of the chain, and only if the log still holds
//! every record it covers. Anything else (another checkpoint, damage, a
//! log that ends before it, a run that a merge of runs replaced) is no
//! run: the file is removed and replay stages those records again from the
//! log, as after a crash. The log stays the truth; the runs only save the
//! replay and the merges.

use super::format::Meta;
use super::level::{FIRST_ADD, LAST_ADD, effect};
use crate::ids::{Location, Lsn, crc64};

const FILE_MAGIC: [u8; 8] = *b"MGLEVEL2";

/// The first version's magic: a level saved at close, without the LSN its
/// records start after (replaced by runs; such a file is removed at open).
pub(crate) const OLD_MAGIC: [u8; 8] = *b"MGLEVEL1";

/// Bytes of the tree stamp.
const STAMP: usize = 8 + 6 * 8;

/// magic; index kind (u8), entry width (u16 LE), past_floor (u8), 4 zero
/// bytes; generation, root page + 1 (0: none), entry count, page count,
/// checkpoint LSN (u64 LE each), checkpoint position (8 bytes, as in index
/// keys); from LSN (u64 LE), from position (8 bytes); covered LSN (u64
/// LE), covered position (8 bytes); entries (u64 LE).
const HEADER: usize = 8 + STAMP + 16 + 16 + 8;

/// What a run file holds: the log records after `from` through `covered`,
/// staged over the tree and the runs before it, as sorted entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RunHeader {
    pub from: (Lsn, Location),
    pub covered: (Lsn, Location),
    /// Entries of the index's width, ascending, each once: `entries`
    /// keys from byte `keys_at`, then one flag byte each from `flags_at`.
    pub entries: usize,
    pub keys_at: usize,
    pub flags_at: usize,
    /// What the run changes the index's entry count by.
    pub change: i64,
}

/// Where the keys and the flags of a run file of `entries` entries of
/// `width` bytes start.
pub(crate) fn layout(entries: usize, width: usize) -> (usize, usize) {
    (HEADER, HEADER + entries * width)
}

/// The file name of the run of index `name` that starts after LSN `from`.
pub(crate) fn run_file_name(name: &str, from: Lsn) -> String {
    format!("{name}.{:020}.run", from.0)
}

/// The LSN a run file of index `name` starts after, from its name; `None`
/// for any other file.
pub(crate) fn run_file_from(name: &str, file: &str) -> Option<Lsn> {
    let digits = file
        .strip_prefix(name)?
        .strip_prefix('.')?
        .strip_suffix(".run")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(Lsn)
}

/// The file's bytes for a run staged over the tree whose durable meta is
/// `meta`, covering the log records after `from` through `covered`.
pub(crate) fn encode(
    meta: &Meta,
    from: (Lsn, Location),
    covered: (Lsn, Location),
    keys: &[u8],
    flags: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + keys.len() + flags.len() + 8);
    out.extend_from_slice(&FILE_MAGIC);
    out.extend_from_slice(&stamp(meta));
    for (lsn, position) in [from, covered] {
        out.extend_from_slice(&lsn.0.to_le_bytes());
        out.extend_from_slice(&position.to_bytes());
    }
    out.extend_from_slice(&(flags.len() as u64).to_le_bytes());
    out.extend_from_slice(keys);
    out.extend_from_slice(flags);
    let crc = crc64(&[&out]);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// The tree's state the run was staged over, as the header names it.
fn stamp(meta: &Meta) -> Vec<u8> {
    let mut out = Vec::with_capacity(STAMP);
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

/// Checks a run file for the tree whose durable meta is `meta`, from a log
/// whose last record is `log_last` (the log must still hold every record
/// the run covers): the checksum, the stamp, the size, the order of the
/// keys and the flags. The error says why it cannot be used.
pub(crate) fn decode(bytes: &[u8], meta: &Meta, log_last: Lsn) -> Result<RunHeader, String> {
    if bytes.len() >= 8 && bytes[..8] == OLD_MAGIC {
        return Err("a level saved by an earlier version (its records are replayed)".into());
    }
    if bytes.len() < HEADER + 8 || bytes[..8] != FILE_MAGIC {
        return Err("not a run file (bad magic or too short)".into());
    }
    let (body, crc) = bytes.split_at(bytes.len() - 8);
    if crc64(&[body]) != u64::from_le_bytes(crc.try_into().expect("8 bytes")) {
        return Err("checksum mismatch".into());
    }
    if body[8..8 + STAMP] != stamp(meta)[..] {
        return Err("staged over another checkpoint of the index".into());
    }
    let u64_at = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes"));
    let position_at =
        |at: usize| Location::from_bytes(body[at..at + 8].try_into().expect("8 bytes"));
    let at = 8 + STAMP;
    let from = (Lsn(u64_at(at)), position_at(at + 8));
    let covered = (Lsn(u64_at(at + 16)), position_at(at + 24));
    let entries = u64_at(at + 32);
    let width = usize::from(meta.entry_width);
    let expected = usize::try_from(entries)
        .ok()
        .and_then(|n| n.checked_mul(width + 1))
        .and_then(|n| n.checked_add(HEADER));
    if expected != Some(body.len()) {
        return Err(format!(
            "{} bytes for {entries} entries of {width} bytes",
            body.len()
        ));
    }
    let entries = entries as usize;
    if covered.0 > log_last {
        return Err(format!(
            "covers the log through LSN {}, past its last record ({})",
            covered.0.0, log_last.0
        ));
    }
    if covered.0 <= from.0 || from.0 < meta.checkpoint_lsn {
        return Err(format!(
            "covers LSNs {} to {}, not a range past the index's checkpoint at {}",
            from.0.0 + 1,
            covered.0.0,
            meta.checkpoint_lsn.0
        ));
    }
    let (keys_at, flags_at) = layout(entries, width);
    let (keys, flags) = (&body[keys_at..flags_at], &body[flags_at..]);
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
    Ok(RunHeader {
        from,
        covered,
        entries,
        keys_at,
        flags_at,
        change,
    })
}

/// The chain of runs a tree whose durable meta is `meta` takes, out of
/// `runs` (each checked by [`decode`]): the one that starts where the
/// checkpoint ends, then the one that starts where it ends, and so on.
/// Returns their positions in `runs`, oldest first; any run not returned
/// is not to be used (a link of a broken chain, or one a merge of runs
/// replaced: it starts inside another).
pub(crate) fn chain(runs: &[RunHeader], meta: &Meta) -> Vec<usize> {
    let mut taken = Vec::new();
    let mut end = (meta.checkpoint_lsn, meta.checkpoint_position);
    while let Some(next) = runs.iter().position(|run| run.from == end) {
        taken.push(next);
        end = runs[next].covered;
    }
    taken
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
            checkpoint_position: at(1, 4096),
            free_list_head: None,
            free_page_count: 0,
            past_floor: false,
        }
    }

    fn at(segment: u32, offset: u32) -> Location {
        Location {
            segment: SegmentId(segment),
            offset,
        }
    }

    #[test]
    fn a_run_reads_back_only_over_its_own_checkpoint() {
        let from = (Lsn(50), at(1, 4096));
        let covered = (Lsn(80), at(2, 64));
        let keys = [0u8, 0, 0, 1, 0, 0, 0, 2];
        let flags = [3u8, 0];
        let bytes = encode(&meta(), from, covered, &keys, &flags);
        let back = decode(&bytes, &meta(), Lsn(80)).unwrap();
        assert_eq!((back.from, back.covered), (from, covered));
        assert_eq!(back.entries, 2);
        assert_eq!(&bytes[back.keys_at..back.flags_at], &keys[..]);
        assert_eq!(&bytes[back.flags_at..back.flags_at + 2], &flags[..]);
        // One entry added, one removed (both states agree in each).
        assert_eq!(back.change, 0);
        // Entries out of order, or unknown flags, under a valid checksum:
        // refused.
        let swapped = [0u8, 0, 0, 2, 0, 0, 0, 1];
        let error = decode(
            &encode(&meta(), from, covered, &swapped, &flags),
            &meta(),
            Lsn(80),
        )
        .unwrap_err();
        assert!(error.contains("not above"), "{error}");
        let error = decode(
            &encode(&meta(), from, covered, &keys, &[3, 4]),
            &meta(),
            Lsn(80),
        )
        .unwrap_err();
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
        // A log that ends before what it covers: refused.
        assert!(decode(&bytes, &meta(), Lsn(79)).is_err());
        // A run that covers nothing, or starts before the checkpoint: not one.
        let empty = encode(&meta(), from, from, &keys, &flags);
        assert!(decode(&empty, &meta(), Lsn(80)).is_err());
        let early = encode(&meta(), (Lsn(49), at(1, 4000)), covered, &keys, &flags);
        assert!(decode(&early, &meta(), Lsn(80)).is_err());
        // The first version's file says what it is.
        let mut old = bytes.clone();
        old[..8].copy_from_slice(&OLD_MAGIC);
        let error = decode(&old, &meta(), Lsn(80)).unwrap_err();
        assert!(error.contains("earlier version"), "{error}");
    }

    #[test]
    fn the_chain_starts_at_the_checkpoint_and_skips_replaced_runs() {
        let header = |from: (u64, u32), covered: (u64, u32)| RunHeader {
            from: (Lsn(from.0), at(1, from.1)),
            covered: (Lsn(covered.0), at(1, covered.1)),
            entries: 0,
            keys_at: 0,
            flags_at: 0,
            change: 0,
        };
        // The checkpoint ends at (50, 4096). A merge of the runs 50-60 and
        // 60-70 into 50-70 left the second behind; 90-95 follows a gap.
        let runs = [
            header((60, 5000), (70, 6000)),
            header((90, 9000), (95, 9500)),
            header((50, 4096), (70, 6000)),
            header((70, 6000), (80, 7000)),
        ];
        assert_eq!(chain(&runs, &meta()), vec![2, 3]);
        // A run that starts at the right LSN but another position (a log
        // written again after a crash): the chain stops before it.
        let moved = [header((50, 4000), (70, 6000))];
        assert!(chain(&moved, &meta()).is_empty());
        assert_eq!(
            run_file_name("tag_time", Lsn(42)),
            "tag_time.00000000000000000042.run"
        );
        assert_eq!(
            run_file_from("tag_time", "tag_time.00000000000000000042.run"),
            Some(Lsn(42))
        );
        for other in [
            "tag_time.level",
            "tag_time.42.run",
            "author_time.00000000000000000042.run",
            "tag_time.00000000000000000042.run.tmp",
        ] {
            assert_eq!(run_file_from("tag_time", other), None, "{other}");
        }
    }
}
