//! `megalith import`: reads events one per line (a bare event, `["EVENT",
//! event]` or `["EVENT", subscription, event]`), names and skips every line
//! that holds no valid event, and inserts the rest in batches. A value
//! pretty-printed over several lines is refused line by line: joining lines
//! could swallow the valid line after a truncated one.
//!
//! Parsing and storing overlap: while the store takes one batch (on a
//! thread of its own), the next is read and parsed; a batch's outcomes are
//! counted before the one after it is handed over, so at most one batch is
//! in flight and a store error still names the first line not stored.
//!
//! The summary is always printed. A store error (or an input that cannot be
//! read) stops the run at the first line not known to be stored, and the
//! summary names that line and the `--skip-lines` that resumes there.

mod lines;
mod parse;
mod summary;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use megalith::{Durability, Event, EventStore, InsertOutcome, Limits};

use self::lines::{Line, LineReader};
use self::parse::{Parsed, Refusal, parse_line};
use self::summary::{Stop, Summary, Tally};
use super::{ImportArgs, durability};
use crate::output::{Output, errln};

/// One input: a file or standard input, opened.
pub(crate) struct Input {
    /// As named on the command line (`-` for standard input).
    pub(crate) name: String,
    pub(crate) reader: Box<dyn Read>,
    /// Bytes, when known (for the progress bar).
    pub(crate) size: Option<u64>,
}

/// How to import, from the command line.
pub(crate) struct Settings {
    pub(crate) batch: usize,
    pub(crate) trusted: bool,
    pub(crate) quiet: bool,
    pub(crate) limits: Limits,
    /// Lines longer than this are refused without being kept in memory.
    pub(crate) max_line_bytes: usize,
    /// Lines of the first input passed over unread.
    pub(crate) skip_lines: u64,
}

/// The longest line kept for parsing: four times the largest event, at
/// least 1 MiB (an event's limit counts its compact JSON; a line may carry
/// a message around it and some whitespace).
pub(crate) fn max_line_bytes(limits: &Limits) -> usize {
    limits.max_event_bytes.saturating_mul(4).max(1 << 20)
}

pub(crate) fn run(args: &ImportArgs) -> Result<ExitCode, String> {
    if args.batch == 0 {
        return Err("--batch must be at least 1".to_string());
    }
    let limits = Limits {
        max_event_bytes: args.max_event_bytes,
        ..Limits::default()
    };
    // Every input is opened before anything is read: a name that does not
    // open stops the command before it imports anything.
    let inputs = args
        .files
        .iter()
        .map(|path| open_input(path))
        .collect::<Result<Vec<_>, _>>()?;
    let settings = Settings {
        batch: args.batch,
        trusted: args.trusted,
        quiet: args.quiet,
        max_line_bytes: max_line_bytes(&limits),
        limits,
        skip_lines: args.skip_lines,
    };
    let started = Instant::now();
    let mut tally = Tally::default();
    let mut close_error = None;
    let stop = match open_store(args, &settings.limits) {
        Err(error) => Some(Stop {
            file: inputs[0].name.clone(),
            resume_line: args.skip_lines + 1,
            files: inputs.iter().map(|input| input.name.clone()).collect(),
            error,
        }),
        Ok(store) => {
            let stop = import(&store, inputs, &settings, &mut tally);
            if let Err(e) = store.close() {
                close_error = Some(format!("closing the store: {e}"));
            }
            stop
        }
    };
    let summary = Summary {
        tally: &tally,
        stop: stop.as_ref(),
        close_error: close_error.as_deref(),
        seconds: started.elapsed().as_secs_f64(),
    };
    let written = if args.json {
        let mut out = Output::stdout();
        writeln!(out, "{}", summary.json()).and_then(|()| out.finish())
    } else {
        errln!("{}", summary.text());
        Ok(())
    };
    // Last, so that it is what the operator sees.
    if let Some(advice) = summary.resume_advice() {
        for line in advice.lines() {
            errln!("megalith: {line}");
        }
    }
    if let Some(error) = &close_error {
        errln!("megalith: {error}");
        // A clean close syncs every batch; without it, only `always` did.
        if tally.inserted > 0 && !matches!(durability(args.durability), Durability::Always) {
            errln!(
                "megalith: with --durability batch or never, events this run imported may \
                 not all have reached the disk; importing the same input again is safe \
                 (events already stored come back as duplicates)"
            );
        }
    }
    written.map_err(|e| format!("writing the summary: {e}"))?;
    Ok(
        if stop.is_some() || close_error.is_some() || (args.strict && tally.invalid > 0) {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        },
    )
}

fn open_input(path: &Path) -> Result<Input, String> {
    let name = path.display().to_string();
    if path == Path::new("-") {
        return Ok(Input {
            name,
            // Not locked: `-` may be named twice (the second finds it empty).
            reader: Box::new(std::io::stdin()),
            size: None,
        });
    }
    let file = File::open(path).map_err(|e| format!("cannot read {name}: {e}"))?;
    let size = file.metadata().ok().map(|m| m.len());
    Ok(Input {
        name,
        reader: Box::new(file),
        size,
    })
}

fn open_store(args: &ImportArgs, limits: &Limits) -> Result<EventStore, String> {
    // An import writes; it reads little of what the store holds, so the
    // resident pages are not mapped at open (docs/performance.md).
    let mut builder = crate::with_replay_progress(EventStore::builder(&args.store.data))
        .map_resident(false)
        .durability(durability(args.durability))
        .recovery_mode(args.store.recovery.mode())
        .limits(limits.clone());
    if let Some(shards) = args.shards {
        builder = builder.shards(shards);
    }
    if let Some(search) = args.search {
        builder = builder.search(search);
    }
    if let Some(analytics) = args.analytics {
        builder = builder.analytics(analytics);
    }
    let store = builder
        .open()
        .map_err(|e| format!("cannot open {}: {e}", args.store.data.display()))?;
    crate::report_recovery(&store);
    Ok(store)
}

/// Imports every input in order into `store`; stops at the first store
/// error or unreadable input, and says where.
pub(crate) fn import(
    store: &EventStore,
    inputs: Vec<Input>,
    settings: &Settings,
    tally: &mut Tally,
) -> Option<Stop> {
    let names: Vec<String> = inputs.iter().map(|input| input.name.clone()).collect();
    for (i, input) in inputs.into_iter().enumerate() {
        let skip_lines = if i == 0 { settings.skip_lines } else { 0 };
        let mut importer = Importer {
            store,
            settings,
            tally: &mut *tally,
            name: &names[i],
            progress: progress_bar(&input),
            pending_lines: Vec::with_capacity(settings.batch.min(1 << 12)),
            pending: Vec::with_capacity(settings.batch.min(1 << 12)),
            pipe: None,
        };
        let result = importer.input(input.reader, skip_lines);
        importer.progress.finish_and_clear();
        if let Err((resume_line, error)) = result {
            return Some(Stop {
                file: names[i].clone(),
                resume_line,
                files: names[i..].to_vec(),
                error,
            });
        }
    }
    None
}

fn progress_bar(input: &Input) -> ProgressBar {
    // Drawn only when stderr is a terminal.
    let bar = match input.size {
        Some(size) => ProgressBar::new(size).with_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        ),
        None => ProgressBar::new_spinner(),
    };
    bar.set_message(input.name.clone());
    bar
}

/// Imports one input.
struct Importer<'a> {
    store: &'a EventStore,
    settings: &'a Settings,
    tally: &'a mut Tally,
    name: &'a str,
    progress: ProgressBar,
    /// The parsed events waiting for the next batch, with their line numbers.
    pending_lines: Vec<u64>,
    pending: Vec<Event>,
    /// The storing thread, while an input is read.
    pipe: Option<Pipe>,
}

/// What a batch handed to the storing thread comes back as: its vector
/// (emptied, for the next batch) and the store's answer.
type Stored = (Vec<Event>, Result<Vec<InsertOutcome>, megalith::Error>);

/// The storing thread's two ends, and the line numbers of the batch it
/// holds.
struct Pipe {
    batches: std::sync::mpsc::SyncSender<Vec<Event>>,
    stored: std::sync::mpsc::Receiver<Stored>,
    in_flight: Option<Vec<u64>>,
}

impl Importer<'_> {
    /// Reads every line; on a store error or a read error, the line to
    /// resume from (nothing from it on was imported) and the error.
    fn input(&mut self, reader: Box<dyn Read>, skip_lines: u64) -> Result<(), (u64, String)> {
        let store = self.store;
        let trusted = self.settings.trusted;
        std::thread::scope(|scope| {
            let (batches, to_store) = std::sync::mpsc::sync_channel::<Vec<Event>>(0);
            let (done, stored) = std::sync::mpsc::channel::<Stored>();
            scope.spawn(move || {
                for mut events in to_store {
                    let outcome = if trusted {
                        store.insert_trusted(&events)
                    } else {
                        store.insert(&events)
                    };
                    events.clear();
                    if done.send((events, outcome)).is_err() {
                        break;
                    }
                }
            });
            self.pipe = Some(Pipe {
                batches,
                stored,
                in_flight: None,
            });
            let result = self.read(reader, skip_lines);
            // A batch still in flight is counted even after an error
            // (which can only be a read error: a store error ends it).
            let settled = self.settle();
            // Closes the channel: the storing thread ends.
            self.pipe = None;
            result.and(settled.map(drop))
        })
    }

    fn read(&mut self, reader: Box<dyn Read>, skip_lines: u64) -> Result<(), (u64, String)> {
        let reader = BufReader::with_capacity(1 << 20, self.progress.wrap_read(reader));
        let mut lines = LineReader::new(reader, self.settings.max_line_bytes);
        while lines.line_number() < skip_lines {
            match lines.next_line() {
                Ok(Some(_)) => self.tally.skipped_lines += 1,
                Ok(None) => {
                    self.progress.suspend(|| {
                        errln!(
                            "megalith: {} has only {} line(s); --skip-lines {skip_lines} \
                             skipped all of it",
                            self.name,
                            lines.line_number()
                        )
                    });
                    return Ok(());
                }
                // The lines left to skip were meant to be skipped: resume after them.
                Err(e) => return Err(self.read_failed(skip_lines + 1, &e)),
            }
        }
        loop {
            let first_line = lines.line_number() == 0;
            let parsed = match lines.next_line() {
                Ok(Some(Line::Text(mut text))) => {
                    if first_line {
                        // A byte order mark, as some editors write.
                        text = text.strip_prefix(b"\xef\xbb\xbf").unwrap_or(text);
                    }
                    parse_line(text, &self.settings.limits)
                }
                Ok(Some(Line::TooLong { bytes })) => {
                    Parsed::Refused(Refusal::too_long(bytes, self.settings.max_line_bytes))
                }
                Ok(None) => break,
                Err(e) => {
                    let unread = lines.line_number() + 1;
                    // What was read before the error is stored first.
                    self.commit()?;
                    let _ = self.settle()?;
                    return Err(self.read_failed(unread, &e));
                }
            };
            let number = lines.line_number();
            self.tally.lines += 1;
            match parsed {
                Parsed::Blank => {}
                Parsed::Event(event) => {
                    self.tally.read += 1;
                    self.pending_lines.push(number);
                    self.pending.push(event);
                    if self.pending.len() >= self.settings.batch {
                        self.commit()?;
                    }
                }
                Parsed::Refused(refusal) => {
                    self.tally.read += 1;
                    self.refuse(number, &refusal);
                }
            }
        }
        self.commit()
    }

    fn read_failed(&self, line: u64, error: &std::io::Error) -> (u64, String) {
        (line, format!("cannot read {}: {error}", self.name))
    }

    fn refuse(&mut self, line: u64, refusal: &Refusal) {
        self.tally.invalid += 1;
        self.tally.count(refusal.code);
        if !self.settings.quiet {
            self.progress
                .suspend(|| errln!("{}:{line}: {}", self.name, refusal.message));
        }
    }

    /// Hands the pending events to the storing thread, after counting the
    /// outcomes of the batch it held. On a store error, none of that
    /// batch's events counts as stored: the run resumes at the first of
    /// them, and nothing after it was handed over.
    fn commit(&mut self) -> Result<(), (u64, String)> {
        let recycled = self.settle()?;
        if self.pending.is_empty() {
            return Ok(());
        }
        let lines = std::mem::take(&mut self.pending_lines);
        let events = std::mem::replace(&mut self.pending, recycled.unwrap_or_default());
        let Some(pipe) = &mut self.pipe else {
            let outcome = if self.settings.trusted {
                self.store.insert_trusted(&events)
            } else {
                self.store.insert(&events)
            };
            return self.count(lines, outcome);
        };
        let first_line = lines.first().copied().unwrap_or_default();
        pipe.batches.send(events).map_err(|_| {
            (
                first_line,
                "storing events: the storing thread stopped".to_string(),
            )
        })?;
        pipe.in_flight = Some(lines);
        Ok(())
    }

    /// Waits for the batch in flight, if any, and counts its outcomes;
    /// gives back its emptied vector.
    fn settle(&mut self) -> Result<Option<Vec<Event>>, (u64, String)> {
        let Some(pipe) = &mut self.pipe else {
            return Ok(None);
        };
        let Some(lines) = pipe.in_flight.take() else {
            return Ok(None);
        };
        let first_line = lines.first().copied().unwrap_or_default();
        let (events, outcome) = pipe.stored.recv().map_err(|_| {
            (
                first_line,
                "storing events: the storing thread stopped".to_string(),
            )
        })?;
        self.count(lines, outcome)?;
        Ok(Some(events))
    }

    /// Counts a stored batch's outcomes, line by line.
    fn count(
        &mut self,
        lines: Vec<u64>,
        outcome: Result<Vec<InsertOutcome>, megalith::Error>,
    ) -> Result<(), (u64, String)> {
        let first_line = lines.first().copied().unwrap_or_default();
        let outcomes = outcome.map_err(|e| (first_line, format!("storing events: {e}")))?;
        self.tally.inserted += lines.len() as u64;
        for (line, outcome) in lines.iter().zip(outcomes) {
            match outcome {
                InsertOutcome::Invalid(rejection) => self.refuse(*line, &rejection.into()),
                other => self.tally.count(other.label()),
            }
        }
        Ok(())
    }
}
