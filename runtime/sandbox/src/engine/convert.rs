//! Conversions between the runtime's driver types and the generated wasm bindings, and the
//! one dispatch of a [`Request`] to the guest's export.

use mcm_driver::*;
use wasmtime::Store;

use super::CallState;
use crate::bindings::{self, types as wit};

/// A request in the guest's types, ready to be lifted into the instance.
pub(crate) enum WitRequest {
    CreateMachine(wit::MachineRequest),
    InitializeMachine(wit::MachineRequest),
    DeleteMachine(wit::MachineRequest),
    GetMachineStatus(wit::MachineRequest),
    ListMachines(wit::ListMachinesRequest),
    GetVolumeIds(wit::GetVolumeIdsRequest),
    ValidateMachineClass(wit::ValidateRequest),
    MetricsLabels(wit::MetricsLabelsRequest),
}

/// `visible` is the part of the request's secret the guest may see (all of it unless the host
/// brokers the credentials).
pub(crate) fn wit_request(req: &Request<'_>, visible: &SecretData) -> WitRequest {
    match *req {
        Request::CreateMachine(r) => WitRequest::CreateMachine(machine_request(r, visible)),
        Request::InitializeMachine(r) => WitRequest::InitializeMachine(machine_request(r, visible)),
        Request::DeleteMachine(r) => WitRequest::DeleteMachine(machine_request(r, visible)),
        Request::GetMachineStatus(r) => WitRequest::GetMachineStatus(machine_request(r, visible)),
        Request::ListMachines(r) => WitRequest::ListMachines(list_request(r, visible)),
        Request::GetVolumeIds(r) => WitRequest::GetVolumeIds(volume_request(r)),
        Request::ValidateMachineClass(r) => {
            WitRequest::ValidateMachineClass(validate_request(r, visible))
        }
        Request::MetricsLabels(r) => WitRequest::MetricsLabels(metrics_labels_request(r)),
    }
}

/// Call the export `req` is for; the answer in the host's [`Response`].
pub(crate) async fn dispatch(
    mut store: Store<CallState>,
    guest: bindings::Provider,
    req: WitRequest,
) -> wasmtime::Result<Result<Response, wit::DriverError>> {
    let d = guest.mcm_driver_driver();
    let s = &mut store;
    Ok(match req {
        WitRequest::CreateMachine(r) => d
            .call_create_machine(s, &r)
            .await?
            .map(|a| Response::CreateMachine(a.into())),
        WitRequest::InitializeMachine(r) => d
            .call_initialize_machine(s, &r)
            .await?
            .map(|a| Response::InitializeMachine(a.into())),
        WitRequest::DeleteMachine(r) => d
            .call_delete_machine(s, &r)
            .await?
            .map(|a| Response::DeleteMachine(a.into())),
        WitRequest::GetMachineStatus(r) => d
            .call_get_machine_status(s, &r)
            .await?
            .map(|a| Response::GetMachineStatus(a.into())),
        WitRequest::ListMachines(r) => d
            .call_list_machines(s, &r)
            .await?
            .map(|a| Response::ListMachines(a.into())),
        WitRequest::GetVolumeIds(r) => d
            .call_get_volume_ids(s, &r)
            .await?
            .map(|a| Response::GetVolumeIds(a.into())),
        WitRequest::ValidateMachineClass(r) => d
            .call_validate_machine_class(s, &r)
            .await?
            .map(|()| Response::ValidateMachineClass),
        WitRequest::MetricsLabels(r) => d
            .call_metrics_labels(s, &r)
            .await?
            .map(Response::MetricsLabels),
    })
}

fn pairs(map: &std::collections::BTreeMap<String, String>) -> Vec<(String, String)> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn secret(data: &SecretData) -> wit::SecretData {
    data.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn machine(m: &Machine) -> wit::Machine {
    wit::Machine {
        name: m.name.clone(),
        namespace: m.namespace.clone(),
        uid: m.uid.clone(),
        provider_id: m.provider_id.clone(),
        labels: pairs(&m.labels),
    }
}

fn machine_class(c: &MachineClass) -> wit::MachineClass {
    wit::MachineClass {
        name: c.name.clone(),
        provider: c.provider.clone(),
        provider_spec: match &c.provider_spec {
            serde_json::Value::Null => "{}".to_string(),
            spec => spec.to_string(),
        },
        node_template: c.node_template.as_ref().map(|t| wit::NodeTemplate {
            capacity: pairs(&t.capacity),
            instance_type: t.instance_type.clone(),
            region: t.region.clone(),
            zone: t.zone.clone(),
            architecture: t.architecture.clone(),
        }),
    }
}

pub(crate) fn machine_request(r: &MachineRequest, visible: &SecretData) -> wit::MachineRequest {
    wit::MachineRequest {
        machine: machine(&r.machine),
        machine_class: machine_class(&r.machine_class),
        secret: secret(visible),
    }
}

fn list_request(r: &ClassRequest, visible: &SecretData) -> wit::ListMachinesRequest {
    wit::ListMachinesRequest {
        machine_class: machine_class(&r.machine_class),
        secret: secret(visible),
    }
}

fn validate_request(r: &ClassRequest, visible: &SecretData) -> wit::ValidateRequest {
    wit::ValidateRequest {
        machine_class: machine_class(&r.machine_class),
        secret: secret(visible),
    }
}

fn volume_request(r: &GetVolumeIdsRequest) -> wit::GetVolumeIdsRequest {
    wit::GetVolumeIdsRequest {
        pv_specs: r.pv_specs.iter().map(|s| s.to_string()).collect(),
    }
}

fn metrics_labels_request(r: &MetricsLabelsRequest) -> wit::MetricsLabelsRequest {
    wit::MetricsLabelsRequest {
        machine: machine(&r.machine),
        machine_class: machine_class(&r.machine_class),
    }
}

fn addresses(a: Vec<wit::NodeAddress>) -> Vec<NodeAddress> {
    a.into_iter()
        .map(|a| NodeAddress {
            kind: a.kind,
            address: a.address,
        })
        .collect()
}

impl From<wit::CreateMachineResponse> for CreateMachineResponse {
    fn from(r: wit::CreateMachineResponse) -> Self {
        CreateMachineResponse {
            provider_id: r.provider_id,
            node_name: r.node_name,
            last_known_state: r.last_known_state,
            addresses: addresses(r.addresses),
        }
    }
}

impl From<wit::InitializeMachineResponse> for InitializeMachineResponse {
    fn from(r: wit::InitializeMachineResponse) -> Self {
        InitializeMachineResponse {
            provider_id: r.provider_id,
            node_name: r.node_name,
            addresses: addresses(r.addresses),
        }
    }
}

impl From<wit::DeleteMachineResponse> for DeleteMachineResponse {
    fn from(r: wit::DeleteMachineResponse) -> Self {
        DeleteMachineResponse {
            last_known_state: r.last_known_state,
        }
    }
}

impl From<wit::GetMachineStatusResponse> for GetMachineStatusResponse {
    fn from(r: wit::GetMachineStatusResponse) -> Self {
        GetMachineStatusResponse {
            provider_id: r.provider_id,
            node_name: r.node_name,
            addresses: addresses(r.addresses),
        }
    }
}

impl From<wit::ListMachinesResponse> for ListMachinesResponse {
    fn from(r: wit::ListMachinesResponse) -> Self {
        ListMachinesResponse {
            machines: r.machines.into_iter().collect(),
        }
    }
}

impl From<wit::GetVolumeIdsResponse> for GetVolumeIdsResponse {
    fn from(r: wit::GetVolumeIdsResponse) -> Self {
        GetVolumeIdsResponse {
            volume_ids: r.volume_ids,
        }
    }
}

pub(crate) fn from_wit_error(e: wit::DriverError) -> DriverError {
    let code = match e.code {
        wit::Code::Canceled => Code::Canceled,
        wit::Code::Unknown => Code::Unknown,
        wit::Code::InvalidArgument => Code::InvalidArgument,
        wit::Code::DeadlineExceeded => Code::DeadlineExceeded,
        wit::Code::NotFound => Code::NotFound,
        wit::Code::AlreadyExists => Code::AlreadyExists,
        wit::Code::PermissionDenied => Code::PermissionDenied,
        wit::Code::ResourceExhausted => Code::ResourceExhausted,
        wit::Code::FailedPrecondition => Code::FailedPrecondition,
        wit::Code::Aborted => Code::Aborted,
        wit::Code::OutOfRange => Code::OutOfRange,
        wit::Code::Unimplemented => Code::Unimplemented,
        wit::Code::Internal => Code::Internal,
        wit::Code::Unavailable => Code::Unavailable,
        wit::Code::DataLoss => Code::DataLoss,
        wit::Code::Unauthenticated => Code::Unauthenticated,
        wit::Code::Uninitialized => Code::Uninitialized,
    };
    DriverError::new(code, e.message)
}
