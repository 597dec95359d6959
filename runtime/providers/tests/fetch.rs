//! Fetching from the sources that need no registry: a file, and a ConfigMap's binaryData on a
//! real kube-apiserver (testenv's shared control plane); every mismatch or absence is named.

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use mcm_providers::fetch::{self, FetchError};

const BYTES: &[u8] = b"\0asm\x0d\0\x01\0not really a component";

#[tokio::test]
async fn a_file_is_fetched_and_checked_against_its_pin() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.wasm");
    std::fs::write(&path, BYTES).unwrap();
    let path = path.to_str().unwrap();
    let fetched = fetch::file(path).await.unwrap();
    assert_eq!(fetched.bytes, BYTES);
    let digest = fetched.digest.clone();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{digest}"
    );
    fetched.clone().verify(&digest).unwrap();
    let wrong = format!("sha256:{}", "0".repeat(64));
    let err = fetched.verify(&wrong).unwrap_err().to_string();
    assert_eq!(
        err,
        format!("file {path} has digest {digest}, not the pinned {wrong}")
    );
    let err = fetch::file("/nonexistent/p.wasm").await.unwrap_err();
    assert!(matches!(err, FetchError::File { .. }), "{err}");
    assert!(
        err.to_string().starts_with("file /nonexistent/p.wasm: "),
        "{err}"
    );
}

#[tokio::test]
async fn a_config_maps_binary_data_is_fetched_and_absences_are_named() {
    let cp = testenv::shared();
    let client = cp.client().await.unwrap();
    let ns = testenv::create_namespace(&client, "fetch").await;
    let cms = Api::<ConfigMap>::namespaced(client.clone(), &ns);
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "aws-provider" },
        "binaryData": { "aws.wasm": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, BYTES) },
    }))
    .unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();

    let fetched = fetch::config_map(&cms, "aws-provider", "aws.wasm")
        .await
        .unwrap();
    assert_eq!(fetched.bytes, BYTES);
    assert_eq!(
        fetched.origin,
        format!("ConfigMap {ns}/aws-provider key aws.wasm")
    );

    let err = fetch::config_map(&cms, "aws-provider", "other.wasm")
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "ConfigMap {ns}/aws-provider has no binaryData key \"other.wasm\" (binaryData keys: aws.wasm)"
        )
    );
    let err = fetch::config_map(&cms, "missing", "aws.wasm")
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), format!("ConfigMap {ns}/missing not found"));
}
