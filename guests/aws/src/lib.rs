//! AWS EC2 machine driver for mcm-wasm, at machine-controller-manager-provider-aws parity.
//!
//! It speaks the EC2 Query API (SigV4-signed, XML answers) through the host `http` capability
//! only. The endpoint is `https://ec2.<region>.amazonaws.com` unless the operator's provider
//! config says `{"endpoint": "http://127.0.0.1:5000"}` (moto, local testing).
//!
//! Modules: `spec` (providerSpec + secret validation), `query` (EC2 requests), `sign` (SigV4),
//! `xml` (answers), `errors` (EC2 error -> machine code), `ec2` (client), `driver` (operations).

#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

pub mod driver;
pub mod ec2;
pub mod errors;
pub mod query;
pub mod regions;
pub mod sign;
pub mod spec;
pub mod xml;

use std::cell::Cell;

use mcm_wasm_sdk::http::{Error as HttpError, Request, Response};
use mcm_wasm_sdk::*;

/// The host `http` capability, counting requests for the operation's log line.
struct Host {
    requests: Cell<u32>,
}

impl ec2::Transport for Host {
    fn send(&self, req: &Request) -> Result<Response, HttpError> {
        self.requests.set(self.requests.get() + 1);
        http::send(req)
    }
    fn send_many(&self, reqs: &[Request]) -> Vec<Result<Response, HttpError>> {
        self.requests.set(self.requests.get() + reqs.len() as u32);
        http::send_many(reqs)
    }
    fn brokered(&self) -> bool {
        credentials::is_withheld(spec::ACCESS_KEY_KEYS[0])
            || credentials::is_withheld(spec::ACCESS_KEY_KEYS[1])
    }
    fn send_signed(&self, req: &Request, region: &str) -> Result<Response, HttpError> {
        self.requests.set(self.requests.get() + 1);
        credentials::send_aws_sigv4(req, region, "ec2")
    }
    fn remaining_millis(&self) -> u64 {
        remaining_millis()
    }
}

fn run<R>(
    operation: &str,
    machine: &str,
    f: impl FnOnce(&Host, &driver::Config) -> Result<R, DriverError>,
) -> Result<R, DriverError> {
    let config: driver::Config = provider_config()?;
    let host = Host {
        requests: Cell::new(0),
    };
    let result = f(&host, &config);
    let requests = host.requests.get().to_string();
    match &result {
        Ok(_) => log::debug(
            "operation done",
            &[
                ("operation", operation),
                ("machine", machine),
                ("ec2_requests", &requests),
            ],
        ),
        Err(e) => log::info(
            "operation failed",
            &[
                ("operation", operation),
                ("machine", machine),
                ("ec2_requests", &requests),
                ("error", &e.message),
            ],
        ),
    }
    result
}

/// A batch operation: [`run`] once for all machines; a failure before any machine was served
/// (the provider config) answers every machine with it.
fn run_batch<R>(
    operation: &str,
    reqs: &[MachineRequest],
    f: impl FnOnce(&Host, &driver::Config) -> Vec<Result<R, DriverError>>,
) -> Vec<Result<R, DriverError>> {
    let label = format!("{} machines", reqs.len());
    let mut answers = Vec::new();
    match run(operation, &label, |h, c| {
        answers = f(h, c);
        Ok(())
    }) {
        Ok(()) => answers,
        Err(e) => reqs.iter().map(|_| Err(e.clone())).collect(),
    }
}

/// Credentials that look wrong are a warning in the host log, not a refusal (see
/// `spec::credential_warnings`).
fn warn_about_credentials(secret: &[(String, Vec<u8>)], machine: &str) {
    for warning in spec::credential_warnings(secret) {
        log::warn(&warning, &[("machine", machine)]);
    }
}

struct Aws;

impl Driver for Aws {
    fn create_machine(req: MachineRequest) -> Result<CreateMachineResponse, DriverError> {
        warn_about_credentials(&req.secret, &req.machine.name);
        run("create-machine", &req.machine.name, |h, c| {
            driver::create(h, c, &req)
        })
    }

    fn initialize_machine(req: MachineRequest) -> Result<InitializeMachineResponse, DriverError> {
        run("initialize-machine", &req.machine.name, |h, c| {
            driver::initialize(h, c, &req)
        })
    }

    fn delete_machine(req: MachineRequest) -> Result<DeleteMachineResponse, DriverError> {
        run("delete-machine", &req.machine.name, |h, c| {
            driver::delete(h, c, &req)
        })
    }

    fn get_machine_status(req: MachineRequest) -> Result<GetMachineStatusResponse, DriverError> {
        run("get-machine-status", &req.machine.name, |h, c| {
            driver::status(h, c, &req)
        })
    }

    fn list_machines(req: ListMachinesRequest) -> Result<ListMachinesResponse, DriverError> {
        run("list-machines", "", |h, c| driver::list(h, c, &req))
    }

    fn get_volume_ids(req: GetVolumeIdsRequest) -> Result<GetVolumeIdsResponse, DriverError> {
        driver::volume_ids(&req)
    }

    fn validate_machine_class(req: ValidateRequest) -> Result<(), DriverError> {
        let _: driver::Config = provider_config()?;
        let host = Host {
            requests: Cell::new(0),
        };
        let brokered = ec2::Transport::brokered(&host);
        warn_about_credentials(&req.secret, "");
        spec::validate_class(&req.machine_class.provider_spec, &req.secret, brokered)
            .map_err(driver::invalid)?;
        Ok(())
    }

    fn get_machine_statuses(
        reqs: Vec<MachineRequest>,
    ) -> Vec<Result<GetMachineStatusResponse, DriverError>> {
        run_batch("get-machine-statuses", &reqs, |h, c| {
            driver::statuses(h, c, &reqs)
        })
    }

    fn create_machines(
        reqs: Vec<MachineRequest>,
    ) -> Vec<Result<CreateMachineResponse, DriverError>> {
        if let Some(first) = reqs.first() {
            warn_about_credentials(&first.secret, &format!("{} machines", reqs.len()));
        }
        run_batch("create-machines", &reqs, |h, c| {
            driver::creates(h, c, &reqs)
        })
    }

    fn delete_machines(
        reqs: Vec<MachineRequest>,
    ) -> Vec<Result<DeleteMachineResponse, DriverError>> {
        run_batch("delete-machines", &reqs, |h, c| {
            driver::deletes(h, c, &reqs)
        })
    }

    fn metrics_labels(req: MetricsLabelsRequest) -> Result<Vec<(String, String)>, DriverError> {
        let spec = spec::decode(&req.machine_class.provider_spec).map_err(driver::invalid)?;
        Ok(vec![
            ("size".into(), spec.machine_type),
            ("region".into(), spec.region),
        ])
    }
}

/// Bindings of the world `batch-provider` (contract 0.1.2: the provider also exports
/// `mcm:driver/batch`), on the SDK's imported interfaces and types.
#[cfg(target_arch = "wasm32")]
mod batch_bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "batch-provider",
        with: {
            "mcm:driver/types@0.1.3": mcm_wasm_sdk::bindings::mcm::driver::types,
            "mcm:driver/http@0.1.3": mcm_wasm_sdk::bindings::mcm::driver::http,
            "mcm:driver/log@0.1.3": mcm_wasm_sdk::bindings::mcm::driver::log,
            "mcm:driver/context@0.1.3": mcm_wasm_sdk::bindings::mcm::driver::context,
            "mcm:driver/credentials@0.1.3": mcm_wasm_sdk::bindings::mcm::driver::credentials,
        },
        generate_all,
    });
}

// Exported only in the component: a native cdylib cannot carry the component export names
// (the native build exists for the unit tests).
#[cfg(target_arch = "wasm32")]
export_provider!(
    Aws,
    name: "aws",
    version: env!("CARGO_PKG_VERSION"),
    // Gardener and provider-aws write `provider: AWS`; provider-aws users point the SDK at
    // another endpoint with AWS_ENDPOINT_URL_EC2.
    aliases: "AWS",
    endpoint_env: "AWS_ENDPOINT_URL_EC2",
    // EC2's default request buckets per account and region (AWS's "Request throttling for the
    // Amazon EC2 API"): RunInstances 5 refilled at 2/s, TerminateInstances 100 at 5/s,
    // non-mutating actions 100 at 20/s, other mutating actions 50 at 5/s.
    rate_limits: EC2_RATE_LIMITS,
    batch_bindings: batch_bindings,
);

/// The provider's default rate limits (see the metadata above); `rate_limits_decode` checks
/// they are what the host will read.
pub const EC2_RATE_LIMITS: &str = r#"{"classes":{"RunInstances":{"rate":2,"burst":5},"TerminateInstances":{"rate":5,"burst":100},"DescribeInstances":{"rate":20,"burst":100},"DescribeImages":{"rate":20,"burst":100}},"default":{"rate":5,"burst":50}}"#;

#[cfg(test)]
mod tests {
    /// The metadata's rate limits are JSON of the host's shape, with a class for every EC2
    /// action the provider sends (the class is the action's name).
    #[test]
    fn rate_limits_decode() {
        let v: serde_json::Value = serde_json::from_str(super::EC2_RATE_LIMITS).unwrap();
        for action in [
            "RunInstances",
            "TerminateInstances",
            "DescribeInstances",
            "DescribeImages",
        ] {
            let class = &v["classes"][action];
            assert!(class["rate"].as_f64().unwrap() > 0.0, "{action}");
            assert!(class["burst"].as_u64().unwrap() > 0, "{action}");
        }
        assert_eq!(v["classes"]["RunInstances"]["burst"], 5);
        assert!(v["default"]["rate"].as_f64().unwrap() > 0.0);
    }
}
