//! Operating the worker: `check`, readiness, metrics, graceful shutdown, broker restarts and what
//! the logs say (and never say).

#![allow(
    clippy::unwrap_used,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation,
    reason = "test and benchmark code: a panic is a failed run"
)]

mod common;

use std::time::Duration;

use common::{PrivateNode, World, eventually, eventually_some, free_port, job};
use zai_sim::{SimArgs, SimConfig, SimHandle, SimKeys};

const WAIT: Duration = Duration::from_secs(60);

async fn check(world: &World, extra: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_review-worker"));
    command.arg("check").env_clear();
    for (k, v) in world.vars() {
        command.env(k, v);
    }
    for (k, v) in extra {
        command.env(k, v);
    }
    let output = command.output().await.unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    (output.status.code(), text)
}

#[tokio::test]
async fn check_reports_a_usable_provider_without_secrets() {
    let world = World::new("check-ok", SimArgs::default()).await;
    let (code, out) = check(&world, &[]).await;
    assert_eq!(code, Some(0), "{out}");
    for expected in [
        "provider:",
        "plan:      lite",
        "endpoint:  http://127.0.0.1:",
        "model:     glm-5.1",
        "listed by the endpoint",
        "latency:",
        "usable",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    assert!(!out.contains("sim-coding-key"), "the key is never printed:\n{out}");
}

#[tokio::test]
async fn check_maps_401_404_1113_and_unknown_models_to_advice_and_fails() {
    let world = World::new("check-bad", SimArgs::default()).await;
    let (code, out) = check(&world, &[("API_OPEN_AI_API_KEY", "sim-developer-key")]).await;
    assert_eq!(code, Some(3), "{out}");
    assert!(
        out.contains("Coding Plan keys work only on https://api.z.ai/api/coding/paas/v4"),
        "{out}"
    );

    let wrong_path = world.sim.coding_base_url().replace("/api/coding/paas/v4", "/api/v1");
    let (code, out) = check(&world, &[("API_OPENAI_FORCE_BASE_URL", &wrong_path)]).await;
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains("the base URL is wrong"), "{out}");

    let (code, out) = check(&world, &[("API_LLM_PROVIDER_MODEL", "glm-9")]).await;
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains("model not available") && out.contains("glm-9"), "{out}");

    let mismatch = World::new(
        "check-1113",
        SimArgs::from(SimConfig {
            mismatch_code: zai_sim::MismatchCode::InsufficientBalance,
            ..Default::default()
        }),
    )
    .await;
    let (code, out) = check(&mismatch, &[("API_OPEN_AI_API_KEY", "sim-developer-key")]).await;
    assert_eq!(code, Some(3), "{out}");
    assert!(
        out.contains("code 1113") && out.contains("Coding Plan keys work only on"),
        "{out}"
    );
}

#[tokio::test]
async fn readiness_shows_leader_and_standby_and_metrics_count_the_work() {
    let mut world = World::new("ready-metrics", SimArgs::default()).await;
    let first = world.spawn_process(&[]);
    let leader = first
        .wait_ready_body(WAIT, |status, body| status == 200 && body["role"] == "leader")
        .await;
    assert_eq!(leader["consuming"], true);
    assert_eq!(leader["effective_cap"], 1);
    let second = world.spawn_process(&[]);
    second
        .wait_ready_body(WAIT, |status, body| status == 200 && body["role"] == "standby")
        .await;

    for i in 0..3 {
        world.publish_job(&job(&format!("metrics-{i}"))).await;
    }
    world.results(3, WAIT).await;
    // A job is counted when it is settled, a moment after its result is out.
    let url = format!("http://127.0.0.1:{}/metrics", first.health_port);
    let metrics = eventually_some(WAIT, "/metrics counting 3 completed jobs, none in flight", async || {
        let text = reqwest::get(&url).await.ok()?.text().await.ok()?;
        (text.contains("review_jobs_total{outcome=\"completed\"} 3") && text.contains("review_in_flight 0"))
            .then_some(text)
    })
    .await;
    for expected in [
        "review_jobs_total{outcome=\"completed\"} 3",
        "review_effective_cap{lane=\"main\"} 1",
        "review_paused{lane=\"main\"} 0",
        "review_in_flight 0",
        "review_provider_answers_total{",
        "code=\"200\"} 3",
        "review_prompt_tokens_total{",
        "review_completion_tokens_total{",
        "review_cost_equivalent_microdollars_total{",
        "review_latency_seconds_bucket{",
    ] {
        assert!(metrics.contains(expected), "missing {expected:?} in:\n{metrics}");
    }
    let health = reqwest::get(format!("http://127.0.0.1:{}/health", second.health_port))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn sigterm_lets_a_review_in_flight_finish_and_exits_zero() {
    let mut world = World::new(
        "drain",
        SimArgs::from(SimConfig {
            latency_ms: 1500,
            ..Default::default()
        }),
    )
    .await;
    let mut worker = world.spawn_process(&[]);
    world.wait_for_consumers(1, WAIT).await;
    world.publish_job(&job("drain-1")).await;
    world.review_in_flight(WAIT).await;
    let status = worker.terminate().await;
    assert_eq!(status.code(), Some(0), "{}", worker.log_text());
    let result = world.results(1, Duration::from_secs(5)).await.remove(0);
    assert_eq!(result["status"], "completed");
    assert_eq!(world.queue_len(&world.topology.jobs_queue).await, 0);
    assert!(worker.log_text().contains("draining reviews in flight"));
}

#[tokio::test]
async fn sigterm_past_the_drain_timeout_returns_the_job_to_the_queue() {
    let mut world = World::new(
        "drain-timeout",
        SimArgs::from(SimConfig {
            latency_ms: 10_000,
            ..Default::default()
        }),
    )
    .await;
    let mut worker = world.spawn_process(&[("API_WORKER_DRAIN_TIMEOUT_MS", "300")]);
    world.wait_for_consumers(1, WAIT).await;
    world.publish_job(&job("drain-2")).await;
    world.review_in_flight(WAIT).await;
    let started = std::time::Instant::now();
    let status = worker.terminate().await;
    assert_eq!(status.code(), Some(0), "{}", worker.log_text());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "it did not wait for the 10 s review"
    );
    // A quorum queue's count may lag the requeue by a moment.
    eventually(WAIT, "the job back in the queue, unacked work returned", async || {
        world.queue_len(&world.topology.jobs_queue).await == 1
    })
    .await;
    assert!(world.no_more_results(Duration::from_millis(300)).await.is_empty());
    // Nothing is lost: the next worker reviews it.
    world.sim.configure(|c| c.latency_ms = 0);
    let _next = world.spawn_process(&[]);
    assert_eq!(world.results(1, WAIT).await[0]["job_id"], "drain-2");
}

#[tokio::test]
async fn the_worker_survives_a_broker_restart_and_reviews_each_job_exactly_once() {
    let node = PrivateNode::start();
    let sim = SimHandle::spawn(SimArgs::from(SimConfig {
        latency_ms: 300,
        ..Default::default()
    }))
    .await
    .unwrap();
    let mut world = World::on_broker("restart", sim, node.uri()).await;
    let worker = world.spawn_process(&[]);
    world.wait_for_consumers(1, WAIT).await;
    for i in 0..6 {
        world.publish_job(&job(&format!("restart-{i}"))).await;
    }
    let results = world.results(2, WAIT).await;

    // A review is in flight when the broker goes: it comes back, its result cannot be published,
    // and it is kept for when the job is redelivered.
    world.review_in_flight(WAIT).await;
    node.stop();
    worker
        .wait_ready_body(WAIT, |status, body| {
            status == 503 && body["reason"] == "not connected to RabbitMQ"
        })
        .await;
    node.restart();
    worker.wait_ready_body(WAIT, |status, _| status == 200).await;

    world.resubscribe().await;
    let ids = |results: &[serde_json::Value]| -> Vec<String> {
        results
            .iter()
            .map(|r| r["job_id"].as_str().unwrap().to_owned())
            .collect()
    };
    // Duplicates may come (at least once), so wait for each job's id rather than a count.
    let earlier = ids(&results);
    let every_job = |later: &[serde_json::Value]| {
        let seen = [earlier.clone(), ids(later)].concat();
        (0..6).all(|i| seen.contains(&format!("restart-{i}")))
    };
    if let Err(later) = world.results_until(WAIT, every_job).await {
        panic!(
            "not every job's result within {WAIT:?}: {earlier:?} then {:?}\n{}",
            ids(&later),
            worker.log_text()
        );
    }
    let log = worker.log_text();
    assert_eq!(
        world.sim.stats().chat_requests,
        6,
        "one provider call per job, the one in flight at the outage included\n{log}"
    );
    assert!(log.contains("lost the RabbitMQ connection"), "{log}");
    assert!(
        log.contains("publishing the result kept from an earlier delivery"),
        "{log}"
    );
    assert!(log.contains("connected to RabbitMQ"), "{log}");
}

#[tokio::test]
async fn the_api_key_never_appears_in_any_log_line_and_json_logs_are_json() {
    const PLANTED: &str = "sk-PLANTED-3f9a7c1e5d2b8a4f";
    let sim = SimHandle::spawn(SimArgs {
        coding_keys: vec![PLANTED.into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut world = World::with_sim("nokey", sim).await;
    world.set("API_OPEN_AI_API_KEY", PLANTED);
    world.set("API_LOG_FORMAT", "json");
    world.set("API_LOG_LEVEL", "trace");
    let worker = world.spawn_process(&[]);
    world.wait_for_consumers(1, WAIT).await;
    world.publish_job(&job("key-1")).await;
    world.results(1, WAIT).await;
    // Errors too: the key is revoked, calls fail with 401, probes fail, then it is restored.
    world.sim.set_keys(SimKeys {
        coding_keys: vec![],
        developer_keys: vec![],
    });
    world.publish_job(&job("key-2")).await;
    worker.wait_ready_body(WAIT, |status, _| status == 503).await;
    world.sim.set_keys(SimKeys {
        coding_keys: vec![PLANTED.into()],
        developer_keys: vec![],
    });
    world.results(1, WAIT).await;

    let log = worker.log_text();
    assert!(log.lines().count() > 10, "the worker logged: {log}");
    for line in log.lines() {
        assert!(
            !line.contains(PLANTED) && !line.contains("3f9a7c1e5d2b8a4f"),
            "the key leaked: {line}"
        );
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not JSON: {line}"
        );
    }
    let (_, out) = check(&world, &[]).await;
    assert!(!out.contains(PLANTED));
}

#[tokio::test]
async fn a_grep_for_glm_shows_start_reviews_429s_pauses_resumes_and_connection_errors() {
    let sim = SimArgs::from(SimConfig {
        window_calls: 2,
        window_secs: 1,
        fail_first: 1,
        fail_first_code: 1302,
        ..Default::default()
    });
    let mut world = World::new("grep", sim).await;
    let worker = world.spawn_process(&[]);
    world.wait_for_consumers(1, WAIT).await;
    for i in 0..4 {
        world.publish_job(&job(&format!("grep-{i}"))).await;
    }
    world.results(4, WAIT).await;
    // A provider that cannot be reached at all.
    let closed = format!("http://127.0.0.1:{}/api/coding/paas/v4", free_port());
    let mut unreachable = World::new("grep-conn", SimArgs::default()).await;
    unreachable.set("API_OPENAI_FORCE_BASE_URL", &closed);
    let offline = unreachable.spawn_process(&[]);
    unreachable.wait_for_consumers(1, WAIT).await;
    unreachable.publish_job(&job("grep-offline")).await;
    offline.wait_for_log(WAIT, "retrying").await;

    let grep = |log: String| -> Vec<String> {
        log.lines()
            .filter(|l| l.to_lowercase().contains("z.ai") || l.to_lowercase().contains("glm"))
            .map(str::to_owned)
            .collect()
    };
    let lines = grep(worker.log_text());
    let has = |needle: &str| lines.iter().any(|l| l.contains(needle));
    assert!(
        has("starting:") && has("plan lite, cap 1") && has("thinking="),
        "start line:\n{}",
        lines.join("\n")
    );
    assert!(
        has("review acme/payments#42 by") && has("suggestion(s) in") && has("job_id=grep-"),
        "review lines:\n{}",
        lines.join("\n")
    );
    assert!(
        has("answered 429 1302 (too much concurrency)") && has("effective_cap=1"),
        "1302 line:\n{}",
        lines.join("\n")
    );
    assert!(
        has("5-hour quota exhausted (code 1308)") && has("reset_at="),
        "window line:\n{}",
        lines.join("\n")
    );
    assert!(
        has("usable again: resuming consumption"),
        "resume line:\n{}",
        lines.join("\n")
    );
    let offline_lines = grep(offline.log_text());
    assert!(
        offline_lines
            .iter()
            .any(|l| l.contains("connection error") && l.to_lowercase().contains("refused")),
        "connection error with the upstream cause:\n{}",
        offline_lines.join("\n")
    );
}

#[tokio::test]
async fn review_prints_a_contract_valid_result_for_a_local_diff() {
    let world = World::new("review-cli", SimArgs::default()).await;
    let example: serde_json::Value = serde_json::from_str(include_str!("../docs/contract/examples/job.json")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let diff = dir.path().join("pr.diff");
    std::fs::write(&diff, example["diff"].as_str().unwrap()).unwrap();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_review-worker"));
    command
        .args(["review", diff.to_str().unwrap(), "--title", "Refunds"])
        .env_clear();
    for (k, v) in world.vars() {
        command.env(k, v);
    }
    let output = command.output().await.unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let result: serde_json::Value = serde_json::from_slice(&output.stdout).expect("stdout is the result JSON");
    common::assert_valid_result(&result);
    assert_eq!(result["status"], "completed");
    assert!(
        result["suggestions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["line_start"] == 4)
    );
}

#[tokio::test]
async fn submit_wait_prints_each_result_from_a_running_worker() {
    let world = World::new("submit-cli", SimArgs::default()).await;
    let worker = world.spawn_worker();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_review-worker"));
    let jobs = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/jobs");
    command
        .arg("submit")
        .arg("--wait")
        .arg("--timeout")
        .arg("60")
        .env_clear();
    for entry in std::fs::read_dir(jobs).unwrap() {
        command.arg(entry.unwrap().path());
    }
    for (k, v) in world.vars() {
        command.env(k, v);
    }
    let output = command.output().await.unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let results: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&stdout)
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("a JSON result per job");
    assert_eq!(results.len(), 3);
    for result in &results {
        common::assert_valid_result(result);
        assert_eq!(result["status"], "completed");
    }
    worker.stop().await.unwrap();
}
