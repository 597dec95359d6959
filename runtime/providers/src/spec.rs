//! From a `Provider` spec to what the sandbox needs, as pure decisions.
//!
//! The CRD's CEL rules already refuse a source with none or several kinds, and an OCI
//! reference without a digest; they are checked again here because a resource can predate the
//! rules (an older CRD) and because the controller must never fetch an unpinned artifact.
//!
//! Limits mirror the Kubernetes conventions: `memory` is a quantity (`64Mi`, `128M`, `1Gi`,
//! plain bytes), deadlines are Go-style durations by operation key (`createMachine: 5m`).

use machine_api::{ProviderSource, ProviderSpec};
use mcm_sandbox::{Deadlines, EgressPolicy, Limit, ProviderSettings, RateLimits};

/// What is wrong with a spec, naming the field.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SpecError {
    #[error("spec.source: exactly one of oci, https, configMap, file must be set ({0} are)")]
    SourceCount(usize),
    #[error(
        "spec.source.oci.reference {0:?}: names no digest (use registry/repository@sha256:..., or set spec.source.oci.digest)"
    )]
    Unpinned(String),
    #[error("spec.source.{field} {value:?}: not a sha256 digest (sha256: and 64 hex digits)")]
    Digest { field: &'static str, value: String },
    #[error(
        "spec.source.oci: reference {reference:?} and digest {digest:?} name different digests"
    )]
    DigestMismatch { reference: String, digest: String },
    #[error(
        "spec.source.oci.insecure: plain HTTP is only for a registry on a loopback address (127.0.0.1, ::1, localhost), not {0:?}"
    )]
    Insecure(String),
    #[error("spec.source.https.url {0:?}: must be an https:// URL")]
    NotHttps(String),
    #[error("spec.source.{0}: must not be empty")]
    Empty(&'static str),
    #[error("spec.egress.hosts[{index}] {rule:?}: {reason}")]
    Egress {
        index: usize,
        rule: String,
        reason: String,
    },
    #[error("spec.config: must be a JSON object, not {0}")]
    Config(&'static str),
    #[error("spec.limits.memory {0:?}: not a memory quantity (e.g. 64Mi, 128M, 1Gi)")]
    Memory(String),
    #[error("spec.limits.deadlines: {0}")]
    Deadlines(String),
    #[error("spec.limits.maxConcurrentCalls: must be at least 1")]
    Concurrency,
    #[error("spec.limits.rateLimits.{0}")]
    RateLimits(String),
}

/// Where the artifact comes from, validated: an OCI artifact pinned by digest, an https URL
/// pinned by sha256, a ConfigMap key (binaryData), or a local file (development).
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    Oci {
        /// The reference to pull (as written, tag or digest).
        reference: String,
        /// `sha256:<hex>` the manifest must have.
        digest: String,
        pull_secret: Option<String>,
        /// A Secret whose `ca.crt` is trusted for the registry.
        cert_secret: Option<String>,
        insecure: bool,
    },
    Https {
        url: String,
        /// `sha256:<hex>` the downloaded bytes must have.
        digest: String,
    },
    ConfigMap {
        name: String,
        key: String,
    },
    File {
        path: String,
    },
}

/// The one source a spec names.
pub fn source(spec: &ProviderSource) -> Result<Source, SpecError> {
    let count = [
        spec.oci.is_some(),
        spec.https.is_some(),
        spec.config_map.is_some(),
        spec.file.is_some(),
    ]
    .into_iter()
    .filter(|set| *set)
    .count();
    if count != 1 {
        return Err(SpecError::SourceCount(count));
    }
    if let Some(oci) = &spec.oci {
        if oci.reference.trim().is_empty() {
            return Err(SpecError::Empty("oci.reference"));
        }
        let in_reference = oci
            .reference
            .split_once('@')
            .map(|(_, digest)| digest.to_string());
        let in_reference = in_reference
            .map(|d| checked_digest("oci.reference", &d))
            .transpose()?;
        let given = oci
            .digest
            .as_deref()
            .map(|d| checked_digest("oci.digest", d))
            .transpose()?;
        let digest = match (in_reference, given) {
            (Some(a), Some(b)) if a != b => {
                return Err(SpecError::DigestMismatch {
                    reference: oci.reference.clone(),
                    digest: b,
                });
            }
            (Some(d), _) | (None, Some(d)) => d,
            (None, None) => return Err(SpecError::Unpinned(oci.reference.clone())),
        };
        if oci.insecure && !loopback_registry(&oci.reference) {
            return Err(SpecError::Insecure(oci.reference.clone()));
        }
        return Ok(Source::Oci {
            reference: oci.reference.trim().to_string(),
            digest,
            pull_secret: oci.pull_secret_ref.as_ref().map(|r| r.name.clone()),
            cert_secret: oci.cert_secret_ref.as_ref().map(|r| r.name.clone()),
            insecure: oci.insecure,
        });
    }
    if let Some(https) = &spec.https {
        if !https.url.starts_with("https://") {
            return Err(SpecError::NotHttps(https.url.clone()));
        }
        let hex = https
            .sha256
            .strip_prefix("sha256:")
            .unwrap_or(&https.sha256);
        return Ok(Source::Https {
            url: https.url.clone(),
            digest: checked_digest("https.sha256", &format!("sha256:{hex}"))?,
        });
    }
    if let Some(cm) = &spec.config_map {
        if cm.name.is_empty() {
            return Err(SpecError::Empty("configMap.name"));
        }
        if cm.key.is_empty() {
            return Err(SpecError::Empty("configMap.key"));
        }
        return Ok(Source::ConfigMap {
            name: cm.name.clone(),
            key: cm.key.clone(),
        });
    }
    let file = spec.file.as_ref().expect("one source is set");
    if file.path.is_empty() {
        return Err(SpecError::Empty("file.path"));
    }
    Ok(Source::File {
        path: file.path.clone(),
    })
}

/// Does the reference's registry (its first path component) name a loopback address?
fn loopback_registry(reference: &str) -> bool {
    // oci-client's grammar has no IPv6 literals: then the first path component.
    let registry = crate::oci::registry_host(reference)
        .unwrap_or_else(|_| reference.split('/').next().unwrap_or_default().to_string());
    let host = match registry.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => registry.split(':').next().unwrap_or_default(),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `sha256:` and 64 lowercase hex digits (upper case is accepted and lowered).
fn checked_digest(field: &'static str, value: &str) -> Result<String, SpecError> {
    let bad = || SpecError::Digest {
        field,
        value: value.to_string(),
    };
    let hex = value.strip_prefix("sha256:").ok_or_else(bad)?;
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad());
    }
    Ok(format!("sha256:{}", hex.to_ascii_lowercase()))
}

/// The sandbox settings a spec asks for.
pub fn settings(spec: &ProviderSpec) -> Result<ProviderSettings, SpecError> {
    let hosts = spec
        .egress
        .as_ref()
        .map(|e| e.hosts.as_slice())
        .unwrap_or_default();
    for (index, rule) in hosts.iter().enumerate() {
        EgressPolicy::parse(std::slice::from_ref(rule)).map_err(|e| SpecError::Egress {
            index,
            rule: rule.clone(),
            reason: e.to_string(),
        })?;
    }
    let egress = EgressPolicy::parse(hosts).expect("every rule parsed alone");
    let config = match &spec.config {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Object(map)) => {
            Some(serde_json::Value::Object(map.clone()).to_string())
        }
        Some(other) => return Err(SpecError::Config(json_kind(other))),
    };
    let limits = spec.limits.clone().unwrap_or_default();
    let memory_limit = limits
        .memory
        .as_deref()
        .map(|q| memory_quantity(q).ok_or_else(|| SpecError::Memory(q.to_string())))
        .transpose()?;
    let deadlines = if limits.deadlines.is_empty() {
        None
    } else {
        let map = serde_json::to_value(&limits.deadlines).expect("a map of strings");
        Some(
            serde_json::from_value::<Deadlines>(map)
                .map_err(|e| SpecError::Deadlines(e.to_string()))?,
        )
    };
    if limits.max_concurrent_calls == Some(0) {
        return Err(SpecError::Concurrency);
    }
    let rate_limits = limits
        .rate_limits
        .as_ref()
        .map(|r| {
            let limit = |l: &machine_api::RateLimit| Limit {
                rate: l.rate,
                burst: l.burst,
            };
            let limits = RateLimits {
                classes: r
                    .classes
                    .iter()
                    .map(|(k, v)| (k.clone(), limit(v)))
                    .collect(),
                default: r.default.as_ref().map(limit),
                throttle_codes: r.throttle_codes.clone(),
            };
            limits
                .check()
                .map(|()| limits)
                .map_err(SpecError::RateLimits)
        })
        .transpose()?;
    Ok(ProviderSettings {
        egress,
        config,
        deadlines,
        broker_credentials: spec.broker_credentials,
        memory_limit,
        max_concurrent_calls: limits.max_concurrent_calls,
        rate_limits,
    })
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Bytes of a Kubernetes memory quantity: plain or with a binary (Ki, Mi, Gi, Ti) or decimal
/// (k, M, G, T) suffix; fractions, exponents and larger suffixes are refused (nobody writes
/// them for a provider's memory limit).
fn memory_quantity(text: &str) -> Option<usize> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let factor: u64 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        _ => return None,
    };
    usize::try_from(number.checked_mul(factor)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use machine_api::{ConfigMapSource, HttpsSource, OciSource, ProviderEgress, ProviderLimits};

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn oci(reference: &str, digest: Option<&str>) -> ProviderSource {
        ProviderSource {
            oci: Some(OciSource {
                reference: reference.into(),
                digest: digest.map(Into::into),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn oci_sources_must_be_pinned_and_agree() {
        let by_ref = source(&oci(&format!("127.0.0.1:5000/aws@{D}"), None)).unwrap();
        assert!(matches!(by_ref, Source::Oci { ref digest, .. } if digest == D));
        let tagged = source(&oci(
            "127.0.0.1:5000/aws:1.0",
            Some(&D.to_uppercase().replace("SHA256", "sha256")),
        ))
        .unwrap();
        assert!(matches!(tagged, Source::Oci { ref digest, .. } if digest == D));
        assert_eq!(
            source(&oci("127.0.0.1:5000/aws:1.0", None)),
            Err(SpecError::Unpinned("127.0.0.1:5000/aws:1.0".into()))
        );
        let other = D.replace('0', "f");
        assert!(matches!(
            source(&oci(&format!("r/aws@{D}"), Some(&other))),
            Err(SpecError::DigestMismatch { .. })
        ));
        let err = source(&oci("r/aws@sha256:abc", None)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "spec.source.oci.reference \"sha256:abc\": not a sha256 digest (sha256: and 64 hex digits)"
        );
    }

    #[test]
    fn plain_http_only_to_a_loopback_registry() {
        let insecure = |reference: &str| {
            let mut s = oci(&format!("{reference}@{D}"), None);
            s.oci.as_mut().unwrap().insecure = true;
            source(&s)
        };
        for ok in ["127.0.0.1:5000/aws", "localhost/aws", "[::1]:5000/aws"] {
            assert!(insecure(ok).is_ok(), "{ok}");
        }
        for refused in ["registry.example:5000/aws", "10.0.0.1/aws", "ghcr.io/x/aws"] {
            assert!(
                matches!(insecure(refused), Err(SpecError::Insecure(_))),
                "{refused}"
            );
        }
    }

    #[test]
    fn exactly_one_source_and_https_pinned() {
        assert_eq!(
            source(&ProviderSource::default()),
            Err(SpecError::SourceCount(0))
        );
        let mut two = oci(&format!("r@{D}"), None);
        two.config_map = Some(ConfigMapSource {
            name: "p".into(),
            key: "k".into(),
        });
        assert_eq!(source(&two), Err(SpecError::SourceCount(2)));
        let https = |url: &str, sha: &str| ProviderSource {
            https: Some(HttpsSource {
                url: url.into(),
                sha256: sha.into(),
            }),
            ..Default::default()
        };
        let hex = D.trim_start_matches("sha256:");
        assert_eq!(
            source(&https("https://x/aws.wasm", hex)),
            Ok(Source::Https {
                url: "https://x/aws.wasm".into(),
                digest: D.into()
            })
        );
        assert_eq!(
            source(&https("http://x/aws.wasm", hex)),
            Err(SpecError::NotHttps("http://x/aws.wasm".into()))
        );
        assert!(matches!(
            source(&https("https://x", "beef")),
            Err(SpecError::Digest {
                field: "https.sha256",
                ..
            })
        ));
    }

    #[test]
    fn settings_from_a_full_spec() {
        let spec = ProviderSpec {
            source: oci(&format!("r@{D}"), None),
            egress: Some(ProviderEgress {
                hosts: vec!["127.0.0.1:5000".into()],
            }),
            config: Some(serde_json::json!({"endpoint": "http://127.0.0.1:5000"})),
            limits: Some(ProviderLimits {
                memory: Some("32Mi".into()),
                deadlines: [("createMachine".to_string(), "90s".to_string())].into(),
                max_concurrent_calls: Some(8),
                rate_limits: Some(machine_api::ProviderRateLimits {
                    classes: [(
                        "RunInstances".to_string(),
                        machine_api::RateLimit {
                            rate: 0.5,
                            burst: 2,
                        },
                    )]
                    .into(),
                    ..Default::default()
                }),
            }),
            broker_credentials: true,
            ..Default::default()
        };
        let s = settings(&spec).unwrap();
        assert!(
            s.egress
                .check(&"http://127.0.0.1:5000/".parse().unwrap())
                .is_ok()
        );
        assert!(
            s.egress
                .check(&"http://127.0.0.1:5001/".parse().unwrap())
                .is_err()
        );
        assert_eq!(
            s.config.as_deref(),
            Some(r#"{"endpoint":"http://127.0.0.1:5000"}"#)
        );
        assert_eq!(s.memory_limit, Some(32 << 20));
        assert_eq!(
            s.deadlines
                .unwrap()
                .get(mcm_sandbox::Operation::CreateMachine),
            std::time::Duration::from_secs(90)
        );
        assert_eq!(s.max_concurrent_calls, Some(8));
        assert_eq!(
            s.rate_limits.unwrap().limit("RunInstances"),
            Some(Limit {
                rate: 0.5,
                burst: 2
            })
        );
        assert!(s.broker_credentials);
        // Nothing set: the sandbox's defaults, egress denied.
        let bare = settings(&ProviderSpec::default()).unwrap();
        assert!(
            bare.egress
                .check(&"http://127.0.0.1:5000/".parse().unwrap())
                .is_err()
        );
        assert_eq!((bare.memory_limit, bare.config), (None, None));
    }

    #[test]
    fn bad_settings_name_the_field() {
        let with = |f: &dyn Fn(&mut ProviderSpec)| {
            let mut spec = ProviderSpec::default();
            f(&mut spec);
            settings(&spec).unwrap_err().to_string()
        };
        let limits = |l: ProviderLimits| move |s: &mut ProviderSpec| s.limits = Some(l.clone());
        assert!(
            with(&|s| s.egress = Some(ProviderEgress {
                hosts: vec!["ok:1".into(), "".into()]
            }))
            .starts_with("spec.egress.hosts[1] \"\": ")
        );
        assert_eq!(
            with(&|s| s.config = Some(serde_json::json!([1]))),
            "spec.config: must be a JSON object, not an array"
        );
        assert_eq!(
            with(&limits(ProviderLimits {
                memory: Some("lots".into()),
                ..Default::default()
            })),
            "spec.limits.memory \"lots\": not a memory quantity (e.g. 64Mi, 128M, 1Gi)"
        );
        let deadlines = with(&limits(ProviderLimits {
            deadlines: [("createMachin".to_string(), "1s".to_string())].into(),
            ..Default::default()
        }));
        assert!(
            deadlines.starts_with("spec.limits.deadlines: unknown operation \"createMachin\""),
            "{deadlines}"
        );
        assert_eq!(
            with(&limits(ProviderLimits {
                max_concurrent_calls: Some(0),
                ..Default::default()
            })),
            "spec.limits.maxConcurrentCalls: must be at least 1"
        );
        assert_eq!(
            with(&limits(ProviderLimits {
                rate_limits: Some(machine_api::ProviderRateLimits {
                    classes: [(
                        "RunInstances".to_string(),
                        machine_api::RateLimit {
                            rate: 0.0,
                            burst: 5
                        }
                    )]
                    .into(),
                    ..Default::default()
                }),
                ..Default::default()
            })),
            "spec.limits.rateLimits.classes.RunInstances: rate 0 must be a positive number"
        );
    }

    #[test]
    fn memory_quantities() {
        assert_eq!(memory_quantity("1048576"), Some(1 << 20));
        assert_eq!(memory_quantity("64Mi"), Some(64 << 20));
        assert_eq!(memory_quantity("1Gi"), Some(1 << 30));
        assert_eq!(memory_quantity("128M"), Some(128_000_000));
        for bad in ["", "Mi", "1.5Gi", "64mb", "-1", "99999999999999999999Ti"] {
            assert_eq!(memory_quantity(bad), None, "{bad}");
        }
    }
}
