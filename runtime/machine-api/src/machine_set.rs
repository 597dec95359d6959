//! `MachineSet`: keeps a number of identical Machines (Gardener `machineset_types.go`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::schema::{is_default, string_enum};
use crate::shared::{
    ClassSpec, ConditionStatus, LastOperation, MachineSummary, MachineTemplateSpec,
};

/// Specification of a MachineSet.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "machine.sapcloud.io",
    version = "v1alpha1",
    kind = "MachineSet",
    namespaced,
    status = "MachineSetStatus",
    shortname = "mcs",
    derive = "Default",
    derive = "PartialEq",
    doc = "MachineSet keeps a number of identical Machines.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas"
    ),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".spec.replicas",
        description = "Number of desired replicas."
    ),
    printcolumn(
        name = "Current",
        type_ = "integer",
        json_path = ".status.replicas",
        description = "Number of actual replicas."
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Number of ready replicas for this machine set."
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp",
        description = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct MachineSetSpec {
    /// The number of desired machines.
    #[serde(default, skip_serializing_if = "is_default")]
    pub replicas: i32,
    /// Label selector for the machines of this set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// The class of the machines.
    #[serde(default, skip_serializing_if = "is_default")]
    pub machine_class: ClassSpec,
    /// The template of the machines.
    #[serde(default, skip_serializing_if = "is_default")]
    pub template: MachineTemplateSpec,
    /// Minimum number of seconds for which a new machine should be ready to count as available.
    #[serde(default, skip_serializing_if = "is_default")]
    pub min_ready_seconds: i32,
    /// The maximum number of failed machines of this set that are preserved automatically.
    #[serde(default, skip_serializing_if = "is_default")]
    pub auto_preserve_failed_machine_max: i32,
}

string_enum! {
    /// The type of a MachineSet condition.
    pub enum MachineSetConditionType {
        /// One of the machines failed to be created or deleted.
        ReplicaFailure = "ReplicaFailure",
        /// The set exceeded its replica threshold at the safety controller.
        Frozen = "Frozen",
    }
}

/// The state of a MachineSet at a certain point.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MachineSetCondition {
    /// Type of machine set condition.
    #[serde(rename = "type")]
    pub type_: MachineSetConditionType,
    /// Status of the condition, one of True, False, Unknown.
    pub status: ConditionStatus,
    /// The last time the condition transitioned from one status to another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    /// The reason for the condition's last transition.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// A human readable message indicating details about the transition.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// The most recently observed status of a MachineSet.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MachineSetStatus {
    /// Replicas is the number of actual replicas.
    #[serde(default, skip_serializing_if = "is_default")]
    pub replicas: i32,
    /// The number of machines that have labels matching the labels of the machine template of the set.
    #[serde(default, skip_serializing_if = "is_default")]
    pub fully_labeled_replicas: i32,
    /// The number of ready replicas for this machine set.
    #[serde(default, skip_serializing_if = "is_default")]
    pub ready_replicas: i32,
    /// The number of available replicas (ready for at least minReadySeconds) for this machine set.
    #[serde(default, skip_serializing_if = "is_default")]
    pub available_replicas: i32,
    /// PreservedFailedReplicas is the number of preserved replicas in Failed phase for this machine set
    #[serde(default, skip_serializing_if = "is_default")]
    pub preserved_failed_replicas: i32,
    /// ObservedGeneration is the most recent generation observed by the controller.
    #[serde(default, skip_serializing_if = "is_default")]
    pub observed_generation: i64,
    /// Represents the latest available observations of a machine set's current state.
    /// (Gardener names this field `machineSetCondition`.)
    #[serde(
        rename = "machineSetCondition",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub conditions: Vec<MachineSetCondition>,
    /// LastOperation performed
    #[serde(default, skip_serializing_if = "is_default")]
    pub last_operation: LastOperation,
    /// FailedMachines has summary of machines on which lastOperation Failed
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_machines: Option<Vec<MachineSummary>>,
    /// AutoPreserveFailedMachineCount has a count of the number of failed machines in the machineset that are currently auto-preserved
    #[serde(default, skip_serializing_if = "is_default")]
    pub auto_preserve_failed_machine_count: i32,
}
