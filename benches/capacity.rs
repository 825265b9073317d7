//! Capacity utilisation under a plan's cap: how much of the cap the deployment keeps busy.
//!
//! utilisation = jobs × provider latency / (elapsed × cap), with the simulator answering after
//! 200 ms and refusing (1302) anything over the cap, for cap 1 and cap 30, one and three real
//! `review-worker` processes. `elapsed` runs from when the first call started (first result minus
//! one latency) to the last result. Target: ≥ 0.95 with zero 1302 answers.
//!
//! `cargo bench --bench capacity` (`scripts/bench.sh capacity` starts a RabbitMQ if needed).
//! Options: `--runs N` (3).

#![allow(
    clippy::unwrap_used,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation,
    reason = "test and benchmark code: a panic is a failed run"
)]
#![allow(clippy::print_stdout, reason = "a benchmark prints its figures")]

mod common;

use std::process::Stdio;
use std::time::Duration;

use zai_sim::{SimArgs, SimConfig, SimHandle};

const LATENCY: Duration = Duration::from_millis(200);

struct Run {
    utilisation: f64,
    rejected_1302: u64,
    peak: u64,
}

async fn run(cap: usize, replicas: usize, jobs: usize) -> Run {
    let sim = SimHandle::spawn(SimArgs::from(SimConfig {
        latency_ms: LATENCY.as_millis() as u64,
        max_concurrency: cap as u64,
        ..Default::default()
    }))
    .await
    .unwrap();
    let (namespace, broker) = common::world("capacity").await;
    common::preload(&broker, jobs).await;
    let plan = if cap > 1 { "max" } else { "lite" };
    let mut children = Vec::new();
    for _ in 0..replicas {
        children.push(
            tokio::process::Command::new(env!("CARGO_BIN_EXE_review-worker"))
                .arg("run")
                .env("API_RABBITMQ_URI", common::amqp_uri())
                .env("API_RABBITMQ_NAMESPACE", &namespace)
                .env("API_LLM_PROVIDER_MODEL", "glm-5.1")
                .env("API_OPENAI_FORCE_BASE_URL", sim.coding_base_url())
                .env("API_OPEN_AI_API_KEY", "sim-coding-key")
                .env("API_LLM_PLAN", plan)
                .env("API_LLM_MAX_CONCURRENT_REQUESTS", cap.to_string())
                // The same prompt in every job: the cache would hide the provider path measured here.
                .env("API_REVIEW_CACHE_TTL_SECS", "0")
                .env("WORKER_HEALTH_PORT", "0")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("start the worker binary"),
        );
    }
    let arrivals = common::arrivals(
        &broker,
        &broker.topology().results_queue.clone(),
        jobs,
        Duration::from_secs(120),
    )
    .await;
    let first_call = arrivals[0].saturating_sub(LATENCY);
    let elapsed = *arrivals.last().unwrap() - first_call;
    for child in &children {
        if let Some(pid) = child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }
    for mut child in children {
        let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    }
    common::teardown(&broker).await;
    let stats = sim.stats();
    Run {
        utilisation: jobs as f64 * LATENCY.as_secs_f64() / (elapsed.as_secs_f64() * cap as f64),
        rejected_1302: stats.chat_answered("1302"),
        peak: stats.peak_in_flight,
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runs = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    println!(
        "capacity utilisation: simulator latency {} ms, {runs} runs, machine: {}",
        LATENCY.as_millis(),
        common::machine()
    );
    for (cap, replicas, jobs) in [(1, 1, 40), (1, 3, 40), (30, 1, 600), (30, 3, 600)] {
        let mut utilisation = Vec::new();
        let (mut rejected, mut peak) = (0, 0);
        for _ in 0..runs {
            let run = run(cap, replicas, jobs).await;
            utilisation.push(run.utilisation);
            rejected += run.rejected_1302;
            peak = peak.max(run.peak);
        }
        let shown: Vec<String> = utilisation.iter().map(|u| format!("{u:.3}")).collect();
        println!(
            "  cap {cap:>2}, {replicas} replica(s), {jobs} jobs: utilisation median {:.3} (runs {}), 1302 answers {rejected}, peak in flight {peak}",
            common::median(utilisation.clone()),
            shown.join(" / ")
        );
    }
}
