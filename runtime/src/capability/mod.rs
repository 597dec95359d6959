//! Host capabilities: the only doors out of the sandbox.
pub mod egress;
pub mod http;
