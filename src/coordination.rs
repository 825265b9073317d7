//! Holding the plan's limits for the whole deployment, on RabbitMQ itself: which replica may
//! call the provider (the leader), and pause broadcasts so that every replica knows when the
//! provider is paused and until when.
//!
//! **Leadership.** `{ns}.leader` is a classic queue with `x-single-active-consumer`. Every
//! replica subscribes to it and publishes a token; the broker delivers tokens only to the one
//! active consumer, so the replica that receives a token is the leader, and only the leader
//! consumes `review.jobs`, with the plan's cap as its in-flight limit. The cap therefore holds
//! across any number of replicas. When the leader dies (even `kill -9`) its connection closes,
//! the broker makes the next subscriber active and hands it the token, along with the dead
//! leader's unacked jobs: failover takes as long as the broker takes to notice the closed
//! socket (immediate for a killed process, up to the heartbeat timeout for a network cut).
//! The token is never acked; every few minutes the leader rejects it with requeue and gets it
//! straight back (it is still the active consumer), which keeps the broker's consumer timeout
//! from firing. A classic queue, because quorum queues count requeues toward a delivery limit.
//!
//! **Pauses.** `{ns}.control` is a fanout exchange; each replica binds a private queue to it. The
//! leader broadcasts every pause and resume of a provider; the others apply them, so that `/ready`
//! says "paused until …" everywhere and a replica that takes over mid-pause does not spend a call
//! on an exhausted window.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use futures_util::StreamExt as _;
use lapin::options::{
    BasicConsumeOptions, BasicQosOptions, BasicRejectOptions, ExchangeDeclareOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, ExchangeKind};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::broker::Broker;
use crate::executor::{Executor, Lane};
use crate::limits::Pause;

/// How often the leader cycles its token, well under RabbitMQ's default 30-minute consumer timeout.
const TOKEN_RENEWAL: Duration = Duration::from_secs(300);

/// A pause or resume, as broadcast on the control exchange.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PauseEvent {
    /// The replica that sent it (its own events are not applied twice).
    from: String,
    /// `main` or `fallback`.
    lane: String,
    /// `None` for a resume.
    pause: Option<WirePause>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct WirePause {
    until: DateTime<Utc>,
    code: String,
    reason: String,
    needs_probe: bool,
}

/// This replica's part in the deployment: whether it leads, and the tasks that keep it so.
#[derive(Debug)]
pub(crate) struct Coordination {
    leader: watch::Receiver<bool>,
    tasks: JoinSet<anyhow::Result<()>>,
    /// Kept open while leading: closing it hands leadership on.
    leader_channel: Channel,
}

impl Coordination {
    /// Declares the leader queue and control exchange, campaigns for leadership and starts
    /// relaying pauses. Fails when the broker refuses; later failures surface in `failed`.
    pub(crate) async fn start(broker: &Arc<Broker>, executor: &Executor, replica: &str) -> anyhow::Result<Self> {
        let topology = broker.topology();
        let leader_queue = topology.own("leader");
        let control = topology.own("control");

        let channel = broker.channel().await?;
        let mut args = FieldTable::default();
        args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(LongString::from("classic")),
        );
        // Tokens pile up by one per replica start; a few are plenty.
        args.insert("x-max-length".into(), AMQPValue::LongInt(8));
        channel
            .queue_declare(
                leader_queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args,
            )
            .await
            .with_context(|| format!("declare {leader_queue}"))?;
        channel
            .exchange_declare(
                control.as_str().into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("declare {control}"))?;

        // Make sure a token exists; surplus tokens are harmless (only the leader receives any).
        broker
            .publish_confirmed(
                "",
                &leader_queue,
                b"leader-token",
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .context("publish a leader token")?;
        channel
            .basic_qos(1, BasicQosOptions::default())
            .await
            .context("leader prefetch")?;
        let mut tokens = channel
            .basic_consume(
                leader_queue.as_str().into(),
                replica.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("subscribe to {leader_queue}"))?;

        let (leader_tx, leader) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            while let Some(delivery) = tokens.next().await {
                let delivery = delivery.context("the leader subscription failed")?;
                if !*leader_tx.borrow() {
                    info!("this replica is now the leader: it consumes jobs for the deployment");
                    leader_tx.send_replace(true);
                }
                tokio::time::sleep(TOKEN_RENEWAL).await;
                // Back to the queue and, since we are still the active consumer, back to us.
                delivery
                    .acker
                    .reject(BasicRejectOptions { requeue: true })
                    .await
                    .context("renew the leader token")?;
            }
            anyhow::bail!("the leader subscription ended")
        });

        // Pauses: listen on a private queue, and broadcast this replica's own changes.
        let (listen, _, mut events) = broker
            .private_consumer(Some(&control))
            .await
            .context("listen for pause broadcasts")?;
        let lanes: Vec<Lane> = executor.lanes().cloned().collect();
        let me = replica.to_owned();
        tasks.spawn({
            let lanes = lanes.clone();
            async move {
                let _listen = listen;
                while let Some(delivery) = events.next().await {
                    let delivery = delivery.context("the control subscription failed")?;
                    let Ok(event) = serde_json::from_slice::<PauseEvent>(&delivery.data) else { continue };
                    if event.from == me {
                        continue;
                    }
                    let Some(lane) = lanes.iter().find(|l| l.label() == event.lane) else { continue };
                    match event.pause {
                        Some(p) => {
                            if lane.pause.pause(Pause { until: p.until, code: p.code.clone(), reason: p.reason.clone(), needs_probe: p.needs_probe }) {
                                let (provider, model) = (lane.provider.name(), lane.provider.model());
                                info!(provider, model, lane = %event.lane, code = %p.code, paused_until = %crate::contract::rfc3339(p.until), "the leader paused {provider} {model} ({}): {} (code {})", event.lane, p.reason, p.code);
                            }
                        }
                        None => {
                            if lane.pause.resume().is_some() {
                                let (provider, model) = (lane.provider.name(), lane.provider.model());
                                info!(provider, model, lane = %event.lane, "the leader resumed {provider} {model} ({})", event.lane);
                            }
                        }
                    }
                }
                anyhow::bail!("the control subscription ended")
            }
        });
        for lane in lanes {
            let broker = broker.clone();
            let control = control.clone();
            let from = replica.to_owned();
            let leading = leader.clone();
            tasks.spawn(async move {
                let mut changes = lane.pause.subscribe();
                while changes.changed().await.is_ok() {
                    // Only the leader calls the provider, so only its changes are news.
                    if !*leading.borrow() {
                        continue;
                    }
                    let pause = changes.borrow_and_update().clone();
                    let event = PauseEvent {
                        from: from.clone(),
                        lane: lane.label().to_owned(),
                        pause: pause.map(|p| WirePause {
                            until: p.until,
                            code: p.code,
                            reason: p.reason,
                            needs_probe: p.needs_probe,
                        }),
                    };
                    let body = serde_json::to_vec(&event).context("serialise a pause event")?;
                    if let Err(error) = broker
                        .publish_confirmed(&control, "", &body, BasicProperties::default())
                        .await
                    {
                        warn!("could not broadcast a pause change: {error:#}");
                    }
                }
                Ok(())
            });
        }

        Ok(Self {
            leader,
            tasks,
            leader_channel: channel,
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

    /// Resolves with the error when any coordination task fails (the connection is gone).
    pub(crate) async fn failed(&mut self) -> anyhow::Error {
        let joined = self.tasks.join_next().await;
        task_error(joined)
    }

    /// Gives up leadership (after the reviews in flight are done) and stops the tasks.
    pub(crate) async fn release(mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        let _ = self.leader_channel.close(200, "leaving".into()).await;
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
