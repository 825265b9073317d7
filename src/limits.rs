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
pub(crate) struct AdaptiveLimit {
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
    /// What the last 1302 halved the limit to (the configured limit before any).
    lowered_to: u32,
    /// When that was: the limit grows back one step per quiet period since.
    last_lowered: Option<Instant>,
    in_flight: u32,
    /// After a pause: one call at a time until one succeeds (a reset that did not happen costs
    /// one call, not a whole cap's worth).
    half_open: bool,
    /// No new call may start (this replica is not the leader); calls in flight go on.
    closed: bool,
}

/// One call's place under the limit; dropping it frees the place.
#[derive(Debug)]
pub(crate) struct Slot {
    inner: Arc<LimitInner>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = lock(&self.inner.state);
        state.in_flight = state.in_flight.saturating_sub(1);
        drop(state);
        self.inner.changed.notify_waiters();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock leaves plain counters behind, still meaningful.
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl AdaptiveLimit {
    pub(crate) fn new(configured: u32) -> Self {
        let configured = configured.max(1);
        Self {
            inner: Arc::new(LimitInner {
                state: Mutex::new(LimitState {
                    lowered_to: configured,
                    last_lowered: None,
                    in_flight: 0,
                    half_open: false,
                    closed: false,
                }),
                changed: Notify::new(),
                configured,
            }),
        }
    }

    /// Waits for a place under the current limit.
    pub(crate) async fn acquire(&self) -> Slot {
        loop {
            let notified = self.inner.changed.notified();
            {
                let mut state = lock(&self.inner.state);
                let limit = if state.closed {
                    0
                } else if state.half_open {
                    1
                } else {
                    self.limit(&state)
                };
                if state.in_flight < limit {
                    state.in_flight = state.in_flight.saturating_add(1);
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
    pub(crate) fn lower(&self) -> u32 {
        let mut state = lock(&self.inner.state);
        state.lowered_to = (self.limit(&state) / 2).max(1);
        state.last_lowered = Some(Instant::now());
        state.lowered_to
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

    /// The limit now, recovery included. Only reads.
    pub(crate) fn current(&self) -> u32 {
        self.limit(&lock(&self.inner.state))
    }

    pub(crate) fn configured(&self) -> u32 {
        self.inner.configured
    }

    /// The last 1302's limit plus one step per quiet period since, up to the configured limit:
    /// a function of the time, so that reading it needs no bookkeeping.
    fn limit(&self, state: &LimitState) -> u32 {
        let Some(at) = state.last_lowered else {
            return state.lowered_to;
        };
        let steps = at.elapsed().as_secs().checked_div(QUIET_PERIOD.as_secs()).unwrap_or(0);
        let steps = u32::try_from(steps).unwrap_or(u32::MAX);
        state.lowered_to.saturating_add(steps).min(self.inner.configured)
    }
}

/// Why a provider is paused. Also what the pause log on the broker carries.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Pause {
    pub(crate) until: DateTime<Utc>,
    /// Z.AI's code or the HTTP status.
    pub(crate) code: String,
    /// e.g. "5-hour quota exhausted", "invalid key".
    pub(crate) reason: String,
    /// Account problems end when a probe succeeds, not at `until` (which is the next probe).
    pub(crate) needs_probe: bool,
}

/// The pause state of one provider, shared by every task of the process; subscribers hear of
/// every change.
#[derive(Debug, Clone)]
pub(crate) struct PauseState {
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
    pub(crate) fn pause(&self, pause: Pause) -> bool {
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

    /// Ends whatever pause is set (a probe succeeded, or the leader says so). Returns it.
    pub(crate) fn resume(&self) -> Option<Pause> {
        let mut previous = None;
        self.tx.send_if_modified(|current| {
            previous = current.take();
            previous.is_some()
        });
        previous
    }

    /// Ends `pause` if it is still the one set (a newer pause stays): the step the executor's
    /// timer takes when a time-bound pause runs out. Returns whether it ended, so that the end
    /// is logged, and broadcast, once.
    pub(crate) fn end(&self, pause: &Pause) -> bool {
        self.tx.send_if_modified(|current| {
            let ends = current.as_ref() == Some(pause);
            if ends {
                *current = None;
            }
            ends
        })
    }

    /// The pause in force, if any. Only reads: a time-bound pause whose end has passed reads as
    /// none, but stays set (and unannounced) until the executor's timer ends it, so that a
    /// `/ready` or `/metrics` request can never be what starts a resume.
    pub(crate) fn current(&self) -> Option<Pause> {
        self.tx
            .borrow()
            .as_ref()
            .filter(|p| p.needs_probe || p.until > Utc::now())
            .cloned()
    }

    /// The pause set, whether its end has passed or not.
    #[cfg(test)]
    pub(crate) fn set(&self) -> Option<Pause> {
        self.tx.borrow().clone()
    }

    /// A receiver that wakes on every change.
    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<Option<Pause>> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Long enough for any runnable task to run on the paused clock, which only moves when
    /// every task waits.
    const NO_SLOT: Duration = Duration::from_secs(3600);

    fn pause_for(until: DateTime<Utc>, needs_probe: bool) -> Pause {
        Pause {
            until,
            code: if needs_probe { "401" } else { "1308" }.into(),
            reason: "5-hour quota exhausted".into(),
            needs_probe,
        }
    }

    #[tokio::test(start_paused = true)]
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

    #[tokio::test(start_paused = true)]
    async fn reading_the_limit_does_not_move_its_recovery() {
        let limit = AdaptiveLimit::new(4);
        limit.lower();
        limit.lower();
        // Reads in every second of the quiet period: were a read to restart it, no step would
        // come.
        for _ in 0..QUIET_PERIOD.as_secs() {
            assert_eq!(limit.current(), 1);
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert_eq!(limit.current(), 2);
        tokio::time::advance(QUIET_PERIOD * 2).await;
        assert_eq!(
            limit.current(),
            4,
            "two more quiet periods, two more steps, read or not"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_gets_the_place_that_a_quiet_period_adds() {
        let limit = AdaptiveLimit::new(2);
        limit.lower();
        let _held = limit.acquire().await;
        let started = Instant::now();
        let _second = tokio::time::timeout(NO_SLOT, limit.acquire())
            .await
            .expect("the limit grows back to 2");
        assert_eq!(started.elapsed(), QUIET_PERIOD);
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_pause_one_call_goes_first_and_a_success_opens_the_rest() {
        let limit = AdaptiveLimit::new(3);
        limit.half_open();
        let first = limit.acquire().await;
        let second = tokio::time::timeout(NO_SLOT, limit.acquire()).await;
        assert!(second.is_err(), "only one call while half open");
        limit.succeeded();
        let _second = tokio::time::timeout(Duration::ZERO, limit.acquire())
            .await
            .expect("open again");
        let _third = tokio::time::timeout(Duration::ZERO, limit.acquire())
            .await
            .expect("the whole cap");
        drop(first);
    }

    #[tokio::test(start_paused = true)]
    async fn no_more_than_the_limit_are_in_flight() {
        let limit = AdaptiveLimit::new(2);
        let a = limit.acquire().await;
        let _b = limit.acquire().await;
        let third = tokio::time::timeout(NO_SLOT, limit.acquire()).await;
        assert!(third.is_err(), "a third slot must wait");
        drop(a);
        let third = tokio::time::timeout(Duration::ZERO, limit.acquire()).await;
        assert!(third.is_ok(), "a freed slot is taken");
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_limit_starts_nothing_until_it_opens() {
        let limit = AdaptiveLimit::new(2);
        limit.close();
        let waiting = tokio::spawn({
            let limit = limit.clone();
            async move { drop(limit.acquire().await) }
        });
        tokio::time::sleep(NO_SLOT).await;
        assert!(!waiting.is_finished(), "closed: no call starts");
        limit.open();
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("open: the waiter goes")
            .unwrap();
    }

    #[test]
    fn a_time_bound_pause_whose_end_passed_reads_as_none_and_stays_set_until_it_is_ended() {
        let pauses = PauseState::default();
        let mut changes = pauses.subscribe();
        let over = pause_for(Utc::now() - chrono::Duration::seconds(1), false);
        pauses.pause(over.clone());
        changes.mark_unchanged();
        for _ in 0..100 {
            assert_eq!(pauses.current(), None);
        }
        assert!(!changes.has_changed().unwrap(), "reading announced nothing");
        assert_eq!(pauses.set(), Some(over.clone()));

        assert!(pauses.end(&over));
        assert!(changes.has_changed().unwrap(), "the end is announced");
        assert_eq!(pauses.set(), None);
        assert!(!pauses.end(&over), "and only once");
    }

    #[test]
    fn ending_a_pause_leaves_a_newer_one_in_force() {
        let pauses = PauseState::default();
        let first = pause_for(Utc::now() + chrono::Duration::seconds(60), false);
        let second = pause_for(Utc::now() + chrono::Duration::seconds(120), false);
        pauses.pause(first.clone());
        pauses.pause(second.clone());
        assert!(!pauses.end(&first));
        assert_eq!(pauses.current(), Some(second));
    }

    #[test]
    fn an_account_pause_does_not_end_with_time_but_with_resume() {
        let pauses = PauseState::default();
        let account = pause_for(Utc::now() - chrono::Duration::seconds(1), true);
        pauses.pause(account.clone());
        assert_eq!(
            pauses.current(),
            Some(account.clone()),
            "past its next probe, still paused"
        );
        assert_eq!(pauses.resume(), Some(account));
        assert_eq!(pauses.current(), None);
    }
}
