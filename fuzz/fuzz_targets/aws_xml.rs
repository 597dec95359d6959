//! The AWS provider's decoding of EC2 XML answers (natively): every response type it reads and
//! the error body. Arbitrary text decodes or gives an error — never a panic.
#![no_main]

use aws_provider::xml;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = xml::parse::<xml::DescribeInstances>(&text);
    let _ = xml::parse::<xml::RunInstances>(&text);
    let _ = xml::parse::<xml::DescribeImages>(&text);
    let _ = xml::parse_error(&text);
});
