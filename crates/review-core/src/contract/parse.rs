//! Reading a job body into a [`Job`] and checking every rule of `review-job.v1.schema.json` in
//! code, in memory proportional to what the job keeps rather than to how many JSON values the body
//! holds.
//!
//! Each object is first read as a struct of borrowed [`RawValue`]s, one per known property:
//! serde_json checks the syntax and skips unknown properties without building them
//! (`IgnoredAny`), so `"padding": [0,0,0,…]` costs no allocation. Each known value is then checked
//! against its rule and converted. Error messages name the property and what was wrong with it,
//! never its value: they end up in logs, in a result and in a dead-letter header.

use std::borrow::Cow;
use std::fmt;

use chrono::{DateTime, FixedOffset, Utc};
use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, de::Error as _};
use serde_json::value::RawValue;

use super::{
    FileStatusHint, HunkRef, JOB_SCHEMA_ID, Job, JobFile, PreviousResult, PullRequest, Repository, ReviewOptions,
    Severity, Suggestion,
};

/// `job_id` in bytes: the worker publishes results with `message_id = "{job_id}:result"`, and an
/// AMQP short string holds 255 bytes. JSON Schema's `maxLength` counts characters, so 128 `é`
/// would pass it at 256 bytes.
pub(crate) const MAX_ID_BYTES: usize = 128;
/// `files` entries (the schema's `maxItems`). Each costs a few hundred bytes once parsed, and no
/// forge produces more: GitHub lists at most 3,000 files for a pull request.
pub(crate) const MAX_FILES: usize = 20_000;
/// `options.ignore_paths` entries and their length in characters (the schema's `maxItems` and
/// `maxLength`): every pattern compiles into the matcher, so these bound its size.
pub(crate) const MAX_IGNORE_PATHS: usize = 1_000;
pub(crate) const MAX_PATTERN_CHARS: usize = 1_024;
/// `previous_result.coverage.hunks` and `previous_result.suggestions` entries (the schema's
/// `maxItems`). They bound what an echoed result may cost once parsed (a hunk entry holds two
/// strings, a suggestion up to seven); a result holds at most as many hunks as its review read,
/// and a worker must not list more than these in `coverage.hunks` and `suggestions`, or the
/// producer's echo makes the next job invalid.
pub const MAX_PREVIOUS_HUNKS: usize = 20_000;
pub const MAX_PREVIOUS_SUGGESTIONS: usize = 10_000;

/// Why a message body is not a job we can review. The texts are short and quote nothing from the
/// body.
#[derive(Debug, thiserror::Error)]
pub(crate) enum InvalidJob {
    #[error("job body is {size} bytes, more than the {limit} bytes allowed (API_REVIEW_MAX_JOB_BYTES)")]
    TooLarge { size: usize, limit: usize },
    #[error("job body is not UTF-8: {0}")]
    NotUtf8(#[from] std::str::Utf8Error),
    #[error("job body is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    #[error("job does not match review-job/v1: {0}")]
    Schema(String),
}

/// A body refused as a job: why, and its `job_id` when one can be read and is one the broker can
/// carry, so that the producer still hears about its job.
#[derive(Debug, thiserror::Error)]
#[error("{problem}")]
pub struct RejectedJob {
    pub(crate) problem: InvalidJob,
    pub job_id: Option<String>,
}

impl RejectedJob {
    fn without_id(problem: InvalidJob) -> Self {
        Self { problem, job_id: None }
    }
}

/// Parses and validates a job body.
pub fn parse_job(body: &[u8], max_bytes: usize) -> Result<Job, RejectedJob> {
    if body.len() > max_bytes {
        // Too large to parse safely; a cheap scan may still find the id near the start.
        return Err(RejectedJob {
            problem: InvalidJob::TooLarge {
                size: body.len(),
                limit: max_bytes,
            },
            job_id: sniff_job_id(body),
        });
    }
    let text = std::str::from_utf8(body).map_err(|e| RejectedJob::without_id(InvalidJob::NotUtf8(e)))?;
    // A syntax check of the whole body that allocates nothing but a byte per nesting level.
    let whole: &RawValue = serde_json::from_str(text).map_err(|e| RejectedJob::without_id(InvalidJob::NotJson(e)))?;
    let fields: JobFields<'_> =
        object(whole, "/").map_err(|problem| RejectedJob::without_id(InvalidJob::Schema(problem.to_string())))?;
    let job_id = fields.job_id.0.and_then(|raw| job_id(raw).ok());
    validate(&fields).map_err(|problem| RejectedJob {
        problem: problem.into_invalid(),
        job_id,
    })
}

/// One broken rule: where, and what was expected. Displays as `at /pull_request/number: must be
/// an integer of at least 1, not a string`.
#[derive(Debug)]
struct Problem {
    at: String,
    what: Cow<'static, str>,
    /// A string escape that is not valid JSON text (a lone surrogate): a syntax error.
    syntax: bool,
}

impl Problem {
    fn new(at: impl Into<String>, what: impl Into<Cow<'static, str>>) -> Self {
        Self {
            at: at.into(),
            what: what.into(),
            syntax: false,
        }
    }

    fn into_invalid(self) -> InvalidJob {
        if self.syntax {
            InvalidJob::NotJson(serde_json::Error::custom(self))
        } else {
            InvalidJob::Schema(self.to_string())
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at {}: {}", self.at, self.what)
    }
}

type Checked<T> = Result<T, Problem>;

/// A known property's value as it stands in the body, or `None` when the property is absent. A
/// present `null` is `Some`: the schema allows no nulls, so it must not pass for "absent".
#[derive(Debug, Default, Clone, Copy)]
struct Field<'a>(Option<&'a RawValue>);

impl<'de: 'a, 'a> Deserialize<'de> for Field<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        <&'a RawValue>::deserialize(deserializer).map(|raw| Field(Some(raw)))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct JobFields<'a> {
    #[serde(borrow)]
    schema: Field<'a>,
    #[serde(borrow)]
    job_id: Field<'a>,
    #[serde(borrow)]
    repository: Field<'a>,
    #[serde(borrow)]
    pull_request: Field<'a>,
    #[serde(borrow)]
    diff: Field<'a>,
    #[serde(borrow)]
    files: Field<'a>,
    #[serde(borrow)]
    options: Field<'a>,
    #[serde(borrow)]
    created_at: Field<'a>,
    #[serde(borrow)]
    previous_result: Field<'a>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RepositoryFields<'a> {
    #[serde(borrow)]
    full_name: Field<'a>,
    #[serde(borrow)]
    platform: Field<'a>,
    #[serde(borrow)]
    default_branch: Field<'a>,
    #[serde(borrow)]
    language: Field<'a>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PullRequestFields<'a> {
    #[serde(borrow)]
    number: Field<'a>,
    #[serde(borrow)]
    title: Field<'a>,
    #[serde(borrow)]
    body: Field<'a>,
    #[serde(borrow)]
    author: Field<'a>,
    #[serde(borrow)]
    base_sha: Field<'a>,
    #[serde(borrow)]
    head_sha: Field<'a>,
    #[serde(borrow)]
    url: Field<'a>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct FileFields<'a> {
    #[serde(borrow)]
    path: Field<'a>,
    #[serde(borrow)]
    previous_path: Field<'a>,
    #[serde(borrow)]
    status: Field<'a>,
    #[serde(borrow)]
    patch: Field<'a>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct OptionsFields<'a> {
    #[serde(borrow)]
    max_suggestions: Field<'a>,
    #[serde(borrow)]
    min_severity: Field<'a>,
    #[serde(borrow)]
    language: Field<'a>,
    #[serde(borrow)]
    instructions: Field<'a>,
    #[serde(borrow)]
    ignore_paths: Field<'a>,
    #[serde(borrow)]
    max_calls: Field<'a>,
}

/// The parts of an echoed `review-result/v1` that carry-forward reads; the rest (`summary`,
/// `usage`, timestamps…) is skipped unread, as unknown properties are.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PreviousResultFields<'a> {
    #[serde(borrow)]
    suggestions: Field<'a>,
    #[serde(borrow)]
    coverage: Field<'a>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct CoverageFields<'a> {
    #[serde(borrow)]
    hunks: Field<'a>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct HunkRefFields<'a> {
    #[serde(borrow)]
    file: Field<'a>,
    #[serde(borrow)]
    fingerprint: Field<'a>,
    #[serde(borrow)]
    line: Field<'a>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SuggestionFields<'a> {
    #[serde(borrow)]
    file: Field<'a>,
    #[serde(borrow)]
    line_start: Field<'a>,
    #[serde(borrow)]
    line_end: Field<'a>,
    #[serde(borrow)]
    severity: Field<'a>,
    #[serde(borrow)]
    label: Field<'a>,
    #[serde(borrow)]
    title: Field<'a>,
    #[serde(borrow)]
    body: Field<'a>,
    #[serde(borrow)]
    existing_code: Field<'a>,
    #[serde(borrow)]
    improved_code: Field<'a>,
    #[serde(borrow)]
    fingerprint: Field<'a>,
    #[serde(borrow)]
    carried: Field<'a>,
}

fn validate(fields: &JobFields<'_>) -> Checked<Job> {
    match fields.schema.0 {
        None => return Err(Problem::new("/", "`schema` is required")),
        Some(raw) if string(raw, "/schema", Length::ANY)? != JOB_SCHEMA_ID => {
            return Err(Problem::new("/schema", format!("must be \"{JOB_SCHEMA_ID}\"")));
        }
        Some(_) => {}
    }
    let job_id = job_id(required(fields.job_id, "/", "job_id")?)?;
    let repository = repository(required(fields.repository, "/", "repository")?)?;
    let pull_request = pull_request(required(fields.pull_request, "/", "pull_request")?)?;
    let diff = optional(fields.diff, |raw| string(raw, "/diff", Length::ANY))?;
    let files = optional(fields.files, job_files)?;
    let options = optional(fields.options, options)?.unwrap_or_default();
    let created_at = optional(fields.created_at, created_at)?;
    let previous_result = optional(fields.previous_result, previous_result)?;

    let has_diff = diff.as_ref().is_some_and(|diff| !diff.is_empty());
    let has_files = files.as_ref().is_some_and(|files| !files.is_empty());
    if !has_diff && !has_files {
        return Err(Problem::new(
            "/",
            "needs a non-empty `diff` or a non-empty `files` array",
        ));
    }
    Ok(Job {
        job_id,
        repository,
        pull_request,
        diff: diff.unwrap_or_default(),
        files: files.unwrap_or_default(),
        options,
        created_at,
        previous_result,
    })
}

fn required<'a>(field: Field<'a>, at: &str, name: &str) -> Checked<&'a RawValue> {
    field.0.ok_or_else(|| Problem::new(at, format!("`{name}` is required")))
}

fn optional<'a, T>(field: Field<'a>, check: impl FnOnce(&'a RawValue) -> Checked<T>) -> Checked<Option<T>> {
    field.0.map(check).transpose()
}

/// A `job_id` the broker can carry: 1 to 128 characters, and at most [`MAX_ID_BYTES`] bytes.
fn job_id(raw: &RawValue) -> Checked<String> {
    let id = string(raw, "/job_id", Length::chars(1, 128))?;
    if id.len() > MAX_ID_BYTES {
        return Err(Problem::new(
            "/job_id",
            format!(
                "is {} bytes in UTF-8, more than the {MAX_ID_BYTES} an AMQP message id can carry with its `:result` suffix",
                id.len()
            ),
        ));
    }
    Ok(id)
}

fn repository(raw: &RawValue) -> Checked<Repository> {
    let fields: RepositoryFields<'_> = object(raw, "/repository")?;
    let full_name = string(
        required(fields.full_name, "/repository", "full_name")?,
        "/repository/full_name",
        Length::chars(1, 256),
    )?;
    let platform = optional(fields.platform, |raw| {
        one_of(
            raw,
            "/repository/platform",
            &["github", "gitlab", "bitbucket", "azure_devops", "gitea", "other"],
        )
    })?;
    Ok(Repository {
        full_name,
        platform: platform.map(str::to_owned),
        default_branch: optional(fields.default_branch, |raw| {
            string(raw, "/repository/default_branch", Length::ANY)
        })?,
        language: optional(fields.language, |raw| string(raw, "/repository/language", Length::ANY))?,
    })
}

fn pull_request(raw: &RawValue) -> Checked<PullRequest> {
    let fields: PullRequestFields<'_> = object(raw, "/pull_request")?;
    let number = integer(
        required(fields.number, "/pull_request", "number")?,
        "/pull_request/number",
        1,
    )?;
    Ok(PullRequest {
        number,
        title: text_field(fields.title, "/pull_request/title")?,
        body: text_field(fields.body, "/pull_request/body")?,
        author: text_field(fields.author, "/pull_request/author")?,
        base_sha: text_field(fields.base_sha, "/pull_request/base_sha")?,
        head_sha: text_field(fields.head_sha, "/pull_request/head_sha")?,
        url: text_field(fields.url, "/pull_request/url")?,
    })
}

/// An optional string without limits.
fn text_field(field: Field<'_>, at: &str) -> Checked<Option<String>> {
    optional(field, |raw| string(raw, at, Length::ANY))
}

fn job_files(raw: &RawValue) -> Checked<Vec<JobFile>> {
    let entries = array::<MAX_FILES>(raw, "/files")?;
    let mut files = Vec::with_capacity(entries.len());
    for (index, entry) in entries.into_iter().enumerate() {
        let at = format!("/files/{index}");
        let fields: FileFields<'_> = object(entry, &at)?;
        files.push(JobFile {
            path: string(required(fields.path, &at, "path")?, &format!("{at}/path"), Length::ANY)?,
            previous_path: optional(fields.previous_path, |raw| {
                string(raw, &format!("{at}/previous_path"), Length::ANY)
            })?,
            status: optional(fields.status, |raw| {
                one_of(
                    raw,
                    &format!("{at}/status"),
                    &["added", "modified", "removed", "renamed"],
                )
                .map(|status| match status {
                    "added" => FileStatusHint::Added,
                    "removed" => FileStatusHint::Removed,
                    "renamed" => FileStatusHint::Renamed,
                    _ => FileStatusHint::Modified,
                })
            })?,
            patch: string(
                required(fields.patch, &at, "patch")?,
                &format!("{at}/patch"),
                Length::ANY,
            )?,
        });
    }
    Ok(files)
}

fn options(raw: &RawValue) -> Checked<ReviewOptions> {
    let fields: OptionsFields<'_> = object(raw, "/options")?;
    let max_suggestions = optional(fields.max_suggestions, |raw| {
        integer(raw, "/options/max_suggestions", 0).map(|n| usize::try_from(n).unwrap_or(usize::MAX))
    })?;
    let min_severity = optional(fields.min_severity, |raw| {
        one_of(raw, "/options/min_severity", &["low", "medium", "high", "critical"]).map(|word| match word {
            "low" => Severity::Low,
            "medium" => Severity::Medium,
            "high" => Severity::High,
            _ => Severity::Critical,
        })
    })?;
    let ignore_paths = match fields.ignore_paths.0 {
        None => Vec::new(),
        Some(raw) => array::<MAX_IGNORE_PATHS>(raw, "/options/ignore_paths")?
            .into_iter()
            .enumerate()
            .map(|(index, raw)| {
                string(
                    raw,
                    &format!("/options/ignore_paths/{index}"),
                    Length::chars(0, MAX_PATTERN_CHARS),
                )
            })
            .collect::<Checked<_>>()?,
    };
    Ok(ReviewOptions {
        max_suggestions,
        min_severity,
        language: optional(fields.language, |raw| string(raw, "/options/language", Length::ANY))?,
        instructions: optional(fields.instructions, |raw| {
            string(raw, "/options/instructions", Length::ANY)
        })?,
        ignore_paths,
        max_calls: optional(fields.max_calls, |raw| {
            integer(raw, "/options/max_calls", 1).map(|n| u32::try_from(n).unwrap_or(u32::MAX))
        })?,
    })
}

/// An echoed result. Without `coverage` (a result of a worker before it, or a failed one) there
/// are no hunks, so nothing is carried; suggestions without a `fingerprint` are read and then
/// never match. What is present must have the result schema's types.
fn previous_result(raw: &RawValue) -> Checked<PreviousResult> {
    let fields: PreviousResultFields<'_> = object(raw, "/previous_result")?;
    let suggestions = match fields.suggestions.0 {
        None => Vec::new(),
        Some(raw) => array::<MAX_PREVIOUS_SUGGESTIONS>(raw, "/previous_result/suggestions")?
            .into_iter()
            .enumerate()
            .map(|(index, raw)| suggestion(raw, &format!("/previous_result/suggestions/{index}")))
            .collect::<Checked<_>>()?,
    };
    let hunks = match fields.coverage.0 {
        None => Vec::new(),
        Some(raw) => {
            let coverage: CoverageFields<'_> = object(raw, "/previous_result/coverage")?;
            match coverage.hunks.0 {
                None => Vec::new(),
                Some(raw) => array::<MAX_PREVIOUS_HUNKS>(raw, "/previous_result/coverage/hunks")?
                    .into_iter()
                    .enumerate()
                    .map(|(index, raw)| hunk_ref(raw, &format!("/previous_result/coverage/hunks/{index}")))
                    .collect::<Checked<_>>()?,
            }
        }
    };
    Ok(PreviousResult { suggestions, hunks })
}

fn hunk_ref(raw: &RawValue, at: &str) -> Checked<HunkRef> {
    let fields: HunkRefFields<'_> = object(raw, at)?;
    Ok(HunkRef {
        file: string(required(fields.file, at, "file")?, &format!("{at}/file"), Length::ANY)?,
        fingerprint: string(
            required(fields.fingerprint, at, "fingerprint")?,
            &format!("{at}/fingerprint"),
            Length::ANY,
        )?,
        line: line(required(fields.line, at, "line")?, &format!("{at}/line"))?,
    })
}

fn suggestion(raw: &RawValue, at: &str) -> Checked<Suggestion> {
    let fields: SuggestionFields<'_> = object(raw, at)?;
    let text = |field: Field<'_>, name: &str| optional(field, |raw| string(raw, &format!("{at}/{name}"), Length::ANY));
    let severity = one_of(
        required(fields.severity, at, "severity")?,
        &format!("{at}/severity"),
        &["low", "medium", "high", "critical"],
    )?;
    Ok(Suggestion {
        file: string(required(fields.file, at, "file")?, &format!("{at}/file"), Length::ANY)?,
        line_start: line(
            required(fields.line_start, at, "line_start")?,
            &format!("{at}/line_start"),
        )?,
        line_end: line(required(fields.line_end, at, "line_end")?, &format!("{at}/line_end"))?,
        severity: match severity {
            "low" => Severity::Low,
            "medium" => Severity::Medium,
            "high" => Severity::High,
            _ => Severity::Critical,
        },
        label: text(fields.label, "label")?,
        title: text(fields.title, "title")?,
        body: string(required(fields.body, at, "body")?, &format!("{at}/body"), Length::ANY)?,
        existing_code: text(fields.existing_code, "existing_code")?,
        improved_code: text(fields.improved_code, "improved_code")?,
        fingerprint: text(fields.fingerprint, "fingerprint")?,
        carried: optional(fields.carried, |raw| boolean(raw, &format!("{at}/carried")))?.unwrap_or(false),
    })
}

/// A line number of the contract: an integer of at least 1. One past `u32::MAX` is still a line
/// the schema allows; it is held as `u32::MAX`, which no diff reaches, so it matches nothing.
fn line(raw: &RawValue, at: &str) -> Checked<u32> {
    integer(raw, at, 1).map(|n| u32::try_from(n).unwrap_or(u32::MAX))
}

fn boolean(raw: &RawValue, at: &str) -> Checked<bool> {
    match raw.get().trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(Problem::new(at, format!("must be a boolean, not {}", kind(raw)))),
    }
}

fn created_at(raw: &RawValue) -> Checked<DateTime<Utc>> {
    let text = string(raw, "/created_at", Length::chars(0, 64))?;
    text.parse::<DateTime<FixedOffset>>()
        .map(|at| at.with_timezone(&Utc))
        .map_err(|_| Problem::new("/created_at", "must be an RFC 3339 date-time"))
}

/// What a JSON value is, told by its first byte (serde_json has checked the syntax).
fn kind(raw: &RawValue) -> &'static str {
    match raw.get().trim_start().as_bytes().first() {
        Some(b'"') => "a string",
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

/// Character bounds of a string (JSON Schema's `minLength` and `maxLength` count code points, as
/// `chars()` does).
#[derive(Debug, Clone, Copy)]
struct Length {
    min: usize,
    max: usize,
}

impl Length {
    const ANY: Self = Self {
        min: 0,
        max: usize::MAX,
    };

    fn chars(min: usize, max: usize) -> Self {
        Self { min, max }
    }
}

fn string(raw: &RawValue, at: &str, length: Length) -> Checked<String> {
    let literal = raw.get().trim();
    if !literal.starts_with('"') {
        return Err(Problem::new(at, format!("must be a string, not {}", kind(raw))));
    }
    let text = unescape(literal).ok_or_else(|| Problem {
        syntax: true,
        ..Problem::new(at, "a string escape is not valid UTF-16 (a lone surrogate)")
    })?;
    if length.min > 0 || length.max < usize::MAX {
        // Counting stops past the maximum: a 16 MiB string is not walked to say it is too long.
        let count = text.chars().take(length.max.saturating_add(1)).count();
        if count < length.min || count > length.max {
            let what = if length.min == length.max {
                format!("must be {} characters long", length.min)
            } else if length.max == usize::MAX {
                format!("must be at least {} characters long", length.min)
            } else {
                format!("must be {} to {} characters long", length.min, length.max)
            };
            return Err(Problem::new(at, what));
        }
    }
    Ok(text.into_owned())
}

fn one_of<'a>(raw: &RawValue, at: &str, allowed: &[&'a str]) -> Checked<&'a str> {
    let text = string(raw, at, Length::chars(0, 64))
        .map_err(|_| Problem::new(at, format!("must be one of {}", allowed.join(", "))))?;
    allowed
        .iter()
        .find(|word| **word == text)
        .copied()
        .ok_or_else(|| Problem::new(at, format!("must be one of {}", allowed.join(", "))))
}

/// A JSON Schema `integer` of at least `min`: any number with no fractional part, `3.0` and `1e2`
/// included.
fn integer(raw: &RawValue, at: &str, min: u64) -> Checked<u64> {
    let text = raw.get().trim();
    let wrong = || Problem::new(at, format!("must be an integer of at least {min}, not {}", kind(raw)));
    if kind(raw) != "a number" {
        return Err(wrong());
    }
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the f64 cast below is of a finite whole number from min to u64::MAX, checked before it"
    )]
    let value = if text.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits for u64 is still an integer, just one we cannot hold.
        text.parse::<u64>()
            .map_err(|_| Problem::new(at, format!("must be an integer from {min} to {}", u64::MAX)))?
    } else {
        let number: f64 = text.parse().map_err(|_| wrong())?;
        if !number.is_finite() || number.fract() != 0.0 {
            return Err(Problem::new(
                at,
                format!("must be an integer of at least {min}, not a fraction"),
            ));
        }
        if number < min as f64 {
            return Err(Problem::new(at, format!("must be at least {min}")));
        }
        if number > u64::MAX as f64 {
            return Err(Problem::new(
                at,
                format!("must be an integer from {min} to {}", u64::MAX),
            ));
        }
        number as u64
    };
    if value < min {
        return Err(Problem::new(at, format!("must be at least {min}")));
    }
    Ok(value)
}

fn object<'a, T: Deserialize<'a>>(raw: &'a RawValue, at: &str) -> Checked<T> {
    if kind(raw) != "an object" {
        return Err(Problem::new(at, format!("must be an object, not {}", kind(raw))));
    }
    // The syntax is known good and every known property is a RawValue, so only a repeated known
    // property can fail here; serde's message would quote nothing, but it is not ours to word.
    serde_json::from_str(raw.get()).map_err(|_| Problem::new(at, "repeats a property"))
}

/// The elements of an array, refusing more than `MAX` before reading further.
fn array<'a, const MAX: usize>(raw: &'a RawValue, at: &str) -> Checked<Vec<&'a RawValue>> {
    if kind(raw) != "an array" {
        return Err(Problem::new(at, format!("must be an array, not {}", kind(raw))));
    }
    serde_json::from_str::<Capped<'a, MAX>>(raw.get())
        .map(|capped| capped.0)
        .map_err(|_| Problem::new(at, format!("has more than {MAX} entries")))
}

struct Capped<'a, const MAX: usize>(Vec<&'a RawValue>);

impl<'de: 'a, 'a, const MAX: usize> Deserialize<'de> for Capped<'a, MAX> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Elements<'a, const MAX: usize>(std::marker::PhantomData<&'a ()>);

        impl<'de: 'a, 'a, const MAX: usize> Visitor<'de> for Elements<'a, MAX> {
            type Value = Capped<'a, MAX>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "an array of at most {MAX} entries")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut elements = Vec::new();
                while let Some(element) = seq.next_element::<&'a RawValue>()? {
                    if elements.len() == MAX {
                        return Err(A::Error::custom("too many entries"));
                    }
                    elements.push(element);
                }
                Ok(Capped(elements))
            }
        }

        deserializer.deserialize_seq(Elements::<MAX>(std::marker::PhantomData))
    }
}

/// The text of a JSON string literal whose syntax serde_json has checked (escapes well formed, no
/// raw control characters). Borrows when there is no escape; otherwise unescapes into one
/// allocation, where serde_json would fill a scratch buffer and then copy it. `None` for a lone
/// UTF-16 surrogate, which JSON's grammar admits but no Rust string can hold.
pub(crate) fn unescape(literal: &str) -> Option<Cow<'_, str>> {
    let inner = literal.strip_prefix('"')?.strip_suffix('"')?;
    let Some(first) = inner.find('\\') else {
        return Some(Cow::Borrowed(inner));
    };
    let mut out = String::with_capacity(inner.len());
    out.push_str(&inner[..first]);
    let mut rest = &inner[first..];
    while let Some(escape) = rest.strip_prefix('\\') {
        let (ch, used) = match escape.as_bytes().first()? {
            b'"' => ('"', 1),
            b'\\' => ('\\', 1),
            b'/' => ('/', 1),
            b'b' => ('\u{8}', 1),
            b'f' => ('\u{c}', 1),
            b'n' => ('\n', 1),
            b'r' => ('\r', 1),
            b't' => ('\t', 1),
            b'u' => {
                let high = hex4(escape.get(1..5)?)?;
                match high {
                    0xD800..=0xDBFF => {
                        let low = escape.get(5..7).filter(|u| *u == "\\u").and(escape.get(7..11))?;
                        let low = hex4(low).filter(|low| (0xDC00..=0xDFFF).contains(low))?;
                        #[expect(
                            clippy::arithmetic_side_effects,
                            reason = "high is in D800..=DBFF and low in DC00..=DFFF: at most 0x10FFFF"
                        )]
                        let code = 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00);
                        (char::from_u32(code)?, 11)
                    }
                    0xDC00..=0xDFFF => return None,
                    _ => (char::from_u32(high)?, 5),
                }
            }
            _ => return None,
        };
        out.push(ch);
        let after = escape.get(used..)?;
        let next = after.find('\\').unwrap_or(after.len());
        out.push_str(&after[..next]);
        rest = &after[next..];
    }
    Some(Cow::Owned(out))
}

fn hex4(digits: &str) -> Option<u32> {
    if digits.len() == 4 && digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        u32::from_str_radix(digits, 16).ok()
    } else {
        None
    }
}

/// Finds a top-level-looking `"job_id": "..."` in a body too large to parse. The body is already
/// in memory, so a byte scan is cheap; an occurrence escaped inside a string (`\"job_id\"`) is
/// skipped.
fn sniff_job_id(body: &[u8]) -> Option<String> {
    const KEY: &[u8] = b"\"job_id\"";
    let mut from = 0;
    while let Some(at) = body[from..]
        .windows(KEY.len())
        .position(|w| w == KEY)
        .map(|p| p.saturating_add(from))
    {
        from = at.saturating_add(KEY.len());
        if at.checked_sub(1).and_then(|before| body.get(before)) == Some(&b'\\') {
            continue;
        }
        // A lossy window: an id is short, and a cut character at the end does not matter.
        let window = String::from_utf8_lossy(&body[from..body.len().min(from.saturating_add(200))]);
        let rest = window.as_ref();
        let Some(rest) = rest.trim_start().strip_prefix(':') else {
            continue;
        };
        let Some(rest) = rest.trim_start().strip_prefix('"') else {
            continue;
        };
        let Some(end) = rest.find('"') else { continue };
        let id = &rest[..end];
        if !id.is_empty() && id.len() <= MAX_ID_BYTES && !id.contains('\\') {
            return Some(id.to_owned());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Value, json};
    use std::sync::LazyLock;

    const EXAMPLE_JOB: &str = include_str!("../../../../docs/contract/examples/job.json");
    const EXAMPLE_WITH_PREVIOUS: &str =
        include_str!("../../../../docs/contract/examples/job-with-previous-result.json");
    const EXAMPLE_RESULT: &str = include_str!("../../../../docs/contract/examples/result-completed.json");

    /// The schema the code must agree with, compiled as a producer's validator would.
    static SCHEMA: LazyLock<jsonschema::Validator> = LazyLock::new(|| {
        let schema: Value =
            serde_json::from_str(include_str!("../../../../docs/contract/review-job.v1.schema.json")).unwrap();
        jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .build(&schema)
            .unwrap()
    });

    /// The result schema, which an echoed `previous_result` came from.
    static RESULT_SCHEMA: LazyLock<jsonschema::Validator> = LazyLock::new(|| {
        let schema: Value =
            serde_json::from_str(include_str!("../../../../docs/contract/review-result.v1.schema.json")).unwrap();
        jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .build(&schema)
            .unwrap()
    });

    fn example() -> Value {
        serde_json::from_str(EXAMPLE_JOB).unwrap()
    }

    fn example_with_previous() -> Value {
        serde_json::from_str(EXAMPLE_WITH_PREVIOUS).unwrap()
    }

    fn parse(value: &Value) -> Result<Job, RejectedJob> {
        parse_job(&serde_json::to_vec(value).unwrap(), 1 << 24)
    }

    fn schema_message(value: &Value) -> String {
        match parse(value) {
            Err(RejectedJob {
                problem: InvalidJob::Schema(message),
                ..
            }) => message,
            other => panic!("expected a schema error, got {other:?}"),
        }
    }

    #[test]
    fn the_example_job_is_read_whole() {
        let job = parse(&example()).unwrap();
        assert_eq!(job.job_id, "7b1c2f0e-4f5e-4d59-9b7a-1f0d3c1e9a11");
        assert_eq!(job.repository.platform.as_deref(), Some("github"));
        assert_eq!(
            job.pull_request.title.as_deref(),
            Some("Parse refund amounts from the webhook")
        );
        assert!(job.diff.contains("let password = \"hunter2\";\n"), "escapes are undone");
        assert_eq!(job.options.max_suggestions, Some(10));
        assert_eq!(
            job.created_at.map(|at| at.to_rfc3339()).as_deref(),
            Some("2026-11-26T12:00:00+00:00")
        );
    }

    #[test]
    fn the_example_job_with_a_previous_result_is_valid_and_read_whole() {
        let job = example_with_previous();
        assert!(
            SCHEMA.is_valid(&job),
            "{:?}",
            SCHEMA.iter_errors(&job).map(|e| e.to_string()).collect::<Vec<_>>()
        );
        assert!(
            RESULT_SCHEMA.is_valid(&job["previous_result"]),
            "the echo is a result as the worker published it"
        );
        let previous = parse(&job).unwrap().previous_result.unwrap();
        assert_eq!(
            previous.hunks,
            [HunkRef {
                file: "src/refund.rs".to_owned(),
                fingerprint: "47b5cb8a44ac9b81".to_owned(),
                line: 1,
            }]
        );
        let [suggestion] = previous.suggestions.as_slice() else {
            panic!("{previous:?}")
        };
        assert_eq!((suggestion.line_start, suggestion.line_end), (4, 4));
        assert_eq!(suggestion.severity, Severity::High);
        assert_eq!(suggestion.fingerprint.as_deref(), Some("47b5cb8a44ac9b81"));
        assert!(
            suggestion
                .existing_code
                .as_deref()
                .is_some_and(|code| code.contains(r#"v["amount"]"#))
        );
        assert!(!suggestion.carried);
        assert!(parse(&example()).unwrap().previous_result.is_none());
    }

    #[test]
    fn a_previous_result_of_an_older_worker_is_read_as_nothing_to_carry() {
        let mut job = example();
        // The example result as a worker before coverage and fingerprints wrote it.
        let mut older: Value = serde_json::from_str(EXAMPLE_RESULT).unwrap();
        older.as_object_mut().unwrap().remove("coverage");
        older["suggestions"][0].as_object_mut().unwrap().remove("fingerprint");
        job["previous_result"] = older;
        assert!(SCHEMA.is_valid(&job));
        let previous = parse(&job).unwrap().previous_result.unwrap();
        assert!(previous.hunks.is_empty(), "no coverage, no hunks");
        assert_eq!(previous.suggestions.len(), 1);
        assert_eq!(previous.suggestions[0].fingerprint, None);
        job["previous_result"] =
            json!({"schema": "review-result/v1", "status": "failed", "error": {"kind": "expired"}});
        assert_eq!(parse(&job).unwrap().previous_result, Some(PreviousResult::default()));
    }

    #[test]
    fn a_mistyped_previous_result_is_refused_at_its_place() {
        let cases = [
            (
                "/previous_result",
                json!([]),
                "at /previous_result: must be an object, not an array",
            ),
            (
                "/previous_result/coverage/hunks/0/line",
                json!("1"),
                "at /previous_result/coverage/hunks/0/line: must be an integer of at least 1, not a string",
            ),
            (
                "/previous_result/coverage/hunks/0/line",
                json!(0),
                "at /previous_result/coverage/hunks/0/line: must be at least 1",
            ),
            (
                "/previous_result/suggestions/0/fingerprint",
                json!(7),
                "at /previous_result/suggestions/0/fingerprint: must be a string, not a number",
            ),
            (
                "/previous_result/suggestions/0/carried",
                json!("yes"),
                "at /previous_result/suggestions/0/carried: must be a boolean, not a string",
            ),
            (
                "/previous_result/suggestions/0/severity",
                json!("major"),
                "at /previous_result/suggestions/0/severity: must be one of low, medium, high, critical",
            ),
            (
                "/previous_result/coverage",
                json!(null),
                "at /previous_result/coverage: must be an object, not null",
            ),
        ];
        for (place, value, expected) in cases {
            let mut job = example_with_previous();
            mutate(&mut job, place, Some(value));
            assert!(!SCHEMA.is_valid(&job), "{place}");
            assert_eq!(schema_message(&job), expected);
        }
        let mut job = example_with_previous();
        job["previous_result"]["coverage"]["hunks"][0]
            .as_object_mut()
            .unwrap()
            .remove("fingerprint");
        assert_eq!(
            schema_message(&job),
            "at /previous_result/coverage/hunks/0: `fingerprint` is required"
        );
    }

    #[test]
    fn previous_hunks_and_suggestions_beyond_their_caps_are_refused_like_the_schema_does() {
        let mut job = example_with_previous();
        let hunk = job["previous_result"]["coverage"]["hunks"][0].clone();
        job["previous_result"]["coverage"]["hunks"] = json!(vec![hunk.clone(); MAX_PREVIOUS_HUNKS]);
        assert!(SCHEMA.is_valid(&job));
        assert_eq!(
            parse(&job).unwrap().previous_result.unwrap().hunks.len(),
            MAX_PREVIOUS_HUNKS
        );
        job["previous_result"]["coverage"]["hunks"] = json!(vec![hunk; MAX_PREVIOUS_HUNKS + 1]);
        assert!(!SCHEMA.is_valid(&job));
        assert_eq!(
            schema_message(&job),
            format!("at /previous_result/coverage/hunks: has more than {MAX_PREVIOUS_HUNKS} entries")
        );
        let mut job = example_with_previous();
        let suggestion = job["previous_result"]["suggestions"][0].clone();
        job["previous_result"]["suggestions"] = json!(vec![suggestion; MAX_PREVIOUS_SUGGESTIONS + 1]);
        assert!(!SCHEMA.is_valid(&job));
        assert_eq!(
            schema_message(&job),
            format!("at /previous_result/suggestions: has more than {MAX_PREVIOUS_SUGGESTIONS} entries")
        );
    }

    #[test]
    fn a_job_id_within_128_characters_but_over_128_bytes_is_refused_and_not_echoed_as_an_id() {
        let mut job = example();
        job["job_id"] = json!("é".repeat(125));
        assert!(SCHEMA.is_valid(&job), "the schema counts characters");
        let RejectedJob {
            problem: error,
            job_id: id,
        } = parse(&job).unwrap_err();
        assert!(error.to_string().contains("250 bytes"), "{error}");
        assert_eq!(id, None, "an id the broker cannot carry is no id to answer to");
        job["job_id"] = json!("é".repeat(64));
        assert_eq!(parse(&job).unwrap().job_id.len(), 128);
    }

    #[test]
    fn unknown_properties_are_skipped_whatever_they_hold() {
        let mut job = example();
        job["padding"] = json!(vec![0; 100_000]);
        job["repository"]["extra"] = json!({"deep": [[[[{"a": null}]]]]});
        job["files_hint"] = json!("x".repeat(10_000));
        assert!(parse(&job).is_ok());
    }

    #[test]
    fn an_invalid_job_message_names_the_place_and_never_the_value() {
        let secret = format!("sk-{}", "s".repeat(1 << 20));
        let mut job = example();
        job["pull_request"]["number"] = json!(secret);
        let message = schema_message(&job);
        assert_eq!(
            message,
            "at /pull_request/number: must be an integer of at least 1, not a string"
        );
        let mut job = example();
        job["options"]["min_severity"] = json!(secret);
        let message = schema_message(&job);
        assert!(message.len() < 200 && !message.contains("sk-"), "{message}");
        let error = parse(&json!(secret)).unwrap_err();
        assert!(error.to_string().len() < 200, "{error}");
    }

    #[test]
    fn the_job_id_is_still_returned_when_another_rule_fails() {
        let mut job = example();
        job["repository"] = json!([]);
        let RejectedJob {
            problem: error,
            job_id: id,
        } = parse(&job).unwrap_err();
        assert_eq!(
            error.to_string(),
            "job does not match review-job/v1: at /repository: must be an object, not an array"
        );
        assert_eq!(id.as_deref(), Some("7b1c2f0e-4f5e-4d59-9b7a-1f0d3c1e9a11"));
    }

    #[test]
    fn a_null_is_not_an_absent_property() {
        let mut job = example();
        job["pull_request"]["body"] = Value::Null;
        assert!(!SCHEMA.is_valid(&job));
        assert_eq!(
            schema_message(&job),
            "at /pull_request/body: must be a string, not null"
        );
    }

    #[test]
    fn integers_may_be_written_as_whole_floats_as_json_schema_allows() {
        let mut job = example();
        job["pull_request"]["number"] = serde_json::from_str("4.0e1").unwrap();
        assert_eq!(parse(&job).unwrap().pull_request.number, 40);
        job["pull_request"]["number"] = json!(1.5);
        assert!(schema_message(&job).contains("not a fraction"));
    }

    #[test]
    fn files_and_ignore_paths_beyond_their_caps_are_refused_like_the_schema_does() {
        let mut job = example();
        job["files"] = json!(vec![json!({"path": "a", "patch": ""}); MAX_FILES + 1]);
        assert!(!SCHEMA.is_valid(&job));
        assert_eq!(
            schema_message(&job),
            format!("at /files: has more than {MAX_FILES} entries")
        );
        let mut job = example();
        job["options"]["ignore_paths"] = json!(vec!["*.md"; MAX_IGNORE_PATHS + 1]);
        assert!(!SCHEMA.is_valid(&job));
        assert!(parse(&job).is_err());
    }

    #[test]
    fn a_lone_surrogate_is_not_json() {
        let body = EXAMPLE_JOB.replace("Adds refund parsing.", "\\ud800 alone");
        let rejected = parse_job(body.as_bytes(), 1 << 20).unwrap_err();
        assert!(matches!(rejected.problem, InvalidJob::NotJson(_)), "{rejected}");
        assert!(rejected.job_id.is_some());
    }

    #[test]
    fn a_too_large_job_still_yields_its_id_but_not_an_escaped_one() {
        let body = format!(
            r#"{{"diff": "{} \"job_id\": \"inner\"", "job_id": "big-1"}}"#,
            "x".repeat(5000)
        );
        let rejected = parse_job(body.as_bytes(), 100).unwrap_err();
        assert!(matches!(rejected.problem, InvalidJob::TooLarge { .. }));
        assert_eq!(rejected.job_id.as_deref(), Some("big-1"));
    }

    #[test]
    fn an_unknown_property_nested_millions_deep_is_skipped_without_recursion() {
        // A Value-building parser would recurse (or stop at serde_json's 128 levels); skipping
        // costs a byte per level.
        let depth = 4 << 20;
        let body = EXAMPLE_JOB.replacen(
            '{',
            &format!(r#"{{"padding": {}{}, "#, "[".repeat(depth), "]".repeat(depth)),
            1,
        );
        assert_eq!(parse_job(body.as_bytes(), 1 << 25).unwrap().pull_request.number, 42);
    }

    /// Values a mutated job may get at a property: every JSON type, and strings and numbers at
    /// the edges of the schema's limits.
    fn any_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            prop_oneof![Just(0i64), Just(1), Just(-1), Just(42), Just(i64::MAX)].prop_map(Value::from),
            prop_oneof![Just(1.0f64), Just(1.5), Just(-0.0), Just(100.0)].prop_map(Value::from),
            (
                0usize..=130,
                prop_oneof![Just("a"), Just("é"), Just("\n"), Just("\u{1F600}")]
            )
                .prop_map(|(n, unit)| Value::from(unit.repeat(n))),
            prop_oneof![
                Just("review-job/v1"),
                Just("github"),
                Just("gitea"),
                Just("GitHub"),
                Just("added"),
                Just("renamed"),
                Just("high"),
                Just("2026-11-26T12:00:00Z"),
                Just("2026-11-26T12:00:00+02:00"),
            ]
            .prop_map(Value::from),
            Just(json!([])),
            Just(json!(["*.md", "docs/"])),
            Just(json!([1])),
            Just(json!({})),
            Just(json!({"path": "a.rs", "patch": "@@ -1 +1 @@\n-a\n+b\n"})),
            Just(json!([{"path": "a.rs", "patch": "@@ -1 +1 @@\n-a\n+b\n", "status": "modified"}])),
            Just(json!([{"path": "a.rs"}])),
            Just(json!({"full_name": "a/b"})),
            Just(json!({"number": 3})),
            Just(json!({"file": "a.rs", "fingerprint": "0123456789abcdef", "line": 3})),
            Just(json!([{"file": "a.rs", "fingerprint": "f", "line": 1}])),
            Just(json!({"file": "a.rs", "line_start": 2, "line_end": 2, "severity": "low", "body": "b"})),
            Just(json!({"hunks": []})),
        ]
    }

    const PLACES: &[&str] = &[
        "/schema",
        "/job_id",
        "/repository",
        "/repository/full_name",
        "/repository/platform",
        "/repository/language",
        "/pull_request",
        "/pull_request/number",
        "/pull_request/title",
        "/pull_request/body",
        "/diff",
        "/files",
        "/files/0",
        "/files/0/path",
        "/files/0/status",
        "/files/0/patch",
        "/options",
        "/options/max_suggestions",
        "/options/min_severity",
        "/options/ignore_paths",
        "/options/ignore_paths/0",
        "/created_at",
        "/unknown",
        "/previous_result",
        "/previous_result/status",
        "/previous_result/suggestions",
        "/previous_result/suggestions/0",
        "/previous_result/suggestions/0/line_start",
        "/previous_result/suggestions/0/severity",
        "/previous_result/suggestions/0/body",
        "/previous_result/suggestions/0/fingerprint",
        "/previous_result/suggestions/0/carried",
        "/previous_result/coverage",
        "/previous_result/coverage/hunks",
        "/previous_result/coverage/hunks/0",
        "/previous_result/coverage/hunks/0/file",
        "/previous_result/coverage/hunks/0/line",
    ];

    /// Sets (or with `None` removes) the value at `place`, when its parent exists.
    fn mutate(job: &mut Value, place: &str, value: Option<Value>) {
        let (parent, key) = place.rsplit_once('/').unwrap();
        let Some(parent) = job.pointer_mut(parent) else { return };
        match (parent, value) {
            (Value::Object(map), Some(value)) => {
                map.insert(key.to_owned(), value);
            }
            (Value::Object(map), None) => {
                map.remove(key);
            }
            (Value::Array(items), Some(value)) => {
                if let Some(slot) = key.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                    *slot = value;
                }
            }
            (Value::Array(items), None) => {
                items.retain({
                    let mut at = 0;
                    move |_| {
                        at += 1;
                        key.parse::<usize>().ok() != Some(at - 1)
                    }
                });
            }
            _ => {}
        }
    }

    /// What the worker adds to the schema, which JSON Schema cannot say: `job_id` in bytes, and
    /// `created_at` as a real date-time (the schema's `format` is an annotation).
    fn beyond_the_schema(job: &Value) -> bool {
        let id_fits = job["job_id"].as_str().is_none_or(|id| id.len() <= MAX_ID_BYTES);
        let date_reads = job
            .get("created_at")
            .and_then(Value::as_str)
            .is_none_or(|at| at.parse::<DateTime<FixedOffset>>().is_ok());
        id_fits && date_reads
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(64),
            ..ProptestConfig::default()
        })]

        #[test]
        fn the_code_accepts_exactly_the_jobs_the_schema_accepts(
            mutations in prop::collection::vec(
                (prop::sample::select(PLACES), prop::option::weighted(0.8, any_value())),
                1..4,
            ),
            with_files in any::<bool>(),
            with_previous in any::<bool>(),
        ) {
            let mut job = if with_previous { example_with_previous() } else { example() };
            if with_files {
                job["files"] = json!([{"path": "src/a.rs", "patch": "@@ -1 +1 @@\n-a\n+b\n"}]);
                job["options"]["ignore_paths"] = json!(["vendor/"]);
            }
            for (place, value) in mutations {
                mutate(&mut job, place, value);
            }
            let expected = SCHEMA.is_valid(&job) && beyond_the_schema(&job);
            let got = parse(&job);
            prop_assert_eq!(got.is_ok(), expected, "{:?} for {}", got.err().map(|e| e.to_string()), job);
            if let Err(error) = got {
                prop_assert!(error.to_string().len() <= 300, "{}", error);
            }
        }

        #[test]
        fn unescaping_agrees_with_serde_json(text in any::<String>(), escape_all in any::<bool>()) {
            let literal = if escape_all {
                // Every character as \uXXXX, non-BMP ones as surrogate pairs.
                let mut literal = String::from('"');
                for unit in text.encode_utf16() {
                    literal.push_str(&format!("\\u{unit:04x}"));
                }
                literal.push('"');
                literal
            } else {
                serde_json::to_string(&text).unwrap()
            };
            let unescaped = unescape(&literal);
            prop_assert_eq!(unescaped.as_deref(), Some(text.as_str()));
        }

        #[test]
        fn no_body_makes_parsing_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_job(&body, 1 << 20);
        }

        #[test]
        fn no_json_text_makes_parsing_panic(value in any_value(), place in prop::sample::select(PLACES)) {
            let mut job = example();
            mutate(&mut job, place, Some(value));
            let text = serde_json::to_string(&job).unwrap();
            // Cut anywhere on a character boundary: unterminated strings, objects, escapes.
            for cut in (0..text.len()).step_by(7).filter(|at| text.is_char_boundary(*at)) {
                let _ = parse_job(&text.as_bytes()[..cut], 1 << 20);
            }
        }
    }

    #[test]
    fn lone_surrogates_are_refused_by_the_unescaper() {
        for literal in [r#""\ud800""#, r#""\udc00x""#, r#""\ud800\u0041""#, r#""\ud800\n""#] {
            assert_eq!(unescape(literal), None, "{literal}");
        }
        assert_eq!(unescape(r#""\ud83d\ude00""#).as_deref(), Some("\u{1F600}"));
    }
}
