//! `megalith export`: the events a store holds, as JSONL, from its change
//! feed (`ChangeReader`), so it works while `megalith serve` has the store
//! open, and on a read-only file system.
//!
//! The export is the store as of one point: the end of every shard's
//! readable log when the export begins (beside a running server, what the
//! server had synced; `ChangeReader::end`). Two passes over the feed up to
//! that point: the first gathers the ids of events removed by then
//! (replaced, deleted, vanished), the second writes every stored event
//! that is not among them, in commit order within each shard. All of an
//! author's events live in one shard, so each author's events come in the
//! order they were stored, and importing the export into an empty store
//! (`megalith import`, `strfry import`) gives the same events.

use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use megalith::{ChangeOp, ChangePosition, ChangeReader, EventId, Filter};

use crate::output::{Output, errln};

#[derive(Args)]
pub(crate) struct ExportArgs {
    /// The store's data directory.
    #[arg(long, value_name = "DIR", default_value = "./megalith-data")]
    data: PathBuf,
    /// Export only the events matching this NIP-01 filter (or any filter of
    /// an array of them); `limit` is refused [default: every event].
    #[arg(long, value_name = "JSON")]
    filter: Option<String>,
    /// Write to this file instead of standard output (created or replaced).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Print the summary on stderr as one JSON object.
    #[arg(long)]
    json: bool,
}

/// Changes read per call.
const PAGE: usize = 10_000;

pub(crate) fn export(args: &ExportArgs) -> Result<ExitCode, String> {
    let filters = match &args.filter {
        Some(text) => {
            let filters = Filter::list_from_json(text).map_err(|e| format!("--filter: {e}"))?;
            if filters.iter().any(|f| f.limit.is_some()) {
                return Err(
                    "--filter: `limit` has no meaning for an export (it writes every \
                            matching event); leave it out"
                        .to_string(),
                );
            }
            Some(filters)
        }
        None => None,
    };
    let data = &args.data;
    let mut reader = ChangeReader::open(data).map_err(|e| match e {
        megalith::Error::Format { .. } if !data.join("MANIFEST").exists() => {
            format!("no store in {} (check --data)", data.display())
        }
        other => format!("cannot read {}: {other}", data.display()),
    })?;
    let failed = |e: megalith::Error| format!("{}: {e}", data.display());
    let until = reader.end().map_err(failed)?;
    let start = ChangePosition::start(reader.shard_count());

    // Pass 1: what was removed by then.
    let mut removed: HashSet<EventId> = HashSet::new();
    let mut at = start.clone();
    loop {
        let page = reader.changes_until(&at, &until, PAGE).map_err(failed)?;
        let Some(last) = page.last() else { break };
        at = last.position.clone();
        removed.extend(
            page.iter()
                .filter(|c| c.op == ChangeOp::Removed)
                .map(|c| c.event.id),
        );
    }

    // Pass 2: every stored event that was not removed.
    let mut out = match &args.out {
        Some(path) => Output::file(
            std::fs::File::create(path)
                .map_err(|e| format!("cannot create {}: {e}", path.display()))?,
        ),
        None => Output::stdout(),
    };
    let mut line = Vec::with_capacity(1024);
    let mut exported = 0u64;
    let mut at = start;
    'pages: loop {
        let page = reader.changes_until(&at, &until, PAGE).map_err(failed)?;
        let Some(last) = page.last() else { break };
        at = last.position.clone();
        for change in page {
            if change.op != ChangeOp::Stored || removed.contains(&change.event.id) {
                continue;
            }
            if let Some(filters) = &filters
                && !filters.iter().any(|f| f.matches_event(&change.event))
            {
                continue;
            }
            line.clear();
            change.event.write_json(&mut line);
            line.push(b'\n');
            out.write_all(&line)
                .map_err(|e| format!("cannot write the export: {e}"))?;
            if !out.is_open() {
                break 'pages;
            }
            exported += 1;
        }
    }
    let complete = out.is_open();
    out.finish()
        .map_err(|e| format!("cannot write the export: {e}"))?;
    if args.json {
        errln!("{{\"exported\":{exported},\"as_of\":\"{until}\",\"complete\":{complete}}}");
    } else if complete {
        errln!("exported {exported} events: the store as of {until}");
    } else {
        errln!("stopped after {exported} events: the reader of the output went away");
    }
    Ok(ExitCode::SUCCESS)
}
