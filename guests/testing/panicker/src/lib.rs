//! Hostile: create-machine panics with a message the operator must get to see.
use mcm_wasm_sdk::*;

struct Panicker;

impl Driver for Panicker {
    fn create_machine(req: MachineRequest) -> Result<CreateMachineResponse, DriverError> {
        panic!("provider exploded while creating {}", req.machine.name);
    }
    fn delete_machine(_req: MachineRequest) -> Result<DeleteMachineResponse, DriverError> {
        Ok(DeleteMachineResponse {
            last_known_state: String::new(),
        })
    }
}

export_provider!(Panicker, name: "panicker", version: env!("CARGO_PKG_VERSION"));
