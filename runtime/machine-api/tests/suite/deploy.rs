//! The manifests in `kubernetes/deploy/` and `kubernetes/examples/` apply as they are, and the
//! controller's RBAC is least privilege: what the machine controller needs, nothing more.

use std::process::Command;

use crate::common::control_plane;
use kube::api::Api;
use machine_api::{Machine, MachineClass, MachineDeployment};

const SA: &str = "system:serviceaccount:mcm-wasm:mcm-wasm-controller";

fn can_i(cp: &testenv::ControlPlane, args: &[&str]) -> bool {
    let mut cmd: Command = cp.kubectl();
    cmd.args(["auth", "can-i", "--as", SA]).args(args);
    let out = cmd.output().unwrap();
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    match answer.as_str() {
        "yes" => true,
        "no" => false,
        _ => panic!(
            "kubectl auth can-i {args:?}: {answer} {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

#[tokio::test]
async fn manifests_and_examples_apply_and_rbac_is_least_privilege() {
    let cp = control_plane();
    let kubernetes = testenv::kubernetes_dir();
    // Namespace first: the other manifests live in it.
    cp.kubectl_run(
        ["apply", "-f"]
            .into_iter()
            .map(String::from)
            .chain([kubernetes
                .join("deploy/namespace.yaml")
                .display()
                .to_string()]),
    )
    .unwrap();
    let out = cp
        .kubectl_run([
            "apply".to_owned(),
            "-f".to_owned(),
            kubernetes.join("deploy").display().to_string(),
        ])
        .unwrap();
    for object in [
        "serviceaccount/mcm-wasm-controller",
        "role.rbac.authorization.k8s.io/mcm-wasm-controller",
        "clusterrole.rbac.authorization.k8s.io/mcm-wasm-controller-target",
        "deployment.apps/mcm-wasm-controller",
    ] {
        assert!(out.contains(object), "{object} not applied:\n{out}");
    }
    let deployment = cp
        .kubectl_run([
            "-n",
            "mcm-wasm",
            "get",
            "deployment",
            "mcm-wasm-controller",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].command}",
        ])
        .unwrap();
    assert!(deployment.contains("controller"), "{deployment}");

    // The examples apply unchanged into the namespace they name.
    cp.kubectl_run([
        "apply".to_owned(),
        "-f".to_owned(),
        kubernetes.join("examples").display().to_string(),
    ])
    .unwrap();
    let client = cp.client().await.unwrap();
    Api::<MachineClass>::namespaced(client.clone(), "mcm-wasm")
        .get("aws-small")
        .await
        .unwrap();
    Api::<Machine>::namespaced(client.clone(), "mcm-wasm")
        .get("aws-small-single")
        .await
        .unwrap();
    Api::<MachineDeployment>::namespaced(client.clone(), "mcm-wasm")
        .get("aws-small-pool")
        .await
        .unwrap();
    // The Provider example passes the CRD's rules (exactly one source, pinned by digest).
    Api::<machine_api::Provider>::namespaced(client.clone(), "mcm-wasm")
        .get("aws")
        .await
        .unwrap();

    let ns = ["-n", "mcm-wasm"];
    let allowed: &[&[&str]] = &[
        &["watch", "machines.machine.sapcloud.io"],
        &["patch", "machines.machine.sapcloud.io"],
        &[
            "update",
            "machines.machine.sapcloud.io",
            "--subresource=status",
        ],
        &["list", "machineclasses.machine.sapcloud.io"],
        &["update", "machineclasses.machine.sapcloud.io"],
        &["get", "secrets"],
        &["patch", "secrets"],
        &["create", "events"],
        &["create", "leases.coordination.k8s.io"],
        &["update", "leases.coordination.k8s.io/machine-controller"],
        &["delete", "nodes"],
        &["patch", "nodes"],
        &["patch", "nodes", "--subresource=status"],
        &["create", "pods", "--subresource=eviction"],
        &["list", "volumeattachments.storage.k8s.io"],
        &["watch", "providers.mcm-wasm.io"],
        &["patch", "providers.mcm-wasm.io"],
        &["patch", "providers.mcm-wasm.io", "--subresource=status"],
        &["watch", "configmaps"],
    ];
    let denied: &[&[&str]] = &[
        &["create", "machines.machine.sapcloud.io"],
        &["delete", "machines.machine.sapcloud.io"],
        &["create", "machinesets.machine.sapcloud.io"],
        &["patch", "machinedeployments.machine.sapcloud.io"],
        &["delete", "machineclasses.machine.sapcloud.io"],
        &["create", "secrets"],
        &["delete", "secrets"],
        &["create", "providers.mcm-wasm.io"],
        &["delete", "providers.mcm-wasm.io"],
        &["create", "configmaps"],
        &["patch", "configmaps"],
        &["update", "leases.coordination.k8s.io/someone-else"],
        &["create", "pods"],
        &["create", "nodes"],
        &["create", "deployments.apps"],
        &["create", "clusterroles.rbac.authorization.k8s.io"],
    ];
    let mut wrong = Vec::new();
    for args in allowed {
        let args: Vec<&str> = args.iter().chain(ns.iter()).copied().collect();
        if !can_i(cp, &args) {
            wrong.push(format!("denied but needed: {args:?}"));
        }
    }
    for args in denied {
        let args: Vec<&str> = args.iter().chain(ns.iter()).copied().collect();
        if can_i(cp, &args) {
            wrong.push(format!("allowed but not needed: {args:?}"));
        }
    }
    // Bootstrap tokens in kube-system; nothing else there.
    for args in [
        ["create", "secrets", "-n", "kube-system"],
        ["delete", "secrets", "-n", "kube-system"],
    ] {
        if !can_i(cp, &args) {
            wrong.push(format!("denied but needed: {args:?}"));
        }
    }
    // Secrets and machines of other namespaces are out of reach.
    for args in [
        ["get", "secrets", "-n", "default"],
        ["list", "secrets", "-n", "kube-system"],
        ["watch", "machines.machine.sapcloud.io", "-n", "default"],
        ["create", "configmaps", "-n", "kube-system"],
    ] {
        if can_i(cp, &args) {
            wrong.push(format!("allowed outside its namespace: {args:?}"));
        }
    }
    assert!(wrong.is_empty(), "RBAC:\n{}", wrong.join("\n"));
}
