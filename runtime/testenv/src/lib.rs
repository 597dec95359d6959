//! A real, local Kubernetes control plane for tests and for `just run`.
//!
//! [`ControlPlane::start`] runs etcd and kube-apiserver (built by `just controlplane` into a cache
//! outside the checkout) on free loopback ports, with freshly generated certificates: a CA, a
//! serving certificate for 127.0.0.1/localhost, an admin client certificate in the group
//! `system:masters` and a service-account signing key. It writes a kubeconfig, waits until the
//! API server answers `/readyz`, and stops both processes and removes its directory when dropped,
//! also when a test panics.
//!
//! Several tests of one test binary can share a control plane with [`shared`]; it lives until
//! the process exits. Every child process gets `PR_SET_PDEATHSIG(SIGKILL)` from a thread that
//! lives as long as the process, so no etcd or kube-apiserver outlives the test binary, even when
//! it is killed.

mod binaries;
mod certs;
pub mod ec2;
pub mod moto;
pub mod node_sim;
mod process;
pub mod registry;
pub mod sample;
pub mod throttle;

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use binaries::{
    Binaries, GardenerMcm, cache_root, etcd_version, gardener_mcm_version, kubernetes_version,
};
pub use process::{ChildGuard, spawn};

/// Errors of starting or using the control plane.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A binary is not in the cache.
    #[error("{what} not found at {path}: run `{install}` first to install it")]
    MissingBinary {
        what: String,
        path: PathBuf,
        /// The command that installs it.
        install: &'static str,
    },
    /// An I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// Generating certificates failed.
    #[error("generating certificates: {0}")]
    Certificates(#[from] rcgen::Error),
    /// A process did not become ready.
    #[error(
        "{what} did not become ready within {timeout:?}: {detail}\n--- last lines of {log} ---\n{log_tail}"
    )]
    NotReady {
        what: String,
        timeout: Duration,
        detail: String,
        log: PathBuf,
        log_tail: String,
    },
    /// A kube client error.
    #[error("kubernetes client: {0}")]
    Kube(#[from] kube::Error),
    /// A command (kubectl) failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
}

/// Result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// How long to wait for etcd and the API server to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// A running etcd + kube-apiserver.
///
/// Dropping it kills both processes and removes its directory (certificates, kubeconfig, etcd
/// data, logs). Set `MCM_WASM_TESTENV_KEEP=1` to keep the directory for debugging.
pub struct ControlPlane {
    // Field order matters for Drop: the API server goes before etcd, then the directory.
    apiserver: ChildGuard,
    etcd: ChildGuard,
    dir: Option<tempfile::TempDir>,
    dir_path: PathBuf,
    kubeconfig: PathBuf,
    server: String,
    binaries: Binaries,
    /// The API server's command line, for [`ControlPlane::restart_apiserver`].
    apiserver_args: Vec<std::ffi::OsString>,
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver and waits until the API server is ready.
    ///
    /// Blocking; safe to call from inside an async runtime (the readiness check runs on its own
    /// thread). Fails with a message naming `just controlplane` when the binaries are not built.
    pub fn start() -> Result<Self> {
        install_crypto_provider();
        let binaries = Binaries::locate()?;
        // Free ports are found by binding port 0 and releasing it; another process may grab one
        // in between, so a start that fails is retried with new ports.
        let mut last_err = None;
        for _ in 0..3 {
            match Self::start_once(binaries.clone()) {
                Ok(cp) => return Ok(cp),
                Err(err @ Error::NotReady { .. }) => last_err = Some(err),
                Err(err) => return Err(err),
            }
        }
        Err(last_err.expect("at least one attempt"))
    }

    fn start_once(binaries: Binaries) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("mcm-wasm-controlplane-")
            .tempdir()
            .map_err(io_err("creating the control plane directory"))?;
        let dir_path = dir.path().to_path_buf();
        let pki = dir_path.join("pki");
        std::fs::create_dir_all(&pki).map_err(io_err("creating the pki directory"))?;
        let certs = certs::generate(&pki)?;

        let etcd_client_port = free_port()?;
        let etcd_peer_port = free_port()?;
        let apiserver_port = free_port()?;

        let etcd_url = format!("http://127.0.0.1:{etcd_client_port}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer_port}");
        let etcd_log = dir_path.join("etcd.log");
        let mut etcd_cmd = Command::new(&binaries.etcd);
        etcd_cmd
            .arg("--name=testenv")
            .arg(format!("--data-dir={}", dir_path.join("etcd").display()))
            .arg(format!("--listen-client-urls={etcd_url}"))
            .arg(format!("--advertise-client-urls={etcd_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=testenv={peer_url}"))
            .arg("--listen-metrics-urls=")
            .arg("--unsafe-no-fsync=true")
            .arg("--log-level=warn");
        let etcd = process::spawn("etcd", etcd_cmd, &etcd_log)?;
        wait_until(
            "etcd",
            &etcd_log,
            || {
                tcp_open(etcd_client_port)
                    .then_some(())
                    .ok_or("not listening yet".to_owned())
            },
            &etcd,
        )?;

        let server = format!("https://127.0.0.1:{apiserver_port}");
        let apiserver_log = dir_path.join("kube-apiserver.log");
        let mut apiserver_cmd = Command::new(&binaries.kube_apiserver);
        apiserver_cmd
            .arg(format!("--etcd-servers={etcd_url}"))
            .arg(format!("--cert-dir={}", pki.display()))
            .arg(format!("--tls-cert-file={}", certs.serving_cert.display()))
            .arg(format!(
                "--tls-private-key-file={}",
                certs.serving_key.display()
            ))
            .arg(format!("--client-ca-file={}", certs.ca_cert.display()))
            .arg(format!("--secure-port={apiserver_port}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            // The `kubernetes` Service's endpoints may not be a loopback address; nothing needs them.
            .arg("--endpoint-reconciler-type=none")
            .arg("--service-cluster-ip-range=10.0.0.0/24")
            .arg("--allow-privileged=true")
            .arg("--disable-admission-plugins=ServiceAccount")
            .arg("--authorization-mode=RBAC")
            .arg(format!("--service-account-issuer={server}"))
            .arg(format!(
                "--service-account-key-file={}",
                certs.sa_public_key.display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                certs.sa_private_key.display()
            ))
            .arg("--v=1");
        let apiserver_args: Vec<std::ffi::OsString> =
            apiserver_cmd.get_args().map(ToOwned::to_owned).collect();
        let apiserver = process::spawn("kube-apiserver", apiserver_cmd, &apiserver_log)?;

        let kubeconfig = dir_path.join("kubeconfig");
        write_kubeconfig(&kubeconfig, &server, &certs)?;

        let cp = ControlPlane {
            apiserver,
            etcd,
            dir: Some(dir),
            dir_path,
            kubeconfig,
            server,
            binaries,
            apiserver_args,
        };
        cp.wait_ready()?;
        Ok(cp)
    }

    /// Polls `/readyz` with the admin credentials until it answers `ok`.
    fn wait_ready(&self) -> Result<()> {
        let kubeconfig = self.kubeconfig.clone();
        // The check uses its own runtime on its own thread, so `start` works from sync and async
        // callers alike.
        let check = move || -> Result<(), String> {
            let kubeconfig = kubeconfig.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                rt.block_on(async {
                    let client = client_from(&kubeconfig).await.map_err(|e| e.to_string())?;
                    let req = http_get("/readyz");
                    let body =
                        tokio::time::timeout(Duration::from_secs(5), client.request_text(req))
                            .await
                            .map_err(|_| "timed out".to_owned())?
                            .map_err(|e| e.to_string())?;
                    if body.trim() == "ok" {
                        Ok(())
                    } else {
                        Err(body)
                    }
                })
            })
            .join()
            .unwrap_or_else(|_| Err("readiness check panicked".to_owned()))
        };
        wait_until(
            "kube-apiserver",
            &self.dir_path.join("kube-apiserver.log"),
            check,
            &self.apiserver,
        )
    }

    /// Stop the API server (SIGTERM, SIGKILL after 3 s) and start it again on the same port,
    /// over the same etcd;
    /// returns once it is ready. Clients see connections refused in between, then carry on.
    pub fn restart_apiserver(&mut self) -> Result<()> {
        self.apiserver.kill();
        let mut cmd = Command::new(&self.binaries.kube_apiserver);
        cmd.args(&self.apiserver_args);
        let log = self.dir_path.join("kube-apiserver.log");
        // The port is free once the old process is gone; a restart may race its teardown.
        let started = std::time::Instant::now();
        while tcp_open(self.port()) {
            if started.elapsed() > Duration::from_secs(10) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.apiserver = process::spawn("kube-apiserver", cmd, &log)?;
        self.wait_ready()
    }

    fn port(&self) -> u16 {
        self.server
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
    }

    /// The kubeconfig with the admin (system:masters) client certificate.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The API server's URL, `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> &str {
        &self.server
    }

    /// The control plane's directory (certificates, kubeconfig, logs).
    pub fn dir(&self) -> &Path {
        &self.dir_path
    }

    /// Process ids of etcd and kube-apiserver.
    pub fn pids(&self) -> [u32; 2] {
        [self.etcd.id(), self.apiserver.id()]
    }

    /// The binaries this control plane runs (and kubectl).
    pub fn binaries(&self) -> &Binaries {
        &self.binaries
    }

    /// Path of the kubectl binary built with the control plane.
    pub fn kubectl_path(&self) -> &Path {
        &self.binaries.kubectl
    }

    /// A kubectl command that talks to this control plane as admin.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(&self.binaries.kubectl);
        cmd.arg(format!("--kubeconfig={}", self.kubeconfig.display()));
        cmd
    }

    /// Runs kubectl with `args`, returns its stdout; an error carries its stderr.
    pub fn kubectl_run<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = self.kubectl();
        cmd.args(args);
        run(cmd)
    }

    /// A kube client with admin rights. Create one per async runtime (each `#[tokio::test]` has
    /// its own): a client is bound to the runtime it was created on.
    pub async fn client(&self) -> Result<kube::Client> {
        client_from(&self.kubeconfig).await
    }

    /// A kube client as the machine controller builds its own: admin rights, without kube's
    /// default retry layer (see `mcm_controller::without_client_retry`: a 429 is an answer).
    pub async fn controller_client(&self) -> Result<kube::Client> {
        let mut config = config_from(&self.kubeconfig).await?;
        config.default_retry = false;
        Ok(kube::Client::try_from(config)?)
    }

    /// Applies every YAML file in `dir` (server-side) and waits until the CRDs among them are
    /// established.
    pub fn apply_dir(&self, dir: &Path) -> Result<()> {
        self.kubectl_run([
            "apply".as_ref(),
            "--server-side".as_ref(),
            "--force-conflicts".as_ref(),
            "-f".as_ref(),
            dir.as_os_str(),
        ])?;
        self.kubectl_run([
            "wait",
            "--for=condition=Established",
            "crd",
            "--all",
            "--timeout=60s",
        ])?;
        Ok(())
    }

    /// Applies the project's CRDs (`kubernetes/crds/`) and waits until they are established.
    pub fn apply_crds(&self) -> Result<()> {
        self.apply_dir(&crds_dir())
    }

    /// Starts Gardener's machine-controller-manager (built by `just controlplane`) against this
    /// control plane, for the objects in `namespace`. It is stopped when the returned guard drops.
    pub fn start_gardener_mcm(&self, namespace: &str) -> Result<GardenerMcmProcess> {
        start_gardener_mcm(&self.kubeconfig, namespace, &self.dir_path, &[])
    }

    /// [`ControlPlane::start_gardener_mcm`] with more flags (e.g. `--kube-api-qps=200`).
    pub fn start_gardener_mcm_with(
        &self,
        namespace: &str,
        args: &[&str],
    ) -> Result<GardenerMcmProcess> {
        start_gardener_mcm(&self.kubeconfig, namespace, &self.dir_path, args)
    }
}

/// Starts Gardener's machine-controller-manager (built by `just controlplane`) against the
/// cluster of `kubeconfig`, for the objects in `namespace`, logging into `log_dir`, with
/// `args` added. It is stopped when the returned guard drops.
pub fn start_gardener_mcm(
    kubeconfig: &Path,
    namespace: &str,
    log_dir: &Path,
    args: &[&str],
) -> Result<GardenerMcmProcess> {
    let mcm = GardenerMcm::locate()?;
    let log = log_dir.join(format!("gardener-mcm-{namespace}.log"));
    let port = free_port()?;
    let mut cmd = Command::new(&mcm.binary);
    cmd.arg(format!("--control-kubeconfig={}", kubeconfig.display()))
        .arg(format!("--target-kubeconfig={}", kubeconfig.display()))
        .arg(format!("--namespace={namespace}"))
        .arg("--leader-elect=false")
        .arg("--address=127.0.0.1")
        .arg(format!("--port={port}"))
        .arg("--safety-up=2")
        .arg("--safety-down=1")
        .arg("--v=2")
        .args(args);
    let child = process::spawn("machine-controller-manager", cmd, &log)?;
    Ok(GardenerMcmProcess { child, log })
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.apiserver.kill();
        self.etcd.kill();
        if std::env::var_os("MCM_WASM_TESTENV_KEEP").is_some()
            && let Some(dir) = self.dir.take()
        {
            eprintln!("testenv: keeping {}", dir.keep().display());
        }
    }
}

/// A running Gardener machine-controller-manager; killed on drop.
pub struct GardenerMcmProcess {
    child: ChildGuard,
    log: PathBuf,
}

impl GardenerMcmProcess {
    /// Its log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
    }
}

/// The control plane shared by all tests of this process; started on first use.
///
/// It is never dropped: its processes die with the process (parent-death signal), and an exit
/// hook kills them and removes its directory on a normal exit.
///
/// # Panics
/// When it cannot start (for example, the binaries are not built): every test that needs it fails
/// with that message.
pub fn shared() -> &'static ControlPlane {
    static SHARED: OnceLock<std::result::Result<ControlPlane, String>> = OnceLock::new();
    let cp = SHARED.get_or_init(|| {
        let cp = ControlPlane::start().map_err(|e| e.to_string())?;
        process::cleanup_at_exit(cp.dir_path.clone());
        Ok(cp)
    });
    match cp {
        Ok(cp) => cp,
        Err(err) => panic!("the shared control plane did not start: {err}"),
    }
}

/// The repository's `kubernetes/` directory.
pub fn kubernetes_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../kubernetes")
}

/// The repository's `kubernetes/crds/` directory (the CRDs generated from `machine-api`).
pub fn crds_dir() -> PathBuf {
    kubernetes_dir().join("crds")
}

/// In a workspace build rustls has two crypto backends enabled (ring through kube, aws-lc-rs
/// through reqwest), so it cannot pick a process default by itself: choose ring, as kube does.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A kube client for a kubeconfig file.
pub async fn client_from(kubeconfig: &Path) -> Result<kube::Client> {
    Ok(kube::Client::try_from(config_from(kubeconfig).await?)?)
}

async fn config_from(kubeconfig: &Path) -> Result<kube::Config> {
    install_crypto_provider();
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).map_err(|e| Error::Io {
        context: format!("reading {}", kubeconfig.display()),
        source: std::io::Error::other(e.to_string()),
    })?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .map_err(|e| Error::Io {
            context: format!("loading {}", kubeconfig.display()),
            source: std::io::Error::other(e.to_string()),
        })?;
    Ok(config)
}

fn http_get(path: &str) -> http::Request<Vec<u8>> {
    http::Request::get(path)
        .body(Vec::new())
        .expect("a valid request")
}

/// Runs a command and returns its stdout, or an error with its stderr.
pub fn run(mut cmd: Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(io_err(format!("running {shown}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::Command {
            command: shown,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io_err("finding a free port"))?;
    Ok(listener
        .local_addr()
        .map_err(io_err("finding a free port"))?
        .port())
}

/// Start `name` listening on a free loopback port: `command(port)` builds the process (and
/// writes whatever configuration it needs); a port taken between finding it and the process
/// binding it is retried with another (3 attempts). Returns the process and its port.
pub(crate) fn spawn_on_free_port(
    name: &str,
    log: &Path,
    mut command: impl FnMut(u16) -> Result<std::process::Command>,
) -> Result<(ChildGuard, u16)> {
    let mut last_err = None;
    for _ in 0..3 {
        let port = free_port()?;
        let process = process::spawn(name, command(port)?, log)?;
        let ready = wait_until(
            name,
            log,
            || {
                tcp_open(port)
                    .then_some(())
                    .ok_or("not listening yet".to_owned())
            },
            &process,
        );
        match ready {
            Ok(()) => return Ok((process, port)),
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.expect("at least one attempt"))
}

pub(crate) fn tcp_open(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

pub(crate) fn wait_until(
    what: &str,
    log: &Path,
    mut check: impl FnMut() -> Result<(), String>,
    child: &ChildGuard,
) -> Result<()> {
    let start = Instant::now();
    let mut detail = String::from("not checked");
    while start.elapsed() < READY_TIMEOUT {
        if let Some(status) = child.exit_status() {
            return Err(Error::NotReady {
                what: what.to_owned(),
                timeout: READY_TIMEOUT,
                detail: format!("it exited ({status})"),
                log: log.to_owned(),
                log_tail: tail(log, 30),
            });
        }
        match check() {
            Ok(()) => return Ok(()),
            Err(err) => detail = err,
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(Error::NotReady {
        what: what.to_owned(),
        timeout: READY_TIMEOUT,
        detail,
        log: log.to_owned(),
        log_tail: tail(log, 30),
    })
}

/// The last `lines` lines of a log, preceded by its last error lines (klog `E`/`F`) if those
/// are further up.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    let errors: Vec<&str> = all[..start]
        .iter()
        .filter(|l| l.starts_with('E') || l.starts_with('F'))
        .copied()
        .collect();
    let mut out = String::new();
    if !errors.is_empty() {
        out.push_str("[errors further up]\n");
        out.push_str(&errors[errors.len().saturating_sub(10)..].join("\n"));
        out.push_str("\n[last lines]\n");
    }
    out.push_str(&all[start..].join("\n"));
    out
}

fn write_kubeconfig(path: &Path, server: &str, certs: &certs::Files) -> Result<()> {
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": "testenv",
            "cluster": {
                "server": server,
                "certificate-authority": certs.ca_cert,
            },
        }],
        "users": [{
            "name": "admin",
            "user": {
                "client-certificate": certs.admin_cert,
                "client-key": certs.admin_key,
            },
        }],
        "contexts": [{
            "name": "testenv",
            "context": { "cluster": "testenv", "user": "admin" },
        }],
        "current-context": "testenv",
    });
    let yaml = serde_yaml_ng::to_string(&kubeconfig).expect("kubeconfig serializes");
    std::fs::write(path, yaml).map_err(io_err(format!("writing {}", path.display())))
}

/// A fresh namespace `{prefix}-{n}-{pid}` (unique in this process and among concurrent test
/// processes on one control plane); returns its name.
pub async fn create_namespace(client: &kube::Client, prefix: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let name = format!(
        "{prefix}-{}-{}",
        N.fetch_add(1, Ordering::SeqCst),
        std::process::id()
    );
    let ns: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(serde_json::json!({ "metadata": { "name": name } }))
            .expect("a namespace");
    kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .create(&Default::default(), &ns)
        .await
        .expect("create namespace");
    name
}
