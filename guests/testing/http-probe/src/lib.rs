//! Utility: create-machine sends the HTTP request described by the providerSpec and reports
//! the answer (status and headers as JSON in last-known-state, body as node-name). Transport
//! errors come back as the SDK maps them (denied -> permission-denied, timeout ->
//! deadline-exceeded, too-large -> resource-exhausted). Used for egress, slow-server and
//! huge-body tests.
use mcm_wasm_sdk::*;
use serde::Deserialize;

#[derive(Deserialize)]
struct Probe {
    method: String,
    url: String,
    #[serde(default)]
    headers: Vec<(String, String)>,
    #[serde(default)]
    body: String,
}

struct HttpProbe;

impl Driver for HttpProbe {
    fn create_machine(req: MachineRequest) -> Result<CreateMachineResponse, DriverError> {
        let probe: Probe = req.machine_class.decode_spec()?;
        let mut request = http::request(&probe.method, probe.url).body(probe.body.into_bytes());
        for (k, v) in probe.headers {
            request = request.header(&k, v);
        }
        let response = http::send(&request)?;
        log::info(
            "probe answered",
            &[("status", &response.status.to_string())],
        );
        Ok(CreateMachineResponse {
            provider_id: format!("probe:///{}", response.status),
            node_name: response.text(),
            last_known_state: serde_json::json!({
                "status": response.status,
                "headers": response.headers,
            })
            .to_string(),
            addresses: Vec::new(),
        })
    }
    fn delete_machine(_req: MachineRequest) -> Result<DeleteMachineResponse, DriverError> {
        Ok(DeleteMachineResponse {
            last_known_state: String::new(),
        })
    }
}

export_provider!(HttpProbe, name: "http-probe", version: env!("CARGO_PKG_VERSION"));
