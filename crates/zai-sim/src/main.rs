//! `zai-sim`: the Z.AI simulator on its own. Wires logging, the arguments and the process's
//! signals; everything else is the library (`review-worker sim` is the same thing).

use clap::Parser as _;
use tracing_subscriber::EnvFilter;
use zai_sim::SimArgs;

/// The simulator's command line: every knob of [`SimArgs`], each also a `SIM_*` variable.
#[derive(Debug, clap::Parser)]
#[command(
    name = "zai-sim",
    version,
    about = "A deterministic stand-in for Z.AI's API (GLM Coding Plan and pay-per-token)"
)]
struct Cli {
    #[command(flatten)]
    args: SimArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("SIM_LOG").unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    zai_sim::run(cli.args, signal()).await
}

/// Resolves on the first SIGTERM or SIGINT, so `docker stop` ends the simulator at once.
async fn signal() {
    #[cfg(unix)]
    {
        let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
