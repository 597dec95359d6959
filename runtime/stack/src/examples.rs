//! The examples in `kubernetes/examples/`, pointed at what moto made: moto checks that a
//! class's AMI, subnet, security group, instance profile and key pair exist, as EC2 does, but
//! chooses their IDs itself, so the example's placeholder IDs are replaced.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use testenv::moto::ClassResources;

/// The example class's IAM instance profile and key pair (created in moto under these names).
pub const INSTANCE_PROFILE: &str = "mcm-wasm-nodes";
pub const KEY_PAIR: &str = "mcm-wasm-nodes";

/// The example Provider's placeholder reference.
const PROVIDER_REFERENCE: &str = "registry.example.com/mcm-wasm/providers/aws@sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// The example class's placeholder IDs.
const AMI: &str = "ami-0c55b159cbfafe1f0";
const SUBNET: &str = "subnet-0a1b2c3d4e5f60718";
const SECURITY_GROUP: &str = "sg-0123456789abcdef0";

/// The example files applied; the MachineDeployment needs Gardener's machine-controller-manager.
pub fn names(with_deployment: bool) -> Vec<&'static str> {
    let mut names = vec![
        "provider-aws.yaml",
        "secret.yaml",
        "machine-class.yaml",
        "machine.yaml",
    ];
    if with_deployment {
        names.push("machine-deployment.yaml");
    }
    names
}

/// Writes the examples with moto's IDs and the local registry's provider reference (`pinned`,
/// `registry/repository@sha256:…`, plain HTTP on loopback) into `dir/examples` and returns
/// that directory.
pub fn render(
    dir: &Path,
    ids: &ClassResources,
    pinned: &str,
    with_deployment: bool,
) -> Result<PathBuf> {
    let source = testenv::kubernetes_dir().join("examples");
    let out = dir.join("examples");
    std::fs::create_dir_all(&out)?;
    for name in names(with_deployment) {
        let path = source.join(name);
        let mut text = std::fs::read_to_string(&path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        if name == "provider-aws.yaml" {
            let local = format!("{pinned}\n      insecure: true");
            text = replace_all(&path, text, &[(PROVIDER_REFERENCE, &local)])?;
        }
        if name == "machine-class.yaml" {
            // The profile and key pair keep their names: moto gets them under those.
            for needed in [
                format!("name: {INSTANCE_PROFILE}"),
                format!("keyName: {KEY_PAIR}"),
            ] {
                require(&path, &text, &needed)?;
            }
            text = replace_all(
                &path,
                text,
                &[
                    (AMI, &ids.ami),
                    (SUBNET, &ids.subnet),
                    (SECURITY_GROUP, &ids.security_group),
                ],
            )?;
        }
        std::fs::write(out.join(name), text)?;
    }
    Ok(out)
}

/// Replaces each placeholder, failing when one is missing (the example changed).
fn replace_all(path: &Path, mut text: String, pairs: &[(&str, &str)]) -> Result<String> {
    for (from, to) in pairs {
        require(path, &text, from)?;
        text = text.replace(from, to);
    }
    Ok(text)
}

fn require(path: &Path, text: &str, needed: &str) -> Result<()> {
    if !text.contains(needed) {
        bail!(
            "{} no longer contains {needed:?}: update runtime/stack/src/examples.rs",
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_class_with_moto_ids() {
        let dir = tempfile::tempdir().unwrap();
        let ids = ClassResources {
            ami: "ami-moto".into(),
            subnet: "subnet-moto".into(),
            security_group: "sg-moto".into(),
        };
        let pinned = "127.0.0.1:5000/providers/aws@sha256:abc";
        let out = render(dir.path(), &ids, pinned, false).unwrap();
        let provider = std::fs::read_to_string(out.join("provider-aws.yaml")).unwrap();
        assert!(
            provider.contains(&format!("reference: {pinned}\n      insecure: true\n")),
            "{provider}"
        );
        let class = std::fs::read_to_string(out.join("machine-class.yaml")).unwrap();
        assert!(class.contains("ami: ami-moto"), "{class}");
        assert!(class.contains("- subnetID: subnet-moto"), "{class}");
        assert!(class.contains("- sg-moto"), "{class}");
        assert!(!out.join("machine-deployment.yaml").exists());
        assert!(
            render(dir.path(), &ids, "r@sha256:abc", true)
                .unwrap()
                .join("machine-deployment.yaml")
                .exists()
        );
    }

    #[test]
    fn a_missing_placeholder_is_named() {
        let err = replace_all(
            Path::new("x.yaml"),
            "ami: other".into(),
            &[(AMI, "ami-moto")],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("x.yaml no longer contains \"ami-0c55b159cbfafe1f0\""),
            "{err}"
        );
    }
}
