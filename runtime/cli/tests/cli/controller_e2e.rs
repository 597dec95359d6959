//! The machine controller end to end: a real kube-apiserver + etcd (testenv), a real moto EC2
//! server, the real AWS provider component loaded from a providers directory, and the
//! simulated node join. Everything is checked through the Kubernetes API and moto.

use std::time::{Duration, Instant};

use std::sync::Arc;

use crate::support::*;
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{Node, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::ResourceExt as _;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use machine_api::{
    Machine, MachineClass, MachineOperationType as Op, MachinePhase, MachineState as State,
};
use mcm_controller::{Config, Context};
use mcm_sandbox::{EgressPolicy, ProviderSettings, Registry};

const NS: &str = "default";

/// Control plane, moto, providers dir, the controller and the node simulation.
struct World {
    _cp: testenv::ControlPlane,
    moto: Moto,
    /// Between the provider and moto: counts requests, injects faults.
    proxy: FaultProxy,
    /// moto's AMI, subnet and security group.
    network: (String, String, String),
    client: kube::Client,
    _providers: tempfile::TempDir,
    ctx: Arc<Context>,
    /// The providers the controller serves (the sandbox's registry, with its load events).
    registry: Arc<Registry>,
    orphan_period: Option<Duration>,
    stop: tokio::sync::watch::Sender<bool>,
    /// The controller, the node simulation and the orphan loop: stopped together.
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The providers directory watch.
    watch: tokio::task::JoinHandle<()>,
}

impl World {
    async fn start() -> World {
        World::start_with(Duration::from_secs(30), Some(Duration::from_secs(2))).await
    }

    /// A world whose provider calls have `deadline`, collecting orphans every `orphan_period`.
    async fn start_with(deadline: Duration, orphan_period: Option<Duration>) -> World {
        World::start_tweaked(deadline, orphan_period, |_| {}).await
    }

    /// [`World::start_with`] with the controller's config changed by `tweak`.
    async fn start_tweaked(
        deadline: Duration,
        orphan_period: Option<Duration>,
        tweak: impl FnOnce(&mut Config),
    ) -> World {
        mcm_controller::install_crypto_provider();
        let cp = testenv::ControlPlane::start().expect("control plane (run `just controlplane`)");
        cp.apply_crds().unwrap();
        let client = cp.client().await.unwrap();
        let moto = Moto::start();
        let ami = moto.some_ami().await;
        let (subnet, group) = moto.default_network().await;
        let proxy = FaultProxy::start(moto.addr).await;

        let providers = tempfile::tempdir().unwrap();
        std::fs::copy(guest("aws_provider"), providers.path().join("aws.wasm")).unwrap();
        let registry = Registry::new(sandbox(deadline));
        registry.set_settings(
            "aws",
            ProviderSettings {
                egress: EgressPolicy::parse(&[proxy.addr.to_string()]).unwrap(),
                config: Some(serde_json::json!({ "endpoint": proxy.endpoint }).to_string()),
                deadlines: None,
                ..Default::default()
            },
        );
        let watch = registry
            .watch_dir(providers.path().to_path_buf(), Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(registry.names(), ["aws"]);

        // The class's secret: user data with both placeholders; credentials in a second secret.
        let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
        let user_data: Secret = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "aws-userdata" },
            "stringData": {
                "userData": "#!/bin/bash\necho <<MACHINE_NAME>> <<BOOTSTRAP_TOKEN>>",
                "providerAccessKeyId": "overridden-by-credentials",
            },
        }))
        .unwrap();
        let creds: Secret = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "aws-credentials" },
            "stringData": { "providerAccessKeyId": ACCESS_KEY, "providerSecretAccessKey": SECRET_KEY },
        }))
        .unwrap();
        secrets
            .create(&PostParams::default(), &user_data)
            .await
            .unwrap();
        secrets
            .create(&PostParams::default(), &creds)
            .await
            .unwrap();
        let class: MachineClass = serde_json::from_value(serde_json::json!({
            "apiVersion": "machine.sapcloud.io/v1alpha1",
            "kind": "MachineClass",
            "metadata": { "name": "aws-class" },
            "provider": "aws",
            "providerSpec": provider_spec(&ami, &subnet, &group),
            "secretRef": { "name": "aws-userdata", "namespace": NS },
            "credentialsSecretRef": { "name": "aws-credentials", "namespace": NS },
        }))
        .unwrap();
        Api::<MachineClass>::namespaced(client.clone(), NS)
            .create(&PostParams::default(), &class)
            .await
            .unwrap();

        let mut config = Config {
            namespace: NS.into(),
            health_check_interval: Duration::from_secs(2),
            // Orphans: collected once seen unowned for 3 s (default: the creation timeout).
            orphan_min_age: Duration::from_secs(3),
            ..Config::default()
        };
        tweak(&mut config);
        let controller_client = cp.controller_client().await.unwrap();
        let ctx = Context::new(
            controller_client.clone(),
            Some(controller_client),
            registry.clone(),
            config,
        );
        let stop = tokio::sync::watch::channel(false).0;
        let mut world = World {
            _cp: cp,
            moto,
            proxy,
            network: (ami, subnet, group),
            client,
            _providers: providers,
            ctx,
            registry,
            orphan_period,
            stop,
            tasks: Vec::new(),
            watch,
        };
        world.start_controller();
        world
    }

    /// Start the controller (with the node simulation and the orphan loop).
    fn start_controller(&mut self) {
        let (stop, rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|v| *v).await;
        };
        let ctx = &self.ctx;
        self.tasks.push(tokio::spawn(mcm_controller::run(
            ctx.clone(),
            stopped(rx.clone()),
        )));
        let sim = node_sim(&self.client, &ctx.config.namespace, ctx.registry.clone());
        self.tasks.push(tokio::spawn(
            sim.run(Duration::from_millis(300), stopped(rx.clone())),
        ));
        self.tasks
            .push(tokio::spawn(mcm_controller::finalizers::run(
                ctx.clone(),
                Duration::from_secs(1),
                stopped(rx.clone()),
            )));
        if let Some(period) = self.orphan_period {
            self.tasks.push(tokio::spawn(mcm_controller::orphans::run(
                ctx.clone(),
                period,
                stopped(rx.clone()),
            )));
        }
        self.stop = stop;
    }

    /// Stop the controller and wait until its reconciles have finished.
    async fn stop_controller(&mut self) {
        let _ = self.stop.send(true);
        for t in self.tasks.drain(..) {
            tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .expect("controller stops")
                .unwrap();
        }
    }

    fn machines(&self) -> Api<Machine> {
        Api::namespaced(self.client.clone(), NS)
    }

    async fn create_machine(&self, name: &str) {
        self.create_machine_of(name, "aws-class").await
    }

    /// Another class of the aws provider, with the same secrets.
    async fn create_class(&self, name: &str, spec: serde_json::Value) {
        let class: MachineClass = serde_json::from_value(serde_json::json!({
            "apiVersion": "machine.sapcloud.io/v1alpha1",
            "kind": "MachineClass",
            "metadata": { "name": name },
            "provider": "aws",
            "providerSpec": spec,
            "secretRef": { "name": "aws-userdata", "namespace": NS },
            "credentialsSecretRef": { "name": "aws-credentials", "namespace": NS },
        }))
        .unwrap();
        Api::<MachineClass>::namespaced(self.client.clone(), NS)
            .create(&PostParams::default(), &class)
            .await
            .unwrap();
    }

    async fn create_machine_of(&self, name: &str, class: &str) {
        let m: Machine = serde_json::from_value(serde_json::json!({
            "apiVersion": "machine.sapcloud.io/v1alpha1",
            "kind": "Machine",
            "metadata": { "name": name },
            "spec": { "class": { "kind": "MachineClass", "name": class } },
        }))
        .unwrap();
        self.machines()
            .create(&PostParams::default(), &m)
            .await
            .unwrap();
    }

    async fn wait_machine(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        ok: impl Fn(&Machine) -> bool,
    ) -> Machine {
        let started = Instant::now();
        loop {
            let m = self.machines().get_opt(name).await.unwrap();
            if let Some(m) = &m
                && ok(m)
            {
                return m.clone();
            }
            if started.elapsed() > timeout {
                panic!(
                    "machine {name}: {what} not reached in {timeout:?}; last seen: {:#?}",
                    m.map(|m| m.status)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// [`World::wait_machine`] for phase Running.
    async fn wait_running(&self, name: &str, timeout: Duration) -> Machine {
        self.wait_machine(name, "Running", timeout, |m| {
            m.phase() == Some(&MachinePhase::Running)
        })
        .await
    }

    async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            t.abort();
        }
        self.watch.abort();
    }
}

fn last_op(m: &Machine) -> (String, Option<State>, Option<Op>, String) {
    let lo = &m.status.as_ref().unwrap().last_operation;
    (
        lo.description.clone(),
        lo.state.clone(),
        lo.type_.clone(),
        lo.error_code.clone(),
    )
}

/// Every distinct lastOperation the machine goes through, from a watch started now, until the
/// machine is deleted or `timeout` passes.
async fn record_operations(
    api: Api<Machine>,
    name: &str,
) -> tokio::task::JoinHandle<Vec<(String, String, String, String)>> {
    let params = WatchParams::default()
        .fields(&format!("metadata.name={name}"))
        .timeout(180);
    let rv = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut stream = api.watch(&params, &rv).await.unwrap().boxed();
    tokio::spawn(async move {
        let mut seen: Vec<(String, String, String, String)> = Vec::new();
        while let Ok(Some(ev)) = stream.try_next().await {
            match ev {
                WatchEvent::Added(m) | WatchEvent::Modified(m) => {
                    let Some(st) = m.status.as_ref() else {
                        continue;
                    };
                    let lo = &st.last_operation;
                    let row = (
                        st.current_status
                            .phase
                            .as_ref()
                            .map(|p| p.as_str().to_string())
                            .unwrap_or_default(),
                        lo.description.clone(),
                        lo.state
                            .as_ref()
                            .map(|s| s.as_str().to_string())
                            .unwrap_or_default(),
                        lo.type_
                            .as_ref()
                            .map(|t| t.as_str().to_string())
                            .unwrap_or_default(),
                    );
                    if seen.last() != Some(&row) {
                        seen.push(row);
                    }
                }
                WatchEvent::Deleted(_) => break,
                _ => {}
            }
        }
        seen
    })
}

fn rows(expected: &[(&str, &str, &str, &str)]) -> Vec<(String, String, String, String)> {
    expected
        .iter()
        .map(|(a, b, c, d)| (a.to_string(), b.to_string(), c.to_string(), d.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machine_runs_then_deletes_as_mcm_does() {
    let world = World::start().await;
    let name = "e2e-machine-1";
    let creating = record_operations(world.machines(), name).await;
    world.create_machine(name).await;

    // Running: providerID and node label set, the node joined.
    let m = world
        .wait_machine(name, "phase Running", Duration::from_secs(120), |m| {
            m.phase() == Some(&MachinePhase::Running)
        })
        .await;
    let id = m
        .spec
        .provider_id
        .strip_prefix(&format!("aws:///{REGION}/"))
        .expect("aws:///<region>/<id>")
        .to_string();
    let live = world.moto.live_instances_named(name).await;
    assert_eq!(live.len(), 1, "exactly one instance: {live:?}");
    assert_eq!(live[0].id, id);
    let node_name = m.node_name().expect("node label").to_string();
    assert_eq!(
        node_name, live[0].private_dns_name,
        "the node label names the VM's PrivateDnsName"
    );
    assert_eq!(
        last_op(&m),
        (
            format!("Machine {name} successfully joined the cluster"),
            Some(State::Successful),
            Some(Op::Create),
            String::new()
        )
    );
    assert_eq!(
        m.annotations()
            .get("machinepriority.machine.sapcloud.io")
            .map(String::as_str),
        Some("3")
    );
    assert!(
        m.finalizers()
            .contains(&"machine.sapcloud.io/machine-controller-manager".to_string())
    );
    assert!(!m.status.as_ref().unwrap().current_status.timeout_active);
    assert!(
        m.status
            .as_ref()
            .unwrap()
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    );
    let started = Instant::now();
    let node = loop {
        // The node controller part: the machine-name label and MCM's node finalizer.
        let node = Api::<Node>::all(world.client.clone())
            .get(&node_name)
            .await
            .unwrap();
        if node
            .finalizers()
            .contains(&"node.machine.sapcloud.io/machine-controller".to_string())
            && node
                .labels()
                .get("node.gardener.cloud/machine-name")
                .map(String::as_str)
                == Some(name)
        {
            break node;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "node not labelled/finalized: {:?}",
            node.metadata
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        node.spec.unwrap().provider_id.as_deref(),
        Some(m.spec.provider_id.as_str())
    );

    // Finalizers as MCM sets them on the class and the secrets.
    let class = Api::<MachineClass>::namespaced(world.client.clone(), NS)
        .get("aws-class")
        .await
        .unwrap();
    assert!(
        class
            .finalizers()
            .contains(&"machine.sapcloud.io/machine-controller-manager".to_string())
    );
    for s in ["aws-userdata", "aws-credentials"] {
        let secret = Api::<Secret>::namespaced(world.client.clone(), NS)
            .get(s)
            .await
            .unwrap();
        assert!(
            secret
                .finalizers()
                .contains(&"machine.sapcloud.io/machine-controller".to_string()),
            "{s}"
        );
    }

    // userData reached EC2 with the placeholders filled; the bootstrap token went after the join.
    use base64::Engine as _;
    let user_data = world.moto.attribute(&id, "userData").await;
    let user_data = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(user_data.trim())
            .unwrap(),
    )
    .unwrap();
    let token_id = &hex_tail(name);
    assert!(
        user_data.starts_with(&format!("#!/bin/bash\necho {name} {token_id}.")),
        "{user_data}"
    );
    assert_eq!(
        user_data.trim_end().len(),
        format!("#!/bin/bash\necho {name} {token_id}.").len() + 16,
        "{user_data}"
    );
    let tokens: Api<Secret> = Api::namespaced(world.client.clone(), "kube-system");
    assert!(
        tokens
            .get_opt(&format!("bootstrap-token-{token_id}"))
            .await
            .unwrap()
            .is_none(),
        "token deleted on first join"
    );

    // The create path as MCM writes it, but for the status call before create: the AWS
    // provider creates in batches (contract 0.1.3), and create-machines is "find or create".
    let events: Vec<String> = Api::<Event>::namespaced(world.client.clone(), NS)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .map(|e| {
            format!(
                "{}: {}",
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default()
            )
        })
        .collect();
    assert!(
        !events
            .iter()
            .any(|e| e.starts_with("GetMachineStatusNotFound")),
        "{events:#?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("CreateMachineSucceeded: ") && e.contains(&id)),
        "{events:#?}"
    );

    // An instance created directly in moto with the cluster's tags has no Machine: collected.
    let (ami, subnet, _) = world.network.clone();
    let orphan = world
        .moto
        .ec2(
            REGION,
            "RunInstances",
            &[
                ("ImageId", ami.as_str()),
                ("InstanceType", "m5.large"),
                ("MinCount", "1"),
                ("MaxCount", "1"),
                ("SubnetId", subnet.as_str()),
                ("TagSpecification.1.ResourceType", "instance"),
                ("TagSpecification.1.Tag.1.Key", "Name"),
                ("TagSpecification.1.Tag.1.Value", "orphan-vm"),
                (
                    "TagSpecification.1.Tag.2.Key",
                    "kubernetes.io/cluster/shoot--a",
                ),
                ("TagSpecification.1.Tag.2.Value", "1"),
                ("TagSpecification.1.Tag.3.Key", "kubernetes.io/role/node"),
                ("TagSpecification.1.Tag.3.Value", "1"),
            ],
        )
        .await
        .first_text(&["instanceId"])
        .expect("RunInstances answers the instance id");
    let started = Instant::now();
    while !world
        .moto
        .live_instances_named("orphan-vm")
        .await
        .is_empty()
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "orphan {orphan} not collected"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(matches!(
        world.moto.instance(&orphan).await.state.as_str(),
        "terminated" | "shutting-down"
    ));
    assert_eq!(
        world.moto.live_instances_named(name).await.len(),
        1,
        "the machine's own VM is kept"
    );
    let class_events: Vec<String> = Api::<Event>::namespaced(world.client.clone(), NS)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("aws-class"))
        .filter_map(|e| e.reason)
        .collect();
    assert!(
        class_events.iter().any(|r| r == "OrphanVMDeleted"),
        "{class_events:?}"
    );

    // Delete: each step recorded with MCM's description; VM terminated, Node deleted, finalizer gone.
    let deleting = record_operations(world.machines(), name).await;
    world
        .machines()
        .delete(name, &DeleteParams::default())
        .await
        .unwrap();
    let started = Instant::now();
    while world.machines().get_opt(name).await.unwrap().is_some() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "machine not deleted in time"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let seen = deleting.await.unwrap();
    let node_deleted = format!(
        "Deletion of Node Object \"{node_name}\" is successful. Initiate machine object finalizer removal"
    );
    let expected = rows(&[
        // The deletionTimestamp arrives first, with the status unchanged.
        (
            "Running",
            &format!("Machine {name} successfully joined the cluster"),
            "Successful",
            "Create",
        ),
        (
            "Terminating",
            "Set machine status to termination. Now, getting VM Status",
            "Processing",
            "Delete",
        ),
        ("Terminating", "Initiate node drain", "Processing", "Delete"),
        (
            "Terminating",
            "Drain successful. Initiate VM deletion",
            "Processing",
            "Delete",
        ),
        (
            "Terminating",
            "VM deletion was successful. Initiate node object deletion",
            "Processing",
            "Delete",
        ),
        ("Terminating", &node_deleted, "Processing", "Delete"),
    ]);
    assert_eq!(seen, expected);
    let vm = world.moto.instance(&id).await;
    assert!(
        matches!(vm.state.as_str(), "terminated" | "shutting-down"),
        "instance {id} is {}",
        vm.state
    );
    assert!(
        Api::<Node>::all(world.client.clone())
            .get_opt(&node_name)
            .await
            .unwrap()
            .is_none(),
        "node deleted"
    );

    // No Machine refers to the class any more: its finalizer goes; the secrets keep theirs
    // while the class names them, and lose them when the class is deleted.
    let classes = Api::<MachineClass>::namespaced(world.client.clone(), NS);
    let started = Instant::now();
    while classes
        .get("aws-class")
        .await
        .unwrap()
        .finalizers()
        .iter()
        .any(|f| f == "machine.sapcloud.io/machine-controller-manager")
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "class finalizer not removed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let secrets = Api::<Secret>::namespaced(world.client.clone(), NS);
    assert!(
        secrets
            .get("aws-credentials")
            .await
            .unwrap()
            .finalizers()
            .contains(&"machine.sapcloud.io/machine-controller".to_string())
    );
    classes
        .delete("aws-class", &DeleteParams::default())
        .await
        .unwrap();
    let started = Instant::now();
    for s in ["aws-userdata", "aws-credentials"] {
        while secrets
            .get(s)
            .await
            .unwrap()
            .finalizers()
            .iter()
            .any(|f| f == "machine.sapcloud.io/machine-controller")
        {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "secret {s} finalizer not removed"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert!(
        classes.get_opt("aws-class").await.unwrap().is_none(),
        "class deleted"
    );

    let created = creating.await.unwrap();
    assert!(
        created.contains(&(
            "Pending".into(),
            "Creating machine on cloud provider".into(),
            "Processing".into(),
            "Create".into()
        )),
        "{created:#?}"
    );
    world.shutdown().await;
}

fn hex_tail(name: &str) -> String {
    let b = name.as_bytes();
    b[b.len() - 5..b.len() - 2]
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

async fn delete_and_wait(world: &World, name: &str) {
    world
        .machines()
        .delete(name, &DeleteParams::default())
        .await
        .unwrap();
    let started = Instant::now();
    while world.machines().get_opt(name).await.unwrap().is_some() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "machine {name} not deleted in time"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_errors_are_recorded_and_retried_as_mcm_does() {
    let world = World::start_with(Duration::from_secs(4), None).await;

    // A bad providerSpec: a clear InvalidArgument, no cloud call, no VM, retried only after
    // MCM's medium period (so it stays put here).
    let (ami, subnet, group) = world.network.clone();
    let mut bad = provider_spec(&ami, &subnet, &group);
    bad.as_object_mut().unwrap().remove("ami");
    world.create_class("bad-class", bad).await;
    let before = world.proxy.requests();
    world.create_machine_of("e2e-bad-spec", "bad-class").await;
    let m = world
        .wait_machine(
            "e2e-bad-spec",
            "CrashLoopBackOff",
            Duration::from_secs(60),
            |m| m.phase() == Some(&MachinePhase::CrashLoopBackOff),
        )
        .await;
    let (description, state, type_, code) = last_op(&m);
    assert!(
        description.starts_with(
            "Cloud provider message - machine codes error: code = [InvalidArgument] message = ["
        ),
        "{description}"
    );
    assert!(
        description.contains("providerSpec.ami"),
        "names the bad field: {description}"
    );
    assert_eq!(
        (state, type_, code.as_str()),
        (Some(State::Failed), Some(Op::Create), "InvalidArgument")
    );
    assert!(m.spec.provider_id.is_empty());
    let first_update = m
        .status
        .as_ref()
        .unwrap()
        .last_operation
        .last_update_time
        .clone();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let m = world.machines().get("e2e-bad-spec").await.unwrap();
    assert_eq!(
        m.status.as_ref().unwrap().last_operation.last_update_time,
        first_update,
        "an InvalidArgument waits for the medium retry (3 min), not a hot loop"
    );
    assert_eq!(
        world.proxy.requests(),
        before,
        "no cloud call for a bad providerSpec"
    );

    // A create that exceeds its deadline (moto runs the instance, the answer comes too late):
    // DeadlineExceeded in lastOperation, retried after the short period, one instance in the end.
    world
        .proxy
        .inject("RunInstances", Fault::SlowAnswer(Duration::from_secs(8)));
    let name = "e2e-slow-create";
    let ops = record_operations(world.machines(), name).await;
    world.create_machine(name).await;
    let m = world
        .wait_machine(
            name,
            "DeadlineExceeded recorded",
            Duration::from_secs(60),
            |m| {
                m.status
                    .as_ref()
                    .is_some_and(|s| s.last_operation.error_code == "DeadlineExceeded")
            },
        )
        .await;
    let (description, state, type_, _) = last_op(&m);
    assert!(
        description.starts_with(
            "Cloud provider message - machine codes error: code = [DeadlineExceeded] message = ["
        ),
        "{description}"
    );
    assert_eq!((state, type_), (Some(State::Failed), Some(Op::Create)));
    assert_eq!(m.phase(), Some(&MachinePhase::CrashLoopBackOff));
    let m = world
        .wait_machine(
            name,
            "phase Running after the retry",
            Duration::from_secs(120),
            |m| m.phase() == Some(&MachinePhase::Running),
        )
        .await;
    assert_eq!(world.proxy.pending_faults(), 0, "the slow answer was used");
    assert_eq!(
        world.moto.live_instances_named(name).await.len(),
        1,
        "exactly one instance after the retry"
    );
    assert!(!m.spec.provider_id.is_empty());
    delete_and_wait(&world, name).await;
    let seen = ops.await.unwrap();
    let failed_at = seen
        .iter()
        .position(|r| {
            r.0 == "CrashLoopBackOff"
                && r.1.contains("code = [DeadlineExceeded]")
                && r.2 == "Failed"
        })
        .unwrap_or_else(|| panic!("{seen:#?}"));
    let pending_at = seen
        .iter()
        .position(|r| {
            r == &(
                "Pending".into(),
                "Creating machine on cloud provider".into(),
                "Processing".into(),
                "Create".into(),
            )
        })
        .unwrap_or_else(|| panic!("{seen:#?}"));
    assert!(failed_at < pending_at, "{seen:#?}");
    assert!(world.moto.live_instances_named(name).await.is_empty());
    world.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_resumes_at_its_step_after_a_restart() {
    let mut world = World::start_with(Duration::from_secs(30), None).await;
    let name = "e2e-resume-1";
    world.create_machine(name).await;
    let m = world
        .wait_machine(name, "phase Running", Duration::from_secs(120), |m| {
            m.phase() == Some(&MachinePhase::Running)
        })
        .await;
    let node_name = m.node_name().unwrap().to_string();
    let id = m.spec.provider_id.rsplit('/').next().unwrap().to_string();

    // The controller stops after the drain step of a deletion: the machine is marked for
    // deletion, Terminating, and its lastOperation says the VM deletion is next.
    world.stop_controller().await;
    world
        .machines()
        .delete(name, &DeleteParams::default())
        .await
        .unwrap();
    let mut st = world.machines().get(name).await.unwrap().status.unwrap();
    st.current_status.phase = Some(MachinePhase::Terminating);
    st.last_operation = mcm_controller::status::last_op(
        "Drain successful. Initiate VM deletion",
        State::Processing,
        Op::Delete,
        "",
    );
    mcm_controller::status::write(&world.machines(), name, &st)
        .await
        .unwrap();
    assert!(
        world.moto.live_instances_named(name).await.len() == 1,
        "the VM is still there"
    );

    // A new controller goes on from "Initiate VM deletion", not from the start.
    let ops = record_operations(world.machines(), name).await;
    world.start_controller();
    delete_wait_gone(&world, name).await;
    let seen = ops.await.unwrap();
    let node_deleted = format!(
        "Deletion of Node Object \"{node_name}\" is successful. Initiate machine object finalizer removal"
    );
    assert_eq!(
        seen,
        rows(&[
            (
                "Terminating",
                "VM deletion was successful. Initiate node object deletion",
                "Processing",
                "Delete"
            ),
            ("Terminating", &node_deleted, "Processing", "Delete"),
        ])
    );
    let vm = world.moto.instance(&id).await;
    assert!(
        matches!(vm.state.as_str(), "terminated" | "shutting-down"),
        "instance {id} is {}",
        vm.state
    );
    assert!(
        Api::<Node>::all(world.client.clone())
            .get_opt(&node_name)
            .await
            .unwrap()
            .is_none(),
        "node deleted"
    );
    world.shutdown().await;
}

async fn delete_wait_gone(world: &World, name: &str) {
    let started = Instant::now();
    while world.machines().get_opt(name).await.unwrap().is_some() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "machine {name} not deleted in time"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Live (not terminated) instances in moto with the cluster's tag.
async fn live_cluster_instances(world: &World) -> Vec<crate::support::roxml::Instance> {
    world
        .moto
        .ec2(
            REGION,
            "DescribeInstances",
            &[
                ("Filter.1.Name", "tag-key"),
                ("Filter.1.Value.1", "kubernetes.io/cluster/shoot--a"),
            ],
        )
        .await
        .instances()
        .into_iter()
        .filter(|i| !matches!(i.state.as_str(), "terminated" | "shutting-down"))
        .collect()
}

/// Gardener's real machine-controller-manager beside our controller: a MachineDeployment
/// scaled 0 → 3 → 1 gives 3, then 1, Running machines and exactly as many live instances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gardener_mcm_machine_deployment_scales_on_our_controller() {
    use machine_api::MachineDeployment;

    let world = World::start_with(Duration::from_secs(30), None).await;
    let deployment = machine_deployment("pool", "aws-class");
    let deployments = Api::<MachineDeployment>::namespaced(world.client.clone(), NS);
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    let mut mcm = world
        ._cp
        .start_gardener_mcm(NS)
        .expect("Gardener MCM (run `just controlplane`)");

    let scale = |n: i32| {
        let deployments = deployments.clone();
        async move {
            let patch = serde_json::json!({ "spec": { "replicas": n } });
            deployments
                .patch("pool", &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .unwrap();
        }
    };
    let wait_running = |n: usize| {
        let machines = world.machines();
        let world = &world;
        async move {
            let started = Instant::now();
            loop {
                let all = machines.list(&ListParams::default()).await.unwrap().items;
                let running = all
                    .iter()
                    .filter(|m| m.phase() == Some(&MachinePhase::Running))
                    .count();
                let live = live_cluster_instances(world).await.len();
                if all.len() == n && running == n && live == n {
                    return;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(180),
                    "wanted {n} Running machines and instances; machines {:?}, {live} live instances",
                    all.iter()
                        .map(|m| (m.name_any(), m.phase().map(|p| p.as_str().to_string())))
                        .collect::<Vec<_>>()
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };

    scale(3).await;
    wait_running(3).await;
    scale(1).await;
    wait_running(1).await;
    // Stays at one.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(live_cluster_instances(&world).await.len(), 1);
    assert!(mcm.is_running(), "Gardener MCM still running");
    world.shutdown().await;
}

/// A component with an extra custom section: same code, another digest (a new "version" for
/// the registry).
fn with_custom_section(component: &[u8], payload: &[u8]) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    let name = b"mcm-wasm-test-swap";
    let mut body = Vec::new();
    leb(name.len(), &mut body);
    body.extend_from_slice(name);
    body.extend_from_slice(payload);
    let mut out = component.to_vec();
    out.push(0);
    leb(body.len(), &mut out);
    out.extend_from_slice(&body);
    out
}

/// Replacing the provider's .wasm again and again while machines are created fails no
/// reconcile: every machine reaches Running with one instance, and no driver call fails
/// except the expected NotFound of the first status check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_the_provider_while_machines_reconcile_fails_nothing() {
    let world = World::start_with(Duration::from_secs(30), None).await;
    let mut loaded = world.registry.subscribe();
    let original = std::fs::read(guest("aws_provider")).unwrap();
    let dir = world._providers.path().to_path_buf();
    let names: Vec<String> = (1..=6).map(|i| format!("swap-machine-{i}")).collect();
    let mut swaps = 0;
    // Create machines two at a time and swap the provider after each pair, while they reconcile.
    for (i, pair) in names.chunks(2).enumerate() {
        for n in pair {
            world.create_machine(n).await;
        }
        let tmp = dir.join(".aws.wasm.tmp");
        std::fs::write(&tmp, with_custom_section(&original, &[i as u8])).unwrap();
        std::fs::rename(&tmp, dir.join("aws.wasm")).unwrap();
        let swapped = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                match loaded.recv().await.unwrap() {
                    mcm_sandbox::RegistryEvent::Loaded {
                        replaced: Some(_), ..
                    } => return,
                    mcm_sandbox::RegistryEvent::Rejected { error, .. } => {
                        panic!("a swap was rejected: {error}")
                    }
                    _ => {}
                }
            }
        })
        .await;
        assert!(swapped.is_ok(), "swap {i} not loaded");
        swaps += 1;
    }
    for n in &names {
        world
            .wait_machine(n, "phase Running", Duration::from_secs(120), |m| {
                m.phase() == Some(&MachinePhase::Running)
            })
            .await;
        assert_eq!(world.moto.live_instances_named(n).await.len(), 1, "{n}");
    }
    assert_eq!(swaps, 3);
    let warnings: Vec<String> = Api::<Event>::namespaced(world.client.clone(), NS)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .filter_map(|e| e.reason)
        .filter(|r| r != "GetMachineStatusNotFound")
        .collect();
    assert!(
        warnings.is_empty(),
        "driver calls failed during the swaps: {warnings:?}"
    );
    world.shutdown().await;
}

/// A Node deleted by someone else takes its Machine with it (MCM's node controller): the
/// Machine goes through the deletion flow and its instance is terminated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_node_deletes_the_machine() {
    let world = World::start_with(Duration::from_secs(30), None).await;
    let name = "node-gone-1";
    world.create_machine(name).await;
    let m = world
        .wait_machine(name, "phase Running", Duration::from_secs(120), |m| {
            m.phase() == Some(&MachinePhase::Running)
        })
        .await;
    let node_name = m.node_name().unwrap().to_string();
    let id = m.spec.provider_id.rsplit('/').next().unwrap().to_string();
    Api::<Node>::all(world.client.clone())
        .delete(&node_name, &DeleteParams::default())
        .await
        .unwrap();
    delete_wait_gone(&world, name).await;
    let vm = world.moto.instance(&id).await;
    assert!(
        matches!(vm.state.as_str(), "terminated" | "shutting-down"),
        "instance {id} is {}",
        vm.state
    );
    assert!(
        Api::<Node>::all(world.client.clone())
            .get_opt(&node_name)
            .await
            .unwrap()
            .is_none()
    );
    world.shutdown().await;
}

/// `count` instances in moto with the class's cluster and role tags and the Name `name`: VMs
/// no Machine owns.
async fn run_orphans(world: &World, name: &str, count: usize) -> Vec<String> {
    let (ami, subnet, _) = world.network.clone();
    let count = count.to_string();
    world
        .moto
        .ec2(
            REGION,
            "RunInstances",
            &[
                ("ImageId", ami.as_str()),
                ("InstanceType", "m5.large"),
                ("MinCount", count.as_str()),
                ("MaxCount", count.as_str()),
                ("SubnetId", subnet.as_str()),
                ("TagSpecification.1.ResourceType", "instance"),
                ("TagSpecification.1.Tag.1.Key", "Name"),
                ("TagSpecification.1.Tag.1.Value", name),
                (
                    "TagSpecification.1.Tag.2.Key",
                    "kubernetes.io/cluster/shoot--a",
                ),
                ("TagSpecification.1.Tag.2.Value", "1"),
                ("TagSpecification.1.Tag.3.Key", "kubernetes.io/role/node"),
                ("TagSpecification.1.Tag.3.Value", "1"),
            ],
        )
        .await;
    world
        .moto
        .instances_named(name)
        .await
        .into_iter()
        .map(|i| i.id)
        .collect()
}

/// Orphan collection cannot mass-delete: at most the cap per pass (a Warning event and a
/// metric when the cap stops it), nothing younger than the minimum age, nothing in a dry run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_orphans_are_collected_over_passes_at_most_twenty_each() {
    use mcm_controller::orphans::{Collector, Policy};
    let world = World::start_with(Duration::from_secs(30), None).await;
    let ids = run_orphans(&world, "orphan-batch", 50).await;
    assert_eq!(ids.len(), 50);
    let live = || async { world.moto.live_instances_named("orphan-batch").await.len() };
    let policy = |min_age: Duration, dry_run: bool| Policy {
        min_age,
        max_deletions_per_pass: 20,
        dry_run,
    };

    // Not unowned for the minimum age yet: nothing.
    let mut young = Collector::new(policy(Duration::from_secs(3600), false));
    assert!(young.pass(&world.ctx).await.unwrap().is_empty());
    // A dry run decides as a real pass would and deletes nothing.
    let mut dry = Collector::new(policy(Duration::ZERO, true));
    assert_eq!(dry.pass(&world.ctx).await.unwrap().len(), 20);
    assert_eq!(live().await, 50);

    let mut collector = Collector::new(policy(Duration::ZERO, false));
    for (pass, (deleted, left)) in [(20, 30), (20, 10), (10, 0)].into_iter().enumerate() {
        let collected = collector.pass(&world.ctx).await.unwrap();
        assert_eq!(collected.len(), deleted, "pass {pass}: {collected:?}");
        assert!(collected.iter().all(|o| o.result.is_ok()), "{collected:?}");
        assert_eq!(live().await, left, "after pass {pass}");
    }
    assert!(collector.pass(&world.ctx).await.unwrap().is_empty());

    let metrics = world.ctx.metrics.render();
    for line in [
        "mcm_wasm_orphan_vms_total{result=\"deleted\"} 50",
        "mcm_wasm_orphan_vms_total{result=\"would_delete\"} 20",
        // The dry run and the first two real passes left VMs over.
        "mcm_wasm_orphan_passes_capped_total 3",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} missing from:\n{metrics}"
        );
    }
    let started = Instant::now();
    loop {
        let events = Api::<Event>::namespaced(world.client.clone(), NS)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items;
        let capped = events
            .iter()
            .filter(|e| e.reason.as_deref() == Some("OrphanCollectionCapped"))
            .filter_map(|e| e.note.as_deref())
            .collect::<Vec<_>>();
        if capped
            .iter()
            .any(|n| n.starts_with("30 unowned VMs wait for the next pass: at most 20"))
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no capped event: {capped:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    world.shutdown().await;
}

/// A controller that cannot list Machines (RBAC refuses it, as after a restart with a broken
/// role) deletes nothing, however many VMs look unowned to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_collection_without_a_machine_list_deletes_nothing() {
    use mcm_controller::orphans::{Collector, Policy};
    let world = World::start_with(Duration::from_secs(30), None).await;
    run_orphans(&world, "orphan-unlisted", 5).await;

    // A ServiceAccount that may read classes and secrets and watch Machines, but not list them.
    let cp = &world._cp;
    let role = serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "no-machine-list", "namespace": NS},
        "rules": [
            {"apiGroups": ["machine.sapcloud.io"], "resources": ["machineclasses"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["machine.sapcloud.io"], "resources": ["machines"], "verbs": ["get", "watch"]},
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]},
        ],
    });
    let binding = serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "no-machine-list", "namespace": NS},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "no-machine-list"},
        "subjects": [{"kind": "ServiceAccount", "name": "no-machine-list", "namespace": NS}],
    });
    let manifests = tempfile::tempdir().unwrap();
    std::fs::write(manifests.path().join("role.json"), role.to_string()).unwrap();
    std::fs::write(manifests.path().join("binding.json"), binding.to_string()).unwrap();
    cp.kubectl_run(["-n", NS, "create", "serviceaccount", "no-machine-list"])
        .unwrap();
    cp.kubectl_run([
        "apply".as_ref(),
        "-f".as_ref(),
        manifests.path().as_os_str(),
    ])
    .unwrap();
    let token = cp
        .kubectl_run(["-n", NS, "create", "token", "no-machine-list"])
        .unwrap();
    let kubeconfig = manifests.path().join("kubeconfig");
    let config = serde_json::json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": {
            "server": cp.server_url(),
            "certificate-authority": cp.dir().join("pki/ca.crt"),
        }}],
        "users": [{"name": "sa", "user": {"token": token.trim()}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "sa"}}],
        "current-context": "c",
    });
    std::fs::write(&kubeconfig, config.to_string()).unwrap();
    let restricted = testenv::client_from(&kubeconfig).await.unwrap();
    let ctx = Context::new(
        restricted.clone(),
        Some(restricted),
        world.registry.clone(),
        Config {
            namespace: NS.into(),
            ..Config::default()
        },
    );

    let mut collector = Collector::new(Policy {
        min_age: Duration::ZERO,
        max_deletions_per_pass: 100,
        dry_run: false,
    });
    for _ in 0..3 {
        let err = collector.pass(&ctx).await.unwrap_err();
        assert!(err.to_string().contains("forbidden"), "{err}");
    }
    assert_eq!(
        world
            .moto
            .live_instances_named("orphan-unlisted")
            .await
            .len(),
        5
    );
    assert!(!ctx.metrics.render().contains("mcm_wasm_orphan_vms_total{"));
    world.shutdown().await;
}

/// A pod on `node` that is Running and Ready, as a kubelet would report it (no kubelet runs
/// here: its status is written). A Pending pod would not do: the API server evicts Pending
/// pods without asking their budget.
async fn running_pod(world: &World, name: &str, node: &str, app: &str) {
    use k8s_openapi::api::core::v1::Pod;
    let pods: Api<Pod> = Api::namespaced(world.client.clone(), NS);
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {
            "nodeName": node,
            // Gone at once once evicted: no kubelet here would confirm a graceful stop.
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "app", "image": "registry.invalid/app"}],
        },
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let status = serde_json::json!({"status": {
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": "True"}],
    }});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

/// A PodDisruptionBudget selecting `app`; `status` (if any) is written as the disruption
/// controller would (none runs here), for the budget's current generation.
async fn budget(
    world: &World,
    name: &str,
    app: &str,
    min_available: i32,
    status: Option<serde_json::Value>,
) {
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    let api: Api<PodDisruptionBudget> = Api::namespaced(world.client.clone(), NS);
    let pdb: PodDisruptionBudget = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {"minAvailable": min_available, "selector": {"matchLabels": {"app": app}}},
    }))
    .unwrap();
    let created = api.create(&PostParams::default(), &pdb).await.unwrap();
    if let Some(status) = status {
        set_budget_status(world, name, created.metadata.generation.unwrap(), status).await;
    }
}

async fn set_budget_status(
    world: &World,
    name: &str,
    generation: i64,
    mut status: serde_json::Value,
) {
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    let api: Api<PodDisruptionBudget> = Api::namespaced(world.client.clone(), NS);
    status["observedGeneration"] = generation.into();
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(&serde_json::json!({"status": status})),
    )
    .await
    .unwrap();
}

async fn pod_exists(world: &World, name: &str) -> bool {
    use k8s_openapi::api::core::v1::Pod;
    Api::<Pod>::namespaced(world.client.clone(), NS)
        .get_opt(name)
        .await
        .unwrap()
        .is_some()
}

/// Drains blocked by a PodDisruptionBudget hold only delete workers: with every delete worker
/// busy on 20 machines whose pods the budget will not let go (its status is never written, as
/// no disruption controller runs here, so the API server refuses every eviction with 429; the
/// drain timeout is 2 minutes), a new Machine is created and Running while all 20 are still
/// draining.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_drains_do_not_starve_creation() {
    let world = World::start_tweaked(Duration::from_secs(30), None, |c| {
        c.workers = mcm_controller::pools::PoolSizes {
            create: 4,
            delete: 10,
            health: 4,
        };
        c.drain_timeout = Duration::from_secs(120);
    })
    .await;
    // The time a creation takes on this idle controller, to compare with below.
    let idle = Instant::now();
    world.create_machine("idle-machine-1").await;
    world
        .wait_running("idle-machine-1", Duration::from_secs(60))
        .await;
    let idle = idle.elapsed();
    delete_and_wait(&world, "idle-machine-1").await;
    let names: Vec<String> = (0..20).map(|i| format!("guarded-machine-{i}")).collect();
    for name in &names {
        world.create_machine(name).await;
    }
    for (i, name) in names.iter().enumerate() {
        let m = world.wait_running(name, Duration::from_secs(180)).await;
        running_pod(
            &world,
            &format!("guarded-{i}"),
            m.node_name().unwrap(),
            "guarded",
        )
        .await;
    }
    budget(&world, "guarded", "guarded", 20, None).await;

    for name in &names {
        world
            .machines()
            .delete(name, &Default::default())
            .await
            .unwrap();
    }
    // Every delete worker is held by a drain the budget blocks.
    let busy = |pool: &str| {
        let line = format!("mcm_wasm_workers_busy{{pool=\"{pool}\"}} ");
        world
            .ctx
            .metrics
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(&line).map(|v| v.to_string()))
            .unwrap_or_default()
    };
    let started = Instant::now();
    while busy("delete") != "10" {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "delete pool not full: {}",
            busy("delete")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let created = Instant::now();
    world.create_machine("fresh-machine-1").await;
    world
        .wait_running("fresh-machine-1", Duration::from_secs(60))
        .await;
    // Not a timed assertion (timing belongs in benchmarks): the figures, for the record.
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!(
            "blocked drains: a creation took {:.1} s with 20 drains blocked, {:.1} s on the idle controller\n",
            created.elapsed().as_secs_f64(),
            idle.as_secs_f64()
        )
        .as_bytes(),
    );
    // ...while every guarded machine is still there, draining, and no pod was evicted.
    for (i, name) in names.iter().enumerate() {
        let m = world.machines().get_opt(name).await.unwrap();
        assert!(
            m.is_some(),
            "{name} finished deleting before the new machine ran"
        );
        assert!(
            pod_exists(&world, &format!("guarded-{i}")).await,
            "guarded-{i} evicted"
        );
    }
    assert_eq!(busy("delete"), "10");
    world.shutdown().await;
}

/// A pod guarded by a budget that refuses is retried (every 20 s, as MCM) and evicted once the
/// budget allows it; the budget records the eviction, so the pod went by eviction, not by the
/// deletion that follows exhausted retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guarded_pod_is_evicted_once_its_budget_allows() {
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    let world = World::start().await;
    world.create_machine("budgeted-machine").await;
    let m = world
        .wait_running("budgeted-machine", Duration::from_secs(120))
        .await;
    let node = m.node_name().unwrap().to_string();
    running_pod(&world, "budgeted-db-0", &node, "db").await;
    // Two pods expected, one healthy: waiting helps (not misconfigured), no disruption now.
    let refusing = serde_json::json!({
        "expectedPods": 2, "currentHealthy": 1, "desiredHealthy": 1, "disruptionsAllowed": 0,
    });
    budget(&world, "db", "db", 1, Some(refusing)).await;
    world
        .machines()
        .delete("budgeted-machine", &DeleteParams::default())
        .await
        .unwrap();
    // Refused at the first eviction and again 20 s later: still there after 25 s.
    tokio::time::sleep(Duration::from_secs(25)).await;
    assert!(
        pod_exists(&world, "budgeted-db-0").await,
        "evicted against its budget"
    );
    let m = world
        .machines()
        .get_opt("budgeted-machine")
        .await
        .unwrap()
        .expect("still draining");
    let (desc, _, op, _) = last_op(&m);
    assert_eq!(op, Some(Op::Delete));
    assert!(desc.contains("Initiate node drain"), "{desc}");

    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(world.client.clone(), NS);
    let generation = pdbs.get("db").await.unwrap().metadata.generation.unwrap();
    let allowing = serde_json::json!({
        "expectedPods": 2, "currentHealthy": 2, "desiredHealthy": 1, "disruptionsAllowed": 1,
    });
    set_budget_status(&world, "db", generation, allowing).await;
    let allowed = Instant::now();
    while pod_exists(&world, "budgeted-db-0").await {
        assert!(
            allowed.elapsed() < Duration::from_secs(40),
            "not evicted within one retry period"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let status = pdbs.get("db").await.unwrap().status.unwrap();
    assert!(
        status
            .disrupted_pods
            .unwrap_or_default()
            .contains_key("budgeted-db-0"),
        "the API server recorded the eviction in the budget"
    );
    assert_eq!(
        status.disruptions_allowed.unwrap_or(0),
        0,
        "the eviction used the one disruption allowed"
    );
    delete_wait_gone(&world, "budgeted-machine").await;
    world.shutdown().await;
}

/// A misconfigured budget (all its pods healthy, none allowed to go: no eviction will ever
/// pass) fails its pod at once, with the budget named in lastOperation; the deletion retries,
/// and once the machine's drain timeout has passed the drain is forced: the pod is deleted and
/// so is the machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misconfigured_budget_fails_at_once_and_the_drain_timeout_forces_deletion() {
    let world = World::start().await;
    let m: Machine = serde_json::from_value(serde_json::json!({
        "apiVersion": "machine.sapcloud.io/v1alpha1",
        "kind": "Machine",
        "metadata": { "name": "misbudgeted-machine" },
        "spec": { "class": { "kind": "MachineClass", "name": "aws-class" }, "drainTimeout": "40s" },
    }))
    .unwrap();
    world
        .machines()
        .create(&PostParams::default(), &m)
        .await
        .unwrap();
    let m = world
        .wait_running("misbudgeted-machine", Duration::from_secs(120))
        .await;
    running_pod(&world, "stuck-0", m.node_name().unwrap(), "stuck").await;
    let misconfigured = serde_json::json!({
        "expectedPods": 1, "currentHealthy": 1, "desiredHealthy": 1, "disruptionsAllowed": 0,
    });
    budget(&world, "stuck", "stuck", 1, Some(misconfigured)).await;
    let deleted = Instant::now();
    world
        .machines()
        .delete("misbudgeted-machine", &DeleteParams::default())
        .await
        .unwrap();
    // Failed at once: before the first 20 s eviction retry would have come.
    let m = world
        .wait_machine(
            "misbudgeted-machine",
            "drain failed",
            Duration::from_secs(15),
            |m| last_op(m).0.contains("misconfigured"),
        )
        .await;
    let (desc, state, op, _) = last_op(&m);
    assert_eq!((state, op), (Some(State::Failed), Some(Op::Delete)));
    assert_eq!(
        desc,
        "Drain failed due to - evicting pod default/stuck-0: PodDisruptionBudget default/stuck is misconfigured: it expects no more healthy pods than it has and allows no disruption. Will retry in next sync. Initiate node drain"
    );
    assert!(
        deleted.elapsed() < Duration::from_secs(20),
        "failed after {:?}",
        deleted.elapsed()
    );
    assert!(pod_exists(&world, "stuck-0").await);
    // The drain timeout (40 s) forces it: the pod is deleted, then the machine.
    while world
        .machines()
        .get_opt("misbudgeted-machine")
        .await
        .unwrap()
        .is_some()
    {
        assert!(
            deleted.elapsed() < Duration::from_secs(100),
            "not forced after the drain timeout"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        deleted.elapsed() >= Duration::from_secs(40),
        "forced before the drain timeout"
    );
    assert!(
        !pod_exists(&world, "stuck-0").await,
        "the forced drain deletes the pod"
    );
    world.shutdown().await;
}
