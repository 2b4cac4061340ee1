//! What one client may cost the CA: the rate of enrolment requests (per client address and
//! for all anonymous clients together) and the TCP connections it may hold open.
//!
//! Enrolment needs no principal: a vTPM proves itself with its vEK chain, a host renewing
//! with its bound EK, and every EK or vEK certificate is public, so anyone can send
//! `enroll/start` requests that make the CA verify chains, run `TPM2_MakeCredential` and
//! keep a session. This module owns the token buckets that bound that
//! ([`RateLimiter`]) and the count of open connections ([`ConnectionLimiter`]); the numbers
//! are the store's [`Limits`] (`config.json`). The limits on open sessions are
//! [`crate::enroll`]'s, which keeps the sessions. Clients are told apart by address, IPv6
//! ones by their /64 (one host usually has a whole /64).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// How many client addresses the rate limiter tracks; beyond that, idle ones are forgotten
/// and, if none is idle, new addresses share the overall bucket only.
const MAX_TRACKED_CLIENTS: usize = 65_536;

/// The limits, in `config.json` (`limits`). Defaults are generous for real hosts and vTPMs
/// (a host enrolls once and renews rarely) and tight for a flood from one address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Enrolment requests (`enroll/start` and `enroll/finish`) one client address may send
    /// at once ...
    pub enroll_burst_per_client: u32,
    /// ... and per minute after that.
    pub enroll_per_minute_per_client: u32,
    /// Enrolment requests all clients together may send at once without an enrolment or
    /// admin token (requests with one are limited per client only) ...
    pub enroll_burst: u32,
    /// ... and per minute after that.
    pub enroll_per_minute: u32,
    /// Open enrolment sessions of requests without a token, per client address ...
    pub sessions_per_client: u32,
    /// ... and in all. Sessions of token-authorised enrolments are counted apart (one per
    /// token) and never make room for, or room by evicting, anonymous ones.
    pub sessions: u32,
    /// Open TCP connections per client address ...
    pub connections_per_client: u32,
    /// ... and in all. Read when the server starts.
    pub connections: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            enroll_burst_per_client: 30,
            enroll_per_minute_per_client: 120,
            enroll_burst: 300,
            enroll_per_minute: 1200,
            sessions_per_client: 16,
            sessions: 10_000,
            connections_per_client: 32,
            connections: 1024,
        }
    }
}

/// The key a client address is counted under: IPv4 addresses (also IPv4-mapped IPv6 ones)
/// as they are, IPv6 addresses by their /64.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// A token bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: u32, now: Instant) -> Bucket {
        Bucket {
            tokens: f64::from(burst),
            at: now,
        }
    }

    fn refill(&mut self, burst: u32, per_minute: u32, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * f64::from(per_minute) / 60.0).min(f64::from(burst));
        self.at = now;
    }

    /// Takes one token if there is one.
    fn take(&mut self, burst: u32, per_minute: u32, now: Instant) -> bool {
        self.refill(burst, per_minute, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn is_full(&mut self, burst: u32, per_minute: u32, now: Instant) -> bool {
        self.refill(burst, per_minute, now);
        self.tokens >= f64::from(burst)
    }
}

/// Which bucket refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The client's own.
    Client,
    /// The one all anonymous clients share.
    Overall,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The enrolment request buckets.
#[derive(Debug)]
pub struct RateLimiter {
    clients: Mutex<HashMap<IpAddr, Bucket>>,
    overall: Mutex<Option<Bucket>>,
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter {
            clients: Mutex::new(HashMap::new()),
            overall: Mutex::new(None),
        }
    }
}

impl RateLimiter {
    /// Counts one request from `client` against its own bucket (`None`: an in-process
    /// caller, not limited).
    pub fn client(&self, limits: &Limits, client: Option<IpAddr>) -> Result<(), Refused> {
        let Some(ip) = client else {
            return Ok(());
        };
        let (burst, rate) = (
            limits.enroll_burst_per_client,
            limits.enroll_per_minute_per_client,
        );
        let now = Instant::now();
        let key = client_key(ip);
        let mut clients = lock(&self.clients);
        if !clients.contains_key(&key) && clients.len() >= MAX_TRACKED_CLIENTS {
            clients.retain(|_, b| !b.is_full(burst, rate, now));
            if clients.len() >= MAX_TRACKED_CLIENTS {
                // Every tracked client is busy: the new one is limited by the overall
                // bucket alone (which anonymous requests pass anyway).
                return Ok(());
            }
        }
        let bucket = clients
            .entry(key)
            .or_insert_with(|| Bucket::full(burst, now));
        if bucket.take(burst, rate, now) {
            Ok(())
        } else {
            Err(Refused::Client)
        }
    }

    /// Counts one request without a valid token against the bucket all such requests share.
    pub fn anonymous(&self, limits: &Limits) -> Result<(), Refused> {
        let now = Instant::now();
        let mut overall = lock(&self.overall);
        let bucket = overall.get_or_insert_with(|| Bucket::full(limits.enroll_burst, now));
        if bucket.take(limits.enroll_burst, limits.enroll_per_minute, now) {
            Ok(())
        } else {
            Err(Refused::Overall)
        }
    }
}

/// Counts open connections, per client address and in all.
#[derive(Debug)]
pub struct ConnectionLimiter {
    per_client: usize,
    total: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// An open connection, counted until it is dropped.
#[derive(Debug)]
pub struct ConnectionPermit {
    limiter: Arc<ConnectionLimiter>,
    key: IpAddr,
}

impl ConnectionLimiter {
    pub fn new(limits: &Limits) -> Arc<ConnectionLimiter> {
        Arc::new(ConnectionLimiter {
            per_client: usize::try_from(limits.connections_per_client).unwrap_or(usize::MAX),
            total: usize::try_from(limits.connections).unwrap_or(usize::MAX),
            open: Mutex::new((0, HashMap::new())),
        })
    }

    /// A permit for one more connection from `ip`, if neither limit is reached.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<ConnectionPermit> {
        let key = client_key(ip);
        let mut open = lock(&self.open);
        let (total, clients) = &mut *open;
        let mine = clients.get(&key).copied().unwrap_or(0);
        if *total >= self.total || mine >= self.per_client {
            return None;
        }
        *total += 1;
        clients.insert(key, mine + 1);
        Some(ConnectionPermit {
            limiter: Arc::clone(self),
            key,
        })
    }

    /// Open connections: in all, and of `ip`.
    pub fn open(&self, ip: IpAddr) -> (usize, usize) {
        let open = lock(&self.open);
        (open.0, open.1.get(&client_key(ip)).copied().unwrap_or(0))
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut open = lock(&self.limiter.open);
        let (total, clients) = &mut *open;
        *total = total.saturating_sub(1);
        if let Some(n) = clients.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                clients.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_client_gets_its_burst_then_its_rate() {
        let limits = Limits {
            enroll_burst_per_client: 3,
            enroll_per_minute_per_client: 60,
            ..Limits::default()
        };
        let r = RateLimiter::default();
        for _ in 0..3 {
            r.client(&limits, Some(ip("192.0.2.1"))).unwrap();
        }
        assert_eq!(
            r.client(&limits, Some(ip("192.0.2.1"))),
            Err(Refused::Client)
        );
        // Another client has its own bucket; in-process callers have none.
        r.client(&limits, Some(ip("192.0.2.2"))).unwrap();
        r.client(&limits, None).unwrap();
        // One a second comes back.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        r.client(&limits, Some(ip("192.0.2.1"))).unwrap();
        assert!(r.client(&limits, Some(ip("192.0.2.1"))).is_err());
    }

    #[test]
    fn the_overall_bucket_is_shared() {
        let limits = Limits {
            enroll_burst: 2,
            enroll_per_minute: 1,
            ..Limits::default()
        };
        let r = RateLimiter::default();
        r.anonymous(&limits).unwrap();
        r.anonymous(&limits).unwrap();
        assert_eq!(r.anonymous(&limits), Err(Refused::Overall));
    }

    #[test]
    fn ipv6_clients_count_by_their_64() {
        assert_eq!(client_key(ip("2001:db8:1:2:3:4:5:6")), ip("2001:db8:1:2::"));
        assert_eq!(client_key(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(client_key(ip("192.0.2.1")), ip("192.0.2.1"));
    }

    #[test]
    fn connections_are_counted_until_dropped() {
        let limits = Limits {
            connections_per_client: 2,
            connections: 3,
            ..Limits::default()
        };
        let l = ConnectionLimiter::new(&limits);
        let a1 = l.try_acquire(ip("192.0.2.1")).unwrap();
        let _a2 = l.try_acquire(ip("192.0.2.1")).unwrap();
        assert!(l.try_acquire(ip("192.0.2.1")).is_none(), "per client");
        let _b1 = l.try_acquire(ip("192.0.2.2")).unwrap();
        assert!(l.try_acquire(ip("192.0.2.3")).is_none(), "in all");
        assert_eq!(l.open(ip("192.0.2.1")), (3, 2));
        drop(a1);
        assert_eq!(l.open(ip("192.0.2.1")), (2, 1));
        let _c1 = l.try_acquire(ip("192.0.2.3")).unwrap();
    }
}
