//! The per-provider egress allowlist: which hosts and ports a provider may call. Default deny.
//!
//! The `http` capability asks an [`EgressHook`] before every request (as wasi-http asks its
//! `WasiHttpHooks`); the answer is a typed [`Denied`], which the capability hands to the guest
//! as `error::denied` with its text. [`EgressPolicy`] is the hook every provider gets.

use std::fmt;

/// A malformed allowlist rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid egress rule {rule:?}: {reason}")]
pub struct RuleError {
    pub rule: String,
    pub reason: &'static str,
}

/// Why a request may not leave the sandbox.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("scheme {0:?} is not allowed (http and https only)")]
    Scheme(String),
    #[error("URL has no host")]
    NoHost,
    #[error("{host}:{port} is not allowed: the provider's egress allowlist is empty")]
    EmptyAllowlist { host: String, port: u16 },
    #[error("{host}:{port} is not in the provider's egress allowlist [{}]", allowed.join(", "))]
    NotAllowed {
        host: String,
        port: u16,
        allowed: Vec<String>,
    },
}

/// The policy the `http` capability consults before sending anything.
pub trait EgressHook: Send + Sync {
    /// `Ok` to let the request go; otherwise why not.
    fn check(&self, url: &reqwest::Url) -> Result<(), Denied>;
}

/// One allowed destination: `host`, `host:port`, `*.suffix` or `*.suffix:port`;
/// IPv6 literals in brackets (`[::1]:8080`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    host: String,
    wildcard: bool,
    port: Option<u16>,
}

impl std::str::FromStr for Rule {
    type Err = RuleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let bad = |reason: &'static str| RuleError {
            rule: s.to_string(),
            reason,
        };
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (host, after) = rest.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            match after.strip_prefix(':') {
                Some(p) => (host, Some(p)),
                None if after.is_empty() => (host, None),
                None => return Err(bad("unexpected text after ']'")),
            }
        } else {
            match s.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (s, None),
            }
        };
        let port = port
            .map(|p| p.parse::<u16>().map_err(|_| bad("port is not a number")))
            .transpose()?;
        let (host, wildcard) = match host.strip_prefix("*.") {
            Some(suffix) => (suffix, true),
            None => (host, false),
        };
        if host.is_empty() || host.contains(['/', '*', ' ']) {
            return Err(bad("expected host, host:port or *.domain"));
        }
        Ok(Rule {
            host: host.to_ascii_lowercase(),
            wildcard,
            port,
        })
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let star = if self.wildcard { "*." } else { "" };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match self.port {
            Some(p) => write!(f, "{star}{host}:{p}"),
            None => write!(f, "{star}{host}"),
        }
    }
}

impl Rule {
    fn allows(&self, host: &str, port: u16) -> bool {
        let host_ok = if self.wildcard {
            host.strip_suffix(&self.host)
                .is_some_and(|prefix| prefix.ends_with('.'))
        } else {
            host == self.host
        };
        host_ok && self.port.is_none_or(|p| p == port)
    }
}

/// The allowlist of one provider.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    rules: Vec<Rule>,
}

impl EgressPolicy {
    /// Parse rules such as `ec2.eu-west-1.amazonaws.com` or `127.0.0.1:5000`.
    pub fn parse<S: AsRef<str>>(rules: &[S]) -> Result<Self, RuleError> {
        let rules = rules
            .iter()
            .map(|r| r.as_ref().parse())
            .collect::<Result<Vec<Rule>, _>>()?;
        Ok(EgressPolicy { rules })
    }

    /// Deny everything.
    pub fn deny_all() -> Self {
        EgressPolicy::default()
    }

    /// Is a request to this URL allowed? The error says why not.
    pub fn check(&self, url: &reqwest::Url) -> Result<(), Denied> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Denied::Scheme(url.scheme().to_string()));
        }
        let host = url
            .host_str()
            .ok_or(Denied::NoHost)?
            .trim_matches(['[', ']'])
            .to_ascii_lowercase();
        let port = url.port_or_known_default().unwrap_or(0);
        if self.rules.iter().any(|r| r.allows(&host, port)) {
            return Ok(());
        }
        if self.rules.is_empty() {
            Err(Denied::EmptyAllowlist { host, port })
        } else {
            Err(Denied::NotAllowed {
                host,
                port,
                allowed: self.rules.iter().map(|r| r.to_string()).collect(),
            })
        }
    }

    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter()
    }
}

impl EgressHook for EgressPolicy {
    fn check(&self, url: &reqwest::Url) -> Result<(), Denied> {
        EgressPolicy::check(self, url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(rules: &[&str], url: &str) -> bool {
        EgressPolicy::parse(rules)
            .unwrap()
            .check(&url.parse().unwrap())
            .is_ok()
    }

    #[test]
    fn default_denies_everything() {
        assert!(!check(&[], "http://127.0.0.1:8080/"));
    }

    #[test]
    fn host_and_port_rules() {
        assert!(check(&["127.0.0.1:8080"], "http://127.0.0.1:8080/x"));
        assert!(!check(&["127.0.0.1:8080"], "http://127.0.0.1:8081/x"));
        assert!(check(
            &["ec2.eu-west-1.amazonaws.com"],
            "https://ec2.eu-west-1.amazonaws.com/"
        ));
        assert!(!check(
            &["ec2.eu-west-1.amazonaws.com"],
            "https://ec2.eu-west-1.amazonaws.com.evil.io/"
        ));
        assert!(check(&["[::1]:9000"], "http://[::1]:9000/"));
    }

    #[test]
    fn wildcard_matches_subdomains_only() {
        assert!(check(
            &["*.amazonaws.com:443"],
            "https://ec2.us-east-1.amazonaws.com/"
        ));
        assert!(!check(&["*.amazonaws.com"], "https://amazonaws.com/"));
        assert!(!check(&["*.amazonaws.com"], "https://evilamazonaws.com/"));
    }

    #[test]
    fn other_schemes_are_denied() {
        assert!(!check(&["127.0.0.1"], "file:///etc/passwd"));
    }

    #[test]
    fn malformed_rules_are_errors() {
        assert!(EgressPolicy::parse(&["http://x/"]).is_err());
        let err = EgressPolicy::parse(&["x:notaport"]).unwrap_err();
        assert_eq!(err.reason, "port is not a number");
        assert_eq!(
            err.to_string(),
            r#"invalid egress rule "x:notaport": port is not a number"#
        );
    }

    #[test]
    fn denials_are_typed_and_say_what_is_allowed() {
        let policy = EgressPolicy::parse(&["127.0.0.1:5000"]).unwrap();
        let denied = policy
            .check(&"http://10.0.0.1:80/".parse().unwrap())
            .unwrap_err();
        assert!(matches!(&denied, Denied::NotAllowed { port: 80, .. }));
        assert_eq!(
            denied.to_string(),
            "10.0.0.1:80 is not in the provider's egress allowlist [127.0.0.1:5000]"
        );
        let denied = EgressPolicy::deny_all()
            .check(&"ftp://x/".parse().unwrap())
            .unwrap_err();
        assert_eq!(denied, Denied::Scheme("ftp".into()));
    }
}
