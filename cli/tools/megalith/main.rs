//! `megalith`: serve a Megalith store as a Nostr relay; import, query, count
//! and inspect it; generate test data.
#![deny(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "println! and eprintln! panic on a closed pipe: write through output.rs"
)]

mod admin;
mod export;
mod follow;
mod generate;
mod import;
mod mirror;
#[path = "../common/output.rs"]
mod output;
mod publish;
mod serve;
mod sync;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use megalith::{
    Durability, EventStore, EventStoreBuilder, Filter, Limits, RecoveryMode, ReplayProgress,
    ShardId,
};
use output::{Output, errln};

/// `megalith --version`: the package version and the commit it was built from.
pub(crate) const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("MEGALITH_COMMIT"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "megalith",
    version = VERSION,
    about = "Megalith: an embedded storage engine for Nostr events"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the NIP-01 relay (WebSocket, NIP-11, /health, /metrics) on a store, creating it if
    /// missing; stops cleanly on Ctrl-C or SIGTERM.
    Serve(Box<serve::ServeArgs>),
    /// Import events from JSONL files, one event per line: bare, ["EVENT", event] or ["EVENT", sub, event]
    ///
    /// Input is read line by line; a value pretty-printed over several lines
    /// is not supported (each of its lines is refused). Every line that
    /// holds no valid event (invalid UTF-8, binary data, truncated or
    /// malformed JSON, `null` or other JSON that is not an event, an event
    /// over the limits, a line longer than 4 x --max-event-bytes and at
    /// least 1 MiB, which is skipped unread) is named on stderr as
    /// `file:line: reason` and skipped; the lines around it are imported.
    /// Blank lines are skipped silently.
    ///
    /// A summary of outcomes (stored, replaced, duplicate, superseded,
    /// deleted, and each reason for a refusal) is always printed. If a store
    /// error (a full disk, a store open in another process) or an input
    /// that cannot be read stops the run, the summary names the first line
    /// not imported and the --skip-lines that resumes there, and the exit
    /// status is 1. The files are all opened first: one that cannot be
    /// opened stops the command before anything is read.
    #[command(verbatim_doc_comment)]
    Import(ImportArgs),
    /// Print the events matching a filter (or a JSON array of filters) as JSONL, newest first.
    Query(QueryArgs),
    /// Count the events matching a filter (or a JSON array of filters), NIP-45 style.
    Count(CountArgs),
    /// Print event counts by kind and the sizes of the log and indexes.
    Stats(StatsArgs),
    /// Print the change feed as JSONL: every event stored and removed, from a position
    ///
    /// Each line is {"op": "stored"|"removed", "shard": N, "position": "c1:...",
    /// "event": {...}}, read from the logs: within a shard in commit order (every
    /// author's changes in the order they were made), the shards in turn. Keep the
    /// last line's position and pass it as --after to read on from there, after a
    /// restart too; nothing is skipped or repeated. Removed: replaced by a newer
    /// version, deleted (NIP-09) or vanished (NIP-62). The last position is also
    /// printed on stderr ("up to date at ..." or, after --limit or a signal,
    /// "stopped at ...").
    ///
    /// Works while another process (`megalith serve`) has the store open, and on
    /// a read-only file system: it reads the logs without opening the store and
    /// writes nothing. Beside a running server it prints only what the server has
    /// synced to disk (a power loss cannot take back a printed change); with
    /// --follow it keeps printing new changes as they are synced, until SIGINT,
    /// SIGTERM or the reader of its output goes away.
    #[command(verbatim_doc_comment)]
    Changes(ChangesArgs),
    /// Write every event the store holds (or those matching --filter) as JSONL
    ///
    /// One bare event per line, what `megalith import` and `strfry import` read
    /// back: importing it into an empty store gives the same events. Works while
    /// `megalith serve` has the store open (and on a read-only file system): the
    /// export is the store as of the moment it began (beside a running server,
    /// what the server had synced to disk then), whatever is published
    /// meanwhile. Each author's events come in the order they were stored. The
    /// summary on stderr names that moment as a change feed position
    /// (`megalith changes --after` it prints what came later).
    #[command(verbatim_doc_comment)]
    Export(export::ExportArgs),
    /// Copy a store, consistently, while `megalith serve` runs (or with nothing running)
    ///
    /// DIR2 must be new or empty. The copy is the store as of one point: each
    /// index as of its last durable checkpoint, the log up to where the server
    /// had synced it. Restore is opening the copy (`megalith serve --data DIR2`):
    /// it replays only the log from those checkpoints to that point. Prints what
    /// was copied and the copy's position in the change feed.
    #[command(verbatim_doc_comment)]
    Backup(BackupArgs),
    /// Take the bytes of removed events (replaced, deleted, vanished) out of the log
    ///
    /// Sealed log segments are written again without the event records that left
    /// the indexes, each in a new file that then takes the segment's name: every
    /// other record keeps its place, so no index changes, and a crash at any
    /// moment leaves the old segment or the new one (docs/compaction.md). Prints
    /// what went and the log's size on disk before and after. Needs the store to
    /// itself (stop `megalith serve` first; it does not compact by itself yet).
    #[command(verbatim_doc_comment)]
    Compact(CompactArgs),
    /// Remove every stored event matching a NIP-01 filter (strfry's `delete`)
    ///
    /// Each removal is recorded in the log, so a restart or an index rebuild
    /// repeats it, and `megalith compact` takes the events' bytes out later.
    /// Nothing stops the same events from being published again (unlike a
    /// NIP-09 deletion, which its author signs). --dry-run counts what would
    /// go and changes nothing. Needs the store to itself (stop `megalith
    /// serve` first; `serve` applies the retention rules of its config itself).
    #[command(verbatim_doc_comment)]
    Delete(DeleteArgs),
    /// Turn the NIP-50 search index on (built from the log now) or off (dropped).
    ///
    /// The store remembers the choice; `serve` and `import` keep it from then on.
    /// Needs the store to itself (stop `megalith serve` first).
    #[command(verbatim_doc_comment)]
    Search(SwitchArgs),
    /// Turn the video analytics on (built from the log now) or off (dropped).
    ///
    /// The store remembers the choice (docs/analytics.md). Needs the store to
    /// itself (stop `megalith serve` first).
    #[command(verbatim_doc_comment)]
    Analytics(SwitchArgs),
    /// Ask a running `megalith serve` whether it is healthy (for container and
    /// service health checks): exit status 0 when its /health answers 200, else 1.
    Health(HealthArgs),
    /// Write a seeded, realistic stream of signed events as JSONL: the same seed and authors
    /// always give the same bytes (the kind mix is in docs/api.md).
    Generate(GenerateArgs),
    /// Find and repair damage anywhere in a store's log (the store must not be open).
    ///
    /// Every record of every segment is checked. Each damaged byte range (a
    /// flipped bit, a lost page: a bad record that later records prove was
    /// synced) is moved to a quarantine file beside the log
    /// (DIR/shard-NNNN/quarantine/, never deleted), every valid record
    /// after it is kept, the shard's indexes are rebuilt, and removals the
    /// lost records had made are made again. A torn tail (what a crash
    /// leaves, never acknowledged) is cut as any open does. Prints what was
    /// lost: each range, its LSNs and the event ids still readable in it.
    /// Exit status: 0 nothing to repair or repaired, 1 could not repair.
    #[command(verbatim_doc_comment)]
    Repair(RepairArgs),
    /// Copy the events matching a filter from other relays into the store
    ///
    /// Per relay, a backfill walks backwards in pages (each page's `until`
    /// is the oldest second of the last, whose events already stored are
    /// dropped when they come again, so nothing sharing a second is
    /// skipped), then stays live from when the mirror first started. The
    /// resume point per (relay, filter) is kept in DIR/mirror/, so a
    /// restart neither downloads everything again nor misses what arrived
    /// while it was down. Events are checked (ids, signatures, the filter)
    /// before they are stored; ids already stored are dropped first.
    /// Ctrl-C or SIGTERM stops cleanly; a summary per relay (received,
    /// stored, duplicate, invalid, pages, errors) is always printed. Exit
    /// status 1 if a relay failed (with --once: never finished its
    /// backfill).
    #[command(verbatim_doc_comment)]
    Mirror(Box<mirror::MirrorArgs>),
    /// Fill the store with a person's feed (one feed job in the foreground)
    ///
    /// Fetches the person's newest contact list (kind 3) and relay list
    /// (kind 10002) from the relays given, then the follows' relay lists,
    /// then the follows' posts (kinds 1 and 6) from each follow's own write
    /// relays (NIP-65; up to --relays-per-author each, chosen so that few
    /// relays cover many follows; follows without a list are read from the
    /// relays given), newest first. Prints each phase as it starts (--json:
    /// the status object each time it changes) and a summary per relay.
    /// Afterwards, `megalith query` reads the feed. Exit status 1 if the job
    /// failed (no contact list found, no relay answered).
    #[command(verbatim_doc_comment)]
    Follow(Box<follow::FollowArgs>),
    /// Publish signed events from JSONL to other relays (through the relay pool)
    ///
    /// Every event is checked (id and signature) before anything is sent; a
    /// line that holds none stops the command naming it. Prints what each
    /// relay said (accepted, refused with its message, unanswered); exit
    /// status 1 if any relay refused or did not answer an event.
    #[command(verbatim_doc_comment)]
    Publish(publish::PublishArgs),
    /// Reconcile the store with a relay by NIP-77 negentropy, then move what differs
    ///
    /// The (created_at, id) items of the events matching --filter here and
    /// on the relay are compared in a few round trips of fingerprints, not
    /// by listing ids. Then --dir down fetches by id what only the relay
    /// has (verified and stored as any import), --dir up publishes what
    /// only the store has (an event refused as rate-limited is sent again,
    /// and the sending slows to the relay's rate), --dir both does both.
    /// Works with any NIP-77 relay (megalith serve, strfry, ...); a relay
    /// whose max_limit is below 500 is asked again for the rest. Prints
    /// the differences, the bytes the reconciliation took and what moved
    /// (--json: one object). Exit
    /// status 1 if the relay refused an event, sent one the store refused,
    /// or did not send one it listed; the command fails with the relay's
    /// reason if it refuses the sync (NEG-ERR) or does not speak NIP-77.
    #[command(verbatim_doc_comment)]
    Sync(sync::SyncArgs),
}

#[derive(Args)]
struct StoreArgs {
    /// The store's data directory (import creates it if missing; the other
    /// commands need an existing store).
    #[arg(long, value_name = "DIR", default_value = "./megalith-data")]
    data: PathBuf,
    /// What opening does when the log does not end cleanly: `tolerate-torn-tail`
    /// cuts what a crash left (never acknowledged) and refuses damage inside
    /// the log; `strict` refuses both; `repair` cuts the first and repairs the
    /// second (see `megalith repair`).
    #[arg(
        long,
        value_enum,
        value_name = "MODE",
        default_value = "tolerate-torn-tail"
    )]
    recovery: RecoveryArg,
}

/// `--recovery` (RecoveryMode's names).
#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum RecoveryArg {
    /// refuse a torn tail and damage
    Strict,
    /// cut a torn tail, refuse damage
    TolerateTornTail,
    /// cut a torn tail, repair damage
    Repair,
}

impl RecoveryArg {
    pub(crate) fn mode(self) -> RecoveryMode {
        match self {
            RecoveryArg::Strict => RecoveryMode::Strict,
            RecoveryArg::TolerateTornTail => RecoveryMode::TolerateCorruptTail,
            RecoveryArg::Repair => RecoveryMode::Repair,
        }
    }
}

#[derive(Args)]
struct RepairArgs {
    /// The store's data directory.
    #[arg(long, value_name = "DIR", default_value = "./megalith-data")]
    data: PathBuf,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum DurabilityArg {
    /// fsync before acknowledging each batch
    Always,
    /// fsync at least every 100 ms
    Batch,
    /// fsync only at checkpoints and close (verify afterwards)
    Never,
}

#[derive(Args)]
struct ImportArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Files to read, in order; `-` reads standard input.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Pass over the first N lines of the first FILE unread (to resume a
    /// run that stopped: its summary gives N). Line numbers in messages
    /// still count from the top of the file.
    #[arg(long, value_name = "N", default_value_t = 0)]
    skip_lines: u64,
    /// Events per insert batch.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Skip id and signature checks (only for events already verified elsewhere).
    #[arg(long)]
    trusted: bool,
    /// When an imported batch is on disk.
    #[arg(long, value_enum, default_value = "always")]
    durability: DurabilityArg,
    /// Shards of a new store [default: one per core]. An existing store
    /// keeps the count it was created with; a different N is refused.
    #[arg(long, value_name = "N")]
    shards: Option<u32>,
    /// Keep (`on`) or drop (`off`) the NIP-50 search index; turning it on
    /// builds it from the log first. The store remembers the choice
    /// [default: what the store has; off for a new store].
    #[arg(long, value_name = "on|off", value_parser = on_off)]
    search: Option<bool>,
    /// Keep (`on`) or drop (`off`) the video analytics (docs/analytics.md),
    /// updated as events are imported; turning them on builds them from the
    /// log first. The store remembers the choice [default: what the store
    /// has; off for a new store].
    #[arg(long, value_name = "on|off", value_parser = on_off)]
    analytics: Option<bool>,
    /// Largest event JSON accepted, in bytes.
    #[arg(long, default_value_t = Limits::default().max_event_bytes)]
    max_event_bytes: usize,
    /// Do not list refused lines on stderr (the summary still counts them).
    #[arg(long)]
    quiet: bool,
    /// Exit with status 1 if any line was refused as invalid.
    #[arg(long)]
    strict: bool,
    /// Print the summary as JSON on stdout (with "stopped": the file, the
    /// resume_line and skip_lines, and the error, when the run stopped).
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct QueryArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// A NIP-01 filter object, or an array of them, e.g. '{"kinds":[1],"limit":10}'.
    filter: String,
}

#[derive(Args)]
struct CountArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// A NIP-01 filter object, or an array of them.
    filter: String,
    /// Print {"count": N} instead of the bare number.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ChangesArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The position to read on from, as a line's "position" gave it
    /// [default: the start of the store].
    #[arg(long, value_name = "POS")]
    after: Option<String>,
    /// Print at most N changes [default: all].
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Once up to date, keep waiting for new changes and print them as they come.
    #[arg(long)]
    follow: bool,
    /// With --follow, how often to look for new changes, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 100, requires = "follow")]
    interval: u64,
}

#[derive(Args)]
struct BackupArgs {
    /// The store to copy.
    #[arg(long, value_name = "DIR", default_value = "./megalith-data")]
    data: PathBuf,
    /// Where the copy goes (created; must be empty if it exists).
    #[arg(long, value_name = "DIR2")]
    to: PathBuf,
    /// Hard-link sealed log segments instead of copying them (same file
    /// system only; they never change, except that `megalith repair` of the
    /// original rewrites damaged bytes in place, in the copy too).
    #[arg(long)]
    link: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct CompactArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Write a segment again only when at least this share (0 to 1) of its
    /// bytes belongs to removed events.
    #[arg(long, value_name = "SHARE", default_value_t = 0.0)]
    min_garbage: f64,
    /// Write at most this many MiB per second (0: no limit).
    #[arg(long, value_name = "MIB", default_value_t = 0)]
    rate: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct DeleteArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The events to remove: a NIP-01 filter, or an array of them (an event
    /// any of them matches); `limit` is refused. `{}` matches every event.
    #[arg(long, value_name = "JSON")]
    filter: String,
    /// Count what would be removed; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct SwitchArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// `on` or `off`.
    #[arg(value_name = "on|off", value_parser = on_off, action = clap::ArgAction::Set)]
    state: bool,
}

/// What `megalith search` and `megalith analytics` switch.
#[derive(Clone, Copy)]
enum Feature {
    Search,
    Analytics,
}

#[derive(Args)]
struct HealthArgs {
    /// The server's health URL (plain http).
    #[arg(
        long,
        value_name = "URL",
        default_value = "http://127.0.0.1:7777/health"
    )]
    url: String,
    /// Seconds to wait for the answer.
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    timeout: u64,
}

#[derive(Args)]
struct StatsArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Print the statistics as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct GenerateArgs {
    /// Number of events to write.
    #[arg(long, default_value_t = 100_000)]
    count: u64,
    /// Seed of every random choice and of the authors' keys.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Number of distinct authors; their activity follows a Zipf law.
    #[arg(long, default_value_t = 10_000)]
    authors: usize,
    /// `created_at` of the first event, in Unix seconds. The clock then
    /// advances about 2.65 events per second (1M events span 4.4 days), so
    /// a start of `now - N/2.64` ends N events shortly before now (a store
    /// refuses events more than 15 minutes ahead) [default: 1700000000,
    /// 2023-11-14].
    #[arg(long, value_name = "SECS")]
    start_time: Option<u64>,
    /// Signing threads; the output does not depend on it [default: the number of cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Output file; `-` writes to standard output [default: standard output].
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Do not print the summary (events, bytes, time, kind mix) on stderr.
    #[arg(long)]
    quiet: bool,
    /// The relays that relay lists (kind 10002) and relay hints name,
    /// comma-separated (for data served by local relays in tests and
    /// benchmarks) [default: sixteen well-known public relays].
    #[arg(long, value_name = "URL,URL,...", value_delimiter = ',')]
    relays: Vec<String>,
    /// Whom contact lists (kind 3) follow: `popular` draws accounts as
    /// activity does (the busiest are followed most); `uniform` draws every
    /// author alike, so with many authors (`--authors 20000`) most follows
    /// post rarely: the hard case for a follow feed.
    #[arg(long, value_name = "popular|uniform", default_value = "popular", value_parser = ["popular", "uniform"])]
    follows: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(&args),
        Command::Import(args) => import::run(&args),
        Command::Query(args) => query(&args),
        Command::Count(args) => count(&args),
        Command::Stats(args) => stats(&args),
        Command::Changes(args) => changes(&args),
        Command::Export(args) => export::export(&args),
        Command::Health(args) => health(&args),
        Command::Backup(args) => backup(&args),
        Command::Compact(args) => compact(&args),
        Command::Delete(args) => delete(&args),
        Command::Search(args) => switch(&args, Feature::Search),
        Command::Analytics(args) => switch(&args, Feature::Analytics),
        Command::Generate(args) => generate::run(&args),
        Command::Repair(args) => repair(&args),
        Command::Mirror(args) => mirror::run(&args),
        Command::Sync(args) => sync::run(&args),
        Command::Follow(args) => follow::run(&args),
        Command::Publish(args) => publish::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            errln!("megalith: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Shows a progress bar while opening replays a long stretch of log (after a
/// crash, or to rebuild an index), one bar per shard.
pub(crate) fn with_replay_progress(builder: EventStoreBuilder) -> EventStoreBuilder {
    let bar: Arc<Mutex<Option<(ShardId, ProgressBar)>>> = Arc::default();
    builder.on_replay_progress(Arc::new(move |p: ReplayProgress| {
        let mut bar = bar.lock().unwrap_or_else(|e| e.into_inner());
        if p.total_bytes < 16 << 20 {
            return;
        }
        if bar.as_ref().is_none_or(|(shard, _)| *shard != p.shard) {
            let fresh = ProgressBar::new(p.total_bytes).with_style(
                ProgressStyle::with_template(
                    "replaying shard {msg} {wide_bar} {binary_bytes}/{binary_total_bytes} ({eta})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            fresh.set_message(p.shard.to_string());
            if let Some((_, old)) = bar.replace((p.shard, fresh)) {
                old.finish_and_clear();
            }
        }
        if let Some((_, bar)) = bar.as_ref() {
            bar.set_position(p.replayed_bytes);
            if p.replayed_bytes >= p.total_bytes {
                bar.finish_and_clear();
            }
        }
    }))
}

/// Tells what opening found: an unclean shutdown, cut tails, rebuilt indexes.
pub(crate) fn report_recovery(store: &EventStore) {
    let report = store.recovery_report();
    if report.unclean_shutdown {
        errln!(
            "megalith: the store was not closed cleanly; replayed {} log records",
            report.replayed_records
        );
    }
    for repair in &report.tail_repairs {
        errln!("megalith: cut the log's torn tail: {repair}");
    }
    if let Some((from, to)) = report.format_migration {
        errln!(
            "megalith: migrated the store from format {from} to format {to} \
             (indexes rebuilt from the log; builds older than this one refuse it now)"
        );
    }
    for rebuilt in &report.rebuilt_indexes {
        errln!("megalith: rebuilt index from the log: {rebuilt}");
    }
    for repair in &report.log_repairs {
        errln!("megalith: repaired damage in the log: {repair}");
    }
    if report.removals_reapplied > 0 {
        errln!(
            "megalith: re-applied {} removals that repaired records had made",
            report.removals_reapplied
        );
    }
}

/// Closes a store shared with tasks that have all ended.
pub(crate) fn close_shared(store: Arc<EventStore>) -> Result<(), String> {
    match Arc::try_unwrap(store) {
        Ok(store) => store.close().map_err(|e| format!("closing the store: {e}")),
        Err(_) => Err("closing the store: still in use".to_string()),
    }
}

/// Opens the change feed of the store in `data` for reading from its files
/// (`changes`, `export`: beside a running server too).
pub(crate) fn open_reader(data: &std::path::Path) -> Result<megalith::ChangeReader, String> {
    megalith::ChangeReader::open(data).map_err(|e| match e {
        megalith::Error::Format { .. } if !data.join("MANIFEST").exists() => format!(
            "no store in {} (import events first, or check --data)",
            data.display()
        ),
        other => format!("cannot read {}: {other}", data.display()),
    })
}

/// Opens an existing store (reading commands never create one).
fn open(store: &StoreArgs) -> Result<EventStore, String> {
    open_with(store, |builder| builder)
}

/// [`open`], with more options set on the builder.
fn open_with(
    store: &StoreArgs,
    configure: impl FnOnce(megalith::EventStoreBuilder) -> megalith::EventStoreBuilder,
) -> Result<EventStore, String> {
    // A one-shot command reads a few pages: mapping every page the cache
    // holds would cost more than it saves (0.3 s at 3M events, about 1 s
    // at 10M; docs/performance.md).
    let store = configure(with_replay_progress(EventStore::builder(&store.data)))
        .map_resident(false)
        .create_if_missing(false)
        .recovery_mode(store.recovery.mode())
        .open()
        .map_err(|e| match e {
            megalith::Error::Missing(_) => format!(
                "no store in {} (import events first, or check --data)",
                store.data.display()
            ),
            other => format!("cannot open {}: {other}", store.data.display()),
        })?;
    report_recovery(&store);
    Ok(store)
}

/// Opens the store for a command that needs it to itself (`who` names the
/// command in the refusal when another process holds it), runs `work` on
/// it and closes it. The first error wins: the work's (after `doing` and
/// the store's directory), then the close's.
fn with_store_alone<T>(
    store_args: &StoreArgs,
    who: &str,
    doing: &str,
    work: impl FnOnce(&EventStore) -> Result<T, megalith::Error>,
) -> Result<T, String> {
    let store = open_with(store_args, |builder| builder).map_err(|e| {
        if e.contains("another process") {
            format!("{e}: {who} needs the store to itself (stop `megalith serve` first)")
        } else {
            e
        }
    })?;
    let result = work(&store);
    let closed = store.close().map_err(|e| format!("closing the store: {e}"));
    let value = result.map_err(|e| format!("{doing} {}: {e}", store_args.data.display()))?;
    closed?;
    Ok(value)
}

fn parse_filters(text: &str) -> Result<Vec<Filter>, String> {
    Filter::list_from_json(text).map_err(|e| e.to_string())
}

fn query(args: &QueryArgs) -> Result<ExitCode, String> {
    let filters = parse_filters(&args.filter)?;
    if let Some(done) = through_server(&args.store, "query", Some(&args.filter), false, false) {
        return done;
    }
    let store = open(&args.store)?;
    let mut out = Output::stdout();
    let mut line = Vec::with_capacity(1024);
    let mut write_error = None;
    let result = store.query_with(&filters, |event| {
        line.clear();
        event.write_json(&mut line);
        line.push(b'\n');
        if let Err(e) = out.write_all(&line) {
            write_error = Some(e);
        }
        if write_error.is_some() || !out.is_open() {
            // Stops the query; the error is ours, not the store's.
            return Err(megalith::Error::Closed);
        }
        Ok(())
    });
    // `megalith query ... | head` closes the pipe early: not an error.
    let stopped_by_output = write_error.is_some() || !out.is_open();
    let written = match write_error {
        Some(e) => Err(e),
        None => out.finish(),
    };
    let result = match result {
        Err(_) if stopped_by_output => Ok(()),
        other => other.map(|_| ()),
    };
    finish(store, result, written)
}

fn count(args: &CountArgs) -> Result<ExitCode, String> {
    let filters = parse_filters(&args.filter)?;
    if let Some(done) = through_server(&args.store, "count", Some(&args.filter), args.json, false) {
        return done;
    }
    let store = open(&args.store)?;
    let result = store.count(&filters);
    let mut out = Output::stdout();
    let written = match &result {
        Ok(n) => out.write_all(count_output(*n, args.json).as_bytes()),
        Err(_) => Ok(()),
    }
    .and_then(|()| out.finish());
    finish(store, result.map(|_| ()), written)
}

/// What `megalith count` prints for `n`.
fn count_output(n: u64, json: bool) -> String {
    if json {
        format!("{{\"count\":{n}}}\n")
    } else {
        format!("{n}\n")
    }
}

/// When a running `megalith serve` holds the store and answers on its
/// admin socket, runs the command there and prints its answer: `Some`
/// with the outcome; `None` when no server answers (the caller opens the
/// store itself).
fn through_server(
    store: &StoreArgs,
    command: &str,
    filter: Option<&str>,
    json: bool,
    dry_run: bool,
) -> Option<Result<ExitCode, String>> {
    let request = admin::Request {
        command: command.to_string(),
        filter: filter.map(str::to_string),
        json,
        dry_run,
        data: Some(store.data.display().to_string()),
    };
    let mut out = Output::stdout();
    match admin::ask(&store.data, &request, &mut out) {
        Ok(false) => None,
        Ok(true) => Some(
            out.finish()
                .map(|()| ExitCode::SUCCESS)
                .map_err(|e| format!("writing output: {e}")),
        ),
        Err(e) => Some(Err(e)),
    }
}

fn changes(args: &ChangesArgs) -> Result<ExitCode, String> {
    let after: Option<megalith::ChangePosition> = args
        .after
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(|e: String| format!("--after: {e}"))?;
    let data = &args.store.data;
    let mut reader = open_reader(data)?;
    let mut position =
        after.unwrap_or_else(|| megalith::ChangePosition::start(reader.shard_count()));
    let stop = args.follow.then(stop_on_signal);
    let mut left = args.limit.unwrap_or(usize::MAX);
    let mut out = Output::stdout();
    let mut line = Vec::with_capacity(1024);
    let mut written = Ok(());
    let mut caught_up = false;
    let mut told_waiting = false;
    let result = loop {
        if left == 0 || written.is_err() || !out.is_open() {
            break Ok(());
        }
        if stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed)) {
            break Ok(());
        }
        let page = match reader.changes(&position, left.min(10_000)) {
            Ok(page) => page,
            Err(e) => break Err(format!("{}: {e}", data.display())),
        };
        if page.is_empty() {
            if !args.follow {
                caught_up = true;
                break Ok(());
            }
            // Waiting: what is printed is on its way, and a reader that
            // went away is noticed without a change to write.
            written = out.flush();
            if out.reader_gone() {
                break Ok(());
            }
            if !reader.waiting().is_empty() && !told_waiting {
                errln!(
                    "waiting: the process that has the store open has not published how far \
                     its log is synced (still opening the store, or repairing it)"
                );
            }
            told_waiting = !reader.waiting().is_empty();
            std::thread::sleep(Duration::from_millis(args.interval.max(1)));
            continue;
        }
        for change in page {
            position = change.position.clone();
            line.clear();
            line.extend_from_slice(
                format!(
                    "{{\"op\":\"{}\",\"shard\":{},\"position\":\"{}\",\"event\":",
                    change.op.name(),
                    change.shard.0,
                    change.position
                )
                .as_bytes(),
            );
            change.event.write_json(&mut line);
            line.extend_from_slice(b"}\n");
            written = out.write_all(&line);
            left -= 1;
            if written.is_err() || !out.is_open() {
                break;
            }
        }
    };
    // `megalith changes ... | head` closes the pipe early: not an error.
    if !out.is_open() {
        written = Ok(());
    }
    let written = written.and_then(|()| out.finish());
    if let Err(e) = written {
        return Err(format!("cannot write the changes: {e}"));
    }
    result?;
    if caught_up {
        errln!("up to date at {position}");
    } else {
        errln!("stopped at {position} (more changes may follow)");
    }
    Ok(ExitCode::SUCCESS)
}

/// A flag SIGINT and SIGTERM set (instead of ending the process), for a
/// loop that stops cleanly between pages.
fn stop_on_signal() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(serve::shutdown_signal());
        flag.store(true, Ordering::Relaxed);
    });
    stop
}

fn backup(args: &BackupArgs) -> Result<ExitCode, String> {
    let report = megalith::backup_store(&args.data, &args.to, args.link).map_err(|e| {
        format!(
            "backup of {} to {}: {e}",
            args.data.display(),
            args.to.display()
        )
    })?;
    let mut out = Output::stdout();
    let written = if args.json {
        writeln!(
            out,
            "{{\"to\":{},\"position\":\"{}\",\"live\":{},\"bytes_copied\":{},\"segments_linked\":{},\"index_retries\":{},\"seconds\":{:.3}}}",
            serde_json::Value::from(args.to.display().to_string()),
            report.position,
            report.live,
            report.bytes_copied,
            report.segments_linked,
            report.index_retries,
            report.seconds
        )
    } else {
        writeln!(
            out,
            "copied {} to {}: {} MiB{} in {:.1} s{}\nthe copy is the store as of {}",
            args.data.display(),
            args.to.display(),
            report.bytes_copied >> 20,
            if report.segments_linked > 0 {
                format!(", {} sealed segments hard-linked", report.segments_linked)
            } else {
                String::new()
            },
            report.seconds,
            if report.live {
                " (beside the running server)"
            } else {
                ""
            },
            report.position
        )
    };
    written
        .and_then(|()| out.finish())
        .map_err(|e| format!("writing output: {e}"))?;
    Ok(ExitCode::SUCCESS)
}

fn delete(args: &DeleteArgs) -> Result<ExitCode, String> {
    let filters = Filter::list_from_json(&args.filter).map_err(|e| format!("--filter: {e}"))?;
    refuse_limit(&filters)?;
    if let Some(done) = through_server(
        &args.store,
        "delete",
        Some(&args.filter),
        args.json,
        args.dry_run,
    ) {
        return done;
    }
    // The dry run walks the matches as the delete does (a NIP-45 count
    // would be cheaper, but leaves out expired events the delete removes).
    let report = with_store_alone(&args.store, "a delete", "deleting from", |store| {
        store.purge(&filters, |_| false, args.dry_run)
    })?;
    let mut out = Output::stdout();
    out.write_all(delete_output(&report, args.dry_run, args.json, &args.store.data).as_bytes())
        .and_then(|()| out.finish())
        .map_err(|e| format!("writing output: {e}"))?;
    Ok(ExitCode::SUCCESS)
}

/// A delete's filters may not have `limit`.
fn refuse_limit(filters: &[Filter]) -> Result<(), String> {
    if filters.iter().any(|f| f.limit.is_some()) {
        return Err(
            "--filter: `limit` has no meaning for a delete (it removes every \
                    matching event); leave it out"
                .to_string(),
        );
    }
    Ok(())
}

/// What `megalith delete` prints.
fn delete_output(
    report: &megalith::PurgeReport,
    dry_run: bool,
    json: bool,
    data: &std::path::Path,
) -> String {
    if json {
        format!(
            "{}\n",
            serde_json::json!({
                "matched": report.matched,
                "removed": report.removed,
                "dry_run": dry_run,
            })
        )
    } else if dry_run {
        format!(
            "dry run: {} event(s) in {} match; nothing was removed\n",
            report.matched,
            data.display()
        )
    } else {
        format!(
            "removed {} event(s) from {} (`megalith compact` takes their bytes out of the log)\n",
            report.removed,
            data.display()
        )
    }
}

fn compact(args: &CompactArgs) -> Result<ExitCode, String> {
    if !(0.0..=1.0).contains(&args.min_garbage) {
        return Err(format!(
            "--min-garbage {}: a share from 0 to 1",
            args.min_garbage
        ));
    }
    let options = megalith::CompactOptions {
        min_garbage: args.min_garbage,
        max_write_rate: (args.rate > 0).then_some(args.rate.saturating_mul(1 << 20)),
        checkpoint_first: true,
        seal_active: true,
    };
    let report = with_store_alone(&args.store, "compaction", "compacting", |store| {
        store.compact(&options)
    })?;
    let mut out = Output::stdout();
    let written = if args.json {
        writeln!(
            out,
            "{}",
            serde_json::json!({
                "segments_examined": report.segments_examined,
                "segments_rewritten": report.segments_rewritten,
                "records_compacted": report.records_compacted,
                "bytes_compacted": report.bytes_compacted,
                "records_left": report.records_left,
                "disk_bytes_before": report.disk_bytes_before,
                "disk_bytes_after": report.disk_bytes_after,
                "bytes_written": report.bytes_written,
                "expired_removed": report.expired_removed,
                "seconds": (report.seconds * 1000.0).round() / 1000.0,
            })
        )
    } else {
        writeln!(
            out,
            "compacted {}: {} removed event(s), {} KiB, in {} segment rewrite(s) over {} sealed segment(s) in {:.1} s\n\
             log on disk: {} KiB before, {} KiB after{}{}",
            args.store.data.display(),
            report.records_compacted,
            report.bytes_compacted >> 10,
            report.segments_rewritten,
            report.segments_examined,
            report.seconds,
            report.disk_bytes_before >> 10,
            report.disk_bytes_after >> 10,
            if report.expired_removed > 0 {
                format!(
                    "\n{} event(s) past their NIP-40 expiration removed",
                    report.expired_removed
                )
            } else {
                String::new()
            },
            if report.records_left > 0 {
                format!(
                    "\n{} removed event(s) left for later (in the active segment, or \
                     under --min-garbage)",
                    report.records_left
                )
            } else {
                String::new()
            }
        )
    };
    written
        .and_then(|()| out.finish())
        .map_err(|e| format!("writing output: {e}"))?;
    Ok(ExitCode::SUCCESS)
}

fn switch(args: &SwitchArgs, feature: Feature) -> Result<ExitCode, String> {
    let on = args.state;
    let started = std::time::Instant::now();
    let store = open_with(&args.store, |builder| match feature {
        Feature::Search => builder.search(on),
        Feature::Analytics => builder.analytics(on),
    })?;
    let (name, now) = match feature {
        Feature::Search => ("search index", store.search_index()),
        Feature::Analytics => ("video analytics", store.analytics().is_some()),
    };
    let closed = store.close().map_err(|e| format!("closing the store: {e}"));
    if now != on {
        return Err(format!(
            "the {name} is still {}",
            if now { "on" } else { "off" }
        ));
    }
    closed?;
    errln!(
        "{name}: {} ({:.1} s)",
        if on { "on" } else { "off" },
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

fn health(args: &HealthArgs) -> Result<ExitCode, String> {
    use std::io::Read;
    use std::net::ToSocketAddrs;
    let rest = args
        .url
        .strip_prefix("http://")
        .ok_or_else(|| format!("--url {}: only http:// URLs are checked", args.url))?;
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/health"),
    };
    let timeout = Duration::from_secs(args.timeout.max(1));
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| format!("--url {}: {e}", args.url))?
        .next()
        .ok_or_else(|| format!("--url {}: no address", args.url))?;
    let answer = (|| -> std::io::Result<String> {
        let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        write!(
            stream,
            "GET {path} HTTP/1.0\r\nHost: {authority}\r\nUser-Agent: megalith-health\r\n\r\n"
        )?;
        let mut answer = Vec::new();
        stream.take(64 << 10).read_to_end(&mut answer)?;
        Ok(String::from_utf8_lossy(&answer).into_owned())
    })()
    .map_err(|e| format!("{}: {e}", args.url))?;
    let status = answer.lines().next().unwrap_or("");
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("").trim();
    if status.split_whitespace().nth(1) == Some("200") {
        let mut out = Output::stdout();
        let _ = writeln!(out, "{body}");
        let _ = out.finish();
        Ok(ExitCode::SUCCESS)
    } else {
        Err(format!("{}: {status} {body}", args.url))
    }
}

fn stats(args: &StatsArgs) -> Result<ExitCode, String> {
    if let Some(done) = through_server(&args.store, "stats", None, args.json, false) {
        return done;
    }
    let store = open(&args.store)?;
    let mut out = Output::stdout();
    let result = store.stats();
    let written = match &result {
        Ok(stats) => write_stats(&mut out, &store, stats, args.json),
        Err(_) => Ok(()),
    }
    .and_then(|()| out.finish());
    finish(store, result.map(|_| ()), written)
}

/// Closes the store whatever happened, then reports the first failure: the
/// store's work, the output (a closed pipe is none). A reading command's
/// answer stands when closing fails (a full disk cannot take the checkpoint
/// of what opening replayed): the log is intact and the next open replays
/// it again, so that is a warning.
fn finish(
    store: EventStore,
    work: Result<(), megalith::Error>,
    written: std::io::Result<()>,
) -> Result<ExitCode, String> {
    let closed = store.close();
    work.map_err(|e| e.to_string())?;
    written.map_err(|e| format!("writing output: {e}"))?;
    if let Err(e) = closed {
        errln!(
            "megalith: warning: the store could not be closed cleanly ({e}); nothing is \
             lost, the next open replays the log again"
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn repair(args: &RepairArgs) -> Result<ExitCode, String> {
    let report = with_replay_progress(EventStore::builder(&args.data))
        .repair()
        .map_err(|e| match e {
            megalith::Error::Missing(_) => {
                format!("no store in {} (check --data)", args.data.display())
            }
            other => format!("cannot repair {}: {other}", args.data.display()),
        })?;
    let lost: u64 = report
        .log_repairs
        .iter()
        .filter_map(|r| r.lost_lsns)
        .map(|(first, last)| last.0 - first.0 + 1)
        .sum();
    let quarantined: u64 = report.log_repairs.iter().map(|r| r.len).sum();
    let mut out = Output::stdout();
    let written = if args.json {
        let ranges: Vec<serde_json::Value> = report
            .log_repairs
            .iter()
            .map(|r| {
                serde_json::json!({
                    "shard": r.shard.0,
                    "segment": r.segment.display().to_string(),
                    "offset": r.offset,
                    "len": r.len,
                    "quarantine": r.quarantine.display().to_string(),
                    "reason": r.reason,
                    "lost_lsns": r.lost_lsns.map(|(a, b)| [a.0, b.0]),
                    "lost_event_ids": r.lost_event_ids.iter().map(|id| id.to_hex()).collect::<Vec<_>>(),
                })
            })
            .collect();
        let doc = serde_json::json!({
            "damaged_ranges": ranges,
            "bytes_quarantined": quarantined,
            "records_lost": lost,
            "removals_reapplied": report.removals_reapplied,
            "torn_tails_cut": report.tail_repairs,
            "indexes_rebuilt": report.rebuilt_indexes,
        });
        writeln!(out, "{doc}")
    } else {
        report_lines(&mut out, &report, quarantined, lost)
    }
    .and_then(|()| out.finish());
    written.map_err(|e| format!("writing output: {e}"))?;
    Ok(ExitCode::SUCCESS)
}

fn report_lines(
    out: &mut Output,
    report: &megalith::RecoveryReport,
    quarantined: u64,
    lost: u64,
) -> std::io::Result<()> {
    for repair in &report.log_repairs {
        writeln!(out, "repaired: {repair}")?;
    }
    for tail in &report.tail_repairs {
        writeln!(out, "cut a torn tail: {tail}")?;
    }
    if report.log_repairs.is_empty() {
        writeln!(out, "no damage found in the log")
    } else {
        writeln!(
            out,
            "{} damaged range(s), {quarantined} bytes moved to quarantine; {lost} log record(s) \
             lost; {} removal(s) re-applied; indexes rebuilt",
            report.log_repairs.len(),
            report.removals_reapplied
        )
    }
}

fn write_stats(
    out: &mut impl Write,
    store: &EventStore,
    stats: &megalith::StoreStats,
    json: bool,
) -> std::io::Result<()> {
    let index_total: u64 = stats.index_bytes.values().sum();
    if json {
        let by_kind: serde_json::Map<String, serde_json::Value> = stats
            .events_by_kind
            .iter()
            .map(|(k, n)| (k.to_string(), (*n).into()))
            .collect();
        let indexes: serde_json::Map<String, serde_json::Value> = stats
            .index_bytes
            .iter()
            .map(|(name, bytes)| {
                let entries = stats.index_entries.get(name).copied().unwrap_or(0);
                (
                    name.to_string(),
                    serde_json::json!({ "bytes": bytes, "entries": entries }),
                )
            })
            .collect();
        let doc = serde_json::json!({
            "events": stats.events,
            "shards": store.shard_count(),
            "search_index": store.search_index(),
            "analytics": store.analytics().is_some(),
            "events_by_kind": by_kind,
            "log": { "segments": stats.log_segments, "bytes": stats.log_bytes },
            "indexes": indexes,
            "index_bytes": index_total,
            "index_runs": stats.index_runs,
        });
        return writeln!(out, "{doc}");
    }
    writeln!(out, "events          {}", stats.events)?;
    writeln!(out, "shards          {}", store.shard_count())?;
    writeln!(
        out,
        "search index    {}",
        if store.search_index() { "on" } else { "off" }
    )?;
    writeln!(
        out,
        "analytics       {}",
        if store.analytics().is_some() {
            "on"
        } else {
            "off"
        }
    )?;
    writeln!(out, "by kind")?;
    for (kind, n) in &stats.events_by_kind {
        writeln!(out, "  {kind:>6}  {n}")?;
    }
    writeln!(
        out,
        "log             {} in {} segment(s)",
        human_bytes(stats.log_bytes),
        stats.log_segments
    )?;
    writeln!(
        out,
        "indexes         {} ({} run file(s) of their levels)",
        human_bytes(index_total),
        stats.index_runs
    )?;
    for (name, bytes) in &stats.index_bytes {
        let entries = stats.index_entries.get(name).copied().unwrap_or(0);
        writeln!(
            out,
            "  {name:<17} {:>10}  {entries} entries",
            human_bytes(*bytes)
        )?;
    }
    Ok(())
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

pub(crate) fn durability(arg: DurabilityArg) -> Durability {
    match arg {
        DurabilityArg::Always => Durability::Always,
        DurabilityArg::Batch => Durability::Batch(std::time::Duration::from_millis(100)),
        DurabilityArg::Never => Durability::Never,
    }
}

/// `on` or `off`, for flags that switch a feature.
pub(crate) fn on_off(value: &str) -> Result<bool, String> {
    match value {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(format!("expected `on` or `off`, not `{other}`")),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap checks a command's definition only when it is parsed: every
    /// subcommand's, at once.
    #[test]
    fn every_command_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
