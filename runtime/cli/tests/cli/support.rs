//! Test support of the `mcm-wasm` binary's tests: the guest components (`test-artifacts`),
//! moto and the sample backend (`testenv`), a sandbox, the simulated kubelet (testenv's
//! `NodeSim` asking the provider whether a VM is live), and controller processes.
#![allow(dead_code, unused_imports)]

use std::sync::Arc;
use std::time::Duration;

pub use mcm_driver::MachineDriver;
use mcm_driver::{MachineRequest, ProviderLookup};
use mcm_sandbox::{Deadlines, EgressPolicy, ProviderSettings, Registry, Sandbox, SandboxConfig};
pub use test_artifacts::guest;
pub use testenv::ec2::*;
use testenv::node_sim::{Liveness, NodeSim, Vm};
pub use testenv::sample::SampleBackend;

/// A sandbox with a private compile cache and the given deadline for every operation.
pub fn sandbox(deadline: Duration) -> Arc<Sandbox> {
    Sandbox::new(SandboxConfig {
        deadlines: Deadlines::all(deadline),
        cache_dir: Some(
            std::env::temp_dir().join(format!("mcm-wasm-cli-test-cache-{}", std::process::id())),
        ),
        ..SandboxConfig::default()
    })
    .expect("sandbox")
}

/// The controller's node-join simulation run in this process with admin rights (a kubelet's,
/// not the controller's), for the machines of namespace `ns`, with `provider` asking its cloud
/// at `endpoint` directly (so a proxy in front of the cloud sees only the controller's
/// requests).
pub struct SimulatedKubelet {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    watch: tokio::task::JoinHandle<()>,
    _cache: tempfile::TempDir,
}

impl SimulatedKubelet {
    pub async fn start(
        client: &kube::Client,
        ns: &str,
        provider: &str,
        endpoint: &str,
        providers: &std::path::Path,
    ) -> SimulatedKubelet {
        Self::start_for(client, ns, &[provider], endpoint, providers).await
    }

    /// [`SimulatedKubelet::start`] for the machines of several providers of one cloud.
    pub async fn start_for(
        client: &kube::Client,
        ns: &str,
        provider_names: &[&str],
        endpoint: &str,
        providers: &std::path::Path,
    ) -> SimulatedKubelet {
        let cache = tempfile::tempdir().unwrap();
        let sandbox = Sandbox::new(SandboxConfig {
            cache_dir: Some(cache.path().to_path_buf()),
            ..SandboxConfig::default()
        })
        .unwrap();
        let registry = Registry::new(sandbox);
        let host = endpoint.trim_start_matches("http://").to_string();
        for provider in provider_names {
            registry.set_settings(
                provider,
                ProviderSettings {
                    egress: EgressPolicy::parse(std::slice::from_ref(&host)).unwrap(),
                    config: Some(serde_json::json!({ "endpoint": endpoint }).to_string()),
                    deadlines: None,
                    ..Default::default()
                },
            );
        }
        let watch = registry
            .watch_dir(providers.to_path_buf(), Duration::from_secs(30))
            .await
            .unwrap();
        let sim = node_sim(client, ns, registry);
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(sim.run(Duration::from_millis(300), async move {
            let _ = stopped.wait_for(|v| *v).await;
        }));
        SimulatedKubelet {
            stop,
            task,
            watch,
            _cache: cache,
        }
    }

    /// Stop registering nodes now (without waiting for the task).
    pub fn halt(&self) {
        let _ = self.stop.send(true);
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        self.task.await.unwrap();
        self.watch.abort();
    }
}

/// The kubelet simulation for namespace `ns` of `client`'s cluster, a VM being live when its
/// provider (in `providers`) answers GetMachineStatus with the machine's providerID.
pub fn node_sim(client: &kube::Client, ns: &str, providers: Arc<dyn ProviderLookup>) -> NodeSim {
    NodeSim {
        control: client.clone(),
        target: client.clone(),
        namespace: ns.to_string(),
        liveness: Arc::new(ProviderLiveness {
            providers,
            client: client.clone(),
            // Never run: every read goes to the API server.
            cache: mcm_controller::cache::Cache::new(ns),
            namespace: ns.to_string(),
            batcher: mcm_controller::batcher::Batcher::new(
                mcm_controller::batcher::BatchConfig {
                    idle: Duration::from_millis(20),
                    ..Default::default()
                },
                Default::default(),
                Default::default(),
            ),
        }),
    }
}

/// A VM is live when its provider says so (GetMachineStatus with the class's merged secret;
/// the scans' concurrent questions batched, as the controller's are, so that the simulated
/// kubelets of many machines do not load the cloud more than the controller does).
pub struct ProviderLiveness {
    pub providers: Arc<dyn ProviderLookup>,
    pub client: kube::Client,
    pub cache: mcm_controller::cache::Cache,
    pub namespace: String,
    pub batcher: mcm_controller::batcher::Batcher,
}

#[async_trait::async_trait]
impl Liveness for ProviderLiveness {
    async fn vm(
        &self,
        machine: &machine_api::Machine,
        class: &machine_api::MachineClass,
    ) -> Option<Vm> {
        let provider = self.providers.get(&class.spec.provider)?;
        let secret = mcm_controller::secrets::merged_secret(
            &self.cache,
            &self.client,
            class,
            &self.namespace,
        )
        .await
        .ok()?;
        let req = MachineRequest {
            machine: mcm_controller::machine::driver_machine(machine),
            machine_class: mcm_controller::machine::driver_class(class),
            secret,
        };
        let vm = self.batcher.get_machine_status(&provider, req).await.ok()?;
        Some(Vm {
            provider_id: vm.provider_id,
            node_name: vm.node_name,
            addresses: vm
                .addresses
                .into_iter()
                .map(|a| (a.kind, a.address))
                .collect(),
        })
    }
}

/// `mcm-wasm controller` serving the providers in `providers` for the cluster of `kubeconfig`,
/// with `provider` pointed at (and allowed to reach only) the cloud at `endpoint`
/// (`http://HOST:PORT`). Callers add the namespace, ports and other flags.
pub fn controller_command(
    providers: &std::path::Path,
    kubeconfig: &std::path::Path,
    provider: &str,
    endpoint: &str,
) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mcm-wasm"));
    cmd.arg("controller")
        .arg("--providers-dir")
        .arg(providers)
        .arg("--control-kubeconfig")
        .arg(kubeconfig)
        .arg("--provider-config")
        .arg(format!(
            "{provider}={}",
            serde_json::json!({ "endpoint": endpoint })
        ))
        .arg("--provider-allow-host")
        .arg(format!(
            "{provider}={}",
            endpoint.trim_start_matches("http://")
        ));
    cmd
}

/// The Machine `name` of the class `aws-class` (see [`create_aws_class`]) in namespace `ns`.
pub async fn create_machine(client: &kube::Client, ns: &str, name: &str) {
    use kube::api::{Api, PostParams};
    let machine: machine_api::Machine = serde_json::from_value(serde_json::json!({
        "apiVersion": "machine.sapcloud.io/v1alpha1",
        "kind": "Machine",
        "metadata": { "name": name },
        "spec": { "class": { "kind": "MachineClass", "name": "aws-class" } },
    }))
    .unwrap();
    Api::<machine_api::Machine>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &machine)
        .await
        .unwrap();
}

/// A control plane with the CRDs, an admin client, moto, a providers directory holding the
/// AWS provider, and the simulated kubelets of namespace `default`: what every controller
/// process test starts from.
pub struct ControllerSetup {
    pub cp: testenv::ControlPlane,
    pub client: kube::Client,
    pub moto: Moto,
    pub providers: tempfile::TempDir,
    /// The kubelets of namespace `default`'s VMs (the AWS provider, asking moto directly).
    pub kubelet: SimulatedKubelet,
}

impl ControllerSetup {
    /// `aws_provider`: the built component (tests: `support::guest("aws_provider")`).
    pub async fn start(aws_provider: &std::path::Path) -> ControllerSetup {
        mcm_controller::install_crypto_provider();
        let cp = testenv::ControlPlane::start().expect("control plane (run `just controlplane`)");
        cp.apply_crds().unwrap();
        let client = cp.client().await.unwrap();
        let moto = Moto::start();
        let providers = tempfile::tempdir().unwrap();
        std::fs::copy(aws_provider, providers.path().join("aws.wasm")).unwrap();
        let kubelet =
            SimulatedKubelet::start(&client, "default", "aws", &moto.endpoint, providers.path())
                .await;
        ControllerSetup {
            cp,
            client,
            moto,
            providers,
            kubelet,
        }
    }
}

/// `mcm-wasm controller` as a provider-aws deployment runs it: `setup`'s providers directory,
/// its cluster as control and target, namespace `default`, and nothing of ours about the
/// provider — its endpoint comes from `AWS_ENDPOINT_URL_EC2` (`endpoint`), as for
/// provider-aws; stderr goes to `log`. Callers add the ports and other flags.
pub fn drop_in_command(
    setup: &ControllerSetup,
    endpoint: &str,
    log: &tempfile::NamedTempFile,
) -> std::process::Command {
    let kubeconfig = setup.cp.kubeconfig_path().display().to_string();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mcm-wasm"));
    cmd.arg("controller")
        .arg("--providers-dir")
        .arg(setup.providers.path())
        .arg(format!("--control-kubeconfig={kubeconfig}"))
        .arg(format!("--target-kubeconfig={kubeconfig}"))
        .arg("--namespace=default")
        .env("AWS_ENDPOINT_URL_EC2", endpoint)
        .stdout(std::process::Stdio::null())
        .stderr(log.reopen().unwrap());
    cmd
}

/// The exposition of a controller's `/metrics` on loopback `port`.
pub async fn metrics_text(port: u16) -> String {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// A child process killed (and reaped) when the test ends, passing or not.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
