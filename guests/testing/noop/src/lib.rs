// Does nothing, as fast as possible: the baseline for sandbox overhead benchmarks.
use mcm_wasm_sdk::*;

struct Noop;

/// Counts calls within one instance: with a fresh instance per call it is always 1.
static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Driver for Noop {
    fn create_machine(req: MachineRequest) -> Result<CreateMachineResponse, DriverError> {
        Ok(CreateMachineResponse {
            provider_id: format!("noop:///{}", req.machine.name),
            node_name: req.machine.name,
            // Which build answered (hot-swap tests tell versions apart by it).
            last_known_state: env!("CARGO_PKG_VERSION").to_string(),
            addresses: Vec::new(),
        })
    }
    fn delete_machine(_req: MachineRequest) -> Result<DeleteMachineResponse, DriverError> {
        Ok(DeleteMachineResponse {
            last_known_state: String::new(),
        })
    }
    fn metrics_labels(_req: MetricsLabelsRequest) -> Result<Vec<(String, String)>, DriverError> {
        let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        Ok(vec![("calls-in-this-instance".into(), n.to_string())])
    }
    fn get_machine_status(req: MachineRequest) -> Result<GetMachineStatusResponse, DriverError> {
        Ok(GetMachineStatusResponse {
            provider_id: req.machine.provider_id,
            node_name: req.machine.name,
            addresses: Vec::new(),
        })
    }
}

export_provider!(Noop, name: "noop", version: env!("CARGO_PKG_VERSION"));
