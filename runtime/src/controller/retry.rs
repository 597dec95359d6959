//! MCM's retry periods (machineutils) and which one follows which driver outcome.

use std::time::Duration;

use crate::driver::Code;

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

/// Go's `time.Duration.String()`: `20m0s`, `2h0m0s`, `5s`, `1m30s`, `1.5s`, `0s`.
pub fn go_duration(d: Duration) -> String {
    let total = d.as_secs();
    let nanos = d.subsec_nanos();
    if total == 0 && nanos == 0 {
        return "0s".into();
    }
    if total == 0 {
        // Below one second Go uses ms/µs/ns; good enough for our timeouts.
        return format!("{}ms", d.as_millis());
    }
    let (h, m, s) = (total / 3600, (total % 3600) / 60, total % 60);
    let secs = if nanos == 0 {
        format!("{s}s")
    } else {
        let frac = format!("{:09}", nanos);
        format!("{s}.{}s", frac.trim_end_matches('0'))
    };
    if h > 0 {
        format!("{h}h{m}m{secs}")
    } else if m > 0 {
        format!("{m}m{secs}")
    } else {
        secs
    }
}

/// Parse a Go `metav1.Duration` string (`20m`, `2h0m0s`, `1m30s`, `500ms`).
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        if num_len == 0 {
            return None;
        }
        let value: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    Some(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_duration_strings() {
        assert_eq!(go_duration(Duration::from_secs(20 * 60)), "20m0s");
        assert_eq!(go_duration(Duration::from_secs(2 * 3600)), "2h0m0s");
        assert_eq!(go_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(go_duration(Duration::from_secs(5)), "5s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn go_duration_parse() {
        assert_eq!(parse_go_duration("20m"), Some(Duration::from_secs(1200)));
        assert_eq!(parse_go_duration("2h0m0s"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_go_duration("abc"), None);
        assert_eq!(parse_go_duration("5x"), None);
    }

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
