//! `cargo bench -p mcm-providers --bench providers`: delivering a provider as a `Provider`
//! resource — the AWS provider pulled from a real OCI registry on loopback, loaded into the
//! sandbox's registry, and the whole swap as an operator sees it (spec patched on a real
//! kube-apiserver → the Provider's status names the new version), with the floor measured in
//! the same run (reading the same bytes from a file). Prints a Markdown table (BENCHMARKS.md).

use std::time::{Duration, Instant};

use kube::api::{Api, Patch, PatchParams, PostParams};
use machine_api::Provider;
use mcm_providers::oci::{self, Access};
use mcm_providers::reconcile;
use mcm_sandbox::{ProviderSettings, Registry, Sandbox, SandboxConfig};
use testenv::registry::{Options, Registry as OciRegistry};

const N: usize = 10;
const NS: &str = "default";

struct Row {
    name: &'static str,
    times: Vec<Duration>,
}

impl Row {
    fn new(name: &'static str) -> Row {
        Row {
            name,
            times: Vec::new(),
        }
    }

    async fn time<T>(&mut self, f: impl AsyncFnOnce() -> T) -> T {
        let started = Instant::now();
        let out = f().await;
        self.times.push(started.elapsed());
        out
    }

    fn print(&mut self) {
        self.times.sort();
        let p = |q: f64| self.times[((self.times.len() as f64 - 1.0) * q).round() as usize];
        let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
        println!(
            "| {} | {} | {} | {} | {} |",
            self.name,
            self.times.len(),
            ms(p(0.5)),
            ms(p(0.9)),
            ms(p(1.0))
        );
    }
}

fn insecure() -> Access {
    Access {
        insecure: true,
        ..Access::default()
    }
}

async fn wait_status(api: &Api<Provider>, ok: impl Fn(&machine_api::ProviderStatus) -> bool) {
    let started = Instant::now();
    loop {
        let p = api.get("aws").await.unwrap();
        if let Some(s) = &p.status
            && s.observed_generation == p.metadata.generation
            && ok(s)
        {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no status: {:?}",
            p.status
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let wasm = test_artifacts::built_guest("aws_provider");
    let bytes = std::fs::read(&wasm).unwrap();
    let info = mcm_sandbox::artifact::inspect(&wasm, &bytes).unwrap();
    let registry = OciRegistry::start(Options::default()).unwrap();
    let repo = registry.reference("providers/aws");
    // Distinct versions (same code, new metadata and digest), pushed before timing.
    let mut versions = Vec::new();
    for i in 0..=2 * N {
        let version = format!("1.0.{i}");
        let artifact = test_artifacts::with_version(&bytes, &version);
        let digest = oci::push(
            &format!("{repo}:{version}"),
            artifact.clone(),
            &info,
            &insecure(),
        )
        .await
        .unwrap();
        versions.push((version, format!("{repo}@{digest}"), digest, artifact));
    }

    let cache = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::new(SandboxConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        ..SandboxConfig::default()
    })
    .unwrap();
    let sandbox_registry = Registry::new(sandbox.clone());

    let mut read = Row::new("read the component from a file (floor)");
    let mut pull = Row::new("OCI pull by digest (loopback registry)");
    let mut load_new = Row::new("load a new version (compile + smoke, cache miss)");
    let mut load_cached = Row::new("load a known digest (compile cache hit + smoke)");
    let mut configure = Row::new("new settings, same version (no fetch, no compile)");
    for (i, (_, pinned, digest, artifact)) in versions.iter().take(N).enumerate() {
        read.time(async || std::fs::read(&wasm).unwrap()).await;
        let pulled = pull
            .time(async || oci::pull(pinned, digest, &insecure()).await.unwrap())
            .await;
        assert_eq!(&pulled.bytes, artifact);
        let key = format!("bench-{i}");
        // The same load twice: the first compiles, the second (after an unload) hits the cache.
        let load = async || {
            sandbox_registry
                .load_resource(&key, "bench", artifact, vec![], ProviderSettings::default())
                .await
                .unwrap()
        };
        load_new.time(load).await;
        sandbox_registry.unload_resource(&key);
        load_cached.time(load).await;
        configure
            .time(async || {
                sandbox_registry.configure_resource(&key, vec![], ProviderSettings::default())
            })
            .await;
    }

    // The operator's view: a real API server, the Provider controller in this process.
    let cp = testenv::ControlPlane::start().expect("control plane (run `just controlplane`)");
    cp.apply_crds().unwrap();
    let client = cp.client().await.unwrap();
    let ctx = reconcile::Context::new(
        client.clone(),
        NS,
        Registry::new(sandbox),
        reqwest::Client::new(),
    );
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let controller = tokio::spawn(reconcile::run(ctx, async move {
        let _ = stopped.wait_for(|v| *v).await;
    }));
    let api: Api<Provider> = Api::namespaced(client, NS);
    let first = &versions[N];
    let provider: Provider = serde_json::from_value(serde_json::json!({
        "apiVersion": "mcm-wasm.io/v1alpha1",
        "kind": "Provider",
        "metadata": { "name": "aws" },
        "spec": { "source": { "oci": { "reference": first.1, "insecure": true } } },
    }))
    .unwrap();
    api.create(&PostParams::default(), &provider).await.unwrap();
    wait_status(&api, |s| s.version.as_deref() == Some(first.0.as_str())).await;

    let mut swap = Row::new("Provider reference patched → status serves the new version");
    let mut settings = Row::new("Provider egress patched → status observes it (no fetch)");
    for (i, (version, pinned, _, _)) in versions.iter().enumerate().skip(N + 1) {
        swap.time(async || {
            api.patch(
                "aws",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({
                    "spec": { "source": { "oci": { "reference": pinned } } } })),
            )
            .await
            .unwrap();
            wait_status(&api, |s| s.version.as_deref() == Some(version.as_str())).await
        })
        .await;
        settings
            .time(async || {
                api.patch(
                    "aws",
                    &PatchParams::default(),
                    &Patch::Merge(serde_json::json!({
                        "spec": { "egress": { "hosts": [format!("127.0.0.1:{}", 1000 + i)] } } })),
                )
                .await
                .unwrap();
                wait_status(&api, |_| true).await
            })
            .await;
    }
    let _ = stop.send(true);
    let _ = controller.await;

    println!(
        "\n## Provider delivery (AWS provider, {} KiB component; {N} versions)\n",
        bytes.len() / 1024
    );
    println!("| step | n | p50 | p90 | max |");
    println!("|---|---|---|---|---|");
    for row in [
        &mut read,
        &mut pull,
        &mut load_new,
        &mut load_cached,
        &mut configure,
        &mut swap,
        &mut settings,
    ] {
        row.print();
    }
    println!(
        "\nThe swap row includes the watch event, the pull, compile, smoke instantiation, swap and the status write (server-side apply), read back by polling every 5 ms."
    );
}
