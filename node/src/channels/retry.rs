//! The delivery retry policy as pure functions of time: the wait before the next attempt, a
//! circuit breaker per channel, and a token bucket that paces sends. The delivery worker owns
//! one of each per channel and passes `now` in, so the rules are tested without a clock.

use std::time::{Duration, Instant};

/// The wait before attempt `attempt + 1` after `attempt` failures (1-based): exponential from
/// `base`, capped at `max`, with full jitter (`jitter` in `[0, 1)` picks the point), but never
/// shorter than what the platform asked for.
pub fn backoff(
    attempt: u32,
    base: Duration,
    max: Duration,
    jitter: f64,
    retry_after: Option<Duration>,
) -> Duration {
    let exp = base
        .checked_mul(1u32 << attempt.saturating_sub(1).min(20))
        .unwrap_or(max)
        .min(max);
    let jittered = exp.mul_f64(jitter.clamp(0.0, 1.0));
    match retry_after {
        // The platform said when: wait that (it can exceed `max`), plus up to 10 % so a
        // fleet of workers does not come back in the same instant.
        Some(r) => r + r.mul_f64(0.1 * jitter.clamp(0.0, 1.0)),
        None => jittered,
    }
}

/// Where a channel's circuit is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CircuitState {
    /// Calls go through.
    Closed,
    /// Calls are refused until the instant given.
    Open(Instant),
    /// One trial call may go through; its result closes or opens the circuit again.
    HalfOpen,
}

impl CircuitState {
    /// The metric value: 0 closed, 1 open, 2 half open.
    pub fn gauge(self) -> i64 {
        match self {
            CircuitState::Closed => 0,
            CircuitState::Open(_) => 1,
            CircuitState::HalfOpen => 2,
        }
    }
}

/// A circuit breaker: after `threshold` consecutive retryable failures the channel's calls
/// are refused for `open_for`, then one trial call decides.
#[derive(Debug)]
pub struct CircuitBreaker {
    threshold: u32,
    open_for: Duration,
    failures: u32,
    state: CircuitState,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(threshold: u32, open_for: Duration) -> CircuitBreaker {
        CircuitBreaker {
            threshold: threshold.max(1),
            open_for,
            failures: 0,
            state: CircuitState::Closed,
        }
    }

    /// The state at `now` (an open circuit whose time is up is half open).
    pub fn state(&mut self, now: Instant) -> CircuitState {
        if let CircuitState::Open(until) = self.state
            && now >= until
        {
            self.state = CircuitState::HalfOpen;
        }
        self.state
    }

    /// Whether a call may go out at `now`.
    pub fn allows(&mut self, now: Instant) -> bool {
        !matches!(self.state(now), CircuitState::Open(_))
    }

    /// The platform answered (success, or a definite answer such as a rejection).
    pub fn on_answer(&mut self) {
        self.failures = 0;
        self.state = CircuitState::Closed;
    }

    /// The platform could not be reached or was overloaded.
    pub fn on_failure(&mut self, now: Instant) {
        self.failures += 1;
        if self.state == CircuitState::HalfOpen || self.failures >= self.threshold {
            self.state = CircuitState::Open(now + self.open_for);
        }
    }
}

/// A token bucket: `rate` sends per second, bursts up to `rate`.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate_per_s: u32, now: Instant) -> TokenBucket {
        let rate = f64::from(rate_per_s.max(1));
        TokenBucket {
            rate,
            tokens: rate,
            at: now,
        }
    }

    /// Takes a token at `now`: `None` if there was one, else how long until there is.
    pub fn take(&mut self, now: Instant) -> Option<Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            None
        } else {
            Some(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn backoff_doubles_with_full_jitter_and_a_cap() {
        let max = Duration::from_secs(60);
        assert_eq!(backoff(1, S, max, 0.999_999, None).as_millis(), 999);
        assert_eq!(backoff(2, S, max, 0.5, None), Duration::from_secs(1));
        assert_eq!(backoff(3, S, max, 0.5, None), Duration::from_secs(2));
        assert_eq!(backoff(30, S, max, 0.5, None), Duration::from_secs(30));
        assert_eq!(backoff(3, S, max, 0.0, None), Duration::ZERO);
    }

    #[test]
    fn retry_after_is_honoured_even_above_the_cap() {
        let r = Some(Duration::from_secs(35));
        let w = backoff(1, S, Duration::from_secs(10), 0.0, r);
        assert_eq!(w, Duration::from_secs(35));
        let w = backoff(1, S, Duration::from_secs(10), 0.99, r);
        assert!(w >= Duration::from_secs(35) && w < Duration::from_millis(38_500));
    }

    #[test]
    fn breaker_opens_after_threshold_and_one_trial_decides() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(3, Duration::from_secs(30));
        b.on_failure(t0);
        b.on_failure(t0);
        assert!(b.allows(t0));
        b.on_failure(t0);
        assert!(!b.allows(t0 + Duration::from_secs(29)));
        assert_eq!(
            b.state(t0 + Duration::from_secs(30)),
            CircuitState::HalfOpen
        );
        // The trial fails: open again at once, without waiting for three more failures.
        b.on_failure(t0 + Duration::from_secs(30));
        assert!(!b.allows(t0 + Duration::from_secs(31)));
        assert!(b.allows(t0 + Duration::from_secs(60)));
        b.on_answer();
        assert_eq!(b.state(t0 + Duration::from_secs(61)), CircuitState::Closed);
    }

    #[test]
    fn an_answer_resets_the_failure_count() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(2, Duration::from_secs(5));
        b.on_failure(t0);
        b.on_answer();
        b.on_failure(t0);
        assert!(b.allows(t0));
    }

    #[test]
    fn bucket_paces_after_a_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(2, t0);
        assert_eq!(b.take(t0), None);
        assert_eq!(b.take(t0), None);
        let wait = b.take(t0).expect("empty");
        assert_eq!(wait, Duration::from_millis(500));
        assert_eq!(b.take(t0 + Duration::from_millis(500)), None);
    }
}
