//! Holding the plan's limits for the whole deployment, on RabbitMQ itself: which replica may
//! call the provider (the leader), and the pause log that tells every replica, including one
//! that starts in the middle of a quota window, whether a provider is paused and until when.
//!
//! **Leadership.** `{ns}.leadership` is a quorum queue (replicated, so it outlives any one node
//! of a three-node cluster) with `x-single-active-consumer`. Every replica subscribes to it and
//! publishes a token; the broker delivers tokens only to the one active consumer, so the replica
//! that receives a token is the leader, and only the leader consumes `review.jobs`, with the
//! plan's cap as its in-flight limit. When the leader dies (even `kill -9`, or with its node) its
//! consumer goes, the broker makes the next subscriber active and hands it the token along with
//! the dead leader's unacked jobs.
//!
//! The leader renews its token every minute by publishing a fresh one and then acking the one it
//! holds: the broker's consumer timeout never fires, and, unlike a requeue, nothing counts toward
//! a quorum queue's delivery limit. It watches its subscription all the time: a cancel from the
//! broker (the queue deleted, its node lost), a closed channel or a closed connection ends its
//! leadership at once, and the worker aborts its provider calls before doing anything else. A new
//! leader waits [`TAKEOVER_GRACE`] before its first call, the time a replica that lost the token
//! through a closed connection takes to notice and abort, so the two never overlap.
//!
//! **Pauses.** `{ns}.pauses` is a stream (replicated too): the leader appends every pause and
//! resume of a provider, and every replica reads it from the start, so the latest entry per
//! provider is the state. A replica that starts or reconnects appends a marker and reads up to it
//! before it may lead: it learns a pause before it could spend a call on an exhausted window,
//! even when every replica restarted during the window. Entries older than eight days (a weekly
//! window and a margin) are dropped by the stream's retention.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use chrono::Utc;
use futures_util::StreamExt as _;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Consumer};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{Instrument as _, Span, info, warn};

use crate::broker::Broker;
use crate::executor::{Executor, Lane};
use crate::limits::Pause;

/// How often the leader renews its token, well under RabbitMQ's default 30-minute consumer
/// timeout.
const TOKEN_RENEWAL: Duration = Duration::from_secs(60);

/// How long a new leader waits before its first call. A leader that loses its token through a
/// closed connection learns it from its own socket, while the broker may hand the token on a
/// moment earlier; this covers the difference (measured in the README) with a wide margin, and
/// adds one second to a failover that takes several anyway.
pub(crate) const TAKEOVER_GRACE: Duration = Duration::from_secs(1);

/// How long a replica reads the pause log for its own marker before giving up on this
/// connection (the stream is small: one entry per pause or resume, eight days at most).
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(20);

/// One entry of the pause log.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "entry", rename_all = "snake_case")]
enum Entry {
    /// A replica's marker: once it reads its own back, it has read every earlier entry.
    Marker {
        from: String,
    },
    Pause {
        from: String,
        lane: String,
        pause: Pause,
    },
    Resume {
        from: String,
        lane: String,
    },
}

/// This replica's part in the deployment: whether it leads, and the tasks that keep it so.
#[derive(Debug)]
pub(crate) struct Coordination {
    leader: watch::Receiver<bool>,
    tasks: JoinSet<anyhow::Result<()>>,
    /// Kept open while leading: closing it hands leadership on.
    leader_channel: Channel,
    log_channel: Channel,
}

impl Coordination {
    /// Declares the leadership queue and the pause log, reads the log up to now, campaigns for
    /// leadership and starts relaying pauses. Fails when the broker refuses; later failures
    /// surface in `failed`.
    pub(crate) async fn start(broker: &Arc<Broker>, executor: &Executor, replica: &str) -> anyhow::Result<Self> {
        let lanes: Vec<Lane> = executor.lanes().cloned().collect();
        let (log_channel, log) = PauseLog::open(broker).await?;
        let mut entries = log.catch_up(&log_channel, broker, replica, &lanes).await?;

        let leadership = broker.topology().own("leadership");
        let channel = broker.channel().await?;
        let args = queue_args(&[
            ("x-queue-type", text("quorum")),
            ("x-single-active-consumer", AMQPValue::Boolean(true)),
            // Tokens pile up by one per replica start; a few are plenty.
            ("x-max-length", AMQPValue::LongInt(8)),
        ]);
        channel
            .queue_declare(leadership.as_str().into(), durable(), args)
            .await
            .with_context(|| format!("declare {leadership}"))?;
        // Make sure a token exists; surplus tokens are harmless (only the leader receives any).
        publish_token(broker, &leadership).await?;
        channel
            .basic_qos(1, BasicQosOptions::default())
            .await
            .context("leadership prefetch")?;
        let tokens = channel
            .basic_consume(
                leadership.as_str().into(),
                replica.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("subscribe to {leadership}"))?;

        let (leader_tx, leader) = watch::channel(false);
        let mut tasks = JoinSet::new();
        // Tasks carry the caller's span, so their lines name the broker node too.
        tasks.spawn(hold_token(tokens, broker.clone(), leadership, leader_tx).instrument(Span::current()));

        let me = replica.to_owned();
        tasks.spawn(
            {
                let lanes = lanes.clone();
                async move {
                    while let Some(delivery) = entries.next().await {
                        let delivery = delivery.context("the pause log subscription failed")?;
                        if let Some(entry) = PauseLog::read(&delivery).await?
                            && entry.from() != me
                        {
                            apply(&lanes, &entry, true);
                        }
                    }
                    bail!("the broker cancelled the pause log subscription")
                }
            }
            .instrument(Span::current()),
        );
        for lane in lanes {
            let broker = broker.clone();
            let from = replica.to_owned();
            let leading = leader.clone();
            let log = log.clone();
            tasks.spawn(
                async move {
                    let mut changes = lane.pause.subscribe();
                    while changes.changed().await.is_ok() {
                        // Only the leader calls the provider, so only its changes are news.
                        if !*leading.borrow() {
                            continue;
                        }
                        let lane_label = lane.label().to_owned();
                        let entry = match changes.borrow_and_update().clone() {
                            Some(pause) => Entry::Pause {
                                from: from.clone(),
                                lane: lane_label,
                                pause,
                            },
                            None => Entry::Resume {
                                from: from.clone(),
                                lane: lane_label,
                            },
                        };
                        if let Err(error) = log.append(&broker, &entry).await {
                            warn!("could not write a pause change to the pause log: {error:#}");
                        }
                    }
                    Ok(())
                }
                .instrument(Span::current()),
            );
        }

        Ok(Self {
            leader,
            tasks,
            leader_channel: channel,
            log_channel,
        })
    }

    pub(crate) fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// Resolves when this replica becomes the leader.
    pub(crate) async fn until_leader(&mut self) -> anyhow::Result<()> {
        while !*self.leader.borrow_and_update() {
            tokio::select! {
                changed = self.leader.changed() => changed.context("leadership watch closed")?,
                failed = self.tasks.join_next() => return Err(task_error(failed)),
            }
        }
        Ok(())
    }

    /// Resolves with the error when any coordination task fails: the token is lost, or the
    /// connection is gone.
    pub(crate) async fn failed(&mut self) -> anyhow::Error {
        let joined = self.tasks.join_next().await;
        task_error(joined)
    }

    /// Gives up leadership (after the reviews in flight are done) and stops the tasks.
    pub(crate) async fn release(mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        let _ = self.leader_channel.close(200, "leaving".into()).await;
        let _ = self.log_channel.close(200, "leaving".into()).await;
    }
}

/// The token task: waits for a token, leads after the grace, renews, and ends (with an error)
/// the moment the subscription is cancelled, its channel or its connection closes.
async fn hold_token(
    mut tokens: Consumer,
    broker: Arc<Broker>,
    leadership: String,
    leader: watch::Sender<bool>,
) -> anyhow::Result<()> {
    let lost = |leader: &watch::Sender<bool>, why: &str| {
        if leader.send_replace(false) {
            warn!("lost the leadership ({why}): provider calls stop now; another replica takes over");
        }
    };
    let mut held: Option<Delivery> = None;
    let mut renewal = tokio::time::interval(TOKEN_RENEWAL);
    renewal.reset();
    loop {
        tokio::select! {
            next = tokens.next() => {
                let delivery = match next {
                    Some(Ok(delivery)) => delivery,
                    Some(Err(error)) => {
                        lost(&leader, "the leadership subscription failed");
                        return Err(error).context("the leadership subscription failed");
                    }
                    None => {
                        lost(&leader, "the broker cancelled the leadership subscription");
                        bail!("the broker cancelled the leadership subscription");
                    }
                };
                if !*leader.borrow() {
                    // Prefetch 1: nothing else arrives while we hold this token, so anything
                    // from the subscription during the grace is its end.
                    tokio::select! {
                        () = tokio::time::sleep(TAKEOVER_GRACE) => {}
                        next = tokens.next() => {
                            let why = match next {
                                Some(Err(error)) => format!("the leadership subscription failed: {error}"),
                                _ => "the broker cancelled the leadership subscription".to_owned(),
                            };
                            bail!("{why} before this replica started leading");
                        }
                    }
                    info!("this replica is now the leader: it consumes jobs for the deployment");
                    leader.send_replace(true);
                }
                held = Some(delivery);
            }
            _ = renewal.tick(), if held.is_some() => {
                // A fresh token first, so that the queue is never without one; acking the old
                // one makes the broker deliver the next token, to us (still the active consumer).
                if let Err(error) = publish_token(&broker, &leadership).await {
                    lost(&leader, "could not renew the token");
                    return Err(error);
                }
                if let Some(old) = held.take()
                    && let Err(error) = old.acker.ack(BasicAckOptions::default()).await
                {
                    lost(&leader, "could not renew the token");
                    return Err(error).context("ack the old leadership token");
                }
            }
        }
    }
}

async fn publish_token(broker: &Broker, leadership: &str) -> anyhow::Result<()> {
    broker
        .publish_confirmed(
            "",
            leadership,
            b"leader-token",
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .context("publish a leadership token")
}

/// The pause log: a stream every replica reads from its first entry.
#[derive(Debug, Clone)]
struct PauseLog {
    stream: String,
}

impl PauseLog {
    /// Declares the stream; returns the channel to read it on.
    async fn open(broker: &Broker) -> anyhow::Result<(Channel, Self)> {
        let stream = broker.topology().own("pauses");
        let channel = broker.channel().await?;
        let args = queue_args(&[
            ("x-queue-type", text("stream")),
            ("x-max-age", text("8D")),
            // Retention drops whole segments; small ones keep the log small.
            ("x-stream-max-segment-size-bytes", AMQPValue::LongInt(1_000_000)),
        ]);
        channel
            .queue_declare(stream.as_str().into(), durable(), args)
            .await
            .with_context(|| format!("declare {stream}"))?;
        // A stream consumer needs a prefetch and acks to keep entries coming.
        channel
            .basic_qos(100, BasicQosOptions::default())
            .await
            .context("pause log prefetch")?;
        Ok((channel, Self { stream }))
    }

    /// Subscribes from the first entry, appends this replica's marker and applies every entry
    /// up to it. Returns the subscription, positioned after the marker.
    async fn catch_up(
        &self,
        channel: &Channel,
        broker: &Broker,
        replica: &str,
        lanes: &[Lane],
    ) -> anyhow::Result<Consumer> {
        let mut entries = channel
            .basic_consume(
                self.stream.as_str().into(),
                format!("{replica}-pauses").as_str().into(),
                BasicConsumeOptions::default(),
                queue_args(&[("x-stream-offset", text("first"))]),
            )
            .await
            .with_context(|| format!("read {}", self.stream))?;
        self.append(
            broker,
            &Entry::Marker {
                from: replica.to_owned(),
            },
        )
        .await?;
        let caught_up = async {
            while let Some(delivery) = entries.next().await {
                let delivery = delivery.context("the pause log subscription failed")?;
                match PauseLog::read(&delivery).await? {
                    Some(Entry::Marker { from }) if from == replica => return Ok(()),
                    Some(entry) => apply(lanes, &entry, false),
                    None => {}
                }
            }
            bail!("the broker cancelled the pause log subscription")
        };
        tokio::time::timeout(CATCH_UP_TIMEOUT, caught_up)
            .await
            .map_err(|_| anyhow::anyhow!("did not read the pause log up to now within {CATCH_UP_TIMEOUT:?}"))??;
        for lane in lanes {
            if let Some(pause) = lane.pause.current() {
                let (provider, model) = (lane.provider.name(), lane.provider.model());
                info!(provider, model, lane = lane.label(), code = %pause.code, paused_until = %review_core::contract::rfc3339(pause.until), "the pause log says {provider} {model} ({}) is paused: {} (code {})", lane.label(), pause.reason, pause.code);
            }
        }
        Ok(entries)
    }

    async fn append(&self, broker: &Broker, entry: &Entry) -> anyhow::Result<()> {
        let body = serde_json::to_vec(entry).context("serialise a pause log entry")?;
        broker
            .publish_confirmed(
                "",
                &self.stream,
                &body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .context("append to the pause log")
    }

    /// Acks an entry (a stream needs it for credit) and reads it; entries this version does not
    /// understand are skipped.
    async fn read(delivery: &Delivery) -> anyhow::Result<Option<Entry>> {
        delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .context("ack a pause log entry")?;
        Ok(serde_json::from_slice(&delivery.data).ok())
    }
}

impl Entry {
    fn from(&self) -> &str {
        match self {
            Self::Marker { from } | Self::Pause { from, .. } | Self::Resume { from, .. } => from,
        }
    }
}

/// Applies a leader's pause or resume to this replica's lanes. Pauses already over are skipped,
/// so reading old entries leaves only what is still in force.
fn apply(lanes: &[Lane], entry: &Entry, log: bool) {
    let (lane_label, pause) = match entry {
        Entry::Marker { .. } => return,
        Entry::Pause { lane, pause, .. } => (lane, Some(pause)),
        Entry::Resume { lane, .. } => (lane, None),
    };
    let Some(lane) = lanes.iter().find(|l| l.label() == lane_label) else {
        return;
    };
    let (provider, model) = (lane.provider.name(), lane.provider.model());
    match pause {
        Some(p) if p.needs_probe || p.until > Utc::now() => {
            if lane.pause.pause(p.clone()) && log {
                info!(provider, model, lane = %lane_label, code = %p.code, paused_until = %review_core::contract::rfc3339(p.until), "the leader paused {provider} {model} ({lane_label}): {} (code {})", p.reason, p.code);
            }
        }
        Some(_) => {}
        None => {
            if lane.pause.resume().is_some() && log {
                info!(provider, model, lane = %lane_label, "the leader resumed {provider} {model} ({lane_label})");
            }
        }
    }
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes().to_vec()))
}

fn queue_args(args: &[(&str, AMQPValue)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (name, value) in args {
        table.insert((*name).into(), value.clone());
    }
    table
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

fn task_error(joined: Option<Result<anyhow::Result<()>, tokio::task::JoinError>>) -> anyhow::Error {
    match joined {
        Some(Ok(Err(error))) => error,
        Some(Ok(Ok(()))) => anyhow::anyhow!("a coordination task ended"),
        Some(Err(error)) => anyhow::anyhow!("a coordination task panicked: {error}"),
        None => anyhow::anyhow!("no coordination task is running"),
    }
}

/// This process's identity among the replicas: the host name (the pod's name in Kubernetes, the
/// container id in Docker) and a random part, because every container's process is PID 1 and
/// two pods can share a host name across namespaces.
pub(crate) fn replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "review-worker".to_owned());
    format!("{host}-{:08x}", fastrand::u32(..))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_ids_name_the_host_and_differ_between_processes_on_it() {
        let (a, b) = (replica_id(), replica_id());
        assert_ne!(a, b);
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        assert!(a.starts_with(host.trim()), "{a} does not start with {host}");
        assert_eq!(a.rsplit('-').next().map(str::len), Some(8));
    }

    #[test]
    fn pause_log_entries_are_tagged_json_that_reads_back() {
        let entry = Entry::Pause {
            from: "r1".into(),
            lane: "main".into(),
            pause: Pause {
                until: Utc::now() - chrono::Duration::seconds(5),
                code: "1308".into(),
                reason: "5-hour quota exhausted".into(),
                needs_probe: false,
            },
        };
        let json = serde_json::to_string(&entry).unwrap();
        assert!(json.contains(r#""entry":"pause""#), "{json}");
        let back: Entry = serde_json::from_str(&json).unwrap();
        assert_eq!(back.from(), "r1");
    }
}
