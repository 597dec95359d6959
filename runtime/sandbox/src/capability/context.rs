//! The `context` capability: what a guest may learn about its call (the time left, the
//! provider's own config) and its one way to explain a trap before it happens
//! (`report-failure`, which the SDK calls from its panic hook).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use wasmtime::component::{HasSelf, Linker};

use crate::bindings::mcm::driver::context as wit;
use crate::bindings::types::DriverError;

/// Link `mcm:driver/context`; `view` borrows the call's [`ContextCall`] out of the store's data.
pub(crate) fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> &mut ContextCall,
) -> wasmtime::Result<()> {
    wit::add_to_linker::<T, HasSelf<ContextCall>>(linker, view)
}

/// The guest's own account of why it is about to trap, kept for the outcome mapping (which
/// reads it after the store, and this state with it, may be gone).
#[derive(Default)]
pub(crate) struct FailureReport(Mutex<Option<DriverError>>);

impl FailureReport {
    pub(crate) fn take(&self) -> Option<DriverError> {
        self.0.lock().expect("failure report lock").take()
    }
}

/// The `context` capability's state for one call.
pub(crate) struct ContextCall {
    pub deadline: Instant,
    pub config_json: Arc<str>,
    pub report: Arc<FailureReport>,
    /// A reported message is cut to this many bytes when it is kept.
    pub max_message_bytes: usize,
}

impl wit::Host for ContextCall {
    fn remaining_millis(&mut self) -> wasmtime::Result<u64> {
        Ok(self
            .deadline
            .saturating_duration_since(Instant::now())
            .as_millis() as u64)
    }

    fn provider_config(&mut self) -> wasmtime::Result<String> {
        Ok(self.config_json.to_string())
    }

    fn report_failure(&mut self, mut err: DriverError) -> wasmtime::Result<()> {
        err.message = mcm_driver::text::cap_message(err.message, self.max_message_bytes);
        *self.report.0.lock().expect("failure report lock") = Some(err);
        Ok(())
    }
}
