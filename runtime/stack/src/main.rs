//! `just run`: the main job on one machine. Starts a local control plane (or uses
//! `$KUBECONFIG`), moto's EC2 server, an OCI registry on loopback holding the AWS provider
//! (pushed with `mcm-wasm push`), Gardener's machine-controller-manager (for the
//! MachineDeployment example) and `mcm-wasm controller` with the simulated node join; applies
//! the CRDs and the examples, the `Provider` resource first (the controller pulls the provider
//! from the registry by digest); prints a line per machine phase until every machine is
//! Running; and tears everything down on Ctrl-C.

mod examples;
mod progress;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use testenv::moto::Moto;
use testenv::{ChildGuard, ControlPlane, GardenerMcmProcess};

/// The namespace of the examples and of everything the controller serves.
const NAMESPACE: &str = "mcm-wasm";

#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The mcm-wasm binary (default: next to this one).
    #[arg(long, value_name = "PATH")]
    mcm_wasm: Option<PathBuf>,
    /// The AWS provider component.
    #[arg(long, value_name = "PATH", default_value_os_t = repo_root().join("target/wasm32-wasip2/release/aws_provider.wasm"))]
    provider: PathBuf,
    /// Use the cluster of $KUBECONFIG instead of starting a control plane (when set).
    #[arg(long, env = "KUBECONFIG", value_name = "PATH")]
    kubeconfig: Option<PathBuf>,
    /// Do not run Gardener's machine-controller-manager (the MachineDeployment example is then
    /// not applied).
    #[arg(long)]
    no_gardener_mcm: bool,
    /// Stop (and tear down) once every machine is Running, instead of waiting for Ctrl-C.
    #[arg(long)]
    exit_when_running: bool,
    /// Give up when the machines are not Running after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Everything started, stopped in field order when dropped: the controllers before what they
/// talk to.
struct Stack {
    controller: Option<ChildGuard>,
    registry: Option<testenv::registry::Registry>,
    gardener_mcm: Option<GardenerMcmProcess>,
    moto: Option<Moto>,
    control_plane: Option<ControlPlane>,
    /// Logs, the providers directory, the rendered examples.
    dir: tempfile::TempDir,
    started: Instant,
}

impl Stack {
    /// A progress line, with the seconds since start.
    fn say(&self, line: impl AsRef<str>) {
        println!(
            "[{:>6.1}s] {}",
            self.started.elapsed().as_secs_f64(),
            line.as_ref()
        );
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    testenv::install_crypto_provider();
    let mut stack = Stack {
        controller: None,
        registry: None,
        gardener_mcm: None,
        moto: None,
        control_plane: None,
        dir: match tempfile::Builder::new().prefix("mcm-wasm-run-").tempdir() {
            Ok(dir) => dir,
            Err(e) => {
                eprintln!("error: creating the stack's directory: {e}");
                return ExitCode::FAILURE;
            }
        },
        started: Instant::now(),
    };
    let outcome = tokio::select! {
        r = run(&args, &mut stack) => r,
        _ = shutdown_signal() => {
            println!();
            stack.say("interrupted");
            Ok(())
        }
    };
    let code = match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    };
    stack.say(
        "stopping: controller, registry, machine-controller-manager, moto, kube-apiserver, etcd",
    );
    let dir = stack.dir.path().to_path_buf();
    drop(stack);
    println!("stopped; nothing left running ({} removed)", dir.display());
    code
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn run(args: &Args, stack: &mut Stack) -> Result<()> {
    let mcm_wasm = match &args.mcm_wasm {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("mcm-wasm"),
    };
    if !mcm_wasm.is_file() {
        bail!(
            "{} not found: build it with `cargo build --release -p mcm-wasm` or pass --mcm-wasm",
            mcm_wasm.display()
        );
    }
    if !args.provider.is_file() {
        bail!(
            "the AWS provider {} not found: build it with `just guests`",
            args.provider.display()
        );
    }

    // The cluster.
    let kubeconfig = match &args.kubeconfig {
        Some(path) => {
            stack.say(format!("cluster: using $KUBECONFIG {}", path.display()));
            path.clone()
        }
        None => {
            stack.say("cluster: starting etcd + kube-apiserver");
            let cp = tokio::task::spawn_blocking(ControlPlane::start)
                .await?
                .context("starting the control plane")?;
            let [etcd, apiserver] = cp.pids();
            stack.say(format!(
                "cluster: kube-apiserver {} (pid {apiserver}), etcd (pid {etcd}); kubeconfig {}",
                cp.server_url(),
                cp.kubeconfig_path().display()
            ));
            let path = cp.kubeconfig_path().to_path_buf();
            stack.control_plane = Some(cp);
            path
        }
    };
    let kubectl = Kubectl::new(&kubeconfig)?;
    let client = testenv::client_from(&kubeconfig).await?;

    // moto and what the example class refers to.
    stack.say("moto: starting the EC2 server");
    let moto = tokio::task::spawn_blocking(Moto::start)
        .await?
        .context("starting moto")?;
    let resources = moto
        .class_resources(examples::INSTANCE_PROFILE, Some(examples::KEY_PAIR))
        .await?;
    stack.say(format!(
        "moto: {} (pid {}); AMI {}, subnet {}, security group {}",
        moto.endpoint,
        moto.pid(),
        resources.ami,
        resources.subnet,
        resources.security_group
    ));
    let moto_endpoint = moto.endpoint.clone();
    stack.moto = Some(moto);

    // CRDs and namespace.
    kubectl.apply(&testenv::crds_dir())?;
    kubectl.run(&[
        "wait",
        "--for=condition=Established",
        "crd",
        "--all",
        "--timeout=60s",
    ])?;
    kubectl.apply(&testenv::kubernetes_dir().join("deploy/namespace.yaml"))?;
    stack.say("cluster: CRDs established, namespace mcm-wasm");

    // The provider as an OCI artifact in a registry on loopback, pushed as an operator would.
    let registry = tokio::task::spawn_blocking(|| {
        testenv::registry::Registry::start(testenv::registry::Options::default())
    })
    .await?
    .context("starting the OCI registry")?;
    let reference = format!("{}:dev", registry.reference("providers/aws"));
    let push = Command::new(&mcm_wasm)
        .arg("push")
        .arg(&args.provider)
        .arg(&reference)
        .arg("--insecure")
        .output()
        .context("running mcm-wasm push")?;
    if !push.status.success() {
        bail!(
            "mcm-wasm push {} {reference}: {}",
            args.provider.display(),
            String::from_utf8_lossy(&push.stderr).trim()
        );
    }
    let pinned = String::from_utf8_lossy(&push.stdout).trim().to_string();
    stack.say(format!(
        "registry: {} (pid {}); pushed {} as {pinned}",
        registry.host,
        registry.pid(),
        args.provider.display()
    ));
    stack.registry = Some(registry);

    let metrics_port = testenv::free_port()?;
    let log = stack.dir.path().join("controller.log");
    let mut cmd = Command::new(&mcm_wasm);
    cmd.arg("controller")
        .arg("--control-kubeconfig")
        .arg(&kubeconfig)
        .args(["--namespace", NAMESPACE, "--leader-elect=false"])
        .args([
            "--address",
            "127.0.0.1",
            "--port",
            &metrics_port.to_string(),
        ])
        // As a provider-aws deployment points its AWS SDK at another EC2: the AWS provider
        // declares this variable, and the host makes it the provider's endpoint and allowlist.
        .env("AWS_ENDPOINT_URL_EC2", &moto_endpoint)
        .env("MCM_WASM_LOG", "info");
    let controller = testenv::spawn("mcm-wasm controller", cmd, &log)?;
    // No kubelet can boot on moto's VMs: the simulated kubelets register each VM's Node
    // (testenv's NodeSim; moto's VMs are all live, so no cloud is asked).
    let kubelets = testenv::node_sim::NodeSim {
        control: client.clone(),
        target: client.clone(),
        namespace: NAMESPACE.to_string(),
        liveness: std::sync::Arc::new(testenv::node_sim::AlwaysLive),
    };
    tokio::spawn(kubelets.run(Duration::from_secs(1), std::future::pending()));
    stack.say(format!(
        "controller: mcm-wasm controller (pid {}), metrics http://127.0.0.1:{metrics_port}/metrics, log {}",
        controller.id(),
        log.display()
    ));
    stack.controller = Some(controller);

    // Gardener's MachineDeployment/MachineSet controllers, when built.
    let with_deployment = if args.no_gardener_mcm {
        false
    } else {
        match testenv::start_gardener_mcm(&kubeconfig, NAMESPACE, stack.dir.path(), &[]) {
            Ok(mcm) => {
                stack.say(format!(
                    "gardener: machine-controller-manager {} (pid {}), log {}",
                    testenv::gardener_mcm_version(),
                    mcm.pid(),
                    mcm.log_path().display()
                ));
                stack.gardener_mcm = Some(mcm);
                true
            }
            Err(e) => {
                stack.say(format!(
                    "gardener: not started ({e}); the MachineDeployment example is skipped"
                ));
                false
            }
        }
    };

    // The examples, pointed at what moto made.
    let rendered = examples::render(stack.dir.path(), &resources, &pinned, with_deployment)?;
    kubectl.apply(&rendered)?;
    progress::until_provider_ready(stack, &client, NAMESPACE, "aws", Duration::from_secs(120))
        .await?;
    stack.say(format!(
        "provider: hot-swap it with `mcm-wasm push NEW.wasm {reference} --insecure`, then \
         `kubectl -n {NAMESPACE} patch provider aws --type merge -p '{{\"spec\":{{\"source\":{{\"oci\":{{\"reference\":\"<printed reference>\"}}}}}}}}'`"
    ));
    stack.say(format!(
        "examples: applied {} (kubectl --kubeconfig {} -n {NAMESPACE} get machines)",
        examples::names(with_deployment).join(", "),
        kubeconfig.display()
    ));
    println!(
        "pids: controller={} registry={} gardener-mcm={} moto={} control-plane={}",
        stack.controller.as_ref().map_or(0, ChildGuard::id),
        stack
            .registry
            .as_ref()
            .map_or(0, testenv::registry::Registry::pid),
        stack
            .gardener_mcm
            .as_ref()
            .map_or(0, GardenerMcmProcess::pid),
        stack.moto.as_ref().map_or(0, Moto::pid),
        stack
            .control_plane
            .as_ref()
            .map(|cp| cp.pids().map(|p| p.to_string()).join(","))
            .unwrap_or_default(),
    );

    // Machines to Running.
    let running = progress::until_running(
        stack,
        &client,
        NAMESPACE,
        Duration::from_secs(args.timeout_secs),
    )
    .await?;
    stack.say(format!(
        "all {running} machines Running; moto has {} running instances",
        running_instances(stack).await?
    ));
    println!(
        "{}",
        kubectl.run(&["-n", NAMESPACE, "get", "machines,nodes", "-o", "wide"])?
    );
    if args.exit_when_running {
        return Ok(());
    }
    stack.say("Ctrl-C stops everything");
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some(c) = stack.controller.as_mut()
            && !c.is_running()
        {
            bail!(
                "the controller exited; its log:\n{}",
                testenv::tail(&log, 30)
            );
        }
    }
}

/// Instances moto reports as running.
async fn running_instances(stack: &Stack) -> Result<usize> {
    let moto = stack.moto.as_ref().expect("moto is started");
    let xml = moto
        .ec2(
            testenv::moto::REGION,
            "DescribeInstances",
            &[
                ("Filter.1.Name", "instance-state-name"),
                ("Filter.1.Value.1", "running"),
            ],
        )
        .await?;
    Ok(xml.matches("<instanceId>").count())
}

/// kubectl (built with the control plane) for one kubeconfig.
struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
}

impl Kubectl {
    fn new(kubeconfig: &Path) -> Result<Kubectl> {
        Ok(Kubectl {
            bin: testenv::Binaries::locate()?.kubectl,
            kubeconfig: kubeconfig.to_path_buf(),
        })
    }

    fn run(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        Ok(testenv::run(cmd)?)
    }

    /// Server-side apply of a file or directory.
    fn apply(&self, path: &Path) -> Result<String> {
        let path = path.to_str().context("a UTF-8 path")?;
        self.run(&["apply", "--server-side", "--force-conflicts", "-f", path])
    }
}
