//! A line per machine phase change until every machine of the examples is Running.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures::StreamExt as _;
use kube::ResourceExt as _;
use kube::api::{Api, ListParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use machine_api::{Machine, MachineDeployment};

use crate::Stack;

/// Waits until the examples' machines (the bare Machine and the MachineDeployment's replicas)
/// all exist and are Running; returns their number. Fails when a controller exits or after
/// `timeout`, naming what was not Running.
pub async fn until_running(
    stack: &mut Stack,
    client: &kube::Client,
    namespace: &str,
    timeout: Duration,
) -> Result<usize> {
    let machines: Api<Machine> = Api::namespaced(client.clone(), namespace);
    let deployments: Api<MachineDeployment> = Api::namespaced(client.clone(), namespace);
    let bare = 1;
    let start = Instant::now();
    let mut shown: BTreeMap<String, String> = BTreeMap::new();
    // Every change is seen through a watch (a state that lasts less than a poll, such as a
    // Pending that turns Running at once, is still printed); the periodic list below checks
    // for completion and failures.
    let mut changes = watcher(machines.clone(), watcher::Config::default())
        .applied_objects()
        .boxed();
    loop {
        let tick = tokio::time::sleep(Duration::from_millis(200));
        tokio::pin!(tick);
        loop {
            tokio::select! {
                change = changes.next() => match change {
                    Some(Ok(m)) => {
                        let line = describe(&m);
                        if shown.get(&m.name_any()) != Some(&line) {
                            stack.say(format!("machine {}: {line}", m.name_any()));
                            shown.insert(m.name_any(), line);
                        }
                    }
                    Some(Err(_)) => {} // the watcher retries; the list below still runs
                    None => break,
                },
                _ = &mut tick => break,
            }
        }
        let replicas: i32 = deployments
            .list(&ListParams::default())
            .await?
            .iter()
            .map(|d| d.spec.replicas)
            .sum();
        let expected = bare + replicas.max(0) as usize;
        let list = machines.list(&ListParams::default()).await?;
        let mut running = 0;
        for m in &list {
            let line = describe(m);
            if shown.get(&m.name_any()) != Some(&line) {
                stack.say(format!("machine {}: {line}", m.name_any()));
                shown.insert(m.name_any(), line);
            }
            if phase(m) == "Running" && m.metadata.deletion_timestamp.is_none() {
                running += 1;
            }
        }
        if running == expected && list.items.len() == expected {
            return Ok(expected);
        }
        if let Some(c) = stack.controller.as_mut()
            && !c.is_running()
        {
            bail!(
                "the controller exited; its log:\n{}",
                testenv::tail(&stack.dir.path().join("controller.log"), 30)
            );
        }
        if let Some(mcm) = stack.gardener_mcm.as_mut()
            && !mcm.is_running()
        {
            bail!(
                "Gardener's machine-controller-manager exited; its log:\n{}",
                mcm.log_tail(30)
            );
        }
        if start.elapsed() > timeout {
            let waiting: Vec<String> = list
                .iter()
                .filter(|m| phase(m) != "Running")
                .map(|m| format!("{}: {}", m.name_any(), describe(m)))
                .collect();
            bail!(
                "{running} of {expected} machines Running after {timeout:?}; not Running: {waiting:?}\n\
                 --- controller log ---\n{}",
                testenv::tail(&stack.dir.path().join("controller.log"), 30)
            );
        }
    }
}

fn phase(m: &Machine) -> &str {
    m.status
        .as_ref()
        .and_then(|s| s.current_status.phase.as_ref())
        .map_or("-", |p| p.as_str())
}

/// Phase, last operation and (once known) VM and node, e.g.
/// `Pending  Create/Processing: Creating machine on cloud provider`.
fn describe(m: &Machine) -> String {
    let mut line = format!("{:<8}", phase(m));
    if let Some(op) = m.status.as_ref().map(|s| &s.last_operation)
        && !op.description.is_empty()
    {
        let kind = op.type_.as_ref().map_or("", |t| t.as_str());
        let state = op.state.as_ref().map_or("", |s| s.as_str());
        line.push_str(&format!(" {kind}/{state}: {}", op.description));
    }
    if !m.spec.provider_id.is_empty() {
        line.push_str(&format!(" [{}", m.spec.provider_id));
        if let Some(node) = m.node_name().filter(|n| !n.is_empty()) {
            line.push_str(&format!(", node {node}"));
        }
        line.push(']');
    }
    line.trim_end().to_string()
}

/// Waits until the Provider `name` is Ready, printing each new Ready/Degraded reason; fails
/// with its last error when it is not Ready after `timeout` or the controller exits.
pub async fn until_provider_ready(
    stack: &mut Stack,
    client: &kube::Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> Result<()> {
    let providers: Api<machine_api::Provider> = Api::namespaced(client.clone(), namespace);
    let start = Instant::now();
    let mut shown = String::new();
    loop {
        let status = providers.get(name).await?.status.unwrap_or_default();
        let reason = |t: &str| {
            status
                .condition(t)
                .map(|c| format!("{t}={} ({})", c.status, c.reason))
                .unwrap_or_default()
        };
        let line = format!("{} {}", reason("Ready"), reason("Degraded"));
        if line.trim() != shown {
            shown = line.trim().to_string();
            if !shown.is_empty() {
                stack.say(format!("provider {name}: {shown}"));
            }
        }
        if status
            .condition("Ready")
            .is_some_and(|c| c.status == "True")
        {
            stack.say(format!(
                "provider {name}: {} {} (contract {}) serves, digest {}",
                status.provider.unwrap_or_default(),
                status.version.unwrap_or_default(),
                status.contract.unwrap_or_default(),
                status.digest.unwrap_or_default()
            ));
            return Ok(());
        }
        if let Some(c) = stack.controller.as_mut()
            && !c.is_running()
        {
            bail!("the controller exited before the provider was Ready");
        }
        if start.elapsed() > timeout {
            bail!(
                "Provider {namespace}/{name} not Ready after {timeout:?}: {}",
                status.last_error.unwrap_or_else(|| "no status yet".into())
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
