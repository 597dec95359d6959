//! Draining a Node before its VM goes (MCM `drain.go`, reduced): the `Terminating` node
//! condition, cordon, evictions that respect PodDisruptionBudgets (HTTP 429 is retried every
//! 20 s, up to the machine's maxEvictRetries, then the pod is deleted), a misconfigured budget
//! failing its pod at once, deletion with grace 0 when forced, and the VolumeAttachment
//! clean-up of a forced deletion. Not done (MCM does it): evicting pods with volumes one by one
//! and waiting for their volumes to detach and reattach.
//!
//! Every API call the drain makes is bounded ([`Target::call_timeout`], `--drain-call-timeout`,
//! 30 s): an API server that accepts a request and never answers fails that step with an error
//! naming it, and the machine's deletion retries, instead of holding a delete worker forever.
//! Deviation: MCM's client has no such bound.

use std::time::{Duration, Instant};

use futures::future::join_all;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::storage::v1::VolumeAttachment;
use kube::ResourceExt as _;
use kube::api::{Api, DeleteParams, EvictParams, ListParams, Patch, PatchParams};
use kube::core::{Selector, SelectorExt as _};

use super::status::now;

/// The cluster whose Nodes are drained, and how long any one API call may take.
#[derive(Clone)]
pub struct Target {
    pub client: kube::Client,
    pub call_timeout: Duration,
}

/// An API call the drain made that failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error("no answer from the API server within {0:?}")]
    Timeout(Duration),
}

impl CallError {
    /// The HTTP status the API server answered with, if it answered with an error status.
    fn code(&self) -> Option<u16> {
        match self {
            CallError::Kube(kube::Error::Api(s)) => Some(s.code),
            _ => None,
        }
    }
}

impl Target {
    /// `call`, failing with [`CallError::Timeout`] after the call timeout.
    async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, CallError> {
        match tokio::time::timeout(self.call_timeout, call).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(CallError::Timeout(self.call_timeout)),
        }
    }

    fn nodes(&self) -> Api<Node> {
        Api::all(self.client.clone())
    }
}

/// Why a drain did not finish.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("cordoning node {node}: {source}")]
    Cordon { node: String, source: CallError },
    #[error("listing pods of node {node}: {source}")]
    ListPods { node: String, source: CallError },
    /// Every pod that could not be removed, each with its cause.
    #[error("{}", join(.0))]
    Pods(Vec<PodError>),
}

fn join(errors: &[PodError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Why one pod could not be removed from a draining node (`pod` is `namespace/name`).
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("deleting pod {pod}: {source}")]
    Delete { pod: String, source: CallError },
    #[error(
        "evicting pod {pod}: PodDisruptionBudget {budget} is misconfigured: it expects no more healthy pods than it has and allows no disruption"
    )]
    MisconfiguredBudget { pod: String, budget: String },
    #[error("evicting pod {pod}: {source}")]
    Evict { pod: String, source: CallError },
    #[error("waiting for pod {pod}: {source}")]
    Wait { pod: String, source: CallError },
    #[error("pod {pod} was evicted but did not terminate in time")]
    NotTerminated { pod: String },
}

const EVICT_RETRY: Duration = Duration::from_secs(20);
const POD_POLL: Duration = Duration::from_secs(5);

/// Set the node condition `Terminating` (reason ScaleDown), keeping an existing reason.
/// A missing Node is not an error.
pub async fn set_terminating_condition(target: &Target, node: &str) -> Result<(), CallError> {
    let nodes = target.nodes();
    let Some(n) = target.bounded(nodes.get_opt(node)).await? else {
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
    target
        .bounded(nodes.patch_status(node, &PatchParams::default(), &Patch::Strategic(&patch)))
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

/// Cordon the node and evict (or, when `forced`, delete) its pods within `timeout`; a pod whose
/// eviction was refused `max_evict_retries` times is deleted.
pub async fn run(
    target: &Target,
    node: &str,
    forced: bool,
    timeout: Duration,
    max_evict_retries: u32,
) -> Result<(), DrainError> {
    let nodes = target.nodes();
    // Cordon; a Node that cannot be read is skipped silently, as MCM does.
    if let Ok(n) = target.bounded(nodes.get(node)).await
        && n.spec.as_ref().and_then(|s| s.unschedulable) != Some(true)
    {
        let patch = serde_json::json!({ "spec": { "unschedulable": true } });
        target
            .bounded(nodes.patch(node, &PatchParams::default(), &Patch::Merge(&patch)))
            .await
            .map_err(|source| DrainError::Cordon {
                node: node.to_string(),
                source,
            })?;
    }
    let pods: Api<Pod> = Api::all(target.client.clone());
    let on_node = target
        .bounded(pods.list(&ListParams::default().fields(&format!("spec.nodeName={node}"))))
        .await
        .map_err(|source| DrainError::ListPods {
            node: node.to_string(),
            source,
        })?;
    let victims: Vec<Pod> = on_node.items.into_iter().filter(|p| !skipped(p)).collect();
    tracing::debug!(node, pods = victims.len(), "draining");
    if victims.is_empty() {
        return Ok(());
    }
    let deadline = Instant::now() + timeout;
    let results = join_all(
        victims
            .iter()
            .map(|p| remove_pod(target, p, forced, deadline, max_evict_retries)),
    )
    .await;
    let errors: Vec<PodError> = results.into_iter().filter_map(Result::err).collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(DrainError::Pods(errors))
    }
}

async fn remove_pod(
    target: &Target,
    pod: &Pod,
    forced: bool,
    deadline: Instant,
    max_evict_retries: u32,
) -> Result<(), PodError> {
    let ns = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let id = || format!("{ns}/{name}");
    let api: Api<Pod> = Api::namespaced(target.client.clone(), &ns);
    let delete = || async {
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        };
        match target.bounded(api.delete(&name, &params)).await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some(404) => Ok(()),
            Err(source) => Err(PodError::Delete { pod: id(), source }),
        }
    };
    if forced {
        return delete().await;
    }
    let mut attempts = 0;
    loop {
        let t = Instant::now();
        let evicted = target
            .bounded(api.evict(&name, &EvictParams::default()))
            .await;
        tracing::debug!(pod = %id(), took = ?t.elapsed(), "eviction: {evicted:?}");
        match evicted {
            Ok(_) => break,
            Err(e) if e.code() == Some(404) => return Ok(()),
            Err(e) if e.code() == Some(429) => {
                // A PodDisruptionBudget says not now; one that can never say yes fails the pod.
                if let Some(pdb) = misconfigured_budget(target, pod).await {
                    return Err(PodError::MisconfiguredBudget {
                        pod: id(),
                        budget: format!("{ns}/{pdb}"),
                    });
                }
                attempts += 1;
                if attempts >= max_evict_retries || Instant::now() + EVICT_RETRY >= deadline {
                    tracing::info!(pod = %format!("{ns}/{name}"), attempts, "evictions refused by the disruption budget: deleting the pod");
                    return delete().await;
                }
                tokio::time::sleep(EVICT_RETRY).await;
            }
            Err(source) => return Err(PodError::Evict { pod: id(), source }),
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
        match target.bounded(api.get_opt(&name)).await {
            Ok(None) => return Ok(()),
            Ok(Some(p)) if p.uid() != uid => return Ok(()),
            Ok(Some(_)) => {}
            Err(source) => return Err(PodError::Wait { pod: id(), source }),
        }
        if Instant::now() >= until {
            return Err(PodError::NotTerminated { pod: id() });
        }
        tokio::time::sleep(POD_POLL).await;
    }
}

/// The name of a PodDisruptionBudget that selects `pod` and is misconfigured.
async fn misconfigured_budget(target: &Target, pod: &Pod) -> Option<String> {
    let api: Api<PodDisruptionBudget> =
        Api::namespaced(target.client.clone(), &pod.namespace().unwrap_or_default());
    let budgets = target
        .bounded(api.list(&ListParams::default()))
        .await
        .ok()?;
    budgets
        .items
        .iter()
        .filter(|b| selects(b, pod) && is_misconfigured(b))
        .map(|b| b.name_any())
        .next()
}

fn selects(budget: &PodDisruptionBudget, pod: &Pod) -> bool {
    budget
        .spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .and_then(|s| Selector::try_from(s).ok())
        .is_some_and(|s| s.matches(pod.labels()))
}

/// MCM `isMisconfiguredPdb`: the budget is up to date, expects pods, has at least as many
/// healthy as expected, and still allows no disruption: no eviction will ever pass.
pub fn is_misconfigured(budget: &PodDisruptionBudget) -> bool {
    let Some(status) = &budget.status else {
        return false;
    };
    let n = |v: Option<i32>| v.unwrap_or(0);
    budget.metadata.generation == status.observed_generation
        && n(status.expected_pods) > 0
        && n(status.current_healthy) >= n(status.expected_pods)
        && n(status.disruptions_allowed) == 0
}

/// What the VolumeAttachment step found.
pub enum VolumeAttachments {
    NodeMissing(String),
    AlreadyDetached,
    Deleted(usize),
    NoneLive,
}

pub async fn delete_volume_attachments(
    target: &Target,
    node: &str,
) -> Result<VolumeAttachments, CallError> {
    let n = match target.bounded(target.nodes().get(node)).await {
        Ok(n) => n,
        Err(e) if e.code().is_some() => return Ok(VolumeAttachments::NodeMissing(e.to_string())),
        Err(e) => return Err(e),
    };
    if n.status
        .as_ref()
        .and_then(|s| s.volumes_attached.as_ref())
        .is_none_or(Vec::is_empty)
    {
        return Ok(VolumeAttachments::AlreadyDetached);
    }
    let api: Api<VolumeAttachment> = Api::all(target.client.clone());
    let live: Vec<VolumeAttachment> = target
        .bounded(api.list(&ListParams::default()))
        .await?
        .items
        .into_iter()
        .filter(|va| va.spec.node_name == node && va.metadata.deletion_timestamp.is_none())
        .collect();
    if live.is_empty() {
        return Ok(VolumeAttachments::NoneLive);
    }
    for va in &live {
        match target
            .bounded(api.delete(&va.name_any(), &DeleteParams::default()))
            .await
        {
            Ok(_) => {}
            Err(e) if e.code() == Some(404) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(VolumeAttachments::Deleted(live.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(
        generation: i64,
        observed: i64,
        expected: i32,
        healthy: i32,
        allowed: i32,
    ) -> PodDisruptionBudget {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": "b", "generation": generation },
            "spec": { "minAvailable": 1 },
            "status": {
                "observedGeneration": observed,
                "expectedPods": expected,
                "currentHealthy": healthy,
                "desiredHealthy": expected,
                "disruptionsAllowed": allowed,
            },
        }))
        .unwrap()
    }

    /// An API server that accepts connections and never answers (a fake: a real one cannot be
    /// made to hang on cue). The drain's calls give up after the call timeout, with an error
    /// naming the step, instead of holding the reconcile forever.
    #[tokio::test]
    async fn a_drain_against_an_api_server_that_never_answers_fails_with_a_timeout() {
        crate::install_crypto_provider();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url: http::Uri = format!("http://{}", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                open.push(conn); // read nothing, answer nothing
            }
        });
        let client = kube::Client::try_from(kube::Config::new(url)).unwrap();
        let target = Target {
            client,
            call_timeout: Duration::from_millis(300),
        };
        let drained = tokio::time::timeout(
            Duration::from_secs(20),
            run(&target, "node-1", false, Duration::from_secs(3600), 360),
        )
        .await
        .expect("the drain returned");
        let err = drained.expect_err("nothing answered");
        assert!(matches!(err, DrainError::ListPods { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "listing pods of node node-1: no answer from the API server within 300ms"
        );
        let condition = tokio::time::timeout(
            Duration::from_secs(20),
            set_terminating_condition(&target, "node-1"),
        )
        .await
        .expect("the condition update returned");
        assert!(matches!(condition, Err(CallError::Timeout(_))));
        held.abort();
    }

    #[test]
    fn misconfigured_budgets_as_mcm_defines_them() {
        assert!(
            is_misconfigured(&budget(1, 1, 1, 1, 0)),
            "all healthy, none allowed"
        );
        assert!(
            !is_misconfigured(&budget(1, 1, 1, 0, 0)),
            "unhealthy pods: waiting helps"
        );
        assert!(!is_misconfigured(&budget(1, 1, 2, 2, 1)), "allows one");
        assert!(
            !is_misconfigured(&budget(2, 1, 1, 1, 0)),
            "status not up to date"
        );
        assert!(!is_misconfigured(&budget(1, 1, 0, 0, 0)), "expects no pods");
    }

    #[test]
    fn a_budget_selects_pods_by_its_label_selector() {
        let mut b = budget(1, 1, 1, 1, 0);
        b.spec.as_mut().unwrap().selector = Some(
            serde_json::from_value(serde_json::json!({
                "matchLabels": { "app": "db" },
            }))
            .unwrap(),
        );
        let pod = |labels: serde_json::Value| -> Pod {
            serde_json::from_value(
                serde_json::json!({ "metadata": { "name": "p", "labels": labels } }),
            )
            .unwrap()
        };
        assert!(selects(
            &b,
            &pod(serde_json::json!({ "app": "db", "x": "y" }))
        ));
        assert!(!selects(&b, &pod(serde_json::json!({ "app": "web" }))));
    }
}
