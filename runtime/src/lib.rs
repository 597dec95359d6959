//! mcm-wasm: Gardener machine-controller-manager drivers as sandboxed WebAssembly components.
//!
//! Data flows one way: registry (providers by name) -> provider (one method per driver
//! operation) -> sandbox (fresh instance, deadline, limits, outcome mapping) -> guest ->
//! capability (http, log, context) -> cloud.

pub mod artifact;
pub mod cache;
pub mod capability;
pub mod cli;
pub mod conformance;
pub mod controller;
pub mod driver;
pub mod provider;
pub mod registry;
pub mod sandbox;

pub use artifact::{ArtifactInfo, LoadError, Metadata};
pub use capability::egress::EgressPolicy;
pub use driver::{Code, DriverError, Operation};
pub use provider::{CallError, Provider, ProviderSettings};
pub use registry::{Registry, RegistryEvent};
pub use sandbox::{Deadlines, Sandbox, SandboxConfig};
