//! What a store holds during one call, and the host side of the guest's imports.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::SandboxConfig;
use super::limits::escape_for_log;
use super::wasi::LimitedRandom;
use crate::bindings::mcm::driver::{context, credentials, http, log, types};
use crate::capability::credentials::Brokered;
use crate::capability::egress::EgressPolicy;
use crate::capability::http::HttpClient;

/// The per-provider facts a call needs (cheap to clone: everything is shared).
#[derive(Clone)]
pub(crate) struct CallContext {
    pub provider: Arc<str>,
    pub operation: mcm_driver::Operation,
    pub egress: Arc<EgressPolicy>,
    pub config_json: Arc<str>,
    pub http: HttpClient,
    /// The credentials the host withheld from the request, when brokering is on.
    pub brokered: Option<Arc<Brokered>>,
}

/// What the host learns during a call and classifies the outcome by afterwards (shared with
/// `Sandbox::call`, which no longer holds the store once the call future owns it).
#[derive(Default)]
pub(crate) struct CallRecord {
    /// The memory or table limiter refused growth.
    pub memory_refused: AtomicBool,
    /// The guest's own account of why it is about to trap (`context.report-failure`).
    pub reported: Mutex<Option<mcm_driver::DriverError>>,
}

pub(crate) struct CallState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: CallLimiter,
    deadline: Instant,
    ctx: CallContext,
    log_budget: u32,
    record: Arc<CallRecord>,
    max_error_message_bytes: usize,
    max_log_bytes: usize,
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
                memory_limit: config.memory_limit,
                table_limit: config.table_limit,
                record: record.clone(),
            },
            record,
            max_error_message_bytes: config.max_error_message_bytes,
            deadline,
            ctx,
            log_budget: MAX_LOGS_PER_CALL,
            max_log_bytes: config.max_log_bytes,
            max_random_bytes: config.max_random_bytes,
        }
    }

    /// `wasi:random` with the per-request limit (see `sandbox::wasi`).
    pub(crate) fn random(&mut self) -> LimitedRandom<'_> {
        LimitedRandom {
            ctx: self.wasi.random(),
            max_bytes: self.max_random_bytes,
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

const MAX_LOGS_PER_CALL: u32 = 1000;

impl types::Host for CallState {}

impl http::Host for CallState {
    async fn send(
        &mut self,
        req: http::Request,
    ) -> wasmtime::Result<Result<http::Response, http::Error>> {
        Ok(send_http(&self.ctx, self.deadline, req).await)
    }
}

/// A request out through the http capability, clamped to the call's remaining deadline.
/// (Takes the parts, not `&CallState`: the WASI context in the state is not `Sync`.)
async fn send_http(
    ctx: &CallContext,
    deadline: Instant,
    req: http::Request,
) -> Result<http::Response, http::Error> {
    let remaining = deadline.saturating_duration_since(Instant::now());
    ctx.http
        .send(&ctx.provider, &ctx.egress, req, remaining)
        .await
}

impl log::Host for CallState {
    fn log(
        &mut self,
        level: log::Level,
        message: String,
        fields: Vec<(String, String)>,
    ) -> wasmtime::Result<()> {
        // A guest cannot flood the host's logs: bounded count and size per call. What it sends
        // was already bounded by the hostcall fuel while being lifted.
        if self.log_budget == 0 {
            return Ok(());
        }
        self.log_budget -= 1;
        // Guest text is escaped: a newline or escape sequence cannot forge a host log line.
        let message = escape_for_log(&message, self.max_log_bytes);
        let mut rendered = String::new();
        for (key, value) in &fields {
            if rendered.len() >= self.max_log_bytes {
                break;
            }
            if !rendered.is_empty() {
                rendered.push(' ');
            }
            rendered.push_str(&escape_for_log(key, 256));
            rendered.push('=');
            rendered.push_str(&escape_for_log(value, self.max_log_bytes));
        }
        let fields = escape_for_log(&rendered, self.max_log_bytes);
        let fields = &*fields;
        let provider = &*self.ctx.provider;
        let operation = self.ctx.operation.wit_name();
        match level {
            log::Level::Trace => {
                tracing::trace!(target: "guest", provider, operation, fields, "{message}")
            }
            log::Level::Debug => {
                tracing::debug!(target: "guest", provider, operation, fields, "{message}")
            }
            log::Level::Info => {
                tracing::info!(target: "guest", provider, operation, fields, "{message}")
            }
            log::Level::Warn => {
                tracing::warn!(target: "guest", provider, operation, fields, "{message}")
            }
            log::Level::Error => {
                tracing::error!(target: "guest", provider, operation, fields, "{message}")
            }
        }
        Ok(())
    }
}

impl context::Host for CallState {
    fn remaining_millis(&mut self) -> wasmtime::Result<u64> {
        Ok(self
            .deadline
            .saturating_duration_since(Instant::now())
            .as_millis() as u64)
    }

    fn provider_config(&mut self) -> wasmtime::Result<String> {
        Ok(self.ctx.config_json.to_string())
    }

    fn report_failure(&mut self, err: types::DriverError) -> wasmtime::Result<()> {
        let mut err = super::from_wit_error(err);
        err.message = super::limits::cap_message(err.message, self.max_error_message_bytes);
        *self.record.reported.lock().expect("call record lock") = Some(err);
        Ok(())
    }
}

impl credentials::Host for CallState {
    fn withheld_keys(&mut self) -> wasmtime::Result<Vec<String>> {
        Ok(self
            .ctx
            .brokered
            .as_ref()
            .map(|b| b.withheld.clone())
            .unwrap_or_default())
    }

    async fn send_aws_sigv4(
        &mut self,
        mut req: http::Request,
        region: String,
        service: String,
    ) -> wasmtime::Result<Result<http::Response, http::Error>> {
        let Some(brokered) = &self.ctx.brokered else {
            return Ok(Err(http::Error::Denied(format!(
                "credential brokering is not enabled for provider {}",
                self.ctx.provider
            ))));
        };
        // Only requests the allowlist admits are signed (and then sent) at all.
        if let Ok(url) = req.url.parse::<reqwest::Url>()
            && let Err(why) = self.ctx.egress.check(&url)
        {
            return Ok(Err(http::Error::Denied(why)));
        }
        if let Err(why) = brokered.sign_aws_sigv4(&mut req, &region, &service) {
            return Ok(Err(http::Error::InvalidRequest(why)));
        }
        Ok(send_http(&self.ctx, self.deadline, req).await)
    }
}
