//! `review-worker`: wires telemetry, settings and the chosen command, and reports how it ended.
//! Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser as _;
use review_worker::cli::{self, Cli, Command};
use review_worker::settings::Settings;
use review_worker::{app, shutdown, telemetry};

#[tokio::main]
#[allow(clippy::print_stdout, reason = "results are the commands' output")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("review-worker: {error}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(&settings.log);

    let ended = match &cli.command {
        Command::Run => app::run(settings, shutdown::signal()).await.map(|()| ExitCode::SUCCESS),
        Command::Review(args) => cli::review_once(&settings, args).await.and_then(|result| {
            println!("{}", serde_json::to_string_pretty(&result)?);
            // The result is printed either way; a script still needs to tell a failure apart.
            Ok(if result.is_failed() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }),
        Command::Submit(args) => cli::submit(&settings, args).await.and_then(|results| {
            for result in results {
                println!("{}", serde_json::to_string_pretty(&result)?);
            }
            Ok(ExitCode::SUCCESS)
        }),
        Command::Sim(args) => zai_sim::run(args.clone(), shutdown::signal())
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Check => cli::check(&settings).await,
    };
    match ended {
        Ok(code) => code,
        Err(error) => {
            tracing::error!("review-worker stopped: {error:#}");
            eprintln!("review-worker: {error:#}");
            match error.downcast_ref::<app::StartError>() {
                Some(_) => ExitCode::from(3),
                None if error.downcast_ref::<review_worker::settings::SettingsError>().is_some() => ExitCode::from(2),
                None => ExitCode::FAILURE,
            }
        }
    }
}
