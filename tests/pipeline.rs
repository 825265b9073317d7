//! A job in, a result out: the worker against a real RabbitMQ and the simulator.

#![allow(
    clippy::unwrap_used,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation,
    reason = "test and benchmark code: a panic is a failed run"
)]

mod common;

use std::time::Duration;

use common::{World, eventually, header_str, job, json_properties};
use serde_json::json;
use zai_sim::{SimArgs, SimConfig};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_job_in_gives_a_contract_valid_result_out() {
    let mut world = World::new("roundtrip", SimArgs::default()).await;
    let worker = world.spawn_worker();
    world.publish_job(&job("job-roundtrip-1")).await;

    let result = world.results(1, WAIT).await.remove(0);
    common::assert_valid_result(&result);
    assert_eq!(result["job_id"], "job-roundtrip-1");
    assert_eq!(result["status"], "completed");
    assert_eq!(result["model"], "glm-5.1");
    assert_eq!(result["used_fallback"], false);
    assert_eq!(result["attempts"], 1);
    // The simulator flags the unwrap() on line 4, the TODO on 5 and the password on 6.
    let lines: Vec<(u64, &str)> = result["suggestions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["line_start"].as_u64().unwrap(), s["severity"].as_str().unwrap()))
        .collect();
    assert!(lines.contains(&(4, "high")), "{lines:?}");
    assert!(lines.contains(&(6, "critical")), "{lines:?}");
    assert!(result["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn every_kind_of_bad_input_is_dead_lettered_while_good_jobs_keep_flowing() {
    let mut world = World::new("badinput", SimArgs::default()).await;
    world.set("API_REVIEW_MAX_JOB_BYTES", "4096");
    let worker = world.spawn_worker();

    world.publish(b"{not json", json_properties()).await;
    world.publish(&[0xff, 0xfe, 0x00], json_properties()).await;
    world.publish_job(&json!({"schema": "review-job/v1", "job_id": "no-diff", "repository": {"full_name": "a/b"}, "pull_request": {"number": 1}})).await;
    let mut huge = job("too-big");
    huge["diff"] = json!(format!("{}{}", job("x")["diff"].as_str().unwrap(), "+".repeat(5000)));
    world.publish_job(&huge).await;
    let mut not_a_diff = job("not-a-diff");
    not_a_diff["diff"] = json!("hello");
    world.publish_job(&not_a_diff).await;
    world.publish_job(&job("good-after-bad")).await;

    let dead = world.dead_letters(5, WAIT).await;
    for (_, headers) in &dead {
        assert_eq!(
            header_str(headers, "x-review-error-kind").as_deref(),
            Some("invalid_job")
        );
        assert!(header_str(headers, "x-review-error-message").is_some_and(|m| !m.is_empty() && !m.contains('\n')));
        assert!(header_str(headers, "x-review-failed-at").is_some());
        assert!(headers.inner().contains_key("x-review-attempts"));
    }
    let bodies: Vec<&[u8]> = dead.iter().map(|(body, _)| body.as_slice()).collect();
    assert!(bodies.contains(&b"{not json".as_slice()), "the original body is kept");

    // Three of the five have a readable job_id: they get failed results; the good job completes.
    let results = world.results(4, WAIT).await;
    for result in &results {
        common::assert_valid_result(result);
    }
    let by_id = |id: &str| {
        results
            .iter()
            .find(|r| r["job_id"] == id)
            .unwrap_or_else(|| panic!("no result for {id}"))
    };
    for id in ["no-diff", "too-big", "not-a-diff"] {
        assert_eq!(by_id(id)["status"], "failed");
        assert_eq!(by_id(id)["error"]["kind"], "invalid_job");
    }
    assert_eq!(by_id("good-after-bad")["status"], "completed");
    assert!(
        world.no_more_results(Duration::from_millis(500)).await.is_empty(),
        "no requeue loop"
    );
    assert_eq!(world.queue_len(&world.topology.jobs_queue).await, 0);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn reply_to_gets_the_same_result() {
    let mut world = World::new("replyto", SimArgs::default()).await;
    let (_channel, reply, mut replies) = world.broker.private_consumer(None).await.unwrap();
    let worker = world.spawn_worker();
    let properties = json_properties()
        .with_reply_to(reply.as_str().into())
        .with_correlation_id("corr-7".into());
    world
        .publish(&serde_json::to_vec(&job("job-rpc")).unwrap(), properties)
        .await;

    let delivery = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut replies))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        delivery.properties.correlation_id().as_ref().map(|c| c.as_str()),
        Some("corr-7")
    );
    assert_eq!(
        delivery.properties.message_id().as_ref().map(|c| c.as_str()),
        Some("job-rpc:result")
    );
    let rpc: serde_json::Value = serde_json::from_slice(&delivery.data).unwrap();
    let main = world.results(1, WAIT).await.remove(0);
    assert_eq!(rpc, main, "the reply is the published result");
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn transient_provider_errors_are_retried() {
    let mut world = World::new(
        "transient",
        SimArgs::from(SimConfig {
            fail_first: 2,
            fail_first_code: 500,
            ..Default::default()
        }),
    )
    .await;
    let worker = world.spawn_worker();
    world.publish_job(&job("job-flaky")).await;
    let result = world.results(1, WAIT).await.remove(0);
    assert_eq!(result["status"], "completed");
    let stats = world.sim.stats();
    assert_eq!(stats.chat_answered("500"), 2);
    assert_eq!(stats.chat_answered("200"), 1);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn an_unreadable_answer_is_repaired_once() {
    let mut world = World::new(
        "repair",
        SimArgs::from(SimConfig {
            garbage_rate: 1.0,
            ..Default::default()
        }),
    )
    .await;
    let worker = world.spawn_worker();
    world.publish_job(&job("job-garbage")).await;
    let result = world.results(1, WAIT).await.remove(0);
    common::assert_valid_result(&result);
    // With every answer garbage the repair fails too: bad_model_output after exactly two calls.
    assert_eq!(result["status"], "failed");
    assert_eq!(result["error"]["kind"], "bad_model_output");
    assert_eq!(world.sim.stats().chat_requests, 2);
    let dead = world.dead_letters(1, WAIT).await;
    assert_eq!(
        header_str(&dead[0].1, "x-review-error-kind").as_deref(),
        Some("bad_model_output")
    );
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_job_is_never_acked_without_its_confirmed_result() {
    // The provider holds its answer for a second: time to take the results exchange away and
    // stop the worker while the review is surely in flight.
    let sim = SimArgs::from(zai_sim::SimConfig {
        latency_ms: 1_000,
        ..Default::default()
    });
    let mut world = World::new("noack", sim).await;
    let worker = world.spawn_worker();
    world.wait_for_consumers(1, WAIT).await;
    world.publish_job(&job("job-unpublishable")).await;
    world.review_in_flight(WAIT).await;

    // Without the results exchange the result cannot be published (the broker closes the
    // publishing channel instead of confirming it).
    let admin = world.broker.channel().await.unwrap();
    admin
        .exchange_delete(world.topology.exchange.as_str().into(), Default::default())
        .await
        .unwrap();
    assert_eq!(
        world.sim.stats().chat_answered("200"),
        0,
        "the answer came before the exchange was gone: the scenario needs a longer latency"
    );
    // Stopped now, the worker lets the review finish (its drain timeout is 5 s) and does not
    // reconnect, which would declare the exchange again and publish the kept result.
    worker.stop().await.expect("the worker stops cleanly");
    assert_eq!(
        world.sim.stats().chat_answered("200"),
        1,
        "the review in flight finished"
    );

    // Its consumer gone, a job it did not ack is ready again. A quorum queue's count may lag
    // the requeue by a moment.
    eventually(
        WAIT,
        "the job back in the jobs queue, unacked after its result failed to publish",
        async || world.queue_len(&world.topology.jobs_queue).await == 1,
    )
    .await;
    assert!(
        world.no_more_results(Duration::from_millis(100)).await.is_empty(),
        "no result can have been published"
    );

    // A fresh worker declares the exchange again, reviews the job once more and delivers it.
    world.sim.configure(|c| c.latency_ms = 0);
    let worker = world.spawn_worker();
    let result = world.results(1, WAIT).await.remove(0);
    assert_eq!(result["job_id"], "job-unpublishable");
    assert_eq!(result["status"], "completed");
    worker.stop().await.unwrap();
    assert_eq!(world.sim.stats().chat_requests, 2, "reviewed exactly once more");
    assert!(
        world.no_more_results(Duration::from_millis(100)).await.is_empty(),
        "one result"
    );
    assert_eq!(
        world.queue_len(&world.topology.jobs_queue).await,
        0,
        "acked once published"
    );
}

#[tokio::test]
async fn the_files_form_of_a_job_is_reviewed_too() {
    let mut world = World::new("files", SimArgs::default()).await;
    let worker = world.spawn_worker();
    let mut job = job("job-files");
    job.as_object_mut().unwrap().remove("diff");
    job["files"] = json!([{"path": "src/lib.rs", "status": "added", "patch": "@@ -0,0 +1,2 @@\n+fn f() { x.unwrap(); }\n+// TODO later\n"}]);
    world.publish_job(&job).await;
    let result = world.results(1, WAIT).await.remove(0);
    common::assert_valid_result(&result);
    assert_eq!(result["status"], "completed");
    let files: Vec<&str> = result["suggestions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["file"].as_str().unwrap())
        .collect();
    assert!(
        !files.is_empty() && files.iter().all(|f| *f == "src/lib.rs"),
        "{files:?}"
    );
    worker.stop().await.unwrap();
}
