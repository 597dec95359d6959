//! Getting a Provider's artifact bytes, separate from loading them (as Kubewarden's
//! policy-server separates downloading from evaluating), and checking them against the pin.
//!
//! Every source ends in the same check: the bytes (or, for OCI, the manifest) have the
//! digest the spec pinned. `file` and `configMap` sources pin nothing; the reconciler compares
//! their digest with the serving one instead.

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;

use crate::oci::{self, Access, Auth, MAX_COMPONENT_BYTES, OciError};

/// The bytes of an artifact and where they came from (for events and errors).
#[derive(Clone, Debug)]
pub struct Fetched {
    pub bytes: Vec<u8>,
    /// What the pin names: the manifest's digest for OCI, else `sha256:<hex>` of the bytes.
    pub digest: String,
    /// `sha256:<hex>` of the bytes.
    pub component_digest: String,
    pub origin: String,
}

/// Why no bytes were had, naming the source.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("file {path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("ConfigMap {namespace}/{name} not found")]
    NoConfigMap { namespace: String, name: String },
    #[error(
        "ConfigMap {namespace}/{name} has no binaryData key {key:?} (binaryData keys: {present})"
    )]
    NoKey {
        namespace: String,
        name: String,
        key: String,
        present: String,
    },
    #[error("reading ConfigMap {namespace}/{name}: {source}")]
    Kube {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    Oci(#[from] OciError),
    #[error("Secret {namespace}/{name} ({purpose}): {reason}")]
    Secret {
        namespace: String,
        name: String,
        purpose: &'static str,
        reason: String,
    },
    #[error("{url}: {message}")]
    Https { url: String, message: String },
    #[error("{origin} has digest {actual}, not the pinned {expected}")]
    Digest {
        origin: String,
        expected: String,
        actual: String,
    },
}

impl Fetched {
    fn new(bytes: Vec<u8>, origin: String) -> Fetched {
        let digest = mcm_sandbox::artifact::digest(&bytes);
        Fetched {
            component_digest: digest.clone(),
            digest,
            bytes,
            origin,
        }
    }

    /// The bytes are what the spec pinned (`sha256:<hex>`, as `spec::source` normalises it).
    pub fn verify(self, expected: &str) -> Result<Fetched, FetchError> {
        if self.digest == expected {
            Ok(self)
        } else {
            Err(FetchError::Digest {
                origin: self.origin,
                expected: expected.to_string(),
                actual: self.digest,
            })
        }
    }
}

/// A file on the controller's file system (development, or a volume the operator mounts).
pub async fn file(path: &str) -> Result<Fetched, FetchError> {
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|source| FetchError::File {
            path: path.to_string(),
            source,
        })?;
    Ok(Fetched::new(bytes, format!("file {path}")))
}

/// A ConfigMap's `binaryData` key in the Provider's namespace (small providers, air-gapped).
pub async fn config_map(
    api: &Api<ConfigMap>,
    name: &str,
    key: &str,
) -> Result<Fetched, FetchError> {
    let namespace = api.namespace().unwrap_or("default").to_string();
    let cm = api.get_opt(name).await.map_err(|source| FetchError::Kube {
        namespace: namespace.clone(),
        name: name.to_string(),
        source,
    })?;
    let Some(cm) = cm else {
        return Err(FetchError::NoConfigMap {
            namespace,
            name: name.to_string(),
        });
    };
    let mut binary = cm.binary_data.unwrap_or_default();
    let Some(bytes) = binary.remove(key) else {
        let present = binary
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        return Err(FetchError::NoKey {
            namespace,
            name: name.to_string(),
            key: key.to_string(),
            present: if present.is_empty() {
                "none".into()
            } else {
                present
            },
        });
    };
    Ok(Fetched::new(
        bytes.0,
        format!("ConfigMap {namespace}/{name} key {key}"),
    ))
}

/// An OCI artifact by its pinned manifest digest, with the credentials of `pull_secret` (a
/// `kubernetes.io/dockerconfigjson` Secret) and the CA of `cert_secret` (`ca.crt`), both in
/// the Provider's namespace.
pub async fn oci(
    secrets: &Api<Secret>,
    reference: &str,
    digest: &str,
    pull_secret: Option<&str>,
    cert_secret: Option<&str>,
    insecure: bool,
) -> Result<Fetched, FetchError> {
    let auth = match pull_secret {
        Some(name) => {
            let json = secret_key(secrets, name, ".dockerconfigjson", "pull secret").await?;
            let registry = oci::registry_host(reference)?;
            oci::auth_from_docker_config(&json, &registry).map_err(|e| FetchError::Secret {
                namespace: secrets.namespace().unwrap_or("default").to_string(),
                name: name.to_string(),
                purpose: "pull secret",
                reason: match e {
                    OciError::PullSecret(reason) => reason,
                    other => other.to_string(),
                },
            })?
        }
        None => Auth::Anonymous,
    };
    let ca_pem = match cert_secret {
        Some(name) => Some(secret_key(secrets, name, "ca.crt", "registry CA").await?),
        None => None,
    };
    let access = Access {
        auth,
        insecure,
        ca_pem,
    };
    let pulled = oci::pull(reference, digest, &access).await?;
    let mut fetched = Fetched::new(pulled.bytes, format!("oci://{reference}"));
    fetched.digest = pulled.manifest_digest;
    Ok(fetched)
}

async fn secret_key(
    secrets: &Api<Secret>,
    name: &str,
    key: &str,
    purpose: &'static str,
) -> Result<Vec<u8>, FetchError> {
    let err = |reason: String| FetchError::Secret {
        namespace: secrets.namespace().unwrap_or("default").to_string(),
        name: name.to_string(),
        purpose,
        reason,
    };
    let secret = secrets
        .get_opt(name)
        .await
        .map_err(|e| err(format!("cannot be read: {e}")))?
        .ok_or_else(|| err("not found".into()))?;
    let mut data = secret.data.unwrap_or_default();
    match data.remove(key) {
        Some(bytes) => Ok(bytes.0),
        None => {
            let present = data.keys().cloned().collect::<Vec<_>>().join(", ");
            Err(err(format!(
                "has no key {key:?} (keys: {})",
                if present.is_empty() { "none" } else { &present }
            )))
        }
    }
}

/// A component over HTTPS (no redirects to plain HTTP; at most [`MAX_COMPONENT_BYTES`]).
/// The caller verifies the sha256 pin.
pub async fn https(client: &reqwest::Client, url: &str) -> Result<Fetched, FetchError> {
    let fail = |message: String| FetchError::Https {
        url: url.to_string(),
        message,
    };
    let mut resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| fail(mcm_driver::text::error_chain(&e)))?;
    if !resp.status().is_success() {
        return Err(fail(format!("HTTP {}", resp.status())));
    }
    if resp.url().scheme() != "https" {
        return Err(fail(format!("redirected to {}, not https", resp.url())));
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| fail(mcm_driver::text::error_chain(&e)))?
    {
        bytes.extend_from_slice(&chunk);
        if bytes.len() as i64 > MAX_COMPONENT_BYTES {
            return Err(fail(format!(
                "more than {MAX_COMPONENT_BYTES} bytes, larger than a provider may be"
            )));
        }
    }
    Ok(Fetched::new(bytes, url.to_string()))
}
