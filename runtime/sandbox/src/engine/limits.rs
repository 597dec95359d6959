//! The size policy: every amount of guest-controlled data the host accepts, where it is
//! enforced, and how an excess is reported. One table, one place per limit:
//!
//! | data from the guest                      | limit (default)              | enforced by                       | excess                        |
//! |------------------------------------------|------------------------------|-----------------------------------|-------------------------------|
//! | anything lifted into the host per crossing (an import's arguments, an export's result) | `max_hostcall_bytes` (4 MiB) | wasmtime hostcall fuel, while lifting: nothing bigger is ever copied | ResourceExhausted |
//! | an operation's result (as JSON)          | `max_result_bytes` (1 MiB)   | `outcome::cap_result`             | ResourceExhausted             |
//! | a `driver-error` message, any error text | `max_error_message_bytes` (4 KiB) | [`cap_message`] at the end of `Sandbox::call` | truncated with a marker, code kept |
//! | a log message / its fields               | `max_log_bytes` (4 KiB each) | `capability::log` (escaped, cut)  | truncated with a marker       |
//! | log calls per call                       | 1000                         | `capability::log`                 | dropped, counted in the last  |
//! | stderr kept per call                     | `stderr_capture_bytes` (16 KiB) | the in-memory pipe             | the rest is dropped           |
//! | random bytes per request                 | `max_random_bytes` (64 KiB)  | `wasi::LimitedRandom`             | ResourceExhausted ([`LimitExceeded`]) |
//! | WASI handles (streams, pollables)        | `max_handles` (10,000)       | the store's resource table        | ResourceExhausted             |
//! | linear memory / table elements           | `memory_limit` / `table_limit` | `CallLimiter`                   | ResourceExhausted             |
//! | HTTP response bodies                     | `max_http_body_bytes` (16 MiB) | `capability::http`              | `too-large` to the guest      |
//!
//! The hostcall fuel is what keeps the host's memory bounded: without it wasmtime copies up to
//! 128 MiB per crossing before any of our checks see the value.

use std::fmt;

pub(crate) use mcm_driver::text::cap_message;

/// A guest asked the host for more than a limit allows (typed, so the outcome mapping can
/// classify it without reading text).
#[derive(Debug)]
pub(crate) struct LimitExceeded {
    pub what: &'static str,
    pub requested: u64,
    pub limit: u64,
}

impl fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of {} exceeds the sandbox's limit of {}",
            self.what, self.requested, self.limit
        )
    }
}

impl std::error::Error for LimitExceeded {}

/// wasmtime 48 reports exhausted hostcall fuel with a private error type
/// (`HostcallFuelExhausted`, `component/func/options.rs`). It cannot be downcast, so it is
/// recognised by its type name, which its `Debug` prints (a unit struct), not by its message.
/// `tests/limits.rs` pins this: a wasmtime upgrade that renames the type fails that test.
pub(crate) fn is_hostcall_fuel_exhausted(err: &wasmtime::Error) -> bool {
    err.chain()
        .any(|cause| format!("{cause:?}") == "HostcallFuelExhausted")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_messages_are_kept_whole() {
        assert_eq!(cap_message("disk full".into(), 64), "disk full");
    }

    #[test]
    fn long_messages_are_cut_with_a_marker_within_the_limit() {
        let text = "é".repeat(5000); // 10,000 bytes, two per char
        let capped = cap_message(text, 4096);
        assert!(capped.len() <= 4096, "{}", capped.len());
        assert!(
            capped.ends_with(" … [truncated: 10000 bytes in all]"),
            "{capped}"
        );
        assert!(capped.starts_with("éé"));
    }
}
