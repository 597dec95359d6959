//! Writes the CRDs (`machine.sapcloud.io` and `mcm-wasm.io`) into a directory (default: `kubernetes/crds`).
//!
//! Usage: `crdgen [DIR]` or `crdgen --check [DIR]` (exits 1 when a file is missing or stale).

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut check = false;
    let mut dir = None;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--check" => check = true,
            "-h" | "--help" => {
                println!("usage: crdgen [--check] [DIR]   (DIR defaults to kubernetes/crds)");
                return ExitCode::SUCCESS;
            }
            other => dir = Some(PathBuf::from(other)),
        }
    }
    let dir = dir.unwrap_or_else(|| PathBuf::from("kubernetes/crds"));
    if !check && let Err(err) = std::fs::create_dir_all(&dir) {
        eprintln!("error: cannot create {}: {err}", dir.display());
        return ExitCode::FAILURE;
    }
    let mut stale = false;
    for crd in machine_api::crds() {
        let path = dir.join(machine_api::crd_file_name(&crd));
        let yaml = machine_api::crd_yaml(&crd);
        if check {
            if std::fs::read_to_string(&path).ok().as_deref() != Some(yaml.as_str()) {
                eprintln!("stale: {} (run `just crds`)", path.display());
                stale = true;
            }
        } else if let Err(err) = std::fs::write(&path, yaml) {
            eprintln!("error: cannot write {}: {err}", path.display());
            return ExitCode::FAILURE;
        } else {
            println!("wrote {}", path.display());
        }
    }
    if stale {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
