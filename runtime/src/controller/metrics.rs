//! Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` endpoints (text exposition
//! format, written by hand: a handful of families need no client library).
//!
//! Families: `mcm_wasm_driver_calls_total{provider,operation,code}`,
//! `mcm_wasm_driver_call_duration_seconds{provider,operation}` (histogram),
//! `mcm_wasm_reconcile_errors_total{error}`, and MCM's `mcm_machine_items_total` and
//! `mcm_machine_current_status_phase{name,namespace}` (Terminating −4, Failed −3,
//! CrashLoopBackOff −2, Unknown −1, Pending 0, Running 1, other 0), `mcm_machine_info` (labels
//! as MCM's) and `mcm_machine_status_condition{name,namespace,condition}` (True 1, False 0,
//! Unknown 2).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use kube::ResourceExt as _;
use kube::runtime::reflector::Store;
use machine_api::{Machine, MachinePhase};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::machine::go_name;
use crate::driver::{Code, Operation};

const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
pub struct Metrics {
    calls: Mutex<BTreeMap<(String, &'static str, &'static str), u64>>,
    durations: Mutex<BTreeMap<(String, &'static str), Histogram>>,
    reconcile_errors: Mutex<BTreeMap<&'static str, u64>>,
    machines: OnceLock<Store<Machine>>,
    ready: AtomicBool,
}

impl Metrics {
    /// One driver call's outcome (`None` = OK) and duration.
    pub fn observe(&self, provider: &str, op: Operation, outcome: Option<Code>, elapsed: Duration) {
        let code = outcome.map_or("OK", Code::name);
        *self
            .calls
            .lock()
            .unwrap()
            .entry((provider.to_string(), go_name(op), code))
            .or_default() += 1;
        let mut d = self.durations.lock().unwrap();
        let h = d.entry((provider.to_string(), go_name(op))).or_default();
        let secs = elapsed.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    pub fn reconcile_error(&self, label: &'static str) {
        *self
            .reconcile_errors
            .lock()
            .unwrap()
            .entry(label)
            .or_default() += 1;
    }

    /// The controller's Machine cache (for the phase gauges); marks the controller ready.
    pub fn set_machines(&self, store: Store<Machine>) {
        let _ = self.machines.set(store);
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP mcm_wasm_driver_calls_total Driver calls by provider, operation and outcome code.\n");
        out.push_str("# TYPE mcm_wasm_driver_calls_total counter\n");
        for ((p, op, code), n) in self.calls.lock().unwrap().iter() {
            let _ = writeln!(
                out,
                "mcm_wasm_driver_calls_total{{provider=\"{}\",operation=\"{op}\",code=\"{code}\"}} {n}",
                esc(p)
            );
        }
        out.push_str("# HELP mcm_wasm_driver_call_duration_seconds Duration of driver calls.\n");
        out.push_str("# TYPE mcm_wasm_driver_call_duration_seconds histogram\n");
        for ((p, op), h) in self.durations.lock().unwrap().iter() {
            let labels = format!("provider=\"{}\",operation=\"{op}\"", esc(p));
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "mcm_wasm_driver_call_duration_seconds_bucket{{{labels},le=\"{b}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                out,
                "mcm_wasm_driver_call_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "mcm_wasm_driver_call_duration_seconds_sum{{{labels}}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "mcm_wasm_driver_call_duration_seconds_count{{{labels}}} {}",
                h.count
            );
        }
        out.push_str("# HELP mcm_wasm_reconcile_errors_total Reconciles that ended in an error (retry = a requeue with MCM's period).\n");
        out.push_str("# TYPE mcm_wasm_reconcile_errors_total counter\n");
        for (label, n) in self.reconcile_errors.lock().unwrap().iter() {
            let _ = writeln!(
                out,
                "mcm_wasm_reconcile_errors_total{{error=\"{label}\"}} {n}"
            );
        }
        if let Some(store) = self.machines.get() {
            let machines = store.state();
            out.push_str(
                "# HELP mcm_machine_items_total Count of machines currently managed by the mcm.\n",
            );
            out.push_str("# TYPE mcm_machine_items_total gauge\n");
            let _ = writeln!(out, "mcm_machine_items_total {}", machines.len());
            out.push_str("# HELP mcm_machine_current_status_phase Current status phase of the Machines currently managed by the mcm.\n");
            out.push_str("# TYPE mcm_machine_current_status_phase gauge\n");
            for m in machines.iter() {
                let value = match m.phase() {
                    Some(MachinePhase::Terminating) => -4,
                    Some(MachinePhase::Failed) => -3,
                    Some(MachinePhase::CrashLoopBackOff) => -2,
                    Some(MachinePhase::Unknown) => -1,
                    Some(MachinePhase::Running) => 1,
                    _ => 0,
                };
                let _ = writeln!(
                    out,
                    "mcm_machine_current_status_phase{{name=\"{}\",namespace=\"{}\"}} {value}",
                    esc(&m.name_any()),
                    esc(&m.namespace().unwrap_or_default())
                );
            }
            out.push_str("# HELP mcm_machine_info Information of the Machines currently managed by the mcm.\n");
            out.push_str("# TYPE mcm_machine_info gauge\n");
            for m in machines.iter() {
                machine_info(&mut out, m);
            }
            out.push_str("# HELP mcm_machine_status_condition Machine status conditions.\n");
            out.push_str("# TYPE mcm_machine_status_condition gauge\n");
            for m in machines.iter() {
                for c in m.status.iter().flat_map(|s| &s.conditions) {
                    let value = match c.status.as_str() {
                        "True" => 1,
                        "False" => 0,
                        _ => 2,
                    };
                    let _ = writeln!(
                        out,
                        "mcm_machine_status_condition{{name=\"{}\",namespace=\"{}\",condition=\"{}\"}} {value}",
                        esc(&m.name_any()),
                        esc(&m.namespace().unwrap_or_default()),
                        esc(&c.type_)
                    );
                }
            }
        }
        out
    }
}

/// MCM's `mcm_machine_info` line of one machine (always 1; the information is in the labels).
fn machine_info(out: &mut String, m: &Machine) {
    let created = m
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(0, |t| t.0.as_second());
    let class = &m.spec.class;
    let _ = writeln!(
        out,
        "mcm_machine_info{{name=\"{}\",namespace=\"{}\",createdAt=\"{created}\",spec_provider_id=\"{}\",spec_class_api_group=\"{}\",spec_class_kind=\"{}\",spec_class_name=\"{}\",node_name=\"{}\"}} 1",
        esc(&m.name_any()),
        esc(&m.namespace().unwrap_or_default()),
        esc(&m.spec.provider_id),
        esc(&class.api_group),
        esc(&class.kind),
        esc(&class.name),
        esc(m.node_name().unwrap_or_default()),
    );
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Serve `/metrics`, `/healthz` and `/readyz` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: std::sync::Arc<super::Context>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let (mut sock, _) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => continue,
            },
        };
        let ctx = metrics.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
                match tokio::time::timeout(Duration::from_secs(5), sock.read(&mut chunk)).await {
                    Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                    _ => return,
                }
            }
            let head = String::from_utf8_lossy(&buf);
            let path = head.split_whitespace().nth(1).unwrap_or("/");
            let path = path.split('?').next().unwrap_or(path);
            let (status, ctype, body) = match path {
                "/metrics" => ("200 OK", "text/plain; version=0.0.4", ctx.metrics.render()),
                "/healthz" => ("200 OK", "text/plain", "ok".to_string()),
                "/readyz" if ctx.metrics.is_ready() => ("200 OK", "text/plain", "ok".to_string()),
                "/readyz" => (
                    "503 Service Unavailable",
                    "text/plain",
                    "machine cache not synced yet".to_string(),
                ),
                _ => ("404 Not Found", "text/plain", "not found".to_string()),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(response.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}
