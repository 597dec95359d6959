//! `MachineDeployment`: declarative updates for Machines and MachineSets
//! (Gardener `machinedeployment_types.go`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::schema::{is_default, string_enum};
use crate::shared::{ConditionStatus, MachineSummary, MachineTemplateSpec};

/// The label that MachineDeployments add to their MachineSets and Machines to tell template
/// revisions apart.
pub const DEFAULT_MACHINE_DEPLOYMENT_UNIQUE_LABEL_KEY: &str = "machine-template-hash";

/// Specification of the desired behavior of a MachineDeployment.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "machine.sapcloud.io",
    version = "v1alpha1",
    kind = "MachineDeployment",
    namespaced,
    status = "MachineDeploymentStatus",
    shortname = "mcd",
    derive = "Default",
    derive = "PartialEq",
    doc = "MachineDeployment enables declarative updates for machines and MachineSets.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Total number of ready machines targeted by this machine deployment."
    ),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".spec.replicas",
        description = "Number of desired machines."
    ),
    printcolumn(
        name = "Up-to-date",
        type_ = "integer",
        json_path = ".status.updatedReplicas",
        description = "Total number of non-terminated machines targeted by this machine deployment that have the desired template spec."
    ),
    printcolumn(
        name = "Available",
        type_ = "integer",
        json_path = ".status.availableReplicas",
        description = "Total number of available machines (ready for at least minReadySeconds) targeted by this machine deployment."
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp",
        description = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct MachineDeploymentSpec {
    /// Number of desired machines. Defaults to 0.
    #[serde(default, skip_serializing_if = "is_default")]
    pub replicas: i32,
    /// Label selector for machines. Existing MachineSets whose machines are
    /// selected by this will be the ones affected by this MachineDeployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// Template describes the machines that will be created.
    pub template: MachineTemplateSpec,
    /// The MachineDeployment strategy to use to replace existing machines with new ones.
    #[serde(default, skip_serializing_if = "is_default")]
    pub strategy: MachineDeploymentStrategy,
    /// Minimum number of seconds for which a newly created machine should be ready
    /// without any of its container crashing, for it to be considered available.
    #[serde(default, skip_serializing_if = "is_default")]
    pub min_ready_seconds: i32,
    /// The number of old MachineSets to retain to allow rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_history_limit: Option<i32>,
    /// Indicates that the MachineDeployment is paused and will not be processed by the
    /// MachineDeployment controller.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// DEPRECATED. The config this MachineDeployment is rolling back to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_to: Option<RollbackConfig>,
    /// The maximum time in seconds for a MachineDeployment to make progress before it
    /// is considered to be failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_deadline_seconds: Option<i32>,
    /// The maximum number of failed machines in the machine deployment that can be auto-preserved.
    #[serde(default, skip_serializing_if = "is_default")]
    pub auto_preserve_failed_machine_max: i32,
}

/// How to replace existing machines with new ones.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MachineDeploymentStrategy {
    /// Type of MachineDeployment. Can be "Recreate", "RollingUpdate" or "InPlaceUpdate". Default is RollingUpdate.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<MachineDeploymentStrategyType>,
    /// Rolling update config params. Present only if the type is RollingUpdate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolling_update: Option<UpdateConfiguration>,
    /// InPlaceUpdate update config params. Present only if the type is InPlaceUpdate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_place_update: Option<InPlaceUpdateMachineDeployment>,
}

string_enum! {
    /// The strategy of a MachineDeployment.
    pub enum MachineDeploymentStrategyType {
        /// Kill all existing machines before creating new ones.
        Recreate = "Recreate",
        /// Replace old machine sets gradually by the new one.
        RollingUpdate = "RollingUpdate",
        /// Update VMs in place; machines move from the old machine set to the new one.
        InPlaceUpdate = "InPlaceUpdate",
    }
}

/// The update configuration of a deployment strategy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateConfiguration {
    /// The maximum number of machines that can be unavailable during the update.
    /// Value can be an absolute number (ex: 5) or a percentage of desired machines (ex: 10%).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,
    /// The maximum number of machines that can be scheduled above the desired number of machines.
    /// Value can be an absolute number (ex: 5) or a percentage of desired machines (ex: 10%).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_surge: Option<IntOrString>,
}

/// The configuration of an in-place update.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InPlaceUpdateMachineDeployment {
    /// maxUnavailable and maxSurge.
    #[serde(flatten)]
    pub update_configuration: UpdateConfiguration,
    /// OrchestrationType specifies the orchestration type for the inplace update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orchestration_type: Option<OrchestrationType>,
}

string_enum! {
    /// How machines are selected for an in-place update.
    pub enum OrchestrationType {
        /// Machines are selected automatically based on the update configuration.
        Auto = "Auto",
        /// The user selects the machines to update.
        Manual = "Manual",
    }
}

/// The config to roll a MachineDeployment back to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RollbackConfig {
    /// The revision to rollback to. If set to 0, rollback to the last revision.
    #[serde(default, skip_serializing_if = "is_default")]
    pub revision: i64,
}

/// The most recently observed status of a MachineDeployment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MachineDeploymentStatus {
    /// The generation observed by the MachineDeployment controller.
    #[serde(default, skip_serializing_if = "is_default")]
    pub observed_generation: i64,
    /// Total number of non-terminated machines targeted by this MachineDeployment (their labels match the selector).
    #[serde(default, skip_serializing_if = "is_default")]
    pub replicas: i32,
    /// Total number of non-terminated machines targeted by this MachineDeployment that have the desired template spec.
    #[serde(default, skip_serializing_if = "is_default")]
    pub updated_replicas: i32,
    /// Total number of ready machines targeted by this MachineDeployment.
    #[serde(default, skip_serializing_if = "is_default")]
    pub ready_replicas: i32,
    /// Total number of available machines (ready for at least minReadySeconds) targeted by this MachineDeployment.
    #[serde(default, skip_serializing_if = "is_default")]
    pub available_replicas: i32,
    /// PreservedFailedReplicas is the number of preserved machines in Failed phase targeted by this MachineDeployment
    #[serde(default, skip_serializing_if = "is_default")]
    pub preserved_failed_replicas: i32,
    /// Total number of unavailable machines targeted by this MachineDeployment.
    #[serde(default, skip_serializing_if = "is_default")]
    pub unavailable_replicas: i32,
    /// Represents the latest available observations of a MachineDeployment's current state.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<MachineDeploymentCondition>,
    /// Count of hash collisions for the MachineDeployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collision_count: Option<i32>,
    /// FailedMachines has summary of machines on which lastOperation Failed
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_machines: Vec<MachineSummary>,
}

string_enum! {
    /// The type of a MachineDeployment condition.
    pub enum MachineDeploymentConditionType {
        /// At least the minimum available replicas are up for at least minReadySeconds.
        Available = "Available",
        /// A new machine set is created or adopted, or machines scale up or down.
        Progressing = "Progressing",
        /// One of the machines failed to be created or deleted.
        ReplicaFailure = "ReplicaFailure",
        /// One of the machine sets is frozen.
        Frozen = "Frozen",
    }
}

/// The state of a MachineDeployment at a certain point.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MachineDeploymentCondition {
    /// Type of MachineDeployment condition.
    #[serde(rename = "type")]
    pub type_: MachineDeploymentConditionType,
    /// Status of the condition, one of True, False, Unknown.
    pub status: ConditionStatus,
    /// The last time this condition was updated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update_time: Option<Time>,
    /// Last time the condition transitioned from one status to another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    /// The reason for the condition's last transition.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// A human readable message indicating details about the transition.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}
