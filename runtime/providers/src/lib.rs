//! Provider resources (`mcm-wasm.io/v1alpha1`, kind `Provider`): what the controller decides
//! from a resource before any I/O.
//!
//! - [`spec`]: the sandbox settings a spec asks for (egress, config, limits, brokering) and
//!   the one source it names, each refusal naming the field that is wrong.
//! - [`fetch`]: the artifact's bytes from a source, checked against the pin.
//! - [`status`]: the status conditions (Ready, Progressing, Degraded) after a reconcile.
//!
//! Fetching OCI and https sources and the reconciler that loads into the registry and
//! writes status build on these decisions (issue 13, in progress).

pub mod fetch;
pub mod oci;
pub mod reconcile;
pub mod spec;
pub mod status;

pub use spec::{Source, SpecError, settings, source};

/// An error with its causes on one line (reqwest's own text omits them: "error sending
/// request" says nothing of the refused connection or the untrusted certificate).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
