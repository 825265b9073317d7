//! review-worker: reviews pull requests with GLM models. Jobs arrive on RabbitMQ, each diff is
//! reviewed through an OpenAI-compatible endpoint (Z.AI's GLM Coding Plan or pay-per-token API),
//! and the review goes back on RabbitMQ.
//!
//! # Layout
//! - [`settings`]: environment (and optional file) into typed, validated settings; secrets.
//! - [`telemetry`]: log format and level.
//!
//! The pure pipeline (contract, diff, context, prompt, answer, anchor, and the classes of
//! provider errors) is the `review-core` crate; the Z.AI simulator is the `zai-sim` crate.
//! ARCHITECTURE.md at the repository's root maps both and the path of one job.
//!
//! - [`provider`]: the OpenAI-compatible HTTP client; `review_core::classify` turns its
//!   failures into classes (where a 1308 becomes "pause until the reset").
//! - [`blocking`]: CPU work on one answer, off the async worker threads.
//! - [`review`]: one job's review, broker-free: its planned calls, their answers, the merge.
//! - [`progress`]: the calls a review already paid for, carried in a header while its job waits.
//! - [`limits`]: the adaptive in-flight limit and the provider pause state.
//! - [`executor`]: runs a review under the limits; retries; pauses lanes on quota and account codes.
//! - [`cache`]: the leader's answer cache, by request body: an identical prompt within the TTL
//!   costs no call.
//! - [`fate`]: the decision table: what happens to a job (review, publish, hop, wait, dead-letter).
//! - [`coordination`]: the deployment-wide side: one leader calls the provider (a quorum queue's
//!   token); the pause log (a stream) every replica reads before it may lead; replica identity.
//! - [`broker`]: topology, confirmed publishing, dead letters, delay tiers; health from lapin's
//!   connection events.
//! - [`worker`]: one delivery step and the consume loop with graceful shutdown.
//! - [`app`]: builds the worker from settings; `run(settings, shutdown)`; reconnects, round-robin
//!   over the brokers of `API_RABBITMQ_URI`, with jittered backoff.
//! - [`check`]: the provider probe (`GET /models`).
//! - [`health`]: `/health`, `/ready` and `/metrics`.
//! - [`status`]: readiness flags and job metrics.
//! - [`submit`]: publishing jobs like the API does; waiting for results.
//! - [`cli`], [`shutdown`]: the command line and the process's signals.

#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::arithmetic_side_effects,
        clippy::cast_possible_truncation,
        reason = "in tests a panic is a failed test"
    )
)]

pub mod app;
pub(crate) mod blocking;
pub mod broker;
pub(crate) mod cache;
pub(crate) mod check;
pub mod cli;
pub(crate) mod coordination;
pub(crate) mod executor;
pub(crate) mod fate;
pub(crate) mod health;
pub(crate) mod limits;
pub(crate) mod progress;
pub(crate) mod provider;
pub(crate) mod review;
pub mod settings;
pub mod shutdown;
pub(crate) mod status;
pub(crate) mod submit;
pub mod telemetry;
pub(crate) mod worker;
