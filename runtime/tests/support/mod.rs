//! Shared test support: the guest components (built once per test binary), a sandbox with
//! short deadlines, requests, and small real HTTP servers on loopback.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use mcm_wasm::driver::*;
use mcm_wasm::{Deadlines, Provider, ProviderSettings, Sandbox, SandboxConfig};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Build every guest once per test binary (cargo does nothing when they are fresh).
pub fn guests_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = repo_root();
        let status = std::process::Command::new(env!("CARGO"))
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip2",
                "--manifest-path",
            ])
            .arg(root.join("guests/Cargo.toml"))
            .status()
            .expect("running cargo to build the guests");
        assert!(status.success(), "building the guests failed");
        root.join("target/wasm32-wasip2/release")
    })
}

/// Path of a built guest, e.g. `guest("test_panicker")`.
pub fn guest(name: &str) -> PathBuf {
    let path = guests_dir().join(format!("{name}.wasm"));
    assert!(path.exists(), "guest {} was not built", path.display());
    path
}

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

/// Test servers: `/echo` answers with what it got; `/slow` waits 10 s; `/huge` sends 64 MiB.
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
    let router = axum::Router::new()
        .route("/echo", any(echo))
        .route("/slow", get(slow))
        .route("/huge", get(huge));
    serve(router).await
}

/// The sample provider's cloud API (guests/sample/backend.py) on a free loopback port.
pub struct SampleBackend {
    pub endpoint: String,
    child: std::process::Child,
}

impl SampleBackend {
    pub fn start(token: &str) -> SampleBackend {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new("python3")
            .arg(repo_root().join("guests/sample/backend.py"))
            .args(["--port", "0", "--token", token])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("starting the sample backend (python3)");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let endpoint = line
            .trim()
            .strip_prefix("listening on ")
            .expect("backend prints its address")
            .to_string();
        SampleBackend { endpoint, child }
    }

    /// The backend's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The backend's own view of its machines (not through the provider).
    pub fn machines(&self) -> Vec<serde_json::Value> {
        let url = format!("{}/debug/machines", self.endpoint);
        let out = std::process::Command::new("python3")
            .args(["-c", "import sys,urllib.request;print(urllib.request.urlopen(sys.argv[1]).read().decode())", &url])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for SampleBackend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
