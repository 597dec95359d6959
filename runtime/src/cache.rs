//! Compile cache: a component is compiled once per content digest and engine configuration,
//! then loaded from disk on every later start.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
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
    ) -> anyhow::Result<(Component, CacheHit)> {
        let entry = self.entry(engine, bytes);
        if let Some(path) = &entry
            && path.exists()
        {
            // SAFETY: the file was written by `precompile_component` of an engine with the
            // same compatibility hash (it is in the name) into our private cache directory.
            match unsafe { Component::deserialize_file(engine, path) } {
                Ok(component) => return Ok((component, CacheHit::Disk)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), "ignoring unusable cache entry: {e:#}")
                }
            }
        }
        let started = Instant::now();
        let compiled = engine
            .precompile_component(bytes)
            .map_err(anyhow::Error::msg)?;
        tracing::debug!(elapsed = ?started.elapsed(), "compiled component");
        if let Some(path) = &entry
            && let Err(e) = store(path, &compiled)
        {
            tracing::warn!(path = %path.display(), "cannot write compile cache: {e:#}");
        }
        // SAFETY: the bytes come from `precompile_component` of this engine just now.
        let component =
            unsafe { Component::deserialize(engine, &compiled) }.map_err(anyhow::Error::msg)?;
        Ok((component, CacheHit::Compiled))
    }
}

/// Write atomically (temp file + rename) so a concurrent reader never sees half a file.
fn store(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().context("cache path has no parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path
        .file_name()
        .context("cache path has no file name")?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
