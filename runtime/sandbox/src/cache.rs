//! Compile cache: a component is compiled once per content digest and engine configuration,
//! then loaded from disk on every later start.
//!
//! Loading a `.cwasm` runs its native code unchecked (`Component::deserialize` is `unsafe`),
//! so the cache is guarded: the directory is created `0700` (and not used when group or others
//! may write to it), and each entry `X.cwasm` has a sidecar `X.sha256` with the digest of the
//! compiled bytes written together with it. An entry whose bytes do not match its digest (a
//! swapped or corrupted file) is not executed: the component is recompiled and the entry
//! rewritten. This stops a replaced or damaged entry; whoever can write both files as the
//! runtime's own user can also replace the binary, which is outside what a cache can defend.

use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Where the cache lives unless configured: `$MCM_WASM_CACHE/compiled` or
/// `~/.cache/mcm-wasm/compiled`.
pub fn default_dir() -> Option<PathBuf> {
    if let Some(root) = std::env::var_os("MCM_WASM_CACHE") {
        return Some(PathBuf::from(root).join("compiled"));
    }
    dirs::cache_dir().map(|d| d.join("mcm-wasm").join("compiled"))
}

/// How a component was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CacheHit {
    /// Loaded precompiled code from disk.
    Disk,
    /// Compiled now (and stored, when the cache is on).
    Compiled,
}

pub(crate) struct CompileCache {
    dir: Option<PathBuf>,
}

impl CompileCache {
    pub(crate) fn new(dir: Option<PathBuf>) -> Self {
        CompileCache { dir }
    }

    /// The file for these bytes under this engine: content digest + engine compatibility hash
    /// (which changes with the wasmtime version and configuration).
    fn entry(&self, engine: &Engine, bytes: &[u8]) -> Option<PathBuf> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let digest = crate::artifact::digest(bytes);
        let digest = digest.trim_start_matches("sha256:");
        self.dir
            .as_ref()
            .map(|d| d.join(format!("{digest}-{:016x}.cwasm", hasher.finish())))
    }

    pub(crate) fn load(
        &self,
        engine: &Engine,
        bytes: &[u8],
    ) -> wasmtime::Result<(Component, CacheHit)> {
        let entry = self
            .entry(engine, bytes)
            .filter(|path| match private_dir(path) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(path = %path.display(), "compile cache disabled: {e}");
                    false
                }
            });
        if let Some(path) = &entry
            && path.exists()
        {
            match read_verified(path) {
                // SAFETY: these bytes are exactly the ones `precompile_component` of an engine
                // with the same compatibility hash (it is in the name) wrote, as the sidecar
                // digest written with them proves, in a directory only we can write.
                Ok(compiled) => match unsafe { Component::deserialize(engine, &compiled) } {
                    Ok(component) => return Ok((component, CacheHit::Disk)),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), "ignoring unusable cache entry: {e:#}")
                    }
                },
                Err(e) => {
                    tracing::warn!(path = %path.display(), "not using cache entry, recompiling: {e}")
                }
            }
        }
        let started = Instant::now();
        let compiled = engine.precompile_component(bytes)?;
        tracing::debug!(elapsed = ?started.elapsed(), "compiled component");
        if let Some(path) = &entry
            && let Err(e) = store(path, &compiled)
        {
            tracing::warn!(path = %path.display(), "cannot write compile cache: {e}");
        }
        // SAFETY: the bytes come from `precompile_component` of this engine just now.
        let component = unsafe { Component::deserialize(engine, &compiled) }?;
        Ok((component, CacheHit::Compiled))
    }
}

/// Why a cache entry or the cache directory is not used (logged; the component is compiled).
#[derive(Debug, thiserror::Error)]
enum EntryError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("its content (sha256 {actual}) does not match the digest written with it ({expected})")]
    DigestMismatch { actual: String, expected: String },
    #[error("{} is writable by group or others (mode {mode:o}); make it 0700", dir.display())]
    NotPrivate { dir: PathBuf, mode: u32 },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> EntryError {
    let path = path.to_path_buf();
    move |source| EntryError::Io { what, path, source }
}

fn sidecar(path: &Path) -> PathBuf {
    path.with_extension("sha256")
}

/// The entry's bytes, if they match the digest stored beside them.
fn read_verified(path: &Path) -> Result<Vec<u8>, EntryError> {
    let compiled = std::fs::read(path).map_err(io("reading", path))?;
    let sidecar = sidecar(path);
    let expected = std::fs::read_to_string(&sidecar).map_err(io("reading its digest", &sidecar))?;
    let actual = hex::encode(Sha256::digest(&compiled));
    if expected.trim() != actual {
        return Err(EntryError::DigestMismatch {
            actual,
            expected: expected.trim().to_string(),
        });
    }
    Ok(compiled)
}

/// Create the cache directory `0700`; tighten an existing one to `0700`, and refuse it when
/// that is not possible (another user's directory that group or others can write).
fn private_dir(path: &Path) -> Result<(), EntryError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    // Entries are always `dir/name`: `entry` builds them so.
    let dir = path
        .parent()
        .expect("a cache entry is inside the cache directory");
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io("creating", dir))?;
    }
    let mode = || {
        std::fs::metadata(dir)
            .map(|m| m.permissions().mode())
            .map_err(io("reading the mode of", dir))
    };
    if mode()? & 0o077 != 0 {
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    let mode = mode()?;
    if mode & 0o022 != 0 {
        return Err(EntryError::NotPrivate {
            dir: dir.to_path_buf(),
            mode: mode & 0o777,
        });
    }
    Ok(())
}

/// Write atomically (temp file + rename) so a concurrent reader never sees half a file.
fn store(path: &Path, bytes: &[u8]) -> Result<(), EntryError> {
    let dir = path
        .parent()
        .expect("a cache entry is inside the cache directory");
    let name = path
        .file_name()
        .expect("a cache entry has a file name")
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(io("writing", &tmp))?;
    // The digest first: a reader that sees the new entry also sees its digest (an old digest
    // with a new entry only costs a recompile).
    let digest_tmp = dir.join(format!(".{name}.{}.sha256.tmp", std::process::id()));
    std::fs::write(&digest_tmp, hex::encode(Sha256::digest(bytes)))
        .map_err(io("writing", &digest_tmp))?;
    std::fs::rename(&digest_tmp, sidecar(path)).map_err(io("renaming", &digest_tmp))?;
    std::fs::rename(&tmp, path).map_err(io("renaming", &tmp))?;
    Ok(())
}
