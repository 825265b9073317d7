//! RabbitMQ: the contract's topology (§1), publishing with publisher confirms, dead letters with
//! the contract's headers (§4), and delayed requeues without plugins.
//!
//! Delays use tiered TTL queues (`{ns}.retry.1s` … `{ns}.retry.1d`): every message in a tier has
//! the same TTL, so a tier never blocks behind a longer message (the head-of-line problem of
//! per-message TTLs). A tier dead-letters back into the jobs queue; a message that comes back
//! before its `x-review-not-before` goes round another tier, so any delay from 1 s to 7 days
//! costs at most a few hops. The delayed-message plugin is archived and Debian's RabbitMQ lacks it.
//!
//! A [`Broker`] knows at once when its connection or publishing channel fails: lapin's event
//! stream wakes a watcher, which cancels the broker's health token (see [`Broker::until_unusable`]).

use std::time::Duration;

use anyhow::Context as _;
use chrono::Utc;
use futures_util::StreamExt as _;
use futures_util::stream::BoxStream;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer, Event, ExchangeKind};
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::fate::{Counters, DeadKind};
use crate::settings::{BrokerSettings, Topology, redact_uri};
use review_core::contract::{ReviewResult, one_line, rfc3339};

/// Bound on connecting: TCP, the AMQP handshake and opening the publishing channel.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound on a publisher confirm. A node that stops answering mid-publish turns into the ordinary
/// failed-publish path (the job stays unacked and comes back) instead of a hung task.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// Headers the worker reads and writes on job messages.
pub(crate) mod headers {
    /// Review attempts already made (transient failures only; waits for quota do not count).
    pub(crate) const ATTEMPTS: &str = "x-review-attempts";
    /// Epoch milliseconds before which the job must not be reviewed.
    pub(crate) const NOT_BEFORE: &str = "x-review-not-before";
    /// Epoch milliseconds when the worker first saw the job (for `API_REVIEW_MAX_JOB_AGE`).
    pub(crate) const FIRST_SEEN: &str = "x-review-first-seen";
    /// Times the broker refused this job's result (the result is kept meanwhile).
    pub(crate) const PUBLISH_FAILURES: &str = "x-review-publish-failures";
    /// Times the worker's task failed (panicked) on this job.
    pub(crate) const INTERNAL_ERRORS: &str = "x-review-internal-errors";
    pub(crate) const ERROR_KIND: &str = "x-review-error-kind";
    pub(crate) const ERROR_MESSAGE: &str = "x-review-error-message";
    pub(crate) const FAILED_AT: &str = "x-review-failed-at";
    /// The calls of a review answered before its job had to wait ([`crate::progress`]).
    pub(crate) const PROGRESS: &str = "x-review-progress";
}

/// Delay tiers, shortest first. 1 day hops cover the 7-day maximum in seven rounds.
pub(crate) const DELAY_TIERS: [(&str, Duration); 8] = [
    ("1s", Duration::from_secs(1)),
    ("5s", Duration::from_secs(5)),
    ("30s", Duration::from_secs(30)),
    ("2m", Duration::from_secs(120)),
    ("10m", Duration::from_secs(600)),
    ("1h", Duration::from_secs(3_600)),
    ("6h", Duration::from_secs(6 * 3_600)),
    ("1d", Duration::from_secs(86_400)),
];
pub(crate) const MAX_DELAY: Duration = Duration::from_secs(7 * 86_400);

/// Every delay tier's queue in `topology`'s namespace, shortest first: what the topology declares
/// and what a teardown deletes.
pub fn delay_queues(topology: &Topology) -> impl Iterator<Item = String> + '_ {
    DELAY_TIERS.iter().map(|(label, _)| delay_queue(topology, label))
}

/// The queue of the delay tier labelled `label`.
fn delay_queue(topology: &Topology, label: &str) -> String {
    topology.own(&format!("retry.{label}"))
}

/// The longest tier not longer than `delay` (the 1 s tier for anything shorter).
pub(crate) fn tier_for(delay: Duration) -> (&'static str, Duration) {
    DELAY_TIERS
        .iter()
        .rev()
        .find(|(_, tier)| *tier <= delay)
        .copied()
        .unwrap_or(DELAY_TIERS[0])
}

/// The broker answered a publish with a nack (a queue over its limit with `reject-publish`, a
/// node out of resources): the connection works, the message was not taken.
#[derive(Debug, thiserror::Error)]
#[error("refused by the broker")]
pub(crate) struct Refused;

/// A connection with a publishing channel in confirm mode.
#[derive(Debug)]
pub struct Broker {
    connection: Connection,
    publisher: Channel,
    topology: Topology,
    node: String,
    /// Cancelled when the connection or the publishing channel fails, and when the broker is
    /// closed or dropped (which also ends the watcher).
    lost: CancellationToken,
}

/// What a job message carried besides its body, to be kept on republish and dead-lettering.
#[derive(Debug, Clone)]
pub(crate) struct Envelope {
    pub(crate) routing_key: String,
    pub(crate) properties: BasicProperties,
}

impl Envelope {
    pub(crate) fn header(&self, name: &str) -> Option<&AMQPValue> {
        self.properties.headers().as_ref()?.inner().get(name)
    }

    pub(crate) fn header_u64(&self, name: &str) -> Option<u64> {
        match self.header(name)? {
            AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
            AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
            AMQPValue::ShortInt(n) => u64::try_from(*n).ok(),
            AMQPValue::LongUInt(n) => Some(u64::from(*n)),
            AMQPValue::ShortUInt(n) => Some(u64::from(*n)),
            AMQPValue::Timestamp(n) => Some(*n),
            AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.parse().ok(),
            _ => None,
        }
    }

    pub(crate) fn reply_to(&self) -> Option<&str> {
        self.properties
            .reply_to()
            .as_ref()
            .map(ShortString::as_str)
            .filter(|r| !r.is_empty())
    }

    /// The contract's correlation id: the job's `correlation_id`, else its `message_id`, else `job_id`.
    pub(crate) fn correlation_id(&self, job_id: &str) -> String {
        self.properties
            .correlation_id()
            .as_ref()
            .or(self.properties.message_id().as_ref())
            .map_or_else(|| job_id.to_owned(), |s| s.as_str().to_owned())
    }

    /// The same properties with `changes` applied to the headers.
    fn with_headers(&self, changes: &[(&str, AMQPValue)]) -> BasicProperties {
        let mut table = self.properties.headers().clone().unwrap_or_default();
        for (name, value) in changes {
            table.insert(ShortString::from(*name), value.clone());
        }
        self.properties.clone().with_headers(table).with_delivery_mode(2)
    }
}

/// The job's first-seen time, or now for a job seen for the first time (or one whose header lies
/// in the future).
fn first_seen(job: &Envelope) -> AMQPValue {
    let now = Utc::now().timestamp_millis();
    let seen = job
        .header_u64(headers::FIRST_SEEN)
        .and_then(|ms| i64::try_from(ms).ok())
        .filter(|ms| *ms <= now)
        .unwrap_or(now);
    AMQPValue::LongLongInt(seen)
}

/// An AMQP short string (at most 255 bytes), cut at a character boundary. Valid jobs' ids are at
/// most 128 bytes; this is for the `failed` result of a job refused because its id is longer,
/// whose message id would otherwise not fit (and lapin panics on one that does not).
fn short_string(text: &str) -> ShortString {
    let mut end = text.len().min(255);
    while !text.is_char_boundary(end) {
        end = end.saturating_sub(1);
    }
    ShortString::from(&text[..end])
}

fn long_string(text: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(text.as_bytes().to_vec()))
}

fn quorum_args(extra: &[(&str, AMQPValue)]) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), long_string("quorum"));
    for (name, value) in extra {
        args.insert(ShortString::from(*name), value.clone());
    }
    args
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

impl Broker {
    /// Connects to the first node of `settings.uris` that answers, in order, and opens the
    /// publishing channel. `name` shows in the management UI.
    pub async fn connect(settings: &BrokerSettings, name: &str) -> anyhow::Result<Self> {
        let mut failed = None;
        for index in 0..settings.uris.len() {
            match Self::connect_to(settings, index, name).await {
                Ok(broker) => return Ok(broker),
                Err(error) => failed = Some(error),
            }
        }
        Err(failed.unwrap_or_else(|| anyhow::anyhow!("API_RABBITMQ_URI names no broker")))
    }

    /// Connects to node `index` of `settings.uris` (the reconnect loop walks the list
    /// round-robin). Every step is bounded: a node that accepts TCP but never finishes the
    /// handshake is a failed attempt, not a hang.
    pub(crate) async fn connect_to(settings: &BrokerSettings, index: usize, name: &str) -> anyhow::Result<Self> {
        let uri = settings
            .uris
            .get(index.checked_rem(settings.uris.len()).unwrap_or(0))
            .context("API_RABBITMQ_URI names no broker")?;
        let node = redact_uri(uri.expose_secret());
        let connecting = async {
            let connection = Connection::connect(
                uri.expose_secret(),
                ConnectionProperties::default().with_connection_name(name.into()),
            )
            .await?;
            // Listening before the publishing channel opens: lapin sends events only to
            // listeners that exist when they happen. Boxed to a `'static` stream: lapin's
            // opaque type would otherwise keep `connection` borrowed.
            let events: BoxStream<'static, Event> = Box::pin(connection.events_listener());
            let publisher = connection.create_channel().await?;
            publisher.confirm_select(ConfirmSelectOptions::default()).await?;
            Ok::<_, lapin::Error>((connection, events, publisher))
        };
        let (connection, events, publisher) = tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting)
            .await
            .map_err(|_| anyhow::anyhow!("no answer within {HANDSHAKE_TIMEOUT:?}"))
            .and_then(|connected| connected.map_err(anyhow::Error::new))
            .with_context(|| format!("could not connect to RabbitMQ at {node}"))?;
        let lost = watch_health(&connection, &publisher, events, node.clone());
        Ok(Self {
            connection,
            publisher,
            topology: settings.topology.clone(),
            node,
            lost,
        })
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The node this connection goes to, password masked: for logs and `/ready`.
    pub(crate) fn node(&self) -> &str {
        &self.node
    }

    /// Resolves once the connection or the publishing channel has failed (or the broker was
    /// closed). A channel-level error on the publishing channel (say, a publish to an exchange
    /// someone deleted) counts; one on another channel of the connection does not, its own user
    /// sees it.
    pub async fn until_unusable(&self) {
        self.lost.cancelled().await;
    }

    /// Opens a channel, bounded like the handshake: a node that stops answering turns into the
    /// ordinary reconnect path.
    pub async fn channel(&self) -> anyhow::Result<Channel> {
        tokio::time::timeout(HANDSHAKE_TIMEOUT, self.connection.create_channel())
            .await
            .map_err(|_| anyhow::anyhow!("no answer within {HANDSHAKE_TIMEOUT:?}"))
            .and_then(|opened| opened.map_err(anyhow::Error::new))
            .context("could not open a channel")
    }

    /// Declares the topology, bounded: see [`Broker::declare_topology`].
    pub(crate) async fn declare_topology_within(&self, limit: Duration) -> anyhow::Result<()> {
        tokio::time::timeout(limit, self.declare_topology())
            .await
            .map_err(|_| anyhow::anyhow!("the broker did not answer the declarations within {limit:?}"))?
    }

    /// Declares the contract's exchanges and queues and the worker's own delay tiers. Safe to
    /// run from every replica at every start: declarations with the same arguments are no-ops.
    pub async fn declare_topology(&self) -> anyhow::Result<()> {
        let t = &self.topology;
        let ch = &self.publisher;
        let exchange = |name: &str| {
            ch.exchange_declare(
                name.into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
        };
        exchange(&t.exchange)
            .await
            .with_context(|| format!("declare exchange {}", t.exchange))?;
        exchange(&t.dlx)
            .await
            .with_context(|| format!("declare exchange {}", t.dlx))?;

        let declare = |name: String, args: FieldTable| async move {
            ch.queue_declare(name.as_str().into(), durable(), args)
                .await
                .with_context(|| {
                    format!("declare queue {name} (if it exists with other arguments, delete it or align them)")
                })
        };
        let bind = |queue: String, exchange: String, key: &'static str| async move {
            ch.queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("bind {queue} to {exchange} with {key}"))
        };

        declare(
            t.jobs_queue.clone(),
            quorum_args(&[("x-dead-letter-exchange", long_string(&t.dlx))]),
        )
        .await?;
        bind(t.jobs_queue.clone(), t.exchange.clone(), "job.*").await?;
        declare(t.results_queue.clone(), quorum_args(&[])).await?;
        bind(t.results_queue.clone(), t.exchange.clone(), "result.#").await?;
        declare(t.dead_queue.clone(), quorum_args(&[])).await?;
        bind(t.dead_queue.clone(), t.dlx.clone(), "#").await?;

        for (label, ttl) in DELAY_TIERS {
            // At-least-once dead-lettering (with reject-publish overflow, which it requires)
            // so that a job waiting in a tier survives the hop back even if a node fails.
            let args = quorum_args(&[
                (
                    "x-message-ttl",
                    AMQPValue::LongLongInt(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)),
                ),
                ("x-dead-letter-exchange", long_string("")),
                ("x-dead-letter-routing-key", long_string(&t.jobs_queue)),
                ("x-dead-letter-strategy", long_string("at-least-once")),
                ("x-overflow", long_string("reject-publish")),
            ]);
            declare(delay_queue(t, label), args).await?;
        }
        Ok(())
    }

    /// A channel for consuming jobs, with the given prefetch.
    pub(crate) async fn jobs_channel(&self, prefetch: u16) -> anyhow::Result<Channel> {
        let channel = self.channel().await?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .context("set prefetch")?;
        Ok(channel)
    }

    /// A consumer on the jobs queue with manual acks.
    pub(crate) async fn consume_jobs(&self, channel: &Channel, tag: &str) -> anyhow::Result<Consumer> {
        channel
            .basic_consume(
                self.topology.jobs_queue.as_str().into(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("consume {}", self.topology.jobs_queue))
    }

    /// A server-named queue private to this connection (exclusive, deleted with it), optionally
    /// bound to a fanout exchange, with an auto-ack consumer: what it receives is for this process
    /// alone (pause broadcasts, replies to `submit --wait`). Returns the channel (keep it open),
    /// the queue's name and the consumer.
    pub async fn private_consumer(&self, bind_to: Option<&str>) -> anyhow::Result<(Channel, String, Consumer)> {
        let channel = self.channel().await?;
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .context("declare a private queue")?;
        if let Some(exchange) = bind_to {
            channel
                .queue_bind(
                    queue.name().clone(),
                    exchange.into(),
                    "".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .with_context(|| format!("bind a private queue to {exchange}"))?;
        }
        let consumer = channel
            .basic_consume(
                queue.name().clone(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .context("consume a private queue")?;
        Ok((channel, queue.name().as_str().to_owned(), consumer))
    }

    /// Publishes and waits for the broker's confirm.
    pub async fn publish_confirmed(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> anyhow::Result<()> {
        let publishing = async {
            self.publisher
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions::default(),
                    body,
                    properties,
                )
                .await
                .with_context(|| format!("publish to exchange `{exchange}` with key `{routing_key}`"))?
                .await
                .with_context(|| format!("confirm of a publish to `{exchange}`/`{routing_key}`"))
        };
        let confirm = tokio::time::timeout(CONFIRM_TIMEOUT, publishing).await.map_err(|_| {
            anyhow::anyhow!("no confirm within {CONFIRM_TIMEOUT:?} for a publish to `{exchange}`/`{routing_key}`")
        })??;
        match confirm {
            Confirmation::Ack(_) | Confirmation::NotRequested => Ok(()),
            Confirmation::Nack(_) => Err(anyhow::Error::new(Refused).context(format!(
                "the broker refused (nack) a publish to `{exchange}`/`{routing_key}`"
            ))),
        }
    }

    /// Publishes a result to the results exchange and, when the job asked for it, to its
    /// `reply_to` queue; returns once the broker confirmed both.
    pub(crate) async fn publish_result(&self, result: &ReviewResult, job: &Envelope) -> anyhow::Result<()> {
        let body = serde_json::to_vec(result).context("serialise result")?;
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(short_string(&format!("{}:result", result.job_id)))
            .with_correlation_id(short_string(&job.correlation_id(&result.job_id)))
            .with_timestamp(u64::try_from(Utc::now().timestamp()).unwrap_or(0));
        let main = self.publish_confirmed(&self.topology.exchange, result.routing_key(), &body, properties.clone());
        match job.reply_to() {
            Some(reply_to) => {
                let reply = self.publish_confirmed("", reply_to, &body, properties);
                let (main, reply) = tokio::join!(main, reply);
                main?;
                reply
            }
            None => main.await,
        }
    }

    /// Dead-letters a job body with the contract's headers; the original body and properties
    /// are kept so that replaying is publishing the body again.
    pub(crate) async fn dead_letter(
        &self,
        body: &[u8],
        job: &Envelope,
        kind: DeadKind,
        message: &str,
        attempts: u32,
    ) -> anyhow::Result<()> {
        let properties = job.with_headers(&[
            (headers::ERROR_KIND, long_string(kind.as_str())),
            (headers::ERROR_MESSAGE, long_string(&one_line(message))),
            (headers::ATTEMPTS, AMQPValue::LongLongInt(i64::from(attempts))),
            (headers::FAILED_AT, long_string(&rfc3339(Utc::now()))),
        ]);
        let routing_key = if job.routing_key.is_empty() {
            "job.dead"
        } else {
            &job.routing_key
        };
        self.publish_confirmed(&self.topology.dlx, routing_key, body, properties)
            .await
    }

    /// Puts a job back to wait `delay` (capped at 7 days) with its counters written to its
    /// headers, through the delay tiers. The caller acks the original only after this returns:
    /// republish-then-ack keeps the quorum queue's delivery count (and any delivery limit) out
    /// of it.
    pub(crate) async fn requeue_later(
        &self,
        body: &[u8],
        job: &Envelope,
        counters: Counters,
        delay: Duration,
        progress: Option<AMQPValue>,
    ) -> anyhow::Result<()> {
        let delay = delay.min(MAX_DELAY);
        let now = Utc::now();
        // Seven days at most: the sum cannot overflow, but a wrong clock is no reason to panic.
        let not_before = chrono::TimeDelta::from_std(delay)
            .ok()
            .and_then(|delay| now.checked_add_signed(delay))
            .unwrap_or(now);
        let mut changes = vec![
            (headers::ATTEMPTS, AMQPValue::LongLongInt(i64::from(counters.attempts))),
            (
                headers::PUBLISH_FAILURES,
                AMQPValue::LongLongInt(i64::from(counters.publish_failures)),
            ),
            (
                headers::INTERNAL_ERRORS,
                AMQPValue::LongLongInt(i64::from(counters.internal_errors)),
            ),
            (
                headers::NOT_BEFORE,
                AMQPValue::LongLongInt(not_before.timestamp_millis()),
            ),
            (headers::FIRST_SEEN, first_seen(job)),
        ];
        changes.extend(progress.map(|progress| (headers::PROGRESS, progress)));
        let properties = job.with_headers(&changes);
        self.delay_publish(body, properties, delay).await
    }

    /// Sends a job that came back early round another tier. Its headers stay as they are, but
    /// for a first-seen time when it has none: a producer's not-before alone must not let a job
    /// hop past its maximum age.
    pub(crate) async fn hop(&self, body: &[u8], job: &Envelope, remaining: Duration) -> anyhow::Result<()> {
        let properties = job.with_headers(&[(headers::FIRST_SEEN, first_seen(job))]);
        self.delay_publish(body, properties, remaining).await
    }

    async fn delay_publish(&self, body: &[u8], properties: BasicProperties, delay: Duration) -> anyhow::Result<()> {
        let (label, _) = tier_for(delay);
        self.publish_confirmed("", &delay_queue(&self.topology, label), body, properties)
            .await
    }

    pub async fn close(&self) {
        // A clean close sends no event; the broker is unusable from now on all the same.
        self.lost.cancel();
        let _ = self.publisher.close(200, "bye".into()).await;
        let _ = self.connection.close(200, "bye".into()).await;
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.lost.cancel();
    }
}

/// Starts the task that turns lapin's connection events into the broker's health: the returned
/// token is cancelled on the first error event after which the connection or the publishing
/// channel no longer works. lapin emits an error event for every way a connection fails (a lost
/// socket, a missed heartbeat, a close forced by the broker) and for a channel the broker closes
/// with an error; errors of other channels on the connection leave the broker usable. The task
/// ends with the token.
fn watch_health(
    connection: &Connection,
    publisher: &Channel,
    mut events: BoxStream<'static, Event>,
    node: String,
) -> CancellationToken {
    let lost = CancellationToken::new();
    let (connection, publisher) = (connection.status().clone(), publisher.status().clone());
    let usable = move || connection.connected() && publisher.connected();
    let watcher = lost.clone();
    tokio::spawn(async move {
        // A failure before the listener existed sent no event; the state shows it.
        if usable() {
            loop {
                let event = tokio::select! {
                    () = watcher.cancelled() => return,
                    event = events.next() => event,
                };
                match event {
                    Some(Event::Error(error)) if !usable() => {
                        warn!(node = %node, "the RabbitMQ connection to {node} failed: {error}");
                        break;
                    }
                    Some(_) => {}
                    None => break,
                }
            }
        }
        watcher.cancel();
    });
    lost
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_pick_the_longest_tier_that_does_not_overshoot() {
        assert_eq!(tier_for(Duration::from_millis(200)).0, "1s");
        assert_eq!(tier_for(Duration::from_secs(4)).0, "1s");
        assert_eq!(tier_for(Duration::from_secs(5)).0, "5s");
        assert_eq!(tier_for(Duration::from_secs(3 * 3600)).0, "1h");
        assert_eq!(tier_for(Duration::from_secs(7 * 86_400)).0, "1d");
    }

    #[test]
    fn delay_queues_name_every_tier_in_the_namespace_shortest_first() {
        let topology = Topology::with_namespace("ns");
        let queues: Vec<String> = delay_queues(&topology).collect();
        assert_eq!(queues.len(), DELAY_TIERS.len());
        assert_eq!(queues.first().map(String::as_str), Some("ns.retry.1s"));
        assert_eq!(queues.last().map(String::as_str), Some("ns.retry.1d"));
    }

    #[test]
    fn the_correlation_id_falls_back_from_correlation_to_message_id_to_job_id() {
        let envelope = |props: BasicProperties| Envelope {
            routing_key: "job.created".into(),
            properties: props,
        };
        assert_eq!(envelope(BasicProperties::default()).correlation_id("j"), "j");
        assert_eq!(
            envelope(BasicProperties::default().with_message_id("m".into())).correlation_id("j"),
            "m"
        );
        let both = BasicProperties::default()
            .with_message_id("m".into())
            .with_correlation_id("c".into());
        assert_eq!(envelope(both).correlation_id("j"), "c");
    }

    #[test]
    fn short_strings_are_cut_to_255_bytes_on_a_character_boundary() {
        let id = "é".repeat(200);
        let cut = short_string(&format!("{id}:result"));
        assert!(cut.as_str().len() <= 255);
        assert!(cut.as_str().chars().all(|c| c == 'é'));
        assert_eq!(short_string("job-1:result").as_str(), "job-1:result");
    }

    #[test]
    fn headers_are_read_whatever_integer_type_the_producer_used() {
        let mut table = FieldTable::default();
        table.insert(headers::ATTEMPTS.into(), AMQPValue::LongInt(3));
        table.insert(headers::NOT_BEFORE.into(), long_string("1700000000000"));
        let envelope = Envelope {
            routing_key: String::new(),
            properties: BasicProperties::default().with_headers(table),
        };
        assert_eq!(envelope.header_u64(headers::ATTEMPTS), Some(3));
        assert_eq!(envelope.header_u64(headers::NOT_BEFORE), Some(1_700_000_000_000));
    }
}
