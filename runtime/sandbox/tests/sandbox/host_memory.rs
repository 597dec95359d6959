//! A guest cannot make the host copy an unbounded amount of its memory: a 100 MB error
//! message, a 100 MB result and 10 × 100 MB log messages each end in their code with the host's
//! peak RSS (VmHWM) growing by less than 64 MiB. Run alone in a child process (`support::alone`), so
//! nothing else moves the peak.

use crate::support::*;
use mcm_driver::Code;
use mcm_sandbox::ProviderSettings;
use std::time::Duration;

const MB100: usize = 100_000_000;
const BUDGET: u64 = 64 << 20;

#[tokio::test]
async fn oversized_guest_values_are_refused_without_being_copied() {
    // Memory is measured for the whole process: run alone, in a child process.
    if !alone("host_memory::oversized_guest_values_are_refused_without_being_copied") {
        return;
    }
    // Room in the guest for a 100 MB value (made of pages it never touches).
    let sandbox = sandbox_with(Duration::from_secs(20), |c| c.memory_limit = 256 << 20);
    let abuser = load(&sandbox, "test_abuser", ProviderSettings::default()).await;
    // Warm up: the first call maps the pool slot and code.
    abuser
        .create_machine(&abuse("result", 10, 0))
        .await
        .unwrap();

    let cases = [
        ("error", MB100, 0),
        ("result", MB100, 0),
        ("logs", MB100, 10),
    ];
    for (what, size, count) in cases {
        reset_peak_rss();
        let before = peak_rss_bytes();
        let err = abuser
            .create_machine(&abuse(what, size, count))
            .await
            .expect_err(what);
        let grown = peak_rss_bytes().saturating_sub(before);
        println!("{what}: peak RSS grew by {} KiB: {err}", grown >> 10);
        assert_eq!(err.code, Code::ResourceExhausted, "{what}: {err}");
        assert!(
            err.message.contains("more than 4194304 bytes to the host"),
            "{what}: {err}"
        );
        assert!(
            err.message.len() <= 4096,
            "{what}: {} bytes",
            err.message.len()
        );
        assert!(
            grown < BUDGET,
            "{what}: host peak RSS grew by {} MiB",
            grown >> 20
        );
    }

    // Below the crossing limit the guest's own code is kept and its message truncated.
    reset_peak_rss();
    let before = peak_rss_bytes();
    let err = abuser
        .create_machine(&abuse("error", 2_000_000, 0))
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::Unavailable, "{err}");
    assert!(err.message.len() <= 4096, "{} bytes", err.message.len());
    assert!(
        err.message.ends_with("[truncated: 2000000 bytes in all]"),
        "{}",
        &err.message[err.message.len() - 60..]
    );
    // 1 MB log messages are cut to the log limit; the call succeeds.
    let ok = abuser
        .create_machine(&abuse("logs", 1_000_000, 10))
        .await
        .unwrap();
    assert_eq!(ok.last_known_state, "logged");
    assert!(peak_rss_bytes().saturating_sub(before) < BUDGET);

    // 20 concurrent 50 MB errors: still bounded.
    reset_peak_rss();
    let before = peak_rss_bytes();
    let abuser = std::sync::Arc::new(abuser);
    let calls = (0..20).map(|_| {
        let abuser = abuser.clone();
        async move { abuser.create_machine(&abuse("error", 50_000_000, 0)).await }
    });
    for result in futures::future::join_all(calls).await {
        assert_eq!(result.unwrap_err().code, Code::ResourceExhausted);
    }
    let grown = peak_rss_bytes().saturating_sub(before);
    println!("20 × 50 MB errors: peak RSS grew by {} KiB", grown >> 10);
    assert!(grown < 2 * BUDGET, "grew by {} MiB", grown >> 20);
}
