//! Getting a Provider's artifact bytes, separate from loading them (as Kubewarden's
//! policy-server separates downloading from evaluating), and checking them against the pin.
//!
//! Done so far: the `file` and `configMap` sources and the digest check every source ends in.
//! OCI (oci-client/oci-wasm) and https (the shared client) come next (issue 13).

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;

/// The bytes of an artifact and where they came from (for events and errors).
#[derive(Clone, Debug)]
pub struct Fetched {
    pub bytes: Vec<u8>,
    /// `sha256:<hex>` of the bytes.
    pub digest: String,
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
    #[error("{origin} has digest {actual}, not the pinned {expected}")]
    Digest {
        origin: String,
        expected: String,
        actual: String,
    },
}

impl Fetched {
    fn new(bytes: Vec<u8>, origin: String) -> Fetched {
        Fetched {
            digest: mcm_sandbox::artifact::digest(&bytes),
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
