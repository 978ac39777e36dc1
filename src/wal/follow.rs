//! Reading a shard's log from another process, beside its writer or with
//! none: a [`LogFollower`] maps the segments read-only, writes nothing and
//! takes no lock of its own (the caller decides which of the two cases
//! holds, see `ChangeReader`).
//!
//! - **Beside a running writer** it reads up to the writer's synced mark
//!   (`synced.rs`) and never past it: every batch before the mark is whole
//!   and durable, and no cut of the log (a reopen after a failure, the next
//!   open's recovery) reaches below it, so the mapped bytes read are never
//!   truncated underneath.
//! - **With no writer** (the caller holds the store's lock shared, so none
//!   can start) it finds the end as an open would (`find_end`): whole
//!   batches only, a torn tail left for the next open to cut, damage an
//!   error.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::WalError;
use super::format::SEGMENT_HEADER_LEN;
use super::log::{LogSnapshot, find_end, list_segment_ids, never_written};
use super::segment::{Segment, segment_file_name};
use super::synced;
use crate::ids::{Location, Lsn, SegmentId, ShardId};
use crate::storage::Storage;

/// What a follower can read of its log now.
pub(crate) enum LogView {
    /// The segments, and where reading stops (a whole-batch boundary).
    Readable {
        snapshot: LogSnapshot,
        end: Location,
    },
    /// A writer runs but has published no synced mark: it is still opening
    /// the store, or a repair is changing segments, or it is a build
    /// without marks. Nothing can be read safely yet.
    NoMark,
}

/// One shard's log, followed from outside its writer.
#[derive(Debug)]
pub(crate) struct LogFollower {
    dir: PathBuf,
    shard: ShardId,
    /// Sealed segments mapped by an earlier call (they never change while
    /// mapped: the log only appends, and a repair runs with no reader
    /// beside it trusting a mark).
    sealed: Vec<Arc<Segment>>,
    /// Where `find_end` stopped last time, with no writer: the next search
    /// starts there.
    hint: Option<(Location, Lsn)>,
}

impl LogFollower {
    pub fn new(dir: &Path, shard: ShardId) -> LogFollower {
        LogFollower {
            dir: dir.to_path_buf(),
            shard,
            sealed: Vec::new(),
            hint: None,
        }
    }

    /// The log as it can be read now; `live`: a writer runs beside.
    pub fn view(&mut self, storage: &dyn Storage, live: bool) -> Result<LogView, WalError> {
        let mark = if live {
            match synced::read(storage, &self.dir).map_err(|source| WalError::Io {
                path: self.dir.join(synced::SYNCED_FILE),
                op: "read",
                source,
            })? {
                Some((end, _)) => Some(end),
                None => return Ok(LogView::NoMark),
            }
        } else {
            None
        };
        let mut ids = list_segment_ids(storage, &self.dir)?;
        match mark {
            Some(end) => ids.retain(|&id| id <= end.segment),
            None => {
                // A segment whose creation a crash cut short: the next open
                // removes it (or refuses the store), and it holds nothing.
                if let Some(&last) = ids.last()
                    && never_written(storage, &self.dir.join(segment_file_name(last)))?
                {
                    ids.pop();
                }
            }
        }
        if let Some(end) = mark
            && ids.last() != Some(&end.segment)
        {
            return Err(WalError::Corrupt {
                path: self.dir.join(segment_file_name(end.segment)),
                offset: 0,
                reason: format!(
                    "the writer's synced mark names segment {}, which the log does not have",
                    end.segment
                ),
            });
        }
        let Some(&last) = ids.last() else {
            return Ok(LogView::Readable {
                snapshot: LogSnapshot::of_segments(Vec::new()),
                end: Location {
                    segment: SegmentId(1),
                    offset: SEGMENT_HEADER_LEN as u32,
                },
            });
        };
        // The sealed segments already mapped stay; the last one is mapped
        // again each time (it grows, and a clean close cuts its map short).
        self.sealed
            .retain(|s| ids.contains(&s.id()) && s.id() < last);
        let mut segments = Vec::with_capacity(ids.len());
        for &id in &ids {
            let segment = match self.sealed.iter().find(|s| s.id() == id) {
                Some(segment) => Arc::clone(segment),
                None => {
                    let path = self.dir.join(segment_file_name(id));
                    let segment = Arc::new(Segment::open(storage, &path, self.shard, id)?);
                    if id < last {
                        self.sealed.push(Arc::clone(&segment));
                    }
                    segment
                }
            };
            segments.push(segment);
        }
        let end = match mark {
            Some(end) => {
                let active = &segments[segments.len() - 1];
                // A packed segment (compaction packed it after the mark
                // was read) is read whole: `set_readable` leaves it alone.
                if active.logical_end() < end.offset as usize {
                    return Err(WalError::Corrupt {
                        path: active.path().to_path_buf(),
                        offset: active.logical_end() as u64,
                        reason: format!(
                            "the writer's synced mark says the log reaches offset {}, past \
                             the file's data",
                            end.offset
                        ),
                    });
                }
                active.set_readable(end.offset as usize);
                end
            }
            None => {
                let hint = self.hint.filter(|(at, _)| at.segment == last);
                let (end, _tail) = find_end(&segments, hint)?;
                // A torn tail past the end stays unread (the next open cuts it).
                segments[segments.len() - 1].set_readable(end.offset as usize);
                let at = Location {
                    segment: end.segment,
                    offset: end.offset,
                };
                self.hint = Some((at, end.last_lsn));
                at
            }
        };
        Ok(LogView::Readable {
            snapshot: LogSnapshot::of_segments(segments),
            end,
        })
    }
}
