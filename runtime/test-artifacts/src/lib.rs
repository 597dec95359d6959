//! The guest components every test and benchmark uses (`guests/`, wasm32-wasip2, release),
//! built once per process: the first [`guest`] call runs cargo on the guests workspace (a
//! no-op when `just guests` already built them), later calls only look the file up.
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
        output_dir()
    })
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
    json["version"] = version.into();
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
