//! Relay URLs in one normalized form, so that `wss://Relay.Example.com:443/`
//! and `wss://relay.example.com` are one relay and get one connection.

use std::fmt;

/// A normalized relay URL: scheme `ws` or `wss` in lower case, host in
/// lower case, the scheme's default port dropped, no trailing slash, no
/// user info, query or fragment.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelayUrl(String);

impl RelayUrl {
    /// Parses and normalizes `text`; the error says what is wrong.
    pub fn parse(text: &str) -> Result<RelayUrl, String> {
        let text = text.trim();
        let bad = |why: &str| format!("relay URL \"{text}\": {why}");
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| bad("no scheme (expected ws:// or wss://)"))?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "ws" => 80,
            "wss" => 443,
            _ => return Err(bad("the scheme must be ws or wss")),
        };
        if rest.contains(['?', '#']) {
            return Err(bad("a relay URL has no query or fragment"));
        }
        let (authority, path) = match rest.find('/') {
            Some(at) => rest.split_at(at),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(bad("a relay URL has no user info"));
        }
        let (host, port) = split_host_port(authority).ok_or_else(|| bad("no host"))?;
        let port = match port {
            None => None,
            Some(port) => {
                let port: u16 = port.parse().map_err(|_| bad("the port is not a number"))?;
                (port != default_port).then_some(port)
            }
        };
        let host = host.to_ascii_lowercase();
        if host.is_empty()
            || !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-.:[]_".contains(c))
        {
            return Err(bad("the host has characters a host name cannot have"));
        }
        let path = path.trim_end_matches('/');
        let mut url = format!("{scheme}://{host}");
        if let Some(port) = port {
            url.push_str(&format!(":{port}"));
        }
        url.push_str(path);
        Ok(RelayUrl(url))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The host, without brackets for IPv6.
    pub fn host(&self) -> &str {
        let rest = self.0.split_once("://").map_or("", |(_, rest)| rest);
        let authority = rest.split('/').next().unwrap_or("");
        let host = split_host_port(authority).map_or(authority, |(host, _)| host);
        host.trim_start_matches('[').trim_end_matches(']')
    }

    /// Whether the host names this machine or a private network: loopback,
    /// private, link-local, unique-local or unspecified addresses,
    /// `localhost`, `*.localhost`, `*.local`, `*.internal`, or a name without
    /// a dot. A relay list (kind 10002) is written by anyone, so a service
    /// that dials the relays lists name refuses these (unless told
    /// otherwise) rather than let a stranger aim it at its own network. A
    /// public name that resolves to a private address is not caught here.
    pub fn is_private(&self) -> bool {
        use std::net::IpAddr;
        let host = self.host();
        match host.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => {
                ip.is_loopback()
                    || ip.is_private()
                    || ip.is_link_local()
                    || ip.is_unspecified()
                    || ip.is_broadcast()
                    || ip.octets()[0] == 0
                    || (ip.octets()[0] == 100 && (64..128).contains(&ip.octets()[1]))
            }
            Ok(IpAddr::V6(ip)) => {
                let first = ip.segments()[0];
                ip.is_loopback()
                    || ip.is_unspecified()
                    || (first & 0xfe00) == 0xfc00
                    || (first & 0xffc0) == 0xfe80
                    || ip
                        .to_ipv4_mapped()
                        .is_some_and(|v4| RelayUrl(format!("ws://{v4}")).is_private())
            }
            Err(_) => {
                !host.contains('.')
                    || host.ends_with(".localhost")
                    || host.ends_with(".local")
                    || host.ends_with(".internal")
            }
        }
    }
}

/// FNV-1a over `bytes`: a stable, cheap 64-bit hash (resume file names,
/// per-relay jitter seeds), the same on every run and machine.
pub(crate) fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn split_host_port(authority: &str) -> Option<(&str, Option<&str>)> {
    if authority.starts_with('[') {
        let end = authority.find(']')?;
        let host = &authority[..=end];
        let rest = &authority[end + 1..];
        return match rest.strip_prefix(':') {
            Some(port) => Some((host, Some(port))),
            None if rest.is_empty() => Some((host, None)),
            None => None,
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host, Some(port))),
        None => Some((authority, None)),
    }
}

impl fmt::Display for RelayUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_one_relay_are_one_url() {
        for text in [
            "wss://relay.example.com",
            "wss://relay.example.com/",
            "WSS://Relay.Example.COM:443",
            " wss://relay.example.com:443/ ",
        ] {
            assert_eq!(
                RelayUrl::parse(text).unwrap().as_str(),
                "wss://relay.example.com",
                "{text}"
            );
        }
        assert_eq!(
            RelayUrl::parse("ws://127.0.0.1:7777/").unwrap().as_str(),
            "ws://127.0.0.1:7777"
        );
        assert_eq!(
            RelayUrl::parse("ws://[::1]:80/nostr/").unwrap().as_str(),
            "ws://[::1]/nostr"
        );
        assert_ne!(
            RelayUrl::parse("ws://relay.example.com").unwrap(),
            RelayUrl::parse("wss://relay.example.com").unwrap()
        );
    }

    #[test]
    fn private_hosts_are_known() {
        for text in [
            "ws://127.0.0.1:7777",
            "ws://localhost:8080",
            "ws://10.1.2.3",
            "ws://192.168.0.1",
            "ws://172.20.0.5",
            "ws://169.254.169.254",
            "ws://0.0.0.0",
            "ws://100.64.0.1",
            "ws://[::1]:80",
            "ws://[fd00::1]",
            "ws://[fe80::1]",
            "ws://[::ffff:127.0.0.1]",
            "ws://redis",
            "ws://db.internal",
            "ws://printer.local",
        ] {
            assert!(RelayUrl::parse(text).unwrap().is_private(), "{text}");
        }
        for text in [
            "wss://relay.damus.io",
            "wss://8.8.8.8",
            "ws://172.32.0.1",
            "wss://[2001:db8::1]",
        ] {
            assert!(!RelayUrl::parse(text).unwrap().is_private(), "{text}");
        }
        assert_eq!(RelayUrl::parse("ws://[::1]:81/x").unwrap().host(), "::1");
        assert_eq!(RelayUrl::parse("wss://a.b:99/x").unwrap().host(), "a.b");
    }

    #[test]
    fn what_is_not_a_relay_url_is_named() {
        for (text, why) in [
            ("relay.example.com", "no scheme"),
            ("https://relay.example.com", "ws or wss"),
            ("wss://", "host"),
            ("wss://relay.example.com:99999", "port"),
            ("wss://user@relay.example.com", "user info"),
            ("wss://relay.example.com/?x=1", "query"),
            ("wss://relay example.com", "characters"),
            ("wss://[::1", "no host"),
        ] {
            let error = RelayUrl::parse(text).unwrap_err();
            assert!(error.contains(why), "{text}: {error}");
        }
    }
}
