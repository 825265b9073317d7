//! A fast, deterministic stand-in for Z.AI's OpenAI-compatible API, for tests, the demo and
//! benchmarks (`review-worker sim`).
//!
//! It serves both plans' base paths (`/api/coding/paas/v4`, `/api/paas/v4`) with `GET /models` and
//! `POST /chat/completions`, answers Z.AI's error codes with Z.AI's bodies (concurrency 1302,
//! 5-hour window 1308, weekly window 1310, key/plan mismatch, unknown model…), and reviews the
//! diff in the worker's prompt by a few fixed rules so tests know the exact suggestions to expect.
//! It can also answer wrongly on purpose: reset times in the past (`--reset-shift-secs`), and
//! junk answers of any size built to be slow to read (`--junk-answers`).
//! `/_sim/stats`, `/_sim/reset`, `/_sim/keys` and `/_sim/config` let a test observe and steer it
//! while it runs (their body is [`SimConfig`], the knobs declared once for the command line and
//! for them); [`SimHandle`] does the same in-process.
//!
//! Answers are never streamed: `"stream": true` is ignored.

#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::arithmetic_side_effects,
        clippy::cast_possible_truncation,
        reason = "in tests a panic is a failed test"
    )
)]

mod chat;
mod config;
mod errors;
mod http;
mod review;
mod state;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use anyhow::Context as _;
use axum::serve::ListenerExt as _;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tracing::{info, warn};

pub use config::{JunkShape, Lang, MismatchCode, Shape, SimConfig};
pub use state::{SimKeys, SimStats};

use state::SimState;

/// Base path of the Coding Plan: only coding keys are accepted here.
pub(crate) const CODING_BASE: &str = "/api/coding/paas/v4";
/// Base path of pay-per-token access: only developer keys are accepted here.
pub(crate) const DEVELOPER_BASE: &str = "/api/paas/v4";

const DEFAULT_LISTEN: &str = "127.0.0.1:4010";
const DEFAULT_CODING_KEY: &str = "sim-coding-key";
const DEFAULT_DEVELOPER_KEY: &str = "sim-developer-key";
const DEFAULT_MODELS: &str = review_core::models::LISTED_IDS;

/// Options of the simulator (`zai-sim`, or `review-worker sim`).
#[derive(clap::Args, Debug, Clone)]
pub struct SimArgs {
    #[arg(long, env = "SIM_LISTEN", default_value = DEFAULT_LISTEN,
          help = "Address to listen on; the base URLs are http://ADDR/api/coding/paas/v4 and http://ADDR/api/paas/v4")]
    pub listen: SocketAddr,

    #[arg(long, env = "SIM_CODING_KEYS", value_delimiter = ',', default_value = DEFAULT_CODING_KEY,
          help = "Comma-separated keys accepted on the Coding Plan path (/api/coding/paas/v4)")]
    pub coding_keys: Vec<String>,

    #[arg(long, env = "SIM_DEVELOPER_KEYS", value_delimiter = ',', default_value = DEFAULT_DEVELOPER_KEY,
          help = "Comma-separated keys accepted on the pay-per-token path (/api/paas/v4)")]
    pub developer_keys: Vec<String>,

    #[arg(long, env = "SIM_MODELS", value_delimiter = ',', default_value = DEFAULT_MODELS,
          help = "Comma-separated model ids; any other model gets 400 with code 1211")]
    pub models: Vec<String>,

    #[command(flatten)]
    pub config: SimConfig,

    #[arg(
        long,
        env = "SIM_SEED",
        default_value_t = 1,
        help = "Seed of the random draws (failure rates, garbage, jitter): same seed, same calls fail"
    )]
    pub seed: u64,
}

impl Default for SimArgs {
    /// The command line's defaults.
    fn default() -> Self {
        config::clap_defaults()
    }
}

/// The defaults with these knobs: what most tests start.
impl From<SimConfig> for SimArgs {
    fn from(config: SimConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }
}

/// Binds `args.listen` and serves until `shutdown` resolves, then lets in-flight calls finish:
/// what `zai-sim` and `review-worker sim` run.
pub async fn run(args: SimArgs, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    serve_state(Arc::new(SimState::new(&args)), listener, shutdown).await
}

async fn serve_state(
    state: Arc<SimState>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    info!(
        %addr,
        coding_base = CODING_BASE,
        developer_base = DEVELOPER_BASE,
        "Z.AI simulator listening on http://{addr}{CODING_BASE} and http://{addr}{DEVELOPER_BASE}"
    );
    // Without TCP_NODELAY, Nagle's algorithm and delayed ACKs add ~40 ms to keep-alive calls,
    // which would cap a benchmark at a few dozen calls per second per connection.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, http::router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .context("simulator server failed")
}

/// A simulator running in a task of the current tokio runtime, on a free port of 127.0.0.1.
/// Dropping it stops the server.
#[derive(Debug)]
pub struct SimHandle {
    pub(crate) addr: SocketAddr,
    state: Arc<SimState>,
    stop: Option<oneshot::Sender<()>>,
}

impl SimHandle {
    /// Starts a simulator with `args` (whose `listen` is ignored in favour of a free port).
    pub async fn spawn(args: SimArgs) -> anyhow::Result<SimHandle> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("cannot bind the simulator to 127.0.0.1")?;
        let addr = listener.local_addr()?;
        let state = Arc::new(SimState::new(&args));
        let (stop, stopped) = oneshot::channel::<()>();
        let server = serve_state(Arc::clone(&state), listener, async move {
            let _ = stopped.await;
        });
        tokio::spawn(async move {
            if let Err(error) = server.await {
                warn!(%error, "simulator stopped");
            }
        });
        Ok(SimHandle {
            addr,
            state,
            stop: Some(stop),
        })
    }

    /// `http://127.0.0.1:PORT/api/coding/paas/v4`
    pub fn coding_base_url(&self) -> String {
        format!("http://{}{CODING_BASE}", self.addr)
    }

    /// `http://127.0.0.1:PORT/api/paas/v4`
    pub fn developer_base_url(&self) -> String {
        format!("http://{}{DEVELOPER_BASE}", self.addr)
    }

    /// The counters, as `GET /_sim/stats` answers them.
    pub fn stats(&self) -> SimStats {
        self.state.stats()
    }

    /// Replaces the accepted keys, as `POST /_sim/keys` does.
    pub fn set_keys(&self, keys: SimKeys) {
        self.state.set_keys(keys);
    }

    /// Changes the knobs as `change` edits them, as `POST /_sim/config` does: a counting knob
    /// (`fail_first`, `junk_answers`) set to a new value starts counting again.
    pub fn configure(&self, change: impl FnOnce(&mut SimConfig)) {
        let Ok(()) = self.state.configure(|knobs| {
            change(knobs);
            Ok::<(), std::convert::Infallible>(())
        });
    }

    /// Every knob's current value; the counting ones say how many are left.
    #[cfg(test)]
    pub(crate) fn config(&self) -> SimConfig {
        self.state.config()
    }

    /// Zeroes the counters, closes the quota windows and restarts `fail_first`, as
    /// `POST /_sim/reset` does.
    #[cfg(test)]
    pub(crate) fn reset(&self) {
        self.state.reset();
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
