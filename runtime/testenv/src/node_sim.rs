//! A stand-in for the kubelet, for tests and `just run` only: no kubelet can boot on a
//! simulated VM, so this registers the Node a kubelet would register after the VM boots (as
//! kwok does).
//!
//! Not part of the controller: tests, benchmarks and `just run` start it beside the controller
//! (`NodeSim::run`). For each Machine that carries its `node` label and providerID, it asks a
//! [`Liveness`] (in tests: the machine's provider, GetMachineStatus; [`AlwaysLive`] where no
//! cloud can be asked) whether the VM is live and answers that node name; if so it
//! creates the Node (name = the label, `spec.providerID`, the VM's addresses) and marks it
//! Ready. It registers a Node only after the label exists (a kubelet registers after boot;
//! an earlier Node would make the controller treat the VM as using an old node object), once
//! per (node name, providerID) — moto reuses a terminated VM's IP, so a new VM can get the
//! name of an earlier one: its Node is registered once the earlier Node is gone — and never
//! deletes Nodes: the controller does. One scan asks about every waiting machine at once (a
//! batching provider answers them in a few cloud requests), then the live VMs' Nodes register
//! side by side, as the kubelets of many booting VMs would.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Node, NodeSpec};
use kube::ResourceExt as _;
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use machine_api::{Machine, MachineClass};

/// Nodes registered side by side in one scan.
const CONCURRENT_JOINS: usize = 16;

/// A VM as its kubelet would report it.
#[derive(Clone, Debug, Default)]
pub struct Vm {
    pub provider_id: String,
    pub node_name: String,
    /// (type, address), e.g. ("InternalIP", "10.0.0.1").
    pub addresses: Vec<(String, String)>,
}

/// Whether a machine's VM is live, and what it is: a kubelet registers only on a booted VM.
#[async_trait::async_trait]
pub trait Liveness: Send + Sync {
    async fn vm(&self, machine: &Machine, class: &MachineClass) -> Option<Vm>;
}

/// Every machine with a providerID and a node label is live (no cloud to ask).
pub struct AlwaysLive;

#[async_trait::async_trait]
impl Liveness for AlwaysLive {
    async fn vm(&self, machine: &Machine, _class: &MachineClass) -> Option<Vm> {
        Some(Vm {
            provider_id: machine.spec.provider_id.clone(),
            node_name: machine.node_name()?.to_string(),
            addresses: Vec::new(),
        })
    }
}

/// Where the simulated kubelets look and register.
#[derive(Clone)]
pub struct NodeSim {
    /// The cluster of the Machines and MachineClasses.
    pub control: kube::Client,
    /// The cluster the Nodes join.
    pub target: kube::Client,
    pub namespace: String,
    pub liveness: Arc<dyn Liveness>,
}

impl NodeSim {
    /// Run until `shutdown` resolves, scanning every `interval`.
    pub async fn run(self, interval: Duration, shutdown: impl Future<Output = ()>) {
        let mut registered: HashSet<(String, String)> = HashSet::new();
        tokio::pin!(shutdown);
        loop {
            if let Err(e) = self.scan(&mut registered).await {
                tracing::debug!("node simulation scan: {e}");
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }

    async fn scan(&self, registered: &mut HashSet<(String, String)>) -> Result<(), kube::Error> {
        let nodes: Api<Node> = Api::all(self.target.clone());
        // A Node that exists was registered (by us before a restart, or by someone else).
        registered.extend(
            nodes
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .filter_map(|n| {
                    let provider_id = n.spec.as_ref()?.provider_id.clone().unwrap_or_default();
                    Some((n.metadata.name?, provider_id))
                }),
        );
        let machines: Api<Machine> = Api::namespaced(self.control.clone(), &self.namespace);
        let classes: Api<MachineClass> = Api::namespaced(self.control.clone(), &self.namespace);
        let waiting: Vec<(Machine, String)> = machines
            .list(&ListParams::default())
            .await?
            .into_iter()
            .filter(|m| m.metadata.deletion_timestamp.is_none() && !m.spec.provider_id.is_empty())
            .filter_map(|m| {
                let node = m.node_name().filter(|n| !n.is_empty())?.to_string();
                let key = (node.clone(), m.spec.provider_id.clone());
                (!registered.contains(&key)).then_some((m, node))
            })
            .collect();
        // Classes once per scan; the kubelets of many VMs boot side by side.
        let mut by_name = HashMap::new();
        for (m, _) in &waiting {
            let name = &m.spec.class.name;
            if !by_name.contains_key(name)
                && let Some(class) = classes.get_opt(name).await?
            {
                by_name.insert(name.clone(), class);
            }
        }
        // Every waiting machine's question at once: the provider's batch answers them together.
        let live: Vec<(Machine, String, Vm)> =
            futures::future::join_all(waiting.into_iter().map(|(machine, node_name)| {
                let by_name = &by_name;
                async move {
                    let class = by_name.get(&machine.spec.class.name)?;
                    let vm = self.liveness.vm(&machine, class).await?;
                    (vm.node_name == node_name && vm.provider_id == machine.spec.provider_id)
                        .then_some((machine, node_name, vm))
                }
            }))
            .await
            .into_iter()
            .flatten()
            .collect();
        let joined: Vec<(String, String)> = futures::stream::iter(live)
            .map(|(machine, node_name, vm)| {
                let nodes = &nodes;
                async move {
                    match self.register(nodes, &node_name, vm).await {
                        Ok(true) => {
                            tracing::info!(machine = %machine.name_any(), node = %node_name, "simulated kubelet registered the node");
                            Some((node_name, machine.spec.provider_id.clone()))
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

    /// Register the Node of the live `vm`; `Ok(false)` when an earlier VM's Node of the same
    /// name is still there.
    async fn register(
        &self,
        nodes: &Api<Node>,
        node_name: &str,
        vm: Vm,
    ) -> Result<bool, kube::Error> {
        let node = Node {
            metadata: ObjectMeta {
                name: Some(node_name.to_string()),
                labels: Some(
                    [("kubernetes.io/hostname".to_string(), node_name.to_string())].into(),
                ),
                annotations: Some(
                    [("mcm-wasm.dev/simulated".to_string(), "true".to_string())].into(),
                ),
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
            Err(kube::Error::Api(s)) if s.code == 409 => {
                // A Node of this name exists: ours from an earlier scan, or an earlier VM's
                // that the controller has not deleted yet (then wait for it to go).
                let existing = nodes.get(node_name).await?;
                let existing_id = existing
                    .spec
                    .and_then(|s| s.provider_id)
                    .unwrap_or_default();
                if existing_id != vm.provider_id {
                    return Ok(false);
                }
            }
            Err(e) => return Err(e),
        }
        let mut addresses: Vec<serde_json::Value> = vm
            .addresses
            .iter()
            .map(|(kind, address)| serde_json::json!({ "type": kind, "address": address }))
            .collect();
        if !vm.addresses.iter().any(|(kind, _)| kind == "Hostname") {
            addresses.push(serde_json::json!({ "type": "Hostname", "address": node_name }));
        }
        let t = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        );
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
}
