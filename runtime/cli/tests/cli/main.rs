//! The `mcm-wasm` binary's integration tests, one binary: the CLI, the conformance kit, the
//! controller as a process and in-process (with the real sandbox, a real control plane, moto
//! and Gardener's MCM), and the drop-in for provider-aws users.

mod support;

mod class_checks;
mod cli;
mod conformance;
mod controller_cli;
mod controller_e2e;
mod drop_in;
mod new_project;
mod providers_e2e;
mod throttling;
