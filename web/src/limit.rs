//! Per-address limits: a token bucket for `/start`, counted slots for
//! `/events` streams.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::WebConfig;

/// Addresses remembered before the idle ones are forgotten.
const MAX_ADDRESSES: usize = 65_536;

#[derive(Debug)]
pub struct Limits {
    burst: f64,
    every: Duration,
    starts: Mutex<HashMap<IpAddr, (f64, Instant)>>,
    streams: Arc<Mutex<Streams>>,
    max_streams: usize,
    max_per_address: usize,
}

#[derive(Debug, Default)]
struct Streams {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// A stream's place; given back when dropped.
#[derive(Debug)]
pub struct StreamSlot {
    streams: Arc<Mutex<Streams>>,
    address: IpAddr,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut streams = self.streams.lock();
        streams.total -= 1;
        if let Some(n) = streams.by_address.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                streams.by_address.remove(&self.address);
            }
        }
    }
}

impl Limits {
    pub fn new(config: &WebConfig) -> Limits {
        Limits {
            burst: f64::from(config.start_burst.max(1)),
            every: config.start_every,
            starts: Mutex::new(HashMap::new()),
            streams: Arc::default(),
            max_streams: config.max_streams,
            max_per_address: config.max_streams_per_address,
        }
    }

    /// Takes one `/start` for `address`, or says how long until it may.
    pub fn start(&self, address: IpAddr, now: Instant) -> Result<(), Duration> {
        let per_second = 1.0 / self.every.as_secs_f64().max(1e-3);
        let mut starts = self.starts.lock();
        if starts.len() >= MAX_ADDRESSES {
            // Forget the addresses whose buckets are full again.
            let (burst, every) = (self.burst, self.every.as_secs_f64());
            starts.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() / every.max(1e-3) < burst
            });
        }
        let (tokens, at) = starts.entry(address).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * per_second).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / per_second))
        }
    }

    /// A place for one more `/events` stream from `address`, if there is one.
    pub fn stream(&self, address: IpAddr) -> Option<StreamSlot> {
        let mut streams = self.streams.lock();
        let mine = streams.by_address.get(&address).copied().unwrap_or(0);
        if streams.total >= self.max_streams || mine >= self.max_per_address {
            return None;
        }
        streams.total += 1;
        *streams.by_address.entry(address).or_insert(0) += 1;
        Some(StreamSlot {
            streams: Arc::clone(&self.streams),
            address,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::new(&WebConfig {
            start_burst: 3,
            start_every: Duration::from_secs(6),
            max_streams: 3,
            max_streams_per_address: 2,
            ..WebConfig::default()
        })
    }

    #[test]
    fn starts_are_a_token_bucket_per_address() {
        let l = limits();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "::1".parse().unwrap());
        let t = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.start(a, t), Ok(()));
        }
        let wait = l.start(a, t).unwrap_err();
        assert!(
            wait > Duration::from_secs(5) && wait <= Duration::from_secs(6),
            "{wait:?}"
        );
        assert_eq!(l.start(b, t), Ok(()), "another address has its own bucket");
        assert!(l.start(a, t + Duration::from_secs(3)).is_err());
        assert_eq!(l.start(a, t + Duration::from_secs(7)), Ok(()));
        assert!(l.start(a, t + Duration::from_secs(7)).is_err());
    }

    #[test]
    fn streams_per_address_and_in_all() {
        let l = limits();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let s1 = l.stream(a).unwrap();
        let _s2 = l.stream(a).unwrap();
        assert!(l.stream(a).is_none(), "two per address");
        let _s3 = l.stream(b).unwrap();
        assert!(l.stream(b).is_none(), "three in all");
        drop(s1);
        assert!(
            l.stream(a).is_some(),
            "a closed stream gives its place back"
        );
    }
}
