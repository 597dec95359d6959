//! Provider artifacts in an OCI registry, in the layout of the CNCF TAG Runtime's Wasm OCI
//! artifact guidance (what `oci-wasm` and `wkg` write): one `application/wasm` layer holding
//! the component, a config of media type `application/vnd.wasm.config.v0+json` naming the
//! architecture (`wasm`), OS (`wasip2`), layer digests and the component's world, and the
//! provider's own metadata as manifest annotations (`mcm-wasm.io/provider`, `…/version`,
//! `…/contract`, `…/aliases`, plus the standard `org.opencontainers.image.*` keys).
//!
//! Transport is `oci-client` (distribution API, token and basic auth, blob digest checks).
//! Deliberate deviations from `oci-wasm`: its 0.6 release pins `oci-client` 0.17, a second
//! HTTP stack beside ours, so the config is written here (a dozen fields); pulls refuse
//! anything but exactly one `application/wasm` layer, and the manifest's digest must equal
//! the pin the caller gives (a registry that answers a digest reference with other content
//! is refused, not trusted).

use std::collections::BTreeMap;

use mcm_sandbox::artifact::ArtifactInfo;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::{Deserialize, Serialize};

/// The media type of the layer that holds the component.
pub const WASM_LAYER: &str = "application/wasm";
/// The media type of the artifact's config.
pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
/// The largest component a pull accepts (the registry's descriptor says the size first).
pub const MAX_COMPONENT_BYTES: i64 = 256 << 20;

/// Manifest annotation keys carrying the provider's metadata.
pub mod annotation {
    pub const PROVIDER: &str = "mcm-wasm.io/provider";
    pub const VERSION: &str = "mcm-wasm.io/version";
    pub const CONTRACT: &str = "mcm-wasm.io/contract";
    pub const ALIASES: &str = "mcm-wasm.io/aliases";
    pub const TITLE: &str = "org.opencontainers.image.title";
    pub const OCI_VERSION: &str = "org.opencontainers.image.version";
    pub const CREATED: &str = "org.opencontainers.image.created";
}

/// How to reach a registry.
#[derive(Clone, Debug, Default)]
pub struct Access {
    pub auth: Auth,
    /// Plain HTTP (a development registry on loopback).
    pub insecure: bool,
    /// Extra PEM root certificates to trust (a registry with a private CA).
    pub ca_pem: Option<Vec<u8>>,
}

/// Registry credentials.
#[derive(Clone, Default, PartialEq)]
pub enum Auth {
    #[default]
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Anonymous => f.write_str("Anonymous"),
            Auth::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
        }
    }
}

/// Why a push or pull failed, naming the reference.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("{reference:?}: not an OCI reference: {message}")]
    Reference { reference: String, message: String },
    #[error("{reference}: {message}")]
    Registry { reference: String, message: String },
    #[error("{reference}: the registry answered with manifest {actual}, not the pinned {expected}")]
    ManifestDigest {
        reference: String,
        expected: String,
        actual: String,
    },
    #[error("{reference}: not a Wasm component artifact: {reason}")]
    NotWasm { reference: String, reason: String },
    #[error("pull secret: {0}")]
    PullSecret(String),
}

/// A pulled component with what its manifest says about it.
#[derive(Clone, Debug)]
pub struct Pulled {
    pub bytes: Vec<u8>,
    /// `sha256:<hex>` of the manifest (what a reference pins).
    pub manifest_digest: String,
    pub annotations: BTreeMap<String, String>,
}

/// The artifact's config (`application/vnd.wasm.config.v0+json`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WasmConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    pub architecture: String,
    pub os: String,
    pub layer_digests: Vec<String>,
    pub component: ComponentInfo,
}

/// The component's world as the config records it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ComponentInfo {
    pub exports: Vec<String>,
    pub imports: Vec<String>,
    #[serde(default)]
    pub target: Option<String>,
}

fn parse(reference: &str) -> Result<Reference, OciError> {
    reference
        .parse::<Reference>()
        .map_err(|e| OciError::Reference {
            reference: reference.to_string(),
            message: e.to_string(),
        })
}

/// The registry host a reference names (`docker.io` when it names none, as the OCI
/// reference grammar says).
pub fn registry_host(reference: &str) -> Result<String, OciError> {
    Ok(parse(reference)?.registry().to_string())
}

/// The reference without tag or digest: `registry/repository`.
pub fn repository(reference: &str) -> Result<String, OciError> {
    let r = parse(reference)?;
    Ok(format!("{}/{}", r.registry(), r.repository()))
}

fn client(access: &Access) -> Client {
    let mut config = ClientConfig {
        protocol: if access.insecure {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        // Providers are single components; an image index has no meaning here.
        platform_resolver: None,
        ..ClientConfig::default()
    };
    if let Some(pem) = &access.ca_pem {
        config.extra_root_certificates.push(Certificate {
            encoding: CertificateEncoding::Pem,
            data: pem.clone(),
        });
    }
    Client::new(config)
}

fn registry_auth(auth: &Auth) -> RegistryAuth {
    match auth {
        Auth::Anonymous => RegistryAuth::Anonymous,
        Auth::Basic { username, password } => {
            RegistryAuth::Basic(username.clone(), password.clone())
        }
    }
}

fn registry_error(
    reference: &str,
) -> impl Fn(oci_client::errors::OciDistributionError) -> OciError {
    move |e| OciError::Registry {
        reference: reference.to_string(),
        message: describe(&e),
    }
}

/// One line for a distribution error, with the causes a user acts on spelled out.
fn describe(e: &oci_client::errors::OciDistributionError) -> String {
    use oci_client::errors::OciDistributionError as E;
    match e {
        E::AuthenticationFailure(m) => format!("unauthorized: {m}"),
        E::UnauthorizedError { url } => format!("unauthorized (GET {url})"),
        E::ImageManifestNotFoundError(m) => format!("manifest not found: {m}"),
        E::RegistryError { envelope, url } => {
            use oci_client::errors::OciErrorCode as C;
            let errors: Vec<String> = envelope
                .errors
                .iter()
                .map(|e| {
                    let what = match &e.code {
                        C::ManifestUnknown | C::ManifestBlobUnknown => "manifest not found",
                        C::BlobUnknown => "blob not found",
                        C::NameUnknown | C::NotFound => "repository not found",
                        C::Unauthorized => "unauthorized",
                        C::Denied => "denied",
                        C::Toomanyrequests => "too many requests (rate limited)",
                        _ => "registry error",
                    };
                    if e.message.is_empty() {
                        what.to_string()
                    } else {
                        format!("{what} ({})", e.message)
                    }
                })
                .collect();
            format!("{} ({url})", errors.join("; "))
        }
        E::RequestError(r) => mcm_driver::text::error_chain(r),
        other => other.to_string(),
    }
}

/// The manifest annotations and config for an artifact.
pub fn layout(info: &ArtifactInfo, created: String) -> (BTreeMap<String, String>, WasmConfig) {
    let m = &info.metadata;
    let mut annotations = BTreeMap::from([
        (annotation::PROVIDER.to_string(), m.name.clone()),
        (annotation::VERSION.to_string(), m.version.clone()),
        (annotation::CONTRACT.to_string(), info.contract.to_string()),
        (annotation::TITLE.to_string(), m.name.clone()),
        (annotation::OCI_VERSION.to_string(), m.version.clone()),
        (annotation::CREATED.to_string(), created.clone()),
    ]);
    if !m.aliases.is_empty() {
        annotations.insert(annotation::ALIASES.to_string(), m.aliases.join(","));
    }
    let config = WasmConfig {
        created: Some(created),
        architecture: "wasm".into(),
        os: "wasip2".into(),
        layer_digests: vec![info.digest.clone()],
        component: ComponentInfo {
            exports: info.exports.clone(),
            imports: info.imports.clone(),
            target: None,
        },
    };
    (annotations, config)
}

/// Push a component; returns the manifest's digest as the registry reports it.
pub async fn push(
    reference: &str,
    bytes: Vec<u8>,
    info: &ArtifactInfo,
    access: &Access,
) -> Result<String, OciError> {
    let image = parse(reference)?;
    let created = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let (annotations, config) = layout(info, created);
    let config = oci_client::client::Config::new(
        serde_json::to_vec(&config).expect("config serializes"),
        WASM_CONFIG.to_string(),
        None,
    );
    let layers = [oci_client::client::ImageLayer::new(
        bytes,
        WASM_LAYER.to_string(),
        None,
    )];
    let manifest = OciImageManifest::build(&layers, &config, Some(annotations));
    let client = client(access);
    let auth = registry_auth(&access.auth);
    client
        .push(&image, &layers, config, &auth, Some(manifest))
        .await
        .map_err(registry_error(reference))?;
    client
        .fetch_manifest_digest(&image, &auth)
        .await
        .map_err(registry_error(reference))
}

/// Pull the component `reference` names, pinned to the manifest digest `pin` (`sha256:…`):
/// the pull goes by digest even when the reference carries a tag.
pub async fn pull(reference: &str, pin: &str, access: &Access) -> Result<Pulled, OciError> {
    let named = parse(reference)?;
    let image = Reference::with_digest(
        named.registry().to_string(),
        named.repository().to_string(),
        pin.to_string(),
    );
    let client = client(access);
    let auth = registry_auth(&access.auth);
    let (manifest, manifest_digest) = client
        .pull_image_manifest(&image, &auth)
        .await
        .map_err(registry_error(reference))?;
    if manifest_digest != pin {
        return Err(OciError::ManifestDigest {
            reference: reference.to_string(),
            expected: pin.to_string(),
            actual: manifest_digest,
        });
    }
    let layer = wasm_layer(reference, &manifest)?;
    let mut bytes = Vec::with_capacity(layer.size.max(0) as usize);
    client
        .pull_blob(&image, layer, &mut bytes)
        .await
        .map_err(registry_error(reference))?;
    Ok(Pulled {
        bytes,
        manifest_digest,
        annotations: manifest.annotations.clone().unwrap_or_default(),
    })
}

/// Resolve a reference (tag or digest) to its manifest digest, e.g. to pin a tag once.
pub async fn resolve(reference: &str, access: &Access) -> Result<String, OciError> {
    let image = parse(reference)?;
    client(access)
        .fetch_manifest_digest(&image, &registry_auth(&access.auth))
        .await
        .map_err(registry_error(reference))
}

/// The one layer a provider artifact has, refusing other shapes with the reason.
fn wasm_layer<'m>(
    reference: &str,
    manifest: &'m OciImageManifest,
) -> Result<&'m OciDescriptor, OciError> {
    let not_wasm = |reason: String| OciError::NotWasm {
        reference: reference.to_string(),
        reason,
    };
    if manifest.config.media_type != WASM_CONFIG {
        return Err(not_wasm(format!(
            "config media type is {:?}, not {WASM_CONFIG:?} (push it with `mcm-wasm push`)",
            manifest.config.media_type
        )));
    }
    let [layer] = manifest.layers.as_slice() else {
        return Err(not_wasm(format!(
            "{} layers, a provider artifact has exactly one",
            manifest.layers.len()
        )));
    };
    if layer.media_type != WASM_LAYER {
        return Err(not_wasm(format!(
            "layer media type is {:?}, not {WASM_LAYER:?}",
            layer.media_type
        )));
    }
    if layer.size > MAX_COMPONENT_BYTES {
        return Err(not_wasm(format!(
            "the layer is {} bytes, more than the {} a provider may have",
            layer.size, MAX_COMPONENT_BYTES
        )));
    }
    Ok(layer)
}

/// The credentials for `registry` in a `kubernetes.io/dockerconfigjson` Secret's
/// `.dockerconfigjson` (as kubelet reads image pull secrets: `auths` keyed by registry host,
/// with `username`/`password` or a base64 `auth` of `user:password`). A registry the secret
/// does not name is an error naming the ones it does, not a silent anonymous pull.
pub fn auth_from_docker_config(json: &[u8], registry: &str) -> Result<Auth, OciError> {
    #[derive(Deserialize)]
    struct DockerConfig {
        #[serde(default)]
        auths: BTreeMap<String, Entry>,
    }
    #[derive(Deserialize)]
    struct Entry {
        username: Option<String>,
        password: Option<String>,
        auth: Option<String>,
    }
    let config: DockerConfig = serde_json::from_slice(json)
        .map_err(|e| OciError::PullSecret(format!(".dockerconfigjson is not JSON: {e}")))?;
    let host = |key: &str| {
        key.trim_start_matches("https://")
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string()
    };
    // Docker Hub's credentials are keyed by its index host.
    let hub = |h: &str| {
        if h == "index.docker.io" {
            "docker.io".to_string()
        } else {
            h.to_string()
        }
    };
    let Some(entry) = config
        .auths
        .iter()
        .find_map(|(k, v)| (hub(&host(k)) == hub(registry)).then_some(v))
    else {
        let named = config.auths.keys().cloned().collect::<Vec<_>>().join(", ");
        return Err(OciError::PullSecret(format!(
            "no credentials for registry {registry} (the secret names: {})",
            if named.is_empty() { "none" } else { &named }
        )));
    };
    match (&entry.username, &entry.password, &entry.auth) {
        (Some(username), Some(password), _) => Ok(Auth::Basic {
            username: username.clone(),
            password: password.clone(),
        }),
        (_, _, Some(auth)) => {
            use base64::Engine as _;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|e| {
                    OciError::PullSecret(format!("auths.{registry}.auth is not base64: {e}"))
                })?;
            let text = String::from_utf8(decoded)
                .map_err(|_| OciError::PullSecret(format!("auths.{registry}.auth is not UTF-8")))?;
            let (username, password) = text.split_once(':').ok_or_else(|| {
                OciError::PullSecret(format!("auths.{registry}.auth is not user:password"))
            })?;
            Ok(Auth::Basic {
                username: username.into(),
                password: password.into(),
            })
        }
        _ => Err(OciError::PullSecret(format!(
            "auths.{registry} has neither username/password nor auth"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_credentials_by_registry_host() {
        let json = br#"{"auths":{
            "https://127.0.0.1:5000/v1/":{"auth":"YWxpY2U6c2VjcmV0"},
            "other.example":{"username":"bob","password":"pw"}}}"#;
        assert_eq!(
            auth_from_docker_config(json, "127.0.0.1:5000").unwrap(),
            Auth::Basic {
                username: "alice".into(),
                password: "secret".into()
            }
        );
        assert_eq!(
            auth_from_docker_config(json, "other.example").unwrap(),
            Auth::Basic {
                username: "bob".into(),
                password: "pw".into()
            }
        );
        let hub = br#"{"auths":{"https://index.docker.io/v1/":{"username":"u","password":"p"}}}"#;
        assert!(matches!(
            auth_from_docker_config(hub, &registry_host("mcm/aws:v1").unwrap()),
            Ok(Auth::Basic { .. })
        ));
        let missing = auth_from_docker_config(json, "ghcr.io")
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("no credentials for registry ghcr.io")
                && missing.contains("other.example"),
            "{missing}"
        );
        let bad = auth_from_docker_config(br#"{"auths":{"r":{"auth":"!!"}}}"#, "r")
            .unwrap_err()
            .to_string();
        assert!(bad.contains("auths.r.auth is not base64"), "{bad}");
    }

    #[test]
    fn a_manifest_that_is_not_one_wasm_layer_is_refused_with_the_reason() {
        let wasm = |media: &str, size: i64| OciDescriptor {
            media_type: media.into(),
            size,
            digest: "sha256:00".into(),
            ..Default::default()
        };
        let manifest = |config: &str, layers: Vec<OciDescriptor>| OciImageManifest {
            config: OciDescriptor {
                media_type: config.into(),
                ..Default::default()
            },
            layers,
            ..Default::default()
        };
        let ok = manifest(WASM_CONFIG, vec![wasm(WASM_LAYER, 10)]);
        assert!(wasm_layer("r", &ok).is_ok());
        for (m, want) in [
            (
                manifest(
                    "application/vnd.oci.image.config.v1+json",
                    vec![wasm(WASM_LAYER, 1)],
                ),
                "config media type",
            ),
            (manifest(WASM_CONFIG, vec![]), "0 layers"),
            (
                manifest(WASM_CONFIG, vec![wasm("application/x-tar", 1)]),
                "layer media type",
            ),
            (
                manifest(WASM_CONFIG, vec![wasm(WASM_LAYER, MAX_COMPONENT_BYTES + 1)]),
                "more than",
            ),
        ] {
            let err = wasm_layer("r", &m).unwrap_err().to_string();
            assert!(
                err.contains("not a Wasm component artifact") && err.contains(want),
                "{err}"
            );
        }
    }
}
