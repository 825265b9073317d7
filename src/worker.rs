//! The worker: consumes jobs, runs each through the executor, publishes its result, and only then
//! acks. `handle_delivery` is one step (one message in, everything it causes on the broker out);
//! `Worker::serve` is the loop around it, with shutdown passed in as a token.
//!
//! Every way a job leaves the jobs queue goes through a confirmed publish first: a result, a dead
//! letter, or a republish to a delay tier. A job is never acked on the strength of a publish the
//! broker did not confirm, so a crash at any point leaves it in the queue (at-least-once).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::Utc;
use futures_util::{FutureExt as _, StreamExt as _};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicNackOptions};
use lapin::types::AMQPValue;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, Span, error, info, info_span, warn};

use crate::broker::{Broker, Envelope, Refused};
use crate::coordination::Coordination;
use crate::executor::{Completed, Executor};
use crate::fate::{DeadKind, Event, Facts, Fate, decide};
use crate::progress::Progress;
use crate::settings::ReviewSettings;
use crate::status::{Role, WorkerStatus};
use review_core::contract::{FailureKind, Job, RESULT_SCHEMA_ID, ReviewResult, Status, parse_job, rfc3339};

/// Results reviewed but not confirmed by the broker (the connection dropped first, or the broker
/// refused them), by job id: when the job is redelivered its result is published from here
/// instead of reviewing it again.
#[derive(Debug, Clone, Default)]
pub(crate) struct PendingResults {
    inner: Arc<std::sync::Mutex<std::collections::HashMap<String, ReviewResult>>>,
}

impl PendingResults {
    /// Bounded so that a long outage cannot grow it without limit; past it, a redelivered job is
    /// simply reviewed again.
    const MAX: usize = 10_000;

    fn keep(&self, result: ReviewResult) {
        let mut map = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() < Self::MAX {
            map.insert(result.job_id.clone(), result);
        }
    }

    fn take(&self, job_id: &str) -> Option<ReviewResult> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(job_id)
    }
}

/// Everything a delivery needs; cheap to clone into each job's task.
#[derive(Debug, Clone)]
pub(crate) struct Worker {
    pub broker: Arc<Broker>,
    pub executor: Executor,
    pub review: ReviewSettings,
    pub status: WorkerStatus,
    pub pending: PendingResults,
    /// Cancelled when this replica stops leading: reviews in flight drop their provider calls.
    pub abandon: CancellationToken,
}

/// A review given up because this replica stopped leading; its job goes back to the queue.
#[derive(Debug, thiserror::Error)]
#[error("review abandoned: this replica is no longer the leader")]
pub(crate) struct Abandoned;

impl Worker {
    /// One step: handles a job message completely, up to (not including) its ack. `Ok` means
    /// everything it published is confirmed and the message may be acked; it carries the
    /// outcome's label.
    pub(crate) async fn handle_delivery(&self, body: &[u8], envelope: &Envelope) -> anyhow::Result<&'static str> {
        let job = match parse_job(body, self.review.max_job_bytes) {
            Ok(job) => job,
            Err(rejected) => {
                let job_id = rejected.job_id.as_deref();
                warn!(job_id = job_id.unwrap_or("-"), routing_key = %envelope.routing_key, "invalid job, dead-lettering it: {rejected}");
                let fate = Fate::DeadLetter {
                    kind: DeadKind::Failed(FailureKind::InvalidJob),
                    message: rejected.to_string(),
                    attempts: 1,
                    result: Some(FailureKind::InvalidJob),
                };
                return self.settle(fate, job_id, body, envelope).await;
            }
        };
        let span = info_span!("job", job_id = %job.job_id, repository = %job.repository.full_name, pr = job.pull_request.number);
        self.review_job(job, body, envelope).instrument(span).await
    }

    async fn review_job(&self, job: Job, body: &[u8], envelope: &Envelope) -> anyhow::Result<&'static str> {
        let facts = Facts::read(envelope, job.created_at, Utc::now(), &self.review);
        match decide(Event::Delivered, &facts, &self.review) {
            Fate::Review => {}
            fate => return self.settle(fate, Some(&job.job_id), body, envelope).await,
        }
        if let Some(result) = self.pending.take(&job.job_id) {
            info!("publishing the result kept from an earlier delivery of {}", job.job_id);
            return self.publish(result, &facts, body, envelope).await;
        }
        inject_fault(&job);

        let started_at = Utc::now();
        let clock = Instant::now();
        let _in_flight = self.status.start_review();
        let mut progress = Progress::of(envelope);
        let reviewed = tokio::select! {
            reviewed = self.executor.review(&job, &self.review, &mut progress) => reviewed,
            // Leadership is gone: another replica may call the provider from now on.
            () = self.abandon.cancelled() => return Err(Abandoned.into()),
        };
        match reviewed {
            Ok(completed) => {
                let attempts = facts.counters.attempts.saturating_add(1);
                let result = completed_result(&job, &completed, attempts, started_at);
                let usage = &completed.review.usage;
                info!(
                    provider = %completed.provider, model = %completed.model, outcome = "completed",
                    latency_ms = u64::try_from(clock.elapsed().as_millis()).unwrap_or(u64::MAX), prompt_tokens = usage.prompt_tokens,
                    completion_tokens = usage.completion_tokens, suggestions = completed.review.suggestions.len(),
                    used_fallback = completed.used_fallback, attempt = attempts,
                    "review {}#{} by {} {}: {} suggestion(s) in {} ms",
                    job.repository.full_name, job.pull_request.number, completed.provider, completed.model,
                    completed.review.suggestions.len(), clock.elapsed().as_millis()
                );
                self.status.observe_review(&completed, clock.elapsed());
                self.publish(result, &facts, body, envelope).await
            }
            Err(unfinished) => {
                let fate = decide(Event::Unfinished(&unfinished), &facts, &self.review);
                // A job that waits takes the calls answered so far with it.
                self.settle_carrying(fate, Some(&job.job_id), body, envelope, progress.header())
                    .await
            }
        }
    }

    /// Publishes a reviewed job's result. A result the broker does not confirm is kept (the
    /// review is paid for): on a lost connection the job comes back by itself; a refusal on a
    /// working connection goes through the decision table (wait, then dead-letter).
    async fn publish(
        &self,
        result: ReviewResult,
        facts: &Facts,
        body: &[u8],
        envelope: &Envelope,
    ) -> anyhow::Result<&'static str> {
        match self.broker.publish_result(&result, envelope).await {
            Ok(()) => {
                self.status.record("completed");
                Ok("completed")
            }
            Err(error) => {
                let job_id = result.job_id.clone();
                self.pending.keep(result);
                // Only a refusal is the job's problem; anything else is the connection's, and the
                // job comes back after the reconnect.
                if !error.is::<Refused>() {
                    return Err(error.context("publish the result (kept for when the job comes back)"));
                }
                warn!("the broker refused the result of {job_id}: {error:#}");
                let fate = decide(Event::PublishFailed, facts, &self.review);
                self.settle(fate, Some(&job_id), body, envelope).await
            }
        }
    }

    /// Applies a fate that takes the job out of the jobs queue: round a tier, back to wait, or
    /// dead-lettered (with a `failed` result where the contract has a kind for it).
    async fn settle(
        &self,
        fate: Fate,
        job_id: Option<&str>,
        body: &[u8],
        envelope: &Envelope,
    ) -> anyhow::Result<&'static str> {
        self.settle_carrying(fate, job_id, body, envelope, None).await
    }

    /// [`Worker::settle`], where a job sent back to wait carries `progress` (a [`Progress`]
    /// header) in place of the one it came with.
    async fn settle_carrying(
        &self,
        fate: Fate,
        job_id: Option<&str>,
        body: &[u8],
        envelope: &Envelope,
        progress: Option<AMQPValue>,
    ) -> anyhow::Result<&'static str> {
        let label = fate.label();
        let job_id = job_id.unwrap_or("-");
        match fate {
            Fate::Review => anyhow::bail!("reviewing does not settle a job"),
            Fate::Hop { delay } => {
                self.broker
                    .hop(body, envelope, delay)
                    .await
                    .context("send an early job round another delay tier")?;
            }
            Fate::Wait {
                delay,
                counters,
                reason,
            } => {
                self.broker
                    .requeue_later(body, envelope, counters, delay, progress)
                    .await
                    .context("put the job back to wait")?;
                info!(
                    outcome = label,
                    delay_s = delay.as_secs(),
                    attempts = counters.attempts,
                    "job {job_id} waits {}s: {reason}",
                    delay.as_secs()
                );
            }
            Fate::DeadLetter {
                kind,
                message,
                attempts,
                result,
            } => {
                if let (Some(result), true) = (result, job_id != "-") {
                    let failed = ReviewResult::failed(job_id, result, message.as_str(), attempts);
                    self.broker
                        .publish_result(&failed, envelope)
                        .await
                        .context("publish the failed result")?;
                }
                self.broker
                    .dead_letter(body, envelope, kind, &message, attempts)
                    .await
                    .context("dead-letter the job")?;
                warn!(
                    outcome = label,
                    attempts, "job {job_id} failed ({label}), dead-lettered: {message}"
                );
            }
        }
        self.status.record(label);
        Ok(label)
    }

    /// Handles one delivery and settles it with the broker: ack after success, otherwise
    /// requeue after a pause (the broker or the network failed; the job is not at fault). A panic
    /// in the job's handling is caught here and the job settled through the decision table, so
    /// no job is left unacked by a bug.
    pub(crate) async fn process(&self, delivery: Delivery) {
        let envelope = Envelope {
            routing_key: delivery.routing_key.as_str().to_owned(),
            properties: delivery.properties.clone(),
        };
        let handled = AssertUnwindSafe(self.handle_delivery(&delivery.data, &envelope))
            .catch_unwind()
            .await;
        let handled = match handled {
            Ok(handled) => handled,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".to_owned());
                drop(panic);
                self.settle_panic(&delivery.data, &envelope, &what).await
            }
        };
        match handled {
            Ok(_) => {
                if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
                    // The channel is gone; the broker requeues the job by itself.
                    warn!("could not ack a job (it will be redelivered): {e}");
                }
            }
            Err(e) => {
                // An abandoned review goes straight back; anything else is the broker's or the
                // network's trouble, and a second's pause keeps a failing broker from a hot loop.
                if !e.is::<Abandoned>() {
                    error!("job not settled, returning it to the queue: {e:#}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                let _ = delivery
                    .acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..BasicNackOptions::default()
                    })
                    .await;
            }
        }
    }

    async fn settle_panic(&self, body: &[u8], envelope: &Envelope, what: &str) -> anyhow::Result<&'static str> {
        let job_id = match parse_job(body, self.review.max_job_bytes) {
            Ok(job) => Some(job.job_id),
            Err(rejected) => rejected.job_id,
        };
        error!(
            job_id = job_id.as_deref().unwrap_or("-"),
            "the worker failed on a job (a bug; please report it): {what}"
        );
        let facts = Facts::read(envelope, None, Utc::now(), &self.review);
        let fate = decide(Event::Panicked, &facts, &self.review);
        self.settle(fate, job_id.as_deref(), body, envelope).await
    }

    /// The loop. Campaigns for leadership; while this replica leads and a provider lane is
    /// usable, consumes jobs; stops consuming the moment every lane is paused and resumes by
    /// itself when one is usable again (probing account problems). On `shutdown` it stops
    /// consuming at once, lets reviews in flight finish within `drain`, leaves the rest unacked
    /// (the broker requeues them when the channel closes) and only then hands leadership on, so
    /// that two replicas never call the provider at once.
    pub(crate) async fn serve(
        &self,
        replica: &str,
        prefetch: u16,
        drain: Duration,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        // Bounded: a node that accepts the connection but stalls on declarations (a quorum queue
        // without a leader yet) is a failed connection, and the reconnect loop tries the next.
        let mut coordination = tokio::time::timeout(
            Duration::from_secs(30),
            Coordination::start(&self.broker, &self.executor, replica),
        )
        .await
        .map_err(|_| anyhow::anyhow!("the broker did not set up leadership and the pause log within 30s"))??;
        let channel = self.broker.jobs_channel(prefetch).await?;
        let mut tasks = JoinSet::new();

        let ended: anyhow::Result<()> = 'serve: loop {
            // Wait to lead, and for a usable provider.
            if !coordination.is_leader() {
                self.status.set_role(Role::Standby);
                info!("standing by: another replica leads (the plan's cap holds for the whole deployment)");
            }
            tokio::select! {
                () = shutdown.cancelled() => break 'serve Ok(()),
                led = coordination.until_leader() => if let Err(e) = led { break 'serve Err(e) },
            }
            self.status.set_role(Role::Leader);
            self.executor.open_calls();
            while !self.executor.usable() {
                self.status.set_consuming(false);
                tokio::select! {
                    () = shutdown.cancelled() => break 'serve Ok(()),
                    e = coordination.failed() => break 'serve Err(e),
                    () = self.broker.until_unusable() => break 'serve Err(anyhow::anyhow!("the broker connection or publishing channel closed")),
                    () = self.wait_for_usable_lane() => {}
                    Some(joined) = tasks.join_next(), if !tasks.is_empty() => log_panic(joined),
                }
            }

            let mut consumer = self.broker.consume_jobs(&channel, replica).await?;
            self.status.set_consuming(true);
            info!(queue = %self.broker.topology().jobs_queue, prefetch, cap = self.executor.main.limit.configured(), "consuming jobs");
            let stop = loop {
                tokio::select! {
                    () = shutdown.cancelled() => break Some(Ok(())),
                    e = coordination.failed() => break Some(Err(e)),
                    () = self.until_unusable() => break None,
                    () = self.broker.until_unusable() => break Some(Err(anyhow::anyhow!("the broker connection or publishing channel closed"))),
                    next = consumer.next() => match next {
                        Some(Ok(delivery)) => {
                            let worker = self.clone();
                            tasks.spawn(async move { worker.process(delivery).await }.instrument(Span::current()));
                        }
                        Some(Err(e)) => break Some(Err(anyhow::Error::new(e).context("the broker connection failed"))),
                        None => break Some(Err(anyhow::anyhow!("the broker cancelled the consumer"))),
                    },
                    Some(joined) = tasks.join_next(), if !tasks.is_empty() => log_panic(joined),
                }
            };
            self.status.set_consuming(false);
            let _ = channel
                .basic_cancel(consumer.tag(), BasicCancelOptions::default())
                .await;
            // Deliveries already prefetched still arrive; they go through the usual step and,
            // with every lane paused, back to wait in a delay tier without a provider call.
            while let Ok(Some(Ok(delivery))) = tokio::time::timeout(Duration::from_millis(200), consumer.next()).await {
                let worker = self.clone();
                tasks.spawn(async move { worker.process(delivery).await }.instrument(Span::current()));
            }
            if let Some(ended) = stop {
                break 'serve ended;
            }
            info!("every provider lane is paused: stopped consuming until one is usable");
        };

        self.status.set_consuming(false);
        let drain = if ended.is_err() {
            // Leadership or the connection is lost, so another replica may lead soon (after its
            // takeover grace): no new call starts, the calls in flight get `LAST_CALLS` to come
            // back, and the rest are abandoned (their jobs go back to the queue). A review that
            // came back still publishes its result, or keeps it for when its job returns.
            self.executor.close_calls();
            let finished = tokio::time::timeout(LAST_CALLS, async { while tasks.join_next().await.is_some() {} }).await;
            if finished.is_err() {
                warn!(
                    in_flight = tasks.len(),
                    "abandoning the provider calls still in flight: their jobs will be reviewed again"
                );
                self.abandon.cancel();
            }
            ABANDON_WAIT
        } else {
            if !tasks.is_empty() {
                info!(
                    in_flight = tasks.len(),
                    drain_ms = u64::try_from(drain.as_millis()).unwrap_or(u64::MAX),
                    "draining reviews in flight"
                );
            }
            drain
        };
        let drained = tokio::time::timeout(drain, async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            warn!(
                requeued = tasks.len(),
                "drain timeout: returning unfinished jobs to the queue"
            );
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        // Closing the channel hands every unacked job back to the broker; leadership goes last.
        let _ = channel.close(200, "shutdown".into()).await;
        self.executor.close_calls();
        coordination.release().await;
        self.status.set_role(Role::Standby);
        ended
    }

    /// Returns once some lane can take a job, probing lanes paused for account problems. It
    /// sleeps until something can change: a pause ends (its lane's timer, a probe, the pause
    /// log) or the next probe is due.
    async fn wait_for_usable_lane(&self) {
        let mut changes: Vec<_> = self.executor.lanes().map(|l| l.pause.subscribe()).collect();
        loop {
            // Marked seen before the check, so a change after it wakes the wait below.
            changes.iter_mut().for_each(|rx| {
                rx.borrow_and_update();
            });
            if let Ok(lane) = self.executor.active_lane() {
                let (provider, model) = (lane.provider.name(), lane.provider.model());
                info!(
                    provider,
                    model,
                    lane = lane.label(),
                    "{provider} {model} usable again: resuming consumption"
                );
                return;
            }
            self.executor.probe_paused().await;
            let probe_due = async {
                match self.executor.next_probe_at() {
                    Some(at) => {
                        tokio::time::sleep(at.signed_duration_since(Utc::now()).to_std().unwrap_or_default()).await
                    }
                    None => std::future::pending().await,
                }
            };
            let changed = futures_util::future::select_all(changes.iter_mut().map(|rx| Box::pin(rx.changed())));
            tokio::select! {
                (result, _, _) = changed => {
                    // The lanes own the senders and outlive this worker; should one go, fall
                    // back to checking once a second rather than spinning.
                    if result.is_err() {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                () = probe_due => {}
            }
        }
    }

    /// Returns once no lane can take a job.
    async fn until_unusable(&self) {
        let mut changes: Vec<_> = self.executor.lanes().map(|l| l.pause.subscribe()).collect();
        loop {
            if !self.executor.usable() {
                return;
            }
            let waits = changes.iter_mut().map(|rx| Box::pin(rx.changed()));
            let _ = futures_util::future::select_all(waits).await;
        }
    }
}

fn log_panic(joined: Result<(), tokio::task::JoinError>) {
    if let Err(e) = joined {
        error!("a job task panicked (its job returns to the queue): {e}");
    }
}

/// How long the calls in flight get to come back when this replica stops leading: well under
/// [`crate::coordination::TAKEOVER_GRACE`], so they end before a new leader's first call.
const LAST_CALLS: Duration = Duration::from_millis(500);

/// How long reviews abandoned on a lost leadership get to settle (publish an answered review or
/// keep it) before their tasks are aborted.
const ABANDON_WAIT: Duration = Duration::from_secs(5);

/// The `completed` result for a review.
pub(crate) fn completed_result(
    job: &Job,
    completed: &Completed,
    attempts: u32,
    started_at: chrono::DateTime<Utc>,
) -> ReviewResult {
    let review = &completed.review;
    ReviewResult {
        schema: RESULT_SCHEMA_ID.to_owned(),
        job_id: job.job_id.clone(),
        status: Status::Completed,
        summary: Some(review.summary.clone()),
        suggestions: Some(review.suggestions.clone()),
        provider: Some(completed.provider.clone()),
        model: Some(completed.model.clone()),
        used_fallback: Some(completed.used_fallback),
        usage: Some(review.usage.clone()),
        truncated: Some(review.truncated),
        skipped_files: Some(review.skipped_files.clone()),
        coverage: Some(review.coverage.clone()),
        attempts: attempts.max(1),
        started_at: Some(rfc3339(started_at)),
        finished_at: rfc3339(Utc::now()),
        error: None,
    }
}

/// Test builds only: a job whose id starts with `test-panic-` makes its task panic, so that the
/// tests can prove a panic never leaves a job unacked. Release builds have no such path.
fn inject_fault(job: &Job) {
    #[cfg(debug_assertions)]
    assert!(
        !job.job_id.starts_with("test-panic-"),
        "fault injected for a test job ({})",
        job.job_id
    );
    #[cfg(not(debug_assertions))]
    let _ = job;
}
