//! The template provider. Copy this crate to start a new provider: it is small but complete.
//!
//! It drives machines through a tiny JSON-over-HTTP cloud API (served for tests and local use by
//! `backend.py` beside this file):
//!
//! | call | meaning |
//! |---|---|
//! | `POST /v1/machines` | create (deduplicated by `idempotencyKey`) |
//! | `GET /v1/machines?name=N&tag=K=V` | find machines by name and/or tag |
//! | `GET /v1/machines/{id}` | one machine |
//! | `DELETE /v1/machines/{id}` | delete |
//!
//! Every request carries `Authorization: Bearer <token>` from the secret's `token` key. The API
//! endpoint comes from the provider config set by the operator: `{"endpoint": "http://..."}`.
use std::collections::BTreeMap;

use mcm_wasm_sdk::{http, log, *};
use serde::{Deserialize, Serialize};

/// `MachineClass.providerSpec` of this provider.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Spec {
    machine_type: String,
    image: String,
    #[serde(default)]
    tags: BTreeMap<String, String>,
}

/// The provider's own configuration (set by the operator, not per class).
#[derive(Deserialize)]
struct Config {
    endpoint: String,
}

/// A machine as the cloud API returns it.
#[derive(Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct CloudMachine {
    id: String,
    name: String,
    hostname: String,
    #[serde(default)]
    state: String,
}

const PROVIDER_ID_PREFIX: &str = "sample:///";
const CSI_DRIVER: &str = "sample.csi.mcm-wasm.io";

/// Everything one operation needs to talk to the cloud.
struct Cloud {
    endpoint: String,
    token: String,
}

impl Cloud {
    fn connect(secret: &SecretData) -> Result<Self, DriverError> {
        let config: Config = provider_config()?;
        let token = require_secret(secret, "token")?;
        Ok(Cloud {
            endpoint: config.endpoint.trim_end_matches('/').to_string(),
            token,
        })
    }

    fn call(&self, req: http::Request) -> Result<http::Response, DriverError> {
        let req = req.header("authorization", format!("Bearer {}", self.token));
        let resp = http::send(&req)?;
        match resp.status {
            200..=299 => Ok(resp),
            status => Err(DriverError::new(
                code_for_status(status),
                format!(
                    "{} {} answered {status}: {}",
                    req.method,
                    req.url,
                    resp.text().trim()
                ),
            )),
        }
    }

    fn find(&self, query: &str) -> Result<Vec<CloudMachine>, DriverError> {
        self.call(http::request(
            "GET",
            format!("{}/v1/machines?{query}", self.endpoint),
        ))?
        .json()
    }

    /// The machine's VM: by providerID when known, else by name; more than one is OutOfRange.
    fn lookup(&self, machine: &Machine) -> Result<Option<CloudMachine>, DriverError> {
        if let Some(id) = machine.provider_id.strip_prefix(PROVIDER_ID_PREFIX) {
            let url = format!("{}/v1/machines/{id}", self.endpoint);
            return match self.call(http::request("GET", url)) {
                Ok(resp) => Ok(Some(resp.json()?)),
                Err(e) if e.code == Code::NotFound => Ok(None),
                Err(e) => Err(e),
            };
        }
        let mut found = self.find(&format!("name={}", machine.name))?;
        if found.len() > 1 {
            return Err(DriverError::new(
                Code::OutOfRange,
                format!(
                    "{} VMs are named {:?}; expected at most one",
                    found.len(),
                    machine.name
                ),
            ));
        }
        Ok(found.pop())
    }
}

/// Cloud HTTP status -> machine code (the provider's error mapping table).
fn code_for_status(status: u16) -> Code {
    match status {
        400 | 422 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        409 => Code::AlreadyExists,
        429 => Code::Unavailable,
        507 => Code::ResourceExhausted,
        500..=599 => Code::Unavailable,
        _ => Code::Internal,
    }
}

fn check_spec(class: &MachineClass) -> Result<Spec, DriverError> {
    let spec: Spec = class.decode_spec()?;
    if spec.machine_type.is_empty() {
        return Err(DriverError::invalid_argument(
            "providerSpec.machineType must not be empty",
        ));
    }
    if spec.image.is_empty() {
        return Err(DriverError::invalid_argument(
            "providerSpec.image must not be empty",
        ));
    }
    for prefix in ["kubernetes.io/cluster/", "kubernetes.io/role/"] {
        if !spec.tags.keys().any(|k| k.starts_with(prefix)) {
            return Err(DriverError::invalid_argument(format!(
                "providerSpec.tags must contain a {prefix}… tag"
            )));
        }
    }
    Ok(spec)
}

fn cluster_tag(spec: &Spec) -> Option<(&String, &String)> {
    spec.tags
        .iter()
        .find(|(k, _)| k.starts_with("kubernetes.io/cluster/"))
}

fn provider_id(vm: &CloudMachine) -> String {
    format!("{PROVIDER_ID_PREFIX}{}", vm.id)
}

fn addresses(vm: &CloudMachine) -> Vec<NodeAddress> {
    vec![NodeAddress {
        kind: "Hostname".into(),
        address: vm.hostname.clone(),
    }]
}

struct Sample;

impl Driver for Sample {
    fn create_machine(req: MachineRequest) -> Result<CreateMachineResponse, DriverError> {
        let spec = check_spec(&req.machine_class)?;
        let cloud = Cloud::connect(&req.secret)?;
        // Idempotent: an existing VM for this machine is returned as is.
        let vm = match cloud.lookup(&req.machine)? {
            Some(vm) => vm,
            None => {
                let user_data = secret_value(&req.secret, "userData")
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default();
                let body = serde_json::json!({
                    "name": req.machine.name,
                    "machineType": spec.machine_type,
                    "image": spec.image,
                    "tags": spec.tags,
                    "userData": user_data,
                    "idempotencyKey": format!("{}/{}", req.machine.namespace, req.machine.name),
                });
                let url = format!("{}/v1/machines", cloud.endpoint);
                cloud.call(http::request("POST", url).json(&body))?.json()?
            }
        };
        log::info(
            "machine created",
            &[("id", &vm.id), ("machine", &req.machine.name)],
        );
        Ok(CreateMachineResponse {
            provider_id: provider_id(&vm),
            node_name: vm.hostname.clone(),
            last_known_state: vm.state.clone(),
            addresses: addresses(&vm),
        })
    }

    fn delete_machine(req: MachineRequest) -> Result<DeleteMachineResponse, DriverError> {
        let cloud = Cloud::connect(&req.secret)?;
        let Some(vm) = cloud.lookup(&req.machine)? else {
            return Ok(DeleteMachineResponse {
                last_known_state: "already gone".into(),
            });
        };
        let url = format!("{}/v1/machines/{}", cloud.endpoint, vm.id);
        match cloud.call(http::request("DELETE", url)) {
            Ok(_) => Ok(DeleteMachineResponse {
                last_known_state: "deleted".into(),
            }),
            Err(e) if e.code == Code::NotFound => Ok(DeleteMachineResponse {
                last_known_state: "already gone".into(),
            }),
            Err(e) => Err(e),
        }
    }

    fn get_machine_status(req: MachineRequest) -> Result<GetMachineStatusResponse, DriverError> {
        let cloud = Cloud::connect(&req.secret)?;
        match cloud.lookup(&req.machine)? {
            Some(vm) => Ok(GetMachineStatusResponse {
                provider_id: provider_id(&vm),
                node_name: vm.hostname.clone(),
                addresses: addresses(&vm),
            }),
            None => Err(DriverError::not_found(format!(
                "no VM for machine {:?}",
                req.machine.name
            ))),
        }
    }

    fn list_machines(req: ListMachinesRequest) -> Result<ListMachinesResponse, DriverError> {
        let spec = check_spec(&req.machine_class)?;
        let cloud = Cloud::connect(&req.secret)?;
        let (key, value) = cluster_tag(&spec).expect("checked by check_spec");
        let machines = cloud
            .find(&format!("tag={key}={value}"))?
            .into_iter()
            .map(|vm| (provider_id(&vm), vm.name))
            .collect();
        Ok(ListMachinesResponse { machines })
    }

    fn get_volume_ids(req: GetVolumeIdsRequest) -> Result<GetVolumeIdsResponse, DriverError> {
        let mut volume_ids = Vec::new();
        for text in &req.pv_specs {
            let spec: serde_json::Value = serde_json::from_str(text).map_err(|e| {
                DriverError::invalid_argument(format!("invalid PersistentVolumeSpec: {e}"))
            })?;
            let csi = &spec["csi"];
            if csi["driver"] == CSI_DRIVER {
                if let Some(handle) = csi["volumeHandle"].as_str() {
                    volume_ids.push(handle.to_string());
                }
            }
        }
        Ok(GetVolumeIdsResponse { volume_ids })
    }

    fn validate_machine_class(req: ValidateRequest) -> Result<(), DriverError> {
        check_spec(&req.machine_class)?;
        require_secret(&req.secret, "token")?;
        Ok(())
    }

    fn metrics_labels(req: MetricsLabelsRequest) -> Result<Vec<(String, String)>, DriverError> {
        let spec = check_spec(&req.machine_class)?;
        Ok(vec![("size".into(), spec.machine_type)])
    }
}

export_provider!(Sample, name: "sample", version: env!("CARGO_PKG_VERSION"));
