//! A loaded provider: a verified, compiled component plus the operator's settings for it. It
//! implements [`MachineDriver`]: every operation goes through one [`MachineDriver::call`]
//! (span, deadline, credential brokering, sandbox, result-size cap).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Instrument as _;

use crate::artifact::{self, ArtifactInfo, LoadError};
use crate::bindings;
use crate::cache::CacheHit;
use crate::capability::credentials::{self, Brokered};
use crate::capability::egress::{EgressHook, EgressPolicy};
use crate::capability::ratelimit::RateLimits;
use crate::engine::{self, CallContext, Sandbox};
use mcm_driver::*;

type BatchIndices = bindings::batch::exports::mcm::driver::batch::GuestIndices;
type BatchCreateIndices = bindings::batch::exports::mcm::driver::batch_create::GuestIndices;

/// What the operator decides for a provider: where it may connect, its own config, deadlines.
#[derive(Clone, Debug, Default)]
pub struct ProviderSettings {
    /// Egress allowlist (default: deny everything).
    pub egress: EgressPolicy,
    /// The provider's own configuration, JSON text handed to the guest (`{}` when unset).
    pub config: Option<String>,
    /// Per-operation deadlines; `None` uses the sandbox defaults.
    pub deadlines: Option<Deadlines>,
    /// Host-brokered credentials: the secret's cloud credential keys never enter the sandbox;
    /// the host signs the provider's requests with them (`capability::credentials`).
    pub broker_credentials: bool,
    /// Linear memory per call, in bytes; `None` (or more than the sandbox's limit) uses the
    /// sandbox-wide `memory_limit`, which also sizes the pooling allocator's slots.
    pub memory_limit: Option<usize>,
    /// At most this many calls of the provider at once; `None`: only the sandbox-wide
    /// `max_concurrent_instances` bounds them.
    pub max_concurrent_calls: Option<u32>,
    /// The operator's rate limits, over the defaults the provider declares in its metadata
    /// (`rateLimits`), class by class.
    pub rate_limits: Option<RateLimits>,
}

/// A provider ready to serve calls. Cheap to share (`Arc`); calls run concurrently.
pub struct Provider {
    info: ArtifactInfo,
    path: PathBuf,
    pre: bindings::ProviderPre<engine::CallState>,
    /// The driver export of an instance of `pre`.
    driver: bindings::ProviderIndices,
    /// The batch export (contract 0.1.2), when the component has it.
    batch: Option<BatchIndices>,
    /// The batch-create export (contract 0.1.3), when the component has it.
    batch_create: Option<BatchCreateIndices>,
    sandbox: Arc<Sandbox>,
    settings: ProviderSettings,
    call_ctx: CallContextTemplate,
    operations: Vec<String>,
    /// Bounds the provider's concurrent calls (`max_concurrent_calls`).
    permits: Option<Arc<tokio::sync::Semaphore>>,
    /// How the compiled code was obtained, and how long loading took.
    pub load_stats: LoadStats,
}

#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct LoadStats {
    pub cache: CacheHit,
    pub elapsed: Duration,
}

#[derive(Clone)]
struct CallContextTemplate {
    provider: Arc<str>,
    egress: Arc<EgressPolicy>,
    config_json: Arc<str>,
    rate_limits: Arc<RateLimits>,
}

impl CallContextTemplate {
    fn new(info: &ArtifactInfo, settings: &ProviderSettings) -> Self {
        let declared = info.metadata.rate_limits.clone().unwrap_or_default();
        let rate_limits = match &settings.rate_limits {
            Some(operator) => declared.overridden_by(operator),
            None => declared,
        };
        CallContextTemplate {
            provider: Arc::from(info.metadata.name.as_str()),
            egress: Arc::new(settings.egress.clone()),
            config_json: Arc::from(settings.config.as_deref().unwrap_or("{}")),
            rate_limits: Arc::new(rate_limits),
        }
    }
}

impl Provider {
    /// Read, verify, compile (or load from cache), link and smoke-instantiate a provider.
    pub async fn load(
        sandbox: &Arc<Sandbox>,
        path: &Path,
        settings: ProviderSettings,
    ) -> Result<Provider, LoadError> {
        let bytes = tokio::fs::read(path)
            .await
            .map_err(|source| LoadError::Io {
                path: path.display().to_string(),
                source,
            })?;
        Self::from_bytes(sandbox, path, &bytes, settings).await
    }

    /// Like [`Provider::load`], from bytes already read; `path` names the artifact in errors.
    pub async fn from_bytes(
        sandbox: &Arc<Sandbox>,
        path: &Path,
        bytes: &[u8],
        settings: ProviderSettings,
    ) -> Result<Provider, LoadError> {
        let started = Instant::now();
        let p = || path.display().to_string();
        let info = artifact::inspect(path, bytes)?;
        // Compiling takes tens of milliseconds of CPU: keep it off the async workers.
        let (component, cache) = {
            let sandbox = sandbox.clone();
            let bytes = bytes.to_vec();
            tokio::task::spawn_blocking(move || sandbox.compile(&bytes))
                .await
                .map_err(|e| LoadError::Compile {
                    path: p(),
                    reason: e.to_string(),
                })?
                .map_err(|e| LoadError::Compile {
                    path: p(),
                    reason: format!("{e:#}"),
                })?
        };
        let operations = exported_operations(sandbox.engine(), &component);
        let pre = sandbox
            .linker
            .instantiate_pre(&component)
            .and_then(bindings::ProviderPre::new)
            .map_err(|e| LoadError::Link {
                path: p(),
                reason: format!("{e:#}"),
            })?;
        let call_ctx = CallContextTemplate::new(&info, &settings);
        let driver =
            bindings::ProviderIndices::new(pre.instance_pre()).map_err(|e| LoadError::Link {
                path: p(),
                reason: format!("{e:#}"),
            })?;
        // Optional: a component without it gets one call per machine.
        let batch = BatchIndices::new(pre.instance_pre()).ok();
        let batch_create = BatchCreateIndices::new(pre.instance_pre()).ok();
        let provider = Provider {
            info,
            path: path.to_path_buf(),
            pre,
            driver,
            batch,
            batch_create,
            sandbox: sandbox.clone(),
            permits: permits(&settings),
            settings,
            call_ctx,
            operations,
            load_stats: LoadStats {
                cache,
                elapsed: Duration::ZERO,
            },
        };
        provider.smoke().await.map_err(|e| LoadError::Smoke {
            path: p(),
            reason: e.message,
        })?;
        Ok(Provider {
            load_stats: LoadStats {
                cache,
                elapsed: started.elapsed(),
            },
            ..provider
        })
    }

    /// Instantiate once without calling anything: start functions and data segments run, and
    /// the memory limits apply, before the provider is allowed to serve.
    async fn smoke(&self) -> Result<(), DriverError> {
        let ctx = self.call_context(Operation::MetricsLabels, None, Arc::from(""));
        self.sandbox
            .call(
                &self.pre,
                ctx,
                Duration::from_secs(5),
                async |_store, _instance| Ok(Ok(())),
            )
            .await
    }

    /// The same compiled provider with other settings (no recompilation).
    pub fn with_settings(&self, settings: ProviderSettings) -> Provider {
        Provider {
            info: self.info.clone(),
            path: self.path.clone(),
            pre: self.pre.clone(),
            driver: self.driver.clone(),
            batch: self.batch.clone(),
            batch_create: self.batch_create.clone(),
            sandbox: self.sandbox.clone(),
            call_ctx: CallContextTemplate::new(&self.info, &settings),
            permits: permits(&settings),
            settings,
            operations: self.operations.clone(),
            load_stats: self.load_stats,
        }
    }

    pub fn info(&self) -> &ArtifactInfo {
        &self.info
    }

    /// The rate limits the provider's calls run under (its declared defaults under the
    /// operator's settings).
    pub fn rate_limits(&self) -> &RateLimits {
        &self.call_ctx.rate_limits
    }

    /// The functions of the exported driver interface.
    pub fn operations(&self) -> &[String] {
        &self.operations
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn settings(&self) -> &ProviderSettings {
        &self.settings
    }

    fn call_context(
        &self,
        operation: Operation,
        brokered: Option<Arc<Brokered>>,
        credential: Arc<str>,
    ) -> CallContext {
        CallContext {
            provider: self.call_ctx.provider.clone(),
            operation,
            egress: self.call_ctx.egress.clone() as Arc<dyn EgressHook>,
            config_json: self.call_ctx.config_json.clone(),
            http: self.sandbox.http.clone(),
            brokered,
            memory_limit: self.settings.memory_limit,
            rate_limits: self.call_ctx.rate_limits.clone(),
            credential,
        }
    }

    /// The part of `secret` the guest sees, and what the host keeps when it brokers the
    /// credentials.
    fn broker<'s>(
        &self,
        secret: &'s SecretData,
    ) -> (std::borrow::Cow<'s, SecretData>, Option<Arc<Brokered>>) {
        if !self.settings.broker_credentials {
            return (std::borrow::Cow::Borrowed(secret), None);
        }
        let (visible, brokered) = credentials::withhold(secret);
        (std::borrow::Cow::Owned(visible), Some(Arc::new(brokered)))
    }

    /// A slot among the provider's `max_concurrent_calls`, waited for within the operation's
    /// deadline; `None` when the provider has no such limit.
    async fn permit(
        &self,
        op: Operation,
    ) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, DriverError> {
        let Some(permits) = &self.permits else {
            return Ok(None);
        };
        let deadline = self.deadline(op);
        match tokio::time::timeout(deadline, permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(Some(permit)),
            _ => Err(DriverError::new(
                Code::ResourceExhausted,
                format!(
                    "provider {} ran {} calls at once (its maxConcurrentCalls) for the whole {:?} deadline of {}",
                    self.name(),
                    self.settings.max_concurrent_calls.unwrap_or_default(),
                    deadline,
                    op.wit_name()
                ),
            )),
        }
    }

    fn deadline(&self, op: Operation) -> Duration {
        self.settings
            .deadlines
            .as_ref()
            .unwrap_or(&self.sandbox.config.deadlines)
            .get(op)
    }

    /// Benchmark floor: get-machine-status with only store + instance + call (see
    /// `Sandbox::floor_call`); the difference to [`MachineDriver::get_machine_status`] is what
    /// the runtime's own layers cost.
    #[doc(hidden)]
    pub async fn floor_get_machine_status(&self, req: &MachineRequest) -> bool {
        let wreq = engine::machine_request(req, &req.secret);
        self.sandbox
            .floor_call(
                &self.pre,
                self.call_context(Operation::GetMachineStatus, None, Arc::from("")),
                &wreq,
            )
            .await
    }
}

#[async_trait::async_trait]
impl MachineDriver for Provider {
    fn name(&self) -> &str {
        &self.info.metadata.name
    }

    fn version(&self) -> &str {
        &self.info.metadata.version
    }

    /// One driver call: span, deadline, brokering, sandbox, result-size cap.
    async fn call(&self, request: Request<'_>) -> Result<Response, DriverError> {
        let op = request.operation();
        let no_secret = SecretData::new();
        let secret = request.secret().unwrap_or(&no_secret);
        let (visible, brokered) = self.broker(secret);
        let wreq = engine::wit_request(&request, &visible);
        self.sandboxed(
            op,
            request.machine_name(),
            secret,
            brokered,
            async move |mut store, instance| {
                let guest = self.driver.load(&mut store, &instance)?;
                engine::dispatch(store, guest, wreq).await
            },
        )
        .await
        .and_then(|value| engine::cap_result(value, self.sandbox.config.max_result_bytes))
    }

    fn batches(&self) -> bool {
        self.batch.is_some()
    }

    async fn get_machine_statuses(
        &self,
        reqs: &[MachineRequest],
    ) -> Vec<Result<GetMachineStatusResponse, DriverError>> {
        self.each(Operation::GetMachineStatus, reqs)
            .await
            .into_iter()
            .map(|r| match r? {
                Response::GetMachineStatus(r) => Ok(r),
                _ => unreachable!("each answers the operation it was given"),
            })
            .collect()
    }

    fn batches_creates(&self) -> bool {
        self.batch_create.is_some()
    }

    async fn create_machines(
        &self,
        reqs: &[MachineRequest],
    ) -> Vec<Result<CreateMachineResponse, DriverError>> {
        self.each(Operation::CreateMachine, reqs)
            .await
            .into_iter()
            .map(|r| match r? {
                Response::CreateMachine(r) => Ok(r),
                _ => unreachable!("each answers the operation it was given"),
            })
            .collect()
    }

    async fn delete_machines(
        &self,
        reqs: &[MachineRequest],
    ) -> Vec<Result<DeleteMachineResponse, DriverError>> {
        self.each(Operation::DeleteMachine, reqs)
            .await
            .into_iter()
            .map(|r| match r? {
                Response::DeleteMachine(r) => Ok(r),
                _ => unreachable!("each answers the operation it was given"),
            })
            .collect()
    }
}

/// One entry of a batch answer, in the contract's types.
enum BatchAnswer {
    Status(bindings::types::GetMachineStatusResponse),
    Create(bindings::types::CreateMachineResponse),
    Delete(bindings::types::DeleteMachineResponse),
}

impl BatchAnswer {
    fn into_response(self) -> Response {
        match self {
            BatchAnswer::Status(r) => Response::GetMachineStatus(r.into()),
            BatchAnswer::Create(r) => Response::CreateMachine(r.into()),
            BatchAnswer::Delete(r) => Response::DeleteMachine(r.into()),
        }
    }
}

impl Provider {
    /// One sandbox call of `op`: span, the provider's concurrency permit and deadline (the
    /// wait for a permit counts against it), the call's credential fingerprint (rate buckets),
    /// and the outcome logged.
    async fn sandboxed<T, F, Fut>(
        &self,
        op: Operation,
        machine: &str,
        secret: &SecretData,
        brokered: Option<Arc<Brokered>>,
        run: F,
    ) -> Result<T, DriverError>
    where
        F: FnOnce(wasmtime::Store<engine::CallState>, wasmtime::component::Instance) -> Fut,
        Fut: Future<Output = wasmtime::Result<Result<T, bindings::types::DriverError>>>,
    {
        let span = tracing::info_span!(
            "driver_call",
            provider = self.name(),
            version = self.version(),
            operation = op.wit_name(),
            machine = machine,
            outcome = tracing::field::Empty,
            duration_us = tracing::field::Empty,
        );
        let credential = Arc::from(credential_fingerprint(secret));
        let started = Instant::now();
        // The deadline covers waiting for a slot (maxConcurrentCalls) and the call itself; a
        // call that got no slot is logged and counted like any other outcome.
        let result = match self.permit(op).await {
            Ok(_permit) => {
                self.sandbox
                    .call(
                        &self.pre,
                        self.call_context(op, brokered, credential),
                        self.deadline(op).saturating_sub(started.elapsed()),
                        run,
                    )
                    .instrument(span.clone())
                    .await
            }
            Err(e) => Err(e),
        };
        let elapsed = started.elapsed();
        let outcome = result.as_ref().err().map(|e| e.code);
        span.record("outcome", outcome.map_or("OK", Code::name));
        span.record("duration_us", elapsed.as_micros() as u64);
        match &result {
            Ok(_) => tracing::debug!(parent: &span, "driver call succeeded"),
            Err(e) => {
                tracing::info!(parent: &span, code = %e.code, "driver call failed: {}", e.message)
            }
        }
        result
    }

    /// `op` (GetMachineStatus, CreateMachine or DeleteMachine) of every request, one answer
    /// per request in order: one batch call when the provider exports it for `op` and the
    /// requests share a credential, else one call per machine. Each answer is within the
    /// sandbox's result-size cap, as a single call's is.
    async fn each(
        &self,
        op: Operation,
        reqs: &[MachineRequest],
    ) -> Vec<Result<Response, DriverError>> {
        let Some(answers) = self.batch_call(op, reqs).await else {
            let mut out = Vec::with_capacity(reqs.len());
            for req in reqs {
                out.push(
                    self.call(match op {
                        Operation::CreateMachine => Request::CreateMachine(req),
                        Operation::DeleteMachine => Request::DeleteMachine(req),
                        _ => Request::GetMachineStatus(req),
                    })
                    .await,
                );
            }
            return out;
        };
        let cap = self.sandbox.config.max_result_bytes;
        answers
            .into_iter()
            .map(|a| engine::cap_result(a?.into_response(), cap))
            .collect()
    }

    /// One call of the batch export for `op` (GetMachineStatus, CreateMachine or
    /// DeleteMachine), one entry per request; `None` when the provider does not export it or
    /// the requests do not share one credential (then they are served one by one). Each
    /// request keeps its own secret (a creation's `userData` is the machine's own); the call
    /// is signed and metered with the first's credential, which all share.
    async fn batch_call(
        &self,
        op: Operation,
        reqs: &[MachineRequest],
    ) -> Option<Vec<Result<BatchAnswer, DriverError>>> {
        let first = reqs.first()?;
        if !reqs
            .iter()
            .all(|r| same_credentials(&r.secret, &first.secret))
        {
            return None;
        }
        let (batch, batch_create) = match op {
            Operation::CreateMachine => (None, Some(self.batch_create.as_ref()?)),
            _ => (Some(self.batch.as_ref()?), None),
        };
        let brokered = self.broker(&first.secret).1;
        let wreqs: Vec<_> = reqs
            .iter()
            .map(|r| engine::machine_request(r, &self.broker(&r.secret).0))
            .collect();
        let answers = self
            .sandboxed(
                op,
                &batch_label(reqs),
                &first.secret,
                brokered,
                async move |mut store, instance| {
                    let answers: Vec<_> = match (op, batch, batch_create) {
                        (Operation::CreateMachine, _, Some(indices)) => {
                            let guest = indices.load(&mut store, &instance)?;
                            let a = guest.call_create_machines(&mut store, &wreqs).await?;
                            a.into_iter().map(|r| r.map(BatchAnswer::Create)).collect()
                        }
                        (Operation::DeleteMachine, Some(indices), _) => {
                            let guest = indices.load(&mut store, &instance)?;
                            let a = guest.call_delete_machines(&mut store, &wreqs).await?;
                            a.into_iter().map(|r| r.map(BatchAnswer::Delete)).collect()
                        }
                        (_, Some(indices), _) => {
                            let guest = indices.load(&mut store, &instance)?;
                            let a = guest.call_get_machine_statuses(&mut store, &wreqs).await?;
                            a.into_iter().map(|r| r.map(BatchAnswer::Status)).collect()
                        }
                        _ => unreachable!("an export was chosen for the operation"),
                    };
                    Ok(Ok(answers))
                },
            )
            .await;
        Some(self.fan_out(op, reqs, answers))
    }

    /// A batch answer, one entry per request: a failed call (trap, deadline, rate limit) or
    /// an answer of the wrong length fails every entry alike. Each batch logs one line (how
    /// many machines, how many failed), and a machine's failure is logged as a single call's
    /// would be (its own `driver_call` span, `batch=true`).
    fn fan_out<W>(
        &self,
        op: Operation,
        reqs: &[MachineRequest],
        answers: Result<Vec<Result<W, bindings::types::DriverError>>, DriverError>,
    ) -> Vec<Result<W, DriverError>> {
        let expected = reqs.len();
        let answers = answers.and_then(|a| {
            if a.len() == expected {
                Ok(a)
            } else {
                Err(DriverError::new(
                    Code::Internal,
                    format!(
                        "provider {} answered a batch of {expected} with {} entries",
                        self.name(),
                        a.len()
                    ),
                ))
            }
        });
        let out: Vec<Result<W, DriverError>> = match answers {
            Ok(a) => a
                .into_iter()
                .map(|entry| entry.map_err(engine::from_wit_error))
                .collect(),
            Err(e) => (0..expected).map(|_| Err(e.clone())).collect(),
        };
        let failed = out.iter().filter(|a| a.is_err()).count();
        let span = tracing::info_span!(
            "driver_call",
            provider = self.name(),
            version = self.version(),
            operation = op.wit_name(),
            machine = batch_label(reqs).as_str(),
            batch = true,
        );
        tracing::info!(parent: &span, machines = expected, failed, "batch call answered");
        for (req, answer) in reqs.iter().zip(&out) {
            if let Err(e) = answer {
                let span = tracing::info_span!(
                    "driver_call",
                    provider = self.name(),
                    version = self.version(),
                    operation = op.wit_name(),
                    machine = req.machine.name.as_str(),
                    batch = true,
                );
                tracing::info!(parent: &span, code = %e.code, "driver call failed: {}", e.message);
            }
        }
        out
    }
}

/// The `machine` field of a batch call's span: its machines, shortened past a few.
fn batch_label(reqs: &[MachineRequest]) -> String {
    let names: Vec<&str> = reqs
        .iter()
        .take(3)
        .map(|r| r.machine.name.as_str())
        .collect();
    if reqs.len() > names.len() {
        format!("{} and {} more", names.join(","), reqs.len() - names.len())
    } else {
        names.join(",")
    }
}

fn permits(settings: &ProviderSettings) -> Option<Arc<tokio::sync::Semaphore>> {
    settings
        .max_concurrent_calls
        .map(|n| Arc::new(tokio::sync::Semaphore::new(n.max(1) as usize)))
}

fn exported_operations(
    engine: &wasmtime::Engine,
    component: &wasmtime::component::Component,
) -> Vec<String> {
    use wasmtime::component::types::ComponentItem;
    let ty = component.component_type();
    ty.exports(engine)
        .filter(|(name, _)| name.starts_with(artifact::DRIVER_INTERFACE))
        .flat_map(|(_, item)| match item.ty {
            // The interface's functions only (its types are exported too).
            ComponentItem::ComponentInstance(instance) => instance
                .exports(engine)
                .filter(|(_, item)| matches!(item.ty, ComponentItem::ComponentFunc(_)))
                .map(|(name, _)| name.to_string())
                .collect::<Vec<_>>(),
            _ => Vec::new(),
        })
        .collect()
}
