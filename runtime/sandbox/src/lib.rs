//! mcm-sandbox: MCM machine drivers as sandboxed WebAssembly components. The only crate of the
//! project that links wasmtime; the controller sees providers through `mcm_driver`'s
//! [`MachineDriver`](mcm_driver::MachineDriver) and [`ProviderLookup`](mcm_driver::ProviderLookup).
//!
//! Data flows one way: [`registry`] (providers by name, hot-swapped) -> [`provider`] (one
//! `call` per driver operation) -> [`engine`] (fresh instance, deadline, limits, outcome
//! mapping) -> guest -> [`capability`] (http, log, context, credentials) -> cloud.
//! [`artifact`] checks a component before it is compiled; [`cache`] keeps compiled code.

pub mod artifact;
mod bindings;
pub mod cache;
pub mod capability;
pub mod engine;
pub mod provider;
pub mod registry;

pub use artifact::{ArtifactInfo, LoadError, Metadata};
pub use capability::egress::EgressPolicy;
pub use capability::ratelimit::{Limit, MAX_THROTTLED_ATTEMPTS, RateLimits};
pub use engine::{Sandbox, SandboxConfig};
pub use mcm_driver::{Code, Deadlines, DriverError, MachineDriver, Operation};
pub use provider::{Provider, ProviderSettings};
pub use registry::{Registry, RegistryEvent};
