//! One machine's reconcile context: the class, the provider, the driver requests built from
//! the Kubernetes objects, and an event on the Machine for every driver outcome.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::events::{Event, EventType};
use kube::{Resource as _, ResourceExt as _};
use machine_api::{MC_SECRET_FINALIZER, MCM_FINALIZER, Machine, MachineClass};

use super::{Context, add_finalizer, secrets};
use mcm_driver::MachineDriver;
use mcm_driver::{self, DriverError, MachineRequest, Operation, SecretData};

/// Everything a reconcile of one machine needs.
pub struct Job {
    pub ctx: Arc<Context>,
    pub api: Api<Machine>,
    pub class: Arc<MachineClass>,
    pub provider: Arc<dyn MachineDriver>,
    pub name: String,
    /// Warnings the provider recorded in this job's driver calls, not yet shown as events.
    pub warnings: std::sync::Mutex<Vec<String>>,
}

impl Job {
    /// The class's secrets, merged (credentials win).
    pub async fn secret(&self) -> Result<SecretData, kube::Error> {
        secrets::merged_secret(
            &self.ctx.cache,
            &self.ctx.control,
            &self.class,
            &self.ctx.config.namespace,
        )
        .await
    }

    /// A driver request for `machine` with `secret`.
    pub fn request(&self, machine: &Machine, secret: SecretData) -> MachineRequest {
        MachineRequest {
            machine: driver_machine(machine),
            machine_class: driver_class(&self.class),
            secret,
        }
    }

    /// The class as the driver sees it, with `secret`.
    pub fn class_request(&self, secret: SecretData) -> mcm_driver::ClassRequest {
        mcm_driver::ClassRequest {
            machine_class: driver_class(&self.class),
            secret,
        }
    }

    /// Await a driver call and record its outcome and duration in the metrics.
    pub async fn timed<T>(
        &self,
        op: Operation,
        call: impl Future<Output = Result<T, DriverError>>,
    ) -> Result<T, DriverError> {
        let started = std::time::Instant::now();
        let (result, warnings) = mcm_driver::warnings::collect(call).await;
        if !warnings.is_empty() {
            let mut pending = self.warnings.lock().expect("warnings lock");
            for w in warnings {
                if !pending.contains(&w) {
                    pending.push(w);
                }
            }
        }
        let outcome = result.as_ref().err().map(|e| e.code);
        self.ctx
            .metrics
            .observe(self.provider.name(), op, outcome, started.elapsed());
        result
    }

    /// Record a driver outcome as an event on the machine (Normal for OK, Warning with the
    /// code and message otherwise). Event failures are logged, never fatal.
    pub async fn driver_event<T>(
        &self,
        machine: &Machine,
        op: Operation,
        result: &Result<T, DriverError>,
        detail: &str,
    ) {
        let (type_, note) = match result {
            Ok(_) => (
                EventType::Normal,
                format!("{} succeeded{}", op.go_name(), detail),
            ),
            Err(e) => (EventType::Warning, format!("{} failed: {e}", op.go_name())),
        };
        let reason = match result {
            Ok(_) => format!("{}Succeeded", op.go_name()),
            Err(e) => format!("{}{}", op.go_name(), e.code.name()),
        };
        self.event(machine, type_, &reason, op.go_name(), note)
            .await;
        // What the provider warned about during the call (e.g. a credential of an unusual
        // shape, which provider-aws accepts too): one Warning event each.
        let warnings = std::mem::take(&mut *self.warnings.lock().expect("warnings lock"));
        for w in warnings {
            let note = format!("provider {}: {w}", self.provider.name());
            self.event(
                machine,
                EventType::Warning,
                "ProviderWarning",
                op.go_name(),
                note,
            )
            .await;
        }
    }

    pub async fn event(
        &self,
        machine: &Machine,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        publish_event(&self.ctx, machine, type_, reason, action, note).await
    }
}

/// An event on a Machine (note capped at the API server's limit). Event failures are logged,
/// never fatal.
pub async fn publish_event(
    ctx: &Context,
    machine: &Machine,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let ev = Event {
        type_,
        reason: reason.to_string(),
        note: Some(event_note(note)),
        action: action.to_string(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &machine.object_ref(&())).await {
        tracing::debug!(machine = %machine.name_any(), "cannot record event: {e}");
    }
}

/// The API server refuses an events.k8s.io/v1 Event whose note is over 1 KiB; a longer driver
/// message is cut (with a marker) rather than losing the event.
pub const EVENT_NOTE_LIMIT: usize = 1024;

pub fn event_note(note: String) -> String {
    mcm_driver::text::cap_message(note, EVENT_NOTE_LIMIT)
}

pub fn driver_machine(machine: &Machine) -> mcm_driver::Machine {
    mcm_driver::Machine {
        name: machine.name_any(),
        namespace: machine.namespace().unwrap_or_default(),
        uid: machine.uid().unwrap_or_default(),
        provider_id: machine.spec.provider_id.clone(),
        labels: machine.labels().clone(),
    }
}

pub fn driver_class(class: &MachineClass) -> mcm_driver::MachineClass {
    mcm_driver::MachineClass {
        name: class.name_any(),
        provider: class.spec.provider.clone(),
        provider_spec: class.spec.provider_spec.clone(),
        node_template: class
            .spec
            .node_template
            .as_ref()
            .map(|t| mcm_driver::NodeTemplate {
                capacity: t
                    .capacity
                    .iter()
                    .map(|(k, v)| (k.clone(), v.0.clone()))
                    .collect(),
                instance_type: t.instance_type.clone(),
                region: t.region.clone(),
                zone: t.zone.clone(),
                architecture: t.architecture.clone(),
            }),
    }
}

/// The class and its secrets carry MCM's finalizers while machines use them.
pub async fn ensure_class_finalizers(
    ctx: &Context,
    class: &MachineClass,
) -> Result<(), kube::Error> {
    if add_finalizer(&ctx.classes(), class, MCM_FINALIZER).await? {
        tracing::info!(class = %class.name_any(), "finalizer added to MachineClass");
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.control.clone(), &ctx.config.namespace);
    for r in [&class.spec.secret_ref, &class.spec.credentials_secret_ref]
        .into_iter()
        .flatten()
    {
        // MCM puts the finalizer only on secrets in --namespace, matched by name.
        let Some(name) = r.name.as_deref().filter(|n| !n.is_empty()) else {
            continue;
        };
        let namespace = &ctx.config.namespace;
        if let Some(secret) = ctx.cache.secret(&ctx.control, namespace, name).await? {
            add_finalizer(&secrets, &secret, MC_SECRET_FINALIZER).await?;
        }
    }
    Ok(())
}
