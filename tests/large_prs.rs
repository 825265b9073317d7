//! Large PRs through the whole worker: split into calls, resumed across a quota window without
//! paying twice for a call, and carried forward between pushes, against a real RabbitMQ and the
//! simulator.

#![allow(
    clippy::unwrap_used,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation,
    reason = "test and benchmark code: a panic is a failed run"
)]

mod common;

use std::time::Duration;

use common::{World, job};
use serde_json::{Value, json};
use zai_sim::{SimArgs, SimConfig};

const WAIT: Duration = Duration::from_secs(60);

/// A diff of `files` files in separate directories, each adding `lines` lines (the sixth with an
/// `unwrap()` the simulator flags); `edit` changes one line of the files it names.
fn diff(files: usize, lines: usize, edit: &[usize]) -> String {
    (0..files)
        .map(|f| {
            let body: String = (0..lines)
                .map(|l| {
                    let value = if edit.contains(&f) && l == 3 { 1_000 + l } else { l };
                    let unwrap = if l == 5 { ".unwrap()" } else { "" };
                    format!("+    let total_{l} = compute(input, {value}){unwrap};\n")
                })
                .collect();
            format!("diff --git a/m{f}/lib.rs b/m{f}/lib.rs\n--- a/m{f}/lib.rs\n+++ b/m{f}/lib.rs\n@@ -0,0 +1,{lines} @@\n{body}")
        })
        .collect()
}

fn large_job(id: &str, diff: String) -> Value {
    let mut job = job(id);
    job["diff"] = json!(diff);
    job["options"]["max_suggestions"] = json!(50);
    job
}

fn coverage(result: &Value) -> &Value {
    &result["coverage"]
}

#[tokio::test]
async fn a_large_pr_cut_by_the_quota_window_resumes_without_paying_twice_for_a_call() {
    // Two calls per 3 s window; the PR needs three.
    let mut world = World::new(
        "resume",
        SimArgs::from(SimConfig {
            window_calls: 2,
            window_secs: 3,
            ..Default::default()
        }),
    )
    .await;
    world.set("API_REVIEW_CALL_TOKENS", "2500");
    let worker = world.spawn_worker();
    world.publish_job(&large_job("large-1", diff(6, 60, &[]))).await;

    let result = world.results(1, WAIT).await.remove(0);
    common::assert_valid_result(&result);
    assert_eq!(result["status"], "completed", "{result:#}");
    let stats = world.sim.stats();
    assert_eq!(coverage(&result)["calls"], 3, "{result:#}");
    assert_eq!(
        stats.chat_answered("200"),
        3,
        "three chunks, three answered calls: the two before the window are not made again ({stats:?})"
    );
    assert!(stats.chat_answered("1308") >= 1, "the window was hit: {stats:?}");
    assert_eq!(result["usage"]["requests"], 3);
    assert_eq!(coverage(&result)["lines_reviewed"], 360);
    assert_eq!(coverage(&result)["lines_reviewable"], 360);
    assert_eq!(result["attempts"], 1, "waiting for a window costs no attempt");
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_re_push_sends_only_the_changed_hunks_and_carries_the_rest() {
    let world = World::new("carry", SimArgs::from(SimConfig::default())).await;
    let mut world = world;
    world.set("API_REVIEW_CALL_TOKENS", "2500");
    let worker = world.spawn_worker();

    world.publish_job(&large_job("push-1", diff(6, 60, &[]))).await;
    let first = world.results(1, WAIT).await.remove(0);
    assert_eq!(coverage(&first)["calls"], 3, "{first:#}");
    let first_suggestions = first["suggestions"].as_array().unwrap().clone();
    assert!(!first_suggestions.is_empty(), "{first:#}");
    assert_eq!(coverage(&first)["hunks"].as_array().unwrap().len(), 6);
    let calls_before = world.sim.stats().chat_answered("200");

    // The next push changes one file; the producer echoes the last result back.
    let mut next = large_job("push-2", diff(6, 60, &[4]));
    next["previous_result"] = first.clone();
    world.publish_job(&next).await;
    let second = world.results(1, WAIT).await.remove(0);
    common::assert_valid_result(&second);
    assert_eq!(
        world.sim.stats().chat_answered("200") - calls_before,
        1,
        "one call for the one changed file"
    );
    assert_eq!(coverage(&second)["calls"], 1);
    assert_eq!(coverage(&second)["lines_carried"], 300);
    assert_eq!(coverage(&second)["lines_reviewed"], 360);
    let carried: Vec<&Value> = second["suggestions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["carried"] == true)
        .collect();
    let unchanged: Vec<&Value> = first_suggestions.iter().filter(|s| s["file"] != "m4/lib.rs").collect();
    assert_eq!(carried.len(), unchanged.len(), "{second:#}");
    for s in &carried {
        assert_ne!(s["file"], "m4/lib.rs", "the changed file is reviewed afresh");
    }
    worker.stop().await.unwrap();
}
