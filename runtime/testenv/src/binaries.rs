//! Where `just controlplane` puts the binaries (see kubernetes/controlplane/build.sh).

use std::path::PathBuf;

use crate::{Error, Result};

const VERSIONS: &str = include_str!("../../../kubernetes/controlplane/versions.env");

fn version(key: &str) -> &'static str {
    VERSIONS
        .lines()
        .filter_map(|line| line.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim())
        .unwrap_or_else(|| panic!("{key} missing in kubernetes/controlplane/versions.env"))
}

/// The pinned Kubernetes version (kube-apiserver, kubectl).
pub fn kubernetes_version() -> &'static str {
    version("KUBERNETES_VERSION")
}

/// The pinned etcd version.
pub fn etcd_version() -> &'static str {
    version("ETCD_VERSION")
}

/// The pinned Gardener machine-controller-manager version.
pub fn gardener_mcm_version() -> &'static str {
    version("GARDENER_MCM_VERSION")
}

/// The cache root: `$MCM_WASM_CACHE`, else `~/.cache/mcm-wasm` (as in the justfile).
pub fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("MCM_WASM_CACHE").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/mcm-wasm")
}

fn require(what: &str, path: PathBuf) -> Result<PathBuf> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::MissingBinary {
            what: what.to_owned(),
            path,
            install: "just controlplane",
        })
    }
}

/// etcd, kube-apiserver and kubectl.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub etcd: PathBuf,
    pub kube_apiserver: PathBuf,
    pub kubectl: PathBuf,
}

impl Binaries {
    /// The directory the binaries are cached in for the pinned versions.
    pub fn cache_dir() -> PathBuf {
        cache_root()
            .join("controlplane")
            .join(format!(
                "k8s-{}-etcd-{}",
                kubernetes_version(),
                etcd_version()
            ))
            .join("bin")
    }

    /// Finds the binaries in the cache (or in `$MCM_WASM_CONTROLPLANE_BIN` if set).
    pub fn locate() -> Result<Self> {
        let dir = std::env::var_os("MCM_WASM_CONTROLPLANE_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(Self::cache_dir);
        Ok(Binaries {
            etcd: require("etcd", dir.join("etcd"))?,
            kube_apiserver: require("kube-apiserver", dir.join("kube-apiserver"))?,
            kubectl: require("kubectl", dir.join("kubectl"))?,
        })
    }
}

/// Gardener's machine-controller-manager and its CRDs, from the cache.
#[derive(Clone, Debug)]
pub struct GardenerMcm {
    pub binary: PathBuf,
    /// Gardener's own CRDs of machine.sapcloud.io, copied from its Go module.
    pub crds: PathBuf,
}

impl GardenerMcm {
    /// The cache directory for the pinned version.
    pub fn cache_dir() -> PathBuf {
        cache_root()
            .join("gardener-mcm")
            .join(gardener_mcm_version())
    }

    /// Finds the binary and CRDs in the cache.
    pub fn locate() -> Result<Self> {
        let dir = Self::cache_dir();
        let crds = dir.join("crds");
        require(
            "Gardener's machine.sapcloud.io CRDs",
            crds.join("machine.sapcloud.io_machines.yaml"),
        )?;
        Ok(GardenerMcm {
            binary: require(
                "Gardener machine-controller-manager",
                dir.join("bin/machine-controller-manager"),
            )?,
            crds,
        })
    }
}
