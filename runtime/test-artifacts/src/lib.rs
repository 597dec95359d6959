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
