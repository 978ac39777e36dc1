//! The store manifest (`MANIFEST`): what kind of store a directory holds.
//!
//! ```text
//!  0  magic           [u8; 8]  b"MEGALITH"
//!  8  format_version  u32 LE   3 (version 1: 24 bytes, no features field;
//!                               version 2: kind_time and time entries
//!                               without the author hash, rebuilt from the
//!                               log when a version 3 build opens it)
//! 12  shard_count     u32 LE
//! 16  features        u32 LE   bit 0: the term_time (search) index;
//!                               bit 1: analytics (DIR/analytics);
//!                               bit 2: the logs may hold compacted
//!                               records (set before the first is
//!                               written; builds without compaction
//!                               refuse the store);
//!                               bit 3: the logs may hold remove records
//!                               of reason 3, purged (set before the
//!                               first is written; builds without
//!                               `EventStore::purge` refuse the store);
//!                               bit 4: the logs may hold packed segments
//!                               (set before the first is written)
//! 20  reserved        u32      0
//! 24  crc             u64 LE   crc64 of bytes 0..24
//! ```

use std::path::Path;

use crate::error::{Error, io_error};
use crate::ids::crc64;
use crate::storage::{OpenMode, Storage};

const MAGIC: [u8; 8] = *b"MEGALITH";
pub(crate) const STORE_FORMAT_VERSION: u32 = 3;
const VERSION_OFFSET: usize = MAGIC.len();
const SHARDS_OFFSET: usize = VERSION_OFFSET + size_of::<u32>();
const FEATURES_OFFSET: usize = SHARDS_OFFSET + size_of::<u32>();
const CRC_OFFSET: usize = FEATURES_OFFSET + 2 * size_of::<u32>();
const MANIFEST_LEN: usize = CRC_OFFSET + size_of::<u64>();
/// A version 1 manifest: magic, version, shard count, crc of bytes 0..16.
const V1_CRC_OFFSET: usize = FEATURES_OFFSET;
const V1_LEN: usize = V1_CRC_OFFSET + size_of::<u64>();

/// Feature bit: the store keeps the term_time (NIP-50 search) index.
const FEATURE_SEARCH: u32 = 1;
/// Feature bit: the store keeps the analytics (docs/analytics.md).
const FEATURE_ANALYTICS: u32 = 2;
/// Feature bit: the logs may hold `Compacted` records (record type 4).
const FEATURE_COMPACTED: u32 = 4;
/// Feature bit: the logs may hold remove records of reason `Purged`.
const FEATURE_PURGED: u32 = 8;
/// Feature bit: the logs may hold packed segments (written by compaction).
const FEATURE_PACKED: u32 = 16;

pub(crate) const MANIFEST_FILE: &str = "MANIFEST";

/// What the manifest says about a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Manifest {
    /// The store format the manifest was written with (an older one is
    /// migrated at open; [`encode`] always writes the current one).
    pub version: u32,
    pub shards: u32,
    /// The term_time (search) index is kept.
    pub search: bool,
    /// The analytics are kept.
    pub analytics: bool,
    /// The logs may hold compacted records.
    pub compacted: bool,
    /// The logs may hold remove records of reason `Purged`.
    pub purged: bool,
    /// The logs may hold packed segments.
    pub packed: bool,
}

/// Reads the manifest of the store in `dir`.
pub(crate) fn load(storage: &dyn Storage, dir: &Path) -> Result<Manifest, Error> {
    let path = dir.join(MANIFEST_FILE);
    let bytes = storage.read_file(&path).map_err(|e| Error::Io {
        path: path.clone(),
        op: "read",
        source: e,
    })?;
    decode(&bytes).map_err(|reason| Error::Format { path, reason })
}

/// For tools that read a store's files without opening it: the manifest's
/// bytes as they are (a copy keeps an older format's for the open that
/// migrates it) and what they say; a directory without one is "not a
/// Megalith store".
pub(crate) fn read_existing(dir: &Path) -> Result<(Vec<u8>, Manifest), Error> {
    let path = dir.join(MANIFEST_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::Format {
                path: dir.to_path_buf(),
                reason: "not a Megalith store (no MANIFEST in it)".to_string(),
            });
        }
        Err(e) => return Err(io_error(&path, "read")(e)),
    };
    let manifest = decode(&bytes).map_err(|reason| Error::Format { path, reason })?;
    Ok((bytes, manifest))
}

/// Replaces the manifest (written aside, synced, renamed, directory synced:
/// a crash leaves the old one or the new one).
pub(crate) fn store(storage: &dyn Storage, dir: &Path, manifest: Manifest) -> Result<(), Error> {
    let path = dir.join(MANIFEST_FILE);
    let tmp = dir.join("MANIFEST.tmp");
    let file = storage
        .open(&tmp, OpenMode::ReadWriteCreate)
        .map_err(io_error(&tmp, "create"))?;
    file.set_len(0)
        .and_then(|()| file.write_all_at(&encode(manifest), 0))
        .and_then(|()| file.sync())
        .map_err(io_error(&tmp, "write"))?;
    storage
        .rename(&tmp, &path)
        .map_err(io_error(&path, "rename"))?;
    storage
        .sync_dir(dir)
        .map_err(io_error(dir, "sync directory"))
}

/// Reads the manifest, or writes `new` for a new store.
pub(crate) fn load_or_create(
    storage: &dyn Storage,
    dir: &Path,
    new: Manifest,
) -> Result<Manifest, Error> {
    let path = dir.join(MANIFEST_FILE);
    match storage.read_file(&path) {
        Ok(bytes) => decode(&bytes).map_err(|reason| Error::Format { path, reason }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Shard directories without a manifest: something removed it.
            let stray = std::fs::read_dir(dir)
                .map_err(io_error(dir, "list"))?
                .filter_map(Result::ok)
                .find(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| n.starts_with("shard-"))
                });
            if let Some(stray) = stray {
                return Err(Error::Format {
                    path,
                    reason: format!(
                        "missing, though {} exists: refusing to guess",
                        stray.path().display()
                    ),
                });
            }
            // A crash leaves either no manifest or a whole one.
            store(storage, dir, new)?;
            Ok(new)
        }
        Err(e) => Err(Error::Io {
            path,
            op: "read",
            source: e,
        }),
    }
}

/// Writes `manifest` as a build of store format `version` would have (for
/// the migration tests).
#[cfg(test)]
pub(crate) fn store_as_version(
    storage: &dyn Storage,
    dir: &Path,
    manifest: Manifest,
    version: u32,
) {
    let mut bytes = encode(manifest);
    bytes[VERSION_OFFSET..SHARDS_OFFSET].copy_from_slice(&version.to_le_bytes());
    let crc = crc64(&[&bytes[..CRC_OFFSET]]);
    bytes[CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
    let path = dir.join(MANIFEST_FILE);
    let file = storage.open(&path, OpenMode::ReadWriteCreate).unwrap();
    file.set_len(0).unwrap();
    file.write_all_at(&bytes, 0).unwrap();
    file.sync().unwrap();
}

fn encode(manifest: Manifest) -> [u8; MANIFEST_LEN] {
    let mut out = [0u8; MANIFEST_LEN];
    out[..VERSION_OFFSET].copy_from_slice(&MAGIC);
    out[VERSION_OFFSET..SHARDS_OFFSET].copy_from_slice(&STORE_FORMAT_VERSION.to_le_bytes());
    out[SHARDS_OFFSET..FEATURES_OFFSET].copy_from_slice(&manifest.shards.to_le_bytes());
    let features = if manifest.search { FEATURE_SEARCH } else { 0 }
        | if manifest.analytics {
            FEATURE_ANALYTICS
        } else {
            0
        }
        | if manifest.compacted {
            FEATURE_COMPACTED
        } else {
            0
        }
        | if manifest.purged { FEATURE_PURGED } else { 0 }
        | if manifest.packed { FEATURE_PACKED } else { 0 };
    out[FEATURES_OFFSET..FEATURES_OFFSET + 4].copy_from_slice(&features.to_le_bytes());
    let crc = crc64(&[&out[..CRC_OFFSET]]);
    out[CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
    out
}

fn decode(bytes: &[u8]) -> Result<Manifest, String> {
    if bytes.len() < V1_LEN || bytes[..VERSION_OFFSET] != MAGIC {
        return Err("not a Megalith store manifest".to_string());
    }
    let u32_at =
        |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let version = u32_at(VERSION_OFFSET);
    let (len, crc_offset) = match version {
        1 => (V1_LEN, V1_CRC_OFFSET),
        _ => (MANIFEST_LEN, CRC_OFFSET),
    };
    if bytes.len() != len {
        return Err(format!(
            "manifest is {} bytes, not the {len} of version {version}",
            bytes.len()
        ));
    }
    let mut crc = [0u8; 8];
    crc.copy_from_slice(&bytes[crc_offset..]);
    if crc64(&[&bytes[..crc_offset]]) != u64::from_le_bytes(crc) {
        return Err("manifest checksum mismatch".to_string());
    }
    if version > STORE_FORMAT_VERSION || version == 0 {
        return Err(format!(
            "store format version {version} is not supported (this build reads versions 1 to {STORE_FORMAT_VERSION}): \
             a newer build of megalith wrote it; open it with that build or a later one"
        ));
    }
    let shards = u32_at(SHARDS_OFFSET);
    if shards == 0 {
        return Err("manifest says the store has no shards".to_string());
    }
    let features = if version == 1 {
        0
    } else {
        u32_at(FEATURES_OFFSET)
    };
    if features
        & !(FEATURE_SEARCH
            | FEATURE_ANALYTICS
            | FEATURE_COMPACTED
            | FEATURE_PURGED
            | FEATURE_PACKED)
        != 0
    {
        return Err(format!(
            "manifest names features {features:#x} this build does not know"
        ));
    }
    Ok(Manifest {
        version,
        shards,
        search: features & FEATURE_SEARCH != 0,
        analytics: features & FEATURE_ANALYTICS != 0,
        compacted: features & FEATURE_COMPACTED != 0,
        purged: features & FEATURE_PURGED != 0,
        packed: features & FEATURE_PACKED != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_damage_and_newer_versions() {
        for manifest in [
            Manifest {
                version: STORE_FORMAT_VERSION,
                shards: 4,
                search: false,
                analytics: false,
                compacted: false,
                purged: false,
                packed: false,
            },
            Manifest {
                version: STORE_FORMAT_VERSION,
                shards: 1,
                search: true,
                analytics: false,
                compacted: false,
                purged: false,
                packed: false,
            },
            Manifest {
                version: STORE_FORMAT_VERSION,
                shards: 2,
                search: false,
                analytics: true,
                compacted: false,
                purged: false,
                packed: false,
            },
            Manifest {
                version: STORE_FORMAT_VERSION,
                shards: 3,
                search: true,
                analytics: false,
                compacted: true,
                purged: true,
                packed: true,
            },
        ] {
            assert_eq!(decode(&encode(manifest)), Ok(manifest));
            for at in 0..MANIFEST_LEN {
                let mut bad = encode(manifest);
                bad[at] ^= 1;
                assert!(decode(&bad).is_err(), "flipped byte {at}");
            }
        }
        let resealed = |mut bytes: [u8; MANIFEST_LEN]| {
            let crc = crc64(&[&bytes[..CRC_OFFSET]]);
            bytes[CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
            bytes
        };
        let plain = Manifest {
            version: STORE_FORMAT_VERSION,
            shards: 1,
            search: false,
            analytics: false,
            compacted: false,
            purged: false,
            packed: false,
        };
        let mut newer = encode(plain);
        newer[VERSION_OFFSET] = 4;
        assert!(
            decode(&resealed(newer))
                .unwrap_err()
                .contains("version 4 is not supported")
        );
        let mut older = encode(plain);
        older[VERSION_OFFSET] = 2;
        assert_eq!(
            decode(&resealed(older)),
            Ok(Manifest {
                version: 2,
                ..plain
            })
        );
        let mut unknown = encode(plain);
        unknown[FEATURES_OFFSET] = 0b10_0000;
        assert!(decode(&resealed(unknown)).unwrap_err().contains("features"));
    }

    #[test]
    fn version_1_manifests_still_open_without_features() {
        let mut v1 = [0u8; V1_LEN];
        v1[..VERSION_OFFSET].copy_from_slice(&MAGIC);
        v1[VERSION_OFFSET..SHARDS_OFFSET].copy_from_slice(&1u32.to_le_bytes());
        v1[SHARDS_OFFSET..V1_CRC_OFFSET].copy_from_slice(&3u32.to_le_bytes());
        let crc = crc64(&[&v1[..V1_CRC_OFFSET]]);
        v1[V1_CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            decode(&v1),
            Ok(Manifest {
                version: 1,
                shards: 3,
                search: false,
                analytics: false,
                compacted: false,
                purged: false,
                packed: false,
            })
        );
    }
}
