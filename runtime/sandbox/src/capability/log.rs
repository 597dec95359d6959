//! The `log` capability: a guest's log lines become the host's `tracing` events (target
//! `guest`, with provider and operation), escaped and bounded, so a guest can neither forge a
//! host log line nor flood the log. Warnings are also recorded for the call's caller
//! (`mcm_driver::warnings`).

use std::borrow::Cow;
use std::sync::Arc;

use mcm_driver::text::{floor_char_boundary, truncated_marker};
use wasmtime::component::{HasSelf, Linker};

use crate::bindings::mcm::driver::log::{self as wit, Level};

/// Log calls a guest may make per driver call; later ones are dropped.
pub(crate) const MAX_LOGS_PER_CALL: u32 = 1000;

/// Link `mcm:driver/log`; `view` borrows the call's [`LogCall`] out of the store's data.
pub(crate) fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> &mut LogCall,
) -> wasmtime::Result<()> {
    wit::add_to_linker::<T, HasSelf<LogCall>>(linker, view)
}

/// The `log` capability's state for one call.
pub(crate) struct LogCall {
    pub provider: Arc<str>,
    pub operation: mcm_driver::Operation,
    /// Log calls left in this driver call.
    pub budget: u32,
    /// Bytes kept of a message, and of all its fields together.
    pub max_bytes: usize,
}

impl wit::Host for LogCall {
    fn log(
        &mut self,
        level: Level,
        message: String,
        fields: Vec<(String, String)>,
    ) -> wasmtime::Result<()> {
        // A guest cannot flood the host's logs: bounded count and size per call. What it sends
        // was already bounded by the hostcall fuel while being lifted.
        if self.budget == 0 {
            return Ok(());
        }
        self.budget -= 1;
        // Guest text is escaped: a newline or escape sequence cannot forge a host log line.
        let message = escape_for_log(&message, self.max_bytes);
        let mut rendered = String::new();
        for (key, value) in &fields {
            if rendered.len() >= self.max_bytes {
                break;
            }
            if !rendered.is_empty() {
                rendered.push(' ');
            }
            rendered.push_str(&escape_for_log(key, 256));
            rendered.push('=');
            rendered.push_str(&escape_for_log(value, self.max_bytes));
        }
        let fields = escape_for_log(&rendered, self.max_bytes);
        let fields = &*fields;
        let provider = &*self.provider;
        let operation = self.operation.wit_name();
        match level {
            Level::Trace => {
                tracing::trace!(target: "guest", provider, operation, fields, "{message}")
            }
            Level::Debug => {
                tracing::debug!(target: "guest", provider, operation, fields, "{message}")
            }
            Level::Info => {
                tracing::info!(target: "guest", provider, operation, fields, "{message}")
            }
            Level::Warn => {
                // Also for the caller of this call (the controller's ProviderWarning event).
                mcm_driver::warnings::record(&message);
                tracing::warn!(target: "guest", provider, operation, fields, "{message}")
            }
            Level::Error => {
                tracing::error!(target: "guest", provider, operation, fields, "{message}")
            }
        }
        Ok(())
    }
}

/// Guest text for the host's text log: control characters (newlines included) escaped, so a
/// guest cannot forge a log line or a terminal sequence; at most `max` bytes of the input.
fn escape_for_log(text: &str, max: usize) -> Cow<'_, str> {
    let cut = floor_char_boundary(text, max.min(text.len()));
    let head = &text[..cut];
    let truncated = cut < text.len();
    if !truncated && !head.chars().any(char::is_control) {
        return Cow::Borrowed(head);
    }
    let mut out = String::with_capacity(head.len() + 16);
    for c in head.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if truncated {
        out.push_str(&truncated_marker(text.len()));
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_text_cannot_forge_lines_or_escape_sequences() {
        let forged = "ok\n2026-12-02T00:00:00Z ERROR mcm_wasm::controller: forged\r\x1b[2J";
        let escaped = escape_for_log(forged, 4096);
        assert!(!escaped.contains('\n') && !escaped.contains('\r') && !escaped.contains('\x1b'));
        assert_eq!(
            escaped,
            "ok\\n2026-12-02T00:00:00Z ERROR mcm_wasm::controller: forged\\r\\u{1b}[2J"
        );
        assert!(matches!(
            escape_for_log("plain ünïcode", 4096),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn log_text_is_cut_at_its_limit() {
        let long = "x".repeat(10_000);
        let escaped = escape_for_log(&long, 100);
        assert!(escaped.starts_with(&"x".repeat(100)));
        assert!(
            escaped.ends_with("[truncated: 10000 bytes in all]"),
            "{escaped}"
        );
    }
}
