//! The store manifest (`MANIFEST`): what kind of store a directory holds.
//!
//! ```text
//!  0  magic           [u8; 8]  b"MEGALITH"
//!  8  format_version  u32 LE
//! 12  shard_count     u32 LE
//! 16  crc             u64 LE   crc64 of bytes 0..16
//! ```

use std::path::Path;

use crate::error::{Error, io_error};
use crate::ids::crc64;
use crate::storage::{OpenMode, Storage};

const MAGIC: [u8; 8] = *b"MEGALITH";
pub(crate) const STORE_FORMAT_VERSION: u32 = 1;
const VERSION_OFFSET: usize = MAGIC.len();
const SHARDS_OFFSET: usize = VERSION_OFFSET + size_of::<u32>();
const CRC_OFFSET: usize = SHARDS_OFFSET + size_of::<u32>();
const MANIFEST_LEN: usize = CRC_OFFSET + size_of::<u64>();

pub(crate) const MANIFEST_FILE: &str = "MANIFEST";

/// Reads the manifest, or writes one for a new store with `shards` shards.
pub(crate) fn load_or_create(storage: &dyn Storage, dir: &Path, shards: u32) -> Result<u32, Error> {
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
            // Written aside, synced, then renamed into place: a crash leaves
            // either no manifest or a whole one.
            let tmp = dir.join("MANIFEST.tmp");
            let file = storage
                .open(&tmp, OpenMode::ReadWriteCreate)
                .map_err(io_error(&tmp, "create"))?;
            file.set_len(0)
                .and_then(|()| file.write_all_at(&encode(shards), 0))
                .and_then(|()| file.sync())
                .map_err(io_error(&tmp, "write"))?;
            storage
                .rename(&tmp, &path)
                .map_err(io_error(&path, "rename"))?;
            storage
                .sync_dir(dir)
                .map_err(io_error(dir, "sync directory"))?;
            Ok(shards)
        }
        Err(e) => Err(Error::Io {
            path,
            op: "read",
            source: e,
        }),
    }
}

fn encode(shards: u32) -> [u8; MANIFEST_LEN] {
    let mut out = [0u8; MANIFEST_LEN];
    out[..VERSION_OFFSET].copy_from_slice(&MAGIC);
    out[VERSION_OFFSET..SHARDS_OFFSET].copy_from_slice(&STORE_FORMAT_VERSION.to_le_bytes());
    out[SHARDS_OFFSET..CRC_OFFSET].copy_from_slice(&shards.to_le_bytes());
    let crc = crc64(&[&out[..CRC_OFFSET]]);
    out[CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
    out
}

fn decode(bytes: &[u8]) -> Result<u32, String> {
    if bytes.len() != MANIFEST_LEN || bytes[..VERSION_OFFSET] != MAGIC {
        return Err("not a Megalith store manifest".to_string());
    }
    let u32_at =
        |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let mut crc = [0u8; 8];
    crc.copy_from_slice(&bytes[CRC_OFFSET..]);
    if crc64(&[&bytes[..CRC_OFFSET]]) != u64::from_le_bytes(crc) {
        return Err("manifest checksum mismatch".to_string());
    }
    let version = u32_at(VERSION_OFFSET);
    if version != STORE_FORMAT_VERSION {
        return Err(format!(
            "store format version {version} is not supported (this build reads version {STORE_FORMAT_VERSION})"
        ));
    }
    let shards = u32_at(SHARDS_OFFSET);
    if shards == 0 {
        return Err("manifest says the store has no shards".to_string());
    }
    Ok(shards)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_damage_and_newer_versions() {
        assert_eq!(decode(&encode(4)), Ok(4));
        for at in 0..MANIFEST_LEN {
            let mut bad = encode(4);
            bad[at] ^= 1;
            assert!(decode(&bad).is_err());
        }
        let mut newer = encode(1);
        newer[VERSION_OFFSET] = 2;
        let crc = crc64(&[&newer[..CRC_OFFSET]]);
        newer[CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
        assert!(
            decode(&newer)
                .unwrap_err()
                .contains("version 2 is not supported")
        );
    }
}
