//! Hostile: pushes sizes and counts past the sandbox's limits; the providerSpec picks how.
//!
//! `{"abuse": A, "size": N, "count": C}` for create-machine, with A one of
//! - `error`: a `driver-error` (code unavailable) whose message is N bytes;
//! - `result`: an Ok result whose last-known-state is N bytes;
//! - `logs`: C log messages of N bytes each, then Ok;
//! - `forge-log`: a log message with a newline and a fake host log line in it, then Ok;
//! - `list`: list-machines style data: an Ok result with N node addresses (a long list);
//! - `handles`: open WASI output streams without closing them, forever;
//! - `random`: ask `wasi:random` for N bytes;
//! - `capacity-overflow`: a `Vec` larger than wasm32's address space (Rust panics before
//!   the allocator is asked);
//! - `allocation`: one allocation of N bytes (the allocator fails when N is past the limit);
//! - `find-secret`: search everything the call was given (machine, class, every secret key
//!   and value, the provider config) for the bytes of `needle_hex`, and report "found" or
//!   "absent" with the keys the host says it withheld.
//!
//! Big strings are made of zero pages the guest never writes (`alloc_zeroed` on fresh memory),
//! so the guest's own memory stays small: what the host's memory does is what is measured.
use mcm_wasm_sdk::*;

#[derive(serde::Deserialize)]
struct Spec {
    abuse: String,
    #[serde(default)]
    size: usize,
    #[serde(default)]
    count: usize,
    #[serde(default)]
    needle_hex: String,
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap_or(0))
        .collect()
}

/// A string of `n` NUL bytes. Up to 4 MB it is an ordinary allocation; above, it lies in fresh
/// pages from `memory.grow` that nothing writes (the allocator would clear them), so the
/// guest's resident memory stays small. Such a string is never freed: the call ends in a
/// refusal before the guest's post-return could free it, and the instance is discarded.
fn zero_string(n: usize) -> String {
    if n <= 4_000_000 {
        // SAFETY: NUL bytes are valid UTF-8.
        return unsafe { String::from_utf8_unchecked(vec![0u8; n]) };
    }
    let pages = n.div_ceil(65536);
    let first = core::arch::wasm32::memory_grow(0, pages);
    assert!(first != usize::MAX, "memory.grow refused");
    // SAFETY: the pages are new, zeroed, and used for nothing else.
    unsafe { String::from_raw_parts((first * 65536) as *mut u8, n, n) }
}

fn ok(state: String, addresses: Vec<NodeAddress>) -> Result<CreateMachineResponse, DriverError> {
    Ok(CreateMachineResponse {
        provider_id: "abuser:///1".into(),
        node_name: "abuser".into(),
        last_known_state: state,
        addresses,
    })
}

struct Abuser;

impl Driver for Abuser {
    fn create_machine(req: MachineRequest) -> Result<CreateMachineResponse, DriverError> {
        let spec: Spec = req.machine_class.decode_spec()?;
        match spec.abuse.as_str() {
            "error" => Err(DriverError::unavailable(zero_string(spec.size))),
            "result" => ok(zero_string(spec.size), Vec::new()),
            "logs" => {
                let message = std::mem::ManuallyDrop::new(zero_string(spec.size));
                for _ in 0..spec.count {
                    log::info(message.as_str(), &[("abuse", "logs")]);
                }
                ok("logged".into(), Vec::new())
            }
            "forge-log" => {
                log::info(
                    "harmless\n2026-12-02T06:00:00.000000Z ERROR mcm_wasm::controller: FORGED controller line",
                    &[("key\nforged", "value\r\nforged=1")],
                );
                ok("logged".into(), Vec::new())
            }
            "list" => {
                let addresses = (0..spec.size)
                    .map(|_| NodeAddress {
                        kind: String::new(),
                        address: String::new(),
                    })
                    .collect();
                ok(String::new(), addresses)
            }
            "handles" => loop {
                std::mem::forget(wasip2::cli::stderr::get_stderr());
            },
            "random" => {
                let bytes = wasip2::random::random::get_random_bytes(spec.size as u64);
                ok(bytes.len().to_string(), Vec::new())
            }
            "capacity-overflow" => {
                let v: Vec<u64> = Vec::with_capacity(std::hint::black_box(usize::MAX / 4));
                ok(v.capacity().to_string(), Vec::new())
            }
            "allocation" => {
                let v: Vec<u8> = Vec::with_capacity(std::hint::black_box(spec.size));
                ok(v.capacity().to_string(), Vec::new())
            }
            "find-secret" => {
                let needle = unhex(&spec.needle_hex);
                let mut haystack = format!("{:?}{:?}", req.machine, req.machine_class).into_bytes();
                for (k, v) in &req.secret {
                    haystack.extend_from_slice(k.as_bytes());
                    haystack.extend_from_slice(v);
                }
                haystack.extend_from_slice(
                    mcm_wasm_sdk::bindings::mcm::driver::context::provider_config().as_bytes(),
                );
                let found =
                    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle);
                let withheld = credentials::withheld_keys().join(",");
                ok(
                    format!(
                        "{}; withheld: {withheld}",
                        if found { "found" } else { "absent" }
                    ),
                    Vec::new(),
                )
            }
            other => Err(DriverError::invalid_argument(format!(
                "unknown abuse {other:?}"
            ))),
        }
    }
    fn delete_machine(_req: MachineRequest) -> Result<DeleteMachineResponse, DriverError> {
        Ok(DeleteMachineResponse {
            last_known_state: String::new(),
        })
    }
}

export_provider!(Abuser, name: "abuser", version: env!("CARGO_PKG_VERSION"));
