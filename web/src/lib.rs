//! megalith-web, the feed pages (issue 15, docs/web.md): a person pastes an
//! npub and sees their follows' posts, server-rendered, updated while the
//! ingester's feed job fetches them. It uses the engine's public API and
//! the ingester's `FeedJobs`; the relay serves its routes without knowing
//! them (`megalith serve` wires the two in `cli`).
//!
//! Layout: [`Web`] holds the store, the jobs and the limits; [`router`]
//! gives the routes (`routes`, what they ask checked in `request`); `read`
//! is the timeline query, `page` the
//! templates, `text` and `profile` what a post becomes, `banner` a job's
//! status in words, `assets` the inline style, script and CSP, `limit` the
//! per-address limits, `events` the Server-Sent Events stream.

pub mod api;
mod assets;
mod banner;
mod events;
mod limit;
mod page;
mod profile;
mod read;
mod request;
mod routes;
mod text;

use std::sync::Arc;
use std::time::Duration;

use megalith::EventStore;
use megalith_ingest::FeedJobs;

pub use api::{ApiConfig, api_router};
pub use banner::{Banner, banner};
pub use page::{Mode, PostView};
pub use profile::Profile;
pub use read::{Cursor, Page, feed_authors, page as read_page};
pub use routes::{home_response, router};

/// What [`home_response`] returns (axum's response type).
pub use axum::response::Response;

/// The feed pages' settings (`[web]` in `serve`'s config).
#[derive(Debug, Clone)]
pub struct WebConfig {
    /// `/start` requests one address may make at once...
    pub start_burst: u32,
    /// ...and one more each time this passes.
    pub start_every: Duration,
    /// `/events` streams open at once, in all...
    pub max_streams: usize,
    /// ...and per address.
    pub max_streams_per_address: usize,
    /// A stream ends after this long (the browser reconnects if the job
    /// still runs).
    pub stream_for: Duration,
    /// How often a stream looks for new posts.
    pub tick: Duration,
    /// Follows read from a contact list.
    pub max_follows: usize,
    /// Posts on a page when `limit` is not given, and the most it may ask.
    pub default_limit: usize,
    pub max_limit: usize,
}

impl Default for WebConfig {
    fn default() -> WebConfig {
        WebConfig {
            start_burst: 10,
            start_every: Duration::from_secs(6),
            max_streams: 256,
            max_streams_per_address: 8,
            stream_for: Duration::from_secs(600),
            tick: Duration::from_millis(600),
            max_follows: 2_000,
            default_limit: 50,
            max_limit: 200,
        }
    }
}

/// What the pages read and start.
#[derive(Debug)]
pub struct Web {
    store: Arc<EventStore>,
    jobs: Arc<FeedJobs>,
    config: WebConfig,
    limits: limit::Limits,
    /// Set when the server stops: open `/events` streams end (a server
    /// waits for its open responses before it exits).
    stopping: tokio::sync::watch::Sender<bool>,
}

impl Web {
    pub fn new(store: Arc<EventStore>, jobs: Arc<FeedJobs>, config: WebConfig) -> Arc<Web> {
        Arc::new(Web {
            limits: limit::Limits::new(&config),
            store,
            jobs,
            config,
            stopping: tokio::sync::watch::channel(false).0,
        })
    }

    /// Ends every open `/events` stream, and those opened from now on at
    /// once: call it when the server starts shutting down.
    pub fn shutdown(&self) {
        self.stopping.send_replace(true);
    }
}
