//! Building the worker from settings and running it: `run(settings, shutdown)`. Tests call this
//! with their own settings and shutdown future, exactly as `main` does.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use backon::{BackoffBuilder as _, ExponentialBuilder};
use secrecy::ExposeSecret as _;
use tokio::time::Instant;
use tracing::{Instrument as _, error, info, info_span, warn};

use crate::broker::Broker;
use crate::executor::{Executor, Lane};
use crate::provider::{Action, Provider, ProviderError};
use crate::settings::{Settings, redact_uri};
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
    let replica = crate::coordination::replica_id();
    status.set_replica(&replica);
    info!(replica = %replica, brokers = %settings.broker.display_uri(), "replica {replica}");
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
    // The recorder is installed here, before anything is counted (the first connection attempt
    // included), not in the spawned server.
    let metrics = crate::health::metrics_handle();
    let health = tokio::spawn(crate::health::serve(
        listener,
        status.clone(),
        executor.clone(),
        metrics,
        stopping(),
    ));

    // The caller's shutdown future is polled here, beside the serving loop, and relayed to
    // every part that needs it (the loop, each connection's serve, the health server).
    let serving = serve_with_reconnects(&settings, executor, status, &replica, stopping);
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

/// A connection that served this long was healthy: the backoff starts again from its minimum.
const HEALTHY_AFTER: Duration = Duration::from_secs(30);

/// Delays between connection attempts: 0.5 s doubling to 30 s, each with up to as much again of
/// random jitter so that replicas that lost the same node do not come back in step.
fn reconnect_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(30))
        .with_jitter()
        .without_max_times()
        .build()
}

/// Connects, serves, and on a lost connection reconnects with backoff, redeclares and resumes,
/// until shutdown. Nodes of `API_RABBITMQ_URI` are tried round-robin: each attempt goes to the
/// node after the one that failed or was lost. Any connection that fails to serve (a refused
/// declare, a cancelled consumer, a closed channel) waits out the backoff, which starts over only
/// after a connection served for [`HEALTHY_AFTER`]. Results whose publish could not be confirmed
/// survive the reconnect.
async fn serve_with_reconnects<F: Future<Output = ()>>(
    settings: &Settings,
    executor: Executor,
    status: WorkerStatus,
    replica: &str,
    stopping: impl Fn() -> F,
) -> anyhow::Result<()> {
    let prefetch = u16::try_from(settings.limits.worker_concurrency).unwrap_or(u16::MAX);
    let pending = crate::worker::PendingResults::default();
    let nodes = settings.broker.uris.len().max(1);
    let mut node = 0;
    let mut backoff = reconnect_backoff();
    let stopped = stopping();
    tokio::pin!(stopped);
    loop {
        metrics::counter!("review_broker_connection_attempts_total").increment(1);
        let connected = tokio::select! {
            () = &mut stopped => return Ok(()),
            connected = connect(settings, node, replica) => connected,
        };
        let failure = match connected {
            Err(error) => format!("RabbitMQ unavailable: {error:#}"),
            Ok(broker) => {
                let span = info_span!("broker", node = %broker.node());
                let since = Instant::now();
                let served = serve(
                    settings,
                    &executor,
                    &status,
                    &pending,
                    replica,
                    prefetch,
                    broker,
                    stopping(),
                )
                .instrument(span)
                .await;
                match served {
                    Ok(()) => return Ok(()),
                    Err(error) => {
                        if since.elapsed() >= HEALTHY_AFTER {
                            backoff = reconnect_backoff();
                        }
                        format!("lost the RabbitMQ connection: {error:#}")
                    }
                }
            }
        };
        node = (node + 1) % nodes;
        let delay = backoff.next().unwrap_or(Duration::from_secs(30));
        warn!(
            retry_in_ms = delay.as_millis() as u64,
            next_node = %redact_uri(settings.broker.uris[node].expose_secret()),
            "{failure}; reconnecting"
        );
        tokio::select! {
            () = &mut stopped => return Ok(()),
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// One connection's life: the worker serves on it until it fails or shutdown.
#[allow(clippy::too_many_arguments, reason = "the reconnect loop's state, passed down once")]
async fn serve(
    settings: &Settings,
    executor: &Executor,
    status: &WorkerStatus,
    pending: &crate::worker::PendingResults,
    replica: &str,
    prefetch: u16,
    broker: Broker,
    stopping: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    status.set_connected(Some(broker.node()));
    info!(replica, "connected to RabbitMQ at {}", broker.node());
    let worker = Worker {
        broker: Arc::new(broker),
        executor: executor.clone(),
        review: settings.review.clone(),
        status: status.clone(),
        pending: pending.clone(),
        abandon: tokio_util::sync::CancellationToken::new(),
    };
    let served = worker.serve(replica, prefetch, settings.drain_timeout, stopping).await;
    status.set_connected(None);
    worker.broker.close().await;
    served
}

async fn connect(settings: &Settings, node: usize, replica: &str) -> anyhow::Result<Broker> {
    // The replica in the connection's name: the management UI and `rabbitmqctl
    // list_connections` show which replica is which.
    let broker = Broker::connect_to(&settings.broker, node, &format!("review-worker {replica}")).await?;
    if let Err(error) = broker.declare_topology_within(Duration::from_secs(30)).await {
        broker.close().await;
        return Err(error.context(format!("could not declare the topology on {}", broker.node())));
    }
    Ok(broker)
}
