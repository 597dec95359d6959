//! `mcm-wasm controller`: flags (MCM's names where the meaning is the same) and startup.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use mcm_controller::{Config, Context};
use mcm_sandbox::{EgressPolicy, ProviderSettings, RateLimits, Registry, Sandbox, SandboxConfig};

/// The machine controller's command line.
#[derive(clap::Args, Debug)]
pub struct ControllerArgs {
    /// A directory of provider components (.wasm), watched and hot-swapped (development;
    /// in a cluster, Provider resources deliver providers).
    #[arg(long, value_name = "DIR")]
    pub providers_dir: Option<PathBuf>,
    /// Serve Provider resources (mcm-wasm.io/v1alpha1) of --namespace: fetch, verify, load
    /// and hot-swap them, with status and events.
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub provider_resources: bool,
    /// Kubeconfig of the cluster holding Machines (empty: $KUBECONFIG or in-cluster;
    /// `inClusterConfig`: in-cluster).
    #[arg(long, default_value = "")]
    pub control_kubeconfig: String,
    /// Kubeconfig of the cluster the Nodes join (empty: the control cluster; `none`: no target
    /// cluster, machines go to Available without node, drain or node deletion).
    #[arg(long, default_value = "")]
    pub target_kubeconfig: String,
    /// Namespace of the Machines, MachineClasses and Secrets served.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// Creation timeout: a machine whose node has not joined by then fails.
    #[arg(long, default_value = "20m", value_parser = machine_api::parse_duration)]
    pub machine_creation_timeout: Duration,
    /// Health timeout: an Unknown machine fails after this long.
    #[arg(long, default_value = "10m", value_parser = machine_api::parse_duration)]
    pub machine_health_timeout: Duration,
    /// Drain timeout: after this long a deletion is forced.
    #[arg(long, default_value = "2h", value_parser = machine_api::parse_duration)]
    pub machine_drain_timeout: Duration,
    /// The longest any one API call of a drain (cordon, list, evict, delete, poll) may take
    /// before that step fails and the deletion retries.
    #[arg(long, default_value = "30s", value_parser = machine_api::parse_duration)]
    pub drain_call_timeout: Duration,
    /// Evictions refused by a PodDisruptionBudget (retried every 20 s) before the pod is deleted.
    #[arg(long, default_value_t = 360)]
    pub machine_max_evict_retries: u32,
    /// Run only while holding the Lease `machine-controller` in --namespace.
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// How long a Lease holds without renewal.
    #[arg(long, default_value = "15s", value_parser = machine_api::parse_duration)]
    pub leader_elect_lease_duration: Duration,
    /// The leader gives up when it could not renew for this long.
    #[arg(long, default_value = "10s", value_parser = machine_api::parse_duration)]
    pub leader_elect_renew_deadline: Duration,
    /// How often the Lease is tried and renewed.
    #[arg(long, default_value = "2s", value_parser = machine_api::parse_duration)]
    pub leader_elect_retry_period: Duration,
    /// Address of the /metrics, /healthz and /readyz endpoints.
    #[arg(long, default_value = "0.0.0.0")]
    pub address: String,
    /// Port of the /metrics, /healthz and /readyz endpoints (0: not served).
    #[arg(long, default_value_t = 10259)]
    pub port: u16,
    /// How often VMs that no Machine owns are looked for (ListMachines per class) and deleted.
    #[arg(long, default_value = "15m", value_parser = machine_api::parse_duration)]
    pub machine_safety_orphan_vms_period: Duration,
    /// An unowned VM is deleted only after it has been seen unowned this long (default: the
    /// creation timeout; ListMachines gives no launch time, so the clock starts when this
    /// controller first sees it).
    #[arg(long, value_parser = machine_api::parse_duration)]
    pub orphan_min_age: Option<Duration>,
    /// At most this many orphan VMs are deleted per collection pass (the rest wait for the
    /// next; a Warning event and mcm_wasm_orphan_passes_capped_total say so).
    #[arg(long, default_value_t = 20)]
    pub orphan_max_deletions_per_pass: usize,
    /// Find and report orphan VMs (events, log, metrics), but delete none.
    #[arg(long)]
    pub orphan_dry_run: bool,
    /// Requeue period after a ResourceExhausted create error (0 means 10m).
    #[arg(long, default_value = "10m", value_parser = machine_api::parse_duration)]
    pub resource_exhausted_retry: Duration,
    /// Machines reconciled concurrently per kind of work (the default size of each of the
    /// create, delete and health pools; MCM's one pool).
    #[arg(long, default_value_t = 50)]
    pub concurrent_syncs: u16,
    /// Workers for machines being created (default: --concurrent-syncs, and at least twice
    /// --batch-max-creates). Creation, deletion
    /// (drains included) and health each have their own pool, so none can starve the others.
    #[arg(long)]
    pub create_workers: Option<u16>,
    /// Workers for machines being deleted, drains included (default: --concurrent-syncs).
    #[arg(long)]
    pub delete_workers: Option<u16>,
    /// Workers for the health and status of machines with a VM (default: --concurrent-syncs).
    #[arg(long)]
    pub health_workers: Option<u16>,
    /// Batch windows of GetMachineStatus, CreateMachine and DeleteMachine calls (providers
    /// with contract 0.1.2's batch or 0.1.3's batch-create interface): a window closes after
    /// this long without a new call (a CreateMachine window only when full or at
    /// --batch-max-wait)...
    #[arg(long, value_parser = machine_api::parse_duration, default_value = "100ms")]
    pub batch_idle: Duration,
    /// ... or this long after it opened ...
    #[arg(long, value_parser = machine_api::parse_duration, default_value = "1s")]
    pub batch_max_wait: Duration,
    /// ... or at this many machines (1: no batching).
    #[arg(long, default_value_t = 500)]
    pub batch_max_size: usize,
    /// At most this many machines in one CreateMachine batch (the provider's creations of a
    /// batch must fit in one call's deadline, rate limits included: EC2's RunInstances bucket
    /// refills at 2/s, 25 s for 50).
    #[arg(long, default_value_t = 50)]
    pub batch_max_creates: usize,
    /// Pause between deletion steps, e.g. 5s as Gardener's machine controller requeues
    /// (default: none, every step runs on in one reconcile).
    #[arg(long, value_parser = machine_api::parse_duration)]
    pub deletion_step_pause: Option<Duration>,
    /// Node condition types that make a machine unhealthy unless False.
    #[arg(
        long,
        default_value = "KernelDeadlock,ReadonlyFilesystem,DiskPressure,NetworkUnavailable"
    )]
    pub node_conditions: String,
    /// Extra groups of the bootstrap tokens (`auth-extra-groups`).
    #[arg(long, default_value = "")]
    pub bootstrap_token_auth_extra_groups: String,
    /// A provider's own configuration, as NAME=JSON (repeatable), e.g. aws='{"endpoint":"http://127.0.0.1:5000"}'.
    #[arg(long = "provider-config", value_name = "NAME=JSON")]
    pub provider_configs: Vec<String>,
    /// Allow a provider outbound HTTP to a host, as NAME=HOST[:PORT] (repeatable; default: none).
    #[arg(long = "provider-allow-host", value_name = "NAME=HOST[:PORT]")]
    pub provider_allow_hosts: Vec<String>,
    /// A provider's client-side rate limits, as NAME=JSON (repeatable), over the defaults the
    /// provider declares, e.g. aws='{"classes":{"RunInstances":{"rate":2,"burst":5}}}'
    /// (also `default` and `throttleCodes`; as a Provider's spec.limits.rateLimits).
    #[arg(long = "provider-rate-limits", value_name = "NAME=JSON")]
    pub provider_rate_limits: Vec<String>,
    /// Broker a provider's cloud credentials (repeatable, NAME): the secret's credential keys
    /// stay on the host, which signs the provider's requests with them (contract 0.1.1).
    #[arg(long = "provider-broker-credentials", value_name = "NAME")]
    pub provider_broker_credentials: Vec<String>,
    /// Requests per second to the API servers, client-side (0: no limit), as MCM's.
    #[arg(long, default_value_t = 20.0)]
    pub kube_api_qps: f64,
    /// Requests allowed at once above --kube-api-qps.
    #[arg(long, default_value_t = 30)]
    pub kube_api_burst: u32,
    /// klog verbosity, as Gardener's machine controllers take it: 0-2 info, 3-5 debug, 6+
    /// trace for the controller's own logs (`MCM_WASM_LOG`, when set, wins).
    #[arg(long = "v", value_name = "LEVEL")]
    pub verbosity: Option<u8>,
    #[command(flatten)]
    pub compat: CompatFlags,
}

/// MCM machine-controller flags accepted so that a provider-aws deployment's command line
/// runs unchanged, but without effect here (each one given is warned about once at start).
#[derive(clap::Args, Debug, Default)]
#[command(
    next_help_heading = "Accepted for compatibility with MCM's machine-controller, no effect"
)]
pub struct CompatFlags {
    /// (no effect: the provider comes from the MachineClass)
    #[arg(long)]
    pub cloud_provider: Option<String>,
    /// (no effect: watches resync as kube-runtime does)
    #[arg(long, value_parser = machine_api::parse_duration)]
    pub min_resync_period: Option<Duration>,
    /// (no effect: no pprof endpoints)
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub profiling: Option<bool>,
    /// (no effect)
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub contention_profiling: Option<bool>,
    /// (no effect: JSON is used)
    #[arg(long)]
    pub kube_api_content_type: Option<String>,
    /// (no effect)
    #[arg(long, value_parser = machine_api::parse_duration)]
    pub controller_start_interval: Option<Duration>,
    /// (no effect: in-place updates are not built)
    #[arg(long, value_parser = machine_api::parse_duration)]
    pub machine_inplace_update_timeout: Option<Duration>,
    /// (no effect: machine preservation is not built)
    #[arg(long, value_parser = machine_api::parse_duration)]
    pub machine_preserve_timeout: Option<Duration>,
    /// (no effect: the drain does not wait for volumes to detach yet)
    #[arg(long, value_parser = machine_api::parse_duration)]
    pub machine_pv_detach_timeout: Option<Duration>,
    /// (no effect: the drain does not wait for volumes to reattach yet)
    #[arg(long, value_parser = machine_api::parse_duration)]
    pub machine_pv_reattach_timeout: Option<Duration>,
    /// (no effect: the API-server safety freeze is not built)
    #[arg(long, value_parser = machine_api::parse_duration)]
    pub machine_safety_apiserver_statuscheck_timeout: Option<Duration>,
    /// (no effect: the API-server safety freeze is not built)
    #[arg(long, value_parser = machine_api::parse_duration)]
    pub machine_safety_apiserver_statuscheck_period: Option<Duration>,
    /// (no effect: the lock is always the Lease `machine-controller`)
    #[arg(long)]
    pub leader_elect_resource_lock: Option<String>,
    /// (no effect: logs go to stderr)
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub logtostderr: Option<bool>,
    /// (no effect: logs go to stderr)
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub alsologtostderr: Option<bool>,
}

impl CompatFlags {
    /// The flags given (by name) that have no effect.
    pub fn given(&self) -> Vec<&'static str> {
        let flags: [(&'static str, bool); 15] = [
            ("--cloud-provider", self.cloud_provider.is_some()),
            ("--min-resync-period", self.min_resync_period.is_some()),
            ("--profiling", self.profiling.is_some()),
            (
                "--contention-profiling",
                self.contention_profiling.is_some(),
            ),
            (
                "--kube-api-content-type",
                self.kube_api_content_type.is_some(),
            ),
            (
                "--controller-start-interval",
                self.controller_start_interval.is_some(),
            ),
            (
                "--machine-inplace-update-timeout",
                self.machine_inplace_update_timeout.is_some(),
            ),
            (
                "--machine-preserve-timeout",
                self.machine_preserve_timeout.is_some(),
            ),
            (
                "--machine-pv-detach-timeout",
                self.machine_pv_detach_timeout.is_some(),
            ),
            (
                "--machine-pv-reattach-timeout",
                self.machine_pv_reattach_timeout.is_some(),
            ),
            (
                "--machine-safety-apiserver-statuscheck-timeout",
                self.machine_safety_apiserver_statuscheck_timeout.is_some(),
            ),
            (
                "--machine-safety-apiserver-statuscheck-period",
                self.machine_safety_apiserver_statuscheck_period.is_some(),
            ),
            (
                "--leader-elect-resource-lock",
                self.leader_elect_resource_lock.is_some(),
            ),
            ("--logtostderr", self.logtostderr.is_some()),
            ("--alsologtostderr", self.alsologtostderr.is_some()),
        ];
        flags
            .into_iter()
            .filter(|(_, given)| *given)
            .map(|(f, _)| f)
            .collect()
    }
}

impl ControllerArgs {
    /// The default log filter when `MCM_WASM_LOG` is unset: klog's `--v` mapped to levels.
    pub fn log_filter(&self) -> Option<&'static str> {
        self.verbosity.map(|v| match v {
            0..=2 => "info",
            3..=5 => "info,mcm_wasm=debug,mcm_controller=debug,mcm_sandbox=debug",
            _ => "info,mcm_wasm=trace,mcm_controller=trace,mcm_sandbox=trace",
        })
    }
}

impl ControllerArgs {
    pub fn config(&self) -> Config {
        Config {
            namespace: self.namespace.clone(),
            creation_timeout: self.machine_creation_timeout,
            health_timeout: self.machine_health_timeout,
            drain_timeout: self.machine_drain_timeout,
            drain_call_timeout: self.drain_call_timeout.max(Duration::from_millis(100)),
            max_evict_retries: self.machine_max_evict_retries,
            safety_orphan_vms_period: self.machine_safety_orphan_vms_period,
            resource_exhausted_retry: if self.resource_exhausted_retry.is_zero() {
                mcm_controller::retry::Retry::Long.period()
            } else {
                self.resource_exhausted_retry
            },
            node_conditions: self
                .node_conditions
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            bootstrap_token_auth_extra_groups: self.bootstrap_token_auth_extra_groups.clone(),
            sole_machine_controller: self.leader_elect,
            deletion_step_pause: self.deletion_step_pause.filter(|d| !d.is_zero()),
            batch: mcm_controller::batcher::BatchConfig {
                idle: self.batch_idle,
                max_wait: self.batch_max_wait,
                max_items: self.batch_max_size.max(1),
                max_creates: self.batch_max_creates.max(1),
            },
            orphan_min_age: self.orphan_min_age.unwrap_or(self.machine_creation_timeout),
            orphan_max_deletions_per_pass: self.orphan_max_deletions_per_pass,
            orphan_dry_run: self.orphan_dry_run,
            workers: {
                let size = |n: Option<u16>| n.unwrap_or(self.concurrent_syncs).max(1) as usize;
                // Creation: at least two batches' worth, so that one batch is looked up while
                // the one before it is being created.
                let create = self.create_workers.map_or_else(
                    || size(None).max(2 * self.batch_max_creates.max(1)),
                    |n| size(Some(n)),
                );
                mcm_controller::pools::PoolSizes {
                    create,
                    delete: size(self.delete_workers),
                    health: size(self.health_workers),
                }
            },
            ..Config::default()
        }
    }

    /// The operator's settings per provider name, from `--provider-config` and `--provider-allow-host`.
    pub fn provider_settings(&self) -> anyhow::Result<BTreeMap<String, ProviderSettings>> {
        let mut configs: BTreeMap<String, String> = BTreeMap::new();
        for item in &self.provider_configs {
            let (name, json) = item
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--provider-config {item:?} is not NAME=JSON"))?;
            serde_json::from_str::<serde_json::Value>(json)
                .map_err(|e| anyhow::anyhow!("--provider-config for {name}: not JSON: {e}"))?;
            configs.insert(name.to_string(), json.to_string());
        }
        let mut hosts: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for item in &self.provider_allow_hosts {
            let (name, host) = item.split_once('=').ok_or_else(|| {
                anyhow::anyhow!("--provider-allow-host {item:?} is not NAME=HOST[:PORT]")
            })?;
            hosts
                .entry(name.to_string())
                .or_default()
                .push(host.to_string());
        }
        let mut rate_limits: BTreeMap<String, RateLimits> = BTreeMap::new();
        for item in &self.provider_rate_limits {
            let (name, json) = item.split_once('=').ok_or_else(|| {
                anyhow::anyhow!("--provider-rate-limits {item:?} is not NAME=JSON")
            })?;
            let limits: RateLimits = serde_json::from_str(json)
                .map_err(|e| anyhow::anyhow!("--provider-rate-limits for {name}: {e}"))?;
            limits
                .check()
                .map_err(|e| anyhow::anyhow!("--provider-rate-limits for {name}: {e}"))?;
            rate_limits.insert(name.to_string(), limits);
        }
        let mut out = BTreeMap::new();
        for name in configs
            .keys()
            .chain(hosts.keys())
            .chain(rate_limits.keys())
            .chain(&self.provider_broker_credentials)
        {
            let egress = EgressPolicy::parse(hosts.get(name).map(Vec::as_slice).unwrap_or(&[]))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            out.insert(
                name.clone(),
                ProviderSettings {
                    egress,
                    config: configs.get(name).cloned(),
                    deadlines: None,
                    broker_credentials: self.provider_broker_credentials.contains(name),
                    rate_limits: rate_limits.get(name).cloned(),
                    ..Default::default()
                },
            );
        }
        Ok(out)
    }
}

/// MCM's client-side limit: at most `burst` requests in every `burst / qps` seconds (a window
/// of `burst` tokens refilled at once rather than client-go's continuous token bucket: the
/// same average rate and burst).
#[derive(Clone, Copy, Debug)]
pub struct ApiLimit {
    pub qps: f64,
    pub burst: u32,
}

async fn client(kubeconfig: &str, limit: ApiLimit) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        "" => kube::Config::infer()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?,
        "inClusterConfig" => kube::Config::incluster().map_err(|e| anyhow::anyhow!("{e}"))?,
        path => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| anyhow::anyhow!("{path}: {e}"))?
        }
    };
    let builder =
        kube::client::ClientBuilder::try_from(mcm_controller::without_client_retry(config))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    if limit.qps <= 0.0 {
        return Ok(builder.build());
    }
    let burst = limit.burst.max(1);
    let window = Duration::from_secs_f64(f64::from(burst) / limit.qps);
    Ok(builder
        .with_layer(&tower::limit::RateLimitLayer::new(u64::from(burst), window))
        .build())
}

/// A start-up call to the API server, tried again for up to a minute while the error is one
/// that passes (429 — e.g. "storage is (re)initializing" just after a CRD was established or
/// the API server restarted —, 5xx, no connection), each failure logged; other errors at once.
/// The controller's clients have no retry of their own ([`mcm_controller::without_client_retry`]).
async fn at_start<T, F, Fut>(what: &str, mut call: F) -> Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
{
    let started = std::time::Instant::now();
    let mut pause = Duration::from_millis(250);
    loop {
        match call().await {
            Err(e) if passes(&e) && started.elapsed() < Duration::from_secs(60) => {
                tracing::warn!("{what}: {e}; trying again in {pause:?}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            result => return result,
        }
    }
}

/// An API error that goes away by itself.
fn passes(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code == 429 || s.code >= 500,
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

/// Run the controller until Ctrl-C or SIGTERM.
pub async fn main(args: ControllerArgs) -> ExitCode {
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: ControllerArgs) -> anyhow::Result<()> {
    mcm_controller::install_crypto_provider();
    let settings = args.provider_settings()?;
    if let Some(dir) = &args.providers_dir
        && !dir.is_dir()
    {
        return Err(anyhow::anyhow!(
            "--providers-dir {} is not a directory",
            dir.display()
        ));
    }
    if args.providers_dir.is_none() && !args.provider_resources {
        return Err(anyhow::anyhow!(
            "no providers: give --providers-dir, or leave --provider-resources on"
        ));
    }
    let compat = args.compat.given();
    if !compat.is_empty() {
        tracing::warn!(
            "accepted for compatibility with MCM's machine-controller, without effect here: {}",
            compat.join(", ")
        );
    }
    let limit = ApiLimit {
        qps: args.kube_api_qps,
        burst: args.kube_api_burst,
    };
    let control = client(&args.control_kubeconfig, limit)
        .await
        .map_err(|e| anyhow::anyhow!("control cluster: {e}"))?;
    let target = match args.target_kubeconfig.as_str() {
        "none" => None,
        "" => Some(control.clone()),
        path => Some(
            client(path, limit)
                .await
                .map_err(|e| anyhow::anyhow!("target cluster: {e}"))?,
        ),
    };
    let sandbox = Sandbox::new(SandboxConfig::default()).map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let registry = Registry::new(sandbox);
    for (name, s) in settings {
        registry.set_settings(&name, s);
    }
    let _watch = match &args.providers_dir {
        Some(dir) => Some(
            registry
                .watch_dir(dir.clone(), Duration::from_secs(30))
                .await
                .map_err(|e| anyhow::anyhow!("watching {}: {e}", dir.display()))?,
        ),
        None => None,
    };
    let resources = if args.provider_resources {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(300))
            .build()
            .map_err(|e| anyhow::anyhow!("an HTTP client for https providers: {e}"))?;
        let ctx = mcm_providers::reconcile::Context::new(
            control.clone(),
            &args.namespace,
            registry.clone(),
            http,
        );
        match at_start("listing Provider resources", || {
            mcm_providers::reconcile::prime(&ctx)
        })
        .await
        {
            Ok(n) => {
                tracing::info!(namespace = %args.namespace, providers = n, "serving Provider resources");
                Some(ctx)
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {
                tracing::warn!(
                    "the Provider CRD (mcm-wasm.io) is not installed: only --providers-dir providers serve (kubectl apply -f kubernetes/crds/)"
                );
                None
            }
            Err(e) => return Err(anyhow::anyhow!("listing Provider resources: {e}")),
        }
    } else {
        None
    };
    tracing::info!(providers = ?registry.names(), namespace = %args.namespace, "machine controller starting");
    let ctx = Context::new(control, target, registry, args.config());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let http = if args.port == 0 {
        None
    } else {
        let addr = format!("{}:{}", args.address, args.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| anyhow::anyhow!("--address/--port {addr}: {e}"))?;
        Some(tokio::spawn(mcm_controller::metrics::serve(
            listener,
            ctx.clone(),
            stopped(stop_rx.clone()),
        )))
    };
    let leader = args
        .leader_elect
        .then(|| mcm_controller::leader::LeaderConfig {
            namespace: args.namespace.clone(),
            name: "machine-controller".into(),
            identity: mcm_controller::leader::default_identity(),
            lease_duration: args.leader_elect_lease_duration,
            renew_deadline: args.leader_elect_renew_deadline,
            retry_period: args.leader_elect_retry_period,
        });
    if let Some(cfg) = &leader {
        tokio::select! {
            _ = mcm_controller::leader::acquire(&ctx.control, cfg) => {}
            _ = shutdown_signal() => {
                let _ = stop_tx.send(true);
                if let Some(http) = http {
                    let _ = http.await;
                }
                return Ok(());
            }
        }
    }
    let orphans = tokio::spawn(mcm_controller::orphans::run(
        ctx.clone(),
        ctx.config.safety_orphan_vms_period,
        stopped(stop_rx.clone()),
    ));
    let finalizers = tokio::spawn(mcm_controller::finalizers::run(
        ctx.clone(),
        Duration::from_secs(10),
        stopped(stop_rx.clone()),
    ));
    let control = ctx.control.clone();
    let lost = async move {
        match &leader {
            Some(cfg) => mcm_controller::leader::hold(&control, cfg).await,
            None => std::future::pending::<()>().await,
        }
    };
    let signal = async move {
        let lost = tokio::select! {
            _ = shutdown_signal() => false,
            _ = lost => true,
        };
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
        lost
    };
    let provider_ctrl = resources.map(|rctx| {
        tokio::spawn(mcm_providers::reconcile::run(
            rctx,
            stopped(stop_rx.clone()),
        ))
    });
    let ctrl = mcm_controller::run(Arc::clone(&ctx), stopped(stop_rx.clone()));
    let (lost, ()) = tokio::join!(signal, ctrl);
    if let Some(task) = provider_ctrl {
        let _ = task.await;
    }
    let _ = orphans.await;
    if let Some(http) = http {
        let _ = http.await;
    }
    let _ = finalizers.await;
    if lost {
        anyhow::bail!("leadership lost: stopped so that the new leader alone reconciles");
    }
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use clap::{Args as _, FromArgMatches as _};

    use super::CompatFlags;

    /// `CompatFlags::given` names each flag by hand: it must name exactly the flags clap
    /// defines, so that a flag added to the struct is also warned about.
    #[test]
    fn given_names_every_compat_flag() {
        let cmd = CompatFlags::augment_args(clap::Command::new("t"));
        let mut longs: Vec<String> = cmd
            .get_arguments()
            .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
            .collect();
        let argv: Vec<String> = std::iter::once("t".to_string())
            .chain(cmd.get_arguments().filter_map(|a| {
                let long = a.get_long()?;
                // Optional-value flags are the booleans; the rest take a duration or text.
                let bool_flag = a.get_num_args().is_some_and(|n| n.min_values() == 0);
                Some(format!(
                    "--{long}={}",
                    if bool_flag { "true" } else { "1m" }
                ))
            }))
            .collect();
        let matches = cmd.clone().try_get_matches_from(&argv).unwrap();
        let flags = CompatFlags::from_arg_matches(&matches).unwrap();
        let mut given: Vec<String> = flags.given().into_iter().map(String::from).collect();
        longs.sort();
        given.sort();
        assert_eq!(given, longs);
        assert!(CompatFlags::default().given().is_empty());
    }
}
