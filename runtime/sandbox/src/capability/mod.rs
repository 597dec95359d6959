//! Host capabilities: the only doors out of the sandbox.
pub mod credentials;
pub mod egress;
pub mod http;
