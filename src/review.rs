//! One review, without the broker: diff → context fit → prompt → model call(s) → answer → anchored
//! suggestions. The model is called through [`ModelCall`] so that the executor can put retries,
//! the deployment-wide cap and the fallback around each call, and tests can answer directly.

use review_core::anchor::anchor;
use review_core::answer::{parse_answer, repair_instruction};
use review_core::chat::{ChatAnswer, Message};
use review_core::classify::ProviderError;
use review_core::context::{Fitted, build_ignore_set, estimate_tokens, fit_with_map};
use review_core::contract::{Job, Suggestion, Usage};
use review_core::diff::{FileDiff, from_job_files, parse_unified};
use review_core::models::context_window;
use review_core::prompt::build_messages;

/// A job ready to send: what fits the model's window, and the messages.
#[derive(Debug)]
pub(crate) struct Prepared<'a> {
    pub(crate) fitted: Fitted<'a>,
    pub(crate) messages: Vec<Message>,
    /// Why nothing is sent when `fitted.files` is empty, if not the usual "all skipped".
    pub(crate) nothing_to_review: Option<&'static str>,
}

/// What the model said about a job, anchored and filtered.
#[derive(Debug)]
pub(crate) struct Review {
    pub(crate) summary: String,
    pub(crate) suggestions: Vec<Suggestion>,
    pub(crate) usage: Usage,
    pub(crate) truncated: bool,
    pub(crate) skipped_files: Vec<String>,
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

/// Parses the job's diff and fits it, with the prompt around it, into the model's window.
///
/// A diff that adds no line gives a suggestion nowhere to point, so it costs no call: a damaged
/// one (a word diff, a diff cut mid-hunk) is an invalid job, one that only deletes, renames or
/// changes modes is reviewed as "nothing to review".
pub(crate) fn prepare<'a>(job: &'a Job, model: &str) -> Result<Prepared<'a>, ReviewError> {
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
    if files.iter().all(|file| file.added_line_count() == 0) {
        if files.iter().any(|file| file.damaged) {
            return Err(ReviewError::InvalidJob(
                "the diff adds no line, and a hunk of it holds fewer lines than its header announces \
                 or changes none (a word diff? a diff cut short?): there is nothing to review"
                    .to_owned(),
            ));
        }
        return Ok(Prepared {
            fitted: Fitted {
                skipped_files: files.into_iter().map(|file| file.path.into_owned()).collect(),
                ..Fitted::default()
            },
            messages: Vec::new(),
            nothing_to_review: Some(
                "Nothing to review: the diff adds no lines (it only removes, renames or changes modes).",
            ),
        });
    }

    let window = context_window(model) as usize;
    // The prompt without a diff tells how much the frame takes.
    let frame = build_messages(job, &Fitted::default());
    let frame_tokens: usize = frame.iter().map(|m| estimate_tokens(&m.content)).sum();
    let budget = window.saturating_sub(output_reserve(window).saturating_add(frame_tokens).saturating_add(256));

    let fitted = fit_with_map(files, &ignore, budget);
    let messages = build_messages(job, &fitted);
    Ok(Prepared {
        fitted,
        messages,
        nothing_to_review: None,
    })
}

/// How a review reaches the model: the executor puts retries, limits and the fallback behind
/// it; tests answer directly.
pub(crate) trait ModelCall: Sync {
    type Error;

    fn call(&self, messages: &[Message]) -> impl Future<Output = Result<ChatAnswer, Self::Error>> + Send;
}

/// Runs the review: one call, one repair call if the answer cannot be read, then anchoring.
pub(crate) async fn run<M: ModelCall>(
    job: &Job,
    prepared: Prepared<'_>,
    model: &M,
) -> Result<Review, ReviewError<M::Error>> {
    let Prepared {
        fitted,
        mut messages,
        nothing_to_review,
    } = prepared;
    let mut usage = Usage::default();

    if fitted.files.is_empty() {
        // Nothing reviewable is left (all lockfiles, binaries, ignored…): no call, no quota.
        return Ok(Review {
            summary: nothing_to_review.map_or_else(
                || format!("Nothing to review: {} file(s) skipped.", fitted.skipped_files.len()),
                str::to_owned,
            ),
            suggestions: Vec::new(),
            usage,
            truncated: fitted.truncated,
            skipped_files: fitted.skipped_files,
        });
    }

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

    // Anchoring compares every suggestion with the diff: as much work as the answer is long.
    let Fitted {
        files,
        truncated,
        skipped_files,
        ..
    } = fitted;
    // The files borrow from the job, so this work cannot move to the blocking pool; a large one
    // hands this thread's other tasks to the rest of the runtime instead.
    let anchored = crate::blocking::heavy_in_place(size, || anchor(review.suggestions, &files, &job.options));
    if anchored.dropped > 0 || anchored.reanchored > 0 {
        tracing::debug!(
            dropped = anchored.dropped,
            reanchored = anchored.reanchored,
            "suggestions moved or dropped to fit changed lines"
        );
    }
    Ok(Review {
        summary: review.summary.unwrap_or_default(),
        suggestions: anchored.suggestions,
        usage,
        truncated,
        skipped_files,
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
        let review = run(&job, prepare(&job, "glm-5.1").unwrap(), &model).await.unwrap();
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
        let error = run(&job, prepare(&job, "glm-5.1").unwrap(), &model).await.unwrap_err();
        assert!(matches!(error, ReviewError::BadModelOutput { .. }), "{error:?}");
    }

    #[tokio::test]
    async fn a_pr_with_only_skipped_files_costs_no_call() {
        let mut job = job();
        job.options.ignore_paths = vec!["src/**".into()];
        let model = Scripted::new(&[]);
        let review = run(&job, prepare(&job, "glm-5.1").unwrap(), &model).await.unwrap();
        assert_eq!(review.skipped_files, vec!["src/refund.rs".to_owned()]);
        assert_eq!(review.usage.requests, 0);
        assert!(model.seen.lock().unwrap().is_empty());
    }

    #[test]
    fn a_diff_that_is_not_a_diff_is_an_invalid_job() {
        let mut job = job();
        job.diff = "this is not a diff".into();
        assert!(matches!(prepare(&job, "glm-5.1"), Err(ReviewError::InvalidJob(_))));
        job.diff = "   \n".into();
        assert!(matches!(prepare(&job, "glm-5.1"), Err(ReviewError::InvalidJob(_))));
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
            match prepare(&job, "glm-5.1") {
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
        let review = run(&job, prepare(&job, "glm-5.1").unwrap(), &model).await.unwrap();
        assert!(model.seen.lock().unwrap().is_empty());
        assert!(review.summary.contains("adds no lines"), "{}", review.summary);
        assert_eq!(review.skipped_files, ["a.rs", "b.rs"]);
    }

    #[test]
    fn a_description_of_megabytes_is_cut_and_leaves_the_diff_its_room() {
        let mut job = job();
        job.pull_request.body = Some("word ".repeat(1 << 20));
        job.options.instructions = Some("rule ".repeat(1 << 20));
        let prepared = prepare(&job, "glm-5.1").unwrap();
        assert_eq!(prepared.fitted.files.len(), 1, "the diff still fits");
        let size: usize = prepared.messages.iter().map(|m| m.content.len()).sum();
        assert!(size < 60_000, "{size} bytes of prompt");
        assert!(prepared.messages[1].content.contains("cut: longer than"));
    }
}
