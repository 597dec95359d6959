//! The two guest calls that never reach the cloud, from kubermatic machine-controller's
//! provider interface (`ValidateConfig`, `MachineMetricsLabels`); Gardener's MCM driver has
//! neither, so this is an addition, not a mirror:
//!
//! - **validate-machine-class** before a Machine's CreateMachine. The verdict is kept per
//!   class, keyed by the class's uid and resourceVersion, a digest of the merged secret data
//!   the provider is shown (it stands in for the secrets' resourceVersions: the same data is
//!   the same verdict, and a rotated userData token is not a new class), and the provider's
//!   name and version — so a changed class, a changed secret or a swapped provider is asked
//!   again, and nothing else is. An invalid class fails its Machines' creation with
//!   InvalidArgument and the provider's message, with no CreateMachine call; the cloud is
//!   never asked to make a VM from a class the provider itself rejects. The Machine's
//!   lastOperation carries the provider's error as it is — the text a create of the same
//!   class would have failed with, so what users match on is unchanged — and the Warning
//!   event `ValidateMachineClassInvalidArgument` says it came from validation.
//! - **metrics-labels** per Machine, kept by (class uid, resourceVersion, provider, version)
//!   and read by `mcm_machine_info` at scrape time ([`crate::metrics`]), e.g. kubermatic's
//!   `size`.
//!
//! Outcome table of validate-machine-class (the pure decision [`verdict`]):
//!
//! | answer | verdict | cached | create |
//! |---|---|---|---|
//! | OK | valid | yes | goes ahead |
//! | Unimplemented | valid (the provider does not validate) | yes | goes ahead |
//! | InvalidArgument | invalid | yes | not called; InvalidArgument with the provider's text |
//! | any other code (a trap, a deadline) | unknown | no | goes ahead, warning logged |
//!
//! An unknown verdict does not block creation: validation is an early warning, and the create
//! call would report a real problem with the class anyway.

use std::collections::HashMap;
use std::hash::{Hash as _, Hasher as _};
use std::sync::Mutex;

use kube::ResourceExt as _;
use machine_api::{Machine, MachineClass};
use mcm_driver::{Code, DriverError, MetricsLabelsRequest, Operation, SecretData};

use super::machine::Job;

/// What validate-machine-class answered, as the controller acts on it.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    Valid,
    Invalid(DriverError),
    /// The provider could not say (kept out of the cache).
    Unknown(DriverError),
}

/// The pure decision: an answer of validate-machine-class → [`Verdict`] (the table above).
pub fn verdict(answer: Result<(), DriverError>) -> Verdict {
    match answer {
        Ok(()) => Verdict::Valid,
        Err(e) if e.code == Code::Unimplemented => Verdict::Valid,
        Err(e) if e.code == Code::InvalidArgument => Verdict::Invalid(e),
        Err(e) => Verdict::Unknown(e),
    }
}

/// Labels a provider may add to `mcm_machine_info`: Prometheus label names
/// (`[a-zA-Z_][a-zA-Z0-9_]*`, other characters become `_`), never one of MCM's own labels
/// (those get a `provider_` prefix), at most 8, values at most 128 characters.
pub fn sanitize_labels(labels: Vec<(String, String)>, reserved: &[&str]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (name, value) in labels {
        let mut name: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
            name.insert(0, '_');
        }
        if name.starts_with("__") {
            continue; // reserved for Prometheus itself
        }
        if reserved.contains(&name.as_str()) {
            name = format!("provider_{name}");
        }
        if out.iter().any(|(n, _)| *n == name) || out.len() == 8 {
            continue;
        }
        out.push((name, value.chars().take(128).collect()));
    }
    out
}

/// The cache key of a class's verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ValidationKey {
    class: String,
    secret_digest: u64,
    provider: String,
}

/// The per-class verdicts (the per-machine labels live in [`crate::metrics::ProviderLabels`],
/// where the collector reads them).
#[derive(Default)]
pub struct ClassChecks {
    verdicts: Mutex<HashMap<String, (ValidationKey, Verdict)>>,
}

impl std::fmt::Debug for ClassChecks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClassChecks").finish_non_exhaustive()
    }
}

fn class_version(class: &MachineClass) -> String {
    format!(
        "{}/{}",
        class.uid().unwrap_or_default(),
        class.resource_version().unwrap_or_default()
    )
}

fn digest(secret: &SecretData) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    secret.hash(&mut h);
    h.finish()
}

impl ClassChecks {
    /// The class's verdict for `job`'s provider (`secret`: the class's merged secret as stored,
    /// before the machine's userData is filled in): cached, else asked now.
    pub async fn validate(&self, job: &Job, secret: SecretData) -> Verdict {
        let key = ValidationKey {
            class: class_version(&job.class),
            secret_digest: digest(&secret),
            provider: format!("{} {}", job.provider.name(), job.provider.version()),
        };
        let class_name = job.class.name_any();
        if let Some((cached, verdict)) = self.verdicts.lock().expect("lock").get(&class_name)
            && *cached == key
        {
            return verdict.clone();
        }
        let answer = job
            .timed(
                Operation::ValidateMachineClass,
                job.provider
                    .validate_machine_class(&job.class_request(secret)),
            )
            .await;
        let verdict = verdict(answer);
        match &verdict {
            Verdict::Unknown(e) => {
                tracing::warn!(class = %class_name, error = %e, "validate-machine-class could not decide; creating anyway");
                return verdict;
            }
            Verdict::Invalid(e) => {
                tracing::warn!(class = %class_name, error = %e, "MachineClass rejected by its provider");
            }
            Verdict::Valid => {}
        }
        self.verdicts
            .lock()
            .expect("lock")
            .insert(class_name, (key, verdict.clone()));
        verdict
    }

    /// Ask the provider for `machine`'s metric labels unless they are known for this class
    /// version and provider. Failures keep the old labels and are retried next reconcile.
    pub async fn refresh_labels(&self, job: &Job, machine: &Machine) {
        let key = format!(
            "{} {} {}",
            class_version(&job.class),
            job.provider.name(),
            job.provider.version()
        );
        let store = &job.ctx.metrics.provider_labels;
        if store.is_current(&job.name, &key) {
            return;
        }
        let req = MetricsLabelsRequest {
            machine: super::machine::driver_machine(machine),
            machine_class: super::machine::driver_class(&job.class),
        };
        let labels = match job
            .timed(Operation::MetricsLabels, job.provider.metrics_labels(&req))
            .await
        {
            Ok(labels) => sanitize_labels(labels, crate::metrics::MACHINE_INFO_LABELS),
            Err(e) if e.code == Code::Unimplemented => Vec::new(),
            Err(e) => {
                tracing::debug!(machine = %job.name, error = %e, "metrics-labels failed; retried next reconcile");
                return;
            }
        };
        store.set(&job.name, key, labels);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(code: Code) -> DriverError {
        DriverError::new(code, "x")
    }

    #[test]
    fn verdicts_follow_the_table() {
        assert_eq!(verdict(Ok(())), Verdict::Valid);
        assert_eq!(verdict(Err(err(Code::Unimplemented))), Verdict::Valid);
        assert_eq!(
            verdict(Err(err(Code::InvalidArgument))),
            Verdict::Invalid(err(Code::InvalidArgument))
        );
        for code in [
            Code::Internal,
            Code::DeadlineExceeded,
            Code::Unavailable,
            Code::ResourceExhausted,
        ] {
            assert_eq!(verdict(Err(err(code))), Verdict::Unknown(err(code)));
        }
    }

    #[test]
    fn labels_are_prometheus_names_and_never_replace_mcms() {
        let s = |a: &str, b: &str| (a.to_string(), b.to_string());
        let got = sanitize_labels(
            vec![
                s("size", "m5.large"),
                s("name", "mine"),
                s("cloud.region", "eu"),
                s("9lives", "cat"),
                s("__meta", "no"),
                s("size", "again"),
                s("long", &"v".repeat(300)),
            ],
            &["name", "namespace"],
        );
        assert_eq!(
            got[..4],
            [
                s("size", "m5.large"),
                s("provider_name", "mine"),
                s("cloud_region", "eu"),
                s("_9lives", "cat")
            ]
        );
        assert_eq!(got.len(), 5, "{got:?}");
        assert_eq!(got[4].1.len(), 128);
        let many = (0..20).map(|i| s(&format!("l{i}"), "v")).collect();
        assert_eq!(sanitize_labels(many, &[]).len(), 8);
    }
}
