//! `mcm-wasm new`: the generated project, unmodified, builds and passes conformance against its
//! own backend — in Rust and in Python — through the project's own `conformance.sh`, as its
//! README tells a provider author to run it.

use std::path::Path;
use std::process::Command;

fn mcm_wasm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mcm-wasm"))
}

/// Generate `name` in `lang` into a fresh directory and run its `conformance.sh --junit`.
fn generated_project_is_conformance_green(name: &str, lang: &str) {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join(name);
    let out = mcm_wasm()
        .args(["new", name, "--lang", lang, "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("./conformance.sh"), "{stdout}");

    let junit = work.path().join("report.xml");
    let out = Command::new(dir.join("conformance.sh"))
        .arg("--junit")
        .arg(&junit)
        .env("MCM_WASM", env!("CARGO_BIN_EXE_mcm-wasm"))
        .env("XDG_CACHE_HOME", work.path().join("cache"))
        // Rust: the crates come from cargo's local cache (tests stay on loopback), into one
        // target dir kept between runs; the outer build's flags are for the host.
        .env("CARGO_NET_OFFLINE", "true")
        .env(
            "CARGO_TARGET_DIR",
            test_artifacts::repo_root().join("target/new-project"),
        )
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains(&format!("conformance of provider {name} 0.1.0")),
        "{stdout}"
    );
    assert!(stdout.contains("12/12 steps passed: PASS"), "{stdout}");
    let report = std::fs::read_to_string(&junit).unwrap();
    assert!(report.contains("failures=\"0\""), "{report}");
    assert!(dir.join(format!("{name}.wasm")).exists());
}

#[test]
fn rust_project_builds_and_passes_conformance() {
    generated_project_is_conformance_green("acme-rs", "rust");
}

#[test]
fn python_project_builds_and_passes_conformance() {
    generated_project_is_conformance_green("acme-py", "python");
}

#[test]
fn refuses_a_bad_name_and_a_non_empty_directory() {
    let work = tempfile::tempdir().unwrap();
    let out = mcm_wasm()
        .args(["new", "My_Cloud", "--dir"])
        .arg(work.path().join("x"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid provider name \"My_Cloud\""),
        "{stderr}"
    );
    assert!(
        !work.path().join("x").exists(),
        "nothing is written for a bad name"
    );

    std::fs::write(work.path().join("keep.txt"), "mine").unwrap();
    let out = mcm_wasm()
        .args(["new", "acme", "--dir"])
        .arg(work.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("already exists and is not empty"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(work.path().join("keep.txt")).unwrap(),
        "mine"
    );
    assert!(!Path::new(&work.path().join("Cargo.toml")).exists());
}
