//! What this replica is doing, for `/ready` and `/metrics`: connection and consumption flags,
//! reviews in flight, and the metrics emitted per job (through the `metrics` facade, so nothing
//! is recorded unless an exporter is installed).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use review_core::models::price_per_million;

use crate::broker::Broker;
use crate::executor::Completed;

#[derive(Debug, Clone, Default)]
pub(crate) struct WorkerStatus {
    inner: Arc<Inner>,
}

/// This replica's part: the leader calls the provider; standbys wait to take over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Standby,
    Leader,
}

#[derive(Debug, Default)]
struct Inner {
    /// The broker node this replica is connected to (password masked), `None` while it is not.
    node: std::sync::Mutex<Option<String>>,
    replica: std::sync::OnceLock<String>,
    connected: AtomicBool,
    consuming: AtomicBool,
    leader: AtomicBool,
    in_flight: AtomicU64,
}

/// Marks a review in flight until dropped.
#[derive(Debug)]
pub(crate) struct InFlight {
    inner: Arc<Inner>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let now = self.inner.in_flight.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
        metrics::gauge!("review_in_flight").set(now as f64);
    }
}

impl WorkerStatus {
    /// This replica's identity, set once at start.
    pub(crate) fn set_replica(&self, replica: &str) {
        let _ = self.inner.replica.set(replica.to_owned());
    }

    pub(crate) fn replica(&self) -> &str {
        self.inner.replica.get().map_or("", String::as_str)
    }

    /// Connected to `node` (its masked URI), or disconnected with `None`.
    pub(crate) fn set_connected(&self, node: Option<&str>) {
        let connected = node.is_some();
        *self
            .inner
            .node
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = node.map(str::to_owned);
        self.inner.connected.store(connected, Ordering::Relaxed);
        metrics::gauge!("review_broker_connected").set(f64::from(u8::from(connected)));
    }

    pub(crate) fn set_consuming(&self, consuming: bool) {
        self.inner.consuming.store(consuming, Ordering::Relaxed);
        metrics::gauge!("review_consuming").set(f64::from(u8::from(consuming)));
    }

    pub(crate) fn set_role(&self, role: Role) {
        self.inner.leader.store(role == Role::Leader, Ordering::Relaxed);
        metrics::gauge!("review_leader").set(f64::from(u8::from(role == Role::Leader)));
    }

    pub(crate) fn role(&self) -> Role {
        if self.inner.leader.load(Ordering::Relaxed) {
            Role::Leader
        } else {
            Role::Standby
        }
    }

    pub(crate) fn node(&self) -> Option<String> {
        self.inner
            .node
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn connected(&self) -> bool {
        self.inner.connected.load(Ordering::Relaxed)
    }

    pub(crate) fn consuming(&self) -> bool {
        self.inner.consuming.load(Ordering::Relaxed)
    }

    pub(crate) fn in_flight(&self) -> u64 {
        self.inner.in_flight.load(Ordering::Relaxed)
    }

    pub(crate) fn start_review(&self) -> InFlight {
        let now = self.inner.in_flight.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        metrics::gauge!("review_in_flight").set(now as f64);
        InFlight {
            inner: self.inner.clone(),
        }
    }

    /// Counts a job's outcome: completed, waiting, hopped, or a failure kind.
    pub(crate) fn record(&self, outcome: &str) {
        metrics::counter!("review_jobs_total", "outcome" => outcome.to_owned()).increment(1);
    }

    pub(crate) fn observe_review(&self, completed: &Completed, elapsed: Duration) {
        let usage = &completed.review.usage;
        let provider = completed.provider.clone();
        let model = completed.model.clone();
        metrics::histogram!("review_latency_seconds", "model" => model.clone()).record(elapsed.as_secs_f64());
        metrics::counter!("review_prompt_tokens_total", "provider" => provider.clone(), "model" => model.clone())
            .increment(usage.prompt_tokens);
        metrics::counter!("review_completion_tokens_total", "provider" => provider.clone(), "model" => model.clone())
            .increment(usage.completion_tokens);
        let (input, output) = price_per_million(&model);
        let cost = (usage.prompt_tokens as f64 * input + usage.completion_tokens as f64 * output) / 1_000_000.0;
        // Counters are integers: count micro-dollars.
        #[expect(
            clippy::cast_possible_truncation,
            reason = "token counts times dollars per million tokens: far below u64::MAX, and `as` saturates"
        )]
        let microdollars = (cost * 1_000_000.0).round() as u64;
        metrics::counter!("review_cost_equivalent_microdollars_total", "provider" => provider, "model" => model)
            .increment(microdollars);
    }
}

/// How often each replica reads the depth of the jobs and dead-letter queues.
const QUEUE_SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// The queues `review_queue_messages{queue}` reports, by the label it gives them.
const SAMPLED_QUEUES: [&str; 2] = ["jobs", "dead"];

/// Sets the sampled queues' gauges to NaN when the sampling stops (the connection is gone), so
/// that a disconnected replica does not keep reporting its last reading as the present.
#[derive(Debug)]
struct UnknownWhenStopped;

impl Drop for UnknownWhenStopped {
    fn drop(&mut self) {
        for queue in SAMPLED_QUEUES {
            metrics::gauge!("review_queue_messages", "queue" => queue).set(f64::NAN);
        }
    }
}

/// Reads the ready messages of the jobs queue and of the dead-letter queue on `broker` every
/// [`QUEUE_SAMPLE_EVERY`] (a passive declare on a channel of its own), for
/// `review_queue_messages{queue="jobs"|"dead"}`, until the future is dropped. Every replica
/// samples, leader or not: "jobs wait and no replica consumes" must be visible when nobody
/// leads.
pub(crate) async fn sample_queues(broker: std::sync::Arc<Broker>) {
    let _unknown = UnknownWhenStopped;
    let topology = broker.topology().clone();
    let mut channel = None;
    loop {
        for (label, queue) in SAMPLED_QUEUES
            .into_iter()
            .zip([&topology.jobs_queue, &topology.dead_queue])
        {
            if channel.is_none() {
                channel = broker.channel().await.ok();
            }
            let Some(open) = &channel else { break };
            let passive = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            match open
                .queue_declare(queue.as_str().into(), passive, FieldTable::default())
                .await
            {
                Ok(q) => metrics::gauge!("review_queue_messages", "queue" => label).set(f64::from(q.message_count())),
                Err(error) => {
                    // A missing queue closes the channel; the next round opens another.
                    tracing::debug!("could not read the depth of {queue}: {error}");
                    metrics::gauge!("review_queue_messages", "queue" => label).set(f64::NAN);
                    channel = None;
                }
            }
        }
        tokio::time::sleep(QUEUE_SAMPLE_EVERY).await;
    }
}

/// Counts a model answer reused from the answer cache instead of a provider request.
pub(crate) fn record_cache_hit(provider: &str, model: &str) {
    metrics::counter!("review_cache_hits_total", "provider" => provider.to_owned(), "model" => model.to_owned())
        .increment(1);
}
