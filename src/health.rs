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
            for outcome in OUTCOMES {
                metrics::counter!("review_jobs_total", "outcome" => *outcome).increment(0);
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
        let account = pause.as_ref().is_some_and(is_account_pause);
        metrics::gauge!("review_paused_account", "lane" => label).set(f64::from(u8::from(account)));
        let code = pause
            .as_ref()
            .map_or(0.0, |p| p.code.parse::<u32>().map_or(-1.0, f64::from));
        metrics::gauge!("review_pause_code", "lane" => label).set(code);
        let until = pause
            .filter(|p| !p.needs_probe)
            .map_or(0.0, |p| p.until.timestamp() as f64);
        metrics::gauge!("review_paused_until_seconds", "lane" => label).set(until);
    }
    metrics::gauge!("review_in_flight").set(status.in_flight() as f64);
}

/// A pause the operator must end (key, endpoint, model, balance, plan, fair use), as opposed to
/// a quota window that ends by itself. The classifier decides which codes are quota windows.
fn is_account_pause(pause: &crate::limits::Pause) -> bool {
    if pause.needs_probe {
        return true;
    }
    let body = json!({"error": {"code": pause.code, "message": ""}}).to_string();
    review_core::classify::ProviderError::from_response(429, &body).action()
        != review_core::classify::Action::PauseUntilReset
}

/// Every `review_jobs_total{outcome}` a job can end with. Registered at 0 when the recorder is
/// installed: `increase()` over a counter that appears at 1 sees no increase, so without this
/// the first dead letter of each kind would page nobody.
const OUTCOMES: &[&str] = &[
    "completed",
    "waiting",
    "hopped",
    "invalid_job",
    "provider_rejected",
    "bad_model_output",
    "expired",
    "attempts_exhausted",
    "internal",
    "result_unpublishable",
];

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fate::{Counters, DeadKind, Fate};
    use crate::limits::Pause;
    use review_core::contract::FailureKind;

    fn pause(code: &str, needs_probe: bool) -> Pause {
        Pause {
            until: chrono::Utc::now(),
            code: code.to_owned(),
            reason: String::new(),
            needs_probe,
        }
    }

    #[test]
    fn quota_windows_are_not_account_pauses_and_everything_the_operator_must_fix_is() {
        for quota in ["1308", "1310", "1316", "1321"] {
            assert!(!is_account_pause(&pause(quota, false)), "{quota}");
        }
        for account in ["1309", "1311", "1313"] {
            assert!(is_account_pause(&pause(account, false)), "{account}");
        }
        for probed in ["401", "1000", "1113", "1211", "404"] {
            assert!(is_account_pause(&pause(probed, true)), "{probed}");
        }
    }

    #[test]
    fn every_outcome_a_job_can_end_with_is_registered_at_zero() {
        let kinds = [
            FailureKind::InvalidJob,
            FailureKind::ProviderRejected,
            FailureKind::BadModelOutput,
            FailureKind::Expired,
            FailureKind::AttemptsExhausted,
        ];
        let mut fates: Vec<Fate> = kinds
            .into_iter()
            .map(DeadKind::Failed)
            .chain([DeadKind::Internal, DeadKind::Unpublishable])
            .map(|kind| Fate::DeadLetter {
                kind,
                message: String::new(),
                attempts: 1,
                result: None,
            })
            .collect();
        fates.push(Fate::Review);
        fates.push(Fate::Hop {
            delay: std::time::Duration::from_secs(1),
        });
        fates.push(Fate::Wait {
            delay: std::time::Duration::from_secs(1),
            counters: Counters::default(),
            reason: String::new(),
        });
        let labels: std::collections::BTreeSet<&str> = fates.iter().map(Fate::label).collect();
        let registered: std::collections::BTreeSet<&str> = OUTCOMES.iter().copied().collect();
        assert_eq!(labels, registered);
    }
}
