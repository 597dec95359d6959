//! One adaptive rate limiter for every outbound request of every provider: a token bucket per
//! (credential, endpoint host, rate class), shared by all calls and all providers that use that
//! credential, because that is what the cloud meters (EC2 keeps its buckets per account and
//! region; an account is a credential, a region an endpoint host).
//!
//! Mirrored behaviour:
//! - the AWS SDKs' "adaptive" retry mode: a client-side token bucket whose fill rate drops on
//!   throttling answers and climbs back on successes (multiplicative decrease by 0.7, as the
//!   SDKs' CUBIC β; additive increase here), and which only starts limiting an unconfigured
//!   class once the cloud has throttled it (at 0.7 × the rate that was measured then);
//! - `Retry-After`: a throttling answer that names a delay holds the bucket's next token back at
//!   least that long.
//!
//! Callers wait in one queue per bucket and are served in order: only the first in line sleeps
//! until its token is there; it wakes the next when it goes (Go's `x/time/rate` has the same
//! "nobody races for a token" property with reservations, but a reservation's time is fixed
//! when it is made, so a rate lowered by throttling or a `Retry-After` only reaches callers who
//! come after the ones already waiting, and with a long line the cloud sees the old rate for
//! seconds). Here a throttling answer acts on the first in line at once, and the throttled
//! request goes back to the front of the line, not behind every later request: its caller (a
//! batch waiting for its slowest request) is not held back by the whole queue.
//!
//! Deliberate deviations:
//! - the key has no provider name: two providers (e.g. a provider and its canary) using one
//!   credential share one bucket, as they share the cloud's. Each provider's configured limit
//!   for the class is remembered, and the bucket runs at the lowest of them;
//! - a caller whose token would come after its call's deadline gets [`RateLimited`] at once
//!   instead of sleeping until the deadline: the call fails fast with a clear reason.
//!
//! The guest names a request's rate class in the [`RATE_CLASS_HEADER`] request header (for
//! EC2, the action family such as `describe` or `run-instances`); the host removes the header
//! before the request leaves. Without it the class is `""`, the endpoint's default bucket.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use mcm_driver::RateBucketStats;
#[cfg(test)]
use mcm_driver::credential_fingerprint;
use serde::{Deserialize, Serialize};

/// The request header a guest names the request's rate class in (removed before sending).
pub const RATE_CLASS_HEADER: &str = "mcm-wasm-rate-class";

/// Error codes in a throttling answer's body that mark it as throttled, whatever its status
/// (EC2 answers 503 `RequestLimitExceeded`; other AWS APIs 400 `Throttling`).
pub const DEFAULT_THROTTLE_CODES: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "TooManyRequestsException",
    "RequestThrottled",
    "RequestThrottledException",
    "SlowDown",
];

/// A request the cloud throttles this many times in a row is answered to the guest as the
/// cloud answered it (the `http` capability sends a throttled request again until then).
pub const MAX_THROTTLED_ATTEMPTS: u32 = 8;

/// How long a request throttled `attempt` times waits before it asks for a token again:
/// exponential from 100 ms, at most 5 s, with "equal jitter" (half fixed, half random), as the
/// AWS SDKs back off, so that the requests throttled together do not come back together.
pub fn throttle_backoff(attempt: u32) -> Duration {
    let ceiling = Duration::from_millis(100)
        .saturating_mul(1 << attempt.saturating_sub(1).min(6))
        .min(Duration::from_secs(5));
    // Jitter from the clock's nanoseconds: no cryptographic needs, no dependency.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let half = ceiling / 2;
    half + half.mul_f64(f64::from(nanos % 1000) / 1000.0)
}

/// The lowest rate a bucket is lowered to (requests per second).
const MIN_RATE: f64 = 0.25;
/// Multiplicative decrease on a throttling answer.
const BETA: f64 = 0.7;
/// A bucket lowers its rate at most once in this long: the answers to requests sent before the
/// decrease were throttled for the old rate and must not lower it again.
const DECREASE_SPACING: Duration = Duration::from_secs(1);
/// Additive increase per successful answer, as a share of the configured (or, unconfigured,
/// the current) rate.
const INCREASE_SHARE: f64 = 0.02;
/// Time constant of the measured send rate (an exponentially decayed count).
const MEASURE_TAU: f64 = 1.0;

/// A token bucket's size: `rate` tokens per second, at most `burst` saved up.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    pub rate: f64,
    pub burst: u32,
}

impl Limit {
    /// Is this a usable limit (a positive, finite rate and a burst of at least one)?
    pub fn check(&self) -> Result<(), String> {
        if !(self.rate.is_finite() && self.rate > 0.0) {
            return Err(format!("rate {} must be a positive number", self.rate));
        }
        if self.burst == 0 {
            return Err("burst must be at least 1".into());
        }
        Ok(())
    }
}

/// A provider's rate limits: per rate class, a default for the other classes, and the error
/// codes that mark a throttling answer besides HTTP 429.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimits {
    /// Limit per rate class (the guest's [`RATE_CLASS_HEADER`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub classes: BTreeMap<String, Limit>,
    /// For classes not listed; `None`: such a class is not limited until the cloud throttles it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Limit>,
    /// Error codes of a throttling answer; empty: [`DEFAULT_THROTTLE_CODES`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub throttle_codes: Vec<String>,
}

impl RateLimits {
    /// Is every limit usable? The error names the class.
    pub fn check(&self) -> Result<(), String> {
        for (class, limit) in &self.classes {
            limit.check().map_err(|e| format!("classes.{class}: {e}"))?;
        }
        if let Some(limit) = &self.default {
            limit.check().map_err(|e| format!("default: {e}"))?;
        }
        Ok(())
    }

    /// The configured limit of `class`.
    pub fn limit(&self, class: &str) -> Option<Limit> {
        self.classes.get(class).copied().or(self.default)
    }

    /// `other`'s entries over this one's (the operator's settings over the provider's defaults).
    pub fn overridden_by(&self, other: &RateLimits) -> RateLimits {
        let mut classes = self.classes.clone();
        classes.extend(other.classes.clone());
        RateLimits {
            classes,
            default: other.default.or(self.default),
            throttle_codes: if other.throttle_codes.is_empty() {
                self.throttle_codes.clone()
            } else {
                other.throttle_codes.clone()
            },
        }
    }

    /// Does an answer with this status and body say "throttled"?
    pub fn is_throttled(&self, status: u16, body: &[u8]) -> bool {
        if status == 429 {
            return true;
        }
        if status < 400 {
            return false;
        }
        // Error bodies are small; only their start is looked at.
        let text = String::from_utf8_lossy(&body[..body.len().min(4096)]);
        let has = |code: &str| text.contains(code);
        if self.throttle_codes.is_empty() {
            DEFAULT_THROTTLE_CODES.iter().any(|c| has(c))
        } else {
            self.throttle_codes.iter().any(|c| has(c))
        }
    }
}

/// What a bucket is for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct BucketKey {
    /// A short fingerprint of the credential ([`mcm_driver::credential_fingerprint`]).
    pub credential: String,
    /// The endpoint's host (and port, when not the scheme's default).
    pub host: String,
    /// The guest's rate class; `""` when it named none.
    pub class: String,
}

impl std::fmt::Display for BucketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let class = if self.class.is_empty() {
            "(default)"
        } else {
            &self.class
        };
        write!(
            f,
            "{} class {class} (credential {})",
            self.host, self.credential
        )
    }
}

/// A call would have waited past its deadline for a token.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error(
    "rate limited: the next request token of {key} comes in {wait:?}, after the call's deadline (current rate {rate:.2}/s)"
)]
pub struct RateLimited {
    pub key: BucketKey,
    pub wait: Duration,
    pub rate: f64,
}

/// Every bucket of the process.
#[derive(Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<BucketKey, Arc<Mutex<Bucket>>>>,
}

impl RateLimiter {
    pub fn new() -> RateLimiter {
        RateLimiter::default()
    }

    fn bucket(&self, key: &BucketKey) -> Arc<Mutex<Bucket>> {
        let mut buckets = self.buckets.lock().unwrap();
        buckets
            .entry(key.clone())
            .or_insert_with(|| Arc::new(Mutex::new(Bucket::new(Instant::now()))))
            .clone()
    }

    /// Take a token of `key` for `provider` (whose configured limit for the class is `limit`),
    /// waiting in line for it if the bucket is empty; [`RateLimited`] at once when, at the
    /// current rate, the token would come after `deadline`, or when `deadline` passes while
    /// waiting. `again`: a request the cloud throttled, which goes to the front of the line.
    /// Returns how long it waited.
    pub async fn acquire(
        &self,
        key: &BucketKey,
        provider: &str,
        limit: Option<Limit>,
        deadline: Instant,
        again: bool,
    ) -> Result<Duration, RateLimited> {
        let bucket = self.bucket(key);
        let (ticket, wake) = {
            let mut b = bucket.lock().unwrap();
            let now = Instant::now();
            b.configure(provider, limit, now);
            let (ticket, wake) = b.join(now, again);
            if now + b.expected_wait(ticket, now) > deadline {
                return Err(b.refuse(ticket, key, now));
            }
            (ticket, wake)
        };
        // Leaves the line if this future is dropped (the call ended) while it waits.
        let mut place = Place {
            bucket: &bucket,
            ticket,
            in_line: true,
        };
        loop {
            let now = Instant::now();
            let turn = {
                let mut b = bucket.lock().unwrap();
                let turn = b.turn(ticket, now);
                let late = match turn {
                    Turn::Go(_) => false,
                    Turn::At(at) => at > deadline,
                    // Behind others when the deadline came (the rate was lowered, or
                    // throttled requests went in front).
                    Turn::Behind => now >= deadline,
                };
                if late {
                    place.in_line = false;
                    return Err(b.refuse(ticket, key, now));
                }
                turn
            };
            match turn {
                Turn::Go(waited) => {
                    place.in_line = false;
                    return Ok(waited);
                }
                Turn::At(at) => tokio::time::sleep_until(at.into()).await,
                Turn::Behind => tokio::select! {
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep_until(deadline.into()) => {}
                },
            }
        }
    }

    /// The cloud throttled a request of `key`; `retry_after` from its answer.
    pub fn throttled(&self, key: &BucketKey, retry_after: Option<Duration>) {
        self.bucket(key)
            .lock()
            .unwrap()
            .throttled(Instant::now(), retry_after);
    }

    /// A request of `key` goes on the wire now (after its token, and a place among the
    /// call's requests in flight).
    pub fn sent(&self, key: &BucketKey) {
        self.bucket(key).lock().unwrap().sent(Instant::now());
    }

    /// A request of `key` was answered without throttling.
    pub fn succeeded(&self, key: &BucketKey) {
        self.bucket(key).lock().unwrap().succeeded();
    }

    /// Every bucket's figures, ordered by key.
    pub fn snapshot(&self) -> Vec<RateBucketStats> {
        let buckets: Vec<_> = self
            .buckets
            .lock()
            .unwrap()
            .iter()
            .map(|(k, b)| (k.clone(), b.clone()))
            .collect();
        let mut stats: Vec<_> = buckets
            .into_iter()
            .map(|(key, b)| {
                let b = b.lock().unwrap();
                RateBucketStats {
                    credential: key.credential,
                    host: key.host,
                    class: key.class,
                    rate: b.rate,
                    requests: b.requests,
                    throttled: b.throttled,
                    waited: b.waited,
                    rate_limited: b.rate_limited,
                }
            })
            .collect();
        stats.sort_by(|a, b| {
            (&a.credential, &a.host, &a.class).cmp(&(&b.credential, &b.host, &b.class))
        });
        stats
    }
}

/// A caller's place in a bucket's line; leaves the line when dropped still in it.
struct Place<'a> {
    bucket: &'a Mutex<Bucket>,
    ticket: Ticket,
    in_line: bool,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        if self.in_line {
            self.bucket.lock().unwrap().leave(self.ticket);
        }
    }
}

/// A place in a bucket's line.
type Ticket = u64;

/// What a caller in line does next.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Turn {
    /// Send now: its token is taken (how long it waited in line).
    Go(Duration),
    /// First in line: its token is there at this time.
    At(Instant),
    /// Others are ahead: it is woken when it is first.
    Behind,
}

/// A caller waiting in a bucket's line.
#[derive(Debug)]
struct Waiting {
    ticket: Ticket,
    joined: Instant,
    wake: Arc<Notify>,
}

/// One token bucket and its line of callers. Pure state (the wake-ups are handed to the
/// callers): every method takes the time it acts at.
#[derive(Debug)]
struct Bucket {
    /// Each provider's configured limit for this bucket's class.
    configured: BTreeMap<String, Option<Limit>>,
    /// The lowest configured limit; `None`: none configured.
    limit: Option<Limit>,
    /// The current fill rate; `None`: not limiting (unconfigured and never throttled).
    rate: Option<f64>,
    burst: f64,
    /// Negative only after a `Retry-After` (tokens the cloud asked us not to use).
    tokens: f64,
    /// Callers waiting for a token, the next one first.
    line: VecDeque<Waiting>,
    next_ticket: Ticket,
    refilled: Instant,
    last_decrease: Option<Instant>,
    /// Exponentially decayed count of requests (≈ requests per second at `MEASURE_TAU` = 1 s).
    measured: f64,
    measured_at: Instant,
    requests: u64,
    throttled: u64,
    waited: Duration,
    rate_limited: u64,
}

impl Bucket {
    fn new(now: Instant) -> Bucket {
        Bucket {
            configured: BTreeMap::new(),
            limit: None,
            rate: None,
            burst: 1.0,
            tokens: 0.0,
            line: VecDeque::new(),
            next_ticket: 0,
            refilled: now,
            last_decrease: None,
            measured: 0.0,
            measured_at: now,
            requests: 0,
            throttled: 0,
            waited: Duration::ZERO,
            rate_limited: 0,
        }
    }

    /// Remember `provider`'s limit; the bucket runs at the lowest configured one.
    fn configure(&mut self, provider: &str, limit: Option<Limit>, now: Instant) {
        if self.configured.get(provider) == Some(&limit) {
            return;
        }
        self.configured.insert(provider.to_string(), limit);
        let lowest = self
            .configured
            .values()
            .flatten()
            .copied()
            .min_by(|a, b| a.rate.total_cmp(&b.rate));
        if lowest == self.limit {
            return;
        }
        self.refill(now);
        self.limit = lowest;
        match lowest {
            Some(l) => {
                let first = self.rate.is_none();
                self.rate = Some(self.rate.map_or(l.rate, |r| r.min(l.rate)));
                self.burst = l.burst as f64;
                // A new bucket starts full, as the cloud's do.
                self.tokens = if first {
                    self.burst
                } else {
                    self.tokens.min(self.burst)
                };
            }
            None => self.rate = None,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.refilled).as_secs_f64();
        if let Some(rate) = self.rate {
            self.tokens = (self.tokens + rate * dt).min(self.burst);
        }
        self.refilled = now;
    }

    /// Get in line: at the back, or at the front (`again`: a request the cloud throttled,
    /// which had its turn already).
    fn join(&mut self, now: Instant, again: bool) -> (Ticket, Arc<Notify>) {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let waiting = Waiting {
            ticket,
            joined: now,
            wake: Arc::new(Notify::new()),
        };
        let wake = waiting.wake.clone();
        if again {
            self.line.push_front(waiting);
        } else {
            self.line.push_back(waiting);
        }
        (ticket, wake)
    }

    /// How long `ticket` waits at the current rate: its place in line, less what is saved up.
    fn expected_wait(&mut self, ticket: Ticket, now: Instant) -> Duration {
        self.refill(now);
        let (Some(rate), Some(place)) = (self.rate, self.place(ticket)) else {
            return Duration::ZERO;
        };
        let short = place as f64 + 1.0 - self.tokens;
        Duration::from_secs_f64(short.max(0.0) / rate)
    }

    fn place(&self, ticket: Ticket) -> Option<usize> {
        self.line.iter().position(|w| w.ticket == ticket)
    }

    /// `ticket`'s turn at `now`: the first in line takes a token if one is there (and the next
    /// in line is woken).
    fn turn(&mut self, ticket: Ticket, now: Instant) -> Turn {
        if self.place(ticket) != Some(0) {
            return Turn::Behind;
        }
        self.refill(now);
        if let Some(rate) = self.rate {
            if self.tokens < 1.0 {
                return Turn::At(now + Duration::from_secs_f64((1.0 - self.tokens) / rate));
            }
            self.tokens -= 1.0;
        }
        let served = self.line.pop_front().expect("first in line");
        self.wake_first();
        self.requests += 1;
        let waited = now.saturating_duration_since(served.joined);
        self.waited += waited;
        Turn::Go(waited)
    }

    /// A request of this bucket went on the wire: the measured send rate (which an unlimited
    /// bucket starts from when first throttled) counts requests sent, not tokens handed out.
    fn sent(&mut self, now: Instant) {
        let dt = now
            .saturating_duration_since(self.measured_at)
            .as_secs_f64();
        self.measured = self.measured * (-dt / MEASURE_TAU).exp() + 1.0 / MEASURE_TAU;
        self.measured_at = now;
    }

    /// Leave the line unserved (deadline, or the call ended).
    fn leave(&mut self, ticket: Ticket) {
        if let Some(place) = self.place(ticket) {
            self.line.remove(place);
            if place == 0 {
                self.wake_first();
            }
        }
    }

    fn wake_first(&self) {
        if let Some(first) = self.line.front() {
            first.wake.notify_one();
        }
    }

    /// `ticket`'s caller would get its token after its deadline: it leaves the line, and
    /// this is its error (with the wait it had left).
    fn refuse(&mut self, ticket: Ticket, key: &BucketKey, now: Instant) -> RateLimited {
        let wait = self.expected_wait(ticket, now);
        self.leave(ticket);
        self.rate_limited += 1;
        RateLimited {
            key: key.clone(),
            wait,
            rate: self.rate.unwrap_or(f64::INFINITY),
        }
    }

    fn throttled(&mut self, now: Instant, retry_after: Option<Duration>) {
        self.throttled += 1;
        self.refill(now);
        let recent = self
            .last_decrease
            .is_some_and(|t| now.saturating_duration_since(t) < DECREASE_SPACING);
        if !recent {
            let from = self.rate.unwrap_or(self.measured);
            let rate = (from * BETA).max(MIN_RATE);
            if self.rate.is_none() {
                self.burst = rate.max(1.0);
            }
            self.rate = Some(rate);
            self.last_decrease = Some(now);
        }
        let rate = self.rate.expect("set above");
        // What was saved up is gone (the cloud's bucket is empty), and a Retry-After holds the
        // next token back at least that long.
        let floor = -retry_after.map_or(0.0, |d| d.as_secs_f64() * rate);
        self.tokens = self.tokens.min(floor);
    }

    fn succeeded(&mut self) {
        let Some(rate) = self.rate else { return };
        let rate = match self.limit {
            Some(l) => (rate + l.rate * INCREASE_SHARE).min(l.rate),
            None => rate * (1.0 + INCREASE_SHARE),
        };
        self.rate = Some(rate);
    }
}

/// The seconds of a `Retry-After` header (delta-seconds; an HTTP date is not honoured).
pub fn retry_after(headers: &[(String, String)]) -> Option<Duration> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("retry-after"))
        .and_then(|(_, v)| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(300.0)))
}

/// Remove the rate-class header from `headers`; its value, or `""`.
pub fn take_rate_class(headers: &mut Vec<(String, String)>) -> String {
    let mut class = String::new();
    headers.retain(|(k, v)| {
        if k.eq_ignore_ascii_case(RATE_CLASS_HEADER) {
            class = v.trim().to_string();
            false
        } else {
            true
        }
    });
    class
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(rate: f64, burst: u32) -> Option<Limit> {
        Some(Limit { rate, burst })
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    /// Get in line and take a turn at once.
    fn arrive(b: &mut Bucket, now: Instant) -> (Ticket, Turn) {
        let (ticket, _) = b.join(now, false);
        (ticket, b.turn(ticket, now))
    }

    #[test]
    fn a_configured_bucket_starts_full_then_serves_its_line_in_order_at_its_rate() {
        use futures::FutureExt as _;
        let t0 = Instant::now();
        let mut b = Bucket::new(t0);
        b.configure("aws", limit(2.0, 5), t0);
        for _ in 0..5 {
            assert_eq!(arrive(&mut b, t0).1, Turn::Go(Duration::ZERO), "the burst");
        }
        // Only the first in line knows its time; the others wait to be woken.
        let (first, turn) = arrive(&mut b, t0);
        assert_eq!(turn, Turn::At(t0 + secs(0.5)));
        let (second, wake) = b.join(t0, false);
        assert_eq!(b.turn(second, t0), Turn::Behind);
        assert_eq!(b.expected_wait(second, t0), secs(1.0));
        assert!(wake.notified().now_or_never().is_none());
        b.leave(first);
        assert!(
            wake.notified().now_or_never().is_some(),
            "the next in line is woken when the first leaves"
        );
        assert_eq!(b.turn(second, t0), Turn::At(t0 + secs(0.5)), "its place");
        // Time refills.
        let later = t0 + secs(10.0);
        assert_eq!(b.turn(second, later), Turn::Go(secs(10.0)));
        assert!(b.tokens <= 5.0, "never more than the burst");
        assert_eq!((b.requests, b.waited), (6, secs(10.0)));
    }

    #[test]
    fn a_throttled_request_goes_back_to_the_front_and_throttling_reaches_the_first_in_line_at_once()
    {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0);
        b.configure("aws", limit(10.0, 1), t0);
        assert_eq!(arrive(&mut b, t0).1, Turn::Go(Duration::ZERO));
        let (first, turn) = arrive(&mut b, t0);
        assert_eq!(turn, Turn::At(t0 + secs(0.1)));
        let (second, _) = arrive(&mut b, t0);
        // The request sent comes back throttled: the rate drops to 7/s, the half token saved
        // up is gone, and the request gets in line again in front of the others.
        let t1 = t0 + secs(0.05);
        b.throttled(t1, None);
        let (again, _) = b.join(t1, true);
        assert_eq!(
            b.turn(first, t1),
            Turn::Behind,
            "the throttled request goes first"
        );
        assert_eq!(b.turn(again, t1), Turn::At(t1 + secs(1.0 / 7.0)));
        // The ones already waiting now wait at the lowered rate too.
        assert_eq!(b.expected_wait(first, t1), secs(2.0 / 7.0));
        assert_eq!(b.expected_wait(second, t1), secs(3.0 / 7.0));
    }

    #[test]
    fn throttling_lowers_the_rate_once_per_spacing_and_successes_raise_it_to_the_limit() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0);
        b.configure("aws", limit(10.0, 10), t0);
        b.throttled(t0, None);
        assert_eq!(b.rate, Some(7.0));
        assert!(b.tokens <= 0.0, "the saved-up tokens are gone");
        // Answers to requests sent at the old rate do not lower it again.
        b.throttled(t0 + secs(0.5), None);
        assert_eq!(b.rate, Some(7.0));
        b.throttled(t0 + secs(1.5), None);
        assert!((b.rate.unwrap() - 4.9).abs() < 1e-9);
        for _ in 0..1000 {
            b.succeeded();
        }
        assert_eq!(b.rate, Some(10.0), "back up to, never beyond, the limit");
    }

    #[test]
    fn retry_after_holds_back_even_the_caller_first_in_line() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0);
        b.configure("aws", limit(10.0, 1), t0);
        assert_eq!(arrive(&mut b, t0).1, Turn::Go(Duration::ZERO));
        let (waiting, turn) = arrive(&mut b, t0);
        assert_eq!(turn, Turn::At(t0 + secs(0.1)));
        b.throttled(t0, Some(secs(2.0)));
        // 2 s at the lowered rate of 7/s is 14 tokens owed; the next one is 1/7 s more.
        let Turn::At(at) = b.turn(waiting, t0) else {
            panic!("waits")
        };
        assert!(at - t0 >= secs(2.0), "{:?}", at - t0);
    }

    #[test]
    fn an_unconfigured_class_is_free_until_throttled_then_runs_below_its_measured_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0);
        b.configure("sample", None, t0);
        for i in 0..100 {
            let now = t0 + secs(i as f64 * 0.05);
            assert_eq!(arrive(&mut b, now).1, Turn::Go(Duration::ZERO));
            b.sent(now);
        }
        let t1 = t0 + secs(5.0);
        let measured = b.measured;
        assert!((15.0..=21.0).contains(&measured), "≈ 20/s: {measured}");
        b.throttled(t1, None);
        let rate = b.rate.unwrap();
        assert!((rate - measured * BETA).abs() < 1e-6, "{rate}");
        assert!(matches!(arrive(&mut b, t1).1, Turn::At(_)), "now it limits");
    }

    #[test]
    fn providers_sharing_a_bucket_run_at_the_lowest_configured_limit() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0);
        b.configure("aws", limit(10.0, 10), t0);
        b.configure("aws-canary", limit(4.0, 2), t0);
        assert_eq!(b.rate, Some(4.0));
        assert_eq!(b.burst, 2.0);
        b.configure("aws", limit(10.0, 10), t0);
        assert_eq!(b.rate, Some(4.0), "the other provider's limit still counts");
    }

    #[tokio::test]
    async fn a_token_after_the_deadline_fails_at_once_and_is_not_taken() {
        let limiter = RateLimiter::new();
        let key = BucketKey {
            credential: "c".into(),
            host: "ec2.example".into(),
            class: "run-instances".into(),
        };
        let far = Instant::now() + secs(60.0);
        for _ in 0..2 {
            limiter
                .acquire(&key, "aws", limit(1.0, 2), far, false)
                .await
                .unwrap();
        }
        let soon = Instant::now() + secs(0.5);
        let err = limiter
            .acquire(&key, "aws", limit(1.0, 2), soon, false)
            .await
            .unwrap_err();
        assert!(err.to_string().starts_with("rate limited"), "{err}");
        assert!(err.to_string().contains("run-instances"), "{err}");
        let stats = &limiter.snapshot()[0];
        assert_eq!((stats.requests, stats.rate_limited), (2, 1));
        // The refused caller left the line: the next one waits one token's time.
        let waited = limiter
            .acquire(&key, "aws", limit(1.0, 2), far, false)
            .await
            .unwrap();
        assert!(waited > secs(0.95) && waited < secs(1.5), "{waited:?}");
    }

    fn key() -> BucketKey {
        BucketKey {
            credential: "c".into(),
            host: "ec2.example".into(),
            class: "run-instances".into(),
        }
    }

    #[tokio::test]
    async fn a_caller_whose_call_ends_while_it_waits_leaves_the_line() {
        let limiter = RateLimiter::new();
        let far = Instant::now() + secs(60.0);
        let key = key();
        let take = || limiter.acquire(&key, "aws", limit(5.0, 1), far, false);
        take().await.unwrap();
        // The next token is 0.2 s away; its caller gives up after 0.05 s.
        assert!(tokio::time::timeout(secs(0.05), take()).await.is_err());
        // The caller after it is first in line, not stuck behind a place nobody takes.
        let waited = tokio::time::timeout(secs(5.0), take())
            .await
            .expect("served")
            .unwrap();
        // Its token is 0.2 s after the first one's (≈ 0.15 s of waiting; the margin is for a
        // slow timer wake-up on a busy machine).
        assert!(waited < secs(0.3), "{waited:?}");
    }

    #[tokio::test]
    async fn a_caller_still_in_line_at_its_deadline_fails_rate_limited_and_does_not_hang() {
        let limiter = Arc::new(RateLimiter::new());
        let far = Instant::now() + secs(60.0);
        let l = limiter.clone();
        l.acquire(&key(), "aws", limit(10.0, 1), far, false)
            .await
            .unwrap();
        let first =
            tokio::spawn(async move { l.acquire(&key(), "aws", limit(10.0, 1), far, false).await });
        tokio::time::sleep(secs(0.01)).await;
        let started = Instant::now();
        let l = limiter.clone();
        let second = tokio::spawn(async move {
            let deadline = Instant::now() + secs(0.5);
            l.acquire(&key(), "aws", limit(10.0, 1), deadline, false)
                .await
        });
        tokio::time::sleep(secs(0.01)).await;
        // Accepted (about 0.2 s away), then the cloud asks for 2 s of quiet.
        limiter.throttled(&key(), Some(secs(2.0)));
        let err = second.await.unwrap().unwrap_err();
        assert!(err.to_string().starts_with("rate limited"), "{err}");
        assert!(started.elapsed() < secs(1.5), "{:?}", started.elapsed());
        assert!(!first.is_finished(), "the first in line still waits");
        first.abort();
    }

    #[test]
    fn throttled_requests_back_off_exponentially_with_jitter_up_to_five_seconds() {
        for (attempt, ceiling) in [(1, 0.1), (2, 0.2), (3, 0.4), (6, 3.2), (7, 5.0), (30, 5.0)] {
            let pause = throttle_backoff(attempt);
            assert!(
                pause >= secs(ceiling / 2.0) && pause <= secs(ceiling),
                "attempt {attempt}: {pause:?}"
            );
        }
    }

    #[test]
    fn throttling_answers_are_429_or_a_throttle_code_in_an_error_body() {
        let limits = RateLimits::default();
        assert!(limits.is_throttled(429, b""));
        assert!(limits.is_throttled(
            503,
            b"<Response><Errors><Error><Code>RequestLimitExceeded</Code>"
        ));
        assert!(!limits.is_throttled(503, b"<Code>Unavailable</Code>"));
        assert!(
            !limits.is_throttled(200, b"RequestLimitExceeded"),
            "a success never is"
        );
        let own = RateLimits {
            throttle_codes: vec!["Backoff".into()],
            ..Default::default()
        };
        assert!(own.is_throttled(400, b"{\"code\":\"Backoff\"}"));
        assert!(!own.is_throttled(503, b"RequestLimitExceeded"));
    }

    #[test]
    fn fingerprints_ignore_user_data_and_order() {
        let a: BTreeMap<String, Vec<u8>> = [
            ("providerAccessKeyId".to_string(), b"AKIA1".to_vec()),
            ("userData".to_string(), b"#!/bin/a".to_vec()),
        ]
        .into();
        let mut b = a.clone();
        b.insert("userData".into(), b"#!/bin/b".to_vec());
        assert_eq!(credential_fingerprint(&a), credential_fingerprint(&b));
        b.insert("providerAccessKeyId".into(), b"AKIA2".to_vec());
        assert_ne!(credential_fingerprint(&a), credential_fingerprint(&b));
        assert_eq!(credential_fingerprint(&a).len(), 12);
    }

    #[test]
    fn the_rate_class_header_is_taken_out() {
        let mut headers = vec![
            ("content-type".to_string(), "x".to_string()),
            ("Mcm-Wasm-Rate-Class".to_string(), " describe ".to_string()),
        ];
        assert_eq!(take_rate_class(&mut headers), "describe");
        assert_eq!(headers.len(), 1);
        assert_eq!(take_rate_class(&mut headers), "");
        assert_eq!(
            retry_after(&[("Retry-After".into(), "3".into())]),
            Some(secs(3.0))
        );
        assert_eq!(retry_after(&[("retry-after".into(), "soon".into())]), None);
    }

    #[test]
    fn operator_settings_override_the_providers_defaults_per_class() {
        let defaults = RateLimits {
            classes: [
                (
                    "describe".to_string(),
                    Limit {
                        rate: 20.0,
                        burst: 100,
                    },
                ),
                (
                    "run-instances".to_string(),
                    Limit {
                        rate: 2.0,
                        burst: 5,
                    },
                ),
            ]
            .into(),
            default: Some(Limit {
                rate: 5.0,
                burst: 50,
            }),
            throttle_codes: vec![],
        };
        let operator = RateLimits {
            classes: [(
                "run-instances".to_string(),
                Limit {
                    rate: 1.0,
                    burst: 1,
                },
            )]
            .into(),
            ..Default::default()
        };
        let merged = defaults.overridden_by(&operator);
        assert_eq!(
            merged.limit("run-instances"),
            Some(Limit {
                rate: 1.0,
                burst: 1
            })
        );
        assert_eq!(
            merged.limit("describe"),
            Some(Limit {
                rate: 20.0,
                burst: 100
            })
        );
        assert_eq!(
            merged.limit("other"),
            Some(Limit {
                rate: 5.0,
                burst: 50
            })
        );
    }
}
