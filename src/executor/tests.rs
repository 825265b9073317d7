//! The pause and backoff rules for what the provider answers: quota reset times that cannot be
//! right.

use std::time::Duration;

use chrono::{TimeZone, Utc};
use reqwest::Url;
use secrecy::SecretString;
use serde_json::{Map, json};

use super::*;
use crate::settings::{ProviderSettings, Thinking};

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
