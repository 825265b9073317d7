//! `review-worker`: wires telemetry, settings and the chosen command, and turns how it ended into
//! the exit code ([`RunError::exit_code`]). Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser as _;
use review_worker::app::{self, RunError};
use review_worker::cli::{self, Cli, Command};
use review_worker::settings::Settings;
use review_worker::{shutdown, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(code) => code,
        Err(error) => {
            tracing::error!("review-worker stopped: {error:#}");
            eprintln!("review-worker: {error:#}");
            ExitCode::from(error.exit_code())
        }
    }
}

#[expect(clippy::print_stdout, reason = "results are the commands' output")]
async fn run(cli: Cli) -> Result<ExitCode, RunError> {
    let settings = Settings::load(cli.config.as_deref())?;
    telemetry::init(&settings.log);
    match &cli.command {
        Command::Run => {
            app::run(settings, shutdown::on_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Review(args) => {
            // Checked here, typed, so that a missing provider exits 2 like any other setting.
            settings.require_provider()?;
            let result = cli::review_once(&settings, args).await?;
            println!("{}", serde_json::to_string_pretty(&result).map_err(anyhow::Error::new)?);
            // The result is printed either way; a script still needs to tell a failure apart.
            Ok(if result.is_failed() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Submit(args) => {
            for result in cli::submit(&settings, args).await? {
                println!("{}", serde_json::to_string_pretty(&result).map_err(anyhow::Error::new)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Sim(args) => {
            zai_sim::run(args.clone(), shutdown::on_signal().cancelled_owned()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check => {
            settings.require_provider()?;
            Ok(cli::check(&settings).await?)
        }
    }
}
