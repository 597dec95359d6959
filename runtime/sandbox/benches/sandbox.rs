//! `just bench`: sandbox overhead, throughput, compile/cache/swap times and deadline overshoot.
//! Prints a Markdown table; BENCHMARKS.md records the figures with the machine they ran on.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mcm_driver::*;
use mcm_sandbox::{Deadlines, Provider, ProviderSettings, Registry, Sandbox, SandboxConfig};

fn guest(name: &str) -> PathBuf {
    let path = test_artifacts::built_guest(name);
    assert!(
        path.exists(),
        "{} missing: run `just guests`",
        path.display()
    );
    path
}

fn sandbox(cache: &Path, deadline: Duration) -> Arc<Sandbox> {
    Sandbox::new(SandboxConfig {
        deadlines: Deadlines::all(deadline),
        cache_dir: Some(cache.to_path_buf()),
        ..SandboxConfig::default()
    })
    .unwrap()
}

fn with_deadline(d: Duration) -> ProviderSettings {
    ProviderSettings {
        deadlines: Some(Deadlines::all(d)),
        ..ProviderSettings::default()
    }
}

fn request() -> MachineRequest {
    MachineRequest {
        machine: Machine {
            name: "bench-1".into(),
            namespace: "default".into(),
            provider_id: "noop:///bench-1".into(),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The same operation as the no-op guest, natively: the baseline without any sandbox.
trait NativeDriver {
    fn get_machine_status(req: &MachineRequest) -> Result<GetMachineStatusResponse, DriverError>;
}
struct NativeNoop;
impl NativeDriver for NativeNoop {
    fn get_machine_status(req: &MachineRequest) -> Result<GetMachineStatusResponse, DriverError> {
        Ok(GetMachineStatusResponse {
            provider_id: req.machine.provider_id.clone(),
            node_name: req.machine.name.clone(),
            addresses: Vec::new(),
        })
    }
}

/// Size, cold compile + load, cached load and per-call cost of one build of the sample.
fn sample_rows(
    rt: &tokio::runtime::Runtime,
    cache: &Path,
    table: &mut Table,
    language: &str,
    name: &str,
) {
    let path = guest(name);
    let size = std::fs::metadata(&path).unwrap().len();
    let load = || {
        rt.block_on(async {
            let s = sandbox(cache, Duration::from_secs(5));
            let started = Instant::now();
            let p = Provider::load(&s, &path, ProviderSettings::default())
                .await
                .unwrap();
            (started.elapsed(), p)
        })
    };
    let (cold, _) = load();
    let (cached, provider) = load();
    assert_eq!(
        provider.load_stats.cache,
        mcm_sandbox::cache::CacheHit::Disk
    );
    let spec = serde_json::json!({
        "machineType": "small",
        "image": "debian-12",
        "tags": {"kubernetes.io/cluster/shoot--a": "1", "kubernetes.io/role/node": "1"},
    });
    let req = MetricsLabelsRequest {
        machine: request().machine,
        machine_class: MachineClass {
            name: "bench".into(),
            provider_spec: spec,
            ..Default::default()
        },
    };
    let mut samples = Vec::with_capacity(500);
    rt.block_on(async {
        for i in 0..550 {
            let t = Instant::now();
            provider.metrics_labels(&req).await.unwrap();
            if i >= 50 {
                samples.push(t.elapsed());
            }
        }
    });
    samples.sort();
    let kb = size as f64 / 1000.0;
    table.row(
        &format!("{language} sample: component size"),
        format!("{kb:.0} KB"),
        "—",
    );
    table.row(
        &format!("{language} sample: cold compile + load"),
        ms(cold),
        "—",
    );
    table.row(
        &format!("{language} sample: load from compile cache"),
        ms(cached),
        "—",
    );
    table.row(
        &format!("{language} sample: metrics-labels call p50 (fresh instance, spec decoded)"),
        us(percentile(&samples, 0.5)),
        "—",
    );
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

struct Table(Vec<(String, String, String)>);
impl Table {
    fn row(&mut self, what: &str, value: String, target: &str) {
        println!("  {what}: {value}");
        self.0.push((what.into(), value, target.into()));
    }
}

fn throughput(provider: &Arc<Provider>, threads: usize, duration: Duration) -> f64 {
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let provider = provider.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let req = request();
                rt.block_on(async {
                    let mut n = 0u64;
                    while started.elapsed() < duration {
                        provider.get_machine_status(&req).await.unwrap();
                        n += 1;
                    }
                    n
                })
            })
        })
        .collect();
    let total: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    total as f64 / started.elapsed().as_secs_f64()
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() {
    println!(
        "machine: {} cores, load average before: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );
    let cache = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut table = Table(Vec::new());
    println!("running sandbox benchmarks…");

    // The sample provider in Rust and in Python (componentize-py): size, cold compile, cached
    // load (new sandbox, same disk cache), and a call that does not leave the guest.
    for (language, name) in [("Rust", "sample_provider"), ("Python", "sample_py")] {
        sample_rows(&rt, cache.path(), &mut table, language, name);
    }

    // Per-call overhead on the no-op guest.
    let s = sandbox(cache.path(), Duration::from_secs(5));
    let noop = Arc::new(
        rt.block_on(Provider::load(
            &s,
            &guest("test_noop"),
            ProviderSettings::default(),
        ))
        .unwrap(),
    );
    let req = request();
    let mut samples = Vec::with_capacity(20_000);
    rt.block_on(async {
        for _ in 0..2_000 {
            noop.get_machine_status(&req).await.unwrap();
        }
        for _ in 0..20_000 {
            let t = Instant::now();
            noop.get_machine_status(&req).await.unwrap();
            samples.push(t.elapsed());
        }
    });
    samples.sort();
    let mut floor = Vec::with_capacity(20_000);
    rt.block_on(async {
        for _ in 0..20_000 {
            let t = Instant::now();
            assert!(noop.floor_get_machine_status(&req).await);
            floor.push(t.elapsed());
        }
    });
    floor.sort();
    table.row(
        "wasmtime floor p50 (store + instantiate + call only)",
        us(percentile(&floor, 0.5)),
        "—",
    );
    table.row("wasmtime floor p99", us(percentile(&floor, 0.99)), "—");
    table.row(
        "sandboxed call p50 (fresh instance + call + mapping)",
        us(percentile(&samples, 0.5)),
        "≤ 10 µs",
    );
    table.row(
        "sandboxed call p99",
        us(percentile(&samples, 0.99)),
        "≤ 50 µs",
    );

    let mut native = Vec::with_capacity(20_000);
    for _ in 0..20_000 {
        let t = Instant::now();
        std::hint::black_box(NativeNoop::get_machine_status(std::hint::black_box(&req))).unwrap();
        native.push(t.elapsed());
    }
    native.sort();
    table.row(
        "native trait call p50 (baseline)",
        us(percentile(&native, 0.5)),
        "—",
    );

    let one = throughput(&noop, 1, Duration::from_secs(2));
    let two = throughput(&noop, 2, Duration::from_secs(2));
    table.row("calls/s, 1 thread", format!("{one:.0}"), "—");
    table.row("calls/s, 2 threads", format!("{two:.0}"), "≥ 50,000");

    // Hot swap from cache: registry load + atomic swap, and file write -> new version serving.
    let swap = rt.block_on(async {
        let registry = Registry::new(s.clone());
        registry.load_file(&guest("test_noop")).await.unwrap();
        registry.load_file(&guest("test_noop_v2")).await.unwrap(); // warm the cache
        let mut times = Vec::new();
        for i in 0..10 {
            let path = guest(if i % 2 == 0 {
                "test_noop"
            } else {
                "test_noop_v2"
            });
            let t = Instant::now();
            registry.load_file(&path).await.unwrap();
            times.push(t.elapsed());
        }
        times.sort();
        percentile(&times, 0.5)
    });
    table.row(
        "hot swap from cache (load + verify + smoke + swap), p50",
        ms(swap),
        "≤ 100 ms",
    );
    let watched = rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::new(s.clone());
        std::fs::copy(guest("test_noop"), dir.path().join("noop.wasm")).unwrap();
        let _w = registry
            .watch_dir(dir.path().to_path_buf(), Duration::from_secs(5))
            .await
            .unwrap();
        let mut events = registry.subscribe();
        let tmp = dir.path().join(".noop.tmp");
        std::fs::copy(guest("test_noop_v2"), &tmp).unwrap();
        let t = Instant::now();
        std::fs::rename(&tmp, dir.path().join("noop.wasm")).unwrap();
        loop {
            if let mcm_sandbox::RegistryEvent::Loaded { version, .. } = events.recv().await.unwrap()
                && version == "0.2.0"
            {
                break t.elapsed();
            }
        }
    });
    table.row(
        "hot swap via watched directory (rename -> serving)",
        ms(watched),
        "≤ 100 ms",
    );

    // Deadline overshoot of a spinning guest at every deadline length, on the default
    // runtime (a worker per core): the deadline is wall-clock, so the overshoot must not grow
    // with the deadline (a tick count drifted ~8 %).
    let multi = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let s = sandbox(cache.path(), Duration::from_secs(5));
    for (deadline, runs) in [
        (Duration::from_millis(100), 10),
        (Duration::from_secs(2), 3),
        (Duration::from_secs(10), 1),
        (Duration::from_secs(60), 1),
    ] {
        let over = multi.block_on(async {
            let looper = Provider::load(&s, &guest("test_looper"), with_deadline(deadline))
                .await
                .unwrap();
            let mut over = Vec::new();
            for _ in 0..runs {
                let t = Instant::now();
                let err = looper.create_machine(&req).await.unwrap_err();
                assert_eq!(err.code, Code::DeadlineExceeded);
                over.push(t.elapsed().saturating_sub(deadline));
            }
            over.sort();
            over
        });
        table.row(
            &format!("deadline overshoot of a spinning guest at {deadline:?}, max of {runs}"),
            ms(*over.last().unwrap()),
            "≤ 15 ms",
        );
    }

    // Starvation: latency of a normal call of another provider while N guests spin (each
    // until its 3 s deadline) on the default runtime's workers.
    for spinners in [0usize, 2, 4, 8] {
        let (p50, max) = multi.block_on(async {
            let looper = Arc::new(
                Provider::load(
                    &s,
                    &guest("test_looper"),
                    with_deadline(Duration::from_secs(3)),
                )
                .await
                .unwrap(),
            );
            let spinning: Vec<_> = (0..spinners)
                .map(|_| {
                    let looper = looper.clone();
                    tokio::spawn(async move { looper.create_machine(&request()).await })
                })
                .collect();
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut took = Vec::new();
            for _ in 0..20 {
                let noop = noop.clone();
                let t = Instant::now();
                tokio::spawn(async move { noop.get_machine_status(&request()).await })
                    .await
                    .unwrap()
                    .unwrap();
                took.push(t.elapsed());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            for call in spinning {
                let _ = call.await;
            }
            took.sort();
            (percentile(&took, 0.5), *took.last().unwrap())
        });
        table.row(
            &format!("normal call of another provider with {spinners} spinning guests, p50 / max"),
            format!("{} / {}", ms(p50), ms(max)),
            if spinners == 0 { "—" } else { "≤ 50 ms" },
        );
    }

    println!();
    println!("load average after: {}", load_average());
    println!("| measure | value | target |");
    println!("|---|---|---|");
    for (what, value, target) in &table.0 {
        println!("| {what} | {value} | {target} |");
    }
}
