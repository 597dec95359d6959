//! `just run` end to end: the stack binary brings the examples' three machines (a bare
//! Machine and a 2-replica MachineDeployment through Gardener's real MCM) to Running with the
//! AWS provider against moto, and on Ctrl-C (SIGINT) stops every process it started.

use std::io::{BufRead as _, BufReader};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Builds what the stack runs: the guests (cargo does nothing when they are fresh) and, when
/// missing, the mcm-wasm binary next to the stack's. `cargo test --workspace` (`just test`)
/// has built a fresh one already; building it here with `-p` would resolve other features and
/// compile it a second time.
fn build_dependencies() {
    let root = repo_root();
    let guests = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
        ])
        .arg(root.join("guests/Cargo.toml"))
        .status()
        .unwrap();
    assert!(guests.success(), "building the guests failed");
    let sibling = Path::new(env!("CARGO_BIN_EXE_mcm-wasm-stack")).with_file_name("mcm-wasm");
    if sibling.is_file() {
        return;
    }
    let runtime = Command::new(env!("CARGO"))
        .args([
            "build",
            "-p",
            "mcm-wasm",
            "--bin",
            "mcm-wasm",
            "--manifest-path",
        ])
        .arg(root.join("Cargo.toml"))
        .status()
        .unwrap();
    assert!(runtime.success(), "building mcm-wasm failed");
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

#[test]
fn brings_the_examples_to_running_and_stops_everything_on_ctrl_c() {
    build_dependencies();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mcm-wasm-stack"));
    cmd.env_remove("KUBECONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // A test killed half-way sends the stack SIGTERM, so it tears everything down (its own
    // children die with it anyway). This thread lives until the stack has stopped.
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("{line}");
            if tx.send(line).is_err() {
                return;
            }
        }
    });

    let mut output = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while !output
        .iter()
        .any(|l: &String| l.contains("Ctrl-C stops everything"))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => output.push(line),
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "the stack did not bring the machines to Running:\n{}",
                    output.join("\n")
                );
            }
        }
    }
    let text = output.join("\n");
    for expected in [
        "pushed ",
        "provider aws: Ready=True (Loaded) Degraded=False (AsExpected)",
        "machine aws-small-single: Pending  Create/Processing: Creating machine on cloud provider",
        "machine aws-small-single: Running  Create/Successful: Machine aws-small-single successfully joined the cluster",
        "all 3 machines Running; moto has 3 running instances",
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} missing from:\n{text}"
        );
    }
    // The pool's two machines, named by Gardener's MachineSet controller.
    let pool_running = output
        .iter()
        .filter(|l| l.contains("machine aws-small-pool-") && l.contains(": Running"))
        .count();
    assert_eq!(pool_running, 2, "{text}");

    let pids: Vec<i32> = output
        .iter()
        .find_map(|l| l.strip_prefix("pids: "))
        .expect("a pids line")
        .split([' ', '=', ','])
        .filter_map(|w| w.parse().ok())
        .filter(|&p| p > 0)
        .collect();
    assert_eq!(
        pids.len(),
        6,
        "controller, registry, gardener mcm, moto, etcd, apiserver: {pids:?}"
    );
    assert!(pids.iter().all(|&p| alive(p)));

    // SAFETY: SIGINT to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let stopped = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(60),
            "the stack did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    let rest: Vec<String> = rx.try_iter().collect();
    assert!(
        rest.iter()
            .any(|l| l.starts_with("stopped; nothing left running")),
        "{rest:?}"
    );
    // Orphans are reaped by init; give that a moment.
    let gone = Instant::now();
    while pids.iter().any(|&p| alive(p)) && gone.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left: Vec<i32> = pids.iter().copied().filter(|&p| alive(p)).collect();
    assert!(left.is_empty(), "still running after Ctrl-C: {left:?}");
}
