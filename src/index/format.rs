//! Byte layout of index files: every page, the meta pages and the free-list
//! pages. `docs/format.md` draws the same layout; keep the two in step.
//!
//! ```text
//! every page (PAGE_SIZE = 4096 bytes) starts with
//!   0  crc         u64 LE   crc64 of (page id u64 LE, bytes 8..4096)
//!   8  page_type   u8       1 leaf, 2 branch, 3 free list, 4 meta
//!   9  reserved    u8       0
//!  10  count       u16 LE   leaf: entries; branch: children; free list: page ids
//!  12  prefix_len  u16 LE   leaf and branch: bytes every key of the page shares
//!  14  reserved    u16      0
//!  16  body
//!
//! leaf body:   prefix [prefix_len], then count suffixes of (width - prefix_len) bytes
//! branch body: prefix [prefix_len], then count child page ids (u64 LE), then
//!              count - 1 separator suffixes of (width - prefix_len) bytes;
//!              separator i is <= every entry under child i + 1 and > every
//!              entry under child i
//! free list:   16 next page id u64 LE (0 = last), 24 count page ids u64 LE
//! meta (pages 0 and 1):
//!  16 magic b"MEGAIDX\0" | 24 format_version u32 | 28 page_size u32 |
//!  32 index_kind u8 | 33 flags u8 | 34 entry_width u16 | 36 reserved u32 |
//!  40 generation u64 | 48 root page u64 (0 = empty) | 56 entry_count u64 |
//!  64 page_count u64 | 72 checkpoint_lsn u64 | 80 checkpoint_segment u32 |
//!  84 checkpoint_offset u32 | 88 free_list_head u64 | 96 free_page_count u64
//! meta flags: bit 0 past_floor (the tree may also hold entries of records
//!              after checkpoint_lsn); other bits 0
//! ```
//! Integers in page headers are little-endian; key bytes are whatever the
//! index's key encoding says (big-endian fields, so byte order is key order).

use crate::ids::{Location, Lsn, PageId, SegmentId, crc64};

pub(crate) const PAGE_SIZE: usize = 4096;

const CRC_OFFSET: usize = 0;
const PAGE_TYPE_OFFSET: usize = CRC_OFFSET + size_of::<u64>();
const COUNT_OFFSET: usize = PAGE_TYPE_OFFSET + size_of::<u8>() + 1;
const PREFIX_LEN_OFFSET: usize = COUNT_OFFSET + size_of::<u16>();
pub(crate) const PAGE_HEADER_LEN: usize = PREFIX_LEN_OFFSET + size_of::<u16>() + 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PageType {
    Leaf = 1,
    Branch = 2,
    FreeList = 3,
    Meta = 4,
}

impl PageType {
    fn from_byte(byte: u8) -> Option<PageType> {
        match byte {
            1 => Some(PageType::Leaf),
            2 => Some(PageType::Branch),
            3 => Some(PageType::FreeList),
            4 => Some(PageType::Meta),
            _ => None,
        }
    }
}

/// Writes the page header fields and the checksum; call last, after the body.
pub(crate) fn seal_page(
    page: &mut [u8],
    id: PageId,
    page_type: PageType,
    count: u16,
    prefix_len: u16,
) {
    page[PAGE_TYPE_OFFSET] = page_type as u8;
    page[COUNT_OFFSET..COUNT_OFFSET + 2].copy_from_slice(&count.to_le_bytes());
    page[PREFIX_LEN_OFFSET..PREFIX_LEN_OFFSET + 2].copy_from_slice(&prefix_len.to_le_bytes());
    let crc = page_crc(page, id);
    page[CRC_OFFSET..CRC_OFFSET + 8].copy_from_slice(&crc.to_le_bytes());
}

fn page_crc(page: &[u8], id: PageId) -> u64 {
    crc64(&[&id.0.to_le_bytes(), &page[PAGE_TYPE_OFFSET..PAGE_SIZE]])
}

/// The checked header of a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PageHeader {
    pub page_type: PageType,
    pub count: usize,
    pub prefix_len: usize,
}

/// Checks the checksum (when `verify`) and decodes the header. Errors say what
/// is wrong; the caller adds file and page.
pub(crate) fn read_header(page: &[u8], id: PageId, verify: bool) -> Result<PageHeader, String> {
    if page.len() != PAGE_SIZE {
        return Err(format!(
            "page is {} bytes, expected {PAGE_SIZE}",
            page.len()
        ));
    }
    if verify && read_u64(page, CRC_OFFSET) != page_crc(page, id) {
        return Err("page checksum mismatch".to_string());
    }
    let page_type = PageType::from_byte(page[PAGE_TYPE_OFFSET])
        .ok_or_else(|| format!("unknown page type {}", page[PAGE_TYPE_OFFSET]))?;
    Ok(PageHeader {
        page_type,
        count: usize::from(read_u16(page, COUNT_OFFSET)),
        prefix_len: usize::from(read_u16(page, PREFIX_LEN_OFFSET)),
    })
}

pub(crate) const META_MAGIC: [u8; 8] = *b"MEGAIDX\0";
pub(crate) const INDEX_FORMAT_VERSION: u32 = 1;

const MAGIC_OFFSET: usize = PAGE_HEADER_LEN;
const VERSION_OFFSET: usize = MAGIC_OFFSET + META_MAGIC.len();
const PAGE_SIZE_OFFSET: usize = VERSION_OFFSET + size_of::<u32>();
const KIND_OFFSET: usize = PAGE_SIZE_OFFSET + size_of::<u32>();
const FLAGS_OFFSET: usize = KIND_OFFSET + size_of::<u8>();
const WIDTH_OFFSET: usize = FLAGS_OFFSET + size_of::<u8>();
/// Meta flag: the tree may hold entries of records after its checkpoint LSN.
const FLAG_PAST_FLOOR: u8 = 1;
const GENERATION_OFFSET: usize = WIDTH_OFFSET + size_of::<u16>() + 4;
const ROOT_OFFSET: usize = GENERATION_OFFSET + size_of::<u64>();
const ENTRY_COUNT_OFFSET: usize = ROOT_OFFSET + size_of::<u64>();
const PAGE_COUNT_OFFSET: usize = ENTRY_COUNT_OFFSET + size_of::<u64>();
const CHECKPOINT_LSN_OFFSET: usize = PAGE_COUNT_OFFSET + size_of::<u64>();
const CHECKPOINT_SEGMENT_OFFSET: usize = CHECKPOINT_LSN_OFFSET + size_of::<u64>();
const CHECKPOINT_OFFSET_OFFSET: usize = CHECKPOINT_SEGMENT_OFFSET + size_of::<u32>();
const FREE_HEAD_OFFSET: usize = CHECKPOINT_OFFSET_OFFSET + size_of::<u32>();
const FREE_COUNT_OFFSET: usize = FREE_HEAD_OFFSET + size_of::<u64>();

/// What a meta page records: the durable state of one index file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    pub index_kind: u8,
    pub entry_width: u16,
    pub generation: u64,
    pub root: Option<PageId>,
    pub entry_count: u64,
    /// Pages the file holds as far as this meta is concerned (meta pages included).
    pub page_count: u64,
    /// The index holds the effect of every log record up to this LSN.
    pub checkpoint_lsn: Lsn,
    /// Log position just past the record at `checkpoint_lsn`.
    pub checkpoint_position: Location,
    pub free_list_head: Option<PageId>,
    pub free_page_count: u64,
    /// The tree may also hold entries of records after `checkpoint_lsn`: a
    /// merge of the in-memory level was written part-way, at the LSN the
    /// tree already held. Replay then checks each change against the tree
    /// before staging it, so entry counts stay exact.
    pub past_floor: bool,
}

pub(crate) fn encode_meta(meta: &Meta, slot: PageId) -> Vec<u8> {
    let mut page = vec![0u8; PAGE_SIZE];
    page[MAGIC_OFFSET..VERSION_OFFSET].copy_from_slice(&META_MAGIC);
    page[VERSION_OFFSET..PAGE_SIZE_OFFSET].copy_from_slice(&INDEX_FORMAT_VERSION.to_le_bytes());
    page[PAGE_SIZE_OFFSET..KIND_OFFSET].copy_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
    page[KIND_OFFSET] = meta.index_kind;
    page[FLAGS_OFFSET] = if meta.past_floor { FLAG_PAST_FLOOR } else { 0 };
    page[WIDTH_OFFSET..WIDTH_OFFSET + 2].copy_from_slice(&meta.entry_width.to_le_bytes());
    put_u64(&mut page, GENERATION_OFFSET, meta.generation);
    put_u64(&mut page, ROOT_OFFSET, meta.root.map_or(0, |p| p.0));
    put_u64(&mut page, ENTRY_COUNT_OFFSET, meta.entry_count);
    put_u64(&mut page, PAGE_COUNT_OFFSET, meta.page_count);
    put_u64(&mut page, CHECKPOINT_LSN_OFFSET, meta.checkpoint_lsn.0);
    page[CHECKPOINT_SEGMENT_OFFSET..CHECKPOINT_OFFSET_OFFSET]
        .copy_from_slice(&meta.checkpoint_position.segment.0.to_le_bytes());
    page[CHECKPOINT_OFFSET_OFFSET..FREE_HEAD_OFFSET]
        .copy_from_slice(&meta.checkpoint_position.offset.to_le_bytes());
    put_u64(
        &mut page,
        FREE_HEAD_OFFSET,
        meta.free_list_head.map_or(0, |p| p.0),
    );
    put_u64(&mut page, FREE_COUNT_OFFSET, meta.free_page_count);
    seal_page(&mut page, slot, PageType::Meta, 0, 0);
    page
}

/// Decodes a meta page; `Err` when it is not a valid meta page (torn, never
/// written, or from a newer format, which the message says).
pub(crate) fn decode_meta(page: &[u8], slot: PageId) -> Result<Meta, String> {
    let header = read_header(page, slot, true)?;
    if header.page_type != PageType::Meta {
        return Err("not a meta page".to_string());
    }
    if page[MAGIC_OFFSET..VERSION_OFFSET] != META_MAGIC {
        return Err("bad magic bytes: not a Megalith index file".to_string());
    }
    let version = read_u32(page, VERSION_OFFSET);
    if version != INDEX_FORMAT_VERSION {
        return Err(format!(
            "index format version {version} is not supported (this build reads version {INDEX_FORMAT_VERSION})"
        ));
    }
    let page_size = read_u32(page, PAGE_SIZE_OFFSET);
    if page_size as usize != PAGE_SIZE {
        return Err(format!(
            "page size {page_size} is not supported (expected {PAGE_SIZE})"
        ));
    }
    let flags = page[FLAGS_OFFSET];
    if flags & !FLAG_PAST_FLOOR != 0 {
        return Err(format!(
            "meta flags {flags:#04x} hold bits this build does not know"
        ));
    }
    let nonzero = |v: u64| (v != 0).then_some(PageId(v));
    Ok(Meta {
        index_kind: page[KIND_OFFSET],
        entry_width: read_u16(page, WIDTH_OFFSET),
        generation: read_u64(page, GENERATION_OFFSET),
        root: nonzero(read_u64(page, ROOT_OFFSET)),
        entry_count: read_u64(page, ENTRY_COUNT_OFFSET),
        page_count: read_u64(page, PAGE_COUNT_OFFSET),
        checkpoint_lsn: Lsn(read_u64(page, CHECKPOINT_LSN_OFFSET)),
        checkpoint_position: Location {
            segment: SegmentId(read_u32(page, CHECKPOINT_SEGMENT_OFFSET)),
            offset: read_u32(page, CHECKPOINT_OFFSET_OFFSET),
        },
        free_list_head: nonzero(read_u64(page, FREE_HEAD_OFFSET)),
        free_page_count: read_u64(page, FREE_COUNT_OFFSET),
        past_floor: flags & FLAG_PAST_FLOOR != 0,
    })
}

/// Which of the two meta slots holds the durable state: the valid one with
/// the higher generation, slot 0 on a tie. `BTree::open` makes the same
/// choice; the checker calls this so the two cannot drift apart unnoticed
/// (a test in `check.rs` compares them).
pub(crate) fn choose_meta(slots: [Option<Meta>; 2]) -> Option<(usize, Meta)> {
    match slots {
        [Some(a), Some(b)] if a.generation >= b.generation => Some((0, a)),
        [Some(_), Some(b)] => Some((1, b)),
        [Some(a), None] => Some((0, a)),
        [None, Some(b)] => Some((1, b)),
        [None, None] => None,
    }
}

const FREE_NEXT_OFFSET: usize = PAGE_HEADER_LEN;
const FREE_IDS_OFFSET: usize = FREE_NEXT_OFFSET + size_of::<u64>();
/// Page ids one free-list page holds.
pub(crate) const FREE_IDS_PER_PAGE: usize = (PAGE_SIZE - FREE_IDS_OFFSET) / size_of::<u64>();

pub(crate) fn encode_free_list_page(id: PageId, next: Option<PageId>, ids: &[PageId]) -> Vec<u8> {
    debug_assert!(ids.len() <= FREE_IDS_PER_PAGE);
    let mut page = vec![0u8; PAGE_SIZE];
    put_u64(&mut page, FREE_NEXT_OFFSET, next.map_or(0, |p| p.0));
    for (i, pid) in ids.iter().enumerate() {
        put_u64(&mut page, FREE_IDS_OFFSET + i * 8, pid.0);
    }
    seal_page(&mut page, id, PageType::FreeList, ids.len() as u16, 0);
    page
}

/// Decodes a free-list page into its ids and the next page of the chain.
pub(crate) fn decode_free_list_page(
    page: &[u8],
    id: PageId,
) -> Result<(Vec<PageId>, Option<PageId>), String> {
    let header = read_header(page, id, true)?;
    if header.page_type != PageType::FreeList {
        return Err(format!(
            "expected a free-list page, found {:?}",
            header.page_type
        ));
    }
    if header.count > FREE_IDS_PER_PAGE {
        return Err(format!(
            "free-list page claims {} ids, at most {FREE_IDS_PER_PAGE} fit",
            header.count
        ));
    }
    let ids = (0..header.count)
        .map(|i| PageId(read_u64(page, FREE_IDS_OFFSET + i * 8)))
        .collect();
    let next = read_u64(page, FREE_NEXT_OFFSET);
    Ok((ids, (next != 0).then_some(PageId(next))))
}

fn put_u64(page: &mut [u8], at: usize, value: u64) {
    page[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

pub(crate) fn read_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

pub(crate) fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut buf = [0u8; 4];
    buf.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(buf)
}

pub(crate) fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut buf = [0u8; 8];
    buf.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_meta() -> Meta {
        Meta {
            index_kind: 3,
            entry_width: 58,
            generation: 7,
            root: Some(PageId(12)),
            entry_count: 1000,
            page_count: 40,
            checkpoint_lsn: Lsn(99),
            checkpoint_position: Location {
                segment: SegmentId(2),
                offset: 4096,
            },
            free_list_head: Some(PageId(39)),
            free_page_count: 5,
            past_floor: true,
        }
    }

    #[test]
    fn meta_round_trips_and_every_flip_is_caught() {
        let meta = sample_meta();
        let page = encode_meta(&meta, PageId(1));
        assert_eq!(decode_meta(&page, PageId(1)).unwrap(), meta);
        assert!(
            decode_meta(&page, PageId(0)).is_err(),
            "page id is mixed into the checksum"
        );
        for at in 0..PAGE_SIZE {
            let mut bad = page.clone();
            bad[at] ^= 0x01;
            assert!(
                decode_meta(&bad, PageId(1)).is_err(),
                "flip at {at} went unnoticed"
            );
        }
        let clear = Meta {
            past_floor: false,
            ..meta
        };
        let page = encode_meta(&clear, PageId(1));
        assert_eq!(decode_meta(&page, PageId(1)).unwrap(), clear);
        // A flag bit this build does not know, under a valid checksum.
        let mut unknown = page.clone();
        unknown[FLAGS_OFFSET] = 0x02;
        seal_page(&mut unknown, PageId(1), PageType::Meta, 0, 0);
        let error = decode_meta(&unknown, PageId(1)).unwrap_err();
        assert!(error.contains("flags"), "{error}");
    }

    #[test]
    fn free_list_page_round_trips() {
        let ids: Vec<PageId> = (10..10 + FREE_IDS_PER_PAGE as u64).map(PageId).collect();
        let page = encode_free_list_page(PageId(5), Some(PageId(6)), &ids);
        assert_eq!(
            decode_free_list_page(&page, PageId(5)).unwrap(),
            (ids, Some(PageId(6)))
        );
        let mut bad = page.clone();
        bad[100] ^= 0xFF;
        assert!(decode_free_list_page(&bad, PageId(5)).is_err());
    }
}
