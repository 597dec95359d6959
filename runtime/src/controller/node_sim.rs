//! A stand-in for the kubelet, for tests and `just run` only: no kubelet can boot on a
//! simulated VM, so this registers the Node a kubelet would register after the VM boots (as
//! kwok does).
//!
//! For each Machine that carries its `node` label and providerID, it asks the machine's
//! provider (GetMachineStatus) whether the VM is live and answers that node name; if so it
//! creates the Node (name = the label, `spec.providerID`, the VM's addresses) and marks it
//! Ready. It registers a Node only after the label exists (a kubelet registers after boot;
//! an earlier Node would make the controller treat the VM as using an old node object), once
//! per node name, and never deletes Nodes: the controller does. The VMs of one scan join side
//! by side, as the kubelets of many booting VMs would.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Node, NodeSpec};
use kube::ResourceExt as _;
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use machine_api::{Machine, MachineClass};

use super::machine::{driver_class, driver_machine};
use super::status::now;
use super::{Context, secrets};
use crate::driver::MachineRequest;

/// Nodes registered side by side in one scan.
const CONCURRENT_JOINS: usize = 16;

/// Run until `shutdown` resolves, scanning every `interval`.
pub async fn run(ctx: Arc<Context>, interval: Duration, shutdown: impl Future<Output = ()>) {
    let Some(target) = ctx.target.clone() else {
        tracing::warn!("node simulation needs a target cluster; not started");
        return;
    };
    let mut registered = HashSet::new();
    tokio::pin!(shutdown);
    loop {
        if let Err(e) = scan(&ctx, &target, &mut registered).await {
            tracing::debug!("node simulation scan: {e}");
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

async fn scan(
    ctx: &Context,
    target: &kube::Client,
    registered: &mut HashSet<String>,
) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(target.clone());
    // A Node that exists was registered (by us before a restart, or by someone else).
    registered.extend(
        nodes
            .list_metadata(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter_map(|n| n.metadata.name),
    );
    let waiting: Vec<(Machine, String)> = ctx
        .machines()
        .list(&ListParams::default())
        .await?
        .into_iter()
        .filter(|m| m.metadata.deletion_timestamp.is_none() && !m.spec.provider_id.is_empty())
        .filter_map(|m| {
            let node = m.node_name().filter(|n| !n.is_empty())?.to_string();
            (!registered.contains(&node)).then_some((m, node))
        })
        .collect();
    // Classes and their secrets once per scan; the kubelets of many VMs boot side by side.
    let mut classes = HashMap::new();
    for (m, _) in &waiting {
        let name = &m.spec.class.name;
        if !classes.contains_key(name)
            && let Some(class) = ctx.classes().get_opt(name).await?
        {
            let secret =
                secrets::merged_secret(&ctx.control, &class, &ctx.config.namespace).await?;
            classes.insert(name.clone(), (class, secret));
        }
    }
    let joined: Vec<String> = futures::stream::iter(waiting)
        .map(|(machine, node_name)| {
            let (nodes, classes) = (&nodes, &classes);
            async move {
                let (class, secret) = classes.get(&machine.spec.class.name)?;
                match register(ctx, nodes, &machine, class, secret, &node_name).await {
                    Ok(true) => {
                        tracing::info!(machine = %machine.name_any(), node = %node_name, "simulated kubelet registered the node");
                        Some(node_name)
                    }
                    Ok(false) => None,
                    Err(e) => {
                        tracing::debug!(node = %node_name, "simulated node registration: {e}");
                        None
                    }
                }
            }
        })
        .buffer_unordered(CONCURRENT_JOINS)
        .filter_map(std::future::ready)
        .collect()
        .await;
    registered.extend(joined);
    Ok(())
}

/// Register the Node if the VM is live; `Ok(false)` when it is not (yet).
async fn register(
    ctx: &Context,
    nodes: &Api<Node>,
    machine: &Machine,
    class: &MachineClass,
    secret: &BTreeMap<String, Vec<u8>>,
    node_name: &str,
) -> Result<bool, kube::Error> {
    let Some(provider) = ctx.registry.get(&class.spec.provider) else {
        return Ok(false);
    };
    let req = MachineRequest {
        machine: driver_machine(machine),
        machine_class: driver_class(class),
        secret: secret.clone(),
    };
    let vm = match provider.get_machine_status(&req).await {
        Ok(vm) if vm.node_name == node_name && vm.provider_id == machine.spec.provider_id => vm,
        Ok(_) | Err(_) => return Ok(false),
    };
    let node = Node {
        metadata: ObjectMeta {
            name: Some(node_name.to_string()),
            labels: Some([("kubernetes.io/hostname".to_string(), node_name.to_string())].into()),
            annotations: Some([("mcm-wasm.dev/simulated".to_string(), "true".to_string())].into()),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            provider_id: Some(vm.provider_id.clone()),
            ..Default::default()
        }),
        ..Default::default()
    };
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(e),
    }
    let mut addresses: Vec<serde_json::Value> = vm
        .addresses
        .iter()
        .map(|a| serde_json::json!({ "type": a.kind, "address": a.address }))
        .collect();
    if !vm.addresses.iter().any(|a| a.kind == "Hostname") {
        addresses.push(serde_json::json!({ "type": "Hostname", "address": node_name }));
    }
    let t = now();
    let status = serde_json::json!({
        "status": {
            "conditions": [{
                "type": "Ready",
                "status": "True",
                "reason": "KubeletReady",
                "message": "kubelet is posting ready status (simulated by mcm-wasm)",
                "lastHeartbeatTime": t,
                "lastTransitionTime": t,
            }],
            "addresses": addresses,
        }
    });
    nodes
        .patch_status(
            node_name,
            &PatchParams::default(),
            &Patch::Strategic(&status),
        )
        .await?;
    Ok(true)
}
