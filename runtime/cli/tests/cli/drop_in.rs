//! Drop-in for provider-aws users: the controller started as provider-aws's `machine-controller`
//! is (its documented flags, `AWS_ENDPOINT_URL_EC2`, no provider flags of ours), serving a
//! MachineClass and Secret exactly as Gardener and provider-aws's README write them
//! (`provider: AWS`, `test` keys with trailing newlines); MCM's client-side API limit; and no
//! finalizer conflicts logged when 100 machines arrive at once.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;
use kube::api::{Api, PostParams};
use machine_api::{Machine, MachinePhase};

/// The shared controller set-up plus the controller's log file.
struct Setup {
    base: ControllerSetup,
    log: tempfile::NamedTempFile,
}

impl std::ops::Deref for Setup {
    type Target = ControllerSetup;
    fn deref(&self) -> &ControllerSetup {
        &self.base
    }
}

impl Setup {
    async fn start() -> Setup {
        Setup {
            base: ControllerSetup::start(&guest("aws_provider")).await,
            log: tempfile::NamedTempFile::new().unwrap(),
        }
    }

    /// `mcm-wasm controller` with the providers directory and kubeconfigs, and nothing of ours
    /// about the provider: its endpoint comes from `AWS_ENDPOINT_URL_EC2`, as for provider-aws.
    fn controller(&self) -> Command {
        let mut cmd = drop_in_command(&self.base, &self.moto.endpoint, &self.log);
        cmd.arg("--port=0");
        cmd
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap()
    }

    /// A MachineClass and Secret as provider-aws's README and Gardener write them.
    async fn provider_aws_class(&self) {
        let (ami, subnet, group) = self.moto.class_resources().await;
        let secret: k8s_openapi::api::core::v1::Secret =
            serde_json::from_value(serde_json::json!({
                "metadata": { "name": "cloudprovider" },
                "type": "Opaque",
                "stringData": {
                    "userData": "#!/bin/bash\necho hello",
                    "providerAccessKeyId": "test\n",
                    "providerSecretAccessKey": "test\n",
                },
            }))
            .unwrap();
        Api::namespaced(self.client.clone(), "default")
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
        let class: machine_api::MachineClass = serde_json::from_value(serde_json::json!({
            "apiVersion": "machine.sapcloud.io/v1alpha1",
            "kind": "MachineClass",
            "metadata": { "name": "aws-class" },
            "provider": "AWS",
            "providerSpec": provider_spec(&ami, &subnet, &group),
            "secretRef": { "name": "cloudprovider", "namespace": "default" },
            "credentialsSecretRef": { "name": "cloudprovider", "namespace": "default" },
        }))
        .unwrap();
        Api::namespaced(self.client.clone(), "default")
            .create(&PostParams::default(), &class)
            .await
            .unwrap();
    }
}

/// The sum of the API server's `apiserver_request_total` counters.
async fn apiserver_requests(client: &kube::Client) -> f64 {
    let req = axum::http::Request::get("/metrics")
        .body(Vec::new())
        .unwrap();
    let text = client.request_text(req).await.unwrap();
    text.lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

async fn wait_running(s: &Setup, child: &mut std::process::Child, name: &str) {
    let machines: Api<Machine> = Api::namespaced(s.client.clone(), "default");
    let started = Instant::now();
    loop {
        let m = machines.get(name).await.unwrap();
        if m.phase() == Some(&MachinePhase::Running) {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("controller exited with {status}: {}", s.log_text());
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{name} not Running: {:?}\n--- controller log ---\n{}",
            m.status,
            s.log_text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_aws_deployment_runs_unchanged() {
    let s = Setup::start().await;
    s.provider_aws_class().await;
    // A class for a provider nothing here serves: reported, not silently skipped.
    let other: machine_api::MachineClass = serde_json::from_value(serde_json::json!({
        "apiVersion": "machine.sapcloud.io/v1alpha1",
        "kind": "MachineClass",
        "metadata": { "name": "gcp-class" },
        "provider": "GCP",
        "providerSpec": {},
    }))
    .unwrap();
    Api::namespaced(s.client.clone(), "default")
        .create(&PostParams::default(), &other)
        .await
        .unwrap();

    // provider-aws's documented start flags (its README and Gardener's chart), unchanged.
    let mut child = KillOnDrop(
        s.controller()
            .args([
                "--machine-creation-timeout=20m",
                "--machine-drain-timeout=5m",
                "--machine-health-timeout=10m",
                "--machine-pv-detach-timeout=2m",
                "--machine-safety-apiserver-statuscheck-timeout=30s",
                "--machine-safety-apiserver-statuscheck-period=1m",
                "--machine-safety-orphan-vms-period=30m",
                "--leader-elect=true",
                "--v=3",
            ])
            .spawn()
            .unwrap(),
    );
    create_machine(&s.client, "default", "pa-machine").await;
    for (name, class) in [
        ("gcp-machine-1", "gcp-class"),
        ("gcp-machine-2", "gcp-class"),
    ] {
        let m: Machine = serde_json::from_value(serde_json::json!({
            "apiVersion": "machine.sapcloud.io/v1alpha1",
            "kind": "Machine",
            "metadata": { "name": name },
            "spec": { "class": { "kind": "MachineClass", "name": class } },
        }))
        .unwrap();
        Api::<Machine>::namespaced(s.client.clone(), "default")
            .create(&PostParams::default(), &m)
            .await
            .unwrap();
    }
    wait_running(&s, &mut child.0, "pa-machine").await;
    let live = s.moto.live_instances_named("pa-machine").await;
    assert_eq!(live.len(), 1, "{live:?}");

    let log = s.log_text();
    assert!(
        log.contains("provider endpoint from the environment")
            && log.contains("AWS_ENDPOINT_URL_EC2"),
        "{log}"
    );
    assert!(
        log.contains("without effect here: --machine-pv-detach-timeout, --machine-safety-apiserver-statuscheck-timeout, --machine-safety-apiserver-statuscheck-period"),
        "{log}"
    );
    // --v=3: the controller's debug lines are on (MCM_WASM_LOG is not set).
    assert!(
        log.contains("DEBUG"),
        "--v=3 did not enable debug logs:\n{log}"
    );
    // The trimmed `test` key is accepted, with a warning from the provider: in the log, and
    // as a Warning event on the machine where the operator looks.
    assert!(
        log.contains("does not look like an AWS access key ID"),
        "{log}"
    );
    let warned: Vec<String> =
        Api::<k8s_openapi::api::events::v1::Event>::namespaced(s.client.clone(), "default")
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("ProviderWarning"))
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("pa-machine"))
            .filter_map(|e| Some(format!("{}: {}", e.type_?, e.note?)))
            .collect();
    assert!(
        warned.iter().any(|w| w.starts_with("Warning: provider aws: secret.providerAccessKeyId does not look like an AWS access key ID")),
        "{warned:#?}"
    );
    // The GCP class: one info line for the class, though two machines use it.
    let unserved: Vec<_> = log
        .lines()
        .filter(|l| l.contains("names provider \"GCP\", which no loaded provider serves"))
        .collect();
    assert_eq!(unserved.len(), 1, "{unserved:#?}");
    assert!(
        unserved[0].contains("INFO") && unserved[0].contains("aws (alias AWS)"),
        "{}",
        unserved[0]
    );
    // Leader-elected, so the only machine controller of the namespace: each machine of the
    // unserved class gets a Warning event saying why nothing happens to it.
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(s.client.clone(), "default");
    let started = Instant::now();
    loop {
        let list = events.list(&Default::default()).await.unwrap().items;
        let flagged: std::collections::BTreeSet<String> = list
            .iter()
            .filter(|e| e.reason.as_deref() == Some("ProviderNotServed"))
            .filter(|e| e.type_.as_deref() == Some("Warning"))
            .filter_map(|e| e.regarding.as_ref()?.name.clone())
            .collect();
        if flagged.len() == 2 {
            assert!(flagged.contains("gcp-machine-1") && flagged.contains("gcp-machine-2"));
            assert!(!flagged.contains("pa-machine"));
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "events: {flagged:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_api_qps_and_burst_limit_the_controllers_requests() {
    let s = Setup::start().await;
    s.provider_aws_class().await;
    let qps = 5.0;
    let burst = 10.0;
    let _child = KillOnDrop(
        s.controller()
            .args([
                "--leader-elect=false",
                "--kube-api-qps=5",
                "--kube-api-burst=10",
            ])
            .env("MCM_WASM_LOG", "info")
            .spawn()
            .unwrap(),
    );
    let machines = (0..50).map(|i| {
        let client = s.client.clone();
        async move { create_machine(&client, "default", &format!("qps-{i}")).await }
    });
    futures::future::join_all(machines).await;
    // Only the controller's requests count: the simulated kubelets (this process, no limit)
    // stop registering nodes.
    s.kubelet.halt();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let window = Duration::from_secs(10);
    let before = apiserver_requests(&s.client).await;
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let after = apiserver_requests(&s.client).await;
    let seconds = started.elapsed().as_secs_f64();
    let requests = after - before;
    println!("{requests} API requests in {seconds:.1} s with --kube-api-qps=5 --kube-api-burst=10");
    // The limit plus one burst, and some slack for the API server's own loopback requests and
    // the two metric reads.
    let limit = qps * seconds + burst + 15.0;
    assert!(
        requests <= limit,
        "{requests} requests in {seconds:.1} s exceed the limit ({limit}):\n{}",
        s.log_text()
    );
    // And the controller was busy meanwhile (50 machines to reconcile): the bound was reached.
    assert!(
        requests >= qps * seconds * 0.5,
        "only {requests} requests: was the controller idle?"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_machines_at_once_log_no_finalizer_conflicts() {
    let s = Setup::start().await;
    s.provider_aws_class().await;
    let _child = KillOnDrop(
        s.controller()
            .args(["--leader-elect=false", "--kube-api-qps=0"])
            .env("MCM_WASM_LOG", "info")
            .spawn()
            .unwrap(),
    );
    let machines = (0..100).map(|i| {
        let client = s.client.clone();
        async move { create_machine(&client, "default", &format!("many-{i}")).await }
    });
    futures::future::join_all(machines).await;

    // Every machine taken on (its finalizer), the class and the secret finalized.
    let api: Api<Machine> = Api::namespaced(s.client.clone(), "default");
    let started = Instant::now();
    loop {
        let list = api.list(&Default::default()).await.unwrap().items;
        let taken = list
            .iter()
            .filter(|m| {
                m.metadata
                    .finalizers
                    .as_ref()
                    .is_some_and(|f| !f.is_empty())
            })
            .count();
        if taken == 100 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{taken} of 100 machines have the finalizer\n{}",
            s.log_text()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let class: machine_api::MachineClass = Api::namespaced(s.client.clone(), "default")
        .get("aws-class")
        .await
        .unwrap();
    assert!(
        class
            .metadata
            .finalizers
            .is_some_and(|f| f.contains(&machine_api::MCM_FINALIZER.to_string()))
    );
    let secret: k8s_openapi::api::core::v1::Secret = Api::namespaced(s.client.clone(), "default")
        .get("cloudprovider")
        .await
        .unwrap();
    assert!(
        secret
            .metadata
            .finalizers
            .is_some_and(|f| f.contains(&machine_api::MC_SECRET_FINALIZER.to_string()))
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = s.log_text();
    let conflicts: Vec<_> = log
        .lines()
        .filter(|l| {
            l.contains("Conflict")
                || l.contains("code: 409")
                || l.contains("has been modified")
                || l.contains("cannot be fulfilled")
        })
        .collect();
    assert!(
        conflicts.is_empty(),
        "conflicts logged:\n{}",
        conflicts.join("\n")
    );
}
