//! Arbitrary bytes as a provider artifact: inspection (magic, sections, metadata, imports) and,
//! when that passes, the full load (compile, link against the host, smoke instantiation). Every
//! input must end in `Ok` or a `LoadError` whose one-line message names the file — never a
//! panic, and never a multi-line message.
#![no_main]

use std::path::Path;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use mcm_sandbox::{Provider, ProviderSettings, Sandbox, SandboxConfig};

fn runtime() -> &'static (tokio::runtime::Runtime, Arc<Sandbox>) {
    static RT: OnceLock<(tokio::runtime::Runtime, Arc<Sandbox>)> = OnceLock::new();
    RT.get_or_init(|| {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let sandbox = Sandbox::new(SandboxConfig {
            cache_dir: None,
            ..SandboxConfig::default()
        })
        .unwrap();
        (rt, sandbox)
    })
}

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.wasm");
    let inspected = mcm_sandbox::artifact::inspect(path, data);
    if let Err(e) = &inspected {
        let msg = e.to_string();
        assert!(msg.contains("fuzz.wasm"), "the error names the file: {msg}");
        assert!(!msg.contains('\n'), "one line: {msg}");
        return;
    }
    let (rt, sandbox) = runtime();
    if let Err(e) = rt.block_on(Provider::from_bytes(
        sandbox,
        path,
        data,
        ProviderSettings::default(),
    )) {
        let msg = e.to_string();
        assert!(msg.contains("fuzz.wasm"), "the error names the file: {msg}");
    }
});
