//! Orphan-VM collection (MCM `reconcileClusterMachineSafetyOrphanVMs`): every
//! `--machine-safety-orphan-vms-period`, and once at start, ListMachines per MachineClass and
//! DeleteMachine for every VM that no Machine owns.
//!
//! A VM is kept when a Machine of its name exists with its providerID, or when that Machine's
//! phase is "" or CrashLoopBackOff (its creation may not have recorded the providerID yet).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt as _;
use kube::api::ListParams;
use kube::runtime::events::{Event, EventType};
use machine_api::{Machine, MachinePhase};

use super::machine::driver_class;
use super::{Context, secrets};
use mcm_driver::{self, ClassRequest, MachineRequest};

/// One VM collected (or that failed to be).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Orphan {
    pub class: String,
    pub provider_id: String,
    pub machine_name: String,
    pub result: Result<(), String>,
}

/// Run the loop until `shutdown` resolves.
pub async fn run(ctx: Arc<Context>, period: Duration, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        match collect_once(&ctx).await {
            Ok(collected) if !collected.is_empty() => {
                tracing::info!(count = collected.len(), "orphan VMs collected")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("orphan VM collection: {e}"),
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

/// One pass over every MachineClass of a loaded provider.
pub async fn collect_once(ctx: &Context) -> Result<Vec<Orphan>, kube::Error> {
    let mut out = Vec::new();
    for class in ctx.classes().list(&ListParams::default()).await? {
        let Some(provider) = ctx.registry.get(&class.spec.provider) else {
            continue;
        };
        let secret =
            secrets::merged_secret(&ctx.cache, &ctx.control, &class, &ctx.config.namespace).await?;
        let started = std::time::Instant::now();
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
        // Machines are listed after the VMs: a machine created in between is seen.
        let machines: HashMap<String, Machine> = ctx
            .machines()
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .map(|m| (m.name_any(), m))
            .collect();
        for (provider_id, machine_name) in listed {
            if owned(&machines, &provider_id, &machine_name) {
                continue;
            }
            let stub = mcm_driver::Machine {
                name: machine_name.clone(),
                namespace: ctx.config.namespace.clone(),
                provider_id: provider_id.clone(),
                ..Default::default()
            };
            let req = MachineRequest {
                machine: stub,
                machine_class: driver_class(&class),
                secret: secret.clone(),
            };
            let started = std::time::Instant::now();
            let deleted = provider.delete_machine(&req).await;
            ctx.metrics.observe(
                provider.name(),
                mcm_driver::Operation::DeleteMachine,
                deleted.as_ref().err().map(|e| e.code),
                started.elapsed(),
            );
            let result = deleted.map(|_| ()).map_err(|e| e.to_string());
            match &result {
                Ok(()) => {
                    tracing::info!(class = %class.name_any(), %provider_id, machine = %machine_name, "orphan VM deleted")
                }
                Err(e) => {
                    tracing::warn!(class = %class.name_any(), %provider_id, machine = %machine_name, "deleting orphan VM failed: {e}")
                }
            }
            let (type_, reason, note) = match &result {
                Ok(()) => (
                    EventType::Normal,
                    "OrphanVMDeleted",
                    format!(
                        "VM {provider_id} (machine name {machine_name:?}) has no Machine: deleted"
                    ),
                ),
                Err(e) => (
                    EventType::Warning,
                    "OrphanVMDeleteFailed",
                    format!(
                        "VM {provider_id} (machine name {machine_name:?}) has no Machine; DeleteMachine failed: {e}"
                    ),
                ),
            };
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
            out.push(Orphan {
                class: class.name_any(),
                provider_id,
                machine_name,
                result,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(name: &str, provider_id: &str, phase: Option<MachinePhase>) -> (String, Machine) {
        let mut m = Machine::new(name, Default::default());
        m.spec.provider_id = provider_id.into();
        if let Some(p) = phase {
            m.status = Some(machine_api::MachineStatus {
                current_status: machine_api::CurrentStatus {
                    phase: Some(p),
                    ..Default::default()
                },
                ..Default::default()
            });
        }
        (name.to_string(), m)
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
