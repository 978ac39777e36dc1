//! The write-ahead log, which is also the event store: per shard, an
//! append-only sequence of segment files holding framed, checksummed records.

mod error;
mod format;
mod log;
mod segment;

pub use error::WalError;
pub use format::{FrameError, RecordRef, RecordType, RemovePayload, RemoveReason};
pub(crate) use format::{SEGMENT_HEADER_LEN, decode_frame, decode_segment_header};
pub(crate) use log::{Batch, BatchFull, Log, LogSnapshot, LogWriter};
pub(crate) use segment::Segment;
pub(crate) use segment::parse_segment_file_name;
