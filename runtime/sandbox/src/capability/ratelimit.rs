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
//! - Go's `x/time/rate` reservations: a caller takes its token at once (the bucket may go
//!   negative) and sleeps until the token would have been there, so waiters are served in order
//!   and nobody wakes up to race for a token;
//! - `Retry-After`: a throttling answer that names a delay pushes every reservation of the
//!   bucket at least that far out.
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

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// waiting for it if the bucket is empty; [`RateLimited`] at once when the token would come
    /// after `deadline`. Returns how long it waited.
    pub async fn acquire(
        &self,
        key: &BucketKey,
        provider: &str,
        limit: Option<Limit>,
        deadline: Instant,
    ) -> Result<Duration, RateLimited> {
        let bucket = self.bucket(key);
        let now = Instant::now();
        let wait = {
            let mut b = bucket.lock().unwrap();
            b.configure(provider, limit, now);
            let wait = b.reserve(now);
            if now + wait > deadline {
                b.cancel();
                b.rate_limited += 1;
                return Err(RateLimited {
                    key: key.clone(),
                    wait,
                    rate: b.rate.unwrap_or(f64::INFINITY),
                });
            }
            b.waited += wait;
            wait
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Ok(wait)
    }

    /// The cloud throttled a request of `key`; `retry_after` from its answer.
    pub fn throttled(&self, key: &BucketKey, retry_after: Option<Duration>) {
        self.bucket(key)
            .lock()
            .unwrap()
            .throttled(Instant::now(), retry_after);
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

/// One token bucket. Pure state: every method takes the time it acts at.
#[derive(Debug)]
struct Bucket {
    /// Each provider's configured limit for this bucket's class.
    configured: BTreeMap<String, Option<Limit>>,
    /// The lowest configured limit; `None`: none configured.
    limit: Option<Limit>,
    /// The current fill rate; `None`: not limiting (unconfigured and never throttled).
    rate: Option<f64>,
    burst: f64,
    /// May be negative: tokens reserved by callers still waiting.
    tokens: f64,
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

    /// Take a token; how long until it is there.
    fn reserve(&mut self, now: Instant) -> Duration {
        self.refill(now);
        let dt = now
            .saturating_duration_since(self.measured_at)
            .as_secs_f64();
        self.measured = self.measured * (-dt / MEASURE_TAU).exp() + 1.0 / MEASURE_TAU;
        self.measured_at = now;
        self.requests += 1;
        let Some(rate) = self.rate else {
            return Duration::ZERO;
        };
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / rate)
        }
    }

    /// Give back a token reserved by a caller that will not send.
    fn cancel(&mut self) {
        if self.rate.is_some() {
            self.tokens += 1.0;
        }
        self.requests -= 1;
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
        // What was saved up is gone (the cloud's bucket is empty), and a Retry-After pushes
        // every later reservation at least that far out.
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

    #[test]
    fn a_configured_bucket_starts_full_then_serves_at_its_rate_in_order() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0);
        b.configure("aws", limit(2.0, 5), t0);
        for _ in 0..5 {
            assert_eq!(b.reserve(t0), Duration::ZERO, "the burst");
        }
        // Reservations queue up behind each other at 2/s.
        assert_eq!(b.reserve(t0), secs(0.5));
        assert_eq!(b.reserve(t0), secs(1.0));
        b.cancel();
        assert_eq!(b.reserve(t0), secs(1.0), "a cancelled token is given back");
        // Time refills.
        let later = t0 + secs(10.0);
        assert_eq!(b.reserve(later), Duration::ZERO);
        assert!(b.tokens <= 5.0, "never more than the burst");
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
    fn retry_after_pushes_every_reservation_out() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0);
        b.configure("aws", limit(10.0, 10), t0);
        b.throttled(t0, Some(secs(2.0)));
        // 2 s at the lowered rate of 7/s is 14 tokens owed; the next one is 1/7 s more.
        let wait = b.reserve(t0);
        assert!(wait >= secs(2.0), "{wait:?}");
    }

    #[test]
    fn an_unconfigured_class_is_free_until_throttled_then_runs_below_its_measured_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0);
        b.configure("sample", None, t0);
        for i in 0..100 {
            assert_eq!(b.reserve(t0 + secs(i as f64 * 0.05)), Duration::ZERO);
        }
        let t1 = t0 + secs(5.0);
        let measured = b.measured;
        assert!((15.0..=21.0).contains(&measured), "≈ 20/s: {measured}");
        b.throttled(t1, None);
        let rate = b.rate.unwrap();
        assert!((rate - measured * BETA).abs() < 1e-6, "{rate}");
        assert!(b.reserve(t1) > Duration::ZERO, "now it limits");
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
                .acquire(&key, "aws", limit(1.0, 2), far)
                .await
                .unwrap();
        }
        let soon = Instant::now() + secs(0.5);
        let err = limiter
            .acquire(&key, "aws", limit(1.0, 2), soon)
            .await
            .unwrap_err();
        assert!(err.to_string().starts_with("rate limited"), "{err}");
        assert!(err.to_string().contains("run-instances"), "{err}");
        let stats = &limiter.snapshot()[0];
        assert_eq!((stats.requests, stats.rate_limited), (2, 1));
        // The refused caller's token was not taken: the next one waits one token's time.
        let waited = limiter
            .acquire(&key, "aws", limit(1.0, 2), far)
            .await
            .unwrap();
        assert!(waited > secs(0.99) && waited <= secs(1.0), "{waited:?}");
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
