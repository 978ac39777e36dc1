//! The analytics checkpoint file (`DIR/analytics/state`, docs/format.md):
//! the state the lists are derived from, and the log position of every
//! shard it reflects. Written whole to a temporary file, synced, renamed.
//!
//! ```text
//! magic "MGANALY1" · version u32 (2) · shards u32 · (segment u32, offset u32) per shard
//! versions:  u64 n · n × (id[32], key)
//! videos:    u64 n · n × (key, u32 len, payload)
//! acts:      u64 n · n × (class u8, actor[32], key, u32 m, m × (created_at u64, id[32], down u8))
//! counts:    u64 n · n × (key, reactions, downvotes, comments, legacy, reposts: u64 each)
//! active:    u64 n · n × (day u32, author[32], events u32)
//! expiring:  u64 n · n × (expires_at u64, id[32], 0 · u32 len · payload | 1 · author[32] · created_at u64)
//! crc64 of everything before it (u64)
//! key: 0 · kind u16 · pubkey[32] · u32 len · d   |   1 · id[32]
//! ```
//! Integers are little-endian; payloads are events in the store's binary
//! encoding (docs/format.md).

use std::cmp::Reverse;

use super::live::{Class, Expiring, LiveAnalytics};
use super::video::{Figures, VideoKey};
use crate::event::{Event, EventId, EventRef, Pubkey};
use crate::ids::{Location, SegmentId};

const MAGIC: &[u8; 8] = b"MGANALY1";
const VERSION: u32 = 2;

/// The state and the positions it reflects, encoded.
pub(crate) fn encode(live: &LiveAnalytics, positions: &[Location]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 << 16);
    out.extend_from_slice(MAGIC);
    put_u32(&mut out, VERSION);
    put_u32(&mut out, positions.len() as u32);
    for p in positions {
        put_u32(&mut out, p.segment.0);
        put_u32(&mut out, p.offset);
    }
    put_u64(&mut out, live.versions.len() as u64);
    for (id, key) in &live.versions {
        out.extend_from_slice(&id.0);
        put_key(&mut out, key);
    }
    put_u64(&mut out, live.videos.len() as u64);
    for (key, event) in &live.videos {
        put_key(&mut out, key);
        put_event(&mut out, event);
    }
    put_u64(&mut out, live.acts.len() as u64);
    for ((class, actor, key), acts) in &live.acts {
        out.push(match class {
            Class::Reaction => 0,
            Class::Repost => 1,
        });
        out.extend_from_slice(&actor.0);
        put_key(&mut out, key);
        put_u32(&mut out, acts.len() as u32);
        for ((created_at, Reverse(id)), down) in acts {
            put_u64(&mut out, *created_at);
            out.extend_from_slice(&id.0);
            out.push(u8::from(*down));
        }
    }
    put_u64(&mut out, live.counts.len() as u64);
    for (key, f) in &live.counts {
        put_key(&mut out, key);
        for n in [
            f.reactions,
            f.downvotes,
            f.comments,
            f.legacy_comments,
            f.reposts,
        ] {
            put_u64(&mut out, n);
        }
    }
    let active: Vec<_> = live.active.entries().collect();
    put_u64(&mut out, active.len() as u64);
    for (day, author, events) in active {
        put_u32(&mut out, day);
        out.extend_from_slice(&author.0);
        put_u32(&mut out, events);
    }
    put_u64(&mut out, live.expiring.len() as u64);
    for ((at, id), kept) in &live.expiring {
        put_u64(&mut out, *at);
        out.extend_from_slice(&id.0);
        match kept {
            Expiring::Event(event) => {
                out.push(0);
                put_event(&mut out, event);
            }
            Expiring::Activity(author, created_at) => {
                out.push(1);
                out.extend_from_slice(&author.0);
                put_u64(&mut out, *created_at);
            }
        }
    }
    let crc = crate::ids::crc64(&[&out]);
    put_u64(&mut out, crc);
    out
}

/// Decodes [`encode`]'s bytes for a store of `shards` shards; the error
/// says what is wrong.
pub(crate) fn decode(
    bytes: &[u8],
    shards: usize,
) -> Result<(LiveAnalytics, Vec<Location>), String> {
    if bytes.len() < 8 + 8 + 8 || &bytes[..8] != MAGIC {
        return Err("not a Megalith analytics checkpoint".to_string());
    }
    let (body, crc) = bytes.split_at(bytes.len() - 8);
    if crate::ids::crc64(&[body]) != u64::from_le_bytes(crc.try_into().expect("8 bytes")) {
        return Err("checksum mismatch".to_string());
    }
    let mut r = Reader { bytes: body, at: 8 };
    let version = r.u32()?;
    if version != VERSION {
        return Err(format!("version {version}, this build reads {VERSION}"));
    }
    let count = r.u32()? as usize;
    if count != shards {
        return Err(format!(
            "written for {count} shards, the store has {shards}"
        ));
    }
    let mut positions = Vec::with_capacity(count);
    for _ in 0..count {
        positions.push(Location {
            segment: SegmentId(r.u32()?),
            offset: r.u32()?,
        });
    }
    let mut live = LiveAnalytics::new();
    for _ in 0..r.count()? {
        let id = EventId(r.array()?);
        let key = r.key()?;
        live.versions.insert(id, key);
    }
    for _ in 0..r.count()? {
        let key = r.key()?;
        let event = r.event()?;
        live.videos.insert(key, event);
    }
    for _ in 0..r.count()? {
        let class = match r.u8()? {
            0 => Class::Reaction,
            1 => Class::Repost,
            other => return Err(format!("unknown act class {other}")),
        };
        let actor = Pubkey(r.array()?);
        let key = r.key()?;
        let acts = live.acts.entry((class, actor, key)).or_default();
        for _ in 0..r.u32()? {
            let created_at = r.u64()?;
            let id = EventId(r.array()?);
            let down = r.u8()? != 0;
            acts.insert((created_at, Reverse(id)), down);
        }
    }
    for _ in 0..r.count()? {
        let key = r.key()?;
        let f = Figures {
            reactions: r.u64()?,
            downvotes: r.u64()?,
            comments: r.u64()?,
            legacy_comments: r.u64()?,
            reposts: r.u64()?,
        };
        live.counts.insert(key, f);
    }
    for _ in 0..r.count()? {
        let day = r.u32()?;
        let author = Pubkey(r.array()?);
        let events = r.u32()?;
        live.active.restore(day, author, events);
    }
    for _ in 0..r.count()? {
        let at = r.u64()?;
        let id = EventId(r.array()?);
        let kept = match r.u8()? {
            0 => Expiring::Event(r.event()?),
            1 => Expiring::Activity(Pubkey(r.array()?), r.u64()?),
            other => return Err(format!("unknown expiring entry type {other}")),
        };
        live.expiring.insert((at, id), kept);
    }
    if r.at != body.len() {
        return Err(format!(
            "{} bytes after the last section",
            body.len() - r.at
        ));
    }
    live.derive();
    Ok((live, positions))
}

fn put_u32(out: &mut Vec<u8>, n: u32) {
    out.extend_from_slice(&n.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(&n.to_le_bytes());
}

fn put_key(out: &mut Vec<u8>, key: &VideoKey) {
    match key {
        VideoKey::Address { kind, pubkey, d } => {
            out.push(0);
            out.extend_from_slice(&kind.to_le_bytes());
            out.extend_from_slice(&pubkey.0);
            put_u32(out, d.len() as u32);
            out.extend_from_slice(d.as_bytes());
        }
        VideoKey::Id(id) => {
            out.push(1);
            out.extend_from_slice(&id.0);
        }
    }
}

fn put_event(out: &mut Vec<u8>, event: &Event) {
    let mut payload = Vec::new();
    // Events in the analytics were stored, so they encode.
    if event.encode_payload(&mut payload).is_ok() {
        put_u32(out, payload.len() as u32);
        out.extend_from_slice(&payload);
    } else {
        put_u32(out, 0);
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len());
        let Some(end) = end else {
            return Err(format!("truncated at byte {}", self.at));
        };
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A section's entry count, bounded by the bytes left (every entry
    /// takes at least one), so a bad count cannot ask for a huge loop.
    fn count(&mut self) -> Result<u64, String> {
        let n = self.u64()?;
        if n > (self.bytes.len() - self.at) as u64 {
            return Err(format!("a count of {n} entries at byte {}", self.at - 8));
        }
        Ok(n)
    }

    fn key(&mut self) -> Result<VideoKey, String> {
        match self.u8()? {
            0 => {
                let kind = u16::from_le_bytes(self.array()?);
                let pubkey = Pubkey(self.array()?);
                let len = self.u32()? as usize;
                let d = std::str::from_utf8(self.take(len)?)
                    .map_err(|_| "a d tag that is not UTF-8".to_string())?
                    .to_string();
                Ok(VideoKey::Address { kind, pubkey, d })
            }
            1 => Ok(VideoKey::Id(EventId(self.array()?))),
            other => Err(format!("unknown key type {other}")),
        }
    }

    fn event(&mut self) -> Result<Event, String> {
        let len = self.u32()? as usize;
        let payload = self.take(len)?;
        EventRef::parse(payload)
            .map(|e| e.to_event())
            .map_err(|e| format!("an event that does not parse: {e}"))
    }
}
