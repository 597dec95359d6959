//! Outcome mapping: every way a call can fail becomes a machine code, classified by type
//! (trap kind, limiter record, pool error, limit error), never by matching error text.
//!
//! | what happened                                              | code              |
//! |------------------------------------------------------------|-------------------|
//! | the guest failed after the rate limiter refused a request  | Unavailable       |
//! | the guest failed otherwise (its `driver-error`)            | the guest's code  |
//! | instance pool full (`PoolConcurrencyLimitError`)           | Unavailable       |
//! | the memory/table limiter refused growth (recorded)         | ResourceExhausted |
//! | hostcall fuel exhausted while lifting a guest value        | ResourceExhausted |
//! | WASI handle table full (`ResourceTableError::Full`)        | ResourceExhausted |
//! | a sandbox limit refused a request (`LimitExceeded`)        | ResourceExhausted |
//! | the guest reported its own failure before trapping (SDK)   | the reported code |
//! | epoch deadline (`Trap::Interrupt`) / the call's timeout    | DeadlineExceeded  |
//! | stack overflow, any other trap or error                    | Internal          |
//! | a result larger than `max_result_bytes` as JSON ([`cap_result`]) | ResourceExhausted |

use std::sync::atomic::Ordering;
use std::time::Duration;

use wasmtime::component::ResourceTableError;
use wasmtime::{PoolConcurrencyLimitError, Trap};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

use super::limits::{LimitExceeded, is_hostcall_fuel_exhausted};
use super::{CallRecord, SandboxConfig};
use mcm_driver::{Code, DriverError, Response};

pub(crate) enum Failure {
    Instantiate(wasmtime::Error),
    Trap(wasmtime::Error),
}

/// A guest's own error, unless the host's rate limiter refused one of its requests (its token
/// would have come after the deadline): then the call is Unavailable, saying so, whatever the
/// guest made of the refusal.
pub(crate) fn guest_error(error: DriverError, record: &CallRecord) -> DriverError {
    match record.rate_limited.lock().unwrap().take() {
        Some(limited) => DriverError::new(
            Code::Unavailable,
            format!("{limited} (the provider said: {})", error.message),
        ),
        None => error,
    }
}

pub(crate) fn classify(
    failure: Failure,
    record: &CallRecord,
    stderr: &MemoryOutputPipe,
    config: &SandboxConfig,
) -> DriverError {
    let (err, instantiating) = match failure {
        Failure::Instantiate(e) => (e, true),
        Failure::Trap(e) => (e, false),
    };
    if err.downcast_ref::<PoolConcurrencyLimitError>().is_some() {
        return DriverError::new(
            Code::Unavailable,
            format!("sandbox is at its concurrency limit, retry later: {err}"),
        );
    }
    let reported = record.reported.take().map(super::from_wit_error);
    if record.memory_refused.load(Ordering::Relaxed) {
        let mut message = String::from("guest exceeded its memory or table limit");
        if let Some(reported) = &reported {
            message = format!("{message}: {}", reported.message);
        }
        return DriverError::new(Code::ResourceExhausted, with_stderr(message, stderr));
    }
    if is_hostcall_fuel_exhausted(&err) {
        return DriverError::new(
            Code::ResourceExhausted,
            with_stderr(
                format!(
                    "guest passed more than {} bytes to the host in one call, the sandbox's limit (a result, log \
                     message or request that large is refused)",
                    config.max_hostcall_bytes
                ),
                stderr,
            ),
        );
    }
    if let Some(ResourceTableError::Full) = err.downcast_ref::<ResourceTableError>() {
        return DriverError::new(
            Code::ResourceExhausted,
            with_stderr(
                format!(
                    "guest holds more than {} WASI handles at once",
                    config.max_handles
                ),
                stderr,
            ),
        );
    }
    if let Some(limit) = err.downcast_ref::<LimitExceeded>() {
        return DriverError::new(
            Code::ResourceExhausted,
            with_stderr(limit.to_string(), stderr),
        );
    }
    let what = if instantiating {
        "instantiation failed"
    } else {
        "guest trapped"
    };
    // The guest said why before it trapped (the SDK's panic hook): its code, the trap named.
    if let Some(reported) = reported
        && !matches!(err.downcast_ref::<Trap>(), Some(Trap::Interrupt))
    {
        let trap = err
            .downcast_ref::<Trap>()
            .map_or_else(|| format!("{err:#}"), |t| t.to_string());
        return DriverError::new(
            reported.code,
            format!("{} ({what}: {trap})", reported.message),
        );
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => DriverError::new(
            Code::DeadlineExceeded,
            with_stderr(
                "guest ran past its deadline and was interrupted".into(),
                stderr,
            ),
        ),
        Some(Trap::StackOverflow) => DriverError::new(
            Code::Internal,
            with_stderr(
                format!("{what}: stack overflow (unbounded recursion?)"),
                stderr,
            ),
        ),
        Some(trap) => DriverError::new(
            Code::Internal,
            with_stderr(format!("{what}: {trap}"), stderr),
        ),
        None => DriverError::new(
            Code::Internal,
            with_stderr(format!("{what}: {err:#}"), stderr),
        ),
    }
}

pub(crate) fn deadline_exceeded(deadline: Duration, stderr: &MemoryOutputPipe) -> DriverError {
    DriverError::new(
        Code::DeadlineExceeded,
        with_stderr(
            format!("call did not finish within its deadline of {deadline:?}"),
            stderr,
        ),
    )
}

/// Append what the guest wrote to stderr (a Rust panic message lands there).
fn with_stderr(message: String, stderr: &MemoryOutputPipe) -> String {
    let bytes = stderr.contents();
    let text = String::from_utf8_lossy(&bytes);
    let text = text.trim();
    if text.is_empty() {
        message
    } else {
        format!("{message}; guest stderr: {text}")
    }
}

/// A guest cannot push more than `limit` bytes of result (as JSON) into the host.
pub(crate) fn cap_result(value: Response, limit: usize) -> Result<Response, DriverError> {
    let mut counter = ByteCounter(0);
    serde_json::to_writer(&mut counter, &value).expect("driver types serialize");
    if counter.0 > limit {
        return Err(DriverError::new(
            Code::ResourceExhausted,
            format!(
                "provider returned a result of {} bytes; the limit is {limit} bytes",
                counter.0
            ),
        ));
    }
    Ok(value)
}

struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
