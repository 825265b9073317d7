//! `review-worker submit`: publishes jobs the way the API container does and, with `--wait`,
//! waits for each result on a private `reply_to` queue.

use std::time::Duration;

use anyhow::{Context as _, bail};
use futures_util::StreamExt as _;
use lapin::BasicProperties;
use serde_json::Value;

use crate::broker::Broker;
use crate::settings::BrokerSettings;
use review_core::contract::ReviewResult;

/// Publishes each job (file path, or `-` for stdin) with routing key `job.created`; with `wait`,
/// returns the results in the order they arrive.
pub(crate) async fn submit(
    settings: &BrokerSettings,
    jobs: &[String],
    wait: Option<Duration>,
) -> anyhow::Result<Vec<ReviewResult>> {
    let broker = Broker::connect(settings, "review-worker-submit").await?;
    // Declaring is idempotent and means a job submitted before any worker started is kept.
    broker.declare_topology().await?;
    let mut reply = match wait {
        Some(_) => Some(broker.private_consumer(None).await.context("the private reply queue")?),
        None => None,
    };

    let mut ids = Vec::new();
    for path in jobs {
        let body = if path == "-" {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).context("read the job from stdin")?;
            text.into_bytes()
        } else {
            std::fs::read(path).with_context(|| format!("read {path}"))?
        };
        let job_id = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get("job_id").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_default();
        let mut properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        if !job_id.is_empty() {
            properties = properties.with_message_id(job_id.as_str().into());
        }
        if let Some((_, name, _)) = &reply {
            properties = properties.with_reply_to(name.as_str().into());
        }
        broker
            .publish_confirmed(&settings.topology.exchange, "job.created", &body, properties)
            .await?;
        tracing::info!(job_id = %job_id, "submitted {path}");
        ids.push(job_id);
    }

    let mut results = Vec::new();
    if let (Some(timeout), Some((_, _, consumer))) = (wait, reply.as_mut()) {
        // A wait too long to add to the clock is as good as no deadline.
        let deadline = tokio::time::Instant::now().checked_add(timeout);
        while results.len() < ids.len() {
            let next = consumer.next();
            let next = match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, next).await,
                None => Ok(next.await),
            };
            let delivery = match next {
                Ok(Some(delivery)) => delivery.context("reply queue")?,
                Ok(None) => bail!("the reply queue closed"),
                Err(_) => bail!(
                    "no result within {}s for {} of {} job(s); is a worker running?",
                    timeout.as_secs(),
                    ids.len().saturating_sub(results.len()),
                    ids.len()
                ),
            };
            let result: ReviewResult = serde_json::from_slice(&delivery.data).context("read a result")?;
            results.push(result);
        }
    }
    broker.close().await;
    Ok(results)
}
