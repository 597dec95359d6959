//! A Provider's status after a reconcile, as a pure decision (Flux's OCIRepository and
//! Cluster API's conditions are the model: `Ready`, `Progressing`, `Degraded`, each with a
//! reason and message; a transition time that moves only when the condition's status does).
//!
//! Deliberate choice: while a rejected new version leaves the last good one serving, `Ready`
//! stays `True` (reason `ServingPreviousVersion`: machines are being served) and `Degraded`
//! is `True` with the exact cause; `Ready` is `False` only when nothing serves.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use machine_api::ProviderStatus;

/// Where a reconcile failed; each is a condition reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// The spec is invalid (`spec::SpecError`).
    Spec,
    /// The artifact could not be fetched (registry down, unauthorized, unknown digest).
    Fetch,
    /// The fetched bytes do not have the pinned digest.
    Verify,
    /// The sandbox refused it (not a component, incompatible contract, smoke trap).
    Load,
}

impl Stage {
    pub fn reason(self) -> &'static str {
        match self {
            Stage::Spec => "InvalidSpec",
            Stage::Fetch => "FetchFailed",
            Stage::Verify => "DigestMismatch",
            Stage::Load => "LoadFailed",
        }
    }
}

/// What serves: the artifact's identity as the status shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Serving {
    pub digest: String,
    pub component_digest: String,
    pub provider: String,
    pub version: String,
    pub contract: String,
}

/// What this reconcile ended in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// This generation's artifact serves.
    Loaded(Serving),
    /// This generation failed at `stage`; `serving` is the last good version, if any.
    Failed {
        stage: Stage,
        message: String,
        serving: Option<Serving>,
    },
}

/// The status after `outcome` for spec `generation`, keeping transition times of conditions
/// whose status did not change.
pub fn next(
    prev: &ProviderStatus,
    generation: i64,
    outcome: &Outcome,
    now: &Time,
) -> ProviderStatus {
    let cond = |type_: &str, status: bool, reason: &str, message: String| {
        let status = if status { "True" } else { "False" };
        let since = prev
            .condition(type_)
            .filter(|c| c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| now.clone());
        Condition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: reason.to_string(),
            message,
            last_transition_time: since,
            observed_generation: Some(generation),
        }
    };
    let (serving, conditions, last_error) = match outcome {
        Outcome::Loaded(s) => (
            Some(s),
            vec![
                cond(
                    "Ready",
                    true,
                    "Loaded",
                    format!("{} {} ({}) serves", s.provider, s.version, s.digest),
                ),
                cond(
                    "Progressing",
                    false,
                    "Serving",
                    "the spec's artifact serves".into(),
                ),
                cond("Degraded", false, "AsExpected", String::new()),
            ],
            None,
        ),
        Outcome::Failed {
            stage,
            message,
            serving,
        } => {
            let ready = match serving {
                Some(s) => cond(
                    "Ready",
                    true,
                    "ServingPreviousVersion",
                    format!(
                        "{} {} ({}) keeps serving; the spec's artifact was rejected",
                        s.provider, s.version, s.digest
                    ),
                ),
                None => cond("Ready", false, stage.reason(), message.clone()),
            };
            (
                serving.as_ref(),
                vec![
                    ready,
                    cond(
                        "Progressing",
                        true,
                        "Retrying",
                        format!("retrying with backoff: {message}"),
                    ),
                    cond("Degraded", true, stage.reason(), message.clone()),
                ],
                Some(message.clone()),
            )
        }
    };
    ProviderStatus {
        conditions,
        observed_generation: Some(generation),
        digest: serving.map(|s| s.digest.clone()),
        component_digest: serving.map(|s| s.component_digest.clone()),
        provider: serving.map(|s| s.provider.clone()),
        version: serving.map(|s| s.version.clone()),
        contract: serving.map(|s| s.contract.clone()),
        last_error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    fn v(version: &str) -> Serving {
        Serving {
            digest: format!("sha256:{version}"),
            component_digest: format!("sha256:c{version}"),
            provider: "aws".into(),
            version: version.into(),
            contract: "0.1.1".into(),
        }
    }

    fn status_of<'a>(s: &'a ProviderStatus, t: &str) -> (&'a str, &'a str, &'a Time) {
        let c = s.condition(t).unwrap();
        (
            c.status.as_str(),
            c.reason.as_str(),
            &c.last_transition_time,
        )
    }

    #[test]
    fn loaded_then_rejected_keeps_the_old_version_ready_and_degraded() {
        let s1 = next(
            &ProviderStatus::default(),
            1,
            &Outcome::Loaded(v("1")),
            &at(10),
        );
        assert_eq!(status_of(&s1, "Ready"), ("True", "Loaded", &at(10)));
        assert_eq!(status_of(&s1, "Degraded"), ("False", "AsExpected", &at(10)));
        assert_eq!(
            (s1.digest.as_deref(), s1.version.as_deref()),
            (Some("sha256:1"), Some("1"))
        );

        let failed = Outcome::Failed {
            stage: Stage::Verify,
            message: "sha256 of https://x is sha256:bad, not sha256:2".into(),
            serving: Some(v("1")),
        };
        let s2 = next(&s1, 2, &failed, &at(20));
        // Ready did not change status: its transition time stays.
        assert_eq!(
            status_of(&s2, "Ready"),
            ("True", "ServingPreviousVersion", &at(10))
        );
        assert_eq!(
            status_of(&s2, "Degraded"),
            ("True", "DigestMismatch", &at(20))
        );
        assert_eq!(
            s2.condition("Degraded").unwrap().message,
            "sha256 of https://x is sha256:bad, not sha256:2"
        );
        assert_eq!(
            s2.digest.as_deref(),
            Some("sha256:1"),
            "the serving digest, not the spec's"
        );
        assert_eq!(s2.observed_generation, Some(2));
        assert!(s2.last_error.as_deref().unwrap().contains("sha256:bad"));

        let s3 = next(&s2, 3, &Outcome::Loaded(v("2")), &at(30));
        assert_eq!(status_of(&s3, "Ready"), ("True", "Loaded", &at(10)));
        assert_eq!(status_of(&s3, "Degraded"), ("False", "AsExpected", &at(30)));
        assert_eq!(
            (s3.digest.as_deref(), s3.last_error.as_deref()),
            (Some("sha256:2"), None)
        );
    }

    #[test]
    fn a_first_failure_is_not_ready_with_the_stage_as_reason() {
        let s = next(
            &ProviderStatus::default(),
            1,
            &Outcome::Failed {
                stage: Stage::Fetch,
                message: "127.0.0.1:5000: connection refused".into(),
                serving: None,
            },
            &at(5),
        );
        assert_eq!(status_of(&s, "Ready"), ("False", "FetchFailed", &at(5)));
        assert_eq!(status_of(&s, "Progressing"), ("True", "Retrying", &at(5)));
        assert_eq!((s.digest, s.provider), (None, None));
    }
}
