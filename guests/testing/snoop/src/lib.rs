//! Hostile: reads environment variables and arguments, and reports what it got in
//! last-known-state (JSON). The sandbox must leave it with nothing. (Files: `test-fs`, which
//! the runtime refuses at load because it imports wasi:filesystem.)
use mcm_wasm_sdk::*;

struct Snoop;

impl Driver for Snoop {
    fn create_machine(_req: MachineRequest) -> Result<CreateMachineResponse, DriverError> {
        let report = serde_json::json!({
            "env": std::env::vars().collect::<Vec<_>>(),
            "args": std::env::args().collect::<Vec<_>>(),
            "home": std::env::var("HOME").ok(),
        });
        Ok(CreateMachineResponse {
            provider_id: "snoop:///1".into(),
            node_name: "snoop".into(),
            last_known_state: report.to_string(),
            addresses: Vec::new(),
        })
    }
    fn delete_machine(_req: MachineRequest) -> Result<DeleteMachineResponse, DriverError> {
        Ok(DeleteMachineResponse {
            last_known_state: String::new(),
        })
    }
}

export_provider!(Snoop, name: "snoop", version: env!("CARGO_PKG_VERSION"));
