//! `Provider` (`mcm-wasm.io/v1alpha1`): the project's own kind, not Gardener's. One Provider is
//! one WebAssembly provider the controller serves in its namespace: where its artifact comes
//! from, and the operator's settings for it (egress, config, limits, credential brokering).
//!
//! Modelled on Flux's `OCIRepository` (digest pinning, `Ready`/`Progressing`/`Degraded`
//! conditions with reasons, `observedGeneration`) and Kubewarden's `registry://` policies by
//! digest. Deliberate deviations: the source is a one-of (`oci`, `https`, `configMap`, `file`)
//! rather than a separate source kind, since a provider has exactly one artifact; a tag alone is
//! refused (the serving bytes must be named by digest, so two controllers never serve different
//! builds under one name).
//!
//! A MachineClass's `provider` field names a Provider in the MachineClass's namespace, or one of
//! the Provider's `spec.aliases` (so a provider-aws MachineClass with `provider: AWS` works when
//! the Provider `aws` lists the alias `AWS`).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::schema::preserve_unknown_object;

/// The API group of the Provider kind.
pub const PROVIDER_GROUP: &str = "mcm-wasm.io";

/// A WebAssembly machine provider served by the mcm-wasm controller.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "mcm-wasm.io",
    version = "v1alpha1",
    kind = "Provider",
    namespaced,
    status = "ProviderStatus",
    shortname = "wprov",
    derive = "Default",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Provider","type":"string","jsonPath":".status.provider"}"#,
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".status.version"}"#,
    printcolumn = r#"{"name":"Digest","type":"string","jsonPath":".status.digest"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    doc = "Provider is a WebAssembly machine provider (a component of the mcm-wasm driver contract) that the mcm-wasm controller fetches, verifies, sandboxes and serves to the MachineClasses of its namespace."
)]
#[serde(rename_all = "camelCase")]
pub struct ProviderSpec {
    /// Where the provider's component comes from: exactly one of oci, https, configMap, file.
    pub source: ProviderSource,
    /// Further names MachineClasses may use for this provider (e.g. `AWS`, as provider-aws's
    /// MachineClasses say).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// Where the provider may connect; default: nowhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<ProviderEgress>,
    /// The provider's own configuration, handed to it as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub config: Option<serde_json::Value>,
    /// Limits of the provider's calls; unset fields keep the controller's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ProviderLimits>,
    /// The host keeps the Secret's cloud credentials and signs the provider's requests with
    /// them; the credentials never enter the sandbox.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub broker_credentials: bool,
}

/// Exactly one source of the provider's component.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "[has(self.oci), has(self.https), has(self.configMap), has(self.file)].filter(x, x).size() == 1",
    "message": "exactly one of oci, https, configMap, file must be set"
}]))]
pub struct ProviderSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oci: Option<OciSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https: Option<HttpsSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileSource>,
}

/// An OCI artifact in the CNCF Wasm layout (one `application/wasm` layer).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.reference.contains('@sha256:') || has(self.digest)",
    "message": "reference must name a digest (registry/repository@sha256:...), or digest must be set"
}]))]
pub struct OciSource {
    /// `registry/repository@sha256:…`; a tag (`registry/repository:tag`) only together with
    /// `digest`.
    pub reference: String,
    /// The manifest digest the artifact must have (`sha256:…`), when `reference` is a tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// A Secret of type `kubernetes.io/dockerconfigjson` in the Provider's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_secret_ref: Option<LocalObjectReference>,
    /// A Secret in the Provider's namespace whose `ca.crt` (PEM) is trusted for the registry's
    /// TLS certificate, besides the system roots (a registry with a private CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_secret_ref: Option<LocalObjectReference>,
    /// Plain HTTP to the registry; only for a registry on a loopback address (development).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
}

/// A component served over HTTPS, pinned by its SHA-256.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpsSource {
    pub url: String,
    /// Hex SHA-256 of the component's bytes (with or without a `sha256:` prefix).
    pub sha256: String,
}

/// A component in a ConfigMap's `binaryData` (small providers, air-gapped clusters).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapSource {
    pub name: String,
    pub key: String,
}

/// A component on the controller's file system (development).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FileSource {
    pub path: String,
}

/// A reference to an object in the Provider's namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalObjectReference {
    pub name: String,
}

/// The provider's egress allowlist.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderEgress {
    /// `host`, `host:port`, `*.domain` or `*.domain:port` (IPv6 in brackets).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
}

/// Limits of the provider's calls.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderLimits {
    /// Linear memory per call (a Kubernetes quantity, e.g. `64Mi`); at most the controller's
    /// sandbox-wide limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// Per-operation deadlines by camelCase operation name, e.g. `{"createMachine": "2m"}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub deadlines: BTreeMap<String, String>,
    /// At most this many calls of the provider run at once; further calls wait (within their
    /// deadline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_calls: Option<u32>,
    /// Client-side rate limits of the provider's cloud requests, over the defaults the
    /// provider declares (e.g. EC2's published request buckets). Buckets are shared by every
    /// provider using the same credential and endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<ProviderRateLimits>,
}

/// Token buckets per rate class (the class a provider names per request, for EC2 the action,
/// e.g. `RunInstances`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderRateLimits {
    /// Limit per rate class.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub classes: BTreeMap<String, RateLimit>,
    /// The limit of classes not listed (unset: not limited until the cloud throttles them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<RateLimit>,
    /// Error codes that mark a throttling answer besides HTTP 429 (default: the AWS SDKs'
    /// throttling codes, e.g. `RequestLimitExceeded`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub throttle_codes: Vec<String>,
}

/// A token bucket: `rate` requests per second, at most `burst` at once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Requests per second (may be fractional, e.g. 0.5).
    pub rate: f64,
    /// Requests that may go at once after a quiet spell.
    pub burst: u32,
}

/// What the controller serves for a Provider, and how it got there.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderStatus {
    /// `Ready`, `Progressing` and `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation of the spec the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The digest of the serving artifact (OCI manifest digest, else the component's sha256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The sha256 of the serving component's bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component_digest: Option<String>,
    /// The provider's name, as the artifact declares it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The provider's version, as the artifact declares it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The driver contract version the component was built against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract: Option<String>,
    /// The last failure's exact cause, while the Provider is Degraded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl ProviderStatus {
    /// The condition of `type_`, if set.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}
