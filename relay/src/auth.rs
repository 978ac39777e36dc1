//! NIP-42 authentication: each connection gets a challenge when it opens;
//! a client proves a key by signing a kind 22242 event naming this relay
//! and the challenge. A connection may prove several keys.
//!
//! What it guards here: direct messages (kind 4) and gift wraps (kinds 1059
//! and 1060) are served only to a connection authenticated as their author
//! or as a recipient (`p` tag); asking for those kinds before authenticating
//! gets `CLOSED` with `auth-required:`.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::RwLock;

use super::rules::RulesHandle;

use megalith::event::{Event, EventRef, Pubkey};
use megalith::{Filter, Limits};

/// The kind of an authentication event.
pub const AUTH_KIND: u16 = 22242;

/// Kinds served only to their author or a recipient.
pub const PRIVATE_KINDS: [u16; 3] = [4, 1059, 1060];

/// How far `created_at` of an authentication event may be from now.
pub const AUTH_WINDOW_SECS: u64 = 600;

/// Whether events of `kind` are private.
pub fn is_private(kind: u16) -> bool {
    PRIVATE_KINDS.contains(&kind)
}

/// Whether a filter asks for private kinds by name.
pub fn names_private_kinds(filter: &Filter) -> bool {
    filter
        .kinds
        .as_ref()
        .is_some_and(|kinds| kinds.iter().any(|&k| is_private(k)))
}

/// A connection's side of NIP-42: its challenge and the keys it proved.
#[derive(Debug)]
pub struct Viewer {
    challenge: String,
    keys: RwLock<Vec<Pubkey>>,
    /// The relay's access rules (what kinds this connection may read).
    rules: Arc<RulesHandle>,
}

impl Viewer {
    pub fn new(rules: Arc<RulesHandle>) -> Viewer {
        let bytes: [u8; 16] = secp256k1::rand::random();
        Viewer {
            challenge: bytes.iter().map(|b| format!("{b:02x}")).collect(),
            keys: RwLock::new(Vec::new()),
            rules,
        }
    }

    /// The keys this connection proved.
    pub fn keys(&self) -> Vec<Pubkey> {
        self.keys.read().clone()
    }

    pub fn challenge(&self) -> &str {
        &self.challenge
    }

    pub fn is_authenticated(&self) -> bool {
        !self.keys.read().is_empty()
    }

    pub fn add(&self, key: Pubkey) {
        let mut keys = self.keys.write();
        if !keys.contains(&key) {
            keys.push(key);
        }
    }

    /// Whether this connection may be sent `event`: one of a kind the
    /// access rules let it read; if private, only if it proved the author's
    /// key or a `p`-tagged recipient's.
    pub fn may_see(&self, event: &EventRef<'_>) -> bool {
        let keys = self.keys.read();
        if !self.rules.current().may_read(event.kind(), &keys) {
            return false;
        }
        if !is_private(event.kind()) {
            return true;
        }
        if keys.is_empty() {
            return false;
        }
        if keys.contains(&event.pubkey()) {
            return true;
        }
        let mut value = String::new();
        event.tags().any(|tag| {
            if !tag.name().is_some_and(|n| n.eq_str("p")) {
                return false;
            }
            let Some(field) = tag.value() else {
                return false;
            };
            value.clear();
            field.write_str_to(&mut value);
            Pubkey::from_hex(&value).is_ok_and(|p| keys.contains(&p))
        })
    }
}

impl Default for Viewer {
    /// A viewer under no access rules.
    fn default() -> Viewer {
        Viewer::new(Arc::new(RulesHandle::open()))
    }
}

/// Where the relay is, for checking an authentication event's `relay` tag.
#[derive(Debug, Clone)]
pub enum RelayUrl {
    /// The configured URL (`relay_url`).
    Configured(String),
    /// Not configured: the `Host` the client connected to.
    Host(String),
}

/// `wss://Relay.example.com:443/` → `relay.example.com` (port kept unless
/// it is the scheme's default; path and trailing slash dropped).
fn authority(url: &str) -> Option<String> {
    let url = url.trim();
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
        None => (String::new(), url),
    };
    let host_port = rest.split(['/', '?', '#']).next()?.to_ascii_lowercase();
    if host_port.is_empty() {
        return None;
    }
    let default_port = match scheme.as_str() {
        "wss" | "https" => Some(":443"),
        "ws" | "http" => Some(":80"),
        _ => None,
    };
    Some(match default_port {
        Some(port) => host_port
            .strip_suffix(port)
            .map_or(host_port.clone(), str::to_string),
        None => host_port,
    })
}

impl RelayUrl {
    /// Whether an authentication event's `relay` tag names this relay.
    pub fn matches(&self, tag: &str) -> bool {
        let Some(tag) = authority(tag) else {
            return false;
        };
        match self {
            RelayUrl::Configured(url) => authority(url).is_some_and(|a| a == tag),
            RelayUrl::Host(host) => {
                let host = host.trim().to_ascii_lowercase();
                // The Host header carries no scheme: a default port may be
                // left out on either side.
                let bare = |s: &str| {
                    s.strip_suffix(":443")
                        .or_else(|| s.strip_suffix(":80"))
                        .unwrap_or(s)
                        .to_string()
                };
                tag == host || bare(&tag) == bare(&host)
            }
        }
    }
}

/// Checks an `["AUTH", event]`: the event itself (id, signature), its kind,
/// its `challenge` and `relay` tags and its age. The error is the `OK`
/// message.
pub fn verify(
    raw: &str,
    limits: &Limits,
    viewer: &Viewer,
    relay: &RelayUrl,
) -> Result<Event, String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let event = Event::from_json_with(raw, limits).map_err(|e| format!("invalid: {e}"))?;
    event.verify().map_err(|e| format!("invalid: {e}"))?;
    if event.kind != AUTH_KIND {
        return Err(format!(
            "invalid: an authentication event has kind {AUTH_KIND}, not {}",
            event.kind
        ));
    }
    if event.created_at.abs_diff(now) > AUTH_WINDOW_SECS {
        return Err(format!(
            "invalid: created_at is {} s from now; it must be within {AUTH_WINDOW_SECS} s",
            event.created_at.abs_diff(now)
        ));
    }
    match event.tag_value("challenge") {
        Some(challenge) if challenge == viewer.challenge() => {}
        Some(_) => return Err("invalid: the challenge is not this connection's".to_string()),
        None => return Err("invalid: the event has no challenge tag".to_string()),
    }
    match event.tag_value("relay") {
        Some(url) if relay.matches(url) => {}
        Some(url) => {
            return Err(format!(
                "invalid: the relay tag names {}, not this relay",
                super::protocol::json_string(url)
            ));
        }
        None => return Err("invalid: the event has no relay tag".to_string()),
    }
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_urls_compare_by_authority() {
        let configured = RelayUrl::Configured("wss://Relay.Example.com/".into());
        assert!(configured.matches("wss://relay.example.com"));
        assert!(configured.matches("wss://relay.example.com:443/"));
        assert!(!configured.matches("wss://other.example.com"));
        assert!(!configured.matches("wss://relay.example.com:7777"));
        let host = RelayUrl::Host("127.0.0.1:7777".into());
        assert!(host.matches("ws://127.0.0.1:7777"));
        assert!(host.matches("ws://127.0.0.1:7777/"));
        assert!(!host.matches("ws://127.0.0.1:7778"));
        assert!(!host.matches(""));
        let proxied = RelayUrl::Host("relay.example.com".into());
        assert!(proxied.matches("wss://relay.example.com"));
    }
}
