//! Hostile: create-machine returns a result far larger than the host accepts (8 MiB).
use mcm_wasm_sdk::*;

struct BigResult;

impl Driver for BigResult {
    fn create_machine(_req: MachineRequest) -> Result<CreateMachineResponse, DriverError> {
        Ok(CreateMachineResponse {
            provider_id: "big:///1".into(),
            node_name: "n".into(),
            last_known_state: "x".repeat(8 << 20),
            addresses: Vec::new(),
        })
    }
    fn delete_machine(_req: MachineRequest) -> Result<DeleteMachineResponse, DriverError> {
        Ok(DeleteMachineResponse {
            last_known_state: String::new(),
        })
    }
}

export_provider!(BigResult, name: "bigresult", version: env!("CARGO_PKG_VERSION"));
