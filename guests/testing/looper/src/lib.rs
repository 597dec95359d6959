//! Hostile: create-machine never returns (a CPU-bound infinite loop).
use mcm_wasm_sdk::*;

struct Looper;

impl Driver for Looper {
    fn create_machine(_req: MachineRequest) -> Result<CreateMachineResponse, DriverError> {
        let mut n: u64 = 0;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }
    fn delete_machine(_req: MachineRequest) -> Result<DeleteMachineResponse, DriverError> {
        Ok(DeleteMachineResponse {
            last_known_state: String::new(),
        })
    }
}

export_provider!(Looper, name: "looper", version: env!("CARGO_PKG_VERSION"));
