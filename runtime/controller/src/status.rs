//! Writing a Machine's status the way MCM's controller does, through server-side apply on the
//! status subresource: always the whole status, so that fields we drop are really dropped.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Api;
use kube::api::{Patch, PatchParams};
use machine_api::{
    CurrentStatus, LastOperation, Machine, MachineOperationType, MachinePhase, MachineState,
    MachineStatus,
};

/// The field manager of every write this controller makes.
pub const FIELD_MANAGER: &str = "mcm-wasm-controller";

pub fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// A lastOperation stamped now.
pub fn last_op(
    description: impl Into<String>,
    state: MachineState,
    type_: MachineOperationType,
    error_code: &str,
) -> LastOperation {
    LastOperation {
        description: description.into(),
        error_code: error_code.to_string(),
        last_update_time: Some(now()),
        state: Some(state),
        type_: Some(type_),
    }
}

/// A currentStatus in `phase`, stamped now (`timeoutActive` only while Pending, as MCM).
pub fn current(phase: MachinePhase, preserve_expiry: Option<Time>) -> CurrentStatus {
    CurrentStatus {
        timeout_active: phase == MachinePhase::Pending,
        phase: Some(phase),
        last_update_time: Some(now()),
        preserve_expiry_time: preserve_expiry,
    }
}

/// Write `status` as the whole status of the machine (server-side apply, forced: MCM writes
/// status with plain updates, and we take the fields back).
pub async fn write(
    api: &Api<Machine>,
    name: &str,
    status: &MachineStatus,
) -> Result<Machine, kube::Error> {
    let body = serde_json::json!({
        "apiVersion": "machine.sapcloud.io/v1alpha1",
        "kind": "Machine",
        "metadata": { "name": name },
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
}

/// The description of the last operation, or "".
pub fn description(machine: &Machine) -> &str {
    machine
        .status
        .as_ref()
        .map(|s| s.last_operation.description.as_str())
        .unwrap_or("")
}
