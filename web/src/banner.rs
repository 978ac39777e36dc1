//! A feed job's status in words, for the banner above the posts.

use megalith_ingest::{JobPhase, JobStatus};
use serde::Serialize;

use crate::text::thousands;

/// What the banner says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Banner {
    /// Empty when there is nothing to say (the job is finished).
    pub banner: String,
    /// The job failed: `banner` says why.
    pub failed: bool,
    /// The job will change no more: pages stop updating.
    pub done: bool,
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!(
        "{} {}",
        thousands(n as u64),
        if n == 1 { one } else { many }
    )
}

/// The banner for a job's status (none: no job ran for this person).
pub fn banner(status: Option<&JobStatus>) -> Banner {
    let Some(status) = status else {
        return Banner {
            banner: String::new(),
            failed: false,
            done: true,
        };
    };
    let phase = status.phase.unwrap_or(JobPhase::Queued);
    let relays = status.relays.len();
    let text = match phase {
        JobPhase::Queued => match status.queue_position.unwrap_or(1) {
            0 | 1 => "Waiting for a free slot: you are next.".to_string(),
            n => format!("Waiting for a free slot: {} ahead of you.", n - 1),
        },
        JobPhase::Contacts => "Fetching your contact list…".to_string(),
        JobPhase::Relays => format!(
            "Finding where your {} post…",
            plural(status.follows, "follow", "follows")
        ),
        JobPhase::PostsBackfill => format!(
            "Fetching posts from {} on {}… {} so far.",
            plural(status.follows, "person", "people"),
            plural(relays, "relay", "relays"),
            thousands(status.events_ingested)
        ),
        JobPhase::Live => format!(
            "Up to date: {} from {}. New posts appear as they arrive.",
            plural(status.events_ingested as usize, "post", "posts"),
            plural(relays, "relay", "relays")
        ),
        JobPhase::Finished => String::new(),
        JobPhase::Failed => format!(
            "Could not fetch this feed: {}",
            status
                .last_error
                .as_deref()
                .unwrap_or("the job stopped without saying why")
        ),
    };
    Banner {
        banner: text,
        failed: phase == JobPhase::Failed,
        done: !phase.active(),
    }
}

#[cfg(test)]
mod tests {
    use megalith_ingest::feed::JobRelay;

    use super::*;

    fn status(phase: JobPhase) -> JobStatus {
        JobStatus {
            phase: Some(phase),
            follows: 412,
            events_ingested: 1_284,
            relays: vec![JobRelay::default(); 37],
            ..JobStatus::default()
        }
    }

    #[test]
    fn each_phase_in_words() {
        assert_eq!(
            banner(Some(&status(JobPhase::PostsBackfill))).banner,
            "Fetching posts from 412 people on 37 relays… 1,284 so far."
        );
        assert_eq!(
            banner(Some(&status(JobPhase::Relays))).banner,
            "Finding where your 412 follows post…"
        );
        let mut queued = status(JobPhase::Queued);
        queued.queue_position = Some(4);
        assert_eq!(
            banner(Some(&queued)).banner,
            "Waiting for a free slot: 3 ahead of you."
        );
        let mut failed = status(JobPhase::Failed);
        failed.last_error = Some("no contact list (kind 3)".into());
        let b = banner(Some(&failed));
        assert!(b.failed && b.done);
        assert_eq!(
            b.banner,
            "Could not fetch this feed: no contact list (kind 3)"
        );
        let finished = banner(Some(&status(JobPhase::Finished)));
        assert!(finished.done && finished.banner.is_empty());
        assert!(!banner(Some(&status(JobPhase::Live))).done);
        assert!(banner(None).done);
        let mut one = status(JobPhase::PostsBackfill);
        one.follows = 1;
        one.relays.truncate(1);
        assert_eq!(
            banner(Some(&one)).banner,
            "Fetching posts from 1 person on 1 relay… 1,284 so far."
        );
    }
}
