//! Hostile: create-machine allocates until the host refuses more memory.
use mcm_wasm_sdk::*;

struct MemBomb;

impl Driver for MemBomb {
    fn create_machine(_req: MachineRequest) -> Result<CreateMachineResponse, DriverError> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            // Touch every page so the allocation is real.
            hoard.push(std::hint::black_box(vec![0xA5u8; 1 << 20]));
        }
    }
    fn delete_machine(_req: MachineRequest) -> Result<DeleteMachineResponse, DriverError> {
        Ok(DeleteMachineResponse {
            last_known_state: String::new(),
        })
    }
}

export_provider!(MemBomb, name: "membomb", version: env!("CARGO_PKG_VERSION"));
