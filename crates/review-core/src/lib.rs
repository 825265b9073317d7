//! review-core: the pure review pipeline. Everything here is a function of its inputs: no
//! network, no broker, no async runtime, no clock but the one passed in. The worker runs it
//! under its limits; the simulator reads the prompt format it renders.
//!
//! # Layout
//! - [`contract`]: job and result messages; `contract::parse` reads a job into typed structs and
//!   checks the schema's rules in code, in bounded memory.
//! - [`diff`]: unified diffs into files, hunks and new-file line numbers; the prompt's diff
//!   rendering, and its reading back (`diff::rendered`).
//! - [`models`]: every model fact in one table: context window, pay-per-token price, which ids
//!   Z.AI lists (advice and the simulator's default list).
//! - [`context`]: what fits the model's context window; skipped files; ranking.
//! - [`plan`]: a PR split into review calls (at most `max_calls`, related files together), and
//!   the coverage that plan gives: what is read, what is not and why.
//! - [`prompt`]: the review request.
//! - [`chat`]: what one chat call sends and gets back (`Message`, `ChatAnswer`).
//! - [`classify`]: every Z.AI answer into a [`classify::ProviderError`] class: where a 1308
//!   becomes "pause until the reset", a 1302 "halve the cap".
//! - [`answer`]: reading the model's answer in every shape models use, in time linear in its size.
//! - [`anchor`]: pinning suggestions to changed lines; severity and count filters.
//! - [`merge`]: the calls of one review into one result: duplicates collapsed, limits applied
//!   once, one summary.
//! - [`carry`]: carrying a review forward between pushes: hunks the job's `previous_result`
//!   covered are not sent again, and its suggestions on them come back at their new lines.
//! - [`render`]: a result as people read it: the PR comment (Markdown, with line links on
//!   GitHub, GitLab, Gitea and Bitbucket Cloud), plain text, and the coverage sentence.

#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::arithmetic_side_effects,
        clippy::cast_possible_truncation,
        reason = "in tests a panic is a failed test"
    )
)]

pub mod anchor;
pub mod answer;
pub mod carry;
pub mod chat;
pub mod classify;
pub mod context;
pub mod contract;
pub mod diff;
pub mod merge;
pub mod models;
pub mod plan;
pub mod prompt;
pub mod render;
