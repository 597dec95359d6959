//! `cargo bench -p mcm-wasm --bench aws`: the AWS provider through the sandbox against a local
//! moto server. Per-operation latency (p50/p90/max) and the EC2 requests each operation makes
//! (counted by a loopback proxy), plus moto's own latency for one DescribeInstances without the
//! sandbox as the baseline. Prints a Markdown table (recorded in BENCHMARKS.md).

use std::time::{Duration, Instant};

use mcm_driver::*;
use mcm_sandbox::{Deadlines, EgressPolicy, Provider, ProviderSettings, Sandbox, SandboxConfig};
use testenv::ec2::*;

const N: usize = 30;

struct Row {
    name: &'static str,
    times: Vec<Duration>,
    requests: Vec<u64>,
}

impl Row {
    fn new(name: &'static str) -> Row {
        Row {
            name,
            times: Vec::new(),
            requests: Vec::new(),
        }
    }
    fn print(&mut self) {
        self.times.sort();
        let p = |q: f64| self.times[((self.times.len() as f64 - 1.0) * q).round() as usize];
        let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1e3);
        let reqs = if self.requests.is_empty() {
            "-".to_string()
        } else {
            let (min, max) = (
                self.requests.iter().min().unwrap(),
                self.requests.iter().max().unwrap(),
            );
            if min == max {
                min.to_string()
            } else {
                format!("{min}-{max}")
            }
        };
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            self.name,
            self.times.len(),
            ms(p(0.5)),
            ms(p(0.9)),
            ms(p(1.0)),
            reqs
        );
    }
}

async fn measure<T>(row: &mut Row, proxy: Option<&FaultProxy>, f: impl AsyncFnOnce() -> T) -> T {
    let before = proxy.map(|p| p.requests());
    let started = Instant::now();
    let out = f().await;
    row.times.push(started.elapsed());
    if let (Some(p), Some(b)) = (proxy, before) {
        row.requests.push(p.requests() - b);
    }
    out
}

#[tokio::main]
async fn main() {
    let wasm = test_artifacts::built_guest("aws_provider");
    assert!(
        wasm.exists(),
        "{} missing: run `just guests`",
        wasm.display()
    );

    let moto = Moto::start();
    let proxy = FaultProxy::start(moto.addr).await;
    let (ami, subnet, group) = moto.class_resources().await;
    let spec = provider_spec(&ami, &subnet, &group);
    let cache = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::new(SandboxConfig {
        deadlines: Deadlines::all(Duration::from_secs(30)),
        cache_dir: Some(cache.path().to_path_buf()),
        ..SandboxConfig::default()
    })
    .unwrap();
    let settings = ProviderSettings {
        egress: EgressPolicy::parse(&[proxy.addr.to_string()]).unwrap(),
        config: Some(serde_json::json!({"endpoint": proxy.endpoint}).to_string()),
        deadlines: None,
        ..Default::default()
    };
    let provider = Provider::load(&sandbox, &wasm, settings).await.unwrap();
    let request = |name: &str| MachineRequest {
        machine: Machine {
            name: name.into(),
            namespace: "bench".into(),
            uid: format!("uid-{name}"),
            ..Default::default()
        },
        machine_class: MachineClass {
            name: "bench".into(),
            provider: "aws".into(),
            provider_spec: spec.clone(),
            node_template: None,
        },
        secret: secret(),
    };
    let class = ClassRequest {
        machine_class: request("x").machine_class,
        secret: secret(),
    };

    // Warm up moto (its first answers are slow) and the connection pool.
    let warm = provider.create_machine(&request("warm-up")).await.unwrap();
    let mut warm_req = request("warm-up");
    warm_req.machine.provider_id = warm.provider_id;
    provider.delete_machine(&warm_req).await.unwrap();

    let mut baseline =
        Row::new("moto DescribeInstances by tag, direct (no sandbox, no provider, unsigned)");
    let mut validate = Row::new("validate-machine-class");
    let mut create = Row::new("create-machine (new VM)");
    let mut recreate = Row::new("create-machine (repeated, VM exists)");
    let mut status = Row::new("get-machine-status");
    let mut list = Row::new("list-machines");
    let mut delete = Row::new("delete-machine (providerID)");
    let mut gone = Row::new("get-machine-status after delete (NotFound)");

    let mut made = Vec::new();
    for i in 0..N {
        let name = format!("bench-{i}");
        measure(&mut baseline, None, async || {
            moto.ec2(
                REGION,
                "DescribeInstances",
                &[("Filter.1.Name", "tag:Name"), ("Filter.1.Value.1", &name)],
            )
            .await
            .0
            .len()
        })
        .await;
        measure(&mut validate, Some(&proxy), async || {
            provider.validate_machine_class(&class).await.unwrap()
        })
        .await;
        let c = measure(&mut create, Some(&proxy), async || {
            provider.create_machine(&request(&name)).await.unwrap()
        })
        .await;
        measure(&mut recreate, Some(&proxy), async || {
            provider.create_machine(&request(&name)).await.unwrap()
        })
        .await;
        let mut with_id = request(&name);
        with_id.machine.provider_id = c.provider_id.clone();
        measure(&mut status, Some(&proxy), async || {
            provider.get_machine_status(&with_id).await.unwrap()
        })
        .await;
        measure(&mut list, Some(&proxy), async || {
            provider.list_machines(&class).await.unwrap()
        })
        .await;
        made.push(with_id);
    }
    for with_id in &made {
        measure(&mut delete, Some(&proxy), async || {
            provider.delete_machine(with_id).await.unwrap()
        })
        .await;
        measure(&mut gone, Some(&proxy), async || {
            provider.get_machine_status(with_id).await.unwrap_err()
        })
        .await;
    }

    let size = std::fs::metadata(&wasm).unwrap().len();
    println!(
        "\n## AWS provider against moto ({N} machines; component {} KiB)\n",
        size / 1024
    );
    println!("| operation | n | p50 | p90 | max | EC2 requests per call |");
    println!("|---|---|---|---|---|---|");
    for row in [
        &mut baseline,
        &mut validate,
        &mut create,
        &mut recreate,
        &mut status,
        &mut list,
        &mut delete,
        &mut gone,
    ] {
        row.print();
    }
    println!("\nlist-machines ran with 1..{N} machines of the class present.");
}
