//! Per-user request rate limits: one token bucket per user on each node.
//!
//! Buckets are per node, not cluster-wide: a user spreading requests over n nodes gets n times
//! the rate. A cluster-wide limit would cost a replicated write or a gossip round per request;
//! the per-node limit is what protects each node, which is what the limit is for.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Token buckets by user id.
pub struct RateLimiter {
    per_s: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Buckets untouched this long are full again and are dropped (bounds memory).
const IDLE: Duration = Duration::from_secs(60);

impl RateLimiter {
    /// `per_s` requests per second with bursts of `burst`; `per_s == 0` admits everything.
    pub fn new(per_s: u32, burst: u32) -> RateLimiter {
        RateLimiter {
            per_s: f64::from(per_s),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Admits one request of `user` at `now`, or says how long until one would be admitted.
    pub fn check(&self, user: &str, now: Instant) -> Result<(), Duration> {
        if self.per_s <= 0.0 {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > 100_000 {
            buckets.retain(|_, b| now.saturating_duration_since(b.at) < IDLE);
        }
        let b = buckets.entry(user.to_string()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.per_s).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.per_s))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_admitted_then_the_steady_rate() {
        let l = RateLimiter::new(10, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.check("a", t0).is_ok());
        }
        let wait = l.check("a", t0).expect_err("bucket empty");
        assert!(wait <= Duration::from_millis(100) && wait > Duration::ZERO);
        // Another user has their own bucket.
        assert!(l.check("b", t0).is_ok());
        // After 100 ms one more request is due.
        assert!(l.check("a", t0 + Duration::from_millis(100)).is_ok());
        assert!(l.check("a", t0 + Duration::from_millis(100)).is_err());
    }

    #[test]
    fn zero_rate_turns_limiting_off() {
        let l = RateLimiter::new(0, 0);
        let t0 = Instant::now();
        for _ in 0..1000 {
            assert!(l.check("a", t0).is_ok());
        }
    }
}
