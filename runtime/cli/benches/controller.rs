//! `cargo bench -p mcm-wasm --bench controller [-- --machines N] [--provider aws|sample]
//! [--kube-api-qps Q --kube-api-burst B] [--throttle F] [--ec2-default-limits]
//! [--deployment] [--limit-margin M]`: the
//! machine controller at scale. A real kube-apiserver + etcd, the cloud (moto for the AWS
//! provider, default; the sample provider's backend) behind a counting loopback proxy, and
//! `mcm-wasm controller` as its own process; the node join is simulated in the bench process.
//! N Machines (default 100) are created at once; measured: time until all are Running (and the
//! per-machine creation -> Running latency), the controller's cloud requests per machine by
//! action, CPU time of the controller and the cloud, the controller's memory (peak and final
//! RSS), and then the time until all are deleted. Prints a Markdown table (see BENCHMARKS.md),
//! and, for the AWS provider on plain moto, provider-aws v0.28.0's figures beside ours.
//! `--throttle F` puts EC2's throttling (AWS's default buckets, refill rates × F) in front of
//! moto and sets the provider's rate limits to EC2's × F; without it the limits are set out of
//! the way (moto does not throttle), unless `--ec2-default-limits` keeps the provider's own.
//! `--limit-margin M` (with `--throttle`): the provider's limits at EC2's × F × M (an
//! operator keeping a margin under the cloud's published rates; default 1).
//! `--deployment`: the N Machines come from a MachineDeployment scaled 0 -> N by Gardener's
//! machine-controller-manager (`--kube-api-qps 200 --kube-api-burst 300`, so that its own
//! client limit does not pace the creations), and deletion is the scale back to 0; the
//! per-machine latency then starts when the bench first sees the Machine.
//! `--controller-args "ARGS"`: more flags for `mcm-wasm controller` (split at spaces), e.g.
//! `"--batch-max-wait 2s --create-workers 150"`.

#[path = "../tests/cli/support.rs"]
mod support;

use std::collections::{BTreeMap, HashMap};
use std::ops::Not as _;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt as _;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use machine_api::{Machine, MachineClass, MachineDeployment};
use support::*;
use test_artifacts::built_guest as guest;

const NS: &str = "default";

/// The value after `--NAME` on the command line.
/// Whether the flag `name` was given.
fn arg_flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

/// The AWS provider's EC2 limits (its metadata's defaults) with every rate × `factor`.
fn rate_limits(factor: f64) -> String {
    let class = |rate: f64, burst: u32| serde_json::json!({"rate": rate * factor, "burst": burst});
    serde_json::json!({
        "classes": {
            "RunInstances": class(2.0, 5),
            "TerminateInstances": class(5.0, 100),
            "DescribeInstances": class(20.0, 100),
            "DescribeImages": class(20.0, 100),
        },
        "default": class(5.0, 50),
    })
    .to_string()
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// The cloud behind the provider: moto for the AWS provider, or the sample provider's backend
/// (a small in-memory Python service: it shows the controller's own limit).
enum Cloud {
    Moto(Moto),
    Sample(SampleBackend),
}

impl Cloud {
    fn provider(&self) -> &'static str {
        match self {
            Cloud::Moto(_) => "aws",
            Cloud::Sample(_) => "sample",
        }
    }

    fn endpoint(&self) -> String {
        match self {
            Cloud::Moto(m) => m.endpoint.clone(),
            Cloud::Sample(b) => b.endpoint.clone(),
        }
    }

    fn pid(&self) -> u32 {
        match self {
            Cloud::Moto(m) => m.pid(),
            Cloud::Sample(b) => b.pid(),
        }
    }

    /// The Secret and MachineClass `aws-class` (whatever the provider) in `ns`.
    async fn create_class(&self, client: &kube::Client) {
        match self {
            Cloud::Moto(moto) => create_aws_class(client, NS, moto).await,
            Cloud::Sample(_) => {
                let secret: Secret = serde_json::from_value(serde_json::json!({
                    "metadata": { "name": "aws-secret" },
                    "stringData": { "token": SAMPLE_TOKEN, "userData": "#!/bin/sh\necho <<MACHINE_NAME>>" },
                }))
                .unwrap();
                Api::namespaced(client.clone(), NS)
                    .create(&PostParams::default(), &secret)
                    .await
                    .unwrap();
                let class: MachineClass = serde_json::from_value(serde_json::json!({
                    "apiVersion": "machine.sapcloud.io/v1alpha1",
                    "kind": "MachineClass",
                    "metadata": { "name": "aws-class" },
                    "provider": "sample",
                    "providerSpec": {
                        "machineType": "small",
                        "image": "debian-12",
                        "tags": { "kubernetes.io/cluster/bench": "1", "kubernetes.io/role/node": "1" },
                    },
                    "secretRef": { "name": "aws-secret", "namespace": NS },
                }))
                .unwrap();
                Api::namespaced(client.clone(), NS)
                    .create(&PostParams::default(), &class)
                    .await
                    .unwrap();
            }
        }
    }

    /// VMs the cloud runs.
    async fn running(&self) -> usize {
        match self {
            // Every page: moto answers DescribeInstances in pages.
            Cloud::Moto(moto) => moto
                .all_instances()
                .await
                .iter()
                .filter(|i| i.state == "running")
                .count(),
            Cloud::Sample(b) => b
                .machines()
                .iter()
                .filter(|m| m["state"] == "running")
                .count(),
        }
    }
}

const SAMPLE_TOKEN: &str = "bench-token";

/// (VmHWM, VmRSS) of a process, in MiB.
fn memory_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// CPU time (user + system) a process has used so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which is in parentheses): state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<u64> = rest
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let ticks = fields.get(10).unwrap_or(&0) + fields.get(11).unwrap_or(&0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

fn phase(m: &Machine) -> &str {
    m.status
        .as_ref()
        .and_then(|s| s.current_status.phase.as_ref())
        .map_or("", |p| p.as_str())
}

#[tokio::main]
async fn main() {
    let n: usize = arg("--machines").map_or(100, |n| n.parse().expect("--machines N"));
    mcm_controller::install_crypto_provider();
    let cloud = match arg("--provider").as_deref() {
        None | Some("aws") => Cloud::Moto(Moto::start()),
        Some("sample") => Cloud::Sample(SampleBackend::start(SAMPLE_TOKEN)),
        Some(other) => panic!("--provider {other}: aws or sample"),
    };
    let provider = cloud.provider();
    let wasm = guest(&format!("{provider}_provider"));

    let cp = testenv::ControlPlane::start().expect("control plane (run `just controlplane`)");
    cp.apply_crds().unwrap();
    let client = cp.client().await.unwrap();
    let upstream = cloud
        .endpoint()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let proxy = FaultProxy::start(upstream).await;
    // `--throttle F`: EC2's request buckets in front of the cloud, refill rates × F.
    let throttle: Option<f64> = arg("--throttle").map(|f| f.parse().expect("--throttle FACTOR"));
    if let Some(factor) = throttle {
        proxy.throttle(testenv::throttle::Throttling::ec2(factor));
        println!("EC2 throttle emulator: AWS's default buckets, refill rates x{factor}");
    }
    cloud.create_class(&client).await;

    let providers = tempfile::tempdir().unwrap();
    std::fs::copy(&wasm, providers.path().join(format!("{provider}.wasm"))).unwrap();
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = controller_command(
        providers.path(),
        cp.kubeconfig_path(),
        provider,
        &proxy.endpoint,
    );
    // The API-server limit: unlimited unless given (the figures in BENCHMARKS.md were taken
    // before the controller had MCM's --kube-api-qps/burst; `--kube-api-qps 20
    // --kube-api-burst 30` runs at MCM's defaults, as a provider-aws deployment does).
    let qps = arg("--kube-api-qps").unwrap_or_else(|| "0".into());
    let burst = arg("--kube-api-burst").unwrap_or_else(|| "30".into());
    println!("controller API-server limit: --kube-api-qps {qps} --kube-api-burst {burst}");
    // The client-side rate limits: EC2's default buckets (the AWS provider's own defaults)
    // scaled as the emulator's when throttling; on a moto that does not throttle, out of the
    // way (as provider-aws has none), unless `--ec2-default-limits` keeps the defaults.
    if matches!(cloud, Cloud::Moto(_)) && arg_flag("--ec2-default-limits").not() {
        let margin: f64 =
            arg("--limit-margin").map_or(1.0, |m| m.parse().expect("--limit-margin M"));
        let limits = rate_limits(throttle.unwrap_or(100.0) * margin);
        println!("controller rate limits: {limits}");
        cmd.arg(format!("--provider-rate-limits=aws={limits}"));
    }
    if let Some(more) = arg("--controller-args") {
        println!("controller flags added: {more}");
        cmd.args(more.split_whitespace());
    }
    cmd.args(["--namespace", NS, "--leader-elect=false", "--port", "0"])
        .args(["--kube-api-qps", &qps, "--kube-api-burst", &burst])
        .env("MCM_WASM_LOG", "warn,mcm_sandbox=info");
    let controller = testenv::spawn("mcm-wasm controller", cmd, log.path()).unwrap();
    // The kubelets, simulated in this process and asking the cloud directly: the proxy counts
    // only the controller's requests.
    let kubelet =
        SimulatedKubelet::start(&client, NS, provider, &cloud.endpoint(), providers.path()).await;
    let pid = controller.id();
    // Let it start (providers loaded, informers synced) before the clock starts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, rss_idle) = memory_mib(pid);
    proxy.take_actions();

    // `--deployment`: Gardener's MCM makes the Machines of a MachineDeployment.
    let deployment = arg_flag("--deployment");
    let deployments: Api<MachineDeployment> = Api::namespaced(client.clone(), NS);
    let _mcm = if deployment {
        deployments
            .create(
                &PostParams::default(),
                &machine_deployment("bench", "aws-class"),
            )
            .await
            .unwrap();
        let mcm = cp
            .start_gardener_mcm_with(NS, &["--kube-api-qps=200", "--kube-api-burst=300"])
            .expect("Gardener MCM (run `just controlplane`)");
        tokio::time::sleep(Duration::from_secs(2)).await;
        println!("Machines from MachineDeployment `bench` (Gardener's machine-controller-manager)");
        Some(mcm)
    } else {
        None
    };
    let scale = |replicas: usize| {
        let deployments = deployments.clone();
        async move {
            let patch = serde_json::json!({"spec": {"replicas": replicas}});
            deployments
                .patch(
                    "bench",
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(&patch),
                )
                .await
                .unwrap();
        }
    };

    let machines: Api<Machine> = Api::namespaced(client.clone(), NS);
    let started = Instant::now();
    let mut created_at: HashMap<String, Instant> = HashMap::new();
    let mut all_posted = None;
    if deployment {
        scale(n).await;
    } else {
        let names: Vec<String> = (0..n).map(|i| format!("bench-{i:04}")).collect();
        let creates = futures::stream::iter(names.into_iter().map(|name| {
            let client = client.clone();
            async move {
                create_machine(&client, NS, &name).await;
                (name, Instant::now())
            }
        }))
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
        created_at.extend(creates);
        all_posted = Some(started.elapsed());
    }

    let cpu_before = (cpu_time(pid), cpu_time(cloud.pid()));
    let mut vm_at: HashMap<String, Instant> = HashMap::new();
    let mut running_at: HashMap<String, Instant> = HashMap::new();
    let mut peak_hwm = 0.0f64;
    let mut throttling_errors = std::collections::BTreeSet::new();
    let timeout = Duration::from_secs(120 + n as u64);
    while running_at.len() < n {
        assert!(
            started.elapsed() < timeout,
            "{} of {n} Running after {timeout:?}; controller log:\n{}",
            running_at.len(),
            testenv::tail(log.path(), 20)
        );
        assert!(
            controller.exit_status().is_none(),
            "the controller exited:\n{}",
            testenv::tail(log.path(), 20)
        );
        let listed = machines.list(&ListParams::default()).await.unwrap();
        if all_posted.is_none() && listed.items.len() >= n {
            all_posted = Some(started.elapsed());
        }
        for m in listed {
            created_at.entry(m.name_any()).or_insert_with(Instant::now);
            let said = m
                .status
                .as_ref()
                .map(|s| s.last_operation.description.to_lowercase())
                .unwrap_or_default();
            if ["requestlimitexceeded", "throttl", "rate limited"]
                .iter()
                .any(|w| said.contains(w))
            {
                throttling_errors.insert(m.name_any());
            }
            if !m.spec.provider_id.is_empty() {
                vm_at.entry(m.name_any()).or_insert_with(Instant::now);
            }
            if phase(&m) == "Running" {
                running_at.entry(m.name_any()).or_insert_with(Instant::now);
            }
        }
        peak_hwm = peak_hwm.max(memory_mib(pid).0);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let all_running = started.elapsed();
    let cpu = (
        cpu_time(pid) - cpu_before.0,
        cpu_time(cloud.pid()) - cpu_before.1,
    );
    let all_vms = vm_at.values().max().map_or(all_running, |t| *t - started);
    let (hwm, rss_running) = memory_mib(pid);
    let create_actions = proxy.take_actions();
    let live = cloud.running().await;
    assert_eq!(live, n, "one running instance per machine");

    let all_posted = all_posted.unwrap_or(all_running);
    let names: Vec<String> = running_at.keys().cloned().collect();
    let mut latencies: Vec<Duration> = names
        .iter()
        .map(|name| running_at[name] - created_at[name])
        .collect();
    latencies.sort();

    // Delete them all (scale the deployment to 0).
    let deleting = Instant::now();
    if deployment {
        scale(0).await;
    } else {
        futures::stream::iter(names.iter().cloned().map(|name| {
            let machines = machines.clone();
            async move {
                machines
                    .delete(&name, &DeleteParams::default())
                    .await
                    .unwrap();
            }
        }))
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    }
    loop {
        let left = machines
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len();
        if left == 0 {
            break;
        }
        assert!(
            deleting.elapsed() < timeout,
            "{left} machines left after {timeout:?}; controller log:\n{}",
            testenv::tail(log.path(), 20)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let all_deleted = deleting.elapsed();
    let delete_actions = proxy.take_actions();
    let (hwm_end, rss_end) = memory_mib(pid);
    drop(controller);
    // The controller's log (warnings, failed driver calls) stays for a look afterwards.
    let kept = test_artifacts::repo_root().join("target/bench-controller.log");
    if std::fs::copy(log.path(), &kept).is_ok() {
        println!("controller log: {}", kept.display());
    }
    kubelet.stop().await;

    let count = |actions: &[String], action: &str| {
        actions.iter().filter(|a| a.as_str() == action).count() as f64 / n as f64
    };
    let per_machine = |actions: &[String]| {
        let mut by: BTreeMap<&str, usize> = BTreeMap::new();
        for a in actions {
            *by.entry(a.as_str()).or_default() += 1;
        }
        let detail = by
            .iter()
            .map(|(a, c)| format!("{a} {:.2}", *c as f64 / n as f64))
            .collect::<Vec<_>>()
            .join(", ");
        format!("{:.2} ({detail})", actions.len() as f64 / n as f64)
    };
    let secs = |d: Duration| format!("{:.1} s", d.as_secs_f64());
    let cloud_name = match cloud {
        Cloud::Moto(_) => "AWS provider, moto",
        Cloud::Sample(_) => "sample provider, its backend",
    };
    let source = if deployment {
        "a MachineDeployment (Gardener's MCM)"
    } else {
        "Machines"
    };
    println!(
        "\n## Machine controller: {n} machines from {source} ({cloud_name}; control plane, controller process)\n"
    );
    println!("| figure | value |");
    println!("|---|---|");
    println!("| machines | {n} |");
    println!("| all Machine objects created | {} |", secs(all_posted));
    println!(
        "| all Running (from the first create) | {} |",
        secs(all_running)
    );
    println!(
        "| all VMs created (providerID recorded) | {} |",
        secs(all_vms)
    );
    println!(
        "| per machine, created -> Running: p50 / p90 / max | {} / {} / {} |",
        secs(quantile(&latencies, 0.5)),
        secs(quantile(&latencies, 0.9)),
        secs(quantile(&latencies, 1.0))
    );
    println!(
        "| throughput to Running | {:.1} machines/s |",
        n as f64 / all_running.as_secs_f64()
    );
    println!(
        "| controller's cloud requests per machine, create to Running | {} |",
        per_machine(&create_actions)
    );
    println!(
        "| all deleted (VM terminated, node deleted, finalizer removed) | {} |",
        secs(all_deleted)
    );
    println!(
        "| controller's cloud requests per machine, deletion | {} |",
        per_machine(&delete_actions)
    );
    println!(
        "| CPU time until all Running: controller / cloud (incl. the simulated kubelets' requests) | {} / {} |",
        secs(cpu.0),
        secs(cpu.1)
    );
    println!(
        "| controller RSS: idle / all Running / after deletion | {rss_idle:.0} / {rss_running:.0} / {rss_end:.0} MiB |"
    );
    println!(
        "| controller peak RSS (VmHWM) | {:.0} MiB |",
        peak_hwm.max(hwm).max(hwm_end)
    );
    // Errors of the cloud itself (moto), e.g. a refused batch TerminateInstances (the
    // provider then looks up the batch's live instances and terminates them again).
    println!(
        "| cloud error answers (by action, status, code) | {:?} |",
        proxy.cloud_errors()
    );
    if let Some(factor) = throttle {
        // RunInstances' bucket (5, refilled at 2/s × factor) bounds how fast N VMs can be
        // asked for: the floor any client meets.
        let floor = (n as f64 - 5.0).max(0.0) / (2.0 * factor);
        println!(
            "| EC2 throttle emulator x{factor}: requests refused, by action | {:?} |",
            proxy.throttled()
        );
        println!(
            "| Machines with throttling in lastOperation (any time) | {} |",
            throttling_errors.len()
        );
        println!(
            "| all Running vs the RunInstances floor (N - 5) / (2/s x {factor}) = {floor:.1} s | {:.2}x |",
            all_running.as_secs_f64() / floor
        );
        // Where the time went: RunInstances admitted and refused per 10 s from the start (the
        // floor is 20 x factor admitted per 10 s).
        let mut bins: BTreeMap<u64, (u32, u32)> = BTreeMap::new();
        for (at, action, refused) in proxy.timeline() {
            if action != "RunInstances" || at < started {
                continue;
            }
            let bin = bins.entry((at - started).as_secs() / 10).or_default();
            if refused {
                bin.1 += 1;
            } else {
                bin.0 += 1;
            }
        }
        let timeline = bins
            .iter()
            .map(|(b, (ok, refused))| format!("{}s: {ok}/{refused}", b * 10))
            .collect::<Vec<_>>()
            .join(", ");
        println!("| RunInstances admitted/refused per 10 s | {timeline} |");
    } else {
        println!(
            "| Machines with throttling in lastOperation (any time) | {} |",
            throttling_errors.len()
        );
    }
    if matches!(cloud, Cloud::Moto(_)) && throttle.is_none() {
        // The baseline: Gardener's provider-aws v0.28.0 machine-controller, 100 Machines at
        // once, measured side by side with mcm-wasm on the same ground by the author of issue
        // 14 (its module is not served by the Go module proxy, so it cannot be built here).
        // At another N only the per-machine figures compare; the others get no ratio.
        let rows: [(&str, String, f64, bool); 8] = [
            (
                "time to all Running (s)",
                format!("{:.1}", all_running.as_secs_f64()),
                53.6,
                false,
            ),
            (
                "EC2 requests per machine, create -> Running",
                format!("{:.2}", create_actions.len() as f64 / n as f64),
                6.0,
                true,
            ),
            (
                "  DescribeInstances",
                format!("{:.2}", count(&create_actions, "DescribeInstances")),
                4.0,
                true,
            ),
            (
                "  DescribeImages",
                format!("{:.2}", count(&create_actions, "DescribeImages")),
                1.0,
                true,
            ),
            (
                "  RunInstances",
                format!("{:.2}", count(&create_actions, "RunInstances")),
                1.0,
                true,
            ),
            (
                "time to all deleted (s)",
                format!("{:.1}", all_deleted.as_secs_f64()),
                50.0,
                false,
            ),
            (
                "EC2 requests per machine, deletion",
                format!("{:.2}", delete_actions.len() as f64 / n as f64),
                1.95,
                true,
            ),
            (
                "controller CPU until all Running (s)",
                format!("{:.1}", cpu.0.as_secs_f64()),
                5.6,
                false,
            ),
        ];
        println!(
            "\n| figure ({n} machines) | mcm-wasm (this run) | provider-aws v0.28.0 at 100 (issue 14) | ratio |"
        );
        println!("|---|---|---|---|");
        let ratio = |ours: f64, theirs: f64, per_machine: bool| {
            if n == 100 || per_machine {
                format!("{:.2}x", ours / theirs)
            } else {
                format!("(theirs at 100, ours at {n})")
            }
        };
        for (figure, ours, theirs, per_machine) in rows {
            let ratio = ours
                .parse::<f64>()
                .map_or(String::new(), |o| ratio(o, theirs, per_machine));
            println!("| {figure} | {ours} | {theirs} | {ratio} |");
        }
        let peak = peak_hwm.max(hwm).max(hwm_end);
        println!(
            "| controller peak RSS (MiB) | {peak:.0} | 92 | {} |",
            ratio(peak, 92.0, false)
        );
    }
}
