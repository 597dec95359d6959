//! MCM's finalizers on MachineClasses and Secrets (`machineclass.go`, `secret.go`): a class of
//! one of our providers carries `machine.sapcloud.io/machine-controller-manager` while a
//! Machine refers to it and loses it when none does (deleting or not); a Secret in
//! `--namespace` carries `machine.sapcloud.io/machine-controller` while a MachineClass names
//! it in `secretRef` or `credentialsSecretRef` (by name; the namespace is not compared).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt as _;
use kube::api::{Api, ListParams};
use machine_api::{MC_SECRET_FINALIZER, MCM_FINALIZER};

use super::{Context, add_finalizer, remove_finalizer};

/// Run [`sync_once`] every `period` until `shutdown` resolves.
pub async fn run(ctx: Arc<Context>, period: Duration, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        if let Err(e) = sync_once(&ctx).await {
            tracing::debug!("finalizer sync: {e}");
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(period) => {}
        }
    }
}

/// One pass: add or remove the class and secret finalizers by what refers to them.
pub async fn sync_once(ctx: &Context) -> Result<(), kube::Error> {
    let machines = ctx.machines().list(&ListParams::default()).await?.items;
    let classes = ctx.classes().list(&ListParams::default()).await?.items;
    let used: HashSet<&str> = machines
        .iter()
        .filter(|m| m.spec.class.kind == "MachineClass")
        .map(|m| m.spec.class.name.as_str())
        .collect();
    for class in &classes {
        if ctx.registry.get(&class.spec.provider).is_none() {
            continue; // not ours
        }
        let name = class.name_any();
        if used.contains(name.as_str()) {
            add_finalizer(&ctx.classes(), class, MCM_FINALIZER).await?;
        } else if remove_finalizer(&ctx.classes(), class, MCM_FINALIZER).await? {
            tracing::info!(class = %name, "no Machine refers to the MachineClass: finalizer removed");
        }
    }
    let referenced: HashSet<&str> = classes
        .iter()
        .flat_map(|c| [&c.spec.secret_ref, &c.spec.credentials_secret_ref])
        .flatten()
        .filter_map(|r| r.name.as_deref())
        .collect();
    let secrets: Api<Secret> = Api::namespaced(ctx.control.clone(), &ctx.config.namespace);
    for secret in secrets.list(&ListParams::default()).await?.items {
        let name = secret.name_any();
        let ours = secret.finalizers().iter().any(|f| f == MC_SECRET_FINALIZER);
        if ours && !referenced.contains(name.as_str()) {
            remove_finalizer(&secrets, &secret, MC_SECRET_FINALIZER).await?;
            tracing::info!(secret = %name, "no MachineClass refers to the Secret: finalizer removed");
        }
    }
    Ok(())
}
