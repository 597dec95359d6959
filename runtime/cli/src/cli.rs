//! The `mcm-wasm` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};

use mcm_driver::{MachineDriver as _, Operation, OwnedRequest, SecretData};
use mcm_sandbox::EgressPolicy;
use mcm_sandbox::{Deadlines, Provider, ProviderSettings, Sandbox, SandboxConfig};

#[derive(Parser)]
#[command(
    name = "mcm-wasm",
    version,
    about = "Gardener MCM machine drivers as sandboxed WebAssembly components"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Show a provider's name, versions, exported operations, size and digest.
    Inspect {
        /// The provider component: a file (.wasm), or an OCI reference
        /// (`registry/repository@sha256:…` or `:tag`).
        target: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        registry: crate::artifacts::RegistryArgs,
    },
    /// Push a provider component to an OCI registry (the Wasm OCI artifact layout, with the
    /// provider's name, version and contract as annotations); prints `repository@sha256:…`,
    /// the reference a Provider resource pins.
    Push {
        /// The provider component (.wasm).
        file: PathBuf,
        /// Where to push: `registry/repository:tag`.
        reference: String,
        #[command(flatten)]
        registry: crate::artifacts::RegistryArgs,
    },
    /// Pull a provider component from an OCI registry into a file; prints the pinned reference.
    Pull {
        /// `registry/repository@sha256:…` (or `:tag`, resolved to its current digest).
        reference: String,
        /// The file to write.
        #[arg(long, short, default_value = "provider.wasm")]
        output: PathBuf,
        #[command(flatten)]
        registry: crate::artifacts::RegistryArgs,
    },
    /// Call one driver operation in the sandbox and print its JSON result.
    Call {
        /// The provider component (.wasm).
        file: PathBuf,
        /// The operation: create-machine, initialize-machine, delete-machine,
        /// get-machine-status, list-machines, get-volume-ids, validate-machine-class,
        /// metrics-labels (or MCM's names, e.g. CreateMachine).
        operation: String,
        /// The request as JSON, e.g. '{"machine":{"name":"m1"},"machineClass":{"providerSpec":{}}}'.
        #[arg(long, default_value = "{}")]
        request: String,
        /// A secret key for the request (repeatable).
        #[arg(long = "secret", value_name = "KEY=VALUE")]
        secrets: Vec<String>,
        /// Allow outbound HTTP to this host or host:port (repeatable; default: none).
        #[arg(long = "allow-host", value_name = "HOST[:PORT]")]
        allow_hosts: Vec<String>,
        /// The provider's own configuration (JSON).
        #[arg(long)]
        config: Option<String>,
        /// Deadline of the call.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        deadline: Duration,
    },
    /// Create a provider project that builds and passes `mcm-wasm conformance` as generated:
    /// the sample provider renamed, the contract, the SDK, a local backend, conformance files.
    New {
        /// The provider's name (the MachineClass's `provider`), e.g. `acme`.
        name: String,
        /// The provider's language.
        #[arg(long, value_enum, default_value = "rust")]
        lang: crate::scaffold::Language,
        /// Where to create the project (default: ./NAME); must not exist or be empty.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Run the MCM machine lifecycle against the provider's real backend; print a pass/fail table.
    Conformance(crate::conformance::ConformanceArgs),
    /// Run the MCM-compatible machine controller (Machines of the loaded providers).
    Controller(Box<crate::controller::ControllerArgs>),
}

/// Exit codes: 0 success, 1 the driver answered with an error, 2 bad input.
pub async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Inspect {
            target,
            json,
            registry,
        } => inspect(target, json, registry).await,
        Command::Push {
            file,
            reference,
            registry,
        } => crate::artifacts::push(&file, &reference, &registry).await,
        Command::Pull {
            reference,
            output,
            registry,
        } => crate::artifacts::pull(&reference, &output, &registry).await,
        Command::Call {
            file,
            operation,
            request,
            secrets,
            allow_hosts,
            config,
            deadline,
        } => {
            call(
                file,
                operation,
                request,
                secrets,
                allow_hosts,
                config,
                deadline,
            )
            .await
        }
        Command::New { name, lang, dir } => new_project(&name, lang, dir),
        Command::Conformance(args) => crate::conformance::main(args).await,
        Command::Controller(args) => crate::controller::main(*args).await,
    }
}

fn new_project(name: &str, lang: crate::scaffold::Language, dir: Option<PathBuf>) -> ExitCode {
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    match crate::scaffold::generate(name, lang, &dir) {
        Ok(files) => {
            println!(
                "created {lang:?} provider {name:?} in {} ({} files)",
                dir.display(),
                files.len()
            );
            let needs = match lang {
                crate::scaffold::Language::Rust => "rustup target add wasm32-wasip2",
                crate::scaffold::Language::Python => "pip install 'componentize-py==0.25.1'",
            };
            println!(
                "next:\n  {needs}   # once, if you have not\n  cd {} && ./conformance.sh",
                dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => bad_input(e),
    }
}

fn bad_input(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(2)
}

fn sandbox() -> Result<Arc<Sandbox>, ExitCode> {
    Sandbox::new(SandboxConfig::default()).map_err(|e| bad_input(format!("{e:#}")))
}

async fn inspect(target: String, json: bool, registry: crate::artifacts::RegistryArgs) -> ExitCode {
    let sandbox = match sandbox() {
        Ok(s) => s,
        Err(code) => return code,
    };
    let file = PathBuf::from(&target);
    let (loaded, manifest) = if crate::artifacts::is_reference(&target) {
        let pulled = match crate::artifacts::pull_artifact(&target, &registry).await {
            Ok(p) => p,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(1);
            }
        };
        let loaded = Provider::from_bytes(
            &sandbox,
            &PathBuf::from(format!("oci://{target}")),
            &pulled.bytes,
            ProviderSettings::default(),
        )
        .await;
        (loaded, Some(pulled))
    } else {
        (
            Provider::load(&sandbox, &file, ProviderSettings::default()).await,
            None,
        )
    };
    let provider = match loaded {
        Ok(p) => p,
        Err(e) => return bad_input(e),
    };
    let info = provider.info();
    if json {
        let mut out = serde_json::json!({
            "file": file,
            "name": info.metadata.name,
            "version": info.metadata.version,
            "contract": info.contract.to_string(),
            "metadataSection": info.has_metadata_section,
            "operations": provider.operations(),
            "size": info.size,
            "digest": info.digest,
        });
        if let Some(m) = &manifest {
            out["reference"] = target.clone().into();
            out["manifestDigest"] = m.manifest_digest.clone().into();
            out["annotations"] = serde_json::to_value(&m.annotations).expect("json");
        }
        println!("{}", serde_json::to_string_pretty(&out).expect("json"));
    } else {
        match &manifest {
            Some(m) => {
                println!("reference:  {target}");
                println!("manifest:   {}", m.manifest_digest);
            }
            None => println!("file:       {}", file.display()),
        }
        println!(
            "provider:   {} {}",
            info.metadata.name, info.metadata.version
        );
        println!("contract:   mcm:driver@{}", info.contract);
        if !info.has_metadata_section {
            println!("            (no SDK metadata section: name taken from the file name)");
        }
        println!("operations: {}", provider.operations().join(", "));
        println!("size:       {} bytes", info.size);
        println!("digest:     {}", info.digest);
    }
    ExitCode::SUCCESS
}

async fn call(
    file: PathBuf,
    operation: String,
    request: String,
    secrets: Vec<String>,
    allow_hosts: Vec<String>,
    config: Option<String>,
    deadline: Duration,
) -> ExitCode {
    let Some(op) = Operation::parse(&operation) else {
        let known: Vec<&str> = Operation::ALL.iter().map(|o| o.wit_name()).collect();
        return bad_input(format!(
            "unknown operation {operation:?}; expected one of: {}",
            known.join(", ")
        ));
    };
    let mut secret = SecretData::new();
    for s in &secrets {
        let Some((k, v)) = s.split_once('=') else {
            return bad_input(format!("--secret {s:?} is not KEY=VALUE"));
        };
        secret.insert(k.to_string(), v.as_bytes().to_vec());
    }
    let egress = match EgressPolicy::parse(&allow_hosts) {
        Ok(e) => e,
        Err(e) => return bad_input(e),
    };
    if let Some(c) = &config
        && let Err(e) = serde_json::from_str::<serde_json::Value>(c)
    {
        return bad_input(format!("--config is not valid JSON: {e}"));
    }
    let sandbox = match sandbox() {
        Ok(s) => s,
        Err(code) => return code,
    };
    let settings = ProviderSettings {
        egress,
        config,
        deadlines: Some(Deadlines::all(deadline)),
        broker_credentials: false,
        ..Default::default()
    };
    let provider = match Provider::load(&sandbox, &file, settings).await {
        Ok(p) => p,
        Err(e) => return bad_input(e),
    };
    let request = match OwnedRequest::from_json(op, &request, &secret) {
        Ok(r) => r,
        Err(e) => return bad_input(e),
    };
    match provider.call(request.as_request()).await {
        Ok(answer) => {
            let value = answer.to_json();
            println!("{}", serde_json::to_string_pretty(&value).expect("json"));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}
