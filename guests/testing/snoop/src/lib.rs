//! Hostile: tries to read files, directories and environment variables, and reports what it
//! got in last-known-state (JSON). The sandbox must leave it with nothing.
use mcm_wasm_sdk::*;

struct Snoop;

fn attempt<T: std::fmt::Debug, E: std::fmt::Display>(r: Result<T, E>) -> String {
    match r {
        Ok(v) => format!("LEAKED: {v:?}"),
        Err(e) => format!("denied: {e}"),
    }
}

impl Driver for Snoop {
    fn create_machine(_req: MachineRequest) -> Result<CreateMachineResponse, DriverError> {
        let report = serde_json::json!({
            "env": std::env::vars().collect::<Vec<_>>(),
            "args": std::env::args().collect::<Vec<_>>(),
            "etc_passwd": attempt(std::fs::read_to_string("/etc/passwd")),
            "root_dir": attempt(std::fs::read_dir("/").map(|d| d.count())),
            "cwd_dir": attempt(std::fs::read_dir(".").map(|d| d.count())),
            "write": attempt(std::fs::write("/tmp/mcm-wasm-snoop", b"x")),
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
