//! machine-api's integration tests, one binary: the CRDs against the Rust types, the API on a
//! real kube-apiserver, the deploy manifests and RBAC, and compatibility with Gardener's own
//! CRDs and machine-controller-manager.

mod common;

mod api;
mod crds;
mod deploy;
mod gardener_compat;
mod gardener_mcm;
mod providers;
