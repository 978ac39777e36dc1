//! What every TCP connection passes before any HTTP is read: TCP_NODELAY
//! (small answers must not wait for delayed acknowledgements), a
//! relay-wide cap, a cap per client address (IPv6 counted by /64), and a
//! deadline by which it must have become a WebSocket. A connection over a
//! cap is answered `503` and closed at once, before it costs a task.
//!
//! A trusted proxy (`trusted_proxies`) is not capped per address here: its
//! clients are counted after the upgrade by the address its
//! `X-Forwarded-For` or `Forwarded` header gives ([`client_ip`]).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::http::HeaderMap;
use axum::serve::{IncomingStream, Listener};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use super::metrics::Metrics;

/// An address range, `10.0.0.0/8` or `2001:db8::/32` or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `ADDR` or `ADDR/PREFIX`.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("'{text}' is not an address or a CIDR range"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.trim().parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(format!("'{text}': the prefix must be 0 to {max}")),
            },
        };
        Ok(Cidr { network, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// What per-address caps count by: an IPv4 address, or an IPv6 /64 (one
/// subscriber's usual allocation, so a client cannot dodge the cap by
/// walking its own prefix).
pub fn address_key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64))),
        v4 => v4,
    }
}

/// The client's address: `peer`, unless `peer` is a trusted proxy, then the
/// nearest untrusted address its `X-Forwarded-For` (or `Forwarded: for=`)
/// names, read from the right (addresses further left were written by the
/// client itself and prove nothing).
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let mut hops: Vec<IpAddr> = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        let Ok(value) = value.to_str() else { continue };
        hops.extend(value.split(',').filter_map(parse_hop));
    }
    if hops.is_empty() {
        for value in headers.get_all("forwarded") {
            let Ok(value) = value.to_str() else { continue };
            for element in value.split(',') {
                for pair in element.split(';') {
                    let Some((name, value)) = pair.split_once('=') else {
                        continue;
                    };
                    if name.trim().eq_ignore_ascii_case("for") {
                        hops.extend(parse_hop(value));
                    }
                }
            }
        }
    }
    hops.into_iter()
        .rev()
        .find(|&ip| !is_trusted(ip))
        .unwrap_or(peer)
}

/// One hop of a forwarding header: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`,
/// `"[2001:db8::1]:443"`; `None` for `unknown` and obfuscated names.
fn parse_hop(text: &str) -> Option<IpAddr> {
    let text = text.trim().trim_matches('"');
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    let inner = text.strip_prefix('[')?.split(']').next()?;
    inner.parse().ok()
}

/// The gate's settings.
#[derive(Debug, Clone)]
pub struct GateConfig {
    pub max_connections: usize,
    pub max_per_address: usize,
    pub handshake_timeout: Duration,
    pub trusted_proxies: Vec<Cidr>,
}

#[derive(Debug)]
struct Counts {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

#[derive(Debug)]
struct Shared {
    config: GateConfig,
    counts: Mutex<Counts>,
    metrics: Metrics,
}

/// The relay's listener: a [`TcpListener`] whose connections pass the gate.
pub struct Gate {
    listener: TcpListener,
    shared: Arc<Shared>,
}

impl Gate {
    pub fn new(listener: TcpListener, config: GateConfig, metrics: Metrics) -> Gate {
        Gate {
            listener,
            shared: Arc::new(Shared {
                config,
                counts: Mutex::new(Counts {
                    total: 0,
                    per_address: HashMap::new(),
                }),
                metrics,
            }),
        }
    }
}

/// A TCP connection's place under the caps; given back on drop.
#[derive(Debug)]
struct Slot {
    shared: Arc<Shared>,
    /// The per-address key, unless the peer is a trusted proxy.
    key: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.shared.counts.lock();
        counts.total -= 1;
        if let Some(key) = self.key
            && let Some(n) = counts.per_address.get_mut(&key)
        {
            *n -= 1;
            if *n == 0 {
                counts.per_address.remove(&key);
            }
        }
        drop(counts);
        self.shared.metrics.tcp_connections.dec();
    }
}

impl Shared {
    /// A slot for a connection from `ip`, or why there is none.
    fn admit(self: &Arc<Shared>, ip: IpAddr) -> Result<Slot, &'static str> {
        let trusted = self.config.trusted_proxies.iter().any(|c| c.contains(ip));
        let key = (!trusted).then(|| address_key(ip));
        let mut counts = self.counts.lock();
        if counts.total >= self.config.max_connections {
            return Err("relay_full");
        }
        if let Some(key) = key {
            let n = counts.per_address.entry(key).or_insert(0);
            if *n >= self.config.max_per_address {
                return Err("address_full");
            }
            *n += 1;
        }
        counts.total += 1;
        drop(counts);
        self.metrics.tcp_connections.inc();
        Ok(Slot {
            shared: Arc::clone(self),
            key,
        })
    }
}

/// The answer to a connection over a cap, written without waiting.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\
Content-Type: text/plain\r\nContent-Length: 38\r\nRetry-After: 10\r\n\r\n\
too many connections; try again later\n";

impl Listener for Gate {
    type Io = GatedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (GatedStream, SocketAddr) {
        loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: the connection
                    // waits in the backlog until one is freed.
                    warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if let Err(e) = stream.set_nodelay(true) {
                debug!(%peer, error = %e, "cannot set TCP_NODELAY");
            }
            match self.shared.admit(peer.ip()) {
                Ok(slot) => {
                    let deadline = self.shared.config.handshake_timeout;
                    return (
                        GatedStream {
                            inner: stream,
                            upgraded: Arc::new(AtomicBool::new(false)),
                            deadline: Box::pin(tokio::time::sleep(deadline)),
                            timed_out: false,
                            shared: Arc::clone(&self.shared),
                            _slot: slot,
                        },
                        peer,
                    );
                }
                Err(reason) => {
                    self.shared
                        .metrics
                        .connections_refused
                        .with_label_values(&[reason])
                        .inc();
                    debug!(%peer, reason, "refused a connection");
                    let _ = stream.try_write(REFUSED);
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// A connection that passed the gate. Reading from it fails once its
/// handshake deadline passes before it became a WebSocket.
pub struct GatedStream {
    inner: TcpStream,
    upgraded: Arc<AtomicBool>,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timed_out: bool,
    shared: Arc<Shared>,
    _slot: Slot,
}

impl AsyncRead for GatedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.upgraded.load(Ordering::Acquire) && this.deadline.as_mut().poll(cx).is_ready() {
            if !this.timed_out {
                this.timed_out = true;
                this.shared.metrics.handshake_timeouts.inc();
            }
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no WebSocket upgrade within the handshake timeout",
            )));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for GatedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// What a request handler knows of its connection.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// Set when the connection is upgraded: the handshake deadline no
    /// longer applies.
    upgraded: Arc<AtomicBool>,
}

impl Peer {
    pub fn mark_upgraded(&self) {
        self.upgraded.store(true, Ordering::Release);
    }
}

impl Connected<IncomingStream<'_, Gate>> for Peer {
    fn connect_info(stream: IncomingStream<'_, Gate>) -> Peer {
        Peer {
            addr: *stream.remote_addr(),
            upgraded: Arc::clone(&stream.io().upgraded),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn gate(max_connections: usize, max_per_address: usize) -> (Gate, SocketAddr) {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let listener = TcpListener::from_std(std_listener).unwrap();
        let config = GateConfig {
            max_connections,
            max_per_address,
            handshake_timeout: Duration::from_secs(60),
            trusted_proxies: Vec::new(),
        };
        (Gate::new(listener, config, Metrics::new().unwrap()), addr)
    }

    /// Every accepted socket has TCP_NODELAY: without it, every answer
    /// with an event in it waited ~40 ms for a delayed acknowledgement.
    #[tokio::test]
    async fn accepted_sockets_do_not_delay_small_writes() {
        let (mut gate, addr) = gate(10, 10);
        let _client = TcpStream::connect(addr).await.unwrap();
        let (stream, _) = gate.accept().await;
        assert!(stream.inner.nodelay().unwrap());
    }

    /// Over a cap, a connection is answered 503 and closed at accept; a
    /// slot given back admits the next one.
    #[tokio::test]
    async fn caps_apply_at_accept() {
        use tokio::io::AsyncReadExt;
        let (mut gate, addr) = gate(10, 2);
        let mut clients = Vec::new();
        let mut admitted = Vec::new();
        for _ in 0..2 {
            clients.push(TcpStream::connect(addr).await.unwrap());
            admitted.push(gate.accept().await.0);
        }
        let mut third = TcpStream::connect(addr).await.unwrap();
        // The gate refuses the third while waiting for another to admit.
        let fourth = tokio::spawn(async move {
            let (stream, _) = gate.accept().await;
            (gate, stream)
        });
        let mut answer = String::new();
        third.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
        drop(admitted.pop());
        let _client = TcpStream::connect(addr).await.unwrap();
        let (gate, _stream) = fourth.await.unwrap();
        let refused = gate
            .shared
            .metrics
            .connections_refused
            .with_label_values(&["address_full"])
            .get();
        assert_eq!(refused, 1);
        assert_eq!(gate.shared.counts.lock().total, 2);
    }

    #[test]
    fn cidr_ranges() {
        let net = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(net.contains(ip("10.1.200.3")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!(net.contains(ip("::ffff:10.1.0.9")), "IPv4-mapped");
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:1::5")));
        assert!(!v6.contains(ip("2001:db9::5")));
        assert!(!v6.contains(ip("10.1.0.1")));
        assert!(Cidr::parse("127.0.0.1").unwrap().contains(ip("127.0.0.1")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        for bad in ["10.0.0.0/33", "fe80::/129", "host", "10.0.0/8", ""] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ipv6_counts_by_64() {
        assert_eq!(
            address_key(ip("2001:db8:1:2:aaaa::1")),
            address_key(ip("2001:db8:1:2:bbbb::7"))
        );
        assert_ne!(
            address_key(ip("2001:db8:1:2::1")),
            address_key(ip("2001:db8:1:3::1"))
        );
        assert_eq!(address_key(ip("::ffff:1.2.3.4")), ip("1.2.3.4"));
        assert_eq!(address_key(ip("1.2.3.4")), ip("1.2.3.4"));
    }

    #[test]
    fn forwarded_addresses_only_from_trusted_proxies() {
        let trusted = vec![Cidr::parse("10.0.0.0/8").unwrap()];
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            "6.6.6.6, 1.2.3.4, 10.0.0.2".parse().unwrap(),
        );
        // The proxy's own address is trusted; the nearest untrusted hop is
        // the client (6.6.6.6 was written by the client: ignored).
        assert_eq!(client_ip(ip("10.0.0.1"), &headers, &trusted), ip("1.2.3.4"));
        // From an untrusted peer the header means nothing.
        assert_eq!(client_ip(ip("5.5.5.5"), &headers, &trusted), ip("5.5.5.5"));
        // No header: the proxy itself.
        assert_eq!(
            client_ip(ip("10.0.0.1"), &HeaderMap::new(), &trusted),
            ip("10.0.0.1")
        );
        let mut forwarded = HeaderMap::new();
        forwarded.insert(
            "forwarded",
            "for=192.0.2.60;proto=https, for=\"[2001:db8:cafe::17]:4711\""
                .parse()
                .unwrap(),
        );
        assert_eq!(
            client_ip(ip("10.0.0.1"), &forwarded, &trusted),
            ip("2001:db8:cafe::17")
        );
        let mut junk = HeaderMap::new();
        junk.insert("x-forwarded-for", "unknown, not-an-ip".parse().unwrap());
        assert_eq!(client_ip(ip("10.0.0.1"), &junk, &trusted), ip("10.0.0.1"));
    }
}
