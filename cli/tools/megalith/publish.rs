//! `megalith publish`: send events to other relays through the relay pool.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use megalith::{Event, EventId};
use megalith_ingest::RelayUrl;
use megalith_ingest::pool::{self, PoolConfig, PoolEvent};
use serde::Serialize;

use crate::output::{Output, errln};

#[derive(Args)]
pub(crate) struct PublishArgs {
    /// A relay to publish to (ws:// or wss://); repeat for several.
    #[arg(long = "relay", value_name = "URL", required = true)]
    relays: Vec<String>,
    /// JSONL of signed events (bare, or ["EVENT", event]); `-` reads standard input.
    #[arg(value_name = "FILE", default_value = "-")]
    file: PathBuf,
    /// How long to wait for each relay's OK before counting the event as unanswered.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    timeout: u64,
    /// Events in flight at once.
    #[arg(long, value_name = "N", default_value_t = 64)]
    window: usize,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Default, Serialize)]
struct RelayTally {
    accepted: u64,
    refused: u64,
    unanswered: u64,
    /// The first few refusals, with the relay's message.
    refusals: Vec<String>,
}

pub(crate) fn run(args: &PublishArgs) -> Result<ExitCode, String> {
    let relays = args
        .relays
        .iter()
        .map(|r| RelayUrl::parse(r))
        .collect::<Result<Vec<_>, _>>()?;
    let events = read_events(&args.file)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let wait = Duration::from_secs(args.timeout.max(1));
    let window = args.window.max(1);
    let tallies = runtime.block_on(async {
        let (pool, pool_task) = pool::start(PoolConfig::default());
        let mut tallies: BTreeMap<String, RelayTally> = relays
            .iter()
            .map(|r| (r.to_string(), RelayTally::default()))
            .collect();
        for chunk in events.chunks(window) {
            let mut waiting = Vec::new();
            for event in chunk {
                match pool.publish(relays.clone(), event.clone()).await {
                    Ok(answers) => waiting.push((event.id, answers)),
                    Err(e) => return Err(e.to_string()),
                }
            }
            for (id, answers) in waiting {
                collect(id, answers, &relays, wait, &mut tallies).await;
            }
        }
        pool.shutdown().await;
        let _ = pool_task.await;
        Ok(tallies)
    })?;
    runtime.shutdown_timeout(Duration::from_secs(2));
    let failed = tallies.values().any(|t| t.refused + t.unanswered > 0);
    if args.json {
        let mut out = Output::stdout();
        let summary = serde_json::json!({ "events": events.len(), "relays": tallies });
        writeln!(out, "{summary}")
            .and_then(|()| out.finish())
            .map_err(|e| format!("writing the summary: {e}"))?;
    } else {
        errln!("publish: {} events", events.len());
        for (relay, t) in &tallies {
            errln!(
                "{relay}: {} accepted, {} refused, {} unanswered",
                t.accepted,
                t.refused,
                t.unanswered
            );
            for refusal in &t.refusals {
                errln!("  {refusal}");
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Waits for each relay's answer to one event.
async fn collect(
    id: EventId,
    mut answers: tokio::sync::mpsc::Receiver<PoolEvent>,
    relays: &[RelayUrl],
    wait: Duration,
    tallies: &mut BTreeMap<String, RelayTally>,
) {
    let mut pending: Vec<&RelayUrl> = relays.iter().collect();
    let deadline = tokio::time::Instant::now() + wait;
    while !pending.is_empty() {
        let Ok(Some(answer)) = tokio::time::timeout_at(deadline, answers.recv()).await else {
            break;
        };
        if let PoolEvent::Ok {
            relay,
            accepted,
            message,
            ..
        } = answer
        {
            pending.retain(|r| **r != relay);
            let tally = tallies.entry(relay.to_string()).or_default();
            if accepted {
                tally.accepted += 1;
            } else {
                tally.refused += 1;
                if tally.refusals.len() < 5 {
                    tally.refusals.push(format!("{}: {message}", id.to_hex()));
                }
            }
        }
    }
    for relay in pending {
        tallies.entry(relay.to_string()).or_default().unanswered += 1;
    }
}

/// Every event of the file; a line that holds none is an error naming it.
fn read_events(path: &PathBuf) -> Result<Vec<Event>, String> {
    let name = path.display().to_string();
    let reader: Box<dyn BufRead> = if name == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let file = std::fs::File::open(path).map_err(|e| format!("cannot open {name}: {e}"))?;
        Box::new(std::io::BufReader::new(file))
    };
    let mut events = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| format!("{name}:{}: {e}", n + 1))?;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("{name}:{}: not JSON: {e}", n + 1))?;
        let event = match &value {
            serde_json::Value::Array(items)
                if items.first().and_then(|v| v.as_str()) == Some("EVENT") =>
            {
                items.last().cloned().unwrap_or_default()
            }
            _ => value,
        };
        let event =
            Event::from_json(&event.to_string()).map_err(|e| format!("{name}:{}: {e}", n + 1))?;
        event
            .verify()
            .map_err(|e| format!("{name}:{}: {e}", n + 1))?;
        events.push(event);
    }
    Ok(events)
}
