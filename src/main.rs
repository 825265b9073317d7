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
        Command::Review(command) => {
            // Checked here, typed, so that a missing provider exits 2 like any other setting.
            settings.require_provider()?;
            let links = command.links()?;
            let result = cli::review_once(&settings, &command.review).await?;
            println!("{}", cli::show(&result, links.as_ref(), None, command.output.format)?);
            // The result is printed either way; a script still needs to tell a failure apart.
            Ok(if result.is_failed() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Submit(args) => {
            for (n, submitted) in cli::submit(&settings, args).await?.iter().enumerate() {
                if n > 0 && args.output.format != cli::Format::Json {
                    println!();
                }
                let shown = cli::show(
                    &submitted.result,
                    submitted.links.as_ref(),
                    submitted.pr.as_deref(),
                    args.output.format,
                )?;
                println!("{shown}");
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
