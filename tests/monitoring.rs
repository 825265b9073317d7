//! A real scrape: Debian's Prometheus, on a private port and data directory, scrapes a worker
//! process that reviews jobs against the simulator, with the alert rules of `deploy/prometheus`
//! loaded. Every metric the rules and the dashboard (`deploy/grafana/review-worker.json`) name
//! must exist there with samples: the names are read from those files, not from a list here.
//! And the queue depth the alerts rely on is the broker's.

#![allow(
    clippy::unwrap_used,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation,
    reason = "test and benchmark code: a panic is a failed run"
)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{World, eventually_some, free_port, job};
use serde_json::Value;
use zai_sim::SimArgs;

const WAIT: Duration = Duration::from_secs(90);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The `prometheus` binary: on PATH, or installed by `scripts/prometheus.sh install` (Debian's
/// package, as validate-deploy and scripts/test.sh do).
fn prometheus_binary() -> PathBuf {
    let on_path = || {
        std::process::Command::new("prometheus")
            .arg("--version")
            .output()
            .is_ok_and(|out| out.status.success())
    };
    if !on_path() {
        let installed = std::process::Command::new("bash")
            .arg(repo().join("scripts/prometheus.sh"))
            .arg("install")
            .status()
            .is_ok_and(|status| status.success());
        assert!(
            installed && on_path(),
            "Prometheus is not installed and `scripts/prometheus.sh install` could not install it \
             (it needs root and apt: `apt-get install prometheus` gives Debian's 2.42)"
        );
    }
    PathBuf::from("prometheus")
}

/// Metric names in PromQL text: the worker's all start with `review_`.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut at = 0;
    while let Some(found) = expr[at..].find("review_") {
        let start = at + found;
        let boundary = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = expr[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(expr.len(), |n| start + n);
        if boundary {
            names.insert(expr[start..end].to_owned());
        }
        at = end;
    }
    names
}

/// Every PromQL expression of the dashboard's panels.
fn dashboard_exprs() -> Vec<String> {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("deploy/grafana/review-worker.json")).unwrap())
            .unwrap();
    dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|target| target["expr"].as_str().map(str::to_owned))
        .collect()
}

/// A Prometheus of the test's own, killed when dropped.
struct Prometheus {
    _child: tokio::process::Child,
    url: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Scrapes `target` every second and evaluates the review-worker rules every second.
    async fn start(target: &str) -> Prometheus {
        let binary = prometheus_binary();
        let dir = tempfile::tempdir().unwrap();
        let rules = repo().join("deploy/prometheus/review-worker.rules.yml");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: review-worker\n    static_configs:\n      - targets: ['{target}']\n",
                rules.display()
            ),
        )
        .unwrap();
        let port = free_port();
        let log = dir.path().join("prometheus.log");
        let child = tokio::process::Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("start prometheus");
        let prometheus = Prometheus {
            _child: child,
            url: format!("http://127.0.0.1:{port}"),
            log,
            _dir: dir,
        };
        let ready = format!("{}/-/ready", prometheus.url);
        eventually_some(WAIT, "Prometheus ready", async || {
            reqwest::get(&ready).await.ok()?.status().is_success().then_some(())
        })
        .await;
        prometheus
    }

    /// `data` of an API answer, `None` if it failed.
    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Option<Value> {
        let answer: Value = reqwest::Client::new()
            .get(format!("{}/api/v1/{path}", self.url))
            .query(query)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (answer["status"] == "success").then(|| answer["data"].clone())
    }

    /// The instant vector `expr` evaluates to now.
    async fn query(&self, expr: &str) -> Vec<Value> {
        self.api("query", &[("query", expr)])
            .await
            .and_then(|data| data["result"].as_array().cloned())
            .unwrap_or_default()
    }

    async fn value(&self, expr: &str) -> Option<f64> {
        self.query(expr).await.first()?["value"][1].as_str()?.parse().ok()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

#[tokio::test]
async fn prometheus_scraping_a_working_worker_has_every_metric_the_rules_and_the_dashboard_name() {
    let mut world = World::new("monitoring", SimArgs::default()).await;
    let worker = world.spawn_process(&[]);
    worker
        .wait_ready_body(WAIT, |status, body| status == 200 && body["role"] == "leader")
        .await;
    let prometheus = Prometheus::start(&format!("127.0.0.1:{}", worker.health_port)).await;

    // The first dead letter of the process must be an increase: Prometheus has to see the
    // counter at 0 before it moves.
    eventually_some(WAIT, "Prometheus scraped invalid_job at 0", async || {
        (prometheus.value(r#"review_jobs_total{outcome="invalid_job"}"#).await? == 0.0).then_some(())
    })
    .await;
    for i in 0..3 {
        world.publish_job(&job(&format!("scraped-{i}"))).await;
    }
    world.publish(b"{\"not\": \"a job\"}", common::json_properties()).await;
    world.results(3, WAIT).await;
    world.dead_letters(1, WAIT).await;

    // The names, from the files: the rules as the Prometheus under test loaded them.
    let rules = prometheus.api("rules", &[]).await.expect("the rules API answers");
    let rule_exprs: Vec<(String, String)> = rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|group| group["rules"].as_array().cloned().unwrap_or_default())
        .map(|rule| {
            (
                rule["name"].as_str().unwrap().to_owned(),
                rule["query"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let alerts_in_file = std::fs::read_to_string(repo().join("deploy/prometheus/review-worker.rules.yml"))
        .unwrap()
        .matches("- alert:")
        .count();
    assert_eq!(
        rule_exprs.len(),
        alerts_in_file,
        "Prometheus loaded every rule of the file:\n{}",
        prometheus.log_text()
    );
    let mut names = BTreeSet::new();
    for (rule, expr) in &rule_exprs {
        let found = metric_names(expr);
        assert!(!found.is_empty(), "rule {rule} names no review_ metric: {expr}");
        names.extend(found);
    }
    let panel_exprs = dashboard_exprs();
    assert!(panel_exprs.len() >= 10, "the dashboard's queries: {panel_exprs:?}");
    for expr in &panel_exprs {
        names.extend(metric_names(expr));
    }
    assert!(names.contains("review_jobs_total") && names.contains("review_latency_seconds_bucket"));

    // Every one of them scraped, with samples.
    let mut missing = Vec::new();
    let all_there = common::within(WAIT, async || {
        missing.clear();
        for name in &names {
            if prometheus
                .query(&format!("count_over_time({name}[5m])"))
                .await
                .is_empty()
            {
                missing.push(name.clone());
            }
        }
        missing.is_empty().then_some(())
    })
    .await;
    assert!(
        all_there.is_some(),
        "Prometheus has no samples of {missing:?} (of {names:?}); worker log:\n{}",
        worker.log_text()
    );

    // What was counted is what happened.
    let counted = async |expr: &str, expected: f64| {
        let what = format!("{expr} == {expected}");
        eventually_some(WAIT, &what, async || {
            (prometheus.value(expr).await? == expected).then_some(())
        })
        .await;
    };
    counted(r#"review_jobs_total{outcome="completed"}"#, 3.0).await;
    counted(r#"review_jobs_total{outcome="invalid_job"}"#, 1.0).await;
    counted(r#"review_queue_messages{queue="jobs"}"#, 0.0).await;
    counted("review_leader", 1.0).await;
    counted("review_broker_connected", 1.0).await;
    counted(r#"sum(review_provider_answers_total{code="200"})"#, 3.0).await;

    // The rules evaluate against the real series without errors, and the first dead letter
    // raised its alert (pending: its `for:` is longer than this test).
    eventually_some(
        WAIT,
        "ReviewJobsDeadLettered pending or firing for invalid_job",
        async || {
            let alerts = prometheus.api("alerts", &[]).await?;
            alerts["alerts"]
                .as_array()?
                .iter()
                .any(|a| {
                    a["labels"]["alertname"] == "ReviewJobsDeadLettered" && a["labels"]["outcome"] == "invalid_job"
                })
                .then_some(())
        },
    )
    .await;
    let rules = prometheus.api("rules", &[]).await.unwrap();
    for rule in rules["groups"][0]["rules"].as_array().unwrap() {
        assert_eq!(
            rule["health"], "ok",
            "rule {} failed to evaluate: {}",
            rule["name"], rule["lastError"]
        );
    }
    for quiet in [
        "ReviewNoLeader",
        "ReviewBrokerDisconnected",
        "ReviewJobsWaitingUnconsumed",
        "ReviewProviderAccountProblem",
    ] {
        let alerts = prometheus.api("alerts", &[]).await.unwrap();
        assert!(
            !alerts["alerts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["labels"]["alertname"] == quiet),
            "{quiet} is raised on a healthy worker: {alerts:#}"
        );
    }
}

#[tokio::test]
async fn metrics_give_the_jobs_waiting_in_the_queue_as_the_broker_counts_them() {
    let mut world = World::new("queue-depth", SimArgs::default()).await;
    // Published before any worker runs: they wait in the jobs queue.
    for i in 0..5 {
        world.publish_job(&job(&format!("waiting-{i}"))).await;
    }
    assert_eq!(world.queue_len(&world.topology.jobs_queue).await, 5);
    let worker = world.spawn_process(&[]);
    let url = format!("http://127.0.0.1:{}/metrics", worker.health_port);
    let jobs_waiting = async || -> Option<f64> {
        let text = reqwest::get(&url).await.ok()?.text().await.ok()?;
        text.lines()
            .find_map(|line| line.strip_prefix("review_queue_messages{queue=\"jobs\"} "))?
            .parse()
            .ok()
    };
    // The first reading is taken on connecting; the leader's prefetch (2) takes at most two.
    let first = eventually_some(WAIT, "a reading of the jobs queue", async || jobs_waiting().await).await;
    assert!((3.0..=5.0).contains(&first), "jobs waiting read as {first}");
    world.results(5, WAIT).await;
    eventually_some(WAIT, "the jobs queue read as empty", async || {
        (jobs_waiting().await? == 0.0).then_some(())
    })
    .await;
}
