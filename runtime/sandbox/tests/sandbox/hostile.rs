//! Hostile guests in the real sandbox: each ends in its expected machine code within its
//! deadline, and the same sandbox serves a normal call right after.

use std::time::{Duration, Instant};

use crate::support::*;
use mcm_driver::Code;
use mcm_sandbox::{LoadError, Provider, ProviderSettings};

const DEADLINE: Duration = Duration::from_millis(500);

/// Run the hostile guest's create-machine, check code and timing, then a normal call.
async fn expect_code(guest_name: &str, code: Code) -> String {
    let sandbox = sandbox(DEADLINE);
    let hostile = load(&sandbox, guest_name, ProviderSettings::default()).await;
    let started = Instant::now();
    let err = hostile
        .create_machine(&machine_request("m1", serde_json::json!({})))
        .await
        .expect_err("hostile guest must fail");
    let elapsed = started.elapsed();
    assert_eq!(err.code, code, "{guest_name}: {err}");
    assert!(
        elapsed < DEADLINE + Duration::from_millis(400),
        "{guest_name} took {elapsed:?}"
    );

    let noop = load(&sandbox, "test_noop", ProviderSettings::default()).await;
    let ok = noop
        .create_machine(&machine_request("m2", serde_json::json!({})))
        .await
        .unwrap();
    assert_eq!(ok.provider_id, "noop:///m2");
    // The hostile provider itself serves again too (fresh instance per call).
    assert_eq!(
        hostile
            .delete_machine(&machine_request("m1", serde_json::json!({})))
            .await
            .unwrap()
            .last_known_state,
        ""
    );
    err.message
}

#[tokio::test]
async fn infinite_loop_is_deadline_exceeded() {
    let message = expect_code("test_looper", Code::DeadlineExceeded).await;
    assert!(message.contains("deadline"), "{message}");
}

#[tokio::test]
async fn memory_bomb_is_resource_exhausted() {
    let message = expect_code("test_membomb", Code::ResourceExhausted).await;
    assert!(message.contains("memory"), "{message}");
}

#[tokio::test]
async fn unbounded_recursion_is_internal_stack_overflow() {
    let message = expect_code("test_recursion", Code::Internal).await;
    assert!(message.contains("stack overflow"), "{message}");
}

#[tokio::test]
async fn panic_is_internal_with_the_guest_panic_message() {
    let message = expect_code("test_panicker", Code::Internal).await;
    assert!(
        message.contains("provider exploded while creating m1"),
        "panic message missing: {message}"
    );
    assert!(
        message.contains("unreachable"),
        "trap description missing: {message}"
    );
}

#[tokio::test]
async fn oversized_result_is_resource_exhausted() {
    let message = expect_code("test_bigresult", Code::ResourceExhausted).await;
    assert!(message.contains("limit"), "{message}");
}

#[tokio::test]
async fn egress_to_unlisted_host_is_denied() {
    let sandbox = sandbox(DEADLINE);
    let probe = load(&sandbox, "test_http_probe", ProviderSettings::default()).await;
    let spec = serde_json::json!({"method": "GET", "url": "http://127.0.0.1:9/"});
    let err = probe
        .create_machine(&machine_request("m1", spec))
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::PermissionDenied, "{err}");
    assert!(err.message.contains("egress denied"), "{err}");
}

#[tokio::test]
async fn environment_and_arguments_are_out_of_reach() {
    let sandbox = sandbox(DEADLINE);
    let snoop = load(&sandbox, "test_snoop", ProviderSettings::default()).await;
    let report = snoop
        .create_machine(&machine_request("m1", serde_json::json!({})))
        .await
        .unwrap();
    let report: serde_json::Value = serde_json::from_str(&report.last_known_state).unwrap();
    assert_eq!(report["env"], serde_json::json!([]), "{report}");
    assert_eq!(report["args"], serde_json::json!([]), "{report}");
    assert_eq!(report["home"], serde_json::Value::Null, "{report}");
}

/// Files and sockets are not denied at run time but never linked: a component importing them
/// is refused at load, naming the import, before it is compiled.
#[tokio::test]
async fn filesystem_and_sockets_importers_are_refused_at_load() {
    let sandbox = sandbox(DEADLINE);
    for (guest_name, family) in [
        ("test_fs", "wasi:filesystem/"),
        ("test_sockets", "wasi:sockets/"),
    ] {
        let err = Provider::load(&sandbox, &guest(guest_name), ProviderSettings::default())
            .await
            .err()
            .unwrap_or_else(|| panic!("{guest_name} must be refused"));
        assert!(matches!(err, LoadError::ForbiddenImport { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains(&format!("{guest_name}.wasm: imports {family}")),
            "{text}"
        );
        assert!(
            text.contains("which the sandbox does not provide"),
            "{text}"
        );
    }
}

/// Every resource limit is ResourceExhausted, classified by type (not by trap text).
#[tokio::test]
async fn resource_limits_are_resource_exhausted() {
    let sandbox = sandbox(Duration::from_secs(5));
    let abuser = load(&sandbox, "test_abuser", ProviderSettings::default()).await;
    let cases = [
        // 200k addresses lift to ~9.6 MB of host structures: past the hostcall fuel.
        (abuse("list", 200_000, 0), "bytes to the host"),
        (abuse("handles", 0, 0), "WASI handles"),
        (
            abuse("random", 1 << 20, 0),
            "a random-bytes request of 1048576",
        ),
        (abuse("allocation", 200 << 20, 0), "memory"),
    ];
    for (req, expected) in cases {
        let what = req.machine_class.provider_spec["abuse"].clone();
        let err = abuser.create_machine(&req).await.unwrap_err();
        assert_eq!(err.code, Code::ResourceExhausted, "{what}: {err}");
        assert!(err.message.contains(expected), "{what}: {err}");
    }
    // Within the limits the same requests succeed.
    let ok = abuser
        .create_machine(&abuse("random", 1024, 0))
        .await
        .unwrap();
    assert_eq!(ok.last_known_state, "1024");
    let ok = abuser
        .create_machine(&abuse("list", 1000, 0))
        .await
        .unwrap();
    assert_eq!(ok.addresses.len(), 1000);
}

/// With brokering on, the secret's credential keys never enter the sandbox: a guest that
/// searches everything it was given for the access key finds nothing (and without brokering
/// it does find it, so the search works).
#[tokio::test]
async fn brokered_credentials_never_reach_the_guest() {
    let sandbox = sandbox(DEADLINE);
    let access_key = "AKIAIOSFODNN7SECRET1";
    let needle_hex: String = access_key.bytes().map(|b| format!("{b:02x}")).collect();
    let mut req = machine_request(
        "m1",
        serde_json::json!({"abuse": "find-secret", "needle_hex": needle_hex}),
    );
    req.secret = [
        ("providerAccessKeyId", access_key),
        (
            "providerSecretAccessKey",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        ),
        ("userData", "#!/bin/sh"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
    .collect();
    for (broker_credentials, expected) in [
        (
            true,
            "absent; withheld: providerAccessKeyId,providerSecretAccessKey",
        ),
        (false, "found; withheld: "),
    ] {
        let settings = ProviderSettings {
            broker_credentials,
            ..Default::default()
        };
        let abuser = load(&sandbox, "test_abuser", settings).await;
        let report = abuser.create_machine(&req).await.unwrap();
        assert_eq!(
            report.last_known_state, expected,
            "brokering {broker_credentials}"
        );
    }
}

/// A collection past wasm32's address space panics in Rust before any allocator is asked; the
/// SDK's panic hook reports it through the contract, so it is ResourceExhausted, not Internal.
#[tokio::test]
async fn capacity_overflow_is_resource_exhausted_via_the_sdk_hook() {
    let sandbox = sandbox(DEADLINE);
    let abuser = load(&sandbox, "test_abuser", ProviderSettings::default()).await;
    let err = abuser
        .create_machine(&abuse("capacity-overflow", 0, 0))
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::ResourceExhausted, "{err}");
    assert!(err.message.contains("capacity overflow"), "{err}");
    assert!(err.message.contains("guest trapped"), "{err}");
}

/// A provider built against contract 0.1.0 (without the SDK) loads and serves on this 0.1.1
/// runtime.
#[tokio::test]
async fn a_contract_0_1_0_provider_still_loads_and_serves() {
    let sandbox = sandbox(DEADLINE);
    let settings = ProviderSettings {
        config: Some(r#"{"old":true}"#.into()),
        ..Default::default()
    };
    let old = load(&sandbox, "test_contract_0_1_0", settings).await;
    assert_eq!(old.info().contract.to_string(), "0.1.0");
    assert_eq!(old.name(), "old");
    let created = old
        .create_machine(&machine_request("m1", serde_json::json!({})))
        .await
        .unwrap();
    assert_eq!(created.provider_id, "old:///m1");
    assert_eq!(created.last_known_state, r#"{"old":true}"#);
    let err = old.list_machines(&Default::default()).await.unwrap_err();
    assert_eq!(err.code, Code::Unimplemented);
}

/// A guest's log text cannot forge a host log line: newlines and control characters are
/// escaped in the host's text log.
#[tokio::test]
#[tracing_test::traced_test]
async fn guest_log_text_cannot_forge_host_log_lines() {
    let sandbox = sandbox(DEADLINE);
    let abuser = load(&sandbox, "test_abuser", ProviderSettings::default()).await;
    abuser
        .create_machine(&abuse("forge-log", 0, 0))
        .await
        .unwrap();
    logs_assert(|lines: &[&str]| {
        let forged: Vec<_> = lines.iter().filter(|l| l.contains("FORGED")).collect();
        if forged.is_empty() {
            return Err("the guest's log line is missing".into());
        }
        for line in &forged {
            if !line.contains(
                r"harmless\n2026-12-02T06:00:00.000000Z ERROR mcm_wasm::controller: FORGED",
            ) {
                return Err(format!("guest text not escaped: {line}"));
            }
        }
        if lines.iter().any(|l| l.trim_start().starts_with("forged")) {
            return Err("a field forged a line".into());
        }
        Ok(())
    });
}

#[tokio::test]
async fn incompatible_contract_is_rejected_naming_file_and_both_versions() {
    let sandbox = sandbox(DEADLINE);
    let path = guest("test_incompatible");
    let err = Provider::load(&sandbox, &path, ProviderSettings::default())
        .await
        .err()
        .expect("must be rejected");
    assert!(
        matches!(err, LoadError::IncompatibleContract { .. }),
        "{err}"
    );
    let text = err.to_string();
    assert!(text.contains("test_incompatible.wasm"), "{text}");
    assert!(
        text.contains("mcm:driver@1.0.0") && text.contains("mcm:driver@0.1.3"),
        "{text}"
    );
}

#[tokio::test]
async fn non_components_are_rejected_with_the_reason() {
    let sandbox = sandbox(DEADLINE);
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[u8], &str); 3] = [
        (
            "garbage.wasm",
            b"\x7fELF this is not wasm",
            "not a WebAssembly binary",
        ),
        ("core.wasm", b"\0asm\x01\0\0\0", "core WebAssembly module"),
        ("empty.wasm", b"", "file is empty"),
    ];
    for (name, bytes, expected) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let err = Provider::load(&sandbox, &path, ProviderSettings::default())
            .await
            .err()
            .unwrap();
        let text = err.to_string();
        assert!(
            text.contains(name) && text.contains(expected),
            "{name}: {text}"
        );
    }
}

#[tokio::test]
async fn optional_operations_default_to_unimplemented() {
    let sandbox = sandbox(DEADLINE);
    let noop = load(&sandbox, "test_noop", ProviderSettings::default()).await;
    let err = noop.list_machines(&Default::default()).await.unwrap_err();
    assert_eq!(err.code, Code::Unimplemented);
    assert_eq!(
        err.to_string(),
        "machine codes error: code = [Unimplemented] message = [list-machines is not implemented by this provider]"
    );
}

/// The looper's create-machine, running in the background until its deadline.
fn spawn_looping_create(
    looper: &std::sync::Arc<Provider>,
) -> tokio::task::JoinHandle<Result<mcm_driver::CreateMachineResponse, mcm_driver::DriverError>> {
    let looper = looper.clone();
    tokio::spawn(async move {
        looper
            .create_machine(&machine_request("a", serde_json::json!({})))
            .await
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_pool_is_unavailable_not_a_crash() {
    // One instance slot: a second concurrent call cannot get one.
    let sandbox = sandbox_with(Duration::from_millis(400), |c| {
        c.max_concurrent_instances = 1
    });
    let looper =
        std::sync::Arc::new(load(&sandbox, "test_looper", ProviderSettings::default()).await);
    let busy = spawn_looping_create(&looper);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let err = looper
        .create_machine(&machine_request("b", serde_json::json!({})))
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::Unavailable, "{err}");
    assert_eq!(
        busy.await.unwrap().unwrap_err().code,
        Code::DeadlineExceeded
    );
    // The slot is free again.
    let noop = load(&sandbox, "test_noop", ProviderSettings::default()).await;
    noop.create_machine(&machine_request("c", serde_json::json!({})))
        .await
        .unwrap();
}

#[tokio::test]
async fn no_state_survives_from_one_call_to_the_next() {
    // Pooled memory is reset in place between calls; a guest's statics start fresh each time.
    let sandbox = sandbox(DEADLINE);
    let noop = load(&sandbox, "test_noop", ProviderSettings::default()).await;
    for _ in 0..5 {
        let labels = noop.metrics_labels(&Default::default()).await.unwrap();
        assert_eq!(
            labels,
            vec![("calls-in-this-instance".to_string(), "1".to_string())]
        );
    }
}

/// A provider's own memory limit (the Provider resource's `limits.memory`) is below the
/// sandbox's: an allocation the sandbox allows is ResourceExhausted for that provider only.
#[tokio::test]
async fn a_providers_memory_limit_is_its_own() {
    let sandbox = sandbox(Duration::from_secs(5));
    let roomy = load(&sandbox, "test_abuser", ProviderSettings::default()).await;
    let tight = load(
        &sandbox,
        "test_abuser",
        ProviderSettings {
            memory_limit: Some(8 << 20),
            ..Default::default()
        },
    )
    .await;
    let big = abuse("allocation", 16 << 20, 0);
    roomy
        .create_machine(&big)
        .await
        .expect("16 MiB fits 64 MiB");
    let err = tight.create_machine(&big).await.unwrap_err();
    assert_eq!(err.code, Code::ResourceExhausted, "{err}");
    assert!(err.message.contains("memory"), "{err}");
    // A limit above the sandbox's cannot raise it.
    let above = load(
        &sandbox,
        "test_abuser",
        ProviderSettings {
            memory_limit: Some(1 << 30),
            ..Default::default()
        },
    )
    .await;
    let err = above
        .create_machine(&abuse("allocation", 200 << 20, 0))
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::ResourceExhausted, "{err}");
}

/// `limits.maxConcurrentCalls`: a call beyond the limit waits for a slot within its own
/// deadline, then fails ResourceExhausted naming the limit; without the limit the same call
/// runs at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrent_calls_bounds_one_provider() {
    let sandbox = sandbox(Duration::from_millis(600));
    let mut deadlines = mcm_driver::Deadlines::all(Duration::from_millis(600));
    deadlines.set(
        mcm_driver::Operation::DeleteMachine,
        Duration::from_millis(150),
    );
    for limit in [None, Some(1)] {
        let looper = std::sync::Arc::new(
            load(
                &sandbox,
                "test_looper",
                ProviderSettings {
                    deadlines: Some(deadlines.clone()),
                    max_concurrent_calls: limit,
                    ..Default::default()
                },
            )
            .await,
        );
        let busy = spawn_looping_create(&looper);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let second = looper
            .delete_machine(&machine_request("b", serde_json::json!({})))
            .await;
        match limit {
            None => assert!(second.is_ok(), "{second:?}"),
            Some(_) => {
                let err = second.unwrap_err();
                assert_eq!(err.code, Code::ResourceExhausted, "{err}");
                assert!(err.message.contains("maxConcurrentCalls"), "{err}");
            }
        }
        assert_eq!(
            busy.await.unwrap().unwrap_err().code,
            Code::DeadlineExceeded
        );
        // The slot is free again.
        looper
            .delete_machine(&machine_request("c", serde_json::json!({})))
            .await
            .unwrap();
    }
}
