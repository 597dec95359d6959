use clap::Parser as _;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = mcm_wasm::cli::Cli::parse();
    // MCM_WASM_LOG wins; else the controller's klog-style --v; else warnings only.
    let default = match &cli.command {
        mcm_wasm::cli::Command::Controller(args) => args.log_filter(),
        _ => None,
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("MCM_WASM_LOG")
                .unwrap_or_else(|_| EnvFilter::new(default.unwrap_or("warn"))),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: container logs and files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    mcm_wasm::cli::run(cli).await
}
