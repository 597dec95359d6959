//! Hostile: create-machine recurses without bound (stack overflow).
use mcm_wasm_sdk::*;

struct Recursion;

#[inline(never)]
#[allow(unconditional_recursion)]
fn dive(depth: u64, pad: [u64; 8]) -> u64 {
    let pad = std::hint::black_box(pad);
    dive(depth + 1, pad).wrapping_add(pad[(depth % 8) as usize])
}

impl Driver for Recursion {
    fn create_machine(_req: MachineRequest) -> Result<CreateMachineResponse, DriverError> {
        let n = dive(0, [1; 8]);
        Err(DriverError::internal(format!("unreachable: {n}")))
    }
    fn delete_machine(_req: MachineRequest) -> Result<DeleteMachineResponse, DriverError> {
        Ok(DeleteMachineResponse {
            last_known_state: String::new(),
        })
    }
}

export_provider!(Recursion, name: "recursion", version: env!("CARGO_PKG_VERSION"));
