//! `review-worker submit`: publishes jobs the way the API container does and, with `--wait`,
//! waits for each result on a private `reply_to` queue, and keeps what each job says of its PR
//! (name, URL, head commit) for printing the result as the PR comment.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures_util::StreamExt as _;
use lapin::BasicProperties;
use serde_json::Value;

use crate::broker::Broker;
use crate::settings::BrokerSettings;
use review_core::contract::ReviewResult;
use review_core::render::Links;

/// A result and the PR its job was about.
#[derive(Debug)]
pub struct Submitted {
    pub result: ReviewResult,
    /// `owner/repo#42: title`, when the job said.
    pub pr: Option<String>,
    /// Where the suggestions' lines are, when the job gave the PR's URL and head commit.
    pub links: Option<Links>,
}

/// What a job body says of its PR, read leniently: `submit` publishes whatever it is given (an
/// invalid job is the worker's to refuse), so a field it cannot read just goes without.
fn pr_of(job: &Value) -> (Option<String>, Option<Links>) {
    let text = |pointer: &str| job.pointer(pointer).and_then(Value::as_str);
    let pr = text("/repository/full_name").map(|repository| {
        let mut pr = repository.to_owned();
        if let Some(number) = job.pointer("/pull_request/number").and_then(Value::as_u64) {
            pr.push_str(&format!("#{number}"));
        }
        if let Some(title) = text("/pull_request/title") {
            pr.push_str(&format!(": {title}"));
        }
        pr
    });
    let links = text("/pull_request/url")
        .zip(text("/pull_request/head_sha"))
        .and_then(|(url, sha)| Links::new(url, sha, text("/repository/platform")));
    (pr, links)
}

/// Publishes each job (file path, or `-` for stdin) with routing key `job.created`; with `wait`,
/// returns the results in the order they arrive.
pub(crate) async fn submit(
    settings: &BrokerSettings,
    jobs: &[String],
    wait: Option<Duration>,
) -> anyhow::Result<Vec<Submitted>> {
    let broker = Broker::connect(settings, "review-worker-submit").await?;
    // Declaring is idempotent and means a job submitted before any worker started is kept.
    broker.declare_topology().await?;
    let mut reply = match wait {
        Some(_) => Some(broker.private_consumer(None).await.context("the private reply queue")?),
        None => None,
    };

    let mut ids = Vec::new();
    let mut prs: HashMap<String, (Option<String>, Option<Links>)> = HashMap::new();
    for path in jobs {
        let body = if path == "-" {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).context("read the job from stdin")?;
            text.into_bytes()
        } else {
            std::fs::read(path).with_context(|| format!("read {path}"))?
        };
        let job = serde_json::from_slice::<Value>(&body).ok();
        let job_id = job
            .as_ref()
            .and_then(|v| v.get("job_id").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_default();
        if let Some(job) = &job
            && wait.is_some()
        {
            prs.insert(job_id.clone(), pr_of(job));
        }
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
            let (pr, links) = prs.get(&result.job_id).cloned().unwrap_or_default();
            results.push(Submitted { result, pr, links });
        }
    }
    broker.close().await;
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_gives_its_pr_name_and_links_and_an_odd_one_goes_without() {
        let job: Value = serde_json::from_str(include_str!("../examples/jobs/01-rust-refund.json")).unwrap();
        let (pr, links) = pr_of(&job);
        assert_eq!(
            pr.as_deref(),
            Some("acme/payments#42: Parse refund amounts from the webhook")
        );
        assert_eq!(
            links.unwrap().lines("src/refund.rs", 4, 4),
            "https://github.com/acme/payments/blob/2222222/src/refund.rs#L4"
        );
        let (pr, links) = pr_of(&serde_json::json!({"pull_request": {"url": 7, "head_sha": "2222222"}}));
        assert_eq!((pr, links), (None, None));
    }
}
