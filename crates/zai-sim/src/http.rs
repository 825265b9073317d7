//! The simulator's HTTP surface: which path is which route, and the small routes (`/models`, the
//! `/_sim/*` control routes, 404/405). Paths are matched by hand after collapsing `//` and
//! dropping a trailing `/`, because clients join base URLs and paths in every possible way
//! (`https://api.z.ai/api/paas/v4/` + `/chat/completions`).

use std::borrow::Cow;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use super::errors::{self, Answer};
use super::state::{Plan, SimKeys, SimState};
use super::{CODING_BASE, DEVELOPER_BASE, chat};

const CONTROL_BODY_LIMIT: usize = 1024 * 1024;

pub(crate) fn router(state: Arc<SimState>) -> Router {
    Router::new().fallback(dispatch).with_state(state)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Models,
    Chat,
}

async fn dispatch(State(state): State<Arc<SimState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = normalize(parts.uri.path());
    if let Some(control_path) = path.strip_prefix("/_sim/") {
        return control(&state, &parts.method, control_path, body).await;
    }
    let answer = match api_route(&path) {
        Some((plan, Endpoint::Chat)) if parts.method == Method::POST => {
            // Counted, recorded and timed inside: the in-flight count must cover the whole call.
            return respond(chat::chat(Arc::clone(&state), plan, parts.headers, body).await);
        }
        Some((plan, Endpoint::Models)) if parts.method == Method::GET => {
            match chat::authorize(&state, &state.config(), plan, &parts.headers) {
                Ok(()) => Answer::ok(state.models_body.clone()),
                Err(answer) => answer,
            }
        }
        Some(_) => errors::method_not_allowed(&path),
        None => errors::not_found(parts.uri.path()),
    };
    state.count_request();
    state.record(answer.key, false);
    respond(answer)
}

fn respond(answer: Answer) -> Response {
    (answer.status, [(CONTENT_TYPE, "application/json")], answer.body).into_response()
}

/// `path` with runs of `/` collapsed and no trailing `/`; borrowed in the usual case.
fn normalize(path: &str) -> Cow<'_, str> {
    if !path.contains("//") && (path.len() <= 1 || !path.ends_with('/')) {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() {
        out.push('/');
    }
    Cow::Owned(out)
}

fn api_route(path: &str) -> Option<(Plan, Endpoint)> {
    let (plan, rest) = if let Some(rest) = path.strip_prefix(CODING_BASE) {
        (Plan::Coding, rest)
    } else {
        (Plan::Developer, path.strip_prefix(DEVELOPER_BASE)?)
    };
    match rest {
        "/models" => Some((plan, Endpoint::Models)),
        "/chat/completions" => Some((plan, Endpoint::Chat)),
        _ => None,
    }
}

async fn control(state: &SimState, method: &Method, path: &str, body: Body) -> Response {
    match (method, path) {
        (&Method::GET, "stats") => json(StatusCode::OK, &state.stats()),
        (&Method::POST, "reset") => {
            state.reset();
            json(StatusCode::OK, &state.stats())
        }
        (&Method::POST, "keys") => match read::<SimKeys>(body).await {
            Ok(keys) => {
                let counts = serde_json::json!({
                    "coding_keys": keys.coding_keys.len(),
                    "developer_keys": keys.developer_keys.len(),
                });
                state.set_keys(keys);
                json(StatusCode::OK, &counts)
            }
            Err(answer) => answer,
        },
        (&Method::GET, "config") => json(StatusCode::OK, &state.config()),
        (&Method::POST, "config") => match read::<serde_json::Map<String, serde_json::Value>>(body).await {
            Ok(patch) => match state.configure(|knobs| knobs.patched(patch).map(|patched| *knobs = patched)) {
                Ok(()) => json(StatusCode::OK, &state.config()),
                Err(error) => bad_request(error.to_string()),
            },
            Err(answer) => answer,
        },
        (_, "stats" | "reset" | "keys" | "config") => respond(errors::method_not_allowed(&format!("/_sim/{path}"))),
        _ => respond(errors::not_found(&format!("/_sim/{path}"))),
    }
}

/// A control body, or the 400 that says what is wrong with it (an unknown knob, a bad type).
async fn read<T: DeserializeOwned>(body: Body) -> Result<T, Response> {
    let bytes = to_bytes(body, CONTROL_BODY_LIMIT)
        .await
        .map_err(|e| bad_request(e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| bad_request(e.to_string()))
}

fn bad_request(message: String) -> Response {
    json(StatusCode::BAD_REQUEST, &serde_json::json!({"error": message}))
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response {
    let body = serde_json::to_string(value).unwrap_or_default();
    (status, [(CONTENT_TYPE, "application/json")], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubled_and_trailing_slashes_are_ignored() {
        assert_eq!(
            normalize("/api/paas/v4//chat/completions"),
            "/api/paas/v4/chat/completions"
        );
        assert_eq!(normalize("/api/paas/v4/models/"), "/api/paas/v4/models");
        assert_eq!(normalize("/"), "/");
        assert!(matches!(normalize("/api/paas/v4/models"), Cow::Borrowed(_)));
    }

    #[test]
    fn each_base_path_is_its_own_plan() {
        assert_eq!(
            api_route("/api/coding/paas/v4/chat/completions"),
            Some((Plan::Coding, Endpoint::Chat))
        );
        assert_eq!(
            api_route("/api/paas/v4/models"),
            Some((Plan::Developer, Endpoint::Models))
        );
        assert_eq!(api_route("/api/paas/v4/v1/chat/completions"), None);
        assert_eq!(api_route("/v1/chat/completions"), None);
    }
}
