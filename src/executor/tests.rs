//! The pause and backoff rules for what the provider answers: quota reset times that cannot be
//! right, and account problems that the probe cannot see. And that reading a lane or a pause (as
//! `/ready` and `/metrics` do) changes nothing: pauses end on the executor's timer, lanes switch
//! on the call path.

use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use reqwest::Url;
use secrecy::SecretString;
use serde_json::{Map, json};

use super::*;
use crate::settings::{ProviderSettings, Thinking};
use zai_sim::{SimArgs, SimConfig, SimHandle};

fn lane_at(base: &str, cap: u32) -> Lane {
    lane_of(base, "glm-5.1", cap, false)
}

fn lane_of(base: &str, model: &str, cap: u32, is_fallback: bool) -> Lane {
    let provider = Provider::new(&ProviderSettings {
        model: model.into(),
        base_url: Url::parse(base).unwrap(),
        api_key: SecretString::from("sim-coding-key"),
        thinking: Thinking::Enabled,
        custom_json: Map::new(),
        timeout: Duration::from_secs(10),
    })
    .unwrap();
    Lane::new(provider, cap, is_fallback)
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

/// Main and fallback lanes whose providers are never called.
fn quiet_executor_with_fallback() -> Executor {
    Executor::new(
        lane_at("http://127.0.0.1:9/api/coding/paas/v4/", 1),
        Some(lane_of("http://127.0.0.1:9/api/paas/v4/", "glm-4.5-air", 1, true)),
    )
}

/// The pause in force, and how long it runs from `from`, in whole seconds.
fn pause_secs(lane: &Lane, from: DateTime<Utc>) -> (Pause, i64) {
    let pause = lane.pause.current().expect("paused");
    let secs = (pause.until - from).num_milliseconds() as f64 / 1000.0;
    (pause, secs.round() as i64)
}

fn quota_pause(until: DateTime<Utc>) -> Pause {
    Pause {
        until,
        code: "1308".into(),
        reason: "5-hour quota exhausted".into(),
        needs_probe: false,
    }
}

/// The log lines written on this thread while the guard lives (the tests' runtime runs every
/// task on it).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
        let logs = Self::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .finish();
        (logs.clone(), tracing::subscriber::set_default(subscriber))
    }

    fn count(&self, needle: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap()).matches(needle).count()
    }

    fn is_empty(&self) -> bool {
        self.0.lock().unwrap().is_empty()
    }
}

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Self;

    fn make_writer(&'a self) -> Self {
        self.clone()
    }
}

/// Everything `/ready` and `/metrics` read, read many times.
fn read_everything(executor: &Executor, status: &crate::status::WorkerStatus) {
    for _ in 0..50 {
        let _ = executor.active_lane();
        let _ = executor.usable();
        for lane in executor.lanes() {
            let _ = lane.pause.current();
            let _ = lane.limit.current();
        }
        let _ = crate::health::readiness(status, executor);
        crate::health::set_state_gauges(status, executor);
    }
}

/// Lets every task that can run, run (the timers among them); the paused clock does not move.
async fn let_tasks_run() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
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
    assert!(
        matches!(&error, CallError::Provider(e) if e.code().as_deref() == Some("1313")),
        "{error:?}"
    );
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

#[tokio::test(start_paused = true)]
async fn an_expired_pause_read_many_times_is_ended_and_announced_once_by_the_timer() {
    let (logs, _guard) = Logs::capture();
    let status = crate::status::WorkerStatus::default();
    let executor = quiet_executor(1);
    let lane = &executor.main;
    let mut changes = lane.pause.subscribe();
    let over = quota_pause(Utc::now() - Duration::from_secs(1));
    lane.pause.pause(over.clone());
    changes.mark_unchanged();

    // Nothing has yielded, so the timer has not run: whatever changes now, reading changed.
    read_everything(&executor, &status);
    assert!(executor.usable(), "an expired pause reads as over");
    assert!(!changes.has_changed().unwrap(), "reading announced no resume");
    assert_eq!(lane.pause.set(), Some(over), "reading ended nothing");
    assert!(logs.is_empty(), "reading logged nothing");

    let_tasks_run().await;
    assert!(changes.has_changed().unwrap(), "the timer ended the pause");
    changes.mark_unchanged();
    assert_eq!(lane.pause.set(), None);
    assert_eq!(logs.count("the pause is over"), 1);

    read_everything(&executor, &status);
    let_tasks_run().await;
    assert!(!changes.has_changed().unwrap(), "one end, one announcement");
    assert_eq!(logs.count("the pause is over"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_quota_pause_ends_on_the_timer_when_it_runs_out_not_before() {
    let (logs, _guard) = Logs::capture();
    let executor = quiet_executor(1);
    let lane = &executor.main;
    let mut changes = lane.pause.subscribe();
    lane.pause.pause(quota_pause(Utc::now() + Duration::from_secs(60)));
    changes.mark_unchanged();
    let_tasks_run().await;

    tokio::time::advance(Duration::from_secs(59)).await;
    assert!(lane.pause.current().is_some());
    assert!(!changes.has_changed().unwrap());
    tokio::time::advance(Duration::from_secs(2)).await;
    let_tasks_run().await;
    assert!(changes.has_changed().unwrap(), "ended when it ran out");
    assert_eq!(lane.pause.set(), None);
    assert_eq!(logs.count("the pause is over"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_longer_pause_that_replaces_a_running_one_is_not_ended_at_the_first_ones_end() {
    let executor = quiet_executor(1);
    let lane = &executor.main;
    lane.pause.pause(quota_pause(Utc::now() + Duration::from_secs(60)));
    let_tasks_run().await;
    let longer = quota_pause(Utc::now() + Duration::from_secs(600));
    lane.pause.pause(longer.clone());
    let_tasks_run().await;
    tokio::time::advance(Duration::from_secs(120)).await;
    let_tasks_run().await;
    assert_eq!(lane.pause.set(), Some(longer));
}

#[tokio::test(start_paused = true)]
async fn an_account_pause_is_not_ended_by_the_timer() {
    let executor = quiet_executor(1);
    executor.on_error(&executor.main, &answer(401, "1001", "Authorization Token is invalid"));
    let_tasks_run().await;
    tokio::time::advance(MAX_PROBE_DELAY * 2).await;
    let_tasks_run().await;
    assert!(executor.main.pause.current().is_some_and(|p| p.needs_probe));
}

#[tokio::test(start_paused = true)]
async fn reading_the_active_lane_switches_nothing_and_a_job_switches_and_logs_once_each_way() {
    let (logs, _guard) = Logs::capture();
    let status = crate::status::WorkerStatus::default();
    let executor = quiet_executor_with_fallback();
    executor
        .main
        .pause
        .pause(quota_pause(Utc::now() + Duration::from_secs(600)));

    read_everything(&executor, &status);
    assert!(executor.active_lane().is_ok_and(|lane| lane.is_fallback));
    assert!(
        !executor.on_fallback.load(Ordering::Relaxed),
        "reading switched nothing"
    );
    assert_eq!(logs.count("switching"), 0, "reading logged no switch");

    for _ in 0..3 {
        assert!(executor.lane_for_job().is_ok_and(|lane| lane.is_fallback));
    }
    assert_eq!(logs.count("switching to the fallback"), 1);

    executor.main.pause.resume();
    read_everything(&executor, &status);
    assert!(
        executor.on_fallback.load(Ordering::Relaxed),
        "reading switched nothing back"
    );
    for _ in 0..3 {
        assert!(executor.lane_for_job().is_ok_and(|lane| !lane.is_fallback));
    }
    assert_eq!(logs.count("switching back to the main provider"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_call_that_finds_its_lane_paused_after_waiting_for_a_slot_is_not_made() {
    let executor = quiet_executor(1);
    let lane = &executor.main;
    let held = lane.limit.acquire().await;
    let waiting = tokio::spawn({
        let executor = executor.clone();
        async move { executor.call(&executor.main, &[Message::user("hi")]).await }
    });
    let_tasks_run().await;
    let pause = quota_pause(Utc::now() + Duration::from_secs(600));
    lane.pause.pause(pause.clone());
    drop(held);
    let error = tokio::time::timeout(Duration::from_secs(1), waiting)
        .await
        .expect("no call, no wait")
        .unwrap()
        .unwrap_err();
    match error {
        CallError::LanePaused { lane, pause: seen } => {
            assert_eq!((lane, seen), ("main", pause));
        }
        other => panic!("expected the paused lane, got {other:?}"),
    }
}
