//! `--format markdown` on the command line: `review` and `submit --wait` print the result as the
//! PR comment, with line links from the PR's URL and head commit.

#![allow(
    clippy::unwrap_used,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation,
    reason = "test and benchmark code: a panic is a failed run"
)]

mod common;

use common::World;
use zai_sim::SimArgs;

async fn run(world: &World, args: &[&str]) -> (bool, String, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_review-worker"));
    command.args(args).env_clear();
    for (k, v) in world.vars() {
        command.env(k, v);
    }
    let output = command.output().await.unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn review_prints_the_pr_comment_with_the_summary_files_links_and_coverage() {
    let world = World::new("review-markdown", SimArgs::default()).await;
    let example: serde_json::Value = serde_json::from_str(include_str!("../docs/contract/examples/job.json")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let diff = dir.path().join("pr.diff");
    std::fs::write(&diff, example["diff"].as_str().unwrap()).unwrap();
    let (ok, out, err) = run(
        &world,
        &[
            "review",
            diff.to_str().unwrap(),
            "--format",
            "markdown",
            "--pr-url",
            "https://github.com/acme/payments/pull/42",
            "--head-sha",
            "2222222",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert!(
        out.starts_with("## Code review\n\nFound 3 issue(s) in 1 file(s).\n"),
        "{out}"
    );
    assert!(out.contains("\n### `src/refund.rs`\n"), "{out}");
    assert!(
        out.contains(
            "**high** · bug · [line 4](https://github.com/acme/payments/blob/2222222/src/refund.rs#L4) \
             · **Possible panic on unwrap()**"
        ),
        "{out}"
    );
    assert!(out.contains("\n```suggestion\n"), "{out}");
    assert!(
        out.contains("\nReviewed 1 of 1 file (5 of 5 added lines, 100.0%) in 1 call."),
        "{out}"
    );
    assert!(
        err.lines()
            .any(|line| line == "coverage: Reviewed 1 of 1 file (5 of 5 added lines, 100.0%) in 1 call."),
        "the coverage line on stderr: {err}"
    );
    assert_eq!(world.sim.stats().chat_requests, 1, "one review call");

    let (ok, _, err) = run(
        &world,
        &[
            "review",
            diff.to_str().unwrap(),
            "--pr-url",
            "https://example.com/x",
            "--head-sha",
            "2222222",
        ],
    )
    .await;
    assert!(!ok && err.contains("no line links from --pr-url"), "{err}");
    assert_eq!(
        world.sim.stats().chat_requests,
        1,
        "an unusable --pr-url stops the command before the review"
    );
}

#[tokio::test]
async fn submit_wait_prints_each_result_as_the_comment_on_its_pr() {
    let world = World::new("submit-markdown", SimArgs::default()).await;
    let worker = world.spawn_worker();
    let jobs = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/jobs");
    let (ok, out, err) = run(
        &world,
        &[
            "submit",
            "--wait",
            "--timeout",
            "60",
            "--format",
            "markdown",
            &format!("{jobs}/01-rust-refund.json"),
            &format!("{jobs}/03-python-secret.json"),
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(out.matches("## Code review\n").count(), 2, "{out}");
    assert!(
        out.contains("# acme/payments#42: Parse refund amounts from the webhook\n\n## Code review\n"),
        "{out}"
    );
    assert!(out.contains("# acme/billing#8: Billing settings module\n"), "{out}");
    assert!(
        out.contains("](https://github.com/acme/payments/blob/2222222/src/refund.rs#L4)"),
        "the job's URL and head sha give the links:\n{out}"
    );
    assert!(
        out.contains("](https://gitlab.com/acme/billing/-/blob/3333333/billing/settings.py#L"),
        "GitLab links for the GitLab job:\n{out}"
    );
    worker.stop().await.unwrap();
}
