//! Test support of the sandbox's tests: a sandbox with short deadlines, requests, RSS readers,
//! and small real HTTP servers on loopback. The guest components come from `test-artifacts`,
//! moto and the sample backend from `testenv`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use mcm_driver::MachineDriver;
use mcm_driver::*;
use mcm_sandbox::{Deadlines, Provider, ProviderSettings, Sandbox, SandboxConfig};
pub use testenv::ec2::*;
pub use testenv::sample::SampleBackend;

pub use test_artifacts::guest;

/// A sandbox with a private compile cache and the given deadline for every operation.
pub fn sandbox_with(deadline: Duration, tweak: impl FnOnce(&mut SandboxConfig)) -> Arc<Sandbox> {
    let mut config = SandboxConfig {
        deadlines: Deadlines::all(deadline),
        memory_limit: 64 << 20,
        cache_dir: Some(
            std::env::temp_dir().join(format!("mcm-wasm-test-cache-{}", std::process::id())),
        ),
        ..SandboxConfig::default()
    };
    tweak(&mut config);
    Sandbox::new(config).expect("sandbox")
}

pub fn sandbox(deadline: Duration) -> Arc<Sandbox> {
    sandbox_with(deadline, |_| {})
}

pub async fn load(sandbox: &Arc<Sandbox>, name: &str, settings: ProviderSettings) -> Provider {
    Provider::load(sandbox, &guest(name), settings)
        .await
        .unwrap_or_else(|e| panic!("loading {name}: {e}"))
}

/// A create request for machine `name` with the given providerSpec.
pub fn machine_request(name: &str, spec: serde_json::Value) -> MachineRequest {
    MachineRequest {
        machine: Machine {
            name: name.into(),
            namespace: "default".into(),
            uid: format!("uid-{name}"),
            ..Default::default()
        },
        machine_class: MachineClass {
            name: "class-a".into(),
            provider: "test".into(),
            provider_spec: spec,
            node_template: None,
        },
        secret: BTreeMap::new(),
    }
}

/// Resident set size of this process in bytes.
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// Peak resident set size of this process (VmHWM) in bytes.
pub fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/self/status");
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// Reset the peak (VmHWM) to the current RSS (Linux: `5` to /proc/self/clear_refs).
pub fn reset_peak_rss() {
    std::fs::write("/proc/self/clear_refs", "5").expect("resetting VmHWM");
}

/// A create request for the abuser guest (`guests/testing/abuser`).
pub fn abuse(what: &str, size: usize, count: usize) -> MachineRequest {
    machine_request(
        "m1",
        serde_json::json!({"abuse": what, "size": size, "count": count}),
    )
}

/// Serve an axum router on a free loopback port until the test ends.
pub async fn serve(router: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

/// Test servers: `/echo` answers with what it got; `/slow` waits 10 s; `/huge` sends 64 MiB;
/// `/pair` answers 200 once two of its requests are in flight together (408 after 5 s alone).
pub async fn test_server() -> SocketAddr {
    use axum::body::Body;
    use axum::http::{HeaderMap, Method};
    use axum::routing::{any, get};

    async fn echo(method: Method, headers: HeaderMap, body: String) -> axum::response::Response {
        let mut pairs: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        pairs.sort();
        axum::response::Response::builder()
            .status(201)
            .header("x-echo-method", method.as_str())
            .header("x-echo-headers", serde_json::to_string(&pairs).unwrap())
            .body(Body::from(body))
            .unwrap()
    }
    async fn slow() -> &'static str {
        tokio::time::sleep(Duration::from_secs(10)).await;
        "too late"
    }
    async fn huge() -> Body {
        // Streamed without a content-length, so the host must count while reading.
        let chunk = bytes::Bytes::from(vec![b'x'; 1 << 20]);
        let stream =
            futures::stream::iter((0..64).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
        Body::from_stream(stream)
    }
    let arrived = std::sync::Arc::new(tokio::sync::Barrier::new(2));
    let pair = move || {
        let arrived = arrived.clone();
        async move {
            match tokio::time::timeout(Duration::from_secs(5), arrived.wait()).await {
                Ok(_) => (axum::http::StatusCode::OK, "together"),
                Err(_) => (axum::http::StatusCode::REQUEST_TIMEOUT, "alone"),
            }
        }
    };
    let router = axum::Router::new()
        .route("/echo", any(echo))
        .route("/slow", get(slow))
        .route("/huge", get(huge))
        .route("/pair", get(pair));
    serve(router).await
}

/// Run the test `name` (its path in this binary) alone in a child process of this binary, for
/// measurements of the whole process (RSS) that other tests running in parallel would disturb.
/// Returns `true` in that child (run the body), `false` in the parent once the child passed.
pub fn alone(name: &str) -> bool {
    if std::env::var_os("MCM_WASM_TEST_ALONE").is_some() {
        return true;
    }
    let status = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env("MCM_WASM_TEST_ALONE", "1")
        .status()
        .expect("running the test binary again");
    assert!(
        status.success(),
        "{name} failed in its own process (output above)"
    );
    false
}
