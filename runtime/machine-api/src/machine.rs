//! `Machine`: one physical or virtual machine (Gardener `machine_types.go`).

use k8s_openapi::api::core::v1::{NodeAddress, NodeCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::schema::is_default;
use crate::shared::{
    ClassSpec, LastOperation, MachineConfiguration, MachinePhase, NodeTemplateSpec,
};

/// The label on a Machine that names its node.
pub const NODE_LABEL_KEY: &str = "node";

/// Specification of a Machine.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "machine.sapcloud.io",
    version = "v1alpha1",
    kind = "Machine",
    namespaced,
    status = "MachineStatus",
    shortname = "mc",
    derive = "Default",
    derive = "PartialEq",
    doc = "Machine is the representation of a physical or virtual machine.",
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.currentStatus.phase",
        description = "Current status of the machine."
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp",
        description = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"
    ),
    printcolumn(
        name = "Node",
        type_ = "string",
        json_path = ".metadata.labels.node",
        description = "Node backing the machine object"
    ),
    printcolumn(
        name = "ProviderID",
        type_ = "string",
        json_path = ".spec.providerID",
        description = "ProviderID of the infra instance backing the machine object",
        priority = 1
    )
)]
#[serde(rename_all = "camelCase")]
pub struct MachineSpec {
    /// Class contains the machineclass attributes of a machine
    #[serde(default, skip_serializing_if = "is_default")]
    pub class: ClassSpec,
    /// ProviderID represents the provider's unique ID given to a machine
    #[serde(
        rename = "providerID",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub provider_id: String,
    /// NodeTemplateSpec describes the data a node should have when created from a template
    #[serde(rename = "nodeTemplate", default, skip_serializing_if = "is_default")]
    pub node_template: NodeTemplateSpec,
    /// Configuration for the machine-controller (inlined: `drainTimeout`, `healthTimeout`, ...).
    #[serde(flatten)]
    pub configuration: MachineConfiguration,
}

/// The most recently observed status of a Machine.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MachineStatus {
    /// Addresses of this machines. This field is only present if the MCM provider runs without a target cluster and may
    /// be used by clients to determine how to connect to the machine, instead of the `Node.status.addresses` field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<NodeAddress>,
    /// Conditions of this machine, same as node
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<NodeCondition>,
    /// Last operation refers to the status of the last operation performed
    #[serde(default, skip_serializing_if = "is_default")]
    pub last_operation: LastOperation,
    /// Current status of the machine object
    #[serde(default, skip_serializing_if = "is_default")]
    pub current_status: CurrentStatus,
    /// LastKnownState can store details of the last known state of the VM by the plugins.
    /// It can be used by future operation calls to determine current infrastucture state
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_known_state: String,
}

/// The current status of a Machine.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CurrentStatus {
    /// The phase of the machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<MachinePhase>,
    /// Whether a timeout (creation or health) is running for the machine.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub timeout_active: bool,
    /// Last update time of current status
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update_time: Option<Time>,
    /// PreserveExpiryTime is the time at which MCM will stop preserving the machine
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preserve_expiry_time: Option<Time>,
}

impl Machine {
    /// The phase of the machine, if it has one.
    pub fn phase(&self) -> Option<&MachinePhase> {
        self.status.as_ref()?.current_status.phase.as_ref()
    }

    /// The name of the node backing the machine (the `node` label).
    pub fn node_name(&self) -> Option<&str> {
        self.metadata
            .labels
            .as_ref()?
            .get(NODE_LABEL_KEY)
            .map(String::as_str)
    }
}
