//! Host capabilities: the only doors out of the sandbox. Each is one unit in the shape of
//! wasmtime-wasi-http and Spin's factors: its per-call state (`HttpCall`, `LogCall`,
//! `ContextCall`, the withheld credentials), a borrowed view of that state implementing the
//! generated `Host` trait, and its own `add_to_linker`, generic over the store's data, so no
//! capability knows the engine that hosts it. Policy is a hook: [`egress::EgressHook`].
//!
//! | capability    | interface                 | state (per call)        | view                   |
//! |---------------|---------------------------|-------------------------|------------------------|
//! | [`http`]      | `mcm:driver/http`         | `HttpCall`              | `&mut HttpCall`        |
//! | [`log`]       | `mcm:driver/log`          | `LogCall`               | `&mut LogCall`         |
//! | [`context`]   | `mcm:driver/context`      | `ContextCall`           | `&mut ContextCall`     |
//! | [`credentials`] | `mcm:driver/credentials` | `Brokered` (+ `HttpCall`) | `CredentialsView<'_>` |
//!
//! Policy shared by every call of every provider: [`ratelimit`] (token buckets per
//! credential, endpoint and rate class) and [`response_cache`] (answers a guest asked the host
//! to keep), both used by `http`.
pub(crate) mod context;
pub mod credentials;
pub mod egress;
pub(crate) mod http;
pub(crate) mod log;
pub mod ratelimit;
pub mod response_cache;
