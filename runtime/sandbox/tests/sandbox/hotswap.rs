//! Hot-swap through a watched directory under load.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::support::*;
use mcm_sandbox::{Registry, RegistryEvent};
use tokio::sync::broadcast::Receiver;

/// Copy into the directory the way an operator should: write aside, then rename.
fn install(src: &Path, dir: &Path, name: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::copy(src, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

async fn next_event(rx: &mut Receiver<RegistryEvent>) -> RegistryEvent {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("registry event in time")
        .unwrap()
}

async fn current_version(registry: &Registry) -> String {
    let provider = registry.get("noop").expect("noop loaded");
    let answer = provider
        .create_machine(&machine_request("m", serde_json::json!({})))
        .await
        .unwrap();
    answer.last_known_state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swap_under_load_then_reject_broken_artifacts() {
    let dir = tempfile::tempdir().unwrap();
    install(&guest("test_noop"), dir.path(), "noop.wasm");
    let registry = Registry::new(sandbox(Duration::from_secs(5)));
    let mut events = registry.subscribe();
    let _watch = registry
        .watch_dir(dir.path().to_path_buf(), Duration::from_secs(1))
        .await
        .unwrap();
    assert!(
        matches!(next_event(&mut events).await, RegistryEvent::Loaded { ref version, .. } if version == "0.1.0")
    );
    assert_eq!(current_version(&registry).await, "0.1.0");

    // Load: 4 tasks calling continuously while the artifact is replaced.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut workers = Vec::new();
    for w in 0..4 {
        let (registry, stop, ok, failed) =
            (registry.clone(), stop.clone(), ok.clone(), failed.clone());
        workers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let provider = registry
                    .get("noop")
                    .expect("provider never disappears during a swap");
                match provider
                    .create_machine(&machine_request(
                        &format!("w{w}-{i}"),
                        serde_json::json!({}),
                    ))
                    .await
                {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        eprintln!("call failed during swap: {e}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                i += 1;
                tokio::task::yield_now().await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    install(&guest("test_noop_v2"), dir.path(), "noop.wasm");
    match next_event(&mut events).await {
        RegistryEvent::Loaded {
            version, replaced, ..
        } => {
            assert_eq!(version, "0.2.0");
            assert_eq!(replaced.as_deref(), Some("0.1.0"));
        }
        other => panic!("expected the new version to load, got {other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "calls failed during the swap"
    );
    assert!(
        ok.load(Ordering::Relaxed) > 100,
        "too few calls ran: {}",
        ok.load(Ordering::Relaxed)
    );
    assert_eq!(current_version(&registry).await, "0.2.0");

    // A corrupt artifact: rejected, the last good version keeps serving.
    std::fs::write(
        dir.path().join("noop.wasm"),
        b"\0asm garbage that is not a component",
    )
    .unwrap();
    match next_event(&mut events).await {
        RegistryEvent::Rejected { error, path } => {
            assert!(path.ends_with("noop.wasm"));
            assert!(error.contains("not a WebAssembly binary"), "{error}");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(current_version(&registry).await, "0.2.0");

    // An incompatible contract: rejected, naming both versions; still serving 0.2.0.
    install(&guest("test_incompatible"), dir.path(), "noop.wasm");
    match next_event(&mut events).await {
        RegistryEvent::Rejected { error, .. } => {
            assert!(
                error.contains("mcm:driver@1.0.0") && error.contains("mcm:driver@0.1.1"),
                "{error}"
            );
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(current_version(&registry).await, "0.2.0");

    // A new good version loads again after the bad ones.
    install(&guest("test_noop"), dir.path(), "noop.wasm");
    assert!(
        matches!(next_event(&mut events).await, RegistryEvent::Loaded { ref version, .. } if version == "0.1.0")
    );
    assert_eq!(current_version(&registry).await, "0.1.0");
}

#[tokio::test]
async fn removed_file_unloads_its_provider() {
    let dir = tempfile::tempdir().unwrap();
    install(&guest("test_noop"), dir.path(), "noop.wasm");
    install(&guest("test_panicker"), dir.path(), "panicker.wasm");
    let registry = Registry::new(sandbox(Duration::from_secs(5)));
    assert!(registry.sync_dir(dir.path()).await.is_empty());
    assert_eq!(
        registry.names(),
        vec!["noop".to_string(), "panicker".to_string()]
    );
    std::fs::remove_file(dir.path().join("panicker.wasm")).unwrap();
    assert!(registry.sync_dir(dir.path()).await.is_empty());
    assert_eq!(registry.names(), vec!["noop".to_string()]);
    assert!(registry.get("panicker").is_none());
}

#[tokio::test]
async fn second_load_comes_from_the_compile_cache() {
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().to_path_buf();
    let sandbox = sandbox_with(Duration::from_secs(5), |c| c.cache_dir = Some(dir));
    let first = load(&sandbox, "sample_provider", Default::default()).await;
    assert_eq!(
        first.load_stats.cache,
        mcm_sandbox::cache::CacheHit::Compiled
    );
    let second = load(&sandbox, "sample_provider", Default::default()).await;
    assert_eq!(second.load_stats.cache, mcm_sandbox::cache::CacheHit::Disk);
    // One compiled entry and the digest written with it.
    let mut names: Vec<String> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| {
            e.unwrap()
                .path()
                .extension()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    assert_eq!(names, ["cwasm", "sha256"]);
}
