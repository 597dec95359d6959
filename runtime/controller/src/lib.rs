//! The MCM-compatible machine controller: the "machine controller" half of Gardener's split,
//! on kube-runtime. It serves the Machines whose MachineClass names a provider loaded in the
//! [`Registry`], drives the driver calls through it, and keeps phases, `lastOperation`,
//! finalizers and the node link exactly as Gardener's machine-controller-manager expects, so
//! that MCM's MachineSet / MachineDeployment controllers run on top of it unchanged.
//!
//! One module per concern: [`cache`] (class and secret stores), [`machine`] (per-machine
//! context, driver requests, events), [`class_checks`] (validate-machine-class before create,
//! metrics-labels),
//! [`create`] (creation flow and health), [`delete`] (deletion state machine), [`drain`],
//! [`secrets`] (merge + userData), [`status`] (status writes), [`retry`] (MCM's periods),
//! [`orphans`] (orphan-VM collection), [`finalizers`] (class and secret finalizers),
//! [`leader`] (Lease election), [`pools`] (create / delete / health workers), [`metrics`] (`/metrics`, `/healthz`, `/readyz`). Providers
//! are reached only through `mcm_driver`'s `ProviderLookup` and `MachineDriver` (no wasm
//! here); the `mcm-wasm` binary wires in the sandbox.
//!
//! The live-machine path is sub-reconcilers in order, each a pure decision over what was
//! observed, unit-tested without an API server or a sandbox: health (`create::decide_health`:
//! Pending / Running / Unknown / Failed from the Node), then launch (`create::decide_launch`:
//! how status → create → initialize ended, to a `Decision` of transition, event and requeue),
//! with registration between them (`create::machine_registration_patch`: providerID, node
//! label, priority; `create::node_registration_patch`: the Node's machine label and finalizer),
//! carried out by one status writer (`create::apply`); deletion is the step machine
//! `delete::next_step`. Ordinary requeues are `Ok(Action)`; [`Error`] is only for failures.
//! Whole reconciles are tested against an in-memory API server with a fake driver
//! (`fixtures`, `reconcile_tests`).
//!
//! Deliberate differences from Gardener's MC (v0.62.1):
//! - a deletion step that succeeds goes straight on to the next step in the same reconcile
//!   (MCM requeues after 5 s in between; `--deletion-step-pause 5s` restores that pace);
//!   every step still writes MCM's description first;
//! - after InitializeMachine succeeds the machine goes to Pending in the same pass;
//! - `Uninitialized` from GetMachineStatus carries no ids in our contract: CreateMachine
//!   (idempotent per machine) is called to learn them, then InitializeMachine;
//! - Kubernetes Events are recorded for every driver outcome (MCM records none);
//! - a machine without a providerID whose provider creates in batches (contract 0.1.3's
//!   `batch-create`) is not asked GetMachineStatus first: CreateMachine is "find or create"
//!   per machine, and its batch looks the machines' VMs up once; InitializeMachine follows
//!   every such create (also for a VM that was found, which MCM would not initialize again:
//!   initialization is idempotent), and MCM's "VM using old node obj" check spares a Node that
//!   carries the VM's own providerID (the VM's Node, registered before the Machine learnt its
//!   providerID: the VM is adopted, as MCM adopts a VM its status call finds);
//! - GetMachineStatus, CreateMachine and DeleteMachine of machines of one provider, class and
//!   credentials are coalesced into batch calls ([`batcher`]).
//!
//! Not yet: the Unknown→Failed rate limit per
//! MachineDeployment; the "similar status" write skip; nodeTemplate / virtual capacity sync;
//! preservation and in-place updates; the API-server safety freeze; drain's PV detach /
//! reattach waits; orphan Node annotation.

pub mod batcher;
pub mod cache;
pub mod class_checks;
pub mod create;
pub mod delete;
pub mod drain;
pub mod finalizers;
pub mod leader;
pub mod machine;
pub mod metrics;
pub mod orphans;
pub mod pools;
pub mod retry;
pub mod secrets;
pub mod status;

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod reconcile_tests;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, reflector, watcher};
use kube::{Client, ResourceExt as _};
use machine_api::{MCM_FINALIZER, Machine, MachineClass, MachineOperationType, MachineState};

use mcm_driver::ProviderLookup;
use retry::Retry;

/// The controller's settings (MCM's flags where the meaning is the same).
#[derive(Clone, Debug)]
pub struct Config {
    /// `--namespace`: Machines, MachineClasses and Secrets are served in this namespace only.
    pub namespace: String,
    /// `--machine-creation-timeout`.
    pub creation_timeout: Duration,
    /// `--machine-health-timeout`.
    pub health_timeout: Duration,
    /// `--machine-drain-timeout`.
    pub drain_timeout: Duration,
    /// `--drain-call-timeout`: the longest any one API call of a drain may take ([`drain`]).
    pub drain_call_timeout: Duration,
    /// `--machine-max-evict-retries`: evictions refused by a disruption budget (20 s apart)
    /// before the pod is deleted.
    pub max_evict_retries: u32,
    /// `--machine-safety-orphan-vms-period`.
    pub safety_orphan_vms_period: Duration,
    /// `--resource-exhausted-retry`.
    pub resource_exhausted_retry: Duration,
    /// `--node-conditions`: condition types that make a node unhealthy when not False.
    pub node_conditions: Vec<String>,
    /// `--bootstrap-token-auth-extra-groups`.
    pub bootstrap_token_auth_extra_groups: String,
    /// How often Pending and Unknown machines are re-checked (MCM: 1 min).
    pub health_check_interval: Duration,
    /// This controller holds its namespace's `machine-controller` Lease (leader election on),
    /// so no other machine controller serves the namespace: Machines of unserved classes get
    /// an event.
    pub sole_machine_controller: bool,
    /// Pause between deletion steps (`None`: the steps run on in one reconcile, our default).
    /// Gardener's machine controller requeues about 5 s after every step; this reproduces its
    /// pace where something downstream depends on it (MCM's safety controller must see the
    /// deleted machines for a tick to freeze a MachineSet — Gardener's suite, spec 7).
    pub deletion_step_pause: Option<Duration>,
    /// An unowned VM is collected only after it has been seen unowned this long ([`orphans`]).
    pub orphan_min_age: Duration,
    /// At most this many orphan VMs are deleted per collection pass.
    pub orphan_max_deletions_per_pass: usize,
    /// Decide and report orphans, delete none.
    pub orphan_dry_run: bool,
    /// Worker pools per kind of work ([`pools`]).
    pub workers: pools::PoolSizes,
    /// Batch windows of status and delete calls ([`batcher`]).
    pub batch: batcher::BatchConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            namespace: "default".into(),
            creation_timeout: Duration::from_secs(20 * 60),
            health_timeout: Duration::from_secs(10 * 60),
            drain_timeout: Duration::from_secs(2 * 3600),
            drain_call_timeout: Duration::from_secs(30),
            max_evict_retries: 360,
            safety_orphan_vms_period: Duration::from_secs(15 * 60),
            resource_exhausted_retry: Retry::Long.period(),
            node_conditions: [
                "KernelDeadlock",
                "ReadonlyFilesystem",
                "DiskPressure",
                "NetworkUnavailable",
            ]
            .map(String::from)
            .to_vec(),
            bootstrap_token_auth_extra_groups: String::new(),
            health_check_interval: Duration::from_secs(60),
            sole_machine_controller: false,
            deletion_step_pause: None,
            orphan_min_age: Duration::from_secs(20 * 60),
            orphan_max_deletions_per_pass: 20,
            orphan_dry_run: false,
            workers: pools::PoolSizes::all(50),
            batch: Default::default(),
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    /// The cluster that holds Machines, MachineClasses and their Secrets.
    pub control: Client,
    /// The cluster whose Nodes the machines become; `None` = `--target-kubeconfig none`.
    /// Both clients must be built from a config passed through [`without_client_retry`].
    pub target: Option<Client>,
    pub registry: Arc<dyn ProviderLookup>,
    pub recorder: Recorder,
    pub config: Config,
    pub metrics: metrics::Metrics,
    /// Coalesces the status and delete calls of concurrent reconciles ([`batcher`]).
    pub batcher: batcher::Batcher,
    /// MachineClasses and Secrets of `--namespace`, watched.
    pub cache: cache::Cache,
    /// validate-machine-class verdicts per class.
    pub class_checks: class_checks::ClassChecks,
    /// The create, delete and health worker pools.
    pub pools: pools::Pools,
    /// The Machine reflector's store of the [`run`] going on (each run has its own): a
    /// reconcile that waited for a worker reads its Machine afresh from it.
    machine_store: std::sync::RwLock<Option<Store<Machine>>>,
    /// (class, provider) pairs already reported as not served.
    unserved_classes: std::sync::Mutex<std::collections::HashSet<(String, String)>>,
    /// Machines already given a ProviderNotServed event.
    unserved_machines: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Context {
    pub fn new(
        control: Client,
        target: Option<Client>,
        registry: Arc<dyn ProviderLookup>,
        config: Config,
    ) -> Arc<Context> {
        let recorder = Recorder::new(
            control.clone(),
            Reporter {
                controller: "mcm-wasm".into(),
                instance: None,
            },
        );
        let metrics = metrics::Metrics::default();
        metrics.set_providers(registry.clone());
        let batcher = batcher::Batcher::new(
            config.batch,
            metrics.batches.clone(),
            metrics.batched_machines.clone(),
        );
        Arc::new(Context {
            control,
            target,
            registry,
            recorder,
            metrics,
            batcher,
            cache: cache::Cache::new(&config.namespace),
            class_checks: Default::default(),
            pools: pools::Pools::new(config.workers),
            machine_store: Default::default(),
            unserved_classes: Default::default(),
            unserved_machines: Default::default(),
            config,
        })
    }

    pub fn machines(&self) -> Api<Machine> {
        Api::namespaced(self.control.clone(), &self.config.namespace)
    }

    pub fn classes(&self) -> Api<MachineClass> {
        Api::namespaced(self.control.clone(), &self.config.namespace)
    }

    /// The target cluster as drains use it: every call bounded.
    pub fn drain_target(&self) -> Option<drain::Target> {
        self.target.as_ref().map(|client| drain::Target {
            client: client.clone(),
            call_timeout: self.config.drain_call_timeout,
        })
    }

    pub fn nodes(&self) -> Option<Api<Node>> {
        self.target.as_ref().map(|c| Api::all(c.clone()))
    }

    /// The newest copy of `machine` the reflector holds (`machine` itself outside [`run`], or
    /// once the store has forgotten it).
    fn latest(&self, machine: Arc<Machine>) -> Arc<Machine> {
        let store = self.machine_store.read().expect("store lock").clone();
        store
            .and_then(|store| store.get(&ObjectRef::from_obj(machine.as_ref())))
            .unwrap_or(machine)
    }

    /// Wait for a worker of the pool `machine`'s work belongs to ([`pools`]), then return the
    /// Machine as it is now: while it waited it may have changed, even to another kind of work,
    /// in which case it waits for a worker of that pool instead.
    async fn worker_for(
        &self,
        mut machine: Arc<Machine>,
    ) -> (Arc<Machine>, pools::Work, tokio::sync::SemaphorePermit<'_>) {
        loop {
            let work = pools::work_of(&machine);
            let permit = self.pools.acquire(work).await;
            let latest = self.latest(machine);
            if pools::work_of(&latest) == work {
                return (latest, work, permit);
            }
            machine = latest;
        }
    }
}

/// Why a reconcile failed. An ordinary requeue (a step not done yet, a driver error with its
/// retry period) is not one of these: it is `Ok(Action)` (see [`retry::requeue`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("the OS random source failed (no bootstrap token made): {0}")]
    Random(getrandom::Error),
}

impl Error {
    /// Is this the API server saying the Machine `name` itself is gone (deleted while the
    /// reconcile ran, e.g. its finalizer removed by the pass before)? Then there is nothing
    /// left to reconcile, and nothing failed.
    pub fn machine_gone(&self, name: &str) -> bool {
        matches!(self, Error::Kube(kube::Error::Api(s))
            if s.code == 404
                && s.details
                    .as_ref()
                    .is_some_and(|d| d.kind == "machines" && d.name == name))
    }

    /// The label of this error in metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Random(_) => "random",
        }
    }
}

/// `config` without kube's default retry layer, as every client of the controller must be
/// built: kube 5 retries 429, 503 and 504 answers itself, up to 15 times with a backoff growing
/// to minutes, inside the one request. For the controller a 429 is often an answer — the API
/// server refusing an eviction because of a PodDisruptionBudget — and a drain must see it to
/// retry on MCM's schedule (20 s) or fail a misconfigured budget at once; with the layer on,
/// the eviction call did not return for minutes (the "eviction that never returned"). Other
/// failed calls are retried by the reconcile's requeue, as client-go's callers in MCM do.
pub fn without_client_retry(mut config: kube::Config) -> kube::Config {
    config.default_retry = false;
    config
}

/// Install the ring TLS provider once (reqwest and kube both link rustls; with two providers
/// compiled in, rustls wants one chosen).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// One reconcile of one Machine. A Machine deleted while it ran ends it quietly.
pub async fn reconcile(machine: Arc<Machine>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = machine.name_any();
    match reconcile_machine(machine, ctx).await {
        Err(e) if e.machine_gone(&name) => {
            tracing::debug!(machine = %name, "the machine is gone: {e}");
            Ok(Action::await_change())
        }
        done => done,
    }
}

async fn reconcile_machine(machine: Arc<Machine>, ctx: Arc<Context>) -> Result<Action, Error> {
    // A worker of this kind of work's pool for the whole reconcile.
    tracing::trace!(machine = %machine.name_any(), "reconcile: waiting for a worker");
    let (machine, work, _worker) = ctx.worker_for(machine).await;
    tracing::trace!(machine = %machine.name_any(), pool = work.label(), "reconcile: worker acquired");
    let _busy = ctx.metrics.worker_busy(work.label());
    let name = machine.name_any();
    // Only the machines of our providers: find the class and its provider first, before the
    // finalizer says "this machine is ours".
    let class_name = machine.spec.class.name.clone();
    if class_name.is_empty() || machine.spec.class.kind.is_empty() {
        tracing::warn!(machine = %name, "spec.class.kind and spec.class.name must be set");
        return Ok(Action::requeue(Retry::Long.period()));
    }
    let Some(class) = ctx.cache.class(&ctx.control, &class_name).await? else {
        tracing::info!(machine = %name, class = %class_name, "MachineClass not found");
        return Ok(Action::requeue(Retry::Long.period()));
    };
    let Some(provider) = ctx.registry.get(&class.spec.provider) else {
        match ctx.registry.not_ready(&class.spec.provider) {
            Some(why) => provider_not_ready(&ctx, &machine, &class, &why).await?,
            None => unserved(&ctx, &machine, &class).await,
        }
        return Ok(Action::requeue(Retry::Long.period()));
    };
    machine::ensure_class_finalizers(&ctx, &class).await?;
    let api = ctx.machines();
    let deleting = machine.metadata.deletion_timestamp.is_some();
    let has_finalizer = machine.finalizers().iter().any(|f| f == MCM_FINALIZER);
    if !deleting && !has_finalizer {
        // The finalizer says "this machine is ours" before any driver call. Adding it changes
        // no generation, so no watch event brings the machine back: requeue at once, as MCM
        // retries after adding it.
        add_finalizer(&api, machine.as_ref(), MCM_FINALIZER).await?;
        return Ok(Action::requeue(Retry::Conflict.period()));
    }
    if deleting && !has_finalizer {
        return Ok(Action::await_change()); // not ours any more
    }
    let job = machine::Job {
        ctx: ctx.clone(),
        api: api.clone(),
        class: Arc::new(class),
        provider,
        name,
        warnings: Default::default(),
    };
    if !deleting {
        return create::reconcile(&job, machine).await;
    }
    match delete::reconcile(&job, machine.clone()).await? {
        delete::Pass::Requeue(action) => Ok(action),
        delete::Pass::Done => {
            remove_finalizer(&api, machine.as_ref(), MCM_FINALIZER).await?;
            Ok(Action::await_change())
        }
    }
}

/// The requeue after a failed reconcile.
pub fn error_policy(_machine: Arc<Machine>, error: &Error, _ctx: Arc<Context>) -> Action {
    match error {
        Error::Kube(kube::Error::Api(s)) if s.code == 409 => {
            Action::requeue(Retry::Conflict.period())
        }
        _ => Action::requeue(Retry::Short.period()),
    }
}

/// The annotation that preserves a machine (MCM re-reconciles when it changes).
pub const PRESERVE_ANNOTATION: &str = "node.machine.sapcloud.io/preserve";

/// What makes a Machine update worth a reconcile (MCM `updateMachine`): its generation, its
/// deletion mark, its preserve annotation.
pub fn machine_trigger(m: &Machine) -> Option<u64> {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    m.metadata.generation.hash(&mut h);
    m.metadata.deletion_timestamp.is_some().hash(&mut h);
    m.annotations().get(PRESERVE_ANNOTATION).hash(&mut h);
    Some(h.finish())
}

/// Machines to reconcile when a Node changes: those whose `node` label names it.
fn machines_of_node(store: &Store<Machine>, node: &Node) -> Vec<ObjectRef<Machine>> {
    let node_name = node.name_any();
    store
        .state()
        .iter()
        .filter(|m| m.node_name() == Some(node_name.as_str()))
        .map(|m| ObjectRef::from_obj(m.as_ref()))
        .collect()
}

/// Run the machine controller until `shutdown` resolves (then reconciles in flight finish).
pub async fn run(ctx: Arc<Context>, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let cache = ctx.cache.run(&ctx.control).await;
    // Like MCM, only changes of the spec (generation; the deletion mark bumps it too) or of
    // the preserve annotation trigger a reconcile: status writes, ours included, do not.
    let (store, writer) = reflector::store();
    let machines = watcher(ctx.machines(), watcher::Config::default())
        .default_backoff()
        .inspect({
            // Ready once the first full list of Machines is in the cache.
            let ctx = ctx.clone();
            move |event| {
                if let Ok(watcher::Event::InitDone) = event {
                    ctx.metrics.set_ready();
                }
            }
        })
        .reflect(writer)
        .applied_objects()
        .predicate_filter(machine_trigger, Default::default());
    // Unbounded: the worker pools bound the work. A Controller limit would let reconciles
    // waiting for a full pool (drains behind a budget) hold every Controller slot, and a create
    // would wait behind them after all.
    let controller = Controller::for_stream(machines, store.clone())
        .with_config(ControllerConfig::default().concurrency(0));
    *ctx.machine_store.write().expect("store lock") = Some(store.clone());
    let controller = match ctx.nodes() {
        Some(nodes) => {
            let store = store.clone();
            controller.watches(nodes, watcher::Config::default(), move |node| {
                machines_of_node(&store, &node)
            })
        }
        None => controller,
    };
    // A provider that loads or is replaced may serve machines that waited for it.
    let loaded = futures::stream::unfold(ctx.registry.subscribe_loaded(), |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(_) => return Some(((), rx)),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    ctx.metrics.set_machines(store.clone());
    let node_deletions = ctx.nodes().map(|nodes| {
        tokio::spawn(delete_machines_of_deleted_nodes(
            ctx.clone(),
            nodes,
            store.clone(),
        ))
    });
    let metrics_ctx = ctx.clone();
    controller
        .reconcile_all_on(loaded)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| {
            let ctx = metrics_ctx.clone();
            async move {
                match result {
                    Ok(_) => {}
                    Err(kube::runtime::controller::Error::ReconcilerFailed(e, obj)) => {
                        ctx.metrics.reconcile_error(e.metric_label());
                        tracing::warn!(machine = %obj.name, "reconcile failed: {e}");
                    }
                    Err(e) => tracing::warn!("controller: {e}"),
                }
            }
        })
        .await;
    for task in node_deletions.into_iter().chain(cache) {
        task.abort();
    }
}

/// MCM's node controller: a Node that is deleted (or marked for deletion) takes its Machine
/// with it (`triggerMachineDeletion`). Nodes annotated not-managed-by-mcm are ignored.
async fn delete_machines_of_deleted_nodes(
    ctx: Arc<Context>,
    nodes: Api<Node>,
    store: Store<Machine>,
) {
    let events = watcher(nodes, watcher::Config::default()).default_backoff();
    futures::pin_mut!(events);
    while let Some(event) = events.next().await {
        let node = match event {
            Ok(watcher::Event::Delete(n)) => n,
            Ok(watcher::Event::Apply(n)) | Ok(watcher::Event::InitApply(n))
                if n.metadata.deletion_timestamp.is_some() =>
            {
                n
            }
            _ => continue,
        };
        if node
            .annotations()
            .contains_key("node.machine.sapcloud.io/not-managed-by-mcm")
        {
            continue;
        }
        for machine in machines_of_node(&store, &node) {
            let Some(m) = store.get(&machine) else {
                continue;
            };
            if m.metadata.deletion_timestamp.is_some() {
                continue;
            }
            tracing::info!(machine = %machine.name, node = %node.name_any(), "node deleted: deleting its machine");
            if let Err(e) = ctx
                .machines()
                .delete(&machine.name, &Default::default())
                .await
            {
                tracing::warn!(machine = %machine.name, "deleting the machine of a deleted node: {e}");
            }
        }
    }
}

/// A Machine whose class names a provider nothing here serves: never silently skipped. The
/// class is logged once (at info, naming the loaded providers and their aliases). When this
/// controller is the only machine controller of its namespace, the Machine also gets a Warning
/// event once. How that is decided: every MCM machine controller, provider-aws's included,
/// runs only while holding the Lease `machine-controller` in its namespace, so with leader
/// election on (`--leader-elect`, the default) a reconciling controller holds that Lease and no
/// other machine controller is active there; with it off, nothing can be known and only the
/// log line is written (another controller may be serving that class).
async fn unserved(ctx: &Context, machine: &Machine, class: &MachineClass) {
    let provider = &class.spec.provider;
    let first_for_class = ctx
        .unserved_classes
        .lock()
        .expect("unserved lock")
        .insert((class.name_any(), provider.clone()));
    let loaded = ctx.registry.served_names();
    let why = format!(
        "MachineClass {:?} names provider {provider:?}, which no loaded provider serves (loaded: {})",
        class.name_any(),
        if loaded.is_empty() {
            "none".to_string()
        } else {
            loaded.join(", ")
        }
    );
    if first_for_class {
        tracing::info!(class = %class.name_any(), %provider, "{why}; its machines are left to another controller");
    }
    if !ctx.config.sole_machine_controller {
        return;
    }
    let first_for_machine = ctx
        .unserved_machines
        .lock()
        .expect("unserved lock")
        .insert(machine.uid().unwrap_or_else(|| machine.name_any()));
    if first_for_machine {
        machine::publish_event(
            ctx,
            machine,
            kube::runtime::events::EventType::Warning,
            "ProviderNotServed",
            "Reconcile",
            format!("{why}: this machine is not being served"),
        )
        .await;
    }
}

/// A `Provider` resource claims the class's provider but has no version loaded (fetching, or
/// every version so far rejected): the Machine is ours, so it says why in lastOperation
/// (Processing, code Unavailable: the phase is left alone, so a MachineSet does not replace
/// the machine) and gets a Warning event `ProviderNotReady` whenever the reason changes. It is
/// served as soon as a version loads (the registry's loaded notice requeues it).
async fn provider_not_ready(
    ctx: &Context,
    machine: &Machine,
    class: &MachineClass,
    why: &str,
) -> Result<(), Error> {
    let description = format!(
        "MachineClass {:?} names provider {:?}: {why}; the machine waits for it",
        class.name_any(),
        class.spec.provider
    );
    let mut st = machine.status.clone().unwrap_or_default();
    if st.last_operation.description == description {
        return Ok(());
    }
    let operation = if machine.metadata.deletion_timestamp.is_some() {
        MachineOperationType::Delete
    } else if machine.spec.provider_id.is_empty() {
        MachineOperationType::Create
    } else {
        MachineOperationType::HealthCheck
    };
    st.last_operation = status::last_op(
        description.clone(),
        MachineState::Processing,
        operation,
        "Unavailable",
    );
    tracing::warn!(machine = %machine.name_any(), "{description}");
    status::write(&ctx.machines(), &machine.name_any(), &st).await?;
    machine::publish_event(
        ctx,
        machine,
        kube::runtime::events::EventType::Warning,
        "ProviderNotReady",
        "Reconcile",
        description,
    )
    .await;
    Ok(())
}

/// Add a finalizer only when it is missing, with a merge patch guarded by the resourceVersion.
/// A conflict (many reconciles of one class's machines racing to add it, each from its own
/// copy) is resolved quietly: read the object again and stop if another one added it, else
/// try once more. Returns whether this call added it.
pub(crate) async fn add_finalizer<K>(
    api: &Api<K>,
    obj: &K,
    finalizer: &str,
) -> Result<bool, kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut fresh: Option<K> = None;
    for _ in 0..5 {
        let current = fresh.as_ref().unwrap_or(obj);
        if current.finalizers().iter().any(|f| f == finalizer) {
            return Ok(false);
        }
        let mut finalizers = current.finalizers().to_vec();
        finalizers.push(finalizer.to_string());
        let patch = serde_json::json!({
            "metadata": { "finalizers": finalizers, "resourceVersion": current.resource_version() }
        });
        match api
            .patch(
                &obj.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => return Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                tracing::debug!(object = %obj.name_any(), finalizer, "finalizer patch conflicted; re-reading");
                match api.get_opt(&obj.name_any()).await? {
                    Some(latest) => fresh = Some(latest),
                    None => return Ok(false), // gone meanwhile
                }
            }
            Err(e) => return Err(e),
        }
    }
    // Five conflicts in a row: leave it to the next reconcile (quietly; it requeues).
    Ok(false)
}

/// Remove a finalizer: a JSON patch that tests the finalizer is still at its index and removes
/// it, so status writes in between (which change the resourceVersion) do not make it conflict.
/// Returns whether this call removed it.
pub(crate) async fn remove_finalizer<K>(
    api: &Api<K>,
    obj: &K,
    finalizer: &str,
) -> Result<bool, kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let Some(index) = obj.finalizers().iter().position(|f| f == finalizer) else {
        return Ok(false);
    };
    let path = format!("/metadata/finalizers/{index}");
    let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
        { "op": "test", "path": path, "value": finalizer },
        { "op": "remove", "path": path },
    ]))
    .expect("a well-formed JSON patch");
    match api
        .patch(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::<()>::Json(patch),
        )
        .await
    {
        Ok(_) => Ok(true),
        // Gone meanwhile, or the finalizer list changed (the test failed): the next event
        // brings the object back with its current finalizers.
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 422 => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod error_tests {
    use super::Error;

    /// The API server's answer to a write of a Machine that no longer exists.
    fn not_found(kind: &str, name: &str) -> Error {
        let status: kube::core::Status = serde_json::from_value(serde_json::json!({
            "status": "Failure",
            "code": 404,
            "reason": "NotFound",
            "message": format!("{kind}.machine.sapcloud.io \"{name}\" not found"),
            "details": { "name": name, "group": "machine.sapcloud.io", "kind": kind },
        }))
        .unwrap();
        Error::Kube(kube::Error::Api(Box::new(status)))
    }

    #[test]
    fn only_the_machine_itself_gone_is_gone() {
        assert!(not_found("machines", "m1").machine_gone("m1"));
        // Another machine, or another kind of object (a Node, a Secret) missing, is a failure.
        assert!(!not_found("machines", "m2").machine_gone("m1"));
        assert!(!not_found("nodes", "m1").machine_gone("m1"));
        let conflict: kube::core::Status = serde_json::from_value(serde_json::json!({
            "status": "Failure", "code": 409, "reason": "Conflict",
            "details": { "name": "m1", "kind": "machines" },
        }))
        .unwrap();
        assert!(!Error::Kube(kube::Error::Api(Box::new(conflict))).machine_gone("m1"));
    }
}
