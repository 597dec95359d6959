//! 1000 hostile calls in a row leave the process's memory flat.

use std::time::Duration;

use crate::support::*;
use mcm_sandbox::ProviderSettings;

#[tokio::test]
async fn thousand_hostile_calls_leave_memory_flat() {
    // Memory is measured for the whole process: run alone, in a child process.
    if !alone("memory_flat::thousand_hostile_calls_leave_memory_flat") {
        return;
    }
    // A small memory limit keeps the memory bomb's 1000 rounds quick.
    let sandbox = sandbox_with(Duration::from_millis(30), |c| c.memory_limit = 8 << 20);
    let mut providers = Vec::new();
    for name in [
        "test_panicker",
        "test_membomb",
        "test_recursion",
        "test_bigresult",
        "test_looper",
    ] {
        providers.push(load(&sandbox, name, ProviderSettings::default()).await);
    }
    let req = machine_request("m", serde_json::json!({}));
    let round = |n: usize| {
        let providers = &providers;
        let req = &req;
        async move {
            for i in 0..n {
                // Mostly the cheap failures, with a deadline-bound loop every 25th call.
                let p = if i % 25 == 24 {
                    &providers[4]
                } else {
                    &providers[i % 4]
                };
                p.create_machine(req).await.expect_err("hostile");
            }
        }
    };
    round(100).await; // warm-up: pool slots, caches, allocator arenas
    let before = rss_bytes();
    round(1000).await;
    let after = rss_bytes();
    let growth = after.saturating_sub(before) as f64 / (1 << 20) as f64;
    eprintln!(
        "RSS before {} MiB, after {} MiB, growth {growth:.1} MiB",
        before >> 20,
        after >> 20
    );
    assert!(
        growth < 32.0,
        "RSS grew by {growth:.1} MiB over 1000 hostile calls"
    );
}
