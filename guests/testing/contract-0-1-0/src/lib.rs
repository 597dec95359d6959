//! A provider built against contract 0.1.0 (its own copy of that WIT, without the SDK): the
//! runtime speaks 0.1.1 and must keep serving it (an N-1 provider on a new runtime).
wit_bindgen::generate!({ path: "wit", world: "provider", generate_all });

use exports::mcm::driver::driver::*;
use mcm::driver::types::Code;

struct Old;

fn unimplemented<T>(op: &str) -> Result<T, DriverError> {
    Err(DriverError {
        code: Code::Unimplemented,
        message: format!("{op} is not implemented by this provider"),
    })
}

impl Guest for Old {
    fn create_machine(req: MachineRequest) -> Result<CreateMachineResponse, DriverError> {
        // Uses the 0.1.0 context import as well.
        let config = mcm::driver::context::provider_config();
        Ok(CreateMachineResponse {
            provider_id: format!("old:///{}", req.machine.name),
            node_name: req.machine.name,
            last_known_state: config,
            addresses: Vec::new(),
        })
    }
    fn initialize_machine(_: MachineRequest) -> Result<InitializeMachineResponse, DriverError> {
        unimplemented("initialize-machine")
    }
    fn delete_machine(_: MachineRequest) -> Result<DeleteMachineResponse, DriverError> {
        Ok(DeleteMachineResponse {
            last_known_state: String::new(),
        })
    }
    fn get_machine_status(_: MachineRequest) -> Result<GetMachineStatusResponse, DriverError> {
        unimplemented("get-machine-status")
    }
    fn list_machines(_: ListMachinesRequest) -> Result<ListMachinesResponse, DriverError> {
        unimplemented("list-machines")
    }
    fn get_volume_ids(_: GetVolumeIdsRequest) -> Result<GetVolumeIdsResponse, DriverError> {
        unimplemented("get-volume-ids")
    }
    fn validate_machine_class(_: ValidateRequest) -> Result<(), DriverError> {
        unimplemented("validate-machine-class")
    }
    fn metrics_labels(_: MetricsLabelsRequest) -> Result<Vec<(String, String)>, DriverError> {
        unimplemented("metrics-labels")
    }
}

export!(Old);

#[used]
#[unsafe(link_section = "mcm-wasm:provider")]
static METADATA: [u8; 51] = *b"{\"name\":\"old\",\"version\":\"0.9.0\",\"contract\":\"0.1.0\"}";
