//! Small files written so that a crash leaves the old version or the new,
//! never a torn one.

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` atomically: a temporary file beside it,
/// fsync, rename over, fsync of the directory.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("json.tmp");
    let fail = |what: &str, e: std::io::Error| format!("{what} {}: {e}", tmp.display());
    let mut file = std::fs::File::create(&tmp).map_err(|e| fail("cannot create", e))?;
    file.write_all(bytes).map_err(|e| fail("cannot write", e))?;
    file.sync_all().map_err(|e| fail("cannot sync", e))?;
    std::fs::rename(&tmp, path).map_err(|e| fail("cannot rename", e))?;
    if let Some(dir) = path.parent()
        && let Ok(dir) = std::fs::File::open(dir)
    {
        let _ = dir.sync_all();
    }
    Ok(())
}
