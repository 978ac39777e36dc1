//! `wal-hexdump`: lists the records of Megalith log segments, damaged ones
//! included, and says where and how a segment goes wrong. When nobody reads
//! the listing any more (`wal-hexdump | head`), it stops reading and exits
//! with the status of what it read.
#![deny(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "println! and eprintln! panic on a closed pipe: write through output.rs"
)]

#[path = "../common/output.rs"]
mod output;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use megalith::inspect::log::{
    CompactedPayload, FrameError, FrameHeader, Problem, QuarantinePayload, RecordRef, RecordType,
    RemovePayload, SegmentWalk, WalkItem, parse_segment_file_name, parse_shard_dir_name,
};
use megalith::{EventRef, SegmentId, ShardId};
use output::{Output, errln};

#[derive(Parser)]
#[command(
    name = "wal-hexdump",
    version,
    about = "List the records of Megalith log segments, and where damaged ones go wrong",
    long_about = "List the records of Megalith log segments: offset, LSN, type, length, \
checksum, and what each event or remove record holds. Damaged segments are read \
without giving up: a bad header, a bad checksum, a truncated frame or zeros \
before more data is reported at its offset, and the listing resumes at the next \
valid frame.\n\nExit status: 0 when everything read cleanly, 1 when damage was \
found, 2 when the tool could not run (a missing file or directory, ...)."
)]
struct Cli {
    /// Segment files to list, in the order given. Without any, every segment
    /// of every shard of the --data directory is listed.
    #[arg(value_name = "SEGMENT_FILE")]
    files: Vec<PathBuf>,
    /// The store's data directory, used when no SEGMENT_FILE is given.
    #[arg(long, value_name = "DIR", default_value = "./megalith-data")]
    data: PathBuf,
    /// Only the shard with this number (default: every shard); needs --data,
    /// not SEGMENT_FILEs.
    #[arg(long, value_name = "N")]
    shard: Option<u32>,
    /// Skip records whose LSN is lower than this (default: list from the
    /// first record). Damage is reported wherever it is.
    #[arg(long, value_name = "LSN", default_value_t = 0)]
    from_lsn: u64,
    /// Also print each record's payload as a hex dump (file offset, 16 bytes
    /// in hex, ASCII); for damage, the 64 bytes from where it starts.
    #[arg(long)]
    hex: bool,
    /// Print JSON Lines (one object per record, damage, segment end, and a
    /// final summary) instead of text.
    #[arg(long)]
    json: bool,
}

/// One segment file to list, and what is known about it beforehand.
struct Target {
    path: PathBuf,
    /// How the file is named in the output.
    label: String,
    id_from_name: Option<SegmentId>,
    /// Part of a store listing and not its shard's last segment: sealed
    /// segments end exactly after their last record.
    sealed: bool,
    /// Starts a new shard (LSNs start over).
    first_of_shard: bool,
}

#[derive(Default)]
struct Totals {
    files: u64,
    records: u64,
    events: u64,
    removes: u64,
    quarantined: u64,
    compacted: u64,
    batches: u64,
    record_bytes: u64,
    file_bytes: u64,
    problems: u64,
}

struct Dump {
    out: Output,
    hex: bool,
    json: bool,
    from_lsn: u64,
    totals: Totals,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => code,
        Err(message) => {
            errln!("wal-hexdump: {message}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: &Cli) -> Result<ExitCode, String> {
    let targets = if cli.files.is_empty() {
        store_targets(&cli.data, cli.shard)?
    } else {
        if cli.shard.is_some() {
            return Err(
                "--shard selects shards of --data; it cannot be used with SEGMENT_FILEs".into(),
            );
        }
        file_targets(&cli.files)
    };
    let mut dump = Dump {
        out: Output::stdout(),
        hex: cli.hex,
        json: cli.json,
        from_lsn: cli.from_lsn,
        totals: Totals::default(),
    };
    let mut unreadable = false;
    let mut previous_lsn = 0;
    let result = (|| -> std::io::Result<()> {
        for target in &targets {
            if !dump.out.is_open() {
                break; // nobody reads the listing any more
            }
            if target.first_of_shard {
                previous_lsn = 0;
            }
            match std::fs::read(&target.path) {
                Ok(bytes) => dump.segment(target, &bytes, &mut previous_lsn)?,
                Err(e) => {
                    dump.out.flush()?;
                    errln!("wal-hexdump: cannot read {}: {e}", target.path.display());
                    unreadable = true;
                }
            }
        }
        dump.summary()?;
        dump.out.flush()
    })();
    result.map_err(|e| format!("writing output: {e}"))?;
    Ok(if unreadable {
        ExitCode::from(2)
    } else if dump.totals.problems > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn file_targets(files: &[PathBuf]) -> Vec<Target> {
    files
        .iter()
        .map(|path| Target {
            path: path.clone(),
            label: path.display().to_string(),
            id_from_name: path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(parse_segment_file_name),
            sealed: false,
            first_of_shard: true,
        })
        .collect()
}

/// Every segment of every shard (or of `only`) of the store in `data`, in order.
fn store_targets(data: &Path, only: Option<u32>) -> Result<Vec<Target>, String> {
    let entries = std::fs::read_dir(data).map_err(|e| {
        format!(
            "cannot list the data directory {}: {e} (give --data DIR or SEGMENT_FILEs)",
            data.display()
        )
    })?;
    let mut shards: Vec<(ShardId, String)> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("listing {}: {e}", data.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(shard) = parse_shard_dir_name(&name)
            && only.is_none_or(|n| n == shard.0)
        {
            shards.push((shard, name));
        }
    }
    shards.sort();
    if shards.is_empty() {
        return Err(match only {
            Some(n) => format!("no shard {n} in {}", data.display()),
            None => format!(
                "no shard directories in {} (is it a Megalith store?)",
                data.display()
            ),
        });
    }
    let mut targets = Vec::new();
    for (_, shard_name) in shards {
        let log_dir = data.join(&shard_name).join("log");
        let mut segments: Vec<(SegmentId, String)> = std::fs::read_dir(&log_dir)
            .map_err(|e| format!("cannot list {}: {e}", log_dir.display()))?
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let name = entry.file_name().to_str()?.to_owned();
                Some((parse_segment_file_name(&name)?, name))
            })
            .collect();
        segments.sort();
        let count = segments.len();
        for (i, (id, name)) in segments.into_iter().enumerate() {
            targets.push(Target {
                path: log_dir.join(&name),
                label: format!("{shard_name}/log/{name}"),
                id_from_name: Some(id),
                sealed: i + 1 < count,
                first_of_shard: i == 0,
            });
        }
    }
    Ok(targets)
}

impl Dump {
    fn segment(
        &mut self,
        target: &Target,
        bytes: &[u8],
        previous_lsn: &mut u64,
    ) -> std::io::Result<()> {
        self.totals.files += 1;
        self.totals.file_bytes += bytes.len() as u64;
        let walk = SegmentWalk::new(bytes, target.id_from_name);
        let segment = walk.segment();
        let shard = walk.header().ok().map(|h| h.shard.0);
        if self.json {
            let doc = serde_json::json!({
                "file": target.label, "segment": segment.0, "shard": shard, "bytes": bytes.len(),
            });
            writeln!(self.out, "{doc}")?;
        } else {
            let shard = shard.map_or("?".to_string(), |s| s.to_string());
            writeln!(
                self.out,
                "== {} (segment {segment}, shard {shard}, {} bytes)",
                target.label,
                bytes.len()
            )?;
            writeln!(
                self.out,
                "{:>10}  {:>8}  {:<12} {:>8}  {:<3}  details",
                "offset", "lsn", "type", "length", "crc"
            )?;
        }
        // Records after the last batch end, if the walk ends there.
        let mut open_batch: Option<(usize, u64)> = None;
        let mut first_record = true;
        for item in walk {
            if !self.out.is_open() {
                return Ok(());
            }
            match item {
                WalkItem::Record { offset, record } => {
                    if first_record && !target.first_of_shard && record.lsn.0 <= *previous_lsn {
                        self.problem(
                            &target.label,
                            offset,
                            &format!(
                                "LSN {} does not follow LSN {previous_lsn} of the shard's previous segment",
                                record.lsn
                            ),
                            None,
                            None,
                            bytes,
                        )?;
                    }
                    first_record = false;
                    *previous_lsn = record.lsn.0;
                    self.totals.records += 1;
                    self.totals.record_bytes += record.frame_len() as u64;
                    match record.record_type {
                        RecordType::Event => self.totals.events += 1,
                        RecordType::Remove => self.totals.removes += 1,
                        RecordType::Quarantined => self.totals.quarantined += 1,
                        RecordType::Compacted => self.totals.compacted += 1,
                    }
                    if record.batch_end {
                        self.totals.batches += 1;
                        open_batch = None;
                    } else {
                        open_batch.get_or_insert((offset, 0)).1 += 1;
                    }
                    self.record(&target.label, offset, &record)?;
                }
                WalkItem::Damage {
                    offset,
                    problem,
                    resumes_at,
                } => {
                    // A partial batch before damage is not the log's tail.
                    open_batch = None;
                    let text = match (&problem, target.id_from_name) {
                        (Problem::BadHeader(_), Some(id)) => format!(
                            "{problem}; records are checked against segment {id} from the file name"
                        ),
                        _ => problem.to_string(),
                    };
                    let bad_crc = match problem {
                        Problem::BadFrame {
                            error: FrameError::ChecksumMismatch,
                            claimed,
                        } => claimed,
                        _ => None,
                    };
                    self.damage(&target.label, offset, &text, resumes_at, bad_crc, bytes)?;
                }
                WalkItem::End { offset, zero_bytes } => {
                    // Batches never span segments, so a segment never
                    // ends inside one.
                    if let Some((start, n)) = open_batch.take() {
                        self.problem(
                            &target.label,
                            start,
                            &format!(
                                "incomplete batch: {n} record(s) after the last batch end \
                                 (recovery cuts them; they were never acknowledged)"
                            ),
                            None,
                            None,
                            bytes,
                        )?;
                    }
                    if target.sealed && zero_bytes > 0 {
                        self.problem(
                            &target.label,
                            offset,
                            &format!(
                                "{zero_bytes} zero bytes after the last record of a sealed \
                                 segment (it should end exactly there)"
                            ),
                            None,
                            None,
                            bytes,
                        )?;
                    }
                    self.end(&target.label, offset, zero_bytes)?;
                }
            }
        }
        Ok(())
    }

    fn record(&mut self, file: &str, offset: usize, record: &RecordRef<'_>) -> std::io::Result<()> {
        let details = describe(record);
        if details.is_err() {
            // Listed on the record's own line, even before --from-lsn.
            self.totals.problems += 1;
        } else if record.lsn.0 < self.from_lsn {
            return Ok(());
        }
        let payload_at = offset + megalith::inspect::log::FRAME_HEADER_LEN;
        if self.json {
            let mut doc = serde_json::json!({
                "file": file,
                "offset": offset,
                "lsn": record.lsn.0,
                "type": record.record_type.name(),
                "batch_end": record.batch_end,
                "payload_len": record.payload.len(),
                "checksum": "ok",
            });
            match details {
                Ok(Details::Event(event)) => doc["event"] = event,
                Ok(Details::Remove(remove)) => doc["remove"] = remove,
                Ok(Details::Quarantined(q)) => doc["quarantined"] = q,
                Ok(Details::Compacted(c)) => doc["compacted"] = c,
                Err(why) => doc["problem"] = why.into(),
            }
            if self.hex {
                doc["payload_hex"] = megalith::hex::encode(record.payload).into();
            }
            writeln!(self.out, "{doc}")?;
        } else {
            let kind = format!(
                "{}{}",
                record.record_type.name(),
                if record.batch_end { " |end" } else { "" }
            );
            let text = match details {
                Ok(Details::Event(e)) => format!(
                    "id {} kind {} author {} created_at {}",
                    e["id"].as_str().unwrap_or(""),
                    e["kind"],
                    e["pubkey"].as_str().unwrap_or(""),
                    e["created_at"]
                ),
                Ok(Details::Remove(r)) => format!(
                    "removes segment {} offset {} ({}), event {}",
                    r["target_segment"],
                    r["target_offset"],
                    r["reason"].as_str().unwrap_or(""),
                    r["target_id"].as_str().unwrap_or("")
                ),
                Ok(Details::Quarantined(q)) => format!(
                    "damaged bytes moved to {} (records from LSN {} lost; next LSN {})",
                    q["file"].as_str().unwrap_or("?"),
                    q["first_lost"],
                    q["next"]
                ),
                Ok(Details::Compacted(c)) => format!(
                    "{} removed record(s) compacted away, LSN {} to {} ({} bytes, a hole)",
                    c["records"], record.lsn.0, c["last_lsn"], c["skip"]
                ),
                Err(why) => format!("!! PROBLEM: {why}"),
            };
            writeln!(
                self.out,
                "{offset:>10}  {:>8}  {kind:<12} {:>8}  {:<3}  {text}",
                record.lsn.0,
                record.payload.len(),
                "ok"
            )?;
            if self.hex {
                hexdump(&mut self.out, payload_at, record.payload)?;
            }
        }
        Ok(())
    }

    /// A problem the walk found at `offset`: `resumes_at` is where the next
    /// valid frame starts, `bad_crc` the header of a frame whose checksum
    /// failed (listed like a record, marked BAD).
    fn damage(
        &mut self,
        file: &str,
        offset: usize,
        text: &str,
        resumes_at: Option<usize>,
        bad_crc: Option<FrameHeader>,
        bytes: &[u8],
    ) -> std::io::Result<()> {
        if let Some(claimed) = bad_crc
            && !self.json
        {
            let kind = match claimed.record_type() {
                Some(t) => t.name().to_string(),
                None => format!("type {:#04x}", claimed.type_byte),
            };
            let kind = format!("{kind}{}", if claimed.batch_end() { " |end" } else { "" });
            writeln!(
                self.out,
                "{offset:>10}  {:>8}  {kind:<12} {:>8}  BAD  (fields as written, unverified)",
                claimed.lsn.0, claimed.payload_len
            )?;
        }
        self.problem(file, offset, text, Some(resumes_at), bad_crc, bytes)
    }

    fn problem(
        &mut self,
        file: &str,
        offset: usize,
        text: &str,
        resumes_at: Option<Option<usize>>,
        bad_crc: Option<FrameHeader>,
        bytes: &[u8],
    ) -> std::io::Result<()> {
        self.totals.problems += 1;
        let around = bytes.get(offset..).unwrap_or(&[]);
        let around = &around[..around.len().min(64)];
        if self.json {
            let mut doc = serde_json::json!({ "file": file, "offset": offset, "problem": text });
            if let Some(resumes_at) = resumes_at {
                doc["resumes_at"] = resumes_at.into();
            }
            if let Some(claimed) = bad_crc {
                doc["checksum"] = "bad".into();
                doc["claimed"] = serde_json::json!({
                    "lsn": claimed.lsn.0,
                    "type_byte": claimed.type_byte,
                    "payload_len": claimed.payload_len,
                });
            }
            if self.hex {
                doc["bytes_hex"] = megalith::hex::encode(around).into();
            }
            writeln!(self.out, "{doc}")?;
        } else {
            let next = match resumes_at {
                Some(Some(at)) if at != offset => format!("; next valid frame at offset {at}"),
                Some(Some(_)) | None => String::new(),
                Some(None) => "; no valid frame follows".to_string(),
            };
            writeln!(
                self.out,
                "{offset:>10}  !! DAMAGE at offset {offset}: {text}{next}"
            )?;
            if self.hex {
                hexdump(&mut self.out, offset, around)?;
            }
        }
        Ok(())
    }

    fn end(&mut self, file: &str, offset: usize, zero_bytes: usize) -> std::io::Result<()> {
        if self.json {
            let doc = serde_json::json!({ "file": file, "end": offset, "zero_bytes": zero_bytes });
            writeln!(self.out, "{doc}")
        } else if zero_bytes > 0 {
            writeln!(
                self.out,
                "{offset:>10}  end of the written log; {zero_bytes} unwritten (zero) bytes follow"
            )
        } else {
            writeln!(self.out, "{offset:>10}  end of file")
        }
    }

    fn summary(&mut self) -> std::io::Result<()> {
        let t = &self.totals;
        if self.json {
            let doc = serde_json::json!({ "summary": {
                "files": t.files, "records": t.records, "events": t.events,
                "removes": t.removes, "quarantined": t.quarantined,
                "compacted": t.compacted, "batches": t.batches, "record_bytes": t.record_bytes,
                "file_bytes": t.file_bytes, "problems": t.problems,
            }});
            writeln!(self.out, "{doc}")
        } else {
            writeln!(
                self.out,
                "summary: {} file(s), {} records ({} events, {} removes, {} quarantined, \
                 {} compacted), {} batches, {} record bytes of {} file bytes, {} problem(s)",
                t.files,
                t.records,
                t.events,
                t.removes,
                t.quarantined,
                t.compacted,
                t.batches,
                t.record_bytes,
                t.file_bytes,
                t.problems
            )
        }
    }
}

enum Details {
    Event(serde_json::Value),
    Remove(serde_json::Value),
    Quarantined(serde_json::Value),
    Compacted(serde_json::Value),
}

/// What an event or remove record holds, or why its payload does not decode.
fn describe(record: &RecordRef<'_>) -> Result<Details, String> {
    match record.record_type {
        RecordType::Event => {
            let event = EventRef::parse(record.payload)
                .map_err(|e| format!("event payload does not decode: {e}"))?;
            Ok(Details::Event(serde_json::json!({
                "id": event.id().to_hex(),
                "kind": event.kind(),
                "pubkey": event.pubkey().to_hex(),
                "created_at": event.created_at(),
            })))
        }
        RecordType::Remove => {
            let remove = RemovePayload::decode(record.payload).ok_or_else(|| {
                format!(
                    "remove payload of {} bytes does not decode (expected {} bytes with reason 1, 2 or 3)",
                    record.payload.len(),
                    RemovePayload::LEN
                )
            })?;
            Ok(Details::Remove(serde_json::json!({
                "target_segment": remove.target.segment.0,
                "target_offset": remove.target.offset,
                "reason": remove.reason.name(),
                "target_id": megalith::hex::encode(&remove.target_id),
            })))
        }
        RecordType::Quarantined => {
            let q = QuarantinePayload::decode(record.payload).unwrap_or(QuarantinePayload {
                first_lost: record.lsn,
                next: megalith::Lsn(0),
                file_name: String::new(),
            });
            Ok(Details::Quarantined(serde_json::json!({
                "file": q.file_name,
                "first_lost": q.first_lost.0,
                "next": q.next.0,
            })))
        }
        RecordType::Compacted => {
            let c = CompactedPayload::decode(record.payload)
                .ok_or_else(|| "compacted payload does not decode".to_string())?;
            Ok(Details::Compacted(serde_json::json!({
                "skip": c.skip,
                "records": c.records,
                "last_lsn": c.last.0,
            })))
        }
    }
}

/// The classic layout: offset, 16 bytes in two groups of 8, then ASCII.
fn hexdump(out: &mut impl Write, start: usize, bytes: &[u8]) -> std::io::Result<()> {
    for (i, line) in bytes.chunks(16).enumerate() {
        let mut hex_part = String::with_capacity(50);
        for j in 0..16 {
            if j == 8 {
                hex_part.push(' ');
            }
            match line.get(j) {
                Some(b) => hex_part.push_str(&format!("{b:02x} ")),
                None => hex_part.push_str("   "),
            }
        }
        let ascii: String = line
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() || b == b' ' {
                    b as char
                } else {
                    '.'
                }
            })
            .collect();
        writeln!(
            out,
            "            {:08x}  {hex_part} |{ascii}|",
            start + i * 16
        )?;
    }
    Ok(())
}
