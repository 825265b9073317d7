//! The executor: runs a job's review against the provider under the plan's limits, and decides
//! from the provider's error class what happens to the job (retry here, wait in the queue, pause
//! the provider, or fail).
//!
//! Each provider (main, fallback) is a *lane* with its own in-flight limit and pause state.
//! Transient failures (timeouts, connection errors, 5xx) retry here a few times with exponential
//! backoff and jitter; concurrency and rate answers (1302, 1303, 1305, 1312) retry the same way
//! without costing the job an attempt, and a 1302 halves the lane's limit. Quota windows and
//! account problems pause the lane; the job waits (or moves to the fallback lane).
//!
//! Reading which lane is active, or whether a lane is paused, changes nothing. State moves in two
//! places only: the call path ([`Executor::review`] switches lanes and logs the switch; provider
//! answers start pauses; probes end account pauses) and one timer task per lane that ends
//! time-bound pauses when they run out and logs it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, Utc};
use tokio::task::AbortHandle;
use tracing::{debug, error, info, warn};

use crate::cache::AnswerCache;
use crate::fate::Unfinished;
use crate::limits::{AdaptiveLimit, Pause, PauseState};
use crate::progress::Progress;
use crate::provider::{Action, ChatAnswer, Message, Provider, ProviderError};
use crate::review::{self, Review, ReviewError, ReviewLimits};
use crate::settings::ReviewSettings;
use review_core::contract::Job;

/// After a quota answer without a usable reset time (none, or one already past), pause this
/// long, then let one call find out.
const QUOTA_PAUSE_WITHOUT_TIME: Duration = Duration::from_secs(60);
/// The longest quota pause. The longest window is a week, so a reset further ahead is a wrong
/// date, and waiting for it would stop reviews for longer than any quota can; the pause log on
/// the broker keeps eight days too.
pub(crate) const MAX_QUOTA_PAUSE: Duration = Duration::from_secs(8 * 86_400);
/// Margin after a window's announced reset: the reset time has second precision and clocks drift.
pub(crate) const RESET_MARGIN: Duration = Duration::from_secs(5);
/// First pause for an account problem: until the first re-probe, or, for the problems a probe
/// cannot see, until one call tries again. Doubles up to `MAX_PROBE_DELAY`.
pub(crate) const FIRST_PROBE_DELAY: Duration = Duration::from_secs(5);
pub(crate) const MAX_PROBE_DELAY: Duration = Duration::from_secs(300);

/// One provider with its limits.
#[derive(Debug, Clone)]
pub(crate) struct Lane {
    pub(crate) provider: Provider,
    pub(crate) limit: AdaptiveLimit,
    pub(crate) pause: PauseState,
    pub(crate) is_fallback: bool,
    /// Account problems since the last successful call: each doubles the next pause.
    strikes: Arc<AtomicU32>,
}

impl Lane {
    pub(crate) fn new(provider: Provider, cap: u32, is_fallback: bool) -> Self {
        Self {
            provider,
            limit: AdaptiveLimit::new(cap),
            pause: PauseState::default(),
            is_fallback,
            strikes: Arc::new(AtomicU32::new(0)),
        }
    }

    /// 5 s, 10 s, 20 s … up to 5 minutes, by the account problems seen in a row.
    fn account_backoff(&self) -> Duration {
        let strikes = self.strikes.fetch_add(1, Ordering::Relaxed).min(6);
        FIRST_PROBE_DELAY
            .saturating_mul(2u32.saturating_pow(strikes))
            .min(MAX_PROBE_DELAY)
    }

    pub(crate) fn label(&self) -> &'static str {
        if self.is_fallback { "fallback" } else { "main" }
    }
}

/// How a quota answer's reset time was judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResetTime {
    /// Ahead, and within `MAX_QUOTA_PAUSE`.
    Ahead,
    Missing,
    /// Already past: a skewed clock, or a date in the message that is not the reset.
    Past,
    /// Further ahead than any window lasts.
    TooFar,
}

/// Until when a quota answer pauses the lane. A reset time that cannot be right must neither
/// end the pause at once (every job would call into the exhausted window again) nor stop
/// reviews for good.
fn quota_pause_end(reset_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> (DateTime<Utc>, ResetTime) {
    match reset_at {
        None => (later(now, QUOTA_PAUSE_WITHOUT_TIME), ResetTime::Missing),
        Some(at) if at <= now => (later(now, QUOTA_PAUSE_WITHOUT_TIME), ResetTime::Past),
        Some(at) if at > later(now, MAX_QUOTA_PAUSE) => (later(now, MAX_QUOTA_PAUSE), ResetTime::TooFar),
        Some(at) => (later(at, RESET_MARGIN), ResetTime::Ahead),
    }
}

/// `at` plus `wait`; the end of chrono's time rather than an overflow (a reset time in the
/// provider's message is read from text, and the clock could be anything).
fn later(at: DateTime<Utc>, wait: Duration) -> DateTime<Utc> {
    chrono::TimeDelta::from_std(wait)
        .ok()
        .and_then(|wait| at.checked_add_signed(wait))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests;

/// A lane as the review pipeline sees it.
struct LaneCall<'a> {
    executor: &'a Executor,
    lane: &'a Lane,
}

impl review::ModelCall for LaneCall<'_> {
    type Error = CallError;

    fn call(&self, messages: &[Message]) -> impl Future<Output = Result<ChatAnswer, CallError>> + Send {
        self.executor.call(self.lane, messages)
    }
}

/// Why a call on a lane brought no answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    /// The lane paused while this call waited for a slot (another call ran into a quota window
    /// or an account problem): it was not made, since it would have been wasted.
    #[error("the {lane} lane is paused ({}, code {})", .pause.reason, .pause.code)]
    LanePaused { lane: &'static str, pause: Pause },
    #[error(transparent)]
    Provider(#[from] ProviderError),
}

impl CallError {
    /// Whether the lane is paused now because of this call or another.
    fn paused_the_lane(&self) -> bool {
        match self {
            Self::LanePaused { .. } => true,
            Self::Provider(e) => matches!(e.action(), Action::PauseUntilReset | Action::PauseAccount),
        }
    }
}

/// A finished review and who made it.
#[derive(Debug)]
pub(crate) struct Completed {
    pub(crate) review: Review,
    pub(crate) provider: String,
    pub(crate) model: String,
    pub(crate) used_fallback: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct Executor {
    pub(crate) main: Lane,
    pub(crate) fallback: Option<Lane>,
    /// Which lane the last job went to, so that switches are logged once each way.
    on_fallback: Arc<AtomicBool>,
    /// Recent answers by request body: a hit takes no slot and makes no request.
    cache: AnswerCache,
    /// The lanes' pause timers, stopped when the last clone of the executor goes.
    _timers: Arc<PauseTimers>,
}

/// Aborts the pause timers on drop (they hold the lanes, so they would never end otherwise).
#[derive(Debug)]
struct PauseTimers(Vec<AbortHandle>);

impl Drop for PauseTimers {
    fn drop(&mut self) {
        self.0.iter().for_each(AbortHandle::abort);
    }
}

impl Executor {
    /// Starts a timer task per lane that ends its time-bound pauses.
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    pub(crate) fn new(main: Lane, fallback: Option<Lane>) -> Self {
        let timers = std::iter::once(&main)
            .chain(fallback.as_ref())
            .map(|lane| tokio::spawn(end_pauses_on_time(lane.clone())).abort_handle())
            .collect();
        Self {
            main,
            fallback,
            on_fallback: Arc::default(),
            cache: AnswerCache::disabled(),
            _timers: Arc::new(PauseTimers(timers)),
        }
    }

    /// Reuses answers from `cache` for identical requests (off unless set).
    pub(crate) fn with_cache(self, cache: AnswerCache) -> Self {
        Self { cache, ..self }
    }

    /// The lane a job would go to now: main unless it is paused and a usable fallback exists.
    /// Only reads; the switch itself happens (and is logged) in [`Self::review`].
    pub(crate) fn active_lane(&self) -> Result<&Lane, Pause> {
        match self.main.pause.current() {
            None => Ok(&self.main),
            Some(pause) => match &self.fallback {
                Some(fallback) if fallback.pause.current().is_none() => Ok(fallback),
                _ => Err(pause),
            },
        }
    }

    /// Whether any lane can take a job now. Only reads.
    pub(crate) fn usable(&self) -> bool {
        self.active_lane().is_ok()
    }

    /// The active lane for a job about to be reviewed; logs a switch between main and fallback,
    /// once each way.
    fn lane_for_job(&self) -> Result<&Lane, Pause> {
        let lane = self.active_lane()?;
        if self.on_fallback.swap(lane.is_fallback, Ordering::Relaxed) != lane.is_fallback {
            let (main, fallback) = (&self.main.provider, &lane.provider);
            if lane.is_fallback {
                let why = self
                    .main
                    .pause
                    .current()
                    .map(|p| format!("{} (code {})", p.reason, p.code))
                    .unwrap_or_default();
                warn!(
                    provider = fallback.name(),
                    model = fallback.model(),
                    "switching to the fallback {} {}: {} {} is paused: {why}",
                    fallback.name(),
                    fallback.model(),
                    main.name(),
                    main.model()
                );
            } else {
                info!(
                    provider = main.name(),
                    model = main.model(),
                    "switching back to the main provider {} {}",
                    main.name(),
                    main.model()
                );
            }
        }
        Ok(lane)
    }

    /// The lanes, main first.
    pub(crate) fn lanes(&self) -> impl Iterator<Item = &Lane> {
        std::iter::once(&self.main).chain(self.fallback.as_ref())
    }

    /// Lets calls start again (this replica leads).
    pub(crate) fn open_calls(&self) {
        self.lanes().for_each(|lane| lane.limit.open());
    }

    /// Starts no new provider call, on any lane, until `open_calls`: this replica stopped
    /// leading. Calls in flight go on; reviews waiting for a slot keep waiting.
    pub(crate) fn close_calls(&self) {
        self.lanes().for_each(|lane| lane.limit.close());
    }

    /// Reviews one job on whichever lane is usable. What a review that stopped short means for
    /// the job is not decided here but in [`crate::fate::decide`].
    /// Reviews `job` within `settings`' call limits, reusing and adding to `progress` (the calls
    /// answered before the job had to wait).
    pub(crate) async fn review(
        &self,
        job: &Job,
        settings: &ReviewSettings,
        progress: &mut Progress,
    ) -> Result<Completed, Unfinished> {
        // Two rounds at most: main, then the fallback if main paused during the first.
        let mut first_round = true;
        loop {
            let lane = self.lane_for_job().map_err(Unfinished::Paused)?;
            let limits = ReviewLimits::for_job(
                settings.max_calls_for(lane.provider.settings()),
                settings.call_tokens,
                job,
            );
            let prepared = review::prepare(job, lane.provider.model(), limits)?;
            let error = match review::run(job, prepared, &LaneCall { executor: self, lane }, progress).await {
                Ok(review) => {
                    return Ok(Completed {
                        review,
                        provider: lane.provider.name().to_owned(),
                        model: lane.provider.model().to_owned(),
                        used_fallback: lane.is_fallback,
                    });
                }
                Err(error) => error,
            };
            // The lane is paused now; another round takes the fallback if there is one.
            if first_round && matches!(&error, ReviewError::Provider(e) if e.paused_the_lane()) {
                first_round = false;
                continue;
            }
            return Err(match error {
                ReviewError::Provider(CallError::LanePaused { pause, .. }) => Unfinished::Paused(pause),
                ReviewError::Provider(CallError::Provider(e)) => ReviewError::Provider(e).into(),
                ReviewError::InvalidJob(message) => ReviewError::InvalidJob(message).into(),
                ReviewError::BadModelOutput { message, usage } => ReviewError::BadModelOutput { message, usage }.into(),
            });
        }
    }

    /// One model call: from the answer cache if the same body was answered lately (no request),
    /// otherwise under the lane's limit, with local retries for what is worth retrying; a
    /// successful answer is kept for next time.
    async fn call(&self, lane: &Lane, messages: &[Message]) -> Result<ChatAnswer, CallError> {
        let body = lane.provider.request_body(messages)?;
        let key = self.cache.key(&body);
        // Before the slot: a hit spends none of the deployment-wide cap.
        if let Some(answer) = self.reuse(lane, key.as_ref()) {
            return Ok(answer);
        }
        let attempt = async || {
            let slot = lane.limit.acquire().await;
            // Checked after the wait for a slot: another task may have hit the window meanwhile,
            // and a call into it would be wasted.
            if let Some(pause) = lane.pause.current() {
                return Err(CallError::LanePaused {
                    lane: lane.label(),
                    pause,
                });
            }
            // And the same request (a duplicate job) may have been answered while this waited.
            if let Some(answer) = self.reuse(lane, key.as_ref()) {
                return Ok(answer);
            }
            let result = lane.provider.send_chat(body.clone()).await;
            if let (Ok(answer), Some(key)) = (&result, key) {
                // Kept before the slot is given back, so a duplicate waiting for it finds it.
                self.cache.insert(key, answer);
            }
            drop(slot);
            match &result {
                Ok(_) => {
                    lane.strikes.store(0, Ordering::Relaxed);
                    lane.limit.succeeded();
                    metrics::counter!("review_provider_answers_total", "provider" => lane.provider.name().to_owned(), "code" => "200").increment(1);
                }
                Err(error) => self.on_error(lane, error),
            }
            Ok(result?)
        };
        attempt
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(500))
                    .with_max_delay(Duration::from_secs(8))
                    .with_max_times(4)
                    .with_jitter(),
            )
            .when(|e: &CallError| {
                matches!(e, CallError::Provider(e) if matches!(e.action(), Action::Retry | Action::RetrySoon { .. }))
            })
            .notify(|e: &CallError, after: Duration| {
                // Only provider errors are retried.
                let CallError::Provider(e) = e else { return };
                warn!(
                    provider = lane.provider.name(),
                    model = lane.provider.model(),
                    code = e.code().as_deref().unwrap_or("-"),
                    retry_in_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX),
                    "provider call failed ({}), retrying: {e}",
                    e.meaning()
                );
            })
            .await
    }

    /// The cached answer for `key`, counted and logged as a reuse.
    fn reuse(&self, lane: &Lane, key: Option<&crate::cache::Key>) -> Option<ChatAnswer> {
        let answer = self.cache.get(key?)?;
        crate::status::record_cache_hit(lane.provider.name(), lane.provider.model());
        debug!(
            provider = lane.provider.name(),
            model = lane.provider.model(),
            "answer reused from the cache: the same request was answered within API_REVIEW_CACHE_TTL_SECS"
        );
        Some(answer)
    }

    /// Logs and reacts to a provider error: lowers the limit on a 1302, pauses on windows and
    /// account problems.
    fn on_error(&self, lane: &Lane, error: &ProviderError) {
        let provider = lane.provider.name();
        let model = lane.provider.model();
        let code = error.code().unwrap_or_else(|| "-".to_owned());
        metrics::counter!("review_provider_answers_total", "provider" => provider.to_owned(), "code" => error.code_label())
            .increment(1);
        match error.action() {
            Action::RetrySoon { lower_cap: true } => {
                let cap = lane.limit.lower();
                metrics::gauge!("review_effective_cap", "lane" => lane.label()).set(f64::from(cap));
                warn!(
                    provider,
                    model,
                    code,
                    effective_cap = cap,
                    "{provider} answered 429 {code} ({}): lowering the effective cap to {cap}",
                    error.meaning()
                );
            }
            Action::RetrySoon { lower_cap: false } => {
                warn!(
                    provider,
                    model,
                    code,
                    "{provider} answered {code} ({}): backing off",
                    error.meaning()
                );
            }
            Action::PauseUntilReset => {
                let ProviderError::QuotaExhausted { window, reset_at, .. } = error else {
                    return;
                };
                let (until, judged) = quota_pause_end(*reset_at, Utc::now());
                if pause_lane(lane, until, &code, error, false) {
                    let reset = reset_at.map_or_else(|| "unknown".to_owned(), review_core::contract::rfc3339);
                    let note = match judged {
                        ResetTime::Past => format!(
                            " (the reset time it gives, {reset}, is already past: a skewed clock or another date in the message; one call after the pause will tell)"
                        ),
                        ResetTime::TooFar => format!(
                            " (the reset time it gives, {reset}, is more than {} days ahead: capped)",
                            MAX_QUOTA_PAUSE.as_secs() / 86_400
                        ),
                        ResetTime::Missing | ResetTime::Ahead => String::new(),
                    };
                    warn!(provider, model, code, window = window.as_str(), reset_at = %reset, paused_until = %review_core::contract::rfc3339(until), lane = lane.label(),
                        "{provider} {} quota exhausted (code {code}): pausing {} {model} until {}{note}", window.as_str(), lane.label(), review_core::contract::rfc3339(until));
                }
            }
            Action::PauseAccount if error.invisible_to_probe() => {
                // Calls that started before the pause come back with the same answer: they say
                // nothing new, and must not double the pause again.
                if lane.pause.current().is_some_and(|p| !p.needs_probe && p.code == code) {
                    return;
                }
                // `/models` answers 200 through these, so a probe would end the pause at once:
                // the pause ends by the clock instead, and the next call is the probe.
                let delay = lane.account_backoff();
                if pause_lane(lane, later(Utc::now(), delay), &code, error, false) {
                    error!(
                        provider,
                        model,
                        code,
                        lane = lane.label(),
                        pause_s = delay.as_secs(),
                        "{provider} account problem (code {code}, {}): pausing {} for {} s, then one call; the pause doubles up to {} s until a call succeeds: {error}",
                        error.meaning(),
                        lane.label(),
                        delay.as_secs(),
                        MAX_PROBE_DELAY.as_secs()
                    );
                }
            }
            Action::PauseAccount => {
                if pause_lane(lane, later(Utc::now(), FIRST_PROBE_DELAY), &code, error, true) {
                    error!(
                        provider,
                        model,
                        code,
                        lane = lane.label(),
                        "{provider} account/configuration problem (code {code}, {}): pausing {} until a probe succeeds: {error}",
                        error.meaning(),
                        lane.label()
                    );
                }
            }
            Action::Retry => {
                warn!(
                    provider,
                    model,
                    code,
                    "{provider} call failed ({}): {error}",
                    error.meaning()
                );
            }
            Action::Reject => {
                warn!(
                    provider,
                    model, code, "{provider} rejected the request (code {code}): {error}"
                );
            }
        }
    }

    /// When the next probe of a lane paused for an account problem is due, if any is.
    pub(crate) fn next_probe_at(&self) -> Option<DateTime<Utc>> {
        self.lanes()
            .filter_map(|lane| lane.pause.current().filter(|p| p.needs_probe).map(|p| p.until))
            .min()
    }

    /// Re-probes lanes paused for an account problem whose next probe is due; resumes a lane
    /// whose probe succeeds. Returns how many lanes are still waiting for a probe.
    pub(crate) async fn probe_paused(&self) -> usize {
        let mut waiting: usize = 0;
        for lane in self.lanes() {
            let Some(pause) = lane.pause.current().filter(|p| p.needs_probe) else {
                continue;
            };
            if pause.until > Utc::now() {
                waiting = waiting.saturating_add(1);
                continue;
            }
            let (name, model) = (lane.provider.name(), lane.provider.model());
            match crate::check::probe(&lane.provider).await {
                Ok(_) => {
                    lane.pause.resume();
                    info!(
                        provider = name,
                        model,
                        lane = lane.label(),
                        "{name} {model} is usable again (probe ok): resuming"
                    );
                }
                Err(error) => {
                    let delay = lane.account_backoff();
                    lane.pause.pause(Pause {
                        until: later(Utc::now(), delay),
                        ..pause
                    });
                    warn!(
                        provider = name,
                        model,
                        code = error.code().as_deref().unwrap_or("-"),
                        next_probe_s = delay.as_secs(),
                        "{name} still unusable ({}): {error}",
                        error.meaning()
                    );
                    waiting = waiting.saturating_add(1);
                }
            }
        }
        waiting
    }
}

/// Pauses `lane` for `error` until `until` (a probe is due then, if `needs_probe`), with its
/// limit half-open for when it resumes. True when this is news, so the caller logs it once.
fn pause_lane(lane: &Lane, until: DateTime<Utc>, code: &str, error: &ProviderError, needs_probe: bool) -> bool {
    lane.limit.half_open();
    lane.pause.pause(Pause {
        until,
        code: code.to_owned(),
        reason: error.meaning().to_owned(),
        needs_probe,
    })
}

/// Ends each time-bound pause of `lane` when it runs out: the one place such a pause ends, so
/// that its end is logged, and (on the leader, through the pause log) announced, exactly once,
/// however often the pause is read meanwhile. Account pauses end by a probe instead.
async fn end_pauses_on_time(lane: Lane) {
    let mut changes = lane.pause.subscribe();
    loop {
        let pause = changes.borrow_and_update().clone().filter(|p| !p.needs_probe);
        let runs_out = async {
            match &pause {
                Some(p) => {
                    let left = p.until.signed_duration_since(Utc::now()).to_std().unwrap_or_default();
                    tokio::time::sleep(left).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = runs_out => {
                if let Some(pause) = &pause {
                    end_pause(&lane, pause);
                }
            }
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// Ends `pause` on `lane` if it is still the one set, and says so.
fn end_pause(lane: &Lane, pause: &Pause) {
    if lane.pause.end(pause) {
        let (provider, model) = (lane.provider.name(), lane.provider.model());
        info!(
            provider,
            model,
            lane = lane.label(),
            code = %pause.code,
            "{provider} {model} ({}): the pause is over ({}, code {}): calls may start again",
            lane.label(),
            pause.reason,
            pause.code
        );
    }
}
