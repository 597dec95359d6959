//! The mcm-wasm guest SDK: write a Gardener MCM machine driver as a WebAssembly component.
//!
//! Implement [`Driver`] for a type and call [`export_provider!`]:
//!
//! ```ignore
//! struct MyCloud;
//! impl mcm_wasm_sdk::Driver for MyCloud {
//!     fn create_machine(req: MachineRequest) -> Result<CreateMachineResponse, DriverError> { ... }
//!     fn delete_machine(req: MachineRequest) -> Result<DeleteMachineResponse, DriverError> { ... }
//! }
//! mcm_wasm_sdk::export_provider!(MyCloud, name: "mycloud", version: env!("CARGO_PKG_VERSION"));
//! ```
//!
//! Optional operations default to `unimplemented`, which MCM understands. The only way out of
//! the sandbox is [`http::send`]; logs go to the host through [`log`].
#![deny(missing_docs)]

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "provider",
        pub_export_macro: true,
        export_macro_name: "__export_provider_world",
        default_bindings_module: "mcm_wasm_sdk::bindings",
        generate_all,
    });
}

pub mod credentials;
mod hooks;
pub mod http;
pub mod log;
mod metadata;

pub use bindings::exports::mcm::driver::driver::Guest as __Guest;
pub use bindings::mcm::driver::types::{
    Code, CreateMachineResponse, DeleteMachineResponse, DriverError, GetMachineStatusResponse,
    GetVolumeIdsRequest, GetVolumeIdsResponse, InitializeMachineResponse, ListMachinesRequest,
    ListMachinesResponse, Machine, MachineClass, MachineRequest, MetricsLabelsRequest, NodeAddress,
    NodeTemplate, SecretData, ValidateRequest,
};
#[doc(hidden)]
pub use hooks::install as __install_hooks;
#[doc(hidden)]
pub use metadata::{metadata_bytes, metadata_len};

/// The contract version this SDK builds against (the `mcm:driver` WIT package version).
pub const CONTRACT_VERSION: &str = "0.1.3";

/// Name of the custom section holding the provider's metadata (JSON: name, version, contract).
pub const METADATA_SECTION: &str = "mcm-wasm:provider";

/// A machine driver. `create_machine` and `delete_machine` are required by MCM; every other
/// operation is optional and answers `unimplemented` unless overridden.
pub trait Driver {
    /// Create the VM for the machine. Must be idempotent: a repeated call for the same machine
    /// returns the VM that already exists instead of making a second one.
    fn create_machine(req: MachineRequest) -> Result<CreateMachineResponse, DriverError>;

    /// Delete the machine's VM. Must work from `machine.provider_id` alone; a VM that is
    /// already gone is success.
    fn delete_machine(req: MachineRequest) -> Result<DeleteMachineResponse, DriverError>;

    /// Finish VM setup after create; MCM calls it when status answers `uninitialized`.
    fn initialize_machine(_req: MachineRequest) -> Result<InitializeMachineResponse, DriverError> {
        Err(DriverError::unimplemented("initialize-machine"))
    }

    /// Status of the machine's VM: `not-found` when there is none.
    fn get_machine_status(_req: MachineRequest) -> Result<GetMachineStatusResponse, DriverError> {
        Err(DriverError::unimplemented("get-machine-status"))
    }

    /// All VMs of the class, providerID -> machine name (used for orphan collection).
    fn list_machines(_req: ListMachinesRequest) -> Result<ListMachinesResponse, DriverError> {
        Err(DriverError::unimplemented("list-machines"))
    }

    /// Provider volume IDs of persistent volume specs (JSON text each).
    fn get_volume_ids(_req: GetVolumeIdsRequest) -> Result<GetVolumeIdsResponse, DriverError> {
        Err(DriverError::unimplemented("get-volume-ids"))
    }

    /// Validate the class and secret without calling the cloud (`invalid-argument` on error).
    fn validate_machine_class(_req: ValidateRequest) -> Result<(), DriverError> {
        Err(DriverError::unimplemented("validate-machine-class"))
    }

    /// Labels for the machine's metrics; must not call the cloud.
    fn metrics_labels(_req: MetricsLabelsRequest) -> Result<Vec<(String, String)>, DriverError> {
        Err(DriverError::unimplemented("metrics-labels"))
    }

    /// (0.1.2, batch providers only) The status of each machine, one entry per request in
    /// the order asked; one machine's error never fails the others. Exported only when
    /// [`export_provider!`] is given `batch_bindings`; the default asks one machine at a time.
    fn get_machine_statuses(
        reqs: Vec<MachineRequest>,
    ) -> Vec<Result<GetMachineStatusResponse, DriverError>> {
        reqs.into_iter().map(Self::get_machine_status).collect()
    }

    /// (0.1.3, batch providers only) Create each machine's VM, one entry per request in the
    /// order asked (see [`Driver::get_machine_statuses`]); each request carries its own secret
    /// (its own `userData`), the credentials are the same. A provider that runs short of time
    /// ([`remaining_millis`]) answers the machines it did not get to with `unavailable`. The
    /// default creates one machine after another and, once less than twice the slowest
    /// creation so far is left, answers the rest `unavailable` (asked again).
    fn create_machines(
        reqs: Vec<MachineRequest>,
    ) -> Vec<Result<CreateMachineResponse, DriverError>> {
        let mut slowest = 0u64;
        reqs.into_iter()
            .map(|req| {
                let before = remaining_millis();
                if before < slowest.saturating_mul(2) {
                    return Err(DriverError::unavailable(format!(
                        "machine {:?} not created: its batch ran out of time (asked again)",
                        req.machine.name
                    )));
                }
                let created = Self::create_machine(req);
                slowest = slowest.max(before.saturating_sub(remaining_millis()));
                created
            })
            .collect()
    }

    /// (0.1.2, batch providers only) Delete each machine's VM, one entry per request in the
    /// order asked (see [`Driver::get_machine_statuses`]).
    fn delete_machines(
        reqs: Vec<MachineRequest>,
    ) -> Vec<Result<DeleteMachineResponse, DriverError>> {
        reqs.into_iter().map(Self::delete_machine).collect()
    }
}

impl DriverError {
    /// An error with the given code and message.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        DriverError {
            code,
            message: message.into(),
        }
    }
    /// `invalid-argument`: the request, class or secret is wrong; retrying will not help.
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }
    /// `not-found`: the VM does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, message)
    }
    /// `internal`: something the provider did not expect.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Code::Internal, message)
    }
    /// `unavailable`: a transient failure; MCM retries soon.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(Code::Unavailable, message)
    }
    /// `unimplemented`: the provider does not support this operation.
    pub fn unimplemented(operation: &str) -> Self {
        Self::new(
            Code::Unimplemented,
            format!("{operation} is not implemented by this provider"),
        )
    }
}

impl MachineClass {
    /// Decode `providerSpec` into the provider's own type; a malformed spec is
    /// `invalid-argument` naming the field serde complained about.
    pub fn decode_spec<T: serde::de::DeserializeOwned>(&self) -> Result<T, DriverError> {
        serde_json::from_str(&self.provider_spec).map_err(|e| {
            DriverError::invalid_argument(format!(
                "machine class {:?}: invalid providerSpec: {e}",
                self.name
            ))
        })
    }
}

/// Read a key of the merged secret.
pub fn secret_value<'a>(secret: &'a SecretData, key: &str) -> Option<&'a [u8]> {
    secret
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_slice())
}

/// Read a key of the merged secret as UTF-8 text, or fail with `invalid-argument` naming it.
pub fn require_secret(secret: &SecretData, key: &str) -> Result<String, DriverError> {
    let bytes = secret_value(secret, key)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| DriverError::invalid_argument(format!("secret is missing key {key:?}")))?;
    String::from_utf8(bytes.to_vec())
        .map_err(|_| DriverError::invalid_argument(format!("secret key {key:?} is not UTF-8 text")))
}

/// Milliseconds left before the host cancels the current call.
pub fn remaining_millis() -> u64 {
    bindings::mcm::driver::context::remaining_millis()
}

/// The provider's own configuration set by the operator, decoded into the author's type
/// (`{}` when unset).
pub fn provider_config<T: serde::de::DeserializeOwned>() -> Result<T, DriverError> {
    let text = bindings::mcm::driver::context::provider_config();
    serde_json::from_str(&text)
        .map_err(|e| DriverError::invalid_argument(format!("invalid provider config: {e}")))
}

/// Export a [`Driver`] implementation as the component's `mcm:driver/driver` interface and embed
/// the provider's metadata (name, version, contract version) for the runtime to read.
///
/// Optional: `aliases: "AWS"` (comma-separated other names a MachineClass's `provider` may
/// use, e.g. how Gardener spells it) and `endpoint_env: "AWS_ENDPOINT_URL_EC2"` (an
/// environment variable of the controller's that, when set, becomes the provider config's
/// `endpoint` and is added to its egress allowlist; the guest itself sees no environment), and
/// `rate_limits: r#"{"classes": {"RunInstances": {"rate": 2, "burst": 5}}}"#` (JSON: the
/// provider's default token buckets per rate class, which the operator's Provider settings
/// override; a request names its class in the `mcm-wasm-rate-class` header,
/// [`http::RATE_CLASS_HEADER`]).
///
/// A provider that serves many machines in one cloud request (contract 0.1.2) also exports
/// the `mcm:driver/batch` and (0.1.3) `mcm:driver/batch-create` interfaces: generate bindings
/// of the world `batch-provider` in a module of the crate root that reuse this SDK's imported
/// interfaces (see the AWS provider's `batch_bindings`), implement
/// [`Driver::get_machine_statuses`], [`Driver::delete_machines`] and (or leave it one machine
/// at a time) [`Driver::create_machines`], and pass `batch_bindings: <that module>` last.
#[macro_export]
macro_rules! export_provider {
    (
        $driver:ty, name: $name:expr, version: $version:expr
        $(, aliases: $aliases:expr)?
        $(, endpoint_env: $endpoint_env:expr)?
        $(, rate_limits: $rate_limits:expr)?
        , batch_bindings: $batch:ident
        $(,)?
    ) => {
        $crate::__provider_metadata!($name, $version $(, aliases: $aliases)? $(, endpoint_env: $endpoint_env)? $(, rate_limits: $rate_limits)?);

        #[doc(hidden)]
        pub struct __McmProvider;

        $crate::__driver_guest!($batch::exports::mcm::driver::driver::Guest, $driver);

        impl $batch::exports::mcm::driver::batch::Guest for __McmProvider {
            fn get_machine_statuses(reqs: Vec<$crate::MachineRequest>) -> Vec<Result<$crate::GetMachineStatusResponse, $crate::DriverError>> {
                $crate::__install_hooks();
                <$driver as $crate::Driver>::get_machine_statuses(reqs)
            }
            fn delete_machines(reqs: Vec<$crate::MachineRequest>) -> Vec<Result<$crate::DeleteMachineResponse, $crate::DriverError>> {
                $crate::__install_hooks();
                <$driver as $crate::Driver>::delete_machines(reqs)
            }
        }

        impl $batch::exports::mcm::driver::batch_create::Guest for __McmProvider {
            fn create_machines(reqs: Vec<$crate::MachineRequest>) -> Vec<Result<$crate::CreateMachineResponse, $crate::DriverError>> {
                $crate::__install_hooks();
                <$driver as $crate::Driver>::create_machines(reqs)
            }
        }

        $batch::export!(__McmProvider with_types_in $batch);
    };
    (
        $driver:ty, name: $name:expr, version: $version:expr
        $(, aliases: $aliases:expr)?
        $(, endpoint_env: $endpoint_env:expr)?
        $(, rate_limits: $rate_limits:expr)?
        $(,)?
    ) => {
        $crate::__provider_metadata!($name, $version $(, aliases: $aliases)? $(, endpoint_env: $endpoint_env)? $(, rate_limits: $rate_limits)?);

        #[doc(hidden)]
        pub struct __McmProvider;

        $crate::__driver_guest!($crate::__Guest, $driver);

        $crate::bindings::__export_provider_world!(__McmProvider with_types_in $crate::bindings);
    };
}

/// The metadata custom section (see [`export_provider!`]).
#[doc(hidden)]
#[macro_export]
macro_rules! __provider_metadata {
    (
        $name:expr, $version:expr
        $(, aliases: $aliases:expr)?
        $(, endpoint_env: $endpoint_env:expr)?
        $(, rate_limits: $rate_limits:expr)?
    ) => {
        const _: () = {
            const __MCM_META_PARTS: &[&str] = &[
                "{\"name\":\"", $name, "\",\"version\":\"", $version, "\",\"contract\":\"",
                $crate::CONTRACT_VERSION, "\""
                $(, ",\"aliases\":\"", $aliases, "\"")?
                $(, ",\"endpointEnv\":\"", $endpoint_env, "\"")?
                $(, ",\"rateLimits\":", $rate_limits)?
                , "}",
            ];
            const __MCM_META_LEN: usize = $crate::metadata_len(__MCM_META_PARTS);
            #[used]
            #[unsafe(link_section = "mcm-wasm:provider")]
            static __MCM_META: [u8; __MCM_META_LEN] = $crate::metadata_bytes(__MCM_META_PARTS);
        };
    };
}

/// The driver interface of `__McmProvider`, served by `$driver` (see [`export_provider!`]).
#[doc(hidden)]
#[macro_export]
macro_rules! __driver_guest {
    ($guest:path, $driver:ty) => {
        impl $guest for __McmProvider {
            fn create_machine(
                r: $crate::MachineRequest,
            ) -> Result<$crate::CreateMachineResponse, $crate::DriverError> {
                $crate::__install_hooks();
                <$driver as $crate::Driver>::create_machine(r)
            }
            fn initialize_machine(
                r: $crate::MachineRequest,
            ) -> Result<$crate::InitializeMachineResponse, $crate::DriverError> {
                $crate::__install_hooks();
                <$driver as $crate::Driver>::initialize_machine(r)
            }
            fn delete_machine(
                r: $crate::MachineRequest,
            ) -> Result<$crate::DeleteMachineResponse, $crate::DriverError> {
                $crate::__install_hooks();
                <$driver as $crate::Driver>::delete_machine(r)
            }
            fn get_machine_status(
                r: $crate::MachineRequest,
            ) -> Result<$crate::GetMachineStatusResponse, $crate::DriverError> {
                $crate::__install_hooks();
                <$driver as $crate::Driver>::get_machine_status(r)
            }
            fn list_machines(
                r: $crate::ListMachinesRequest,
            ) -> Result<$crate::ListMachinesResponse, $crate::DriverError> {
                $crate::__install_hooks();
                <$driver as $crate::Driver>::list_machines(r)
            }
            fn get_volume_ids(
                r: $crate::GetVolumeIdsRequest,
            ) -> Result<$crate::GetVolumeIdsResponse, $crate::DriverError> {
                $crate::__install_hooks();
                <$driver as $crate::Driver>::get_volume_ids(r)
            }
            fn validate_machine_class(
                r: $crate::ValidateRequest,
            ) -> Result<(), $crate::DriverError> {
                $crate::__install_hooks();
                <$driver as $crate::Driver>::validate_machine_class(r)
            }
            fn metrics_labels(
                r: $crate::MetricsLabelsRequest,
            ) -> Result<Vec<(String, String)>, $crate::DriverError> {
                $crate::__install_hooks();
                <$driver as $crate::Driver>::metrics_labels(r)
            }
        }
    };
}
