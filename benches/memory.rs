//! Memory: the real `review-worker run` binary against RabbitMQ and the simulator, one fresh
//! process per scenario so that each peak (VmHWM) is the scenario's own.
//!
//! - idle: resident memory once consuming, anonymous (RssAnon: heap, stacks) and file-backed
//!   (RssFile: the mapped binary and libraries) apart;
//! - a bloated job: a schema-valid 15 MiB job whose unknown property holds `[0,0,0,…]`;
//! - a 15 MiB diff: a job whose diff is 15 MiB of ordinary code changes in ~5,000 files;
//! - a hostile diff: 15 MiB of one-line hunks, the shape that costs the parser most per byte;
//! - 64 ordinary jobs in flight: the throughput benchmark's load (2,000 example jobs, 64 at once).
//!
//! For each big job: peak − idle, and that over the body's size (target: ≤ 3).
//!
//! `cargo bench --bench memory` (needs a RabbitMQ at API_RABBITMQ_URI; `scripts/bench.sh memory`
//! starts one). Options: `--body-mib N` (15), `--jobs N` (2000), `--concurrency N` (64), and
//! `--bin PATH` to measure another build of the worker (e.g. the previous commit's).

#![allow(
    clippy::unwrap_used,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation,
    reason = "test and benchmark code: a panic is a failed run"
)]
#![allow(clippy::print_stdout, reason = "a benchmark prints its figures")]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use lapin::BasicProperties;
use review_worker::broker::Broker;
use serde_json::{Value, json};
use zai_sim::{SimArgs, SimHandle};

const EXAMPLE_JOB: &str = include_str!("../docs/contract/examples/job.json");

struct Options {
    body_bytes: usize,
    jobs: usize,
    concurrency: usize,
    bin: PathBuf,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().collect();
    let get = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let number = |name: &str, default: usize| get(name).and_then(|v| v.parse().ok()).unwrap_or(default);
    Options {
        body_bytes: number("--body-mib", 15) << 20,
        jobs: number("--jobs", 2000),
        concurrency: number("--concurrency", 64),
        bin: get("--bin").map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_review-worker")), PathBuf::from),
    }
}

/// The memory lines of `/proc/PID/status`, in KiB.
#[derive(Debug, Clone, Copy, Default)]
struct Memory {
    rss: u64,
    anon: u64,
    file: u64,
    peak: u64,
}

fn memory(pid: u32) -> Memory {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .unwrap_or(0)
    };
    Memory {
        rss: field("VmRSS:"),
        anon: field("RssAnon:"),
        file: field("RssFile:"),
        peak: field("VmHWM:"),
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// A worker process in a namespace of its own.
struct Worker {
    child: tokio::process::Child,
    pid: u32,
    broker: Broker,
}

impl Worker {
    /// Starts a worker on a namespace holding `preloaded` example jobs.
    async fn start(opts: &Options, sim: &SimHandle, tag: &str, preloaded: usize) -> Worker {
        let (namespace, broker) = common::world(tag).await;
        if preloaded > 0 {
            common::preload(&broker, preloaded).await;
        }
        let child = common::spawn_worker(&opts.bin, &namespace, sim, opts.concurrency);
        let pid = child.id().expect("running");
        let worker = Worker { child, pid, broker };
        worker.wait_consuming().await;
        worker
    }

    /// Waits until the worker consumes its jobs queue, then lets start-up allocations settle.
    async fn wait_consuming(&self) {
        let queue = self.broker.topology().jobs_queue.clone();
        for _ in 0..300 {
            let channel = self.broker.channel().await.unwrap();
            let declared = channel
                .queue_declare(
                    queue.as_str().into(),
                    lapin::options::QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    lapin::types::FieldTable::default(),
                )
                .await
                .unwrap();
            let _ = channel.close(200, "".into()).await;
            if declared.consumer_count() > 0 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the worker never consumed its queue");
    }

    async fn publish(&self, body: &[u8]) {
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        self.broker
            .publish_confirmed(&self.broker.topology().exchange, "job.created", body, properties)
            .await
            .unwrap();
    }

    async fn results(&self, n: usize) {
        let queue = self.broker.topology().results_queue.clone();
        common::arrivals(&self.broker, &queue, n, Duration::from_secs(300)).await;
    }

    async fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
        common::teardown(&self.broker).await;
    }
}

/// The example job with `padding: [0,0,0,…]` making the body `size` bytes: valid for the schema,
/// which allows unknown properties.
fn bloated_job(size: usize) -> Vec<u8> {
    let job = EXAMPLE_JOB.trim().strip_prefix('{').unwrap();
    let zeros = (size.saturating_sub(EXAMPLE_JOB.len() + 16)) / 2;
    let mut body = String::with_capacity(size + 16);
    body.push_str("{\"padding\": [0");
    for _ in 1..zeros {
        body.push_str(",0");
    }
    body.push_str("],");
    body.push_str(job);
    body.into_bytes()
}

/// A job whose `diff` brings the body to about `size` bytes: files of a few hunks of ordinary
/// code (context, a removed line, two added ones), like a large refactoring.
fn diff_job(size: usize) -> Vec<u8> {
    let mut diff = String::with_capacity(size);
    let mut file = 0;
    while diff.len() + diff.len() / 25 < size.saturating_sub(EXAMPLE_JOB.len()) {
        let path = format!("src/module_{}/file_{file}.rs", file % 97);
        diff.push_str(&format!(
            "diff --git a/{path} b/{path}\nindex 1111111..2222222 100644\n--- a/{path}\n+++ b/{path}\n"
        ));
        for hunk in 0..4 {
            let start = 10 + hunk * 40;
            diff.push_str(&format!("@@ -{start},7 +{start},8 @@ fn handler_{hunk}() {{\n"));
            for n in 0..3 {
                diff.push_str(&format!("     let value_{n} = compute(&input_{n}, {n}).await?;\n"));
            }
            diff.push_str("-    let total = value_0 + value_1;\n");
            diff.push_str("+    let total = value_0.checked_add(value_1).unwrap();\n");
            diff.push_str("+    tracing::debug!(total, \"computed the total\");\n");
            for n in 3..6 {
                diff.push_str(&format!("     store(&mut state, value_{n}, total).await?;\n"));
            }
        }
        file += 1;
    }
    with_diff(diff)
}

/// A job whose diff is one file of one-line hunks: the most hunks a body of `size` bytes holds.
fn hostile_diff_job(size: usize) -> Vec<u8> {
    let mut diff = String::from("--- a/x.rs\n+++ b/x.rs\n");
    let mut line = 1;
    while diff.len() + diff.len() / 10 < size.saturating_sub(EXAMPLE_JOB.len()) {
        diff.push_str(&format!("@@ -{line},0 +{line} @@\n+x\n"));
        line += 2;
    }
    with_diff(diff)
}

fn with_diff(diff: String) -> Vec<u8> {
    let mut job: Value = serde_json::from_str(EXAMPLE_JOB).unwrap();
    job["diff"] = json!(diff);
    job.as_object_mut().unwrap().remove("created_at");
    serde_json::to_vec(&job).unwrap()
}

/// One big job through a fresh worker: its idle memory, then its peak.
async fn one_big_job(opts: &Options, sim: &SimHandle, name: &str, body: Vec<u8>) -> (Memory, Memory) {
    let worker = Worker::start(opts, sim, name, 0).await;
    let idle = memory(worker.pid);
    worker.publish(&body).await;
    drop(body);
    worker.results(1).await;
    let after = memory(worker.pid);
    worker.stop().await;
    (idle, after)
}

fn report_big(name: &str, body: usize, idle: Memory, after: Memory) {
    let over = after.peak.saturating_sub(idle.rss);
    println!(
        "  {name}: body {:.1} MiB; idle {:.1} MiB; peak {:.1} MiB = idle + {:.1} MiB = idle + {:.2}× the body",
        body as f64 / (1024.0 * 1024.0),
        mib(idle.rss),
        mib(after.peak),
        mib(over),
        (over * 1024) as f64 / body as f64
    );
}

#[tokio::main]
async fn main() {
    let opts = options();
    let sim = SimHandle::spawn(SimArgs::default()).await.unwrap();
    let binary_size = std::fs::metadata(&opts.bin).map_or(0, |m| m.len());
    println!(
        "memory: {} ({:.1} MiB), machine: {}, {}",
        opts.bin.display(),
        binary_size as f64 / (1024.0 * 1024.0),
        common::machine(),
        chrono::Utc::now().format("%Y-%m-%d")
    );

    let idle_worker = Worker::start(&opts, &sim, "idle", 0).await;
    let idle = memory(idle_worker.pid);
    idle_worker.stop().await;
    println!(
        "  idle: RSS {:.1} MiB = anonymous {:.1} MiB + file-backed {:.1} MiB",
        mib(idle.rss),
        mib(idle.anon),
        mib(idle.file)
    );

    let body = bloated_job(opts.body_bytes);
    let size = body.len();
    let (idle, after) = one_big_job(&opts, &sim, "bloated", body).await;
    report_big("bloated job ([0,0,…] in an unknown property)", size, idle, after);

    let body = diff_job(opts.body_bytes);
    let size = body.len();
    let (idle, after) = one_big_job(&opts, &sim, "diff", body).await;
    report_big("diff of ordinary code", size, idle, after);

    let body = hostile_diff_job(opts.body_bytes);
    let size = body.len();
    let (idle, after) = one_big_job(&opts, &sim, "hunks", body).await;
    report_big("diff of one-line hunks", size, idle, after);

    let worker = Worker::start(&opts, &sim, "inflight", opts.jobs).await;
    worker.results(opts.jobs).await;
    let after = memory(worker.pid);
    worker.stop().await;
    println!(
        "  {} ordinary jobs, {} in flight: peak RSS {:.1} MiB (at the end: anonymous {:.1} MiB + file-backed {:.1} MiB)",
        opts.jobs,
        opts.concurrency,
        mib(after.peak),
        mib(after.anon),
        mib(after.file)
    );
}
