//! The plan's limits across replicas: the deployment-wide cap, quota windows, account problems and
//! the fallback, with real worker processes against a real RabbitMQ and the simulator.

#![allow(
    clippy::unwrap_used,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation,
    reason = "test and benchmark code: a panic is a failed run"
)]

mod common;

use std::time::Duration;

use common::{World, job};
use serde_json::Value;
use zai_sim::{Lang, SimArgs, SimConfig, SimHandle, SimKeys};

const WAIT: Duration = Duration::from_secs(60);

fn all_completed(results: &[Value]) {
    for result in results {
        common::assert_valid_result(result);
        assert_eq!(result["status"], "completed", "{result:#}");
    }
    let mut ids: Vec<&str> = results.iter().map(|r| r["job_id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), results.len(), "one result per job");
}

#[tokio::test]
async fn three_replicas_on_lite_never_have_two_calls_in_flight() {
    let mut world = World::new(
        "cap3",
        SimArgs::from(SimConfig {
            latency_ms: 150,
            max_concurrency: 1,
            ..Default::default()
        }),
    )
    .await;
    let replicas: Vec<_> = (0..3).map(|_| world.spawn_process(&[])).collect();
    world.wait_for_consumers(1, WAIT).await;
    for i in 0..12 {
        world.publish_job(&job(&format!("cap-{i}"))).await;
    }
    all_completed(&world.results(12, WAIT).await);
    let stats = world.sim.stats();
    assert_eq!(stats.peak_in_flight, 1, "{stats:?}");
    assert_eq!(stats.chat_answered("1302"), 0, "{stats:?}");
    let mut leaders = 0;
    for replica in &replicas {
        leaders += usize::from(replica.is_leader().await);
    }
    assert_eq!(leaders, 1, "exactly one replica leads");
}

#[tokio::test]
async fn a_five_hour_window_pauses_every_replica_and_loses_no_job() {
    let sim = SimArgs::from(SimConfig {
        window_calls: 3,
        window_secs: 3,
        latency_ms: 50,
        ..Default::default()
    });
    let mut world = World::new("window", sim).await;
    let a = world.spawn_process(&[]);
    let b = world.spawn_process(&[]);
    world.wait_for_consumers(1, WAIT).await;
    for i in 0..8 {
        world.publish_job(&job(&format!("win-{i}"))).await;
    }
    // While paused, both replicas say so, with the reset time.
    for replica in [&a, &b] {
        let body = replica
            .wait_ready_body(WAIT, |status, body| {
                status == 503 && body["pauses"][0]["code"] == "1308"
            })
            .await;
        assert!(
            body["pauses"][0]["paused_until"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z')),
            "{body:#}"
        );
    }
    let results = world.results(8, Duration::from_secs(90)).await;
    all_completed(&results);
    assert!(world.no_more_results(Duration::from_millis(300)).await.is_empty());
    // 8 jobs at 3 per window: 3 windows, each discovered by at most one wasted call per replica.
    let wasted = world.sim.stats().chat_answered("1308");
    assert!(
        (1..=3 * 2).contains(&wasted),
        "wasted {wasted} calls on exhausted windows"
    );
    assert!(world.no_dead_letters(Duration::from_millis(300)).await);
    let log = a.log_text() + &b.log_text();
    assert!(log.contains("5-hour quota exhausted (code 1308)"), "{log}");
    assert!(
        results.iter().all(|r| r["attempts"] == 1),
        "waiting for a window costs no attempt"
    );
}

#[tokio::test]
async fn a_weekly_window_with_chinese_messages_is_waited_out() {
    let sim = SimArgs::from(SimConfig {
        weekly_calls: 2,
        weekly_secs: 3,
        lang: Lang::Zh,
        ..Default::default()
    });
    let mut world = World::new("weekly", sim).await;
    let replica = world.spawn_process(&[]);
    world.wait_for_consumers(1, WAIT).await;
    for i in 0..4 {
        world.publish_job(&job(&format!("week-{i}"))).await;
    }
    all_completed(&world.results(4, Duration::from_secs(90)).await);
    assert!(world.sim.stats().chat_answered("1310") >= 1);
    let log = replica.log_text();
    assert!(log.contains("weekly quota exhausted (code 1310)"), "{log}");
    assert!(
        log.contains("resets_at") || log.contains("reset_at"),
        "the reset time is logged: {log}"
    );
}

#[tokio::test]
async fn killing_the_leader_mid_review_loses_no_job() {
    let mut world = World::new(
        "kill9",
        SimArgs::from(SimConfig {
            latency_ms: 700,
            ..Default::default()
        }),
    )
    .await;
    let mut replicas: Vec<_> = (0..3).map(|_| world.spawn_process(&[])).collect();
    world.wait_for_consumers(1, WAIT).await;
    for i in 0..5 {
        world.publish_job(&job(&format!("kill-{i}"))).await;
    }
    // Wait for a review in flight, then kill -9 whoever leads.
    world.review_in_flight(WAIT).await;
    let mut killed = false;
    for replica in &mut replicas {
        if replica.is_leader().await {
            replica.kill9();
            killed = true;
            break;
        }
    }
    assert!(killed, "a leader was found and killed");
    all_completed(&world.results(5, WAIT).await);
}

#[tokio::test]
async fn a_key_for_the_other_endpoint_stops_the_worker_at_start_and_consumes_nothing() {
    for (mismatch, sim) in [
        ("401", SimArgs::default()),
        (
            "1113",
            SimArgs::from(SimConfig {
                mismatch_code: zai_sim::MismatchCode::InsufficientBalance,
                ..Default::default()
            }),
        ),
    ] {
        let world = World::new("startprobe", sim).await;
        world.publish_job(&job("never-consumed")).await;
        // A developer key on the Coding Plan endpoint.
        let mut worker = world.spawn_process(&[("API_OPEN_AI_API_KEY", "sim-developer-key")]);
        let status = tokio::time::timeout(WAIT, worker.child.wait()).await.unwrap().unwrap();
        assert_eq!(status.code(), Some(3), "{mismatch}: {}", worker.log_text());
        let log = worker.log_text();
        assert!(log.contains("Coding Plan keys work only on"), "{mismatch}: {log}");
        assert_eq!(
            world.queue_len(&world.topology.jobs_queue).await,
            1,
            "{mismatch}: nothing consumed"
        );
    }
}

#[tokio::test]
async fn a_key_revoked_mid_run_pauses_and_resumes_without_failing_a_job() {
    let mut world = World::new(
        "revoke",
        SimArgs::from(SimConfig {
            latency_ms: 100,
            ..Default::default()
        }),
    )
    .await;
    let worker = world.spawn_process(&[]);
    world.wait_for_consumers(1, WAIT).await;
    for i in 0..2 {
        world.publish_job(&job(&format!("before-{i}"))).await;
    }
    all_completed(&world.results(2, WAIT).await);

    world.sim.set_keys(SimKeys {
        coding_keys: vec![],
        developer_keys: vec!["sim-developer-key".into()],
    });
    for i in 0..3 {
        world.publish_job(&job(&format!("during-{i}"))).await;
    }
    let body = worker
        .wait_ready_body(WAIT, |status, body| {
            status == 503 && body["pauses"][0]["waiting_for"] == "a successful probe"
        })
        .await;
    assert!(body["reason"].as_str().unwrap().contains("invalid key"), "{body:#}");
    assert!(
        world.no_more_results(Duration::from_secs(2)).await.is_empty(),
        "nothing fails while the key is revoked"
    );

    world.sim.set_keys(SimKeys {
        coding_keys: vec!["sim-coding-key".into()],
        developer_keys: vec!["sim-developer-key".into()],
    });
    all_completed(&world.results(3, WAIT).await);
    worker.wait_ready_body(WAIT, |status, _| status == 200).await;
    assert!(world.no_dead_letters(Duration::from_millis(300)).await);
    assert!(worker.log_text().contains("usable again"));
}

#[tokio::test]
async fn the_fallback_takes_over_during_a_window_and_hands_back_after_the_reset() {
    let fallback = SimHandle::spawn(SimArgs::default()).await.unwrap();
    let mut world = World::new(
        "fallback",
        SimArgs::from(SimConfig {
            window_calls: 2,
            window_secs: 2,
            ..Default::default()
        }),
    )
    .await;
    world.set("API_LLM_FALLBACK_PROVIDER_MODEL", "glm-4.5-air");
    world.set("API_LLM_FALLBACK_BASE_URL", &fallback.developer_base_url());
    world.set("API_LLM_FALLBACK_API_KEY", "sim-developer-key");
    let worker = world.spawn_process(&[]);
    world.wait_for_consumers(1, WAIT).await;

    for i in 0..5 {
        world.publish_job(&job(&format!("fb-{i}"))).await;
    }
    let results = world.results(5, WAIT).await;
    all_completed(&results);
    let on_fallback = results.iter().filter(|r| r["used_fallback"] == true).count();
    assert_eq!(on_fallback, 3, "two fit the window, the rest went to the fallback");
    assert!(
        results
            .iter()
            .filter(|r| r["used_fallback"] == true)
            .all(|r| r["model"] == "glm-4.5-air")
    );

    // After the reset (2 s, plus the margin) the main provider takes over again.
    worker
        .wait_ready_body(WAIT, |status, body| {
            status == 200 && body["pauses"].as_array().is_some_and(Vec::is_empty)
        })
        .await;
    world.publish_job(&job("fb-after")).await;
    let after = world.results(1, WAIT).await.remove(0);
    assert_eq!(after["used_fallback"], false, "{after:#}");
    let log = worker.log_text();
    assert!(log.contains("switching to the fallback"), "{log}");
    assert!(log.contains("switching back to the main provider"), "{log}");
}
