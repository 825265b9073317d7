//! Building the worker from settings and running it: `run(settings, shutdown)`. Tests call this
//! with their own settings and shutdown token, exactly as `main` does; how a run ends is a
//! [`RunError`], whose exit code `main` returns.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use backon::{BackoffBuilder as _, ExponentialBuilder};
use secrecy::ExposeSecret as _;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, error, info, info_span, warn};

use crate::broker::Broker;
use crate::executor::{Executor, Lane};
use crate::provider::{Action, Provider};
use crate::settings::{Settings, SettingsError, redact_uri};
use crate::status::WorkerStatus;
use crate::worker::Worker;

/// Why the process stopped with an error, and the exit code that says so to a script or an
/// orchestrator (the codes README.md documents).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A setting is missing or invalid: exit 2.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The start-up probe says the key, endpoint or model cannot work, so nothing is consumed:
    /// exit 3, like `review-worker check` on the same configuration.
    #[error("{provider} is not usable with this configuration: {problem}")]
    ProviderUnusable { provider: String, problem: String },
    /// Anything else (the health port taken, an unreadable diff): exit 1.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

impl RunError {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Failed(_) => 1,
            Self::Settings(_) => 2,
            Self::ProviderUnusable { .. } => 3,
        }
    }
}

/// Builds the lanes from settings.
pub(crate) fn build_executor(settings: &Settings) -> Result<Executor, RunError> {
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
    )
    .with_cache(crate::cache::AnswerCache::new(&settings.cache)))
}

/// Runs the worker until `shutdown` is cancelled; returns once the reviews in flight are drained
/// (or the drain timeout returned them to the queue) and leadership is handed on.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> Result<(), RunError> {
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
            latency_ms = u64::try_from(probe.latency.as_millis()).unwrap_or(u64::MAX),
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
            return Err(RunError::ProviderUnusable {
                provider: provider.name().to_owned(),
                problem: error.to_string(),
            });
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

    let health_addr = std::net::SocketAddr::from(([0, 0, 0, 0], settings.health_port));
    let listener = tokio::net::TcpListener::bind(health_addr)
        .await
        .with_context(|| format!("cannot listen on {health_addr} (WORKER_HEALTH_PORT)"))?;
    let health_at = listener.local_addr().context("the health listener's address")?;
    info!(addr = %health_at, "health, readiness and metrics on http://{health_at}/health, /ready, /metrics");
    // The recorder is installed here, before anything is counted (the first connection attempt
    // included), not in the spawned server.
    let metrics = crate::health::metrics_handle();
    // The health server's own token: it stops with the caller's shutdown, and also when this
    // future is dropped before that (a test that aborts its worker).
    let health_stop = shutdown.child_token();
    let _stop_health_on_drop = health_stop.clone().drop_guard();
    let health = tokio::spawn(crate::health::serve(
        listener,
        status.clone(),
        executor.clone(),
        metrics,
        health_stop.cancelled_owned(),
    ));

    serve_with_reconnects(&settings, executor, status, &replica, &shutdown).await;
    if let Ok(Err(error)) = health.await {
        warn!("the health server failed: {error:#}");
    }
    Ok(())
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
async fn serve_with_reconnects(
    settings: &Settings,
    executor: Executor,
    status: WorkerStatus,
    replica: &str,
    shutdown: &CancellationToken,
) {
    let prefetch = u16::try_from(settings.limits.worker_concurrency).unwrap_or(u16::MAX);
    let pending = crate::worker::PendingResults::default();
    let nodes = settings.broker.uris.len();
    let mut node = 0;
    let mut backoff = reconnect_backoff();
    loop {
        metrics::counter!("review_broker_connection_attempts_total").increment(1);
        let connected = tokio::select! {
            () = shutdown.cancelled() => return,
            connected = connect(settings, node, replica) => connected,
        };
        let failure = match connected {
            Err(error) => format!("RabbitMQ unavailable: {error:#}"),
            Ok(broker) => {
                let span = info_span!("broker", node = %broker.node());
                let since = Instant::now();
                let served = serve(
                    settings, &executor, &status, &pending, replica, prefetch, broker, shutdown,
                )
                .instrument(span)
                .await;
                match served {
                    Ok(()) => return,
                    Err(error) => {
                        if since.elapsed() >= HEALTHY_AFTER {
                            backoff = reconnect_backoff();
                        }
                        format!("lost the RabbitMQ connection: {error:#}")
                    }
                }
            }
        };
        node = node.saturating_add(1).checked_rem(nodes).unwrap_or(0);
        let delay = backoff.next().unwrap_or(Duration::from_secs(30));
        let next_node = settings
            .broker
            .uris
            .get(node)
            .map_or_else(|| "-".to_owned(), |uri| redact_uri(uri.expose_secret()));
        warn!(
            retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            next_node = %next_node,
            "{failure}; reconnecting"
        );
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// One connection's life: the worker serves on it until it fails or shutdown.
#[expect(clippy::too_many_arguments, reason = "the reconnect loop's state, passed down once")]
async fn serve(
    settings: &Settings,
    executor: &Executor,
    status: &WorkerStatus,
    pending: &crate::worker::PendingResults,
    replica: &str,
    prefetch: u16,
    broker: Broker,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    status.set_connected(Some(broker.node()));
    info!(replica, "connected to RabbitMQ at {}", broker.node());
    let worker = Worker {
        broker: Arc::new(broker),
        executor: executor.clone(),
        review: settings.review.clone(),
        status: status.clone(),
        pending: pending.clone(),
        // Its own token, not a child of `shutdown`: a graceful stop lets reviews finish; only a
        // lost leadership abandons them.
        abandon: CancellationToken::new(),
    };
    let sampler = tokio::spawn(crate::status::sample_queues(worker.broker.clone()));
    let served = worker.serve(replica, prefetch, settings.drain_timeout, shutdown).await;
    sampler.abort();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_tell_settings_from_an_unusable_provider_from_anything_else() {
        let settings = RunError::from(SettingsError::Load("no such file".to_owned()));
        let unusable = RunError::ProviderUnusable {
            provider: "Z.AI Coding Plan".to_owned(),
            problem: "invalid key".to_owned(),
        };
        let other = RunError::from(anyhow::anyhow!("cannot listen on 0.0.0.0:8080"));
        assert_eq!(
            [settings.exit_code(), unusable.exit_code(), other.exit_code()],
            [2, 3, 1]
        );
        assert!(
            unusable
                .to_string()
                .contains("not usable with this configuration: invalid key")
        );
    }
}
