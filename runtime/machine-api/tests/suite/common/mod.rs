//! Helpers shared by the integration tests: the shared control plane with our CRDs, the
//! examples, and throw-away namespaces.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kube::Resource;
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use serde::de::DeserializeOwned;
use serde_json::Value;
use testenv::ControlPlane;

/// The control plane shared by the tests of this binary, with `kubernetes/crds/` applied.
pub fn control_plane() -> &'static ControlPlane {
    static CRDS: OnceLock<()> = OnceLock::new();
    let cp = testenv::shared();
    CRDS.get_or_init(|| cp.apply_crds().expect("apply kubernetes/crds"));
    cp
}

pub fn examples_dir() -> PathBuf {
    testenv::kubernetes_dir().join("examples")
}

/// An example from `kubernetes/examples/` as JSON, moved into `namespace`.
pub fn example_json(file: &str, namespace: &str) -> serde_json::Value {
    let path = examples_dir().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut value: serde_json::Value =
        serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    value["metadata"]["namespace"] = namespace.into();
    for key in ["secretRef", "credentialsSecretRef"] {
        if value.get(key).is_some() {
            value[key]["namespace"] = namespace.into();
        }
    }
    value
}

/// An example from `kubernetes/examples/` as a typed object, moved into `namespace`.
pub fn example<T: DeserializeOwned>(file: &str, namespace: &str) -> T {
    serde_json::from_value(example_json(file, namespace))
        .unwrap_or_else(|e| panic!("{file} does not deserialize into its Rust type: {e}"))
}

/// A fresh namespace for one test (see `testenv::create_namespace`).
pub async fn namespace(client: &kube::Client, prefix: &str) -> String {
    testenv::create_namespace(client, prefix).await
}

/// Polls `check` every 500 ms until it returns `Some`, or panics after `timeout` with `context()`.
pub async fn eventually<T, F, Fut>(
    timeout: Duration,
    mut check: F,
    context: impl Fn() -> String,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if start.elapsed() > timeout {
            panic!("condition not met within {timeout:?}: {}", context());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Splits `kubectl get` output into rows of whitespace-separated cells.
pub fn table(output: &str) -> Vec<Vec<String>> {
    output
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect()
}

/// Sends `object` (which the Rust types cannot even express) and returns the API server's refusal.
pub async fn refused<K: Resource<DynamicType = ()>>(
    client: &kube::Client,
    ns: &str,
    object: Value,
) -> kube::core::Status {
    let api =
        Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ApiResource::erase::<K>(&()));
    let object: DynamicObject = serde_json::from_value(object).unwrap();
    match api.create(&PostParams::default(), &object).await {
        Ok(created) => panic!("the API server accepted an invalid object: {created:?}"),
        Err(kube::Error::Api(status)) => *status,
        Err(other) => panic!("unexpected error: {other}"),
    }
}
