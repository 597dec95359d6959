//! The shared adaptive rate limiter against EC2's throttling (issue 14): `mcm-wasm controller`
//! as a process on a real API server, moto behind the fault proxy's throttle emulator
//! (`testenv::throttle`, EC2's token buckets), and two providers — the AWS provider and a
//! renamed copy of it, `aws-b` — whose classes share one credential.

use std::time::{Duration, Instant};

use kube::api::{Api, PostParams};
use machine_api::{Machine, MachinePhase};
use testenv::ec2::FaultProxy;
use testenv::throttle::Throttling;

use crate::support::{ControllerSetup, KillOnDrop, SimulatedKubelet, drop_in_command, guest};

/// A control plane, moto behind a throttling proxy, the providers `aws` and `aws-b` (the same
/// code, renamed) in one directory, their kubelets, and the classes `aws-class` (provider
/// `AWS`) and `aws-b-class` (provider `aws-b`) on one Secret.
struct World {
    base: ControllerSetup,
    proxy: FaultProxy,
    log: tempfile::NamedTempFile,
    _kubelet: SimulatedKubelet,
}

impl std::ops::Deref for World {
    type Target = ControllerSetup;
    fn deref(&self) -> &ControllerSetup {
        &self.base
    }
}

impl World {
    async fn start(throttling: Throttling) -> World {
        let base = ControllerSetup::start(&guest("aws_provider")).await;
        // The second provider: the same component under another name, without the `AWS`
        // alias (which the first one serves).
        let renamed =
            test_artifacts::with_metadata(&std::fs::read(guest("aws_provider")).unwrap(), |m| {
                m["name"] = "aws-b".into();
                m.as_object_mut().unwrap().remove("aliases");
            });
        std::fs::write(base.providers.path().join("aws-b.wasm"), renamed).unwrap();
        let kubelet = SimulatedKubelet::start_for(
            &base.client,
            "default",
            &["aws-b"],
            &base.moto.endpoint,
            base.providers.path(),
        )
        .await;
        testenv::ec2::create_aws_class_for(&base.client, "default", &base.moto, "AWS").await;
        let mut class: machine_api::MachineClass = Api::namespaced(base.client.clone(), "default")
            .get("aws-class")
            .await
            .unwrap();
        class.metadata = kube::api::ObjectMeta {
            name: Some("aws-b-class".into()),
            ..Default::default()
        };
        class.spec.provider = "aws-b".into();
        Api::namespaced(base.client.clone(), "default")
            .create(&PostParams::default(), &class)
            .await
            .unwrap();
        let proxy = FaultProxy::start(base.moto.addr).await;
        proxy.throttle(throttling);
        World {
            base,
            proxy,
            log: tempfile::NamedTempFile::new().unwrap(),
            _kubelet: kubelet,
        }
    }

    /// The controller with both providers pointed at the proxy (`AWS_ENDPOINT_URL_EC2`, which
    /// the provider declares) and `args`.
    fn controller(&self, args: &[&str]) -> KillOnDrop {
        KillOnDrop(
            drop_in_command(&self.base, &self.proxy.endpoint, &self.log)
                .arg("--leader-elect=false")
                .args(args)
                .env("MCM_WASM_LOG", "info")
                .spawn()
                .unwrap(),
        )
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap()
    }

    /// `per_class` machines of each class, created at once; their names.
    async fn create_machines(&self, per_class: usize) -> Vec<String> {
        let api: Api<Machine> = Api::namespaced(self.client.clone(), "default");
        let mut names = Vec::new();
        let mut creates = Vec::new();
        for class in ["aws-class", "aws-b-class"] {
            for i in 0..per_class {
                let name = format!("{}-{i}", class.trim_end_matches("-class"));
                let machine: Machine = serde_json::from_value(serde_json::json!({
                    "apiVersion": "machine.sapcloud.io/v1alpha1",
                    "kind": "Machine",
                    "metadata": { "name": name },
                    "spec": { "class": { "kind": "MachineClass", "name": class } },
                }))
                .unwrap();
                let api = api.clone();
                creates.push(async move { api.create(&PostParams::default(), &machine).await });
                names.push(name);
            }
        }
        for created in futures::future::join_all(creates).await {
            created.unwrap();
        }
        names
    }

    /// Wait until every machine is Running; every lastOperation seen on the way that speaks of
    /// throttling or rate limiting is returned.
    async fn wait_running(&self, names: &[String], within: Duration) -> Vec<String> {
        let api: Api<Machine> = Api::namespaced(self.client.clone(), "default");
        let started = Instant::now();
        let mut throttling_seen = std::collections::BTreeSet::new();
        loop {
            let machines = api.list(&Default::default()).await.unwrap().items;
            for m in &machines {
                let description = m
                    .status
                    .as_ref()
                    .map(|s| s.last_operation.description.clone())
                    .unwrap_or_default();
                let lower = description.to_lowercase();
                if lower.contains("requestlimitexceeded")
                    || lower.contains("throttl")
                    || lower.contains("rate limited")
                {
                    throttling_seen.insert(format!(
                        "{}: {description}",
                        m.metadata.name.as_deref().unwrap_or_default()
                    ));
                }
            }
            let running = machines
                .iter()
                .filter(|m| names.contains(m.metadata.name.as_ref().unwrap()))
                .filter(|m| m.phase() == Some(&MachinePhase::Running))
                .count();
            if running == names.len() {
                return throttling_seen.into_iter().collect();
            }
            assert!(
                started.elapsed() < within,
                "{running} of {} machines Running after {within:?}; throttled at the proxy: {:?}\n--- controller log (tail) ---\n{}",
                names.len(),
                self.proxy.throttled(),
                tail(&self.log_text(), 60)
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The emulator tighter than the provider's defaults (EC2's real buckets): RunInstances 3 at
/// 1.5/s, DescribeInstances 5 at 4/s. The limiter starts at the provider's defaults, is
/// throttled, lowers its rate and sends the refused requests again once its bucket allows: all
/// 50 machines run, no Machine ever shows throttling in its lastOperation, the emulator did
/// throttle (else this would prove nothing), and each EC2 action had one bucket for both
/// providers (one credential).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_machines_run_behind_tight_ec2_throttling_without_a_throttling_error() {
    let w = World::start(Throttling::ec2(1.0).with("RunInstances", 3.0, 1.5).with(
        "DescribeInstances",
        5.0,
        4.0,
    ))
    .await;
    let port = testenv::free_port().unwrap();
    let _controller = w.controller(&[&format!("--port={port}")]);
    let names = w.create_machines(25).await;
    let seen = w.wait_running(&names, Duration::from_secs(300)).await;
    let throttled = w.proxy.throttled();
    let by_action = w.proxy.requests_by_action();
    println!("throttled by the emulator: {throttled:?}; requests by action: {by_action:?}");
    assert!(
        seen.is_empty(),
        "throttling reached Machines' lastOperation:\n{}",
        seen.join("\n")
    );
    assert!(
        throttled.values().sum::<u64>() > 0,
        "the emulator never throttled: the test proves nothing ({by_action:?})"
    );
    let log = w.log_text();
    let failed: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("driver call failed")
                && (l.contains("RequestLimitExceeded") || l.contains("rate limited"))
        })
        .collect();
    assert!(
        failed.is_empty(),
        "driver calls failed on throttling:\n{}",
        failed.join("\n")
    );
    // RunInstances: exactly one per machine reached moto (a throttled one never does).
    let run = by_action.get("RunInstances").copied().unwrap_or_default();
    let run_throttled = throttled.get("RunInstances").copied().unwrap_or_default();
    assert_eq!(
        run - run_throttled,
        names.len() as u64,
        "{by_action:?} {throttled:?}"
    );
    // The limiter's view on /metrics: one bucket per action for both providers, having seen
    // every RunInstances request (retries included) and the emulator's refusals.
    let metrics = crate::support::metrics_text(port).await;
    let series = |family: &str, class: &str| -> Vec<f64> {
        metrics
            .lines()
            .filter(|l| {
                l.starts_with(&format!("{family}{{")) && l.contains(&format!("class=\"{class}\""))
            })
            .filter_map(|l| l.rsplit_once(' ')?.1.parse().ok())
            .collect()
    };
    assert_eq!(
        series("mcm_wasm_rate_limit_requests_total", "RunInstances"),
        vec![run as f64],
        "one RunInstances bucket, every request through it:\n{metrics}"
    );
    let limiter_throttled: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("mcm_wasm_rate_limit_throttled_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert_eq!(
        limiter_throttled,
        throttled.values().sum::<u64>() as f64,
        "the limiter saw every refusal:\n{metrics}"
    );
}

/// Two providers, one credential, one bucket: with RunInstances limited to 2 at 3/s for both
/// (`--provider-rate-limits`) and the emulator loose, the RunInstances requests of both together
/// never exceed one bucket's worth in any window (per-provider buckets would allow twice that).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_providers_on_one_credential_share_one_bucket() {
    let w = World::start(Throttling::ec2(1.0).with("RunInstances", 1000.0, 1000.0)).await;
    let limits = r#"{"classes":{"RunInstances":{"rate":3,"burst":2}}}"#;
    let _controller = w.controller(&[
        "--port=0",
        &format!("--provider-rate-limits=aws={limits}"),
        &format!("--provider-rate-limits=aws-b={limits}"),
    ]);
    let names = w.create_machines(12).await;
    w.wait_running(&names, Duration::from_secs(240)).await;
    let runs: Vec<Instant> = w
        .proxy
        .timeline()
        .into_iter()
        .filter(|(_, action, _)| action == "RunInstances")
        .map(|(at, _, _)| at)
        .collect();
    assert_eq!(runs.len(), names.len(), "one RunInstances per machine");
    // In every window [runs[i], runs[j]]: at most burst + rate × its length requests (and
    // one more for timing slack between the controller's clock and the proxy's).
    let mut worst = 0.0f64;
    for i in 0..runs.len() {
        for j in i..runs.len() {
            let window = runs[j].duration_since(runs[i]).as_secs_f64();
            let allowed = 2.0 + 3.0 * window + 1.0;
            let seen = (j - i + 1) as f64;
            worst = worst.max(seen - allowed);
            assert!(
                seen <= allowed,
                "{seen} RunInstances in {window:.2} s exceed one shared bucket (2 at 3/s)"
            );
        }
    }
    let span = runs.last().unwrap().duration_since(runs[0]);
    println!(
        "{} RunInstances over {span:?} (worst margin {worst:.2})",
        runs.len()
    );
}
