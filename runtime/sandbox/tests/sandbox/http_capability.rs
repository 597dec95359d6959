//! The http capability against a real local HTTP server.

use std::time::{Duration, Instant};

use crate::support::*;
use mcm_driver::Code;
use mcm_sandbox::{EgressPolicy, ProviderSettings};
use tracing_test::traced_test;

fn allow(addr: std::net::SocketAddr) -> ProviderSettings {
    ProviderSettings {
        egress: EgressPolicy::parse(&[addr.to_string()]).unwrap(),
        ..Default::default()
    }
}

#[tokio::test]
async fn allowed_call_keeps_method_headers_and_body() {
    let addr = test_server().await;
    let sandbox = sandbox(Duration::from_secs(5));
    let probe = load(&sandbox, "test_http_probe", allow(addr)).await;
    let spec = serde_json::json!({
        "method": "PUT",
        "url": format!("http://{addr}/echo"),
        "headers": [["x-custom", "value 1"], ["content-type", "text/plain"]],
        "body": "hello from the guest ✓",
    });
    let answer = probe
        .create_machine(&machine_request("m1", spec))
        .await
        .unwrap();
    assert_eq!(answer.provider_id, "probe:///201");
    assert_eq!(answer.node_name, "hello from the guest ✓");
    let state: serde_json::Value = serde_json::from_str(&answer.last_known_state).unwrap();
    let headers: Vec<(String, String)> = serde_json::from_value(state["headers"].clone()).unwrap();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(header("x-echo-method").as_deref(), Some("PUT"));
    let sent: Vec<(String, String)> =
        serde_json::from_str(&header("x-echo-headers").unwrap()).unwrap();
    assert!(
        sent.contains(&("x-custom".into(), "value 1".into())),
        "{sent:?}"
    );
    assert!(
        sent.contains(&("content-type".into(), "text/plain".into())),
        "{sent:?}"
    );
}

/// The probe's `send-many` of the requests in `spec`'s `many`: each answer's status or error.
async fn send_many(probe: &mcm_sandbox::Provider, spec: serde_json::Value) -> Vec<String> {
    let answer = probe
        .create_machine(&machine_request("m1", spec))
        .await
        .unwrap();
    let state: serde_json::Value = serde_json::from_str(&answer.last_known_state).unwrap();
    serde_json::from_value(state["many"].clone()).unwrap()
}

/// `send-many` (contract 0.1.3): every request as `send` would send it (a host outside the
/// allowlist denied, the others sent), one answer each in the order given, and sent at once:
/// `/pair` answers 200 only to two requests in flight together (one after the other, the first
/// would wait alone and get 408).
#[tokio::test]
async fn send_many_sends_at_once_each_under_the_same_rules_answers_in_order() {
    let addr = test_server().await;
    let sandbox = sandbox(Duration::from_secs(20));
    let probe = load(&sandbox, "test_http_probe", allow(addr)).await;
    let get = |url: String| serde_json::json!({ "method": "GET", "url": url });
    let spec = serde_json::json!({
        "method": "GET",
        "url": "",
        "many": [
            get(format!("http://{addr}/pair")),
            get("http://127.0.0.1:9/not-allowed".into()),
            get(format!("http://{addr}/pair")),
            { "method": "POST", "url": format!("http://{addr}/echo"), "body": "x" },
        ],
    });
    let many = send_many(&probe, spec).await;
    assert_eq!(many.len(), 4, "{many:?}");
    assert_eq!(many[0], "200", "{many:?}");
    assert!(many[1].contains("denied"), "{many:?}");
    assert_eq!(many[2], "200", "{many:?}");
    assert_eq!(many[3], "201", "{many:?}");
}

/// A `send-many` puts all its requests in their rate bucket's line at once, in order: a second
/// call's batch waits behind the first one's whole batch instead of interleaving with it (which
/// would hold both batches' answers until both were nearly done), even past the 32 requests
/// that are on the wire at once.
#[tokio::test]
async fn send_many_batches_wait_in_line_whole_and_in_order() {
    use axum::extract::Path;
    let arrived = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let log = arrived.clone();
    let router = axum::Router::new().route(
        "/seq/{tag}",
        axum::routing::get(move |Path(tag): Path<String>| {
            let log = log.clone();
            async move {
                log.lock().unwrap().push(tag);
                "ok"
            }
        }),
    );
    let addr = serve(router).await;
    let sandbox = sandbox(Duration::from_secs(20));
    let settings = ProviderSettings {
        rate_limits: Some(mcm_sandbox::RateLimits {
            default: Some(mcm_sandbox::Limit {
                rate: 100.0,
                burst: 1,
            }),
            ..Default::default()
        }),
        ..allow(addr)
    };
    let probe = load(&sandbox, "test_http_probe", settings).await;
    let batch = |call: &str| {
        let many: Vec<_> = (0..40)
            .map(|i| serde_json::json!({ "method": "GET", "url": format!("http://{addr}/seq/{call}{i}") }))
            .collect();
        serde_json::json!({ "method": "GET", "url": "", "many": many })
    };
    let first = send_many(&probe, batch("a"));
    let second = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        send_many(&probe, batch("b")).await
    };
    let (a, b) = tokio::join!(first, second);
    assert!(a.iter().chain(&b).all(|s| s == "200"), "{a:?} {b:?}");
    let arrived = arrived.lock().unwrap().clone();
    assert_eq!(arrived.len(), 80);
    let last_a = arrived.iter().rposition(|t| t.starts_with('a')).unwrap();
    let first_b = arrived.iter().position(|t| t.starts_with('b')).unwrap();
    assert!(
        last_a < first_b + 3,
        "the first batch's requests came after the second's began: {arrived:?}"
    );
}

/// A `send-many` longer than the host takes: the requests past 1,000 are refused without
/// being sent (the others are answered as usual; here, denied by the allowlist).
#[tokio::test]
async fn send_many_refuses_requests_past_its_cap() {
    let addr = test_server().await;
    let sandbox = sandbox(Duration::from_secs(20));
    let probe = load(&sandbox, "test_http_probe", allow(addr)).await;
    let denied = serde_json::json!({ "method": "GET", "url": "http://127.0.0.1:9/x" });
    let spec = serde_json::json!({
        "method": "GET",
        "url": "",
        "many": vec![denied; 1002],
    });
    let many = send_many(&probe, spec).await;
    assert_eq!(many.len(), 1002);
    assert!(
        many[..1000].iter().all(|a| a.contains("denied")),
        "{:?}",
        &many[..2]
    );
    for a in &many[1000..] {
        assert!(a.contains("at most 1000 requests"), "{a}");
    }
}

#[tokio::test]
#[traced_test]
async fn denied_host_is_denied_to_the_guest_and_logged() {
    let addr = test_server().await;
    let sandbox = sandbox(Duration::from_secs(5));
    // Allowed: another port only.
    let settings = ProviderSettings {
        egress: EgressPolicy::parse(&["127.0.0.1:1"]).unwrap(),
        ..Default::default()
    };
    let probe = load(&sandbox, "test_http_probe", settings).await;
    let spec = serde_json::json!({"method": "GET", "url": format!("http://{addr}/echo")});
    let err = probe
        .create_machine(&machine_request("m1", spec))
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::PermissionDenied, "{err}");
    assert!(
        err.message
            .contains("not in the provider's egress allowlist"),
        "{err}"
    );
    assert!(logs_contain("egress denied"));
    assert!(logs_contain(&format!("127.0.0.1:{}", addr.port())));
}

#[tokio::test]
async fn slow_server_is_cut_at_the_call_deadline() {
    let addr = test_server().await;
    let deadline = Duration::from_millis(700);
    let sandbox = sandbox(deadline);
    let probe = load(&sandbox, "test_http_probe", allow(addr)).await;
    let spec = serde_json::json!({"method": "GET", "url": format!("http://{addr}/slow")});
    let started = Instant::now();
    let err = probe
        .create_machine(&machine_request("m1", spec))
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    assert_eq!(err.code, Code::DeadlineExceeded, "{err}");
    assert!(
        elapsed >= deadline - Duration::from_millis(50)
            && elapsed < deadline + Duration::from_millis(400),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn oversized_body_is_refused() {
    let addr = test_server().await;
    let sandbox = sandbox_with(Duration::from_secs(10), |c| c.max_http_body_bytes = 4 << 20);
    let probe = load(&sandbox, "test_http_probe", allow(addr)).await;
    let spec = serde_json::json!({"method": "GET", "url": format!("http://{addr}/huge")});
    let err = probe
        .create_machine(&machine_request("m1", spec))
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::ResourceExhausted, "{err}");
    assert!(err.message.contains("4194304"), "{err}");
}

#[tokio::test]
async fn redirects_are_not_followed_by_the_host() {
    // A redirect could lead outside the allowlist, so the guest sees the 3xx itself.
    use axum::response::Redirect;
    let addr = serve(axum::Router::new().route(
        "/r",
        axum::routing::get(|| async { Redirect::temporary("http://127.0.0.2:9/x") }),
    ))
    .await;
    let sandbox = sandbox(Duration::from_secs(5));
    let probe = load(&sandbox, "test_http_probe", allow(addr)).await;
    let spec = serde_json::json!({"method": "GET", "url": format!("http://{addr}/r")});
    let answer = probe
        .create_machine(&machine_request("m1", spec))
        .await
        .unwrap();
    assert_eq!(answer.provider_id, "probe:///307");
}
