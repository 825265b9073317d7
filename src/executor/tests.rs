//! The pause and backoff rules for what the provider answers: quota reset times that cannot be
//! right, and account problems that the probe cannot see.

use std::time::Duration;

use chrono::{TimeZone, Utc};
use reqwest::Url;
use secrecy::SecretString;
use serde_json::{Map, json};

use super::*;
use crate::settings::{ProviderSettings, Thinking};
use zai_sim::{SimArgs, SimConfig, SimHandle};

fn lane_at(base: &str, cap: u32) -> Lane {
    let provider = Provider::new(&ProviderSettings {
        model: "glm-5.1".into(),
        base_url: Url::parse(base).unwrap(),
        api_key: SecretString::from("sim-coding-key"),
        thinking: Thinking::Enabled,
        custom_json: Map::new(),
        timeout: Duration::from_secs(10),
    })
    .unwrap();
    Lane::new(provider, cap, false)
}

/// A lane whose provider is never called: `on_error` is fed answers directly.
fn quiet_executor(cap: u32) -> Executor {
    Executor::new(lane_at("http://127.0.0.1:9/api/coding/paas/v4/", cap), None)
}

fn answer(status: u16, code: &str, message: &str) -> ProviderError {
    ProviderError::from_response(
        status,
        &json!({"error": {"code": code, "message": message}}).to_string(),
    )
}

/// The pause in force, and how long it runs from `from`, in whole seconds.
fn pause_secs(lane: &Lane, from: DateTime<Utc>) -> (Pause, i64) {
    let pause = lane.pause.current().expect("paused");
    let secs = (pause.until - from).num_milliseconds() as f64 / 1000.0;
    (pause, secs.round() as i64)
}

/// A 1308 message whose reset time, in Beijing time as Z.AI writes it, is `at`.
fn quota_message(at: DateTime<Utc>) -> String {
    let beijing = chrono::FixedOffset::east_opt(8 * 3600).unwrap();
    format!(
        "Usage limit reached for 5 hour. Your limit will reset at {}",
        at.with_timezone(&beijing).format("%Y-%m-%d %H:%M:%S")
    )
}

#[test]
fn a_reset_time_ahead_pauses_until_it_and_the_margin() {
    let now = Utc.with_ymd_and_hms(2026, 9, 8, 12, 0, 0).unwrap();
    let reset = now + Duration::from_secs(3 * 3600);
    assert_eq!(
        quota_pause_end(Some(reset), now),
        (reset + RESET_MARGIN, ResetTime::Ahead)
    );
}

#[test]
fn a_reset_time_in_the_past_pauses_a_minute() {
    let now = Utc.with_ymd_and_hms(2026, 9, 8, 12, 0, 0).unwrap();
    for ago in [Duration::ZERO, Duration::from_secs(2), Duration::from_secs(86_400)] {
        assert_eq!(
            quota_pause_end(Some(now - ago), now),
            (now + Duration::from_secs(60), ResetTime::Past),
            "{ago:?} ago"
        );
    }
}

#[test]
fn a_reset_time_more_than_eight_days_ahead_is_capped_at_eight_days() {
    let now = Utc.with_ymd_and_hms(2026, 9, 8, 12, 0, 0).unwrap();
    let eight_days = now + Duration::from_secs(8 * 86_400);
    assert_eq!(
        quota_pause_end(Some(now + Duration::from_secs(30 * 86_400)), now),
        (eight_days, ResetTime::TooFar)
    );
    let week = now + Duration::from_secs(7 * 86_400);
    assert_eq!(
        quota_pause_end(Some(week), now),
        (week + RESET_MARGIN, ResetTime::Ahead)
    );
}

#[test]
fn a_quota_answer_without_a_time_pauses_a_minute() {
    let now = Utc.with_ymd_and_hms(2026, 9, 8, 12, 0, 0).unwrap();
    assert_eq!(
        quota_pause_end(None, now),
        (now + Duration::from_secs(60), ResetTime::Missing)
    );
}

#[tokio::test]
async fn a_quota_answer_with_a_past_reset_pauses_a_minute_and_then_lets_one_call_go_first() {
    let executor = quiet_executor(3);
    let lane = &executor.main;
    let before = Utc::now();
    executor.on_error(
        lane,
        &answer(429, "1308", &quota_message(before - Duration::from_secs(3600))),
    );
    let (pause, secs) = pause_secs(lane, before);
    assert_eq!(secs, 60, "{pause:?}");
    assert!(!pause.needs_probe);

    lane.pause.resume();
    let _first = lane.limit.acquire().await;
    let second = tokio::time::timeout(Duration::from_millis(100), lane.limit.acquire()).await;
    assert!(second.is_err(), "one call at a time until one succeeds");
}

#[tokio::test]
async fn a_quota_answer_with_a_reset_a_month_ahead_pauses_eight_days() {
    let executor = quiet_executor(1);
    let before = Utc::now();
    executor.on_error(
        &executor.main,
        &answer(429, "1310", &quota_message(before + Duration::from_secs(30 * 86_400))),
    );
    let (_, secs) = pause_secs(&executor.main, before);
    assert_eq!(secs, 8 * 86_400);
}

#[tokio::test]
async fn fair_use_pauses_double_from_five_seconds_to_five_minutes_without_a_probe() {
    let executor = quiet_executor(1);
    let lane = &executor.main;
    let mut seen = Vec::new();
    for _ in 0..8 {
        let before = Utc::now();
        executor.on_error(lane, &answer(429, "1313", "Fair Usage Policy"));
        let (pause, secs) = pause_secs(lane, before);
        assert!(
            !pause.needs_probe,
            "the probe cannot see a 1313: the clock ends the pause"
        );
        assert_eq!(executor.probe_paused().await, 0, "nothing waits for a probe");
        seen.push(secs);
        // As if the pause had run out.
        lane.pause.resume();
    }
    assert_eq!(seen, [5, 10, 20, 40, 80, 160, 300, 300]);
}

#[tokio::test]
async fn a_fair_use_answer_to_a_call_made_before_the_pause_does_not_double_it() {
    let executor = quiet_executor(2);
    let lane = &executor.main;
    let before = Utc::now();
    executor.on_error(lane, &answer(429, "1313", "Fair Usage Policy"));
    let (first, _) = pause_secs(lane, before);
    executor.on_error(lane, &answer(429, "1313", "Fair Usage Policy"));
    let (second, _) = pause_secs(lane, before);
    assert_eq!(first, second);
    lane.pause.resume();
    executor.on_error(lane, &answer(429, "1313", "Fair Usage Policy"));
    assert_eq!(pause_secs(lane, Utc::now()).1, 10, "the second pause, not the third");
}

#[tokio::test]
async fn a_successful_probe_keeps_the_doubling_and_a_successful_call_starts_it_over() {
    let sim = SimHandle::spawn(SimArgs::from(SimConfig {
        fail_first: 1,
        fail_first_code: 1313,
        ..SimConfig::default()
    }))
    .await
    .unwrap();
    let executor = Executor::new(lane_at(&format!("{}/", sim.coding_base_url()), 1), None);
    let lane = &executor.main;
    let messages = [Message::user("hi")];

    let before = Utc::now();
    let error = executor.call(lane, &messages).await.unwrap_err();
    assert_eq!(error.code().as_deref(), Some("1313"));
    assert_eq!(pause_secs(lane, before).1, 5);

    crate::check::probe(&lane.provider)
        .await
        .expect("the probe succeeds through a 1313");
    lane.pause.resume();
    sim.configure(|c| c.fail_first = 1);
    let before = Utc::now();
    executor.call(lane, &messages).await.unwrap_err();
    assert_eq!(pause_secs(lane, before).1, 10, "the probe did not start it over");

    lane.pause.resume();
    executor.call(lane, &messages).await.expect("the plan works again");
    sim.configure(|c| c.fail_first = 1);
    let before = Utc::now();
    executor.call(lane, &messages).await.unwrap_err();
    assert_eq!(pause_secs(lane, before).1, 5, "a successful call started it over");
}

#[tokio::test]
async fn a_key_problem_still_waits_for_a_probe() {
    let executor = quiet_executor(1);
    executor.on_error(&executor.main, &answer(401, "1001", "Authorization Token is invalid"));
    let pause = executor.main.pause.current().expect("paused");
    assert!(pause.needs_probe);
}
