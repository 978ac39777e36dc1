//! JSONL output: one compact NIP-01 event object per line, so every peer of a comparison
//! loads the same bytes.

use std::io::{self, Write};

use crate::event::Event;

/// Writes each event as its compact NIP-01 JSON ([`Event::write_json`]) followed by `\n`.
/// Pass a buffered writer; this makes one `write_all` per event.
pub fn write_jsonl<'a, W: Write>(
    events: impl IntoIterator<Item = &'a Event>,
    mut out: W,
) -> io::Result<()> {
    let mut line = Vec::with_capacity(1_024);
    for event in events {
        line.clear();
        event.write_json(&mut line);
        line.push(b'\n');
        out.write_all(&line)?;
    }
    Ok(())
}
