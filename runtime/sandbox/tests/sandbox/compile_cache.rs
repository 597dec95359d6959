//! The compile cache runs no code it cannot vouch for: an entry whose bytes were replaced
//! (here by another provider's compiled code) is recompiled, not executed; the directory is
//! private to the runtime's user.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::support::*;
use mcm_sandbox::ProviderSettings;
use mcm_sandbox::cache::CacheHit;

fn entries(dir: &std::path::Path, ext: &str) -> Vec<std::path::PathBuf> {
    let mut found: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    found.sort();
    found
}

#[tokio::test]
async fn a_tampered_entry_is_recompiled_not_executed() {
    let root = tempfile::tempdir().unwrap();
    let noop_dir = root.path().join("noop-cache");
    let looper_dir = root.path().join("looper-cache");
    let with_cache = |dir: std::path::PathBuf| {
        sandbox_with(Duration::from_millis(300), move |c| c.cache_dir = Some(dir))
    };

    // First load compiles and writes the entry and its digest; the second loads it from disk.
    let sandbox = with_cache(noop_dir.clone());
    let first = load(&sandbox, "test_noop", ProviderSettings::default()).await;
    assert_eq!(first.load_stats.cache, CacheHit::Compiled);
    let mode = std::fs::metadata(&noop_dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "cache directory mode {mode:o}");
    let second = load(&sandbox, "test_noop", ProviderSettings::default()).await;
    assert_eq!(second.load_stats.cache, CacheHit::Disk);
    let [entry] = entries(&noop_dir, "cwasm").try_into().unwrap();
    assert_eq!(entries(&noop_dir, "sha256").len(), 1);

    // Another provider's compiled code (same engine) put in place of the noop's entry.
    let other = with_cache(looper_dir.clone());
    load(&other, "test_looper", ProviderSettings::default()).await;
    let [looper_entry] = entries(&looper_dir, "cwasm").try_into().unwrap();
    std::fs::copy(&looper_entry, &entry).unwrap();

    let third = load(&sandbox, "test_noop", ProviderSettings::default()).await;
    assert_eq!(
        third.load_stats.cache,
        CacheHit::Compiled,
        "tampered entry was used"
    );
    // It is the noop that runs (the looper would spin until its deadline).
    let created = third
        .create_machine(&machine_request("m1", serde_json::json!({})))
        .await
        .unwrap();
    assert_eq!(created.provider_id, "noop:///m1");
    // The entry was rewritten with the right code: the next load uses it again.
    let fourth = load(&sandbox, "test_noop", ProviderSettings::default()).await;
    assert_eq!(fourth.load_stats.cache, CacheHit::Disk);

    // A corrupted entry (truncated) is recompiled too.
    let bytes = std::fs::read(&entry).unwrap();
    std::fs::write(&entry, &bytes[..bytes.len() / 2]).unwrap();
    let fifth = load(&sandbox, "test_noop", ProviderSettings::default()).await;
    assert_eq!(fifth.load_stats.cache, CacheHit::Compiled);
}

#[tokio::test]
async fn a_cache_directory_others_can_write_is_tightened() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("cache");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let sandbox = sandbox_with(Duration::from_millis(300), |c| {
        c.cache_dir = Some(dir.clone())
    });
    load(&sandbox, "test_noop", ProviderSettings::default()).await;
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "mode {mode:o}");
    assert_eq!(entries(&dir, "cwasm").len(), 1);
}
