//! The command line: what each command is for (`--help`), and the commands that are not the
//! worker itself (`review`, `submit`, `sim`, `check`) as library functions `main` can call.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::settings::Settings;
use review_core::contract::{Job, ReviewResult};

#[derive(Debug, Parser)]
#[command(
    name = "review-worker",
    version,
    about = "Reviews pull requests with GLM models (Z.AI Coding Plan or pay-per-token) from RabbitMQ jobs",
    long_about = "Reviews pull requests with GLM models.\n\n\
        The API publishes PR-review jobs to RabbitMQ (exchange `review`, routing key `job.created`); \
        `review-worker run` reviews each diff through an OpenAI-compatible endpoint and publishes the \
        review to `review.results`.\n\n\
        Configuration comes from the environment (see .env.example), optionally layered over a TOML \
        file (--config). The Fixed Mode triple API_LLM_PROVIDER_MODEL, API_OPENAI_FORCE_BASE_URL and \
        API_OPEN_AI_API_KEY is required by `run`, `review` and `check`."
)]
pub struct Cli {
    /// A TOML file with settings (same names as the variables, lower case); the environment wins.
    #[arg(long, global = true, env = "REVIEW_WORKER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the worker: consume review jobs from RabbitMQ and publish results until SIGTERM/SIGINT.
    Run,
    /// Review a local diff once against the configured provider (no broker) and print the result
    /// JSON; exits 1 when the review failed.
    Review(ReviewArgs),
    /// Publish job files to RabbitMQ like the API does; with --wait, print each result.
    Submit(SubmitArgs),
    /// Run the Z.AI simulator: an OpenAI-compatible stand-in for tests, demos and rehearsals.
    Sim(zai_sim::SimArgs),
    /// Test the provider settings (the product's "Test & save"): key, endpoint and model.
    Check,
}

#[derive(Debug, Args)]
pub struct ReviewArgs {
    /// The unified diff to review (`git diff base...head > pr.diff`), or `-` for stdin.
    #[arg(value_name = "DIFF_FILE|-")]
    pub diff: String,
    /// Repository name shown to the model.
    #[arg(long, default_value = "local/repository")]
    pub repository: String,
    /// Pull request title shown to the model.
    #[arg(long)]
    pub title: Option<String>,
    /// Pull request number.
    #[arg(long, default_value_t = 1)]
    pub pr: u64,
    /// Team rules to apply on top of the default review.
    #[arg(long)]
    pub instructions: Option<String>,
    /// The result of this PR's previous review (review-result/v1 JSON, as this command printed
    /// it), sent as the job's `previous_result`: hunks unchanged since are not reviewed again.
    #[arg(long, value_name = "RESULT_JSON")]
    pub previous: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// Job files (review-job/v1 JSON), or `-` for one job on stdin.
    #[arg(required = true, value_name = "JOB_JSON|-")]
    pub jobs: Vec<String>,
    /// Wait for each job's result on a private reply_to queue and print it.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits for all results, in seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
}

/// `review-worker review`: one job built from a local diff, reviewed without the broker.
///
/// The diff is read as bytes: a repository with a few Latin-1 files still produces a diff worth
/// reviewing, so invalid UTF-8 is replaced with U+FFFD and the summary says where.
pub async fn review_once(settings: &Settings, args: &ReviewArgs) -> anyhow::Result<ReviewResult> {
    let bytes = if args.diff == "-" {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("read the diff from stdin")?;
        bytes
    } else {
        std::fs::read(&args.diff).with_context(|| format!("read {}", args.diff))?
    };
    let invalid = bytes.utf8_chunks().filter(|chunk| !chunk.invalid().is_empty()).count();
    let diff = String::from_utf8_lossy(&bytes);
    let job = local_job(args, &diff)?;
    let executor = crate::app::build_executor(settings)?;
    let started = chrono::Utc::now();
    let unfinished = match executor.review(&job).await {
        Ok(completed) => {
            let mut result = crate::worker::completed_result(&job, &completed, 1, started);
            if invalid > 0 {
                let note = lossy_note(&job.diff, invalid);
                result.summary = Some(match result.summary.take().filter(|s| !s.trim().is_empty()) {
                    Some(summary) => format!("{summary}\n\n{note}"),
                    None => note,
                });
            }
            eprintln!("{}", coverage_line(&result));
            return Ok(result);
        }
        Err(unfinished) => unfinished,
    };
    // The same decision table as the worker's, for a job seen for the first time.
    let facts = crate::fate::Facts {
        counters: crate::fate::Counters::default(),
        age: None,
        not_before_in: None,
        now: chrono::Utc::now(),
    };
    match crate::fate::decide(crate::fate::Event::Unfinished(&unfinished), &facts, &settings.review) {
        crate::fate::Fate::DeadLetter {
            message,
            attempts,
            result: Some(kind),
            ..
        } => Ok(ReviewResult::failed(&job.job_id, kind, message, attempts)),
        _ => anyhow::bail!("the provider cannot review now: {unfinished}"),
    }
}

/// The job for a local diff, written as the producer's JSON and read by the worker's own
/// parser, so that every job field (`previous_result` included) means here what it means on the
/// broker.
fn local_job(args: &ReviewArgs, diff: &str) -> anyhow::Result<Job> {
    let previous_result = args
        .previous
        .as_ref()
        .map(|path| {
            let text = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
            serde_json::from_slice::<serde_json::Value>(&text).with_context(|| {
                format!(
                    "{} is not JSON (a review-result/v1 as `review` prints it)",
                    path.display()
                )
            })
        })
        .transpose()?;
    let mut job = serde_json::json!({
        "schema": "review-job/v1",
        "job_id": format!("local-{}", std::process::id()),
        "repository": {"full_name": args.repository},
        "pull_request": {"number": args.pr},
        "diff": diff,
    });
    if let Some(title) = &args.title {
        job["pull_request"]["title"] = title.as_str().into();
    }
    if let Some(instructions) = &args.instructions {
        job["options"] = serde_json::json!({"instructions": instructions});
    }
    if let Some(previous) = previous_result {
        job["previous_result"] = previous;
    }
    let body = serde_json::to_vec(&job).context("write the job")?;
    // A local diff has no broker's size limit; the job's other rules hold.
    review_core::contract::parse_job(&body, body.len())
        .map_err(|rejected| anyhow::anyhow!("the job cannot be reviewed: {rejected}"))
}

/// One line on what a review read, for a person at a terminal:
/// `coverage: 118/131 files, 41,210/45,002 added lines (91.6%) in 3 calls; skipped: 4 lockfile, 7 budget`.
pub fn coverage_line(result: &ReviewResult) -> String {
    let Some(coverage) = &result.coverage else {
        return "coverage: n/a (this review reports no coverage)".to_owned();
    };
    let percent = if coverage.lines_reviewable == 0 {
        100.0
    } else {
        coverage.lines_reviewed as f64 * 100.0 / coverage.lines_reviewable as f64
    };
    let mut line = format!(
        "coverage: {}/{} files, {}/{} added lines ({percent:.1}%) in {} call{}",
        coverage.files_reviewed,
        coverage.files_reviewable,
        thousands(coverage.lines_reviewed),
        thousands(coverage.lines_reviewable),
        coverage.calls,
        if coverage.calls == 1 { "" } else { "s" }
    );
    if coverage.lines_carried > 0 {
        line.push_str(&format!(", {} carried forward", thousands(coverage.lines_carried)));
    }
    // Files by reason, in the order reasons first appear.
    let mut reasons: Vec<(&str, usize)> = Vec::new();
    for skipped in &coverage.skipped {
        let reason = skipped.reason.as_str();
        match reasons.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, n)) => *n = n.saturating_add(1),
            None => reasons.push((reason, 1)),
        }
    }
    if !reasons.is_empty() {
        let listed: Vec<String> = reasons.iter().map(|(reason, n)| format!("{n} {reason}")).collect();
        line.push_str("; skipped: ");
        line.push_str(&listed.join(", "));
    }
    line
}

/// `41210` as `41,210`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len().saturating_add(digits.len() / 3));
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len().saturating_sub(i)) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Says that `invalid` byte sequences were replaced and in which files (up to ten) U+FFFD now
/// stands.
fn lossy_note(diff: &str, invalid: usize) -> String {
    let files: Vec<String> = review_core::diff::parse_unified(diff)
        .unwrap_or_default()
        .iter()
        .filter(|file| file.path.contains('\u{FFFD}') || file.lines().any(|line| line.text.contains('\u{FFFD}')))
        .map(|file| file.path.to_string())
        .collect();
    let place = match files.len() {
        0 => String::new(),
        1..=10 => format!(" in {}", files.join(", ")),
        more => format!(
            " in {} and {} more file(s)",
            files[..10].join(", "),
            more.saturating_sub(10)
        ),
    };
    format!(
        "Note: the diff is not valid UTF-8: {invalid} byte sequence(s) were read as U+FFFD{place}; \
         those lines were reviewed as decoded."
    )
}

/// `review-worker submit`.
pub async fn submit(settings: &Settings, args: &SubmitArgs) -> anyhow::Result<Vec<ReviewResult>> {
    let wait = args.wait.then(|| Duration::from_secs(args.timeout));
    crate::submit::submit(&settings.broker, &args.jobs, wait).await
}

/// `review-worker check`: prints what it found and says whether the provider is usable.
#[allow(clippy::print_stdout, reason = "the report is the command's output")]
pub async fn check(settings: &Settings) -> anyhow::Result<ExitCode> {
    let provider_settings = settings.require_provider()?;
    let provider = crate::provider::Provider::new(provider_settings)?;
    println!("provider:  {}", provider.name());
    println!(
        "plan:      {} (cap {} in flight for the whole deployment)",
        settings.limits.plan.as_str(),
        settings.limits.max_concurrent_requests
    );
    println!("endpoint:  {}", provider_settings.display_base_url());
    println!("model:     {}", provider.model());
    match crate::check::probe(&provider).await {
        Ok(probe) => {
            let listed = match probe.model_listed {
                Some(true) => "listed by the endpoint",
                Some(false) => "NOT listed by the endpoint",
                None => "the endpoint lists no models",
            };
            println!("models:    {} ({listed})", probe.models.len());
            println!("latency:   {} ms", probe.latency.as_millis());
            println!("result:    usable");
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            println!(
                "result:    NOT usable ({}, code {}): {error}",
                error.meaning(),
                error.code().as_deref().unwrap_or("-")
            );
            Ok(ExitCode::from(3))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use review_core::contract::{Coverage, SkipReason, SkippedFile};

    fn result(coverage: Option<Coverage>) -> ReviewResult {
        let mut result: ReviewResult =
            serde_json::from_str(include_str!("../docs/contract/examples/result-completed.json")).unwrap();
        result.coverage = coverage;
        result
    }

    #[test]
    fn the_coverage_line_counts_files_lines_calls_and_skips_by_reason() {
        let skipped = |file: &str, reason| SkippedFile {
            file: file.to_owned(),
            reason,
            lines: 10,
            clipped: false,
        };
        let line = coverage_line(&result(Some(Coverage {
            files_changed: 140,
            files_reviewable: 131,
            files_reviewed: 118,
            lines_reviewable: 45_002,
            lines_reviewed: 41_210,
            lines_carried: 0,
            calls: 3,
            skipped: vec![
                skipped("Cargo.lock", SkipReason::Lockfile),
                skipped("big.rs", SkipReason::Budget),
                skipped("yarn.lock", SkipReason::Lockfile),
            ],
            hunks: Vec::new(),
        })));
        assert_eq!(
            line,
            "coverage: 118/131 files, 41,210/45,002 added lines (91.6%) in 3 calls; skipped: 2 lockfile, 1 budget"
        );
    }

    #[test]
    fn a_result_without_coverage_says_so() {
        assert_eq!(
            coverage_line(&result(None)),
            "coverage: n/a (this review reports no coverage)"
        );
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn the_local_job_carries_the_previous_result_and_the_flags() {
        let dir = tempfile::tempdir().unwrap();
        let previous = dir.path().join("previous.json");
        std::fs::write(
            &previous,
            include_str!("../docs/contract/examples/result-completed.json"),
        )
        .unwrap();
        let args = ReviewArgs {
            diff: "-".to_owned(),
            repository: "acme/api".to_owned(),
            title: Some("Add login".to_owned()),
            pr: 7,
            instructions: Some("No unwrap.".to_owned()),
            previous: Some(previous),
        };
        let diff = "diff --git a/x.rs b/x.rs\n--- a/x.rs\n+++ b/x.rs\n@@ -1,0 +1,1 @@\n+fn x() {}\n";
        let job = local_job(&args, diff).unwrap();
        assert_eq!(job.repository.full_name, "acme/api");
        assert_eq!(job.pull_request.number, 7);
        assert_eq!(job.pull_request.title.as_deref(), Some("Add login"));
        assert_eq!(job.options.instructions.as_deref(), Some("No unwrap."));
        assert_eq!(job.diff, diff);
        let args = ReviewArgs {
            previous: Some(dir.path().join("missing.json")),
            ..args
        };
        assert!(local_job(&args, diff).is_err());
    }
}
