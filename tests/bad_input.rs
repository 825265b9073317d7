//! Hostile and odd input, each kind through RabbitMQ to the real worker binary (or through the
//! `review` command): the worker stays up and within its memory, a normal job published after it
//! is still reviewed, nothing is left unacknowledged, and no provider call is spent where none
//! can help.

#![allow(
    clippy::unwrap_used,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation,
    reason = "test and benchmark code: a panic is a failed run"
)]

mod common;

use std::time::Duration;

use common::{WorkerProcess, World, header_str, job, json_properties};
use serde_json::{Value, json};
use zai_sim::SimArgs;

const WAIT: Duration = Duration::from_secs(60);
const MIB: usize = 1024 * 1024;

/// A field of `/proc/PID/status` in KiB.
fn status_kib(worker: &WorkerProcess, field: &str) -> u64 {
    let pid = worker.child.id().expect("the worker is running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

async fn started(world: &World) -> WorkerProcess {
    let worker = world.spawn_process(&[]);
    world.wait_for_consumers(1, WAIT).await;
    worker
}

/// A normal job published after the bad input is still reviewed; then the worker stops cleanly
/// with every job acknowledged (an unacked job would be back in the queue once its channel
/// closed).
async fn goes_on_and_leaves_nothing(world: &mut World, mut worker: WorkerProcess, id: &str) {
    assert!(
        worker.child.try_wait().unwrap().is_none(),
        "the worker died:\n{}",
        worker.log_text()
    );
    world.publish_job(&job(id)).await;
    let result = world.results(1, WAIT).await.remove(0);
    assert_eq!(
        (result["job_id"].as_str(), result["status"].as_str()),
        (Some(id), Some("completed"))
    );
    let status = worker.terminate().await;
    assert!(status.success(), "{status:?}\n{}", worker.log_text());
    assert_eq!(
        world.queue_len(&world.topology.jobs_queue).await,
        0,
        "a job was left unacked"
    );
}

/// The example job with an unknown property of `[0,0,0,…]` making the body `size` bytes.
fn bloated_job(id: &str, size: usize) -> Vec<u8> {
    let base = serde_json::to_string(&job(id)).unwrap();
    let rest = base.strip_prefix('{').unwrap();
    let zeros = size.saturating_sub(base.len() + 16) / 2;
    let mut body = String::with_capacity(size);
    body.push_str("{\"padding\":[0");
    body.push_str(&",0".repeat(zeros.saturating_sub(1)));
    body.push_str("],");
    body.push_str(rest);
    body.into_bytes()
}

#[tokio::test]
async fn a_bloated_job_costs_at_most_three_times_its_size_and_the_worker_goes_on() {
    let mut world = World::new("bloated", SimArgs::default()).await;
    let worker = started(&world).await;
    // Not an ordering: the worker is consuming already. A measurement's settling time, so that
    // the baseline is not taken while start-up allocations are still growing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline = status_kib(&worker, "VmRSS:");
    let body = bloated_job("bloated-1", 15 * MIB);
    assert!(body.len() >= 15 * MIB - 64);
    world.publish(&body, json_properties()).await;

    let result = world.results(1, WAIT).await.remove(0);
    common::assert_valid_result(&result);
    assert_eq!(
        result["status"], "completed",
        "unknown properties are allowed: {result}"
    );
    let peak = status_kib(&worker, "VmHWM:");
    let allowed = baseline + 3 * (body.len() as u64 / 1024);
    assert!(
        peak <= allowed,
        "peak {peak} KiB over a baseline of {baseline} KiB, more than 3 × {} KiB",
        body.len() / 1024
    );
    goes_on_and_leaves_nothing(&mut world, worker, "after-bloated").await;
}

#[tokio::test]
async fn a_job_id_amqp_cannot_carry_is_dead_lettered_without_a_result() {
    let mut world = World::new("long-id", SimArgs::default()).await;
    let worker = started(&world).await;
    // 125 characters pass the schema's maxLength; 250 bytes plus `:result` do not fit AMQP's 255.
    world.publish_job(&job(&"é".repeat(125))).await;

    let dead = world.dead_letters(1, WAIT).await;
    assert_eq!(
        header_str(&dead[0].1, "x-review-error-kind").as_deref(),
        Some("invalid_job")
    );
    let message = header_str(&dead[0].1, "x-review-error-message").unwrap();
    assert!(
        message.contains("/job_id") && message.contains("250 bytes"),
        "{message}"
    );
    assert_eq!(world.sim.stats().chat_requests, 0);
    goes_on_and_leaves_nothing(&mut world, worker, "after-long-id").await;
}

#[tokio::test]
async fn an_invalid_job_is_reported_in_a_few_hundred_characters_that_quote_none_of_it() {
    let mut world = World::new("quiet-errors", SimArgs::default()).await;
    let worker = started(&world).await;
    let secret = format!("sk-planted-{}", "x".repeat(MIB));
    let mut bad = job("quiet-1");
    bad["pull_request"]["number"] = json!(secret);
    world.publish_job(&bad).await;

    let result = world.results(1, WAIT).await.remove(0);
    common::assert_valid_result(&result);
    assert_eq!(result["error"]["kind"], "invalid_job");
    let message = result["error"]["message"].as_str().unwrap();
    assert!(message.contains("/pull_request/number"), "{message}");
    let dead = world.dead_letters(1, WAIT).await;
    let header = header_str(&dead[0].1, "x-review-error-message").unwrap();
    for text in [message, header.as_str()] {
        assert!(text.len() <= 300 && !text.contains("sk-planted"), "{text}");
    }
    let log = worker.log_text();
    assert!(!log.contains("sk-planted"), "the log quotes the job");
    assert!(log.lines().all(|line| line.len() < 2_000), "a log line carries the job");
    goes_on_and_leaves_nothing(&mut world, worker, "after-quiet").await;
}

#[tokio::test]
async fn a_diff_that_adds_no_line_costs_no_call_and_fails_as_an_invalid_job() {
    let mut world = World::new("no-added", SimArgs::default()).await;
    let worker = started(&world).await;
    let mut word_diff = job("word-diff");
    word_diff["diff"] = json!(
        "diff --git a/src/a.rs b/src/a.rs\n--- a/src/a.rs\n+++ b/src/a.rs\n@@ -1,2 +1,2 @@\nlet [-a-]{+b+} = 1;\n"
    );
    world.publish_job(&word_diff).await;

    let result = world.results(1, WAIT).await.remove(0);
    common::assert_valid_result(&result);
    assert_eq!(
        (result["status"].as_str(), result["error"]["kind"].as_str()),
        (Some("failed"), Some("invalid_job"))
    );
    assert!(
        result["error"]["message"].as_str().unwrap().contains("adds no line"),
        "{result}"
    );
    world.dead_letters(1, WAIT).await;
    assert_eq!(world.sim.stats().chat_requests, 0, "a call was spent on a damaged diff");
    goes_on_and_leaves_nothing(&mut world, worker, "after-no-added").await;
    assert_eq!(world.sim.stats().chat_requests, 1);
}

#[tokio::test]
async fn a_later_section_of_the_same_path_is_reviewed_and_anchored() {
    let mut world = World::new("series", SimArgs::default()).await;
    let worker = started(&world).await;
    let mut series = job("series-1");
    series["diff"] = json!(
        "diff --git a/src/a.rs b/src/a.rs\n--- a/src/a.rs\n+++ b/src/a.rs\n@@ -1 +1,2 @@\n fn a() {}\n+fn b() {}\n\
         diff --git a/src/a.rs b/src/a.rs\n--- a/src/a.rs\n+++ b/src/a.rs\n@@ -40 +40,2 @@\n fn x() {}\n\
         +    let v = input.parse::<u64>().unwrap();\n"
    );
    world.publish_job(&series).await;

    let result = world.results(1, WAIT).await.remove(0);
    common::assert_valid_result(&result);
    let spots: Vec<(&str, u64)> = result["suggestions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["file"].as_str().unwrap(), s["line_start"].as_u64().unwrap()))
        .collect();
    assert!(spots.contains(&("src/a.rs", 41)), "{result}");
    goes_on_and_leaves_nothing(&mut world, worker, "after-series").await;
}

#[tokio::test]
async fn a_body_of_a_million_empty_patterns_or_files_is_refused_quickly() {
    let mut world = World::new("caps", SimArgs::default()).await;
    let worker = started(&world).await;
    let mut patterns = job("many-patterns");
    patterns["options"]["ignore_paths"] = json!(vec![""; 1_000_000]);
    world.publish_job(&patterns).await;
    let mut files = job("many-files");
    files["files"] = json!(vec![json!({"path": "a", "patch": ""}); 200_000]);
    world.publish_job(&files).await;

    let results = world.results(2, WAIT).await;
    for result in &results {
        assert_eq!(result["error"]["kind"], "invalid_job", "{result}");
        assert!(
            result["error"]["message"].as_str().unwrap().contains("more than"),
            "{result}"
        );
    }
    world.dead_letters(2, WAIT).await;
    goes_on_and_leaves_nothing(&mut world, worker, "after-caps").await;
}

/// `review-worker review FILE` against this world's simulator: exit code and the printed result.
async fn review_cli(world: &World, diff: &[u8]) -> (Option<i32>, Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pr.diff");
    std::fs::write(&path, diff).unwrap();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_review-worker"));
    command.args(["review", path.to_str().unwrap()]).env_clear();
    for (k, v) in world.vars() {
        command.env(k, v);
    }
    let output = command.output().await.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let result = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("stdout is no result ({e}); stderr: {stderr}"));
    common::assert_valid_result(&result);
    (output.status.code(), result, stderr)
}

#[tokio::test]
async fn review_reads_a_diff_with_latin1_bytes_and_says_where() {
    let world = World::new("cli-latin1", SimArgs::default()).await;
    let mut diff =
        b"diff --git a/src/caf.rs b/src/caf.rs\n--- a/src/caf.rs\n+++ b/src/caf.rs\n@@ -1 +1,2 @@\n fn a() {}\n+// caf"
            .to_vec();
    diff.extend_from_slice(&[0xe9, b'\n']);
    let (code, result, stderr) = review_cli(&world, &diff).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(result["status"], "completed");
    let summary = result["summary"].as_str().unwrap();
    assert!(
        summary.contains("not valid UTF-8") && summary.contains("src/caf.rs"),
        "{summary}"
    );
    assert_eq!(world.sim.stats().chat_requests, 1);
}

#[tokio::test]
async fn review_exits_1_when_the_review_fails() {
    let world = World::new("cli-failed", SimArgs::default()).await;
    let (code, result, _) = review_cli(&world, b"this is not a diff\n").await;
    assert_eq!(code, Some(1));
    assert_eq!(result["error"]["kind"], "invalid_job");
}

#[tokio::test]
async fn review_of_a_diff_cut_before_its_added_lines_spends_no_call() {
    let world = World::new("cli-cut", SimArgs::default()).await;
    let cut = b"diff --git a/a.rs b/a.rs\n--- a/a.rs\n+++ b/a.rs\n@@ -1,5 +1,6 @@\n fn a() {\n-    x\n";
    let (code, result, _) = review_cli(&world, cut).await;
    assert_eq!(code, Some(1));
    assert_eq!(result["error"]["kind"], "invalid_job");
    assert_eq!(world.sim.stats().chat_requests, 0);
}
