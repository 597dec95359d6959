//! Arbitrary JSON as the request of every driver operation (what `mcm-wasm call` and the
//! conformance kit feed the sandbox): it parses into the contract's types or fails with a
//! `BadRequest` naming the operation — never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcm_driver::{Operation, OwnedRequest};

fuzz_target!(|data: &[u8]| {
    let Ok(json) = std::str::from_utf8(data) else {
        return;
    };
    for op in Operation::ALL {
        if let Err(e) = OwnedRequest::from_json(op, json, &Default::default()) {
            assert!(e.to_string().contains(&op.to_string()), "{e}");
        }
    }
});
