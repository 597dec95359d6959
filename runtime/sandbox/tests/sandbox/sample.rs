//! The sample provider (the template for provider authors) in the sandbox against its backend,
//! in both languages: `guests/sample` (Rust) and `guests/python/sample` (Python,
//! componentize-py). The same lifecycle, the same answers; only a malformed-spec message differs.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::*;
use mcm_driver::*;
use mcm_sandbox::{EgressPolicy, Provider, ProviderSettings};

const TOKEN: &str = "s3cret";

fn spec() -> serde_json::Value {
    serde_json::json!({
        "machineType": "small",
        "image": "debian-12",
        "tags": {"kubernetes.io/cluster/shoot--a": "1", "kubernetes.io/role/node": "1"},
    })
}

fn secret() -> SecretData {
    BTreeMap::from([
        ("token".to_string(), TOKEN.as_bytes().to_vec()),
        ("userData".to_string(), b"#!/bin/sh\necho hi".to_vec()),
    ])
}

/// The two builds of the sample: (test module, guest component).
macro_rules! for_each_sample {
    ($($module:ident => $guest:literal),* $(,)?) => {$(
        mod $module {
            #[tokio::test]
            async fn lifecycle() {
                super::lifecycle($guest).await
            }
            #[tokio::test]
            async fn bad_class_and_secret_are_invalid_argument_naming_the_problem() {
                super::bad_class_and_secret_are_invalid_argument_naming_the_problem($guest).await
            }
            #[tokio::test]
            async fn wrong_token_is_unauthenticated() {
                super::wrong_token_is_unauthenticated($guest).await
            }
        }
    )*};
}

for_each_sample!(rust => "sample_provider", python => "sample_py");

async fn provider(backend: &SampleBackend, guest: &str) -> Provider {
    let host = backend.endpoint.trim_start_matches("http://").to_string();
    let settings = ProviderSettings {
        egress: EgressPolicy::parse(&[host]).unwrap(),
        config: Some(serde_json::json!({"endpoint": backend.endpoint}).to_string()),
        deadlines: None,
        ..Default::default()
    };
    load(&sandbox(Duration::from_secs(10)), guest, settings).await
}

fn request(name: &str) -> MachineRequest {
    let mut req = machine_request(name, spec());
    req.secret = secret();
    req
}

async fn lifecycle(guest: &str) {
    let backend = SampleBackend::start(TOKEN);
    let p = provider(&backend, guest).await;
    let class = ClassRequest {
        machine_class: request("x").machine_class,
        secret: secret(),
    };

    p.validate_machine_class(&class).await.unwrap();
    let status = p.get_machine_status(&request("m1")).await.unwrap_err();
    assert_eq!(status.code, Code::NotFound);

    let created = p.create_machine(&request("m1")).await.unwrap();
    assert!(
        created.provider_id.starts_with("sample:///vm-"),
        "{created:?}"
    );
    assert_eq!(
        created.node_name,
        format!(
            "node-{}",
            created.provider_id.trim_start_matches("sample:///")
        )
    );
    // Idempotent: the same machine again gives the same VM.
    let again = p.create_machine(&request("m1")).await.unwrap();
    assert_eq!(again.provider_id, created.provider_id);
    let vms = backend.machines();
    assert_eq!(vms.len(), 1);
    assert_eq!(vms[0]["userData"], "#!/bin/sh\necho hi");
    assert_eq!(vms[0]["machineType"], "small");

    let mut by_id = request("m1");
    by_id.machine.provider_id = created.provider_id.clone();
    let status = p.get_machine_status(&by_id).await.unwrap();
    assert_eq!(status.node_name, created.node_name);
    let list = p.list_machines(&class).await.unwrap();
    assert_eq!(
        list.machines.get(&created.provider_id).map(String::as_str),
        Some("m1")
    );

    let labels = p
        .metrics_labels(&MetricsLabelsRequest {
            machine: by_id.machine.clone(),
            machine_class: by_id.machine_class.clone(),
        })
        .await
        .unwrap();
    assert_eq!(labels, vec![("size".to_string(), "small".to_string())]);
    let volumes = p
        .get_volume_ids(&GetVolumeIdsRequest {
            pv_specs: vec![
                serde_json::json!({"csi": {"driver": "sample.csi.mcm-wasm.io", "volumeHandle": "vol-1"}}),
                serde_json::json!({"csi": {"driver": "other.csi", "volumeHandle": "vol-2"}}),
            ],
        })
        .await
        .unwrap();
    assert_eq!(volumes.volume_ids, vec!["vol-1"]);

    // Delete works from the providerID alone, twice.
    let mut only_id = MachineRequest {
        secret: secret(),
        ..Default::default()
    };
    only_id.machine.provider_id = created.provider_id.clone();
    only_id.machine_class = by_id.machine_class.clone();
    p.delete_machine(&only_id).await.unwrap();
    assert_eq!(
        p.delete_machine(&only_id).await.unwrap().last_known_state,
        "already gone"
    );
    assert_eq!(
        p.get_machine_status(&by_id).await.unwrap_err().code,
        Code::NotFound
    );
    assert!(backend.machines().is_empty());
    assert!(p.list_machines(&class).await.unwrap().machines.is_empty());
}

async fn bad_class_and_secret_are_invalid_argument_naming_the_problem(guest: &str) {
    let backend = SampleBackend::start(TOKEN);
    let p = provider(&backend, guest).await;
    let mut no_tags = request("m1");
    no_tags.machine_class.provider_spec = serde_json::json!({"machineType": "small", "image": "x"});
    let err = p.create_machine(&no_tags).await.unwrap_err();
    assert_eq!(err.code, Code::InvalidArgument);
    assert!(err.message.contains("kubernetes.io/cluster/"), "{err}");

    let mut wrong_type = request("m1");
    wrong_type.machine_class.provider_spec = serde_json::json!({"machineType": 5, "image": "x"});
    let err = p.create_machine(&wrong_type).await.unwrap_err();
    assert_eq!(err.code, Code::InvalidArgument);
    // serde names the type (Rust); the Python SDK's decoder names the field.
    let named = match guest {
        "sample_py" => err
            .message
            .contains("providerSpec.machineType must be a string, got integer"),
        _ => err.message.contains("invalid providerSpec") && err.message.contains("invalid type"),
    };
    assert!(named, "{err}");

    let mut no_token = request("m1");
    no_token.secret.remove("token");
    let err = p.create_machine(&no_token).await.unwrap_err();
    assert_eq!(err.code, Code::InvalidArgument);
    assert!(err.message.contains("\"token\""), "{err}");
    assert!(
        backend.machines().is_empty(),
        "no VM may be made from a bad request"
    );
}

async fn wrong_token_is_unauthenticated(guest: &str) {
    let backend = SampleBackend::start(TOKEN);
    let p = provider(&backend, guest).await;
    let mut req = request("m1");
    req.secret.insert("token".into(), b"wrong".to_vec());
    let err = p.create_machine(&req).await.unwrap_err();
    assert_eq!(err.code, Code::Unauthenticated, "{err}");
}

/// The Python SDK's own unit tests (spec decoding, exceptions → driver errors, the http
/// capability's errors, secrets and config) in plain CPython against componentize-py's
/// generated bindings: guests/python/test_sdk.py.
#[test]
fn python_sdk_unit_tests() {
    let script = test_artifacts::repo_root().join("guests/python/test_sdk.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .output()
        .expect("running python3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}:\n{stderr}", script.display());
    assert!(stderr.contains("OK"), "{stderr}");
}
