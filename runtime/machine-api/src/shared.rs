//! Types shared by several kinds (Gardener's `shared_types.go` and the parts of
//! `machine_types.go` that MachineSets and MachineDeployments reuse).

use k8s_openapi::api::core::v1::NodeSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::machine::MachineSpec;
use crate::schema::{is_default, preserve_unknown_object, string_enum};

/// The class of a machine: which MachineClass it is created from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClassSpec {
    /// API group to which it belongs
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api_group: String,
    /// Kind for machine class
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// Name of machine class
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

impl ClassSpec {
    /// A reference to the MachineClass `name` (kind `MachineClass`, as Gardener writes it).
    pub fn machine_class(name: impl Into<String>) -> Self {
        ClassSpec {
            api_group: String::new(),
            kind: "MachineClass".to_owned(),
            name: name.into(),
        }
    }
}

/// The data a node should have when created from a template.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NodeTemplateSpec {
    /// Labels, annotations, ... that the node gets.
    #[serde(default, skip_serializing_if = "is_default")]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub metadata: ObjectMeta,
    /// NodeSpec describes the attributes that a node is created with.
    #[serde(default, skip_serializing_if = "is_default")]
    pub spec: NodeSpec,
}

/// The data a machine should have when created from a template (MachineSets, MachineDeployments).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MachineTemplateSpec {
    /// Standard object's metadata.
    #[serde(default, skip_serializing_if = "is_default")]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub metadata: ObjectMeta,
    /// Specification of the desired behavior of the machine.
    #[serde(default, skip_serializing_if = "is_default")]
    pub spec: MachineSpec,
}

/// Configuration for the machine controller, per machine (inlined into `MachineSpec`).
///
/// Durations are Go `metav1.Duration` strings such as `"20m"` or `"2h0m0s"`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MachineConfiguration {
    /// MachineDraintimeout is the timeout after which machine is forcefully deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_timeout: Option<String>,
    /// MachineHealthTimeout is the timeout after which machine is declared unhealhty/failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_timeout: Option<String>,
    /// MachineCreationTimeout is the timeout after which machinie creation is declared failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timeout: Option<String>,
    /// MachineInPlaceUpdateTimeout is the timeout after which in-place update is declared failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_place_update_timeout: Option<String>,
    /// MachinePreserveTimeout is the timeout after which the machine preservation is stopped
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_preserve_timeout: Option<String>,
    /// DisableHealthTimeout if set to true, health timeout will be ignored. Leading to machine never being declared failed.
    /// This is intended to be used only for in-place updates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_health_timeout: Option<bool>,
    /// MaxEvictRetries is the number of retries that will be attempted while draining the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_evict_retries: Option<i32>,
    /// NodeConditions are the set of conditions if set to true for MachineHealthTimeOut, machine will be declared failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_conditions: Option<String>,
}

impl MachineConfiguration {
    /// `drainTimeout` as a duration (`None` when unset).
    pub fn drain_timeout(&self) -> Result<Option<std::time::Duration>, crate::DurationError> {
        self.drain_timeout
            .as_deref()
            .map(crate::parse_duration)
            .transpose()
    }

    /// `healthTimeout` as a duration (`None` when unset).
    pub fn health_timeout(&self) -> Result<Option<std::time::Duration>, crate::DurationError> {
        self.health_timeout
            .as_deref()
            .map(crate::parse_duration)
            .transpose()
    }

    /// `creationTimeout` as a duration (`None` when unset).
    pub fn creation_timeout(&self) -> Result<Option<std::time::Duration>, crate::DurationError> {
        self.creation_timeout
            .as_deref()
            .map(crate::parse_duration)
            .transpose()
    }

    /// `inPlaceUpdateTimeout` as a duration (`None` when unset).
    pub fn in_place_update_timeout(
        &self,
    ) -> Result<Option<std::time::Duration>, crate::DurationError> {
        self.in_place_update_timeout
            .as_deref()
            .map(crate::parse_duration)
            .transpose()
    }
}

/// The summary of a machine (in the status of MachineSets and MachineDeployments).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MachineSummary {
    /// Name of the machine object
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// ProviderID represents the provider's unique ID given to a machine
    #[serde(
        rename = "providerID",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub provider_id: String,
    /// Last operation refers to the status of the last operation performed
    #[serde(default, skip_serializing_if = "is_default")]
    pub last_operation: LastOperation,
    /// OwnerRef
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owner_ref: String,
}

/// The last operation performed on an object.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastOperation {
    /// Description of the current operation
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// ErrorCode of the current operation if any
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error_code: String,
    /// Last update time of current operation
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update_time: Option<Time>,
    /// State of operation
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<MachineState>,
    /// Type of operation
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<MachineOperationType>,
}

string_enum! {
    /// The phase of a machine (`status.currentStatus.phase`).
    pub enum MachinePhase {
        /// The machine is being created.
        Pending = "Pending",
        /// The machine is present on the provider but has not joined the cluster yet.
        Available = "Available",
        /// The node is ready and running.
        Running = "Running",
        /// The node is terminating.
        Terminating = "Terminating",
        /// The node is not ready at the moment.
        Unknown = "Unknown",
        /// An operation timed out.
        Failed = "Failed",
        /// Machine creation is failing: the object exists but there is no VM.
        CrashLoopBackOff = "CrashLoopBackOff",
        /// The machine is being updated in place.
        InPlaceUpdating = "InPlaceUpdating",
        /// The in-place update succeeded.
        InPlaceUpdateSuccessful = "InPlaceUpdateSuccessful",
        /// The in-place update failed.
        InPlaceUpdateFailed = "InPlaceUpdateFailed",
    }
}

string_enum! {
    /// The state of an operation (`lastOperation.state`).
    pub enum MachineState {
        /// The operation is not yet complete.
        Processing = "Processing",
        /// The operation failed.
        Failed = "Failed",
        /// The operation completed successfully.
        Successful = "Successful",
    }
}

string_enum! {
    /// The kind of an operation (`lastOperation.type`).
    pub enum MachineOperationType {
        /// A create.
        Create = "Create",
        /// An update.
        Update = "Update",
        /// An in-place update.
        InPlaceUpdate = "InPlaceUpdate",
        /// A drain of the node.
        DrainNode = "DrainNode",
        /// A health check of the node object.
        HealthCheck = "HealthCheck",
        /// A delete.
        Delete = "Delete",
    }
}

string_enum! {
    /// The status of a condition.
    pub enum ConditionStatus {
        /// The resource is in the condition.
        True = "True",
        /// The resource is not in the condition.
        False = "False",
        /// It cannot be decided whether the resource is in the condition.
        Unknown = "Unknown",
    }
}
