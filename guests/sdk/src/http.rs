//! Outbound HTTP through the host capability (the only door out of the sandbox).

pub use crate::bindings::mcm::driver::http::{Error, Request, Response};
use crate::{Code, DriverError};

/// Send one request; the host enforces the egress allowlist, the call's deadline and a
/// response size limit.
pub fn send(req: &Request) -> Result<Response, Error> {
    crate::bindings::mcm::driver::http::send(req)
}

/// (0.1.3) Send independent requests at once (the host sends them concurrently, each as
/// [`send`] would: allowlist, rate limits, deadline); one answer per request, in order.
pub fn send_many(reqs: &[Request]) -> Vec<Result<Response, Error>> {
    crate::bindings::mcm::driver::http::send_many(reqs)
}

/// The request header naming the request's rate class: the host keeps a token bucket per
/// credential, endpoint and class (shared by every provider using that credential), waits for
/// a token before sending, and takes the header out. For a cloud that meters each API action
/// separately, the action's name.
pub const RATE_CLASS_HEADER: &str = "mcm-wasm-rate-class";

/// The request header asking the host to keep a successful answer this many seconds (at most
/// 300) and give it to any call of the provider that sends the same request (method, URL,
/// body) with the same credential, without reaching the cloud; the host takes it out. For
/// reads that do not change meanwhile (an image's description), not for a VM's state.
pub const CACHE_TTL_HEADER: &str = "mcm-wasm-cache-ttl";

/// Build a request with no headers and no body.
pub fn request(method: &str, url: impl Into<String>) -> Request {
    Request {
        method: method.to_string(),
        url: url.into(),
        headers: Vec::new(),
        body: Vec::new(),
    }
}

impl Request {
    /// Add a header.
    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_string(), value.into()));
        self
    }
    /// Name the request's rate class ([`RATE_CLASS_HEADER`]).
    pub fn rate_class(self, class: &str) -> Self {
        self.header(RATE_CLASS_HEADER, class)
    }
    /// Set a JSON body (and its content type).
    pub fn json<T: serde::Serialize>(mut self, body: &T) -> Self {
        self.body = serde_json::to_vec(body).expect("serializable body");
        self.header("content-type", "application/json")
    }
    /// Set a raw body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }
}

impl Response {
    /// First header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// Decode a JSON body; a body that does not decode is `internal`.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, DriverError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            DriverError::internal(format!(
                "cloud answered {} with a body that is not the expected JSON: {e}",
                self.status
            ))
        })
    }
    /// The body as (lossy) UTF-8 text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A sentence describing a transport failure.
pub fn describe(e: &Error) -> String {
    match e {
        Error::Denied(why) => format!("egress denied: {why}"),
        Error::Timeout => "timed out at the call's deadline".to_string(),
        Error::Connect(why) => format!("connect failed: {why}"),
        Error::TooLarge(limit) => format!("response body exceeds the host limit of {limit} bytes"),
        Error::InvalidRequest(why) => format!("invalid request: {why}"),
        Error::Other(why) => why.clone(),
    }
}

/// The machine code each transport failure maps to.
impl From<Error> for DriverError {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::Denied(_) => Code::PermissionDenied,
            Error::Timeout => Code::DeadlineExceeded,
            Error::Connect(_) | Error::Other(_) => Code::Unavailable,
            Error::TooLarge(_) => Code::ResourceExhausted,
            Error::InvalidRequest(_) => Code::InvalidArgument,
        };
        DriverError::new(code, describe(&e))
    }
}
