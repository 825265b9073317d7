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

use super::{FileStatusHint, JOB_SCHEMA_ID, Job, JobFile, PullRequest, Repository, ReviewOptions, Severity};

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

/// Parses and validates a job body. On failure, also returns the `job_id` when one can be read and
/// is one the broker can carry, so that the producer still hears about its job.
pub(crate) fn parse_job(body: &[u8], max_bytes: usize) -> Result<Job, (InvalidJob, Option<String>)> {
    if body.len() > max_bytes {
        // Too large to parse safely; a cheap scan may still find the id near the start.
        return Err((
            InvalidJob::TooLarge {
                size: body.len(),
                limit: max_bytes,
            },
            sniff_job_id(body),
        ));
    }
    let text = std::str::from_utf8(body).map_err(|e| (InvalidJob::NotUtf8(e), None))?;
    // A syntax check of the whole body that allocates nothing but a byte per nesting level.
    let whole: &RawValue = serde_json::from_str(text).map_err(|e| (InvalidJob::NotJson(e), None))?;
    let fields: JobFields<'_> =
        object(whole, "/").map_err(|problem| (InvalidJob::Schema(problem.to_string()), None))?;
    let job_id = fields.job_id.0.and_then(|raw| job_id(raw).ok());
    validate(&fields).map_err(|problem| (problem.into_invalid(), job_id))
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
    })
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
    while let Some(at) = body[from..].windows(KEY.len()).position(|w| w == KEY).map(|p| p + from) {
        from = at + KEY.len();
        if at > 0 && body[at - 1] == b'\\' {
            continue;
        }
        // A lossy window: an id is short, and a cut character at the end does not matter.
        let window = String::from_utf8_lossy(&body[from..body.len().min(from + 200)]);
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
