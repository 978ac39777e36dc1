//! A connection's outbound queue, bounded in bytes. The broadcaster pushes
//! live events without ever waiting: a client so far behind that its queue
//! would pass the bound is marked overflowed and disconnected. The
//! connection's own replies (stored events, OK, EOSE...) wait for room
//! instead, so a client that reads gets everything it asked for.

use std::collections::VecDeque;

use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

#[derive(Debug, Default)]
struct Queue {
    frames: VecDeque<String>,
    bytes: usize,
    /// Too slow: the writer stops and the connection closes.
    overflowed: bool,
    /// The connection is closing (with this close code and reason): pushes
    /// are dropped, the writer sends what is queued, then the close frame.
    closed: Option<(u16, &'static str)>,
}

#[derive(Debug)]
pub struct Outbox {
    queue: Mutex<Queue>,
    max_bytes: usize,
    /// How long a reply may wait for room before the client counts as
    /// gone (it stopped reading mid-answer).
    max_wait: Duration,
    /// Wakes the writer (something queued, or overflow/close).
    ready: Notify,
    /// Wakes a reply waiting for room.
    room: Notify,
    /// Wakes a writer stuck on a client that does not read (overflow).
    abort: Notify,
}

/// What the writer gets from [`Outbox::take`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Frames were moved out.
    Frames,
    /// Nothing left: send this close frame and stop.
    Close(u16, &'static str),
    /// Too slow: stop now.
    Overflowed,
}

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// The queue would pass its bound: the connection is now overflowed.
    Overflowed,
    /// The connection is closing; nothing was queued.
    Closed,
}

impl Outbox {
    pub fn new(max_bytes: usize, max_wait: Duration) -> Outbox {
        Outbox {
            queue: Mutex::new(Queue::default()),
            max_bytes,
            max_wait,
            ready: Notify::new(),
            room: Notify::new(),
            abort: Notify::new(),
        }
    }

    /// Queues a frame if the bound allows, never waiting (the broadcaster).
    pub fn push(&self, frame: String) -> Pushed {
        let mut queue = self.queue.lock();
        if queue.closed.is_some() || queue.overflowed {
            return Pushed::Closed;
        }
        if queue.bytes + frame.len() > self.max_bytes {
            drop(queue);
            self.overflow();
            return Pushed::Overflowed;
        }
        queue.bytes += frame.len();
        queue.frames.push_back(frame);
        drop(queue);
        self.ready.notify_one();
        Pushed::Queued
    }

    /// Queues a reply once the queue is at most half full (a single frame
    /// larger than that waits for an empty queue). Returns false if the
    /// connection closed meanwhile, or if no room came within `max_wait`
    /// (the connection is then marked overflowed).
    pub async fn send(&self, frame: String) -> bool {
        let deadline = tokio::time::Instant::now() + self.max_wait;
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let mut queue = self.queue.lock();
                if queue.closed.is_some() || queue.overflowed {
                    return false;
                }
                if queue.bytes == 0 || queue.bytes + frame.len() <= self.max_bytes / 2 {
                    queue.bytes += frame.len();
                    queue.frames.push_back(frame);
                    drop(queue);
                    self.ready.notify_one();
                    return true;
                }
            }
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                self.overflow();
                return false;
            }
        }
    }

    /// Marks the connection too slow: everything queued is dropped and the
    /// writer stops at once.
    pub fn overflow(&self) {
        let mut queue = self.queue.lock();
        queue.overflowed = true;
        queue.frames.clear();
        queue.bytes = 0;
        drop(queue);
        self.ready.notify_one();
        self.room.notify_waiters();
        self.abort.notify_waiters();
    }

    /// Moves every queued frame into `out`, waiting until there is one.
    pub async fn take(&self, out: &mut Vec<String>) -> Take {
        loop {
            let ready = self.ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            {
                let mut queue = self.queue.lock();
                if queue.overflowed {
                    return Take::Overflowed;
                }
                if !queue.frames.is_empty() {
                    out.extend(queue.frames.drain(..));
                    return Take::Frames;
                }
                if let Some((code, reason)) = queue.closed {
                    return Take::Close(code, reason);
                }
            }
            ready.await;
        }
    }

    /// Resolves once the connection is marked too slow.
    pub async fn overflowed_wait(&self) {
        loop {
            let abort = self.abort.notified();
            tokio::pin!(abort);
            abort.as_mut().enable();
            if self.queue.lock().overflowed {
                return;
            }
            abort.await;
        }
    }

    /// The writer sent `bytes` of what it took.
    pub fn sent(&self, bytes: usize) {
        let mut queue = self.queue.lock();
        queue.bytes = queue.bytes.saturating_sub(bytes);
        drop(queue);
        self.room.notify_waiters();
    }

    pub fn overflowed(&self) -> bool {
        self.queue.lock().overflowed
    }

    /// The writer stopped (the socket failed): nothing more can be sent,
    /// and a reply waiting for room gives up at once.
    pub fn writer_gone(&self) {
        let mut queue = self.queue.lock();
        queue.closed.get_or_insert((1000, ""));
        queue.frames.clear();
        queue.bytes = 0;
        drop(queue);
        self.room.notify_waiters();
    }

    /// No more frames: the writer sends what is queued, then a close frame
    /// with this code and reason, and stops.
    pub fn close(&self, code: u16, reason: &'static str) {
        self.queue.lock().closed.get_or_insert((code, reason));
        self.ready.notify_one();
        self.room.notify_waiters();
    }
}
