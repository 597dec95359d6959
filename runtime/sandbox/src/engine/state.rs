//! What a store holds during one call, and the host side of the guest's imports.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::SandboxConfig;
use super::wasi::LimitedRandom;
use crate::bindings::types;
use crate::capability::context::{ContextCall, FailureReport};
use crate::capability::credentials::{Brokered, CredentialsView};
use crate::capability::egress::EgressHook;
use crate::capability::http::{HttpCall, HttpClient, RateLimitedRecord};
use crate::capability::log::{LogCall, MAX_LOGS_PER_CALL};
use crate::capability::ratelimit::RateLimits;

/// The per-provider facts a call needs (cheap to clone: everything is shared).
#[derive(Clone)]
pub(crate) struct CallContext {
    pub provider: Arc<str>,
    pub operation: mcm_driver::Operation,
    pub egress: Arc<dyn EgressHook>,
    pub config_json: Arc<str>,
    pub http: HttpClient,
    /// The credentials the host withheld from the request, when brokering is on.
    pub brokered: Option<Arc<Brokered>>,
    /// The provider's own memory limit, below the sandbox's (`ProviderSettings::memory_limit`).
    pub memory_limit: Option<usize>,
    /// The provider's rate limits (its defaults under the operator's settings).
    pub rate_limits: Arc<RateLimits>,
    /// The fingerprint of the call's credential: which rate buckets its requests take from.
    pub credential: Arc<str>,
}

/// What the host learns during a call and classifies the outcome by afterwards (shared with
/// `Sandbox::call`, which no longer holds the store once the call future owns it).
#[derive(Default)]
pub(crate) struct CallRecord {
    /// The memory or table limiter refused growth.
    pub memory_refused: AtomicBool,
    /// The guest's own account of why it is about to trap (`context.report-failure`).
    pub reported: Arc<FailureReport>,
    /// The rate limiter refused a request: its token would have come after the deadline.
    pub rate_limited: RateLimitedRecord,
}

/// A store's data: WASI's deny-all context, the limiter, and one state per capability, each
/// lent to its capability as a view (see `capability`).
pub(crate) struct CallState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: CallLimiter,
    http: HttpCall,
    log: LogCall,
    context: ContextCall,
    brokered: Option<Arc<Brokered>>,
    max_random_bytes: u64,
}

impl CallState {
    pub(crate) fn new(
        ctx: CallContext,
        deadline: Instant,
        config: &SandboxConfig,
        stderr: MemoryOutputPipe,
        record: Arc<CallRecord>,
    ) -> Self {
        // Deny-all WASI: no preopened directories, no environment, no arguments, no sockets.
        // Only stderr is kept, in memory, so a panic message can be reported.
        let wasi = WasiCtx::builder().stderr(stderr).build();
        let mut table = ResourceTable::new();
        // Below wasmtime's own component-handle limit, so a handle leak ends in the typed
        // `ResourceTableError::Full` (ResourceExhausted).
        table.set_max_capacity(config.max_handles);
        CallState {
            wasi,
            table,
            limiter: CallLimiter {
                memory_limit: ctx
                    .memory_limit
                    .map_or(config.memory_limit, |m| m.min(config.memory_limit)),
                table_limit: config.table_limit,
                record: record.clone(),
            },
            http: HttpCall {
                client: ctx.http,
                provider: ctx.provider.clone(),
                egress: ctx.egress,
                deadline,
                rate_limits: ctx.rate_limits,
                credential: ctx.credential,
                rate_limited: record.rate_limited.clone(),
                in_flight: tokio::sync::Semaphore::new(
                    crate::capability::http::MAX_CONCURRENT_SENDS,
                ),
            },
            log: LogCall {
                provider: ctx.provider,
                operation: ctx.operation,
                budget: MAX_LOGS_PER_CALL,
                max_bytes: config.max_log_bytes,
            },
            context: ContextCall {
                deadline,
                config_json: ctx.config_json,
                report: record.reported.clone(),
                max_message_bytes: config.max_error_message_bytes,
            },
            brokered: ctx.brokered,
            max_random_bytes: config.max_random_bytes,
        }
    }

    /// `wasi:random` with the per-request limit (see `engine::wasi`).
    pub(crate) fn random(&mut self) -> LimitedRandom<'_> {
        LimitedRandom {
            ctx: self.wasi.random(),
            max_bytes: self.max_random_bytes,
        }
    }

    pub(crate) fn http(&mut self) -> &mut HttpCall {
        &mut self.http
    }

    pub(crate) fn log(&mut self) -> &mut LogCall {
        &mut self.log
    }

    pub(crate) fn context(&mut self) -> &mut ContextCall {
        &mut self.context
    }

    pub(crate) fn credentials(&mut self) -> CredentialsView<'_> {
        CredentialsView {
            brokered: self.brokered.as_deref(),
            http: &self.http,
        }
    }
}

impl wasmtime_wasi_io::IoView for CallState {
    fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Memory and table limits of one instance. A refusal is recorded so the outcome is reported
/// as ResourceExhausted, whatever the guest does after `memory.grow` fails.
pub(crate) struct CallLimiter {
    memory_limit: usize,
    table_limit: usize,
    record: Arc<CallRecord>,
}

impl ResourceLimiter for CallLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_limit {
            self.record.memory_refused.store(true, Ordering::Relaxed);
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.table_limit {
            self.record.memory_refused.store(true, Ordering::Relaxed);
            return Ok(false);
        }
        Ok(true)
    }
}

/// `mcm:driver/types` declares only types; its (empty) host trait sits on the state itself.
impl types::Host for CallState {}
