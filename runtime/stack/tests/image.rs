//! The controller image `just image` builds (`mcm-wasm:dev`, kubernetes/image/Containerfile):
//! pushed with buildah to a real registry on loopback, pulled back by digest through the
//! registry's API, its manifest and config inspected as a kubelet reads them, and its one
//! layer extracted and run (`mcm-wasm --version`): the static binary needs nothing from the
//! image but itself. `just test` runs `just image` first.

use std::process::Command;

use testenv::registry::{Options, Registry};

const IMAGE: &str = "localhost/mcm-wasm:dev";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn the_controller_image_is_pulled_by_digest_and_runs() {
    let inspect = Command::new("buildah")
        .args(["inspect", "--type", "image", IMAGE])
        .output();
    match inspect {
        Ok(out) if out.status.success() => {}
        _ => panic!("{IMAGE} is not built: run `just image` (needs buildah; `just test` runs it)"),
    }
    let registry = Registry::start(Options::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let digest_file = dir.path().join("digest");
    let target = format!("docker://{}/mcm-wasm:dev", registry.host);
    run(Command::new("buildah")
        .args(["push", "--quiet", "--tls-verify=false", "--digestfile"])
        .arg(&digest_file)
        .args([IMAGE, &target]));
    let digest = std::fs::read_to_string(&digest_file)
        .unwrap()
        .trim()
        .to_string();
    assert!(digest.starts_with("sha256:"), "{digest}");

    let http = reqwest::Client::new();
    let base = format!("http://{}/v2/mcm-wasm", registry.host);
    let resp = http
        .get(format!("{base}/manifests/{digest}"))
        .header("accept", MANIFEST)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    assert_eq!(
        resp.headers()["docker-content-digest"].to_str().unwrap(),
        digest
    );
    let manifest: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(manifest["mediaType"], MANIFEST, "{manifest:#}");
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(
        layers.len(),
        1,
        "one layer: the binary and the CA bundle; {manifest:#}"
    );

    let blob = async |digest: &str| {
        http.get(format!("{base}/blobs/{digest}"))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .bytes()
            .await
            .unwrap()
    };
    let config: serde_json::Value =
        serde_json::from_slice(&blob(manifest["config"]["digest"].as_str().unwrap()).await)
            .unwrap();
    let c = &config["config"];
    assert_eq!(
        c["Entrypoint"],
        serde_json::json!(["/usr/local/bin/mcm-wasm"]),
        "{config:#}"
    );
    assert_eq!(c["Cmd"], serde_json::json!(["controller"]), "{config:#}");
    assert_eq!(c["User"], "65532:65532", "{config:#}");
    assert_eq!(config["os"], "linux");
    assert_eq!(config["architecture"], "amd64");

    let layer = dir.path().join("layer.tar.gz");
    std::fs::write(&layer, blob(layers[0]["digest"].as_str().unwrap()).await).unwrap();
    let root = dir.path().join("rootfs");
    std::fs::create_dir(&root).unwrap();
    run(Command::new("tar")
        .arg("-xf")
        .arg(&layer)
        .arg("-C")
        .arg(&root));
    assert!(root.join("etc/ssl/certs/ca-certificates.crt").is_file());
    // Run with an empty environment: nothing from the build machine is needed.
    let version = run(Command::new(root.join("usr/local/bin/mcm-wasm"))
        .arg("--version")
        .env_clear());
    assert_eq!(
        version.trim(),
        format!("mcm-wasm {}", env!("CARGO_PKG_VERSION"))
    );
}
