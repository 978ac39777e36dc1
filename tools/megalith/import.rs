//! `megalith import`: reads events in any of the three shapes dumps come in,
//! one JSON value after another (JSONL, or values pretty-printed over many
//! lines), and inserts them in batches.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use megalith::{Event, EventError, EventStore, InsertOutcome, Limits, Rejection};
use serde::de::IgnoredAny;
use serde_json::value::RawValue;

use super::{ImportArgs, durability};
use crate::output::{Output, errln};

/// What one input value turned out to be.
enum Parsed {
    Event(Event),
    Refused(Rejection),
}

/// Parses a bare event, `["EVENT", event]` or `["EVENT", sub, event]`. Size
/// limits apply to the event's compact JSON, not to the input's whitespace
/// (dumps are often pretty-printed); the input itself is bounded per value
/// by the caller.
fn parse_value(text: &str, limits: &Limits) -> Parsed {
    let trimmed = text.trim_start();
    let event_json = if trimmed.starts_with('[') {
        let items: Vec<&RawValue> = match serde_json::from_str(trimmed) {
            Ok(items) => items,
            Err(e) => {
                return Parsed::Refused(Rejection::from(&malformed(format!(
                    "malformed JSON: {e}"
                ))));
            }
        };
        match (items.first().map(|v| v.get()), items.len()) {
            (Some("\"EVENT\""), 2 | 3) => items[items.len() - 1].get(),
            _ => {
                return Parsed::Refused(Rejection::from(&malformed(
                    "an array must be [\"EVENT\", event] or [\"EVENT\", subscription, event]"
                        .to_string(),
                )));
            }
        }
    } else {
        trimmed
    };
    match Event::from_json(event_json).and_then(|event| event.check_limits(limits).map(|()| event))
    {
        Ok(event) => Parsed::Event(event),
        Err(e) => Parsed::Refused(Rejection::from(&e)),
    }
}

fn malformed(message: String) -> EventError {
    EventError::new(megalith::event::EventErrorKind::Malformed, message)
}

struct Tally {
    read: u64,
    outcomes: BTreeMap<&'static str, u64>,
    invalid: u64,
}

pub(crate) fn run(args: &ImportArgs) -> Result<ExitCode, String> {
    if args.batch == 0 {
        return Err("--batch must be at least 1".to_string());
    }
    let limits = Limits {
        max_event_bytes: args.max_event_bytes,
        ..Limits::default()
    };
    let mut builder = crate::with_replay_progress(EventStore::builder(&args.store.data))
        .durability(durability(args.durability))
        .limits(limits.clone());
    if let Some(shards) = args.shards {
        builder = builder.shards(shards);
    }
    if let Some(search) = args.search {
        builder = builder.search(search);
    }
    let store = builder
        .open()
        .map_err(|e| format!("cannot open {}: {e}", args.store.data.display()))?;
    crate::report_recovery(&store);
    let started = Instant::now();
    let mut tally = Tally {
        read: 0,
        outcomes: BTreeMap::new(),
        invalid: 0,
    };
    for path in &args.files {
        import_file(&store, path, args, &limits, &mut tally)?;
    }
    store
        .close()
        .map_err(|e| format!("closing the store: {e}"))?;
    let seconds = started.elapsed().as_secs_f64();
    let stored = tally.outcomes.get("stored").copied().unwrap_or(0)
        + tally.outcomes.get("replaced").copied().unwrap_or(0);
    if args.json {
        let outcomes: serde_json::Map<String, serde_json::Value> = tally
            .outcomes
            .iter()
            .map(|(k, v)| (k.to_string(), (*v).into()))
            .collect();
        let doc = serde_json::json!({
            "read": tally.read, "stored": stored, "invalid": tally.invalid,
            "outcomes": outcomes, "seconds": seconds,
        });
        let mut out = Output::stdout();
        writeln!(out, "{doc}")
            .and_then(|()| out.finish())
            .map_err(|e| format!("writing the summary: {e}"))?;
    } else {
        errln!(
            "read {} event(s) in {seconds:.2} s ({:.0}/s): {stored} stored, {} invalid",
            tally.read,
            tally.read as f64 / seconds.max(1e-9),
            tally.invalid
        );
        for (label, n) in &tally.outcomes {
            errln!("  {label:<14} {n}");
        }
    }
    Ok(if args.strict && tally.invalid > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn import_file(
    store: &EventStore,
    path: &Path,
    args: &ImportArgs,
    limits: &Limits,
    tally: &mut Tally,
) -> Result<(), String> {
    let name = path.display().to_string();
    let (reader, size): (Box<dyn Read>, Option<u64>) = if path == Path::new("-") {
        (Box::new(std::io::stdin().lock()), None)
    } else {
        let file = File::open(path).map_err(|e| format!("cannot read {name}: {e}"))?;
        let size = file.metadata().ok().map(|m| m.len());
        (Box::new(file), size)
    };
    let progress = match size {
        Some(size) => ProgressBar::new(size).with_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {per_sec} eta {eta}",
            )
            .map_err(|e| e.to_string())?
            .progress_chars("=> "),
        ),
        None => ProgressBar::new_spinner(),
    };
    progress.set_message(name.clone());
    let mut reader = BufReader::with_capacity(1 << 20, progress.wrap_read(reader));
    // A value may span lines (pretty-printed dumps): gather lines until the
    // text is a complete JSON value, then parse it.
    let max_value_bytes = limits.max_event_bytes.saturating_mul(4).max(1 << 20);
    let mut chunk = String::new();
    let mut chunk_line = 0u64;
    let mut line_number = 0u64;
    let mut line = String::new();
    let mut pending = Pending {
        lines: Vec::with_capacity(args.batch),
        events: Vec::with_capacity(args.batch),
    };
    loop {
        line.clear();
        let n = reader
            .read_line(&mut line)
            .map_err(|e| format!("reading {name} line {}: {e}", line_number + 1))?;
        if n == 0 {
            break;
        }
        line_number += 1;
        if chunk.is_empty() {
            if line.trim().is_empty() {
                continue;
            }
            chunk_line = line_number;
        }
        chunk.push_str(&line);
        let end = chunk.trim_end();
        if !(end.ends_with('}') || end.ends_with(']')) && chunk.len() <= max_value_bytes {
            continue;
        }
        let complete = serde_json::from_str::<IgnoredAny>(&chunk);
        if matches!(&complete, Err(e) if e.is_eof()) && chunk.len() <= max_value_bytes {
            continue;
        }
        tally.read += 1;
        let parsed = match complete {
            Ok(_) => parse_value(&chunk, limits),
            Err(_) if chunk.len() > max_value_bytes => {
                Parsed::Refused(Rejection::from(&EventError::new(
                    megalith::event::EventErrorKind::TooLarge,
                    format!("value is larger than {max_value_bytes} bytes"),
                )))
            }
            Err(e) => Parsed::Refused(Rejection::from(&malformed(format!("malformed JSON: {e}")))),
        };
        match parsed {
            Parsed::Event(event) => {
                pending.lines.push(chunk_line);
                pending.events.push(event);
            }
            Parsed::Refused(rejection) => {
                refuse(&progress, args, &name, chunk_line, &rejection, tally)
            }
        }
        chunk.clear();
        if pending.events.len() >= args.batch {
            flush(store, &mut pending, args, &name, &progress, tally)?;
        }
    }
    if !chunk.trim().is_empty() {
        tally.read += 1;
        let rejection = Rejection::from(&malformed(
            "truncated JSON at the end of the input".to_string(),
        ));
        refuse(&progress, args, &name, chunk_line, &rejection, tally);
    }
    flush(store, &mut pending, args, &name, &progress, tally)?;
    progress.finish_and_clear();
    Ok(())
}

fn refuse(
    progress: &ProgressBar,
    args: &ImportArgs,
    name: &str,
    line: u64,
    rejection: &Rejection,
    tally: &mut Tally,
) {
    tally.invalid += 1;
    *tally.outcomes.entry(rejection.code).or_default() += 1;
    if !args.quiet {
        progress.suspend(|| errln!("{name}:{line}: {}", rejection.message));
    }
}

fn flush(
    store: &EventStore,
    pending: &mut Pending,
    args: &ImportArgs,
    name: &str,
    progress: &ProgressBar,
    tally: &mut Tally,
) -> Result<(), String> {
    if pending.events.is_empty() {
        return Ok(());
    }
    let outcomes = if args.trusted {
        store.insert_trusted(&pending.events)
    } else {
        store.insert(&pending.events)
    }
    .map_err(|e| format!("storing events from {name}: {e}"))?;
    for (line, outcome) in pending.lines.iter().zip(outcomes) {
        match &outcome {
            InsertOutcome::Invalid(rejection) => {
                refuse(progress, args, name, *line, rejection, tally)
            }
            other => *tally.outcomes.entry(other.label()).or_default() += 1,
        }
    }
    pending.lines.clear();
    pending.events.clear();
    Ok(())
}

/// Parsed events waiting for the next insert, with the input line each began on.
struct Pending {
    lines: Vec<u64>,
    events: Vec<Event>,
}
