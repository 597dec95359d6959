//! `MachineClass`: provider configuration that Machines, MachineSets and MachineDeployments
//! refer to (Gardener `machineclass_types.go`). Its fields sit at the top level of the object:
//! it has no `spec` and no `status`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::SecretReference;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::schema::{preserve_unknown_object, with_preserve_unknown};

/// The fields of a MachineClass (flattened into the object: `MachineClass.spec` on the Rust side,
/// top-level fields on the wire).
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "machine.sapcloud.io",
    version = "v1alpha1",
    kind = "MachineClass",
    namespaced,
    no_spec,
    shortname = "mcc",
    derive = "Default",
    derive = "PartialEq",
    doc = "MachineClass can be used to templatize and re-use provider configuration\nacross multiple Machines / MachineSets / MachineDeployments."
)]
#[serde(rename_all = "camelCase")]
pub struct MachineClassFields {
    /// NodeTemplate contains subfields to track all node resources and other node info required to scale nodegroup from zero
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "with_preserve_unknown::<Option<NodeTemplate>>")]
    pub node_template: Option<NodeTemplate>,
    /// CredentialsSecretRef can optionally store the credentials (in this case the SecretRef does not need to store them).
    /// This might be useful if multiple machine classes with the same credentials but different user-datas are used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretReference>,
    /// Provider-specific configuration to use during node creation.
    #[schemars(schema_with = "preserve_unknown_object")]
    pub provider_spec: serde_json::Value,
    /// Provider is the combination of name and location of cloud-specific drivers.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub provider: String,
    /// SecretRef stores the necessary secrets such as credentials or userdata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretReference>,
}

/// Node resources and other node info, to scale a node group from zero.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeTemplate {
    /// Capacity contains subfields to track all node resources required to scale nodegroup from zero
    pub capacity: BTreeMap<String, Quantity>,
    /// VirtualCapacity represents the expected Node 'virtual' capacity ie comprising virtual extended resources.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub virtual_capacity: BTreeMap<String, Quantity>,
    /// Instance type of the node belonging to nodeGroup
    pub instance_type: String,
    /// Region of the expected node belonging to nodeGroup
    pub region: String,
    /// Zone of the expected node belonging to nodeGroup
    pub zone: String,
    /// CPU Architecture of the node belonging to nodeGroup
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
}
