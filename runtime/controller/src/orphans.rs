//! Orphan-VM collection (MCM `reconcileClusterMachineSafetyOrphanVMs`): every
//! `--machine-safety-orphan-vms-period`, and once at start, ListMachines per MachineClass and
//! DeleteMachine for every VM that no Machine owns.
//!
//! A VM is kept when a Machine of its name exists with its providerID, or when that Machine's
//! phase is "" or CrashLoopBackOff (its creation may not have recorded the providerID yet).
//!
//! Deliberate additions to MCM, so that collection cannot mass-delete (MCM#657, #718: the
//! safety controller deleting after a restart or from a partial view):
//! - **complete views only**: the Machines come from one unpaginated list of the API server
//!   per class, after the class's ListMachines; a failed list (or a failed ListMachines) ends
//!   the pass for that view — nothing is deleted from a view that is not whole;
//! - **a minimum age** (`--orphan-min-age`, default: the creation timeout): ListMachines carries
//!   no launch time, so a VM counts as an orphan only after this controller has seen it
//!   unowned for that long, pass after pass; a VM found owned in between starts over, and a
//!   restarted controller starts every clock again;
//! - **a cap per pass** (`--orphan-max-deletions-per-pass`, default 20): what is over it waits
//!   for the next pass, with a Warning event `OrphanCollectionCapped` on the class and
//!   `mcm_wasm_orphan_passes_capped_total`;
//! - **dry run** (`--orphan-dry-run`): the same decisions, an `OrphanVMWouldBeDeleted` event
//!   instead of DeleteMachine.
//!
//! The choice is the pure [`plan`] (unit-tested); this module's I/O only feeds and carries it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::ResourceExt as _;
use kube::api::ListParams;
use kube::runtime::events::{Event, EventType};
use machine_api::{Machine, MachineClass, MachinePhase};

use super::machine::driver_class;
use super::{Context, secrets};
use mcm_driver::{self, ClassRequest, MachineRequest};

/// One VM collected (or that failed to be, or would be in a dry run).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Orphan {
    pub class: String,
    pub provider_id: String,
    pub machine_name: String,
    pub result: Result<(), String>,
}

/// What collection may do (from the controller's flags).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub min_age: Duration,
    pub max_deletions_per_pass: usize,
    pub dry_run: bool,
}

/// What one pass over one class decided.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// (providerID, machine name) to delete now, in a stable order.
    pub delete: Vec<(String, String)>,
    /// Unowned, but not for `min_age` yet.
    pub too_young: usize,
    /// Old enough, but over the pass's cap: next pass.
    pub over_cap: usize,
}

/// The pure decision: of `unowned` VMs (providerID, machine name, unowned for how long),
/// those old enough, at most `budget` of them.
pub fn plan(
    mut unowned: Vec<(String, String, Duration)>,
    min_age: Duration,
    budget: usize,
) -> Plan {
    unowned.sort();
    let mut out = Plan::default();
    for (provider_id, name, age) in unowned {
        if age < min_age {
            out.too_young += 1;
        } else if out.delete.len() < budget {
            out.delete.push((provider_id, name));
        } else {
            out.over_cap += 1;
        }
    }
    out
}

/// The collector: the policy and, per (class, providerID), when the VM was first seen unowned.
pub struct Collector {
    policy: Policy,
    first_seen: HashMap<(String, String), Instant>,
}

impl Collector {
    pub fn new(policy: Policy) -> Collector {
        Collector {
            policy,
            first_seen: HashMap::new(),
        }
    }

    /// The policy of the controller's flags.
    pub fn for_config(config: &super::Config) -> Collector {
        Collector::new(Policy {
            min_age: config.orphan_min_age,
            max_deletions_per_pass: config.orphan_max_deletions_per_pass,
            dry_run: config.orphan_dry_run,
        })
    }
}

/// Run the loop until `shutdown` resolves.
pub async fn run(ctx: Arc<Context>, period: Duration, shutdown: impl Future<Output = ()>) {
    let mut collector = Collector::for_config(&ctx.config);
    tokio::pin!(shutdown);
    loop {
        match collector.pass(&ctx).await {
            Ok(collected) if !collected.is_empty() => {
                tracing::info!(
                    count = collected.len(),
                    dry_run = collector.policy.dry_run,
                    "orphan VMs collected"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("orphan VM collection: {e}; nothing deleted in this pass"),
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(period) => {}
        }
    }
}

/// Whether the VM `provider_id` named `machine_name` is owned by a machine.
fn owned(machines: &HashMap<String, Machine>, provider_id: &str, machine_name: &str) -> bool {
    match machines.get(machine_name) {
        Some(m) if m.spec.provider_id == provider_id => true,
        Some(m) => matches!(m.phase(), None | Some(MachinePhase::CrashLoopBackOff)),
        None => false,
    }
}

impl Collector {
    /// One pass over every MachineClass of a loaded provider. An error (listing classes or
    /// Machines) ends the pass; what was deleted before it is in the log and the events.
    pub async fn pass(&mut self, ctx: &Context) -> Result<Vec<Orphan>, kube::Error> {
        let mut out = Vec::new();
        let mut budget = self.policy.max_deletions_per_pass;
        let mut seen_unowned = HashSet::new();
        for class in ctx.classes().list(&ListParams::default()).await? {
            let Some(provider) = ctx.registry.get(&class.spec.provider) else {
                continue;
            };
            let secret =
                secrets::merged_secret(&ctx.cache, &ctx.control, &class, &ctx.config.namespace)
                    .await?;
            let started = Instant::now();
            let listed = provider
                .list_machines(&ClassRequest {
                    machine_class: driver_class(&class),
                    secret: secret.clone(),
                })
                .await;
            ctx.metrics.observe(
                provider.name(),
                mcm_driver::Operation::ListMachines,
                listed.as_ref().err().map(|e| e.code),
                started.elapsed(),
            );
            let listed = match listed {
                Ok(r) => r.machines,
                Err(e) => {
                    tracing::info!(class = %class.name_any(), "ListMachines failed, skipping the class: {e}");
                    continue;
                }
            };
            // Machines are listed after the VMs (a machine created in between is seen), whole:
            // no limit, so one consistent snapshot of the API server or an error.
            let machines: HashMap<String, Machine> = ctx
                .machines()
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .map(|m| (m.name_any(), m))
                .collect();
            let now = Instant::now();
            let unowned: Vec<(String, String, Duration)> = listed
                .into_iter()
                .filter(|(provider_id, name)| !owned(&machines, provider_id, name))
                .map(|(provider_id, name)| {
                    let key = (class.name_any(), provider_id.clone());
                    let first = *self.first_seen.entry(key.clone()).or_insert(now);
                    seen_unowned.insert(key);
                    (provider_id, name, now - first)
                })
                .collect();
            let decided = plan(unowned, self.policy.min_age, budget);
            budget -= decided.delete.len();
            if decided.too_young > 0 {
                tracing::info!(class = %class.name_any(), count = decided.too_young, min_age = ?self.policy.min_age, "unowned VMs not old enough to collect yet");
            }
            if decided.over_cap > 0 {
                self.capped(ctx, &class, &decided).await;
            }
            for (provider_id, machine_name) in decided.delete {
                let result = if self.policy.dry_run {
                    Ok(())
                } else {
                    let req = MachineRequest {
                        machine: mcm_driver::Machine {
                            name: machine_name.clone(),
                            namespace: ctx.config.namespace.clone(),
                            provider_id: provider_id.clone(),
                            ..Default::default()
                        },
                        machine_class: driver_class(&class),
                        secret: secret.clone(),
                    };
                    let started = Instant::now();
                    let deleted = provider.delete_machine(&req).await;
                    ctx.metrics.observe(
                        provider.name(),
                        mcm_driver::Operation::DeleteMachine,
                        deleted.as_ref().err().map(|e| e.code),
                        started.elapsed(),
                    );
                    deleted.map(|_| ()).map_err(|e| e.to_string())
                };
                if result.is_ok() && !self.policy.dry_run {
                    self.first_seen
                        .remove(&(class.name_any(), provider_id.clone()));
                }
                ctx.metrics.orphan(self.policy.dry_run, result.is_ok());
                self.report(ctx, &class, &provider_id, &machine_name, &result)
                    .await;
                out.push(Orphan {
                    class: class.name_any(),
                    provider_id,
                    machine_name,
                    result,
                });
            }
        }
        // A VM no longer unowned (or gone) starts over if it is ever unowned again.
        self.first_seen.retain(|key, _| seen_unowned.contains(key));
        Ok(out)
    }

    async fn report(
        &self,
        ctx: &Context,
        class: &MachineClass,
        provider_id: &str,
        machine_name: &str,
        result: &Result<(), String>,
    ) {
        let what = format!("VM {provider_id} (machine name {machine_name:?}) has no Machine");
        let (type_, reason, note) = match result {
            Ok(()) if self.policy.dry_run => (
                EventType::Normal,
                "OrphanVMWouldBeDeleted",
                format!("{what}: it would be deleted (--orphan-dry-run)"),
            ),
            Ok(()) => (
                EventType::Normal,
                "OrphanVMDeleted",
                format!("{what}: deleted"),
            ),
            Err(e) => (
                EventType::Warning,
                "OrphanVMDeleteFailed",
                format!("{what}; DeleteMachine failed: {e}"),
            ),
        };
        match result {
            Ok(()) => {
                tracing::info!(class = %class.name_any(), %provider_id, machine = %machine_name, dry_run = self.policy.dry_run, "orphan VM collected")
            }
            Err(e) => {
                tracing::warn!(class = %class.name_any(), %provider_id, machine = %machine_name, "deleting orphan VM failed: {e}")
            }
        }
        publish(ctx, class, type_, reason, note).await;
    }

    async fn capped(&self, ctx: &Context, class: &MachineClass, decided: &Plan) {
        let note = format!(
            "{} unowned VMs wait for the next pass: at most {} are deleted per pass (--orphan-max-deletions-per-pass)",
            decided.over_cap, self.policy.max_deletions_per_pass
        );
        tracing::warn!(class = %class.name_any(), "{note}");
        ctx.metrics.orphan_pass_capped();
        publish(
            ctx,
            class,
            EventType::Warning,
            "OrphanCollectionCapped",
            note,
        )
        .await;
    }
}

async fn publish(
    ctx: &Context,
    class: &MachineClass,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(super::machine::event_note(note)),
        action: "DeleteMachine".into(),
        secondary: None,
    };
    use kube::Resource as _;
    if let Err(e) = ctx.recorder.publish(&ev, &class.object_ref(&())).await {
        tracing::debug!("cannot record event: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_keeps_young_vms_and_caps_the_pass() {
        let min = Duration::from_secs(60);
        let vm = |id: &str, age: u64| (id.to_string(), format!("m-{id}"), Duration::from_secs(age));
        let p = plan(
            vec![vm("i-3", 90), vm("i-1", 60), vm("i-2", 59), vm("i-4", 600)],
            min,
            2,
        );
        assert_eq!(
            p.delete,
            [
                ("i-1".to_string(), "m-i-1".to_string()),
                ("i-3".into(), "m-i-3".into())
            ]
        );
        assert_eq!((p.too_young, p.over_cap), (1, 1));
        assert_eq!(plan(vec![vm("i-1", 0)], Duration::ZERO, 5).delete.len(), 1);
        let none = plan(vec![vm("i-1", 999)], min, 0);
        assert!(none.delete.is_empty());
        assert_eq!(none.over_cap, 1);
    }

    fn machine(name: &str, provider_id: &str, phase: Option<MachinePhase>) -> (String, Machine) {
        (
            name.to_string(),
            crate::fixtures::machine_in(name, provider_id, phase),
        )
    }

    #[test]
    fn ownership_as_mcm() {
        let machines: HashMap<String, Machine> = [
            machine("a", "aws:///r/i-1", Some(MachinePhase::Running)),
            machine("b", "", None),
            machine("c", "", Some(MachinePhase::CrashLoopBackOff)),
            machine("d", "aws:///r/i-9", Some(MachinePhase::Running)),
        ]
        .into();
        assert!(owned(&machines, "aws:///r/i-1", "a"));
        assert!(
            owned(&machines, "aws:///r/i-2", "b"),
            "creation in progress"
        );
        assert!(owned(&machines, "aws:///r/i-3", "c"), "creation failing");
        assert!(
            !owned(&machines, "aws:///r/i-4", "d"),
            "a second VM of a running machine"
        );
        assert!(!owned(&machines, "aws:///r/i-5", "gone"));
    }
}
