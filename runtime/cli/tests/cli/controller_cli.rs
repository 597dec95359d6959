//! `mcm-wasm controller` as a process: MCM's flag names, bad flags refused with a clear
//! message, and a real run (control plane, moto, the AWS provider from a providers directory,
//! a simulated kubelet in the test process) that brings a Machine to Running and stops cleanly on SIGTERM, and a
//! controller killed mid-create that leaves exactly one instance after its restart, and a
//! controller with only the RBAC of `kubernetes/deploy/`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;
use kube::api::Api;
use machine_api::{Machine, MachinePhase};

use crate::support::ControllerSetup as Setup;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mcm-wasm"))
}

#[test]
fn help_names_mcm_flags() {
    let out = bin().args(["controller", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--control-kubeconfig",
        "--target-kubeconfig",
        "--namespace",
        "--machine-creation-timeout",
        "--machine-health-timeout",
        "--machine-drain-timeout",
        "--machine-max-evict-retries",
        "--machine-safety-orphan-vms-period",
        "--concurrent-syncs",
        "--providers-dir",
        "--leader-elect",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
}

#[test]
fn bad_flags_are_refused_clearly() {
    let out = bin()
        .args([
            "controller",
            "--providers-dir",
            "/nonexistent",
            "--machine-creation-timeout",
            "soon",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"soon\" is not a duration"), "{err}");

    let out = bin()
        .args(["controller", "--providers-dir", "/nonexistent"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--providers-dir /nonexistent is not a directory"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .args(["controller", "--providers-dir"])
        .arg(dir.path())
        .args(["--provider-config", "aws={not json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--provider-config for aws: not JSON"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_a_machine_to_running_and_stops_on_sigterm() {
    let Setup {
        cp,
        client,
        moto,
        providers,
        kubelet: _kubelet,
    } = Setup::start(&guest("aws_provider")).await;
    create_aws_class(&client, "default", &moto).await;

    let log = tempfile::NamedTempFile::new().unwrap();
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = KillOnDrop(
        controller_command(
            providers.path(),
            cp.kubeconfig_path(),
            "aws",
            &moto.endpoint,
        )
        .args([
            "--namespace",
            "default",
            "--address",
            "127.0.0.1",
            "--port",
            &metrics_port.to_string(),
        ])
        .env("MCM_WASM_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap(),
    );
    let child = &mut child.0;

    let machines: Api<Machine> = Api::namespaced(client.clone(), "default");
    create_machine(&client, "default", "cli-machine-1").await;
    let started = Instant::now();
    loop {
        let m = machines.get("cli-machine-1").await.unwrap();
        if m.phase() == Some(&MachinePhase::Running) {
            assert!(m.spec.provider_id.starts_with("aws:///"), "{:?}", m.spec);
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "controller exited with {status}: {}",
                std::fs::read_to_string(log.path()).unwrap()
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "not Running: {:?}\n--- controller log ---\n{}",
            m.status,
            std::fs::read_to_string(log.path()).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(moto.live_instances_named("cli-machine-1").await.len(), 1);

    // /healthz, /readyz and /metrics.
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let get = |path: &'static str| {
        let http = http.clone();
        async move {
            let resp = http
                .get(format!("http://127.0.0.1:{metrics_port}{path}"))
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    assert_eq!(get("/healthz").await, (200, "ok".to_string()));
    assert_eq!(
        get("/readyz").await,
        (200, "ok".to_string()),
        "{}",
        std::fs::read_to_string(log.path()).unwrap()
    );
    let (status, metrics) = get("/metrics").await;
    assert_eq!(status, 200);
    for line in [
        "mcm_wasm_driver_calls_total{provider=\"aws\",operation=\"CreateMachine\",code=\"OK\"} 1",
        // The AWS provider creates in batches (contract 0.1.3): its CreateMachine went through
        // one, and no GetMachineStatus came first (create-machines is "find or create").
        "mcm_wasm_driver_batched_machines_total{provider=\"aws\",operation=\"CreateMachine\"} 1",
        "mcm_wasm_driver_call_duration_seconds_count{provider=\"aws\",operation=\"CreateMachine\"} 1",
        "mcm_machine_items_total 1",
        "mcm_machine_current_status_phase{name=\"cli-machine-1\",namespace=\"default\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} missing from:\n{metrics}"
        );
    }
    assert!(
        !metrics
            .lines()
            .any(|l| l.contains("operation=\"GetMachineStatus\",code=\"NotFound\"")),
        "{metrics}"
    );
    let m = machines.get("cli-machine-1").await.unwrap();
    let info = format!(
        "mcm_machine_info{{name=\"cli-machine-1\",namespace=\"default\",createdAt=\"{}\",spec_provider_id=\"{}\",spec_class_api_group=\"\",spec_class_kind=\"MachineClass\",spec_class_name=\"aws-class\",node_name=\"{}\",size=\"m5.large\",region=\"eu-west-1\"}} 1",
        m.metadata
            .creation_timestamp
            .as_ref()
            .unwrap()
            .0
            .as_second(),
        m.spec.provider_id,
        m.node_name().unwrap()
    );
    assert!(
        metrics.lines().any(|l| l == info),
        "{info} missing from:\n{metrics}"
    );
    assert!(
        metrics.lines().any(|l| l
            == "mcm_machine_status_condition{name=\"cli-machine-1\",namespace=\"default\",condition=\"Ready\"} 1"),
        "{metrics}"
    );
    assert_eq!(get("/nope").await.0, 404);

    // SIGTERM: the controller finishes and exits 0.
    send_sigterm(child.id());
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "controller did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        status.success(),
        "exit {status}: {}",
        std::fs::read_to_string(log.path()).unwrap()
    );
}

fn send_sigterm(pid: u32) {
    let ok = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// A test that fails leaves no controller behind.
/// The controller killed (SIGKILL) while CreateMachine is in flight, then started again:
/// exactly one instance, and the machine Running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_create_then_restarted_leaves_exactly_one_instance() {
    let Setup {
        cp,
        client,
        moto,
        providers,
        kubelet: _kubelet,
    } = Setup::start(&guest("aws_provider")).await;
    let proxy = FaultProxy::start(moto.addr).await;
    create_aws_class(&client, "default", &moto).await;
    let log = tempfile::NamedTempFile::new().unwrap();
    let spawn = || {
        KillOnDrop(
            controller_command(
                providers.path(),
                cp.kubeconfig_path(),
                "aws",
                &proxy.endpoint,
            )
            .args(["--port", "0"])
            .env("MCM_WASM_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap(),
        )
    };

    // moto runs the instance, the answer is held back; the controller dies meanwhile.
    proxy.inject("RunInstances", Fault::SlowAnswer(Duration::from_secs(20)));
    let mut first = spawn();
    let machines: Api<Machine> = Api::namespaced(client.clone(), "default");
    create_machine(&client, "default", "killed-machine-1").await;
    let started = Instant::now();
    while proxy.pending_faults() > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "RunInstances never sent"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    assert_eq!(
        moto.live_instances_named("killed-machine-1").await.len(),
        1,
        "moto ran the instance"
    );
    assert!(
        machines
            .get("killed-machine-1")
            .await
            .unwrap()
            .spec
            .provider_id
            .is_empty(),
        "killed before recording it"
    );

    let mut second = spawn();
    let started = Instant::now();
    loop {
        let m = machines.get("killed-machine-1").await.unwrap();
        if m.phase() == Some(&MachinePhase::Running) {
            break;
        }
        if let Ok(Some(status)) = second.0.try_wait() {
            panic!(
                "controller exited with {status}: {}",
                std::fs::read_to_string(log.path()).unwrap()
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "not Running: {:?}",
            m.status
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let live = moto.live_instances_named("killed-machine-1").await;
    assert_eq!(
        live.len(),
        1,
        "exactly one instance after the restart: {live:?}"
    );
    let m = machines.get("killed-machine-1").await.unwrap();
    assert!(
        m.spec.provider_id.ends_with(&live[0].id),
        "{} vs {}",
        m.spec.provider_id,
        live[0].id
    );
    assert_eq!(
        proxy
            .take_actions()
            .iter()
            .filter(|a| *a == "RunInstances")
            .count(),
        1,
        "the restarted controller found the VM instead of running another"
    );
}

/// Two controllers with `--leader-elect`: one leads (holds the Lease `machine-controller`);
/// when it is killed, the other takes the Lease after it expires and serves new machines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_election_hands_over_when_the_leader_dies() {
    let Setup {
        cp,
        client,
        moto,
        providers,
        kubelet: _kubelet,
    } = Setup::start(&guest("aws_provider")).await;
    create_aws_class(&client, "default", &moto).await;
    let spawn = || {
        KillOnDrop(
            controller_command(
                providers.path(),
                cp.kubeconfig_path(),
                "aws",
                &moto.endpoint,
            )
            .args(["--port", "0", "--leader-elect"])
            .args([
                "--leader-elect-lease-duration",
                "3s",
                "--leader-elect-renew-deadline",
                "2s",
            ])
            .args(["--leader-elect-retry-period", "500ms"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        )
    };
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), "default");
    let holder = || async {
        leases
            .get_opt("machine-controller")
            .await
            .unwrap()
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
            .unwrap_or_default()
    };
    let wait_holder = |pid: u32| {
        let holder = &holder;
        async move {
            let started = Instant::now();
            loop {
                let h = holder().await;
                if h.ends_with(&format!("_{pid}")) {
                    return;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "pid {pid} never led; holder {h:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let machines: Api<Machine> = Api::namespaced(client.clone(), "default");
    let run_machine = |name: &'static str| {
        let (machines, client) = (machines.clone(), client.clone());
        async move {
            create_machine(&client, "default", name).await;
            let started = Instant::now();
            while machines.get(name).await.unwrap().phase() != Some(&MachinePhase::Running) {
                assert!(
                    started.elapsed() < Duration::from_secs(90),
                    "{name} not Running"
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    };

    let mut a = spawn();
    wait_holder(a.0.id()).await;
    let b = spawn();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        holder().await.ends_with(&format!("_{}", a.0.id())),
        "the first leader keeps the Lease while it renews"
    );
    run_machine("leader-machine-1").await;

    a.0.kill().unwrap();
    a.0.wait().unwrap();
    wait_holder(b.0.id()).await;
    run_machine("leader-machine-2").await;
    assert_eq!(moto.live_instances_named("leader-machine-1").await.len(), 1);
    assert_eq!(moto.live_instances_named("leader-machine-2").await.len(), 1);
    drop(b);
}

/// The controller as the ServiceAccount of `kubernetes/deploy/` (a real token, only the RBAC
/// shipped there) with leader election: a Machine goes to Running and is deleted (drain, VM,
/// Node, finalizers), and no request of the controller is forbidden. The node join is
/// simulated in the test process with admin rights (a kubelet's, not the controller's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_with_only_the_shipped_rbac() {
    const NS: &str = "mcm-wasm";

    let Setup {
        cp,
        client,
        moto,
        providers,
        kubelet: _kubelet,
    } = Setup::start(&guest("aws_provider")).await;
    let deploy = testenv::kubernetes_dir().join("deploy");
    for file in ["namespace.yaml", "serviceaccount.yaml", "rbac.yaml"] {
        cp.kubectl_run([
            "apply".as_ref(),
            "-f".as_ref(),
            deploy.join(file).as_os_str(),
        ])
        .unwrap();
    }
    create_aws_class(&client, NS, &moto).await;

    // A kubeconfig with a token of the ServiceAccount.
    let token = cp
        .kubectl_run(["-n", NS, "create", "token", "mcm-wasm-controller"])
        .unwrap();
    let kubeconfig = tempfile::NamedTempFile::new().unwrap();
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "c", "cluster": {
            "server": cp.server_url(),
            "certificate-authority": cp.dir().join("pki/ca.crt"),
        }}],
        "users": [{ "name": "sa", "user": { "token": token.trim() } }],
        "contexts": [{ "name": "c", "context": { "cluster": "c", "user": "sa" } }],
        "current-context": "c",
    });
    std::fs::write(kubeconfig.path(), config.to_string()).unwrap();

    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = KillOnDrop(
        controller_command(providers.path(), kubeconfig.path(), "aws", &moto.endpoint)
            .args(["--namespace", NS, "--leader-elect", "--port", "0"])
            .env("MCM_WASM_LOG", "info,kube_client=debug")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap(),
    );

    let kubelet =
        SimulatedKubelet::start(&client, NS, "aws", &moto.endpoint, providers.path()).await;

    let machines: Api<Machine> = Api::namespaced(client.clone(), NS);
    create_machine(&client, NS, "rbac-machine-1").await;
    // The log at debug level is long: on failure show its requests that were refused and its
    // last lines.
    let log_text = || {
        let text = std::fs::read_to_string(log.path()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let refused: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| l.contains("Forbidden"))
            .take(5)
            .collect();
        format!(
            "refused: {refused:#?}\nlast lines:\n{}",
            lines[lines.len().saturating_sub(15)..].join("\n")
        )
    };
    let started = Instant::now();
    let node = loop {
        let m = machines.get("rbac-machine-1").await.unwrap();
        if m.phase() == Some(&MachinePhase::Running) {
            break m.node_name().unwrap().to_string();
        }
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!("controller exited with {status}: {}", log_text());
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "not Running: {:?}\n--- controller log ---\n{}",
            m.status,
            log_text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let lease: k8s_openapi::api::coordination::v1::Lease = Api::namespaced(client.clone(), NS)
        .get("machine-controller")
        .await
        .unwrap();
    assert!(
        lease.spec.and_then(|s| s.holder_identity).is_some(),
        "the controller holds its Lease"
    );

    machines
        .delete("rbac-machine-1", &Default::default())
        .await
        .unwrap();
    let started = Instant::now();
    while machines.get_opt("rbac-machine-1").await.unwrap().is_some() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "not deleted:\n{}",
            log_text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    assert!(
        nodes.get_opt(&node).await.unwrap().is_none(),
        "node deleted"
    );
    assert!(moto.live_instances_named("rbac-machine-1").await.is_empty());
    kubelet.stop().await;
    let text = std::fs::read_to_string(log.path()).unwrap();
    assert!(
        text.contains("GET"),
        "the log shows the controller's requests"
    );
    assert!(
        !text.contains("Forbidden"),
        "a request was forbidden:\n{}",
        log_text()
    );
}
