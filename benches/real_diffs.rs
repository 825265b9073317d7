//! Reviews of real diffs (issue 10, item 8): the real `review-worker review` binary (no broker)
//! against the simulator, on the diffs `scripts/real-diffs.sh` builds from published crates.
//!
//! Per diff: files and added lines reviewable vs reviewed (the result's `coverage`), calls,
//! provider requests, prompt tokens and the worker's wall time. Then a sequence of pushes on one
//! PR, each changing about a fifth of the hunks (one added line altered per chosen hunk, seeded):
//! push 1 reviewed whole, each later push once with `previous_result` (carry-forward) and once
//! whole; the totals of both, their ratio, and whether the last carry-forward result still holds
//! the whole review's suggestions (`carried: true` for those of unchanged hunks).
//!
//! `scripts/bench.sh real-diffs` (builds the diffs first), or `cargo bench --bench real_diffs --
//! [--dir target/real-diffs] [--push-diff NAME] [--pushes 5] [--share 0.2] [--seed 10]
//! [--plan coding|developer] [--bin PATH]`. Settings such as `API_REVIEW_MAX_CALLS` pass through
//! the environment to the worker. A result without `coverage` (a worker before it) prints n/a.

#![allow(
    clippy::unwrap_used,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation,
    reason = "test and benchmark code: a panic is a failed run"
)]
#![allow(clippy::print_stdout, reason = "a benchmark prints its figures")]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::Value;
use zai_sim::{SimArgs, SimHandle};

/// The benchmark's options (after `cargo bench --bench real_diffs --`).
#[derive(Debug, clap::Parser)]
struct Options {
    /// Where `scripts/real-diffs.sh` put the diffs.
    #[arg(long, default_value = "target/real-diffs")]
    dir: PathBuf,
    /// The diff (by name prefix) to run the push sequence on; the smallest by default.
    #[arg(long)]
    push_diff: Option<String>,
    #[arg(long, default_value_t = 5)]
    pushes: usize,
    /// The share of hunks each push changes.
    #[arg(long, default_value_t = 0.2)]
    share: f64,
    #[arg(long, default_value_t = 10)]
    seed: u64,
    /// `coding` (the Coding Plan endpoint) or `developer` (pay-per-token).
    #[arg(long, default_value = "coding", value_parser = ["coding", "developer"])]
    plan: String,
    /// The worker binary to run.
    #[arg(long, default_value = env!("CARGO_BIN_EXE_review-worker"))]
    bin: PathBuf,
    /// Passed by `cargo bench` to every bench binary.
    #[arg(long, hide = true)]
    bench: bool,
}

impl Options {
    fn developer(&self) -> bool {
        self.plan == "developer"
    }
}

/// One `review-worker review` run.
struct Run {
    result: Value,
    coverage_line: String,
    seconds: f64,
}

impl Run {
    fn coverage(&self, field: &str) -> Option<u64> {
        self.result.get("coverage")?.get(field)?.as_u64()
    }

    fn usage(&self, field: &str) -> u64 {
        self.result["usage"][field].as_u64().unwrap_or(0)
    }

    /// Review calls: the coverage's count when there is one, else provider requests.
    fn calls(&self) -> u64 {
        self.coverage("calls").unwrap_or_else(|| self.usage("requests"))
    }

    /// Whether no file was left out for want of calls (the PR fits the call limit).
    fn fits(&self) -> Option<bool> {
        let skipped = self.result.get("coverage")?.get("skipped")?.as_array()?;
        Some(!skipped.iter().any(|s| s["reason"] == "max_calls"))
    }

    fn suggestions(&self) -> Vec<&Value> {
        self.result["suggestions"]
            .as_array()
            .map(|s| s.iter().collect())
            .unwrap_or_default()
    }
}

struct Worker<'a> {
    bin: &'a Path,
    base_url: String,
    key: &'static str,
    scratch: &'a Path,
}

impl Worker<'_> {
    async fn review(&self, name: &str, diff: &Path, previous: Option<&Path>) -> Run {
        let mut command = tokio::process::Command::new(self.bin);
        command
            .arg("review")
            .arg(diff)
            .args(["--repository", &format!("crates/{name}"), "--title", name])
            .env("API_LLM_PROVIDER_MODEL", "glm-5.1")
            .env("API_OPENAI_FORCE_BASE_URL", &self.base_url)
            .env("API_OPEN_AI_API_KEY", self.key)
            .env("API_LOG_LEVEL", "warn")
            .kill_on_drop(true);
        if let Some(previous) = previous {
            command.arg("--previous").arg(previous);
        }
        let started = Instant::now();
        let output = command.output().await.expect("run review-worker review");
        let seconds = started.elapsed().as_secs_f64();
        let stderr = String::from_utf8_lossy(&output.stderr);
        let result: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!(
                "review-worker review {} printed no result ({e}); stderr:\n{stderr}",
                diff.display()
            )
        });
        let coverage_line = stderr
            .lines()
            .rev()
            .find(|l| l.starts_with("coverage:"))
            .unwrap_or("coverage: n/a (no coverage line)")
            .to_owned();
        Run {
            result,
            coverage_line,
            seconds,
        }
    }

    /// Keeps a result where `--previous` can read it.
    fn keep(&self, name: &str, run: &Run) -> PathBuf {
        let path = self.scratch.join(format!("{name}.result.json"));
        std::fs::write(&path, serde_json::to_vec(&run.result).unwrap()).unwrap();
        path
    }
}

fn ratio(part: Option<u64>, whole: Option<u64>) -> String {
    match (part, whole) {
        (Some(part), Some(whole)) if whole > 0 => format!("{:.1}%", part as f64 * 100.0 / whole as f64),
        (Some(_), Some(_)) => "-".to_owned(),
        _ => "n/a".to_owned(),
    }
}

fn either(value: Option<u64>) -> String {
    value.map_or_else(|| "n/a".to_owned(), |v| v.to_string())
}

// ---- The push sequence ------------------------------------------------------------------------

/// A hunk of a diff's lines: where its header is and which of its lines are added.
struct Hunk {
    added: Vec<usize>,
}

/// The hunks of a unified diff, by line index.
fn hunks(lines: &[String]) -> Vec<Hunk> {
    let mut hunks = Vec::new();
    let mut in_hunk = false;
    for (i, line) in lines.iter().enumerate() {
        if line.starts_with("diff --git ") {
            in_hunk = false;
        } else if line.starts_with("@@ ") {
            in_hunk = true;
            hunks.push(Hunk { added: Vec::new() });
        } else if in_hunk && line.starts_with('+') {
            hunks.last_mut().unwrap().added.push(i);
        }
    }
    hunks
}

/// The next push: `share` of the hunks that add lines, chosen by `rng`, each with its first
/// added line altered (the header's counts stay right). Returns the diff and how many hunks
/// changed.
fn next_push(diff: &str, share: f64, push: usize, rng: &mut fastrand::Rng) -> (String, usize) {
    let mut lines: Vec<String> = diff.split('\n').map(str::to_owned).collect();
    let changeable: Vec<usize> = hunks(&lines)
        .into_iter()
        .filter_map(|h| h.added.first().copied())
        .collect();
    let count = ((changeable.len() as f64 * share).round() as usize).clamp(1, changeable.len().max(1));
    let mut order = changeable;
    rng.shuffle(&mut order);
    for &at in order.iter().take(count) {
        let line = &mut lines[at];
        // Before a CR, so a CRLF file keeps its line ends.
        let end = if line.ends_with('\r') {
            line.len() - 1
        } else {
            line.len()
        };
        line.insert_str(end, &format!(" // push {push}"));
    }
    (lines.join("\n"), count.min(order.len()))
}

/// Hunks whose text differs between two pushes of the same diff (same hunks, same order).
fn changed_hunks(before: &str, after: &str) -> usize {
    let (before, after): (Vec<String>, Vec<String>) = (
        before.split('\n').map(str::to_owned).collect(),
        after.split('\n').map(str::to_owned).collect(),
    );
    assert_eq!(before.len(), after.len(), "a push keeps the diff's lines");
    hunks(&after)
        .iter()
        .filter(|h| h.added.iter().any(|&i| before[i] != after[i]))
        .count()
}

/// What a suggestion says, wherever it was found.
fn said(suggestion: &Value) -> (String, u64, String) {
    (
        suggestion["file"].as_str().unwrap_or("").to_owned(),
        suggestion["line_start"].as_u64().unwrap_or(0),
        suggestion["title"]
            .as_str()
            .or(suggestion["body"].as_str())
            .unwrap_or("")
            .to_owned(),
    )
}

async fn push_sequence(worker: &Worker<'_>, opts: &Options, name: &str, diff_path: &Path) -> bool {
    let original = std::fs::read_to_string(diff_path).unwrap();
    let pushes_dir = worker.scratch.join("pushes");
    std::fs::create_dir_all(&pushes_dir).unwrap();
    let mut rng = fastrand::Rng::with_seed(opts.seed);
    let total_hunks = hunks(&original.split('\n').map(str::to_owned).collect::<Vec<_>>())
        .iter()
        .filter(|h| !h.added.is_empty())
        .count();
    println!(
        "\nPush sequence on {name}: {} pushes, each changing {:.0}% of its {total_hunks} hunks with added lines (seed {})",
        opts.pushes,
        opts.share * 100.0,
        opts.seed
    );
    let mut diffs = vec![original];
    for push in 2..=opts.pushes {
        let previous = diffs.last().unwrap();
        let (next, changed) = next_push(previous, opts.share, push, &mut rng);
        // The generator's own check: the hunks it says it changed, and only those, differ; the
        // push is still a diff the worker reads with the same files.
        assert_eq!(changed_hunks(previous, &next), changed, "push {push}");
        let before = review_core::diff::parse_unified(previous).unwrap().len();
        let after = review_core::diff::parse_unified(&next).expect("a push is still a diff");
        assert_eq!(after.len(), before, "push {push} keeps the files");
        println!("  push {push}: {changed} of {total_hunks} hunks changed");
        diffs.push(next);
    }
    let paths: Vec<PathBuf> = diffs
        .iter()
        .enumerate()
        .map(|(i, diff)| {
            let path = pushes_dir.join(format!("push-{}.diff", i + 1));
            std::fs::write(&path, diff).unwrap();
            path
        })
        .collect();

    println!(
        "\n{:<6} | {:>6} {:>12} {:>9} {:>8} | {:>6} {:>12} {:>9} {:>8}",
        "push", "calls", "prompt tok", "carried", "time s", "calls", "prompt tok", "lines", "time s"
    );
    println!("{:<6} | {:^38} | {:^38}", "", "with previous_result", "each push whole");
    let (mut carry_calls, mut carry_tokens, mut whole_calls, mut whole_tokens) = (0, 0, 0, 0);
    let mut previous: Option<PathBuf> = None;
    let (mut last_carry, mut last_whole) = (None, None);
    for (i, path) in paths.iter().enumerate() {
        let push = i + 1;
        let whole = worker.review(name, path, None).await;
        // Push 1 has nothing to carry: its whole review starts both chains.
        let carry = if push == 1 {
            None
        } else {
            Some(worker.review(name, path, previous.as_deref()).await)
        };
        let chained = carry.as_ref().unwrap_or(&whole);
        previous = Some(worker.keep(&format!("push-{push}"), chained));
        carry_calls += chained.calls();
        carry_tokens += chained.usage("prompt_tokens");
        whole_calls += whole.calls();
        whole_tokens += whole.usage("prompt_tokens");
        println!(
            "{:<6} | {:>6} {:>12} {:>9} {:>8.2} | {:>6} {:>12} {:>9} {:>8.2}",
            push,
            chained.calls(),
            chained.usage("prompt_tokens"),
            either(chained.coverage("lines_carried")),
            chained.seconds,
            whole.calls(),
            whole.usage("prompt_tokens"),
            either(whole.coverage("lines_reviewed")),
            whole.seconds
        );
        if push == paths.len() {
            last_carry = carry;
            last_whole = Some(whole);
        }
    }
    println!(
        "{:<6} | {:>6} {:>12} {:>9} {:>8} | {:>6} {:>12}",
        "total", carry_calls, carry_tokens, "", "", whole_calls, whole_tokens
    );
    let share = carry_tokens as f64 * 100.0 / (whole_tokens.max(1)) as f64;
    println!(
        "carry-forward spends {share:.1}% of the prompt tokens of whole re-reviews ({carry_calls} vs {whole_calls} calls); target at most 40%: {}",
        if share <= 40.0 { "met" } else { "NOT met" }
    );
    let (Some(carry), Some(whole)) = (last_carry, last_whole) else {
        return share <= 40.0;
    };
    let carried = carry.suggestions().iter().filter(|s| s["carried"] == true).count();
    let kept: BTreeSet<_> = carry.suggestions().into_iter().map(said).collect();
    let wanted: Vec<_> = whole.suggestions().into_iter().map(said).collect();
    let present = wanted.iter().filter(|s| kept.contains(s)).count();
    println!(
        "last push: {carried} of {} suggestions carried forward; {present} of {} suggestions of the whole review present",
        carry.suggestions().len(),
        wanted.len()
    );
    share <= 40.0 && carried > 0 && present == wanted.len()
}

#[tokio::main]
async fn main() {
    let opts = <Options as clap::Parser>::parse();
    let mut diffs: Vec<PathBuf> = std::fs::read_dir(&opts.dir)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (build the diffs with scripts/real-diffs.sh)",
                opts.dir.display()
            )
        })
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "diff"))
        .collect();
    diffs.sort_by_key(|path| std::fs::metadata(path).map(|m| m.len()).unwrap_or(0));
    assert!(!diffs.is_empty(), "no *.diff in {}", opts.dir.display());

    let sim = SimHandle::spawn(SimArgs::default()).await.unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let worker = Worker {
        bin: &opts.bin,
        base_url: if opts.developer() {
            sim.developer_base_url()
        } else {
            sim.coding_base_url()
        },
        key: if opts.developer() {
            "sim-developer-key"
        } else {
            "sim-coding-key"
        },
        scratch: scratch.path(),
    };
    println!(
        "Real diffs, reviewed by {} against the simulator ({} endpoint)",
        opts.bin.display(),
        if opts.developer() {
            "pay-per-token"
        } else {
            "Coding Plan"
        }
    );
    println!(
        "\n{:<34} {:>9} | {:>5} {:>5} {:>5} | {:>7} {:>7} {:>6} | {:>5} {:>4} {:>10} {:>7}",
        "diff", "KiB", "files", "rev.", "read", "+lines", "read", "share", "calls", "req", "prompt tok", "time s"
    );
    let (mut fitting_met, mut fitting) = (true, 0);
    for path in &diffs {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let run = worker.review(&name, path, None).await;
        let share = ratio(run.coverage("lines_reviewed"), run.coverage("lines_reviewable"));
        if run.fits() == Some(true) {
            let reviewed = run.coverage("lines_reviewed").unwrap_or(0) as f64;
            let reviewable = run.coverage("lines_reviewable").unwrap_or(0).max(1) as f64;
            fitting_met &= reviewed / reviewable >= 0.9;
            fitting += 1;
        }
        println!(
            "{:<34} {:>9} | {:>5} {:>5} {:>5} | {:>7} {:>7} {:>6} | {:>5} {:>4} {:>10} {:>7.2}",
            name,
            std::fs::metadata(path).unwrap().len() / 1024,
            either(run.coverage("files_changed")),
            either(run.coverage("files_reviewable")),
            either(run.coverage("files_reviewed")),
            either(run.coverage("lines_reviewable")),
            either(run.coverage("lines_reviewed")),
            share,
            run.calls(),
            run.usage("requests"),
            run.usage("prompt_tokens"),
            run.seconds
        );
        println!("{:<34} {}", "", run.coverage_line);
        if run.result["status"] != "completed" {
            println!("{:<34} status {}: {}", "", run.result["status"], run.result["error"]);
        }
    }
    println!(
        "target: at least 90% of reviewable added lines reviewed for PRs that fit the call limit: {}",
        match (fitting, fitting_met) {
            (0, _) => "n/a (no result with coverage fits the call limit)",
            (_, true) => "met",
            (_, false) => "NOT met",
        }
    );

    // The sequence runs on the named diff, else on the smallest.
    let push_diff = opts
        .push_diff
        .as_ref()
        .map(|name| {
            diffs
                .iter()
                .find(|p| {
                    p.file_stem()
                        .is_some_and(|s| s.to_string_lossy().starts_with(name.as_str()))
                })
                .unwrap_or_else(|| panic!("no diff named {name}* in {}", opts.dir.display()))
        })
        .unwrap_or(&diffs[0]);
    let name = push_diff.file_stem().unwrap().to_string_lossy().into_owned();
    let met = push_sequence(&worker, &opts, &name, push_diff).await;
    println!(
        "push-sequence targets (at most 40% of the tokens, the unchanged hunks' suggestions kept): {}",
        if met { "met" } else { "NOT met" }
    );
}
