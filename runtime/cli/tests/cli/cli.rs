//! The `mcm-wasm` binary: inspect, call, and clear errors with a non-zero exit on bad input.

use std::process::{Command, Output};

use crate::support::*;

fn mcm_wasm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mcm-wasm"))
        .args(args)
        .env(
            "MCM_WASM_CACHE",
            std::env::temp_dir().join("mcm-wasm-cli-test-cache"),
        )
        .output()
        .expect("running mcm-wasm")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn inspect_shows_name_versions_operations_size_and_digest() {
    let path = guest("sample_provider");
    let out = mcm_wasm(&["inspect", path.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["name"], "sample");
    assert_eq!(info["version"], "0.1.0");
    assert_eq!(info["contract"], "0.1.3");
    assert_eq!(info["size"], std::fs::metadata(&path).unwrap().len());
    assert!(info["digest"].as_str().unwrap().starts_with("sha256:"));
    let ops: Vec<String> = serde_json::from_value(info["operations"].clone()).unwrap();
    for op in [
        "create-machine",
        "delete-machine",
        "get-machine-status",
        "list-machines",
        "get-volume-ids",
        "validate-machine-class",
        "metrics-labels",
        "initialize-machine",
    ] {
        assert!(ops.contains(&op.to_string()), "{op} missing from {ops:?}");
    }
    // Only the exported functions: the interface's types are not operations.
    assert_eq!(ops.len(), 8, "{ops:?}");
    let text = mcm_wasm(&["inspect", path.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("provider:   sample 0.1.0"));
}

#[test]
fn call_prints_json_or_the_code_with_a_non_zero_exit() {
    let noop = guest("test_noop");
    let out = mcm_wasm(&[
        "call",
        noop.to_str().unwrap(),
        "create-machine",
        "--request",
        r#"{"machine":{"name":"m7"}}"#,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["providerID"], "noop:///m7");

    let panicker = guest("test_panicker");
    let out = mcm_wasm(&[
        "call",
        panicker.to_str().unwrap(),
        "CreateMachine",
        "--request",
        r#"{"machine":{"name":"m7"}}"#,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with("machine codes error: code = [Internal] message = ["),
        "{err}"
    );
    assert!(err.contains("provider exploded while creating m7"), "{err}");
}

#[test]
fn bad_inputs_are_named_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p.to_str().unwrap().to_string()
    };
    let garbage = write("garbage.wasm", b"garbage bytes");
    let core = write("core.wasm", b"\0asm\x01\0\0\0");
    let empty = write("empty.wasm", b"");
    let noop = guest("test_noop").to_str().unwrap().to_string();
    let incompatible = guest("test_incompatible").to_str().unwrap().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["inspect", &garbage],
            "garbage.wasm: not a WebAssembly binary",
        ),
        (
            vec!["inspect", &core],
            "core.wasm: is a core WebAssembly module, not a component",
        ),
        (vec!["inspect", &empty], "empty.wasm: file is empty"),
        (
            vec!["inspect", "/nonexistent/x.wasm"],
            "/nonexistent/x.wasm: cannot read",
        ),
        (
            vec!["inspect", &incompatible],
            "built against contract mcm:driver@1.0.0",
        ),
        (
            vec!["call", &noop, "reboot-machine"],
            "unknown operation \"reboot-machine\"",
        ),
        (
            vec!["call", &noop, "create-machine", "--request", "{not json"],
            "malformed request JSON for create-machine",
        ),
        (
            vec![
                "call",
                &noop,
                "create-machine",
                "--request",
                r#"{"machine":{"name":5}}"#,
            ],
            "invalid type: integer `5`, expected a string",
        ),
        (
            vec!["call", &noop, "create-machine", "--secret", "novalue"],
            "--secret \"novalue\" is not KEY=VALUE",
        ),
        (
            vec!["call", &noop, "create-machine", "--allow-host", "http://x/"],
            "invalid egress rule",
        ),
        (
            vec!["call", &noop, "create-machine", "--config", "{"],
            "--config is not valid JSON",
        ),
    ];
    for (args, expected) in cases {
        let out = mcm_wasm(&args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(expected),
            "{args:?}: expected {expected:?} in {err:?}"
        );
    }
}

#[test]
fn missing_driver_export_is_named() {
    // A real component that exports something else: the incompatible guest's export is
    // mcm:driver/driver@1.0.0; here we check the message for a component with no driver at all
    // by inspecting the WASI-only adapter-free component built from the incompatible guest's
    // bytes with its export renamed is overkill, so use a hand-made empty component.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("nodriver.wasm");
    // Component magic + layer 1 version, no sections: a valid, empty component.
    std::fs::write(&p, b"\0asm\x0d\0\x01\0").unwrap();
    let out = mcm_wasm(&["inspect", p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("nodriver.wasm: does not export mcm:driver/driver"),
        "{err}"
    );
}
