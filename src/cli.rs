//! The command line: what each command is for (`--help`), and the commands that are not the
//! worker itself (`review`, `submit`, `sim`, `check`) as library functions `main` can call.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use review_core::render::{self, Links};

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
    /// (JSON, or the PR comment with --format markdown); exits 1 when the review failed.
    Review(ReviewCommand),
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

/// `review`: what to review, and how to print the result.
#[derive(Debug, Args)]
pub struct ReviewCommand {
    #[command(flatten)]
    pub review: ReviewArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    /// The PR's web URL, for line links in markdown and text output (GitHub, GitLab, Gitea,
    /// Bitbucket Cloud), e.g. https://github.com/acme/api/pull/42.
    #[arg(long, value_name = "URL", requires = "head_sha")]
    pub pr_url: Option<String>,
    /// The commit the line links point at: the PR's head.
    #[arg(long, value_name = "SHA", requires = "pr_url")]
    pub head_sha: Option<String>,
}

impl ReviewCommand {
    /// The line links `--pr-url` and `--head-sha` give; a URL or sha they cannot be built from
    /// is an error rather than a comment silently without links.
    pub fn links(&self) -> anyhow::Result<Option<Links>> {
        let (Some(url), Some(sha)) = (&self.pr_url, &self.head_sha) else {
            return Ok(None);
        };
        Links::new(url, sha, None).map(Some).with_context(|| {
            format!(
                "no line links from --pr-url {url} and --head-sha {sha}: the URL must be a pull \
                 request's on GitHub, GitLab, Gitea or Bitbucket Cloud, the sha a commit id"
            )
        })
    }
}

/// How `review` and `submit --wait` print a result.
#[derive(Debug, Args)]
pub struct OutputArgs {
    /// `json`: the review-result/v1 message, for scripts. `markdown`: the PR comment a team would
    /// see (summary, suggestions by file with line links, suggested changes, what was read).
    /// `text`: the same for a terminal.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    pub format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Json,
    Markdown,
    Text,
}

pub use crate::submit::Submitted;

/// `result` as `format` shows it. `pr` (`owner/repo#42: title`) heads it when several results are
/// printed one after the other.
pub fn show(result: &ReviewResult, links: Option<&Links>, pr: Option<&str>, format: Format) -> anyhow::Result<String> {
    let mut shown = match format {
        Format::Json => serde_json::to_string_pretty(result).context("write the result as JSON")?,
        Format::Markdown => match pr {
            Some(pr) => format!("# {}\n\n{}", render::markdown_line(pr), render::markdown(result, links)),
            None => render::markdown(result, links),
        },
        Format::Text => match pr {
            Some(pr) => format!("== {} ==\n{}", render::text_line(pr), render::text(result, links)),
            None => render::text(result, links),
        },
    };
    shown.truncate(shown.trim_end().len());
    Ok(shown)
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
    #[command(flatten)]
    pub output: OutputArgs,
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
    let unfinished = match executor
        .review(&job, &settings.review, &mut crate::progress::Progress::default())
        .await
    {
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

/// One line on what a review read, for a person at a terminal (`review` prints it on stderr):
/// `coverage: Reviewed 118 of 131 files (41,210 of 45,002 added lines, 91.6%) in 3 calls; …`.
pub fn coverage_line(result: &ReviewResult) -> String {
    match &result.coverage {
        Some(coverage) => format!("coverage: {}", review_core::render::coverage_line(coverage)),
        None => "coverage: n/a (this review reports no coverage)".to_owned(),
    }
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
pub async fn submit(settings: &Settings, args: &SubmitArgs) -> anyhow::Result<Vec<Submitted>> {
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
    use review_core::contract::Coverage;

    fn result(coverage: Option<Coverage>) -> ReviewResult {
        let mut result: ReviewResult =
            serde_json::from_str(include_str!("../docs/contract/examples/result-completed.json")).unwrap();
        result.coverage = coverage;
        result
    }

    #[test]
    fn the_coverage_line_is_the_rendered_sentence_after_a_prefix_the_benchmark_finds() {
        let coverage = Coverage {
            files_reviewable: 131,
            files_reviewed: 118,
            lines_reviewable: 45_002,
            lines_reviewed: 41_210,
            calls: 3,
            ..Coverage::default()
        };
        let line = coverage_line(&result(Some(coverage.clone())));
        assert_eq!(
            line,
            format!("coverage: {}", review_core::render::coverage_line(&coverage))
        );
        assert!(line.contains("41,210 of 45,002"), "{line}");
    }

    #[test]
    fn a_result_without_coverage_says_so() {
        assert_eq!(
            coverage_line(&result(None)),
            "coverage: n/a (this review reports no coverage)"
        );
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
