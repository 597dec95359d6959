//! Hostile: a provider built against contract 1.0.0, which this runtime does not speak.
wit_bindgen::generate!({ path: "wit", world: "provider" });

struct Future;

impl exports::mcm::driver::driver::Guest for Future {
    fn create_machine(machine: exports::mcm::driver::driver::MachineRef) -> Result<String, String> {
        Ok(machine.name)
    }
}

export!(Future);

#[used]
#[unsafe(link_section = "mcm-wasm:provider")]
static METADATA: [u8; 54] = *b"{\"name\":\"future\",\"version\":\"2.0.0\",\"contract\":\"1.0.0\"}";
