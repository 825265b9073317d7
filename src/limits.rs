//! The plan's limits as this process enforces them: an in-flight limit that halves on a 1302 and
//! creeps back after a quiet period, and the provider's pause (quota window or account problem)
//! with its reason and end.
//!
//! The deployment-wide side (one active replica, pause broadcasts) lives in `coordination.rs`;
//! this module is the local mechanism it drives.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

/// How long without a 1302 before the limit grows by one again.
pub(crate) const QUIET_PERIOD: Duration = Duration::from_secs(30);

/// A limit on calls in flight whose size changes at run time.
#[derive(Debug, Clone)]
pub struct AdaptiveLimit {
    inner: Arc<LimitInner>,
}

#[derive(Debug)]
struct LimitInner {
    state: Mutex<LimitState>,
    changed: Notify,
    configured: u32,
}

#[derive(Debug)]
struct LimitState {
    limit: u32,
    in_flight: u32,
    peak: u32,
    last_lowered: Option<Instant>,
    /// After a pause: one call at a time until one succeeds (a reset that did not happen costs
    /// one call, not a whole cap's worth).
    half_open: bool,
    /// No new call may start (this replica is not the leader); calls in flight go on.
    closed: bool,
}

/// One call's place under the limit; dropping it frees the place.
#[derive(Debug)]
pub struct Slot {
    inner: Arc<LimitInner>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = lock(&self.inner.state);
        state.in_flight -= 1;
        drop(state);
        self.inner.changed.notify_waiters();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock leaves plain counters behind, still meaningful.
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl AdaptiveLimit {
    pub fn new(configured: u32) -> Self {
        let configured = configured.max(1);
        Self {
            inner: Arc::new(LimitInner {
                state: Mutex::new(LimitState {
                    limit: configured,
                    in_flight: 0,
                    peak: 0,
                    last_lowered: None,
                    half_open: false,
                    closed: false,
                }),
                changed: Notify::new(),
                configured,
            }),
        }
    }

    /// Waits for a place under the current limit.
    pub async fn acquire(&self) -> Slot {
        loop {
            let notified = self.inner.changed.notified();
            {
                let mut state = lock(&self.inner.state);
                self.recover(&mut state);
                let limit = if state.closed {
                    0
                } else if state.half_open {
                    1
                } else {
                    state.limit
                };
                if state.in_flight < limit {
                    state.in_flight += 1;
                    state.peak = state.peak.max(state.in_flight);
                    return Slot {
                        inner: self.inner.clone(),
                    };
                }
            }
            // Wake on a release, or after a quiet period may have let the limit grow.
            let _ = tokio::time::timeout(QUIET_PERIOD, notified).await;
        }
    }

    /// No new call starts until `open`: waiters keep waiting.
    pub(crate) fn close(&self) {
        lock(&self.inner.state).closed = true;
    }

    pub(crate) fn open(&self) {
        lock(&self.inner.state).closed = false;
        self.inner.changed.notify_waiters();
    }

    /// A 1302 said we are over the plan: halve, never below 1.
    pub fn lower(&self) -> u32 {
        let mut state = lock(&self.inner.state);
        state.limit = (state.limit / 2).max(1);
        state.last_lowered = Some(Instant::now());
        state.limit
    }

    /// Until the next success, one call at a time.
    pub(crate) fn half_open(&self) {
        lock(&self.inner.state).half_open = true;
    }

    /// A call succeeded: the whole limit is open again.
    pub(crate) fn succeeded(&self) {
        let mut state = lock(&self.inner.state);
        if state.half_open {
            state.half_open = false;
            drop(state);
            self.inner.changed.notify_waiters();
        }
    }

    /// The limit now (after any recovery that is due).
    pub fn current(&self) -> u32 {
        let mut state = lock(&self.inner.state);
        self.recover(&mut state);
        state.limit
    }

    pub fn configured(&self) -> u32 {
        self.inner.configured
    }

    pub fn in_flight(&self) -> u32 {
        lock(&self.inner.state).in_flight
    }

    pub fn peak(&self) -> u32 {
        lock(&self.inner.state).peak
    }

    /// One step back toward the configured limit per quiet period since the last 1302.
    fn recover(&self, state: &mut LimitState) {
        if let Some(at) = state.last_lowered
            && state.limit < self.inner.configured
            && at.elapsed() >= QUIET_PERIOD
        {
            state.limit += 1;
            state.last_lowered = (state.limit < self.inner.configured).then(Instant::now);
            self.inner.changed.notify_waiters();
        }
    }
}

/// Why a provider is paused. Also what the pause log on the broker carries.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pause {
    pub until: DateTime<Utc>,
    /// Z.AI's code or the HTTP status.
    pub code: String,
    /// e.g. "5-hour quota exhausted", "invalid key".
    pub reason: String,
    /// Account problems end when a probe succeeds, not at `until` (which is the next probe).
    pub needs_probe: bool,
}

/// The pause state of one provider, shared by every task of the process; subscribers hear of
/// every change.
#[derive(Debug, Clone)]
pub struct PauseState {
    tx: Arc<tokio::sync::watch::Sender<Option<Pause>>>,
}

impl Default for PauseState {
    fn default() -> Self {
        Self {
            tx: Arc::new(tokio::sync::watch::Sender::new(None)),
        }
    }
}

impl PauseState {
    /// Sets a pause unless one of the same kind already runs at least as long. Returns whether
    /// anything changed (so that only the first of many identical answers is logged).
    pub fn pause(&self, pause: Pause) -> bool {
        self.tx.send_if_modified(|current| {
            if current
                .as_ref()
                .is_some_and(|c| c.until >= pause.until && c.needs_probe == pause.needs_probe)
            {
                return false;
            }
            *current = Some(pause);
            true
        })
    }

    pub fn resume(&self) -> Option<Pause> {
        let mut previous = None;
        self.tx.send_if_modified(|current| {
            previous = current.take();
            previous.is_some()
        });
        previous
    }

    /// The pause in force, if any. A time-bound pause ends by itself.
    pub fn current(&self) -> Option<Pause> {
        let current = self.tx.borrow().clone();
        match current {
            Some(p) if !p.needs_probe && p.until <= Utc::now() => {
                self.tx.send_if_modified(|c| {
                    let expired = c.as_ref().is_some_and(|c| !c.needs_probe && c.until <= Utc::now());
                    if expired {
                        *c = None;
                    }
                    expired
                });
                None
            }
            other => other,
        }
    }

    /// A receiver that wakes on every change.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Option<Pause>> {
        self.tx.subscribe()
    }

    /// Resolves when no pause is in force (time-bound pauses end at their time, account pauses
    /// when `resume` is called).
    pub async fn wait_until_clear(&self) {
        let mut changes = self.subscribe();
        loop {
            let Some(pause) = self.current() else { return };
            let wait = if pause.needs_probe {
                Duration::from_secs(3600)
            } else {
                (pause.until - Utc::now())
                    .to_std()
                    .unwrap_or(Duration::ZERO)
                    .max(Duration::from_millis(10))
            };
            let _ = tokio::time::timeout(wait, changes.changed()).await;
        }
    }

    /// Resolves when a pause starts (or is already in force).
    pub async fn wait_until_paused(&self) {
        let mut changes = self.subscribe();
        loop {
            if self.current().is_some() {
                return;
            }
            if changes.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_limit_halves_on_1302_and_never_drops_below_one() {
        let limit = AdaptiveLimit::new(8);
        assert_eq!(limit.lower(), 4);
        assert_eq!(limit.lower(), 2);
        assert_eq!(limit.lower(), 1);
        assert_eq!(limit.lower(), 1);
        assert_eq!(limit.current(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_limit_creeps_back_one_step_per_quiet_period() {
        let limit = AdaptiveLimit::new(4);
        limit.lower();
        limit.lower();
        assert_eq!(limit.current(), 1);
        tokio::time::advance(QUIET_PERIOD / 2).await;
        assert_eq!(limit.current(), 1, "not quiet long enough yet");
        tokio::time::advance(QUIET_PERIOD / 2).await;
        assert_eq!(limit.current(), 2);
        tokio::time::advance(QUIET_PERIOD).await;
        assert_eq!(limit.current(), 3);
        tokio::time::advance(QUIET_PERIOD).await;
        assert_eq!(limit.current(), 4);
        tokio::time::advance(QUIET_PERIOD).await;
        assert_eq!(limit.current(), 4, "never above the configured cap");
    }

    #[tokio::test]
    async fn after_a_pause_one_call_goes_first_and_a_success_opens_the_rest() {
        let limit = AdaptiveLimit::new(3);
        limit.half_open();
        let first = limit.acquire().await;
        let second = tokio::time::timeout(Duration::from_millis(50), limit.acquire()).await;
        assert!(second.is_err(), "only one call while half open");
        limit.succeeded();
        let _second = tokio::time::timeout(Duration::from_millis(500), limit.acquire())
            .await
            .expect("open again");
        let _third = tokio::time::timeout(Duration::from_millis(500), limit.acquire())
            .await
            .expect("the whole cap");
        drop(first);
    }

    #[tokio::test]
    async fn no_more_than_the_limit_are_in_flight() {
        let limit = AdaptiveLimit::new(2);
        let a = limit.acquire().await;
        let _b = limit.acquire().await;
        let third = tokio::time::timeout(Duration::from_millis(50), limit.acquire()).await;
        assert!(third.is_err(), "a third slot must wait");
        drop(a);
        let third = tokio::time::timeout(Duration::from_millis(500), limit.acquire()).await;
        assert!(third.is_ok(), "a freed slot is taken");
        assert_eq!(limit.peak(), 2);
    }

    #[tokio::test]
    async fn a_time_bound_pause_ends_by_itself() {
        let pauses = PauseState::default();
        pauses.pause(Pause {
            until: Utc::now() + chrono::Duration::milliseconds(100),
            code: "1308".into(),
            reason: "5-hour quota exhausted".into(),
            needs_probe: false,
        });
        assert!(pauses.current().is_some());
        tokio::time::timeout(Duration::from_secs(2), pauses.wait_until_clear())
            .await
            .unwrap();
        assert!(pauses.current().is_none());
    }

    #[tokio::test]
    async fn an_account_pause_waits_for_resume() {
        let pauses = PauseState::default();
        pauses.pause(Pause {
            until: Utc::now(),
            code: "401".into(),
            reason: "invalid key".into(),
            needs_probe: true,
        });
        assert!(pauses.current().is_some(), "an account pause does not end with time");
        let waiter = tokio::spawn({
            let pauses = pauses.clone();
            async move { pauses.wait_until_clear().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        pauses.resume();
        tokio::time::timeout(Duration::from_secs(3), waiter)
            .await
            .unwrap()
            .unwrap();
    }
}
