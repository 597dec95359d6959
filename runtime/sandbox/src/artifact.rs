//! Reading a provider artifact before compiling it: is it a component, which contract version
//! does it export, what metadata did the SDK embed.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wasmparser::{Encoding, Parser, Payload};

use mcm_driver::CONTRACT_VERSION;

/// The custom section the guest SDK writes (JSON: name, version, contract).
pub const METADATA_SECTION: &str = "mcm-wasm:provider";
/// The interface a provider must export, without its version.
pub const DRIVER_INTERFACE: &str = "mcm:driver/driver";

/// Provider metadata embedded by the guest SDK.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    pub name: String,
    pub version: String,
    pub contract: String,
    /// Other names a MachineClass's `provider` may use for this provider (e.g. `AWS`, as
    /// Gardener writes it); comma-separated in the section.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "comma_list"
    )]
    pub aliases: Vec<String>,
    /// An environment variable of the controller's that, when set, is the provider's endpoint
    /// (e.g. `AWS_ENDPOINT_URL_EC2`, as the AWS SDKs read it).
    #[serde(
        default,
        rename = "endpointEnv",
        skip_serializing_if = "Option::is_none"
    )]
    pub endpoint_env: Option<String>,
    /// The provider's default rate limits for its cloud (e.g. EC2's published request
    /// buckets), under the operator's settings (`ProviderSettings::rate_limits`).
    #[serde(
        default,
        rename = "rateLimits",
        skip_serializing_if = "Option::is_none"
    )]
    pub rate_limits: Option<crate::capability::ratelimit::RateLimits>,
}

impl Metadata {
    /// Does a MachineClass `provider` value name this provider (its name or an alias)?
    pub fn serves(&self, provider: &str) -> bool {
        self.name == provider || self.aliases.iter().any(|a| a == provider)
    }
}

fn comma_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let text = String::deserialize(d)?;
    Ok(text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect())
}

/// What an artifact is, read without compiling it.
#[derive(Clone, Debug, Serialize)]
pub struct ArtifactInfo {
    /// `sha256:<hex>` of the bytes.
    pub digest: String,
    pub size: usize,
    /// From the SDK's metadata section, or derived from the file name and export.
    pub metadata: Metadata,
    /// Whether `metadata` came from the SDK's section.
    pub has_metadata_section: bool,
    /// The contract version of the exported driver interface.
    pub contract: semver::Version,
    /// Top-level export names of the component.
    pub exports: Vec<String>,
    /// Top-level import names (all within the contract and the allowed WASI subset).
    pub imports: Vec<String>,
}

/// Why an artifact cannot be loaded. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: file is empty")]
    Empty { path: String },
    #[error("{path}: not a WebAssembly binary: {reason}")]
    NotWasm { path: String, reason: String },
    #[error(
        "{path}: is a core WebAssembly module, not a component; build the provider for \
         wasm32-wasip2 (or wrap it with `wasm-tools component new`)"
    )]
    CoreModule { path: String },
    #[error(
        "{path}: does not export {DRIVER_INTERFACE} (exports: [{exports}]); build it with the mcm-wasm guest SDK"
    )]
    NoDriverExport { path: String, exports: String },
    #[error(
        "{path}: provider {name} {provider_version} is built against contract mcm:driver@{guest}, \
         but this runtime speaks mcm:driver@{host} (compatible: {compat})"
    )]
    IncompatibleContract {
        path: String,
        name: String,
        provider_version: String,
        guest: String,
        host: String,
        compat: String,
    },
    #[error(
        "{path}: imports {import}, which the sandbox does not provide; a provider may import only \
         {} (use mcm:driver/http for network access; providers have no files)",
        crate::engine::wasi::allowed_summary()
    )]
    ForbiddenImport { path: String, import: String },
    #[error("{path}: invalid {METADATA_SECTION} metadata section: {reason}")]
    BadMetadata { path: String, reason: String },
    #[error("{path}: failed to compile: {reason}")]
    Compile { path: String, reason: String },
    #[error("{path}: cannot be linked against the runtime's capabilities: {reason}")]
    Link { path: String, reason: String },
    #[error("{path}: smoke instantiation failed: {reason}")]
    Smoke { path: String, reason: String },
}

/// Is a guest built against `guest` callable by a runtime speaking `host`? Same major; for 0.x
/// the same minor; and not newer than the runtime.
pub fn contract_compatible(guest: &semver::Version, host: &semver::Version) -> bool {
    guest.major == host.major && (host.major > 0 || guest.minor == host.minor) && guest <= host
}

fn compat_range(host: &semver::Version) -> String {
    if host.major == 0 {
        format!("0.{}.0 ..= {host}", host.minor)
    } else {
        format!("{}.0.0 ..= {host}", host.major)
    }
}

/// Inspect artifact bytes (no compilation). `path` is used in errors and as the fallback name.
// A load-time error, once per artifact: its size does not matter.
#[allow(clippy::result_large_err)]
pub fn inspect(path: &Path, bytes: &[u8]) -> Result<ArtifactInfo, LoadError> {
    let p = path.display().to_string();
    if bytes.is_empty() {
        return Err(LoadError::Empty { path: p });
    }
    let mut exports = Vec::new();
    let mut imports = Vec::new();
    let mut metadata_text = None;
    let mut depth = 0usize;
    if !bytes.starts_with(b"\0asm") {
        let head: Vec<String> = bytes.iter().take(4).map(|b| format!("{b:02x}")).collect();
        return Err(LoadError::NotWasm {
            path: p,
            reason: format!(
                "no \\0asm magic header (the file starts with {})",
                head.join(" ")
            ),
        });
    }
    // One line: wasmparser's messages may carry multi-line debug output.
    let not_wasm = |e: wasmparser::BinaryReaderError| LoadError::NotWasm {
        path: p.clone(),
        reason: e
            .to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
    };
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(not_wasm)?;
        match payload {
            Payload::Version {
                encoding: Encoding::Module,
                ..
            } if depth == 0 => {
                return Err(LoadError::CoreModule { path: p });
            }
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentExportSection(reader) if depth == 0 => {
                for export in reader {
                    exports.push(export.map_err(not_wasm)?.name.0.to_string());
                }
            }
            Payload::ComponentImportSection(reader) if depth == 0 => {
                for import in reader {
                    imports.push(import.map_err(not_wasm)?.name.0.to_string());
                }
            }
            Payload::CustomSection(section) if section.name() == METADATA_SECTION => {
                metadata_text = Some(section.data().to_vec());
            }
            _ => {}
        }
    }

    let host = semver::Version::parse(CONTRACT_VERSION).expect("valid contract version");
    let driver_export = exports.iter().find_map(|e| {
        let (name, version) = e.split_once('@').unwrap_or((e.as_str(), ""));
        (name == DRIVER_INTERFACE).then_some(version)
    });
    let Some(export_version) = driver_export else {
        return Err(LoadError::NoDriverExport {
            path: p,
            exports: exports.join(", "),
        });
    };
    let contract = semver::Version::parse(export_version).map_err(|e| LoadError::BadMetadata {
        path: p.clone(),
        reason: format!("driver export has version {export_version:?}: {e}"),
    })?;

    let has_metadata_section = metadata_text.is_some();
    let metadata = match metadata_text {
        Some(text) => {
            serde_json::from_slice::<Metadata>(&text).map_err(|e| LoadError::BadMetadata {
                path: p.clone(),
                reason: e.to_string(),
            })?
        }
        None => Metadata {
            name: path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            version: "unknown".into(),
            contract: contract.to_string(),
            aliases: Vec::new(),
            endpoint_env: None,
            rate_limits: None,
        },
    };
    if let Some(limits) = &metadata.rate_limits {
        limits.check().map_err(|reason| LoadError::BadMetadata {
            path: p.clone(),
            reason: format!("rateLimits: {reason}"),
        })?;
    }
    if !contract_compatible(&contract, &host) {
        return Err(LoadError::IncompatibleContract {
            path: p,
            name: metadata.name,
            provider_version: metadata.version,
            guest: contract.to_string(),
            host: host.to_string(),
            compat: compat_range(&host),
        });
    }
    if let Some(import) = crate::engine::wasi::refused_import(imports.iter().map(String::as_str)) {
        return Err(LoadError::ForbiddenImport {
            path: p,
            import: import.to_string(),
        });
    }
    Ok(ArtifactInfo {
        digest: digest(bytes),
        size: bytes.len(),
        metadata,
        has_metadata_section,
        contract,
        exports,
        imports,
    })
}

/// `sha256:<hex>` of some bytes.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> semver::Version {
        s.parse().unwrap()
    }

    #[test]
    fn contract_compatibility() {
        assert!(contract_compatible(&v("0.1.0"), &v("0.1.0")));
        assert!(contract_compatible(&v("0.1.0"), &v("0.1.3")));
        assert!(!contract_compatible(&v("0.1.4"), &v("0.1.3")));
        assert!(!contract_compatible(&v("0.2.0"), &v("0.1.0")));
        assert!(!contract_compatible(&v("1.0.0"), &v("0.1.0")));
        assert!(contract_compatible(&v("1.1.0"), &v("1.2.0")));
        assert!(!contract_compatible(&v("2.0.0"), &v("1.2.0")));
    }

    #[test]
    fn garbage_and_empty_are_named() {
        let p = Path::new("x.wasm");
        assert!(matches!(inspect(p, b""), Err(LoadError::Empty { .. })));
        let err = inspect(p, b"not wasm at all").unwrap_err();
        assert!(matches!(err, LoadError::NotWasm { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            "x.wasm: not a WebAssembly binary: no \\0asm magic header (the file starts with 6e 6f 74 20)"
        );
        // Broken after a good header: wasmparser's reason, on one line.
        let err = inspect(p, b"\0asm\x0d\0\x01\0\xff\xff")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("x.wasm: not a WebAssembly binary: "),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn core_module_is_named() {
        // The smallest valid core module: magic + version 1.
        let err = inspect(Path::new("m.wasm"), b"\0asm\x01\0\0\0").unwrap_err();
        assert!(matches!(err, LoadError::CoreModule { .. }), "{err}");
    }
}
