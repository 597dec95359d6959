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
                error.contains("mcm:driver@1.0.0") && error.contains("mcm:driver@0.1.3"),
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

/// Providers delivered by `Provider` resources: served by the resource's name, its spec's
/// aliases and the artifact's own name; they shadow a directory provider of the same name;
/// a broken artifact leaves the last good version serving; settings change without a
/// recompile; a resource with nothing loaded says why; deleting it unloads it.
#[tokio::test]
async fn provider_resources_swap_shadow_and_roll_back() {
    let dir = tempfile::tempdir().unwrap();
    install(&guest("test_noop"), dir.path(), "noop.wasm");
    let registry = Registry::new(sandbox(Duration::from_secs(5)));
    assert!(registry.sync_dir(dir.path()).await.is_empty());
    let served_version = |name: &'static str| {
        let registry = registry.clone();
        async move {
            let provider = registry.get(name)?;
            let answer = provider
                .create_machine(&machine_request("m", serde_json::json!({})))
                .await
                .unwrap();
            Some(answer.last_known_state)
        }
    };
    let mut events = registry.subscribe();

    // Nothing loaded yet for the resource: it claims its name and aliases, so the directory's
    // noop no longer serves "noop" through it, and the reason is given.
    registry.mark_not_ready("noop", vec!["Noop".into()], "fetching oci://x");
    assert!(registry.get("noop").is_none());
    assert!(registry.get("Noop").is_none());
    let why = registry.not_ready("Noop").unwrap();
    assert!(
        why.contains("Provider noop") && why.contains("fetching oci://x"),
        "{why}"
    );
    assert!(registry.not_ready("other").is_none());
    // Before the first load the artifact's aliases are unknown: a name equal to the resource's
    // ignoring case hears why it waits (serving still matches exactly).
    let why = registry.not_ready("NOOP").unwrap();
    assert!(why.contains("fetching oci://x"), "{why}");
    assert!(registry.get("NOOP").is_none());

    let v2 = std::fs::read(guest("test_noop_v2")).unwrap();
    let loaded = registry
        .load_resource(
            "noop",
            "Provider default/noop",
            &v2,
            vec!["Noop".into()],
            Default::default(),
        )
        .await
        .unwrap();
    assert!(
        matches!(next_event(&mut events).await, RegistryEvent::Loaded { ref name, ref version, .. } if name == "noop" && version == loaded.version())
    );
    let v2_version = loaded.version().to_string();
    assert_ne!(v2_version, "0.1.0");
    for name in ["noop", "Noop"] {
        assert_eq!(
            served_version(name).await.as_deref(),
            Some(v2_version.as_str()),
            "{name}"
        );
    }
    assert!(registry.not_ready("noop").is_none());
    assert!(
        registry
            .served_names()
            .iter()
            .any(|n| n == "noop (Provider, also Noop)"),
        "{:?}",
        registry.served_names()
    );

    // A broken artifact: rejected with its origin named, v2 keeps serving.
    let err = registry
        .load_resource(
            "noop",
            "Provider default/noop from https://x",
            b"\0asm\x01\0\0\0junk",
            vec![],
            Default::default(),
        )
        .await
        .err()
        .expect("junk is rejected");
    assert!(
        err.to_string()
            .contains("Provider default/noop from https://x"),
        "{err}"
    );
    assert!(matches!(
        next_event(&mut events).await,
        RegistryEvent::Rejected { .. }
    ));
    assert_eq!(
        served_version("Noop").await.as_deref(),
        Some(v2_version.as_str())
    );

    // New settings without recompiling: the serving version is the same code, configured anew.
    let config = r#"{"k":"v"}"#;
    assert!(registry.configure_resource(
        "noop",
        vec!["Noop".into()],
        mcm_sandbox::ProviderSettings {
            config: Some(config.into()),
            ..Default::default()
        },
    ));
    let now = registry.resource("noop").unwrap();
    assert_eq!(now.settings().config.as_deref(), Some(config));
    assert_eq!(now.info().digest, loaded.info().digest);

    // Deleted: the resource's provider is unloaded and the directory's noop serves again.
    assert!(registry.unload_resource("noop"));
    assert!(registry.get("Noop").is_none());
    assert_eq!(served_version("noop").await.as_deref(), Some("0.1.0"));
}
