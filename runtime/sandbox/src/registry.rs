//! The provider registry: providers by name, loaded from a directory of `.wasm` files and
//! hot-swapped when the directory changes, or delivered by `Provider` resources
//! (`mcm-wasm.io/v1alpha1`, fetched by `mcm-providers`) and swapped when their source changes.
//!
//! A MachineClass's `provider` is looked up among the resources first: a resource's name, the
//! aliases in its spec, or the name and aliases its artifact declares. A name a resource
//! claims is never served by a directory provider, even while the resource has nothing
//! loaded yet (then [`Registry::not_ready`] says why), so an operator who moves a provider
//! from the directory to a resource never has machines silently served by the old file.
//!
//! The providers and the operator's settings are one immutable state behind an `ArcSwap`:
//! lookups never lock, and every change (a load, an unload, new settings) is one swap made
//! under a writer lock, so a settings change cannot be lost to a load in flight (a loaded
//! provider takes the settings current at its swap, not those of when it started compiling).
//!
//! A swap compiles and smoke-instantiates the new artifact off the hot path, then replaces the
//! map entry atomically. Calls already running hold an `Arc` to the old version and finish on
//! it. A broken artifact is rejected and the old version keeps serving; a removed file unloads
//! its provider.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use mcm_driver::{MachineDriver, ProviderLoaded, ProviderLookup};
use notify::Watcher as _;
use tokio::sync::broadcast;

use crate::artifact::LoadError;
use crate::engine::Sandbox;
use crate::provider::{Provider, ProviderSettings};

/// What happened to the registry's providers (for logs, Kubernetes events, tests).
#[derive(Clone, Debug)]
pub enum RegistryEvent {
    Loaded {
        name: String,
        version: String,
        digest: String,
        path: PathBuf,
        replaced: Option<String>,
        elapsed: Duration,
    },
    Rejected {
        path: PathBuf,
        error: String,
    },
    Unloaded {
        name: String,
        path: PathBuf,
    },
}

/// What the registry last saw in a file: its digest (to skip unchanged files, good or bad) and
/// the provider it holds, if it ever loaded.
#[derive(Clone)]
struct FileState {
    digest: String,
    provider: Option<String>,
}

/// What serves calls: the providers by name and the operator's settings by provider name.
#[derive(Clone, Default)]
struct State {
    providers: HashMap<String, Arc<Provider>>,
    settings: HashMap<String, ProviderSettings>,
    /// Providers delivered by `Provider` resources, by the resource's name.
    resources: HashMap<String, Resource>,
}

/// What a `Provider` resource put in the registry: the version serving (the last good one, with
/// the resource's settings applied), the names its spec adds, and why nothing serves yet when
/// nothing does.
#[derive(Clone, Default)]
struct Resource {
    provider: Option<Arc<Provider>>,
    aliases: Vec<String>,
    not_ready: Option<String>,
}

impl Resource {
    fn claims(&self, key: &str, name: &str) -> bool {
        key == name
            || self.aliases.iter().any(|a| a == name)
            || self
                .provider
                .as_ref()
                .is_some_and(|p| p.info().metadata.serves(name))
    }
}

impl State {
    /// The resources claiming `name`, the resource of that very name first, then by name.
    fn claiming(&self, name: &str) -> Vec<(&String, &Resource)> {
        let mut claiming: Vec<_> = self
            .resources
            .iter()
            .filter(|(key, r)| r.claims(key, name))
            .collect();
        claiming.sort_by_key(|(key, _)| (key.as_str() != name, key.as_str()));
        claiming
    }
}

pub struct Registry {
    sandbox: Arc<Sandbox>,
    state: ArcSwap<State>,
    /// Serializes changes of `state` (readers never wait).
    writer: Mutex<()>,
    files: Mutex<HashMap<PathBuf, FileState>>,
    events: broadcast::Sender<RegistryEvent>,
    loaded: broadcast::Sender<ProviderLoaded>,
    /// One directory scan at a time.
    scan_lock: tokio::sync::Mutex<()>,
}

impl Registry {
    pub fn new(sandbox: Arc<Sandbox>) -> Arc<Registry> {
        Arc::new(Registry {
            sandbox,
            state: ArcSwap::default(),
            writer: Mutex::new(()),
            files: Mutex::default(),
            events: broadcast::channel(256).0,
            loaded: broadcast::channel(256).0,
            scan_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// One change of the state, made atomically with respect to every other change.
    fn update<R>(&self, change: impl FnOnce(&mut State) -> R) -> R {
        let _writer = self.writer.lock().expect("registry writer lock");
        let mut next = State::clone(&self.state.load());
        let out = change(&mut next);
        self.state.store(Arc::new(next));
        out
    }

    pub fn sandbox(&self) -> &Arc<Sandbox> {
        &self.sandbox
    }

    /// The provider serving `name`: its own name, or one of the aliases it declares (a
    /// MachineClass written for provider-aws says `AWS`).
    pub fn get(&self, name: &str) -> Option<Arc<Provider>> {
        let state = self.state.load();
        let claiming = state.claiming(name);
        if !claiming.is_empty() {
            return claiming.iter().find_map(|(_, r)| r.provider.clone());
        }
        let providers = &state.providers;
        providers.get(name).cloned().or_else(|| {
            providers
                .values()
                .find(|p| p.info().metadata.serves(name))
                .cloned()
        })
    }

    /// The provider values a MachineClass may use: each loaded provider's name with its
    /// aliases, e.g. `aws (alias AWS)`, sorted.
    pub fn served_names(&self) -> Vec<String> {
        let state = self.state.load();
        let mut names: Vec<String> = state
            .providers
            .values()
            .map(|p| {
                let meta = &p.info().metadata;
                if meta.aliases.is_empty() {
                    meta.name.clone()
                } else {
                    format!("{} (alias {})", meta.name, meta.aliases.join(", "))
                }
            })
            .collect();
        for (key, r) in &state.resources {
            let mut also: Vec<&str> = r.aliases.iter().map(String::as_str).collect();
            if let Some(p) = &r.provider {
                let meta = &p.info().metadata;
                also.extend(
                    std::iter::once(meta.name.as_str())
                        .chain(meta.aliases.iter().map(String::as_str)),
                );
            }
            also.retain(|n| n != key);
            also.sort();
            also.dedup();
            let ready = if r.provider.is_some() {
                ""
            } else {
                ", not ready"
            };
            names.push(if also.is_empty() {
                format!("{key} (Provider{ready})")
            } else {
                format!("{key} (Provider{ready}, also {})", also.join(", "))
            });
        }
        names.sort();
        names
    }

    /// Why no provider serves `name` although a `Provider` resource claims it; `None` when one
    /// serves or no resource claims the name.
    ///
    /// Before a resource's first load its artifact's aliases are unknown, so a name is also
    /// taken as claimed by an unloaded resource whose key or spec aliases equal it ignoring
    /// case: a class of `provider: AWS` waiting for the Provider `aws` hears why it waits
    /// rather than that nothing serves `AWS`. (Serving always matches names exactly.)
    pub fn not_ready(&self, name: &str) -> Option<String> {
        let state = self.state.load();
        let mut claiming = state.claiming(name);
        let directory_serves = || {
            state
                .providers
                .values()
                .any(|p| p.name() == name || p.info().metadata.serves(name))
        };
        if claiming.is_empty() && !directory_serves() {
            claiming = state
                .resources
                .iter()
                .filter(|(key, r)| {
                    r.provider.is_none()
                        && (key.eq_ignore_ascii_case(name)
                            || r.aliases.iter().any(|a| a.eq_ignore_ascii_case(name)))
                })
                .collect();
        }
        if claiming.is_empty() || claiming.iter().any(|(_, r)| r.provider.is_some()) {
            return None;
        }
        let reasons: Vec<String> = claiming
            .iter()
            .map(|(key, r)| {
                format!(
                    "Provider {key} has no version loaded yet ({})",
                    r.not_ready.as_deref().unwrap_or("not reconciled yet")
                )
            })
            .collect();
        Some(reasons.join("; "))
    }

    /// The provider a `Provider` resource has serving (its last good version).
    pub fn resource(&self, key: &str) -> Option<Arc<Provider>> {
        self.state
            .load()
            .resources
            .get(key)
            .and_then(|r| r.provider.clone())
    }

    /// Compile and smoke-instantiate a `Provider` resource's artifact off the hot path, then
    /// swap it in with the resource's settings and aliases. `origin` names the source in errors
    /// and events (`Provider default/aws from oci://…`). On failure the resource's last good
    /// version keeps serving and the error is returned (and sent as `Rejected`).
    pub async fn load_resource(
        &self,
        key: &str,
        origin: &str,
        bytes: &[u8],
        aliases: Vec<String>,
        settings: ProviderSettings,
    ) -> Result<Arc<Provider>, LoadError> {
        let path = PathBuf::from(origin);
        let compiled =
            match Provider::from_bytes(&self.sandbox, &path, bytes, ProviderSettings::default())
                .await
            {
                Ok(compiled) => compiled,
                Err(e) => {
                    self.announce_rejected(&path, &e);
                    return Err(e);
                }
            };
        let (provider, replaced) = self.update(|state| {
            let entry = state.resources.entry(key.to_string()).or_default();
            let settings = with_endpoint_env(&compiled.info().metadata, settings);
            let provider = Arc::new(compiled.with_settings(settings));
            let replaced = entry
                .provider
                .replace(provider.clone())
                .map(|old| old.version().to_string());
            entry.aliases = aliases;
            entry.not_ready = None;
            (provider, replaced)
        });
        self.announce_loaded(key, &provider, &path, replaced);
        Ok(provider)
    }

    /// New settings or aliases for a resource's provider, without recompiling: applies to the
    /// serving version at once. Returns whether a version is serving.
    pub fn configure_resource(
        &self,
        key: &str,
        aliases: Vec<String>,
        settings: ProviderSettings,
    ) -> bool {
        self.update(|state| {
            let entry = state.resources.entry(key.to_string()).or_default();
            entry.aliases = aliases;
            let Some(current) = &entry.provider else {
                return false;
            };
            let settings = with_endpoint_env(&current.info().metadata, settings);
            entry.provider = Some(Arc::new(current.with_settings(settings)));
            true
        })
    }

    /// Record why a resource has nothing (new) loaded: a machine whose class names it gets this
    /// reason while no version serves; a serving last good version keeps serving.
    pub fn mark_not_ready(&self, key: &str, aliases: Vec<String>, reason: &str) {
        let changed = self.update(|state| {
            let entry = state.resources.entry(key.to_string()).or_default();
            entry.aliases = aliases;
            entry.not_ready.replace(reason.to_string()).as_deref() != Some(reason)
        });
        // Machines waiting for the provider re-read why (the controller reconciles them on
        // this signal as on a load).
        if changed {
            let _ = self.loaded.send(ProviderLoaded {
                name: key.to_string(),
            });
        }
    }

    /// The resource is gone: unload its provider.
    pub fn unload_resource(&self, key: &str) -> bool {
        let removed = self.update(|state| state.resources.remove(key));
        let Some(removed) = removed else {
            return false;
        };
        if let Some(p) = removed.provider {
            tracing::info!(resource = %key, provider = %p.name(), "provider unloaded: Provider resource deleted");
            let _ = self.events.send(RegistryEvent::Unloaded {
                name: p.name().to_string(),
                path: p.path().to_path_buf(),
            });
        }
        true
    }

    /// Names of the loaded providers, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.state.load().providers.keys().cloned().collect();
        names.sort();
        names
    }

    pub fn subscribe(&self) -> broadcast::Receiver<RegistryEvent> {
        self.events.subscribe()
    }

    /// Set the operator's settings for a provider (by name); applies to the loaded version at
    /// once and to every later version.
    pub fn set_settings(&self, name: &str, settings: ProviderSettings) {
        self.update(|state| {
            state.settings.insert(name.to_string(), settings.clone());
            if let Some(current) = state.providers.get(name) {
                let settings = with_endpoint_env(&current.info().metadata, settings);
                let updated = Arc::new(current.with_settings(settings));
                state.providers.insert(name.to_string(), updated);
            }
        })
    }

    /// Load (or reload) one file; on success the provider is swapped in atomically.
    pub async fn load_file(&self, path: &Path) -> Result<Arc<Provider>, LoadError> {
        let bytes = tokio::fs::read(path)
            .await
            .map_err(|source| LoadError::Io {
                path: path.display().to_string(),
                source,
            })?;
        let result = self.load_bytes(path, &bytes).await;
        if let Err(e) = &result {
            // Remember the rejected content so an unchanged bad file is not retried.
            let mut files = self.files.lock().expect("files lock");
            let provider = files.get(path).and_then(|f| f.provider.clone());
            files.insert(
                path.to_path_buf(),
                FileState {
                    digest: crate::artifact::digest(&bytes),
                    provider,
                },
            );
            drop(files);
            self.announce_rejected(path, e);
        }
        result
    }

    async fn load_bytes(&self, path: &Path, bytes: &[u8]) -> Result<Arc<Provider>, LoadError> {
        // The smoke instantiation calls no export, so it needs no settings: the operator's
        // (and the endpoint variable's) are applied once, at the swap.
        let compiled =
            Provider::from_bytes(&self.sandbox, path, bytes, ProviderSettings::default()).await?;
        let name = compiled.info().metadata.name.clone();
        let (provider, replaced) = self.update(|state| {
            // The settings current now, not those of when compiling started.
            let current = state.settings.get(&name).cloned().unwrap_or_default();
            let provider = Arc::new(
                compiled.with_settings(with_endpoint_env(&compiled.info().metadata, current)),
            );
            if let Some(other) = state.providers.get(&name).filter(|p| p.path() != path) {
                tracing::warn!(provider = %name, "{} replaces the same provider from {}", path.display(), other.path().display());
            }
            let replaced = state
                .providers
                .insert(name.clone(), provider.clone())
                .map(|old| old.version().to_string());
            (provider, replaced)
        });
        self.files.lock().expect("files lock").insert(
            path.to_path_buf(),
            FileState {
                digest: provider.info().digest.clone(),
                provider: Some(name.clone()),
            },
        );
        self.announce_loaded(&name, &provider, path, replaced);
        Ok(provider)
    }

    /// Log a swap and tell the controller (machines waiting for `name` can go on) and the
    /// event subscribers.
    fn announce_loaded(
        &self,
        name: &str,
        provider: &Arc<Provider>,
        path: &Path,
        replaced: Option<String>,
    ) {
        tracing::info!(
            provider = %name, version = provider.version(), digest = %provider.info().digest,
            cache = ?provider.load_stats.cache, elapsed = ?provider.load_stats.elapsed,
            "provider loaded{}", replaced.as_ref().map(|v| format!(" (replaces version {v})")).unwrap_or_default()
        );
        let _ = self.loaded.send(ProviderLoaded {
            name: name.to_string(),
        });
        let _ = self.events.send(RegistryEvent::Loaded {
            name: name.to_string(),
            version: provider.version().to_string(),
            digest: provider.info().digest.clone(),
            path: path.to_path_buf(),
            replaced,
            elapsed: provider.load_stats.elapsed,
        });
    }

    /// Log a rejected artifact and tell the event subscribers (the previous version, if any,
    /// keeps serving).
    fn announce_rejected(&self, path: &Path, e: &LoadError) {
        tracing::warn!(path = %path.display(), "provider rejected, the previous version (if any) keeps serving: {e}");
        let _ = self.events.send(RegistryEvent::Rejected {
            path: path.to_path_buf(),
            error: e.to_string(),
        });
    }

    /// Bring the registry in line with a directory: load new and changed `.wasm` files, unload
    /// providers whose file is gone. Returns the errors of rejected files.
    pub async fn sync_dir(&self, dir: &Path) -> Vec<LoadError> {
        let _scan = self.scan_lock.lock().await;
        let mut present = Vec::new();
        let mut errors = Vec::new();
        match std::fs::read_dir(dir) {
            Ok(entries) => {
                for entry in entries.flatten() {
                    let path = entry.path();
                    if path.extension().is_some_and(|e| e == "wasm") && path.is_file() {
                        present.push(path);
                    }
                }
            }
            Err(e) => tracing::warn!(dir = %dir.display(), "cannot read providers directory: {e}"),
        }
        present.sort();
        for path in &present {
            let known = self.files.lock().expect("files lock").get(path).cloned();
            if let Some(known) = known {
                // Unchanged content (same digest) needs no reload.
                match std::fs::read(path) {
                    Ok(bytes) if crate::artifact::digest(&bytes) == known.digest => continue,
                    _ => {}
                }
            }
            if let Err(e) = self.load_file(path).await {
                errors.push(e);
            }
        }
        let gone: Vec<(PathBuf, FileState)> = self
            .files
            .lock()
            .expect("files lock")
            .iter()
            .filter(|(p, _)| p.starts_with(dir) && !present.contains(p))
            .map(|(p, l)| (p.clone(), l.clone()))
            .collect();
        for (path, state) in gone {
            self.files.lock().expect("files lock").remove(&path);
            let Some(name) = state.provider else { continue };
            let removed = self.update(|state| {
                let ours = state.providers.get(&name).is_some_and(|p| p.path() == path);
                ours && state.providers.remove(&name).is_some()
            });
            if removed {
                tracing::info!(provider = %name, path = %path.display(), "provider unloaded: file removed");
                let _ = self.events.send(RegistryEvent::Unloaded { name, path });
            }
        }
        errors
    }

    /// Load a directory now and keep watching it: every change triggers a rescan (debounced),
    /// and a periodic rescan catches anything the file watcher missed. The task ends when the
    /// registry is dropped.
    pub async fn watch_dir(
        self: &Arc<Self>,
        dir: PathBuf,
        rescan_every: Duration,
    ) -> Result<tokio::task::JoinHandle<()>, notify::Error> {
        for e in self.sync_dir(&dir).await {
            tracing::warn!("{e}");
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok() {
                    let _ = tx.send(());
                }
            })?;
        watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
        let weak = Arc::downgrade(self);
        Ok(tokio::spawn(async move {
            let _watcher = watcher; // lives as long as the task
            loop {
                let changed = tokio::time::timeout(rescan_every, rx.recv()).await;
                if matches!(changed, Ok(None)) {
                    break;
                }
                // Debounce: a copy in progress fires many events; wait until it settles.
                tokio::time::sleep(Duration::from_millis(30)).await;
                while rx.try_recv().is_ok() {}
                let Some(registry) = weak.upgrade() else {
                    break;
                };
                registry.sync_dir(&dir).await;
            }
        }))
    }
}

impl ProviderLookup for Registry {
    fn get(&self, name: &str) -> Option<Arc<dyn MachineDriver>> {
        Registry::get(self, name).map(|p| p as Arc<dyn MachineDriver>)
    }

    fn served_names(&self) -> Vec<String> {
        Registry::served_names(self)
    }

    fn not_ready(&self, name: &str) -> Option<String> {
        Registry::not_ready(self, name)
    }

    fn subscribe_loaded(&self) -> broadcast::Receiver<ProviderLoaded> {
        self.loaded.subscribe()
    }

    fn rate_buckets(&self) -> Vec<mcm_driver::RateBucketStats> {
        self.sandbox.rate_buckets()
    }
}

/// The endpoint variable a provider declares (`endpointEnv`, e.g. `AWS_ENDPOINT_URL_EC2`), read
/// from the controller's environment: when set, it becomes the provider config's `endpoint`
/// (unless the operator's config already names one) and its host:port joins the allowlist. The
/// guest still sees no environment; only the value, as config.
fn with_endpoint_env(meta: &crate::Metadata, settings: ProviderSettings) -> ProviderSettings {
    let Some(var) = &meta.endpoint_env else {
        return settings;
    };
    let Some(value) = std::env::var(var).ok().filter(|v| !v.trim().is_empty()) else {
        return settings;
    };
    match endpoint_settings(var, value.trim(), settings.clone()) {
        Ok(updated) => {
            tracing::info!(provider = %meta.name, variable = %var, endpoint = %value.trim(), "provider endpoint from the environment");
            updated
        }
        Err(e) => {
            tracing::warn!(provider = %meta.name, variable = %var, "ignoring the endpoint variable: {e}");
            settings
        }
    }
}

/// Why the endpoint variable is not used.
#[derive(Debug, thiserror::Error)]
enum EndpointError {
    #[error("{var}={value:?} is not a URL: {reason}")]
    NotAUrl {
        var: String,
        value: String,
        reason: String,
    },
    #[error("{var}={value:?} has no {missing}")]
    Incomplete {
        var: String,
        value: String,
        missing: &'static str,
    },
    #[error("provider config is not a JSON object: {0}")]
    Config(#[source] serde_json::Error),
    #[error(transparent)]
    Rule(#[from] crate::capability::egress::RuleError),
}

/// Pure part of [`with_endpoint_env`].
fn endpoint_settings(
    var: &str,
    endpoint: &str,
    mut settings: ProviderSettings,
) -> Result<ProviderSettings, EndpointError> {
    let incomplete = |missing| EndpointError::Incomplete {
        var: var.to_string(),
        value: endpoint.to_string(),
        missing,
    };
    let url: reqwest::Url = endpoint.parse().map_err(|e| EndpointError::NotAUrl {
        var: var.to_string(),
        value: endpoint.to_string(),
        reason: format!("{e}"),
    })?;
    let host = url.host_str().ok_or_else(|| incomplete("host"))?;
    let port = url
        .port_or_known_default()
        .ok_or_else(|| incomplete("port"))?;
    let mut config: serde_json::Map<String, serde_json::Value> = match settings.config.as_deref() {
        Some(text) => serde_json::from_str(text).map_err(EndpointError::Config)?,
        None => serde_json::Map::new(),
    };
    if config.contains_key("endpoint") {
        return Ok(settings); // the operator's own config wins
    }
    config.insert("endpoint".into(), endpoint.trim_end_matches('/').into());
    settings.config = Some(serde_json::Value::Object(config).to_string());
    let mut rules: Vec<String> = settings.egress.rules().map(|r| r.to_string()).collect();
    rules.push(format!("{host}:{port}"));
    settings.egress = crate::EgressPolicy::parse(&rules)?;
    Ok(settings)
}

#[cfg(test)]
mod endpoint_tests {
    use super::*;

    #[test]
    fn the_endpoint_variable_sets_config_and_allowlist() {
        let s = endpoint_settings(
            "AWS_ENDPOINT_URL_EC2",
            "http://127.0.0.1:5000/",
            ProviderSettings::default(),
        )
        .unwrap();
        assert_eq!(
            s.config.as_deref(),
            Some(r#"{"endpoint":"http://127.0.0.1:5000"}"#)
        );
        assert!(
            s.egress
                .check(&"http://127.0.0.1:5000/x".parse().unwrap())
                .is_ok()
        );
        assert!(
            s.egress
                .check(&"http://127.0.0.1:5001/x".parse().unwrap())
                .is_err()
        );
    }

    #[test]
    fn the_operators_config_wins() {
        let given = ProviderSettings {
            config: Some(r#"{"endpoint":"http://127.0.0.1:7000"}"#.into()),
            ..Default::default()
        };
        let s = endpoint_settings("X", "http://127.0.0.1:5000", given.clone()).unwrap();
        assert_eq!(s.config, given.config);
        assert!(endpoint_settings("X", "not a url", ProviderSettings::default()).is_err());
    }
}
