//! Leader election on a `coordination.k8s.io/v1` Lease (`--leader-elect`), as client-go's
//! leaderelection does: take the Lease when it is free or expired, renew it every retry
//! period, and give up leadership when renewals fail for longer than the renew deadline.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};

#[derive(Clone, Debug)]
pub struct LeaderConfig {
    pub namespace: String,
    /// The Lease's name (MCM's machine controller uses `machine-controller`).
    pub name: String,
    /// Who we are (hostname and pid).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

pub fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    format!("{host}_{}", std::process::id())
}

fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let Some(renew) = spec.renew_time.as_ref() else {
        return true;
    };
    let secs = spec.lease_duration_seconds.unwrap_or(15).max(0) as i64;
    renew.0 + k8s_openapi::jiff::SignedDuration::from_secs(secs) < now
}

/// One attempt to take or renew the Lease. `Ok(true)`: we hold it now.
pub async fn try_acquire_or_renew(
    api: &Api<Lease>,
    cfg: &LeaderConfig,
) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let spec_for = |acquire: Option<MicroTime>, transitions: i32| LeaseSpec {
        holder_identity: Some(cfg.identity.clone()),
        lease_duration_seconds: Some(cfg.lease_duration.as_secs().max(1) as i32),
        acquire_time: Some(acquire.unwrap_or(MicroTime(now))),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..Default::default()
    };
    let Some(mut lease) = api.get_opt(&cfg.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(cfg.name.clone()),
                ..Default::default()
            },
            spec: Some(spec_for(None, 0)),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let ours = holder == cfg.identity;
    if !ours && !holder.is_empty() && !expired(&spec, now) {
        return Ok(false);
    }
    let transitions = spec.lease_transitions.unwrap_or(0) + if ours { 0 } else { 1 };
    lease.spec = Some(spec_for(
        if ours {
            spec.acquire_time.clone()
        } else {
            None
        },
        transitions,
    ));
    match api.replace(&cfg.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Wait until we hold the Lease.
pub async fn acquire(client: &kube::Client, cfg: &LeaderConfig) {
    let api: Api<Lease> = Api::namespaced(client.clone(), &cfg.namespace);
    loop {
        match try_acquire_or_renew(&api, cfg).await {
            Ok(true) => {
                tracing::info!(lease = %cfg.name, identity = %cfg.identity, "became leader");
                return;
            }
            Ok(false) => tracing::debug!(lease = %cfg.name, "another instance leads; waiting"),
            Err(e) => tracing::warn!(lease = %cfg.name, "leader election: {e}"),
        }
        tokio::time::sleep(cfg.retry_period).await;
    }
}

/// Keep renewing; returns when leadership is lost (no successful renewal within the renew
/// deadline, or another holder took the Lease).
pub async fn hold(client: &kube::Client, cfg: &LeaderConfig) {
    let api: Api<Lease> = Api::namespaced(client.clone(), &cfg.namespace);
    let mut last_renewal = Instant::now();
    loop {
        tokio::time::sleep(cfg.retry_period).await;
        match try_acquire_or_renew(&api, cfg).await {
            Ok(true) => last_renewal = Instant::now(),
            Ok(false) => {
                tracing::error!(lease = %cfg.name, "leadership lost: the Lease has another holder");
                return;
            }
            Err(e) => tracing::warn!(lease = %cfg.name, "renewing the Lease: {e}"),
        }
        if last_renewal.elapsed() > cfg.renew_deadline {
            tracing::error!(lease = %cfg.name, "leadership lost: no renewal within {:?}", cfg.renew_deadline);
            return;
        }
    }
}
