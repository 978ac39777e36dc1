//! `GET /events`: Server-Sent Events for a timeline's first page while its
//! job runs: `status` (the banner's words and the job's status JSON) when it
//! changes, `posts` (the HTML of posts not sent before, for the page's
//! script to place) when the store has new ones. Ends when the job is done
//! (after a last status) or after `stream_for`.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use megalith::EventId;
use megalith_ingest::JobStatus;
use tokio::sync::watch;

use crate::Web;
use crate::banner::banner;
use crate::limit::StreamSlot;
use crate::page;
use crate::read;
use crate::request::{Asked, Params, json_error};

struct Stream {
    web: Arc<Web>,
    asked: Asked,
    _slot: StreamSlot,
    changes: Option<watch::Receiver<JobStatus>>,
    stopping: watch::Receiver<bool>,
    queue: VecDeque<SseEvent>,
    sent: HashSet<EventId>,
    last_status: Option<Option<JobStatus>>,
    /// The store's write mark at the last read: no read while it stays
    /// the same.
    read_at: Option<u64>,
    started: Instant,
    first: bool,
    ended: bool,
}

pub(crate) async fn stream(
    State(web): State<Arc<Web>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    Query(params): Query<Params>,
) -> Response {
    let asked = match params.check(&web) {
        Ok(asked) => asked,
        Err(message) => return json_error(StatusCode::BAD_REQUEST, &message),
    };
    let Some(slot) = web.limits.stream(client.ip()) else {
        return json_error(
            StatusCode::TOO_MANY_REQUESTS,
            "too many update streams open; the page still works by reloading",
        );
    };
    let state = Stream {
        changes: web.jobs.watch(&asked.person),
        stopping: web.stopping.subscribe(),
        web,
        asked,
        _slot: slot,
        queue: VecDeque::new(),
        sent: HashSet::new(),
        last_status: None,
        read_at: None,
        started: Instant::now(),
        first: true,
        ended: false,
    };
    let events = futures_util::stream::unfold(state, |mut state| async move {
        let next = state.next().await?;
        Some((Ok::<_, std::convert::Infallible>(next), state))
    });
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Proxies that buffer (nginx) would hold the updates back.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

impl Stream {
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some(event);
            }
            if self.ended || *self.stopping.borrow() {
                return None;
            }
            if !self.first {
                let tick = tokio::time::sleep(self.web.config.tick);
                let changes = async {
                    match &mut self.changes {
                        Some(changes) => changes.changed().await.is_ok(),
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = tick => {}
                    open = changes => {
                        if !open {
                            self.changes = None;
                        }
                    }
                    _ = self.stopping.changed() => return None,
                }
            }
            self.first = false;
            self.look().await;
        }
    }

    /// Queues what changed since the last look.
    async fn look(&mut self) {
        let status = self.web.jobs.status(&self.asked.person);
        let words = banner(status.as_ref());
        if self.last_status.as_ref() != Some(&status) {
            let body = serde_json::json!({
                "banner": words.banner,
                "failed": words.failed,
                "done": words.done,
                "status": status,
            });
            self.queue
                .push_back(SseEvent::default().event("status").data(body.to_string()));
            self.last_status = Some(status);
        }
        let mark = self.web.store.write_mark();
        if self.read_at != Some(mark) {
            self.read_at = Some(mark);
            let web = Arc::clone(&self.web);
            let (person, mode, limit) = (self.asked.person, self.asked.mode, self.asked.limit);
            let read = tokio::task::spawn_blocking(move || {
                read::page(
                    &web.store,
                    &person,
                    mode,
                    None,
                    limit,
                    web.config.max_follows,
                )
            })
            .await;
            if let Ok(Ok(page)) = read {
                let fresh: Vec<_> = page
                    .posts
                    .into_iter()
                    .filter(|p| self.sent.insert(p.event.id))
                    .collect();
                if !fresh.is_empty() {
                    let html = page::post_items(&fresh, megalith_ingest::stats::now_secs());
                    // A JSON string: no raw line breaks in the event's data.
                    let data = serde_json::Value::String(html.into_string()).to_string();
                    self.queue
                        .push_back(SseEvent::default().event("posts").data(data));
                }
            }
        }
        if words.done || self.started.elapsed() >= self.web.config.stream_for {
            self.ended = true;
        }
    }
}
