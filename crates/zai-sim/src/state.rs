//! The simulator's shared state: accepted keys, the live knobs, the quota windows and the counters
//! behind `/_sim/stats`.
//!
//! Everything a chat request touches on its way is an atomic, so requests on both cores never wait
//! on each other; the keys sit behind a read-mostly lock, and the quota windows behind a mutex that
//! is taken only when a window is configured and never held across an await.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU16, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Deserializer, Serialize};

use super::{JunkShape, Lang, MAX_JUNK_BYTES, MismatchCode, Shape, SimArgs};

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
    pub fn answered(&self, key: &str) -> u64 {
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

/// The runtime knobs, every one optional: `POST /_sim/config` and [`super::SimHandle::configure`]
/// change only the fields that are set; `GET /_sim/config` answers them all. Rates are clamped to
/// `0..=1`; a limit of 0 means "no limit".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_calls: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weekly_calls: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weekly_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_rate_5xx: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_rate_1305: Option<f64>,
    /// Setting it (even to the same value) restarts the count: the next N chat calls fail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_first: Option<u64>,
    #[serde(
        default,
        deserialize_with = "code_from_string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub fail_first_code: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub garbage_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lang: Option<Lang>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mismatch_code: Option<MismatchCode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape: Option<Shape>,
    /// Added to the reset time 1308/1310 messages give; negative puts it in the past.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_shift_secs: Option<i64>,
    /// How many of the next successful answers carry junk; reads back as how many are left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub junk_answers: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub junk_shape: Option<JunkShape>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub junk_bytes: Option<u64>,
}

/// Codes are strings on Z.AI's wire, so a test may well write `"1302"` as readily as `1302`.
fn code_from_string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Code {
        Number(u16),
        Text(String),
    }
    match Option::<Code>::deserialize(d)? {
        None => Ok(None),
        Some(Code::Number(n)) => Ok(Some(n)),
        Some(Code::Text(s)) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("not an error code: {s:?}"))),
    }
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

#[derive(Debug)]
struct Knobs {
    max_concurrency: AtomicU64,
    latency_ms: AtomicU64,
    jitter_ms: AtomicU64,
    window_calls: AtomicU64,
    window_secs: AtomicU64,
    weekly_calls: AtomicU64,
    weekly_secs: AtomicU64,
    /// `f64` bit patterns.
    fail_rate_5xx: AtomicU64,
    fail_rate_1305: AtomicU64,
    garbage_rate: AtomicU64,
    fail_first: AtomicU64,
    fail_first_code: AtomicU16,
    lang: AtomicU8,
    mismatch_code: AtomicU8,
    shape: AtomicU8,
    reset_shift_secs: AtomicI64,
    junk_answers: AtomicU64,
    junk_shape: AtomicU8,
    junk_bytes: AtomicU64,
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
                *lock(&self.other).entry(key).or_default() += 1;
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
    knobs: Knobs,
    quota: Mutex<Quota>,
    requests: AtomicU64,
    chat_requests: AtomicU64,
    in_flight: AtomicU64,
    peak_in_flight: AtomicU64,
    serving: AtomicU64,
    fail_first_seen: AtomicU64,
    shape_turn: AtomicU64,
    answers: AnswerCounts,
    chat_answers: AnswerCounts,
}

/// A poisoned lock only means a panic elsewhere; the counters it guards are still meaningful.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn rate_bits(rate: f64) -> u64 {
    let rate = if rate.is_nan() { 0.0 } else { rate.clamp(0.0, 1.0) };
    rate.to_bits()
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
            knobs: Knobs {
                max_concurrency: AtomicU64::new(0),
                latency_ms: AtomicU64::new(0),
                jitter_ms: AtomicU64::new(0),
                window_calls: AtomicU64::new(0),
                window_secs: AtomicU64::new(0),
                weekly_calls: AtomicU64::new(0),
                weekly_secs: AtomicU64::new(0),
                fail_rate_5xx: AtomicU64::new(0),
                fail_rate_1305: AtomicU64::new(0),
                garbage_rate: AtomicU64::new(0),
                fail_first: AtomicU64::new(0),
                fail_first_code: AtomicU16::new(500),
                lang: AtomicU8::new(0),
                mismatch_code: AtomicU8::new(0),
                shape: AtomicU8::new(0),
                reset_shift_secs: AtomicI64::new(0),
                junk_answers: AtomicU64::new(0),
                junk_shape: AtomicU8::new(0),
                junk_bytes: AtomicU64::new(0),
            },
            quota: Mutex::new(Quota::default()),
            requests: AtomicU64::new(0),
            chat_requests: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            peak_in_flight: AtomicU64::new(0),
            serving: AtomicU64::new(0),
            fail_first_seen: AtomicU64::new(0),
            shape_turn: AtomicU64::new(0),
            answers: AnswerCounts::new(),
            chat_answers: AnswerCounts::new(),
        };
        state.set_keys(SimKeys {
            coding_keys: args.coding_keys.clone(),
            developer_keys: args.developer_keys.clone(),
        });
        state.configure(&SimConfig {
            max_concurrency: Some(args.max_concurrency),
            latency_ms: Some(args.latency_ms),
            jitter_ms: Some(args.jitter_ms),
            window_calls: Some(args.window_calls),
            window_secs: Some(args.window_secs),
            weekly_calls: Some(args.weekly_calls),
            weekly_secs: Some(args.weekly_secs),
            fail_rate_5xx: Some(args.fail_rate_5xx),
            fail_rate_1305: Some(args.fail_rate_1305),
            fail_first: Some(args.fail_first),
            fail_first_code: Some(args.fail_first_code),
            garbage_rate: Some(args.garbage_rate),
            lang: Some(args.lang),
            mismatch_code: Some(args.mismatch_code),
            shape: Some(args.shape),
            reset_shift_secs: Some(args.reset_shift_secs),
            junk_answers: Some(args.junk_answers),
            junk_shape: Some(args.junk_shape),
            junk_bytes: Some(args.junk_bytes),
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

    pub(crate) fn configure(&self, patch: &SimConfig) {
        let k = &self.knobs;
        let set = |slot: &AtomicU64, value: Option<u64>| {
            if let Some(v) = value {
                slot.store(v, Relaxed);
            }
        };
        set(&k.max_concurrency, patch.max_concurrency);
        set(&k.latency_ms, patch.latency_ms);
        set(&k.jitter_ms, patch.jitter_ms);
        set(&k.window_calls, patch.window_calls);
        set(&k.window_secs, patch.window_secs);
        set(&k.weekly_calls, patch.weekly_calls);
        set(&k.weekly_secs, patch.weekly_secs);
        set(&k.fail_rate_5xx, patch.fail_rate_5xx.map(rate_bits));
        set(&k.fail_rate_1305, patch.fail_rate_1305.map(rate_bits));
        set(&k.garbage_rate, patch.garbage_rate.map(rate_bits));
        if let Some(n) = patch.fail_first {
            k.fail_first.store(n, Relaxed);
            self.fail_first_seen.store(0, Relaxed);
        }
        if let Some(code) = patch.fail_first_code {
            k.fail_first_code.store(code, Relaxed);
        }
        if let Some(lang) = patch.lang {
            k.lang.store(lang as u8, Relaxed);
        }
        if let Some(code) = patch.mismatch_code {
            k.mismatch_code.store(code as u8, Relaxed);
        }
        if let Some(shape) = patch.shape {
            k.shape.store(shape as u8, Relaxed);
        }
        if let Some(shift) = patch.reset_shift_secs {
            k.reset_shift_secs.store(shift, Relaxed);
        }
        set(&k.junk_answers, patch.junk_answers);
        if let Some(shape) = patch.junk_shape {
            k.junk_shape.store(shape as u8, Relaxed);
        }
        set(&k.junk_bytes, patch.junk_bytes.map(|b| b.min(MAX_JUNK_BYTES)));
    }

    pub(crate) fn config(&self) -> SimConfig {
        let k = &self.knobs;
        let rate = |slot: &AtomicU64| Some(f64::from_bits(slot.load(Relaxed)));
        SimConfig {
            max_concurrency: Some(k.max_concurrency.load(Relaxed)),
            latency_ms: Some(k.latency_ms.load(Relaxed)),
            jitter_ms: Some(k.jitter_ms.load(Relaxed)),
            window_calls: Some(k.window_calls.load(Relaxed)),
            window_secs: Some(k.window_secs.load(Relaxed)),
            weekly_calls: Some(k.weekly_calls.load(Relaxed)),
            weekly_secs: Some(k.weekly_secs.load(Relaxed)),
            fail_rate_5xx: rate(&k.fail_rate_5xx),
            fail_rate_1305: rate(&k.fail_rate_1305),
            fail_first: Some(k.fail_first.load(Relaxed)),
            fail_first_code: Some(k.fail_first_code.load(Relaxed)),
            garbage_rate: rate(&k.garbage_rate),
            lang: Some(self.lang()),
            mismatch_code: Some(self.mismatch_code()),
            shape: Some(self.shape()),
            reset_shift_secs: Some(k.reset_shift_secs.load(Relaxed)),
            junk_answers: Some(k.junk_answers.load(Relaxed)),
            junk_shape: Some(JunkShape::from_u8(k.junk_shape.load(Relaxed))),
            junk_bytes: Some(k.junk_bytes.load(Relaxed)),
        }
    }

    /// The reset time a quota message gives for a window that closes at `reset`.
    pub(crate) fn announced_reset(&self, reset: DateTime<Utc>) -> DateTime<Utc> {
        let shift = TimeDelta::try_seconds(self.knobs.reset_shift_secs.load(Relaxed)).unwrap_or_default();
        reset.checked_add_signed(shift).unwrap_or(reset)
    }

    /// The junk this successful answer carries instead of a review, while any is left.
    pub(crate) fn take_junk(&self) -> Option<String> {
        let k = &self.knobs;
        k.junk_answers
            .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
            .ok()?;
        let bytes = usize::try_from(k.junk_bytes.load(Relaxed)).unwrap_or(usize::MAX);
        Some(JunkShape::from_u8(k.junk_shape.load(Relaxed)).text(bytes))
    }

    pub(crate) fn lang(&self) -> Lang {
        Lang::from_u8(self.knobs.lang.load(Relaxed))
    }

    pub(crate) fn mismatch_code(&self) -> MismatchCode {
        MismatchCode::from_u8(self.knobs.mismatch_code.load(Relaxed))
    }

    pub(crate) fn shape(&self) -> Shape {
        Shape::from_u8(self.knobs.shape.load(Relaxed))
    }

    pub(crate) fn latency_ms(&self) -> (u64, u64) {
        (self.knobs.latency_ms.load(Relaxed), self.knobs.jitter_ms.load(Relaxed))
    }

    pub(crate) fn fail_rate_5xx(&self) -> f64 {
        f64::from_bits(self.knobs.fail_rate_5xx.load(Relaxed))
    }

    pub(crate) fn fail_rate_1305(&self) -> f64 {
        f64::from_bits(self.knobs.fail_rate_1305.load(Relaxed))
    }

    pub(crate) fn garbage_rate(&self) -> f64 {
        f64::from_bits(self.knobs.garbage_rate.load(Relaxed))
    }

    /// The code this call must fail with, while the first `fail_first` calls are not used up.
    pub(crate) fn take_forced_failure(&self) -> Option<u16> {
        let limit = self.knobs.fail_first.load(Relaxed);
        if limit == 0 {
            return None;
        }
        let seen = self.fail_first_seen.fetch_add(1, Relaxed);
        (seen < limit).then(|| self.knobs.fail_first_code.load(Relaxed))
    }

    /// The reset time a forced 1308/1310 reports: the configured window from `now`, or Z.AI's
    /// own lengths (5 hours, a week) when none is configured.
    pub(crate) fn forced_reset(&self, code: u16, now: DateTime<Utc>) -> DateTime<Utc> {
        let (secs, default) = match code {
            1310 => (self.knobs.weekly_secs.load(Relaxed), 7 * 86_400),
            _ => (self.knobs.window_secs.load(Relaxed), 5 * 3_600),
        };
        reset_after(now, if secs == 0 { default } else { secs })
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
        let now = self.in_flight.fetch_add(1, Relaxed) + 1;
        self.peak_in_flight.fetch_max(now, Relaxed);
        (InFlight(Arc::clone(self), Counter::InFlight), seq)
    }

    pub(crate) fn count_request(&self) {
        self.requests.fetch_add(1, Relaxed);
    }

    /// A serving slot under the concurrency cap, or `None` when `max_concurrency` calls are
    /// already being served. Only admitted calls hold a slot, so a burst of rejected calls can't
    /// make a lone legitimate one look like the (N+1)th.
    pub(crate) fn try_serve(self: &Arc<Self>) -> Option<InFlight> {
        let cap = self.knobs.max_concurrency.load(Relaxed);
        let admitted = self
            .serving
            .fetch_update(Relaxed, Relaxed, |n| (cap == 0 || n < cap).then_some(n + 1))
            .is_ok();
        admitted.then(|| InFlight(Arc::clone(self), Counter::Serving))
    }

    // ----- quota -----

    /// Checks the weekly then the 5-hour window at `now`, opening a window on its first call and
    /// closing it at its reset. When both have room, `succeeds` decides whether this call will
    /// answer 200, and only then is it counted against the windows: failed calls cost nothing,
    /// as on Z.AI.
    pub(crate) fn admit(&self, now: DateTime<Utc>, succeeds: impl FnOnce() -> bool) -> Result<bool, QuotaExhausted> {
        let k = &self.knobs;
        let weekly = (k.weekly_calls.load(Relaxed), k.weekly_secs.load(Relaxed));
        let five_hour = (k.window_calls.load(Relaxed), k.window_secs.load(Relaxed));
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
                window.calls += 1;
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
        self.fail_first_seen.store(0, Relaxed);
        self.shape_turn.store(0, Relaxed);
        self.answers.clear();
        self.chat_answers.clear();
        *lock(&self.quota) = Quota::default();
    }
}

/// The window closes on a whole second, so that the reset time Z.AI prints (to the second) is
/// the moment a retry really succeeds, not up to a second early.
fn reset_after(now: DateTime<Utc>, secs: u64) -> DateTime<Utc> {
    // A century is "never" for a test run, and keeps the date arithmetic far from overflow.
    let secs = i64::try_from(secs).unwrap_or(i64::MAX).min(100 * 366 * 86_400);
    let end = now + TimeDelta::try_seconds(secs).unwrap_or_default();
    let whole = end.timestamp() + i64::from(end.timestamp_subsec_nanos() > 0);
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
        let args = SimArgs {
            window_calls: 1,
            window_secs: 60,
            ..SimArgs::default()
        };
        let state = SimState::new(&args);
        let now = Utc::now();
        assert!(matches!(state.admit(now, || false), Ok(false)));
        assert!(matches!(state.admit(now, || true), Ok(true)));
        let refused = state.admit(now, || true);
        assert!(matches!(refused, Err(QuotaExhausted { code: 1308, .. })));
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
