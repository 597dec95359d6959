//! The sandbox's integration tests, one binary: real guest components (`test-artifacts`) in
//! the real sandbox; moto and the sample backend from `testenv` for the AWS and sample
//! providers. Tests that measure the process's memory run alone in a child process.

mod support;

mod aws;
mod aws_faults;
mod compile_cache;
mod deadlines;
mod host_memory;
mod hostile;
mod hotswap;
mod http_capability;
mod memory_flat;
mod sample;
