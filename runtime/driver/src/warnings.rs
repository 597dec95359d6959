//! A provider's warnings during one driver call, for the caller to show where the operator
//! looks (the controller makes each a `ProviderWarning` event on the Machine), beside the
//! host's log. Warnings are not part of the contract's results: a provider logs them at warn
//! level (the `log` capability), and the host records them here for the call in progress.
//!
//! The collector is task-local: [`collect`] scopes it around a call's future, and [`record`]
//! (called from the host's `log` capability, on the task polling the call) adds to it. Outside
//! a [`collect`] scope, `record` does nothing. At most [`MAX_WARNINGS`] distinct warnings are
//! kept per call.

use std::cell::RefCell;

/// Distinct warnings kept per call.
pub const MAX_WARNINGS: usize = 8;

tokio::task_local! {
    static SINK: RefCell<Vec<String>>;
}

/// Run `call`, returning its output and the warnings its provider recorded.
pub async fn collect<F: Future>(call: F) -> (F::Output, Vec<String>) {
    SINK.scope(RefCell::new(Vec::new()), async move {
        let out = call.await;
        let warnings = SINK.with(|s| std::mem::take(&mut *s.borrow_mut()));
        (out, warnings)
    })
    .await
}

/// Record a warning for the call in progress (no-op outside [`collect`]).
pub fn record(warning: &str) {
    let _ = SINK.try_with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < MAX_WARNINGS && !s.iter().any(|w| w == warning) {
            s.push(warning.to_string());
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn warnings_are_kept_per_call_distinct_and_bounded() {
        let ((), outside) = collect(async {}).await;
        assert!(outside.is_empty());
        record("dropped: no call in progress");
        let (answer, warnings) = collect(async {
            record("a");
            record("a");
            tokio::task::yield_now().await;
            for i in 0..20 {
                record(&format!("w{i}"));
            }
            42
        })
        .await;
        assert_eq!(answer, 42);
        assert_eq!(warnings.len(), MAX_WARNINGS);
        assert_eq!(warnings[..2], ["a".to_string(), "w0".to_string()]);
    }
}
