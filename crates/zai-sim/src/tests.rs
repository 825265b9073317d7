//! End-to-end tests of the simulator over HTTP: a [`SimHandle`] on a free port, driven with
//! reqwest the way the worker drives Z.AI.

use std::time::Duration;

use chrono::{FixedOffset, NaiveDateTime, TimeZone as _, Utc};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

use super::*;

const CODING_KEY: &str = "sim-coding-key";
const DEVELOPER_KEY: &str = "sim-developer-key";
const MODEL: &str = "glm-5.1";

type TestResult = anyhow::Result<()>;

/// One diff line: new-file number (none when removed), marker, text.
type Line<'a> = (Option<u64>, char, &'a str);

/// Renders files the way the worker's prompt does.
fn render(files: &[(&str, &str, &[Line<'_>])]) -> String {
    let mut out = String::from("Review this pull request.\n\n");
    for (path, status, lines) in files {
        out.push_str(&format!("=== FILE: {path} ({status})\n@@ -10,3 +10,5 @@\n"));
        for (number, marker, text) in lines.iter() {
            let number = number.map(|n| n.to_string()).unwrap_or_default();
            out.push_str(&format!("{number:>6} {marker}{text}\n"));
        }
    }
    out
}

fn smelly_diff() -> String {
    render(&[
        (
            "src/lib.rs",
            "modified",
            &[
                (Some(10), ' ', "fn load() -> u32 {"),
                (None, '-', "    let v = read().unwrap_or(0);"),
                (Some(11), '+', "    let v = read().unwrap();"),
                (Some(12), '+', "    // TODO: handle errors"),
                (Some(13), ' ', "    v"),
            ],
        ),
        ("README.md", "renamed from README", &[(Some(1), '+', "# Hello")]),
        (
            "config/app.py",
            "added",
            &[
                (Some(1), '+', r#"password = "hunter2""#),
                (Some(2), '+', "print(password)"),
            ],
        ),
    ])
}

/// (file, line_start, line_end, severity, label, title) of each expected suggestion.
const EXPECTED: [(&str, u64, u64, &str, &str, &str); 4] = [
    ("src/lib.rs", 11, 11, "high", "bug", "Possible panic on unwrap()"),
    ("src/lib.rs", 12, 12, "low", "maintainability", "Unresolved TODO"),
    ("config/app.py", 1, 1, "critical", "security", "Hard-coded secret"),
    ("config/app.py", 2, 2, "low", "style", "Debug output left in the code"),
];

fn chat_body(model: &str, prompt: &str) -> Value {
    json!({
        "model": model,
        "messages": [
            {"role": "system", "content": "You review code. Answer with one JSON object."},
            {"role": "user", "content": prompt},
        ],
        "thinking": {"type": "enabled"},
    })
}

async fn spawn(args: SimArgs) -> anyhow::Result<(SimHandle, Client)> {
    Ok((SimHandle::spawn(args).await?, Client::new()))
}

async fn post(client: &Client, url: &str, key: &str, body: &Value) -> anyhow::Result<(StatusCode, Value)> {
    let response = client.post(url).bearer_auth(key).json(body).send().await?;
    let status = response.status();
    Ok((status, response.json().await?))
}

async fn chat(sim: &SimHandle, client: &Client, body: &Value) -> anyhow::Result<(StatusCode, Value)> {
    let url = format!("{}/chat/completions", sim.coding_base_url());
    post(client, &url, CODING_KEY, body).await
}

async fn get(client: &Client, url: &str, key: Option<&str>) -> anyhow::Result<(StatusCode, String)> {
    let mut request = client.get(url);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await?;
    Ok((response.status(), response.text().await?))
}

fn code_of(body: &Value) -> Option<&str> {
    body["error"]["code"].as_str()
}

/// The review inside an answer of any shape, and which shape it was.
fn review_of(answer: &Value) -> anyhow::Result<(&'static str, Value)> {
    let message = &answer["choices"][0]["message"];
    if let Some(arguments) = message["tool_calls"][0]["function"]["arguments"].as_str() {
        anyhow::ensure!(message["content"].is_null(), "a tool call has null content");
        anyhow::ensure!(answer["choices"][0]["finish_reason"] == "tool_calls");
        anyhow::ensure!(message["tool_calls"][0]["function"]["name"] == "submit_review");
        return Ok(("tool", serde_json::from_str(arguments)?));
    }
    let content = message["content"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no content in {answer}"))?;
    if let Some(start) = content.find("```json\n") {
        let rest = &content[start + 8..];
        let end = rest.find("\n```").ok_or_else(|| anyhow::anyhow!("unclosed fence"))?;
        anyhow::ensure!(start > 0, "a fenced answer has prose before the fence");
        return Ok(("fenced", serde_json::from_str(&rest[..end])?));
    }
    Ok(("plain", serde_json::from_str(content)?))
}

fn assert_expected_suggestions(review: &Value) {
    let found: Vec<_> = review["suggestions"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|s| {
            (
                s["file"].as_str().unwrap_or_default(),
                s["line_start"].as_u64().unwrap_or_default(),
                s["line_end"].as_u64().unwrap_or_default(),
                s["severity"].as_str().unwrap_or_default(),
                s["label"].as_str().unwrap_or_default(),
                s["title"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(found, EXPECTED);
    assert_eq!(review["summary"], "Found 4 issue(s) in 2 file(s).");
    assert_eq!(
        review["suggestions"][0]["existing_code"],
        "    let v = read().unwrap();"
    );
    assert!(
        review["suggestions"]
            .as_array()
            .is_some_and(|s| s.iter().all(|s| s["body"].is_string()))
    );
}

/// Reads the UTC+8 reset time at the end of a 1308/1310 message.
fn reset_time(message: &str) -> anyhow::Result<chrono::DateTime<Utc>> {
    let text = message.trim_end_matches(['。', ' ']);
    let text = text.strip_suffix("重置").unwrap_or(text).trim_end();
    let stamp = text
        .get(text.len().saturating_sub(19)..)
        .ok_or_else(|| anyhow::anyhow!("no time in {message:?}"))?;
    let naive = NaiveDateTime::parse_from_str(stamp, "%Y-%m-%d %H:%M:%S")?;
    let beijing = FixedOffset::east_opt(8 * 3600).ok_or_else(|| anyhow::anyhow!("offset"))?;
    let local = beijing
        .from_local_datetime(&naive)
        .single()
        .ok_or_else(|| anyhow::anyhow!("ambiguous time"))?;
    Ok(local.with_timezone(&Utc))
}

#[tokio::test]
async fn models_are_listed_on_both_base_paths() -> TestResult {
    let (sim, client) = spawn(SimArgs::default()).await?;
    for (base, key) in [
        (sim.coding_base_url(), CODING_KEY),
        (sim.developer_base_url(), DEVELOPER_KEY),
    ] {
        let (status, body) = get(&client, &format!("{base}/models"), Some(key)).await?;
        assert_eq!(status, StatusCode::OK);
        let body: Value = serde_json::from_str(&body)?;
        assert_eq!(body["object"], "list");
        let ids: Vec<_> = body["data"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|m| (m["id"].as_str(), m["object"].as_str(), m["owned_by"].as_str()))
            .collect();
        assert_eq!(ids.len(), 5);
        assert_eq!(ids[0], (Some("glm-5.1"), Some("model"), Some("z-ai")));
        assert_eq!(ids[4].0, Some("glm-4.5-air"));
    }
    Ok(())
}

#[tokio::test]
async fn a_key_of_the_other_plan_gets_the_uncoded_401_by_default() -> TestResult {
    let (sim, client) = spawn(SimArgs::default()).await?;
    let expected = r#"{"error":{"message":"token expired or incorrect","type":"401"}}"#;
    let (status, body) = get(
        &client,
        &format!("{}/models", sim.developer_base_url()),
        Some(CODING_KEY),
    )
    .await?;
    assert_eq!((status, body.as_str()), (StatusCode::UNAUTHORIZED, expected));
    let url = format!("{}/chat/completions", sim.coding_base_url());
    let (status, body) = post(&client, &url, DEVELOPER_KEY, &chat_body(MODEL, "hi")).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body, serde_json::from_str::<Value>(expected)?);
    assert_eq!(sim.stats().answered("401"), 2);
    Ok(())
}

#[tokio::test]
async fn a_key_of_the_other_plan_gets_429_code_1113_in_that_mode() -> TestResult {
    let args = SimArgs::from(SimConfig {
        mismatch_code: MismatchCode::InsufficientBalance,
        ..SimConfig::default()
    });
    let (sim, client) = spawn(args).await?;
    let (status, body) = get(
        &client,
        &format!("{}/models", sim.coding_base_url()),
        Some(DEVELOPER_KEY),
    )
    .await?;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        body,
        r#"{"error":{"code":"1113","message":"Insufficient balance or no resource package. Please recharge."}}"#
    );
    Ok(())
}

#[tokio::test]
async fn an_unknown_or_missing_key_gets_code_1000() -> TestResult {
    let (sim, client) = spawn(SimArgs::default()).await?;
    let expected = r#"{"error":{"code":"1000","message":"Authorization Token is invalid, please ensure ..."}}"#;
    let models = format!("{}/models", sim.developer_base_url());
    for key in [Some("nobody-knows-me"), None] {
        let (status, body) = get(&client, &models, key).await?;
        assert_eq!((status, body.as_str()), (StatusCode::UNAUTHORIZED, expected));
    }
    let (status, body) = chat(&sim, &client, &chat_body(MODEL, "hi")).await?;
    assert_eq!((status, code_of(&body)), (StatusCode::OK, None));
    let url = format!("{}/chat/completions", sim.coding_base_url());
    let (status, body) = post(&client, &url, "wrong", &chat_body(MODEL, "hi")).await?;
    assert_eq!((status, code_of(&body)), (StatusCode::UNAUTHORIZED, Some("1000")));
    Ok(())
}

#[tokio::test]
async fn an_unknown_model_gets_code_1211_in_either_language() -> TestResult {
    let (sim, client) = spawn(SimArgs::default()).await?;
    let (status, body) = chat(&sim, &client, &chat_body("gpt-4o", "hi")).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body,
        json!({"error": {"code": "1211", "message": "Unknown Model, please check the model code."}})
    );
    sim.configure(|c| c.lang = Lang::Zh);
    let (_, body) = chat(&sim, &client, &chat_body("gpt-4o", "hi")).await?;
    assert_eq!(
        body,
        json!({"error": {"code": "1211", "message": "模型不存在，请检查模型代码。"}})
    );
    Ok(())
}

#[tokio::test]
async fn a_v1_path_is_404_while_doubled_and_trailing_slashes_work() -> TestResult {
    let (sim, client) = spawn(SimArgs::default()).await?;
    let root = format!("http://{}", sim.addr);
    for path in [
        "/v1/chat/completions",
        "/api/paas/v4/v1/chat/completions",
        "/api/v4/models",
    ] {
        let url = format!("{root}{path}");
        let response = client
            .post(&url)
            .bearer_auth(DEVELOPER_KEY)
            .json(&chat_body(MODEL, "hi"))
            .send()
            .await?;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
    }
    for path in ["/api/paas/v4//chat/completions", "/api/paas/v4/chat/completions/"] {
        let (status, _) = post(
            &client,
            &format!("{root}{path}"),
            DEVELOPER_KEY,
            &chat_body(MODEL, "hi"),
        )
        .await?;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    let (status, _) = get(&client, &format!("{root}/api/coding/paas/v4/models/"), Some(CODING_KEY)).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sim.stats().answered("404"), 3);
    Ok(())
}

#[tokio::test]
async fn the_review_finds_the_expected_suggestions_in_each_rotating_shape() -> TestResult {
    let (sim, client) = spawn(SimArgs::default()).await?;
    let body = chat_body(MODEL, &smelly_diff());
    let mut shapes = Vec::new();
    for _ in 0..3 {
        let (status, answer) = chat(&sim, &client, &body).await?;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(answer["object"], "chat.completion");
        assert_eq!(answer["model"], MODEL);
        assert_eq!(answer["choices"][0]["message"]["role"], "assistant");
        assert!(answer["choices"][0]["message"]["reasoning_content"].is_string());
        let usage = &answer["usage"];
        assert!(usage["prompt_tokens"].as_u64().is_some_and(|n| n > 50));
        assert!(usage["completion_tokens"].as_u64().is_some_and(|n| n > 50));
        assert_eq!(
            usage["total_tokens"].as_u64(),
            Some(
                usage["prompt_tokens"].as_u64().unwrap_or_default()
                    + usage["completion_tokens"].as_u64().unwrap_or_default()
            )
        );
        assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 0);
        let (shape, review) = review_of(&answer)?;
        assert_expected_suggestions(&review);
        shapes.push(shape);
    }
    assert_eq!(shapes, ["plain", "fenced", "tool"]);
    Ok(())
}

#[tokio::test]
async fn each_fixed_shape_carries_the_same_review() -> TestResult {
    for (shape, name) in [
        (Shape::Plain, "plain"),
        (Shape::Fenced, "fenced"),
        (Shape::Tool, "tool"),
    ] {
        let (sim, client) = spawn(SimArgs::from(SimConfig {
            shape,
            ..SimConfig::default()
        }))
        .await?;
        for _ in 0..2 {
            let (_, answer) = chat(&sim, &client, &chat_body(MODEL, &smelly_diff())).await?;
            let (got, review) = review_of(&answer)?;
            assert_eq!(got, name);
            assert_expected_suggestions(&review);
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_repair_request_gets_plain_json_without_reasoning_when_thinking_is_disabled() -> TestResult {
    let (sim, client) = spawn(SimArgs::from(SimConfig {
        shape: Shape::Tool,
        ..SimConfig::default()
    }))
    .await?;
    let body = json!({
        "model": "glm-4.5-air",
        "thinking": {"type": "disabled"},
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": smelly_diff()}]},
            {"role": "assistant", "content": "Sure, it looks fine"},
            {"role": "user", "content": "Your answer was not valid JSON. Reply with only the JSON object."},
        ],
    });
    let (status, answer) = chat(&sim, &client, &body).await?;
    assert_eq!(status, StatusCode::OK);
    assert!(answer["choices"][0]["message"].get("reasoning_content").is_none());
    let (shape, review) = review_of(&answer)?;
    assert_eq!(shape, "plain");
    assert_expected_suggestions(&review);
    Ok(())
}

#[tokio::test]
async fn a_clean_or_missing_diff_gets_no_issues() -> TestResult {
    let (sim, client) = spawn(SimArgs::from(SimConfig {
        shape: Shape::Plain,
        ..SimConfig::default()
    }))
    .await?;
    let clean = render(&[("a.rs", "modified", &[(Some(3), '+', "let x = 1;")])]);
    for prompt in [clean.as_str(), "ping"] {
        let (_, answer) = chat(&sim, &client, &chat_body(MODEL, prompt)).await?;
        let (_, review) = review_of(&answer)?;
        assert_eq!(review, json!({"summary": "No issues found.", "suggestions": []}));
    }
    Ok(())
}

#[tokio::test]
async fn garbage_answers_are_not_json() -> TestResult {
    let (sim, client) = spawn(SimArgs::from(SimConfig {
        garbage_rate: 1.0,
        ..SimConfig::default()
    }))
    .await?;
    let (status, answer) = chat(&sim, &client, &chat_body(MODEL, &smelly_diff())).await?;
    assert_eq!(status, StatusCode::OK);
    assert!(review_of(&answer).is_err());
    assert_eq!(sim.stats().answered("200"), 1);
    Ok(())
}

#[tokio::test]
async fn the_concurrency_cap_answers_1302_and_peak_in_flight_counts_every_call() -> TestResult {
    let (sim, client) = spawn(SimArgs::from(SimConfig {
        max_concurrency: 1,
        latency_ms: 300,
        ..SimConfig::default()
    }))
    .await?;
    let body = chat_body(MODEL, "hi");
    let slow = chat(&sim, &client, &body);
    let rejected = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        tokio::join!(chat(&sim, &client, &body), chat(&sim, &client, &body))
    };
    let (first, (second, third)) = tokio::join!(slow, rejected);
    assert_eq!(first?.0, StatusCode::OK);
    for answer in [second?, third?] {
        assert_eq!(answer.0, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            answer.1,
            json!({"error": {"code": "1302", "message": "High concurrency usage of this API, please reduce concurrency or contact customer service to increase limits"}})
        );
    }
    let stats = sim.stats();
    assert_eq!(stats.chat_answered("200"), 1);
    assert_eq!(stats.chat_answered("1302"), 2);
    assert!(stats.peak_in_flight >= 2, "{stats:?}");
    assert_eq!(stats.in_flight, 0);
    // The slot is free again once the slow call has answered.
    assert_eq!(chat(&sim, &client, &body).await?.0, StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn the_five_hour_window_answers_1308_until_its_utc8_reset_time() -> TestResult {
    let (sim, client) = spawn(SimArgs::from(SimConfig {
        window_calls: 2,
        window_secs: 1,
        ..SimConfig::default()
    }))
    .await?;
    let body = chat_body(MODEL, "hi");
    let before = Utc::now();
    for _ in 0..2 {
        assert_eq!(chat(&sim, &client, &body).await?.0, StatusCode::OK);
    }
    let (status, answer) = chat(&sim, &client, &body).await?;
    assert_eq!(
        (status, code_of(&answer)),
        (StatusCode::TOO_MANY_REQUESTS, Some("1308"))
    );
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("Usage limit reached for 5 hour. Your limit will reset at "),
        "{message}"
    );
    let reset = reset_time(message)?;
    assert!(
        reset > before && reset <= before + chrono::TimeDelta::seconds(3),
        "{reset} vs {before}"
    );

    let wait = (reset - Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(20);
    tokio::time::sleep(wait).await;
    assert_eq!(chat(&sim, &client, &body).await?.0, StatusCode::OK);
    assert_eq!(sim.stats().chat_answered("1308"), 1);
    Ok(())
}

#[tokio::test]
async fn the_weekly_window_answers_1310_and_is_checked_first() -> TestResult {
    let (sim, client) = spawn(SimArgs::from(SimConfig {
        weekly_calls: 1,
        window_calls: 1,
        ..SimConfig::default()
    }))
    .await?;
    let body = chat_body(MODEL, "hi");
    assert_eq!(chat(&sim, &client, &body).await?.0, StatusCode::OK);
    let (status, answer) = chat(&sim, &client, &body).await?;
    assert_eq!(
        (status, code_of(&answer)),
        (StatusCode::TOO_MANY_REQUESTS, Some("1310"))
    );
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("Weekly/Monthly Limit Exhausted. Your limit will reset at "));
    let reset = reset_time(message)?;
    let week = chrono::TimeDelta::days(7);
    assert!((reset - Utc::now() - week).num_seconds().abs() <= 2, "{reset}");

    // A reset closes both windows.
    sim.reset();
    assert_eq!(chat(&sim, &client, &body).await?.0, StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn chinese_messages_follow_the_reference_with_the_reset_time() -> TestResult {
    let (sim, client) = spawn(SimArgs::from(SimConfig {
        lang: Lang::Zh,
        window_calls: 1,
        ..SimConfig::default()
    }))
    .await?;
    let body = chat_body(MODEL, "hi");
    assert_eq!(chat(&sim, &client, &body).await?.0, StatusCode::OK);
    let (_, answer) = chat(&sim, &client, &body).await?;
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("已达到 5 小时的使用上限。您的限额将在 "),
        "{message}"
    );
    assert!(message.ends_with(" 重置。"), "{message}");
    let reset = reset_time(message)?;
    assert!((reset - Utc::now() - chrono::TimeDelta::hours(5)).num_seconds().abs() <= 2);

    sim.configure(|c| c.weekly_calls = 1);
    sim.reset();
    assert_eq!(chat(&sim, &client, &body).await?.0, StatusCode::OK);
    let (_, answer) = chat(&sim, &client, &body).await?;
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("您已达到每周/每月使用上限，您的限额将在 "),
        "{message}"
    );
    reset_time(message)?;
    Ok(())
}

#[tokio::test]
async fn fail_first_fails_the_first_calls_with_the_chosen_code() -> TestResult {
    let (sim, client) = spawn(SimArgs::from(SimConfig {
        fail_first: 2,
        fail_first_code: 1305,
        ..SimConfig::default()
    }))
    .await?;
    let body = chat_body(MODEL, "hi");
    for _ in 0..2 {
        let (status, answer) = chat(&sim, &client, &body).await?;
        assert_eq!(
            (status, code_of(&answer)),
            (StatusCode::TOO_MANY_REQUESTS, Some("1305"))
        );
    }
    assert_eq!(chat(&sim, &client, &body).await?.0, StatusCode::OK);

    sim.configure(|c| {
        c.fail_first = 1;
        c.fail_first_code = 503;
    });
    let (status, answer) = chat(&sim, &client, &body).await?;
    assert_eq!(
        (status, code_of(&answer)),
        (StatusCode::SERVICE_UNAVAILABLE, Some("503"))
    );
    assert!(answer["error"]["message"].is_string());
    assert_eq!(chat(&sim, &client, &body).await?.0, StatusCode::OK);

    sim.configure(|c| {
        c.fail_first = 1;
        c.fail_first_code = 1308;
    });
    let (_, answer) = chat(&sim, &client, &body).await?;
    assert_eq!(code_of(&answer), Some("1308"));
    reset_time(answer["error"]["message"].as_str().unwrap_or_default())?;

    let stats = sim.stats();
    assert_eq!(
        (stats.answered("1305"), stats.answered("503"), stats.answered("1308")),
        (2, 1, 1)
    );
    Ok(())
}

#[tokio::test]
async fn a_reset_shift_puts_the_announced_reset_in_the_past_but_keeps_the_window() -> TestResult {
    let (sim, client) = spawn(SimArgs::from(SimConfig {
        window_calls: 1,
        window_secs: 600,
        reset_shift_secs: -3600,
        ..SimConfig::default()
    }))
    .await?;
    let body = chat_body(MODEL, "hi");
    assert_eq!(chat(&sim, &client, &body).await?.0, StatusCode::OK);
    let (status, answer) = chat(&sim, &client, &body).await?;
    assert_eq!(
        (status, code_of(&answer)),
        (StatusCode::TOO_MANY_REQUESTS, Some("1308"))
    );
    let announced = reset_time(answer["error"]["message"].as_str().unwrap_or_default())?;
    assert!(announced < Utc::now(), "announced {announced}");
    let (status, _) = chat(&sim, &client, &body).await?;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "the window itself still runs");

    sim.configure(|c| {
        c.fail_first = 1;
        c.fail_first_code = 1310;
        c.weekly_secs = 60;
    });
    let (_, answer) = chat(&sim, &client, &body).await?;
    assert_eq!(code_of(&answer), Some("1310"));
    assert!(reset_time(answer["error"]["message"].as_str().unwrap_or_default())? < Utc::now());
    Ok(())
}

#[tokio::test]
async fn junk_answers_replace_the_next_answers_and_then_stop() -> TestResult {
    let (sim, client) = spawn(SimArgs::from(SimConfig {
        junk_answers: 2,
        junk_shape: JunkShape::Nested,
        junk_bytes: 1000,
        shape: Shape::Plain,
        ..SimConfig::default()
    }))
    .await?;
    let body = chat_body(MODEL, &smelly_diff());
    for _ in 0..2 {
        let (status, answer) = chat(&sim, &client, &body).await?;
        assert_eq!(status, StatusCode::OK);
        let content = answer["choices"][0]["message"]["content"].as_str().unwrap_or_default();
        assert_eq!(content.len(), 1000);
        assert!(content.starts_with("{\"a\":[{\"a\":["), "{content}");
    }
    assert_eq!(
        sim.config().junk_answers,
        0,
        "junk_answers reads back as how many are left"
    );
    let (_, answer) = chat(&sim, &client, &body).await?;
    assert_expected_suggestions(&review_of(&answer)?.1);

    for (shape, unit) in [(JunkShape::Unbalanced, "{\""), (JunkShape::Escaped, "{\"\\\"")] {
        assert_eq!(shape.text(9), unit.repeat(9).get(..9).unwrap_or_default());
    }
    Ok(())
}

#[tokio::test]
async fn a_certain_5xx_rate_fails_every_call_with_500_or_503() -> TestResult {
    let (sim, client) = spawn(SimArgs::from(SimConfig {
        fail_rate_5xx: 1.0,
        ..SimConfig::default()
    }))
    .await?;
    for _ in 0..8 {
        let (status, answer) = chat(&sim, &client, &chat_body(MODEL, "hi")).await?;
        assert!(status == StatusCode::INTERNAL_SERVER_ERROR || status == StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(code_of(&answer), Some(status.as_str()));
    }
    let stats = sim.stats();
    assert_eq!(stats.answered("500") + stats.answered("503"), 8);
    Ok(())
}

#[tokio::test]
async fn keys_can_be_revoked_and_restored_while_running() -> TestResult {
    let (sim, client) = spawn(SimArgs::default()).await?;
    let control = format!("http://{}/_sim/keys", sim.addr);
    let body = chat_body(MODEL, "hi");
    let revoke = json!({"coding_keys": ["other"], "developer_keys": [DEVELOPER_KEY]});
    assert!(client.post(&control).json(&revoke).send().await?.status().is_success());
    let (status, answer) = chat(&sim, &client, &body).await?;
    assert_eq!((status, code_of(&answer)), (StatusCode::UNAUTHORIZED, Some("1000")));

    sim.set_keys(SimKeys {
        coding_keys: vec![CODING_KEY.to_owned()],
        developer_keys: vec![],
    });
    assert_eq!(chat(&sim, &client, &body).await?.0, StatusCode::OK);
    let url = format!("{}/chat/completions", sim.developer_base_url());
    assert_eq!(
        post(&client, &url, DEVELOPER_KEY, &body).await?.0,
        StatusCode::UNAUTHORIZED
    );

    let response = client.post(&control).json(&json!({"codin_keys": []})).send().await?;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    Ok(())
}

#[tokio::test]
async fn stats_config_and_reset_work_over_http() -> TestResult {
    let (sim, client) = spawn(SimArgs::default()).await?;
    let root = format!("http://{}", sim.addr);
    let body = chat_body(MODEL, "hi");
    chat(&sim, &client, &body).await?;
    chat(&sim, &client, &chat_body("nope", "hi")).await?;
    get(&client, &format!("{}/models", sim.coding_base_url()), Some(CODING_KEY)).await?;
    get(&client, &format!("{root}/v1/models"), Some(CODING_KEY)).await?;

    let stats: SimStats = client.get(format!("{root}/_sim/stats")).send().await?.json().await?;
    assert_eq!(
        (
            stats.requests,
            stats.chat_requests,
            stats.in_flight,
            stats.peak_in_flight
        ),
        (4, 2, 0, 1)
    );
    let answers: Vec<_> = stats.answers.iter().map(|(k, n)| (k.as_str(), *n)).collect();
    assert_eq!(answers, [("1211", 1), ("200", 2), ("404", 1)]);
    assert_eq!(stats.chat_answered("200"), 1);
    assert_eq!(stats, sim.stats(), "reading the stats is not itself counted");

    let patch =
        json!({"max_concurrency": 3, "latency_ms": 5, "fail_first_code": "1302", "lang": "zh", "mismatch_code": 1113});
    let config: SimConfig = client
        .post(format!("{root}/_sim/config"))
        .json(&patch)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(config.max_concurrency, 3);
    assert_eq!(config.fail_first_code, 1302);
    assert_eq!(config.mismatch_code, MismatchCode::InsufficientBalance);
    assert_eq!(
        config.window_secs,
        SimConfig::default().window_secs,
        "knobs not named stay"
    );
    assert_eq!(sim.config(), config);
    let bad = client
        .post(format!("{root}/_sim/config"))
        .json(&json!({"latency": 5}))
        .send()
        .await?;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);

    let zeroed: SimStats = client.post(format!("{root}/_sim/reset")).send().await?.json().await?;
    assert_eq!(zeroed, SimStats::default());
    Ok(())
}

#[tokio::test]
async fn dropping_the_handle_stops_the_server() -> TestResult {
    let (sim, client) = spawn(SimArgs::default()).await?;
    let url = format!("{}/models", sim.coding_base_url());
    assert_eq!(get(&client, &url, Some(CODING_KEY)).await?.0, StatusCode::OK);
    drop(sim);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(Client::new().get(&url).send().await.is_err());
    Ok(())
}

#[test]
fn the_defaults_are_the_documented_ones() {
    let args = SimArgs::default();
    assert_eq!(args.listen.to_string(), "127.0.0.1:4010");
    assert_eq!(
        (args.coding_keys.as_slice(), args.seed),
        ([CODING_KEY.to_owned()].as_slice(), 1)
    );
    let config = args.config;
    assert_eq!(config, SimConfig::default());
    assert_eq!(
        (
            config.window_secs,
            config.weekly_secs,
            config.fail_first_code,
            config.junk_bytes
        ),
        (5 * 3_600, 7 * 86_400, 500, 1 << 20)
    );
    assert_eq!((config.lang, config.shape), (Lang::En, Shape::Rotate));
}

#[test]
fn the_flag_defaults_match_default() -> TestResult {
    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        sim: SimArgs,
    }
    let parsed = <Cli as clap::Parser>::try_parse_from(["sim"])?;
    assert_eq!(format!("{:?}", parsed.sim), format!("{:?}", SimArgs::default()));
    let parsed = <Cli as clap::Parser>::try_parse_from([
        "sim",
        "--coding-keys",
        "a,b",
        "--mismatch-code",
        "1113",
        "--fail-first-code",
        "1308",
        "--lang",
        "zh",
        "--shape",
        "tool",
        "--reset-shift-secs",
        "-3600",
        "--junk-shape",
        "escaped",
    ])?;
    assert_eq!(parsed.sim.config.reset_shift_secs, -3600);
    assert_eq!(parsed.sim.config.junk_shape, JunkShape::Escaped);
    assert_eq!(parsed.sim.coding_keys, ["a", "b"]);
    assert_eq!(parsed.sim.config.mismatch_code, MismatchCode::InsufficientBalance);
    assert_eq!(parsed.sim.config.fail_first_code, 1308);
    assert!(<Cli as clap::Parser>::try_parse_from(["sim", "--garbage-rate", "1.5"]).is_err());
    Ok(())
}
