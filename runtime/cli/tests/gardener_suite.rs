//! Gardener's own machine-controller integration suite (MCM v0.62.1's
//! `pkg/test/integration/common`, the 10 specs provider-aws runs) against `mcm-wasm controller`,
//! with Gardener's machine-controller-manager beside it, on the project's control plane, moto
//! and simulated Nodes. The Go side is `kubernetes/gardener-suite/` (the two suite files and an
//! orphan tracker asking moto and the provider); this file builds it with `go test -c`, lays out
//! the "provider repository" the framework expects around the binary (it starts both
//! controllers itself with `make --directory=../../.. start` and `../../../dev/mcm`), runs it,
//! and prints ginkgo's summary.
//!
//! Its own test binary on purpose: cargo runs test binaries one after another, and the framework
//! kills processes machine-wide by command-line prefix (`machine-controller-manager
//! --control-kubeconfig`, …) at setup and cleanup — it must not meet another test's Gardener MCM.
//! The Go binary runs in its own process group, killed whole at the end (make's children too).
//!
//! Spec 7 ("should freeze and unfreeze machineset temporarily") counts the freeze and unfreeze
//! events of Gardener's safety controller after the 6 → 2 scale-down: it freezes a MachineSet
//! only while it still sees more machines than replicas + surge + safety-up. Our controller runs
//! every deletion step in one reconcile, so the 4 machines could be gone in under 0.5 s; when
//! the safety controller's freeze then hit an update conflict, its retry saw only 2 machines
//! and no event came (2 of 9 runs). Gardener's own machine controller requeues ~5 s after each
//! deletion step, which is the pace the spec was written for: the controller runs here with
//! `--deletion-step-pause 5s` (MCM's pace), and the spec itself is unchanged.

#[path = "cli/support.rs"]
mod support;

use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use support::*;

const NS: &str = "default";
const CLUSTER: &str = "shoot--a";

/// `go test -c` of kubernetes/gardener-suite into the target directory (Go's build cache
/// makes a rebuild of an unchanged package take a second).
fn build_suite() -> PathBuf {
    let root = test_artifacts::repo_root();
    let out = root.join("target/gardener-suite/controller.test");
    let started = Instant::now();
    let status = Command::new("go")
        .args(["test", "-c", "-o"])
        .arg(&out)
        .arg(".")
        .current_dir(root.join("kubernetes/gardener-suite"))
        .status()
        .expect("running go (install Go >= 1.26)");
    assert!(
        status.success(),
        "building kubernetes/gardener-suite failed"
    );
    eprintln!(
        "gardener suite: built in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    out
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// The directory tree the framework expects of a provider repository, with `start` targets
/// that run our controller (root) and Gardener's MCM (dev/mcm); returns the test package dir.
fn provider_repo(root: &Path, suite_binary: &Path) -> PathBuf {
    // The framework passes CONTROL_KUBECONFIG, TARGET_KUBECONFIG, CONTROL_NAMESPACE and
    // LEADER_ELECT as make variables; the rest comes from the environment (MCM_WASM_CONTROLLER).
    write(
        &root.join("GNUmakefile"),
        "start:\n\texec $(MCM_WASM) controller --control-kubeconfig=$(CONTROL_KUBECONFIG) \
         --target-kubeconfig=$(TARGET_KUBECONFIG) --namespace=$(CONTROL_NAMESPACE) \
         --leader-elect=$(LEADER_ELECT) $(MCM_WASM_CONTROLLER_ARGS)\n",
    );
    // As MCM's own Makefile `start` target (safety-up 2, safety-down 1), on loopback.
    write(
        &root.join("dev/mcm/GNUmakefile"),
        "start:\n\texec $(GARDENER_MCM) --control-kubeconfig=$(CONTROL_KUBECONFIG) \
         --target-kubeconfig=$(TARGET_KUBECONFIG) --namespace=$(CONTROL_NAMESPACE) \
         --safety-up=2 --safety-down=1 \
         --machine-safety-overshooting-period=$(MACHINE_SAFETY_OVERSHOOTING_PERIOD) \
         --leader-elect=$(LEADER_ELECT) --address=127.0.0.1 --port=$(GARDENER_MCM_PORT) --v=3\n",
    );
    std::fs::create_dir_all(root.join("dev/mcm/.git")).unwrap();
    let crds = root.join("dev/mcm/kubernetes/crds");
    std::fs::create_dir_all(&crds).unwrap();
    let gardener = testenv::GardenerMcm::locate().expect("Gardener MCM (run `just controlplane`)");
    for entry in std::fs::read_dir(&gardener.crds).unwrap().flatten() {
        std::fs::copy(entry.path(), crds.join(entry.file_name())).unwrap();
    }
    // provider-aws's patch: the integration-test tag on both classes.
    write(
        &root.join(".ci/controllers-test/machine-class-patch.json"),
        r#"{"providerSpec": {"tags": {"mcm-integration-test": "true"}}}"#,
    );
    std::fs::create_dir_all(root.join(".ci/controllers-test/logs")).unwrap();
    let package = root.join("test/integration/controller");
    std::fs::create_dir_all(&package).unwrap();
    std::fs::copy(suite_binary, package.join("controller.test")).unwrap();
    package
}

/// Kills a process group when dropped (the suite, make, both controllers).
struct Group(u32);

impl Drop for Group {
    fn drop(&mut self) {
        unsafe { libc::kill(-(self.0 as i32), libc::SIGKILL) };
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gardeners_integration_suite_passes() {
    let suite = build_suite();
    mcm_controller::install_crypto_provider();
    let cp = testenv::ControlPlane::start().expect("control plane (run `just controlplane`)");
    cp.apply_crds().unwrap();
    let client = cp.client().await.unwrap();
    let moto = Moto::start();
    let (ami, subnet, group) = moto.class_resources().await;
    let providers = tempfile::tempdir().unwrap();
    let aws = providers.path().join("aws.wasm");
    std::fs::copy(guest("aws_provider"), &aws).unwrap();
    let _kubelet =
        SimulatedKubelet::start(&client, NS, "aws", &moto.endpoint, providers.path()).await;

    // The class as a provider-aws user has it: `provider: AWS`, provider-aws's providerSpec and
    // secret keys; its secret exists before the suite starts.
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "test-mc-secret"},
        "stringData": {
            "userData": "#!/bin/bash\necho <<MACHINE_NAME>>",
            "providerAccessKeyId": ACCESS_KEY,
            "providerSecretAccessKey": SECRET_KEY,
        },
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let class = serde_json::json!({
        "apiVersion": "machine.sapcloud.io/v1alpha1",
        "kind": "MachineClass",
        "metadata": {"name": "test-mc-v1", "namespace": NS},
        "provider": "AWS",
        "providerSpec": provider_spec(&ami, &subnet, &group),
        "secretRef": {"name": "test-mc-secret", "namespace": NS},
    });
    let class_file = work.path().join("machine-class-v1.yaml");
    write(&class_file, &serde_yaml_ng::to_string(&class).unwrap());
    let package = provider_repo(&work.path().join("repo"), &suite);

    // The endpoint as provider-aws users set it (AWS_ENDPOINT_URL_EC2, below): the AWS
    // provider's config and egress allowlist follow it.
    let controller_args = format!(
        "--providers-dir={} --address=127.0.0.1 --port={} \
         --deletion-step-pause=5s --machine-safety-orphan-vms-period=30s",
        providers.path().display(),
        testenv::free_port().unwrap(),
    );
    let gardener = testenv::GardenerMcm::locate().unwrap();
    let started = Instant::now();
    let mut child = Command::new(package.join("controller.test"))
        .args(["-test.v", "-ginkgo.no-color", "-ginkgo.v"])
        .current_dir(&package)
        .env("CONTROL_KUBECONFIG", cp.kubeconfig_path())
        .env("TARGET_KUBECONFIG", cp.kubeconfig_path())
        .env("CONTROL_CLUSTER_NAMESPACE", NS)
        .env("MACHINECLASS_V1", &class_file)
        .env("TARGET_CLUSTER_NAME", CLUSTER)
        .env("GNA_SECRET_NAME", "dummy-gna-secret")
        .env("MOTO_ENDPOINT", &moto.endpoint)
        .env("AWS_ENDPOINT_URL_EC2", &moto.endpoint)
        .env("AWS_PROVIDER_WASM", &aws)
        .env("MCM_WASM", env!("CARGO_BIN_EXE_mcm-wasm"))
        .env("MCM_WASM_CONTROLLER_ARGS", controller_args)
        .env("MCM_WASM_LOG", "info")
        .env("GARDENER_MCM", &gardener.binary)
        .env(
            "GARDENER_MCM_PORT",
            testenv::free_port().unwrap().to_string(),
        )
        .env_remove("IS_CONTROL_CLUSTER_SEED")
        .env_remove("IS_VIRTUAL_PROVIDER")
        .env_remove("PRESERVE_CRD_AT_END")
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the suite binary");
    let _group = Group(child.id());
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (out, err, status) = tokio::task::spawn_blocking(move || {
        let read = |mut r: Box<dyn std::io::Read + Send>| {
            std::thread::spawn(move || {
                let mut s = String::new();
                r.read_to_string(&mut s).ok();
                s
            })
        };
        let (o, e) = (read(Box::new(stdout)), read(Box::new(stderr)));
        let status = child.wait().unwrap();
        (o.join().unwrap(), e.join().unwrap(), status)
    })
    .await
    .unwrap();
    // Both controllers' logs, kept after the run in target/gardener-suite/logs.
    let logs = test_artifacts::repo_root().join("target/gardener-suite/logs");
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::create_dir_all(&logs).unwrap();
    let ran = work.path().join("repo/.ci/controllers-test/logs");
    for entry in std::fs::read_dir(&ran).unwrap().flatten() {
        std::fs::copy(entry.path(), logs.join(entry.file_name())).unwrap();
    }
    std::fs::write(logs.join("suite.log"), &out).unwrap();
    let log = |name: &str| std::fs::read_to_string(logs.join(name)).unwrap_or_default();

    // Ginkgo's summary, straight to the terminal (libtest captures only the print macros).
    let summary: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("Ran ") && !l.contains("Summarizing"))
        .collect();
    let _ = writeln!(
        std::io::stderr(),
        "\nGardener integration suite ({:.0} s):\n{}",
        started.elapsed().as_secs_f64(),
        summary.join("\n")
    );
    let tail = |text: &str, n: usize| {
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    };
    assert!(
        status.success() && out.contains("Ran 10 of 10 Specs") && out.contains("SUCCESS!"),
        "suite failed ({status}; all logs in {}):\n{}\n--- stderr ---\n{}\n--- mcm-wasm controller ---\n{}\n--- Gardener MCM ---\n{}",
        logs.display(),
        tail(&out, 150),
        tail(&err, 30),
        tail(&log("mc_process.log"), 80),
        tail(&log("mcm_process.log"), 40),
    );
    // The run really made VMs (so spec 10's "no orphans" had something to check), and none
    // is left running.
    let all = moto.all_instances().await;
    // What the specs wait for: 1 (specs 1-2) + 1 + 5 (specs 4-5, their nodes ready) + at
    // least 2 for the rolling update to v2 (spec 8 waits for 4 ready nodes with 2 of v1 left;
    // how many more v2 VMs exist before spec 9 deletes the deployment is timing: a run made 3
    // of its 4, the 4th Machine deleted before its creation window closed).
    assert!(all.len() >= 9, "the suite made {} VMs", all.len());
    let live: Vec<_> = all
        .iter()
        .filter(|i| !matches!(i.state.as_str(), "terminated" | "shutting-down"))
        .collect();
    assert!(live.is_empty(), "VMs left running: {live:?}");
}
