//! Conversions between the runtime's driver types and the generated wasm bindings.

use super::bindings::types as wit;
use crate::driver::*;

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

/// `visible` is the part of the request's secret the guest may see (all of it unless the host
/// brokers the credentials).
pub(crate) fn machine_request(r: &MachineRequest, visible: &SecretData) -> wit::MachineRequest {
    wit::MachineRequest {
        machine: machine(&r.machine),
        machine_class: machine_class(&r.machine_class),
        secret: secret(visible),
    }
}

pub(crate) fn list_request(r: &ClassRequest, visible: &SecretData) -> wit::ListMachinesRequest {
    wit::ListMachinesRequest {
        machine_class: machine_class(&r.machine_class),
        secret: secret(visible),
    }
}

pub(crate) fn validate_request(r: &ClassRequest, visible: &SecretData) -> wit::ValidateRequest {
    wit::ValidateRequest {
        machine_class: machine_class(&r.machine_class),
        secret: secret(visible),
    }
}

pub(crate) fn volume_request(r: &GetVolumeIdsRequest) -> wit::GetVolumeIdsRequest {
    wit::GetVolumeIdsRequest {
        pv_specs: r.pv_specs.iter().map(|s| s.to_string()).collect(),
    }
}

pub(crate) fn metrics_labels_request(r: &MetricsLabelsRequest) -> wit::MetricsLabelsRequest {
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
