//! The deletion flow (MCM `triggerDeletionFlow`): a state machine driven by the marker at the
//! end of `lastOperation.description`, so a restarted controller resumes where it stopped.
//! Every step writes MCM's description; a step that succeeds goes straight on to the next one
//! (MCM requeues after 5 s in between), a step that fails requeues with MCM's period.

use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt as _;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use machine_api::{
    LastOperation, MC_NODE_FINALIZER, Machine, MachineOperationType as Op, MachinePhase as Phase,
    MachineState as State, MachineStatus, NODE_LABEL_KEY,
};

use super::machine::Job;
use super::retry::{self, Retry};
use super::{Error, drain, status};
use mcm_driver::{Code, Operation};

/// The markers, in the order MCM checks them.
pub const GET_VM_STATUS: &str = "Set machine status to termination. Now, getting VM Status";
pub const INITIATE_DRAIN: &str = "Initiate node drain";
pub const DELETE_VOLUME_ATTACHMENTS: &str = "Delete Volume Attachments";
pub const INITIATE_VM_DELETION: &str = "Initiate VM deletion";
pub const INITIATE_NODE_DELETION: &str = "Initiate node object deletion";
pub const INITIATE_FINALIZER_REMOVAL: &str = "Initiate machine object finalizer removal";

/// The label that forces a deletion (drain ignores failures, pods are deleted).
pub const FORCE_DELETION_LABEL: &str = "force-deletion";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    SetTerminating,
    GetVmStatus,
    Drain,
    DeleteVolumeAttachments,
    DeleteVm,
    DeleteNode,
    RemoveFinalizer,
}

/// Which step a description leads to (MCM's `switch strings.Contains(...)`).
pub fn next_step(description: &str, phase: Option<&Phase>) -> Step {
    if phase != Some(&Phase::Terminating) {
        return Step::SetTerminating;
    }
    if description.contains(GET_VM_STATUS) {
        Step::GetVmStatus
    } else if description.contains(INITIATE_DRAIN) {
        Step::Drain
    } else if description.contains(DELETE_VOLUME_ATTACHMENTS) {
        Step::DeleteVolumeAttachments
    } else if description.contains(INITIATE_VM_DELETION) {
        Step::DeleteVm
    } else if description.contains(INITIATE_NODE_DELETION) {
        Step::DeleteNode
    } else if description.contains(INITIATE_FINALIZER_REMOVAL) {
        Step::RemoveFinalizer
    } else {
        Step::SetTerminating
    }
}

/// What one step decided.
enum Outcome {
    /// Written with state Processing: go on.
    Next,
    /// Requeue after this period (status written or not).
    Retry(Duration, String),
}

/// Go `strconv.ParseBool`.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// How a deletion pass ended.
#[derive(Debug)]
pub enum Pass {
    /// The last step is reached: the Machine's finalizer can go.
    Done,
    /// A step has to wait: come back after this.
    Requeue(Action),
}

/// Run the deletion steps until one has to wait or the last one is reached.
pub async fn reconcile(job: &Job, machine: Arc<Machine>) -> Result<Pass, Error> {
    let mut machine = (*machine).clone();
    // At most one pass through every step per reconcile.
    for _ in 0..8 {
        let step = next_step(status::description(&machine), machine.phase());
        tracing::debug!(machine = %job.name, ?step, "deletion step");
        if step == Step::RemoveFinalizer {
            tracing::info!(machine = %job.name, "deletion complete: removing the machine finalizer");
            return Ok(Pass::Done);
        }
        match run_step(job, &mut machine, step).await? {
            Outcome::Next => match job.ctx.config.deletion_step_pause {
                Some(pause) => {
                    let reason = "next deletion step (paced as Gardener's machine controller)";
                    return Ok(Pass::Requeue(retry::requeue(&job.name, pause, reason)));
                }
                None => continue,
            },
            Outcome::Retry(after, reason) => {
                return Ok(Pass::Requeue(retry::requeue(&job.name, after, &reason)));
            }
        }
    }
    Ok(Pass::Requeue(retry::requeue(
        &job.name,
        Retry::Short.period(),
        "deletion in progress",
    )))
}

/// Write a deletion lastOperation (currentStatus kept, errorCode empty) and update the local copy.
async fn record(
    job: &Job,
    machine: &mut Machine,
    description: String,
    state: State,
    type_: Op,
) -> Result<(), Error> {
    let mut st: MachineStatus = machine.status.clone().unwrap_or_default();
    st.last_operation = status::last_op(description, state, type_, "");
    let written = status::write(&job.api, &job.name, &st).await?;
    machine.status = written.status;
    Ok(())
}

async fn processing(
    job: &Job,
    machine: &mut Machine,
    description: String,
) -> Result<Outcome, Error> {
    record(job, machine, description, State::Processing, Op::Delete).await?;
    Ok(Outcome::Next)
}

async fn failed(
    job: &Job,
    machine: &mut Machine,
    description: String,
    after: Retry,
) -> Result<Outcome, Error> {
    record(job, machine, description.clone(), State::Failed, Op::Delete).await?;
    Ok(Outcome::Retry(after.period(), description))
}

async fn run_step(job: &Job, machine: &mut Machine, step: Step) -> Result<Outcome, Error> {
    match step {
        Step::SetTerminating => set_terminating(job, machine).await,
        Step::GetVmStatus => get_vm_status(job, machine).await,
        Step::Drain => drain_step(job, machine).await,
        Step::DeleteVolumeAttachments => volume_attachments(job, machine).await,
        Step::DeleteVm => delete_vm(job, machine).await,
        Step::DeleteNode => delete_node(job, machine).await,
        Step::RemoveFinalizer => Ok(Outcome::Next),
    }
}

async fn set_terminating(job: &Job, machine: &mut Machine) -> Result<Outcome, Error> {
    let mut st = machine.status.clone().unwrap_or_default();
    st.current_status = status::current(Phase::Terminating, None);
    st.last_operation = status::last_op(GET_VM_STATUS, State::Processing, Op::Delete, "");
    let written = status::write(&job.api, &job.name, &st).await?;
    machine.status = written.status;
    tracing::info!(machine = %job.name, "machine terminating");
    Ok(Outcome::Next)
}

async fn get_vm_status(job: &Job, machine: &mut Machine) -> Result<Outcome, Error> {
    let Some(nodes) = job.ctx.nodes() else {
        return processing(
            job,
            machine,
            format!("Running without target cluster, skipping node drain and volume attachment deletion. {INITIATE_VM_DELETION}"),
        )
        .await;
    };
    let secret = job.secret().await?;
    let got = job
        .timed(
            Operation::GetMachineStatus,
            job.ctx
                .batcher
                .get_machine_status(&job.provider, job.request(machine, secret)),
        )
        .await;
    job.driver_event(machine, Operation::GetMachineStatus, &got, "")
        .await;
    match got {
        Ok(r) => {
            if machine.node_name().is_none_or(str::is_empty) {
                // The node: one labelled with the machine's name, else the driver's answer.
                let by_label = nodes
                    .list(&kube::api::ListParams::default().labels(&format!("node.gardener.cloud/machine-name={}", job.name)))
                    .await?
                    .items
                    .into_iter()
                    .next()
                    .map(|n| n.name_any());
                let node = by_label.unwrap_or(r.node_name);
                if !node.is_empty() {
                    let patch = serde_json::json!({ "metadata": { "labels": { NODE_LABEL_KEY: node } } });
                    let updated = job.api.patch(&job.name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
                    machine.metadata.labels = updated.metadata.labels;
                }
            }
            processing(job, machine, INITIATE_DRAIN.to_string()).await
        }
        Err(e) => match e.code {
            Code::Unimplemented => processing(job, machine, INITIATE_DRAIN.to_string()).await,
            Code::NotFound => {
                processing(job, machine, format!("VM was not found at provider. Moving forward to node drain. {INITIATE_DRAIN}")).await
            }
            Code::Uninitialized => {
                processing(job, machine, format!("VM instance was not initialized. Moving forward to node drain. {INITIATE_DRAIN}"))
                    .await
            }
            c if retry::is_transient(c) => {
                failed(
                    job,
                    machine,
                    format!("Error occurred with decoding machine error status while getting VM status, aborting with retry. {GET_VM_STATUS}"),
                    Retry::Short,
                )
                .await
            }
            _ => {
                failed(
                    job,
                    machine,
                    format!(
                        "Error occurred with decoding machine error status while getting VM status, aborting without retry. machine code: {e} {GET_VM_STATUS}"
                    ),
                    Retry::Medium,
                )
                .await
            }
        },
    }
}

fn is_forced(job: &Job, machine: &Machine) -> bool {
    let label = machine
        .labels()
        .get(FORCE_DELETION_LABEL)
        .and_then(|v| parse_bool(v))
        .unwrap_or(false);
    let timeout = machine
        .spec
        .configuration
        .drain_timeout
        .as_deref()
        .and_then(|t| machine_api::parse_duration(t).ok())
        .unwrap_or(job.ctx.config.drain_timeout);
    let deleting_for = machine
        .metadata
        .deletion_timestamp
        .as_ref()
        .and_then(|t| {
            Duration::try_from(k8s_openapi::jiff::Timestamp::now().duration_since(t.0)).ok()
        })
        .unwrap_or_default();
    label || deleting_for > timeout
}

async fn drain_step(job: &Job, machine: &mut Machine) -> Result<Outcome, Error> {
    let node = machine.node_name().unwrap_or_default().to_string();
    // MCM writes the same words for a machine without a node name and for no target cluster.
    let (false, Some(target)) = (node.is_empty(), job.ctx.drain_target()) else {
        return processing(
            job,
            machine,
            format!(
                "Skipping drain as nodeName is not a valid one for machine. {INITIATE_VM_DELETION}"
            ),
        )
        .await;
    };
    let forced = is_forced(job, machine);
    if let Err(e) = drain::set_terminating_condition(&target, &node).await
        && !forced
    {
        return failed(
                job,
                machine,
                format!("Drain failed due to failure in update of node conditions - {e}. Will retry in next sync. {INITIATE_DRAIN}"),
                Retry::Short,
            )
            .await;
    }
    let timeout = if forced {
        Duration::from_secs(60)
    } else {
        machine
            .spec
            .configuration
            .drain_timeout
            .as_deref()
            .and_then(|t| machine_api::parse_duration(t).ok())
            .unwrap_or(job.ctx.config.drain_timeout)
    };
    // MCM: at most one eviction per 20 s within the drain timeout; a forced drain deletes.
    let retries = if forced {
        1
    } else {
        machine
            .spec
            .configuration
            .max_evict_retries
            .map_or(job.ctx.config.max_evict_retries, |r| r.max(1) as u32)
            .min((timeout.as_secs() / 20).max(1) as u32)
    };
    let result = drain::run(&target, &node, forced, timeout, retries).await;
    match (result, forced) {
        (Ok(()), false) => processing(job, machine, format!("Drain successful. {INITIATE_VM_DELETION}")).await,
        (Ok(()), true) => processing(job, machine, format!("Force Drain successful. {DELETE_VOLUME_ATTACHMENTS}")).await,
        (Err(e), true) => {
            processing(
                job,
                machine,
                format!("Drain failed due to - {e}. However, since it's a force deletion shall continue deletion of VM. {DELETE_VOLUME_ATTACHMENTS}"),
            )
            .await
        }
        (Err(e), false) => {
            failed(job, machine, format!("Drain failed due to - {e}. Will retry in next sync. {INITIATE_DRAIN}"), Retry::Short).await
        }
    }
}

async fn volume_attachments(job: &Job, machine: &mut Machine) -> Result<Outcome, Error> {
    let node = machine.node_name().unwrap_or_default().to_string();
    let Some(target) = job.ctx.drain_target() else {
        return processing(job, machine, format!("Skipping deleteNodeVolAttachments due to - no target cluster. Moving to VM Deletion. {INITIATE_VM_DELETION}")).await;
    };
    match drain::delete_volume_attachments(&target, &node).await {
        Ok(drain::VolumeAttachments::NodeMissing(e)) => {
            processing(job, machine, format!("Skipping deleteNodeVolAttachments due to - {e}. Moving to VM Deletion. {INITIATE_VM_DELETION}"))
                .await
        }
        Ok(drain::VolumeAttachments::AlreadyDetached) => {
            processing(
                job,
                machine,
                format!("Node Volumes for node: {node} are already detached. Moving to VM Deletion. {INITIATE_VM_DELETION}"),
            )
            .await
        }
        Ok(drain::VolumeAttachments::Deleted(n)) => {
            Ok(Outcome::Retry(Retry::Short.period(), format!("deleted {n} VolumeAttachments of node {node}")))
        }
        Ok(drain::VolumeAttachments::NoneLive) => {
            processing(job, machine, format!("No Live VolumeAttachments for node: {node}. Moving to VM Deletion. {INITIATE_VM_DELETION}"))
                .await
        }
        Err(e) => Ok(Outcome::Retry(Retry::Short.period(), format!("deleting VolumeAttachments: {e}"))),
    }
}

async fn delete_vm(job: &Job, machine: &mut Machine) -> Result<Outcome, Error> {
    // DeleteMachine gets the merged secret without userData substitution.
    let secret = job.secret().await?;
    let deleted = job
        .timed(
            Operation::DeleteMachine,
            job.ctx
                .batcher
                .delete_machine(&job.provider, job.request(machine, secret)),
        )
        .await;
    job.driver_event(machine, Operation::DeleteMachine, &deleted, "")
        .await;
    let (description, state, after, last_known_state) = match deleted {
        Ok(r) => (
            format!("VM deletion was successful. {INITIATE_NODE_DELETION}"),
            State::Processing,
            None,
            r.last_known_state,
        ),
        Err(e) if e.code == Code::NotFound => (
            format!("VM not found. Continuing deletion flow. {INITIATE_NODE_DELETION}"),
            State::Processing,
            None,
            String::new(),
        ),
        Err(e) if retry::is_transient(e.code) => (
            format!(
                "VM deletion failed due to - {e}. However, will re-try in the next resync. {INITIATE_VM_DELETION}"
            ),
            State::Failed,
            Some(Retry::Short),
            String::new(),
        ),
        Err(e) => (
            format!("VM deletion failed due to - {e}. Aborting operation. {INITIATE_VM_DELETION}"),
            State::Failed,
            Some(Retry::Long),
            String::new(),
        ),
    };
    let mut st = machine.status.clone().unwrap_or_default();
    st.last_operation = LastOperation {
        ..status::last_op(description.clone(), state, Op::Delete, "")
    };
    st.last_known_state = last_known_state;
    let written = status::write(&job.api, &job.name, &st).await?;
    machine.status = written.status;
    match after {
        None => Ok(Outcome::Next),
        Some(r) => Ok(Outcome::Retry(r.period(), description)),
    }
}

async fn delete_node(job: &Job, machine: &mut Machine) -> Result<Outcome, Error> {
    let node_name = machine.node_name().unwrap_or_default().to_string();
    let Some(target) = job.ctx.target.clone() else {
        return processing(job, machine, format!("Label \"node\" not present on machine \"{}\", continuing deletion flow. {INITIATE_FINALIZER_REMOVAL}", job.name)).await;
    };
    if node_name.is_empty() {
        return processing(
            job,
            machine,
            format!("Label \"node\" not present on machine \"{}\", continuing deletion flow. {INITIATE_FINALIZER_REMOVAL}", job.name),
        )
        .await;
    }
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(target);
    let missing = format!(
        "No node object found for \"{node_name}\", continuing deletion flow. {INITIATE_FINALIZER_REMOVAL}"
    );
    let node = match nodes.get_opt(&node_name).await {
        Ok(Some(n)) => n,
        Ok(None) => return processing(job, machine, missing).await,
        Err(e) => {
            return failed(
                job,
                machine,
                format!("Retrieval of Node Object \"{node_name}\" failed due to error: {e}, Retrying. {INITIATE_NODE_DELETION}"),
                Retry::Short,
            )
            .await;
        }
    };
    if let Err(e) = super::remove_finalizer(&nodes, &node, MC_NODE_FINALIZER).await {
        return failed(
            job,
            machine,
            format!("Removal of finalizers from Node Object \"{node_name}\" failed due to error: {e}, Retrying. {INITIATE_NODE_DELETION}"),
            Retry::Short,
        )
        .await;
    }
    match nodes.delete(&node_name, &DeleteParams::default()).await {
        Ok(_) => {
            tracing::info!(machine = %job.name, node = %node_name, "node deleted");
            processing(job, machine, format!("Deletion of Node Object \"{node_name}\" is successful. {INITIATE_FINALIZER_REMOVAL}")).await
        }
        Err(kube::Error::Api(s)) if s.code == 404 => processing(job, machine, missing).await,
        Err(e) => {
            failed(job, machine, format!("Deletion of Node Object \"{node_name}\" failed due to error: {e}. {INITIATE_NODE_DELETION}"), Retry::Short)
                .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_pick_the_step() {
        let t = Some(&Phase::Terminating);
        assert_eq!(next_step(GET_VM_STATUS, t), Step::GetVmStatus);
        assert_eq!(
            next_step("Deleting machine from cloud provider", t),
            Step::SetTerminating
        );
        assert_eq!(
            next_step(GET_VM_STATUS, Some(&Phase::Running)),
            Step::SetTerminating
        );
        assert_eq!(
            next_step(
                "VM was not found at provider. Moving forward to node drain. Initiate node drain",
                t
            ),
            Step::Drain
        );
        assert_eq!(
            next_step("Drain successful. Initiate VM deletion", t),
            Step::DeleteVm
        );
        assert_eq!(
            next_step("Force Drain successful. Delete Volume Attachments", t),
            Step::DeleteVolumeAttachments
        );
        assert_eq!(
            next_step(
                "VM deletion was successful. Initiate node object deletion",
                t
            ),
            Step::DeleteNode
        );
        assert_eq!(
            next_step(
                "Deletion of Node Object \"n\" is successful. Initiate machine object finalizer removal",
                t
            ),
            Step::RemoveFinalizer
        );
        // A failed status check keeps the step.
        assert_eq!(
            next_step(
                &format!(
                    "Error occurred with decoding machine error status while getting VM status, aborting with retry. {GET_VM_STATUS}"
                ),
                t
            ),
            Step::GetVmStatus
        );
    }

    #[test]
    fn go_parse_bool() {
        for v in ["1", "t", "T", "true", "TRUE", "True"] {
            assert_eq!(parse_bool(v), Some(true), "{v}");
        }
        assert_eq!(parse_bool("yes"), None);
        assert_eq!(parse_bool("0"), Some(false));
    }
}
