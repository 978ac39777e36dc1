//! `megalith sync`: NIP-77 negentropy sync of the store with one relay
//! (megalith_ingest::sync).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use megalith::{EventStore, Filter};
use megalith_ingest::RelayUrl;
use megalith_ingest::sync::{self, Direction, SyncOptions, SyncReport};

use crate::RecoveryArg;
use crate::output::{Output, errln};

#[derive(Args)]
pub(crate) struct SyncArgs {
    /// The relay to sync with (ws:// or wss://); it must speak NIP-77.
    #[arg(value_name = "URL")]
    url: String,
    /// The store's data directory (created if missing).
    #[arg(long, value_name = "DIR", default_value = "./megalith-data")]
    data: PathBuf,
    /// The NIP-01 filter whose events are reconciled; a "limit" keeps the
    /// newest that many on each side.
    #[arg(long, value_name = "JSON", default_value = "{}")]
    filter: String,
    /// Which way events go: `down` fetches what the relay has and the
    /// store lacks, `up` publishes what the store has and the relay lacks,
    /// `both` does both.
    #[arg(long = "dir", value_name = "down|up|both", default_value = "down", value_parser = Direction::parse)]
    direction: Direction,
    /// Reconcile only: print how many events differ each way, move none.
    #[arg(long)]
    dry_run: bool,
    /// Largest negentropy message sent, in bytes before hex (at least 4096).
    #[arg(long, value_name = "BYTES", default_value_t = 60_000)]
    frame_bytes: u64,
    /// Seconds to wait for any answer from the relay before giving up.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    timeout: u64,
    /// What opening does when the log does not end cleanly (as for import).
    #[arg(
        long,
        value_enum,
        value_name = "MODE",
        default_value = "tolerate-torn-tail"
    )]
    recovery: RecoveryArg,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: &SyncArgs) -> Result<ExitCode, String> {
    let url = RelayUrl::parse(&args.url)?;
    let filter = Filter::from_json(&args.filter).map_err(|e| format!("--filter: {e}"))?;
    if args.frame_bytes < 4_096 {
        return Err(format!(
            "--frame-bytes must be at least 4096, got {}",
            args.frame_bytes
        ));
    }
    let options = SyncOptions {
        direction: args.direction,
        frame_bytes: args.frame_bytes,
        timeout: Duration::from_secs(args.timeout.max(1)),
        dry_run: args.dry_run,
        ..SyncOptions::default()
    };
    let store = crate::with_replay_progress(EventStore::builder(&args.data))
        .recovery_mode(args.recovery.mode())
        .open()
        .map_err(|e| format!("cannot open {}: {e}", args.data.display()))?;
    crate::report_recovery(&store);
    let store = Arc::new(store);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let result = runtime.block_on(async {
        tokio::select! {
            result = sync::sync(Arc::clone(&store), &url, filter, &options) => result,
            () = crate::serve::shutdown_signal() => {
                Err("interrupted; what was fetched before is stored".to_string())
            }
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    let closed = crate::close_shared(store);
    let report = result.map_err(|e| format!("sync with {url}: {e}"))?;
    closed?;
    if args.json {
        let mut out = Output::stdout();
        let mut value = serde_json::to_value(&report).map_err(|e| e.to_string())?;
        value["relay"] = url.to_string().into();
        value["direction"] = serde_json::to_value(args.direction).map_err(|e| e.to_string())?;
        value["dry_run"] = args.dry_run.into();
        writeln!(out, "{value}")
            .and_then(|()| out.finish())
            .map_err(|e| format!("writing the report: {e}"))?;
    } else {
        for line in summary(&url, &report, args.dry_run).lines() {
            errln!("{line}");
        }
    }
    if report.refused > 0 || report.missing > 0 || report.invalid > 0 {
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn summary(url: &RelayUrl, r: &SyncReport, dry_run: bool) -> String {
    let mut text = format!(
        "sync with {url}: {} events here; {} only here, {} only there \
         ({} rounds, {} bytes sent, {} received, {:.2} s)\n",
        r.local,
        r.only_here,
        r.only_there,
        r.rounds,
        r.reconcile_bytes_sent,
        r.reconcile_bytes_received,
        r.reconcile_seconds
    );
    if dry_run {
        text.push_str("dry run: no events moved\n");
        return text;
    }
    if r.fetched > 0 || r.missing > 0 {
        text.push_str(&format!(
            "down: {} fetched, {} stored, {} duplicate, {} superseded, {} invalid, {} listed but not sent\n",
            r.fetched, r.stored, r.duplicates, r.superseded, r.invalid, r.missing
        ));
    }
    if r.sent > 0 {
        text.push_str(&format!(
            "up: {} sent, {} accepted, {} refused\n",
            r.sent, r.accepted, r.refused
        ));
        for (id, reason) in &r.refusals {
            text.push_str(&format!("  refused {id}: {reason}\n"));
        }
    }
    text.push_str(&format!(
        "in all {} bytes sent, {} received, {:.2} s\n",
        r.bytes_sent, r.bytes_received, r.seconds
    ));
    text
}
