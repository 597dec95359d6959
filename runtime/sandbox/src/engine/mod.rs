//! The sandbox: one wasmtime engine, the host capabilities linked into it, and the per-call
//! machinery (fresh store and instance, deadline, limits, outcome mapping).
//!
//! Every driver call gets a new `Store` and a new instance from the provider's pre-linked
//! component, so nothing leaks between calls or machines, and a trap poisons only that store.

mod convert;
pub(crate) mod limits;
mod outcome;
mod state;
pub mod wasi;

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, UpdateDeadline,
};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

use crate::bindings;
use crate::capability::{self, http::HttpClient};
pub(crate) use convert::*;
use mcm_driver::{Deadlines, DriverError};
pub(crate) use outcome::cap_result;
pub(crate) use state::{CallContext, CallRecord, CallState};

/// Limits and sizing of the sandbox. The defaults suit a controller with MCM's default of 50
/// concurrent syncs.
#[derive(Clone, Debug)]
pub struct SandboxConfig {
    /// Default deadlines; a provider's settings may override them.
    pub deadlines: Deadlines,
    /// Linear memory one instance may use.
    pub memory_limit: usize,
    /// Table elements one instance may use.
    pub table_limit: usize,
    /// Largest result (as JSON) a guest may return.
    pub max_result_bytes: usize,
    /// Most bytes lifted from the guest into the host in one crossing (an import's arguments,
    /// an export's result): wasmtime's hostcall fuel. Bounds the host's copy of any guest value
    /// before it is checked (see `limits`).
    pub max_hostcall_bytes: usize,
    /// Longest error message (a guest's `driver-error`, a trap with its stderr) passed on;
    /// longer ones are truncated with a marker, the code is kept.
    pub max_error_message_bytes: usize,
    /// Longest guest log message (and its rendered fields) written to the host log.
    pub max_log_bytes: usize,
    /// Largest `get-random-bytes` request.
    pub max_random_bytes: u64,
    /// WASI handles (streams, pollables) one call may hold at once.
    pub max_handles: usize,
    /// Largest HTTP response body the host reads for a guest.
    pub max_http_body_bytes: u64,
    /// Bytes of each pooled memory slot kept resident between calls (reset in place).
    pub memory_keep_resident: usize,
    /// Instances that may run at once; more calls get `Unavailable` (backpressure).
    pub max_concurrent_instances: u32,
    /// Granularity of the CPU deadline (epoch tick).
    pub epoch_tick: Duration,
    /// Guest stderr kept per call (for panic messages).
    pub stderr_capture_bytes: usize,
    /// Where compiled artifacts are cached; `None` disables the cache.
    pub cache_dir: Option<std::path::PathBuf>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            deadlines: Deadlines::default(),
            memory_limit: 128 << 20,
            table_limit: 100_000,
            max_result_bytes: 1 << 20,
            max_hostcall_bytes: 4 << 20,
            max_error_message_bytes: 4 << 10,
            max_log_bytes: 4 << 10,
            max_random_bytes: 64 << 10,
            max_handles: 10_000,
            max_http_body_bytes: 16 << 20,
            memory_keep_resident: 2 << 20,
            max_concurrent_instances: 200,
            epoch_tick: Duration::from_millis(2),
            stderr_capture_bytes: 16 << 10,
            cache_dir: crate::cache::default_dir(),
        }
    }
}

/// Why the sandbox could not be set up (at process start; nothing a provider does).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("creating the wasmtime engine: {0:#}")]
    Engine(wasmtime::Error),
    #[error("linking the host capabilities: {0:#}")]
    Link(wasmtime::Error),
    #[error("creating the HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
}

/// The `mcm:driver` capabilities, each lent its own part of the call's state.
fn link_capabilities(linker: &mut Linker<CallState>) -> wasmtime::Result<()> {
    bindings::types::add_to_linker::<CallState, HasSelf<CallState>>(linker, |s| s)?;
    capability::http::add_to_linker(linker, CallState::http)?;
    capability::log::add_to_linker(linker, CallState::log)?;
    capability::context::add_to_linker(linker, CallState::context)?;
    capability::credentials::add_to_linker(linker, CallState::credentials)
}

/// The engine, linker and shared HTTP client; one per process.
pub struct Sandbox {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<CallState>,
    pub(crate) config: SandboxConfig,
    pub(crate) http: HttpClient,
    pub(crate) cache: crate::cache::CompileCache,
}

impl Sandbox {
    pub fn new(config: SandboxConfig) -> Result<Arc<Sandbox>, SetupError> {
        let mut pool = PoolingAllocationConfig::default();
        let n = config.max_concurrent_instances;
        pool.total_component_instances(n)
            .total_core_instances(n * 8)
            .total_memories(n * 2)
            .total_tables(n * 4)
            .max_memory_size(config.memory_limit)
            .table_elements(config.table_limit)
            // Reset only the pages a call dirtied (PAGEMAP_SCAN, Linux >= 6.7) and keep them
            // resident, instead of madvise + page faults on every call: halves the per-call
            // cost and makes two threads scale (BENCHMARKS.md).
            .pagemap_scan(wasmtime::Enabled::Auto)
            .linear_memory_keep_resident(config.memory_keep_resident)
            .table_keep_resident(64 << 10);
        let mut wasm = Config::new();
        wasm.wasm_component_model(true)
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&wasm).map_err(SetupError::Engine)?;
        spawn_epoch_ticker(&engine, config.epoch_tick);

        let mut linker = Linker::<CallState>::new(&engine);
        // Rust guests import a few WASI interfaces even when unused; link that subset only,
        // deny-all (no env, no arguments; stderr captured): see `wasi` and CallState::new.
        wasi::add_to_linker(&mut linker, CallState::random).map_err(SetupError::Link)?;
        link_capabilities(&mut linker).map_err(SetupError::Link)?;

        let http = HttpClient::new(config.max_http_body_bytes).map_err(SetupError::HttpClient)?;
        let cache = crate::cache::CompileCache::new(config.cache_dir.clone());
        Ok(Arc::new(Sandbox {
            engine,
            linker,
            config,
            http,
            cache,
        }))
    }

    /// The figures of every rate bucket the providers' requests took tokens from (for metrics).
    pub fn rate_buckets(&self) -> Vec<mcm_driver::RateBucketStats> {
        self.http.limiter.snapshot()
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// Compile (or load from the cache) a component.
    pub(crate) fn compile(
        &self,
        bytes: &[u8],
    ) -> wasmtime::Result<(Component, crate::cache::CacheHit)> {
        self.cache.load(&self.engine, bytes)
    }

    /// Run one guest export in a fresh store and instance with the call's deadline and limits,
    /// and map whatever happens to a result or a machine code.
    ///
    /// `run` receives the store and the instance by value and calls the export; the store is
    /// dropped with the call, so a trap or a cancelled future poisons nothing else.
    pub(crate) async fn call<T, F, Fut>(
        &self,
        pre: &bindings::ProviderPre<CallState>,
        ctx: CallContext,
        deadline: Duration,
        run: F,
    ) -> Result<T, DriverError>
    where
        F: FnOnce(Store<CallState>, wasmtime::component::Instance) -> Fut,
        Fut: Future<Output = wasmtime::Result<Result<T, bindings::types::DriverError>>>,
    {
        let started = Instant::now();
        let stderr = MemoryOutputPipe::new(self.config.stderr_capture_bytes);
        let record = Arc::new(CallRecord::default());
        let state = CallState::new(
            ctx,
            started + deadline,
            &self.config,
            stderr.clone(),
            record.clone(),
        );
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_hostcall_fuel(self.config.max_hostcall_bytes);
        arm_deadline(&mut store, started + deadline);

        let work = async move {
            let instance = pre
                .instance_pre()
                .instantiate_async(&mut store)
                .await
                .map_err(outcome::Failure::Instantiate)?;
            run(store, instance).await.map_err(outcome::Failure::Trap)
        };
        // The wall-clock deadline over the whole call, host calls included. A guest running
        // wasm yields at every epoch tick (`arm_deadline`), so this timer fires on time too.
        let result = match tokio::time::timeout(deadline, work).await {
            Ok(Ok(Ok(value))) => return Ok(value),
            Ok(Ok(Err(guest_error))) => outcome::guest_error(from_wit_error(guest_error), &record),
            Ok(Err(failure)) => outcome::classify(failure, &record, &stderr, &self.config),
            Err(_elapsed) => outcome::deadline_exceeded(deadline, &stderr),
        };
        Err(DriverError {
            message: limits::cap_message(result.message, self.config.max_error_message_bytes),
            ..result
        })
    }
}

impl Sandbox {
    /// The floor under `call`, for benchmarks: store + instance + one export call, without the
    /// deadline, limits bookkeeping, outcome mapping or tracing that `call` adds.
    #[doc(hidden)]
    pub(crate) async fn floor_call(
        &self,
        pre: &bindings::ProviderPre<CallState>,
        ctx: CallContext,
        req: &bindings::types::MachineRequest,
    ) -> bool {
        let far = Instant::now() + Duration::from_secs(3600);
        let state = CallState::new(
            ctx,
            far,
            &self.config,
            MemoryOutputPipe::new(0),
            Arc::default(),
        );
        let mut store = Store::new(&self.engine, state);
        store.set_epoch_deadline(u64::MAX / 2);
        let instance = pre
            .instantiate_async(&mut store)
            .await
            .expect("instantiate");
        let result = instance
            .mcm_driver_driver()
            .call_get_machine_status(&mut store, req)
            .await;
        matches!(result, Ok(Ok(_)))
    }
}

/// The CPU deadline in wall-clock time: at every epoch tick the store compares the clock with
/// the call's deadline, traps (`Trap::Interrupt`) once it has passed, and otherwise yields to
/// the async executor. So a spinning guest stops within a tick of its deadline whatever its
/// length (a tick count drifts with the ticker's real period), and never holds a tokio worker
/// for longer than one tick: other providers' calls and the controller keep running.
fn arm_deadline(store: &mut Store<CallState>, deadline: Instant) {
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_store| {
        if Instant::now() >= deadline {
            Ok(UpdateDeadline::Interrupt)
        } else {
            Ok(UpdateDeadline::YieldCustom(
                1,
                Box::pin(tokio::task::yield_now()),
            ))
        }
    });
}

/// One thread advances the engine's epoch; it holds only a weak reference, so it ends when
/// the engine is dropped.
fn spawn_epoch_ticker(engine: &Engine, tick: Duration) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("mcm-wasm-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(tick);
            }
        })
        .expect("spawning the epoch ticker thread");
}
