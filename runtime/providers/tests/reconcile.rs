//! The Provider controller in this process against a real kube-apiserver (testenv's shared
//! control plane), with the real sandbox: the sources the process tests do not use — a
//! ConfigMap (watched: a new artifact in it swaps in), https (pinned by sha256, from a TLS
//! server with its own CA), a spec the controller refuses — and deletion unloading.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use machine_api::{Provider, ProviderStatus};
use mcm_providers::oci;
use mcm_providers::reconcile::{self, Backoff};
use mcm_sandbox::{Registry, Sandbox, SandboxConfig};
use testenv::registry::{Options, Registry as OciRegistry};

fn b64(bytes: &[u8]) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes)
}

async fn wait(api: &Api<Provider>, name: &str, what: &str, ok: impl Fn(&ProviderStatus) -> bool) {
    let started = Instant::now();
    loop {
        let p = api.get(name).await.unwrap();
        if let Some(s) = &p.status
            && s.observed_generation == p.metadata.generation
            && ok(s)
        {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{name} never {what}: {:#?}",
            p.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn reason<'s>(s: &'s ProviderStatus, type_: &str) -> (&'s str, &'s str) {
    s.condition(type_)
        .map(|c| (c.status.as_str(), c.reason.as_str()))
        .unwrap_or(("", ""))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_map_https_and_refused_specs() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cp = testenv::shared();
    cp.apply_crds().unwrap();
    let client = cp.client().await.unwrap();
    let ns = testenv::create_namespace(&client, "reconcile").await;

    let wasm = test_artifacts::guest("sample_provider");
    let v1 = std::fs::read(&wasm).unwrap();
    let v2 = test_artifacts::with_version(&v1, "2.0.0");
    let cache = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::new(SandboxConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        ..SandboxConfig::default()
    })
    .unwrap();
    let registry = Registry::new(sandbox);

    // An https server with its own CA: the TLS registry's blob endpoint serves the bytes.
    let tls = OciRegistry::start(Options {
        tls: true,
        basic_auth: None,
    })
    .unwrap();
    let ca = tls.ca_pem.clone().unwrap();
    let info = mcm_sandbox::artifact::inspect(&wasm, &v1).unwrap();
    let access = oci::Access {
        ca_pem: Some(ca.clone().into_bytes()),
        ..Default::default()
    };
    oci::push(
        &tls.reference("blobs/sample:v1"),
        v1.clone(),
        &info,
        &access,
    )
    .await
    .unwrap();
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .build()
        .unwrap();

    let ctx = reconcile::Context::with_backoff(
        client.clone(),
        &ns,
        registry.clone(),
        http,
        Backoff {
            first: Duration::from_millis(200),
            max: Duration::from_secs(1),
        },
    );
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let controller = tokio::spawn(reconcile::run(ctx, async move {
        let _ = stopped.wait_for(|v| *v).await;
    }));
    let providers: Api<Provider> = Api::namespaced(client.clone(), &ns);
    let create = async |name: &str, source: serde_json::Value| {
        let p: Provider = serde_json::from_value(serde_json::json!({
            "apiVersion": "mcm-wasm.io/v1alpha1",
            "kind": "Provider",
            "metadata": { "name": name },
            "spec": { "source": source },
        }))
        .unwrap();
        providers.create(&PostParams::default(), &p).await.unwrap();
    };

    // A ConfigMap source; a new artifact in the ConfigMap swaps in (the ConfigMap is watched).
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "sample-provider" },
        "binaryData": { "provider.wasm": b64(&v1) },
    }))
    .unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    create(
        "from-cm",
        serde_json::json!({ "configMap": { "name": "sample-provider", "key": "provider.wasm" } }),
    )
    .await;
    wait(&providers, "from-cm", "Ready", |s| {
        reason(s, "Ready") == ("True", "Loaded")
            && s.version.as_deref() == Some(&info.metadata.version)
    })
    .await;
    assert!(registry.get("from-cm").is_some());
    cms.patch(
        "sample-provider",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({ "binaryData": { "provider.wasm": b64(&v2) } })),
    )
    .await
    .unwrap();
    wait(&providers, "from-cm", "swapped by the ConfigMap", |s| {
        s.version.as_deref() == Some("2.0.0")
    })
    .await;
    assert_eq!(
        registry.get("from-cm").unwrap().info().metadata.version,
        "2.0.0"
    );

    // https pinned by sha256: the right pin loads, a wrong one is DigestMismatch.
    let digest = mcm_sandbox::artifact::digest(&v1);
    let url = format!("https://{}/v2/blobs/sample/blobs/{digest}", tls.host);
    create(
        "from-https",
        serde_json::json!({ "https": { "url": url, "sha256": digest } }),
    )
    .await;
    wait(&providers, "from-https", "Ready", |s| {
        reason(s, "Ready") == ("True", "Loaded")
    })
    .await;
    let wrong = mcm_sandbox::artifact::digest(&v2);
    providers
        .patch(
            "from-https",
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({ "spec": { "source": { "https": { "sha256": wrong } } } }),
            ),
        )
        .await
        .unwrap();
    wait(&providers, "from-https", "DigestMismatch", |s| {
        reason(s, "Degraded") == ("True", "DigestMismatch")
            && reason(s, "Ready") == ("True", "ServingPreviousVersion")
            && s.last_error.as_deref().is_some_and(|e| {
                e.contains(&format!("has digest {digest}, not the pinned {wrong}"))
            })
    })
    .await;

    // A spec the controller refuses (the CRD's rules cannot see it): InvalidSpec, nothing
    // serves, and machines asking for the name hear why.
    create(
        "bad-limits",
        serde_json::json!({ "file": { "path": "/nonexistent.wasm" } }),
    )
    .await;
    providers
        .patch(
            "bad-limits",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "spec": { "limits": { "memory": "lots" } } })),
        )
        .await
        .unwrap();
    wait(&providers, "bad-limits", "InvalidSpec", |s| {
        reason(s, "Ready") == ("False", "InvalidSpec")
            && s.last_error.as_deref()
                == Some("spec.limits.memory \"lots\": not a memory quantity (e.g. 64Mi, 128M, 1Gi)")
    })
    .await;
    let why = registry.not_ready("bad-limits").unwrap();
    assert!(why.contains("spec.limits.memory"), "{why}");

    // Deletion unloads (the finalizer is the controller's).
    providers
        .delete("from-cm", &DeleteParams::default())
        .await
        .unwrap();
    let started = Instant::now();
    while providers.get_opt("from-cm").await.unwrap().is_some() {
        assert!(started.elapsed() < Duration::from_secs(30), "not deleted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(registry.get("from-cm").is_none());
    assert!(registry.resource("from-cm").is_none());

    let _ = stop.send(true);
    let _ = controller.await;
}
