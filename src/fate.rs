//! A job's fate, decided in one place: [`decide`] is a pure function from what just happened to
//! a job (it arrived, its review stopped short, its result could not be published, its task
//! panicked), what its headers say (attempts, age, not-before) and the settings, to what the
//! worker does with it: review it, send it round a delay tier, let it wait
//! there (charging an attempt or not), or dead-letter it. `worker` only applies the answer.
//!
//! Producer headers are untrusted: [`Facts::read`] clamps them (attempts saturate, a first-seen
//! time in the future is ignored, a not-before time is never further than the job may live), so
//! no header can make a job hop forever, wrap its attempt count or never expire.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::broker::{Envelope, headers};
use crate::limits::Pause;
use crate::provider::Action;
use crate::review::ReviewError;
use crate::settings::ReviewSettings;
use review_core::contract::FailureKind;

/// A job that comes back this close to its not-before time is reviewed rather than sent round
/// another tier: the shortest tier is 1 s.
const EARLY_TOLERANCE: Duration = Duration::from_millis(200);
/// Tries to publish a reviewed job's result before the job is dead-lettered.
pub(crate) const MAX_PUBLISH_TRIES: u32 = 3;
/// Panics of the worker on one job before it is dead-lettered (the first may be a fluke).
pub(crate) const MAX_INTERNAL_ERRORS: u32 = 2;
/// How long a job waits after the provider said it is busy (1302 and friends; not counted).
const BUSY_DELAY: Duration = Duration::from_secs(2);
/// How long a job waits when the provider paused while it was being reviewed (not counted): the
/// leader stops consuming while paused, so the job is first in line when the pause ends.
const PAUSED_DELAY: Duration = Duration::from_secs(5);

/// Why a review stopped short of a result.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Unfinished {
    /// Every usable lane is paused (a quota window, an account problem).
    #[error("provider paused ({}, code {})", .0.reason, .0.code)]
    Paused(Pause),
    #[error(transparent)]
    Failed(#[from] ReviewError),
}

/// What just happened to a job.
#[derive(Debug)]
pub(crate) enum Event<'a> {
    /// Delivered from the jobs queue, not reviewed yet.
    Delivered,
    Unfinished(&'a Unfinished),
    /// The broker would not confirm the result.
    PublishFailed,
    /// The job's task panicked.
    Panicked,
}

/// What the job's headers and body say about its history, clamped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Facts {
    pub(crate) counters: Counters,
    /// From the job's `created_at`, else from when a worker first saw it; `None` when neither is
    /// known (or both lie in the future).
    pub(crate) age: Option<Duration>,
    /// Time left until the job's not-before time, if it has one in the future.
    pub(crate) not_before_in: Option<Duration>,
    pub(crate) now: DateTime<Utc>,
}

/// The counts a job carries in its headers from one delivery to the next.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    /// Review attempts charged (transient failures only).
    pub(crate) attempts: u32,
    pub(crate) publish_failures: u32,
    pub(crate) internal_errors: u32,
}

/// Where a dead letter came from: a failure the contract names, or one of the worker's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeadKind {
    Failed(FailureKind),
    /// The worker itself failed on the job (its task panicked).
    Internal,
    /// Reviewed, but the broker refused its result every time.
    Unpublishable,
}

impl DeadKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Failed(kind) => kind.as_str(),
            Self::Internal => "internal",
            Self::Unpublishable => "result_unpublishable",
        }
    }
}

/// What to do with the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fate {
    Review,
    /// Early: round another delay tier, headers as they are (first-seen added if missing).
    Hop {
        delay: Duration,
    },
    /// Back to a delay tier, with these counters written to its headers.
    Wait {
        delay: Duration,
        counters: Counters,
        reason: String,
    },
    /// Out of the queue for good: a dead letter, and a `failed` result where the contract has a
    /// kind for it.
    DeadLetter {
        kind: DeadKind,
        message: String,
        attempts: u32,
        result: Option<FailureKind>,
    },
}

impl Fate {
    /// The label of `review_jobs_total{outcome}` and of the job's log line.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Self::Review => "completed",
            Self::Hop { .. } => "hopped",
            Self::Wait { .. } => "waiting",
            Self::DeadLetter { kind, .. } => kind.as_str(),
        }
    }
}

impl Facts {
    /// Reads a job's headers (and its `created_at`), trusting none of them beyond reason.
    pub(crate) fn read(
        envelope: &Envelope,
        created_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
        settings: &ReviewSettings,
    ) -> Self {
        let count = |name| {
            envelope
                .header_u64(name)
                .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX))
        };
        let at = |name| {
            envelope
                .header_u64(name)
                .and_then(|ms| i64::try_from(ms).ok())
                .and_then(DateTime::<Utc>::from_timestamp_millis)
        };
        let age_since = |born: DateTime<Utc>| now.signed_duration_since(born).to_std().ok();
        let age = created_at
            .and_then(age_since)
            .or_else(|| at(headers::FIRST_SEEN).and_then(age_since));
        let not_before_in = at(headers::NOT_BEFORE)
            .and_then(|not_before| not_before.signed_duration_since(now).to_std().ok())
            .map(|wait| wait.min(settings.max_job_age));
        Self {
            counters: Counters {
                attempts: count(headers::ATTEMPTS),
                publish_failures: count(headers::PUBLISH_FAILURES),
                internal_errors: count(headers::INTERNAL_ERRORS),
            },
            age,
            not_before_in,
            now,
        }
    }
}

/// The decision table. Row by row in the tests below.
pub(crate) fn decide(event: Event<'_>, facts: &Facts, settings: &ReviewSettings) -> Fate {
    let counters = facts.counters;
    let attempts = counters.attempts;
    match event {
        Event::Delivered => match facts.age {
            Some(age) if age > settings.max_job_age => dead(
                DeadKind::Failed(FailureKind::Expired),
                format!(
                    "the job is {}s old, older than API_REVIEW_MAX_JOB_AGE ({}s)",
                    age.as_secs(),
                    settings.max_job_age.as_secs()
                ),
                attempts,
            ),
            _ => match facts.not_before_in {
                Some(delay) if delay > EARLY_TOLERANCE => Fate::Hop { delay },
                _ => Fate::Review,
            },
        },
        Event::Unfinished(Unfinished::Paused(pause)) => {
            wait(paused_delay(pause, facts.now), counters, pause_reason(pause))
        }
        Event::Unfinished(Unfinished::Failed(error)) => match error {
            ReviewError::InvalidJob(message) => dead(
                DeadKind::Failed(FailureKind::InvalidJob),
                message.clone(),
                attempts.saturating_add(1),
            ),
            ReviewError::BadModelOutput { message, .. } => dead(
                DeadKind::Failed(FailureKind::BadModelOutput),
                message.clone(),
                attempts.saturating_add(1),
            ),
            ReviewError::Provider(e) => match e.action() {
                Action::Reject => dead(
                    DeadKind::Failed(FailureKind::ProviderRejected),
                    e.to_string(),
                    attempts.saturating_add(1),
                ),
                Action::Retry => {
                    let attempt = attempts.saturating_add(1);
                    if attempt >= settings.max_attempts {
                        dead(
                            DeadKind::Failed(FailureKind::AttemptsExhausted),
                            format!("gave up after {attempt} attempt(s); last error: {e}"),
                            attempt,
                        )
                    } else {
                        let counters = Counters {
                            attempts: attempt,
                            ..counters
                        };
                        wait(retry_delay(attempt), counters, e.to_string())
                    }
                }
                Action::RetrySoon { .. } => wait(BUSY_DELAY, counters, e.to_string()),
                Action::PauseUntilReset | Action::PauseAccount => wait(PAUSED_DELAY, counters, e.to_string()),
            },
        },
        Event::PublishFailed => {
            let failures = counters.publish_failures.saturating_add(1);
            if failures >= MAX_PUBLISH_TRIES {
                Fate::DeadLetter {
                    kind: DeadKind::Unpublishable,
                    message: format!("reviewed, but the broker refused its result {failures} times"),
                    attempts: attempts.max(1),
                    result: None,
                }
            } else {
                let counters = Counters {
                    publish_failures: failures,
                    ..counters
                };
                wait(
                    Duration::from_secs(5 * u64::from(failures)),
                    counters,
                    "the broker refused the result; it is kept and published when the job comes back".to_owned(),
                )
            }
        }
        Event::Panicked => {
            let errors = counters.internal_errors.saturating_add(1);
            if errors >= MAX_INTERNAL_ERRORS {
                Fate::DeadLetter {
                    kind: DeadKind::Internal,
                    message: format!("the worker failed on this job {errors} times (an internal error; see its log)"),
                    attempts: attempts.max(1),
                    // The contract has no kind for the worker's own failures; the dead letter's
                    // header says `internal`.
                    result: Some(FailureKind::AttemptsExhausted),
                }
            } else {
                let counters = Counters {
                    internal_errors: errors,
                    ..counters
                };
                wait(
                    Duration::from_secs(5),
                    counters,
                    "the worker failed on this job; one more try".to_owned(),
                )
            }
        }
    }
}

fn dead(kind: DeadKind, message: String, attempts: u32) -> Fate {
    let result = match kind {
        DeadKind::Failed(kind) => Some(kind),
        DeadKind::Internal | DeadKind::Unpublishable => None,
    };
    Fate::DeadLetter {
        kind,
        message,
        attempts: attempts.max(1),
        result,
    }
}

fn wait(delay: Duration, counters: Counters, reason: String) -> Fate {
    Fate::Wait {
        delay,
        counters,
        reason,
    }
}

/// An account pause has no known end; a time-bound one ends at its reset.
fn paused_delay(pause: &Pause, now: DateTime<Utc>) -> Duration {
    if pause.needs_probe {
        PAUSED_DELAY
    } else {
        pause
            .until
            .signed_duration_since(now)
            .to_std()
            .unwrap_or(Duration::ZERO)
            .max(Duration::from_secs(1))
    }
}

fn pause_reason(pause: &Pause) -> String {
    format!("provider paused ({}, code {})", pause.reason, pause.code)
}

/// Backoff for jobs whose attempt counted: 10 s, 20 s, 40 s, … capped at 10 minutes.
fn retry_delay(attempt: u32) -> Duration {
    let seconds = 10u64.saturating_mul(1 << attempt.saturating_sub(1).min(6));
    Duration::from_secs(seconds.min(600))
}

#[cfg(test)]
mod tests {
    use lapin::BasicProperties;
    use lapin::types::{AMQPValue, FieldTable};

    use super::*;
    use crate::provider::ProviderError;

    fn settings() -> ReviewSettings {
        ReviewSettings {
            max_job_bytes: 1 << 20,
            max_attempts: 3,
            max_job_age: Duration::from_secs(7 * 86_400),
            max_calls: None,
            call_tokens: None,
        }
    }

    fn now() -> DateTime<Utc> {
        "2026-11-29T12:00:00Z".parse().unwrap()
    }

    fn facts(attempts: u32) -> Facts {
        Facts {
            counters: Counters {
                attempts,
                ..Counters::default()
            },
            age: Some(Duration::from_secs(60)),
            not_before_in: None,
            now: now(),
        }
    }

    fn envelope(headers: &[(&str, AMQPValue)]) -> Envelope {
        let mut table = FieldTable::default();
        for (name, value) in headers {
            table.insert((*name).into(), value.clone());
        }
        Envelope {
            routing_key: "job.created".into(),
            properties: BasicProperties::default().with_headers(table),
        }
    }

    fn unfinished(error: ProviderError) -> Unfinished {
        Unfinished::Failed(ReviewError::Provider(error))
    }

    fn server_error() -> ProviderError {
        ProviderError::Server {
            status: 500,
            code: None,
            message: "boom".into(),
        }
    }

    #[test]
    fn a_fresh_job_is_reviewed() {
        assert_eq!(decide(Event::Delivered, &facts(0), &settings()), Fate::Review);
    }

    #[test]
    fn a_job_older_than_the_max_age_expires_before_any_hop() {
        let mut old = facts(0);
        old.age = Some(Duration::from_secs(8 * 86_400));
        old.not_before_in = Some(Duration::from_secs(3600));
        let fate = decide(Event::Delivered, &old, &settings());
        assert!(
            matches!(
                fate,
                Fate::DeadLetter {
                    kind: DeadKind::Failed(FailureKind::Expired),
                    result: Some(FailureKind::Expired),
                    ..
                }
            ),
            "{fate:?}"
        );
    }

    #[test]
    fn an_early_job_hops_and_one_nearly_due_is_reviewed() {
        let mut early = facts(0);
        early.not_before_in = Some(Duration::from_secs(90));
        assert_eq!(
            decide(Event::Delivered, &early, &settings()),
            Fate::Hop {
                delay: Duration::from_secs(90)
            }
        );
        early.not_before_in = Some(Duration::from_millis(150));
        assert_eq!(decide(Event::Delivered, &early, &settings()), Fate::Review);
    }

    #[test]
    fn invalid_input_bad_output_and_rejections_are_dead_lettered_with_a_result() {
        let cases = [
            (
                Unfinished::Failed(ReviewError::InvalidJob("no files".into())),
                FailureKind::InvalidJob,
            ),
            (
                Unfinished::Failed(ReviewError::BadModelOutput {
                    message: "not JSON".into(),
                    usage: Default::default(),
                }),
                FailureKind::BadModelOutput,
            ),
            (
                unfinished(ProviderError::Rejected {
                    status: 400,
                    code: Some("1210".into()),
                    message: "bad request".into(),
                }),
                FailureKind::ProviderRejected,
            ),
        ];
        for (unfinished, expected) in cases {
            let fate = decide(Event::Unfinished(&unfinished), &facts(0), &settings());
            assert!(
                matches!(fate, Fate::DeadLetter { kind: DeadKind::Failed(k), result: Some(r), .. } if k == expected && r == expected),
                "{unfinished:?} gave {fate:?}"
            );
        }
    }

    #[test]
    fn a_transient_failure_charges_an_attempt_and_backs_off() {
        let fate = decide(Event::Unfinished(&unfinished(server_error())), &facts(1), &settings());
        assert_eq!(
            fate,
            Fate::Wait {
                delay: Duration::from_secs(20),
                counters: Counters {
                    attempts: 2,
                    ..Counters::default()
                },
                reason: server_error().to_string(),
            }
        );
    }

    #[test]
    fn the_last_attempt_gives_up_with_attempts_exhausted() {
        let fate = decide(Event::Unfinished(&unfinished(server_error())), &facts(2), &settings());
        assert!(
            matches!(
                fate,
                Fate::DeadLetter {
                    kind: DeadKind::Failed(FailureKind::AttemptsExhausted),
                    attempts: 3,
                    ..
                }
            ),
            "{fate:?}"
        );
    }

    #[test]
    fn busy_answers_and_pauses_wait_without_charging_an_attempt() {
        let busy = unfinished(ProviderError::RateLimited {
            status: 429,
            code: Some("1302".into()),
            message: "too much concurrency".into(),
        });
        let pause = Pause {
            until: now() + chrono::Duration::seconds(90),
            code: "1308".into(),
            reason: "5-hour quota exhausted".into(),
            needs_probe: false,
        };
        let account = Pause {
            needs_probe: true,
            ..pause.clone()
        };
        for (event, delay) in [
            (busy, BUSY_DELAY),
            (Unfinished::Paused(pause), Duration::from_secs(90)),
            (Unfinished::Paused(account), PAUSED_DELAY),
        ] {
            match decide(Event::Unfinished(&event), &facts(1), &settings()) {
                Fate::Wait { delay: d, counters, .. } => {
                    assert_eq!(d, delay, "{event:?}");
                    assert_eq!(counters.attempts, 1, "{event:?} charged an attempt");
                }
                other => panic!("{event:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn a_refused_result_is_retried_twice_then_dead_lettered_without_one() {
        let mut f = facts(0);
        for failures in 1..MAX_PUBLISH_TRIES {
            match decide(Event::PublishFailed, &f, &settings()) {
                Fate::Wait { counters, delay, .. } => {
                    assert_eq!(counters.publish_failures, failures);
                    assert!(delay >= Duration::from_secs(5), "not every second: {delay:?}");
                    f.counters = counters;
                }
                other => panic!("try {failures}: {other:?}"),
            }
        }
        let fate = decide(Event::PublishFailed, &f, &settings());
        assert!(
            matches!(
                fate,
                Fate::DeadLetter {
                    kind: DeadKind::Unpublishable,
                    result: None,
                    ..
                }
            ),
            "{fate:?}"
        );
    }

    #[test]
    fn a_panic_is_retried_once_then_dead_lettered_as_internal() {
        let first = decide(Event::Panicked, &facts(0), &settings());
        let Fate::Wait { counters, .. } = first else {
            panic!("{first:?}")
        };
        assert_eq!(counters.internal_errors, 1);
        let mut f = facts(0);
        f.counters = counters;
        let second = decide(Event::Panicked, &f, &settings());
        assert!(
            matches!(
                second,
                Fate::DeadLetter {
                    kind: DeadKind::Internal,
                    ..
                }
            ),
            "{second:?}"
        );
        assert_eq!(second.label(), "internal");
    }

    #[test]
    fn headers_are_clamped_attempts_saturate_and_future_times_are_not_trusted() {
        let future = (now() + chrono::Duration::days(400)).timestamp_millis();
        let e = envelope(&[
            (headers::ATTEMPTS, AMQPValue::LongLongInt(1 << 40)),
            (headers::NOT_BEFORE, AMQPValue::LongLongInt(future)),
            (headers::FIRST_SEEN, AMQPValue::LongLongInt(future)),
        ]);
        let f = Facts::read(&e, None, now(), &settings());
        assert_eq!(f.counters.attempts, u32::MAX);
        assert_eq!(
            f.not_before_in,
            Some(settings().max_job_age),
            "not-before clamped to the max age"
        );
        assert_eq!(f.age, None, "a first-seen time in the future is ignored");
        let charged = decide(Event::Unfinished(&unfinished(server_error())), &f, &settings());
        assert!(
            matches!(charged, Fate::DeadLetter { attempts: u32::MAX, .. }),
            "{charged:?}"
        );
    }

    #[test]
    fn age_comes_from_created_at_then_first_seen() {
        let seen = (now() - chrono::Duration::hours(2)).timestamp_millis();
        let e = envelope(&[(headers::FIRST_SEEN, AMQPValue::LongLongInt(seen))]);
        let f = Facts::read(&e, None, now(), &settings());
        assert_eq!(f.age, Some(Duration::from_secs(7200)));
        let f = Facts::read(&e, Some(now() - chrono::Duration::hours(3)), now(), &settings());
        assert_eq!(f.age, Some(Duration::from_secs(3 * 3600)));
        let f = Facts::read(&e, Some(now() + chrono::Duration::hours(3)), now(), &settings());
        assert_eq!(
            f.age,
            Some(Duration::from_secs(7200)),
            "a created_at in the future falls back to first-seen"
        );
    }

    #[test]
    fn retry_delays_grow_and_are_capped() {
        assert_eq!(retry_delay(1), Duration::from_secs(10));
        assert_eq!(retry_delay(2), Duration::from_secs(20));
        assert_eq!(retry_delay(30), Duration::from_secs(600));
    }
}
