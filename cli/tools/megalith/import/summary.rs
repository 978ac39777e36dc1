//! What an import did, counted as it goes, and the summary printed at its
//! end: always, also when a store error or an unreadable input stopped it,
//! and then with the line to resume from.

use std::collections::BTreeMap;

/// Counts of everything the import saw.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// Lines read, blank ones included, not counting `skipped_lines`.
    pub(crate) lines: u64,
    /// Lines passed over unread (`--skip-lines`).
    pub(crate) skipped_lines: u64,
    /// Lines that held something: an event or a refused line.
    pub(crate) read: u64,
    /// Lines refused, when parsed or by the store.
    pub(crate) invalid: u64,
    /// Events in the batches the store accepted (whatever their outcome).
    pub(crate) inserted: u64,
    /// Each outcome (`stored`, `replaced`, `duplicate`, ...) and each reason
    /// for a refusal, by its code.
    pub(crate) outcomes: BTreeMap<&'static str, u64>,
}

impl Tally {
    pub(crate) fn count(&mut self, label: &'static str) {
        *self.outcomes.entry(label).or_default() += 1;
    }

    fn outcome(&self, label: &str) -> u64 {
        self.outcomes.get(label).copied().unwrap_or(0)
    }

    /// Events now in the store: stored or replacing an older version.
    pub(crate) fn stored(&self) -> u64 {
        self.outcome("stored") + self.outcome("replaced")
    }
}

/// Why and where an import stopped before the end of its input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stop {
    /// The input the first line not imported is in, as named on the command line.
    pub(crate) file: String,
    /// The first line of `file` not imported: everything before it was
    /// stored or refused; nothing from it on was.
    pub(crate) resume_line: u64,
    /// `file` and the inputs after it: what a resumed run reads.
    pub(crate) files: Vec<String>,
    pub(crate) error: String,
}

impl Stop {
    /// The `--skip-lines` that resumes at `resume_line`.
    pub(crate) fn skip_lines(&self) -> u64 {
        self.resume_line.saturating_sub(1)
    }
}

/// Everything the summary reports.
pub(crate) struct Summary<'a> {
    pub(crate) tally: &'a Tally,
    pub(crate) stop: Option<&'a Stop>,
    /// Closing the store failed (after the run itself ended).
    pub(crate) close_error: Option<&'a str>,
    pub(crate) seconds: f64,
}

impl Summary<'_> {
    pub(crate) fn json(&self) -> serde_json::Value {
        let outcomes: serde_json::Map<String, serde_json::Value> = self
            .tally
            .outcomes
            .iter()
            .map(|(k, v)| (k.to_string(), (*v).into()))
            .collect();
        let stopped = self.stop.map(|stop| {
            serde_json::json!({
                "file": stop.file,
                "resume_line": stop.resume_line,
                "skip_lines": stop.skip_lines(),
                "files": stop.files,
                "error": stop.error,
            })
        });
        serde_json::json!({
            "lines": self.tally.lines,
            "skipped_lines": self.tally.skipped_lines,
            "read": self.tally.read,
            "stored": self.tally.stored(),
            "invalid": self.tally.invalid,
            "outcomes": outcomes,
            "seconds": self.seconds,
            "stopped": stopped,
            "close_error": self.close_error,
        })
    }

    /// The summary as text, one line of counts and one line per outcome.
    pub(crate) fn text(&self) -> String {
        let tally = self.tally;
        let mut text = format!(
            "read {} line(s) in {:.2} s ({:.0}/s): {} stored, {} invalid",
            tally.lines,
            self.seconds,
            tally.lines as f64 / self.seconds.max(1e-9),
            tally.stored(),
            tally.invalid
        );
        if tally.skipped_lines > 0 {
            text.push_str(&format!(
                "; skipped the first {} line(s)",
                tally.skipped_lines
            ));
        }
        for (label, n) in &tally.outcomes {
            text.push_str(&format!("\n  {label:<14} {n}"));
        }
        text
    }

    /// Where the run stopped and how to resume it; `None` if it did not stop.
    pub(crate) fn resume_advice(&self) -> Option<String> {
        let stop = self.stop?;
        Some(format!(
            "stopped at {}:{}: {}\nlines from {}:{} on were not imported; to resume, \
             run the same command with --skip-lines {} on {}",
            stop.file,
            stop.resume_line,
            stop.error,
            stop.file,
            stop.resume_line,
            stop.skip_lines(),
            stop.files.join(" "),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopped_run_says_where_to_resume_in_text_and_json() {
        let mut tally = Tally {
            lines: 7,
            read: 6,
            invalid: 1,
            ..Tally::default()
        };
        for label in [
            "stored",
            "stored",
            "replaced",
            "duplicate",
            "superseded",
            "binary",
        ] {
            tally.count(label);
        }
        let stop = Stop {
            file: "a.jsonl".into(),
            resume_line: 8,
            files: vec!["a.jsonl".into(), "b.jsonl".into()],
            error: "storing events: disk full".into(),
        };
        let summary = Summary {
            tally: &tally,
            stop: Some(&stop),
            close_error: None,
            seconds: 1.0,
        };
        let text = summary.text();
        assert!(text.starts_with("read 7 line(s) in 1.00 s"), "{text}");
        assert!(text.contains("3 stored, 1 invalid"), "{text}");
        assert!(text.contains("\n  superseded     1"), "{text}");
        let advice = summary.resume_advice().unwrap();
        assert!(
            advice.starts_with("stopped at a.jsonl:8: storing events: disk full\n"),
            "{advice}"
        );
        assert!(
            advice.contains("--skip-lines 7 on a.jsonl b.jsonl"),
            "{advice}"
        );
        let json = summary.json();
        assert_eq!(json["stored"], 3);
        assert_eq!(json["outcomes"]["binary"], 1);
        assert_eq!(json["stopped"]["resume_line"], 8);
        assert_eq!(json["stopped"]["skip_lines"], 7);
        assert_eq!(json["stopped"]["files"][1], "b.jsonl");

        let done = Summary {
            stop: None,
            ..summary
        };
        assert!(done.resume_advice().is_none());
        assert_eq!(done.json()["stopped"], serde_json::Value::Null);
    }
}
