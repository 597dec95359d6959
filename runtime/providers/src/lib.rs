//! Provider resources (`mcm-wasm.io/v1alpha1`, kind `Provider`): from a resource to a
//! provider serving in the sandbox's registry. Pure decisions first, I/O after:
//!
//! - [`spec`]: the sandbox settings a spec asks for (egress, config, limits, brokering) and
//!   the one source it names, each refusal naming the field that is wrong.
//! - [`fetch`]: the artifact's bytes from a source, checked against the pin.
//! - [`status`]: the status conditions (Ready, Progressing, Degraded) after a reconcile.
//! - [`oci`]: provider artifacts in OCI registries (push, pull by digest, pull secrets).
//! - [`reconcile`]: the Provider controller (spec → fetch → verify → load, status, events).

pub mod fetch;
pub mod oci;
pub mod reconcile;
pub mod spec;
pub mod status;

pub use spec::{Source, SpecError, settings, source};
