//! The worker: consumes jobs, runs each through the executor, publishes its result, and only then
//! acks. `handle_delivery` is one step (one message in, everything it causes on the broker out);
//! `Worker::serve` is the loop around it, with shutdown passed in as a future.
//!
//! Every way a job leaves the jobs queue goes through a confirmed publish first: a result, a dead
//! letter, or a republish to a delay tier. A job is never acked on the strength of a publish the
//! broker did not confirm, so a crash at any point leaves it in the queue (at-least-once).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::Utc;
use futures_util::StreamExt as _;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicNackOptions};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, Span, error, info, info_span, warn};

use crate::broker::{Broker, Envelope, headers};
use crate::contract::{FailureKind, Job, RESULT_SCHEMA_ID, ReviewResult, Status, parse_job, rfc3339};
use crate::coordination::Coordination;
use crate::executor::{Completed, Executor, JobFailure};
use crate::settings::ReviewSettings;
use crate::status::{Role, WorkerStatus};

/// What one delivery came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    Completed,
    Failed(FailureKind),
    /// Back in a delay tier; `counted` says whether the attempt was charged.
    Waiting {
        delay: Duration,
        counted: bool,
    },
    /// Came back from a delay tier early and went round another.
    Hopped,
}

impl Outcome {
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Failed(kind) => kind.as_str(),
            Self::Waiting { .. } => "waiting",
            Self::Hopped => "hopped",
        }
    }
}

/// Results reviewed but not confirmed by the broker (the connection dropped first), by job id:
/// when the job is redelivered its result is published from here instead of reviewing it again.
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
    /// everything it published is confirmed and the message may be acked.
    pub(crate) async fn handle_delivery(&self, body: &[u8], envelope: &Envelope) -> anyhow::Result<Outcome> {
        let now_ms = Utc::now().timestamp_millis();
        if let Some(not_before) = envelope.header_u64(headers::NOT_BEFORE) {
            let remaining = not_before as i64 - now_ms;
            if remaining > 200 {
                self.broker
                    .hop(body, envelope, Duration::from_millis(remaining as u64))
                    .await
                    .context("send an early job round another delay tier")?;
                return Ok(Outcome::Hopped);
            }
        }

        let job = match parse_job(body, self.review.max_job_bytes) {
            Ok(job) => job,
            Err((invalid, job_id)) => {
                warn!(job_id = job_id.as_deref().unwrap_or("-"), routing_key = %envelope.routing_key, "invalid job, dead-lettering it: {invalid}");
                if let Some(job_id) = &job_id {
                    let result = ReviewResult::failed(job_id, FailureKind::InvalidJob, invalid.to_string(), 1);
                    self.broker
                        .publish_result(&result, envelope)
                        .await
                        .context("publish the invalid_job result")?;
                }
                self.broker
                    .dead_letter(body, envelope, FailureKind::InvalidJob, &invalid.to_string(), 1)
                    .await
                    .context("dead-letter an invalid job")?;
                self.status.record(Outcome::Failed(FailureKind::InvalidJob).label());
                return Ok(Outcome::Failed(FailureKind::InvalidJob));
            }
        };

        let span = info_span!("job", job_id = %job.job_id, repository = %job.repository.full_name, pr = job.pull_request.number);
        self.review_job(job, body, envelope).instrument(span).await
    }

    async fn review_job(&self, job: Job, body: &[u8], envelope: &Envelope) -> anyhow::Result<Outcome> {
        if let Some(result) = self.pending.take(&job.job_id) {
            if let Err(error) = self.broker.publish_result(&result, envelope).await {
                self.pending.keep(result);
                return Err(error.context("republish a result kept from a lost connection"));
            }
            info!(
                outcome = "completed",
                "republished the result kept from a lost connection for {}", job.job_id
            );
            self.status.record(Outcome::Completed.label());
            return Ok(Outcome::Completed);
        }
        let attempts_before = envelope.header_u64(headers::ATTEMPTS).unwrap_or(0) as u32;
        let attempt = attempts_before + 1;
        let started_at = Utc::now();
        let clock = Instant::now();

        if let Some(age) = self.age(&job, envelope)
            && age > self.review.max_job_age
        {
            let message = format!(
                "the job is {}s old, older than API_REVIEW_MAX_JOB_AGE ({}s)",
                age.as_secs(),
                self.review.max_job_age.as_secs()
            );
            return self
                .fail(
                    &job,
                    body,
                    envelope,
                    FailureKind::Expired,
                    &message,
                    attempt.max(attempts_before),
                )
                .await;
        }

        let _in_flight = self.status.start_review();
        let reviewed = tokio::select! {
            reviewed = self.executor.review(&job) => reviewed,
            // Leadership is gone: another replica may call the provider from now on.
            () = self.abandon.cancelled() => return Err(Abandoned.into()),
        };
        match reviewed {
            Ok(completed) => {
                let result = completed_result(&job, &completed, attempt, started_at);
                if let Err(error) = self.broker.publish_result(&result, envelope).await {
                    // The review is paid for: keep it for when the job comes back.
                    self.pending.keep(result);
                    return Err(error.context("publish the result (kept for when the job comes back)"));
                }
                let usage = &completed.review.usage;
                info!(
                    provider = %completed.provider, model = %completed.model, outcome = "completed",
                    latency_ms = clock.elapsed().as_millis() as u64, prompt_tokens = usage.prompt_tokens,
                    completion_tokens = usage.completion_tokens, suggestions = completed.review.suggestions.len(),
                    used_fallback = completed.used_fallback, attempt,
                    "review {}#{} by {} {}: {} suggestion(s) in {} ms",
                    job.repository.full_name, job.pull_request.number, completed.provider, completed.model,
                    completed.review.suggestions.len(), clock.elapsed().as_millis()
                );
                self.status.observe_review(&completed, clock.elapsed());
                self.status.record(Outcome::Completed.label());
                Ok(Outcome::Completed)
            }
            Err(JobFailure::Fail { kind, message, .. }) => {
                self.fail(&job, body, envelope, kind, &message, attempt).await
            }
            Err(JobFailure::Wait {
                delay,
                count_attempt,
                reason,
            }) => {
                if count_attempt && attempt >= self.review.max_attempts {
                    let message = format!("gave up after {attempt} attempt(s); last error: {reason}");
                    return self
                        .fail(&job, body, envelope, FailureKind::AttemptsExhausted, &message, attempt)
                        .await;
                }
                let attempts = if count_attempt { attempt } else { attempts_before };
                let delay = if count_attempt {
                    retry_delay(attempt).max(delay)
                } else {
                    delay
                };
                self.broker
                    .requeue_later(body, envelope, attempts, delay)
                    .await
                    .context("put the job back to wait")?;
                info!(
                    outcome = "waiting",
                    delay_s = delay.as_secs(),
                    attempt_counted = count_attempt,
                    attempts,
                    "job {} waits {}s: {reason}",
                    job.job_id,
                    delay.as_secs()
                );
                self.status.record("waiting");
                Ok(Outcome::Waiting {
                    delay,
                    counted: count_attempt,
                })
            }
        }
    }

    async fn fail(
        &self,
        job: &Job,
        body: &[u8],
        envelope: &Envelope,
        kind: FailureKind,
        message: &str,
        attempts: u32,
    ) -> anyhow::Result<Outcome> {
        let result = ReviewResult::failed(&job.job_id, kind, message, attempts);
        self.broker
            .publish_result(&result, envelope)
            .await
            .context("publish the failed result")?;
        self.broker
            .dead_letter(body, envelope, kind, message, attempts)
            .await
            .context("dead-letter the failed job")?;
        warn!(
            outcome = kind.as_str(),
            attempts,
            "review {}#{} failed ({}): {message}",
            job.repository.full_name,
            job.pull_request.number,
            kind.as_str()
        );
        self.status.record(kind.as_str());
        Ok(Outcome::Failed(kind))
    }

    /// Age from the job's `created_at`, else from when the worker first saw it.
    fn age(&self, job: &Job, envelope: &Envelope) -> Option<Duration> {
        let born_ms = job
            .created_at
            .map(|at| at.timestamp_millis())
            .or_else(|| envelope.header_u64(headers::FIRST_SEEN).map(|ms| ms as i64))?;
        u64::try_from(Utc::now().timestamp_millis() - born_ms)
            .ok()
            .map(Duration::from_millis)
    }

    /// Handles one delivery and settles it with the broker: ack after success, otherwise
    /// requeue after a pause (the broker or the network failed; the job is not at fault).
    pub(crate) async fn process(&self, delivery: Delivery) {
        let envelope = Envelope {
            routing_key: delivery.routing_key.as_str().to_owned(),
            properties: delivery.properties.clone(),
        };
        match self.handle_delivery(&delivery.data, &envelope).await {
            Ok(_) => {
                if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
                    // The channel is gone; the broker requeues the job by itself.
                    warn!("could not ack a job (it will be redelivered): {e}");
                }
            }
            Err(e) if e.is::<Abandoned>() => {
                let _ = delivery
                    .acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..BasicNackOptions::default()
                    })
                    .await;
            }
            Err(e) => {
                error!("job not settled, returning it to the queue: {e:#}");
                tokio::time::sleep(Duration::from_secs(1)).await;
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
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let mut coordination = Coordination::start(&self.broker, &self.executor, replica).await?;
        let channel = self.broker.jobs_channel(prefetch).await?;
        let mut tasks = JoinSet::new();
        tokio::pin!(shutdown);

        let ended: anyhow::Result<()> = 'serve: loop {
            // Wait to lead, and for a usable provider.
            if !coordination.is_leader() {
                self.status.set_role(Role::Standby);
                info!("standing by: another replica leads (the plan's cap holds for the whole deployment)");
            }
            tokio::select! {
                () = &mut shutdown => break 'serve Ok(()),
                led = coordination.until_leader() => if let Err(e) = led { break 'serve Err(e) },
            }
            self.status.set_role(Role::Leader);
            self.executor.open_calls();
            while !self.executor.usable() {
                self.status.set_consuming(false);
                tokio::select! {
                    () = &mut shutdown => break 'serve Ok(()),
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
                    () = &mut shutdown => break Some(Ok(())),
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
                    drain_ms = drain.as_millis() as u64,
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

    /// Returns once some lane can take a job, probing lanes paused for account problems.
    async fn wait_for_usable_lane(&self) {
        loop {
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
            // Time-bound pauses end by the clock; a second is fine-grained enough against
            // reset times that have one-second precision and a margin on top.
            tokio::time::sleep(Duration::from_millis(250)).await;
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

/// Backoff for jobs whose attempt counted: 10 s, 20 s, 40 s, … capped at 10 minutes.
fn retry_delay(attempt: u32) -> Duration {
    let seconds = 10u64.saturating_mul(1 << attempt.saturating_sub(1).min(6));
    Duration::from_secs(seconds.min(600))
}

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
        attempts: attempts.max(1),
        started_at: Some(rfc3339(started_at)),
        finished_at: rfc3339(Utc::now()),
        error: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_grow_and_are_capped() {
        assert_eq!(retry_delay(1), Duration::from_secs(10));
        assert_eq!(retry_delay(2), Duration::from_secs(20));
        assert_eq!(retry_delay(30), Duration::from_secs(600));
    }
}
