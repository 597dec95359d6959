//! Providers delivered as Kubernetes resources, end to end: `mcm-wasm push` to a real OCI
//! registry (CNCF Distribution on loopback), a `Provider` resource pinning the digest, the
//! `mcm-wasm controller` process with no providers directory, a real kube-apiserver, moto,
//! and the simulated node join. Everything is checked through the Kubernetes API, moto and
//! the registry.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use machine_api::{Machine, MachinePhase, Provider};
use testenv::registry::{Options, Registry};

const NS: &str = "default";

/// `mcm-wasm push FILE REFERENCE ARGS…`: the pinned reference it prints.
fn push(file: &std::path::Path, reference: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_mcm-wasm"))
        .arg("push")
        .arg(file)
        .arg(reference)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "push failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pinned = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(pinned.contains("@sha256:"), "{pinned}");
    pinned
}

/// The shared controller set-up (control plane with the CRDs, moto, the simulated kubelets,
/// which ask moto through their own copy of the provider), the controller's log, and the
/// controller under test, which has no providers directory at all.
struct World {
    base: ControllerSetup,
    log: tempfile::NamedTempFile,
    controller: Option<KillOnDrop>,
}

impl std::ops::Deref for World {
    type Target = ControllerSetup;
    fn deref(&self) -> &ControllerSetup {
        &self.base
    }
}

impl World {
    async fn start() -> World {
        World {
            base: ControllerSetup::start(&guest("aws_provider")).await,
            log: tempfile::NamedTempFile::new().unwrap(),
            controller: None,
        }
    }

    /// `mcm-wasm controller` with no providers directory and no provider flags.
    fn start_controller(&mut self) {
        let kubeconfig = self.cp.kubeconfig_path().display().to_string();
        let child = Command::new(env!("CARGO_BIN_EXE_mcm-wasm"))
            .arg("controller")
            .arg(format!("--control-kubeconfig={kubeconfig}"))
            .arg(format!("--target-kubeconfig={kubeconfig}"))
            .args([
                "--namespace=default",
                "--port=0",
                "--leader-elect=false",
                "--machine-safety-orphan-vms-period=1h",
            ])
            .env(
                "MCM_WASM_LOG",
                std::env::var("E2E_LOG").unwrap_or("info".into()),
            )
            .env(
                "MCM_WASM_CACHE",
                std::env::temp_dir().join(format!("mcm-wasm-providers-e2e-{}", std::process::id())),
            )
            .stdout(Stdio::null())
            .stderr(self.log.reopen().unwrap())
            .spawn()
            .unwrap();
        self.controller = Some(KillOnDrop(child));
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    fn providers(&self) -> Api<Provider> {
        Api::namespaced(self.client.clone(), NS)
    }

    fn machines(&self) -> Api<Machine> {
        Api::namespaced(self.client.clone(), NS)
    }

    /// The MachineClass `aws-class` as provider-aws users write it (`provider: AWS`) and its
    /// Secret.
    async fn class(&self) {
        create_aws_class_for(&self.client, NS, &self.moto, "AWS").await;
    }

    /// The Provider `aws` from `oci` (the spec's source.oci), reaching moto only.
    async fn create_provider(&self, oci: serde_json::Value) {
        let provider: Provider = serde_json::from_value(serde_json::json!({
            "apiVersion": "mcm-wasm.io/v1alpha1",
            "kind": "Provider",
            "metadata": { "name": "aws" },
            "spec": {
                "source": { "oci": oci },
                "egress": { "hosts": [self.moto.addr.to_string()] },
                "config": { "endpoint": self.moto.endpoint },
                "limits": { "memory": "64Mi", "deadlines": { "createMachine": "60s" } },
            },
        }))
        .unwrap();
        self.providers()
            .create(&PostParams::default(), &provider)
            .await
            .unwrap();
    }

    async fn patch_provider(&self, spec: serde_json::Value) {
        self.providers()
            .patch(
                "aws",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({ "spec": spec })),
            )
            .await
            .unwrap();
    }

    /// Wait until the Provider's status satisfies `ok` (its observedGeneration current).
    async fn wait_provider(&self, what: &str, ok: impl Fn(&machine_api::ProviderStatus) -> bool) {
        let started = Instant::now();
        loop {
            let p = self.providers().get("aws").await.unwrap();
            if let Some(s) = &p.status
                && s.observed_generation == p.metadata.generation
                && ok(s)
            {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "Provider never {what}: {:#?}\n--- controller log ---\n{}",
                p.status,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn wait_machines(&self, names: &[String], ok: impl Fn(&Machine) -> bool, what: &str) {
        let started = Instant::now();
        loop {
            let mut pending = Vec::new();
            for name in names {
                let m = self.machines().get(name).await.unwrap();
                if !ok(&m) {
                    pending.push((name.clone(), m.status));
                }
            }
            if pending.is_empty() {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(180),
                "{} machines not {what}, e.g. {:#?}\n--- controller log ---\n{}",
                pending.len(),
                pending.first(),
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    async fn create_machines(&self, prefix: &str, n: usize) -> Vec<String> {
        let names: Vec<String> = (0..n).map(|i| format!("{prefix}-machine-{i}")).collect();
        for name in &names {
            create_machine(&self.client, NS, name).await;
        }
        names
    }

    /// "reason: note" of the Provider's events.
    async fn provider_events(&self) -> Vec<String> {
        Api::<Event>::namespaced(self.client.clone(), NS)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("Provider"))
            .map(|e| {
                format!(
                    "{}: {}",
                    e.reason.unwrap_or_default(),
                    e.note.unwrap_or_default()
                )
            })
            .collect()
    }
}

fn condition<'s>(s: &'s machine_api::ProviderStatus, type_: &str) -> (&'s str, &'s str) {
    s.condition(type_)
        .map(|c| (c.status.as_str(), c.reason.as_str()))
        .unwrap_or(("", ""))
}

fn running(m: &Machine) -> bool {
    m.phase() == Some(&MachinePhase::Running)
}

/// The mission's operator story: a provider pushed as an OCI artifact serves a class that
/// names it as provider-aws users do (`provider: AWS`, an alias from the artifact), then is
/// swapped for a new version under 20 machines, survives a wrong digest and a broken artifact
/// (the last good version keeps serving, Degraded says why), takes a new egress allowlist
/// without a restart, and unloads when deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_from_a_registry_serves_and_swaps_live() {
    let mut w = World::start().await;
    let registry = Registry::start(Options::default()).unwrap();
    let aws = guest("aws_provider");
    let v1 = push(
        &aws,
        &format!("{}:v1", registry.reference("providers/aws")),
        &["--insecure"],
        &[],
    );
    let v1_digest = v1.split_once('@').unwrap().1.to_string();
    w.class().await;
    w.create_provider(serde_json::json!({ "reference": v1, "insecure": true }))
        .await;
    w.start_controller();

    w.wait_provider("Ready", |s| condition(s, "Ready") == ("True", "Loaded"))
        .await;
    let status = w.providers().get("aws").await.unwrap().status.unwrap();
    assert_eq!(status.digest.as_deref(), Some(v1_digest.as_str()));
    assert_eq!(status.provider.as_deref(), Some("aws"));
    let info = mcm_sandbox::artifact::inspect(&aws, &std::fs::read(&aws).unwrap()).unwrap();
    assert_eq!(status.contract, Some(info.contract.to_string()));
    assert_eq!(condition(&status, "Degraded"), ("False", "AsExpected"));
    let v1_version = status.version.clone().unwrap();

    // A new version (same code, new metadata and digest) swaps in while 20 machines of
    // `provider: AWS` (an alias the artifact declares) are being created: every one reaches
    // Running with exactly one VM, no reconcile fails, and calls after the swap run 9.9.9.
    let bytes = std::fs::read(&aws).unwrap();
    let v2_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        v2_file.path(),
        test_artifacts::with_version(&bytes, "9.9.9"),
    )
    .unwrap();
    let v2 = push(
        v2_file.path(),
        &format!("{}:v2", registry.reference("providers/aws")),
        &["--insecure"],
        &[],
    );
    let names = w.create_machines("m", 20).await;
    w.patch_provider(serde_json::json!({ "source": { "oci": { "reference": v2 } } }))
        .await;
    w.wait_provider("swapped to 9.9.9", |s| {
        s.version.as_deref() == Some("9.9.9") && condition(s, "Ready").0 == "True"
    })
    .await;
    let more = w.create_machines("n", 3).await;
    w.wait_machines(&more, running, "Running on v2").await;
    w.wait_machines(&names, running, "still Running after the swap")
        .await;
    for name in names.iter().chain(&more) {
        assert_eq!(
            w.moto.live_instances_named(name).await.len(),
            1,
            "{name}: exactly one VM"
        );
    }
    // No reconcile failed but for optimistic-concurrency conflicts with the simulated
    // kubelet's Node writes (retried at once, as MCM does).
    let log = w.log_text();
    let failed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("reconcile failed") && !l.contains("409"))
        .collect();
    assert!(failed.is_empty(), "{failed:#?}");
    assert!(
        log.contains(&format!("provider=\"aws\" version=\"{v1_version}\""))
            && log.contains("driver_call{provider=\"aws\" version=\"9.9.9\""),
        "driver calls of both versions expected:\n{log}"
    );
    let events = w.provider_events().await;
    assert!(
        events.iter().any(|e| e.starts_with("Fetched: ")),
        "{events:#?}"
    );
    assert!(
        events.iter().any(|e| e.starts_with("Loaded: ")
            && e.contains("9.9.9")
            && e.contains(&format!("replacing {v1_version}"))),
        "{events:#?}"
    );

    // A digest the registry does not have: Degraded (FetchFailed), v2 keeps serving.
    let missing = format!(
        "{}@sha256:{}",
        registry.reference("providers/aws"),
        "1".repeat(64)
    );
    w.patch_provider(serde_json::json!({ "source": { "oci": { "reference": missing } } }))
        .await;
    w.wait_provider("Degraded by a missing digest", |s| {
        condition(s, "Degraded") == ("True", "FetchFailed")
            && condition(s, "Ready") == ("True", "ServingPreviousVersion")
            && s.version.as_deref() == Some("9.9.9")
            && s.last_error
                .as_deref()
                .is_some_and(|e| e.contains("not found"))
    })
    .await;
    let during = w.create_machines("d", 1).await;
    w.wait_machines(&during, running, "Running while Degraded")
        .await;

    // A registry that is down: FetchFailed naming it. (A reference to the digest that
    // serves, wherever it points, needs no fetch: the content is the same.)
    w.patch_provider(serde_json::json!({ "source": { "oci": {
        "reference": missing.replacen(&registry.host, "127.0.0.1:1", 1) } } }))
        .await;
    w.wait_provider("Degraded by a registry that is down", |s| {
        condition(s, "Degraded") == ("True", "FetchFailed")
            && s.version.as_deref() == Some("9.9.9")
            && s.last_error.as_deref().is_some_and(|e| {
                e.starts_with("127.0.0.1:1/providers/aws@") && e.contains("onnect")
            })
    })
    .await;

    // A component built against an incompatible contract: LoadFailed naming both versions.
    let incompatible = std::fs::read(guest("test_incompatible")).unwrap();
    let access = mcm_providers::oci::Access {
        insecure: true,
        ..Default::default()
    };
    let incompatible_digest = mcm_providers::oci::push(
        &format!("{}:incompatible", registry.reference("providers/aws")),
        incompatible,
        &info,
        &access,
    )
    .await
    .unwrap();
    w.patch_provider(serde_json::json!({ "source": { "oci": {
        "reference": format!("{}@{incompatible_digest}", registry.reference("providers/aws")) } } }))
        .await;
    w.wait_provider("Degraded by an incompatible contract", |s| {
        condition(s, "Degraded") == ("True", "LoadFailed")
            && s.version.as_deref() == Some("9.9.9")
            && s.last_error
                .as_deref()
                .is_some_and(|e| e.contains("contract"))
    })
    .await;

    // An artifact that is not a component (pushed with the right layout): LoadFailed.
    let broken_digest = mcm_providers::oci::push(
        &format!("{}:broken", registry.reference("providers/aws")),
        bytes[..bytes.len() / 2].to_vec(),
        &info,
        &access,
    )
    .await
    .unwrap();
    w.patch_provider(serde_json::json!({ "source": { "oci": {
        "reference": format!("{}@{broken_digest}", registry.reference("providers/aws")) } } }))
        .await;
    w.wait_provider("Degraded by a broken artifact", |s| {
        condition(s, "Degraded") == ("True", "LoadFailed") && s.version.as_deref() == Some("9.9.9")
    })
    .await;
    let events = w.provider_events().await;
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("RolledBack: ") && e.contains("9.9.9")),
        "{events:#?}"
    );
    assert!(
        events.iter().any(|e| e.starts_with("Rejected: ")),
        "{events:#?}"
    );

    // Back to v2: recovered.
    w.patch_provider(serde_json::json!({ "source": { "oci": { "reference": v2 } } }))
        .await;
    w.wait_provider("recovered", |s| {
        condition(s, "Degraded").0 == "False" && condition(s, "Ready") == ("True", "Loaded")
    })
    .await;

    // A new egress allowlist without a restart: with moto not allowed, a create is refused
    // naming moto's address (PermissionDenied, retried minutes later); allowed again, a new
    // machine runs at once.
    let pid = w.controller.as_ref().unwrap().0.id();
    w.patch_provider(serde_json::json!({ "egress": { "hosts": ["127.0.0.1:9"] } }))
        .await;
    w.wait_provider("reconfigured", |s| condition(s, "Ready").0 == "True")
        .await;
    let blocked = w.create_machines("e", 1).await;
    let moto_addr = w.moto.addr.to_string();
    w.wait_machines(
        &blocked,
        |m| {
            m.status
                .as_ref()
                .map(|s| &s.last_operation)
                .is_some_and(|op| {
                    op.description.contains(&moto_addr)
                        && op.description.contains("egress allowlist")
                })
        },
        "refused egress to moto",
    )
    .await;
    w.patch_provider(serde_json::json!({ "egress": { "hosts": [moto_addr.clone()] } }))
        .await;
    w.wait_provider("reconfigured again", |s| condition(s, "Ready").0 == "True")
        .await;
    let allowed = w.create_machines("a", 1).await;
    w.wait_machines(&allowed, running, "Running once moto is allowed again")
        .await;
    assert_eq!(w.controller.as_ref().unwrap().0.id(), pid, "no restart");
    let events = w.provider_events().await;
    assert!(
        events.iter().any(|e| e.starts_with("Configured: ")),
        "{events:#?}"
    );

    // Deleting the Provider unloads it (the finalizer is removed by the controller).
    w.providers()
        .delete("aws", &DeleteParams::default())
        .await
        .unwrap();
    let started = Instant::now();
    while w.providers().get_opt("aws").await.unwrap().is_some() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "Provider not deleted: {}",
            w.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let events = w.provider_events().await;
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("Unloaded: ") && e.contains("9.9.9")),
        "{events:#?}"
    );
}

/// A private registry (TLS with its own CA, basic auth): a pull secret with a wrong password
/// leaves the Provider not Ready with "unauthorized" in its status, and Machines of its class
/// say so in lastOperation without any create; the right password (and a nudge) recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_registry_needs_the_right_pull_secret() {
    let mut w = World::start().await;
    let registry = Registry::start(Options {
        tls: true,
        basic_auth: Some(("alice".into(), "s3cret".into())),
    })
    .unwrap();
    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca.path(), registry.ca_pem.as_ref().unwrap()).unwrap();
    let pinned = push(
        &guest("aws_provider"),
        &format!("{}:v1", registry.reference("private/aws")),
        &[
            "--ca-file",
            ca.path().to_str().unwrap(),
            "--username",
            "alice",
        ],
        &[("MCM_WASM_REGISTRY_PASSWORD", "s3cret")],
    );
    let docker_config = |password: &str| {
        serde_json::json!({ "auths": { registry.host.clone(): {
            "username": "alice", "password": password } } })
        .to_string()
    };
    let secrets: Api<Secret> = Api::namespaced(w.client.clone(), NS);
    let pull_secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "registry-pull" },
        "type": "kubernetes.io/dockerconfigjson",
        "stringData": { ".dockerconfigjson": docker_config("guess") },
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &pull_secret)
        .await
        .unwrap();
    let ca_secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "registry-ca" },
        "stringData": { "ca.crt": registry.ca_pem.clone().unwrap() },
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &ca_secret)
        .await
        .unwrap();
    w.class().await;
    w.create_provider(serde_json::json!({
        "reference": pinned,
        "pullSecretRef": { "name": "registry-pull" },
        "certSecretRef": { "name": "registry-ca" },
    }))
    .await;
    w.start_controller();

    w.wait_provider("refused as unauthorized", |s| {
        condition(s, "Ready") == ("False", "FetchFailed")
            && condition(s, "Degraded") == ("True", "FetchFailed")
            && s.last_error
                .as_deref()
                .is_some_and(|e| e.contains("unauthorized"))
    })
    .await;
    let waiting = w.create_machines("w", 1).await;
    w.wait_machines(
        &waiting,
        |m| {
            m.status
                .as_ref()
                .is_some_and(|s| s.last_operation.description.contains("unauthorized"))
        },
        "told the provider is unauthorized at its registry",
    )
    .await;
    assert!(
        w.moto.live_instances_named(&waiting[0]).await.is_empty(),
        "no VM while the provider is not ready"
    );

    // The right password, and a nudge (any change to the Provider reconciles it at once).
    secrets
        .patch(
            "registry-pull",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({
                "stringData": { ".dockerconfigjson": docker_config("s3cret") } })),
        )
        .await
        .unwrap();
    w.providers()
        .patch(
            "aws",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({
                "metadata": { "annotations": { "mcm-wasm.io/reconcile": "now" } } })),
        )
        .await
        .unwrap();
    w.wait_provider("Ready with the right password", |s| {
        condition(s, "Ready") == ("True", "Loaded")
    })
    .await;
    w.wait_machines(&waiting, running, "Running once the provider loads")
        .await;
}

/// `mcm-wasm push`, `pull` and `inspect REFERENCE` against a real registry: the pinned
/// reference printed by push pulls back the same bytes, inspect reads the artifact's metadata
/// from the registry, and what the sandbox would not load is not pushed.
#[test]
fn push_pull_and_inspect_a_reference() {
    let registry = Registry::start(Options::default()).unwrap();
    let aws = guest("aws_provider");
    let pinned = push(
        &aws,
        &format!("{}:v1", registry.reference("cli/aws")),
        &["--insecure"],
        &[],
    );
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("pulled.wasm");
    let bin = || Command::new(env!("CARGO_BIN_EXE_mcm-wasm"));
    // A tag is resolved to the digest push printed.
    let pulled = bin()
        .args([
            "pull",
            &format!("{}:v1", registry.reference("cli/aws")),
            "--insecure",
            "-o",
        ])
        .arg(&out_file)
        .output()
        .unwrap();
    assert!(
        pulled.status.success(),
        "{}",
        String::from_utf8_lossy(&pulled.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&pulled.stdout).trim(), pinned);
    assert_eq!(
        std::fs::read(&out_file).unwrap(),
        std::fs::read(&aws).unwrap()
    );

    let inspected = bin()
        .args(["inspect", &pinned, "--insecure", "--json"])
        .output()
        .unwrap();
    assert!(
        inspected.status.success(),
        "{}",
        String::from_utf8_lossy(&inspected.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&inspected.stdout).unwrap();
    assert_eq!(json["name"], "aws");
    assert_eq!(json["reference"], pinned.as_str());
    assert_eq!(json["manifestDigest"], pinned.split_once('@').unwrap().1);
    assert_eq!(json["annotations"]["mcm-wasm.io/provider"], "aws");
    assert_eq!(json["annotations"]["mcm-wasm.io/aliases"], "AWS");

    // Not a component: refused before anything is sent, naming the file.
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"not wasm").unwrap();
    let refused = bin()
        .arg("push")
        .arg(&junk)
        .args([
            &format!("{}:junk", registry.reference("cli/aws")),
            "--insecure",
        ])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("junk.wasm"), "{err}");
    // A reference that names nothing in the registry: exit 1, the reference named.
    let missing = format!("{}:nope", registry.reference("cli/aws"));
    let gone = bin()
        .args(["inspect", &missing, "--insecure"])
        .output()
        .unwrap();
    assert_eq!(gone.status.code(), Some(1));
    let err = String::from_utf8_lossy(&gone.stderr);
    assert!(err.contains(&missing) && err.contains("not found"), "{err}");
}
