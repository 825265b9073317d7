//! One review, without the broker: diff → plan (calls, each within the window) → prompt per
//! call → model calls → answers → anchored suggestions → one merged review. The model is called
//! through [`ModelCall`] so that the executor can put retries, the deployment-wide cap and the
//! fallback around each call, and tests can answer directly. Calls already answered before the
//! job had to wait come from its [`Progress`] and are not made again.

use review_core::anchor::anchor;
use review_core::answer::{parse_answer, repair_instruction};
use review_core::chat::{ChatAnswer, Message};
use review_core::classify::ProviderError;
use review_core::context::{Fitted, build_ignore_set, estimate_tokens};
use review_core::contract::{Coverage, Job, ReviewOptions, Suggestion, Usage};
use review_core::diff::{FileDiff, from_job_files, parse_unified};
use review_core::merge::{compose_summary, merge};
use review_core::models::context_window;
use review_core::plan::{Limits, Plan, plan};
use review_core::prompt::build_messages;

use crate::progress::{CallAnswer, Progress};

/// A job ready to send: the calls it is split into, and what they cover.
#[derive(Debug)]
pub(crate) struct Prepared<'a> {
    pub(crate) plan: Plan<'a>,
    /// Why nothing is sent when the plan has no call, if not the usual "all skipped".
    pub(crate) nothing_to_review: Option<&'static str>,
}

/// What the model said about a job, anchored, merged and filtered.
#[derive(Debug)]
pub(crate) struct Review {
    pub(crate) summary: String,
    pub(crate) suggestions: Vec<Suggestion>,
    pub(crate) usage: Usage,
    pub(crate) truncated: bool,
    pub(crate) skipped_files: Vec<String>,
    pub(crate) coverage: Coverage,
}

/// How much one job's review may send, from the settings, the endpoint and the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReviewLimits {
    pub(crate) max_calls: u32,
    /// `None`: as much as the model's window allows.
    pub(crate) call_tokens: Option<usize>,
}

impl ReviewLimits {
    /// The endpoint's limits, lowered (never raised) by the job's `options.max_calls`.
    pub(crate) fn for_job(max_calls: u32, call_tokens: Option<usize>, job: &Job) -> Self {
        Self {
            max_calls: job
                .options
                .max_calls
                .map_or(max_calls, |asked| asked.min(max_calls))
                .max(1),
            call_tokens,
        }
    }
}

/// Why a review stopped short. `E` is why a model call brought no answer: the provider's error,
/// or whatever else the caller's [`ModelCall`] can stop on (the executor's paused lane).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReviewError<E = ProviderError> {
    /// The job itself cannot be reviewed (a diff that is no diff, a bad glob).
    #[error("{0}")]
    InvalidJob(String),
    #[error(transparent)]
    Provider(#[from] E),
    #[error("the model's answer could not be read, even after a repair request: {message}")]
    BadModelOutput { message: String, usage: Usage },
}

/// Room kept in the window for the answer (and the model's reasoning, which counts as output).
fn output_reserve(window: usize) -> usize {
    (window / 4).min(32_768)
}

/// Parses the job's diff and plans its calls, each fitting the model's window with the prompt
/// around it (and `limits.call_tokens`, when set).
///
/// A diff that adds no line gives a suggestion nowhere to point, so it costs no call: a damaged
/// one (a word diff, a diff cut mid-hunk) is an invalid job, one that only deletes, renames or
/// changes modes is reviewed as "nothing to review".
pub(crate) fn prepare<'a>(job: &'a Job, model: &str, limits: ReviewLimits) -> Result<Prepared<'a>, ReviewError> {
    let files: Vec<FileDiff<'a>> = if job.files.is_empty() {
        parse_unified(&job.diff)
    } else {
        from_job_files(&job.files)
    }
    .map_err(|e| ReviewError::InvalidJob(format!("the diff cannot be read: {e}")))?;
    if files.is_empty() {
        return Err(ReviewError::InvalidJob("the diff has no files".to_owned()));
    }
    let ignore = build_ignore_set(&job.options.ignore_paths)
        .map_err(|e| ReviewError::InvalidJob(format!("options.ignore_paths: {e}")))?;
    let nothing_to_review = if files.iter().all(|file| file.added_line_count() == 0) {
        if files.iter().any(|file| file.damaged) {
            return Err(ReviewError::InvalidJob(
                "the diff adds no line, and a hunk of it holds fewer lines than its header announces \
                 or changes none (a word diff? a diff cut short?): there is nothing to review"
                    .to_owned(),
            ));
        }
        Some("Nothing to review: the diff adds no lines (it only removes, renames or changes modes).")
    } else {
        None
    };

    let window = context_window(model) as usize;
    // The prompt without a diff tells how much the frame takes; the part line is paid for too.
    let frame = build_messages(
        job,
        &Fitted {
            part: Some((99, 99)),
            ..Fitted::default()
        },
    );
    let frame_tokens: usize = frame.iter().map(|m| estimate_tokens(&m.content)).sum();
    let window_budget = window.saturating_sub(output_reserve(window).saturating_add(frame_tokens).saturating_add(256));
    let call_tokens = limits
        .call_tokens
        .map_or(window_budget, |tokens| tokens.min(window_budget));
    let max_calls = usize::try_from(limits.max_calls).unwrap_or(usize::MAX);
    let plan = plan(
        files,
        &ignore,
        Limits { call_tokens, max_calls },
        job.previous_result.as_ref(),
    );
    Ok(Prepared {
        plan,
        nothing_to_review,
    })
}

/// How a review reaches the model: the executor puts retries, limits and the fallback behind
/// it; tests answer directly.
pub(crate) trait ModelCall: Sync {
    type Error;

    fn call(&self, messages: &[Message]) -> impl Future<Output = Result<ChatAnswer, Self::Error>> + Send;
}

/// Runs the review: each planned call not already in `progress` (one repair call each if its
/// answer cannot be read), then the merge. Every answered call is added to `progress` as it
/// comes, so that a review stopped by an error keeps what it paid for.
pub(crate) async fn run<M: ModelCall>(
    job: &Job,
    prepared: Prepared<'_>,
    model: &M,
    progress: &mut Progress,
) -> Result<Review, ReviewError<M::Error>> {
    let Prepared {
        plan,
        nothing_to_review,
    } = prepared;
    let mut usage = Usage::default();

    if plan.chunks.is_empty() {
        // Nothing new to read (all lockfiles, binaries, ignored…, or every hunk reviewed on an
        // earlier push): no call, no quota.
        let summary = if plan.coverage.lines_carried > 0 {
            format!(
                "No new changes since the last review: {} suggestion(s) on unchanged code carried forward.",
                plan.carried.len()
            )
        } else {
            nothing_to_review.map_or_else(
                || format!("Nothing to review: {} file(s) skipped.", plan.skipped_files.len()),
                str::to_owned,
            )
        };
        return Ok(Review {
            summary,
            suggestions: merge([plan.carried], &job.options),
            usage,
            truncated: plan.truncated,
            skipped_files: plan.skipped_files,
            coverage: plan.coverage,
        });
    }

    let calls = plan.chunks.len();
    let mut summaries = Vec::with_capacity(calls);
    let mut parts = Vec::with_capacity(calls);
    for (index, chunk) in plan.chunks.iter().enumerate() {
        let answer = match progress.answer(&chunk.key) {
            Some(done) => {
                tracing::info!(
                    call = index.saturating_add(1),
                    calls,
                    "call {} of {calls} was answered before the job waited: reusing its answer",
                    index.saturating_add(1)
                );
                done.clone()
            }
            None => {
                let answer = call(job, &plan.fitted(index), &chunk.key, model).await?;
                progress.answers.push(answer.clone());
                answer
            }
        };
        usage.add(&answer.usage);
        summaries.push(answer.summary);
        parts.push(answer.suggestions);
    }
    let mut summary = compose_summary(summaries.iter().map(String::as_str));
    if !plan.carried.is_empty() {
        summary.push_str(&format!(
            "\n\n{} suggestion(s) on code unchanged since the last review are carried forward.",
            plan.carried.len()
        ));
    }
    parts.push(plan.carried);
    Ok(Review {
        summary,
        suggestions: merge(parts, &job.options),
        usage,
        truncated: plan.truncated,
        skipped_files: plan.skipped_files,
        coverage: plan.coverage,
    })
}

/// One call of a review: the prompt for `fitted`, one repair request if the answer cannot be
/// read, then anchoring to the call's own files. The job's `max_suggestions` is left to the
/// merge, which sees every call.
async fn call<M: ModelCall>(
    job: &Job,
    fitted: &Fitted<'_>,
    key: &str,
    model: &M,
) -> Result<CallAnswer, ReviewError<M::Error>> {
    let mut messages = build_messages(job, fitted);
    let mut usage = Usage::default();
    let answer = model.call(&messages).await?;
    usage.add(&answer.usage);
    let size = answer_size(&answer);
    let (answer, first) = off_runtime(&usage, size, move || {
        let outcome = read(&answer);
        (answer, outcome)
    })
    .await?;
    let (review, size) = match first {
        Ok(review) => (review, size),
        Err(error) => {
            tracing::warn!(%error, "unreadable model answer, sending one repair request");
            messages.push(Message::assistant(
                answer
                    .content
                    .clone()
                    .unwrap_or_else(|| answer.tool_arguments.join("\n")),
            ));
            messages.push(Message::user(repair_instruction(&error)));
            let repaired = model.call(&messages).await?;
            usage.add(&repaired.usage);
            let size = answer_size(&repaired);
            let second = off_runtime(&usage, size, move || read(&repaired)).await?;
            let review = second.map_err(|e| ReviewError::BadModelOutput {
                message: e.to_string(),
                usage: usage.clone(),
            })?;
            (review, size)
        }
    };

    let options = ReviewOptions {
        max_suggestions: None,
        ..job.options.clone()
    };
    // The files borrow from the job, so this work cannot move to the blocking pool; a large one
    // hands this thread's other tasks to the rest of the runtime instead.
    let anchored = crate::blocking::heavy_in_place(size, || anchor(review.suggestions, &fitted.files, &options));
    if anchored.dropped > 0 || anchored.reanchored > 0 {
        tracing::debug!(
            dropped = anchored.dropped,
            reanchored = anchored.reanchored,
            "suggestions moved or dropped to fit changed lines"
        );
    }
    Ok(CallAnswer {
        key: key.to_owned(),
        summary: review.summary.unwrap_or_default(),
        suggestions: anchored.suggestions,
        usage,
    })
}

fn read(answer: &ChatAnswer) -> Result<review_core::answer::ModelReview, review_core::answer::AnswerError> {
    let tools: Vec<&str> = answer.tool_arguments.iter().map(String::as_str).collect();
    parse_answer(answer.content.as_deref(), &tools)
}

/// Bytes of model output in an answer: what reading and anchoring it cost grows with.
fn answer_size(answer: &ChatAnswer) -> usize {
    let tools = answer
        .tool_arguments
        .iter()
        .map(String::len)
        .fold(0, usize::saturating_add);
    answer.content.as_ref().map_or(0, String::len).saturating_add(tools)
}

/// Runs CPU work on an answer off the async worker threads (see `blocking`). Work that panicked
/// on an answer would panic on it again: the job fails as unreadable output instead of
/// returning to the queue to crash the next try.
async fn off_runtime<T: Send + 'static, E>(
    usage: &Usage,
    size: usize,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ReviewError<E>> {
    crate::blocking::heavy(size, work)
        .await
        .map_err(|e| ReviewError::BadModelOutput {
            message: format!("reading the model's answer failed: {e}"),
            usage: usage.clone(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use review_core::contract::parse_job;
    use std::sync::Mutex;
    use std::time::Duration;

    fn job() -> Job {
        parse_job(include_bytes!("../docs/contract/examples/job.json"), 1 << 20).unwrap()
    }

    const LIMITS: ReviewLimits = ReviewLimits {
        max_calls: 3,
        call_tokens: None,
    };

    fn prepared(job: &Job) -> Prepared<'_> {
        prepare(job, "glm-5.1", LIMITS).unwrap()
    }

    async fn review<M: ModelCall>(job: &Job, model: &M) -> Result<Review, ReviewError<M::Error>> {
        run(job, prepared(job), model, &mut Progress::default()).await
    }

    fn answer(content: &str) -> ChatAnswer {
        ChatAnswer {
            content: Some(content.to_owned()),
            tool_arguments: Vec::new(),
            usage: Usage {
                requests: 1,
                prompt_tokens: 100,
                completion_tokens: 20,
                cached_tokens: 0,
                cache_hits: 0,
            },
            latency: Duration::from_millis(5),
        }
    }

    /// Answers with the scripted contents in order, recording how many messages each call had.
    struct Scripted {
        answers: Mutex<Vec<&'static str>>,
        seen: Mutex<Vec<usize>>,
    }

    impl Scripted {
        fn new(answers: &[&'static str]) -> Self {
            Self {
                answers: Mutex::new(answers.iter().rev().copied().collect()),
                seen: Mutex::new(Vec::new()),
            }
        }
    }

    impl ModelCall for Scripted {
        type Error = ProviderError;

        fn call(&self, messages: &[Message]) -> impl Future<Output = Result<ChatAnswer, ProviderError>> + Send {
            self.seen.lock().unwrap().push(messages.len());
            let next = self.answers.lock().unwrap().pop().expect("no more scripted answers");
            async move { Ok(answer(next)) }
        }
    }

    #[tokio::test]
    async fn an_unreadable_answer_gets_exactly_one_repair() {
        let job = job();
        let model = Scripted::new(&[
            "I think the code is fine.",
            r#"{"summary":"ok","suggestions":[{"file":"src/refund.rs","line_start":4,"severity":"high","body":"unwrap panics"}]}"#,
        ]);
        let review = review(&job, &model).await.unwrap();
        assert_eq!(
            *model.seen.lock().unwrap(),
            vec![2, 4],
            "the repair carries the first answer and the instruction"
        );
        assert_eq!(review.usage.requests, 2);
        assert_eq!(review.suggestions.len(), 1);
        assert_eq!(review.suggestions[0].line_start, 4);
    }

    #[tokio::test]
    async fn two_unreadable_answers_are_bad_model_output() {
        let job = job();
        let model = Scripted::new(&["no json", "still no json"]);
        let error = review(&job, &model).await.unwrap_err();
        assert!(matches!(error, ReviewError::BadModelOutput { .. }), "{error:?}");
    }

    #[tokio::test]
    async fn a_pr_with_only_skipped_files_costs_no_call() {
        let mut job = job();
        job.options.ignore_paths = vec!["src/**".into()];
        let model = Scripted::new(&[]);
        let review = review(&job, &model).await.unwrap();
        assert_eq!(review.skipped_files, vec!["src/refund.rs".to_owned()]);
        assert_eq!(review.usage.requests, 0);
        assert!(model.seen.lock().unwrap().is_empty());
    }

    #[test]
    fn a_diff_that_is_not_a_diff_is_an_invalid_job() {
        let mut job = job();
        job.diff = "this is not a diff".into();
        assert!(matches!(
            prepare(&job, "glm-5.1", LIMITS),
            Err(ReviewError::InvalidJob(_))
        ));
        job.diff = "   \n".into();
        assert!(matches!(
            prepare(&job, "glm-5.1", LIMITS),
            Err(ReviewError::InvalidJob(_))
        ));
    }

    #[test]
    fn a_damaged_diff_that_adds_no_line_is_an_invalid_job() {
        let mut job = job();
        for damaged in [
            // A word diff: hunk headers over lines no hunk can hold.
            "diff --git a/a.rs b/a.rs\n--- a/a.rs\n+++ b/a.rs\n@@ -1,2 +1,2 @@\nlet [-a-]{+b+} = 1;\n",
            // Cut before the first added line.
            "diff --git a/a.rs b/a.rs\n--- a/a.rs\n+++ b/a.rs\n@@ -1,5 +1,6 @@\n fn a() {\n-    x\n",
        ] {
            job.diff = damaged.into();
            match prepare(&job, "glm-5.1", LIMITS) {
                Err(ReviewError::InvalidJob(message)) => assert!(message.contains("adds no line"), "{message}"),
                other => panic!("expected an invalid job, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_diff_that_only_deletes_costs_no_call() {
        let mut job = job();
        job.diff =
            "--- a/a.rs\n+++ b/a.rs\n@@ -1,2 +1,1 @@\n keep\n-gone\n--- a/b.rs\n+++ /dev/null\n@@ -1 +0,0 @@\n-x\n"
                .into();
        let model = Scripted::new(&[]);
        let review = review(&job, &model).await.unwrap();
        assert!(model.seen.lock().unwrap().is_empty());
        assert!(review.summary.contains("adds no lines"), "{}", review.summary);
        assert_eq!(review.skipped_files, ["a.rs", "b.rs"]);
    }

    #[test]
    fn a_description_of_megabytes_is_cut_and_leaves_the_diff_its_room() {
        let mut job = job();
        job.pull_request.body = Some("word ".repeat(1 << 20));
        job.options.instructions = Some("rule ".repeat(1 << 20));
        let prepared = prepared(&job);
        assert_eq!(prepared.plan.chunks.len(), 1);
        assert_eq!(prepared.plan.chunks[0].files.len(), 1, "the diff still fits");
        let messages = build_messages(&job, &prepared.plan.fitted(0));
        let size: usize = messages.iter().map(|m| m.content.len()).sum();
        assert!(size < 60_000, "{size} bytes of prompt");
        assert!(messages[1].content.contains("cut: longer than"));
    }

    /// Answers each call with one suggestion on the first added line of the first file it shows,
    /// failing the calls whose number (from 1) is in `fail`.
    struct Reviewer {
        calls: Mutex<Vec<String>>,
        fail: Vec<usize>,
    }

    impl Reviewer {
        fn new(fail: &[usize]) -> Self {
            Self {
                calls: Mutex::new(Vec::new()),
                fail: fail.to_vec(),
            }
        }

        fn files(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }
    }

    impl ModelCall for Reviewer {
        type Error = ProviderError;

        fn call(&self, messages: &[Message]) -> impl Future<Output = Result<ChatAnswer, ProviderError>> + Send {
            let user = &messages[1].content;
            let file = user
                .split("=== FILE: ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .unwrap()
                .to_owned();
            let mut calls = self.calls.lock().unwrap();
            calls.push(file.clone());
            let failed = self.fail.contains(&calls.len());
            let json = format!(
                r#"{{"summary":"{file} reviewed.","suggestions":[{{"file":"{file}","line_start":1,"severity":"medium","body":"check {file}"}}]}}"#
            );
            async move {
                if failed {
                    Err(ProviderError::Timeout(Duration::from_secs(1)))
                } else {
                    Ok(answer(&json))
                }
            }
        }
    }

    /// A job of `files` files of `lines` added lines each, in separate directories.
    fn large_job(files: usize, lines: usize) -> Job {
        let mut job = job();
        job.diff = (0..files)
            .map(|f| {
                let body: String = (0..lines).map(|l| format!("+let v{l} = {l};\n")).collect();
                format!("--- a/d{f}/m.rs\n+++ b/d{f}/m.rs\n@@ -0,0 +1,{lines} @@\n{body}")
            })
            .collect();
        job
    }

    #[tokio::test]
    async fn a_pr_larger_than_a_call_is_reviewed_in_several_calls_and_merged() {
        let job = large_job(6, 200);
        let limits = ReviewLimits {
            max_calls: 3,
            call_tokens: Some(3_500),
        };
        let prepared = prepare(&job, "glm-5.1", limits).unwrap();
        assert_eq!(prepared.plan.chunks.len(), 3);
        let model = Reviewer::new(&[]);
        let review = run(&job, prepared, &model, &mut Progress::default()).await.unwrap();
        assert_eq!(model.files().len(), 3, "one call per chunk");
        assert_eq!(review.usage.requests, 3);
        assert_eq!(review.coverage.calls, 3);
        assert_eq!(review.coverage.lines_reviewed, 1_200, "every line read");
        assert_eq!(review.suggestions.len(), 3, "one from each call");
        for file in model.files() {
            assert!(
                review.summary.contains(&format!("{file} reviewed.")),
                "{}",
                review.summary
            );
        }
    }

    #[tokio::test]
    async fn a_review_stopped_after_some_calls_resumes_without_repeating_them() {
        let job = large_job(6, 200);
        let limits = ReviewLimits {
            max_calls: 3,
            call_tokens: Some(3_500),
        };
        let mut progress = Progress::default();
        let first = Reviewer::new(&[2]);
        let stopped = run(&job, prepare(&job, "glm-5.1", limits).unwrap(), &first, &mut progress).await;
        assert!(matches!(stopped, Err(ReviewError::Provider(ProviderError::Timeout(_)))));
        assert_eq!(progress.answers.len(), 1, "the first call's answer is kept");

        let second = Reviewer::new(&[]);
        let review = run(&job, prepare(&job, "glm-5.1", limits).unwrap(), &second, &mut progress)
            .await
            .unwrap();
        assert_eq!(second.files().len(), 2, "only the two calls not answered yet");
        assert!(!second.files().contains(&first.files()[0]));
        assert_eq!(review.suggestions.len(), 3);
        assert_eq!(review.usage.requests, 3, "the kept call's usage counts once");
    }

    #[tokio::test]
    async fn a_job_lowers_the_call_limit_with_max_calls() {
        let mut job = large_job(6, 200);
        job.options.max_calls = Some(1);
        let limits = ReviewLimits::for_job(3, Some(3_500), &job);
        assert_eq!(limits.max_calls, 1);
        assert_eq!(
            ReviewLimits::for_job(3, None, &{
                job.options.max_calls = Some(9);
                job.clone()
            })
            .max_calls,
            3,
            "never raised"
        );
        job.options.max_calls = Some(1);
        let model = Reviewer::new(&[]);
        let review = run(
            &job,
            prepare(&job, "glm-5.1", limits).unwrap(),
            &model,
            &mut Progress::default(),
        )
        .await
        .unwrap();
        assert_eq!(model.files().len(), 1);
        assert!(review.coverage.lines_reviewed < review.coverage.lines_reviewable);
        assert!(
            review
                .coverage
                .skipped
                .iter()
                .all(|s| s.reason == review_core::contract::SkipReason::MaxCalls)
        );
    }

    #[tokio::test]
    async fn an_unchanged_hunk_is_not_sent_again_and_its_suggestion_is_carried_to_its_new_lines() {
        let first_job = large_job(2, 20);
        let model = Reviewer::new(&[]);
        let first = review(&first_job, &model).await.unwrap();
        assert_eq!(model.files(), ["d0/m.rs"], "one call for both files");
        assert_eq!(first.suggestions.len(), 1);
        assert!(first.suggestions[0].fingerprint.is_some());

        // The next push adds three lines above d0's hunk and changes d1.
        let mut next_job = large_job(2, 20);
        next_job.diff = next_job.diff.replacen("@@ -0,0 +1,20 @@", "@@ -3,0 +4,20 @@", 1);
        let d1 = next_job.diff.find("+++ b/d1/m.rs").unwrap();
        next_job
            .diff
            .replace_range(d1.., &next_job.diff[d1..].replace("v3 = 3", "v3 = 33"));
        next_job.previous_result = Some(review_core::contract::PreviousResult {
            suggestions: first.suggestions.clone(),
            hunks: first.coverage.hunks.clone(),
        });
        let model = Reviewer::new(&[]);
        let next = review(&next_job, &model).await.unwrap();
        assert_eq!(model.files(), ["d1/m.rs"], "only the changed file is sent");
        assert_eq!(next.coverage.lines_carried, 20);
        assert_eq!(next.coverage.lines_reviewed, 40);
        let carried: Vec<_> = next.suggestions.iter().filter(|s| s.carried).collect();
        assert_eq!(carried.len(), 1, "{:?}", next.suggestions);
        assert_eq!(
            (carried[0].file.as_str(), carried[0].line_start),
            ("d0/m.rs", 4),
            "moved down three lines"
        );
        assert!(next.suggestions.iter().any(|s| !s.carried && s.file == "d1/m.rs"));
    }
}
