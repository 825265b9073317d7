//! End-to-end throughput: RabbitMQ + the real `review-worker` binary + the simulator answering
//! instantly. Prints jobs per second and the worker's peak RSS, and, in the same run, the ceiling
//! of the broker alone (consume, publish a confirmed result, ack) for comparison.
//!
//! `cargo bench --bench throughput` (needs a RabbitMQ at API_RABBITMQ_URI; `scripts/bench.sh`
//! starts one). Options: `--jobs N` (2000), `--concurrency N` (64), `--runs N` (3).

#![allow(clippy::print_stdout, reason = "a benchmark prints its figures")]

use std::process::Stdio;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use lapin::BasicProperties;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use review_worker::broker::{Broker, DELAY_TIERS};
use review_worker::settings::Settings;
use review_worker::sim::{SimArgs, SimHandle};
use serde_json::{Value, json};

struct Options {
    jobs: usize,
    concurrency: usize,
    runs: usize,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().collect();
    let get = |name: &str, default: usize| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    Options {
        jobs: get("--jobs", 2000),
        concurrency: get("--concurrency", 64),
        runs: get("--runs", 3),
    }
}

fn amqp_uri() -> String {
    std::env::var("API_RABBITMQ_URI").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

async fn world(tag: &str) -> (String, Broker) {
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

async fn teardown(broker: &Broker) {
    let t = broker.topology().clone();
    let channel = broker.channel().await.unwrap();
    let mut queues = vec![t.jobs_queue.clone(), t.results_queue.clone(), t.dead_queue.clone()];
    queues.extend(DELAY_TIERS.iter().map(|(label, _)| t.own(&format!("retry.{label}"))));
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
async fn preload(broker: &Broker, n: usize) {
    let template: Value = serde_json::from_str(include_str!("../docs/contract/examples/job.json")).unwrap();
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
async fn collect(broker: &Broker, queue: &str, n: usize) -> Duration {
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
    let mut first = None;
    for _ in 0..n {
        tokio::time::timeout(Duration::from_secs(120), consumer.next())
            .await
            .expect("results keep coming")
            .unwrap()
            .unwrap();
        first.get_or_insert_with(Instant::now);
    }
    first.unwrap().elapsed()
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// One run of the worker binary over `jobs` preloaded jobs.
async fn worker_run(sim: &SimHandle, opts: &Options) -> (f64, f64) {
    let (namespace, broker) = world("worker").await;
    preload(&broker, opts.jobs).await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_review-worker"))
        .arg("run")
        .env("API_RABBITMQ_URI", amqp_uri())
        .env("API_RABBITMQ_NAMESPACE", &namespace)
        .env("API_LLM_PROVIDER_MODEL", "glm-5.1")
        .env("API_OPENAI_FORCE_BASE_URL", sim.developer_base_url())
        .env("API_OPEN_AI_API_KEY", "sim-developer-key")
        .env("API_LLM_MAX_CONCURRENT_REQUESTS", opts.concurrency.to_string())
        .env("WORKER_HEALTH_PORT", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the worker binary");
    let pid = child.id().unwrap();
    let elapsed = collect(&broker, &broker.topology().results_queue.clone(), opts.jobs).await;
    let rss = peak_rss_kib(pid).unwrap_or(0) as f64 / 1024.0;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    teardown(&broker).await;
    ((opts.jobs - 1) as f64 / elapsed.as_secs_f64(), rss)
}

/// The broker alone: consume a job, publish a confirmed result of the same size, ack. No HTTP,
/// no parsing: the most any worker could get through this broker on this machine.
async fn broker_only_run(opts: &Options) -> f64 {
    let (_, broker) = world("broker").await;
    preload(&broker, opts.jobs).await;
    let topology = broker.topology().clone();
    let consume = broker.channel().await.unwrap();
    consume
        .basic_qos(opts.concurrency as u16, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = consume
        .basic_consume(
            topology.jobs_queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let broker = std::sync::Arc::new(broker);
    let relay = tokio::spawn({
        let broker = broker.clone();
        let exchange = topology.exchange.clone();
        async move {
            let mut tasks = tokio::task::JoinSet::new();
            while let Some(Ok(delivery)) = consumer.next().await {
                let broker = broker.clone();
                let exchange = exchange.clone();
                tasks.spawn(async move {
                    broker
                        .publish_confirmed(
                            &exchange,
                            "result.completed",
                            &delivery.data[..900.min(delivery.data.len())],
                            BasicProperties::default().with_delivery_mode(2),
                        )
                        .await
                        .unwrap();
                    delivery.acker.ack(BasicAckOptions::default()).await.unwrap();
                });
            }
        }
    });
    let elapsed = collect(&broker, &topology.results_queue, opts.jobs).await;
    relay.abort();
    teardown(&broker).await;
    (opts.jobs - 1) as f64 / elapsed.as_secs_f64()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

#[tokio::main]
async fn main() {
    let opts = options();
    let sim = SimHandle::spawn(SimArgs::default()).await.unwrap();
    println!(
        "throughput: {} jobs, concurrency {}, {} runs, simulator latency 0, machine: {} cores, {}",
        opts.jobs,
        opts.concurrency,
        opts.runs,
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
    );
    let (mut worker_rates, mut rss, mut broker_rates) = (Vec::new(), Vec::new(), Vec::new());
    for run in 1..=opts.runs {
        let broker_rate = broker_only_run(&opts).await;
        let (rate, peak) = worker_run(&sim, &opts).await;
        println!("  run {run}: worker {rate:.0} jobs/s, peak RSS {peak:.1} MiB; broker alone {broker_rate:.0} jobs/s");
        worker_rates.push(rate);
        rss.push(peak);
        broker_rates.push(broker_rate);
    }
    println!(
        "median: worker {:.0} jobs/s, peak RSS {:.1} MiB; broker alone {:.0} jobs/s (worker reaches {:.0}% of the broker's ceiling)",
        median(worker_rates.clone()),
        median(rss),
        median(broker_rates.clone()),
        100.0 * median(worker_rates) / median(broker_rates)
    );
}
