//! Test fixtures in the style of controller-rs's `fixtures.rs`: a whole reconcile runs in
//! milliseconds against an in-memory API server behind a real `kube::Client`, with a scripted
//! fake driver in place of the sandbox. These are fakes for unit tests of reconcile decisions;
//! the real-cluster tests (`runtime/cli/tests`) run the same code on kube-apiserver, moto and
//! real wasm providers.
//!
//! The API server fake is deliberately small: objects by path; GET, POST, DELETE; PATCH as a
//! merge patch, a JSON patch, or an apply. An apply of `/status` replaces the status (the
//! controller always applies the whole status, and forced apply by one field manager takes
//! every field it sends). A merge patch carrying `metadata.resourceVersion` conflicts (409)
//! when it is stale, as on the real server. Every write is recorded.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};

use mcm_driver::{Code, DriverError, MachineDriver, Operation, ProviderLookup};

/// A Machine `name` with `provider_id` and, if given, that phase (for unit tests of pure
/// decisions on machines).
pub fn machine_in(
    name: &str,
    provider_id: &str,
    phase: Option<machine_api::MachinePhase>,
) -> machine_api::Machine {
    let mut m = machine_api::Machine::new(name, Default::default());
    m.spec.provider_id = provider_id.into();
    if let Some(p) = phase {
        m.status = Some(machine_api::MachineStatus {
            current_status: machine_api::CurrentStatus {
                phase: Some(p),
                ..Default::default()
            },
            ..Default::default()
        });
    }
    m
}

/// The path of a namespaced object of the machine API.
pub fn machine_api_path(resource: &str, name: &str) -> String {
    format!("/apis/machine.sapcloud.io/v1alpha1/namespaces/default/{resource}/{name}")
}

/// The path of a Secret in `default`.
pub fn secret_path(name: &str) -> String {
    format!("/api/v1/namespaces/default/secrets/{name}")
}

/// One write the controller made.
#[derive(Clone, Debug)]
pub struct Write {
    pub method: Method,
    pub path: String,
    pub body: Value,
}

#[derive(Default)]
struct ApiState {
    objects: BTreeMap<String, Value>,
    writes: Vec<Write>,
    resource_version: u64,
}

/// The in-memory API server.
#[derive(Clone, Default)]
pub struct FakeApi {
    state: Arc<Mutex<ApiState>>,
}

impl FakeApi {
    /// Store `object` at `path`.
    pub fn put(&self, path: &str, object: &impl serde::Serialize) {
        let mut state = self.state.lock().unwrap();
        state.resource_version += 1;
        let mut value = serde_json::to_value(object).unwrap();
        value["metadata"]["resourceVersion"] = json!(state.resource_version.to_string());
        state.objects.insert(path.to_string(), value);
    }

    /// The object at `path`, typed.
    pub fn get<K: serde::de::DeserializeOwned>(&self, path: &str) -> Option<K> {
        let state = self.state.lock().unwrap();
        state
            .objects
            .get(path)
            .map(|v| serde_json::from_value(v.clone()).unwrap())
    }

    /// Every write so far.
    pub fn writes(&self) -> Vec<Write> {
        self.state.lock().unwrap().writes.clone()
    }

    /// The writes under `prefix` (method and path).
    pub fn writes_to(&self, prefix: &str) -> Vec<Write> {
        self.writes()
            .into_iter()
            .filter(|w| w.path.starts_with(prefix))
            .collect()
    }

    /// A client whose requests this fake answers.
    pub fn client(&self) -> kube::Client {
        let api = self.clone();
        let service = tower::service_fn(move |request: Request<Body>| {
            let api = api.clone();
            async move { Ok::<_, std::convert::Infallible>(api.serve(request).await) }
        });
        kube::Client::new(service, "default")
    }

    async fn serve(&self, request: Request<Body>) -> Response<Body> {
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.unwrap_or_default();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let path = parts.uri.path().to_string();
        let content_type = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let mut state = self.state.lock().unwrap();
        if parts.method != Method::GET {
            state.writes.push(Write {
                method: parts.method.clone(),
                path: path.clone(),
                body: body.clone(),
            });
        }
        let (object_path, subresource) = match path.strip_suffix("/status") {
            Some(p) => (p.to_string(), true),
            None => (path.clone(), false),
        };
        match parts.method {
            Method::GET => match state.objects.get(&object_path) {
                Some(v) => answer(StatusCode::OK, v),
                None => status(StatusCode::NOT_FOUND, "NotFound", &path),
            },
            Method::POST => {
                let name = body["metadata"]["name"]
                    .as_str()
                    .map(String::from)
                    .unwrap_or_else(|| format!("generated-{}", state.writes.len()));
                let key = format!("{path}/{name}");
                if state.objects.contains_key(&key) {
                    return status(StatusCode::CONFLICT, "AlreadyExists", &key);
                }
                state.resource_version += 1;
                let mut created = body;
                created["metadata"]["resourceVersion"] = json!(state.resource_version.to_string());
                state.objects.insert(key, created.clone());
                answer(StatusCode::CREATED, &created)
            }
            Method::DELETE => match state.objects.remove(&object_path) {
                Some(v) => answer(StatusCode::OK, &v),
                None => status(StatusCode::NOT_FOUND, "NotFound", &path),
            },
            Method::PATCH => {
                let Some(current) = state.objects.get(&object_path).cloned() else {
                    return status(StatusCode::NOT_FOUND, "NotFound", &path);
                };
                let mut doc = current.clone();
                if content_type.contains("json-patch") {
                    let patch: json_patch::Patch = match serde_json::from_value(body) {
                        Ok(p) => p,
                        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e),
                    };
                    if let Err(e) = json_patch::patch(&mut doc, &patch) {
                        return status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", &e);
                    }
                } else if content_type.contains("apply-patch") && subresource {
                    doc["status"] = body["status"].clone();
                } else {
                    let wanted = &body["metadata"]["resourceVersion"];
                    if !wanted.is_null() && wanted != &current["metadata"]["resourceVersion"] {
                        return status(StatusCode::CONFLICT, "Conflict", &object_path);
                    }
                    json_patch::merge(&mut doc, &body);
                }
                state.resource_version += 1;
                doc["metadata"]["resourceVersion"] = json!(state.resource_version.to_string());
                state.objects.insert(object_path, doc.clone());
                answer(StatusCode::OK, &doc)
            }
            _ => status(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", &path),
        }
    }
}

fn answer(code: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

fn status(code: StatusCode, reason: &str, what: &dyn std::fmt::Display) -> Response<Body> {
    answer(
        code,
        &json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "reason": reason, "message": format!("{reason}: {what}"), "code": code.as_u16(),
        }),
    )
}

/// A driver that answers from a script, operation by operation, and records its calls. An
/// operation with nothing scripted answers Unimplemented.
#[derive(Default)]
pub struct FakeDriver {
    answers: Mutex<HashMap<Operation, VecDeque<Result<mcm_driver::Response, DriverError>>>>,
    calls: Mutex<Vec<(Operation, String)>>,
}

impl FakeDriver {
    /// Answer the next call of `op` with `result`.
    pub fn script(&self, op: Operation, result: Result<mcm_driver::Response, DriverError>) {
        self.answers
            .lock()
            .unwrap()
            .entry(op)
            .or_default()
            .push_back(result);
    }

    /// The calls so far: (operation, machine).
    pub fn calls(&self) -> Vec<(Operation, String)> {
        self.calls.lock().unwrap().clone()
    }

    /// The operations called so far, in order.
    pub fn operations(&self) -> Vec<Operation> {
        self.calls().into_iter().map(|(op, _)| op).collect()
    }

    /// How often `op` was called so far.
    pub fn count(&self, op: Operation) -> usize {
        self.operations().iter().filter(|o| **o == op).count()
    }
}

#[async_trait::async_trait]
impl MachineDriver for FakeDriver {
    fn name(&self) -> &str {
        "fake"
    }

    fn version(&self) -> &str {
        "0.0.0"
    }

    async fn call(
        &self,
        request: mcm_driver::Request<'_>,
    ) -> Result<mcm_driver::Response, DriverError> {
        let op = request.operation();
        self.calls
            .lock()
            .unwrap()
            .push((op, request.machine_name().to_string()));
        self.answers
            .lock()
            .unwrap()
            .get_mut(&op)
            .and_then(VecDeque::pop_front)
            .unwrap_or_else(|| {
                Err(DriverError::new(
                    Code::Unimplemented,
                    format!("fake: nothing scripted for {op}"),
                ))
            })
    }
}

/// One provider, by name; optionally a claimed name with nothing loaded (a `Provider`
/// resource that is not ready).
pub struct FakeLookup {
    name: String,
    driver: Arc<FakeDriver>,
    not_ready: Option<(String, String)>,
    loaded: tokio::sync::broadcast::Sender<mcm_driver::ProviderLoaded>,
}

impl FakeLookup {
    pub fn new(name: &str, driver: Arc<FakeDriver>) -> FakeLookup {
        FakeLookup {
            name: name.to_string(),
            driver,
            not_ready: None,
            loaded: tokio::sync::broadcast::channel(1).0,
        }
    }

    /// `name` is claimed but not served, for `reason`.
    pub fn with_not_ready(mut self, name: &str, reason: &str) -> FakeLookup {
        self.not_ready = Some((name.to_string(), reason.to_string()));
        self
    }
}

impl ProviderLookup for FakeLookup {
    fn get(&self, name: &str) -> Option<Arc<dyn MachineDriver>> {
        (name == self.name).then(|| self.driver.clone() as Arc<dyn MachineDriver>)
    }

    fn served_names(&self) -> Vec<String> {
        vec![self.name.clone()]
    }

    fn not_ready(&self, name: &str) -> Option<String> {
        self.not_ready
            .as_ref()
            .filter(|(n, _)| n == name)
            .map(|(_, reason)| reason.clone())
    }

    fn subscribe_loaded(&self) -> tokio::sync::broadcast::Receiver<mcm_driver::ProviderLoaded> {
        self.loaded.subscribe()
    }
}
