//! The checked-in CRDs are generated from the Rust types, and the types serialize as Gardener's.

use machine_api::{LastOperation, MachineOperationType, MachinePhase, MachineState, MachineStatus};

#[test]
fn crds_are_up_to_date() {
    let dir = testenv::crds_dir();
    let mut stale = Vec::new();
    for crd in machine_api::crds() {
        let path = dir.join(machine_api::crd_file_name(&crd));
        let want = machine_api::crd_yaml(&crd);
        match std::fs::read_to_string(&path) {
            Ok(have) if have == want => {}
            Ok(_) => stale.push(format!("{} differs from the Rust types", path.display())),
            Err(e) => stale.push(format!("{}: {e}", path.display())),
        }
    }
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let mut expected: Vec<_> = machine_api::crds()
        .iter()
        .map(machine_api::crd_file_name)
        .collect();
    expected.sort();
    if names != expected {
        stale.push(format!(
            "{} holds {names:?}, expected {expected:?}",
            dir.display()
        ));
    }
    assert!(stale.is_empty(), "run `just crds`:\n{}", stale.join("\n"));
}

#[test]
fn phases_and_operations_use_gardeners_strings() {
    let phases: Vec<_> = MachinePhase::KNOWN.iter().map(|p| p.as_str()).collect();
    assert_eq!(
        phases,
        [
            "Pending",
            "Available",
            "Running",
            "Terminating",
            "Unknown",
            "Failed",
            "CrashLoopBackOff",
            "InPlaceUpdating",
            "InPlaceUpdateSuccessful",
            "InPlaceUpdateFailed"
        ]
    );
    let states: Vec<_> = MachineState::KNOWN.iter().map(|s| s.as_str()).collect();
    assert_eq!(states, ["Processing", "Failed", "Successful"]);
    let types: Vec<_> = MachineOperationType::KNOWN
        .iter()
        .map(|t| t.as_str())
        .collect();
    assert_eq!(
        types,
        [
            "Create",
            "Update",
            "InPlaceUpdate",
            "DrainNode",
            "HealthCheck",
            "Delete"
        ]
    );
}

#[test]
fn status_serializes_like_gardeners_go_types() {
    let status = MachineStatus {
        last_operation: LastOperation {
            description: "Creating machine on cloud provider".into(),
            state: Some(MachineState::Processing),
            type_: Some(MachineOperationType::Create),
            ..Default::default()
        },
        current_status: machine_api::CurrentStatus {
            phase: Some(MachinePhase::Pending),
            timeout_active: true,
            ..Default::default()
        },
        ..Default::default()
    };
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "lastOperation": {
                "description": "Creating machine on cloud provider",
                "state": "Processing",
                "type": "Create",
            },
            "currentStatus": { "phase": "Pending", "timeoutActive": true },
        })
    );
    // An unknown phase (a newer Gardener) is kept verbatim, not an error.
    let future: MachineStatus =
        serde_json::from_value(serde_json::json!({"currentStatus": {"phase": "Hibernating"}}))
            .unwrap();
    assert_eq!(
        future.current_status.phase,
        Some(MachinePhase::Other("Hibernating".into()))
    );
    assert_eq!(
        serde_json::to_value(&future).unwrap(),
        serde_json::json!({"currentStatus": {"phase": "Hibernating"}})
    );
}

#[test]
fn go_durations_parse_and_format_like_go() {
    use machine_api::{format_duration, parse_duration};
    use std::time::Duration;
    let cases = [
        ("20m", Duration::from_secs(1200), "20m0s"),
        ("20m0s", Duration::from_secs(1200), "20m0s"),
        ("2h", Duration::from_secs(7200), "2h0m0s"),
        ("1h30m", Duration::from_secs(5400), "1h30m0s"),
        ("1.5s", Duration::from_millis(1500), "1.5s"),
        ("500ms", Duration::from_millis(500), "500ms"),
        ("0", Duration::ZERO, "0s"),
        ("1.5h", Duration::from_secs(5400), "1h30m0s"),
        ("2µs", Duration::from_micros(2), "2µs"),
        ("3ns", Duration::from_nanos(3), "3ns"),
    ];
    for (input, duration, formatted) in cases {
        assert_eq!(parse_duration(input), Ok(duration), "{input}");
        assert_eq!(format_duration(duration), formatted, "{input}");
    }
    for bad in ["", "20", "-5m", "5x", "m", "1..5s"] {
        let err = parse_duration(bad).unwrap_err();
        assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
    }
    let config = machine_api::MachineConfiguration {
        creation_timeout: Some("20m0s".into()),
        health_timeout: Some("soon".into()),
        ..Default::default()
    };
    assert_eq!(
        config.creation_timeout(),
        Ok(Some(Duration::from_secs(1200)))
    );
    assert!(config.health_timeout().is_err());
    assert_eq!(config.drain_timeout(), Ok(None));
}
