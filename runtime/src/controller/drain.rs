//! Draining a Node before its VM goes (MCM `drain.go`, reduced): the `Terminating` node
//! condition, cordon, evictions that respect PodDisruptionBudgets (HTTP 429 is retried every
//! 20 s), deletion with grace 0 when forced or when evictions run out, and the VolumeAttachment
//! clean-up of a forced deletion.

use std::time::{Duration, Instant};

use futures::future::join_all;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::storage::v1::VolumeAttachment;
use kube::ResourceExt as _;
use kube::api::{Api, DeleteParams, EvictParams, ListParams, Patch, PatchParams};

use super::status::now;

const EVICT_RETRY: Duration = Duration::from_secs(20);
const POD_POLL: Duration = Duration::from_secs(5);

/// Set the node condition `Terminating` (reason ScaleDown), keeping an existing reason.
/// A missing Node is not an error.
pub async fn set_terminating_condition(
    target: &kube::Client,
    node: &str,
) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(target.clone());
    let Some(n) = nodes.get_opt(node).await? else {
        return Ok(());
    };
    let existing = n
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Terminating"))
        .cloned();
    let (reason, message) = match &existing {
        Some(c) => (
            c.reason.clone().unwrap_or_default(),
            c.message.clone().unwrap_or_default(),
        ),
        None => (
            "ScaleDown".to_string(),
            "Machine Controller is scaling down machine".to_string(),
        ),
    };
    let patch = serde_json::json!({
        "status": { "conditions": [{
            "type": "Terminating",
            "status": "True",
            "reason": reason,
            "message": message,
            "lastTransitionTime": now(),
            "lastHeartbeatTime": now(),
        }]}
    });
    nodes
        .patch_status(node, &PatchParams::default(), &Patch::Strategic(&patch))
        .await?;
    Ok(())
}

fn skipped(pod: &Pod) -> bool {
    let mirror = pod
        .annotations()
        .contains_key("kubernetes.io/config.mirror");
    let daemon = pod
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && o.kind == "DaemonSet");
    mirror || daemon
}

/// Cordon the node and evict (or, when `forced`, delete) its pods within `timeout`.
pub async fn run(
    target: &kube::Client,
    node: &str,
    forced: bool,
    timeout: Duration,
) -> Result<(), String> {
    let nodes: Api<Node> = Api::all(target.clone());
    // Cordon; a Node that cannot be read is skipped silently, as MCM does.
    if let Ok(n) = nodes.get(node).await
        && n.spec.as_ref().and_then(|s| s.unschedulable) != Some(true)
    {
        let patch = serde_json::json!({ "spec": { "unschedulable": true } });
        nodes
            .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| format!("cordoning node {node}: {e}"))?;
    }
    let pods: Api<Pod> = Api::all(target.clone());
    let on_node = pods
        .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
        .await
        .map_err(|e| format!("listing pods of node {node}: {e}"))?;
    let victims: Vec<Pod> = on_node.items.into_iter().filter(|p| !skipped(p)).collect();
    if victims.is_empty() {
        return Ok(());
    }
    let deadline = Instant::now() + timeout;
    let results = join_all(
        victims
            .iter()
            .map(|p| remove_pod(target, p, forced, deadline)),
    )
    .await;
    let errors: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

async fn remove_pod(
    target: &kube::Client,
    pod: &Pod,
    forced: bool,
    deadline: Instant,
) -> Result<(), String> {
    let ns = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let api: Api<Pod> = Api::namespaced(target.clone(), &ns);
    let delete = || async {
        match api
            .delete(
                &name,
                &DeleteParams {
                    grace_period_seconds: Some(0),
                    ..Default::default()
                },
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(format!("deleting pod {ns}/{name}: {e}")),
        }
    };
    if forced {
        return delete().await;
    }
    loop {
        match api.evict(&name, &EvictParams::default()).await {
            Ok(_) => break,
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 429 => {
                // A PodDisruptionBudget says not now.
                if Instant::now() + EVICT_RETRY >= deadline {
                    return Err(format!(
                        "evicting pod {ns}/{name}: the disruption budget did not allow it before the drain timeout"
                    ));
                }
                tokio::time::sleep(EVICT_RETRY).await;
            }
            Err(e) => return Err(format!("evicting pod {ns}/{name}: {e}")),
        }
    }
    // Wait for the pod to go: its grace period plus 30 s, bounded by the drain deadline.
    let grace = pod
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(30)
        .max(0) as u64;
    let until = (Instant::now() + Duration::from_secs(grace + 30)).min(deadline);
    let uid = pod.uid();
    loop {
        match api.get_opt(&name).await {
            Ok(None) => return Ok(()),
            Ok(Some(p)) if p.uid() != uid => return Ok(()),
            Ok(Some(_)) => {}
            Err(e) => return Err(format!("waiting for pod {ns}/{name}: {e}")),
        }
        if Instant::now() >= until {
            return Err(format!(
                "pod {ns}/{name} was evicted but did not terminate in time"
            ));
        }
        tokio::time::sleep(POD_POLL).await;
    }
}

/// What the VolumeAttachment step found.
pub enum VolumeAttachments {
    NodeMissing(String),
    AlreadyDetached,
    Deleted(usize),
    NoneLive,
}

pub async fn delete_volume_attachments(
    target: &kube::Client,
    node: &str,
) -> Result<VolumeAttachments, kube::Error> {
    let nodes: Api<Node> = Api::all(target.clone());
    let n = match nodes.get(node).await {
        Ok(n) => n,
        Err(e @ kube::Error::Api(_)) => return Ok(VolumeAttachments::NodeMissing(e.to_string())),
        Err(e) => return Err(e),
    };
    if n.status
        .as_ref()
        .and_then(|s| s.volumes_attached.as_ref())
        .is_none_or(Vec::is_empty)
    {
        return Ok(VolumeAttachments::AlreadyDetached);
    }
    let api: Api<VolumeAttachment> = Api::all(target.clone());
    let live: Vec<VolumeAttachment> = api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|va| va.spec.node_name == node && va.metadata.deletion_timestamp.is_none())
        .collect();
    if live.is_empty() {
        return Ok(VolumeAttachments::NoneLive);
    }
    for va in &live {
        match api.delete(&va.name_any(), &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(VolumeAttachments::Deleted(live.len()))
}
