//! The chaos run: a MachineDeployment scaled 0 → N → N/6 → 0 (Gardener's machine-controller-
//! manager makes the MachineSets and Machines) while
//! - a loopback fault proxy in front of moto gives 10 % of the controller's EC2 requests a
//!   fault: 500, 503, throttling, a dropped connection, or the answer lost after moto acted
//!   (equally likely; `testenv::FaultProxy::random_faults`);
//! - `mcm-wasm controller` (its own process, leader election on) is SIGKILLed three times at
//!   random points, one per phase, and started again — and restarted, as a Deployment would, if
//!   it exits by itself (e.g. when it loses its Lease);
//! - the API server is restarted once, during the scale-up.
//!
//! After every phase: exactly one live instance per Machine (tagged with its name, the one its
//! providerID names), no live instance without a Machine (orphans; the controller's orphan
//! collection cannot hide one: its minimum age is the default 20 min), no Machine stuck with a
//! deletionTimestamp; at the end no object left with a finalizer. The node join is simulated
//! (`support::SimulatedKubelet`, asking moto directly, not through the faults).
//!
//! N is 30 in `just test`; `just chaos` runs N = 300 (`MCM_WASM_CHAOS_MACHINES`) and prints
//! the table recorded in BENCHMARKS.md. `MCM_WASM_CHAOS_SEED` repeats a run (faults and kill
//! points); the seed is printed. Its own test binary: it restarts its API server, and runs
//! processes (Gardener's MCM) no other test should meet.

#[path = "cli/support.rs"]
mod support;

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt as _;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use machine_api::{Machine, MachineClass, MachineDeployment, MachinePhase, MachineSet};
use support::*;

const NS: &str = "default";

/// A small seeded generator (splitmix64) for kill points.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A duration in `[lo, hi)`.
    fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let span = (hi - lo).as_millis().max(1) as u64;
        lo + Duration::from_millis(self.next() % span)
    }
}

/// `mcm-wasm controller`, supervised: started again whenever it is not running.
struct Supervised {
    command: Box<dyn Fn() -> Command>,
    child: Option<Child>,
    log: std::path::PathBuf,
    metrics_port: u16,
    kills: u32,
    /// Starts after the first, for any reason (a kill, an exit of its own).
    restarts: u32,
    /// Exits the controller chose itself (not our kills), with their status.
    exits: Vec<String>,
    /// Driver calls that failed (not OK, and not the NotFound of a VM not made yet), summed
    /// over every process's /metrics.
    failed_calls: u64,
}

impl Supervised {
    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = (self.command)();
        cmd.stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log));
        if self.child.is_some() || self.kills > 0 || !self.exits.is_empty() {
            self.restarts += 1;
        }
        self.child = Some(cmd.spawn().expect("starting mcm-wasm controller"));
    }

    /// Start it again if it exited.
    fn supervise(&mut self) {
        if let Some(child) = &mut self.child
            && let Ok(Some(status)) = child.try_wait()
        {
            self.exits.push(status.to_string());
            self.child = None;
        }
        if self.child.is_none() {
            self.start();
        }
    }

    /// Driver calls this process made that failed, from its /metrics (0 if it does not answer).
    async fn scrape_failed_calls(&self) -> u64 {
        let url = format!("http://127.0.0.1:{}/metrics", self.metrics_port);
        let Ok(Ok(resp)) = tokio::time::timeout(Duration::from_secs(2), reqwest::get(&url)).await
        else {
            return 0;
        };
        let text = resp.text().await.unwrap_or_default();
        text.lines()
            .filter(|l| {
                l.starts_with("mcm_wasm_driver_calls_total{")
                    && !l.contains("code=\"OK\"")
                    && !l.contains("code=\"NotFound\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// SIGKILL, then start again.
    async fn kill(&mut self) {
        self.failed_calls += self.scrape_failed_calls().await;
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.kills += 1;
        self.start();
    }

    async fn stop(&mut self) {
        self.failed_calls += self.scrape_failed_calls().await;
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What can happen during a phase, at its time after the phase began.
enum Chaos {
    KillController,
    RestartApiServer,
}

struct PhaseReport {
    name: String,
    replicas: usize,
    took: Duration,
    events: Vec<String>,
}

/// Live instances (not terminated or shutting down) by their Name tag, with their ids.
async fn live_instances(moto: &Moto) -> HashMap<String, Vec<String>> {
    let mut by_name: HashMap<String, Vec<String>> = HashMap::new();
    for i in moto.all_instances().await {
        if matches!(i.state.as_str(), "terminated" | "shutting-down") {
            continue;
        }
        by_name
            .entry(i.tags.get("Name").cloned().unwrap_or_default())
            .or_default()
            .push(i.id.clone());
    }
    by_name
}

/// The checkpoint after a phase: what is wrong, if anything.
async fn check(client: &kube::Client, moto: &Moto) -> Vec<String> {
    let machines = Api::<Machine>::namespaced(client.clone(), NS)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    let mut live = live_instances(moto).await;
    let mut wrong = Vec::new();
    for m in &machines {
        let name = m.name_any();
        if m.metadata.deletion_timestamp.is_some() {
            wrong.push(format!("{name} stuck deleting"));
        }
        let ids = live.remove(&name).unwrap_or_default();
        let id = m.spec.provider_id.rsplit('/').next().unwrap_or_default();
        if ids.len() != 1 || ids[0] != id {
            wrong.push(format!(
                "{name} (providerID {}) has live instances {ids:?}",
                m.spec.provider_id
            ));
        }
    }
    for (name, ids) in live {
        wrong.push(format!("orphan instances {ids:?} named {name:?}"));
    }
    wrong
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_scaling_through_faults_kills_and_an_api_server_restart() {
    let n: usize = std::env::var("MCM_WASM_CHAOS_MACHINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let seed: u64 = std::env::var("MCM_WASM_CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let _ = writeln!(
        std::io::stderr(),
        "chaos: {n} machines, seed {seed} (MCM_WASM_CHAOS_SEED={seed} repeats it)"
    );
    let mut rng = Rng(seed);

    mcm_controller::install_crypto_provider();
    let mut cp = testenv::ControlPlane::start().expect("control plane (run `just controlplane`)");
    cp.apply_crds().unwrap();
    let client = cp.client().await.unwrap();
    let moto = Moto::start();
    let proxy = FaultProxy::start(moto.addr).await;
    let providers = tempfile::tempdir().unwrap();
    std::fs::copy(guest("aws_provider"), providers.path().join("aws.wasm")).unwrap();
    let kubelet =
        SimulatedKubelet::start(&client, NS, "aws", &moto.endpoint, providers.path()).await;

    // The class and its secret (`aws-secret`), then the deployment at 0.
    create_aws_class(&client, NS, &moto).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let classes: Api<MachineClass> = Api::namespaced(client.clone(), NS);
    let deployments: Api<MachineDeployment> = Api::namespaced(client.clone(), NS);
    let deployment = machine_deployment("chaos", "aws-class");
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    let _mcm = cp
        .start_gardener_mcm(NS)
        .expect("Gardener MCM (run `just controlplane`)");

    let logs = test_artifacts::repo_root().join("target/chaos");
    std::fs::create_dir_all(&logs).unwrap();
    let log = logs.join("controller.log");
    let _ = std::fs::remove_file(&log);
    let metrics_port = testenv::free_port().unwrap();
    let (kubeconfig, providers_dir, endpoint) = (
        cp.kubeconfig_path().to_path_buf(),
        providers.path().to_path_buf(),
        proxy.endpoint.clone(),
    );
    let mut controller = Supervised {
        command: Box::new(move || {
            let mut cmd = controller_command(&providers_dir, &kubeconfig, "aws", &endpoint);
            cmd.args([
                "--namespace",
                NS,
                "--address",
                "127.0.0.1",
                "--port",
                &metrics_port.to_string(),
                "--leader-elect-lease-duration=6s",
                "--leader-elect-renew-deadline=4s",
                "--leader-elect-retry-period=1s",
            ])
            .env(
                "MCM_WASM_LOG",
                std::env::var("MCM_WASM_CHAOS_LOG").unwrap_or("info".into()),
            );
            cmd
        }),
        child: None,
        log: log.clone(),
        metrics_port,
        kills: 0,
        restarts: 0,
        exits: Vec::new(),
        failed_calls: 0,
    };
    controller.start();
    proxy.random_faults(100, seed);

    // Kill points: one per phase, at a random time within what the phase surely lasts.
    let window = Duration::from_secs(3 + n as u64 / 10);
    let mut kill = || {
        (
            rng.between(Duration::from_secs(1), window),
            Chaos::KillController,
        )
    };
    let up_kill = kill();
    let phases = vec![
        (
            "scale up",
            n,
            vec![
                up_kill,
                (Duration::from_secs(2) + window / 2, Chaos::RestartApiServer),
            ],
        ),
        ("scale down", n / 6, vec![kill()]),
        ("scale to 0", 0, vec![kill()]),
    ];
    let limit = Duration::from_secs(240 + 3 * n as u64);
    let mut reports = Vec::new();
    let mut problems = Vec::new();
    let machines: Api<Machine> = Api::namespaced(client.clone(), NS);
    for (name, replicas, mut chaos) in phases {
        chaos.sort_by_key(|(at, _)| *at);
        let patch = serde_json::json!({"spec": {"replicas": replicas}});
        deployments
            .patch("chaos", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        let started = Instant::now();
        let mut events = Vec::new();
        let mut chaos = chaos.into_iter().peekable();
        loop {
            controller.supervise();
            while chaos.peek().is_some_and(|(at, _)| started.elapsed() >= *at) {
                let (_, what) = chaos.next().unwrap();
                let at = started.elapsed().as_secs_f64();
                match what {
                    Chaos::KillController => {
                        controller.kill().await;
                        events.push(format!("controller SIGKILLed at {at:.1} s"));
                    }
                    Chaos::RestartApiServer => {
                        let t = Instant::now();
                        tokio::task::block_in_place(|| cp.restart_apiserver()).unwrap();
                        events.push(format!(
                            "API server restarted at {at:.1} s (down {:.1} s)",
                            t.elapsed().as_secs_f64()
                        ));
                    }
                }
            }
            // Done: the machines the deployment wants, all Running, every chaos event past.
            if chaos.peek().is_none()
                && let Ok(list) = machines.list(&ListParams::default()).await
            {
                let running = list
                    .items
                    .iter()
                    .filter(|m| {
                        m.metadata.deletion_timestamp.is_none()
                            && m.phase() == Some(&MachinePhase::Running)
                    })
                    .count();
                if list.items.len() == replicas && running == replicas {
                    break;
                }
            }
            if started.elapsed() > limit {
                let list = machines.list(&ListParams::default()).await.unwrap().items;
                let mut by_phase: BTreeMap<String, usize> = BTreeMap::new();
                for m in &list {
                    let p = m
                        .phase()
                        .map(|p| p.as_str().to_string())
                        .unwrap_or("none".into());
                    let deleting = if m.metadata.deletion_timestamp.is_some() {
                        " (deleting)"
                    } else {
                        ""
                    };
                    *by_phase.entry(format!("{p}{deleting}")).or_default() += 1;
                }
                let stuck: Vec<String> = list
                    .iter()
                    .filter(|m| {
                        m.phase() != Some(&MachinePhase::Running)
                            || m.metadata.deletion_timestamp.is_some()
                    })
                    .map(|m| {
                        let lo = m
                            .status
                            .as_ref()
                            .map(|s| s.last_operation.description.clone())
                            .unwrap_or_default();
                        format!(
                            "{} phase {:?} providerID {:?} node {:?}: {lo}",
                            m.name_any(),
                            m.phase().map(|p| p.as_str()),
                            m.spec.provider_id,
                            m.node_name()
                        )
                    })
                    .collect();
                panic!(
                    "{name}: {replicas} Running machines not reached in {limit:?}: {by_phase:?}; controller log: {}\n{}",
                    log.display(),
                    stuck.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let took = started.elapsed();
        for p in check(&client, &moto).await {
            problems.push(format!("after {name}: {p}"));
        }
        reports.push(PhaseReport {
            name: name.to_string(),
            replicas,
            took,
            events,
        });
    }
    // The deployment goes too, then the class: nothing may keep a finalizer (the class's and
    // its secret's go once nothing refers to them).
    deployments
        .delete("chaos", &DeleteParams::default())
        .await
        .unwrap();
    let started = Instant::now();
    let mut class_deleted = false;
    let finalizers_left = loop {
        controller.supervise();
        if !class_deleted
            && machines
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .is_empty()
        {
            classes
                .delete("aws-class", &DeleteParams::default())
                .await
                .unwrap();
            class_deleted = true;
        }
        let mut left = Vec::new();
        let sets = Api::<MachineSet>::namespaced(client.clone(), NS)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items;
        for o in &sets {
            left.push(format!("MachineSet {} {:?}", o.name_any(), o.finalizers()));
        }
        for o in deployments
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
        {
            left.push(format!(
                "MachineDeployment {} {:?}",
                o.name_any(),
                o.finalizers()
            ));
        }
        for o in machines.list(&ListParams::default()).await.unwrap().items {
            left.push(format!("Machine {} {:?}", o.name_any(), o.finalizers()));
        }
        for o in classes.list(&ListParams::default()).await.unwrap().items {
            left.push(format!(
                "MachineClass {} {:?}",
                o.name_any(),
                o.finalizers()
            ));
        }
        for o in secrets.list(&ListParams::default()).await.unwrap().items {
            if !o.finalizers().is_empty() {
                left.push(format!("Secret {} {:?}", o.name_any(), o.finalizers()));
            }
        }
        if left.is_empty() || started.elapsed() > Duration::from_secs(60) {
            break left;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    controller.stop().await;
    kubelet.stop().await;
    proxy.random_faults(0, 0);
    let live_left: usize = live_instances(&moto).await.values().map(Vec::len).sum();

    // The table.
    let injected = proxy.injected();
    let mut table = format!(
        "\n### Chaos run: {n} machines (seed {seed})\n\n| phase | replicas | time (s) | chaos |\n|---|---:|---:|---|\n"
    );
    for r in &reports {
        table += &format!(
            "| {} | {} | {:.1} | {} |\n",
            r.name,
            r.replicas,
            r.took.as_secs_f64(),
            r.events.join("; ")
        );
    }
    table += &format!(
        "\n| count | value |\n|---|---:|\n| EC2 requests through the fault proxy | {} |\n| faults injected | {} ({}) |\n| driver calls that failed and were retried (not OK / NotFound) | {} |\n| controller SIGKILLs | {} |\n| controller starts after the first | {} |\n| controller exits of its own | {} |\n| checkpoint problems (duplicates, orphans, stuck) | {} |\n| live instances at the end | {live_left} |\n| objects left with a finalizer | {} |\n",
        proxy.requests(),
        injected.values().sum::<u64>(),
        injected
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", "),
        controller.failed_calls,
        controller.kills,
        controller.restarts,
        controller.exits.len(),
        problems.len(),
        finalizers_left.len(),
    );
    let _ = writeln!(std::io::stderr(), "{table}");
    std::fs::write(logs.join("table.md"), &table).unwrap();

    assert!(
        problems.is_empty(),
        "checkpoints failed:\n{}",
        problems.join("\n")
    );
    assert_eq!(live_left, 0, "instances left running");
    assert!(
        finalizers_left.is_empty(),
        "finalizers left: {finalizers_left:?}"
    );
    assert_eq!(controller.kills, 3);
    assert!(
        injected.values().sum::<u64>() > 0,
        "the proxy injected no fault"
    );
}
