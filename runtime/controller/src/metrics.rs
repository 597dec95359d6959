//! Prometheus metrics (`prometheus-client`) and the `/metrics`, `/healthz`, `/readyz`
//! endpoints (axum).
//!
//! Families: `mcm_wasm_driver_calls_total{provider,operation,code}`,
//! `mcm_wasm_driver_call_duration_seconds{provider,operation}` (histogram),
//! `mcm_wasm_orphan_vms_total{result}`, `mcm_wasm_orphan_passes_capped_total`,
//! `mcm_wasm_workers_busy{pool}`, `mcm_wasm_driver_batches_total{provider,operation}` and
//! `mcm_wasm_driver_batched_machines_total{provider,operation}` (see `batcher`), the client-side rate buckets of the providers' cloud
//! requests (`mcm_wasm_rate_limit_requests_total`, `_throttled_total`, `_wait_seconds_total`,
//! `_rejected_total` and the current `mcm_wasm_rate_limit_rate`, each by
//! `{host,class,credential}`, the credential as a fingerprint),
//! `mcm_wasm_reconcile_errors_total{error}`, and MCM's `mcm_machine_items_total` and
//! `mcm_machine_current_status_phase{name,namespace}` (Terminating −4, Failed −3,
//! CrashLoopBackOff −2, Unknown −1, Pending 0, Running 1, other 0), `mcm_machine_info` (labels
//! as MCM's, then the provider's metrics-labels, e.g. `size` — an addition) and `mcm_machine_status_condition{name,namespace,condition}` (True 1, False 0,
//! Unknown 2). The machine families are read from the controller's Machine cache at each
//! scrape (a collector), so they never go stale. Driver calls are counted here only (one path:
//! `machine::Job::timed`), whatever serves them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use kube::ResourceExt as _;
use kube::runtime::reflector::Store;
use machine_api::{Machine, MachinePhase};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use mcm_driver::{Code, Operation};

const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    provider: String,
    operation: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DurationLabels {
    provider: String,
    operation: &'static str,
}

/// The labels of the batch families.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BatchLabels {
    pub provider: String,
    pub operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    pool: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OrphanLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    error: &'static str,
}

pub struct Metrics {
    registry: Registry,
    calls: Family<CallLabels, Counter>,
    durations: Family<DurationLabels, Histogram, fn() -> Histogram>,
    reconcile_errors: Family<ErrorLabels, Counter>,
    orphans: Family<OrphanLabels, Counter>,
    orphan_passes_capped: Counter,
    workers_busy: Family<PoolLabels, prometheus_client::metrics::gauge::Gauge>,
    /// Batch driver calls, and the machines they served (see [`crate::batcher`]).
    pub batches: Family<BatchLabels, Counter>,
    pub batched_machines: Family<BatchLabels, Counter>,
    machines: Arc<MachineFamilies>,
    rate_buckets: Arc<RateBuckets>,
    ready: AtomicBool,
    /// Per-machine labels from the providers (metrics-labels), shown on `mcm_machine_info`.
    pub provider_labels: Arc<ProviderLabels>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "mcm_wasm_driver_calls",
            "Driver calls by provider, operation and outcome code",
            calls.clone(),
        );
        let durations = Family::<DurationLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(BUCKETS)) as fn() -> Histogram,
        );
        registry.register(
            "mcm_wasm_driver_call_duration_seconds",
            "Duration of driver calls",
            durations.clone(),
        );
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "mcm_wasm_reconcile_errors",
            "Reconciles that ended in an error, by error kind",
            reconcile_errors.clone(),
        );
        let orphans = Family::<OrphanLabels, Counter>::default();
        registry.register(
            "mcm_wasm_orphan_vms",
            "Orphan VMs collected, by result (deleted, failed, would_delete in a dry run)",
            orphans.clone(),
        );
        let orphan_passes_capped = Counter::default();
        registry.register(
            "mcm_wasm_orphan_passes_capped",
            "Orphan-collection passes that left VMs for the next pass (--orphan-max-deletions-per-pass)",
            orphan_passes_capped.clone(),
        );
        let workers_busy =
            Family::<PoolLabels, prometheus_client::metrics::gauge::Gauge>::default();
        registry.register(
            "mcm_wasm_workers_busy",
            "Reconciles running, by worker pool (create, delete, health)",
            workers_busy.clone(),
        );
        let batches = Family::<BatchLabels, Counter>::default();
        registry.register(
            "mcm_wasm_driver_batches",
            "Batch driver calls (contract 0.1.2's batch interface), by provider and operation",
            batches.clone(),
        );
        let batched_machines = Family::<BatchLabels, Counter>::default();
        registry.register(
            "mcm_wasm_driver_batched_machines",
            "Machines served by batch driver calls, by provider and operation",
            batched_machines.clone(),
        );
        let provider_labels = Arc::new(ProviderLabels::default());
        let machines = Arc::new(MachineFamilies {
            store: OnceLock::new(),
            provider_labels: provider_labels.clone(),
        });
        registry.register_collector(Box::new(machines.clone()));
        let rate_buckets = Arc::new(RateBuckets::default());
        registry.register_collector(Box::new(rate_buckets.clone()));
        Metrics {
            registry,
            calls,
            durations,
            reconcile_errors,
            orphans,
            orphan_passes_capped,
            workers_busy,
            batches,
            batched_machines,
            machines,
            rate_buckets,
            ready: AtomicBool::new(false),
            provider_labels,
        }
    }
}

impl Metrics {
    /// One driver call's outcome (`None` = OK) and duration.
    pub fn observe(&self, provider: &str, op: Operation, outcome: Option<Code>, elapsed: Duration) {
        self.calls
            .get_or_create(&CallLabels {
                provider: provider.to_string(),
                operation: op.go_name(),
                code: outcome.map_or("OK", Code::name),
            })
            .inc();
        self.durations
            .get_or_create(&DurationLabels {
                provider: provider.to_string(),
                operation: op.go_name(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// One orphan VM collected (or, in a dry run, that would be).
    pub fn orphan(&self, dry_run: bool, ok: bool) {
        let result = match (dry_run, ok) {
            (true, _) => "would_delete",
            (false, true) => "deleted",
            (false, false) => "failed",
        };
        self.orphans.get_or_create(&OrphanLabels { result }).inc();
    }

    /// A reconcile runs in `pool` until the guard drops.
    pub fn worker_busy(&self, pool: &'static str) -> impl Drop + use<> {
        struct Busy(prometheus_client::metrics::gauge::Gauge);
        impl Drop for Busy {
            fn drop(&mut self) {
                self.0.dec();
            }
        }
        let gauge = self
            .workers_busy
            .get_or_create(&PoolLabels { pool })
            .clone();
        gauge.inc();
        Busy(gauge)
    }

    /// A pass stopped by the deletion cap.
    pub fn orphan_pass_capped(&self) {
        self.orphan_passes_capped.inc();
    }

    pub fn reconcile_error(&self, label: &'static str) {
        self.reconcile_errors
            .get_or_create(&ErrorLabels { error: label })
            .inc();
    }

    /// Where the rate buckets' figures come from.
    pub fn set_providers(&self, providers: Arc<dyn mcm_driver::ProviderLookup>) {
        let _ = self.rate_buckets.providers.set(providers);
    }

    /// The controller's Machine cache (for the machine families).
    pub fn set_machines(&self, store: Store<Machine>) {
        let _ = self.machines.store.set(store);
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The exposition (OpenMetrics text).
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// MCM's machine families, from the Machine cache at scrape time.
#[derive(Default)]
struct MachineFamilies {
    store: OnceLock<Store<Machine>>,
    provider_labels: Arc<ProviderLabels>,
}

/// The labels each machine's provider gave through metrics-labels
/// ([`crate::class_checks`]), added to its `mcm_machine_info` series.
#[derive(Default)]
pub struct ProviderLabels(std::sync::Mutex<std::collections::HashMap<String, KeyedLabels>>);

/// (class version + provider, labels) of one machine.
type KeyedLabels = (String, Vec<(String, String)>);

impl ProviderLabels {
    /// Are `machine`'s labels known for `key` (class version + provider)?
    pub fn is_current(&self, machine: &str, key: &str) -> bool {
        self.0
            .lock()
            .expect("lock")
            .get(machine)
            .is_some_and(|(k, _)| k == key)
    }

    pub fn set(&self, machine: &str, key: String, labels: Vec<(String, String)>) {
        self.0
            .lock()
            .expect("lock")
            .insert(machine.to_string(), (key, labels));
    }

    /// `machine`'s labels (empty when unknown).
    pub fn get(&self, machine: &str) -> Vec<(String, String)> {
        self.0
            .lock()
            .expect("lock")
            .get(machine)
            .map(|(_, l)| l.clone())
            .unwrap_or_default()
    }

    /// Forget machines that are gone.
    fn retain(&self, live: &std::collections::HashSet<String>) {
        self.0
            .lock()
            .expect("lock")
            .retain(|name, _| live.contains(name));
    }
}

/// The labels of `mcm_machine_info` as MCM has them; a provider label of the same name gets a
/// `provider_` prefix.
pub const MACHINE_INFO_LABELS: &[&str] = &[
    "name",
    "namespace",
    "createdAt",
    "spec_provider_id",
    "spec_class_api_group",
    "spec_class_kind",
    "spec_class_name",
    "node_name",
];

impl std::fmt::Debug for MachineFamilies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MachineFamilies").finish_non_exhaustive()
    }
}

type Labels = Vec<(std::borrow::Cow<'static, str>, String)>;

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Labels, i64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in rows {
        if labels.is_empty() {
            // Without labels: `name value`, not `name{} value`.
            ConstGauge::new(value).encode(family)?;
            return Ok(());
        }
        ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for MachineFamilies {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(store) = self.store.get() else {
            return Ok(());
        };
        let machines = store.state();
        let id = |m: &Machine| -> Labels {
            vec![
                ("name".into(), m.name_any()),
                ("namespace".into(), m.namespace().unwrap_or_default()),
            ]
        };
        let live = machines.iter().map(|m| m.name_any()).collect();
        self.provider_labels.retain(&live);
        gauge(
            &mut encoder,
            "mcm_machine_items_total",
            "Count of machines currently managed by the mcm.",
            [(Labels::new(), machines.len() as i64)],
        )?;
        gauge(
            &mut encoder,
            "mcm_machine_current_status_phase",
            "Current status phase of the Machines currently managed by the mcm.",
            machines.iter().map(|m| (id(m), phase_value(m.phase()))),
        )?;
        gauge(
            &mut encoder,
            "mcm_machine_info",
            "Information of the Machines currently managed by the mcm.",
            machines.iter().map(|m| {
                let mut labels = machine_info(m);
                for (name, value) in self.provider_labels.get(&m.name_any()) {
                    labels.push((name.into(), value));
                }
                (labels, 1)
            }),
        )?;
        gauge(
            &mut encoder,
            "mcm_machine_status_condition",
            "Machine status conditions.",
            machines.iter().flat_map(|m| {
                m.status.iter().flat_map(|s| &s.conditions).map(move |c| {
                    let mut labels = id(m);
                    labels.push(("condition".into(), c.type_.clone()));
                    let value = match c.status.as_str() {
                        "True" => 1,
                        "False" => 0,
                        _ => 2,
                    };
                    (labels, value)
                })
            }),
        )
    }
}

/// The providers' client-side rate buckets, read at scrape time.
#[derive(Default)]
struct RateBuckets {
    providers: OnceLock<Arc<dyn mcm_driver::ProviderLookup>>,
}

impl std::fmt::Debug for RateBuckets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateBuckets").finish_non_exhaustive()
    }
}

impl Collector for RateBuckets {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::metrics::counter::ConstCounter;
        let Some(providers) = self.providers.get() else {
            return Ok(());
        };
        let buckets = providers.rate_buckets();
        let labels = |b: &mcm_driver::RateBucketStats| -> Labels {
            vec![
                ("host".into(), b.host.clone()),
                ("class".into(), b.class.clone()),
                ("credential".into(), b.credential.clone()),
            ]
        };
        type Value = fn(&mcm_driver::RateBucketStats) -> f64;
        let counters: [(&str, &str, Value); 4] = [
            (
                "mcm_wasm_rate_limit_requests",
                "Cloud requests that took a token of a client-side rate bucket",
                |b| b.requests as f64,
            ),
            (
                "mcm_wasm_rate_limit_throttled",
                "Throttling answers from the cloud (they lower the bucket's rate)",
                |b| b.throttled as f64,
            ),
            (
                "mcm_wasm_rate_limit_wait_seconds",
                "Time requests waited for a token",
                |b| b.waited.as_secs_f64(),
            ),
            (
                "mcm_wasm_rate_limit_rejected",
                "Driver calls failed Unavailable because their token would have come after their deadline",
                |b| b.rate_limited as f64,
            ),
        ];
        for (name, help, value) in counters {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for b in &buckets {
                ConstCounter::new(value(b)).encode(family.encode_family(&labels(b))?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "mcm_wasm_rate_limit_rate",
            "A rate bucket's current fill rate in requests per second (absent while it does not limit)",
            None,
            MetricType::Gauge,
        )?;
        for b in &buckets {
            if let Some(rate) = b.rate {
                ConstGauge::new(rate).encode(family.encode_family(&labels(b))?)?;
            }
        }
        Ok(())
    }
}

/// MCM's numbers for phases.
fn phase_value(phase: Option<&MachinePhase>) -> i64 {
    match phase {
        Some(MachinePhase::Terminating) => -4,
        Some(MachinePhase::Failed) => -3,
        Some(MachinePhase::CrashLoopBackOff) => -2,
        Some(MachinePhase::Unknown) => -1,
        Some(MachinePhase::Running) => 1,
        _ => 0,
    }
}

/// MCM's `mcm_machine_info` labels of one machine (the value is always 1).
fn machine_info(m: &Machine) -> Labels {
    let created = m
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(0, |t| t.0.as_second());
    let class = &m.spec.class;
    let values = [
        m.name_any(),
        m.namespace().unwrap_or_default(),
        created.to_string(),
        m.spec.provider_id.clone(),
        class.api_group.clone(),
        class.kind.clone(),
        class.name.clone(),
        m.node_name().unwrap_or_default().to_string(),
    ];
    MACHINE_INFO_LABELS
        .iter()
        .zip(values)
        .map(|(name, value)| ((*name).into(), value))
        .collect()
}

/// Serve `/metrics`, `/healthz` and `/readyz` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    ctx: Arc<super::Context>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    use axum::http::{StatusCode, header};
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(
                |axum::extract::State(ctx): axum::extract::State<Arc<super::Context>>| async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        ctx.metrics.render(),
                    )
                },
            ),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(
                |axum::extract::State(ctx): axum::extract::State<Arc<super::Context>>| async move {
                    if ctx.metrics.is_ready() {
                        (StatusCode::OK, "ok")
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "machine cache not synced yet",
                        )
                    }
                },
            ),
        )
        .with_state(ctx);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::warn!("metrics server stopped: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcm_driver::{MachineDriver, ProviderLookup, RateBucketStats};

    struct Buckets(Vec<RateBucketStats>);

    impl ProviderLookup for Buckets {
        fn get(&self, _name: &str) -> Option<Arc<dyn MachineDriver>> {
            None
        }
        fn served_names(&self) -> Vec<String> {
            Vec::new()
        }
        fn subscribe_loaded(&self) -> tokio::sync::broadcast::Receiver<mcm_driver::ProviderLoaded> {
            tokio::sync::broadcast::channel(1).1
        }
        fn rate_buckets(&self) -> Vec<RateBucketStats> {
            self.0.clone()
        }
    }

    #[test]
    fn rate_buckets_are_rendered_per_host_class_and_credential() {
        let bucket = |class: &str, rate: Option<f64>| RateBucketStats {
            credential: "0a1b2c3d4e5f".into(),
            host: "127.0.0.1:5000".into(),
            class: class.into(),
            rate,
            requests: 12,
            throttled: 3,
            waited: Duration::from_millis(1500),
            rate_limited: 1,
        };
        let metrics = Metrics::default();
        metrics.set_providers(Arc::new(Buckets(vec![
            bucket("RunInstances", Some(1.4)),
            bucket("DescribeInstances", None),
        ])));
        let text = metrics.render();
        let labels = r#"host="127.0.0.1:5000",class="RunInstances",credential="0a1b2c3d4e5f""#;
        for line in [
            format!("mcm_wasm_rate_limit_requests_total{{{labels}}} 12"),
            format!("mcm_wasm_rate_limit_throttled_total{{{labels}}} 3"),
            format!("mcm_wasm_rate_limit_wait_seconds_total{{{labels}}} 1.5"),
            format!("mcm_wasm_rate_limit_rejected_total{{{labels}}} 1"),
            format!("mcm_wasm_rate_limit_rate{{{labels}}} 1.4"),
        ] {
            assert!(text.contains(&line), "{line} missing from:\n{text}");
        }
        assert!(
            !text.contains(
                r#"mcm_wasm_rate_limit_rate{host="127.0.0.1:5000",class="DescribeInstances""#
            ),
            "a bucket that does not limit has no rate:\n{text}"
        );
    }
}
