//! A real OCI registry (CNCF Distribution, `registry` / Debian's `docker-registry`) on a free
//! loopback port, for tests and `just run`: plain HTTP, or TLS with a fresh CA and htpasswd
//! basic auth (what a private registry with a pull secret looks like). It dies with the
//! process that started it, and with the [`Registry`] value.
//!
//! The binary is found as `$MCM_WASM_REGISTRY`, then `{cache}/registry/bin/registry` (what
//! `just registry` builds from Go when the OS package is missing), then `docker-registry` on
//! `PATH` (Debian's package).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::process::ChildGuard;
use crate::{Error, Result, cache_root, io_err, tail};

/// How the registry is served.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Serve HTTPS with a certificate for 127.0.0.1 from a fresh CA ([`Registry::ca_pem`]).
    pub tls: bool,
    /// Require basic auth with this user and password (htpasswd).
    pub basic_auth: Option<(String, String)>,
}

/// A running registry; killed when dropped.
pub struct Registry {
    /// `127.0.0.1:PORT`: the registry part of a reference.
    pub host: String,
    /// The CA that signed the serving certificate (TLS only).
    pub ca_pem: Option<String>,
    process: ChildGuard,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// Where the registry binary is, or how to install it.
pub fn binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("MCM_WASM_REGISTRY") {
        return Ok(PathBuf::from(path));
    }
    let built = cache_root().join("registry/bin/registry");
    if built.is_file() {
        return Ok(built);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join("docker-registry");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(Error::MissingBinary {
        what: "an OCI registry (CNCF Distribution)".into(),
        path: built,
        install: "just registry",
    })
}

impl Registry {
    /// Starts a registry on a free loopback port and waits until it accepts connections.
    pub fn start(options: Options) -> Result<Registry> {
        let bin = binary()?;
        let dir = tempfile::Builder::new()
            .prefix("mcm-wasm-registry-")
            .tempdir()
            .map_err(io_err("creating the registry's directory"))?;
        let write = |name: &str, contents: &str| -> Result<PathBuf> {
            let path = dir.path().join(name);
            std::fs::write(&path, contents)
                .map_err(io_err(format!("writing {}", path.display())))?;
            Ok(path)
        };
        let mut ca_pem = None;
        let mut extra = String::new();
        if options.tls {
            let serving = crate::certs::loopback_serving("mcm-wasm-registry-ca", "registry")?;
            let cert = write("registry.crt", &serving.cert_pem)?;
            let key = write("registry.key", &serving.key_pem)?;
            extra.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ));
            ca_pem = Some(serving.ca_pem);
        }
        let mut auth = String::new();
        if let Some((user, password)) = &options.basic_auth {
            let hash = bcrypt::hash(password, 4).expect("bcrypt hashes a password");
            let file = write("htpasswd", &format!("{user}:{hash}\n"))?;
            auth = format!(
                "auth:\n  htpasswd:\n    realm: mcm-wasm\n    path: {}\n",
                file.display()
            );
        }
        let log = dir.path().join("registry.log");
        let storage = dir.path().join("storage");
        let (process, port) = crate::spawn_on_free_port("registry", &log, |port| {
            let config = write(
                "config.yml",
                &format!(
                    "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n\
                     storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                     http:\n  addr: 127.0.0.1:{port}\n{extra}{auth}",
                    storage.display()
                ),
            )?;
            let mut cmd = Command::new(&bin);
            cmd.arg("serve").arg(&config);
            // The registry reads REGISTRY_* variables as configuration overrides.
            cmd.env_remove("REGISTRY_HTTP_ADDR");
            Ok(cmd)
        })?;
        Ok(Registry {
            host: format!("127.0.0.1:{port}"),
            ca_pem,
            process,
            log,
            _dir: dir,
        })
    }

    /// A reference in this registry: `127.0.0.1:PORT/{repository}`.
    pub fn reference(&self, repository: &str) -> String {
        format!("{}/{repository}", self.host)
    }

    /// The registry's process id.
    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// The registry's log (one line per request).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of the registry's log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }
}
