//! Building the worker from settings and running it: `run(settings, shutdown)`. Tests call this
//! with their own settings and shutdown future, exactly as `main` does.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

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

    let status = WorkerStatus::default();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopping = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };

    let health_addr = std::net::SocketAddr::from(([0, 0, 0, 0], settings.health_port));
    let listener = tokio::net::TcpListener::bind(health_addr)
        .await
        .with_context(|| format!("cannot listen on {health_addr} (WORKER_HEALTH_PORT)"))?;
    info!(addr = %listener.local_addr()?, "health, readiness and metrics on http://{}/health, /ready, /metrics", listener.local_addr()?);
    let health = tokio::spawn(crate::health::serve(
        listener,
        status.clone(),
        executor.clone(),
        stopping(),
    ));

    // The caller's shutdown future is polled here, beside the serving loop, and relayed to
    // every part that needs it (the loop, each connection's serve, the health server).
    let serving = serve_with_reconnects(&settings, executor, status, stopping);
    tokio::pin!(serving, shutdown);
    let mut signalled = false;
    let served = loop {
        tokio::select! {
            () = &mut shutdown, if !signalled => {
                signalled = true;
                let _ = stop_tx.send(true);
            }
            served = &mut serving => break served,
        }
    };
    let _ = stop_tx.send(true);
    let _ = health.await;
    served
}

/// Connects, serves, and on a lost connection reconnects with backoff, redeclares and resumes,
/// until shutdown. Results whose publish could not be confirmed survive the reconnect.
async fn serve_with_reconnects<F: Future<Output = ()>>(
    settings: &Settings,
    executor: Executor,
    status: WorkerStatus,
    stopping: impl Fn() -> F,
) -> anyhow::Result<()> {
    let prefetch = u16::try_from(settings.limits.worker_concurrency).unwrap_or(u16::MAX);
    let pending = crate::worker::PendingResults::default();
    let mut delay = Duration::from_millis(500);
    let stopped = stopping();
    tokio::pin!(stopped);
    loop {
        let connected = tokio::select! {
            () = &mut stopped => return Ok(()),
            connected = connect(settings) => connected,
        };
        let broker = match connected {
            Ok(broker) => broker,
            Err(error) => {
                warn!(
                    retry_in_ms = delay.as_millis() as u64,
                    "RabbitMQ unavailable, retrying: {error:#}"
                );
                tokio::select! {
                    () = &mut stopped => return Ok(()),
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        delay = Duration::from_millis(500);
        status.set_connected(true);
        info!(broker = %settings.broker.display_uri(), "connected to RabbitMQ");
        let worker = Worker {
            broker: Arc::new(broker),
            executor: executor.clone(),
            review: settings.review.clone(),
            status: status.clone(),
            pending: pending.clone(),
        };
        let served = worker.serve(prefetch, settings.drain_timeout, stopping()).await;
        status.set_connected(false);
        worker.broker.close().await;
        match served {
            Ok(()) => return Ok(()),
            Err(error) => error!("lost the RabbitMQ connection, reconnecting: {error:#}"),
        }
    }
}

async fn connect(settings: &Settings) -> anyhow::Result<Broker> {
    let broker = Broker::connect(&settings.broker, "review-worker").await?;
    broker
        .declare_topology()
        .await
        .context("could not declare the topology")?;
    Ok(broker)
}
