//! Compatibility with Gardener machine-controller-manager's own CRDs (from its Go module, copied
//! into the cache by `just controlplane`): every field of theirs exists in ours with the same
//! type, the printer columns, names and subresources are the same, and both accept (and refuse)
//! the same objects on a real API server.

use std::collections::BTreeMap;

use crate::common::{example_json, namespace};
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use kube::core::GroupVersionKind;
use serde_json::{Value, json};
use testenv::{ControlPlane, GardenerMcm};

fn gardener_crds() -> BTreeMap<String, Value> {
    let mcm = GardenerMcm::locate().unwrap_or_else(|e| panic!("{e}"));
    let mut crds = BTreeMap::new();
    for entry in std::fs::read_dir(&mcm.crds).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let crd: Value = serde_yaml_ng::from_str(&text).unwrap();
        crds.insert(
            crd["spec"]["names"]["kind"].as_str().unwrap().to_owned(),
            crd,
        );
    }
    assert_eq!(
        crds.keys().collect::<Vec<_>>(),
        ["Machine", "MachineClass", "MachineDeployment", "MachineSet"],
        "Gardener's CRDs in {}",
        mcm.crds.display()
    );
    crds
}

fn our_crds() -> BTreeMap<String, Value> {
    machine_api::crds()
        .into_iter()
        .map(|crd| {
            (
                crd.spec.names.kind.clone(),
                serde_json::to_value(&crd).unwrap(),
            )
        })
        .collect()
}

/// The type of a schema node as the API server validates it.
fn kind_of(schema: &Value) -> String {
    if schema["x-kubernetes-int-or-string"] == json!(true) {
        return "int-or-string".into();
    }
    match schema["type"].as_str() {
        Some(t) => t.to_owned(),
        None if schema["x-kubernetes-preserve-unknown-fields"] == json!(true) => "any".into(),
        None => "<none>".into(),
    }
}

/// Compares Gardener's schema `theirs` with ours at `path`, recording every difference that
/// would make ours refuse or change an object theirs accepts.
fn compare(path: &str, theirs: &Value, ours: &Value, problems: &mut Vec<String>) {
    if kind_of(theirs) != kind_of(ours) {
        problems.push(format!(
            "{path}: type {} in Gardener's, {} in ours",
            kind_of(theirs),
            kind_of(ours)
        ));
        return;
    }
    if theirs.get("format") != ours.get("format") {
        problems.push(format!(
            "{path}: format {:?} vs {:?}",
            theirs.get("format"),
            ours.get("format")
        ));
    }
    for ext in [
        "x-kubernetes-preserve-unknown-fields",
        "x-kubernetes-embedded-resource",
    ] {
        if theirs.get(ext) != ours.get(ext) {
            problems.push(format!(
                "{path}: {ext} {:?} vs {:?}",
                theirs.get(ext),
                ours.get(ext)
            ));
        }
    }
    if ours.get("enum").is_some() && theirs.get("enum") != ours.get("enum") {
        problems.push(format!(
            "{path}: ours restricts the values to {}",
            ours["enum"]
        ));
    }
    // Ours must not require more than theirs (the root `spec` is our one deliberate exception).
    let required = |s: &Value| -> Vec<String> {
        s["required"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    let their_required = required(theirs);
    for field in required(ours) {
        let deliberate = path.is_empty() && field == "spec";
        if !deliberate && !their_required.contains(&field) {
            problems.push(format!("{path}.{field}: required in ours only"));
        }
    }
    if let Some(props) = theirs["properties"].as_object() {
        for (name, their_prop) in props {
            let field = format!("{path}.{name}");
            match ours["properties"].get(name) {
                Some(our_prop) => compare(&field, their_prop, our_prop, problems),
                None => problems.push(format!("{field}: missing in ours")),
            }
        }
    }
    if theirs["properties"].as_object().is_none()
        && ours["properties"]
            .as_object()
            .is_some_and(|p| !p.is_empty())
        && theirs["x-kubernetes-preserve-unknown-fields"] != json!(true)
    {
        problems.push(format!(
            "{path}: ours declares properties where Gardener's has none"
        ));
    }
    if theirs.get("items").is_some() {
        compare(
            &format!("{path}[]"),
            &theirs["items"],
            &ours["items"],
            problems,
        );
    }
    if theirs["additionalProperties"].is_object() {
        compare(
            &format!("{path}{{}}"),
            &theirs["additionalProperties"],
            &ours["additionalProperties"],
            problems,
        );
    }
}

#[test]
fn every_gardener_field_exists_in_ours_with_the_same_type() {
    let theirs = gardener_crds();
    let ours = our_crds();
    let mut problems = Vec::new();
    let mut fields = 0;
    for (kind, their_crd) in &theirs {
        let our_crd = &ours[kind];
        let their_schema = &their_crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let our_schema = &our_crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let mut kind_problems = Vec::new();
        compare("", their_schema, our_schema, &mut kind_problems);
        problems.extend(kind_problems.into_iter().map(|p| format!("{kind}: {p}")));
        fields += their_crd.to_string().matches("\"type\":").count();
    }
    assert!(
        fields > 300,
        "Gardener's CRDs look empty ({fields} typed nodes)"
    );
    assert!(
        problems.is_empty(),
        "schema differences:\n{}",
        problems.join("\n")
    );
}

#[test]
fn names_printer_columns_and_subresources_match_gardeners() {
    let theirs = gardener_crds();
    let ours = our_crds();
    for (kind, their_crd) in &theirs {
        let our_crd = &ours[kind];
        assert_eq!(
            our_crd["metadata"]["name"], their_crd["metadata"]["name"],
            "{kind}: name"
        );
        for key in ["group", "scope"] {
            assert_eq!(
                our_crd["spec"][key], their_crd["spec"][key],
                "{kind}: {key}"
            );
        }
        assert_eq!(
            our_crd["spec"]["names"], their_crd["spec"]["names"],
            "{kind}: names"
        );
        let (tv, ov) = (
            &their_crd["spec"]["versions"][0],
            &our_crd["spec"]["versions"][0],
        );
        for key in ["name", "served", "storage", "subresources"] {
            assert_eq!(ov[key], tv[key], "{kind}: versions[0].{key}");
        }
        let columns = |v: &Value| -> Vec<Value> {
            v["additionalPrinterColumns"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        };
        assert_eq!(columns(ov), columns(tv), "{kind}: printer columns");
    }
}

async fn try_create(client: &kube::Client, ns: &str, object: &Value) -> Result<Value, String> {
    let gvk = GroupVersionKind::try_from(
        &serde_json::from_value::<kube::core::TypeMeta>(object.clone()).unwrap(),
    )
    .unwrap();
    let plural = match gvk.kind.as_str() {
        "Secret" => "secrets".to_owned(),
        kind if kind.ends_with('s') => format!("{}es", kind.to_lowercase()),
        kind => format!("{}s", kind.to_lowercase()),
    };
    let ar = ApiResource::from_gvk_with_plural(&gvk, &plural);
    let api = Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ar);
    let mut object = object.clone();
    object["metadata"]["namespace"] = ns.into();
    let object: DynamicObject = serde_json::from_value(object).unwrap();
    match api.create(&PostParams::default(), &object).await {
        Ok(created) => {
            let mut v = serde_json::to_value(created).unwrap();
            v.as_object_mut().unwrap().remove("metadata");
            Ok(v)
        }
        Err(kube::Error::Api(status)) => Err(status.message),
        Err(other) => panic!("{other}"),
    }
}

/// The examples plus objects that are invalid in different ways.
fn objects() -> Vec<(&'static str, Value)> {
    let ns = "placeholder";
    let mut objects = vec![
        ("secret", example_json("secret.yaml", ns)),
        ("machine class", example_json("machine-class.yaml", ns)),
        ("machine", example_json("machine.yaml", ns)),
        (
            "machine deployment",
            example_json("machine-deployment.yaml", ns),
        ),
    ];
    let mut o = example_json("machine-class.yaml", ns);
    o["metadata"]["name"] = "no-provider-spec".into();
    o.as_object_mut().unwrap().remove("providerSpec");
    objects.push(("class without providerSpec", o));
    let mut o = example_json("machine-class.yaml", ns);
    o["metadata"]["name"] = "int-capacity".into();
    o["nodeTemplate"]["capacity"]["cpu"] = json!(4);
    objects.push(("class with an integer capacity", o));
    let mut o = example_json("machine.yaml", ns);
    o["metadata"]["name"] = "string-retries".into();
    o["spec"]["maxEvictRetries"] = json!("many");
    objects.push(("machine with a string maxEvictRetries", o));
    let mut o = example_json("machine.yaml", ns);
    o["metadata"]["name"] = "unknown-field".into();
    o["spec"]["notAField"] = json!(true);
    objects.push(("machine with an unknown field (pruned)", o));
    let mut o = example_json("machine-deployment.yaml", ns);
    o["metadata"]["name"] = "no-template".into();
    o["spec"].as_object_mut().unwrap().remove("template");
    objects.push(("deployment without template", o));
    let mut o = example_json("machine-deployment.yaml", ns);
    o["metadata"]["name"] = "percent-surge".into();
    o["spec"]["strategy"]["rollingUpdate"]["maxSurge"] = json!("25%");
    objects.push(("deployment with a percentage maxSurge", o));
    let mut o = example_json("machine-deployment.yaml", ns);
    o["metadata"]["name"] = "float-replicas".into();
    o["spec"]["replicas"] = json!(1.5);
    objects.push(("deployment with fractional replicas", o));
    objects
}

#[tokio::test]
async fn gardeners_crds_and_ours_accept_the_same_objects() {
    // Ours on the shared control plane, Gardener's on a control plane of its own.
    let ours_cp = crate::common::control_plane();
    let theirs_cp = ControlPlane::start().unwrap();
    theirs_cp
        .apply_dir(&GardenerMcm::locate().unwrap().crds)
        .unwrap();

    let ours = ours_cp.client().await.unwrap();
    let theirs = theirs_cp.client().await.unwrap();
    let ours_ns = namespace(&ours, "compat").await;
    let theirs_ns = namespace(&theirs, "compat").await;

    let mut differences = Vec::new();
    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    for (what, object) in objects() {
        let a = try_create(&theirs, &theirs_ns, &object).await;
        let b = try_create(&ours, &ours_ns, &object).await;
        match (&a, &b) {
            (Ok(x), Ok(y)) if x == y => accepted.push(what),
            (Ok(x), Ok(y)) => differences.push(format!(
                "{what}: stored differently:\n  Gardener's: {x}\n  ours:       {y}"
            )),
            (Err(x), Err(_)) => refused.push(format!("{what}: {x}")),
            _ => differences.push(format!(
                "{what}: Gardener's CRD says {a:?}, ours says {b:?}"
            )),
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));
    // The examples and the valid variants must have been accepted, not refused by both.
    assert_eq!(
        accepted.len(),
        7,
        "accepted by both: {accepted:?}\nrefused by both:\n{}",
        refused.join("\n")
    );
    assert_eq!(refused.len(), 4, "refused by both:\n{}", refused.join("\n"));
}
