//! A relay running in the test's runtime on a free loopback port, and a
//! small NIP-01 WebSocket client for talking to it.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use megalith::{Event, EventStore, Keys};
use megalith_relay::{RelayConfig, RelayLimits};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for a message it expects.
pub const WAIT: Duration = Duration::from_secs(20);

pub struct TestRelay {
    pub addr: SocketAddr,
    pub store: Arc<EventStore>,
    config: RelayConfig,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
    pub dir: tempfile::TempDir,
}

impl TestRelay {
    /// A fresh store (2 shards) served with `limits`.
    pub async fn start(limits: RelayLimits) -> TestRelay {
        let dir = tempfile::tempdir().unwrap();
        let store = EventStore::builder(dir.path())
            .shards(2)
            .limits(limits.event_limits())
            .open()
            .unwrap();
        TestRelay::serve(store, dir, limits).await
    }

    /// A fresh store (2 shards) served with `config` (its `listen` is
    /// ignored: a free port is used).
    pub async fn start_with(config: RelayConfig) -> TestRelay {
        let dir = tempfile::tempdir().unwrap();
        let store = EventStore::builder(dir.path())
            .shards(2)
            .limits(config.limits.event_limits())
            .open()
            .unwrap();
        TestRelay::serve_with(store, dir, config).await
    }

    /// Serves an already open store.
    pub async fn serve(
        store: EventStore,
        dir: tempfile::TempDir,
        limits: RelayLimits,
    ) -> TestRelay {
        let config = RelayConfig {
            limits,
            ..RelayConfig::default()
        };
        TestRelay::serve_with(store, dir, config).await
    }

    async fn serve_with(
        store: EventStore,
        dir: tempfile::TempDir,
        config: RelayConfig,
    ) -> TestRelay {
        let store = Arc::new(store);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = RelayConfig {
            listen: addr,
            ..config
        };
        let mut relay = TestRelay {
            addr,
            store,
            config,
            stop: None,
            task: None,
            dir,
        };
        relay.run(listener);
        relay
    }

    fn run(&mut self, listener: tokio::net::TcpListener) {
        let (stop, stopped) = oneshot::channel::<()>();
        self.task = Some(tokio::spawn(megalith_relay::run(
            Arc::clone(&self.store),
            self.config.clone(),
            listener,
            async move {
                let _ = stopped.await;
            },
        )));
        self.stop = Some(stop);
    }

    /// Shuts the relay down and serves the same store again on the same
    /// address (clients see their connections end, then can reconnect).
    pub async fn restart(&mut self) {
        self.shutdown().await;
        self.resume().await;
    }

    /// Serves the store again on the same address after `shutdown`.
    pub async fn resume(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.run(listener);
    }

    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    pub async fn connect(&self) -> Client {
        Client::connect(&self.url()).await
    }

    /// Signals shutdown and waits for the relay to finish.
    pub async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("the relay did not shut down in time")
                .unwrap()
                .unwrap();
        }
    }

    /// A plain HTTP GET; returns the status line, the headers (lowercase
    /// names) and the body.
    pub async fn http_get(
        &self,
        path: &str,
        accept: Option<&str>,
    ) -> (String, Vec<(String, String)>, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = TcpStream::connect(self.addr).await.unwrap();
        let accept = accept
            .map(|a| format!("Accept: {a}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\n{accept}Connection: close\r\n\r\n",
            self.addr
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        tokio::time::timeout(WAIT, stream.read_to_end(&mut raw))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8(raw).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let mut lines = head.lines();
        let status = lines.next().unwrap().to_string();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        (status, headers, body.to_string())
    }
}

pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The relay's NIP-42 challenge, once seen (the `AUTH` message is
    /// taken out of the stream of messages the test reads).
    pub challenge: Option<String>,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Client {
            ws,
            challenge: None,
        }
    }

    /// Connects with extra request headers (a proxy's `X-Forwarded-For`).
    pub async fn connect_with_headers(url: &str, headers: &[(&str, &str)]) -> Client {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = url.into_client_request().unwrap();
        for (name, value) in headers {
            request.headers_mut().insert(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes())
                    .unwrap(),
                value.parse().unwrap(),
            );
        }
        let (ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        Client {
            ws,
            challenge: None,
        }
    }

    /// The relay's NIP-42 challenge: the first message of a connection.
    pub async fn challenge(&mut self) -> String {
        if let Some(challenge) = &self.challenge {
            return challenge.clone();
        }
        let message = tokio::time::timeout(WAIT, self.ws.next())
            .await
            .expect("no AUTH challenge came")
            .expect("the connection ended")
            .unwrap();
        let Message::Text(text) = message else {
            panic!("expected the AUTH challenge, got {message:?}");
        };
        let value: Value = serde_json::from_str(text.as_str()).unwrap();
        assert_eq!(
            value[0], "AUTH",
            "expected the AUTH challenge first, got {value}"
        );
        let challenge = value[1].as_str().unwrap().to_string();
        self.challenge = Some(challenge.clone());
        challenge
    }

    /// Sends `["AUTH", event]` and returns its OK's (accepted, message).
    pub async fn auth(&mut self, event: &Event) -> (bool, String) {
        self.send(&format!("[\"AUTH\",{}]", event.to_json())).await;
        let reply = self.recv().await;
        assert_eq!(reply[0], "OK", "expected OK, got {reply}");
        assert_eq!(reply[1], event.id.to_hex(), "OK for another event: {reply}");
        (
            reply[2].as_bool().unwrap(),
            reply[3].as_str().unwrap().to_string(),
        )
    }

    pub async fn send(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    /// The next text message as JSON, or `None` if the connection ended or
    /// nothing came within `wait`.
    pub async fn recv_within(&mut self, wait: Duration) -> Option<Value> {
        loop {
            let message = match tokio::time::timeout(wait, self.ws.next()).await {
                Err(_) => return None,
                Ok(None | Some(Err(_))) => return None,
                Ok(Some(Ok(message))) => message,
            };
            match message {
                Message::Text(text) => {
                    let value: Value = serde_json::from_str(text.as_str()).unwrap();
                    if value[0] == "AUTH"
                        && let Some(challenge) = value[1].as_str()
                    {
                        self.challenge = Some(challenge.to_string());
                        continue;
                    }
                    return Some(value);
                }
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// The next text message; fails the test if none comes.
    pub async fn recv(&mut self) -> Value {
        self.recv_within(WAIT)
            .await
            .expect("expected a message from the relay")
    }

    /// Whether the relay closes the connection within `wait` (skipping
    /// whatever it sends first); the messages seen on the way.
    pub async fn closed_within(&mut self, wait: Duration) -> (bool, Vec<Value>) {
        let deadline = tokio::time::Instant::now() + wait;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.ws.next()).await {
                Err(_) => return (false, seen),
                Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return (true, seen),
                Ok(Some(Ok(Message::Text(text)))) => {
                    let value: Value = serde_json::from_str(text.as_str()).unwrap();
                    if value[0] != "AUTH" {
                        seen.push(value)
                    }
                }
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// Publishes an event and returns its OK's (accepted, message).
    pub async fn publish(&mut self, event: &Event) -> (bool, String) {
        self.publish_json(&event.to_json(), &event.id.to_hex())
            .await
    }

    pub async fn publish_json(&mut self, event_json: &str, id_hex: &str) -> (bool, String) {
        self.send(&format!("[\"EVENT\",{event_json}]")).await;
        let reply = self.recv().await;
        assert_eq!(reply[0], "OK", "expected OK, got {reply}");
        assert_eq!(reply[1], id_hex, "OK for another event: {reply}");
        (
            reply[2].as_bool().unwrap(),
            reply[3].as_str().unwrap().to_string(),
        )
    }

    /// Sends a REQ and returns the stored events it gets before EOSE; fails
    /// the test on CLOSED.
    pub async fn req(&mut self, sub: &str, filters: &[Value]) -> Vec<Value> {
        let mut message = vec![Value::from("REQ"), Value::from(sub)];
        message.extend(filters.iter().cloned());
        self.send(&Value::Array(message).to_string()).await;
        let mut events = Vec::new();
        loop {
            let reply = self.recv().await;
            match reply[0].as_str() {
                Some("EVENT") => {
                    assert_eq!(reply[1], sub, "{reply}");
                    events.push(reply[2].clone());
                }
                Some("EOSE") => {
                    assert_eq!(reply[1], sub, "{reply}");
                    return events;
                }
                _ => panic!("expected EVENT or EOSE for {sub}, got {reply}"),
            }
        }
    }

    /// Sends a REQ expected to be refused; returns the CLOSED reason.
    pub async fn req_refused(&mut self, message: &str) -> String {
        self.send(message).await;
        let reply = self.recv().await;
        assert_eq!(reply[0], "CLOSED", "expected CLOSED, got {reply}");
        reply[2].as_str().unwrap().to_string()
    }

    /// The next live event for `sub`, or `None` if none comes within `wait`.
    pub async fn live(&mut self, sub: &str, wait: Duration) -> Option<Value> {
        let reply = self.recv_within(wait).await?;
        assert_eq!(reply[0], "EVENT", "expected a live EVENT, got {reply}");
        assert_eq!(reply[1], sub, "{reply}");
        Some(reply[2].clone())
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// A NIP-42 authentication event for `relay` and `challenge`.
pub fn auth_event(keys: &Keys, relay: &str, challenge: &str, created_at: u64) -> Event {
    keys.sign(
        created_at,
        22242,
        vec![
            vec!["relay".into(), relay.into()],
            vec!["challenge".into(), challenge.into()],
        ],
        String::new(),
    )
}
