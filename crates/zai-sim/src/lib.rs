//! A fast, deterministic stand-in for Z.AI's OpenAI-compatible API, for tests, the demo and
//! benchmarks (`review-worker sim`).
//!
//! It serves both plans' base paths ([`CODING_BASE`], [`DEVELOPER_BASE`]) with `GET /models` and
//! `POST /chat/completions`, answers Z.AI's error codes with Z.AI's bodies (concurrency 1302,
//! 5-hour window 1308, weekly window 1310, key/plan mismatch, unknown model…), and reviews the
//! diff in the worker's prompt by a few fixed rules so tests know the exact suggestions to expect.
//! It can also answer wrongly on purpose: reset times in the past (`--reset-shift-secs`), and
//! junk answers of any size built to be slow to read (`--junk-answers`).
//! `/_sim/stats`, `/_sim/reset`, `/_sim/keys` and `/_sim/config` let a test observe and steer it
//! while it runs; [`SimHandle`] does the same in-process.
//!
//! Answers are never streamed: `"stream": true` is ignored.

mod chat;
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
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tracing::{info, warn};

pub use state::{SimConfig, SimKeys, SimStats};

/// The largest junk answer the simulator builds, whatever is asked: beyond any body limit.
const MAX_JUNK_BYTES: u64 = 64 * 1024 * 1024;

use state::SimState;

/// Base path of the Coding Plan: only coding keys are accepted here.
pub const CODING_BASE: &str = "/api/coding/paas/v4";
/// Base path of pay-per-token access: only developer keys are accepted here.
pub const DEVELOPER_BASE: &str = "/api/paas/v4";

const DEFAULT_LISTEN: &str = "127.0.0.1:4010";
const DEFAULT_CODING_KEY: &str = "sim-coding-key";
const DEFAULT_DEVELOPER_KEY: &str = "sim-developer-key";
const DEFAULT_MODELS: &str = review_core::models::LISTED_IDS;
const FIVE_HOURS: u64 = 5 * 3_600;
const ONE_WEEK: u64 = 7 * 86_400;

/// Language of the error messages: Z.AI's international site answers in English, the China
/// mainland twin in Chinese, with the same codes.
#[derive(clap::ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    #[default]
    En,
    Zh,
}

/// What a key of the other plan gets: both have been seen in the wild.
#[derive(clap::ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MismatchCode {
    /// 401 `{"error":{"message":"token expired or incorrect","type":"401"}}`.
    #[default]
    #[value(name = "401")]
    Unauthorized,
    /// 429 with code 1113, "Insufficient balance or no resource package".
    #[value(name = "1113")]
    InsufficientBalance,
}

/// How a successful answer carries the review.
#[derive(clap::ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// Plain, fenced and tool in turn, one per successful answer.
    #[default]
    Rotate,
    /// The JSON object alone as `content`.
    Plain,
    /// Prose, then the JSON in a ```json fence, then prose.
    Fenced,
    /// A `submit_review` tool call with the JSON as its arguments; `content` is null.
    Tool,
}

/// What a junk answer's content is made of: text a naive reader needs its length squared to scan.
#[derive(clap::ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JunkShape {
    /// `{"` repeated: every brace opens a string that the next brace's quote closes.
    #[default]
    Unbalanced,
    /// `{"a":[` repeated: objects and arrays opened and never closed.
    Nested,
    /// `{"\"` repeated: escaped quotes, which shift a reader in and out of strings.
    Escaped,
}

impl JunkShape {
    fn from_u8(n: u8) -> Self {
        [Self::Unbalanced, Self::Nested, Self::Escaped]
            .into_iter()
            .find(|s| *s as u8 == n)
            .unwrap_or_default()
    }

    /// `bytes` of this junk.
    pub(crate) fn text(self, bytes: usize) -> String {
        let unit = match self {
            Self::Unbalanced => "{\"",
            Self::Nested => "{\"a\":[",
            Self::Escaped => "{\"\\\"",
        };
        let mut text = unit.repeat(bytes / unit.len() + 1);
        // ASCII: any length is a char boundary.
        text.truncate(bytes);
        text
    }
}

impl Lang {
    fn from_u8(n: u8) -> Self {
        if n == Self::Zh as u8 { Self::Zh } else { Self::En }
    }
}

impl MismatchCode {
    fn from_u8(n: u8) -> Self {
        if n == Self::InsufficientBalance as u8 {
            Self::InsufficientBalance
        } else {
            Self::Unauthorized
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Unauthorized => "401",
            Self::InsufficientBalance => "1113",
        }
    }
}

impl Shape {
    fn from_u8(n: u8) -> Self {
        [Self::Rotate, Self::Plain, Self::Fenced, Self::Tool]
            .into_iter()
            .find(|s| *s as u8 == n)
            .unwrap_or_default()
    }
}

impl Serialize for MismatchCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Accepts `"401"`, `401`, `"1113"` or `1113`: it is a code, and codes travel as strings on
/// Z.AI's wire but are easily written as numbers.
impl<'de> Deserialize<'de> for MismatchCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        let code = match Raw::deserialize(d)? {
            Raw::Number(n) => n.to_string(),
            Raw::Text(s) => s.trim().to_owned(),
        };
        match code.as_str() {
            "401" => Ok(Self::Unauthorized),
            "1113" => Ok(Self::InsufficientBalance),
            other => Err(serde::de::Error::custom(format!(
                "mismatch_code must be 401 or 1113, not {other}"
            ))),
        }
    }
}

fn rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?} is not a probability between 0 and 1")),
    }
}

fn error_code(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u16>() {
        Ok(code) if code >= 100 => Ok(code),
        _ => Err(format!(
            "{s:?} is neither an HTTP status (500, 503…) nor a Z.AI code (1302, 1308…)"
        )),
    }
}

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

    #[arg(
        long,
        env = "SIM_MAX_CONCURRENCY",
        default_value_t = 0,
        help = "Chat calls served at once; one more arriving gets 429 with code 1302 (0 = unlimited)"
    )]
    pub max_concurrency: u64,

    #[arg(
        long,
        env = "SIM_WINDOW_CALLS",
        default_value_t = 0,
        help = "Successful chat calls allowed in the rolling 5-hour window, which the first call opens; more get 429 with code 1308 and the reset time (0 = unlimited)"
    )]
    pub window_calls: u64,

    #[arg(long, env = "SIM_WINDOW_SECS", default_value_t = FIVE_HOURS,
          help = "Length of the \"5-hour\" window in seconds; shorten it to test waiting for the reset")]
    pub window_secs: u64,

    #[arg(
        long,
        env = "SIM_WEEKLY_CALLS",
        default_value_t = 0,
        help = "Successful chat calls allowed in the weekly window, checked before the 5-hour one; more get 429 with code 1310 (0 = unlimited)"
    )]
    pub weekly_calls: u64,

    #[arg(long, env = "SIM_WEEKLY_SECS", default_value_t = ONE_WEEK,
          help = "Length of the weekly window in seconds")]
    pub weekly_secs: u64,

    #[arg(
        long,
        env = "SIM_LATENCY_MS",
        default_value_t = 0,
        help = "Delay before each answer, in milliseconds (quota and auth errors are immediate)"
    )]
    pub latency_ms: u64,

    #[arg(
        long,
        env = "SIM_JITTER_MS",
        default_value_t = 0,
        help = "Random extra delay of up to this many milliseconds on top of --latency-ms"
    )]
    pub jitter_ms: u64,

    #[arg(long = "fail-rate-5xx", env = "SIM_FAIL_RATE_5XX", default_value_t = 0.0, value_parser = rate,
          help = "Probability (0-1) that a chat call fails with HTTP 500 or 503 and a Z.AI error body")]
    pub fail_rate_5xx: f64,

    #[arg(long = "fail-rate-1305", env = "SIM_FAIL_RATE_1305", default_value_t = 0.0, value_parser = rate,
          help = "Probability (0-1) that a chat call fails with 429 code 1305 (provider overloaded)")]
    pub fail_rate_1305: f64,

    #[arg(
        long,
        env = "SIM_FAIL_FIRST",
        default_value_t = 0,
        help = "The first N chat calls (after start or a reset) fail with --fail-first-code"
    )]
    pub fail_first: u64,

    #[arg(long, env = "SIM_FAIL_FIRST_CODE", default_value_t = 500, value_parser = error_code,
          help = "What --fail-first calls get: an HTTP status (500, 503, 401) or a Z.AI code (1302, 1305, 1308, 1310, 1113, 1309, 1211…)")]
    pub fail_first_code: u16,

    #[arg(long, env = "SIM_GARBAGE_RATE", default_value_t = 0.0, value_parser = rate,
          help = "Probability (0-1) that a successful answer is unreadable prose instead of JSON, to exercise the worker's repair")]
    pub garbage_rate: f64,

    #[arg(long, env = "SIM_LANG", value_enum, default_value_t = Lang::En,
          help = "Language of error messages: en (api.z.ai) or zh (open.bigmodel.cn)")]
    pub lang: Lang,

    #[arg(long, env = "SIM_MISMATCH_CODE", value_enum, default_value_t = MismatchCode::Unauthorized,
          help = "What a key of the other plan gets: 401 (token expired or incorrect) or 1113 (429, insufficient balance)")]
    pub mismatch_code: MismatchCode,

    #[arg(long, env = "SIM_SHAPE", value_enum, default_value_t = Shape::Rotate,
          help = "How answers carry the review: plain JSON, fenced JSON in prose, a submit_review tool call, or rotate through the three")]
    pub shape: Shape,

    #[arg(
        long,
        env = "SIM_RESET_SHIFT_SECS",
        default_value_t = 0,
        allow_negative_numbers = true,
        help = "Seconds added to the reset time 1308/1310 messages give (the window itself is unchanged); negative puts it in the past, like a skewed clock"
    )]
    pub reset_shift_secs: i64,

    #[arg(
        long,
        env = "SIM_JUNK_ANSWERS",
        default_value_t = 0,
        help = "The next N successful chat answers carry junk content instead of a review (see --junk-shape, --junk-bytes)"
    )]
    pub junk_answers: u64,

    #[arg(long, env = "SIM_JUNK_SHAPE", value_enum, default_value_t = JunkShape::Unbalanced,
          help = "What junk answers are made of: unbalanced ({\" repeated), nested ({\"a\":[ repeated) or escaped ({\"\\\" repeated)")]
    pub junk_shape: JunkShape,

    #[arg(long, env = "SIM_JUNK_BYTES", default_value_t = 1 << 20,
          help = "Size of a junk answer's content in bytes (at most 64 MiB); its JSON body is larger")]
    pub junk_bytes: u64,

    #[arg(
        long,
        env = "SIM_SEED",
        default_value_t = 1,
        help = "Seed of the random draws (failure rates, garbage, jitter): same seed, same calls fail"
    )]
    pub seed: u64,
}

impl Default for SimArgs {
    fn default() -> Self {
        let list = |s: &str| s.split(',').map(str::to_owned).collect();
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 4010)),
            coding_keys: list(DEFAULT_CODING_KEY),
            developer_keys: list(DEFAULT_DEVELOPER_KEY),
            models: list(DEFAULT_MODELS),
            max_concurrency: 0,
            window_calls: 0,
            window_secs: FIVE_HOURS,
            weekly_calls: 0,
            weekly_secs: ONE_WEEK,
            latency_ms: 0,
            jitter_ms: 0,
            fail_rate_5xx: 0.0,
            fail_rate_1305: 0.0,
            fail_first: 0,
            fail_first_code: 500,
            garbage_rate: 0.0,
            lang: Lang::En,
            mismatch_code: MismatchCode::Unauthorized,
            shape: Shape::Rotate,
            reset_shift_secs: 0,
            junk_answers: 0,
            junk_shape: JunkShape::Unbalanced,
            junk_bytes: 1 << 20,
            seed: 1,
        }
    }
}

/// Serves the simulator on `listener` until `shutdown` completes, then lets in-flight calls
/// finish. `args.listen` is not used: the caller has bound the listener already.
pub async fn serve(
    args: SimArgs,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_state(Arc::new(SimState::new(&args)), listener, shutdown).await
}

/// Binds `args.listen` and serves until `shutdown` resolves: what `review-worker sim` runs.
pub async fn run(args: SimArgs, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    serve(args, listener, shutdown).await
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
    pub addr: SocketAddr,
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

    /// Changes the knobs that are set in `patch`, as `POST /_sim/config` does.
    pub fn configure(&self, patch: SimConfig) {
        self.state.configure(&patch);
    }

    /// Every knob's current value.
    pub fn config(&self) -> SimConfig {
        self.state.config()
    }

    /// Zeroes the counters, closes the quota windows and restarts `fail_first`.
    pub fn reset(&self) {
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
