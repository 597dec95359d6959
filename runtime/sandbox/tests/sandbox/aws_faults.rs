//! Faults between the runtime and EC2 (moto), injected by a loopback proxy: each maps to the
//! README's machine code, and retrying the create afterwards leaves exactly one instance.

use std::time::Duration;

use crate::support::*;
use mcm_driver::*;
use mcm_sandbox::{Deadlines, EgressPolicy, Provider, ProviderSettings};

struct Env {
    moto: Moto,
    proxy: FaultProxy,
    provider: Provider,
    spec: serde_json::Value,
}

const DEADLINE: Duration = Duration::from_secs(4);

/// 100 requests per second for every EC2 action the provider sends.
fn wide_rate_limits() -> mcm_sandbox::RateLimits {
    let wide = mcm_sandbox::Limit {
        rate: 100.0,
        burst: 100,
    };
    mcm_sandbox::RateLimits {
        classes: [
            "RunInstances",
            "DescribeImages",
            "DescribeInstances",
            "TerminateInstances",
        ]
        .map(|c| (c.to_string(), wide))
        .into(),
        default: Some(wide),
        throttle_codes: Vec::new(),
    }
}

async fn env() -> Env {
    let moto = Moto::start();
    let proxy = FaultProxy::start(moto.addr).await;
    let (ami, subnet, group) = moto.class_resources().await;
    let settings = ProviderSettings {
        egress: EgressPolicy::parse(&[proxy.addr.to_string()]).unwrap(),
        config: Some(serde_json::json!({"endpoint": proxy.endpoint}).to_string()),
        deadlines: Some(Deadlines::all(DEADLINE)),
        // Faults, not EC2's pace, are under test: buckets wide enough that the host's
        // resends of a throttled request fit the short deadline.
        rate_limits: Some(wide_rate_limits()),
        ..Default::default()
    };
    let provider = load(&sandbox(DEADLINE), "aws_provider", settings).await;
    Env {
        moto,
        proxy,
        provider,
        spec: provider_spec(&ami, &subnet, &group),
    }
}

impl Env {
    fn request(&self, name: &str) -> MachineRequest {
        let mut req = machine_request(name, self.spec.clone());
        req.secret = secret();
        req
    }

    /// Inject `fault` into the create's `action`, expect `code`, then retry: one VM.
    async fn fault_then_retry(&self, name: &str, action: &str, fault: Fault, code: Code) {
        self.proxy.inject(action, fault.clone());
        let err = self
            .provider
            .create_machine(&self.request(name))
            .await
            .unwrap_err();
        assert_eq!(err.code, code, "{fault:?} on {action}: {err}");
        assert_eq!(self.proxy.pending_faults(), 0, "the fault was used");
        let created = self
            .provider
            .create_machine(&self.request(name))
            .await
            .unwrap_or_else(|e| panic!("retry after {fault:?}: {e}"));
        let live = self.moto.live_instances_named(name).await;
        assert_eq!(
            live.len(),
            1,
            "after {fault:?} on {action} and a retry: {live:?}"
        );
        assert_eq!(
            created.provider_id,
            format!("aws:///{REGION}/{}", live[0].id)
        );
        // And once more: still one.
        self.provider
            .create_machine(&self.request(name))
            .await
            .unwrap();
        assert_eq!(self.moto.live_instances_named(name).await.len(), 1);
    }
}

#[tokio::test]
async fn internal_error_500_is_unavailable() {
    let env = env().await;
    env.fault_then_retry(
        "f-500",
        "RunInstances",
        Fault::Status(500, INTERNAL_ERROR_XML),
        Code::Unavailable,
    )
    .await;
}

#[tokio::test]
async fn service_unavailable_503_is_unavailable() {
    let env = env().await;
    env.fault_then_retry(
        "f-503",
        "RunInstances",
        Fault::Status(503, "Service Unavailable"),
        Code::Unavailable,
    )
    .await;
    env.fault_then_retry(
        "f-503-describe",
        "DescribeInstances",
        Fault::Status(503, "Service Unavailable"),
        Code::Unavailable,
    )
    .await;
}

#[tokio::test]
async fn throttling_is_absorbed_by_the_host_until_it_persists() {
    let env = env().await;
    // One throttling answer: the host's rate limiter sends the request again once its bucket
    // allows; the call succeeds with one VM and the guest never saw the throttle.
    env.proxy.inject("RunInstances", Fault::Throttle);
    env.proxy.take_actions();
    env.provider
        .create_machine(&env.request("f-throttle-once"))
        .await
        .unwrap();
    assert_eq!(env.proxy.pending_faults(), 0, "the fault was used");
    let runs = env
        .proxy
        .take_actions()
        .into_iter()
        .filter(|a| a == "RunInstances")
        .count();
    assert_eq!(runs, 2, "refused once, sent again");
    assert_eq!(
        env.moto.live_instances_named("f-throttle-once").await.len(),
        1
    );
    // Throttled on every attempt the host makes within the deadline (it backs off between
    // them): the guest sees it, Unavailable; once the cloud accepts again, one VM.
    // (DescribeImages is not asked again here: the host keeps its answer a minute.)
    for action in ["RunInstances"] {
        let name = format!("f-throttle-{}", action.to_lowercase());
        for _ in 0..mcm_sandbox::MAX_THROTTLED_ATTEMPTS {
            env.proxy.inject(action, Fault::Throttle);
        }
        let err = env
            .provider
            .create_machine(&env.request(&name))
            .await
            .unwrap_err();
        assert_eq!(err.code, Code::Unavailable, "{action}: {err}");
        assert!(
            err.message.contains("RequestLimitExceeded"),
            "{action}: {err}"
        );
        env.proxy.clear_faults();
        env.provider
            .create_machine(&env.request(&name))
            .await
            .unwrap();
        assert_eq!(
            env.moto.live_instances_named(&name).await.len(),
            1,
            "{action}"
        );
    }
}

#[tokio::test]
async fn slow_answer_past_the_deadline_is_deadline_exceeded() {
    let env = env().await;
    // moto makes the instance; its answer arrives after the call's deadline.
    env.fault_then_retry(
        "f-slow",
        "RunInstances",
        Fault::SlowAnswer(DEADLINE * 2),
        Code::DeadlineExceeded,
    )
    .await;
}

#[tokio::test]
async fn dropped_connection_is_unavailable() {
    let env = env().await;
    env.fault_then_retry("f-drop", "RunInstances", Fault::Drop, Code::Unavailable)
        .await;
}

#[tokio::test]
async fn answer_lost_after_the_instance_was_made_leaves_one_instance() {
    let env = env().await;
    env.fault_then_retry(
        "f-lost",
        "RunInstances",
        Fault::DropAnswer,
        Code::Unavailable,
    )
    .await;
}

#[tokio::test]
async fn delete_and_status_faults_map_too() {
    let env = env().await;
    let created = env
        .provider
        .create_machine(&env.request("f-del"))
        .await
        .unwrap();
    let mut by_id = env.request("f-del");
    by_id.machine.provider_id = created.provider_id.clone();

    for _ in 0..mcm_sandbox::MAX_THROTTLED_ATTEMPTS {
        env.proxy.inject("DescribeInstances", Fault::Throttle);
    }
    assert_eq!(
        env.provider
            .get_machine_status(&by_id)
            .await
            .unwrap_err()
            .code,
        Code::Unavailable
    );
    // The host's attempts within the deadline did not use them all.
    env.proxy.clear_faults();
    env.proxy
        .inject("TerminateInstances", Fault::Status(500, INTERNAL_ERROR_XML));
    assert_eq!(
        env.provider.delete_machine(&by_id).await.unwrap_err().code,
        Code::Unavailable
    );
    env.proxy.inject("TerminateInstances", Fault::DropAnswer);
    assert_eq!(
        env.provider.delete_machine(&by_id).await.unwrap_err().code,
        Code::Unavailable
    );
    // The lost answer's termination happened; the retry is still a success.
    env.provider.delete_machine(&by_id).await.unwrap();
    assert!(env.moto.live_instances_named("f-del").await.is_empty());
    assert_eq!(
        env.provider
            .get_machine_status(&by_id)
            .await
            .unwrap_err()
            .code,
        Code::NotFound
    );
}

/// A request whose token would come after the call's deadline fails the call at once with
/// Unavailable naming the rate limit and its bucket, instead of hanging until the deadline;
/// no request reaches the cloud for it.
#[tokio::test]
async fn a_token_after_the_deadline_is_unavailable_rate_limited_at_once() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(moto.addr).await;
    let (ami, subnet, group) = moto.class_resources().await;
    let mut limits = wide_rate_limits();
    limits.classes.insert(
        "RunInstances".into(),
        mcm_sandbox::Limit {
            rate: 0.05,
            burst: 1,
        },
    );
    let settings = ProviderSettings {
        egress: EgressPolicy::parse(&[proxy.addr.to_string()]).unwrap(),
        config: Some(serde_json::json!({"endpoint": proxy.endpoint}).to_string()),
        deadlines: Some(Deadlines::all(DEADLINE)),
        rate_limits: Some(limits),
        ..Default::default()
    };
    let provider = load(&sandbox(DEADLINE), "aws_provider", settings).await;
    let request = |name: &str| {
        let mut req = machine_request(name, provider_spec(&ami, &subnet, &group));
        req.secret = secret();
        req
    };
    provider.create_machine(&request("r1")).await.unwrap();
    proxy.take_actions();
    let started = std::time::Instant::now();
    let err = provider.create_machine(&request("r2")).await.unwrap_err();
    assert_eq!(err.code, Code::Unavailable, "{err}");
    assert!(err.message.starts_with("rate limited"), "{err}");
    assert!(err.message.contains("RunInstances"), "{err}");
    assert!(
        started.elapsed() < DEADLINE / 2,
        "failed fast: {:?}",
        started.elapsed()
    );
    assert!(
        !proxy.take_actions().contains(&"RunInstances".to_string()),
        "no RunInstances was sent"
    );
    assert!(moto.live_instances_named("r2").await.is_empty());
}
