//! The simulator's knobs, declared once: [`SimConfig`] is at the same time the command line's
//! options (each also a `SIM_*` variable, flattened into [`super::SimArgs`]), the body of
//! `/_sim/config`, and what [`super::SimHandle::configure`] edits. Its defaults are the command
//! line's, read from the clap attributes.

use clap::{Args, Command, FromArgMatches};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// The largest junk answer the simulator builds, whatever is asked: beyond any body limit.
pub(crate) const MAX_JUNK_BYTES: u64 = 64 * 1024 * 1024;
pub(crate) const FIVE_HOURS: u64 = 5 * 3_600;
pub(crate) const ONE_WEEK: u64 = 7 * 86_400;

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
    /// `bytes` of this junk.
    pub(crate) fn text(self, bytes: usize) -> String {
        let unit = match self {
            Self::Unbalanced => "{\"",
            Self::Nested => "{\"a\":[",
            Self::Escaped => "{\"\\\"",
        };
        let mut text = unit.repeat(bytes.div_ceil(unit.len()));
        // ASCII: any length is a char boundary.
        text.truncate(bytes);
        text
    }
}

impl MismatchCode {
    fn as_str(self) -> &'static str {
        match self {
            Self::Unauthorized => "401",
            Self::InsufficientBalance => "1113",
        }
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
        match code_from_string_or_number(d)? {
            401 => Ok(Self::Unauthorized),
            1113 => Ok(Self::InsufficientBalance),
            other => Err(serde::de::Error::custom(format!(
                "mismatch_code must be 401 or 1113, not {other}"
            ))),
        }
    }
}

/// Codes are strings on Z.AI's wire, so a test may well write `"1302"` as readily as `1302`.
fn code_from_string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Code {
        Number(u16),
        Text(String),
    }
    match Code::deserialize(d)? {
        Code::Number(n) => Ok(n),
        Code::Text(s) => s
            .trim()
            .parse()
            .map_err(|_| serde::de::Error::custom(format!("not an error code: {s:?}"))),
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

/// The knobs that can change while the simulator runs. `POST /_sim/config` sets the ones its
/// body names; `GET /_sim/config` answers them all. Rates are clamped to `0..=1`; a limit of 0
/// means "no limit".
#[derive(clap::Args, Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
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

    // Reads back as how many are left; setting it starts the count again, and so does a reset.
    #[arg(
        long,
        env = "SIM_FAIL_FIRST",
        default_value_t = 0,
        help = "The first N chat calls (after start or a reset) fail with --fail-first-code"
    )]
    pub fail_first: u64,

    #[arg(long, env = "SIM_FAIL_FIRST_CODE", default_value_t = 500, value_parser = error_code,
          help = "What --fail-first calls get: an HTTP status (500, 503, 401) or a Z.AI code (1302, 1305, 1308, 1310, 1113, 1309, 1211…)")]
    #[serde(deserialize_with = "code_from_string_or_number")]
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

    // Reads back as how many are left.
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
}

impl Default for SimConfig {
    /// The command line's defaults.
    fn default() -> Self {
        clap_defaults()
    }
}

impl SimConfig {
    /// Rates within `0..=1` (NaN is 0) and junk no larger than [`MAX_JUNK_BYTES`]: what a test
    /// or a control body may set beyond the command line's checks.
    pub(crate) fn sanitized(self) -> Self {
        let rate = |r: f64| if r.is_nan() { 0.0 } else { r.clamp(0.0, 1.0) };
        Self {
            fail_rate_5xx: rate(self.fail_rate_5xx),
            fail_rate_1305: rate(self.fail_rate_1305),
            garbage_rate: rate(self.garbage_rate),
            junk_bytes: self.junk_bytes.min(MAX_JUNK_BYTES),
            ..self
        }
    }

    /// These knobs with the ones `patch` names set, as `POST /_sim/config` asks: an unknown knob
    /// or a value of the wrong type is an error, and `null` leaves a knob as it is.
    pub(crate) fn patched(&self, patch: Map<String, Value>) -> Result<Self, serde_json::Error> {
        let mut merged = match serde_json::to_value(self)? {
            Value::Object(fields) => fields,
            _ => Map::new(),
        };
        merged.extend(patch.into_iter().filter(|(_, value)| !value.is_null()));
        serde_json::from_value(Value::Object(merged))
    }
}

/// What `T`'s options are when none is given and no `SIM_*` variable is set: the defaults the
/// clap attributes declare, so that [`Default`] cannot drift from the command line.
pub(crate) fn clap_defaults<T: Args + FromArgMatches>() -> T {
    let command = T::augment_args(Command::new("zai-sim")).mut_args(|arg| arg.env(None::<&'static str>));
    let parsed = command
        .try_get_matches_from(["zai-sim"])
        .and_then(|matches| T::from_arg_matches(&matches));
    // Only a default that fails its own parser gets here, and `the_defaults_are_the_documented_ones`
    // would fail first.
    parsed.unwrap_or_else(|error| panic!("the simulator's defaults do not parse: {error}"))
}
