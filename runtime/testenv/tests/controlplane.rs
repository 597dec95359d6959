//! The control plane starts from the cache, serves the pinned Kubernetes version with the admin
//! certificate, and leaves no process or directory behind: not when dropped, not after a panic,
//! not when the test process exits or is killed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams};
use testenv::ControlPlane;

/// Whether `pid` is a live process (zombies count as gone).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .next();
            state != Some("Z") && state != Some("X")
        }
        Err(_) => false,
    }
}

fn wait_gone(pids: &[u32], dir: &Path) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if pids.iter().all(|p| !alive(*p)) && !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let left: Vec<_> = pids.iter().filter(|p| alive(**p)).collect();
    panic!(
        "left behind: processes {left:?}, directory exists: {}",
        dir.exists()
    );
}

#[tokio::test]
async fn starts_within_seconds_and_serves_the_pinned_version() {
    let start = Instant::now();
    let cp = ControlPlane::start().unwrap();
    let took = start.elapsed();
    assert!(took < Duration::from_secs(60), "start took {took:?}");
    eprintln!("control plane started in {took:?}");

    for pid in cp.pids() {
        assert!(alive(pid), "pid {pid} is not running");
    }
    assert!(cp.kubeconfig_path().is_file());
    assert!(cp.server_url().starts_with("https://127.0.0.1:"));

    let client = cp.client().await.unwrap();
    let version = client.apiserver_version().await.unwrap();
    assert_eq!(version.git_version, testenv::kubernetes_version());
    // The admin certificate is in system:masters: it may list anything.
    let namespaces = Api::<Namespace>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(
        namespaces
            .items
            .iter()
            .any(|n| n.metadata.name.as_deref() == Some("default"))
    );

    // kubectl of the same version talks to it through the kubeconfig.
    let out = cp.kubectl_run(["version", "-o", "json"]).unwrap();
    let out: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        out["clientVersion"]["gitVersion"],
        testenv::kubernetes_version()
    );
    assert_eq!(
        out["serverVersion"]["gitVersion"],
        testenv::kubernetes_version()
    );
    let out = cp.kubectl_run(["auth", "whoami", "-o", "json"]).unwrap();
    assert!(out.contains("system:masters"), "{out}");
}

#[test]
fn drop_stops_the_processes_and_removes_the_directory() {
    let cp = ControlPlane::start().unwrap();
    let pids = cp.pids();
    let dir = cp.dir().to_path_buf();
    assert!(dir.exists());
    drop(cp);
    wait_gone(&pids, &dir);
}

#[test]
fn a_panicking_test_still_cleans_up() {
    let mut seen: Option<([u32; 2], PathBuf)> = None;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let cp = ControlPlane::start().unwrap();
        seen = Some((cp.pids(), cp.dir().to_path_buf()));
        panic!("a failing test");
    }));
    assert!(result.is_err());
    let (pids, dir) = seen.expect("the control plane started");
    wait_gone(&pids, &dir);
}

const CHILD_ENV: &str = "TESTENV_CHILD_MODE";

/// Runs inside a child test process (see below): starts the shared control plane, prints its
/// pids and directory, then ends the process the way `TESTENV_CHILD_MODE` says.
#[test]
#[ignore = "helper: run by shared_control_plane_dies_with_the_test_process"]
fn child_process_with_shared_control_plane() {
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return;
    };
    let cp = testenv::shared();
    let [a, b] = cp.pids();
    println!("PIDS {a} {b} DIR {}", cp.dir().display());
    use std::io::Write;
    std::io::stdout().flush().unwrap();
    match mode.as_str() {
        "exit" => std::process::exit(0),
        _ => std::process::abort(),
    }
}

fn run_child(mode: &str) -> ([u32; 2], PathBuf) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "child_process_with_shared_control_plane",
            "--nocapture",
        ])
        .env(CHILD_ENV, mode)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("PIDS "))
        .unwrap_or_else(|| {
            panic!(
                "child printed no pids:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let parts: Vec<&str> = line.split_whitespace().collect();
    (
        [parts[0].parse().unwrap(), parts[1].parse().unwrap()],
        PathBuf::from(parts[3]),
    )
}

#[test]
fn shared_control_plane_dies_with_the_test_process() {
    // A normal exit: the exit hook kills the processes and removes the directory.
    let (pids, dir) = run_child("exit");
    wait_gone(&pids, &dir);

    // An abrupt end (abort: no exit hooks run): the parent-death signal kills the processes.
    let (pids, dir) = run_child("abort");
    let start = Instant::now();
    while pids.iter().any(|p| alive(*p)) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "processes {pids:?} outlived their parent"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Nothing is left to remove a killed process's directory; do it here.
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn missing_binaries_name_the_recipe_that_builds_them() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "child_reports_missing_binaries",
            "--nocapture",
        ])
        .env("MCM_WASM_CONTROLPLANE_BIN", dir.path())
        .env(CHILD_ENV, "missing")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("ERROR etcd not found at"), "{stdout}");
    assert!(stdout.contains("run `just controlplane` first"), "{stdout}");
}

#[test]
#[ignore = "helper: run by missing_binaries_name_the_recipe_that_builds_them"]
fn child_reports_missing_binaries() {
    if std::env::var(CHILD_ENV).is_err() {
        return;
    }
    match ControlPlane::start() {
        Ok(_) => println!("STARTED"),
        Err(e) => println!("ERROR {e}"),
    }
}
