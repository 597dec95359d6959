//! The AWS provider's providerSpec decoding and validation (natively): arbitrary JSON either
//! decodes (and then validates without panicking) or gives field-named errors.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(json) = std::str::from_utf8(data) else {
        return;
    };
    match aws_provider::spec::parse(json) {
        Ok(spec) => {
            let _ = aws_provider::spec::validate(&spec);
        }
        Err(errors) => assert!(!errors.0.is_empty(), "an Err carries at least one error"),
    }
});
