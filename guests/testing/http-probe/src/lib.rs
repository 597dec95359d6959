//! Utility: create-machine sends the HTTP request described by the providerSpec and reports
//! the answer (status and headers as JSON in last-known-state, body as node-name). Transport
//! errors come back as the SDK maps them (denied -> permission-denied, timeout ->
//! deadline-exceeded, too-large -> resource-exhausted). Used for egress, slow-server and
//! huge-body tests. With `many` (a list of such requests), it sends them with `send-many`
//! instead and reports each answer's status (or error) as JSON in last-known-state.
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
    /// Send these with `http.send-many` instead.
    #[serde(default)]
    many: Vec<Probe>,
}

impl Probe {
    fn request(&self) -> http::Request {
        let mut request =
            http::request(&self.method, self.url.clone()).body(self.body.clone().into_bytes());
        for (k, v) in &self.headers {
            request = request.header(k, v.clone());
        }
        request
    }
}

struct HttpProbe;

impl Driver for HttpProbe {
    fn create_machine(req: MachineRequest) -> Result<CreateMachineResponse, DriverError> {
        let probe: Probe = req.machine_class.decode_spec()?;
        if !probe.many.is_empty() {
            let requests: Vec<http::Request> = probe.many.iter().map(Probe::request).collect();
            let answers: Vec<String> = http::send_many(&requests)
                .iter()
                .map(|a| match a {
                    Ok(r) => r.status.to_string(),
                    Err(e) => http::describe(e),
                })
                .collect();
            return Ok(CreateMachineResponse {
                provider_id: "probe:///many".into(),
                node_name: String::new(),
                last_known_state: serde_json::json!({ "many": answers }).to_string(),
                addresses: Vec::new(),
            });
        }
        let response = http::send(&probe.request())?;
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
