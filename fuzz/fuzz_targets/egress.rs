//! The egress allowlist: arbitrary rule lines, then an arbitrary URL checked against the
//! policy. Invariants: parsing never panics; a URL the policy allows has an http(s) scheme
//! and a host that one of the rules names (itself or, for `*.` rules, a subdomain).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcm_sandbox::EgressPolicy;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines: Vec<&str> = text.split('\n').collect();
    let Some(target) = lines.pop() else {
        return;
    };
    let Ok(policy) = EgressPolicy::parse(&lines) else {
        return;
    };
    let Ok(url) = url::Url::parse(target) else {
        return;
    };
    if policy.check(&url).is_ok() {
        assert!(matches!(url.scheme(), "http" | "https"), "{url}");
        let host = url.host_str().unwrap().trim_matches(['[', ']']).to_ascii_lowercase();
        let named = lines.iter().any(|rule| {
            let rule = rule.trim().to_ascii_lowercase();
            let name = rule.strip_prefix("*.").unwrap_or(&rule);
            rule.contains(&host) || host.ends_with(name.split(':').next().unwrap_or(name))
        });
        assert!(named, "{url} allowed by {lines:?}");
    }
});
