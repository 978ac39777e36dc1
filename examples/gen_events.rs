//! Writes N signed events as JSONL on stdout, for profiling and bulk-import
//! measurements: 70% kind 1 notes (one `t` tag), 30% kind 7 reactions to
//! earlier notes, from 2,000 authors, one second apart. Deterministic.
//!
//! `cargo run --release --example gen_events -- 100000 > events.jsonl`

use std::io::{BufWriter, Write};

use megalith::Keys;

fn main() -> std::io::Result<()> {
    match generate() {
        // `gen_events N | head` closes the pipe early: not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

fn generate() -> std::io::Result<()> {
    let count: u64 = match std::env::args().nth(1).map(|n| n.parse()) {
        Some(Ok(n)) => n,
        _ => {
            eprintln!("usage: gen_events COUNT > events.jsonl");
            std::process::exit(2);
        }
    };
    let keys: Vec<Keys> = (0..2000).map(|i| Keys::from_seed(10_000 + i)).collect();
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut targets: Vec<(String, String)> = Vec::new();
    let mut state = 7u64;
    for i in 0..count {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let author = &keys[(state >> 33) as usize % keys.len()];
        let created_at = 1_700_000_000 + i;
        let event = if i > 100 && (state >> 20) % 10 < 3 {
            let (id, pubkey) = &targets[(state >> 40) as usize % targets.len()];
            let tags = vec![
                vec!["e".into(), id.clone()],
                vec!["p".into(), pubkey.clone()],
            ];
            author.sign(created_at, 7, tags, "+".into())
        } else {
            let tags = vec![vec!["t".into(), "nostr".into()]];
            let event = author.sign(created_at, 1, tags, format!("note number {i} about things"));
            targets.push((event.id.to_hex(), event.pubkey.to_hex()));
            event
        };
        writeln!(out, "{}", event.to_json())?;
    }
    out.flush()
}
