//! Gardener's real machine-controller-manager (v0.62, built by `just controlplane`) runs
//! MachineDeployments on our CRDs: the API is a drop-in. The Machines stay without a VM (no
//! machine controller runs here), which MCM does not mind for creating and scaling.

use std::time::Duration;

use crate::common::{control_plane, eventually, example, namespace};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use machine_api::{Machine, MachineClass, MachineDeployment, MachinePhase, MachineSet};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gardener_mcm_runs_a_machine_deployment_on_our_crds() {
    let cp = control_plane();
    let client = cp.client().await.unwrap();
    let ns = namespace(&client, "gardener-mcm").await;

    let secret: Secret = example("secret.yaml", &ns);
    Api::<Secret>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let class: MachineClass = example("machine-class.yaml", &ns);
    Api::<MachineClass>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &class)
        .await
        .unwrap();
    let mut deployment: MachineDeployment = example("machine-deployment.yaml", &ns);
    deployment.spec.replicas = 3;
    let deployments = Api::<MachineDeployment>::namespaced(client.clone(), &ns);
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();

    let mut mcm = cp.start_gardener_mcm(&ns).unwrap();
    let sets = Api::<MachineSet>::namespaced(client.clone(), &ns);
    let machines = Api::<Machine>::namespaced(client.clone(), &ns);
    let live = |list: Vec<Machine>| -> Vec<Machine> {
        list.into_iter()
            .filter(|m| m.metadata.deletion_timestamp.is_none())
            .collect()
    };

    // 3 replicas: one MachineSet and three Machines.
    let (set, created) = eventually(
        TIMEOUT,
        || async {
            let s = sets.list(&ListParams::default()).await.ok()?.items;
            let m = live(machines.list(&ListParams::default()).await.ok()?.items);
            (s.len() == 1 && m.len() == 3).then(|| (s[0].clone(), m))
        },
        || {
            format!(
                "no 1 MachineSet + 3 Machines; MCM log:\n{}",
                mcm.log_tail(40)
            )
        },
    )
    .await;
    assert_eq!(set.spec.replicas, 3);
    let owner = &set.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("MachineDeployment", "aws-small-pool")
    );
    assert_eq!(set.spec.template.spec.class.name, "aws-small");
    for machine in &created {
        let owner = &machine.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("MachineSet", set.name_any().as_str())
        );
        assert_eq!(machine.spec.class.name, "aws-small");
        assert_eq!(machine.labels()["pool"], "aws-small-pool");
        assert!(
            machine
                .labels()
                .contains_key(machine_api::DEFAULT_MACHINE_DEPLOYMENT_UNIQUE_LABEL_KEY)
        );
        assert_eq!(
            machine.spec.configuration.creation_timeout.as_deref(),
            Some("20m0s") // Go writes metav1.Duration in its canonical form
        );
        // No machine controller runs: nothing made them Running.
        assert_ne!(machine.phase(), Some(&MachinePhase::Running));
    }

    // MCM keeps the deployment's status through our status subresource.
    eventually(
        TIMEOUT,
        || async {
            let d = deployments.get("aws-small-pool").await.ok()?;
            (d.status?.replicas == 3).then_some(())
        },
        || {
            format!(
                "MachineDeployment status.replicas never became 3; MCM log:\n{}",
                mcm.log_tail(40)
            )
        },
    )
    .await;

    // Scale to 1: one Machine is left, in the same MachineSet.
    deployments
        .patch(
            "aws-small-pool",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "replicas": 1 } })),
        )
        .await
        .unwrap();
    let remaining = eventually(
        TIMEOUT,
        || async {
            let s = sets.list(&ListParams::default()).await.ok()?.items;
            let m = machines.list(&ListParams::default()).await.ok()?.items;
            (s.len() == 1 && s[0].spec.replicas == 1 && m.len() == 1).then_some(m)
        },
        || format!("not scaled to 1 Machine; MCM log:\n{}", mcm.log_tail(40)),
    )
    .await;
    assert!(
        created
            .iter()
            .any(|m| m.name_any() == remaining[0].name_any())
    );
    assert!(mcm.is_running(), "MCM exited; log:\n{}", mcm.log_tail(40));
}
