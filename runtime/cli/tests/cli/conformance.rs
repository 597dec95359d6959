//! `mcm-wasm conformance`: the AWS provider against moto and the sample provider against its
//! backend pass; providers that break the contract fail, with a non-zero exit.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::*;
use mcm_sandbox::{EgressPolicy, ProviderSettings};
use mcm_wasm::conformance::{self, STEPS};

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn conformance_cli(
    wasm: &Path,
    class: &serde_json::Value,
    secret: &serde_json::Value,
    extra: &[&str],
) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let class_file = dir.path().join("class.json");
    let secret_file = dir.path().join("secret.json");
    std::fs::write(&class_file, class.to_string()).unwrap();
    std::fs::write(&secret_file, secret.to_string()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mcm-wasm"))
        .arg("conformance")
        .arg(wasm)
        .arg("--class")
        .arg(&class_file)
        .arg("--secret")
        .arg(&secret_file)
        .args(extra)
        .env("XDG_CACHE_HOME", dir.path().join("cache"))
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Every step has a row, and each says PASS (or FAIL).
fn rows(stdout: &str) -> Vec<(String, bool)> {
    STEPS
        .iter()
        .map(|step| {
            let line = stdout
                .lines()
                .find(|l| l.contains(step))
                .unwrap_or_else(|| panic!("no row for {step:?} in\n{stdout}"));
            (step.to_string(), line.contains(" PASS "))
        })
        .collect()
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test]
async fn aws_provider_passes_against_moto() {
    let moto = Moto::start();
    let (ami, subnet, group) = moto.class_resources().await;
    let class = serde_json::json!({
        "apiVersion": "machine.sapcloud.io/v1alpha1",
        "kind": "MachineClass",
        "metadata": {"name": "aws-conformance", "namespace": "default"},
        "provider": "aws",
        "providerSpec": provider_spec(&ami, &subnet, &group),
    });
    let secret = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "data": {
            "providerAccessKeyId": b64(ACCESS_KEY),
            "providerSecretAccessKey": b64(SECRET_KEY),
            "userData": b64("#!/bin/bash\necho conformance"),
        },
    });
    let config = serde_json::json!({"endpoint": moto.endpoint}).to_string();
    let run = conformance_cli(
        &guest("aws_provider"),
        &class,
        &secret,
        &["--config", &config, "--machine-name", "conf-aws"],
    );
    assert_eq!(
        run.code, 0,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    assert!(
        rows(&run.stdout).iter().all(|(_, pass)| *pass),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("12/12 steps passed: PASS"),
        "{}",
        run.stdout
    );
    // moto saw exactly one VM for the machine, now terminated.
    let all = moto.instances_named("conf-aws").await;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0].state, "terminated");
}

#[tokio::test]
async fn sample_provider_passes_against_its_backend() {
    sample_passes("sample_provider", "sample").await
}

/// The Python build of the sample (componentize-py): the same backend, the same twelve steps.
#[tokio::test]
async fn python_sample_provider_passes_against_its_backend() {
    sample_passes("sample_py", "sample-py").await
}

async fn sample_passes(guest_name: &str, provider: &str) {
    let backend = SampleBackend::start("s3cret");
    let class = serde_json::json!({
        "name": "sample-conformance",
        "provider": provider,
        "providerSpec": {
            "machineType": "small",
            "image": "debian-12",
            "tags": {"kubernetes.io/cluster/shoot--a": "1", "kubernetes.io/role/node": "1"},
        },
    });
    let secret = serde_json::json!({"stringData": {"token": "s3cret"}});
    let config = serde_json::json!({"endpoint": backend.endpoint}).to_string();
    let run = conformance_cli(&guest(guest_name), &class, &secret, &["--config", &config]);
    assert!(
        run.stdout
            .contains(&format!("conformance of provider {provider} ")),
        "{}",
        run.stdout
    );
    assert_eq!(
        run.code, 0,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    assert!(
        rows(&run.stdout).iter().all(|(_, pass)| *pass),
        "{}",
        run.stdout
    );
    assert!(
        backend.machines().is_empty(),
        "the conformance run cleans up"
    );
}

#[tokio::test]
async fn wrong_credentials_fail_with_exit_1_and_say_why() {
    let backend = SampleBackend::start("s3cret");
    let class = serde_json::json!({"providerSpec": {
        "machineType": "small", "image": "debian-12",
        "tags": {"kubernetes.io/cluster/shoot--a": "1", "kubernetes.io/role/node": "1"},
    }});
    let secret = serde_json::json!({"stringData": {"token": "wrong"}});
    let config = serde_json::json!({"endpoint": backend.endpoint}).to_string();
    let junit = tempfile::NamedTempFile::new().unwrap();
    let run = conformance_cli(
        &guest("sample_provider"),
        &class,
        &secret,
        &[
            "--config",
            &config,
            "--junit",
            junit.path().to_str().unwrap(),
        ],
    );
    assert_eq!(run.code, 1, "{}", run.stdout);
    // The JUnit report for CI: a case per step, the failed create with its code.
    let xml = std::fs::read_to_string(junit.path()).unwrap();
    assert!(
        xml.contains(&format!(r#"tests="{}""#, STEPS.len())),
        "{xml}"
    );
    assert!(
        xml.contains(r#"<testcase name="create""#) && xml.contains("Unauthenticated"),
        "{xml}"
    );
    let rows = rows(&run.stdout);
    assert!(
        rows.iter()
            .find(|(s, _)| s == "create")
            .is_some_and(|(_, pass)| !pass),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("Unauthenticated"), "{}", run.stdout);
    assert!(
        run.stdout.contains("not run: create failed"),
        "{}",
        run.stdout
    );
}

#[tokio::test]
async fn a_provider_that_ignores_the_contract_fails() {
    // The no-op guest answers "OK" to everything: no NotFound before create or after delete.
    let sandbox = sandbox(Duration::from_secs(10));
    let provider =
        mcm_sandbox::Provider::load(&sandbox, &guest("test_noop"), ProviderSettings::default())
            .await
            .unwrap();
    let class = mcm_driver::MachineClass {
        name: "c".into(),
        provider_spec: serde_json::json!({}),
        ..Default::default()
    };
    let report =
        conformance::run(&provider, &class, &Default::default(), "noop-1", "default").await;
    assert!(!report.passed(), "{}", report.table());
    assert_eq!(report.steps.len(), STEPS.len());
    assert!(
        !report
            .step("status before create is NotFound")
            .unwrap()
            .passed
    );
    assert!(!report.step("status is NotFound").unwrap().passed);
    assert!(report.step("create").unwrap().passed);
    assert!(report.table().contains("FAIL"));
}

#[tokio::test]
async fn default_egress_lets_only_the_endpoint_through() {
    // The config's endpoint is the whole default allowlist: cloud hosts are the provider's
    // business (`--allow-host`), the runtime knows no cloud's endpoints.
    let policy =
        conformance::default_egress(Some(r#"{"endpoint":"http://127.0.0.1:4566"}"#)).unwrap();
    assert_eq!(policy, EgressPolicy::parse(&["127.0.0.1:4566"]).unwrap());
}

#[test]
fn bad_input_exits_2() {
    let run = conformance_cli(
        &guest("aws_provider"),
        &serde_json::json!({"kind": "MachineClass"}),
        &serde_json::json!({"stringData": {}}),
        &[],
    );
    assert_eq!(run.code, 2, "{} {}", run.stdout, run.stderr);
    assert!(run.stderr.contains("providerSpec"), "{}", run.stderr);
}
