//! End-to-end throughput: RabbitMQ + the real `review-worker` binary + the simulator answering
//! instantly. Prints jobs per second and the worker's peak RSS, and, in the same run, the ceiling
//! of the broker alone (consume, publish a confirmed result, ack) for comparison.
//!
//! `cargo bench --bench throughput` (needs a RabbitMQ at API_RABBITMQ_URI; `scripts/bench.sh`
//! starts one). Options: `--jobs N` (2000), `--concurrency N` (64), `--runs N` (3), `--bin PATH`
//! to measure another build of the worker.

#![allow(
    clippy::unwrap_used,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation,
    reason = "test and benchmark code: a panic is a failed run"
)]
#![allow(clippy::print_stdout, reason = "a benchmark prints its figures")]

mod common;

use std::time::Duration;

use futures_util::StreamExt as _;
use lapin::BasicProperties;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use zai_sim::{SimArgs, SimHandle};

struct Options {
    jobs: usize,
    concurrency: usize,
    runs: usize,
    bin: std::path::PathBuf,
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
        bin: args
            .iter()
            .position(|a| a == "--bin")
            .and_then(|i| args.get(i + 1))
            .map_or_else(|| env!("CARGO_BIN_EXE_review-worker").into(), Into::into),
    }
}

/// One run of the worker binary over `jobs` preloaded jobs.
async fn worker_run(sim: &SimHandle, opts: &Options) -> (f64, f64) {
    let (namespace, broker) = common::world("worker").await;
    common::preload(&broker, opts.jobs).await;
    let mut child = common::spawn_worker(&opts.bin, &namespace, sim, opts.concurrency);
    let pid = child.id().unwrap();
    let elapsed = common::collect(&broker, &broker.topology().results_queue.clone(), opts.jobs).await;
    let rss = common::peak_rss_kib(pid).unwrap_or(0) as f64 / 1024.0;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    common::teardown(&broker).await;
    ((opts.jobs - 1) as f64 / elapsed.as_secs_f64(), rss)
}

/// The broker alone: consume a job, publish a confirmed result of the same size, ack. No HTTP,
/// no parsing: the most any worker could get through this broker on this machine.
async fn broker_only_run(opts: &Options) -> f64 {
    let (_, broker) = common::world("broker").await;
    common::preload(&broker, opts.jobs).await;
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
    let elapsed = common::collect(&broker, &topology.results_queue, opts.jobs).await;
    relay.abort();
    common::teardown(&broker).await;
    (opts.jobs - 1) as f64 / elapsed.as_secs_f64()
}

#[tokio::main]
async fn main() {
    let opts = options();
    let sim = SimHandle::spawn(SimArgs::default()).await.unwrap();
    println!(
        "throughput: {} jobs, concurrency {}, {} runs, simulator latency 0, machine: {}",
        opts.jobs,
        opts.concurrency,
        opts.runs,
        common::machine()
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
        common::median(worker_rates.clone()),
        common::median(rss),
        common::median(broker_rates.clone()),
        100.0 * common::median(worker_rates) / common::median(broker_rates)
    );
}
