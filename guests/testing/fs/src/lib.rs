//! Hostile: imports wasi:filesystem (std::fs). The runtime must refuse it at load.
use mcm_wasm_sdk::*;

struct Fs;

impl Driver for Fs {
    fn create_machine(_req: MachineRequest) -> Result<CreateMachineResponse, DriverError> {
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        Ok(CreateMachineResponse {
            provider_id: "fs:///1".into(),
            node_name: "fs".into(),
            last_known_state: passwd,
            addresses: Vec::new(),
        })
    }
    fn delete_machine(_req: MachineRequest) -> Result<DeleteMachineResponse, DriverError> {
        Ok(DeleteMachineResponse {
            last_known_state: String::new(),
        })
    }
}

export_provider!(Fs, name: "fs", version: env!("CARGO_PKG_VERSION"));
