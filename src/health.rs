//! HTTP for operators on `WORKER_HEALTH_PORT`: `/health` (the process is alive), `/ready`
//! (connected, leading or standing by, not paused; a JSON body says why not) and `/metrics`
//! (Prometheus text).

use std::future::Future;
use std::sync::OnceLock;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::executor::Executor;
use crate::status::{Role, WorkerStatus};

/// Latency buckets in seconds: GLM reviews take from seconds to minutes.
const LATENCY_BUCKETS: &[f64] = &[0.05, 0.25, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0];

/// The process-wide Prometheus recorder (one per process; tests run several workers in one).
pub(crate) fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full("review_latency_seconds".to_owned()), LATENCY_BUCKETS)
                .expect("static buckets are valid");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (a test harness); then ours only renders
            // what is recorded through it, which is nothing, and that is visible, not silent.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            handle
        })
        .clone()
}

#[derive(Debug, Clone)]
struct Shared {
    status: WorkerStatus,
    executor: Executor,
    metrics: PrometheusHandle,
}

/// Whether this replica is ready, and the JSON that says so. Only reads the state.
pub(crate) fn readiness(status: &WorkerStatus, executor: &Executor) -> (bool, Value) {
    let role = match status.role() {
        Role::Leader => "leader",
        Role::Standby => "standby",
    };
    let pauses: Vec<Value> = executor
        .lanes()
        .filter_map(|lane| {
            lane.pause.current().map(|p| {
                json!({"lane": lane.label(), "provider": lane.provider.name(), "model": lane.provider.model(), "code": p.code, "reason": p.reason,
                       "paused_until": if p.needs_probe { Value::Null } else { json!(review_core::contract::rfc3339(p.until)) },
                       "waiting_for": if p.needs_probe { "a successful probe" } else { "the reset time" }})
            })
        })
        .collect();
    let reason = if !status.connected() {
        Some("not connected to RabbitMQ".to_owned())
    } else if !executor.usable() {
        let pause = executor.main.pause.current();
        Some(match pause {
            Some(p) if p.needs_probe => format!("paused: {} (code {}) until a probe succeeds", p.reason, p.code),
            Some(p) => format!(
                "paused: {} (code {}) until {}",
                p.reason,
                p.code,
                review_core::contract::rfc3339(p.until)
            ),
            None => "paused".to_owned(),
        })
    } else if status.role() == Role::Leader && !status.consuming() {
        Some("leader, not consuming yet".to_owned())
    } else {
        None
    };
    let body = json!({
        "ready": reason.is_none(),
        "reason": reason,
        "role": role,
        "replica": status.replica(),
        "broker": status.node(),
        "consuming": status.consuming(),
        "in_flight": status.in_flight(),
        "effective_cap": executor.main.limit.current(),
        "configured_cap": executor.main.limit.configured(),
        "pauses": pauses,
    });
    (reason.is_none(), body)
}

async fn health() -> &'static str {
    "ok\n"
}

async fn ready(State(shared): State<Shared>) -> Response {
    let (ready, body) = readiness(&shared.status, &shared.executor);
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// Sets the gauges that are state rather than events, as they are at scrape time. Only reads
/// the state.
pub(crate) fn set_state_gauges(status: &WorkerStatus, executor: &Executor) {
    for lane in executor.lanes() {
        let label = lane.label();
        metrics::gauge!("review_effective_cap", "lane" => label).set(f64::from(lane.limit.current()));
        metrics::gauge!("review_configured_cap", "lane" => label).set(f64::from(lane.limit.configured()));
        let pause = lane.pause.current();
        metrics::gauge!("review_paused", "lane" => label).set(f64::from(u8::from(pause.is_some())));
        let until = pause
            .filter(|p| !p.needs_probe)
            .map_or(0.0, |p| p.until.timestamp() as f64);
        metrics::gauge!("review_paused_until_seconds", "lane" => label).set(until);
    }
    metrics::gauge!("review_in_flight").set(status.in_flight() as f64);
}

async fn render_metrics(State(shared): State<Shared>) -> Response {
    set_state_gauges(&shared.status, &shared.executor);
    shared.metrics.run_upkeep();
    (
        [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        shared.metrics.render(),
    )
        .into_response()
}

/// Serves until `shutdown` resolves.
pub(crate) async fn serve(
    listener: TcpListener,
    status: WorkerStatus,
    executor: Executor,
    metrics: PrometheusHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let shared = Shared {
        status,
        executor,
        metrics,
    };
    let router = Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(render_metrics))
        .with_state(shared);
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await?;
    Ok(())
}
