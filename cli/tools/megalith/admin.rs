//! The admin socket (docs/server.md, "The admin socket"): `megalith serve`
//! answers `query`, `count`, `stats` and `delete` for the commands of the
//! same name run beside it, which cannot open the store it holds.
//!
//! `DATA/admin.sock`, a Unix socket of mode 0600 (only the store's user
//! may connect). A request is one JSON line: `{"command": "query" |
//! "count" | "stats" | "delete", "filter": "<NIP-01 filter JSON>",
//! "json": bool, "dry_run": bool}`. The answer is JSON lines: `{"out":
//! TEXT}` (what the command prints, in order), then `{"done": true}` or
//! `{"error": MESSAGE}`. The server renders the output as the command
//! would with the store to itself, so both print the same bytes.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use megalith::{EventStore, Filter};
use serde::{Deserialize, Serialize};

use crate::output::Output;

/// The socket's file name in the data directory.
pub(crate) const SOCKET_FILE: &str = "admin.sock";

/// The largest request line.
const MAX_REQUEST: u64 = 1 << 20;

/// At most this many requests are answered at once; more wait to connect.
const MAX_CONNECTIONS: usize = 8;

/// One request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Request {
    pub command: String,
    #[serde(default)]
    pub filter: Option<String>,
    #[serde(default)]
    pub json: bool,
    #[serde(default)]
    pub dry_run: bool,
    /// The data directory as the client named it (`--data`), for the
    /// messages that name it.
    #[serde(default)]
    pub data: Option<String>,
}

/// How long a request may take to arrive, and a write to a client that
/// does not read may block.
const PATIENCE: Duration = Duration::from_secs(10);

/// One line of an answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Reply {
    Out(String),
    Done,
    Error(String),
}

pub(crate) fn socket_path(data: &Path) -> PathBuf {
    data.join(SOCKET_FILE)
}

/// The admin socket of a running server: listens until `stop` is set,
/// then removes the socket file and waits for the requests it answers
/// (they end at their next line once `stop` is set).
pub(crate) struct AdminServer {
    thread: JoinHandle<()>,
}

impl AdminServer {
    /// Binds `DATA/admin.sock` (a socket file left by a server that was
    /// killed is replaced: this process holds the store's lock, so no
    /// other server runs) and answers requests on a thread of its own.
    pub(crate) fn start(
        store: Arc<EventStore>,
        data: &Path,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<AdminServer> {
        let path = socket_path(data);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        // Bound inside a directory only this user can enter, made 0600 and
        // then moved into place: nobody else can connect in between.
        let private = data.join(format!(".admin-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&private);
        std::fs::DirBuilder::new().mode(0o700).create(&private)?;
        let bound = (|| {
            let inside = private.join(SOCKET_FILE);
            let listener = UnixListener::bind(&inside)?;
            std::fs::set_permissions(&inside, std::fs::Permissions::from_mode(0o600))?;
            std::fs::rename(&inside, &path)?;
            Ok::<_, std::io::Error>(listener)
        })();
        let _ = std::fs::remove_dir_all(&private);
        let listener = bound?;
        listener.set_nonblocking(true)?;
        let thread = std::thread::Builder::new()
            .name("megalith-admin".to_string())
            .spawn(move || accept_loop(listener, &path, store, &stop))?;
        Ok(AdminServer { thread })
    }

    /// Waits until the server has stopped (after `stop` was set).
    pub(crate) fn join(self) {
        let _ = self.thread.join();
    }
}

fn accept_loop(
    listener: UnixListener,
    path: &Path,
    store: Arc<EventStore>,
    stop: &Arc<AtomicBool>,
) {
    // Each request's thread, and its connection (shut at a stop, so that a
    // write to a client that does not read ends at once).
    let mut running: Vec<(JoinHandle<()>, UnixStream)> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        running.retain(|(handle, _)| !handle.is_finished());
        if running.len() >= MAX_CONNECTIONS {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        match listener.accept() {
            Ok((stream, _)) => {
                let Ok(kept) = stream.try_clone() else {
                    continue;
                };
                let (store, stop) = (Arc::clone(&store), Arc::clone(stop));
                let spawned = std::thread::Builder::new()
                    .name("megalith-admin-request".to_string())
                    .spawn(move || {
                        if let Err(e) = answer(&store, stream, &stop) {
                            tracing::debug!(error = %e, "an admin request ended early");
                        }
                    });
                match spawned {
                    Ok(handle) => running.push((handle, kept)),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot start a thread for an admin request")
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                tracing::warn!(error = %e, "the admin socket failed to accept");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    let _ = std::fs::remove_file(path);
    for (_, stream) in &running {
        let _ = stream.shutdown(std::net::Shutdown::Both);
    }
    for (handle, _) in running {
        let _ = handle.join();
    }
}

/// Reads one request from `stream` and answers it.
fn answer(store: &EventStore, stream: UnixStream, stop: &AtomicBool) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(PATIENCE))?;
    let line = read_request(&stream);
    let mut out = std::io::BufWriter::new(&stream);
    let mut send = |reply: &Reply| -> std::io::Result<()> {
        let mut text = serde_json::to_string(reply).map_err(std::io::Error::other)?;
        text.push('\n');
        out.write_all(text.as_bytes())
    };
    // One request line per connection: anything after it is refused too.
    let request: Request = match line
        .map_err(|e| e.to_string())
        .and_then(|line| serde_json::from_str(&line).map_err(|e| e.to_string()))
    {
        Ok(request) => request,
        Err(e) => {
            send(&Reply::Error(format!("a malformed admin request: {e}")))?;
            return out.flush();
        }
    };
    match run(store, &request, stop, &mut |text| send(&Reply::Out(text))) {
        Ok(()) => send(&Reply::Done)?,
        Err(message) => send(&Reply::Error(message))?,
    }
    out.flush()
}

/// Reads the request line: at most `MAX_REQUEST` bytes within `PATIENCE`
/// in all (a client that trickles bytes does not keep its thread).
fn read_request(stream: &UnixStream) -> std::io::Result<String> {
    let deadline = std::time::Instant::now() + PATIENCE;
    let mut line = Vec::new();
    let mut buf = [0u8; 4096];
    while !line.contains(&b'\n') {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if line.len() as u64 > MAX_REQUEST {
            return Err(std::io::Error::other(format!(
                "a request line longer than {MAX_REQUEST} bytes"
            )));
        }
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no whole request line within {} s", PATIENCE.as_secs()),
            ));
        }
        stream.set_read_timeout(Some(left))?;
        let n = (&*stream).read(&mut buf)?;
        if n == 0 {
            break;
        }
        line.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(line)
        .map_err(|_| std::io::Error::other("the request is not UTF-8".to_string()))
}

/// Runs `request` on `store`, handing what the command prints to `print`
/// (a failed print, a client gone, ends it).
fn run(
    store: &EventStore,
    request: &Request,
    stop: &AtomicBool,
    print: &mut dyn FnMut(String) -> std::io::Result<()>,
) -> Result<(), String> {
    let filters = || -> Result<Vec<Filter>, String> {
        let text = request.filter.as_deref().unwrap_or("{}");
        Filter::list_from_json(text).map_err(|e| format!("--filter: {e}"))
    };
    let printed = |e: std::io::Error| format!("the client went away: {e}");
    match request.command.as_str() {
        "count" => {
            let n = store.count(&filters()?).map_err(|e| e.to_string())?;
            print(crate::count_output(n, request.json)).map_err(printed)
        }
        "stats" => {
            let stats = store.stats().map_err(|e| e.to_string())?;
            let mut text = Vec::new();
            crate::write_stats(&mut text, store, &stats, request.json).map_err(printed)?;
            print(String::from_utf8(text).map_err(|e| e.to_string())?).map_err(printed)
        }
        "delete" => {
            let filters = filters()?;
            crate::refuse_limit(&filters)?;
            // Named as the client named it, as the command does alone.
            let data = request
                .data
                .as_deref()
                .map_or_else(|| store.path().to_path_buf(), PathBuf::from);
            let report = store
                .purge_until(&filters, |_| false, request.dry_run, stop)
                .map_err(|e| format!("deleting from {}: {e}", data.display()))?;
            print(crate::delete_output(
                &report,
                request.dry_run,
                request.json,
                &data,
            ))
            .map_err(printed)
        }
        "query" => {
            let filters = filters()?;
            // Event JSON is UTF-8: a batch is checked once, as it goes.
            let text = |batch: Vec<u8>| String::from_utf8(batch).map_err(|e| e.to_string());
            let mut batch = Vec::with_capacity(64 << 10);
            let mut failed = None;
            let result = store.query_with(&filters, |event| {
                event.write_json(&mut batch);
                batch.push(b'\n');
                if batch.len() >= 64 << 10 {
                    match text(std::mem::take(&mut batch)) {
                        Ok(lines) => {
                            if let Err(e) = print(lines) {
                                failed = Some(printed(e));
                            }
                        }
                        Err(e) => failed = Some(e),
                    }
                }
                if failed.is_some() || stop.load(Ordering::Relaxed) {
                    return Err(megalith::Error::Closed);
                }
                Ok(())
            });
            if let Some(e) = failed {
                return Err(e);
            }
            if stop.load(Ordering::Relaxed) {
                return Err("the server is stopping".to_string());
            }
            result.map_err(|e| e.to_string())?;
            if batch.is_empty() {
                Ok(())
            } else {
                print(text(batch)?).map_err(printed)
            }
        }
        other => Err(format!("unknown admin command {other:?}")),
    }
}

/// Sends `request` to the server running on the store in `data`, writing
/// what it prints to `out`. `Ok(false)` when no server answers there (no
/// socket, or one a killed server left): the caller opens the store.
pub(crate) fn ask(data: &Path, request: &Request, out: &mut Output) -> Result<bool, String> {
    let path = socket_path(data);
    let stream = match UnixStream::connect(&path) {
        Ok(stream) => stream,
        Err(_) => return Ok(false),
    };
    let talk = |e: std::io::Error| format!("asking the server through {}: {e}", path.display());
    let mut line = serde_json::to_string(request).map_err(|e| e.to_string())?;
    line.push('\n');
    (&stream).write_all(line.as_bytes()).map_err(talk)?;
    let reader = BufReader::new(&stream);
    for line in reader.lines() {
        let line = line.map_err(talk)?;
        match serde_json::from_str::<Reply>(&line) {
            Ok(Reply::Out(text)) => {
                out.write_all(text.as_bytes())
                    .map_err(|e| format!("writing output: {e}"))?;
                if !out.is_open() {
                    // `| head` went away: the server stops when we do.
                    return Ok(true);
                }
            }
            Ok(Reply::Done) => return Ok(true),
            Ok(Reply::Error(message)) => return Err(message),
            Err(e) => return Err(format!("a malformed answer from {}: {e}", path.display())),
        }
    }
    Err(format!(
        "the server behind {} closed the connection before it answered",
        path.display()
    ))
}
