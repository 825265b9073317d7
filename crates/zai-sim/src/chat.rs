//! `POST {base}/chat/completions`: the order in which Z.AI's checks apply (key, request, model,
//! concurrency, forced failures, weekly then 5-hour quota, random failures), the answer delay, and
//! the OpenAI `chat.completion` body in its three shapes (plain JSON, fenced JSON in prose, tool
//! call) or deliberately unreadable.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, to_bytes};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use chrono::Utc;
use review_core::diff::rendered;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::config::{MismatchCode, Shape, SimConfig};
use super::errors::{self, Answer};
use super::review::{self, Reviewed};
use super::state::{Plan, SimState};

/// Large enough for any diff a ~200k-token context can hold.
const BODY_LIMIT: usize = 32 * 1024 * 1024;

/// What the worker's repair request says; such a request gets plain JSON whatever the shape.
const REPAIR_MARKER: &str = "Reply with only the JSON object";

pub(crate) async fn chat(state: Arc<SimState>, plan: Plan, headers: HeaderMap, body: Body) -> Answer {
    let (_in_flight, seq) = state.enter_chat();
    let answer = handle(&state, plan, &headers, body, seq).await;
    state.record(answer.key, true);
    answer
}

/// Checks `Authorization: Bearer KEY` against `plan`'s keys.
pub(crate) fn authorize(state: &SimState, knobs: &SimConfig, plan: Plan, headers: &HeaderMap) -> Result<(), Answer> {
    let key = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            let v = v.trim();
            match v.get(..7) {
                Some(scheme) if scheme.eq_ignore_ascii_case("bearer ") => v[7..].trim(),
                _ => v,
            }
        })
        .unwrap_or_default();
    match state.check_key(plan, key) {
        Ok(()) => Ok(()),
        Err(true) => Err(match knobs.mismatch_code {
            MismatchCode::Unauthorized => errors::token_expired(),
            MismatchCode::InsufficientBalance => errors::coded(1113, knobs.lang, None),
        }),
        Err(false) => Err(errors::invalid_key(knobs.lang)),
    }
}

async fn handle(state: &Arc<SimState>, plan: Plan, headers: &HeaderMap, body: Body, seq: u64) -> Answer {
    // The body is read before any check so that a rejected request leaves its keep-alive
    // connection usable, as a real server's would.
    let bytes = to_bytes(body, BODY_LIMIT).await;
    // One copy of the knobs for the whole call, taken once it has arrived.
    let knobs = state.config();
    let lang = knobs.lang;
    if let Err(answer) = authorize(state, &knobs, plan, headers) {
        return answer;
    }
    let Ok(bytes) = bytes else {
        return errors::coded(1210, lang, None);
    };
    let Ok(request) = serde_json::from_slice::<ChatRequest>(&bytes) else {
        return errors::coded(1210, lang, None);
    };
    let Some(model) = request.model.as_deref() else {
        return errors::coded(1210, lang, None);
    };
    if !state.models.iter().any(|m| m == model) {
        return errors::coded(1211, lang, None);
    }
    if request.messages.is_empty() {
        return errors::coded(1214, lang, None);
    }
    let Some(_slot) = state.try_serve(knobs.max_concurrency) else {
        return errors::coded(1302, lang, None);
    };
    if state.take_forced_failure() {
        let code = knobs.fail_first_code;
        let reset = knobs.announced_reset(knobs.forced_reset(code, Utc::now()));
        return errors::coded(code, lang, Some(reset));
    }

    // Draws come from the request's own sequence number, so a run with a given seed fails the
    // same calls every time, and no generator is shared between cores.
    let mut rng = fastrand::Rng::with_seed(mix(state.seed, seq));
    let failure = if rng.f64() < knobs.fail_rate_5xx {
        Some(if rng.bool() { 500 } else { 503 })
    } else if rng.f64() < knobs.fail_rate_1305 {
        Some(1305)
    } else {
        None
    };
    let garbage = rng.f64() < knobs.garbage_rate;
    if let Err(exhausted) = state.admit(&knobs, Utc::now(), || failure.is_none()) {
        return errors::coded(exhausted.code, lang, Some(knobs.announced_reset(exhausted.reset)));
    }

    let jitter = knobs.jitter_ms;
    let delay = knobs
        .latency_ms
        .saturating_add(if jitter > 0 { rng.u64(0..=jitter) } else { 0 });
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if let Some(code) = failure {
        return errors::coded(code, lang, None);
    }
    Answer::ok(completion(state, &knobs, &request, model, seq, garbage))
}

/// SplitMix64 of seed and sequence: neighbouring requests get unrelated streams.
fn mix(seed: u64, seq: u64) -> u64 {
    let mut z = seed ^ seq.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn completion(
    state: &SimState,
    knobs: &SimConfig,
    request: &ChatRequest,
    model: &str,
    seq: u64,
    garbage: bool,
) -> String {
    let users = || request.messages.iter().rev().filter(|m| m.role == "user");
    let prompt = users()
        .find(|m| rendered::has_files(&m.content.0))
        .map_or("", |m| m.content.0.as_str());
    let repair = users().next().is_some_and(|m| m.content.0.contains(REPAIR_MARKER));
    let Reviewed {
        review,
        files,
        added_lines,
    } = review::review(prompt);

    let shape = match (repair, knobs.shape) {
        (true, _) => Shape::Plain,
        (false, Shape::Rotate) => match state.next_shape_turn() % 3 {
            0 => Shape::Plain,
            1 => Shape::Fenced,
            _ => Shape::Tool,
        },
        (false, shape) => shape,
    };
    let thinks = request
        .thinking
        .as_ref()
        .and_then(|t| t.kind.as_deref())
        .is_none_or(|kind| kind != "disabled");
    let reasoning = thinks.then(|| {
        format!(
            "The diff has {files} file(s) and {added_lines} added line(s). I check each added \
             line for unwrap(), TODO/FIXME markers, hard-coded secrets and leftover debug \
             output, and report them with the new file's line numbers."
        )
    });

    let json = serde_json::to_string(&review).unwrap_or_default();
    let (content, tool_calls, finish_reason) = if let Some(junk) = state.take_junk(knobs) {
        (Some(junk), None, "stop")
    } else if garbage {
        (Some(unreadable(&review.summary, &json)), None, "stop")
    } else {
        match shape {
            Shape::Fenced => {
                let pretty = serde_json::to_string_pretty(&review).unwrap_or_default();
                let text = format!(
                    "Here is my review of the changes.\n\n```json\n{pretty}\n```\n\n\
                     Line numbers refer to the new version of each file."
                );
                (Some(text), None, "stop")
            }
            Shape::Tool => {
                let call = ToolCall {
                    id: format!("call_sim_{seq}"),
                    index: 0,
                    kind: "function",
                    function: FunctionCall {
                        name: "submit_review",
                        arguments: json,
                    },
                };
                (None, Some(vec![call]), "tool_calls")
            }
            Shape::Plain | Shape::Rotate => (Some(json), None, "stop"),
        }
    };

    let prompt_tokens = tokens(request.messages.iter().map(|m| m.content.0.as_str()));
    let completion_tokens = tokens(
        content
            .iter()
            .chain(reasoning.iter())
            .map(String::as_str)
            .chain(tool_calls.iter().flatten().map(|c| c.function.arguments.as_str())),
    );
    let body = Completion {
        id: format!("sim-{:016x}-{seq}", state.seed),
        object: "chat.completion",
        created: Utc::now().timestamp(),
        model,
        choices: [Choice {
            index: 0,
            message: AssistantMessage {
                role: "assistant",
                content,
                reasoning_content: reasoning,
                tool_calls,
            },
            finish_reason,
        }],
        usage: Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens.saturating_add(completion_tokens),
            prompt_tokens_details: PromptTokensDetails { cached_tokens: 0 },
        },
    };
    serde_json::to_string(&body).unwrap_or_default()
}

/// Prose around JSON cut in half: no `{…}` span in it parses, so the worker must repair.
fn unreadable(summary: &str, json: &str) -> String {
    let mut cut = json.len() / 2;
    while !json.is_char_boundary(cut) {
        // Zero is a boundary, so this stops there.
        cut = cut.saturating_sub(1);
    }
    format!(
        "I looked through the changes. {summary} Here is the review, \
         as far as I got:\n{}",
        &json[..cut]
    )
}

/// About four characters a token, never zero for a non-empty text.
fn tokens<'a>(texts: impl Iterator<Item = &'a str>) -> u64 {
    let chars: usize = texts.map(|t| t.chars().count()).sum();
    u64::try_from(chars.div_ceil(4)).unwrap_or(u64::MAX)
}

#[derive(Debug, Deserialize)]
struct ChatRequest {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    messages: Vec<Message>,
    #[serde(default)]
    thinking: Option<Thinking>,
}

#[derive(Debug, Deserialize)]
struct Message {
    #[serde(default)]
    role: String,
    #[serde(default)]
    content: Content,
}

#[derive(Debug, Deserialize)]
struct Thinking {
    #[serde(rename = "type", default)]
    kind: Option<String>,
}

/// A message's text: a plain string, or the `text` parts of an OpenAI content array joined by
/// newlines. Read straight from the JSON, without an untagged enum's buffered copy of what may
/// be a megabyte-sized diff.
#[derive(Debug, Default)]
struct Content(String);

impl<'de> Deserialize<'de> for Content {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ContentVisitor)
    }
}

struct ContentVisitor;

impl<'de> Visitor<'de> for ContentVisitor {
    type Value = Content;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a string, an array of content parts, or null")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Content, E> {
        Ok(Content(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Content, E> {
        Ok(Content(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Content, E> {
        Ok(Content::default())
    }

    fn visit_none<E: de::Error>(self) -> Result<Content, E> {
        Ok(Content::default())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Content, A::Error> {
        #[derive(Deserialize)]
        struct Part {
            #[serde(default)]
            text: Option<String>,
        }
        let mut out = String::new();
        while let Some(part) = seq.next_element::<Part>()? {
            if let Some(text) = part.text {
                if !out.is_empty() {
                    out.push('\n');
                }
                out.push_str(&text);
            }
        }
        Ok(Content(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Content, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Content::default())
    }
}

#[derive(Serialize)]
struct Completion<'a> {
    id: String,
    object: &'static str,
    created: i64,
    model: &'a str,
    choices: [Choice; 1],
    usage: Usage,
}

#[derive(Serialize)]
struct Choice {
    index: u32,
    message: AssistantMessage,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct AssistantMessage {
    role: &'static str,
    /// `null` (not absent) in a tool-call answer, as OpenAI-compatible servers send it.
    content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<Vec<ToolCall>>,
}

#[derive(Serialize)]
struct ToolCall {
    id: String,
    index: u32,
    #[serde(rename = "type")]
    kind: &'static str,
    function: FunctionCall,
}

#[derive(Serialize)]
struct FunctionCall {
    name: &'static str,
    arguments: String,
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: PromptTokensDetails,
}

#[derive(Serialize)]
struct PromptTokensDetails {
    cached_tokens: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_may_be_a_string_parts_or_null() {
        let parse = |json: &str| serde_json::from_str::<Message>(json).map(|m| m.content.0);
        assert_eq!(parse(r#"{"role":"user","content":"hi"}"#).ok().as_deref(), Some("hi"));
        assert_eq!(
            parse(r#"{"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url"},{"type":"text","text":"b"}]}"#)
                .ok()
                .as_deref(),
            Some("a\nb")
        );
        assert_eq!(
            parse(r#"{"role":"assistant","content":null}"#).ok().as_deref(),
            Some("")
        );
    }

    #[test]
    fn unreadable_answers_do_not_parse_as_json() {
        let json = r#"{"summary":"No issues found.","suggestions":[]}"#;
        let text = unreadable("No issues found.", json);
        let start = text.find('{').unwrap_or_default();
        assert!(serde_json::from_str::<serde_json::Value>(&text[start..]).is_err());
    }

    #[test]
    fn neighbouring_sequence_numbers_get_different_seeds() {
        assert_ne!(mix(1, 0), mix(1, 1));
        assert_eq!(mix(7, 3), mix(7, 3));
    }
}
