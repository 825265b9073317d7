//! The wire contract with the producer: the job and result messages, and the JSON schemas that
//! bind them (`docs/contract/`, a copy of `shared/contract/`).
//!
//! Everything that crosses the broker is defined here and nowhere else. A job is read straight
//! into typed structs and every rule of `review-job.v1.schema.json` is checked in code
//! ([`parse_job`], `parse.rs`): no `serde_json::Value` of the body is ever built, because a
//! body within `API_REVIEW_MAX_JOB_BYTES` can hold millions of tiny values (`[0,0,0,…]`) that
//! would cost 32 bytes each as a `Value`. Unknown properties are skipped without being built, and
//! the large texts (`diff`, `patch`, the PR body) borrow from the body or are unescaped once.

mod parse;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

pub(crate) use parse::MAX_FILES;
pub use parse::{MAX_PREVIOUS_HUNKS, MAX_PREVIOUS_SUGGESTIONS, RejectedJob, parse_job};

pub(crate) const JOB_SCHEMA_ID: &str = "review-job/v1";
pub const RESULT_SCHEMA_ID: &str = "review-result/v1";

/// A PR-review job as the producer publishes it (`review-job.v1.schema.json`), valid by
/// construction when it comes from [`parse_job`]. It owns its texts (an async fn cannot name a
/// borrowed job's lifetime by elision, and the worker's are written that way); each was unescaped
/// once, straight into a buffer of its size, and the diff parser borrows from them.
#[derive(Debug, Clone)]
pub struct Job {
    /// At most [`MAX_ID_BYTES`] bytes, so that `{job_id}:result` fits an AMQP short string.
    pub job_id: String,
    pub repository: Repository,
    pub pull_request: PullRequest,
    /// Empty when the job gives `files` instead.
    pub diff: String,
    pub files: Vec<JobFile>,
    pub options: ReviewOptions,
    pub created_at: Option<DateTime<Utc>>,
    /// The last result for this PR, echoed back by the producer: what carry-forward needs of it.
    pub previous_result: Option<PreviousResult>,
}

/// What a job's `previous_result` (a `review-result/v1` echoed back) gives carry-forward
/// ([`crate::carry`]): the suggestions and the hunks they were found in. Read leniently, so that
/// a result of an older worker (no `coverage`, no fingerprints) is nothing to carry rather than
/// an invalid job; typed strictly where present.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PreviousResult {
    /// At most [`MAX_PREVIOUS_SUGGESTIONS`].
    pub suggestions: Vec<Suggestion>,
    /// `coverage.hunks`; at most [`MAX_PREVIOUS_HUNKS`].
    pub hunks: Vec<HunkRef>,
}

#[derive(Debug, Clone)]
pub struct Repository {
    pub full_name: String,
    pub platform: Option<String>,
    pub default_branch: Option<String>,
    pub language: Option<String>,
}

#[derive(Debug, Clone)]
pub struct PullRequest {
    pub number: u64,
    pub title: Option<String>,
    pub body: Option<String>,
    pub author: Option<String>,
    pub base_sha: Option<String>,
    pub head_sha: Option<String>,
    pub url: Option<String>,
}

/// One changed file, the alternative to a whole `diff`.
#[derive(Debug, Clone)]
pub struct JobFile {
    pub(crate) path: String,
    pub(crate) previous_path: Option<String>,
    pub(crate) status: Option<FileStatusHint>,
    pub(crate) patch: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileStatusHint {
    Added,
    Modified,
    Removed,
    Renamed,
}

#[derive(Debug, Clone, Default)]
pub struct ReviewOptions {
    pub max_suggestions: Option<usize>,
    pub min_severity: Option<Severity>,
    pub language: Option<String>,
    pub instructions: Option<String>,
    pub ignore_paths: Vec<String>,
    /// Lowers the deployment's `API_REVIEW_MAX_CALLS` for this job (at least 1).
    pub max_calls: Option<u32>,
}

/// Ordered from least to most severe, so `>=` means "at least as severe".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    /// Reads the words models use for severities, leniently (`"HIGH"`, `"major"`, `"info"`).
    pub(crate) fn parse_lenient(word: &str) -> Option<Self> {
        match word.trim().to_ascii_lowercase().as_str() {
            "low" | "info" | "minor" | "trivial" | "nit" | "suggestion" => Some(Self::Low),
            "medium" | "moderate" | "warning" | "normal" => Some(Self::Medium),
            "high" | "major" | "error" | "important" => Some(Self::High),
            "critical" | "blocker" | "severe" | "security" => Some(Self::Critical),
            _ => None,
        }
    }
}

/// A suggestion as the result carries it: always anchored to lines the diff changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Suggestion {
    pub file: String,
    pub line_start: u32,
    pub line_end: u32,
    pub severity: Severity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    pub body: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub existing_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub improved_code: Option<String>,
    /// The fingerprint of the hunk the suggestion points into ([`crate::diff::Hunk`]'s content
    /// and its file's path): a later push whose diff still has that hunk carries the suggestion
    /// forward instead of reviewing the hunk again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// Brought forward from the job's `previous_result` (its hunk did not change), not found by
    /// this review's calls.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub carried: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Completed,
    Failed,
}

/// Why a job failed for good. Only these reach the producer; every other problem (quota windows,
/// account trouble, broker outages) makes the job wait instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    InvalidJob,
    ProviderRejected,
    BadModelOutput,
    Expired,
    AttemptsExhausted,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidJob => "invalid_job",
            Self::ProviderRejected => "provider_rejected",
            Self::BadModelOutput => "bad_model_output",
            Self::Expired => "expired",
            Self::AttemptsExhausted => "attempts_exhausted",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultError {
    pub(crate) kind: FailureKind,
    pub(crate) message: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub requests: u32,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    /// Model answers reused from the worker's in-memory cache (an identical request answered
    /// within `API_REVIEW_CACHE_TTL_SECS`): no provider request was made for them, so they count
    /// in neither `requests` nor the token counts. Absent when zero.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_hits: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Usage {
    pub fn add(&mut self, other: &Usage) {
        // The counts come from the provider: a nonsense one must not panic the worker.
        self.requests = self.requests.saturating_add(other.requests);
        self.prompt_tokens = self.prompt_tokens.saturating_add(other.prompt_tokens);
        self.completion_tokens = self.completion_tokens.saturating_add(other.completion_tokens);
        self.cached_tokens = self.cached_tokens.saturating_add(other.cached_tokens);
        self.cache_hits = self.cache_hits.saturating_add(other.cache_hits);
    }
}

/// How much of a PR a review read (`coverage` in `review-result/v1`). Lines are added lines:
/// the only ones a suggestion may point at.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coverage {
    /// Files in the diff.
    pub files_changed: u64,
    /// Files not skipped for what they are (lockfiles, generated, vendored, binary, ignored,
    /// deleted).
    pub files_reviewable: u64,
    /// Reviewable files of which at least one hunk was read (or carried forward).
    pub files_reviewed: u64,
    pub lines_reviewable: u64,
    /// Added lines the model read in this review's calls, plus those carried forward.
    pub lines_reviewed: u64,
    /// Of `lines_reviewed`, those in hunks unchanged since `previous_result` and not sent again.
    #[serde(default)]
    pub lines_carried: u64,
    /// Review calls the diff was split into (repair requests not counted).
    pub calls: u32,
    /// Every file left out or clipped, with why and how many of its added lines were not read.
    #[serde(default)]
    pub skipped: Vec<SkippedFile>,
    /// The hunks read (or carried), by fingerprint and where each starts in the new file: what a
    /// later push's `previous_result` is compared with.
    #[serde(default)]
    pub hunks: Vec<HunkRef>,
}

/// A file of which some or all added lines were not read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedFile {
    pub file: String,
    pub reason: SkipReason,
    /// Added lines not read.
    pub lines: u64,
    /// Part of the file was read: the hunks that fitted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub clipped: bool,
}

/// Why a file, or part of it, was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// Matched one of the job's `options.ignore_paths`.
    IgnorePaths,
    Lockfile,
    Binary,
    /// Third-party code checked into the repository.
    Vendored,
    /// Build output, minified or code-generated files, snapshots.
    Generated,
    /// Deleted, or only deletes lines: no new line for a suggestion to point at.
    Removed,
    /// Larger than one call's budget: clipped to its most reviewable hunks.
    Budget,
    /// The PR needs more calls than `API_REVIEW_MAX_CALLS` (or `options.max_calls`) allows.
    MaxCalls,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::IgnorePaths => "ignore_paths",
            Self::Lockfile => "lockfile",
            Self::Binary => "binary",
            Self::Vendored => "vendored",
            Self::Generated => "generated",
            Self::Removed => "removed",
            Self::Budget => "budget",
            Self::MaxCalls => "max_calls",
        }
    }
}

/// Where a reviewed hunk was: its fingerprint and the new-file line it starts at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HunkRef {
    pub file: String,
    pub fingerprint: String,
    pub line: u32,
}

/// A result message (`review-result.v1.schema.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReviewResult {
    pub schema: String,
    pub job_id: String,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suggestions: Option<Vec<Suggestion>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_fallback: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped_files: Option<Vec<String>>,
    /// What the review read and what it did not, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coverage: Option<Coverage>,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    pub finished_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ResultError>,
}

impl ReviewResult {
    /// A `failed` result; the caller fills in what it knows beyond the error.
    pub fn failed(job_id: &str, kind: FailureKind, message: impl Into<String>, attempts: u32) -> Self {
        Self {
            schema: RESULT_SCHEMA_ID.to_owned(),
            job_id: job_id.to_owned(),
            status: Status::Failed,
            summary: None,
            suggestions: None,
            provider: None,
            model: None,
            used_fallback: None,
            usage: None,
            truncated: None,
            skipped_files: None,
            coverage: None,
            attempts: attempts.max(1),
            started_at: None,
            finished_at: rfc3339(Utc::now()),
            error: Some(ResultError {
                kind,
                message: one_line(&message.into()),
            }),
        }
    }

    pub fn is_failed(&self) -> bool {
        self.status == Status::Failed
    }

    pub fn routing_key(&self) -> &'static str {
        match self.status {
            Status::Completed => "result.completed",
            Status::Failed => "result.failed",
        }
    }
}

/// Timestamps in results are RFC 3339 in UTC with second precision, like the contract's example.
pub fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Error texts go into a header and a JSON field that operators read line by line.
pub fn one_line(text: &str) -> String {
    let mut line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.len() > 1000 {
        let cut = (0..=1000).rev().find(|&at| line.is_char_boundary(at)).unwrap_or(0);
        line.truncate(cut);
        line.push('…');
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use parse::InvalidJob;

    const EXAMPLE_JOB: &str = include_str!("../../../docs/contract/examples/job.json");

    #[test]
    fn the_contract_example_job_parses() {
        let job = parse_job(EXAMPLE_JOB.as_bytes(), 1 << 20).unwrap();
        assert_eq!(job.pull_request.number, 42);
        assert_eq!(job.options.min_severity, Some(Severity::Low));
    }

    #[test]
    fn a_job_without_diff_or_files_is_rejected_with_its_id() {
        let body =
            r#"{"schema":"review-job/v1","job_id":"j1","repository":{"full_name":"a/b"},"pull_request":{"number":1}}"#;
        let rejected = parse_job(body.as_bytes(), 1 << 20).unwrap_err();
        assert!(matches!(rejected.problem, InvalidJob::Schema(_)), "{rejected}");
        assert_eq!(rejected.job_id.as_deref(), Some("j1"));
    }

    #[test]
    fn a_too_large_job_still_yields_its_id() {
        let body = format!(
            r#"{{"diff": "{} \\"job_id\\": \\"inner\\"", "job_id": "big-1"}}"#,
            "x".repeat(5000)
        );
        let rejected = parse_job(body.as_bytes(), 100).unwrap_err();
        assert!(matches!(rejected.problem, InvalidJob::TooLarge { .. }));
        assert_eq!(
            rejected.job_id.as_deref(),
            Some("big-1"),
            "the id after the diff, not the escaped one inside it"
        );
    }

    #[test]
    fn a_rejected_job_reads_as_its_problem_and_keeps_the_id_of_an_oversized_or_invalid_job() {
        let oversized = format!(r#"{{"job_id": "big-2", "diff": "{}"}}"#, "x".repeat(500));
        let rejected = parse_job(oversized.as_bytes(), 100).unwrap_err();
        assert_eq!(rejected.job_id.as_deref(), Some("big-2"));
        assert_eq!(rejected.to_string(), rejected.problem.to_string());
        assert!(
            rejected.to_string().contains("more than the 100 bytes allowed"),
            "{rejected}"
        );
        let invalid = EXAMPLE_JOB.replace(r#""number": 42"#, r#""number": "42""#);
        assert_ne!(invalid, EXAMPLE_JOB, "the example has the number to break");
        let rejected = parse_job(invalid.as_bytes(), 1 << 20).unwrap_err();
        assert_eq!(rejected.job_id.as_deref(), Some("7b1c2f0e-4f5e-4d59-9b7a-1f0d3c1e9a11"));
        assert_eq!(
            rejected.to_string(),
            "job does not match review-job/v1: at /pull_request/number: must be an integer of at least 1, not a string"
        );
    }

    #[test]
    fn non_utf8_and_non_json_bodies_are_invalid_without_an_id() {
        assert!(matches!(
            parse_job(&[0xff, 0xfe], 100),
            Err(RejectedJob {
                problem: InvalidJob::NotUtf8(_),
                job_id: None
            })
        ));
        assert!(matches!(
            parse_job(b"nope", 100),
            Err(RejectedJob {
                problem: InvalidJob::NotJson(_),
                job_id: None
            })
        ));
    }

    #[test]
    fn one_line_folds_whitespace() {
        assert_eq!(one_line("a\n  b\tc "), "a b c");
    }
}
