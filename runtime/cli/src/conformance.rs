//! `mcm-wasm conformance`: run the MCM machine lifecycle of a provider against its real backend
//! and report one pass/fail row per step. For provider authors: a provider that passes behaves
//! the way the machine controller relies on (idempotent create, delete from the providerID,
//! NotFound after delete, list for orphan collection).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Secret;
use mcm_driver::*;
use mcm_sandbox::{EgressPolicy, Provider, ProviderSettings, Sandbox, SandboxConfig};

/// Arguments of `mcm-wasm conformance`.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
CLASS and SECRET are JSON files, or Kubernetes YAML manifests when named .yaml/.yml (e.g. \
kubernetes/examples/machine-class.yaml and secret.yaml, as they are).

CLASS holds a MachineClass: either the Kubernetes object \
({\"apiVersion\": \"machine.sapcloud.io/v1alpha1\", \"kind\": \"MachineClass\", \"metadata\": {\"name\": ...}, \
\"provider\": ..., \"providerSpec\": {...}, \"nodeTemplate\": {...}}) or the runtime's short form \
({\"name\": ..., \"provider\": ..., \"providerSpec\": {...}}).

SECRET holds a Secret: {\"data\": {KEY: BASE64}} and/or {\"stringData\": {KEY: TEXT}} \
(stringData wins, as in Kubernetes).

Egress: without --allow-host the provider may reach only the host of the config's \"endpoint\"; for a \
real cloud name its API hosts with --allow-host (e.g. ec2.eu-west-1.amazonaws.com).

Steps: validate good class; validate bad class (providerSpec replaced by a JSON string) is \
InvalidArgument; status before create is NotFound; create; repeated create returns the same VM; status; \
list contains it; get-volume-ids (OK or Unimplemented); delete; repeated delete succeeds; status is \
NotFound; list no longer contains it. The VM is deleted even when a step in between fails.

Exit status: 0 every step passed, 1 a step failed, 2 bad input.")]
pub struct ConformanceArgs {
    /// The provider component (.wasm).
    pub file: PathBuf,
    /// MachineClass file: JSON, or a Kubernetes YAML manifest (.yaml/.yml; see below).
    #[arg(long, value_name = "CLASS")]
    pub class: PathBuf,
    /// Secret file: JSON, or a Kubernetes YAML manifest (.yaml/.yml; see below).
    #[arg(long, value_name = "SECRET")]
    pub secret: PathBuf,
    /// Also write the result as a JUnit XML report to FILE (for CI).
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// The provider's own configuration (JSON), e.g. '{"endpoint": "http://127.0.0.1:5000"}'.
    #[arg(long)]
    pub config: Option<String>,
    /// Allow outbound HTTP to this host or host:port (repeatable); replaces the default allowlist.
    #[arg(long = "allow-host", value_name = "HOST[:PORT]")]
    pub allow_hosts: Vec<String>,
    /// Broker the secret's cloud credentials: the host signs, the provider never sees them.
    #[arg(long)]
    pub broker_credentials: bool,
    /// Name of the test machine (default: mcm-wasm-conformance-<time>).
    #[arg(long)]
    pub machine_name: Option<String>,
    /// Namespace of the test machine.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// Deadline of each driver call.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub deadline: Duration,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// One step of the lifecycle.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Step {
    pub name: &'static str,
    pub passed: bool,
    pub detail: String,
    #[serde(rename = "elapsedMillis", serialize_with = "millis")]
    pub elapsed: Duration,
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

/// The outcome of a conformance run.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Report {
    pub provider: String,
    pub machine: String,
    pub steps: Vec<Step>,
}

impl Report {
    pub fn passed(&self) -> bool {
        !self.steps.is_empty() && self.steps.iter().all(|s| s.passed)
    }

    /// The run as a JUnit XML report (one test suite, a test case per step; a failed step is
    /// a `<failure>` with its detail), for CI systems.
    pub fn junit(&self) -> String {
        use quick_junit::{NonSuccessKind, Report as JUnit, TestCase, TestCaseStatus, TestSuite};
        let mut suite = TestSuite::new(format!("mcm-wasm conformance: {}", self.provider));
        for step in &self.steps {
            let status = if step.passed {
                TestCaseStatus::success()
            } else {
                let mut failed = TestCaseStatus::non_success(NonSuccessKind::Failure);
                failed.set_message(step.detail.clone());
                failed
            };
            let mut case = TestCase::new(step.name, status);
            case.set_classname(format!("conformance.{}", self.provider))
                .set_time(step.elapsed);
            if step.passed && !step.detail.is_empty() {
                case.set_system_out(step.detail.clone());
            }
            suite.add_test_case(case);
        }
        suite.set_time(self.steps.iter().map(|s| s.elapsed).sum());
        let mut report = JUnit::new("mcm-wasm conformance");
        report.add_test_suite(suite);
        report.to_string().expect("a JUnit report serializes")
    }

    pub fn step(&self, name: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.name == name)
    }

    /// The pass/fail table.
    pub fn table(&self) -> String {
        let width = self
            .steps
            .iter()
            .map(|s| s.name.len())
            .max()
            .unwrap_or(4)
            .max(4);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "conformance of provider {} (machine {})",
            self.provider, self.machine
        );
        let _ = writeln!(
            out,
            "{:>2}  {:<width$}  {:<6}  {:>9}  DETAIL",
            "#", "STEP", "RESULT", "TIME"
        );
        for (i, s) in self.steps.iter().enumerate() {
            let result = if s.passed { "PASS" } else { "FAIL" };
            let time = format!("{:.1} ms", s.elapsed.as_secs_f64() * 1000.0);
            let _ = writeln!(
                out,
                "{:>2}  {:<width$}  {:<6}  {:>9}  {}",
                i + 1,
                s.name,
                result,
                time,
                s.detail
            );
        }
        let passed = self.steps.iter().filter(|s| s.passed).count();
        let _ = writeln!(
            out,
            "{passed}/{} steps passed: {}",
            self.steps.len(),
            if self.passed() { "PASS" } else { "FAIL" }
        );
        out
    }
}

/// Step names, in order (tests and docs refer to them).
pub const STEPS: [&str; 12] = [
    "validate good class",
    "validate bad class is InvalidArgument",
    "status before create is NotFound",
    "create",
    "repeated create returns the same VM",
    "status",
    "list contains it",
    "get-volume-ids",
    "delete",
    "repeated delete succeeds",
    "status is NotFound",
    "list no longer contains it",
];

struct Recorder {
    report: Report,
}

impl Recorder {
    async fn step<F: Future<Output = Result<String, String>>>(
        &mut self,
        name: &'static str,
        f: F,
    ) -> bool {
        let started = Instant::now();
        let result = f.await;
        let elapsed = started.elapsed();
        let passed = result.is_ok();
        let detail = result.unwrap_or_else(|e| e);
        self.report.steps.push(Step {
            name,
            passed,
            detail,
            elapsed,
        });
        passed
    }

    fn skip(&mut self, name: &'static str, why: &str) {
        self.report.steps.push(Step {
            name,
            passed: false,
            detail: format!("not run: {why}"),
            elapsed: Duration::ZERO,
        });
    }
}

fn expect_code<T: std::fmt::Debug>(
    r: Result<T, DriverError>,
    code: Code,
) -> Result<String, String> {
    match r {
        Err(e) if e.code == code => Ok(format!("{}: {}", e.code, e.message)),
        Err(e) => Err(format!("expected {code}, got {e}")),
        Ok(v) => Err(format!("expected {code}, got success: {v:?}")),
    }
}

/// Run the lifecycle with `provider` (its settings already point it at the backend).
pub async fn run(
    provider: &dyn MachineDriver,
    class: &MachineClass,
    secret: &SecretData,
    machine_name: &str,
    namespace: &str,
) -> Report {
    let mut rec = Recorder {
        report: Report {
            provider: format!("{} {}", provider.name(), provider.version()),
            machine: machine_name.to_string(),
            steps: Vec::new(),
        },
    };
    let uid = format!(
        "conformance-{}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    );
    let machine = Machine {
        name: machine_name.to_string(),
        namespace: namespace.to_string(),
        uid,
        ..Default::default()
    };
    let request = MachineRequest {
        machine: machine.clone(),
        machine_class: class.clone(),
        secret: secret.clone(),
    };
    let class_request = ClassRequest {
        machine_class: class.clone(),
        secret: secret.clone(),
    };

    rec.step(STEPS[0], async {
        provider
            .validate_machine_class(&class_request)
            .await
            .map(|()| String::new())
            .map_err(|e| e.to_string())
    })
    .await;
    rec.step(STEPS[1], async {
        let mut bad = class_request.clone();
        bad.machine_class.provider_spec =
            serde_json::Value::String("this is not a providerSpec".into());
        expect_code(
            provider.validate_machine_class(&bad).await,
            Code::InvalidArgument,
        )
    })
    .await;
    rec.step(STEPS[2], async {
        expect_code(provider.get_machine_status(&request).await, Code::NotFound)
    })
    .await;

    let mut provider_id = None;
    rec.step(STEPS[3], async {
        let created = provider
            .create_machine(&request)
            .await
            .map_err(|e| e.to_string())?;
        if created.provider_id.is_empty() || created.node_name.is_empty() {
            return Err(format!(
                "providerID and nodeName must not be empty: {created:?}"
            ));
        }
        provider_id = Some(created.provider_id.clone());
        Ok(format!(
            "providerID {} node {}",
            created.provider_id, created.node_name
        ))
    })
    .await;

    let mut with_id = request.clone();
    if let Some(id) = &provider_id {
        with_id.machine.provider_id = id.clone();
        rec.step(STEPS[4], async {
            let again = provider
                .create_machine(&request)
                .await
                .map_err(|e| e.to_string())?;
            if &again.provider_id == id {
                Ok(again.provider_id)
            } else {
                Err(format!("a second VM: {} (first {id})", again.provider_id))
            }
        })
        .await;
        rec.step(STEPS[5], async {
            let status = provider
                .get_machine_status(&with_id)
                .await
                .map_err(|e| e.to_string())?;
            if &status.provider_id == id {
                Ok(format!("node {}", status.node_name))
            } else {
                Err(format!(
                    "status names {} instead of {id}",
                    status.provider_id
                ))
            }
        })
        .await;
        rec.step(STEPS[6], async {
            let list = provider
                .list_machines(&class_request)
                .await
                .map_err(|e| e.to_string())?;
            match list.machines.get(id) {
                Some(name) if name == machine_name => {
                    Ok(format!("{} VMs listed", list.machines.len()))
                }
                Some(name) => Err(format!(
                    "{id} is listed as machine {name:?}, expected {machine_name:?}"
                )),
                None => Err(format!(
                    "{id} missing from {} listed VMs",
                    list.machines.len()
                )),
            }
        })
        .await;
    } else {
        for name in &STEPS[4..7] {
            rec.skip(name, "create failed");
        }
    }
    rec.step(STEPS[7], async {
        match provider
            .get_volume_ids(&GetVolumeIdsRequest {
                pv_specs: vec![serde_json::json!({})],
            })
            .await
        {
            Ok(r) if r.volume_ids.is_empty() => Ok("no volume IDs in an empty PV spec".into()),
            Ok(r) => Err(format!(
                "volume IDs from an empty PV spec: {:?}",
                r.volume_ids
            )),
            Err(e) if e.code == Code::Unimplemented => Ok("Unimplemented (optional)".into()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;

    // Delete as MCM does: with the providerID when there is one, else by the machine alone.
    rec.step(STEPS[8], async {
        provider
            .delete_machine(&with_id)
            .await
            .map(|r| r.last_known_state)
            .map_err(|e| e.to_string())
    })
    .await;
    rec.step(STEPS[9], async {
        provider
            .delete_machine(&with_id)
            .await
            .map(|r| r.last_known_state)
            .map_err(|e| e.to_string())
    })
    .await;
    rec.step(STEPS[10], async {
        expect_code(provider.get_machine_status(&with_id).await, Code::NotFound)
    })
    .await;
    rec.step(STEPS[11], async {
        let list = provider
            .list_machines(&class_request)
            .await
            .map_err(|e| e.to_string())?;
        let stale: Vec<&String> = list
            .machines
            .iter()
            .filter(|(id, name)| Some(*id) == provider_id.as_ref() || *name == machine_name)
            .map(|(id, _)| id)
            .collect();
        if stale.is_empty() {
            Ok(format!("{} VMs listed", list.machines.len()))
        } else {
            Err(format!("still listed: {stale:?}"))
        }
    })
    .await;
    rec.report
}

/// A conformance input file that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not valid JSON: {source}")]
    Json {
        path: String,
        source: serde_json::Error,
    },
    #[error("{path}: not a {what}: {source}")]
    Shape {
        path: String,
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error("provider config: {0}")]
    Config(String),
}

/// Read a MachineClass JSON file: the Kubernetes object (`machine_api::MachineClass`, turned
/// into the driver's class as the controller does) or the runtime's short form
/// (`{"name", "provider", "providerSpec"}`).
pub fn load_class(path: &Path) -> Result<MachineClass, InputError> {
    let value = read_json(path)?;
    let p = || path.display().to_string();
    if value.get("providerSpec").is_none() {
        return Err(InputError::Invalid {
            path: p(),
            message: "the MachineClass has no providerSpec".into(),
        });
    }
    if value.get("kind").is_some() || value.get("metadata").is_some() {
        let class: machine_api::MachineClass =
            serde_json::from_value(value).map_err(shape(path, "MachineClass"))?;
        return Ok(mcm_controller::machine::driver_class(&class));
    }
    let mut class: MachineClass =
        serde_json::from_value(value).map_err(shape(path, "MachineClass"))?;
    if class.name.is_empty() {
        class.name = "conformance".into();
    }
    Ok(class)
}

/// Read a Secret JSON file (a core/v1 Secret: `data` base64, `stringData` text, which wins),
/// merged as the controller merges a class's secrets.
pub fn load_secret(path: &Path) -> Result<SecretData, InputError> {
    let value = read_json(path)?;
    let p = || path.display().to_string();
    if value.get("data").is_none() && value.get("stringData").is_none() {
        return Err(InputError::Invalid {
            path: p(),
            message: "a Secret needs \"data\" (base64) or \"stringData\"".into(),
        });
    }
    let secret: Secret = serde_json::from_value(value)
        .map_err(shape(path, "Secret (data values must be base64 strings)"))?;
    Ok(mcm_controller::secrets::merge([&secret]))
}

/// The error of a JSON file that is not a `what`.
fn shape(path: &Path, what: &'static str) -> impl FnOnce(serde_json::Error) -> InputError {
    let path = path.display().to_string();
    move |source| InputError::Shape { path, what, source }
}

/// A JSON file, or a Kubernetes YAML manifest (`.yaml`/`.yml`, one document) as users keep
/// their MachineClasses and Secrets.
fn read_json(path: &Path) -> Result<serde_json::Value, InputError> {
    let p = || path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|source| InputError::Read { path: p(), source })?;
    let yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
    if yaml {
        return serde_yaml_ng::from_str(&text).map_err(|e| InputError::Invalid {
            path: p(),
            message: format!("not valid YAML (one document expected): {e}"),
        });
    }
    serde_json::from_str(&text).map_err(|source| InputError::Json { path: p(), source })
}

/// The default egress allowlist: the host:port of the provider config's `endpoint`, if any.
/// (Which cloud hosts a provider needs is the provider's business: pass `--allow-host`.)
pub fn default_egress(config: Option<&str>) -> Result<EgressPolicy, InputError> {
    let mut rules = Vec::new();
    if let Some(config) = config {
        let config: serde_json::Value = serde_json::from_str(config)
            .map_err(|e| InputError::Config(format!("not JSON: {e}")))?;
        if let Some(endpoint) = config
            .get("endpoint")
            .and_then(|e| e.as_str())
            .filter(|e| !e.is_empty())
        {
            let url = reqwest::Url::parse(endpoint)
                .map_err(|e| InputError::Config(format!("endpoint {endpoint:?}: {e}")))?;
            let host = url
                .host_str()
                .ok_or_else(|| InputError::Config(format!("endpoint {endpoint:?} has no host")))?;
            let port = url.port_or_known_default().unwrap_or(443);
            rules.push(format!("{host}:{port}"));
        }
    }
    EgressPolicy::parse(&rules).map_err(|e| InputError::Config(e.to_string()))
}

fn bad_input(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(2)
}

/// `mcm-wasm conformance ...`
pub async fn main(args: ConformanceArgs) -> ExitCode {
    let class = match load_class(&args.class) {
        Ok(c) => c,
        Err(e) => return bad_input(e),
    };
    let secret = match load_secret(&args.secret) {
        Ok(s) => s,
        Err(e) => return bad_input(e),
    };
    let egress = if args.allow_hosts.is_empty() {
        default_egress(args.config.as_deref()).map_err(|e| e.to_string())
    } else {
        EgressPolicy::parse(&args.allow_hosts).map_err(|e| e.to_string())
    };
    let egress = match egress {
        Ok(e) => e,
        Err(e) => return bad_input(e),
    };
    let sandbox: Arc<Sandbox> = match Sandbox::new(SandboxConfig::default()) {
        Ok(s) => s,
        Err(e) => return bad_input(format!("{e:#}")),
    };
    let settings = ProviderSettings {
        egress,
        config: args.config.clone(),
        deadlines: Some(Deadlines::all(args.deadline)),
        broker_credentials: args.broker_credentials,
        ..Default::default()
    };
    let provider = match Provider::load(&sandbox, &args.file, settings).await {
        Ok(p) => p,
        Err(e) => return bad_input(e),
    };
    let name = args.machine_name.clone().unwrap_or_else(|| {
        format!(
            "mcm-wasm-conformance-{}",
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default()
        )
    });
    let report = run(&provider, &class, &secret, &name, &args.namespace).await;
    if let Some(path) = &args.junit
        && let Err(e) = std::fs::write(path, report.junit())
    {
        return bad_input(format!("--junit {}: {e}", path.display()));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).expect("json"));
    } else {
        print!("{}", report.table());
    }
    if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn egress_from_the_config_endpoint_only() {
        let p = default_egress(Some(r#"{"endpoint": "http://127.0.0.1:5000"}"#)).unwrap();
        assert!(p.check(&"http://127.0.0.1:5000/".parse().unwrap()).is_ok());
        assert!(
            p.check(&"https://ec2.eu-west-1.amazonaws.com/".parse().unwrap())
                .is_err()
        );
        assert!(
            default_egress(None)
                .unwrap()
                .check(&"https://x/".parse().unwrap())
                .is_err()
        );
        assert!(default_egress(Some("{")).is_err());
    }

    #[test]
    fn class_and_secret_files() {
        let dir = std::env::temp_dir().join(format!("mcm-conformance-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let class = dir.join("class.json");
        std::fs::write(&class, r#"{"kind":"MachineClass","metadata":{"name":"c1"},"provider":"aws","providerSpec":{"region":"eu-west-1"}}"#).unwrap();
        let c = load_class(&class).unwrap();
        assert_eq!((c.name.as_str(), c.provider.as_str()), ("c1", "aws"));
        assert_eq!(c.provider_spec["region"], "eu-west-1");
        let secret = dir.join("secret.json");
        std::fs::write(
            &secret,
            r#"{"data":{"a":"aGVsbG8="},"stringData":{"b":"text","a":"wins"}}"#,
        )
        .unwrap();
        let s = load_secret(&secret).unwrap();
        assert_eq!(s["a"], b"wins");
        assert_eq!(s["b"], b"text");
        std::fs::write(&secret, r#"{"kind":"Secret"}"#).unwrap();
        assert!(
            load_secret(&secret)
                .unwrap_err()
                .to_string()
                .contains("stringData")
        );
        std::fs::write(&secret, r#"{"data":{"a":"not base64!"}}"#).unwrap();
        let err = load_secret(&secret).unwrap_err().to_string();
        assert!(err.contains("base64"), "{err}");
        let yaml = dir.join("bad.yaml");
        std::fs::write(&yaml, "a: [unclosed").unwrap();
        let err = load_secret(&yaml).unwrap_err().to_string();
        assert!(err.contains("bad.yaml: not valid YAML"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_junit_report_has_a_case_per_step_and_the_failures() {
        let step = |name, passed, detail: &str| Step {
            name,
            passed,
            detail: detail.into(),
            elapsed: Duration::from_millis(12),
        };
        let report = Report {
            provider: "sample".into(),
            machine: "m".into(),
            steps: vec![
                step("create", true, "sample:///vm-1"),
                step(
                    "delete",
                    false,
                    "code = [Internal] message = [boom & <bust>]",
                ),
            ],
        };
        let xml = report.junit();
        assert!(
            xml.contains(r#"tests="2""#) && xml.contains(r#"failures="1""#),
            "{xml}"
        );
        assert!(
            xml.contains(r#"<testcase name="create" classname="conformance.sample""#),
            "{xml}"
        );
        assert!(
            xml.contains("message=\"code = [Internal] message = [boom &amp; &lt;bust&gt;]\""),
            "{xml}"
        );
    }

    /// The examples a user already has (`kubernetes/examples/`), as they are.
    #[test]
    fn kubernetes_yaml_manifests() {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../kubernetes/examples");
        let c = load_class(&examples.join("machine-class.yaml")).unwrap();
        assert_eq!((c.name.as_str(), c.provider.as_str()), ("aws-small", "AWS"));
        assert_eq!(c.provider_spec["region"], "eu-west-1");
        let s = load_secret(&examples.join("secret.yaml")).unwrap();
        assert_eq!(s["providerAccessKeyId"], b"AKIAIOSFODNN7EXAMPLE");
        assert!(s.contains_key("userData"));
    }
}
