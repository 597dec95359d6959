//! The Provider controller: from a `Provider` resource to a version serving in the registry,
//! with status, events and backoff.
//!
//! One reconcile is ordered steps, each failure naming its stage (Flux's OCIRepository
//! reconciler and Kubewarden's policy-server download-then-evaluate are the model):
//!
//! | step    | does                                                        | failure reason   |
//! |---------|-------------------------------------------------------------|------------------|
//! | spec    | `spec::source` + `spec::settings`                           | `InvalidSpec`    |
//! | unchanged | the pin (OCI, https) is what serves: apply settings only, no fetch | —     |
//! | fetch   | OCI by manifest digest / https / ConfigMap / file           | `FetchFailed`    |
//! | verify  | https bytes against `sha256` (OCI is verified in the pull)  | `DigestMismatch` |
//! | load    | compile + smoke off the hot path, atomic swap (`Registry::load_resource`) | `LoadFailed` |
//!
//! A failure leaves the last good version serving (`Ready` stays True, reason
//! `ServingPreviousVersion`; `Degraded` names the cause) and is retried with exponential
//! backoff (5 s doubling to 5 min). When nothing serves, the registry marks the name not ready,
//! so Machines of the provider get a lastOperation naming the cause instead of "no provider".
//! Deleting a Provider unloads it (the `mcm-wasm.io/provider` finalizer, so a controller that
//! was down still unloads and reports).
//!
//! Events (on the Provider): `Fetched`, `Loaded`, `Configured` (settings changed, same
//! artifact), `Rejected` (Warning, the cause), `RolledBack` (Warning: the last good version
//! keeps serving), `Unloaded`.
//!
//! Deliberate deviation from Flux: no periodic re-pull of a pinned artifact — a digest names
//! immutable content. `file` sources (development) are re-read every 30 s and ConfigMap
//! sources on every change of the ConfigMap (watched).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{self, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, Resource as _, ResourceExt as _};
use machine_api::{Provider, ProviderStatus};
use mcm_sandbox::Registry;

use crate::fetch::{self, FetchError, Fetched};
use crate::spec::{self, Source};
use crate::status::{self, Outcome, Serving, Stage};

/// The finalizer that makes deletion unload the provider.
pub const FINALIZER: &str = "mcm-wasm.io/provider";
/// The field manager of status writes.
const MANAGER: &str = "mcm-wasm-providers";
/// How often a `file` source is re-read.
const FILE_POLL: Duration = Duration::from_secs(30);

/// What every Provider reconcile shares.
pub struct Context {
    pub client: Client,
    pub namespace: String,
    pub registry: Arc<Registry>,
    /// For `https` sources.
    pub http: reqwest::Client,
    reporter: Reporter,
    /// The last note sent per (Provider, reason).
    sent: Mutex<HashMap<String, Vec<(String, String)>>>,
    known: Mutex<HashMap<String, Known>>,
    backoff: Backoff,
}

/// What this controller last did for a Provider.
#[derive(Clone, Debug, Default)]
struct Known {
    /// What serves (the digest is the pin: the manifest's for OCI).
    serving: Option<Serving>,
    /// The spec generation `serving` was last configured from.
    generation: Option<i64>,
    failures: u32,
}

/// Exponential backoff of retries after failures.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            first: Duration::from_secs(5),
            max: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// The wait after the `failures`-th failure in a row (1-based).
    pub fn after(self, failures: u32) -> Duration {
        let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(16));
        self.first.saturating_mul(factor).min(self.max)
    }
}

impl Context {
    pub fn new(
        client: Client,
        namespace: &str,
        registry: Arc<Registry>,
        http: reqwest::Client,
    ) -> Arc<Context> {
        Self::with_backoff(client, namespace, registry, http, Backoff::default())
    }

    pub fn with_backoff(
        client: Client,
        namespace: &str,
        registry: Arc<Registry>,
        http: reqwest::Client,
        backoff: Backoff,
    ) -> Arc<Context> {
        Arc::new(Context {
            client,
            namespace: namespace.to_string(),
            registry,
            http,
            reporter: Reporter {
                controller: "mcm-wasm".into(),
                instance: None,
            },
            sent: Default::default(),
            known: Default::default(),
            backoff,
        })
    }

    fn providers(&self) -> Api<Provider> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn known(&self, key: &str) -> Known {
        self.known
            .lock()
            .expect("known lock")
            .get(key)
            .cloned()
            .unwrap_or_default()
    }

    fn remember(&self, key: &str, f: impl FnOnce(&mut Known)) -> Known {
        let mut known = self.known.lock().expect("known lock");
        let entry = known.entry(key.to_string()).or_default();
        f(entry);
        entry.clone()
    }

    /// An event on the Provider. kube's `Recorder` folds events of one reason into a series
    /// that keeps the first note, which would hide the second `Loaded` (another version); so
    /// each distinct note is its own Event, and a note repeated by a retry is not sent again.
    async fn event(&self, provider: &Provider, type_: EventType, reason: &str, note: String) {
        let note = mcm_driver::text::cap_message(note, 1024);
        let key = provider.name_any();
        let repeated = {
            let mut sent = self.sent.lock().expect("sent lock");
            let last = sent.entry(key.clone()).or_default();
            let repeated = last.iter().any(|(r, n)| r == reason && *n == note);
            if !repeated {
                last.retain(|(r, _)| r != reason);
                last.push((reason.to_string(), note.clone()));
            }
            repeated
        };
        if repeated {
            return;
        }
        let ev = Event {
            type_,
            reason: reason.to_string(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        if let Err(e) = recorder.publish(&ev, &provider.object_ref(&())).await {
            tracing::debug!(provider = %key, "cannot record event: {e}");
        }
    }
}

/// Why a reconcile failed (the artifact's own failures are not errors: they are status).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
}

impl Error {
    /// The label of this error in metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Finalizer(_) => "finalizer",
        }
    }
}

/// Mark every Provider of the namespace not ready ("not loaded yet") before the machine
/// controller starts, so a Machine reconciled first waits with that reason instead of being
/// reported as naming no provider. Returns how many there are; a 404 means the CRD is not
/// installed.
pub async fn prime(ctx: &Context) -> Result<usize, kube::Error> {
    let list = ctx.providers().list(&Default::default()).await?;
    for p in &list.items {
        if ctx.registry.resource(&p.name_any()).is_none() {
            not_ready(ctx, p, "not loaded yet");
        }
    }
    Ok(list.items.len())
}

/// Nothing serves for `p`, because of `reason`; the registry's not-ready text names the
/// Provider (`Provider aws has no version loaded yet (reason)`), so the reason does not.
fn not_ready(ctx: &Context, p: &Provider, reason: &str) {
    ctx.registry
        .mark_not_ready(&p.name_any(), p.spec.aliases.clone(), reason);
}

/// One reconcile of one Provider.
pub async fn reconcile(provider: Arc<Provider>, ctx: Arc<Context>) -> Result<Action, Error> {
    let api = ctx.providers();
    finalizer(&api, FINALIZER, provider, |event| async {
        match event {
            finalizer::Event::Apply(p) => apply(&p, &ctx).await,
            finalizer::Event::Cleanup(p) => cleanup(&p, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// The requeue after a failed reconcile (an API error: the artifact's failures requeue with
/// their own backoff).
pub fn error_policy(_p: Arc<Provider>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!("provider reconcile failed: {error}");
    Action::requeue(Duration::from_secs(5))
}

async fn apply(p: &Provider, ctx: &Context) -> Result<Action, Error> {
    let key = p.name_any();
    let generation = p.metadata.generation.unwrap_or_default();
    let known = ctx.known(&key);
    let (outcome, source) = load(p, ctx, &known).await;
    let action = match &outcome {
        Outcome::Loaded(serving) => {
            ctx.remember(&key, |k| {
                k.serving = Some(serving.clone());
                k.generation = Some(generation);
                k.failures = 0;
            });
            match source {
                Some(Source::File { .. }) => Action::requeue(FILE_POLL),
                _ => Action::await_change(),
            }
        }
        Outcome::Failed {
            stage,
            message,
            serving,
        } => {
            let known = ctx.remember(&key, |k| k.failures += 1);
            let wait = ctx.backoff.after(known.failures);
            tracing::warn!(provider = %key, stage = stage.reason(), retry_in = ?wait, "{message}");
            match serving {
                Some(s) => {
                    ctx.event(
                        p,
                        EventType::Warning,
                        "RolledBack",
                        format!(
                            "{} {} ({}) keeps serving: the spec's artifact was rejected",
                            s.provider, s.version, s.digest
                        ),
                    )
                    .await
                }
                None => not_ready(ctx, p, message),
            }
            if *stage == Stage::Spec {
                // Only a new spec can fix it; the watch brings it.
                Action::await_change()
            } else {
                Action::requeue(wait)
            }
        }
    };
    let prev = p.status.clone().unwrap_or_default();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let next = status::next(&prev, generation, &outcome, &now);
    if next != prev {
        patch_status(ctx, &key, &next).await?;
    }
    Ok(action)
}

async fn patch_status(ctx: &Context, key: &str, status: &ProviderStatus) -> Result<(), Error> {
    let patch = serde_json::json!({
        "apiVersion": "mcm-wasm.io/v1alpha1",
        "kind": "Provider",
        "status": status,
    });
    ctx.providers()
        .patch_status(
            key,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    Ok(())
}

/// The steps of one reconcile; the source is returned for the requeue decision.
async fn load(p: &Provider, ctx: &Context, known: &Known) -> (Outcome, Option<Source>) {
    let key = p.name_any();
    let current = known.serving.clone();
    let failed = |stage: Stage, message: String| Outcome::Failed {
        stage,
        message,
        serving: current.clone(),
    };
    let (source, settings) = match spec::source(&p.spec.source)
        .and_then(|source| Ok((source, spec::settings(&p.spec)?)))
    {
        Ok(ok) => ok,
        Err(e) => {
            ctx.event(p, EventType::Warning, "Rejected", e.to_string())
                .await;
            return (failed(Stage::Spec, e.to_string()), None);
        }
    };
    let aliases = p.spec.aliases.clone();
    let pin = match &source {
        Source::Oci { digest, .. } | Source::Https { digest, .. } => Some(digest.clone()),
        Source::ConfigMap { .. } | Source::File { .. } => None,
    };
    // The pinned artifact already serves: only the settings may have changed.
    if let (Some(pin), Some(serving)) = (&pin, &current)
        && *pin == serving.digest
        && let Some(outcome) = reconfigure(p, ctx, &key, aliases.clone(), &settings, serving).await
    {
        return (outcome, Some(source));
    }
    if current.is_none() && known.failures == 0 {
        not_ready(ctx, p, &format!("fetching {}", describe(&source)));
    }
    let fetched = match fetch(ctx, &source).await {
        Ok(f) => f,
        Err(e) => {
            let stage = if matches!(e, FetchError::Digest { .. }) {
                Stage::Verify
            } else {
                Stage::Fetch
            };
            ctx.event(p, EventType::Warning, "Rejected", e.to_string())
                .await;
            return (failed(stage, e.to_string()), Some(source));
        }
    };
    // An unpinned source (file, ConfigMap) that has not changed: settings only.
    if let Some(serving) = &current
        && fetched.component_digest == serving.component_digest
        && let Some(outcome) = reconfigure(p, ctx, &key, aliases.clone(), &settings, serving).await
    {
        return (outcome, Some(source));
    }
    ctx.event(
        p,
        EventType::Normal,
        "Fetched",
        format!(
            "{} bytes from {} ({})",
            fetched.bytes.len(),
            fetched.origin,
            fetched.digest
        ),
    )
    .await;
    let origin = format!("Provider {}/{key} from {}", ctx.namespace, fetched.origin);
    match ctx
        .registry
        .load_resource(&key, &origin, &fetched.bytes, aliases, settings)
        .await
    {
        Ok(provider) => {
            let info = provider.info();
            let serving = Serving {
                digest: fetched.digest.clone(),
                component_digest: fetched.component_digest.clone(),
                provider: info.metadata.name.clone(),
                version: info.metadata.version.clone(),
                contract: info.contract.to_string(),
            };
            let replaced = current
                .as_ref()
                .map(|c| format!(", replacing {} ({})", c.version, c.digest))
                .unwrap_or_default();
            ctx.event(
                p,
                EventType::Normal,
                "Loaded",
                format!(
                    "{} {} (contract {}) serves from {}{replaced}",
                    serving.provider, serving.version, serving.contract, fetched.origin
                ),
            )
            .await;
            (Outcome::Loaded(serving), Some(source))
        }
        Err(e) => {
            ctx.event(p, EventType::Warning, "Rejected", e.to_string())
                .await;
            (failed(Stage::Load, e.to_string()), Some(source))
        }
    }
}

/// Apply new settings and aliases to the serving version (no fetch, no recompile). `None`
/// when the registry has no version for the resource any more (then it is loaded again).
async fn reconfigure(
    p: &Provider,
    ctx: &Context,
    key: &str,
    aliases: Vec<String>,
    settings: &mcm_sandbox::ProviderSettings,
    serving: &Serving,
) -> Option<Outcome> {
    let changed = ctx.known(key).generation != p.metadata.generation;
    if !ctx
        .registry
        .configure_resource(key, aliases, settings.clone())
    {
        return None;
    }
    if changed {
        ctx.event(
            p,
            EventType::Normal,
            "Configured",
            format!(
                "{} {} serves with the settings of generation {}",
                serving.provider,
                serving.version,
                p.metadata.generation.unwrap_or_default()
            ),
        )
        .await;
    }
    Some(Outcome::Loaded(serving.clone()))
}

fn describe(source: &Source) -> String {
    match source {
        Source::Oci { reference, .. } => format!("oci://{reference}"),
        Source::Https { url, .. } => url.clone(),
        Source::ConfigMap { name, key } => format!("ConfigMap {name} key {key}"),
        Source::File { path } => format!("file {path}"),
    }
}

async fn fetch(ctx: &Context, source: &Source) -> Result<Fetched, FetchError> {
    match source {
        Source::Oci {
            reference,
            digest,
            pull_secret,
            cert_secret,
            insecure,
        } => {
            let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
            fetch::oci(
                &secrets,
                reference,
                digest,
                pull_secret.as_deref(),
                cert_secret.as_deref(),
                *insecure,
            )
            .await
        }
        Source::Https { url, digest } => fetch::https(&ctx.http, url).await?.verify(digest),
        Source::ConfigMap { name, key } => {
            let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
            fetch::config_map(&cms, name, key).await
        }
        Source::File { path } => fetch::file(path).await,
    }
}

async fn cleanup(p: &Provider, ctx: &Context) -> Result<Action, Error> {
    let key = p.name_any();
    let was = ctx.known.lock().expect("known lock").remove(&key);
    ctx.sent.lock().expect("sent lock").remove(&key);
    if ctx.registry.unload_resource(&key) {
        let what = was
            .and_then(|k| k.serving)
            .map(|s| format!("{} {} ({})", s.provider, s.version, s.digest))
            .unwrap_or_else(|| "nothing was serving".into());
        ctx.event(
            p,
            EventType::Normal,
            "Unloaded",
            format!("Provider deleted: {what} unloaded"),
        )
        .await;
    }
    Ok(Action::await_change())
}

/// Providers whose source is the ConfigMap `cm`.
fn providers_of_config_map(store: &Store<Provider>, cm: &ConfigMap) -> Vec<ObjectRef<Provider>> {
    let name = cm.name_any();
    store
        .state()
        .iter()
        .filter(|p| {
            p.spec
                .source
                .config_map
                .as_ref()
                .is_some_and(|c| c.name == name)
        })
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect()
}

/// Run the Provider controller until `shutdown` resolves.
pub async fn run(ctx: Arc<Context>, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let controller = Controller::new(ctx.providers(), watcher::Config::default());
    let store = controller.store();
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    controller
        .watches(config_maps, watcher::Config::default(), move |cm| {
            providers_of_config_map(&store, &cm)
        })
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!("provider controller: {e}");
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap() {
        let b = Backoff::default();
        let waits: Vec<u64> = (1..=8).map(|n| b.after(n).as_secs()).collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(b.after(u32::MAX), b.max);
    }
}
