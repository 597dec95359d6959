//! The Provider kind (mcm-wasm.io/v1alpha1) on a real kube-apiserver: a pinned OCI source is
//! stored and read back through the Rust types, status is a subresource, kubectl lists the
//! printer columns, and the CEL rules refuse a source with two kinds or an unpinned tag.

use crate::common::{control_plane, namespace, refused, table};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use machine_api::Provider;
use serde_json::json;

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn provider(ns: &str, name: &str, source: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "mcm-wasm.io/v1alpha1",
        "kind": "Provider",
        "metadata": { "name": name, "namespace": ns },
        "spec": {
            "source": source,
            "aliases": ["AWS"],
            "egress": { "hosts": ["127.0.0.1:5000"] },
            "config": { "endpoint": "http://127.0.0.1:5000", "nested": { "kept": true } },
            "limits": { "memory": "64Mi", "deadlines": { "createMachine": "90s" }, "maxConcurrentCalls": 8 },
        },
    })
}

async fn create(
    client: &kube::Client,
    ns: &str,
    object: serde_json::Value,
) -> Result<DynamicObject, kube::Error> {
    let api = Api::<DynamicObject>::namespaced_with(
        client.clone(),
        ns,
        &ApiResource::erase::<Provider>(&()),
    );
    api.create(
        &PostParams::default(),
        &serde_json::from_value(object).unwrap(),
    )
    .await
}

#[tokio::test]
async fn providers_are_stored_listed_and_validated() {
    let cp = control_plane();
    let client = cp.client().await.unwrap();
    let ns = namespace(&client, "providers").await;

    let reference = format!("127.0.0.1:5000/providers/aws@{DIGEST}");
    create(
        &client,
        &ns,
        provider(
            &ns,
            "aws",
            json!({ "oci": { "reference": reference, "insecure": true } }),
        ),
    )
    .await
    .expect("a pinned OCI source is accepted");
    let providers = Api::<Provider>::namespaced(client.clone(), &ns);
    let stored = providers.get("aws").await.unwrap();
    let oci = stored.spec.source.oci.as_ref().unwrap();
    assert_eq!(
        (oci.reference.as_str(), oci.insecure),
        (reference.as_str(), true)
    );
    assert_eq!(stored.spec.aliases, ["AWS"]);
    assert_eq!(
        stored.spec.config.as_ref().unwrap()["nested"]["kept"],
        true,
        "config keeps unknown fields"
    );
    assert_eq!(
        stored.spec.limits.as_ref().unwrap().max_concurrent_calls,
        Some(8)
    );

    // Status is a subresource; the printer columns read it.
    providers
        .patch_status(
            "aws",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": {
                "conditions": [{ "type": "Ready", "status": "True", "reason": "Loaded", "message": "",
                                  "lastTransitionTime": "2026-12-03T00:00:00Z" }],
                "provider": "aws", "version": "0.3.0", "digest": DIGEST,
            } })),
        )
        .await
        .unwrap();
    let rows = table(&cp.kubectl_run(["-n", &ns, "get", "wprov"]).unwrap());
    assert_eq!(
        rows[0],
        ["NAME", "READY", "PROVIDER", "VERSION", "DIGEST", "AGE"]
    );
    assert_eq!(rows[1][..5], ["aws", "True", "aws", "0.3.0", DIGEST]);

    // A tag is allowed only with a digest beside it.
    create(
        &client,
        &ns,
        provider(
            &ns,
            "tagged",
            json!({ "oci": { "reference": "r/aws:1.0", "digest": DIGEST } }),
        ),
    )
    .await
    .expect("a tag with a digest is accepted");
    let err = refused::<Provider>(
        &client,
        &ns,
        provider(
            &ns,
            "unpinned",
            json!({ "oci": { "reference": "r/aws:1.0" } }),
        ),
    )
    .await;
    assert_eq!(err.code, 422, "{err:?}");
    assert!(
        err.message.contains("reference must name a digest"),
        "{}",
        err.message
    );
    let err = refused::<Provider>(
        &client,
        &ns,
        provider(
            &ns,
            "two",
            json!({ "oci": { "reference": reference }, "file": { "path": "/providers/aws.wasm" } }),
        ),
    )
    .await;
    assert_eq!(err.code, 422, "{err:?}");
    assert!(
        err.message
            .contains("exactly one of oci, https, configMap, file must be set"),
        "{}",
        err.message
    );
    let err = refused::<Provider>(&client, &ns, provider(&ns, "none", json!({}))).await;
    assert!(err.message.contains("exactly one of"), "{}", err.message);
}
