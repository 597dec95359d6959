//! The controller's read cache of MachineClasses and Secrets (MCM's class and secret
//! informers): reflector stores filled by watches of `--namespace`, read first; a miss (an
//! object created a moment ago, a Secret in another namespace, a cache not started, as in
//! unit tests) falls back to one GET, so a cache that lags never turns into "not found".
//!
//! The stores are made with the [`crate::Context`]; [`Cache::run`] (called by
//! [`crate::run`]) takes their writers, starts the watches and returns once both have
//! listed everything, so the first reconcile already reads from the cache.

use std::sync::Mutex;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client};
use machine_api::MachineClass;

/// How long [`Cache::run`] waits for the first full lists.
const READY_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Reflector stores of the classes and secrets of one namespace.
pub struct Cache {
    namespace: String,
    classes: Store<MachineClass>,
    secrets: Store<Secret>,
    writers: Mutex<Option<(Writer<MachineClass>, Writer<Secret>)>>,
}

impl Cache {
    pub fn new(namespace: &str) -> Cache {
        let (classes, class_writer) = reflector::store();
        let (secrets, secret_writer) = reflector::store();
        Cache {
            namespace: namespace.to_string(),
            classes,
            secrets,
            writers: Mutex::new(Some((class_writer, secret_writer))),
        }
    }

    /// The class `name` of the namespace: from the store, else from the API server.
    pub async fn class(
        &self,
        client: &Client,
        name: &str,
    ) -> Result<Option<MachineClass>, kube::Error> {
        read_through(&self.classes, client, &self.namespace, name).await
    }

    /// The Secret `namespace/name`: from the store, else from the API server.
    pub async fn secret(
        &self,
        client: &Client,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Secret>, kube::Error> {
        read_through(&self.secrets, client, namespace, name).await
    }

    /// Put objects into the stores by hand (what a watch event does): for tests that run a
    /// reconcile without watches.
    pub fn seed(&self, classes: Vec<MachineClass>, secrets: Vec<Secret>) {
        let mut writers = self.writers.lock().expect("cache writers");
        let Some((class_writer, secret_writer)) = writers.as_mut() else {
            panic!("Cache::seed after Cache::run");
        };
        for class in classes {
            class_writer.apply_watcher_event(&watcher::Event::Apply(class));
        }
        for secret in secrets {
            secret_writer.apply_watcher_event(&watcher::Event::Apply(secret));
        }
    }

    /// Start the watches (once) and wait until both stores hold a full list. The returned
    /// task keeps them current until it is dropped or aborted.
    pub async fn run(&self, client: &Client) -> Option<tokio::task::JoinHandle<()>> {
        let (class_writer, secret_writer) = self.writers.lock().expect("cache writers").take()?;
        let classes = reflect(client, &self.namespace, class_writer);
        let secrets = reflect(client, &self.namespace, secret_writer);
        let task = tokio::spawn(async move {
            futures::join!(classes, secrets);
        });
        let ready = async {
            let (a, b) = futures::join!(
                self.classes.wait_until_ready(),
                self.secrets.wait_until_ready()
            );
            a.is_ok() && b.is_ok()
        };
        // A list that keeps failing (RBAC, an API server away) must not keep the controller
        // from starting: after the wait it reads through to the API server until the watches
        // catch up.
        match tokio::time::timeout(READY_WAIT, ready).await {
            Ok(true) => tracing::debug!("class/secret cache ready"),
            _ => tracing::warn!(
                "the MachineClass/Secret cache has no full list after {READY_WAIT:?}; reading from the API server until it has"
            ),
        }
        Some(task)
    }
}

/// A namespaced object: from `store`, else one GET.
async fn read_through<K>(
    store: &Store<K>,
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Option<K>, kube::Error>
where
    K: kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    if let Some(object) = store.get(&ObjectRef::new(name).within(namespace)) {
        return Ok(Some((*object).clone()));
    }
    Api::<K>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
}

/// Keep `writer`'s store current with the objects of `namespace` (retrying with backoff).
fn reflect<K>(
    client: &Client,
    namespace: &str,
    writer: Writer<K>,
) -> impl Future<Output = ()> + Send + use<K>
where
    K: kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    watcher(
        Api::<K>::namespaced(client.clone(), namespace),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(writer)
    .for_each(|_| futures::future::ready(()))
}
