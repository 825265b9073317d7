//! review-worker: reviews pull requests with GLM models. Jobs arrive on RabbitMQ, each diff is
//! reviewed through an OpenAI-compatible endpoint (Z.AI's GLM Coding Plan or pay-per-token API),
//! and the review goes back on RabbitMQ.
//!
//! # Layout
//! - [`settings`]: environment (and optional file) into typed, validated settings; secrets.
//! - [`telemetry`]: log format and level.
//! - [`contract`]: job and result messages; `contract::parse` reads a job into typed structs and
//!   checks the schema's rules in code, in bounded memory.
//! - [`diff`]: unified diffs into files, hunks and new-file line numbers.
//! - [`context`]: what fits the model's context window; skipped files; ranking.
//! - [`prompt`]: the review request.
//! - [`provider`]: the OpenAI-compatible client; `provider::error` classifies every Z.AI code
//!   (where a 1308 becomes "pause until the reset").
//! - [`answer`]: reading the model's answer in every shape models use, in time linear in its size.
//! - [`blocking`]: CPU work on one answer, off the async worker threads.
//! - [`anchor`]: pinning suggestions to changed lines; severity and count filters.
//! - [`review`]: one job's review, broker-free.
//! - [`limits`]: the adaptive in-flight limit and the provider pause state.
//! - [`executor`]: runs a review under the limits; retries; pauses lanes on quota and account codes.
//! - [`fate`]: the decision table: what happens to a job (review, publish, hop, wait, dead-letter).
//! - [`coordination`]: the deployment-wide side: one leader calls the provider (a quorum queue's
//!   token); the pause log (a stream) every replica reads before it may lead; replica identity.
//! - [`broker`]: topology, confirmed publishing, dead letters, delay tiers.
//! - [`worker`]: one delivery step and the consume loop with graceful shutdown.
//! - [`app`]: builds the worker from settings; `run(settings, shutdown)`; reconnects, round-robin
//!   over the brokers of `API_RABBITMQ_URI`, with jittered backoff.
//! - [`check`]: the provider probe (`GET /models`).
//! - [`health`]: `/health`, `/ready` and `/metrics`.
//! - [`status`]: readiness flags and job metrics.
//! - [`submit`]: publishing jobs like the API does; waiting for results.
//! - [`sim`]: the Z.AI simulator.
//! - [`cli`], [`shutdown`]: the command line and the process's signals.

pub(crate) mod anchor;
pub(crate) mod answer;
pub mod app;
pub(crate) mod blocking;
pub mod broker;
pub(crate) mod check;
pub mod cli;
pub(crate) mod context;
pub(crate) mod contract;
pub(crate) mod coordination;
pub(crate) mod diff;
pub(crate) mod executor;
pub(crate) mod fate;
pub(crate) mod health;
pub(crate) mod limits;
pub(crate) mod prompt;
pub(crate) mod provider;
pub(crate) mod review;
pub mod settings;
pub mod shutdown;
pub mod sim;
pub(crate) mod status;
pub(crate) mod submit;
pub mod telemetry;
pub(crate) mod worker;
