//! The guest components every test and benchmark uses (`guests/`, wasm32-wasip2, release),
//! built once per process: the first [`guest`] call runs cargo on the guests workspace (a
//! no-op when `just guests` already built them), later calls only look the file up.
//!
//! The Python sample (`sample_py`) is built by `guests/python/build.py` (componentize-py) when
//! its output is missing or older than `guests/python/` or `wit/` — as `just guests` does.
//!
//! Benchmarks use [`built_guest`], which never builds: `cargo bench` holds the release build
//! directory that a nested guest build would need (`just bench` builds the guests first).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("runtime/test-artifacts sits two levels below the root")
        .to_path_buf()
}

/// Where the guests workspace puts its components.
pub fn output_dir() -> PathBuf {
    repo_root().join("target/wasm32-wasip2/release")
}

/// Build every guest once per process (cargo does nothing when they are fresh).
pub fn guests_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = repo_root();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip2",
                "--manifest-path",
            ])
            .arg(root.join("guests/Cargo.toml"))
            // The outer build's flags are for the host, not for wasm32-wasip2.
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("RUSTFLAGS")
            .status()
            .expect("running cargo to build the guests");
        assert!(
            status.success(),
            "building the guests failed (see cargo's output above)"
        );
        build_python_sample(&root);
        output_dir()
    })
}

/// `sample_py.wasm`, rebuilt when a file under `guests/python/` or `wit/` is newer.
fn build_python_sample(root: &Path) {
    let out = output_dir().join("sample_py.wasm");
    let built = std::fs::metadata(&out).and_then(|m| m.modified()).ok();
    let newest_source = [root.join("guests/python"), root.join("wit")]
        .iter()
        .filter_map(|dir| newest_mtime(dir))
        .max();
    if built.is_some() && built >= newest_source {
        return;
    }
    let status = std::process::Command::new("python3")
        .arg(root.join("guests/python/build.py"))
        .arg(root.join("guests/python/sample"))
        .arg("-o")
        .arg(&out)
        .status()
        .expect("running python3 guests/python/build.py");
    assert!(
        status.success(),
        "building the Python sample failed (see build.py's output above; `just guests` installs componentize-py)"
    );
}

fn newest_mtime(dir: &Path) -> Option<std::time::SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let time = if path.is_dir() {
            newest_mtime(&path)
        } else if path.extension().is_some_and(|e| e == "pyc") {
            None
        } else {
            entry.metadata().and_then(|m| m.modified()).ok()
        };
        newest = newest.max(time);
    }
    newest
}

/// Path of a guest, built if needed, e.g. `guest("test_panicker")`.
pub fn guest(name: &str) -> PathBuf {
    let path = guests_dir().join(format!("{name}.wasm"));
    assert!(path.exists(), "guest {} was not built", path.display());
    path
}

/// Path of a guest that must already be built (benchmarks: run `just guests` first).
pub fn built_guest(name: &str) -> PathBuf {
    let path = output_dir().join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run `just guests` (or `just bench`, which builds them)",
        path.display()
    );
    path
}

/// The SDK's metadata section name (`mcm-wasm:provider`).
const METADATA_SECTION: &str = "mcm-wasm:provider";

/// The same component as `bytes` claiming provider version `version`: a new metadata section
/// (the last one read wins) appended after the component's own. Same code, a new digest —
/// what a rebuilt release of a provider looks like to a registry and to the sandbox.
pub fn with_version(bytes: &[u8], version: &str) -> Vec<u8> {
    with_metadata(bytes, |json| json["version"] = version.into())
}

/// The same component as `bytes` with its metadata JSON changed by `edit` (e.g. another
/// provider name: a second provider of the same code), in a metadata section appended after
/// the component's own (the last one read wins).
pub fn with_metadata(bytes: &[u8], edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut metadata = None;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        if let Ok(wasmparser::Payload::CustomSection(s)) = payload
            && s.name() == METADATA_SECTION
        {
            metadata = Some(s.data().to_vec());
        }
    }
    let metadata = metadata.expect("the component has an SDK metadata section");
    let mut json: serde_json::Value =
        serde_json::from_slice(&metadata).expect("the metadata section is JSON");
    edit(&mut json);
    let data = serde_json::to_vec(&json).unwrap();
    let mut payload = leb128(METADATA_SECTION.len());
    payload.extend_from_slice(METADATA_SECTION.as_bytes());
    payload.extend_from_slice(&data);
    let mut out = bytes.to_vec();
    out.push(0); // custom section id
    out.extend(leb128(payload.len()));
    out.extend(payload);
    out
}

fn leb128(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}
