//! The simulator's shared state: accepted keys, the live knobs, the quota windows and the counters
//! behind `/_sim/stats`.
//!
//! The counters are atomics, so requests on both cores never wait on each other; the keys and
//! the knobs sit behind read-mostly locks (a request copies the knobs once, on arrival), and the
//! quota windows behind a mutex that is taken only when a window is configured and never held
//! across an await.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard};

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use super::SimArgs;
use super::config::{FIVE_HOURS, ONE_WEEK, SimConfig};

/// What `/_sim/stats` answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimStats {
    /// Every request to a Z.AI route (or an unknown path); `/_sim/*` is not counted.
    pub requests: u64,
    /// Requests to `/chat/completions` on either plan.
    pub chat_requests: u64,
    /// Chat requests being handled right now, including those about to be rejected.
    pub in_flight: u64,
    /// The most chat requests ever handled at once since start or the last reset.
    pub peak_in_flight: u64,
    /// Answers by key: `"200"` for successes, the Z.AI code (`"1302"`) for coded errors, the HTTP
    /// status (`"401"`, `"404"`) for uncoded ones. Keys never answered are absent.
    pub answers: BTreeMap<String, u64>,
    /// The same, for chat requests only (`answers` also counts `/models` probes).
    #[serde(default)]
    pub chat_answers: BTreeMap<String, u64>,
}

impl SimStats {
    /// How many answers went out under `key` (`"200"`, `"1308"`…), zero if none.
    #[cfg(test)]
    pub(crate) fn answered(&self, key: &str) -> u64 {
        self.answers.get(key).copied().unwrap_or(0)
    }

    /// How many chat answers went out under `key`, zero if none.
    pub fn chat_answered(&self, key: &str) -> u64 {
        self.chat_answers.get(key).copied().unwrap_or(0)
    }
}

/// The body of `POST /_sim/keys`: the keys accepted from now on, replacing the previous ones.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimKeys {
    #[serde(default)]
    pub coding_keys: Vec<String>,
    #[serde(default)]
    pub developer_keys: Vec<String>,
}

/// The two plans, i.e. the two base paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    Coding,
    Developer,
}

#[derive(Debug, Default)]
struct KeySet {
    coding: Vec<String>,
    developer: Vec<String>,
}

/// One answer counter per key. The keys the simulator itself produces get a slot of their own;
/// anything else (an exotic `--fail-first-code`) goes to the map.
#[derive(Debug)]
struct AnswerCounts {
    known: [AtomicU64; KNOWN_KEYS.len()],
    other: Mutex<BTreeMap<u16, u64>>,
}

const KNOWN_KEYS: [u16; 19] = [
    200, 400, 401, 404, 405, 413, 500, 503, 1000, 1113, 1210, 1211, 1214, 1302, 1305, 1308, 1309, 1310, 1313,
];

impl AnswerCounts {
    fn new() -> Self {
        Self {
            known: std::array::from_fn(|_| AtomicU64::new(0)),
            other: Mutex::new(BTreeMap::new()),
        }
    }

    fn add(&self, key: u16) {
        match KNOWN_KEYS.iter().position(|&k| k == key) {
            Some(at) => {
                self.known[at].fetch_add(1, Relaxed);
            }
            None => {
                let mut other = lock(&self.other);
                let n = other.entry(key).or_default();
                *n = n.saturating_add(1);
            }
        }
    }

    fn snapshot(&self) -> BTreeMap<String, u64> {
        let mut out: BTreeMap<String, u64> = KNOWN_KEYS
            .iter()
            .zip(&self.known)
            .map(|(key, n)| (key.to_string(), n.load(Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect();
        for (key, n) in lock(&self.other).iter() {
            out.insert(key.to_string(), *n);
        }
        out
    }

    fn clear(&self) {
        for n in &self.known {
            n.store(0, Relaxed);
        }
        lock(&self.other).clear();
    }
}

#[derive(Debug, Clone, Copy)]
struct Window {
    reset: DateTime<Utc>,
    calls: u64,
}

#[derive(Debug, Default)]
struct Quota {
    five_hour: Option<Window>,
    weekly: Option<Window>,
}

/// Why the quota refused a call: the Z.AI code and when the window closes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QuotaExhausted {
    pub(crate) code: u16,
    pub(crate) reset: DateTime<Utc>,
}

/// Shared by every connection of one simulator.
#[derive(Debug)]
pub(crate) struct SimState {
    pub(crate) models: Vec<String>,
    /// `GET /models` never changes, so its body is rendered once.
    pub(crate) models_body: String,
    pub(crate) seed: u64,
    keys: RwLock<Arc<KeySet>>,
    /// As last set; `fail_first` is the count a reset starts again from.
    knobs: RwLock<SimConfig>,
    /// Forced failures and junk answers still to come.
    fail_first_left: AtomicU64,
    junk_left: AtomicU64,
    quota: Mutex<Quota>,
    requests: AtomicU64,
    chat_requests: AtomicU64,
    in_flight: AtomicU64,
    peak_in_flight: AtomicU64,
    serving: AtomicU64,
    shape_turn: AtomicU64,
    answers: AnswerCounts,
    chat_answers: AnswerCounts,
}

/// A poisoned lock only means a panic elsewhere; the counters it guards are still meaningful.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

impl SimState {
    pub(crate) fn new(args: &SimArgs) -> Self {
        let models_body = serde_json::json!({
            "object": "list",
            "data": args.models.iter().map(|id| serde_json::json!({
                "id": id, "object": "model", "created": 0, "owned_by": "z-ai"
            })).collect::<Vec<_>>(),
        })
        .to_string();
        let state = Self {
            models: args.models.clone(),
            models_body,
            seed: args.seed,
            keys: RwLock::new(Arc::new(KeySet::default())),
            knobs: RwLock::new(args.config.sanitized()),
            fail_first_left: AtomicU64::new(args.config.fail_first),
            junk_left: AtomicU64::new(args.config.junk_answers),
            quota: Mutex::new(Quota::default()),
            requests: AtomicU64::new(0),
            chat_requests: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            peak_in_flight: AtomicU64::new(0),
            serving: AtomicU64::new(0),
            shape_turn: AtomicU64::new(0),
            answers: AnswerCounts::new(),
            chat_answers: AnswerCounts::new(),
        };
        state.set_keys(SimKeys {
            coding_keys: args.coding_keys.clone(),
            developer_keys: args.developer_keys.clone(),
        });
        state
    }

    // ----- keys -----

    pub(crate) fn set_keys(&self, keys: SimKeys) {
        let clean = |keys: Vec<String>| -> Vec<String> {
            keys.into_iter()
                .map(|k| k.trim().to_owned())
                .filter(|k| !k.is_empty())
                .collect()
        };
        let set = Arc::new(KeySet {
            coding: clean(keys.coding_keys),
            developer: clean(keys.developer_keys),
        });
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = set;
    }

    /// Whether `key` is accepted on `plan`'s path: `Ok`, or `Err(true)` when it belongs to the
    /// other plan (the mismatch case), `Err(false)` when nobody knows it.
    pub(crate) fn check_key(&self, plan: Plan, key: &str) -> Result<(), bool> {
        let keys = Arc::clone(&self.keys.read().unwrap_or_else(PoisonError::into_inner));
        let (own, other) = match plan {
            Plan::Coding => (&keys.coding, &keys.developer),
            Plan::Developer => (&keys.developer, &keys.coding),
        };
        if own.iter().any(|k| k == key) {
            Ok(())
        } else {
            Err(other.iter().any(|k| k == key))
        }
    }

    // ----- knobs -----

    /// Applies `change` to the current knobs (the counting ones as what is left); a counting
    /// knob that `change` sets to another value starts counting again from it. Nothing changes
    /// when `change` fails.
    pub(crate) fn configure<E>(&self, change: impl FnOnce(&mut SimConfig) -> Result<(), E>) -> Result<(), E> {
        let mut stored = self.knobs.write().unwrap_or_else(PoisonError::into_inner);
        let before = self.with_counts(*stored);
        let mut after = before;
        change(&mut after)?;
        let mut after = after.sanitized();
        if after.fail_first == before.fail_first {
            after.fail_first = stored.fail_first;
        } else {
            self.fail_first_left.store(after.fail_first, Relaxed);
        }
        if after.junk_answers != before.junk_answers {
            self.junk_left.store(after.junk_answers, Relaxed);
        }
        *stored = after;
        Ok(())
    }

    /// Every knob as it is now, the counting ones as what is left: what a request works with.
    pub(crate) fn config(&self) -> SimConfig {
        self.with_counts(*read(&self.knobs))
    }

    fn with_counts(&self, knobs: SimConfig) -> SimConfig {
        SimConfig {
            fail_first: self.fail_first_left.load(Relaxed),
            junk_answers: self.junk_left.load(Relaxed),
            ..knobs
        }
    }

    /// The junk this successful answer carries instead of a review, while any is left.
    pub(crate) fn take_junk(&self, knobs: &SimConfig) -> Option<String> {
        self.junk_left
            .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
            .ok()?;
        let bytes = usize::try_from(knobs.junk_bytes).unwrap_or(usize::MAX);
        Some(knobs.junk_shape.text(bytes))
    }

    /// Whether this call is one of the first `fail_first`, which must fail.
    pub(crate) fn take_forced_failure(&self) -> bool {
        self.fail_first_left
            .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Turn of the rotating answer shape.
    pub(crate) fn next_shape_turn(&self) -> u64 {
        self.shape_turn.fetch_add(1, Relaxed)
    }

    // ----- concurrency -----

    /// Counts a chat request as in flight until the guard drops; returns its sequence number.
    pub(crate) fn enter_chat(self: &Arc<Self>) -> (InFlight, u64) {
        self.requests.fetch_add(1, Relaxed);
        let seq = self.chat_requests.fetch_add(1, Relaxed);
        let now = self.in_flight.fetch_add(1, Relaxed).saturating_add(1);
        self.peak_in_flight.fetch_max(now, Relaxed);
        (InFlight(Arc::clone(self), Counter::InFlight), seq)
    }

    pub(crate) fn count_request(&self) {
        self.requests.fetch_add(1, Relaxed);
    }

    /// A serving slot under the concurrency cap, or `None` when `max_concurrency` calls are
    /// already being served. Only admitted calls hold a slot, so a burst of rejected calls can't
    /// make a lone legitimate one look like the (N+1)th.
    pub(crate) fn try_serve(self: &Arc<Self>, cap: u64) -> Option<InFlight> {
        let admitted = self
            .serving
            .fetch_update(Relaxed, Relaxed, |n| (cap == 0 || n < cap).then(|| n.saturating_add(1)))
            .is_ok();
        admitted.then(|| InFlight(Arc::clone(self), Counter::Serving))
    }

    // ----- quota -----

    /// Checks the weekly then the 5-hour window at `now`, opening a window on its first call and
    /// closing it at its reset. When both have room, `succeeds` decides whether this call will
    /// answer 200, and only then is it counted against the windows: failed calls cost nothing,
    /// as on Z.AI.
    pub(crate) fn admit(
        &self,
        knobs: &SimConfig,
        now: DateTime<Utc>,
        succeeds: impl FnOnce() -> bool,
    ) -> Result<bool, QuotaExhausted> {
        let weekly = (knobs.weekly_calls, knobs.weekly_secs);
        let five_hour = (knobs.window_calls, knobs.window_secs);
        if weekly.0 == 0 && five_hour.0 == 0 {
            return Ok(succeeds());
        }
        let mut quota = lock(&self.quota);
        let quota = &mut *quota;
        let limits = [
            (&mut quota.weekly, weekly, 1310),
            (&mut quota.five_hour, five_hour, 1308),
        ];
        let mut open = Vec::with_capacity(2);
        for (slot, (calls, secs), code) in limits {
            if calls == 0 {
                continue;
            }
            if slot.is_none_or(|w| now >= w.reset) {
                *slot = Some(Window {
                    reset: reset_after(now, secs),
                    calls: 0,
                });
            }
            let Some(window) = slot.as_mut() else {
                continue;
            };
            if window.calls >= calls {
                return Err(QuotaExhausted {
                    code,
                    reset: window.reset,
                });
            }
            open.push(window);
        }
        let ok = succeeds();
        if ok {
            for window in open {
                window.calls = window.calls.saturating_add(1);
            }
        }
        Ok(ok)
    }

    // ----- stats -----

    pub(crate) fn record(&self, key: u16, chat: bool) {
        self.answers.add(key);
        if chat {
            self.chat_answers.add(key);
        }
    }

    pub(crate) fn stats(&self) -> SimStats {
        SimStats {
            requests: self.requests.load(Relaxed),
            chat_requests: self.chat_requests.load(Relaxed),
            in_flight: self.in_flight.load(Relaxed),
            peak_in_flight: self.peak_in_flight.load(Relaxed),
            answers: self.answers.snapshot(),
            chat_answers: self.chat_answers.snapshot(),
        }
    }

    /// Zeroes the counters, closes the windows and restarts `fail_first`. Requests still in
    /// flight stay counted as in flight: they will leave and must not drive the count negative.
    pub(crate) fn reset(&self) {
        self.requests.store(0, Relaxed);
        self.chat_requests.store(0, Relaxed);
        self.peak_in_flight.store(self.in_flight.load(Relaxed), Relaxed);
        self.fail_first_left.store(read(&self.knobs).fail_first, Relaxed);
        self.shape_turn.store(0, Relaxed);
        self.answers.clear();
        self.chat_answers.clear();
        *lock(&self.quota) = Quota::default();
    }
}

impl SimConfig {
    /// The reset time a quota message gives for a window that closes at `reset`.
    pub(crate) fn announced_reset(&self, reset: DateTime<Utc>) -> DateTime<Utc> {
        let shift = TimeDelta::try_seconds(self.reset_shift_secs).unwrap_or_default();
        reset.checked_add_signed(shift).unwrap_or(reset)
    }

    /// The reset time a forced 1308/1310 reports: the configured window from `now`, or Z.AI's
    /// own lengths (5 hours, a week) when none is configured.
    pub(crate) fn forced_reset(&self, code: u16, now: DateTime<Utc>) -> DateTime<Utc> {
        let (secs, default) = match code {
            1310 => (self.weekly_secs, ONE_WEEK),
            _ => (self.window_secs, FIVE_HOURS),
        };
        reset_after(now, if secs == 0 { default } else { secs })
    }
}

/// The window closes on a whole second, so that the reset time Z.AI prints (to the second) is
/// the moment a retry really succeeds, not up to a second early.
fn reset_after(now: DateTime<Utc>, secs: u64) -> DateTime<Utc> {
    // A century is "never" for a test run, and keeps the date arithmetic far from overflow.
    let secs = i64::try_from(secs).unwrap_or(i64::MAX).min(100 * 366 * 86_400);
    let end = now
        .checked_add_signed(TimeDelta::try_seconds(secs).unwrap_or_default())
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    let whole = end
        .timestamp()
        .saturating_add(i64::from(end.timestamp_subsec_nanos() > 0));
    DateTime::from_timestamp(whole, 0).unwrap_or(end)
}

#[derive(Debug, Clone, Copy)]
enum Counter {
    InFlight,
    Serving,
}

/// Decrements its counter when dropped, also when the client hangs up mid-request.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<SimState>, Counter);

impl Drop for InFlight {
    fn drop(&mut self) {
        match self.1 {
            Counter::InFlight => self.0.in_flight.fetch_sub(1, Relaxed),
            Counter::Serving => self.0.serving.fetch_sub(1, Relaxed),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_times_round_up_to_the_next_whole_second() {
        let now = DateTime::from_timestamp(1_000, 250_000_000).unwrap_or_default();
        assert_eq!(reset_after(now, 1).timestamp(), 1_002);
        let exact = DateTime::from_timestamp(1_000, 0).unwrap_or_default();
        assert_eq!(reset_after(exact, 5).timestamp(), 1_005);
    }

    #[test]
    fn the_window_counts_only_successful_calls() {
        let args = SimArgs::from(SimConfig {
            window_calls: 1,
            window_secs: 60,
            ..SimConfig::default()
        });
        let state = SimState::new(&args);
        let knobs = state.config();
        let now = Utc::now();
        assert!(matches!(state.admit(&knobs, now, || false), Ok(false)));
        assert!(matches!(state.admit(&knobs, now, || true), Ok(true)));
        let refused = state.admit(&knobs, now, || true);
        assert!(matches!(refused, Err(QuotaExhausted { code: 1308, .. })));
    }

    #[test]
    fn fail_first_counts_down_restarts_on_a_reset_and_keeps_running_through_other_changes() {
        let state = SimState::new(&SimArgs::from(SimConfig {
            fail_first: 2,
            ..SimConfig::default()
        }));
        assert!(state.take_forced_failure());
        assert_eq!(state.config().fail_first, 1, "it reads back as how many are left");
        let Ok(()) = state.configure(|c| {
            c.latency_ms = 5;
            Ok::<(), std::convert::Infallible>(())
        });
        assert!(state.take_forced_failure(), "changing another knob does not restart it");
        assert!(!state.take_forced_failure());
        state.reset();
        assert_eq!(state.config().fail_first, 2, "a reset starts it again");
        let Ok(()) = state.configure(|c| {
            c.fail_first = 1;
            Ok::<(), std::convert::Infallible>(())
        });
        assert!(state.take_forced_failure() && !state.take_forced_failure());
        state.reset();
        assert_eq!(
            state.config().fail_first,
            1,
            "a reset starts again from the last value set"
        );
    }

    #[test]
    fn a_control_body_sets_only_the_knobs_it_names_and_refuses_unknown_ones() {
        let knobs = SimConfig::default();
        let patch = |json: serde_json::Value| match json {
            serde_json::Value::Object(map) => knobs.patched(map),
            _ => Err(serde::de::Error::custom("not an object")),
        };
        let patched = patch(serde_json::json!({"latency_ms": 7, "jitter_ms": null})).unwrap();
        assert_eq!(patched, SimConfig { latency_ms: 7, ..knobs });
        assert!(patch(serde_json::json!({"latency": 7})).is_err());
        assert!(patch(serde_json::json!({"latency_ms": "soon"})).is_err());
    }

    #[test]
    fn unknown_answer_keys_are_still_counted() {
        let counts = AnswerCounts::new();
        counts.add(200);
        counts.add(1777);
        counts.add(1777);
        let snap = counts.snapshot();
        assert_eq!(snap.get("200"), Some(&1));
        assert_eq!(snap.get("1777"), Some(&2));
        assert_eq!(snap.len(), 2);
    }
}
