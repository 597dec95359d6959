//! The driver contract as the host sees it: operations, requests, responses, machine codes,
//! and the [`MachineDriver`] trait between the controller and whatever serves the calls.
//!
//! These are the runtime's own types (serde, camelCase as in MCM's API). The sandbox converts
//! the wasm bindings to and from them (`mcm-sandbox`'s `engine::convert`), so nothing outside
//! the sandbox depends on generated code, and the controller depends on this crate only
//! (no wasmtime). Data flows one way: controller -> [`ProviderLookup`] -> [`MachineDriver`]
//! -> sandbox -> guest.

mod call;
mod operation;
pub mod text;
pub mod warnings;

pub use call::{
    BadRequest, MachineDriver, OwnedRequest, ProviderLoaded, ProviderLookup, RateBucketStats,
    Request, Response,
};
pub use operation::{Deadlines, Operation};

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The contract version this runtime speaks (`package mcm:driver@...` in wit/).
pub const CONTRACT_VERSION: &str = "0.1.3";

/// MCM machine error codes (pkg/util/provider/machinecodes/codes), without OK.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[repr(u8)]
pub enum Code {
    Canceled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
    Uninitialized = 17,
}

impl Code {
    /// All codes, in numeric order.
    pub const ALL: [Code; 17] = [
        Code::Canceled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
        Code::Uninitialized,
    ];

    /// MCM's name of the code, e.g. `ResourceExhausted`.
    pub fn name(self) -> &'static str {
        match self {
            Code::Canceled => "Canceled",
            Code::Unknown => "Unknown",
            Code::InvalidArgument => "InvalidArgument",
            Code::DeadlineExceeded => "DeadlineExceeded",
            Code::NotFound => "NotFound",
            Code::AlreadyExists => "AlreadyExists",
            Code::PermissionDenied => "PermissionDenied",
            Code::ResourceExhausted => "ResourceExhausted",
            Code::FailedPrecondition => "FailedPrecondition",
            Code::Aborted => "Aborted",
            Code::OutOfRange => "OutOfRange",
            Code::Unimplemented => "Unimplemented",
            Code::Internal => "Internal",
            Code::Unavailable => "Unavailable",
            Code::DataLoss => "DataLoss",
            Code::Unauthenticated => "Unauthenticated",
            Code::Uninitialized => "Uninitialized",
        }
    }

    /// The numeric value MCM uses.
    pub fn number(self) -> u8 {
        self as u8
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A failed driver call: the machine code and a message for the operator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("machine codes error: code = [{code}] message = [{message}]")]
pub struct DriverError {
    pub code: Code,
    pub message: String,
}

impl DriverError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        DriverError {
            code,
            message: message.into(),
        }
    }
}

/// The secret key of the machine's bootstrap user data (per worker pool, and per machine once
/// its placeholders are filled): not part of the credential.
pub const USER_DATA_KEY: &str = "userData";

/// Secret data: the class's secretRef merged with its credentialsSecretRef.
pub type SecretData = BTreeMap<String, Vec<u8>>;

/// A short, stable fingerprint of the credential in a secret: sha256 over its entries but
/// `userData` (which differs between worker pools of one account, and per machine once its
/// placeholders are filled), in key order; the first 12 hex digits. Never the credential
/// itself: it names rate buckets in logs and metrics, and which calls may share a batch.
pub fn credential_fingerprint(secret: &SecretData) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for (k, v) in secret.iter().filter(|(k, _)| k.as_str() != USER_DATA_KEY) {
        h.update((k.len() as u64).to_le_bytes());
        h.update(k.as_bytes());
        h.update((v.len() as u64).to_le_bytes());
        h.update(v);
    }
    let digest = h.finalize();
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// Do two secrets hold the same credential (every entry equal but `userData`)? What the
/// requests of one batch call must share: the host signs and meters the call with one of them.
pub fn same_credentials(a: &SecretData, b: &SecretData) -> bool {
    fn credential(s: &SecretData) -> impl Iterator<Item = (&String, &Vec<u8>)> {
        s.iter().filter(|(k, _)| k.as_str() != USER_DATA_KEY)
    }
    credential(a).eq(credential(b))
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Machine {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    #[serde(rename = "providerID")]
    pub provider_id: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct NodeTemplate {
    pub capacity: BTreeMap<String, String>,
    pub instance_type: String,
    pub region: String,
    pub zone: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MachineClass {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub provider: String,
    /// `providerSpec`, handed to the provider as JSON text.
    #[serde(default)]
    pub provider_spec: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_template: Option<NodeTemplate>,
}

impl Default for MachineClass {
    fn default() -> Self {
        MachineClass {
            name: String::new(),
            provider: String::new(),
            provider_spec: serde_json::Value::Object(Default::default()),
            node_template: None,
        }
    }
}

/// The request of create, initialize, delete and get-machine-status.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MachineRequest {
    pub machine: Machine,
    pub machine_class: MachineClass,
    /// Not part of JSON requests (the CLI takes `--secret KEY=VALUE`); never printed.
    #[serde(skip)]
    pub secret: SecretData,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeAddress {
    #[serde(rename = "type")]
    pub kind: String,
    pub address: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateMachineResponse {
    #[serde(rename = "providerID")]
    pub provider_id: String,
    pub node_name: String,
    pub last_known_state: String,
    pub addresses: Vec<NodeAddress>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitializeMachineResponse {
    #[serde(rename = "providerID")]
    pub provider_id: String,
    pub node_name: String,
    pub addresses: Vec<NodeAddress>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteMachineResponse {
    pub last_known_state: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GetMachineStatusResponse {
    #[serde(rename = "providerID")]
    pub provider_id: String,
    pub node_name: String,
    pub addresses: Vec<NodeAddress>,
}

/// The request of list-machines and validate-machine-class.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ClassRequest {
    pub machine_class: MachineClass,
    #[serde(skip)]
    pub secret: SecretData,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListMachinesResponse {
    /// providerID -> machine name.
    pub machines: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct GetVolumeIdsRequest {
    /// core/v1 PersistentVolumeSpec objects.
    pub pv_specs: Vec<serde_json::Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GetVolumeIdsResponse {
    pub volume_ids: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MetricsLabelsRequest {
    pub machine: Machine,
    pub machine_class: MachineClass,
}
