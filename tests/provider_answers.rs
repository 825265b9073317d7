//! Bad provider answers against a running worker process, through RabbitMQ: a quota reset time in
//! the past, a fair-use throttle that lasts, a megabyte of junk, an answer over the body limit, a
//! code nobody knows. Each time the worker stays up, the next job is still reviewed, the provider
//! is not hammered, and nothing is left unacked or waiting.

#![allow(
    clippy::unwrap_used,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation,
    reason = "test and benchmark code: a panic is a failed run"
)]

mod common;

use std::time::Duration;

use common::{WorkerProcess, World, job};
use review_worker::broker::delay_queues;
use serde_json::Value;
use zai_sim::{JunkShape, SimArgs, SimConfig};

const WAIT: Duration = Duration::from_secs(60);

/// Fails the first this many chat calls: "from now on".
const ALWAYS: u64 = 1_000_000;

fn completed(results: &[Value], ids: &[&str]) {
    for id in ids {
        let result = results
            .iter()
            .find(|r| r["job_id"] == *id)
            .unwrap_or_else(|| panic!("no result for {id}: {results:#?}"));
        common::assert_valid_result(result);
        assert_eq!(result["status"], "completed", "{result:#}");
    }
}

fn assert_alive(worker: &mut WorkerProcess) {
    let exited = worker.child.try_wait().expect("the worker's status");
    assert!(
        exited.is_none(),
        "the worker exited ({exited:?}):\n{}",
        worker.log_text()
    );
}

/// Stops the worker and checks that no job was left behind: after the consumer is gone every
/// unacked delivery would be ready again, so an empty jobs queue means none was unacked, and
/// empty delay tiers mean none is still waiting.
async fn stop_and_assert_nothing_left(world: &World, worker: &mut WorkerProcess) {
    assert_alive(worker);
    let status = worker.terminate().await;
    assert!(status.success(), "clean exit: {status:?}\n{}", worker.log_text());
    let mut queues = vec![world.topology.jobs_queue.clone()];
    queues.extend(delay_queues(&world.topology));
    for queue in queues {
        assert_eq!(world.queue_len(&queue).await, 0, "{queue} is empty");
    }
}

async fn metrics(worker: &WorkerProcess) -> String {
    reqwest::get(format!("http://127.0.0.1:{}/metrics", worker.health_port))
        .await
        .expect("/metrics answers")
        .text()
        .await
        .expect("a metrics page")
}

#[tokio::test]
async fn a_reset_time_in_the_past_pauses_a_minute_instead_of_calling_into_the_window() {
    let mut world = World::new(
        "pastreset",
        SimArgs::from(SimConfig {
            fail_first: ALWAYS,
            fail_first_code: 1308,
            // Every 1308 says the window resets in a minute, an hour ago.
            window_secs: 60,
            reset_shift_secs: -3600,
            ..SimConfig::default()
        }),
    )
    .await;
    let mut worker = world.spawn_process(&[]);
    world.wait_for_consumers(1, WAIT).await;
    for i in 0..3 {
        world.publish_job(&job(&format!("past-{i}"))).await;
    }

    // The scenario: how many calls 20 s of an exhausted window draw (not a wait for an event).
    tokio::time::sleep(Duration::from_secs(20)).await;
    let calls = world.sim.stats().chat_requests;
    eprintln!("a reset time in the past, cap 1, three jobs: {calls} call(s) in 20 s");
    assert!(
        (1..=2).contains(&calls),
        "{calls} calls in 20 s into an exhausted window"
    );
    assert_alive(&mut worker);
    let ready = worker
        .wait_ready_body(WAIT, |status, body| {
            status == 503 && body["pauses"][0]["code"] == "1308"
        })
        .await;
    assert!(ready["pauses"][0]["paused_until"].is_string(), "{ready:#}");

    world.sim.configure(|c| c.fail_first = 0);
    world.publish_job(&job("past-after")).await;
    let results = world.results(4, Duration::from_secs(150)).await;
    completed(&results, &["past-0", "past-1", "past-2", "past-after"]);
    let refused = world.sim.stats().chat_answered("1308");
    assert!(refused <= 2, "{refused} calls into the window in all");
    assert!(worker.log_text().contains("is already past"), "{}", worker.log_text());
    assert!(world.no_dead_letters(Duration::from_millis(300)).await);
    stop_and_assert_nothing_left(&world, &mut worker).await;
}

#[tokio::test]
async fn a_fair_use_throttle_for_a_minute_draws_a_doubling_sequence_of_calls() {
    let mut world = World::new(
        "fairuse",
        SimArgs::from(SimConfig {
            fail_first: ALWAYS,
            fail_first_code: 1313,
            ..SimConfig::default()
        }),
    )
    .await;
    let mut worker = world.spawn_process(&[]);
    world.wait_for_consumers(1, WAIT).await;
    world.publish_job(&job("fair")).await;

    // The scenario: how many calls a minute of 1313 draws (not a wait for an event).
    tokio::time::sleep(Duration::from_secs(60)).await;
    let calls = world.sim.stats().chat_requests;
    eprintln!("1313 for a minute: {calls} call(s)");
    // Pauses of 5, 10, 20, 40 s: calls near 0, 5, 15 and 35 s.
    assert!((3..=6).contains(&calls), "{calls} calls in a minute of 1313");
    assert_alive(&mut worker);

    world.sim.configure(|c| c.fail_first = 0);
    world.publish_job(&job("fair-after")).await;
    // The last pause (40 s) ends about 75 s in.
    let results = world.results(2, Duration::from_secs(120)).await;
    completed(&results, &["fair", "fair-after"]);
    assert!(
        results.iter().all(|r| r["attempts"] == 1),
        "waiting out an account problem costs no attempt"
    );
    let log = worker.log_text();
    assert!(log.contains("the pause doubles up to 300 s"), "{log}");
    assert!(world.no_dead_letters(Duration::from_millis(300)).await);
    stop_and_assert_nothing_left(&world, &mut worker).await;
}

#[tokio::test]
async fn a_megabyte_of_unbalanced_json_is_read_quickly_and_the_next_job_is_reviewed() {
    let mut world = World::new(
        "junk",
        SimArgs::from(SimConfig {
            // The answer and the repair's answer.
            junk_answers: 2,
            junk_shape: JunkShape::Unbalanced,
            junk_bytes: 1 << 20,
            ..SimConfig::default()
        }),
    )
    .await;
    let mut worker = world.spawn_process(&[]);
    world.wait_for_consumers(1, WAIT).await;
    world.publish_job(&job("junk")).await;
    world.publish_job(&job("junk-after")).await;

    let started = tokio::time::Instant::now();
    let results = world.results(2, WAIT).await;
    eprintln!(
        "two 1 MiB junk answers (unbalanced), cap 1: both jobs' results in {:?}",
        started.elapsed()
    );
    // With the cap at 1 the two jobs' calls interleave: the junk job fails if it drew both junk
    // answers, and each job recovers with its repair request if they drew one each.
    completed(&results, &["junk-after"]);
    let first = results
        .iter()
        .find(|r| r["job_id"] == "junk")
        .expect("a result for junk");
    common::assert_valid_result(first);
    let failed = first["status"] == "failed";
    if failed {
        assert_eq!(first["error"]["kind"], "bad_model_output", "{first:#}");
        assert_eq!(world.dead_letters(1, WAIT).await.len(), 1);
    } else {
        assert_eq!(first["status"], "completed", "{first:#}");
    }
    let reviewed = results.iter().filter(|r| r["status"] == "completed").count() as u64;
    assert_eq!(
        world.sim.stats().chat_requests,
        2 + reviewed,
        "two junk answers, and one readable answer per job reviewed"
    );
    assert!(
        world.no_dead_letters(Duration::from_millis(300)).await,
        "no other dead letter"
    );
    stop_and_assert_nothing_left(&world, &mut worker).await;
}

#[tokio::test]
async fn an_answer_over_the_body_limit_is_refused_and_retried_like_a_transient_failure() {
    let mut world = World::new(
        "oversize",
        SimArgs::from(SimConfig {
            junk_answers: 1,
            junk_bytes: 5 << 20,
            ..SimConfig::default()
        }),
    )
    .await;
    let mut worker = world.spawn_process(&[]);
    world.wait_for_consumers(1, WAIT).await;
    world.publish_job(&job("big")).await;
    world.publish_job(&job("big-after")).await;

    let results = world.results(2, WAIT).await;
    completed(&results, &["big", "big-after"]);
    assert!(
        results.iter().all(|r| r["attempts"] == 1),
        "retried in place, the job's attempt not spent"
    );
    assert_eq!(world.sim.stats().chat_requests, 3, "refused, retried, the next job");
    let log = worker.log_text();
    assert!(log.contains("answer too large"), "{log}");
    stop_and_assert_nothing_left(&world, &mut worker).await;
}

#[tokio::test]
async fn a_code_nobody_knows_is_counted_as_other() {
    let mut world = World::new(
        "othercode",
        SimArgs::from(SimConfig {
            fail_first: 1,
            fail_first_code: 1777,
            ..SimConfig::default()
        }),
    )
    .await;
    let mut worker = world.spawn_process(&[]);
    world.wait_for_consumers(1, WAIT).await;
    world.publish_job(&job("other")).await;
    completed(&world.results(1, WAIT).await, &["other"]);
    assert_eq!(world.sim.stats().chat_answered("1777"), 1);

    let page = metrics(&worker).await;
    let answers: Vec<&str> = page
        .lines()
        .filter(|line| line.starts_with("review_provider_answers_total"))
        .collect();
    assert!(answers.iter().any(|l| l.contains("code=\"other\"")), "{answers:#?}");
    assert!(answers.iter().any(|l| l.contains("code=\"200\"")), "{answers:#?}");
    assert!(!page.contains("1777"), "{answers:#?}");
    stop_and_assert_nothing_left(&world, &mut worker).await;
}
