//! `megalith generate`: writes a seeded, realistic stream of signed events as JSONL
//! (`megalith::datagen`), so that tests, benchmarks and every peer of a comparison load the
//! same file.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use megalith::datagen::{Follows, GenConfig, Generator, write_jsonl};

use super::GenerateArgs;
use crate::output::{Output, errln};

/// Events drafted, then signed in parallel, per round. The output does not depend on it.
const ROUND: u64 = 32_768;

/// Counts the bytes that pass through, for the summary.
struct Counting<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

pub(crate) fn run(args: &GenerateArgs) -> Result<ExitCode, String> {
    if args.authors == 0 {
        return Err("--authors must be at least 1".to_string());
    }
    let threads = match args.threads {
        Some(0) => return Err("--threads must be at least 1".to_string()),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, usize::from),
    };
    let path = args.out.as_deref().filter(|path| *path != Path::new("-"));
    let sink = match path {
        Some(path) => Output::file(
            File::create(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?,
        ),
        None => Output::stdout(),
    };
    let mut out = Counting {
        inner: sink,
        bytes: 0,
    };
    let started = Instant::now();
    let defaults = GenConfig::default();
    let mut generator = Generator::new(GenConfig {
        seed: args.seed,
        authors: args.authors,
        start_time: args.start_time.unwrap_or(defaults.start_time),
        relays: (!args.relays.is_empty()).then(|| args.relays.clone()),
        follows: if args.follows == "uniform" {
            Follows::Uniform
        } else {
            Follows::Popular
        },
        ..defaults
    });
    // Drawn only when stderr is a terminal.
    let progress = ProgressBar::new(args.count).with_style(
        ProgressStyle::with_template("generating [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .map_err(|e| e.to_string())?
            .progress_chars("=> "),
    );
    let mut written = 0;
    let result = loop {
        // `megalith generate | head` closes the pipe early: stop quietly.
        if written == args.count || !out.inner.is_open() {
            break out.flush();
        }
        let round = (args.count - written).min(ROUND);
        let events = generator.batch(round as usize, threads);
        if let Err(e) = write_jsonl(&events, &mut out) {
            break Err(e);
        }
        written += round;
        progress.set_position(written);
    };
    progress.finish_and_clear();
    result.map_err(|e| format!("writing output: {e}"))?;
    if !out.inner.is_open() {
        // Fewer events than asked for: no summary.
        return Ok(ExitCode::SUCCESS);
    }
    if !args.quiet {
        let seconds = started.elapsed().as_secs_f64();
        let stats = generator.stats();
        errln!(
            "generated {} event(s), {}, in {seconds:.1} s ({:.0}/s) on {threads} thread(s)",
            stats.events,
            crate::human_bytes(out.bytes),
            stats.events as f64 / seconds.max(1e-9),
        );
        for (kind, n) in &stats.by_kind {
            errln!(
                "  kind {kind:>5}  {n:>10}  {:>5.2}%",
                100.0 * *n as f64 / stats.events.max(1) as f64
            );
        }
        errln!(
            "  {} replace an earlier version, {} are deleted by a later kind 5: a store keeps {}",
            stats.replacements,
            stats.deleted,
            stats.expected_stored()
        );
    }
    Ok(ExitCode::SUCCESS)
}
