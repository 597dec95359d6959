//! The creation flow and the health check of a live Machine (MCM `reconcileClusterMachine`,
//! `triggerCreationFlow`, `reconcileMachineHealth`).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{NodeAddress, NodeCondition, Secret};
use kube::ResourceExt as _;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use machine_api::{
    Machine, MachineOperationType as Op, MachinePhase as Phase, MachineState as State,
    MachineStatus, NODE_LABEL_KEY,
};

use super::class_checks::Verdict;
use super::machine::Job;
use super::retry::{self, Retry};
use super::{Error, secrets, status};
use mcm_driver::{Code, DriverError, Operation};

/// The annotation MCM's scale-down order reads; the MC sets it to "3" when missing.
pub const PRIORITY_ANNOTATION: &str = "machinepriority.machine.sapcloud.io";
/// The Node taint that keeps a Pending machine from Running.
pub const CRITICAL_COMPONENTS_TAINT: &str = "node.gardener.cloud/critical-components-not-ready";

/// Reconcile a live (not deleting) machine: health first when it has a node, then the
/// creation flow when it has no VM yet.
pub async fn reconcile(job: &Job, machine: Arc<Machine>) -> Result<Action, Error> {
    if !machine.spec.provider_id.is_empty() {
        // Labels for mcm_machine_info, once the machine has a VM (cached; no cloud call).
        job.ctx.class_checks.refresh_labels(job, &machine).await;
    }
    let phase = machine.phase().cloned();
    let has_node = machine.node_name().is_some_and(|n| !n.is_empty());
    if has_node
        && phase.is_some()
        && let Some(action) = health(job, &machine).await?
    {
        return Ok(action);
    }
    let phase = machine.phase().cloned();
    if machine.spec.provider_id.is_empty()
        || phase.is_none()
        || phase == Some(Phase::CrashLoopBackOff)
    {
        return creation_flow(job, &machine).await;
    }
    Ok(Action::requeue(Retry::Long.period()))
}

fn effective(spec: &Option<String>, flag: Duration) -> Duration {
    spec.as_deref()
        .and_then(|t| machine_api::parse_duration(t).ok())
        .unwrap_or(flag)
}

fn age(machine: &Machine) -> Duration {
    machine
        .metadata
        .creation_timestamp
        .as_ref()
        .and_then(|t| {
            let now = k8s_openapi::jiff::Timestamp::now();
            Duration::try_from(now.duration_since(t.0)).ok()
        })
        .unwrap_or_default()
}

fn since(t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>) -> Duration {
    t.and_then(|t| Duration::try_from(k8s_openapi::jiff::Timestamp::now().duration_since(t.0)).ok())
        .unwrap_or_default()
}

/// MCM's `isHealthy`: conditions present, Ready True, every configured bad condition False.
pub fn is_healthy(conditions: &[NodeCondition], bad: &[String]) -> bool {
    !conditions.is_empty()
        && conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
        && conditions
            .iter()
            .filter(|c| bad.contains(&c.type_))
            .all(|c| c.status == "False")
}

/// Go's `%+v` of node conditions, close enough for a human reading lastOperation.
fn conditions_text(conditions: &[NodeCondition]) -> String {
    let items: Vec<String> = conditions
        .iter()
        .map(|c| {
            format!(
                "{{Type:{} Status:{} Reason:{} Message:{}}}",
                c.type_,
                c.status,
                c.reason.as_deref().unwrap_or(""),
                c.message.as_deref().unwrap_or("")
            )
        })
        .collect();
    format!("[{}]", items.join(" "))
}

fn same_conditions(a: &[NodeCondition], b: &[NodeCondition]) -> bool {
    let key = |v: &[NodeCondition]| {
        let mut k: Vec<(String, String)> = v
            .iter()
            .map(|c| (c.type_.clone(), c.status.clone()))
            .collect();
        k.sort();
        k
    };
    key(a) == key(b)
}

/// What the health sub-reconciler decides from (read from the Machine and its Node).
#[derive(Clone, Debug)]
pub struct HealthObserved<'a> {
    pub name: &'a str,
    pub phase: Phase,
    pub node_present: bool,
    /// The node exists and none of `--node-conditions` is set (and Ready is True).
    pub healthy: bool,
    /// The node carries `node.machine.sapcloud.io/critical-components-not-ready:NoSchedule`.
    pub critical_taint: bool,
    /// `lastOperation` (type, state).
    pub last_operation: (Option<Op>, Option<State>),
    /// The node's conditions as MCM prints them.
    pub conditions: String,
    pub age: Duration,
    pub creation_timeout: Duration,
    /// How long the machine has been in its phase.
    pub unknown_for: Duration,
    /// `None`: `disableHealthTimeout`.
    pub health_timeout: Option<Duration>,
}

/// A phase change: the new phase, the `lastOperation` that says why, and what else the
/// status write carries. Applied by [`apply`], the one place that turns a decision into a
/// status.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    pub phase: Phase,
    pub description: String,
    pub state: State,
    pub operation: Op,
    /// `lastOperation.errorCode` ("" for none).
    pub error_code: &'static str,
    /// `lastKnownState`: `None` keeps it.
    pub last_known_state: Option<String>,
    /// `status.addresses`: `None` keeps them.
    pub addresses: Option<Vec<NodeAddress>>,
    /// The first join after create (its bootstrap token is deleted).
    pub first_join: bool,
}

impl Transition {
    fn to(phase: Phase, description: String, state: State, operation: Op) -> Transition {
        Transition {
            phase,
            description,
            state,
            operation,
            error_code: "",
            last_known_state: None,
            addresses: None,
            first_join: false,
        }
    }
}

/// What a sub-reconciler decided: maybe a transition, maybe a Warning event, and when to look
/// again (and why, for the log).
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub transition: Option<Transition>,
    /// (reason, note) of a Warning event on the Machine.
    pub warning: Option<(&'static str, String)>,
    pub requeue: Duration,
    pub reason: String,
}

/// Apply a transition to a status (phase and lastOperation stamped now; preserveExpiryTime
/// kept).
pub fn apply(st: &mut MachineStatus, t: &Transition) {
    let preserve = st.current_status.preserve_expiry_time.clone();
    st.last_operation = status::last_op(
        t.description.clone(),
        t.state.clone(),
        t.operation.clone(),
        t.error_code,
    );
    st.current_status = status::current(t.phase.clone(), preserve);
    if let Some(state) = &t.last_known_state {
        st.last_known_state = state.clone();
    }
    if let Some(addresses) = &t.addresses {
        st.addresses = addresses.clone();
    }
}

/// MCM's health check (`reconcileMachineHealth`) as a pure decision: Pending/Unknown →
/// Running when the node is healthy (not while a Pending machine's node has the
/// critical-components taint), Running → Unknown when the node is gone or unhealthy,
/// Pending → Failed after the creation timeout, Unknown → Failed after the health timeout.
/// `None`: the phase stays.
pub fn decide_health(o: &HealthObserved) -> Option<Transition> {
    let name = o.name;
    let previous_type = o.last_operation.0.clone().unwrap_or(Op::HealthCheck);
    let to = |phase, description: String, state, operation, first_join| Transition {
        first_join,
        ..Transition::to(phase, description, state, operation)
    };
    match o.phase {
        Phase::InPlaceUpdating | Phase::InPlaceUpdateFailed => None,
        Phase::Running if o.healthy => None,
        _ if o.healthy => {
            if o.phase == Phase::Pending && o.critical_taint {
                return None;
            }
            let first_join = o.last_operation.0 == Some(Op::Create)
                && o.last_operation.1 != Some(State::Successful);
            Some(if first_join {
                to(
                    Phase::Running,
                    format!("Machine {name} successfully joined the cluster"),
                    State::Successful,
                    Op::Create,
                    true,
                )
            } else {
                to(
                    Phase::Running,
                    format!("Machine {name} successfully re-joined the cluster"),
                    State::Successful,
                    Op::HealthCheck,
                    false,
                )
            })
        }
        Phase::Running => Some(to(
            Phase::Unknown,
            if o.node_present {
                format!(
                    "Machine {name} is unhealthy - changing MachinePhase to Unknown. Node conditions: {}",
                    o.conditions
                )
            } else {
                format!(
                    "Node object went missing. Machine {name} is unhealthy - changing MachinePhase to Unknown"
                )
            },
            State::Processing,
            Op::HealthCheck,
            false,
        )),
        Phase::Pending if o.age > o.creation_timeout => Some(to(
            Phase::Failed,
            format!(
                "Machine {name} failed to join the cluster in {} minutes.",
                machine_api::format_duration(o.creation_timeout)
            ),
            State::Failed,
            previous_type,
            false,
        )),
        Phase::Unknown => {
            let timeout = o.health_timeout?;
            (o.unknown_for > timeout).then(|| {
                to(
                    Phase::Failed,
                    format!(
                        "Machine {name} health checks failing since last {} minutes. Updating machine phase to Failed. Node Conditions: {}",
                        machine_api::format_duration(timeout),
                        o.conditions
                    ),
                    State::Failed,
                    previous_type,
                    false,
                )
            })
        }
        _ => None,
    }
}

/// The phase transitions driven by the Node (MCM `reconcileMachineHealth`). Returns the
/// requeue when the pass ends here.
async fn health(job: &Job, machine: &Machine) -> Result<Option<Action>, Error> {
    let ctx = &job.ctx;
    let Some(nodes) = ctx.nodes() else {
        return Ok(None);
    };
    let node_name = machine.node_name().unwrap_or_default().to_string();
    let node = nodes.get_opt(&node_name).await?;
    let mut st = machine.status.clone().unwrap_or_default();
    let phase = st.current_status.phase.clone().unwrap_or(Phase::Pending);
    if matches!(phase, Phase::InPlaceUpdating | Phase::InPlaceUpdateFailed) {
        return Ok(None);
    }
    if let Some(n) = &node {
        sync_node(&nodes, n, &job.name).await?;
    }
    let mut changed = false;
    if let Some(n) = &node {
        let conditions = n
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        if !same_conditions(&conditions, &st.conditions) {
            st.conditions = conditions;
            changed = true;
        }
    }
    let name = &job.name;
    let healthy = node.is_some() && is_healthy(&st.conditions, &ctx.config.node_conditions);
    let critical_taint = node
        .as_ref()
        .and_then(|n| n.spec.as_ref())
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| {
            t.iter()
                .any(|t| t.key == CRITICAL_COMPONENTS_TAINT && t.effect == "NoSchedule")
        });
    let config = &machine.spec.configuration;
    let observed = HealthObserved {
        name,
        phase: phase.clone(),
        node_present: node.is_some(),
        healthy,
        critical_taint,
        last_operation: (
            st.last_operation.type_.clone(),
            st.last_operation.state.clone(),
        ),
        conditions: conditions_text(&st.conditions),
        age: age(machine),
        creation_timeout: effective(&config.creation_timeout, ctx.config.creation_timeout),
        unknown_for: since(st.current_status.last_update_time.as_ref()),
        health_timeout: (config.disable_health_timeout != Some(true))
            .then(|| effective(&config.health_timeout, ctx.config.health_timeout)),
    };
    if let Some(t) = decide_health(&observed) {
        apply(&mut st, &t);
        changed = true;
        if t.first_join {
            delete_bootstrap_token(job, name).await;
        }
    }
    if changed {
        let new_phase = st.current_status.phase.clone();
        status::write(&job.api, name, &st).await?;
        if new_phase != Some(phase.clone()) {
            tracing::info!(machine = %name, from = phase.as_str(), to = ?new_phase.as_ref().map(|p| p.as_str()), "phase changed");
        }
        // The pass ends with a write: `machine` is out of date now, and the creation flow must
        // not decide on its old phase (a CrashLoopBackOff machine just found Running would be
        // set back to Pending, and as status writes trigger no reconcile, stay there). MCM's
        // next write would conflict and retry; here the next pass reads the new status.
        return Ok(Some(Action::requeue(Retry::Conflict.period())));
    }
    Ok(health_requeue(
        st.current_status.phase.as_ref(),
        ctx.config.health_check_interval,
    )
    .map(Action::requeue))
}

/// After the health check: Pending and Unknown machines are looked at again every
/// `interval` (MCM's health-check period); the other phases go on to the creation flow's
/// checks.
pub fn health_requeue(phase: Option<&Phase>, interval: Duration) -> Option<Duration> {
    matches!(phase, Some(Phase::Pending) | Some(Phase::Unknown)).then_some(interval)
}

/// The label on a Node that names its Machine (MCM `syncMachineNameToNode`).
pub const MACHINE_NAME_NODE_LABEL: &str = "node.gardener.cloud/machine-name";

/// Registration, Node side (MCM's node controller, `syncMachineNameToNode`): what a Node with a
/// backing Machine must carry — the machine-name label and the finalizer
/// `node.machine.sapcloud.io/machine-controller` — as the merge patch that adds what is missing
/// (guarded by the Node's resourceVersion). `None`: nothing to do (already there, the Node is
/// not managed by MCM, or it is being deleted).
pub fn node_registration_patch(
    node: &k8s_openapi::api::core::v1::Node,
    machine: &str,
) -> Option<serde_json::Value> {
    if node
        .annotations()
        .contains_key("node.machine.sapcloud.io/not-managed-by-mcm")
        || node.metadata.deletion_timestamp.is_some()
    {
        return None;
    }
    let has_label = node
        .labels()
        .get(MACHINE_NAME_NODE_LABEL)
        .map(String::as_str)
        == Some(machine);
    let has_finalizer = node
        .finalizers()
        .iter()
        .any(|f| f == machine_api::MC_NODE_FINALIZER);
    if has_label && has_finalizer {
        return None;
    }
    let mut finalizers = node.finalizers().to_vec();
    if !has_finalizer {
        finalizers.push(machine_api::MC_NODE_FINALIZER.to_string());
    }
    Some(serde_json::json!({
        "metadata": {
            "labels": { MACHINE_NAME_NODE_LABEL: machine },
            "finalizers": finalizers,
            "resourceVersion": node.resource_version(),
        }
    }))
}

/// Writes the registration patch, re-reading the Node and trying again when the write
/// conflicts (client-go's `RetryOnConflict`, as MCM's node updates do): the simulated or real
/// kubelet bumps the Node's resourceVersion with every heartbeat, so a guarded patch of a
/// freshly joined Node often loses the race once. A Node gone meanwhile needs nothing.
async fn sync_node(
    nodes: &Api<k8s_openapi::api::core::v1::Node>,
    node: &k8s_openapi::api::core::v1::Node,
    machine: &str,
) -> Result<(), kube::Error> {
    const ATTEMPTS: usize = 5;
    let mut current = node.clone();
    for attempt in 1..=ATTEMPTS {
        let Some(patch) = node_registration_patch(&current, machine) else {
            return Ok(());
        };
        match nodes
            .patch(
                &current.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 && attempt < ATTEMPTS => {
                tracing::debug!(node = %current.name_any(), attempt, "node registration conflicted; re-reading the node");
                match nodes.get_opt(&current.name_any()).await? {
                    Some(fresh) => current = fresh,
                    None => return Ok(()),
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// What the launch sub-reconciler decides from: the machine's phase and age, and how its
/// driver calls ended.
#[derive(Clone, Debug)]
pub struct LaunchObserved<'a> {
    pub name: &'a str,
    pub phase: Option<Phase>,
    /// A target cluster is configured (machines go Pending and join it), else Available.
    pub with_target: bool,
    pub age: Duration,
    pub creation_timeout: Duration,
    /// `--resource-exhausted-retry`.
    pub resource_exhausted_retry: Duration,
    pub outcome: Launch,
}

/// How the launch calls (status → create → initialize) ended.
#[derive(Clone, Debug)]
pub enum Launch {
    /// The class's secret has no userData: nothing was called.
    MissingUserData,
    /// Not now, nothing written (a bootstrap token created concurrently, a name too short
    /// for one).
    Wait { after: Duration, reason: String },
    /// GetMachineStatus or CreateMachine failed.
    CreateFailed(DriverError),
    /// The provider answered without a providerID, or without a nodeName where one is needed.
    IncompleteAnswer {
        provider_id: String,
        node_name: String,
    },
    /// A Node of another name already exists for the new VM; the VM was deleted.
    OldNodeObject,
    /// InitializeMachine failed.
    InitializeFailed(DriverError),
    /// The VM exists and is initialized.
    Launched {
        provider_id: String,
        node_name: String,
        addresses: Vec<mcm_driver::NodeAddress>,
        last_known_state: String,
    },
}

/// MCM `triggerCreationFlow` and `machineCreateErrorHandler` as a pure decision. A failed
/// create or initialize: phase CrashLoopBackOff (Failed after the creation timeout),
/// lastOperation {message, code, Failed, Create}, requeue by code (`retry`); a launched VM:
/// Pending "Creating machine on cloud provider" (Available "Created machine on cloud
/// provider" without a target cluster) when the machine had no phase or was in
/// CrashLoopBackOff, then the health check takes over.
pub fn decide_launch(o: &LaunchObserved) -> Decision {
    let failure_phase = if o.age > o.creation_timeout {
        Phase::Failed
    } else {
        Phase::CrashLoopBackOff
    };
    let wait = |after: Duration, reason: String, warning| Decision {
        transition: None,
        warning,
        requeue: after,
        reason,
    };
    let fail = |description: String, phase, error_code, keeps_state: bool, after| Decision {
        transition: Some(Transition {
            error_code,
            last_known_state: (!keeps_state).then(String::new),
            ..Transition::to(phase, description.clone(), State::Failed, Op::Create)
        }),
        warning: None,
        requeue: after,
        reason: description,
    };
    let short = Retry::Short.period();
    match &o.outcome {
        Launch::MissingUserData => {
            let msg = format!(
                "userdata field not found in secret for machine {:?}",
                o.name
            );
            wait(short, msg.clone(), Some(("MissingUserData", msg)))
        }
        Launch::Wait { after, reason } => wait(*after, reason.clone(), None),
        Launch::CreateFailed(e) => fail(
            format!("Cloud provider message - {e}"),
            failure_phase.clone(),
            e.code.name(),
            retry::create_error_keeps_last_known_state(e.code),
            retry::after_create_error(e.code, o.resource_exhausted_retry),
        ),
        Launch::IncompleteAnswer {
            provider_id,
            node_name,
        } => {
            let e = DriverError::new(
                Code::Internal,
                format!(
                    "provider answered providerID {provider_id:?} and nodeName {node_name:?}: both are required"
                ),
            );
            wait(
                Retry::Medium.period(),
                e.to_string(),
                Some(("CreateMachineInternal", e.to_string())),
            )
        }
        Launch::OldNodeObject => fail(
            "VM using old node obj".into(),
            Phase::Failed,
            "",
            true,
            short,
        ),
        Launch::InitializeFailed(e) => fail(
            format!("Provider error: {e}. Initialize VM Instance"),
            failure_phase,
            e.code.name(),
            true,
            short,
        ),
        Launch::Launched {
            node_name,
            addresses,
            last_known_state,
            ..
        } => {
            let first = matches!(o.phase, None | Some(Phase::CrashLoopBackOff));
            let transition = first.then(|| {
                let t = if o.with_target {
                    Transition::to(
                        Phase::Pending,
                        "Creating machine on cloud provider".into(),
                        State::Processing,
                        Op::Create,
                    )
                } else {
                    Transition {
                        addresses: Some(addresses_with_hostname(addresses.clone(), node_name)),
                        ..Transition::to(
                            Phase::Available,
                            "Created machine on cloud provider".into(),
                            State::Successful,
                            Op::Create,
                        )
                    }
                };
                Transition {
                    last_known_state: Some(last_known_state.clone()),
                    ..t
                }
            });
            Decision {
                transition,
                warning: None,
                requeue: short,
                reason: "launched; the health check takes over".into(),
            }
        }
    }
}

/// Carry out a decision: the Warning event, the status write, the requeue. The one status
/// writer of the launch path.
async fn commit(job: &Job, machine: &Machine, decision: Decision) -> Result<Action, Error> {
    if let Some((reason, note)) = decision.warning {
        job.event(machine, EventType::Warning, reason, "CreateMachine", note)
            .await;
    }
    if let Some(t) = &decision.transition {
        let mut st = machine.status.clone().unwrap_or_default();
        apply(&mut st, t);
        status::write(&job.api, &job.name, &st).await?;
    }
    Ok(retry::requeue(
        &job.name,
        decision.requeue,
        &decision.reason,
    ))
}

/// The creation flow (MCM `triggerCreationFlow`): the driver calls, then the decision.
async fn creation_flow(job: &Job, machine: &Machine) -> Result<Action, Error> {
    let ctx = &job.ctx;
    let outcome = launch(job, machine).await?;
    let observed = LaunchObserved {
        name: &job.name,
        phase: machine.phase().cloned(),
        with_target: ctx.target.is_some(),
        age: age(machine),
        creation_timeout: effective(
            &machine.spec.configuration.creation_timeout,
            ctx.config.creation_timeout,
        ),
        resource_exhausted_retry: ctx.config.resource_exhausted_retry,
        outcome,
    };
    let decision = decide_launch(&observed);
    if let (
        Launch::Launched {
            provider_id,
            node_name,
            ..
        },
        Some(_),
    ) = (&observed.outcome, &decision.transition)
    {
        tracing::info!(machine = %job.name, %provider_id, node = %node_name, "machine created on cloud provider");
    }
    commit(job, machine, decision).await
}

/// The launch calls: GetMachineStatus, CreateMachine when there is no VM yet (or it is
/// uninitialized), InitializeMachine after a create; labels and providerID on the Machine.
async fn launch(job: &Job, machine: &Machine) -> Result<Launch, Error> {
    let ctx = &job.ctx;
    let name = job.name.as_str();
    let provider = &job.provider;
    let mut secret = job.secret().await?;
    let Some(user_data) = secret.get(secrets::USER_DATA_KEY).cloned() else {
        return Ok(Launch::MissingUserData);
    };
    let token = match &ctx.target {
        Some(target) => match bootstrap_token(job, target, name).await? {
            Ok(token) => Some(token),
            Err(wait) => return Ok(wait),
        },
        None => None,
    };
    let class_secret = secret.clone();
    let (filled, missing) = secrets::fill_user_data(&user_data, token.as_deref(), name);
    for placeholder in missing {
        tracing::warn!(machine = %name, "userData has no {placeholder} placeholder");
    }
    secret.insert(secrets::USER_DATA_KEY.to_string(), filled);
    let req = job.request(machine, secret);

    // A machine without a providerID whose provider creates in batches goes straight to
    // CreateMachine: create-machines is "find or create" (it answers an existing VM as status
    // would, from one lookup for the whole batch), so MCM's status call first would only ask
    // the cloud the same question twice.
    let got = if machine.spec.provider_id.is_empty() && ctx.batcher.batches_creates(provider) {
        Err(DriverError::new(
            Code::NotFound,
            "not asked: create-machines finds an existing VM",
        ))
    } else {
        let got = job
            .timed(
                Operation::GetMachineStatus,
                ctx.batcher.get_machine_status(provider, req.clone()),
            )
            .await;
        job.driver_event(machine, Operation::GetMachineStatus, &got, "")
            .await;
        got
    };
    let mut last_known_state = machine
        .status
        .as_ref()
        .map(|s| s.last_known_state.clone())
        .unwrap_or_default();
    let (node_name, provider_id, addresses, uninitialized) = match got {
        Ok(r) => (r.node_name, r.provider_id, r.addresses, false),
        Err(e)
            if matches!(e.code, Code::NotFound | Code::Unimplemented)
                && !machine.spec.provider_id.is_empty() =>
        {
            // The VM was created before; never create a second one. Only the creation
            // timeout fails the machine if the VM is really gone.
            (
                machine.node_name().unwrap_or_default().to_string(),
                machine.spec.provider_id.clone(),
                Vec::new(),
                false,
            )
        }
        Err(e)
            if matches!(
                e.code,
                Code::NotFound | Code::Unimplemented | Code::Uninitialized
            ) =>
        {
            // Uninitialized carries no response in our contract; CreateMachine is idempotent
            // per machine and answers the existing VM's ids.
            if let Verdict::Invalid(e) = ctx.class_checks.validate(job, class_secret).await {
                let rejected: Result<(), _> = Err(e.clone());
                job.driver_event(machine, Operation::ValidateMachineClass, &rejected, "")
                    .await;
                return Ok(Launch::CreateFailed(e));
            }
            let created = job
                .timed(
                    Operation::CreateMachine,
                    ctx.batcher.create_machine(provider, req.clone()),
                )
                .await;
            let detail = created
                .as_ref()
                .map(|r| format!(": providerID {}, node {}", r.provider_id, r.node_name));
            job.driver_event(
                machine,
                Operation::CreateMachine,
                &created,
                detail.as_deref().unwrap_or(""),
            )
            .await;
            let r = match created {
                Ok(r) => r,
                Err(e) => return Ok(Launch::CreateFailed(e)),
            };
            if !r.last_known_state.is_empty() {
                last_known_state = r.last_known_state.clone();
            }
            if let Some(nodes) = ctx.nodes()
                && r.node_name != name
                && !r.node_name.is_empty()
                && let Some(node) = nodes.get_opt(&r.node_name).await?
                && is_old_node(&node, &r.provider_id)
            {
                delete_vm_of_old_node(job, machine, &req, &r.node_name).await;
                return Ok(Launch::OldNodeObject);
            }
            (r.node_name, r.provider_id, r.addresses, true)
        }
        Err(e) => return Ok(Launch::CreateFailed(e)),
    };
    if provider_id.is_empty() || (ctx.target.is_some() && node_name.is_empty()) {
        return Ok(Launch::IncompleteAnswer {
            provider_id,
            node_name,
        });
    }
    update_labels(job, machine, &node_name, &provider_id).await?;
    if uninitialized {
        // As MCM's: the Machine as updateLabels left it, with its providerID.
        let mut req = req;
        req.machine.provider_id = provider_id.clone();
        let init = job
            .timed(
                Operation::InitializeMachine,
                provider.initialize_machine(&req),
            )
            .await;
        match init {
            Err(e) if e.code == Code::Unimplemented => {}
            init => {
                job.driver_event(machine, Operation::InitializeMachine, &init, "")
                    .await;
                if let Err(e) = init {
                    return Ok(Launch::InitializeFailed(e));
                }
            }
        }
    }
    Ok(Launch::Launched {
        provider_id,
        node_name,
        addresses,
        last_known_state,
    })
}

/// Driver addresses plus {Hostname: node}, deduplicated and sorted.
fn addresses_with_hostname(
    addresses: Vec<mcm_driver::NodeAddress>,
    node_name: &str,
) -> Vec<NodeAddress> {
    let mut out: Vec<NodeAddress> = addresses
        .into_iter()
        .map(|a| NodeAddress {
            type_: a.kind,
            address: a.address,
        })
        .collect();
    if !node_name.is_empty() {
        out.push(NodeAddress {
            type_: "Hostname".into(),
            address: node_name.into(),
        });
    }
    out.sort_by(|a, b| (&a.type_, &a.address).cmp(&(&b.type_, &b.address)));
    out.dedup();
    out
}

/// A Node of another name already exists for the new VM: delete the VM (the machine fails).
/// Is `node` (named as the VM just created or found) an earlier VM's Node, as MCM's "VM using
/// old node obj" check assumes of any Node of that name? A Node that carries the VM's own
/// providerID is not: it is this VM's, registered after a create whose providerID never
/// reached the Machine (a lost write, a restart), and the VM is adopted, as MCM adopts it when
/// GetMachineStatus finds it first.
fn is_old_node(node: &k8s_openapi::api::core::v1::Node, provider_id: &str) -> bool {
    node.spec.as_ref().and_then(|s| s.provider_id.as_deref()) != Some(provider_id)
}

async fn delete_vm_of_old_node(
    job: &Job,
    machine: &Machine,
    req: &mcm_driver::MachineRequest,
    node: &str,
) {
    let deleted = job
        .timed(Operation::DeleteMachine, job.provider.delete_machine(req))
        .await;
    job.driver_event(
        machine,
        Operation::DeleteMachine,
        &deleted,
        &format!(" (VM uses the old node object {node})"),
    )
    .await;
}

/// Registration, Machine side (MCM `updateLabels`): the `node` label (with a target cluster),
/// the priority annotation ("3" when missing) and spec.providerID, as the merge patch that sets
/// them. `None`: all are there.
pub fn machine_registration_patch(
    machine: &Machine,
    node_name: &str,
    provider_id: &str,
    with_target: bool,
) -> Option<serde_json::Value> {
    let label_missing = with_target && machine.node_name().is_none_or(str::is_empty);
    let priority_missing = machine
        .annotations()
        .get(PRIORITY_ANNOTATION)
        .is_none_or(|v| v.is_empty());
    if !(label_missing || priority_missing || machine.spec.provider_id.is_empty()) {
        return None;
    }
    let mut patch = serde_json::json!({ "spec": { "providerID": provider_id } });
    if with_target {
        patch["metadata"]["labels"] = serde_json::json!({ NODE_LABEL_KEY: node_name });
    }
    if priority_missing {
        patch["metadata"]["annotations"] = serde_json::json!({ PRIORITY_ANNOTATION: "3" });
    }
    Some(patch)
}

async fn update_labels(
    job: &Job,
    machine: &Machine,
    node_name: &str,
    provider_id: &str,
) -> Result<(), Error> {
    let with_target = job.ctx.target.is_some();
    if let Some(patch) = machine_registration_patch(machine, node_name, provider_id, with_target) {
        job.api
            .patch(&job.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    Ok(())
}

/// A bootstrap token secret: 16 characters of `[0-9a-z]` from the OS's CSPRNG, unbiased
/// (bytes of 252 and above are drawn again: 252 = 7 × 36). A failing CSPRNG is an error, never
/// a predictable token.
pub fn random_token_secret() -> Result<String, getrandom::Error> {
    token_from(getrandom::fill)
}

fn token_from(
    mut fill: impl FnMut(&mut [u8]) -> Result<(), getrandom::Error>,
) -> Result<String, getrandom::Error> {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    const LIMIT: u8 = (256 / ALPHABET.len() * ALPHABET.len()) as u8; // 252
    let mut out = String::with_capacity(16);
    let mut buf = [0u8; 32];
    while out.len() < 16 {
        fill(&mut buf)?;
        for b in buf.iter().copied().filter(|b| *b < LIMIT) {
            if out.len() == 16 {
                break;
            }
            out.push(ALPHABET[usize::from(b) % ALPHABET.len()] as char);
        }
    }
    Ok(out)
}

/// Create or reuse the machine's bootstrap token (`kube-system/bootstrap-token-<id>`);
/// returns `<id>.<secret>`.
/// `Err(Launch::Wait)`: not now.
async fn bootstrap_token(
    job: &Job,
    target: &kube::Client,
    machine: &str,
) -> Result<Result<String, Launch>, Error> {
    let Some(id) = secrets::bootstrap_token_id(machine) else {
        return Ok(Err(Launch::Wait {
            after: Retry::Long.period(),
            reason: format!("machine name {machine:?} is too short for a bootstrap token id"),
        }));
    };
    let api: Api<Secret> = Api::namespaced(target.clone(), "kube-system");
    let secret_name = format!("bootstrap-token-{id}");
    if let Some(existing) = api.get_opt(&secret_name).await? {
        let data = existing.data.unwrap_or_default();
        let part = |k: &str| {
            data.get(k)
                .map(|v| String::from_utf8_lossy(&v.0).into_owned())
                .unwrap_or_default()
        };
        return Ok(Ok(format!("{}.{}", part("token-id"), part("token-secret"))));
    }
    let token_secret = random_token_secret().map_err(Error::Random)?;
    let expiration = k8s_openapi::jiff::Timestamp::now()
        + k8s_openapi::jiff::SignedDuration::try_from(job.ctx.config.creation_timeout)
            .unwrap_or_default();
    let data: std::collections::BTreeMap<String, ByteString> = [
        ("token-id", id.clone()),
        ("token-secret", token_secret.clone()),
        (
            "expiration",
            expiration.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        ),
        ("usage-bootstrap-authentication", "true".into()),
        ("usage-bootstrap-signing", "true".into()),
        (
            "auth-extra-groups",
            job.ctx.config.bootstrap_token_auth_extra_groups.clone(),
        ),
        (
            "description",
            format!(
                "A bootstrap token for machine {machine:?} generated by MachineControllerManager."
            ),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
    .collect();
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(secret_name),
            namespace: Some("kube-system".into()),
            ..Default::default()
        },
        type_: Some("bootstrap.kubernetes.io/token".into()),
        data: Some(data),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(Ok(format!("{id}.{token_secret}"))),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(Err(Launch::Wait {
            after: Retry::Conflict.period(),
            reason: "bootstrap token created concurrently".into(),
        })),
        Err(e) => Err(e.into()),
    }
}

async fn delete_bootstrap_token(job: &Job, machine: &str) {
    let (Some(target), Some(id)) = (&job.ctx.target, secrets::bootstrap_token_id(machine)) else {
        return;
    };
    let api: Api<Secret> = Api::namespaced(target.clone(), "kube-system");
    match api
        .delete(&format!("bootstrap-token-{id}"), &Default::default())
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => tracing::warn!(%machine, "cannot delete the bootstrap token: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Node of the VM's name is an old one unless it carries the VM's own providerID (the
    /// VM's kubelet registered it before the Machine learnt its providerID): then the VM is
    /// adopted, never deleted.
    #[test]
    fn only_a_node_of_another_vm_is_an_old_node() {
        let node = |provider_id: Option<&str>| k8s_openapi::api::core::v1::Node {
            spec: Some(k8s_openapi::api::core::v1::NodeSpec {
                provider_id: provider_id.map(String::from),
                ..Default::default()
            }),
            ..Default::default()
        };
        let vm = "aws:///eu-west-1/i-new";
        assert!(!is_old_node(&node(Some(vm)), vm));
        assert!(is_old_node(&node(Some("aws:///eu-west-1/i-old")), vm));
        assert!(is_old_node(&node(None), vm));
    }

    fn cond(t: &str, s: &str) -> NodeCondition {
        NodeCondition {
            type_: t.into(),
            status: s.into(),
            ..Default::default()
        }
    }

    #[test]
    fn health_rule() {
        let bad = vec!["DiskPressure".to_string()];
        assert!(!is_healthy(&[], &bad));
        assert!(is_healthy(&[cond("Ready", "True")], &bad));
        assert!(is_healthy(
            &[cond("Ready", "True"), cond("DiskPressure", "False")],
            &bad
        ));
        assert!(!is_healthy(
            &[cond("Ready", "True"), cond("DiskPressure", "True")],
            &bad
        ));
        assert!(!is_healthy(
            &[cond("Ready", "True"), cond("DiskPressure", "Unknown")],
            &bad
        ));
        assert!(!is_healthy(&[cond("Ready", "False")], &bad));
    }

    #[test]
    fn hostname_address_added_sorted_unique() {
        let a = vec![
            mcm_driver::NodeAddress {
                kind: "InternalIP".into(),
                address: "10.0.0.1".into(),
            },
            mcm_driver::NodeAddress {
                kind: "Hostname".into(),
                address: "ip-10-0-0-1".into(),
            },
        ];
        let out = addresses_with_hostname(a, "ip-10-0-0-1");
        let got: Vec<(&str, &str)> = out
            .iter()
            .map(|a| (a.type_.as_str(), a.address.as_str()))
            .collect();
        assert_eq!(
            got,
            [("Hostname", "ip-10-0-0-1"), ("InternalIP", "10.0.0.1")]
        );
    }
}

#[cfg(test)]
mod token_tests {
    use super::*;

    #[test]
    fn tokens_are_16_unbiased_characters_of_the_alphabet() {
        let t = random_token_secret().unwrap();
        assert_eq!(t.len(), 16);
        assert!(
            t.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()),
            "{t}"
        );
        assert_ne!(t, random_token_secret().unwrap());
        // Bytes >= 252 are dropped, not folded onto the first letters.
        let mut calls = 0;
        let t = token_from(|buf| {
            calls += 1;
            buf.fill(if calls == 1 { 255 } else { 37 });
            Ok(())
        })
        .unwrap();
        assert_eq!((t.as_str(), calls), ("1111111111111111", 2));
    }

    #[test]
    fn a_failing_random_source_is_an_error() {
        let failed = token_from(|_| Err(getrandom::Error::UNSUPPORTED));
        assert!(failed.is_err());
    }
}

#[cfg(test)]
mod health_tests {
    //! Every phase transition of MCM's health check (../shared/mcm-controller-facts.md), as a
    //! pure decision: no API server, no sandbox.
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn observed(phase: Phase, healthy: bool) -> HealthObserved<'static> {
        HealthObserved {
            name: "m1",
            phase,
            node_present: true,
            healthy,
            critical_taint: false,
            last_operation: (Some(Op::HealthCheck), Some(State::Successful)),
            conditions: "KernelDeadlock:True".into(),
            age: MIN,
            creation_timeout: 20 * MIN,
            unknown_for: MIN,
            health_timeout: Some(10 * MIN),
        }
    }

    #[test]
    fn pending_with_a_healthy_node_after_create_is_the_first_join() {
        let mut o = observed(Phase::Pending, true);
        o.last_operation = (Some(Op::Create), Some(State::Processing));
        let t = decide_health(&o).unwrap();
        assert_eq!(
            (t.phase, t.state, t.operation, t.first_join),
            (Phase::Running, State::Successful, Op::Create, true)
        );
        assert_eq!(t.description, "Machine m1 successfully joined the cluster");
    }

    #[test]
    fn a_critical_components_taint_keeps_a_pending_machine_pending() {
        let mut o = observed(Phase::Pending, true);
        o.critical_taint = true;
        assert_eq!(decide_health(&o), None);
        // ...but not an Unknown one: it re-joins.
        o.phase = Phase::Unknown;
        assert_eq!(decide_health(&o).unwrap().phase, Phase::Running);
    }

    #[test]
    fn unknown_with_a_healthy_node_rejoins() {
        let t = decide_health(&observed(Phase::Unknown, true)).unwrap();
        assert_eq!(
            (t.phase, t.operation, t.first_join),
            (Phase::Running, Op::HealthCheck, false)
        );
        assert_eq!(
            t.description,
            "Machine m1 successfully re-joined the cluster"
        );
    }

    #[test]
    fn running_and_healthy_stays() {
        assert_eq!(decide_health(&observed(Phase::Running, true)), None);
    }

    #[test]
    fn running_with_unhealthy_conditions_goes_unknown() {
        let t = decide_health(&observed(Phase::Running, false)).unwrap();
        assert_eq!((t.phase, t.state), (Phase::Unknown, State::Processing));
        assert!(
            t.description
                .ends_with("Node conditions: KernelDeadlock:True"),
            "{}",
            t.description
        );
    }

    #[test]
    fn running_without_its_node_goes_unknown() {
        let mut o = observed(Phase::Running, false);
        o.node_present = false;
        let t = decide_health(&o).unwrap();
        assert_eq!(t.phase, Phase::Unknown);
        assert!(t.description.starts_with("Node object went missing."));
    }

    #[test]
    fn pending_fails_after_the_creation_timeout_only() {
        let mut o = observed(Phase::Pending, false);
        assert_eq!(decide_health(&o), None);
        o.age = 21 * MIN;
        o.last_operation = (Some(Op::Create), Some(State::Processing));
        let t = decide_health(&o).unwrap();
        assert_eq!(
            (t.phase, t.state, t.operation),
            (Phase::Failed, State::Failed, Op::Create)
        );
        assert_eq!(
            t.description,
            "Machine m1 failed to join the cluster in 20m0s minutes."
        );
    }

    #[test]
    fn unknown_fails_after_the_health_timeout_unless_disabled() {
        let mut o = observed(Phase::Unknown, false);
        assert_eq!(decide_health(&o), None);
        o.unknown_for = 11 * MIN;
        let t = decide_health(&o).unwrap();
        assert_eq!((t.phase, t.operation), (Phase::Failed, Op::HealthCheck));
        assert!(
            t.description
                .contains("health checks failing since last 10m0s minutes")
        );
        o.health_timeout = None;
        assert_eq!(decide_health(&o), None);
    }

    #[test]
    fn in_place_updates_and_terminal_phases_are_left_alone() {
        for phase in [
            Phase::InPlaceUpdating,
            Phase::InPlaceUpdateFailed,
            Phase::Failed,
            Phase::Terminating,
        ] {
            for healthy in [true, false] {
                let mut o = observed(phase.clone(), healthy);
                o.unknown_for = 100 * MIN;
                o.age = 100 * MIN;
                if matches!(phase, Phase::Failed | Phase::Terminating) && healthy {
                    continue; // not reached: the reconcile routes these elsewhere
                }
                assert_eq!(decide_health(&o), None, "{phase:?} healthy={healthy}");
            }
        }
    }
}

#[cfg(test)]
mod launch_tests {
    //! Every outcome of MCM's creation flow (`triggerCreationFlow`,
    //! `machineCreateErrorHandler`; ../shared/mcm-controller-facts.md) as a pure decision.
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn observed(phase: Option<Phase>, outcome: Launch) -> LaunchObserved<'static> {
        LaunchObserved {
            name: "m1",
            phase,
            with_target: true,
            age: MIN,
            creation_timeout: 20 * MIN,
            resource_exhausted_retry: 10 * MIN,
            outcome,
        }
    }

    fn launched() -> Launch {
        Launch::Launched {
            provider_id: "aws:///eu-west-1/i-1".into(),
            node_name: "ip-10-0-0-1".into(),
            addresses: vec![mcm_driver::NodeAddress {
                kind: "InternalIP".into(),
                address: "10.0.0.1".into(),
            }],
            last_known_state: "lks".into(),
        }
    }

    fn failed(code: Code) -> DriverError {
        DriverError::new(code, "boom")
    }

    #[test]
    fn a_launched_vm_makes_a_new_machine_pending_with_a_target_cluster() {
        for phase in [None, Some(Phase::CrashLoopBackOff)] {
            let d = decide_launch(&observed(phase, launched()));
            let t = d.transition.unwrap();
            assert_eq!(
                (t.phase, t.state, t.operation),
                (Phase::Pending, State::Processing, Op::Create)
            );
            assert_eq!(t.description, "Creating machine on cloud provider");
            assert_eq!(t.last_known_state.as_deref(), Some("lks"));
            assert_eq!(t.addresses, None);
            assert_eq!(d.requeue, Retry::Short.period());
            assert_eq!(d.warning, None);
        }
    }

    #[test]
    fn without_a_target_cluster_a_launched_vm_is_available_with_its_addresses() {
        let mut o = observed(None, launched());
        o.with_target = false;
        let t = decide_launch(&o).transition.unwrap();
        assert_eq!((t.phase, t.state), (Phase::Available, State::Successful));
        assert_eq!(t.description, "Created machine on cloud provider");
        let addresses: Vec<(String, String)> = t
            .addresses
            .unwrap()
            .into_iter()
            .map(|a| (a.type_, a.address))
            .collect();
        assert_eq!(
            addresses,
            [
                ("Hostname".to_string(), "ip-10-0-0-1".to_string()),
                ("InternalIP".to_string(), "10.0.0.1".to_string())
            ]
        );
    }

    #[test]
    fn a_machine_with_a_phase_is_not_rewritten_by_the_launch() {
        for phase in [Phase::Pending, Phase::Running, Phase::Unknown] {
            let d = decide_launch(&observed(Some(phase), launched()));
            assert_eq!(d.transition, None);
            assert_eq!(d.requeue, Retry::Short.period());
        }
    }

    #[test]
    fn a_failed_create_is_crash_loop_back_off_and_requeued_by_code() {
        for (code, after, keeps) in [
            (Code::Unavailable, Retry::Short.period(), true),
            (Code::ResourceExhausted, 10 * MIN, true),
            (Code::InvalidArgument, Retry::Medium.period(), false),
        ] {
            let d = decide_launch(&observed(None, Launch::CreateFailed(failed(code))));
            let t = d.transition.unwrap();
            assert_eq!(
                (t.phase, t.state, t.operation, t.error_code),
                (
                    Phase::CrashLoopBackOff,
                    State::Failed,
                    Op::Create,
                    code.name()
                )
            );
            assert_eq!(
                t.description,
                format!("Cloud provider message - {}", failed(code))
            );
            assert_eq!(d.requeue, after, "{code}");
            // Transient codes and ResourceExhausted keep lastKnownState; the rest reset it.
            assert_eq!(t.last_known_state, (!keeps).then(String::new), "{code}");
        }
    }

    #[test]
    fn a_failed_create_after_the_creation_timeout_is_failed() {
        let mut o = observed(None, Launch::CreateFailed(failed(Code::Internal)));
        o.age = 21 * MIN;
        assert_eq!(decide_launch(&o).transition.unwrap().phase, Phase::Failed);
    }

    #[test]
    fn a_failed_initialize_says_so_and_retries_soon() {
        let d = decide_launch(&observed(
            None,
            Launch::InitializeFailed(failed(Code::Internal)),
        ));
        let t = d.transition.unwrap();
        assert_eq!(
            (t.phase, t.error_code),
            (Phase::CrashLoopBackOff, "Internal")
        );
        assert_eq!(
            t.description,
            format!(
                "Provider error: {}. Initialize VM Instance",
                failed(Code::Internal)
            )
        );
        assert_eq!(t.last_known_state, None);
        assert_eq!(d.requeue, Retry::Short.period());
    }

    #[test]
    fn a_vm_on_an_old_node_object_fails_the_machine() {
        let t = decide_launch(&observed(None, Launch::OldNodeObject))
            .transition
            .unwrap();
        assert_eq!(
            (t.phase, t.state, t.error_code, t.description.as_str()),
            (Phase::Failed, State::Failed, "", "VM using old node obj")
        );
    }

    #[test]
    fn missing_user_data_and_incomplete_answers_warn_without_a_status_write() {
        let d = decide_launch(&observed(None, Launch::MissingUserData));
        assert_eq!(d.transition, None);
        assert_eq!(
            d.warning,
            Some((
                "MissingUserData",
                "userdata field not found in secret for machine \"m1\"".to_string()
            ))
        );
        assert_eq!(d.requeue, Retry::Short.period());

        let d = decide_launch(&observed(
            None,
            Launch::IncompleteAnswer {
                provider_id: "aws:///i-1".into(),
                node_name: String::new(),
            },
        ));
        assert_eq!(d.transition, None);
        let (reason, note) = d.warning.unwrap();
        assert_eq!(reason, "CreateMachineInternal");
        assert!(note.contains("both are required"), "{note}");
        assert_eq!(d.requeue, Retry::Medium.period());
    }

    #[test]
    fn a_wait_is_only_a_requeue() {
        let d = decide_launch(&observed(
            None,
            Launch::Wait {
                after: Retry::Conflict.period(),
                reason: "bootstrap token created concurrently".into(),
            },
        ));
        assert_eq!((d.transition, d.warning), (None, None));
        assert_eq!(d.requeue, Retry::Conflict.period());
    }

    #[test]
    fn apply_keeps_preserve_expiry_and_sets_only_what_the_transition_carries() {
        let mut st = MachineStatus {
            last_known_state: "old".into(),
            ..Default::default()
        };
        let preserve = Some(status::now());
        st.current_status.preserve_expiry_time = preserve.clone();
        let t = decide_launch(&observed(
            None,
            Launch::InitializeFailed(failed(Code::Internal)),
        ))
        .transition
        .unwrap();
        apply(&mut st, &t);
        assert_eq!(st.last_known_state, "old");
        assert_eq!(st.current_status.preserve_expiry_time, preserve);
        assert_eq!(st.current_status.phase, Some(Phase::CrashLoopBackOff));
        assert_eq!(st.last_operation.error_code, "Internal");
        assert!(!st.current_status.timeout_active);
    }

    #[test]
    fn pending_and_unknown_are_health_checked_again() {
        let i = Duration::from_secs(60);
        assert_eq!(health_requeue(Some(&Phase::Pending), i), Some(i));
        assert_eq!(health_requeue(Some(&Phase::Unknown), i), Some(i));
        assert_eq!(health_requeue(Some(&Phase::Running), i), None);
        assert_eq!(health_requeue(None, i), None);
    }
}

#[cfg(test)]
mod registration_tests {
    //! The registration decisions: what the Machine and its Node must carry once the VM exists.
    use super::*;
    use k8s_openapi::api::core::v1::Node;

    fn node(labels: &[(&str, &str)], finalizers: &[&str]) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some("ip-10-0-0-1".into());
        n.metadata.resource_version = Some("7".into());
        n.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        n.metadata.finalizers = Some(finalizers.iter().map(|f| f.to_string()).collect());
        n
    }

    #[test]
    fn a_node_gets_the_machine_label_and_finalizer_once() {
        let patch = node_registration_patch(&node(&[], &["other"]), "m1").unwrap();
        assert_eq!(patch["metadata"]["labels"][MACHINE_NAME_NODE_LABEL], "m1");
        assert_eq!(
            patch["metadata"]["finalizers"],
            serde_json::json!(["other", machine_api::MC_NODE_FINALIZER])
        );
        assert_eq!(patch["metadata"]["resourceVersion"], "7");
        let done = node(
            &[(MACHINE_NAME_NODE_LABEL, "m1")],
            &[machine_api::MC_NODE_FINALIZER],
        );
        assert_eq!(node_registration_patch(&done, "m1"), None);
        // Another machine's label is corrected.
        assert!(node_registration_patch(&done, "m2").is_some());
    }

    /// A kubelet heartbeat between the controller's read and its guarded write: the write
    /// conflicts, the Node is read again and the registration lands on the fresh copy, keeping
    /// the finalizer someone else added meanwhile (the failed CI run logged these 409s as
    /// failed reconciles).
    #[tokio::test]
    async fn a_conflicting_node_write_is_retried_on_a_fresh_read() {
        let api = crate::fixtures::FakeApi::default();
        let path = "/api/v1/nodes/ip-10-0-0-1";
        api.put(path, &node(&[], &[]));
        let stale: Node = api.get(path).unwrap();
        // The heartbeat (and another controller's finalizer) after our read.
        api.put(path, &node(&[], &["other"]));
        let nodes: Api<Node> = Api::all(api.client());
        sync_node(&nodes, &stale, "m1").await.unwrap();
        let stored: Node = api.get(path).unwrap();
        assert_eq!(stored.labels()[MACHINE_NAME_NODE_LABEL], "m1");
        assert_eq!(
            stored.finalizers(),
            [
                "other".to_string(),
                machine_api::MC_NODE_FINALIZER.to_string()
            ]
        );
        let patches = api
            .writes_to(path)
            .into_iter()
            .filter(|w| w.method == http::Method::PATCH)
            .count();
        assert_eq!(patches, 2, "one conflicting write, one on the fresh read");
    }

    #[test]
    fn unmanaged_and_deleting_nodes_are_left_alone() {
        let mut n = node(&[], &[]);
        n.metadata.annotations = Some(
            [(
                "node.machine.sapcloud.io/not-managed-by-mcm".to_string(),
                "true".to_string(),
            )]
            .into(),
        );
        assert_eq!(node_registration_patch(&n, "m1"), None);
        let mut n = node(&[], &[]);
        n.metadata.deletion_timestamp = Some(status::now());
        assert_eq!(node_registration_patch(&n, "m1"), None);
    }

    #[test]
    fn a_machine_gets_provider_id_node_label_and_priority() {
        let spec: machine_api::MachineSpec = serde_json::from_value(
            serde_json::json!({"class": {"kind": "MachineClass", "name": "c"}}),
        )
        .unwrap();
        let m = Machine::new("m1", spec);
        let patch = machine_registration_patch(&m, "ip-1", "aws:///i-1", true).unwrap();
        assert_eq!(patch["spec"]["providerID"], "aws:///i-1");
        assert_eq!(patch["metadata"]["labels"][NODE_LABEL_KEY], "ip-1");
        assert_eq!(patch["metadata"]["annotations"][PRIORITY_ANNOTATION], "3");
        // Without a target cluster there is no node label.
        let patch = machine_registration_patch(&m, "ip-1", "aws:///i-1", false).unwrap();
        assert!(patch["metadata"].get("labels").is_none());

        let mut done = m.clone();
        done.spec.provider_id = "aws:///i-1".into();
        done.metadata.labels = Some([(NODE_LABEL_KEY.to_string(), "ip-1".to_string())].into());
        done.metadata.annotations =
            Some([(PRIORITY_ANNOTATION.to_string(), "5".to_string())].into());
        assert_eq!(
            machine_registration_patch(&done, "ip-1", "aws:///i-1", true),
            None
        );
    }
}
