//! Settings: loaded in layers (built-in defaults < optional TOML file < environment), then parsed
//! into typed structs once, at start. Nothing downstream reads the environment.
//!
//! Variable names are the contract's (§5); a TOML file uses the same names in lower case
//! (`api_llm_provider_model = "glm-5.1"`). Every problem is reported at once, each naming its
//! variable and saying what to do, because an operator fixing a `.env` wants the whole list.

use std::path::Path;
use std::time::Duration;

use reqwest::Url;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Map, Value};

/// The Coding Plan's dedicated endpoint: Coding Plan keys work only here.
pub const CODING_PLAN_BASE_URL: &str = "https://api.z.ai/api/coding/paas/v4";
/// The pay-per-token endpoint: developer keys work only here.
pub const DEVELOPER_BASE_URL: &str = "https://api.z.ai/api/paas/v4/";

/// Deployment-wide cap on a developer (pay-per-token) key when none is set. The product document
/// says "start empty (no cap)"; a worker still needs a bound, and 8 keeps a burst of PRs from
/// meeting 1302s while leaving room to raise it.
pub const DEVELOPER_DEFAULT_CAP: u32 = 8;
/// Max allows "up to 30 concurrent"; anything above is refused at start.
pub const MAX_PLAN_CAP: u32 = 30;

/// The raw layer: every variable as text, as the environment or a file gives it.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Raw {
    api_llm_provider_model: Option<String>,
    api_openai_force_base_url: Option<String>,
    api_open_ai_api_key: Option<SecretString>,
    api_llm_plan: Option<String>,
    api_llm_max_concurrent_requests: Option<String>,
    api_llm_thinking: Option<String>,
    api_llm_custom_json: Option<String>,
    api_llm_fallback_provider_model: Option<String>,
    api_llm_fallback_base_url: Option<String>,
    api_llm_fallback_api_key: Option<SecretString>,
    api_llm_fallback_max_concurrent_requests: Option<String>,
    api_llm_timeout_ms: Option<String>,
    api_rabbitmq_uri: Option<SecretString>,
    api_rabbitmq_namespace: Option<String>,
    api_rabbitmq_exchange: Option<String>,
    api_rabbitmq_jobs_queue: Option<String>,
    api_rabbitmq_results_queue: Option<String>,
    api_rabbitmq_dlx: Option<String>,
    api_rabbitmq_dead_queue: Option<String>,
    api_review_max_job_bytes: Option<String>,
    api_review_max_attempts: Option<String>,
    api_review_max_job_age: Option<String>,
    api_worker_concurrency: Option<String>,
    api_worker_drain_timeout_ms: Option<String>,
    worker_health_port: Option<String>,
    api_log_level: Option<String>,
    api_log_format: Option<String>,
}

/// One thing wrong with the settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub variable: &'static str,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.variable, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The settings could not be loaded; the text never quotes a value (see [`describe`]).
    #[error("could not read settings: {0}")]
    Load(String),
    #[error("invalid settings (fix these in .env or the environment):\n  - {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  - "))]
    Invalid(Vec<Problem>),
}

impl From<config::ConfigError> for SettingsError {
    fn from(error: config::ConfigError) -> Self {
        Self::Load(describe(&error))
    }
}

/// A loading error in words that quote no value. The TOML parser shows the offending line under
/// its message, and an unquoted `api_open_ai_api_key = sk-…` is exactly such a line; a type error
/// names what it found. Keys, positions and the file's name stay: they are what an operator needs.
fn describe(error: &config::ConfigError) -> String {
    use config::ConfigError;
    match error {
        ConfigError::FileParse { uri, cause } => {
            let file = uri.as_deref().unwrap_or("the settings file");
            let text = cause.to_string();
            // `TOML parse error at line 3, column 23`, then the source line and a caret, then the
            // message: only the first and the last kind are kept.
            let mut kept = text
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty() && !line.contains('|') && !line.starts_with('^'));
            let position = kept.next().unwrap_or("a syntax error");
            let message: Vec<&str> = kept.collect();
            let mut said = format!("{file} is not valid: {position}");
            if !message.is_empty() {
                said.push_str(": ");
                said.push_str(&message.join(" "));
            }
            said.push_str(" (the line is not shown, it may hold a secret; strings need quotes: key = \"value\")");
            review_core::contract::one_line(&said)
        }
        ConfigError::Type {
            origin, expected, key, ..
        } => format!(
            "{} has the wrong type, expected {expected}{}",
            key.as_deref().unwrap_or("a setting"),
            origin.as_deref().map(|o| format!(" (in {o})")).unwrap_or_default()
        ),
        ConfigError::At { error, origin, key } => format!(
            "{}{}: {}",
            key.as_deref().unwrap_or("a setting"),
            origin.as_deref().map(|o| format!(" (in {o})")).unwrap_or_default(),
            describe(error)
        ),
        ConfigError::NotFound(key) => format!("{key} is missing"),
        // `configuration file "…" not found` and other texts the config crate writes itself.
        ConfigError::Message(message) if message.starts_with("configuration file") => message.clone(),
        ConfigError::Foreign(cause) if cause.is::<std::io::Error>() => cause.to_string(),
        _ => "the settings could not be loaded (the details may quote a value, so they are not shown)".to_owned(),
    }
}

/// Which Z.AI plan the key belongs to; it sets the default deployment-wide cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    Lite,
    Pro,
    Max,
    Developer,
}

impl Plan {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lite => "lite",
            Self::Pro => "pro",
            Self::Max => "max",
            Self::Developer => "developer",
        }
    }

    /// Lite and Pro allow about one request in flight; Max up to 30 but the product document
    /// says to start at 5.
    pub fn default_cap(self) -> u32 {
        match self {
            Self::Lite | Self::Pro => 1,
            Self::Max => 5,
            Self::Developer => DEVELOPER_DEFAULT_CAP,
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "lite" => Some(Self::Lite),
            "pro" => Some(Self::Pro),
            "max" => Some(Self::Max),
            "developer" | "pay-per-token" | "payg" => Some(Self::Developer),
            _ => None,
        }
    }
}

/// What goes into the request's `thinking` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Thinking {
    /// `{"thinking":{"type":"enabled"}}`: the product's "Medium".
    Enabled,
    /// `{"thinking":{"type":"disabled"}}`: fastest and cheapest.
    Disabled,
    /// Send nothing: for a fallback that may not be a GLM endpoint at all.
    ProviderDefault,
}

/// One OpenAI-compatible provider: the main one (Fixed Mode) or the fallback.
#[derive(Debug, Clone)]
pub struct ProviderSettings {
    pub model: String,
    /// Always ends with `/` so that `join("chat/completions")` keeps the whole path.
    pub base_url: Url,
    pub api_key: SecretString,
    pub thinking: Thinking,
    /// Deep-merged into every chat-completions body.
    pub custom_json: Map<String, Value>,
    pub timeout: Duration,
}

impl ProviderSettings {
    /// A short name for logs and results: `z.ai` for Z.AI's hosts, else the host.
    pub fn provider_name(&self) -> String {
        provider_name(&self.base_url)
    }

    pub fn is_coding_plan(&self) -> bool {
        self.base_url.path().contains("/coding/")
    }

    /// The base URL as an operator wrote it, without credentials (keys never go in URLs, but a
    /// proxy's user info might).
    pub fn display_base_url(&self) -> String {
        let mut url = self.base_url.clone();
        let _ = url.set_password(None);
        let _ = url.set_username("");
        url.to_string()
    }
}

pub fn provider_name(url: &Url) -> String {
    match url.host_str() {
        Some(host) if host == "z.ai" || host.ends_with(".z.ai") => "z.ai".to_owned(),
        Some(host) if host.ends_with("bigmodel.cn") => "bigmodel.cn".to_owned(),
        Some(host) => match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        },
        None => "openai-compatible".to_owned(),
    }
}

/// Names on the broker. The contract's defaults come from the namespace `review`; each can be
/// overridden, and tests give every test a namespace of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub namespace: String,
    pub exchange: String,
    pub jobs_queue: String,
    pub results_queue: String,
    pub dlx: String,
    pub dead_queue: String,
}

impl Topology {
    pub fn with_namespace(namespace: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            exchange: namespace.to_owned(),
            jobs_queue: format!("{namespace}.jobs"),
            results_queue: format!("{namespace}.results"),
            dlx: format!("{namespace}.dlx"),
            dead_queue: format!("{namespace}.dead"),
        }
    }

    /// A name for one of the worker's own queues or exchanges (retry tiers, control).
    pub fn own(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.namespace)
    }
}

#[derive(Debug, Clone)]
pub struct BrokerSettings {
    /// One URI per broker node (or one Service URI), tried in order and round-robin on
    /// reconnect. They hold the broker password, hence secret.
    pub uris: Vec<SecretString>,
    pub topology: Topology,
}

impl BrokerSettings {
    /// The URIs with their passwords masked, for logs and errors.
    pub fn display_uri(&self) -> String {
        self.uris
            .iter()
            .map(|uri| redact_uri(uri.expose_secret()))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The AMQP frame size the worker asks the broker for, unless a URI sets its own `frame_max`.
/// lapin keeps a receive and a send buffer of 32 frames per connection and zero-fills them once
/// the size is negotiated: at RabbitMQ's default of 128 KiB that is 8 MiB of an idle worker's
/// 20. Jobs and results are a few KiB; a 16 MiB job simply comes in more frames.
const FRAME_MAX: u32 = 16_384;

/// `uri` asking for [`FRAME_MAX`] when it does not choose a frame size itself.
fn with_frame_max(uri: &str) -> String {
    match Url::parse(uri) {
        Ok(url) if !url.query_pairs().any(|(key, _)| key == "frame_max") => {
            let separator = if url.query().is_some() { '&' } else { '?' };
            format!("{uri}{separator}frame_max={FRAME_MAX}")
        }
        Ok(_) | Err(_) => uri.to_owned(),
    }
}

/// `API_RABBITMQ_URI`: one AMQP URI or a comma-separated list of them, like other AMQP clients'
/// address lists.
fn parse_uri_list(p: &mut Vec<Problem>, list: &str) -> Vec<SecretString> {
    let mut uris = Vec::new();
    for text in list.split(',').map(str::trim) {
        if text.is_empty() {
            problem(
                p,
                "API_RABBITMQ_URI",
                "has an empty entry; separate URIs with single commas".to_owned(),
            );
        } else if !(text.starts_with("amqp://") || text.starts_with("amqps://")) {
            problem(
                p,
                "API_RABBITMQ_URI",
                format!("`{}` is not an amqp:// or amqps:// URI", redact_uri(text)),
            );
        } else {
            uris.push(SecretString::from(with_frame_max(text)));
        }
    }
    uris
}

/// Masks the password in `amqp://user:pass@host/vhost`, and leaves out the `frame_max` the worker
/// added, so that a URI shows as the operator wrote it.
pub fn redact_uri(uri: &str) -> String {
    match Url::parse(uri) {
        Ok(mut url) => {
            if url.password().is_some() {
                let _ = url.set_password(Some("***"));
            }
            let added = FRAME_MAX.to_string();
            if url
                .query_pairs()
                .any(|(key, value)| key == "frame_max" && value == added)
            {
                let kept: Vec<(String, String)> = url
                    .query_pairs()
                    .filter(|(key, value)| !(key == "frame_max" && *value == added))
                    .map(|(key, value)| (key.into_owned(), value.into_owned()))
                    .collect();
                if kept.is_empty() {
                    url.set_query(None);
                } else {
                    url.query_pairs_mut().clear().extend_pairs(kept);
                }
            }
            url.to_string()
        }
        Err(_) => "<unparseable URI>".to_owned(),
    }
}

#[derive(Debug, Clone)]
pub struct LimitSettings {
    pub plan: Plan,
    /// Requests in flight allowed for the whole deployment.
    pub max_concurrent_requests: u32,
    /// Requests in flight allowed on the fallback provider.
    pub fallback_max_concurrent_requests: u32,
    /// Reviews this replica runs at once (its prefetch).
    pub worker_concurrency: u32,
}

#[derive(Debug, Clone)]
pub struct ReviewSettings {
    pub max_job_bytes: usize,
    pub max_attempts: u32,
    pub max_job_age: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// Required by `run`, `review` and `check`; see [`Settings::require_provider`].
    pub provider: Option<ProviderSettings>,
    pub fallback: Option<ProviderSettings>,
    pub broker: BrokerSettings,
    pub limits: LimitSettings,
    pub review: ReviewSettings,
    pub health_port: u16,
    pub drain_timeout: Duration,
    pub log: LogSettings,
}

const DEFAULT_RABBITMQ_URI: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const DEFAULT_TIMEOUT_MS: u64 = 300_000;
const DEFAULT_MAX_JOB_BYTES: usize = 16 * 1024 * 1024;
const DEFAULT_MAX_ATTEMPTS: u32 = 5;
const DEFAULT_MAX_JOB_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
const DEFAULT_DRAIN_TIMEOUT_MS: u64 = 60_000;
const DEFAULT_HEALTH_PORT: u16 = 3334;

impl Settings {
    /// Loads defaults < `file` (if given) < the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, SettingsError> {
        let mut builder = config::Config::builder();
        if let Some(file) = file {
            builder = builder.add_source(config::File::from(file).required(true));
        }
        let raw: Raw = builder
            .add_source(config::Environment::default().try_parsing(false))
            .build()?
            .try_deserialize()?;
        Self::from_raw(raw)
    }

    /// Loads from the given variables only (tests, and callers that build an environment).
    pub fn from_vars<'a>(vars: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self, SettingsError> {
        let map: std::collections::HashMap<String, String> =
            vars.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        let raw: Raw = config::Config::builder()
            .add_source(config::Environment::default().source(Some(map)).try_parsing(false))
            .build()?
            .try_deserialize()?;
        Self::from_raw(raw)
    }

    /// The main provider, or the list of what is missing for it.
    pub fn require_provider(&self) -> Result<&ProviderSettings, SettingsError> {
        self.provider.as_ref().ok_or_else(|| {
            SettingsError::Invalid(vec![Problem {
                variable: "API_LLM_PROVIDER_MODEL",
                message: "the Fixed Mode provider is not configured: set API_LLM_PROVIDER_MODEL, \
                          API_OPENAI_FORCE_BASE_URL and API_OPEN_AI_API_KEY (see .env.example)"
                    .to_owned(),
            }])
        })
    }

    fn from_raw(raw: Raw) -> Result<Self, SettingsError> {
        let mut problems = Vec::new();
        let p = &mut problems;
        let topology = parse_topology(p, &raw);

        let timeout = Duration::from_millis(
            parse_number(
                p,
                "API_LLM_TIMEOUT_MS",
                raw.api_llm_timeout_ms.as_deref(),
                1_000,
                3_600_000,
            )
            .unwrap_or(DEFAULT_TIMEOUT_MS),
        );
        let thinking = match non_empty(raw.api_llm_thinking.as_deref()).map(str::to_ascii_lowercase) {
            None => Thinking::Enabled,
            Some(t) if t == "medium" || t == "enabled" => Thinking::Enabled,
            Some(t) if t == "disabled" || t == "off" => Thinking::Disabled,
            Some(other) => {
                problem(
                    p,
                    "API_LLM_THINKING",
                    format!("`{other}` is not a thinking setting: use `medium` or `disabled`"),
                );
                Thinking::Enabled
            }
        };
        let custom_json = parse_custom_json(p, raw.api_llm_custom_json.as_deref());

        let provider = parse_provider(
            p,
            [
                "API_LLM_PROVIDER_MODEL",
                "API_OPENAI_FORCE_BASE_URL",
                "API_OPEN_AI_API_KEY",
            ],
            raw.api_llm_provider_model.as_deref(),
            raw.api_openai_force_base_url.as_deref(),
            raw.api_open_ai_api_key,
        )
        .map(|(model, base_url, api_key)| ProviderSettings {
            model,
            base_url,
            api_key,
            thinking,
            custom_json,
            timeout,
        });
        let fallback = parse_provider(
            p,
            [
                "API_LLM_FALLBACK_PROVIDER_MODEL",
                "API_LLM_FALLBACK_BASE_URL",
                "API_LLM_FALLBACK_API_KEY",
            ],
            raw.api_llm_fallback_provider_model.as_deref(),
            raw.api_llm_fallback_base_url.as_deref(),
            raw.api_llm_fallback_api_key,
        )
        .map(|(model, base_url, api_key)| ProviderSettings {
            model,
            base_url,
            api_key,
            thinking: Thinking::ProviderDefault,
            custom_json: Map::new(),
            timeout,
        });

        let inferred_plan = match &provider {
            Some(provider) if provider.is_coding_plan() => Plan::Lite,
            _ => Plan::Developer,
        };
        let plan = match non_empty(raw.api_llm_plan.as_deref()) {
            None => inferred_plan,
            Some(text) => Plan::parse(text).unwrap_or_else(|| {
                problem(
                    p,
                    "API_LLM_PLAN",
                    format!("`{text}` is not a plan: use lite, pro, max or developer"),
                );
                inferred_plan
            }),
        };
        let max_concurrent_requests = parse_number(
            p,
            "API_LLM_MAX_CONCURRENT_REQUESTS",
            raw.api_llm_max_concurrent_requests.as_deref(),
            1,
            if plan == Plan::Developer {
                1_000
            } else {
                u64::from(MAX_PLAN_CAP)
            },
        )
        .map_or(plan.default_cap(), |n| n as u32);
        let fallback_default = match &fallback {
            Some(f) if f.is_coding_plan() => 1,
            _ => DEVELOPER_DEFAULT_CAP,
        };
        let fallback_max_concurrent_requests = parse_number(
            p,
            "API_LLM_FALLBACK_MAX_CONCURRENT_REQUESTS",
            raw.api_llm_fallback_max_concurrent_requests.as_deref(),
            1,
            1_000,
        )
        .map_or(fallback_default, |n| n as u32);
        let worker_concurrency = parse_number(
            p,
            "API_WORKER_CONCURRENCY",
            raw.api_worker_concurrency.as_deref(),
            1,
            1_000,
        )
        .map_or_else(|| default_worker_concurrency(max_concurrent_requests), |n| n as u32);

        let broker = BrokerSettings {
            uris: match raw.api_rabbitmq_uri {
                Some(list) if !list.expose_secret().trim().is_empty() => parse_uri_list(p, list.expose_secret()),
                _ => vec![SecretString::from(with_frame_max(DEFAULT_RABBITMQ_URI))],
            },
            topology,
        };

        let review = ReviewSettings {
            max_job_bytes: parse_number(
                p,
                "API_REVIEW_MAX_JOB_BYTES",
                raw.api_review_max_job_bytes.as_deref(),
                1_024,
                128 * 1024 * 1024,
            )
            .map_or(DEFAULT_MAX_JOB_BYTES, |n| n as usize),
            max_attempts: parse_number(
                p,
                "API_REVIEW_MAX_ATTEMPTS",
                raw.api_review_max_attempts.as_deref(),
                1,
                100,
            )
            .map_or(DEFAULT_MAX_ATTEMPTS, |n| n as u32),
            max_job_age: match non_empty(raw.api_review_max_job_age.as_deref()) {
                None => DEFAULT_MAX_JOB_AGE,
                Some(text) => parse_duration(text).unwrap_or_else(|| {
                    problem(
                        p,
                        "API_REVIEW_MAX_JOB_AGE",
                        format!("`{text}` is not a duration: use seconds or a number with s, m, h or d (e.g. 7d)"),
                    );
                    DEFAULT_MAX_JOB_AGE
                }),
            },
        };
        let health_port = parse_number(p, "WORKER_HEALTH_PORT", raw.worker_health_port.as_deref(), 0, 65_535)
            .map_or(DEFAULT_HEALTH_PORT, |n| n as u16);
        let drain_timeout = Duration::from_millis(
            parse_number(
                p,
                "API_WORKER_DRAIN_TIMEOUT_MS",
                raw.api_worker_drain_timeout_ms.as_deref(),
                0,
                3_600_000,
            )
            .unwrap_or(DEFAULT_DRAIN_TIMEOUT_MS),
        );
        let log = LogSettings {
            level: non_empty(raw.api_log_level.as_deref()).unwrap_or("info").to_owned(),
            format: match non_empty(raw.api_log_format.as_deref())
                .map(str::to_ascii_lowercase)
                .as_deref()
            {
                None | Some("text") => LogFormat::Text,
                Some("json") => LogFormat::Json,
                Some(other) => {
                    problem(
                        p,
                        "API_LOG_FORMAT",
                        format!("`{other}` is not a log format: use text or json"),
                    );
                    LogFormat::Text
                }
            },
        };

        if !problems.is_empty() {
            return Err(SettingsError::Invalid(problems));
        }
        Ok(Self {
            provider,
            fallback,
            broker,
            limits: LimitSettings {
                plan,
                max_concurrent_requests,
                fallback_max_concurrent_requests,
                worker_concurrency,
            },
            review,
            health_port,
            drain_timeout,
            log,
        })
    }
}

/// The cap plus a quarter (at least one): jobs held beyond the cap wait locally for a free call,
/// so the next review starts the moment one ends instead of after a broker round trip (a result
/// confirm, an ack and a delivery), which at cap 1 costs about 3% of the plan.
fn default_worker_concurrency(cap: u32) -> u32 {
    cap + (cap / 4).max(1)
}

fn problem(problems: &mut Vec<Problem>, variable: &'static str, message: String) {
    problems.push(Problem { variable, message });
}

fn non_empty(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|v| !v.is_empty())
}

fn parse_number(
    problems: &mut Vec<Problem>,
    variable: &'static str,
    value: Option<&str>,
    min: u64,
    max: u64,
) -> Option<u64> {
    let text = non_empty(value)?;
    match text.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Some(n),
        Ok(n) => {
            problem(problems, variable, format!("{n} is out of range: use {min} to {max}"));
            None
        }
        Err(_) => {
            problem(problems, variable, format!("`{text}` is not a whole number"));
            None
        }
    }
}

/// `90`, `90s`, `15m`, `6h`, `7d`.
fn parse_duration(text: &str) -> Option<Duration> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let n: u64 = number.parse().ok()?;
    let seconds = match unit.trim() {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3_600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    (seconds > 0).then(|| Duration::from_secs(seconds))
}

/// The three Fixed Mode variables of one provider: all set, or none (then `None`).
fn parse_provider(
    problems: &mut Vec<Problem>,
    [model_var, url_var, key_var]: [&'static str; 3],
    model: Option<&str>,
    base_url: Option<&str>,
    key: Option<SecretString>,
) -> Option<(String, Url, SecretString)> {
    let model = non_empty(model);
    let base_url = non_empty(base_url);
    // A key pasted from a file often carries a trailing newline, which would break the header.
    let key = key
        .map(|k| SecretString::from(k.expose_secret().trim().to_owned()))
        .filter(|k| !k.expose_secret().is_empty());
    if model.is_none() && base_url.is_none() && key.is_none() {
        return None;
    }
    let before = problems.len();
    if model.is_none() {
        problem(
            problems,
            model_var,
            format!("is empty: set a model id such as glm-5.1 (the other {url_var} and {key_var} are set)"),
        );
    }
    if key.is_none() {
        problem(
            problems,
            key_var,
            format!("is empty: set the API key that matches {url_var}"),
        );
    }
    let url = match base_url {
        None => {
            problem(
                problems,
                url_var,
                format!("is empty: use {CODING_PLAN_BASE_URL} (Coding Plan) or {DEVELOPER_BASE_URL} (pay-per-token)"),
            );
            None
        }
        Some(text) => match Url::parse(text) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host_str().is_some() => {
                Some(normalise_base_url(url))
            }
            Ok(_) | Err(_) => {
                problem(
                    problems,
                    url_var,
                    format!("`{text}` is not an http(s) URL: use {CODING_PLAN_BASE_URL} or {DEVELOPER_BASE_URL}"),
                );
                None
            }
        },
    };
    if let (Some(url), Some(model)) = (&url, model) {
        if url.path().trim_end_matches('/').ends_with("/v1") && url.host_str().is_some_and(|h| h.ends_with("z.ai")) {
            problem(
                problems,
                url_var,
                "Z.AI has no /v1 segment: drop it (calls would answer 404)".to_owned(),
            );
        }
        if url.path().contains("/coding/") && !model.to_ascii_lowercase().starts_with("glm-") {
            problem(
                problems,
                model_var,
                format!(
                    "`{model}` is not a GLM model, and the Coding Plan endpoint rejects non-GLM names: use glm-5.1, glm-5-turbo, glm-5, glm-4.5 or glm-4.5-air"
                ),
            );
        }
    }
    if problems.len() > before {
        return None;
    }
    Some((model?.to_owned(), url?, key?))
}

fn normalise_base_url(mut url: Url) -> Url {
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    url
}

/// `API_LLM_CUSTOM_JSON`: a JSON object, with the product's `{"openaiCompatible": {...}}`
/// wrapper taken off.
fn parse_custom_json(problems: &mut Vec<Problem>, value: Option<&str>) -> Map<String, Value> {
    let Some(text) = non_empty(value) else {
        return Map::new();
    };
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(mut object)) => {
            // Only a lone wrapper is unwrapped; a key of that name among others is the operator's.
            if object.len() == 1
                && let Some(Value::Object(inner)) = object.get_mut("openaiCompatible")
            {
                return std::mem::take(inner);
            }
            object
        }
        Ok(other) => {
            let kind = match other {
                Value::Array(_) => "an array",
                Value::String(_) => "a string",
                Value::Number(_) => "a number",
                Value::Bool(_) => "a boolean",
                _ => "null",
            };
            problem(
                problems,
                "API_LLM_CUSTOM_JSON",
                format!(
                    "is {kind}, not a JSON object: use e.g. {{\"thinking\":{{\"type\":\"enabled\",\"budget_tokens\":20000}}}}"
                ),
            );
            Map::new()
        }
        Err(error) => {
            problem(
                problems,
                "API_LLM_CUSTOM_JSON",
                format!("is not valid JSON ({error}): use e.g. {{\"thinking\":{{\"type\":\"disabled\"}}}}"),
            );
            Map::new()
        }
    }
}

fn parse_topology(problems: &mut Vec<Problem>, raw: &Raw) -> Topology {
    let namespace = non_empty(raw.api_rabbitmq_namespace.as_deref()).unwrap_or("review");
    let mut topology = Topology::with_namespace(namespace);
    let overrides: [(&'static str, &Option<String>, &mut String); 5] = [
        (
            "API_RABBITMQ_EXCHANGE",
            &raw.api_rabbitmq_exchange,
            &mut topology.exchange,
        ),
        (
            "API_RABBITMQ_JOBS_QUEUE",
            &raw.api_rabbitmq_jobs_queue,
            &mut topology.jobs_queue,
        ),
        (
            "API_RABBITMQ_RESULTS_QUEUE",
            &raw.api_rabbitmq_results_queue,
            &mut topology.results_queue,
        ),
        ("API_RABBITMQ_DLX", &raw.api_rabbitmq_dlx, &mut topology.dlx),
        (
            "API_RABBITMQ_DEAD_QUEUE",
            &raw.api_rabbitmq_dead_queue,
            &mut topology.dead_queue,
        ),
    ];
    for (variable, value, slot) in overrides {
        if let Some(name) = non_empty(value.as_deref()) {
            *slot = name.to_owned();
        }
        if slot.len() > 200 || slot.starts_with("amq.") {
            problem(
                problems,
                variable,
                format!("`{slot}` is not a usable name: at most 200 bytes, not starting with amq."),
            );
        }
    }
    topology
}

#[cfg(test)]
mod tests {
    use super::*;

    const CODING: [(&str, &str); 3] = [
        ("API_LLM_PROVIDER_MODEL", "glm-5.1"),
        ("API_OPENAI_FORCE_BASE_URL", "https://api.z.ai/api/coding/paas/v4"),
        ("API_OPEN_AI_API_KEY", "sk-very-secret"),
    ];

    fn with(extra: &[(&'static str, &'static str)]) -> Result<Settings, SettingsError> {
        let mut vars: Vec<(&str, &str)> = CODING.to_vec();
        vars.retain(|(k, _)| !extra.iter().any(|(e, _)| e == k));
        vars.extend_from_slice(extra);
        Settings::from_vars(vars)
    }

    fn problems(result: Result<Settings, SettingsError>) -> Vec<Problem> {
        match result {
            Err(SettingsError::Invalid(problems)) => problems,
            other => panic!("expected invalid settings, got {other:?}"),
        }
    }

    #[test]
    fn the_coding_plan_triple_defaults_to_lite_with_a_cap_of_one() {
        let settings = with(&[]).unwrap();
        let provider = settings.provider.unwrap();
        assert_eq!(settings.limits.plan, Plan::Lite);
        assert_eq!(settings.limits.max_concurrent_requests, 1);
        assert_eq!(provider.base_url.as_str(), "https://api.z.ai/api/coding/paas/v4/");
        assert_eq!(provider.provider_name(), "z.ai");
        assert_eq!(provider.thinking, Thinking::Enabled);
        assert_eq!(settings.broker.topology.jobs_queue, "review.jobs");
    }

    #[test]
    fn a_replica_holds_a_quarter_more_jobs_than_the_cap_so_the_next_is_ready() {
        assert_eq!(with(&[]).unwrap().limits.worker_concurrency, 2);
        let max = with(&[("API_LLM_PLAN", "max"), ("API_LLM_MAX_CONCURRENT_REQUESTS", "30")]).unwrap();
        assert_eq!(max.limits.worker_concurrency, 37);
        let explicit = with(&[("API_WORKER_CONCURRENCY", "5")]).unwrap();
        assert_eq!(explicit.limits.worker_concurrency, 5);
    }

    #[test]
    fn the_pay_per_token_endpoint_defaults_to_the_developer_plan() {
        let settings = with(&[("API_OPENAI_FORCE_BASE_URL", "https://api.z.ai/api/paas/v4/")]).unwrap();
        assert_eq!(settings.limits.plan, Plan::Developer);
        assert_eq!(settings.limits.max_concurrent_requests, DEVELOPER_DEFAULT_CAP);
    }

    #[test]
    fn max_defaults_to_five_and_refuses_more_than_thirty() {
        let settings = with(&[("API_LLM_PLAN", "max")]).unwrap();
        assert_eq!(settings.limits.max_concurrent_requests, 5);
        let found = problems(with(&[
            ("API_LLM_PLAN", "max"),
            ("API_LLM_MAX_CONCURRENT_REQUESTS", "31"),
        ]));
        assert_eq!(found[0].variable, "API_LLM_MAX_CONCURRENT_REQUESTS");
    }

    #[test]
    fn an_empty_model_is_named() {
        let found = problems(with(&[("API_LLM_PROVIDER_MODEL", "  ")]));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].variable, "API_LLM_PROVIDER_MODEL");
    }

    #[test]
    fn a_base_url_that_is_not_a_url_is_named() {
        let found = problems(with(&[("API_OPENAI_FORCE_BASE_URL", "api.z.ai/api/paas")]));
        assert_eq!(found[0].variable, "API_OPENAI_FORCE_BASE_URL");
        assert!(found[0].message.contains("not an http(s) URL"));
    }

    #[test]
    fn a_non_glm_model_on_the_coding_plan_is_refused() {
        let found = problems(with(&[("API_LLM_PROVIDER_MODEL", "gpt-4o")]));
        assert_eq!(found[0].variable, "API_LLM_PROVIDER_MODEL");
        assert!(found[0].message.contains("not a GLM model"));
        // The same model on a generic endpoint is the operator's business.
        with(&[
            ("API_LLM_PROVIDER_MODEL", "gpt-4o"),
            ("API_OPENAI_FORCE_BASE_URL", "https://api.openai.com/v1"),
        ])
        .unwrap();
    }

    #[test]
    fn custom_json_must_be_an_object_and_loses_its_wrapper() {
        let found = problems(with(&[("API_LLM_CUSTOM_JSON", "{not json")]));
        assert_eq!(found[0].variable, "API_LLM_CUSTOM_JSON");
        let found = problems(with(&[("API_LLM_CUSTOM_JSON", "[1,2]")]));
        assert!(found[0].message.contains("an array"));
        let settings = with(&[(
            "API_LLM_CUSTOM_JSON",
            r#"{"openaiCompatible":{"thinking":{"type":"disabled"}}}"#,
        )])
        .unwrap();
        let custom = settings.provider.unwrap().custom_json;
        assert_eq!(custom["thinking"]["type"], "disabled");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let found = problems(with(&[
            ("API_LLM_THINKING", "high"),
            ("API_LOG_FORMAT", "xml"),
            ("WORKER_HEALTH_PORT", "http"),
        ]));
        let variables: Vec<_> = found.iter().map(|p| p.variable).collect();
        assert_eq!(variables, ["API_LLM_THINKING", "WORKER_HEALTH_PORT", "API_LOG_FORMAT"]);
    }

    #[test]
    fn the_api_key_never_shows_in_debug_or_errors() {
        let settings = with(&[]).unwrap();
        assert!(!format!("{settings:?}").contains("sk-very-secret"));
        let error = with(&[("API_LLM_PROVIDER_MODEL", "")]).unwrap_err();
        assert!(!error.to_string().contains("sk-very-secret"));
    }

    #[test]
    fn a_settings_file_that_is_not_toml_is_refused_without_echoing_its_values() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("worker.toml");
        std::fs::write(
            &file,
            "api_llm_provider_model = \"glm-5.1\"\napi_open_ai_api_key = sk-secret-123\n",
        )
        .unwrap();
        let error = Settings::load(Some(&file)).unwrap_err();
        let text = error.to_string();
        assert!(matches!(error, SettingsError::Load(_)), "{error:?}");
        assert!(!text.contains("sk-secret"), "{text}");
        assert!(!format!("{error:?}").contains("sk-secret"));
        assert!(text.contains("line 2"), "the position is kept: {text}");
        assert!(text.contains("worker.toml"), "the file is named: {text}");
    }

    #[test]
    fn a_value_of_the_wrong_type_in_a_settings_file_is_not_echoed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("worker.toml");
        std::fs::write(&file, "api_open_ai_api_key = { nested = \"sk-secret-123\" }\n").unwrap();
        let text = Settings::load(Some(&file)).unwrap_err().to_string();
        assert!(!text.contains("sk-secret"), "{text}");
    }

    #[test]
    fn broker_uris_ask_for_small_frames_unless_they_choose_and_show_as_written() {
        let settings = with(&[(
            "API_RABBITMQ_URI",
            "amqp://u:p@a:5672/%2f,amqp://u:p@b:5672/%2f?heartbeat=10,amqp://u:p@c:5672/%2f?frame_max=131072",
        )])
        .unwrap();
        let uris: Vec<&str> = settings.broker.uris.iter().map(|u| u.expose_secret()).collect();
        assert_eq!(
            uris,
            [
                "amqp://u:p@a:5672/%2f?frame_max=16384",
                "amqp://u:p@b:5672/%2f?heartbeat=10&frame_max=16384",
                "amqp://u:p@c:5672/%2f?frame_max=131072",
            ]
        );
        assert_eq!(
            settings.broker.display_uri(),
            "amqp://u:***@a:5672/%2f,amqp://u:***@b:5672/%2f?heartbeat=10,amqp://u:***@c:5672/%2f?frame_max=131072"
        );
        let default = Settings::from_vars([]).unwrap();
        assert_eq!(default.broker.display_uri(), "amqp://guest:***@127.0.0.1:5672/%2f");
    }

    #[test]
    fn the_broker_password_is_masked_for_display() {
        let settings = with(&[("API_RABBITMQ_URI", "amqp://user:hunter2@rabbit:5672/%2f")]).unwrap();
        assert_eq!(settings.broker.display_uri(), "amqp://user:***@rabbit:5672/%2f");
    }

    #[test]
    fn a_comma_separated_uri_list_names_every_node_and_masks_every_password() {
        let settings = with(&[(
            "API_RABBITMQ_URI",
            "amqp://u:p1@rabbit-0:5672/%2f, amqp://u:p2@rabbit-1:5672/%2f,amqps://u:p3@rabbit-2:5671/%2f",
        )])
        .unwrap();
        assert_eq!(settings.broker.uris.len(), 3);
        assert_eq!(
            settings.broker.display_uri(),
            "amqp://u:***@rabbit-0:5672/%2f,amqp://u:***@rabbit-1:5672/%2f,amqps://u:***@rabbit-2:5671/%2f"
        );
    }

    #[test]
    fn a_uri_list_with_a_bad_or_empty_entry_is_refused_without_its_password() {
        let found = problems(with(&[("API_RABBITMQ_URI", "amqp://u:p@a/%2f,,http://u:hunter2@b/")]));
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found.iter().all(|p| p.variable == "API_RABBITMQ_URI"));
        assert!(!format!("{found:?}").contains("hunter2"));
    }

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("7d"), Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("15m"), Some(Duration::from_secs(900)));
        assert_eq!(parse_duration("1w"), None);
    }

    #[test]
    fn without_the_triple_only_commands_that_need_it_fail() {
        let settings = Settings::from_vars([]).unwrap();
        assert!(settings.provider.is_none());
        assert!(settings.require_provider().is_err());
    }
}
