//! The controller process asks the provider before it creates: a MachineClass the sample
//! provider's validate-machine-class rejects gives its Machine InvalidArgument with the
//! provider's text and an event, and the sample backend never receives a create request for
//! it (asserted at the backend); the valid class's Machine is created, and its
//! `mcm_machine_info` carries the provider's metrics-labels (`size`) on /metrics.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::*;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use machine_api::{Machine, MachineClass};

const NS: &str = "default";

async fn create<K>(client: &kube::Client, object: serde_json::Value)
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let object: K = serde_json::from_value(object).unwrap();
    Api::<K>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &object)
        .await
        .unwrap();
}

fn class(name: &str, image: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "machine.sapcloud.io/v1alpha1",
        "kind": "MachineClass",
        "metadata": {"name": name},
        "provider": "sample",
        "providerSpec": {
            "machineType": "small",
            "image": image,
            "tags": {"kubernetes.io/cluster/shoot--a": "1", "kubernetes.io/role/node": "1"},
        },
        "secretRef": {"name": "sample-credentials", "namespace": NS},
    })
}

fn machine(name: &str, class: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "machine.sapcloud.io/v1alpha1",
        "kind": "Machine",
        "metadata": {"name": name},
        "spec": {"class": {"kind": "MachineClass", "name": class}},
    })
}

#[tokio::test]
async fn an_invalid_class_is_refused_before_create_and_labels_reach_metrics() {
    mcm_controller::install_crypto_provider();
    let cp = testenv::ControlPlane::start().expect("control plane (run `just controlplane`)");
    cp.apply_crds().unwrap();
    let client = cp.client().await.unwrap();
    let backend = SampleBackend::start("s3cret");
    let providers = tempfile::tempdir().unwrap();
    std::fs::copy(
        guest("sample_provider"),
        providers.path().join("sample.wasm"),
    )
    .unwrap();

    create::<Secret>(
        &client,
        serde_json::json!({
            "metadata": {"name": "sample-credentials"},
            "stringData": {"token": "s3cret", "userData": "#!/bin/sh\necho <<MACHINE_NAME>>"},
        }),
    )
    .await;
    create::<MachineClass>(&client, class("sample-good", "debian-12")).await;
    create::<MachineClass>(&client, class("sample-bad", "")).await;
    create::<Machine>(&client, machine("good-machine-1", "sample-good")).await;
    create::<Machine>(&client, machine("bad-machine-1", "sample-bad")).await;

    let log = tempfile::NamedTempFile::new().unwrap();
    let port = testenv::free_port().unwrap();
    let _controller = KillOnDrop(
        controller_command(
            providers.path(),
            cp.kubeconfig_path(),
            "sample",
            &backend.endpoint,
        )
        .args(["--namespace", NS, "--target-kubeconfig", "none"])
        .args(["--address", "127.0.0.1", "--port", &port.to_string()])
        .env("MCM_WASM_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap(),
    );
    let controller_log = || std::fs::read_to_string(log.path()).unwrap();

    let machines: Api<Machine> = Api::namespaced(client.clone(), NS);
    let started = Instant::now();
    let (good, bad) = loop {
        let good = machines.get("good-machine-1").await.unwrap();
        let bad = machines.get("bad-machine-1").await.unwrap();
        let bad_failed = bad
            .status
            .as_ref()
            .is_some_and(|s| s.last_operation.error_code == "InvalidArgument");
        if !good.spec.provider_id.is_empty() && bad_failed {
            break (good, bad);
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "good: {:?}\nbad: {:?}\n--- controller log ---\n{}",
            good.status,
            bad.status,
            controller_log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(
        good.spec.provider_id.starts_with("sample:///"),
        "{:?}",
        good.spec
    );
    let description = &bad.status.unwrap().last_operation.description;
    assert_eq!(
        description,
        "Cloud provider message - machine codes error: code = [InvalidArgument] message = [providerSpec.image must not be empty]"
    );
    assert!(bad.spec.provider_id.is_empty());

    // At the backend: one create (the good machine's), none for the bad class.
    let posts: Vec<String> = backend
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("POST "))
        .collect();
    assert_eq!(posts, ["POST /v1/machines"], "{:?}", backend.requests());
    let vms: Vec<String> = backend
        .machines()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(vms, ["good-machine-1"]);

    // The rejection is an event on the bad machine, with the provider's text.
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), NS);
    let started = Instant::now();
    loop {
        let list = events.list(&Default::default()).await.unwrap().items;
        let rejected = list.iter().find(|e| {
            e.reason.as_deref() == Some("ValidateMachineClassInvalidArgument")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("bad-machine-1")
        });
        if let Some(e) = rejected {
            assert_eq!(e.type_.as_deref(), Some("Warning"));
            assert!(
                e.note
                    .as_deref()
                    .unwrap_or("")
                    .contains("providerSpec.image must not be empty"),
                "{e:?}"
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no rejection event"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // /metrics: the good machine's mcm_machine_info ends with the provider's size label.
    let started = Instant::now();
    loop {
        let metrics = crate::support::metrics_text(port).await;
        let info = metrics
            .lines()
            .find(|l| l.starts_with("mcm_machine_info{") && l.contains("name=\"good-machine-1\""));
        if let Some(line) = info.filter(|l| l.contains("size=")) {
            assert!(
                line.contains("spec_class_name=\"sample-good\"")
                    && line.ends_with(",size=\"small\"} 1"),
                "{line}"
            );
            // The driver calls: the bad class asked once (cached), CreateMachine only for the
            // good machine — the bad one never reached the provider's create.
            let calls = |op: &str, code: &str| {
                let prefix = format!(
                    "mcm_wasm_driver_calls_total{{provider=\"sample\",operation=\"{op}\",code=\"{code}\"}} "
                );
                metrics
                    .lines()
                    .find_map(|l| l.strip_prefix(&prefix))
                    .map(str::to_string)
            };
            assert_eq!(
                calls("ValidateMachineClass", "InvalidArgument").as_deref(),
                Some("1"),
                "{metrics}"
            );
            assert_eq!(
                calls("ValidateMachineClass", "OK").as_deref(),
                Some("1"),
                "{metrics}"
            );
            assert_eq!(
                calls("CreateMachine", "OK").as_deref(),
                Some("1"),
                "{metrics}"
            );
            assert_eq!(calls("CreateMachine", "InvalidArgument"), None, "{metrics}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no size label on good-machine-1's mcm_machine_info:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
