//! `megalith serve` as a process: flags and a config file, the address it
//! logs, /health, SIGTERM shutdown with a clean store, and clear errors for
//! bad settings.
#![cfg(unix)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use megalith::EventStore;
use tokio_tungstenite::tungstenite::Message;

#[path = "../../tests/service/serve.rs"]
mod serve;

fn http_get(addr: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/nostr+json\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn serve_starts_answers_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:1\"\nshards = 3\n[info]\nname = \"test relay\"\n[limits]\nmax_limit = 77\nmax_filters = 9\n",
    )
    .unwrap();
    // The flags override the file's listen address and max_filters.
    let serve::Serving {
        mut child,
        addr,
        mut stderr,
        mut log,
    } = serve::spawn([
        "--config".as_ref(),
        config.as_os_str(),
        "--data".as_ref(),
        data.as_os_str(),
        "--max-filters".as_ref(),
        "11".as_ref(),
    ]);
    let health = http_get(&addr, "/health");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    // The health check a container or a service manager runs.
    let check = |addr: &str| {
        Command::new(env!("CARGO_BIN_EXE_megalith"))
            .args(["health", "--timeout", "5", "--url"])
            .arg(format!("http://{addr}/health"))
            .output()
            .unwrap()
    };
    let healthy = check(&addr);
    assert!(healthy.status.success(), "{healthy:?}");
    let info = http_get(&addr, "/");
    let body = info.split("\r\n\r\n").nth(1).unwrap();
    let doc: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(doc["name"], "test relay");
    assert_eq!(doc["limitation"]["max_limit"], 77);
    assert_eq!(doc["limitation"]["max_filters"], 11);

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    stderr.read_to_string(&mut log).unwrap();
    assert!(exit.success(), "{exit:?}\n{log}");
    assert!(log.contains("store closed cleanly"), "{log}");
    assert!(
        log.contains(concat!(
            "version=\"",
            env!("CARGO_PKG_VERSION"),
            " (commit "
        )),
        "{log}"
    );
    let gone = check(&addr);
    assert!(!gone.status.success());
    assert!(String::from_utf8_lossy(&gone.stderr).contains("/health"));
    let store = EventStore::open(&data).unwrap();
    assert!(!store.recovery_report().unclean_shutdown);
    assert_eq!(store.shard_count(), 3);
}

#[test]
fn bad_settings_are_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.toml");
    for (text, expect) in [
        ("[limits]\nmax_limt = 5\n", "max_limt"),
        ("[limits]\nmax_limit = 0\n", "max_limit"),
        ("durability = \"sometimes\"\n", "sometimes"),
        ("listen = \"nowhere\"\n", "listen"),
        (
            "[[retention.rule]]\nkinds = [\"9-3\"]\nmax_age_days = 5\n",
            "[[retention.rule]] number 1: kind range \"9-3\"",
        ),
        (
            "[[retention.rule]]\nkinds = [1]\nmax_age_days = 0\n",
            "max_age_days 0",
        ),
        ("[retention]\nnever_kinds = [\"zero\"]\n", "never_kinds"),
        ("[retention]\ninterval_secs = 0\n", "interval_secs 0"),
        ("[compaction]\ngarbage_ratio = 1.5\n", "garbage_ratio 1.5"),
        ("[compaction]\ncheck_secs = 0\n", "check_secs 0"),
    ] {
        std::fs::write(&config, text).unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_megalith"))
            .args(["serve", "--config"])
            .arg(&config)
            .arg("--data")
            .arg(dir.path().join("store"))
            .output()
            .unwrap();
        assert!(!output.status.success(), "{text}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expect), "{text}: {stderr}");
        assert!(
            !dir.path().join("store").exists(),
            "{text}: a store was created"
        );
    }
    // Log levels: a misspelt one is an error, not a relay that logs nothing.
    for (flag, env, expect) in [
        (
            "nonsense",
            None,
            "--log \"nonsense\": \"nonsense\" is not a log level",
        ),
        (
            "info,megalith_relay=verbose",
            None,
            "\"verbose\" is not a log level",
        ),
        (
            "info",
            Some("warning"),
            "RUST_LOG \"warning\": \"warning\" is not a log level",
        ),
    ] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_megalith"));
        command
            .args(["serve", "--log", flag, "--data"])
            .arg(dir.path().join("store"));
        match env {
            Some(value) => command.env("RUST_LOG", value),
            None => command.env_remove("RUST_LOG"),
        };
        let output = command.output().unwrap();
        assert!(!output.status.success(), "{flag}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expect), "{flag}: {stderr}");
        assert!(
            !dir.path().join("store").exists(),
            "{flag}: a store was created"
        );
    }
    let missing = Command::new(env!("CARGO_BIN_EXE_megalith"))
        .args(["serve", "--config", "/nonexistent/relay.toml"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/relay.toml"));
    // Port in use: a clear error, after the store opened and closed again.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_megalith"))
        .args(["serve", "--listen", &addr, "--data"])
        .arg(dir.path().join("store2"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot listen on"), "{stderr}");
    let store = EventStore::open(dir.path().join("store2")).unwrap();
    assert!(!store.recovery_report().unclean_shutdown);
}

/// `--rules FILE`: NIP-11 says what they require, SIGHUP reloads them (the
/// process lives on), and a rules file that does not parse stops the start
/// with an error naming the file and the field.
#[test]
fn rules_load_at_start_and_reload_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(&rules, "[auth_required]\nread = true\n").unwrap();
    let serve::Serving {
        mut child,
        addr,
        mut stderr,
        mut log,
    } = serve::spawn([
        "--data".as_ref(),
        dir.path().join("store").as_os_str(),
        "--rules".as_ref(),
        rules.as_os_str(),
    ]);
    let info = http_get(&addr, "/");
    let doc: serde_json::Value =
        serde_json::from_str(info.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(doc["limitation"]["auth_required"], true, "{doc}");
    let status = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let reloaded = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        http_get(&addr, "/metrics").contains("megalith_rules_reloads_total{result=\"ok\"} 1")
    });
    assert!(reloaded, "no reload counted after SIGHUP");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let exit = child.wait().unwrap();
    stderr.read_to_string(&mut log).unwrap();
    assert!(exit.success(), "{exit:?}\n{log}");
    assert!(log.contains("access rules reloaded"), "{log}");

    std::fs::write(&rules, "[write]\nkinds = [\"1-x\"]\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_megalith"))
        .arg("serve")
        .arg("--data")
        .arg(dir.path().join("store"))
        .arg("--rules")
        .arg(&rules)
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("rules.toml") && stderr.contains("write.kinds"),
        "{stderr}"
    );
}

/// SIGTERM, then the exit must be clean; returns the log.
fn stop_cleanly(mut child: std::process::Child, mut stderr: impl Read, mut log: String) -> String {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    stderr.read_to_string(&mut log).unwrap();
    assert!(exit.success(), "{exit:?}\n{log}");
    log
}

/// A GET with the headers given, over HTTP/1.0 (the body ends with the
/// connection).
fn http_get_with(addr: &str, path: &str, headers: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{headers}\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, response)
}

/// The feed pages ride on the relay's address: a browser's `GET /` gets the
/// form, NIP-11 and the WebSocket stay where they were, `/start` is limited
/// per client address (behind a trusted proxy: the forwarded one), an open
/// update stream does not hold up SIGTERM, and `--feed off` takes it all
/// away.
#[test]
fn the_feed_pages_share_the_relays_address_and_its_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        "[feed]\nrelays = [\"ws://127.0.0.1:9\"]\nstart_burst = 2\nstart_every_secs = 600\n",
    )
    .unwrap();
    let serve::Serving {
        child,
        addr,
        stderr,
        log,
    } = serve::spawn([
        "--data".as_ref(),
        data.as_os_str(),
        "--config".as_ref(),
        config.as_os_str(),
        "--trusted-proxy".as_ref(),
        "127.0.0.1/32".as_ref(),
    ]);
    let (status, home) = http_get_with(&addr, "/", "Accept: text/html\r\n");
    assert_eq!(status, 200, "{home}");
    assert!(home.contains("<form action=\"/start\""), "{home}");
    assert!(
        home.to_lowercase()
            .contains("content-security-policy: default-src 'none'")
    );
    let (status, info) = http_get_with(&addr, "/", "Accept: application/nostr+json\r\n");
    assert_eq!(status, 200);
    assert!(info.contains("\"supported_nips\""), "{info}");

    let npub = |seed: u64| {
        megalith::event::nip19::encode_npub(&megalith::event::Keys::from_seed(seed).pubkey())
    };
    let start = |seed: u64, from: &str| {
        http_get_with(
            &addr,
            &format!("/start?npub={}", npub(seed)),
            &format!("X-Forwarded-For: {from}\r\n"),
        )
        .0
    };
    // Two starts per address: the third from 203.0.113.1 is refused, the
    // others' addresses have their own.
    assert_eq!(start(1, "203.0.113.1"), 302);
    assert_eq!(start(2, "203.0.113.1"), 302);
    assert_eq!(start(3, "203.0.113.1"), 429);
    assert_eq!(start(4, "203.0.113.2"), 302);
    assert_eq!(start(5, "2001:db8::7"), 302);

    // A stream left open (the job's relay does not exist: it waits in its
    // first phase for a while).
    let mut stream = TcpStream::connect(&addr).unwrap();
    write!(
        stream,
        "GET /events?npub={} HTTP/1.0\r\nHost: {addr}\r\n\r\n",
        npub(4)
    )
    .unwrap();
    let mut first = [0u8; 64];
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let n = stream.read(&mut first).unwrap();
    let head = String::from_utf8_lossy(&first[..n]).to_string();
    assert!(head.contains(" 200 OK"), "{head}");

    let log = stop_cleanly(child, stderr, log);
    assert!(log.contains("store closed cleanly"), "{log}");

    // --feed off: browsers get the relay's line of text, no pages.
    let serve::Serving {
        child,
        addr,
        stderr,
        log,
    } = serve::spawn([
        "--data".as_ref(),
        data.as_os_str(),
        "--feed".as_ref(),
        "off".as_ref(),
    ]);
    let (_, home) = http_get_with(&addr, "/", "Accept: text/html\r\n");
    assert!(home.contains("a Nostr relay"), "{home}");
    assert!(!home.contains("<form"));
    let (status, _) = http_get_with(&addr, &format!("/timeline?npub={}", npub(1)), "");
    assert_eq!(status, 404);
    stop_cleanly(child, stderr, log);
}

/// An update stream outlives the handshake timeout (which bounds how long
/// a client may take to send its request, not how long a long-lived answer
/// may run): with a 1 s timeout, the stream of a running job is still open
/// after 3 s. (It was cut at the timeout, so a browser reconnected every
/// ten seconds and was sent everything again.)
#[test]
fn an_update_stream_outlives_the_handshake_timeout() {
    // A relay that accepts connections and never answers: the job stays
    // in its first phase.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("ws://{}", silent.local_addr().unwrap());
    let held = std::thread::spawn(move || {
        let mut kept = Vec::new();
        for stream in silent.incoming().take(4).flatten() {
            kept.push(stream);
        }
        std::thread::sleep(Duration::from_secs(30));
    });
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let serve::Serving {
        child,
        addr,
        stderr,
        log,
    } = serve::spawn([
        "--data".as_ref(),
        data.as_os_str(),
        "--relay".as_ref(),
        silent_url.as_ref(),
        "--allow-private-relays".as_ref(),
        "--handshake-timeout-secs".as_ref(),
        "1".as_ref(),
    ]);
    let npub = megalith::event::nip19::encode_npub(&megalith::event::Keys::from_seed(9).pubkey());
    let (status, _) = http_get_with(&addr, &format!("/start?npub={npub}"), "");
    assert_eq!(status, 302);
    let mut stream = TcpStream::connect(&addr).unwrap();
    write!(
        stream,
        "GET /events?npub={npub} HTTP/1.1\r\nHost: {addr}\r\n\r\n"
    )
    .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let started = std::time::Instant::now();
    let mut received = Vec::new();
    while started.elapsed() < Duration::from_secs(3) {
        let mut buf = [0u8; 4096];
        match stream.read(&mut buf) {
            Ok(0) => panic!(
                "the stream ended after {:?}: {}",
                started.elapsed(),
                String::from_utf8_lossy(&received)
            ),
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("the stream failed after {:?}: {e}", started.elapsed()),
        }
    }
    let text = String::from_utf8_lossy(&received);
    assert!(text.contains(" 200 OK"), "{text}");
    assert!(text.contains("event: status"), "{text}");
    drop(stream);
    let log = stop_cleanly(child, stderr, log);
    assert!(log.contains("store closed cleanly"), "{log}");
    drop(held);
}

/// `--analytics on`: the video API rides on the relay's address beside the
/// feed pages, counts what the relay stores (the next answer after `OK`),
/// and the analytics checkpoint written at SIGTERM is used at the next open.
#[test]
fn the_video_api_counts_what_the_relay_stores() {
    use megalith::event::Keys;

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let creator = Keys::from_seed(7);
    let video = creator.sign(
        now - 100,
        34_235,
        vec![
            vec!["d".into(), "clip".into()],
            vec!["title".into(), "A clip".into()],
            vec!["t".into(), "Cats".into()],
        ],
        String::new(),
    );
    let store = EventStore::builder(&data).analytics(true).open().unwrap();
    store.insert(std::slice::from_ref(&video)).unwrap();
    store.close().unwrap();

    let serve::Serving {
        child,
        addr,
        stderr,
        log,
    } = serve::spawn([
        "--data".as_ref(),
        data.as_os_str(),
        "--relay".as_ref(),
        "ws://127.0.0.1:9".as_ref(),
    ]);
    let stats = format!("/api/videos/{}/stats", video.id);
    let (status, body) = http_get_with(&addr, &stats, "");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"reactions\":0"), "{body}");
    assert!(body.contains("\"title\":\"A clip\""), "{body}");

    // A reaction over the relay, then the next answer counts it.
    let reaction = Keys::from_seed(8).sign(
        now,
        7,
        vec![
            vec!["e".into(), video.id.to_hex()],
            vec![
                "a".into(),
                format!("34235:{}:clip", creator.pubkey().to_hex()),
            ],
        ],
        "+".into(),
    );
    publish(&addr, std::slice::from_ref(&reaction));
    let (status, body) = http_get_with(&addr, &stats, "");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"reactions\":1"), "{body}");
    let (status, body) = http_get_with(&addr, "/api/search?tag=cats", "");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&video.id.to_hex()), "{body}");
    // The feed pages are still there.
    let (status, home) = http_get_with(&addr, "/", "Accept: text/html\r\n");
    assert_eq!(status, 200, "{home}");
    assert!(home.contains("<form action=\"/start\""), "{home}");

    let log = stop_cleanly(child, stderr, log);
    assert!(log.contains("video API on"), "{log}");
    let store = EventStore::open(&data).unwrap();
    assert!(
        !store
            .recovery_report()
            .rebuilt_indexes
            .iter()
            .any(|r| r.contains("analytics")),
        "{:?}",
        store.recovery_report()
    );
    let figures = store
        .analytics()
        .expect("the store keeps analytics")
        .read(now)
        .figures(&megalith::analytics::VideoKey::Address {
            kind: 34_235,
            pubkey: creator.pubkey(),
            d: "clip".into(),
        })
        .unwrap();
    assert_eq!(figures.reactions, 1);
}

/// Sends each event to the relay at `addr` and waits for its OK (the
/// relay greets with a NIP-42 challenge first).
fn publish(addr: &str, events: &[megalith::Event]) {
    use futures_util::SinkExt;
    on_socket(addr, |mut ws| async move {
        for event in events {
            let message = format!("[\"EVENT\",{}]", event.to_json());
            ws.send(Message::text(message)).await.unwrap();
            let ok = loop {
                let value = next_json(&mut ws).await;
                if value[0] == "OK" {
                    break value;
                }
            };
            assert_eq!(ok[2], true, "{ok}");
        }
    });
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Runs `talk` on a WebSocket connected to the relay at `addr`.
fn on_socket<T, F: std::future::Future<Output = T>>(
    addr: &str,
    talk: impl FnOnce(Socket) -> F,
) -> T {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/"))
            .await
            .unwrap();
        talk(ws).await
    })
}

/// The next message on `ws` as JSON; fails the test after 20 s.
async fn next_json(ws: &mut Socket) -> serde_json::Value {
    use futures_util::StreamExt;
    let message = tokio::time::timeout(Duration::from_secs(20), ws.next())
        .await
        .expect("no message from the relay within 20 s")
        .expect("the relay closed the connection")
        .unwrap();
    serde_json::from_str(message.into_text().unwrap().as_str()).unwrap()
}

/// A temporary directory, the store path in it, `megalith serve` on that
/// store, and the time now (seconds).
fn serving_a_fresh_store() -> (tempfile::TempDir, std::path::PathBuf, serve::Serving, u64) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let serving = serve::spawn(["--data".as_ref(), data.as_os_str()]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    (dir, data, serving, now)
}

/// Runs `command` while a client publishes `events` to the relay at `addr`.
fn while_publishing(
    addr: &str,
    events: &[megalith::Event],
    command: &mut Command,
) -> std::process::Output {
    std::thread::scope(|scope| {
        scope.spawn(|| publish(addr, events));
        std::thread::sleep(Duration::from_millis(30));
        command.output().unwrap()
    })
}

/// Stored ids and the last position of `megalith changes` output lines.
fn stored_and_position(lines: &[String]) -> (Vec<String>, String) {
    let mut ids = Vec::new();
    let mut position = String::new();
    for line in lines {
        let change: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(change["op"], "stored", "{line}");
        ids.push(change["event"]["id"].as_str().unwrap().to_string());
        position = change["position"].as_str().unwrap().to_string();
    }
    ids.sort();
    (ids, position)
}

/// `megalith changes` beside a running `megalith serve` (which holds the
/// store's lock): --follow prints what clients publish as it is synced,
/// stops on SIGINT naming its position, and a later run resumes there
/// with exactly what came after.
#[test]
fn changes_follows_a_running_server_and_resumes_where_it_stopped() {
    use megalith::event::Keys;
    use std::io::BufRead;
    use std::process::Stdio;

    let (_dir, data, serving, now) = serving_a_fresh_store();
    let serve::Serving {
        child,
        addr,
        stderr,
        log,
    } = serving;
    let notes = |from: u64, n: u64| -> Vec<megalith::Event> {
        (from..from + n)
            .map(|i| Keys::from_seed(100 + i % 7).sign(now - i, 1, vec![], format!("note {i}")))
            .collect()
    };
    let ids = |events: &[megalith::Event]| {
        let mut ids: Vec<String> = events.iter().map(|e| e.id.to_hex()).collect();
        ids.sort();
        ids
    };

    let mut follower = Command::new(env!("CARGO_BIN_EXE_megalith"))
        .args(["changes", "--follow", "--interval", "20", "--data"])
        .arg(&data)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let first = notes(0, 30);
    publish(&addr, &first);
    let mut lines = Vec::new();
    while lines.len() < first.len() {
        lines.push(
            rx.recv_timeout(Duration::from_secs(30))
                .expect("the follower prints what the server stored"),
        );
    }
    let (seen, position) = stored_and_position(&lines);
    assert_eq!(seen, ids(&first));
    let status = Command::new("kill")
        .args(["-INT", &follower.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = follower.wait().unwrap();
    let mut said = String::new();
    follower
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut said)
        .unwrap();
    assert!(exit.success(), "{exit:?} {said}");
    assert!(said.contains(&format!("stopped at {position}")), "{said}");
    assert!(rx.try_recv().is_err(), "nothing after the 30");

    // More, then a run without --follow from the kept position, with the
    // server still running: exactly the new ones.
    let second = notes(30, 12);
    publish(&addr, &second);
    let out = Command::new(env!("CARGO_BIN_EXE_megalith"))
        .args(["changes", "--after", &position, "--data"])
        .arg(&data)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    let lines: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let (seen, position) = stored_and_position(&lines);
    assert_eq!(seen, ids(&second));
    assert!(
        said.contains(&format!("up to date at {position}")),
        "{said}"
    );

    stop_cleanly(child, stderr, log);
    // The server closed: nothing more, from the same position.
    let out = Command::new(env!("CARGO_BIN_EXE_megalith"))
        .args(["changes", "--after", &position, "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
}

/// `megalith export` while `megalith serve` has the store open and a
/// client keeps publishing: the export is the store as of one moment
/// (exactly what the change feed says the store held at the position it
/// names), holds everything acknowledged before it began and nothing
/// replaced or deleted; exported and imported into an empty store, a
/// store gives the same events.
#[test]
fn export_beside_a_running_server_is_the_store_as_of_one_moment() {
    use megalith::ChangePosition;
    use megalith::event::Keys;
    use std::collections::HashSet;

    let (dir, data, serving, now) = serving_a_fresh_store();
    let serve::Serving {
        child,
        addr,
        stderr,
        log,
    } = serving;
    let author = |i: u64| Keys::from_seed(200 + i % 5);
    let mut first: Vec<megalith::Event> = (0..40)
        .map(|i| author(i).sign(now - 1000 + i, 1, vec![], format!("note {i}")))
        .collect();
    // A profile replaced by a newer one, and a note its author deletes.
    first.push(author(0).sign(now - 500, 0, vec![], "{\"name\":\"old\"}".into()));
    first.push(author(0).sign(now - 400, 0, vec![], "{\"name\":\"new\"}".into()));
    first.push(author(1).sign(
        now - 300,
        5,
        vec![vec!["e".into(), first[1].id.to_hex()]],
        String::new(),
    ));
    publish(&addr, &first);
    let gone: HashSet<String> = [first[1].id.to_hex(), first[40].id.to_hex()].into();

    // A client keeps publishing while the export runs.
    let later: Vec<megalith::Event> = (0..150)
        .map(|i| author(i).sign(now - 200 + i, 1, vec![], format!("later {i}")))
        .collect();
    let export = while_publishing(
        &addr,
        &later,
        Command::new(env!("CARGO_BIN_EXE_megalith"))
            .args(["export", "--json", "--data"])
            .arg(&data),
    );
    let said = String::from_utf8_lossy(&export.stderr).to_string();
    assert!(export.status.success(), "{said}");
    let summary: serde_json::Value = serde_json::from_str(said.trim()).unwrap();
    assert_eq!(summary["complete"], true);
    let as_of: ChangePosition = summary["as_of"].as_str().unwrap().parse().unwrap();
    let exported: Vec<megalith::Event> = String::from_utf8(export.stdout)
        .unwrap()
        .lines()
        .map(|line| megalith::Event::from_json(line).unwrap())
        .collect();
    assert_eq!(summary["exported"], exported.len());
    let exported_ids: HashSet<String> = exported.iter().map(|e| e.id.to_hex()).collect();
    assert_eq!(exported_ids.len(), exported.len(), "no event twice");
    for event in &first {
        let id = event.id.to_hex();
        assert_eq!(
            exported_ids.contains(&id),
            !gone.contains(&id),
            "acknowledged before the export: {id}"
        );
    }
    stop_cleanly(child, stderr, log);

    // Exactly the store as the feed says it was at `as_of`.
    let held = held_at(&data, &as_of);
    assert!(
        exported_ids == held,
        "the export is not the store at {as_of}"
    );

    // The whole store, exported and imported into an empty one.
    let file = dir.path().join("all.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_megalith"))
        .args(["export", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let copy = dir.path().join("copy");
    let out = Command::new(env!("CARGO_BIN_EXE_megalith"))
        .args(["import", "--data"])
        .arg(&copy)
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ids = |dir: &std::path::Path| {
        let store = EventStore::open(dir).unwrap();
        let mut ids: Vec<String> = store
            .query(&[megalith::Filter::new()])
            .unwrap()
            .iter()
            .map(|e| e.id.to_hex())
            .collect();
        store.close().unwrap();
        ids.sort();
        ids
    };
    let original = ids(&data);
    assert_eq!(original.len(), first.len() - 2 + later.len());
    assert_eq!(ids(&copy), original);
}

/// The ids of the events the store in `data` held at `position`, as its
/// change feed says.
fn held_at(
    data: &std::path::Path,
    position: &megalith::ChangePosition,
) -> std::collections::HashSet<String> {
    use megalith::{ChangeOp, ChangePosition, ChangeReader};
    let mut reader = ChangeReader::open(data).unwrap();
    let mut held = std::collections::HashSet::new();
    let mut at = ChangePosition::start(reader.shard_count());
    loop {
        let page = reader.changes_until(&at, position, 64).unwrap();
        let Some(last) = page.last() else { break };
        at = last.position.clone();
        for change in page {
            match change.op {
                ChangeOp::Stored => held.insert(change.event.id.to_hex()),
                ChangeOp::Removed => held.remove(&change.event.id.to_hex()),
            };
        }
    }
    held
}

/// `megalith backup` while `megalith serve` runs and a client publishes:
/// the copy opens without rebuilding an index, passes `index-doctor
/// check`, and holds exactly what the original held at the position the
/// backup names.
#[test]
fn backup_beside_a_running_server_opens_as_the_store_at_one_point() {
    use megalith::event::Keys;

    let (dir, data, serving, now) = serving_a_fresh_store();
    let serve::Serving {
        child,
        addr,
        stderr,
        log,
    } = serving;
    let author = |i: u64| Keys::from_seed(300 + i % 6);
    let first: Vec<megalith::Event> = (0..120)
        .map(|i| author(i).sign(now - 1000 + i, 1, vec![], format!("first {i}")))
        .collect();
    publish(&addr, &first);
    let later: Vec<megalith::Event> = (0..150)
        .map(|i| author(i).sign(now - 200 + i, 1, vec![], format!("later {i}")))
        .collect();
    let copy = dir.path().join("copy");
    let out = while_publishing(
        &addr,
        &later,
        Command::new(env!("CARGO_BIN_EXE_megalith"))
            .args(["backup", "--json", "--data"])
            .arg(&data)
            .arg("--to")
            .arg(&copy),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["live"], true, "{report}");
    let position: megalith::ChangePosition = report["position"].as_str().unwrap().parse().unwrap();
    stop_cleanly(child, stderr, log);

    let store = EventStore::open(&copy).unwrap();
    let recovery = store.recovery_report().clone();
    assert!(recovery.rebuilt_indexes.is_empty(), "{recovery:?}");
    let mut ids: Vec<String> = store
        .query(&[megalith::Filter::new()])
        .unwrap()
        .iter()
        .map(|e| e.id.to_hex())
        .collect();
    store.close().unwrap();
    ids.sort();
    let mut held: Vec<String> = held_at(&data, &position).into_iter().collect();
    held.sort();
    assert!(ids == held, "the copy is not the store at {position}");
    assert!(ids.len() >= first.len());
    let check = megalith::inspect::index::check_store(&copy).unwrap();
    assert!(check.is_clean(), "{check:?}");
}

/// `megalith sync` with `megalith serve` (NIP-77 on both ends): a store and
/// a server that each hold events the other lacks end with the same
/// events; a second sync finds nothing to do; bad arguments and a relay
/// that is not there fail with a message and a non-zero exit.
#[test]
fn sync_both_ways_with_a_running_server_converges() {
    use megalith::event::Keys;
    use std::collections::BTreeSet;

    let (dir, data, serving, now) = serving_a_fresh_store();
    let serve::Serving {
        child,
        addr,
        stderr,
        log,
    } = serving;
    let author = |i: u64| Keys::from_seed(300 + i % 4);
    let events: Vec<megalith::Event> = (0..260)
        .map(|i| author(i).sign(now - 2000 + i / 2, 1, vec![], format!("note {i}")))
        .collect();
    let (shared, rest) = events.split_at(160);
    let (only_server, only_local) = rest.split_at(60);
    let mut on_server = shared.to_vec();
    on_server.extend_from_slice(only_server);
    publish(&addr, &on_server);
    let local = dir.path().join("local");
    let jsonl = dir.path().join("local.jsonl");
    let lines: String = shared
        .iter()
        .chain(only_local)
        .map(|e| e.to_json() + "\n")
        .collect();
    std::fs::write(&jsonl, lines).unwrap();
    let megalith = || Command::new(env!("CARGO_BIN_EXE_megalith"));
    let imported = megalith()
        .args(["import", "--quiet", "--data"])
        .arg(&local)
        .arg(&jsonl)
        .output()
        .unwrap();
    assert!(imported.status.success(), "{imported:?}");

    let url = format!("ws://{addr}/");
    let sync = |extra: &[&str]| {
        let out = megalith()
            .args(["sync", &url, "--json", "--data"])
            .arg(&local)
            .args(extra)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{said}");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        report
    };
    let report = sync(&["--dir", "both"]);
    assert_eq!(report["local"], 260 - 60, "{report}");
    assert_eq!(report["only_here"], 40, "{report}");
    assert_eq!(report["only_there"], 60, "{report}");
    assert_eq!(report["stored"], 60, "{report}");
    assert_eq!(report["accepted"], 40, "{report}");
    assert_eq!(report["direction"], "both");
    let again = sync(&["--dry-run"]);
    assert_eq!(again["only_here"], 0, "{again}");
    assert_eq!(again["only_there"], 0, "{again}");

    // Bad arguments, and nothing listening.
    for (args, needle) in [
        (vec!["--dir", "sideways"], "down, up or both"),
        (vec!["--filter", r#"{"kinds":"x"}"#], "--filter"),
        (vec!["--frame-bytes", "100"], "at least 4096"),
    ] {
        let out = megalith()
            .args(["sync", &url, "--data"])
            .arg(&local)
            .args(&args)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(said.contains(needle), "{args:?}: {said}");
    }
    stop_cleanly(child, stderr, log);
    let out = megalith()
        .args(["sync", &url, "--timeout", "2", "--data"])
        .arg(&local)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("connect"), "{said}");

    // Both stores hold the same events.
    let ids = |store: &std::path::Path| -> BTreeSet<String> {
        let out = megalith()
            .args(["query", "--data"])
            .arg(store)
            .arg("{}")
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| megalith::Event::from_json(l).unwrap().id.to_hex())
            .collect()
    };
    let want: BTreeSet<String> = events.iter().map(|e| e.id.to_hex()).collect();
    assert_eq!(ids(&data), want);
    assert_eq!(ids(&local), want);
}

/// Over one WebSocket to `addr`: the ids a REQ for `{}` gets before EOSE,
/// and the OK an EVENT of `probe` gets (accepted, message).
fn ids_and_publish(addr: &str, probe: &megalith::Event) -> (Vec<String>, (bool, String)) {
    use futures_util::SinkExt;
    on_socket(addr, |mut ws| async move {
        let req = serde_json::json!(["REQ", "all", {"limit": 500}]).to_string();
        ws.send(Message::text(req)).await.unwrap();
        let mut ids = Vec::new();
        loop {
            let value = next_json(&mut ws).await;
            match value[0].as_str() {
                Some("EVENT") => ids.push(value[2]["id"].as_str().unwrap().to_string()),
                Some("EOSE") => break,
                _ => {}
            }
        }
        let event = format!("[\"EVENT\",{}]", probe.to_json());
        ws.send(Message::text(event)).await.unwrap();
        let ok = loop {
            let value = next_json(&mut ws).await;
            if value[0] == "OK" {
                break (
                    value[2].as_bool().unwrap(),
                    value[3].as_str().unwrap().to_string(),
                );
            }
        };
        ids.sort();
        (ids, ok)
    })
}

/// `megalith serve --follow`: a replica of a running `megalith serve` gets
/// what the primary held before it started and what clients publish to
/// the primary afterwards, and refuses clients' EVENTs naming the primary.
#[test]
fn a_replica_follows_its_primary_and_refuses_writes() {
    use megalith::event::Keys;

    let (dir, _data, primary, now) = serving_a_fresh_store();
    let author = |i: u64| Keys::from_seed(400 + i % 3);
    let before: Vec<megalith::Event> = (0..25)
        .map(|i| author(i).sign(now - 500 + i, 1, vec![], format!("before {i}")))
        .collect();
    publish(&primary.addr, &before);
    let replica_data = dir.path().join("replica");
    let primary_url = format!("ws://{}/", primary.addr);
    let replica = serve::spawn([
        "--data".as_ref(),
        replica_data.as_os_str(),
        "--follow".as_ref(),
        primary_url.as_ref(),
    ]);
    let probe = author(99).sign(now, 1, vec![], "to the replica".into());
    let wait_for = |want: &[megalith::Event]| -> (bool, String) {
        let mut want: Vec<String> = want.iter().map(|e| e.id.to_hex()).collect();
        want.sort();
        for _ in 0..200 {
            let (held, ok) = ids_and_publish(&replica.addr, &probe);
            if held == want {
                return ok;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "the replica never held the {} events of its primary",
            want.len()
        );
    };
    wait_for(&before);
    let after: Vec<megalith::Event> = (0..10)
        .map(|i| author(i).sign(now - 100 + i, 1, vec![], format!("after {i}")))
        .collect();
    publish(&primary.addr, &after);
    let all: Vec<megalith::Event> = before.iter().chain(&after).cloned().collect();
    let (accepted, message) = wait_for(&all);
    assert!(!accepted, "the replica accepted a client's event");
    assert!(
        message.starts_with("blocked:") && message.contains(&primary_url),
        "{message}"
    );
    let serve::Serving {
        child, stderr, log, ..
    } = replica;
    let log = stop_cleanly(child, stderr, log);
    assert!(log.contains("replica synced with its primary"), "{log}");
    let serve::Serving {
        child, stderr, log, ..
    } = primary;
    stop_cleanly(child, stderr, log);
}

/// The verbs of the first answers to `n` REQs (each with its own id) sent
/// on one connection: EOSE when taken, CLOSED when refused.
fn req_verbs(addr: &str, n: usize) -> Vec<String> {
    use futures_util::SinkExt;
    on_socket(addr, |mut ws| async move {
        let mut verbs = Vec::new();
        for i in 0..n {
            let req = serde_json::json!(["REQ", format!("s{i}"), {"kinds": [1]}]).to_string();
            ws.send(Message::text(req)).await.unwrap();
            loop {
                let value = next_json(&mut ws).await;
                if value[0] == "EOSE" || value[0] == "CLOSED" {
                    verbs.push(value[0].as_str().unwrap().to_string());
                    break;
                }
            }
        }
        verbs
    })
}

/// SIGHUP reads the config file's limits again: new connections and
/// NIP-11 get them at once, a limit the running relay cannot change is
/// named in the log as waiting for a restart, and a file that does not
/// check leaves the limits in force.
#[test]
fn limits_reload_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("megalith.toml");
    std::fs::write(&config, "[limits]\nmax_subscriptions = 2\nmax_limit = 7\n").unwrap();
    let serve::Serving {
        child,
        addr,
        stderr,
        log,
    } = serve::spawn([
        "--data".as_ref(),
        dir.path().join("store").as_os_str(),
        "--config".as_ref(),
        config.as_os_str(),
    ]);
    let limitation = |addr: &str| {
        let info = http_get(addr, "/");
        let doc: serde_json::Value =
            serde_json::from_str(info.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        doc["limitation"].clone()
    };
    assert_eq!(limitation(&addr)["max_subscriptions"], 2);
    assert_eq!(req_verbs(&addr, 3), ["EOSE", "EOSE", "CLOSED"]);
    let hangup = |expect: &str| {
        let status = Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let counted = (0..200).any(|_| {
            std::thread::sleep(Duration::from_millis(50));
            http_get(&addr, "/metrics").contains(expect)
        });
        assert!(counted, "no {expect} after SIGHUP");
    };

    std::fs::write(
        &config,
        "[limits]\nmax_subscriptions = 3\nmax_limit = 9\nmax_event_bytes = 1000\n",
    )
    .unwrap();
    hangup("megalith_limits_reloads_total{result=\"ok\"} 1");
    assert_eq!(limitation(&addr)["max_subscriptions"], 3);
    assert_eq!(limitation(&addr)["max_limit"], 9);
    assert_eq!(req_verbs(&addr, 4), ["EOSE", "EOSE", "EOSE", "CLOSED"]);

    std::fs::write(&config, "[limits]\nmax_subscriptions = 0\n").unwrap();
    hangup("megalith_limits_reloads_total{result=\"error\"} 1");
    assert_eq!(limitation(&addr)["max_subscriptions"], 3);

    let log = stop_cleanly(child, stderr, log);
    assert!(log.contains("limits reloaded"), "{log}");
    assert!(
        log.contains("take effect at the next restart") && log.contains("max_event_bytes"),
        "{log}"
    );
    assert!(log.contains("the previous ones stay"), "{log}");
}

/// The ids a REQ for `filter` gets before EOSE.
fn req_ids(addr: &str, filter: serde_json::Value) -> Vec<String> {
    use futures_util::SinkExt;
    on_socket(addr, |mut ws| async move {
        let req = serde_json::json!(["REQ", "r", filter]).to_string();
        ws.send(Message::text(req)).await.unwrap();
        let mut ids = Vec::new();
        loop {
            let value = next_json(&mut ws).await;
            match value[0].as_str() {
                Some("EVENT") => ids.push(value[2]["id"].as_str().unwrap().to_string()),
                Some("EOSE") => break,
                _ => {}
            }
        }
        ids.sort();
        ids
    })
}

/// `[retention]` rules in the config: `serve` removes the old events of a
/// rule's kinds as it runs, keeps new ones, other kinds and the never
/// kinds, and after a SIGHUP applies the rules it read again.
#[test]
fn retention_rules_remove_old_events_while_serving_and_reload_on_sighup() {
    use megalith::event::Keys;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("megalith.toml");
    let rule = |kinds: &str| {
        format!(
            "[retention]\ninterval_secs = 1\n[[retention.rule]]\nkinds = {kinds}\nmax_age_days = 30\n"
        )
    };
    std::fs::write(&config, rule("[1]")).unwrap();
    let serve::Serving {
        child,
        addr,
        stderr,
        log,
    } = serve::spawn([
        "--data".as_ref(),
        dir.path().join("store").as_os_str(),
        "--config".as_ref(),
        config.as_os_str(),
    ]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let old = now - 100 * 86_400;
    let keys = Keys::from_seed(61);
    let old_notes: Vec<_> = (0..5)
        .map(|n| keys.sign(old + n, 1, vec![], format!("old note {n}")))
        .collect();
    let new_notes: Vec<_> = (0..5)
        .map(|n| keys.sign(now - n, 1, vec![], format!("new note {n}")))
        .collect();
    let old_profile = keys.sign(old, 0, vec![], "{}".to_string());
    let old_reaction = keys.sign(
        old,
        7,
        vec![vec!["e".to_string(), old_notes[0].id.to_hex()]],
        "+".to_string(),
    );
    let mut all = old_notes.clone();
    all.extend(new_notes.iter().cloned());
    all.extend([old_profile.clone(), old_reaction.clone()]);
    publish(&addr, &all);
    let ids = |events: &[megalith::Event]| -> Vec<String> {
        let mut ids: Vec<String> = events.iter().map(|e| e.id.to_hex()).collect();
        ids.sort();
        ids
    };
    let until = |filter: serde_json::Value, want: Vec<String>| {
        let reached = (0..400).any(|_| {
            std::thread::sleep(Duration::from_millis(50));
            req_ids(&addr, filter.clone()) == want
        });
        assert!(
            reached,
            "{filter}: never became {want:?}, is {:?}",
            req_ids(&addr, filter.clone())
        );
    };
    until(serde_json::json!({"kinds": [1]}), ids(&new_notes));
    assert_eq!(
        req_ids(&addr, serde_json::json!({"kinds": [0, 7]})),
        ids(&[old_profile.clone(), old_reaction.clone()])
    );

    // Reactions too now, and profiles (a never kind: they stay).
    std::fs::write(&config, rule("[0, 7]")).unwrap();
    let status = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    until(
        serde_json::json!({"kinds": [0, 7]}),
        ids(std::slice::from_ref(&old_profile)),
    );
    assert_eq!(
        req_ids(&addr, serde_json::json!({"kinds": [1]})),
        ids(&new_notes)
    );
    let log = stop_cleanly(child, stderr, log);
    assert!(log.contains("retention rules applied"), "{log}");
    assert!(log.contains("retention rules reloaded"), "{log}");
}

/// `[compaction]` in the config: `serve` takes the bytes of deleted events
/// out of the sealed log segments in the background (the first look runs
/// a pass), while it serves the rest.
#[test]
fn background_compaction_takes_deleted_events_out_of_the_files() {
    use megalith::event::Keys;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let keys = Keys::from_seed(62);
    let body = |what: &str, n: u64| format!("{what}-{n:03}-{}", "x".repeat(3000));
    let gone: Vec<_> = (0..30)
        .map(|n| keys.sign(1_700_000_000 + n, 1, vec![], body("gone-marker", n)))
        .collect();
    let kept: Vec<_> = (0..30)
        .map(|n| keys.sign(1_700_001_000 + n, 1, vec![], body("kept-marker", n)))
        .collect();
    let deletion = keys.sign(
        1_700_002_000,
        5,
        gone.iter()
            .map(|e| vec!["e".to_string(), e.id.to_hex()])
            .collect(),
        String::new(),
    );
    // Small segments, so the deleted notes lie in sealed ones.
    let store = megalith::EventStore::builder(&data)
        .segment_size(64 << 10)
        .open()
        .unwrap();
    for event in gone.iter().chain(&kept).chain([&deletion]) {
        store.insert(std::slice::from_ref(event)).unwrap();
    }
    store.close().unwrap();
    let markers_in_files = |what: &str| -> usize {
        let mut found = std::collections::HashSet::new();
        let mut stack = vec![data.clone()];
        while let Some(path) = stack.pop() {
            if path.is_dir() {
                stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            } else if let Ok(bytes) = std::fs::read(&path) {
                for n in 0..30 {
                    let marker = format!("{what}-{n:03}-");
                    if bytes.windows(marker.len()).any(|w| w == marker.as_bytes()) {
                        found.insert(n);
                    }
                }
            }
        }
        found.len()
    };
    // The test sees what it looks for.
    assert_eq!(markers_in_files("gone-marker"), 30);

    let config = dir.path().join("megalith.toml");
    std::fs::write(
        &config,
        "[compaction]\ngarbage_ratio = 0.05\ncheck_secs = 1\nrate_mib = 0\n",
    )
    .unwrap();
    let serve::Serving {
        child,
        addr,
        stderr,
        log,
    } = serve::spawn([
        "--data".as_ref(),
        data.as_os_str(),
        "--config".as_ref(),
        config.as_os_str(),
    ]);
    let left = (0..200)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            markers_in_files("gone-marker")
        })
        .find(|&left| left == 0);
    if left != Some(0) {
        let count = markers_in_files("gone-marker");
        let log = stop_cleanly(child, stderr, log);
        panic!("{count} deleted notes stayed in the files:\n{log}");
    }
    assert_eq!(markers_in_files("kept-marker"), 30);
    let mut want: Vec<String> = kept.iter().map(|e| e.id.to_hex()).collect();
    want.sort();
    assert_eq!(req_ids(&addr, serde_json::json!({"kinds": [1]})), want);
    let log = stop_cleanly(child, stderr, log);
    assert!(log.contains("background compaction pass"), "{log}");
}

/// `megalith count`, `query`, `stats` and `delete` beside a running
/// `serve` go through its admin socket and print what they print with the
/// store to themselves; the socket goes when the server stops, and one a
/// killed server left does not stop the commands from opening the store.
#[test]
fn commands_beside_a_running_server_go_through_its_admin_socket() {
    use megalith::event::Keys;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let serve::Serving {
        child,
        addr,
        stderr,
        log,
    } = serve::spawn(["--data".as_ref(), data.as_os_str()]);
    let keys = Keys::from_seed(63);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let notes: Vec<_> = (0..12)
        .map(|n| keys.sign(now - 100 + n, 1, vec![], format!("note {n}")))
        .collect();
    let reactions: Vec<_> = notes
        .iter()
        .take(5)
        .map(|note| {
            keys.sign(
                now - 10,
                7,
                vec![vec!["e".to_string(), note.id.to_hex()]],
                "+".to_string(),
            )
        })
        .collect();
    let mut all = notes.clone();
    all.extend(reactions.iter().cloned());
    publish(&addr, &all);
    let megalith = |args: &[&str]| -> (bool, String, String) {
        let output = Command::new(env!("CARGO_BIN_EXE_megalith"))
            .args(args)
            .arg("--data")
            .arg(&data)
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (ok, out, err) = megalith(&["count", r#"{"kinds":[1]}"#]);
    assert!(ok, "{err}");
    assert_eq!(out, "12\n");
    let (ok, out, err) = megalith(&["count", "--json", r#"{"kinds":[7]}"#]);
    assert!(ok, "{err}");
    assert_eq!(out, "{\"count\":5}\n");
    let (ok, out, err) = megalith(&["query", r#"{"kinds":[7]}"#]);
    assert!(ok, "{err}");
    let mut got: Vec<String> = out
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    got.sort();
    assert_eq!(got, req_ids(&addr, serde_json::json!({"kinds": [7]})));
    let (ok, out, err) = megalith(&["stats", "--json"]);
    assert!(ok, "{err}");
    let stats: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(stats["events"], 17, "{stats}");
    // A bad filter is the command's error, as without a server.
    let (ok, _, err) = megalith(&["count", "{"]);
    assert!(!ok && err.contains("filter"), "{err}");
    let (ok, out, err) = megalith(&[
        "delete",
        "--dry-run",
        "--json",
        "--filter",
        r#"{"kinds":[7]}"#,
    ]);
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (report["matched"].clone(), report["removed"].clone()),
        (5.into(), 0.into())
    );
    assert_eq!(req_ids(&addr, serde_json::json!({"kinds": [7]})).len(), 5);
    let (ok, out, err) = megalith(&["delete", "--json", "--filter", r#"{"kinds":[7]}"#]);
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["removed"], 5, "{report}");
    assert!(req_ids(&addr, serde_json::json!({"kinds": [7]})).is_empty());

    // Requests that are not one well-formed request line get an error
    // that says what is wrong, and the server goes on answering.
    let raw = |request: &[u8]| -> String {
        let mut client = std::os::unix::net::UnixStream::connect(data.join("admin.sock")).unwrap();
        client.write_all(request).unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).unwrap();
        answer
    };
    for (request, says) in [
        (&b"not json\n"[..], "a malformed admin request"),
        (
            b"{\"command\":\"reboot\"}\n",
            "unknown admin command \"reboot\"",
        ),
        (
            b"{\"command\":\"count\"}\n{\"command\":\"count\"}\n",
            "trailing characters",
        ),
        (b"\xff\xfe\n", "not UTF-8"),
        (
            b"{\"command\":\"count\",\"filter\":\"{\\\"kinds\\\":7}\"}\n",
            "filter",
        ),
    ] {
        let answer = raw(request);
        let reply: serde_json::Value =
            serde_json::from_str(answer.trim_end()).unwrap_or_else(|e| {
                panic!(
                    "{:?}: the answer {answer:?} is not one JSON line: {e}",
                    String::from_utf8_lossy(request)
                )
            });
        let message = reply["error"].as_str().unwrap_or_default();
        assert!(
            message.contains(says),
            "{:?}: {answer}",
            String::from_utf8_lossy(request)
        );
    }
    let answer = raw(b"{\"command\":\"count\",\"filter\":\"{}\"}\n");
    assert!(answer.ends_with("\"done\"\n"), "{answer}");
    assert!(answer.contains("12"), "{answer}");

    let log = stop_cleanly(child, stderr, log);
    assert!(log.contains("admin socket listening"), "{log}");
    let socket = data.join("admin.sock");
    assert!(!socket.exists(), "the socket outlived the server");
    // A socket a killed server left: the commands open the store.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let (ok, out, err) = megalith(&["count", r#"{"kinds":[1,7]}"#]);
    assert!(ok, "{err}");
    assert_eq!(out, "12\n");
}

/// A client of the admin socket that asks for every event and never reads
/// the answer does not keep `serve` from stopping, and the store closes
/// cleanly (a write to it blocked the shutdown for good before).
#[test]
fn an_admin_client_that_never_reads_does_not_hold_the_shutdown() {
    use megalith::event::Keys;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    // Far more than a socket buffer holds.
    let keys = Keys::from_seed(64);
    let store = megalith::EventStore::open(&data).unwrap();
    let events: Vec<_> = (0..3000)
        .map(|n| {
            keys.sign(
                1_700_000_000 + n,
                1,
                vec![],
                format!("{n} {}", "y".repeat(1000)),
            )
        })
        .collect();
    for chunk in events.chunks(500) {
        store.insert_trusted(chunk).unwrap();
    }
    store.close().unwrap();
    let serve::Serving {
        mut child,
        addr: _,
        mut stderr,
        mut log,
    } = serve::spawn(["--data".as_ref(), data.as_os_str()]);
    let mut client = std::os::unix::net::UnixStream::connect(data.join("admin.sock")).unwrap();
    client
        .write_all(b"{\"command\":\"query\",\"filter\":\"{}\"}\n")
        .unwrap();
    // The server fills the socket's buffer and waits for the client.
    std::thread::sleep(Duration::from_millis(500));
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exited = (0..600).find_map(|_| {
        std::thread::sleep(Duration::from_millis(100));
        child.try_wait().unwrap()
    });
    let Some(exit) = exited else {
        let _ = child.kill();
        panic!("serve did not stop while an admin client held a query");
    };
    stderr.read_to_string(&mut log).unwrap();
    assert!(exit.success(), "{exit:?}\n{log}");
    assert!(log.contains("store closed cleanly"), "{log}");
    drop(client);
}
