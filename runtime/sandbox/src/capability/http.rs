//! The `http` capability: one shared HTTP client (rustls, pooled connections) and one
//! [`RateLimiter`] for the process, and per call an [`HttpCall`] (which provider, its egress
//! hook, its rate limits, the call's credential fingerprint and deadline) that implements the
//! generated `http::Host`. Each request is checked by the provider's [`EgressHook`], waits for
//! a token of its rate bucket (see `ratelimit`), is clamped to the call's remaining deadline,
//! and its response body is capped. A throttling answer lowers the bucket's rate and the
//! request is sent again once a token is there (the cloud did not act on it), up to
//! [`MAX_THROTTLED_ATTEMPTS`] times; the guest sees only the final answer. `send-many` sends
//! a guest's independent requests concurrently, each as `send` would.
//!
//! Shape of wasmtime-wasi-http / Spin's outbound-http factor: process-wide init
//! ([`HttpClient::new`]), per-call state ([`HttpCall`]), linker registration
//! ([`add_to_linker`], generic over the store's data, so this module does not know the engine).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::component::{HasSelf, Linker};

use super::egress::EgressHook;
use super::ratelimit::{
    self, BucketKey, MAX_THROTTLED_ATTEMPTS, RateLimited, RateLimiter, RateLimits,
};
use super::response_cache::{self, CacheKey, ResponseCache};
use crate::bindings::mcm::driver::http::{self as wit, Error, Request, Response};

/// Link `mcm:driver/http`; `view` borrows the call's [`HttpCall`] out of the store's data.
pub(crate) fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> &mut HttpCall,
) -> wasmtime::Result<()> {
    wit::add_to_linker::<T, HasSelf<HttpCall>>(linker, view)
}

/// At most this many requests of one `send-many` in flight at once.
pub(crate) const MAX_CONCURRENT_SENDS: usize = 32;
/// At most this many requests in one `send-many`; the ones past it are refused
/// (`invalid-request`) without being sent, so a guest cannot have the host hold the answers
/// of an unbounded list.
pub(crate) const MAX_SEND_MANY: usize = 1000;

/// Where a call records that the rate limiter refused it (the outcome becomes Unavailable).
pub(crate) type RateLimitedRecord = Arc<Mutex<Option<RateLimited>>>;

/// The `http` capability's state for one call.
pub(crate) struct HttpCall {
    pub client: HttpClient,
    pub provider: Arc<str>,
    pub egress: Arc<dyn EgressHook>,
    pub deadline: Instant,
    /// The provider's rate limits (its defaults under the operator's settings).
    pub rate_limits: Arc<RateLimits>,
    /// The fingerprint of the credential in the call's secret (`mcm_driver::credential_fingerprint`).
    pub credential: Arc<str>,
    pub rate_limited: RateLimitedRecord,
    /// At most [`MAX_CONCURRENT_SENDS`] of the call's metered requests on the wire at once
    /// (a request refused by the egress hook is not sent and takes no place).
    pub in_flight: tokio::sync::Semaphore,
}

impl HttpCall {
    /// Send `req` under this call's egress hook, rate limits and remaining deadline; the
    /// host's headers (rate class, cache TTL) are taken out of it.
    pub(crate) async fn send(&self, mut req: Request) -> Result<Response, Error> {
        let hints = Hints::take(&mut req);
        self.send_with(req, hints).await
    }

    /// [`HttpCall::send`] for a request whose [`Hints`] were already taken out (a request the
    /// host signs must not carry the headers it removes).
    pub(crate) async fn send_with(&self, req: Request, hints: Hints) -> Result<Response, Error> {
        let key = match req.url.parse::<reqwest::Url>() {
            Ok(url) if self.egress.check(&url).is_ok() => BucketKey {
                credential: self.credential.to_string(),
                host: host_port(&url),
                class: hints.rate_class,
            },
            // Refused without sending: nothing to meter.
            _ => return self.send_now(req).await,
        };
        let cached = hints.cache_ttl.map(|ttl| {
            let key = CacheKey {
                credential: self.credential.to_string(),
                method: req.method.clone(),
                url: req.url.clone(),
                body: req.body.clone(),
            };
            (key, ttl)
        });
        if let Some((key, _)) = &cached
            && let Some(answer) = self.client.cache.get(key, Instant::now())
        {
            tracing::debug!(provider = %self.provider, url = %key.url, "answered from the host's cache");
            return Ok(answer);
        }
        let answer = self.send_metered(req, key).await;
        if let (Some((key, ttl)), Ok(r)) = (cached, &answer)
            && (200..300).contains(&r.status)
        {
            self.client.cache.put(key, r.clone(), ttl, Instant::now());
        }
        answer
    }

    /// Send through the rate bucket of `key`, again after throttling answers.
    async fn send_metered(&self, req: Request, key: BucketKey) -> Result<Response, Error> {
        let limit = self.rate_limits.limit(&key.class);
        let limiter = &self.client.limiter;
        let mut attempt = 1;
        // A place among the call's requests on the wire, taken after the first token and kept
        // through the throttled attempts (a request sent again from the front of its bucket's
        // line does not queue behind the call's other requests for it).
        let mut on_wire = None;
        loop {
            // A request the cloud throttled goes back to the front of the line.
            if let Err(e) = limiter
                .acquire(&key, &self.provider, limit, self.deadline, attempt > 1)
                .await
            {
                tracing::warn!(provider = %self.provider, bucket = %e.key, "{e}");
                let message = e.to_string();
                *self.rate_limited.lock().unwrap() = Some(e);
                return Err(Error::Other(message));
            }
            if on_wire.is_none() {
                on_wire = Some(self.in_flight.acquire().await.expect("never closed"));
            }
            limiter.sent(&key);
            let answer = self.send_now(req.clone()).await;
            match &answer {
                Ok(r) if self.rate_limits.is_throttled(r.status, &r.body) => {
                    limiter.throttled(&key, ratelimit::retry_after(&r.headers));
                    // Back off before asking for a token again, so that the bucket's lowered
                    // rate takes hold before the request's attempts are used up.
                    let pause = ratelimit::throttle_backoff(attempt);
                    if attempt < MAX_THROTTLED_ATTEMPTS && Instant::now() + pause < self.deadline {
                        tracing::debug!(provider = %self.provider, bucket = %key, attempt, status = r.status, ?pause, "throttled; sending again when the bucket allows");
                        tokio::time::sleep(pause).await;
                        attempt += 1;
                        continue;
                    }
                }
                Ok(_) => limiter.succeeded(&key),
                Err(_) => {}
            }
            return answer;
        }
    }

    async fn send_now(&self, req: Request) -> Result<Response, Error> {
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        self.client
            .send(&self.provider, &*self.egress, req, remaining)
            .await
    }
}

/// What a guest asks of the host per request, in headers the host takes out before sending:
/// the rate class (`ratelimit`) and how long to keep the answer (`response_cache`).
pub(crate) struct Hints {
    pub rate_class: String,
    pub cache_ttl: Option<Duration>,
}

impl Hints {
    pub(crate) fn take(req: &mut Request) -> Hints {
        Hints {
            rate_class: ratelimit::take_rate_class(&mut req.headers),
            cache_ttl: response_cache::take_ttl(&mut req.headers),
        }
    }
}

/// A URL's host, with its port when it is not the scheme's default.
fn host_port(url: &reqwest::Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    }
}

impl wit::Host for HttpCall {
    async fn send(&mut self, req: Request) -> wasmtime::Result<Result<Response, Error>> {
        Ok(HttpCall::send(self, req).await)
    }

    /// Every request as [`HttpCall::send`], concurrently: all of them get in their rate
    /// buckets' lines at once, in the order given (a batch's requests wait together, not
    /// interleaved with another call's), and up to [`MAX_CONCURRENT_SENDS`] are on the wire at
    /// once. One answer per request, in order. Past [`MAX_SEND_MANY`] requests: refused.
    async fn send_many(
        &mut self,
        reqs: Vec<Request>,
    ) -> wasmtime::Result<Vec<Result<Response, Error>>> {
        use futures::StreamExt as _;
        let call = &*self;
        let refused = reqs.len().saturating_sub(MAX_SEND_MANY);
        let mut answers: Vec<Result<Response, Error>> = futures::stream::iter(reqs)
            .take(MAX_SEND_MANY)
            .map(|r| call.send(r))
            .buffered(MAX_SEND_MANY)
            .collect()
            .await;
        answers.extend((0..refused).map(|_| {
            Err(Error::InvalidRequest(format!(
                "send-many takes at most {MAX_SEND_MANY} requests per call"
            )))
        }));
        Ok(answers)
    }
}

#[derive(Clone)]
pub(crate) struct HttpClient {
    client: reqwest::Client,
    max_body: u64,
    /// The process's rate buckets, shared by every provider.
    pub limiter: Arc<RateLimiter>,
    /// Answers guests asked the host to keep (`response_cache`).
    pub cache: Arc<ResponseCache<Response>>,
}

impl HttpClient {
    pub(crate) fn new(max_body: u64) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            // A redirect could lead outside the allowlist: the guest sees 3xx and decides.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .pool_idle_timeout(Duration::from_secs(60))
            .build()?;
        Ok(HttpClient {
            client,
            max_body,
            limiter: Arc::new(RateLimiter::new()),
            cache: Arc::default(),
        })
    }

    async fn send(
        &self,
        provider: &str,
        egress: &dyn EgressHook,
        req: Request,
        remaining: Duration,
    ) -> Result<Response, Error> {
        let url: reqwest::Url = req
            .url
            .parse()
            .map_err(|e| Error::InvalidRequest(format!("invalid URL {:?}: {e}", req.url)))?;
        if let Err(why) = egress.check(&url) {
            tracing::warn!(provider, url = %redact(&url), "egress denied: {why}");
            return Err(Error::Denied(why.to_string()));
        }
        if remaining.is_zero() {
            return Err(Error::Timeout);
        }
        let method = reqwest::Method::from_bytes(req.method.as_bytes())
            .map_err(|_| Error::InvalidRequest(format!("invalid method {:?}", req.method)))?;
        let mut builder = self
            .client
            .request(method, url.clone())
            .timeout(remaining)
            .body(req.body);
        for (name, value) in &req.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let request = builder
            .build()
            .map_err(|e| Error::InvalidRequest(e.to_string()))?;
        tracing::debug!(provider, method = %request.method(), url = %redact(&url), "outbound request");

        let response = self
            .client
            .execute(request)
            .await
            .map_err(transport_error)?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        if response.content_length().is_some_and(|n| n > self.max_body) {
            return Err(Error::TooLarge(self.max_body));
        }
        // Read the body in chunks and stop as soon as it passes the cap.
        let mut body = Vec::new();
        let mut response = response;
        while let Some(chunk) = response.chunk().await.map_err(transport_error)? {
            if body.len() as u64 + chunk.len() as u64 > self.max_body {
                return Err(Error::TooLarge(self.max_body));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

fn transport_error(e: reqwest::Error) -> Error {
    if e.is_timeout() {
        Error::Timeout
    } else if e.is_connect() {
        Error::Connect(mcm_driver::text::error_chain(&e))
    } else {
        Error::Other(mcm_driver::text::error_chain(&e))
    }
}

/// URLs in logs lose their query (it may carry signatures or tokens).
fn redact(url: &reqwest::Url) -> String {
    let mut url = url.clone();
    url.set_query(None);
    url.to_string()
}
