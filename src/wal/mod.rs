//! The write-ahead log, which is also the event store: per shard, an
//! append-only sequence of segment files holding framed, checksummed records.

mod changes;
mod damage;
mod error;
mod follow;
mod format;
mod log;
mod packed;
mod repair;
mod segment;
mod synced;

pub(crate) use changes::scan_changes;
pub(crate) use damage::examine_after;
pub use error::WalError;
pub(crate) use follow::{LogFollower, LogView};
pub(crate) use format::SEGMENT_HEADER_LEN;
pub use format::{
    CompactedPayload, FrameError, FrameHeader, QuarantinePayload, RecordRef, RecordType,
    RemovePayload, RemoveReason, SegmentHeader,
};
pub(crate) use format::{
    FRAME_HEADER_LEN, FRAME_OVERHEAD, decode_frame, decode_segment_header, encode_frame,
    encode_packed_segment_header, encode_segment_header, peek_frame_header, unchecked_segment_id,
};
pub use log::LogDamage;
pub(crate) use log::{Batch, BatchFull, COMPACTING_SUFFIX, Log, LogSnapshot, LogWriter};
pub(crate) use packed::{COMPACTED_FRAME_LEN, PackTable};
pub(crate) use repair::{
    DamagedRange, REPAIR_MARKER, lost_lsns, quarantine, quarantine_path, scan_log,
};
pub(crate) use segment::{Segment, covers_runs, logical_extra};
pub(crate) use segment::{parse_segment_file_name, segment_file_name};
pub(crate) use synced::read_synced_mark;
