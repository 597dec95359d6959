//! `mcm-wasm push`, `pull`, and the registry half of `inspect`: provider artifacts in an OCI
//! registry (the layout is `mcm_providers::oci`'s).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use mcm_providers::oci::{self, Access, Auth};

/// How to reach the registry (the same for push, pull and inspect).
#[derive(clap::Args, Debug, Clone)]
pub struct RegistryArgs {
    /// Plain HTTP (a development registry on a loopback address).
    #[arg(long)]
    pub insecure: bool,
    /// Registry user for basic auth.
    #[arg(long, env = "MCM_WASM_REGISTRY_USERNAME")]
    pub username: Option<String>,
    /// Registry password (better from the environment than the command line).
    #[arg(long, env = "MCM_WASM_REGISTRY_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// A PEM CA certificate to trust for the registry, besides the system roots.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
}

impl RegistryArgs {
    fn access(&self) -> Result<Access, String> {
        let auth = match (&self.username, &self.password) {
            (Some(username), Some(password)) => Auth::Basic {
                username: username.clone(),
                password: password.clone(),
            },
            (None, None) => Auth::Anonymous,
            _ => return Err("--username and --password go together".into()),
        };
        let ca_pem = match &self.ca_file {
            Some(path) => Some(
                std::fs::read(path).map_err(|e| format!("--ca-file {}: {e}", path.display()))?,
            ),
            None => None,
        };
        Ok(Access {
            auth,
            insecure: self.insecure,
            ca_pem,
        })
    }
}

fn fail(code: u8, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(code)
}

/// Push `file` to `reference`; prints the pinned reference (`repository@sha256:…`).
pub async fn push(file: &Path, reference: &str, registry: &RegistryArgs) -> ExitCode {
    mcm_controller::install_crypto_provider();
    let access = match registry.access() {
        Ok(a) => a,
        Err(e) => return fail(2, e),
    };
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) => return fail(2, format!("{}: {e}", file.display())),
    };
    // Only components the sandbox would load are pushed: the metadata must be readable.
    let info = match mcm_sandbox::artifact::inspect(file, &bytes) {
        Ok(info) => info,
        Err(e) => return fail(2, e),
    };
    let repo = match oci::repository(reference) {
        Ok(r) => r,
        Err(e) => return fail(2, e),
    };
    eprintln!(
        "pushing {} {} (contract {}, {} bytes) to {reference}",
        info.metadata.name, info.metadata.version, info.contract, info.size
    );
    match oci::push(reference, bytes, &info, &access).await {
        Ok(digest) => {
            println!("{repo}@{digest}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(1, e),
    }
}

/// Pull by digest (a tag is resolved first, and the digest printed so it can be pinned);
/// writes the component to `output`.
pub async fn pull(reference: &str, output: &Path, registry: &RegistryArgs) -> ExitCode {
    let pulled = match pull_artifact(reference, registry).await {
        Ok(p) => p,
        Err(e) => return fail(1, e),
    };
    if let Err(e) = std::fs::write(output, &pulled.bytes) {
        return fail(1, format!("{}: {e}", output.display()));
    }
    eprintln!(
        "pulled {} bytes ({}) to {}",
        pulled.bytes.len(),
        mcm_sandbox::artifact::digest(&pulled.bytes),
        output.display()
    );
    match oci::repository(reference) {
        Ok(repo) => println!("{repo}@{}", pulled.manifest_digest),
        Err(e) => return fail(2, e),
    }
    ExitCode::SUCCESS
}

/// The artifact a reference names: by its digest, or the tag's current one.
async fn fetch(reference: &str, access: &Access) -> Result<oci::Pulled, String> {
    let pin = match reference.split_once('@') {
        Some((_, digest)) => digest.to_string(),
        None => oci::resolve(reference, access)
            .await
            .map_err(|e| e.to_string())?,
    };
    oci::pull(reference, &pin, access)
        .await
        .map_err(|e| e.to_string())
}

/// Is `target` a registry reference rather than a file? (It is not a file, and its first
/// path component names a registry host.)
pub fn is_reference(target: &str) -> bool {
    if Path::new(target).exists() {
        return false;
    }
    let Some((first, _)) = target.split_once('/') else {
        return false;
    };
    first.contains('.') || first.contains(':') || first == "localhost"
}

/// The artifact `reference` names, reached with the arguments' registry access (for `pull`
/// and `inspect REFERENCE`).
pub async fn pull_artifact(
    reference: &str,
    registry: &RegistryArgs,
) -> Result<oci::Pulled, String> {
    mcm_controller::install_crypto_provider();
    let access = registry.access()?;
    fetch(reference, &access).await
}
