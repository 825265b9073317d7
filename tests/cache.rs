//! The answer cache (issue 10, item 7): an identical prompt within the TTL is answered from the
//! leader's memory, not by a provider call. Real broker, the simulator counting the calls.

#![allow(
    clippy::unwrap_used,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation,
    reason = "test and benchmark code: a panic is a failed run"
)]

mod common;

use std::time::Duration;

use common::{World, eventually_some, job};
use serde_json::Value;
use zai_sim::SimArgs;

const WAIT: Duration = Duration::from_secs(30);

/// A world whose workers keep answers for an hour (the tests' default is the cache off).
async fn world_with_cache(test: &str) -> World {
    let mut world = World::new(test, SimArgs::default()).await;
    world.set("API_REVIEW_CACHE_TTL_SECS", "3600");
    world
}

fn cache_hits(result: &Value) -> u64 {
    result["usage"]["cache_hits"].as_u64().unwrap_or(0)
}

#[tokio::test]
async fn two_jobs_with_the_same_diff_and_pr_cost_one_provider_call_and_both_get_results() {
    let mut world = world_with_cache("cache-same").await;
    let worker = world.spawn_process(&[]);
    world.publish_job(&job("same-1")).await;
    world.publish_job(&job("same-2")).await;

    let results = world.results(2, WAIT).await;
    assert_eq!(world.sim.stats().chat_requests, 1, "one provider call for one prompt");
    for result in &results {
        common::assert_valid_result(result);
        assert_eq!(result["status"], "completed");
    }
    assert_eq!(results[0]["suggestions"], results[1]["suggestions"]);
    assert!(!results[0]["suggestions"].as_array().unwrap().is_empty());
    // The reuse shows in the result: no request, no tokens, one cache hit.
    let (hit, called): (Vec<&Value>, Vec<&Value>) = results.iter().partition(|r| cache_hits(r) == 1);
    assert_eq!((hit.len(), called.len()), (1, 1), "{results:#?}");
    assert_eq!(hit[0]["usage"]["requests"], 0);
    assert_eq!(hit[0]["usage"]["prompt_tokens"], 0);
    assert_eq!(called[0]["usage"]["requests"], 1);
    assert!(called[0]["usage"].get("cache_hits").is_none(), "absent when zero");

    let url = format!("http://127.0.0.1:{}/metrics", worker.health_port);
    eventually_some(WAIT, "/metrics counting one cache hit", async || {
        let text = reqwest::get(&url).await.ok()?.text().await.ok()?;
        text.lines()
            .any(|line| line.starts_with("review_cache_hits_total{") && line.ends_with("} 1"))
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn with_the_cache_off_the_same_two_jobs_cost_two_calls() {
    let mut world = World::new("cache-off", SimArgs::default()).await;
    world.set("API_REVIEW_CACHE_TTL_SECS", "0");
    let worker = world.spawn_worker();
    world.publish_job(&job("off-1")).await;
    world.publish_job(&job("off-2")).await;

    let results = world.results(2, WAIT).await;
    assert_eq!(world.sim.stats().chat_requests, 2);
    assert!(
        results
            .iter()
            .all(|r| cache_hits(r) == 0 && r["usage"]["requests"] == 1)
    );
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_redelivered_job_reuses_the_answer_in_the_same_process_but_a_restarted_worker_calls_again() {
    let mut world = world_with_cache("cache-restart").await;
    let worker = world.spawn_worker();
    world.publish_job(&job("again")).await;
    let first = world.results(1, WAIT).await.remove(0);
    // The producer sends the same job again (a redelivery): the same prompt.
    world.publish_job(&job("again")).await;
    let second = world.results(1, WAIT).await.remove(0);
    assert_eq!(world.sim.stats().chat_requests, 1);
    assert_eq!((cache_hits(&first), cache_hits(&second)), (0, 1));
    assert_eq!(first["suggestions"], second["suggestions"]);
    worker.stop().await.unwrap();

    // The cache is this process's memory only: a new worker starts with none.
    let worker = world.spawn_worker();
    world.publish_job(&job("again")).await;
    let third = world.results(1, WAIT).await.remove(0);
    assert_eq!(world.sim.stats().chat_requests, 2);
    assert_eq!(cache_hits(&third), 0);
    assert_eq!(third["suggestions"], first["suggestions"]);
    worker.stop().await.unwrap();
}
