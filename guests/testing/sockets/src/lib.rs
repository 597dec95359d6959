//! Hostile: imports wasi:sockets (std::net) to reach the network around the http capability.
//! The runtime must refuse it at load.
use mcm_wasm_sdk::*;

struct Sockets;

impl Driver for Sockets {
    fn create_machine(_req: MachineRequest) -> Result<CreateMachineResponse, DriverError> {
        let outcome = match std::net::TcpStream::connect("127.0.0.1:9") {
            Ok(_) => "connected".to_string(),
            Err(e) => e.to_string(),
        };
        Ok(CreateMachineResponse {
            provider_id: "sockets:///1".into(),
            node_name: "sockets".into(),
            last_known_state: outcome,
            addresses: Vec::new(),
        })
    }
    fn delete_machine(_req: MachineRequest) -> Result<DeleteMachineResponse, DriverError> {
        Ok(DeleteMachineResponse {
            last_known_state: String::new(),
        })
    }
}

export_provider!(Sockets, name: "sockets", version: env!("CARGO_PKG_VERSION"));
