//! `index-doctor`: check a store's index files (on their own and against the
//! log) and rebuild them from the log.
//!
//! Exit status: 0 clean (or rebuilt), 1 problems found, 2 could not run
//! (no store, store open in another process, unreadable file). When nobody
//! reads the output any more (`index-doctor check | head -1`), the output
//! stops and the status is the same.
#![deny(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "println! and eprintln! panic on a closed pipe: write through output.rs"
)]

#[path = "../common/output.rs"]
mod output;

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use megalith::inspect::index::{IndexSummary, Problem, Report, check_store, rebuild};
use output::{Output, errln};

#[derive(Parser)]
#[command(
    name = "index-doctor",
    version,
    about = "Check a Megalith store's index files against their own structure and the log, or rebuild them from the log",
    after_help = "Exit status: 0 clean (or rebuilt), 1 problems found, 2 could not run \
                  (no store, store open in another process, unreadable file)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check every index file: meta pages, page checksums, key order and
    /// fences, leaf depth, entry count, free list and reachability; then
    /// compare each index with the events the log holds as of the index's
    /// checkpoint. Takes the store's lock (the store must not be open).
    Check(CheckArgs),
    /// Recreate every index from the log: the index directories are set
    /// aside, the store is opened (replaying the whole log) and closed, and
    /// the old directories are deleted (restored if the rebuild fails).
    Rebuild(RebuildArgs),
}

#[derive(Args)]
struct StoreArgs {
    /// The store's data directory.
    #[arg(long, value_name = "DIR", default_value = "./megalith-data")]
    data: PathBuf,
}

#[derive(Args)]
struct CheckArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Print one JSON document on stdout instead of the text report
    /// (default: off).
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct RebuildArgs {
    #[command(flatten)]
    store: StoreArgs,
}

const PROBLEMS: u8 = 1;
const CANNOT_RUN: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check(args) => check(&args),
        Command::Rebuild(args) => rebuild_command(&args),
    }
}

fn cannot_run(data: &Path, error: &megalith::Error) -> ExitCode {
    match error {
        megalith::Error::Missing(_) => errln!(
            "index-doctor: no store in {} (check --data)",
            data.display()
        ),
        other => errln!("index-doctor: {other}"),
    }
    ExitCode::from(CANNOT_RUN)
}

fn check(args: &CheckArgs) -> ExitCode {
    let report = match check_store(&args.store.data) {
        Ok(report) => report,
        Err(e) => return cannot_run(&args.store.data, &e),
    };
    let mut out = Output::stdout();
    let written = if args.json {
        writeln!(out, "{}", to_json(&report))
    } else {
        print_text(&mut out, &report)
    }
    .and_then(|()| out.finish());
    if let Err(e) = written {
        errln!("index-doctor: writing output: {e}");
        return ExitCode::from(CANNOT_RUN);
    }
    if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(PROBLEMS)
    }
}

fn rebuild_command(args: &RebuildArgs) -> ExitCode {
    match rebuild(&args.store.data) {
        Ok(report) => {
            let mut out = Output::stdout();
            let written = writeln!(
                out,
                "rebuilt the indexes of {} shard(s) from {} log records in {:.3} s",
                report.shards,
                report.replayed_records,
                report.elapsed.as_secs_f64()
            )
            .and_then(|()| out.finish());
            match written {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    errln!("index-doctor: the indexes were rebuilt, but writing output: {e}");
                    ExitCode::from(CANNOT_RUN)
                }
            }
        }
        Err(e) => cannot_run(&args.store.data, &e),
    }
}

fn location(problem: &Problem) -> String {
    let mut at = problem.file.display().to_string();
    if let Some(page) = problem.page {
        at.push_str(&format!(" page {page}"));
    }
    if let Some(offset) = problem.offset {
        at.push_str(&format!(" (offset {offset})"));
    }
    at
}

fn print_text(out: &mut Output, report: &Report) -> io::Result<()> {
    for problem in &report.problems {
        let mut line = format!("problem: {}: {}", location(problem), problem.reason);
        if let Some(id) = &problem.event_id {
            line.push_str(&format!(" [event {id}]"));
        }
        writeln!(out, "{line}")?;
    }
    for log in &report.logs {
        writeln!(
            out,
            "shard {} log: {} segment(s), {} records ({} events, {} removes), {} live events, last LSN {}",
            log.shard,
            log.segments,
            log.records,
            log.event_records,
            log.remove_records,
            log.live_events,
            log.last_lsn
        )?;
        for note in &log.notes {
            writeln!(out, "  note: {note}")?;
        }
    }
    writeln!(
        out,
        "{:<6} {:<17} {:>7} {:>9} {:>5} {:>6} {:>10} {:>8} {:>8}",
        "shard", "index", "pages", "entries", "depth", "free", "checkpoint", "pending", "problems"
    )?;
    for index in &report.indexes {
        print_index(out, index)?;
    }
    for index in &report.indexes {
        for note in index.check.iter().flat_map(|c| &c.notes) {
            writeln!(out, "  note: {}: {note}", index.path.display())?;
        }
    }
    if report.is_clean() {
        writeln!(out, "clean: no problems found")?;
    } else {
        writeln!(out, "{} problem(s) found", report.problems.len())?;
    }
    Ok(())
}

fn print_index(out: &mut Output, index: &IndexSummary) -> io::Result<()> {
    let Some(check) = &index.check else {
        writeln!(
            out,
            "{:<6} {:<17} {:>7} {:>9} {:>5} {:>6} {:>10} {:>8} {:>8}",
            index.shard.0,
            index.kind.name(),
            "missing",
            "-",
            "-",
            "-",
            "-",
            index.pending_replay,
            index.problems
        )?;
        return Ok(());
    };
    let checkpoint = index
        .checkpoint_lsn
        .map_or_else(|| "-".to_string(), |l| l.to_string());
    writeln!(
        out,
        "{:<6} {:<17} {:>7} {:>9} {:>5} {:>6} {:>10} {:>8} {:>8}",
        index.shard.0,
        index.kind.name(),
        check.stats.pages,
        check.stats.entries,
        check.stats.depth,
        check.stats.free_pages,
        checkpoint,
        index.pending_replay,
        index.problems
    )?;
    Ok(())
}

fn to_json(report: &Report) -> serde_json::Value {
    let problems: Vec<serde_json::Value> = report
        .problems
        .iter()
        .map(|p| {
            serde_json::json!({
                "file": p.file.display().to_string(),
                "page": p.page,
                "offset": p.offset,
                "index": p.index.map(|k| k.name()),
                "event_id": p.event_id,
                "reason": p.reason,
            })
        })
        .collect();
    let indexes: Vec<serde_json::Value> = report
        .indexes
        .iter()
        .map(|i| {
            let check = i.check.as_ref();
            serde_json::json!({
                "shard": i.shard.0,
                "index": i.kind.name(),
                "file": i.path.display().to_string(),
                "present": i.present,
                "meta_slot": check.and_then(|c| c.meta_slot),
                "generation": check.and_then(|c| c.meta).map(|m| m.generation),
                "checkpoint_lsn": i.checkpoint_lsn.map(|l| l.0),
                "pending_replay": i.pending_replay,
                "expected_entries": i.expected_entries,
                "saved_level_runs": i.saved_level.map(|l| l.runs),
                "saved_level_entries": i.saved_level.map(|l| l.entries),
                "saved_level_change": i.saved_level.map(|l| l.change),
                "saved_level_covers_lsn": i.saved_level.map(|l| l.covers.0),
                "file_pages": check.map(|c| c.stats.file_pages),
                "pages": check.map(|c| c.stats.pages),
                "tree_pages": check.map(|c| c.stats.tree_pages),
                "entries": check.map(|c| c.stats.entries),
                "depth": check.map(|c| c.stats.depth),
                "free_pages": check.map(|c| c.stats.free_pages),
                "free_list_pages": check.map(|c| c.stats.free_list_pages),
                "notes": check.map(|c| c.notes.clone()).unwrap_or_default(),
                "problems": i.problems,
            })
        })
        .collect();
    let logs: Vec<serde_json::Value> = report
        .logs
        .iter()
        .map(|l| {
            serde_json::json!({
                "shard": l.shard.0,
                "dir": l.dir.display().to_string(),
                "segments": l.segments,
                "records": l.records,
                "event_records": l.event_records,
                "remove_records": l.remove_records,
                "live_events": l.live_events,
                "last_lsn": l.last_lsn.0,
                "notes": l.notes,
            })
        })
        .collect();
    serde_json::json!({
        "data_dir": report.data_dir.display().to_string(),
        "clean": report.is_clean(),
        "problems": problems,
        "logs": logs,
        "indexes": indexes,
    })
}
