//! The Gardener machine-controller-manager API, `machine.sapcloud.io/v1alpha1`, in Rust.
//!
//! Field-for-field compatible with Gardener machine-controller-manager v0.62: the four kinds
//! [`Machine`], [`MachineClass`], [`MachineSet`] and [`MachineDeployment`] serialize exactly as
//! Gardener's Go types do (same JSON names, `omitempty` fields left out), and [`crds()`] gives the
//! CustomResourceDefinitions (schemas, printer columns, short names, status and scale
//! subresources) that `kubernetes/crds/` holds.
//!
//! It also holds mcm-wasm's own kind, [`Provider`] (`mcm-wasm.io/v1alpha1`, module `provider`),
//! so that one generator writes every CRD the controller needs.

// kube's `printcolumn(...)` repeats keys such as `type_` per column, which clippy mistakes for
// duplicated attributes.
#![allow(clippy::duplicated_attributes)]

mod duration;
mod machine;
mod machine_class;
mod machine_deployment;
mod machine_set;
mod provider;
mod schema;
mod shared;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};
use kube::CustomResourceExt;

pub use duration::{DurationError, format_duration, parse_duration};
pub use machine::{CurrentStatus, Machine, MachineSpec, MachineStatus, NODE_LABEL_KEY};
pub use machine_class::{MachineClass, MachineClassFields, NodeTemplate};
pub use machine_deployment::{
    DEFAULT_MACHINE_DEPLOYMENT_UNIQUE_LABEL_KEY, InPlaceUpdateMachineDeployment, MachineDeployment,
    MachineDeploymentCondition, MachineDeploymentConditionType, MachineDeploymentSpec,
    MachineDeploymentStatus, MachineDeploymentStrategy, MachineDeploymentStrategyType,
    OrchestrationType, RollbackConfig, UpdateConfiguration,
};
pub use machine_set::{
    MachineSet, MachineSetCondition, MachineSetConditionType, MachineSetSpec, MachineSetStatus,
};
pub use provider::{
    ConfigMapSource, FileSource, HttpsSource, LocalObjectReference, OciSource, PROVIDER_GROUP,
    Provider, ProviderEgress, ProviderLimits, ProviderRateLimits, ProviderSource, ProviderSpec,
    ProviderStatus, RateLimit,
};
pub use shared::{
    ClassSpec, ConditionStatus, LastOperation, MachineConfiguration, MachineOperationType,
    MachinePhase, MachineState, MachineSummary, MachineTemplateSpec, NodeTemplateSpec,
};

/// The API group of all kinds here.
pub const GROUP: &str = "machine.sapcloud.io";
/// The API version of all kinds here.
pub const VERSION: &str = "v1alpha1";

/// Finalizer that the machine controller puts on Machines and MachineClasses.
pub const MCM_FINALIZER: &str = "machine.sapcloud.io/machine-controller-manager";
/// Finalizer that the machine controller puts on the Secrets of MachineClasses.
pub const MC_SECRET_FINALIZER: &str = "machine.sapcloud.io/machine-controller";
/// Finalizer that the machine controller puts on Nodes.
pub const MC_NODE_FINALIZER: &str = "node.machine.sapcloud.io/machine-controller";

/// The CustomResourceDefinitions: the four machine kinds in the order of their file names
/// (`machine.sapcloud.io_<plural>.yaml`), then `Provider` (`mcm-wasm.io_providers.yaml`).
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        MachineClass::crd(),
        MachineDeployment::crd(),
        Machine::crd(),
        MachineSet::crd(),
        Provider::crd(),
    ]
    .into_iter()
    .map(finish_crd)
    .collect()
}

/// Completes a derived CRD the way controller-gen writes Gardener's: the root schema describes
/// `apiVersion`, `kind` and `metadata` too, carries no `title`, and the names include `listKind`.
///
/// One deliberate difference stays: our root schema requires `spec` (Gardener's does not), because
/// an object without a spec cannot be read into the Rust types and means nothing to a controller.
fn finish_crd(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    let names = &mut crd.spec.names;
    names
        .list_kind
        .get_or_insert_with(|| format!("{}List", names.kind));
    for version in &mut crd.spec.versions {
        let Some(root) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        else {
            continue;
        };
        root.title = None;
        let properties = root.properties.get_or_insert_with(Default::default);
        properties.entry("apiVersion".into()).or_insert_with(|| JSONSchemaProps {
            description: Some(
                "APIVersion defines the versioned schema of this representation of an object.\n\
                 Servers should convert recognized schemas to the latest internal value, and\n\
                 may reject unrecognized values.\n\
                 More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources"
                    .into(),
            ),
            type_: Some("string".into()),
            ..Default::default()
        });
        properties.entry("kind".into()).or_insert_with(|| JSONSchemaProps {
            description: Some(
                "Kind is a string value representing the REST resource this object represents.\n\
                 Servers may infer this from the endpoint the client submits requests to.\n\
                 Cannot be updated.\n\
                 In CamelCase.\n\
                 More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds"
                    .into(),
            ),
            type_: Some("string".into()),
            ..Default::default()
        });
        properties
            .entry("metadata".into())
            .or_insert_with(|| JSONSchemaProps {
                type_: Some("object".into()),
                ..Default::default()
            });
    }
    crd
}

/// The file name under `kubernetes/crds/` of a CRD, as Gardener names them.
pub fn crd_file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}_{}.yaml", crd.spec.group, crd.spec.names.plural)
}

/// A CRD as the YAML document checked in under `kubernetes/crds/`.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> String {
    let yaml = serde_yaml_ng::to_string(crd).expect("a CRD serializes to YAML");
    format!(
        "# Generated from the Rust types in runtime/machine-api by `just crds`; do not edit.\n---\n{yaml}"
    )
}
