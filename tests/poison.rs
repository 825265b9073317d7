//! Jobs that could loop, wrap or stall: a task that panics, producer headers that lie, a result
//! the broker refuses. Each goes through RabbitMQ to a running worker, which must stay alive,
//! review a normal job published after it, and leave nothing unacked.

#![allow(
    clippy::unwrap_used,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation,
    reason = "test and benchmark code: a panic is a failed run"
)]

mod common;

use std::time::Duration;

use common::{World, header_str, job};
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable, LongString};
use serde_json::Value;
use zai_sim::{SimArgs, SimConfig};

const WAIT: Duration = Duration::from_secs(60);

fn headers(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (name, value) in pairs {
        table.insert((*name).into(), value.clone());
    }
    table
}

fn by_id<'a>(results: &'a [Value], id: &str) -> &'a Value {
    results
        .iter()
        .find(|r| r["job_id"] == id)
        .unwrap_or_else(|| panic!("no result for {id} in {results:#?}"))
}

/// After the worker stopped (its channels closed, so anything unacked is back), the jobs queue
/// is empty.
async fn nothing_left(world: &World, mut worker: common::WorkerProcess) {
    assert!(worker.terminate().await.success(), "{}", worker.log_text());
    assert_eq!(
        world.queue_len(&world.topology.jobs_queue).await,
        0,
        "{}",
        worker.log_text()
    );
}

#[tokio::test]
async fn a_job_whose_task_panics_is_tried_once_more_then_dead_lettered_as_internal() {
    let mut world = World::new("panic", SimArgs::default()).await;
    let worker = world.spawn_process(&[]);
    world.publish_job(&job("test-panic-1")).await;
    world.publish_job(&job("normal-after-panic")).await;

    let results = world.results(2, WAIT).await;
    assert_eq!(by_id(&results, "normal-after-panic")["status"], "completed");
    let failed = by_id(&results, "test-panic-1");
    assert_eq!(failed["status"], "failed", "{failed:#}");
    common::assert_valid_result(failed);
    let (_, dead) = world.dead_letters(1, WAIT).await.remove(0);
    assert_eq!(header_str(&dead, "x-review-error-kind").as_deref(), Some("internal"));
    assert_eq!(world.sim.stats().chat_requests, 1, "the panicking job made no call");
    let log = worker.log_text();
    assert_eq!(log.matches("the worker failed on a job").count(), 2, "{log}");
    nothing_left(&world, worker).await;
}

#[tokio::test]
async fn producer_headers_can_neither_hop_a_job_past_its_age_nor_wrap_its_attempts() {
    let sim = SimArgs::from(SimConfig {
        fail_first: 5,
        fail_first_code: 500,
        ..Default::default()
    });
    let mut world = World::new("headers", sim).await;
    world.set("API_REVIEW_MAX_JOB_AGE", "3");
    let worker = world.spawn_process(&[]);
    let far = chrono::Utc::now().timestamp_millis() + 400 * 86_400_000;
    // Not before 400 days from now, first seen in the future: without clamps it would hop round
    // the 1-day tier forever and never expire.
    world
        .publish(
            &serde_json::to_vec(&job("hops-forever")).unwrap(),
            common::json_properties().with_headers(headers(&[
                ("x-review-not-before", AMQPValue::LongLongInt(far)),
                ("x-review-first-seen", AMQPValue::LongLongInt(far)),
            ])),
        )
        .await;
    // 2^40 attempts: `as u32` would make that 0, and the job would be retried as new.
    world
        .publish(
            &serde_json::to_vec(&job("many-attempts")).unwrap(),
            common::json_properties().with_headers(headers(&[(
                "x-review-attempts",
                AMQPValue::LongString(LongString::from(b"1099511627776".to_vec())),
            )])),
        )
        .await;

    let results = world.results(2, WAIT).await;
    let expired = by_id(&results, "hops-forever");
    assert_eq!(expired["error"]["kind"], "expired", "{expired:#}");
    let exhausted = by_id(&results, "many-attempts");
    assert_eq!(exhausted["error"]["kind"], "attempts_exhausted", "{exhausted:#}");
    assert_eq!(exhausted["attempts"], u64::from(u32::MAX), "{exhausted:#}");

    world.publish_job(&job("normal-after-headers")).await;
    let normal = world.results(1, WAIT).await.remove(0);
    assert_eq!(normal["status"], "completed", "{normal:#}");
    nothing_left(&world, worker).await;
}

#[tokio::test]
async fn a_result_the_broker_refuses_is_dead_lettered_after_three_tries_without_a_second_review() {
    let mut world = World::new("refused", SimArgs::default()).await;
    // A reply queue that refuses every message: the broker nacks the worker's publish.
    let reply = world.topology.own("full-reply");
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(0));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString(LongString::from(b"reject-publish".to_vec())),
    );
    let channel = world.broker.channel().await.unwrap();
    channel
        .queue_declare(
            reply.as_str().into(),
            QueueDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            args,
        )
        .await
        .unwrap();
    let worker = world.spawn_process(&[]);
    world
        .publish(
            &serde_json::to_vec(&job("reply-refused")).unwrap(),
            common::json_properties().with_reply_to(reply.as_str().into()),
        )
        .await;
    world.publish_job(&job("normal-after-refusal")).await;

    let (_, dead) = world.dead_letters(1, WAIT).await.remove(0);
    assert_eq!(
        header_str(&dead, "x-review-error-kind").as_deref(),
        Some("result_unpublishable")
    );
    let stats = world.sim.stats();
    assert_eq!(
        stats.chat_requests, 2,
        "one call per job: the refused result was kept, not reviewed again"
    );
    let log = worker.log_text();
    assert_eq!(
        log.matches("the broker refused the result of reply-refused").count(),
        3,
        "three tries, seconds apart, not one a second:\n{log}"
    );
    let normal_completed = |results: &[Value]| {
        results
            .iter()
            .any(|r| r["job_id"] == "normal-after-refusal" && r["status"] == "completed")
    };
    if let Err(results) = world.results_until(WAIT, normal_completed).await {
        panic!("no completed result for normal-after-refusal: {results:#?}\n{log}");
    }
    nothing_left(&world, worker).await;
}
