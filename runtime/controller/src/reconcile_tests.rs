//! Whole reconciles of create and delete against the in-memory API server and the scripted
//! driver of [`crate::fixtures`]: what is called, what is written, what is requeued. No
//! cluster, no sandbox; milliseconds each.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt as _;
use kube::api::ObjectMeta;
use kube::runtime::controller::Action;
use machine_api::{
    MC_SECRET_FINALIZER, MCM_FINALIZER, Machine, MachineClass, MachinePhase as Phase, MachineSpec,
    MachineState as State,
};
use mcm_driver::{Code, CreateMachineResponse, DriverError, Operation, Response};

use crate::fixtures::{FakeApi, FakeDriver, FakeLookup, machine_api_path, secret_path};
use crate::{Config, Context, delete, reconcile};

struct World {
    api: FakeApi,
    driver: Arc<FakeDriver>,
    ctx: Arc<Context>,
}

fn machine_path() -> String {
    machine_api_path("machines", "m1")
}

fn secret(user_data: Option<&str>) -> Secret {
    let mut data = std::collections::BTreeMap::new();
    data.insert("region".to_string(), ByteString(b"eu-west-1".to_vec()));
    if let Some(u) = user_data {
        data.insert("userData".to_string(), ByteString(u.as_bytes().to_vec()));
    }
    Secret {
        metadata: ObjectMeta {
            name: Some("s1".into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    }
}

fn class() -> MachineClass {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "machine.sapcloud.io/v1alpha1",
        "kind": "MachineClass",
        "metadata": {"name": "c1", "namespace": "default"},
        "provider": "fake",
        "providerSpec": {"ami": "ami-1"},
        "secretRef": {"name": "s1", "namespace": "default"},
    }))
    .unwrap()
}

fn machine(finalizer: bool) -> Machine {
    let spec: MachineSpec = serde_json::from_value(serde_json::json!({
        "class": {"kind": "MachineClass", "name": "c1"}
    }))
    .unwrap();
    let mut m = Machine::new("m1", spec);
    m.metadata.namespace = Some("default".into());
    m.metadata.uid = Some("uid-1".into());
    m.metadata.creation_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
    if finalizer {
        m.metadata.finalizers = Some(vec![MCM_FINALIZER.into()]);
    }
    m
}

/// The API server holding `machine`, class c1 and secret s1 (also in the cache, as the watches
/// would have them), and a driver named "fake".
fn world(machine: &Machine, user_data: Option<&str>) -> World {
    world_with(machine, user_data, Config::default())
}

fn world_with(machine: &Machine, user_data: Option<&str>, config: Config) -> World {
    let api = FakeApi::default();
    api.put(&machine_path(), machine);
    api.put(&machine_api_path("machineclasses", "c1"), &class());
    api.put(&secret_path("s1"), &secret(user_data));
    let driver = Arc::new(FakeDriver::default());
    let ctx = Context::new(
        api.client(),
        None,
        Arc::new(FakeLookup::new("fake", driver.clone())),
        config,
    );
    ctx.cache.seed(
        vec![api.get(&machine_api_path("machineclasses", "c1")).unwrap()],
        vec![api.get(&secret_path("s1")).unwrap()],
    );
    World { api, driver, ctx }
}

impl World {
    fn stored(&self) -> Machine {
        self.api.get(&machine_path()).unwrap()
    }

    async fn reconcile(&self) -> Action {
        reconcile(Arc::new(self.stored()), self.ctx.clone())
            .await
            .unwrap()
    }
}

fn created(provider_id: &str) -> Result<Response, DriverError> {
    Ok(Response::CreateMachine(CreateMachineResponse {
        provider_id: provider_id.into(),
        node_name: "ip-10-0-0-1".into(),
        last_known_state: "state-1".into(),
        addresses: vec![],
    }))
}

fn not_found() -> Result<Response, DriverError> {
    Err(DriverError::new(Code::NotFound, "no such VM"))
}

#[tokio::test]
async fn a_new_machine_gets_its_finalizers_then_one_vm_and_goes_available() {
    let w = world(&machine(false), Some("#!/bin/sh"));
    // First pass: the finalizers, no driver call, requeue at once.
    assert_eq!(
        w.reconcile().await,
        Action::requeue(Duration::from_millis(200))
    );
    assert!(w.driver.calls().is_empty());
    assert_eq!(
        w.stored().metadata.finalizers,
        Some(vec![MCM_FINALIZER.into()])
    );
    let class: MachineClass = w
        .api
        .get(&machine_api_path("machineclasses", "c1"))
        .unwrap();
    assert_eq!(class.metadata.finalizers, Some(vec![MCM_FINALIZER.into()]));
    let secret: Secret = w.api.get(&secret_path("s1")).unwrap();
    assert_eq!(
        secret.metadata.finalizers,
        Some(vec![MC_SECRET_FINALIZER.into()])
    );

    // Second pass: status (none), the class validated (not implemented: valid), create,
    // initialize (not implemented), status written.
    w.driver.script(Operation::GetMachineStatus, not_found());
    w.driver
        .script(Operation::CreateMachine, created("fake:///i-1"));
    assert_eq!(w.reconcile().await, Action::requeue(Duration::from_secs(5)));
    assert_eq!(
        w.driver.operations(),
        [
            Operation::GetMachineStatus,
            Operation::ValidateMachineClass,
            Operation::CreateMachine,
            Operation::InitializeMachine
        ]
    );
    let m = w.stored();
    assert_eq!(m.spec.provider_id, "fake:///i-1");
    assert_eq!(
        m.annotations()
            .get(crate::create::PRIORITY_ANNOTATION)
            .map(String::as_str),
        Some("3")
    );
    let st = m.status.unwrap();
    assert_eq!(st.current_status.phase, Some(Phase::Available));
    assert_eq!(
        st.last_operation.description,
        "Created machine on cloud provider"
    );
    assert_eq!(st.last_operation.state, Some(State::Successful));
    assert_eq!(st.last_known_state, "state-1");
    assert_eq!(
        st.addresses
            .iter()
            .map(|a| (a.type_.as_str(), a.address.as_str()))
            .collect::<Vec<_>>(),
        [("Hostname", "ip-10-0-0-1")]
    );
    // Events for the driver outcomes were published.
    let events = w
        .api
        .writes_to("/apis/events.k8s.io/v1/namespaces/default/events");
    let reasons: Vec<&str> = events
        .iter()
        .filter_map(|e| e.body["reason"].as_str())
        .collect();
    assert!(reasons.contains(&"CreateMachineSucceeded"), "{reasons:?}");
    assert!(reasons.contains(&"GetMachineStatusNotFound"), "{reasons:?}");

    // Third pass: the VM is found; no second create, no status rewrite (phase is set).
    w.driver.script(
        Operation::GetMachineStatus,
        Ok(Response::GetMachineStatus(
            mcm_driver::GetMachineStatusResponse {
                provider_id: "fake:///i-1".into(),
                node_name: "ip-10-0-0-1".into(),
                addresses: vec![],
            },
        )),
    );
    let status_writes = w.api.writes_to(&format!("{}/status", machine_path())).len();
    w.reconcile().await;
    assert_eq!(w.driver.count(Operation::CreateMachine), 1);
    assert_eq!(
        w.api.writes_to(&format!("{}/status", machine_path())).len(),
        status_writes
    );
}

#[tokio::test]
async fn a_failed_create_is_crash_loop_back_off_with_the_code_and_its_retry_period() {
    let w = world(&machine(true), Some("#!/bin/sh"));
    w.driver.script(Operation::GetMachineStatus, not_found());
    w.driver.script(
        Operation::CreateMachine,
        Err(DriverError::new(Code::ResourceExhausted, "quota")),
    );
    assert_eq!(
        w.reconcile().await,
        Action::requeue(w.ctx.config.resource_exhausted_retry)
    );
    let m = w.stored();
    assert_eq!(m.spec.provider_id, "", "no providerID without a VM");
    let st = m.status.unwrap();
    assert_eq!(st.current_status.phase, Some(Phase::CrashLoopBackOff));
    assert_eq!(st.last_operation.error_code, "ResourceExhausted");
    assert_eq!(st.last_operation.state, Some(State::Failed));
    assert!(
        st.last_operation
            .description
            .starts_with("Cloud provider message - "),
        "{}",
        st.last_operation.description
    );
}

#[tokio::test]
async fn a_secret_without_user_data_calls_nothing_and_says_so() {
    let w = world(&machine(true), None);
    assert_eq!(w.reconcile().await, Action::requeue(Duration::from_secs(5)));
    assert!(w.driver.calls().is_empty());
    assert!(w.stored().status.is_none(), "no status written");
    let events = w
        .api
        .writes_to("/apis/events.k8s.io/v1/namespaces/default/events");
    assert!(
        events
            .iter()
            .any(|e| e.body["reason"] == "MissingUserData" && e.body["type"] == "Warning"),
        "{events:?}"
    );
}

/// A Running machine marked for deletion, without a target cluster.
fn deleting() -> Machine {
    let mut m = machine(true);
    m.spec.provider_id = "fake:///i-1".into();
    m.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
    m.status = Some(machine_api::MachineStatus {
        current_status: crate::status::current(Phase::Running, None),
        ..Default::default()
    });
    m
}

#[tokio::test]
async fn deletion_runs_every_step_then_removes_the_finalizer() {
    let w = world(&deleting(), Some("#!/bin/sh"));
    w.driver.script(
        Operation::DeleteMachine,
        Ok(Response::DeleteMachine(Default::default())),
    );
    assert_eq!(w.reconcile().await, Action::await_change());
    assert_eq!(w.driver.operations(), [Operation::DeleteMachine]);
    let m = w.stored();
    assert_eq!(m.metadata.finalizers, Some(vec![]), "finalizer removed");
    // ...by a JSON patch that tests it is still there (status writes came in between).
    let removal = w.api.writes_to(&machine_path());
    let removal = removal
        .iter()
        .find(|w| w.body.is_array())
        .expect("a JSON patch");
    assert_eq!(removal.method, http::Method::PATCH);
    assert_eq!(removal.body[0]["op"], "test");
    let st = m.status.unwrap();
    assert_eq!(st.current_status.phase, Some(Phase::Terminating));
    assert!(
        st.last_operation
            .description
            .contains(delete::INITIATE_FINALIZER_REMOVAL),
        "{}",
        st.last_operation.description
    );
}

#[tokio::test]
async fn paced_deletion_runs_one_step_per_reconcile_as_gardeners_controller() {
    let config = Config {
        deletion_step_pause: Some(Duration::from_secs(5)),
        ..Config::default()
    };
    let w = world_with(&deleting(), Some("#!/bin/sh"), config);
    w.driver.script(
        Operation::DeleteMachine,
        Ok(Response::DeleteMachine(Default::default())),
    );
    let mut descriptions = Vec::new();
    let mut passes = 0;
    loop {
        passes += 1;
        assert!(passes < 10, "deletion did not finish: {descriptions:?}");
        let action = w.reconcile().await;
        if action == Action::await_change() {
            break;
        }
        assert_eq!(action, Action::requeue(Duration::from_secs(5)));
        descriptions.push(w.stored().status.unwrap().last_operation.description);
    }
    assert!(passes >= 3, "one step per pass: {descriptions:?}");
    let mut unique = descriptions.clone();
    unique.dedup();
    assert_eq!(unique, descriptions, "every pass is a new step");
    assert_eq!(w.driver.count(Operation::DeleteMachine), 1);
    assert_eq!(w.stored().metadata.finalizers, Some(vec![]));
}

#[tokio::test]
async fn a_failed_delete_keeps_the_finalizer_and_retries() {
    let w = world(&deleting(), Some("#!/bin/sh"));
    w.driver.script(
        Operation::DeleteMachine,
        Err(DriverError::new(Code::Unavailable, "cloud down")),
    );
    assert_eq!(w.reconcile().await, Action::requeue(Duration::from_secs(5)));
    let m = w.stored();
    assert_eq!(m.metadata.finalizers, Some(vec![MCM_FINALIZER.into()]));
    let st = m.status.unwrap();
    assert_eq!(st.last_operation.state, Some(State::Failed));
    assert!(
        st.last_operation.description.contains("cloud down"),
        "{}",
        st.last_operation.description
    );
    // The next pass picks up at VM deletion and finishes.
    w.driver.script(
        Operation::DeleteMachine,
        Ok(Response::DeleteMachine(Default::default())),
    );
    assert_eq!(w.reconcile().await, Action::await_change());
    assert_eq!(
        w.driver.operations(),
        [Operation::DeleteMachine, Operation::DeleteMachine]
    );
    assert_eq!(w.stored().metadata.finalizers, Some(vec![]));
}

#[tokio::test]
async fn a_machine_of_a_provider_not_served_here_is_not_touched() {
    let mut m = machine(false);
    m.spec.class.name = "other".into();
    let w = world(&m, Some("#!/bin/sh"));
    let mut other = class();
    other.metadata.name = Some("other".into());
    other.spec.provider = "nobody".into();
    w.api
        .put(&machine_api_path("machineclasses", "other"), &other);
    assert_eq!(
        w.reconcile().await,
        Action::requeue(Duration::from_secs(600))
    );
    assert!(w.driver.calls().is_empty());
    assert!(
        w.api.writes_to(&machine_path()).is_empty(),
        "no finalizer on a machine that is not ours"
    );
}

/// A class naming a `Provider` resource that has no version loaded: the machine says why in
/// lastOperation (code Unavailable, phase untouched), gets one Warning event, and no driver is
/// called; an unchanged reason is not written again.
#[tokio::test]
async fn a_machine_of_a_provider_not_ready_says_why_and_waits() {
    let mut m = machine(false);
    m.spec.class.name = "pending".into();
    let api = FakeApi::default();
    api.put(&machine_path(), &m);
    let mut pending = class();
    pending.metadata.name = Some("pending".into());
    pending.spec.provider = "AWS".into();
    api.put(&machine_api_path("machineclasses", "pending"), &pending);
    let driver = Arc::new(FakeDriver::default());
    let lookup = FakeLookup::new("fake", driver.clone()).with_not_ready(
        "AWS",
        "Provider aws has no version loaded yet (registry unreachable)",
    );
    let ctx = Context::new(api.client(), None, Arc::new(lookup), Config::default());
    let w = World { api, driver, ctx };
    assert_eq!(
        w.reconcile().await,
        Action::requeue(Duration::from_secs(600))
    );
    assert!(w.driver.calls().is_empty());
    let st = w.stored().status.expect("status written");
    assert_eq!(st.last_operation.error_code, "Unavailable");
    assert_eq!(
        st.last_operation.state,
        Some(machine_api::MachineState::Processing)
    );
    assert!(
        st.last_operation
            .description
            .contains("registry unreachable")
            && st.last_operation.description.contains("\"AWS\""),
        "{}",
        st.last_operation.description
    );
    assert!(st.current_status.phase.is_none(), "phase left alone");
    let events = || {
        w.api
            .writes_to("/apis/events.k8s.io/v1/namespaces/default/events")
            .into_iter()
            .filter(|e| e.body["reason"] == "ProviderNotReady" && e.body["type"] == "Warning")
            .count()
    };
    assert_eq!(events(), 1);
    let writes = w.api.writes_to(&format!("{}/status", machine_path())).len();
    assert_eq!(writes, 1);
    w.reconcile().await;
    assert_eq!(
        w.api.writes_to(&format!("{}/status", machine_path())).len(),
        writes
    );
    assert_eq!(events(), 1);
}

#[tokio::test]
async fn an_invalid_class_fails_creation_with_the_providers_text_and_never_calls_create() {
    let w = world(&machine(true), Some("#!/bin/sh"));
    w.driver.script(Operation::GetMachineStatus, not_found());
    w.driver.script(
        Operation::ValidateMachineClass,
        Err(DriverError::new(
            Code::InvalidArgument,
            "providerSpec.image must not be empty",
        )),
    );
    w.reconcile().await;
    assert_eq!(
        w.driver.operations(),
        [Operation::GetMachineStatus, Operation::ValidateMachineClass]
    );
    let st = w.stored().status.unwrap();
    assert_eq!(st.current_status.phase, Some(Phase::CrashLoopBackOff));
    assert_eq!(st.last_operation.error_code, "InvalidArgument");
    assert_eq!(st.last_operation.state, Some(State::Failed));
    let description = &st.last_operation.description;
    assert_eq!(
        description,
        "Cloud provider message - machine codes error: code = [InvalidArgument] message = [providerSpec.image must not be empty]"
    );
    let events = w
        .api
        .writes_to("/apis/events.k8s.io/v1/namespaces/default/events");
    let rejected = events
        .iter()
        .find(|e| e.body["reason"] == "ValidateMachineClassInvalidArgument")
        .expect("a ValidateMachineClassInvalidArgument event");
    assert!(
        rejected.body["note"]
            .as_str()
            .unwrap()
            .contains("providerSpec.image must not be empty"),
        "{:?}",
        rejected.body
    );

    // The verdict is cached for this class version: the next pass does not ask again and
    // still makes no VM.
    w.driver.script(Operation::GetMachineStatus, not_found());
    w.reconcile().await;
    let ops = w.driver.operations();
    assert_eq!(
        w.driver.count(Operation::ValidateMachineClass),
        1,
        "{ops:?}"
    );
    assert!(!ops.contains(&Operation::CreateMachine), "{ops:?}");

    // A changed class (new resourceVersion) is asked again; valid now, the VM is made.
    let mut fixed: MachineClass = w
        .api
        .get(&machine_api_path("machineclasses", "c1"))
        .unwrap();
    fixed.metadata.resource_version = Some("fixed-1".into());
    w.ctx
        .cache
        .seed(vec![fixed], vec![w.api.get(&secret_path("s1")).unwrap()]);
    w.driver.script(Operation::GetMachineStatus, not_found());
    w.driver.script(
        Operation::ValidateMachineClass,
        Ok(Response::ValidateMachineClass),
    );
    w.driver
        .script(Operation::CreateMachine, created("fake:///i-1"));
    w.reconcile().await;
    let ops = w.driver.operations();
    assert_eq!(
        w.driver.count(Operation::ValidateMachineClass),
        2,
        "{ops:?}"
    );
    assert_eq!(w.stored().spec.provider_id, "fake:///i-1");
}

/// A CrashLoopBackOff machine whose VM exists and whose Node is Ready (a create whose answer
/// was lost, then found): the health check sets it Running and the pass ends there. Before,
/// the pass went on into the creation flow with the object read before that write, saw
/// CrashLoopBackOff and set the machine back to Pending; status writes trigger no reconcile,
/// so it stayed Pending with a Ready Node (found by the chaos run).
#[tokio::test]
async fn a_crash_looping_machine_found_healthy_goes_running_without_a_second_creation_flow() {
    let mut m = machine(true);
    m.spec.provider_id = "fake:///i-1".into();
    m.labels_mut().insert("node".into(), "ip-10-0-0-1".into());
    m.status = Some(
        serde_json::from_value(serde_json::json!({
            "currentStatus": {"phase": "CrashLoopBackOff"},
            "lastOperation": {
                "description": "Cloud provider message - throttled",
                "state": "Failed",
                "type": "Create",
            },
        }))
        .unwrap(),
    );
    let api = FakeApi::default();
    api.put(&machine_path(), &m);
    api.put(&machine_api_path("machineclasses", "c1"), &class());
    api.put(&secret_path("s1"), &secret(Some("#!/bin/sh")));
    let node: k8s_openapi::api::core::v1::Node = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "ip-10-0-0-1", "labels": {"node.gardener.cloud/machine-name": "m1"}},
        "spec": {"providerID": "fake:///i-1"},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }))
    .unwrap();
    api.put("/api/v1/nodes/ip-10-0-0-1", &node);
    let driver = Arc::new(FakeDriver::default());
    let ctx = Context::new(
        api.client(),
        Some(api.client()),
        Arc::new(FakeLookup::new("fake", driver.clone())),
        Config::default(),
    );
    ctx.cache.seed(
        vec![api.get(&machine_api_path("machineclasses", "c1")).unwrap()],
        vec![api.get(&secret_path("s1")).unwrap()],
    );
    let w = World { api, driver, ctx };
    let action = w.reconcile().await;
    let st = w.stored().status.unwrap();
    assert_eq!(
        st.current_status.phase,
        Some(Phase::Running),
        "{:?}",
        st.last_operation
    );
    assert_eq!(w.driver.count(Operation::CreateMachine), 0);
    assert_eq!(
        w.driver.count(Operation::GetMachineStatus),
        0,
        "no creation flow"
    );
    assert_eq!(
        action,
        Action::requeue(Duration::from_millis(200)),
        "the next pass reads the new status"
    );
}
