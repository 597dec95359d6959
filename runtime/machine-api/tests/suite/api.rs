//! The machine.sapcloud.io API on a real kube-apiserver: the CRDs apply, every example is stored
//! with all its fields and read back through kube-rs, kubectl lists the objects with Gardener's
//! printer columns, and bad objects are refused with the schema's message.

use crate::common::{control_plane, example, example_json, namespace, refused, table};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use machine_api::{
    Machine, MachineClass, MachineDeployment, MachineOperationType, MachinePhase, MachineSet,
    MachineState, MachineStatus,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// Everything but `metadata` (which the server fills in) of an object.
fn content(value: &Value) -> Value {
    let mut value = value.clone();
    value.as_object_mut().unwrap().remove("metadata");
    value
}

/// Creates the example `file` in `ns` through kube-rs (typed), then checks that
/// - the typed object serializes back to exactly the example (the Rust types lose nothing),
/// - the server stored every field (raw read equals the example, nothing pruned),
/// - the typed read equals what was sent.
async fn create_example<K>(client: &kube::Client, ns: &str, file: &str) -> K
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + Serialize
        + DeserializeOwned
        + PartialEq,
{
    let raw = example_json(file, ns);
    let typed: K = example(file, ns);
    assert_eq!(
        content(&serde_json::to_value(&typed).unwrap()),
        content(&raw),
        "{file}: the Rust type does not serialize back to the example"
    );

    let api = Api::<K>::namespaced(client.clone(), ns);
    let created = api.create(&PostParams::default(), &typed).await.unwrap();

    let dynamic =
        Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ApiResource::erase::<K>(&()));
    let stored = dynamic
        .get(&created.meta().name.clone().unwrap())
        .await
        .unwrap();
    let stored = serde_json::to_value(&stored).unwrap();
    assert_eq!(
        content(&stored),
        content(&raw),
        "{file}: the server did not keep every field"
    );
    assert_eq!(
        stored["metadata"]["labels"], raw["metadata"]["labels"],
        "{file}: labels"
    );

    let read = api
        .get(&created.meta().name.clone().unwrap())
        .await
        .unwrap();
    assert_eq!(
        serde_json::to_value(&read).map(|v| content(&v)).unwrap(),
        content(&raw),
        "{file}: the typed read differs from the example"
    );
    read
}

fn time(s: &str) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    serde_json::from_value(json!(s)).unwrap()
}

#[tokio::test]
async fn examples_are_stored_and_read_back_with_all_fields() {
    let cp = control_plane();
    let client = cp.client().await.unwrap();
    let ns = namespace(&client, "examples").await;

    let secret: Secret = example("secret.yaml", &ns);
    Api::<Secret>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();

    let class: MachineClass = create_example(&client, &ns, "machine-class.yaml").await;
    assert_eq!(class.spec.provider, "AWS"); // as Gardener writes it (an alias of `aws`)
    assert_eq!(class.spec.provider_spec["region"], "eu-west-1");
    assert_eq!(
        class.spec.provider_spec["tags"]["kubernetes.io/role/node"],
        "1"
    );
    let template = class.spec.node_template.as_ref().unwrap();
    assert_eq!(template.capacity["memory"].0, "2Gi");
    assert_eq!(
        class.spec.secret_ref.as_ref().unwrap().name.as_deref(),
        Some("aws-credentials")
    );

    let machine: Machine = create_example(&client, &ns, "machine.yaml").await;
    assert_eq!(machine.spec.class.name, "aws-small");
    assert_eq!(
        machine.spec.configuration.creation_timeout.as_deref(),
        Some("20m")
    );
    assert_eq!(machine.spec.configuration.max_evict_retries, Some(360));
    let taints = machine.spec.node_template.spec.taints.as_ref().unwrap();
    assert_eq!(taints[0].effect, "NoSchedule");
    assert!(machine.status.is_none());

    let deployment: MachineDeployment =
        create_example(&client, &ns, "machine-deployment.yaml").await;
    assert_eq!(deployment.spec.replicas, 2);
    assert_eq!(
        deployment.spec.template.metadata.labels.as_ref().unwrap()["pool"],
        "aws-small-pool"
    );

    // The status subresource: a status written by a controller is stored and read back.
    let machines = Api::<Machine>::namespaced(client.clone(), &ns);
    let status = MachineStatus {
        last_operation: machine_api::LastOperation {
            description: "Creating machine on cloud provider".into(),
            last_update_time: Some(time("2026-01-02T03:04:05Z")),
            state: Some(MachineState::Processing),
            type_: Some(MachineOperationType::Create),
            error_code: String::new(),
        },
        current_status: machine_api::CurrentStatus {
            phase: Some(MachinePhase::Pending),
            timeout_active: true,
            last_update_time: Some(time("2026-01-02T03:04:05Z")),
            preserve_expiry_time: None,
        },
        last_known_state: "i-0123456789abcdef0".into(),
        ..Default::default()
    };
    machines
        .patch_status(
            &machine.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .unwrap();
    let read = machines.get(&machine.name_any()).await.unwrap();
    assert_eq!(read.status.as_ref(), Some(&status));
    assert_eq!(read.phase(), Some(&MachinePhase::Pending));
    // The spec is not writable through the status subresource, and the status not through the object.
    machines
        .patch(
            &machine.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "currentStatus": { "phase": "Running" } } })),
        )
        .await
        .unwrap();
    assert_eq!(
        machines.get(&machine.name_any()).await.unwrap().phase(),
        Some(&MachinePhase::Pending)
    );

    // The scale subresource of MachineDeployments and MachineSets.
    cp.kubectl_run([
        "-n",
        &ns,
        "scale",
        "machinedeployment/aws-small-pool",
        "--replicas=3",
    ])
    .unwrap();
    let deployments = Api::<MachineDeployment>::namespaced(client.clone(), &ns);
    assert_eq!(
        deployments
            .get("aws-small-pool")
            .await
            .unwrap()
            .spec
            .replicas,
        3
    );
}

#[tokio::test]
async fn kubectl_lists_objects_with_gardeners_printer_columns() {
    let cp = control_plane();
    let client = cp.client().await.unwrap();
    let ns = namespace(&client, "columns").await;

    let _: MachineClass = create_example(&client, &ns, "machine-class.yaml").await;
    let machine: Machine = create_example(&client, &ns, "machine.yaml").await;
    let machines = Api::<Machine>::namespaced(client.clone(), &ns);
    machines
        .patch(
            &machine.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({
                "metadata": { "labels": { "node": "ip-10-0-0-7.eu-west-1.compute.internal" } },
                "spec": { "providerID": "aws:///eu-west-1/i-0123456789abcdef0" },
            })),
        )
        .await
        .unwrap();
    machines
        .patch_status(
            &machine.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "currentStatus": { "phase": "Running" } } })),
        )
        .await
        .unwrap();
    let deployment: MachineDeployment =
        create_example(&client, &ns, "machine-deployment.yaml").await;
    Api::<MachineDeployment>::namespaced(client.clone(), &ns)
        .patch_status(
            &deployment.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": {
                "replicas": 2, "readyReplicas": 1, "updatedReplicas": 2, "availableReplicas": 1
            } })),
        )
        .await
        .unwrap();
    let set: MachineSet = serde_json::from_value(json!({
        "apiVersion": "machine.sapcloud.io/v1alpha1",
        "kind": "MachineSet",
        "metadata": { "name": "aws-small-pool-abc12", "namespace": ns },
        "spec": {
            "replicas": 2,
            "selector": { "matchLabels": { "pool": "aws-small-pool" } },
            "machineClass": { "kind": "MachineClass", "name": "aws-small" },
            "template": {
                "metadata": { "labels": { "pool": "aws-small-pool" } },
                "spec": { "class": { "kind": "MachineClass", "name": "aws-small" } }
            }
        }
    }))
    .unwrap();
    let sets = Api::<MachineSet>::namespaced(client.clone(), &ns);
    sets.create(&PostParams::default(), &set).await.unwrap();
    sets.patch_status(
        "aws-small-pool-abc12",
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": { "replicas": 2, "readyReplicas": 1 } })),
    )
    .await
    .unwrap();

    // Machines: NAME STATUS AGE NODE, and PROVIDERID with -o wide (priority 1), via the short name.
    let rows = table(&cp.kubectl_run(["-n", &ns, "get", "mc"]).unwrap());
    assert_eq!(rows[0], ["NAME", "STATUS", "AGE", "NODE"]);
    assert_eq!(rows[1][0], "aws-small-single");
    assert_eq!(rows[1][1], "Running");
    assert_eq!(rows[1][3], "ip-10-0-0-7.eu-west-1.compute.internal");
    let rows = table(
        &cp.kubectl_run(["-n", &ns, "get", "machines", "-o", "wide"])
            .unwrap(),
    );
    assert_eq!(rows[0], ["NAME", "STATUS", "AGE", "NODE", "PROVIDERID"]);
    assert_eq!(rows[1][4], "aws:///eu-west-1/i-0123456789abcdef0");

    // MachineDeployments: NAME READY DESIRED UP-TO-DATE AVAILABLE AGE.
    let rows = table(&cp.kubectl_run(["-n", &ns, "get", "mcd"]).unwrap());
    assert_eq!(
        rows[0],
        ["NAME", "READY", "DESIRED", "UP-TO-DATE", "AVAILABLE", "AGE"]
    );
    assert_eq!(rows[1][..5], ["aws-small-pool", "1", "2", "2", "1"]);

    // MachineSets: NAME DESIRED CURRENT READY AGE.
    let rows = table(&cp.kubectl_run(["-n", &ns, "get", "mcs"]).unwrap());
    assert_eq!(rows[0], ["NAME", "DESIRED", "CURRENT", "READY", "AGE"]);
    assert_eq!(rows[1][..4], ["aws-small-pool-abc12", "2", "2", "1"]);

    // MachineClasses: NAME AGE.
    let rows = table(&cp.kubectl_run(["-n", &ns, "get", "mcc"]).unwrap());
    assert_eq!(rows[0], ["NAME", "AGE"]);
    assert_eq!(rows[1][0], "aws-small");
}

#[tokio::test]
async fn bad_objects_are_refused_with_the_schemas_message() {
    let cp = control_plane();
    let client = cp.client().await.unwrap();
    let ns = namespace(&client, "bad").await;

    // A MachineClass without its required providerSpec.
    let mut class = example_json("machine-class.yaml", &ns);
    class.as_object_mut().unwrap().remove("providerSpec");
    let err = refused::<MachineClass>(&client, &ns, class).await;
    assert_eq!(err.code, 422, "{err:?}");
    assert!(
        err.message.contains("providerSpec: Required value"),
        "{}",
        err.message
    );

    // A nodeTemplate without its zone.
    let mut class = example_json("machine-class.yaml", &ns);
    class["nodeTemplate"]
        .as_object_mut()
        .unwrap()
        .remove("zone");
    let err = refused::<MachineClass>(&client, &ns, class).await;
    assert_eq!(err.code, 422, "{err:?}");
    assert!(
        err.message.contains("nodeTemplate.zone: Required value"),
        "{}",
        err.message
    );

    // A Machine with a string where an integer belongs.
    let mut machine = example_json("machine.yaml", &ns);
    machine["spec"]["maxEvictRetries"] = json!("many");
    let err = refused::<Machine>(&client, &ns, machine).await;
    assert_eq!(err.code, 422, "{err:?}");
    assert!(
        err.message.contains(r#"spec.maxEvictRetries: Invalid value: "string": spec.maxEvictRetries in body must be of type integer: "string""#),
        "{}",
        err.message
    );

    // A MachineDeployment with a wrongly typed replicas and one without its template.
    let mut deployment = example_json("machine-deployment.yaml", &ns);
    deployment["spec"]["replicas"] = json!("three");
    let err = refused::<MachineDeployment>(&client, &ns, deployment).await;
    assert_eq!(err.code, 422, "{err:?}");
    assert!(
        err.message
            .contains("spec.replicas in body must be of type integer"),
        "{}",
        err.message
    );

    let mut deployment = example_json("machine-deployment.yaml", &ns);
    deployment["spec"]
        .as_object_mut()
        .unwrap()
        .remove("template");
    let err = refused::<MachineDeployment>(&client, &ns, deployment).await;
    assert_eq!(err.code, 422, "{err:?}");
    assert!(
        err.message.contains("spec.template: Required value"),
        "{}",
        err.message
    );

    // A MachineSet whose selector is not an object.
    let err = refused::<MachineSet>(
        &client,
        &ns,
        json!({
            "apiVersion": "machine.sapcloud.io/v1alpha1",
            "kind": "MachineSet",
            "metadata": { "name": "bad-set" },
            "spec": { "replicas": 1, "selector": "pool=a" }
        }),
    )
    .await;
    assert_eq!(err.code, 422, "{err:?}");
    assert!(
        err.message
            .contains("spec.selector in body must be of type object"),
        "{}",
        err.message
    );

    // Nothing of it was stored.
    let machines = Api::<Machine>::namespaced(client.clone(), &ns)
        .list(&Default::default())
        .await
        .unwrap();
    assert!(machines.items.is_empty());
}
