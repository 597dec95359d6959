//! Deadlines are wall-clock and CPU-bound guests cannot starve anyone: a spinning guest stops
//! within 15 ms of its deadline (100 ms and 2 s here; 10 s and 60 s in `just bench`), and with
//! two or four spinning guests on the two workers of the default runtime, a normal call of
//! another provider completes within 50 ms. One test, alone in its binary, so the timings are
//! not shared with other tests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;
use mcm_driver::Code;
use mcm_sandbox::{Deadlines, ProviderSettings};

const OVERSHOOT: Duration = Duration::from_millis(15);
const NORMAL_CALL: Duration = Duration::from_millis(50);

fn with_deadline(d: Duration) -> ProviderSettings {
    ProviderSettings {
        deadlines: Some(Deadlines::all(d)),
        ..ProviderSettings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spinning_guests_stop_on_time_and_starve_no_one() {
    let sandbox = sandbox(Duration::from_secs(5));
    let noop = Arc::new(load(&sandbox, "test_noop", ProviderSettings::default()).await);

    for deadline in [Duration::from_millis(100), Duration::from_secs(2)] {
        let looper = load(&sandbox, "test_looper", with_deadline(deadline)).await;
        let started = Instant::now();
        let err = looper
            .create_machine(&machine_request("spin", serde_json::json!({})))
            .await
            .unwrap_err();
        let elapsed = started.elapsed();
        assert_eq!(err.code, Code::DeadlineExceeded, "{err}");
        let late = elapsed.saturating_sub(deadline);
        println!("deadline {deadline:?}: stopped after {elapsed:?} ({late:?} late)");
        assert!(elapsed >= deadline, "stopped early: {elapsed:?}");
        assert!(late <= OVERSHOOT, "deadline {deadline:?}: {late:?} late");
    }

    for spinners in [2, 4] {
        let looper = Arc::new(
            load(
                &sandbox,
                "test_looper",
                with_deadline(Duration::from_secs(2)),
            )
            .await,
        );
        let spinning: Vec<_> = (0..spinners)
            .map(|i| {
                let looper = looper.clone();
                tokio::spawn(async move {
                    looper
                        .create_machine(&machine_request(
                            &format!("spin-{i}"),
                            serde_json::json!({}),
                        ))
                        .await
                })
            })
            .collect();
        // Let them occupy both workers.
        tokio::time::sleep(Duration::from_millis(50)).await;
        for n in 0..5 {
            let noop = noop.clone();
            let started = Instant::now();
            // Spawned, as a reconcile is: it competes with the spinners for a worker.
            let created = tokio::spawn(async move {
                noop.create_machine(&machine_request(&format!("m{n}"), serde_json::json!({})))
                    .await
            })
            .await
            .unwrap()
            .unwrap();
            let took = started.elapsed();
            println!("{spinners} spinning guests: a normal call took {took:?}");
            assert_eq!(created.provider_id, format!("noop:///m{n}"));
            assert!(
                took <= NORMAL_CALL,
                "{spinners} spinners: normal call took {took:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for call in spinning {
            assert_eq!(
                call.await.unwrap().unwrap_err().code,
                Code::DeadlineExceeded
            );
        }
    }
}
