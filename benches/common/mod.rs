//! What the benchmarks share: a namespace of their own on the broker, preloading jobs, timing
//! results, the worker's peak RSS.

#![allow(
    clippy::unwrap_used,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation,
    reason = "test and benchmark code: a panic is a failed run"
)]
#![allow(dead_code)]

use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use lapin::BasicProperties;
use lapin::options::{BasicConsumeOptions, BasicQosOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use review_worker::broker::{Broker, delay_queues};
use review_worker::settings::Settings;
use serde_json::{Value, json};

pub(crate) fn amqp_uri() -> String {
    std::env::var("API_RABBITMQ_URI").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

pub(crate) async fn world(tag: &str) -> (String, Broker) {
    let namespace = format!("bench-{tag}-{:08x}", fastrand::u32(..));
    let settings = Settings::from_vars([
        ("API_RABBITMQ_URI", amqp_uri().as_str()),
        ("API_RABBITMQ_NAMESPACE", namespace.as_str()),
    ])
    .unwrap();
    let broker = Broker::connect(&settings.broker, "bench")
        .await
        .expect("RabbitMQ must answer");
    broker.declare_topology().await.unwrap();
    (namespace, broker)
}

pub(crate) async fn teardown(broker: &Broker) {
    let t = broker.topology().clone();
    let channel = broker.channel().await.unwrap();
    let mut queues = vec![t.jobs_queue.clone(), t.results_queue.clone(), t.dead_queue.clone()];
    queues.extend(delay_queues(&t));
    queues.extend([t.own("leadership"), t.own("pauses")]);
    for q in queues {
        let _ = channel
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for e in [t.exchange.clone(), t.dlx.clone()] {
        let _ = channel.exchange_delete(e.as_str().into(), Default::default()).await;
    }
}

/// Publishes `n` jobs with confirms, pipelined.
pub(crate) async fn preload(broker: &Broker, n: usize) {
    let template: Value = serde_json::from_str(include_str!("../../docs/contract/examples/job.json")).unwrap();
    let exchange = broker.topology().exchange.clone();
    let mut pending = futures_util::stream::FuturesUnordered::new();
    for i in 0..n {
        let mut job = template.clone();
        job["job_id"] = json!(format!("bench-{i}"));
        job.as_object_mut().unwrap().remove("created_at");
        let body = serde_json::to_vec(&job).unwrap();
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        let exchange = exchange.clone();
        pending.push(async move {
            broker
                .publish_confirmed(&exchange, "job.created", &body, properties)
                .await
        });
        if pending.len() >= 256 {
            pending.next().await.unwrap().unwrap();
        }
    }
    while let Some(done) = pending.next().await {
        done.unwrap();
    }
}

/// Waits for `n` messages on `queue`; returns the time from the first to the last.
pub(crate) async fn collect(broker: &Broker, queue: &str, n: usize) -> Duration {
    let times = arrivals(broker, queue, n, Duration::from_secs(120)).await;
    times[n - 1] - times[0]
}

pub(crate) fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// Arrival times of `n` messages on `queue`, measured from the call.
pub(crate) async fn arrivals(broker: &Broker, queue: &str, n: usize, timeout: Duration) -> Vec<Duration> {
    let channel = broker.channel().await.unwrap();
    channel.basic_qos(1000, BasicQosOptions::default()).await.unwrap();
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let started = Instant::now();
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        tokio::time::timeout(timeout, consumer.next())
            .await
            .expect("results keep coming")
            .unwrap()
            .unwrap();
        times.push(started.elapsed());
    }
    times
}

pub(crate) fn machine() -> String {
    format!(
        "{} cores, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| c.lines().find(|l| l.starts_with("model name")).map(|l| l
                .split(':')
                .nth(1)
                .unwrap_or("")
                .trim()
                .to_owned()))
            .unwrap_or_default()
    )
}

/// `review-worker run` (the binary at `bin`) on `namespace`, against the simulator's
/// pay-per-token endpoint, with `concurrency` calls and prefetch; output discarded.
pub(crate) fn spawn_worker(
    bin: &std::path::Path,
    namespace: &str,
    sim: &zai_sim::SimHandle,
    concurrency: usize,
) -> tokio::process::Child {
    tokio::process::Command::new(bin)
        .arg("run")
        .env("API_RABBITMQ_URI", amqp_uri())
        .env("API_RABBITMQ_NAMESPACE", namespace)
        .env("API_LLM_PROVIDER_MODEL", "glm-5.1")
        .env("API_OPENAI_FORCE_BASE_URL", sim.developer_base_url())
        .env("API_OPEN_AI_API_KEY", "sim-developer-key")
        .env("API_LLM_MAX_CONCURRENT_REQUESTS", concurrency.to_string())
        .env("API_WORKER_CONCURRENCY", concurrency.to_string())
        .env("WORKER_HEALTH_PORT", "0")
        // Every job here is the same prompt: with the answer cache on, the bench would measure
        // the cache, not the provider path.
        .env("API_REVIEW_CACHE_TTL_SECS", "0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the worker binary")
}
