//! MCM's retry periods (machineutils) and which one follows which driver outcome.

use std::time::Duration;

use mcm_driver::Code;

/// The requeue periods of Gardener's machine controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// 200 ms, after a write conflict.
    Conflict,
    /// 5 s.
    Short,
    /// 3 min.
    Medium,
    /// 10 min.
    Long,
}

impl Retry {
    pub fn period(self) -> Duration {
        match self {
            Retry::Conflict => Duration::from_millis(200),
            Retry::Short => Duration::from_secs(5),
            Retry::Medium => Duration::from_secs(3 * 60),
            Retry::Long => Duration::from_secs(10 * 60),
        }
    }
}

/// An ordinary requeue (a step that is not done yet, a driver error with its retry period):
/// not a reconcile failure, so it is logged at debug and travels as `Ok(Action)`.
pub fn requeue(machine: &str, after: Duration, reason: &str) -> kube::runtime::controller::Action {
    tracing::debug!(%machine, "{reason} (requeue in {})", machine_api::format_duration(after));
    kube::runtime::controller::Action::requeue(after)
}

/// The codes after which MCM retries soon: the call may well succeed next time.
pub fn is_transient(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown | Code::DeadlineExceeded | Code::Aborted | Code::Unavailable
    )
}

/// Requeue after a failed CreateMachine (`machineCreateErrorHandler`): ResourceExhausted waits
/// `resource_exhausted` (`--resource-exhausted-retry`), transient codes Short, the rest Medium.
pub fn after_create_error(code: Code, resource_exhausted: Duration) -> Duration {
    match code {
        Code::ResourceExhausted => resource_exhausted,
        c if is_transient(c) => Retry::Short.period(),
        _ => Retry::Medium.period(),
    }
}

/// Whether a failed CreateMachine keeps `lastKnownState` (ResourceExhausted and the transient
/// codes do; every other code resets it).
pub fn create_error_keeps_last_known_state(code: Code) -> bool {
    code == Code::ResourceExhausted || is_transient(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_error_requeue_by_code() {
        let long = Retry::Long.period();
        assert_eq!(after_create_error(Code::ResourceExhausted, long), long);
        for c in [
            Code::Unknown,
            Code::DeadlineExceeded,
            Code::Aborted,
            Code::Unavailable,
        ] {
            assert_eq!(after_create_error(c, long), Duration::from_secs(5), "{c}");
            assert!(create_error_keeps_last_known_state(c));
        }
        for c in [
            Code::InvalidArgument,
            Code::Internal,
            Code::PermissionDenied,
            Code::OutOfRange,
        ] {
            assert_eq!(after_create_error(c, long), Duration::from_secs(180), "{c}");
            assert!(!create_error_keeps_last_known_state(c));
        }
    }
}
