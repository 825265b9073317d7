//! Building the worker from settings and running it: `run(settings, shutdown)`. Tests call this
//! with their own settings and shutdown future, exactly as `main` does.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use tracing::{error, info, warn};

use crate::broker::Broker;
use crate::executor::{Executor, Lane};
use crate::provider::{Action, Provider, ProviderError};
use crate::settings::Settings;
use crate::status::WorkerStatus;
use crate::worker::Worker;

/// Why `run` stopped without serving.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The start-up probe says the key, endpoint or model cannot work: nothing is consumed.
    #[error("{provider} is not usable with this configuration: {error}")]
    ProviderUnusable { provider: String, error: ProviderError },
}

/// Builds the lanes from settings.
pub fn build_executor(settings: &Settings) -> anyhow::Result<Executor> {
    let main = Provider::new(settings.require_provider()?)?;
    let fallback = settings
        .fallback
        .as_ref()
        .map(Provider::new)
        .transpose()?
        .map(|p| Lane::new(p, settings.limits.fallback_max_concurrent_requests, true));
    Ok(Executor::new(
        Lane::new(main, settings.limits.max_concurrent_requests, false),
        fallback,
    ))
}

/// Runs the worker until `shutdown` resolves.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let executor = build_executor(&settings)?;
    let provider = &executor.main.provider;
    info!(
        provider = provider.name(), base_url = %provider.settings().display_base_url(), plan = settings.limits.plan.as_str(),
        cap = settings.limits.max_concurrent_requests, model = provider.model(), thinking = ?provider.settings().thinking,
        fallback = executor.fallback.as_ref().map(|f| f.provider.model()).unwrap_or("none"),
        "review-worker {} starting: {} {} (plan {}, cap {}) at {}",
        env!("CARGO_PKG_VERSION"), provider.name(), provider.model(), settings.limits.plan.as_str(),
        settings.limits.max_concurrent_requests, provider.settings().display_base_url()
    );

    match crate::check::probe(provider).await {
        Ok(probe) => info!(
            provider = provider.name(),
            model = provider.model(),
            latency_ms = probe.latency.as_millis() as u64,
            "{} probe ok: {} listed",
            provider.name(),
            provider.model()
        ),
        Err(error) if error.action() == Action::PauseAccount => {
            error!(
                provider = provider.name(),
                model = provider.model(),
                code = error.code().as_deref().unwrap_or("-"),
                "{} probe failed: {error}",
                provider.name()
            );
            return Err(StartError::ProviderUnusable {
                provider: provider.name().to_owned(),
                error,
            }
            .into());
        }
        // Unreachable or overloaded right now: the worker starts and its calls retry.
        Err(error) => warn!(
            provider = provider.name(),
            model = provider.model(),
            code = error.code().as_deref().unwrap_or("-"),
            "{} probe failed, starting anyway: {error}",
            provider.name()
        ),
    }

    let broker = Broker::connect(&settings.broker, "review-worker").await?;
    broker
        .declare_topology()
        .await
        .context("could not declare the topology")?;
    let status = WorkerStatus::default();
    status.set_connected(true);
    let worker = Worker {
        broker: Arc::new(broker),
        executor,
        review: settings.review.clone(),
        status,
    };
    let prefetch = u16::try_from(settings.limits.worker_concurrency).unwrap_or(u16::MAX);
    let served = worker.serve(prefetch, settings.drain_timeout, shutdown).await;
    worker.broker.close().await;
    served
}
