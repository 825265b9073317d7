//! Settings: loaded in layers (built-in defaults < optional TOML file < environment), then parsed
//! into typed structs once, at start. Nothing downstream reads the environment.
//!
//! Variable names are the contract's (§5); a TOML file uses the same names in lower case
//! (`api_llm_provider_model = "glm-5.1"`). Each section (the main provider, the fallback, the
//! broker, reviews, the replica's operation, logs) has its own parser. Every problem is reported
//! at once, each naming its variable and saying what to do, because an operator fixing a `.env`
//! wants the whole list: a section with a problem is refused, and the others are still parsed.

use std::ops::RangeInclusive;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use reqwest::Url;
use review_core::models;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Map, Value};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::{Directive, LevelFilter};

/// The Coding Plan's dedicated endpoint: Coding Plan keys work only here.
pub(crate) const CODING_PLAN_BASE_URL: &str = "https://api.z.ai/api/coding/paas/v4";
/// The pay-per-token endpoint: developer keys work only here.
pub(crate) const DEVELOPER_BASE_URL: &str = "https://api.z.ai/api/paas/v4/";

/// Deployment-wide cap on a developer (pay-per-token) key when none is set. The product document
/// says "start empty (no cap)"; a worker still needs a bound, and 8 keeps a burst of PRs from
/// meeting 1302s while leaving room to raise it.
pub(crate) const DEVELOPER_DEFAULT_CAP: u32 = 8;
/// Max allows "up to 30 concurrent"; anything above is refused at start.
pub(crate) const MAX_PLAN_CAP: u32 = 30;

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
    api_review_max_calls: Option<String>,
    api_review_call_tokens: Option<String>,
    api_review_cache_ttl_secs: Option<String>,
    api_review_cache_max_mb: Option<String>,
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

/// A value a setting does not take, in words that say what it does take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{found}` is not {what}: use {expected}")]
pub struct InvalidValue {
    found: String,
    what: &'static str,
    expected: &'static str,
}

impl InvalidValue {
    fn new(found: &str, what: &'static str, expected: &'static str) -> Self {
        Self {
            found: found.trim().to_owned(),
            what,
            expected,
        }
    }
}

/// The problems found so far. A section with any is refused whole, but parsing goes on so that
/// the operator gets the whole list at once; meanwhile a refused value's default stands in for
/// it, and is never used.
#[derive(Debug, Default)]
struct Found(Vec<Problem>);

impl Found {
    fn note(&mut self, variable: &'static str, message: String) {
        self.0.push(Problem { variable, message });
    }

    /// The value `parsed` holds, or `default` when the variable is unset or refused.
    fn or<T>(&mut self, parsed: Result<Option<T>, Problem>, default: T) -> T {
        self.or_else(parsed, || default)
    }

    fn or_else<T>(&mut self, parsed: Result<Option<T>, Problem>, default: impl FnOnce() -> T) -> T {
        match parsed {
            Ok(value) => value.unwrap_or_else(default),
            Err(problem) => {
                self.0.push(problem);
                default()
            }
        }
    }

    /// A section's value, or `None` with its problems noted.
    fn section<T>(&mut self, section: Result<T, Vec<Problem>>) -> Option<T> {
        section.map_err(|problems| self.0.extend(problems)).ok()
    }

    /// `section`, unless a problem was found while building it.
    fn into_section<T>(self, section: T) -> Result<T, Vec<Problem>> {
        if self.0.is_empty() { Ok(section) } else { Err(self.0) }
    }
}

fn non_empty(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|v| !v.is_empty())
}

/// `variable` parsed by its type's `FromStr`; `None` when unset or blank.
fn setting<T: FromStr<Err = InvalidValue>>(variable: &'static str, value: Option<&str>) -> Result<Option<T>, Problem> {
    non_empty(value)
        .map(str::parse)
        .transpose()
        .map_err(|error: InvalidValue| Problem {
            variable,
            message: error.to_string(),
        })
}

/// `variable` as a whole number in `range`; `None` when unset or blank.
fn number<T: TryFrom<u64>>(
    variable: &'static str,
    value: Option<&str>,
    range: RangeInclusive<u64>,
) -> Result<Option<T>, Problem> {
    let Some(text) = non_empty(value) else {
        return Ok(None);
    };
    let Ok(n) = text.parse::<u64>() else {
        return Err(Problem {
            variable,
            message: format!("`{text}` is not a whole number"),
        });
    };
    match T::try_from(n) {
        Ok(number) if range.contains(&n) => Ok(Some(number)),
        Ok(_) | Err(_) => Err(Problem {
            variable,
            message: format!("{n} is out of range: use {} to {}", range.start(), range.end()),
        }),
    }
}

/// `variable` as a duration (see [`parse_duration`]); `None` when unset or blank.
fn duration(variable: &'static str, value: Option<&str>) -> Result<Option<Duration>, Problem> {
    non_empty(value)
        .map(|text| {
            parse_duration(text).ok_or_else(|| Problem {
                variable,
                message: format!("`{text}` is not a duration: use seconds or a number with s, m, h or d (e.g. 7d)"),
            })
        })
        .transpose()
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

#[derive(Debug, Clone)]
pub struct Settings {
    /// Required by `run`, `review` and `check`; see [`Settings::require_provider`].
    pub provider: Option<ProviderSettings>,
    pub fallback: Option<ProviderSettings>,
    pub broker: BrokerSettings,
    pub limits: LimitSettings,
    pub review: ReviewSettings,
    pub cache: CacheSettings,
    pub health_port: u16,
    pub drain_timeout: Duration,
    pub log: LogSettings,
}

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
        Self::from_raw(&raw)
    }

    /// Loads from the given variables only (tests, and callers that build an environment).
    pub fn from_vars<'a>(vars: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self, SettingsError> {
        Self::from_raw(&Raw::from_vars(vars)?)
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

    fn from_raw(raw: &Raw) -> Result<Self, SettingsError> {
        let mut found = Found::default();
        // One timeout for the calls of both providers.
        let timeout = Duration::from_millis(found.or(
            number(
                "API_LLM_TIMEOUT_MS",
                raw.api_llm_timeout_ms.as_deref(),
                1_000..=3_600_000,
            ),
            DEFAULT_TIMEOUT_MS,
        ));
        let main = found.section(MainSection::parse(raw, timeout));
        let fallback = found.section(FallbackSection::parse(raw, timeout));
        let broker = found.section(BrokerSettings::parse(raw));
        let review = found.section(ReviewSettings::parse(raw));
        let ops = found.section(OpsSection::parse(raw));
        let log = found.section(LogSettings::parse(raw));
        let cache = found.section(CacheSettings::parse(raw));
        match (main, fallback, broker, review, ops, log, cache) {
            (Some(main), Some(fallback), Some(broker), Some(review), Some(ops), Some(log), Some(cache))
                if found.0.is_empty() =>
            {
                Ok(Self {
                    limits: LimitSettings {
                        plan: main.plan,
                        max_concurrent_requests: main.max_concurrent_requests,
                        fallback_max_concurrent_requests: fallback.max_concurrent_requests,
                        worker_concurrency: ops
                            .worker_concurrency
                            .unwrap_or_else(|| default_worker_concurrency(main.max_concurrent_requests)),
                    },
                    provider: main.provider,
                    fallback: fallback.provider,
                    broker,
                    review,
                    cache,
                    health_port: ops.health_port,
                    drain_timeout: ops.drain_timeout,
                    log,
                })
            }
            _ => Err(SettingsError::Invalid(found.0)),
        }
    }
}

impl Raw {
    fn from_vars<'a>(vars: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self, SettingsError> {
        let map: std::collections::HashMap<String, String> =
            vars.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        Ok(config::Config::builder()
            .add_source(config::Environment::default().source(Some(map)).try_parsing(false))
            .build()?
            .try_deserialize()?)
    }
}

const DEFAULT_TIMEOUT_MS: u64 = 300_000;

// The providers: `API_LLM_*`.

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
    pub(crate) fn default_cap(self) -> u32 {
        match self {
            Self::Lite | Self::Pro => 1,
            Self::Max => 5,
            Self::Developer => DEVELOPER_DEFAULT_CAP,
        }
    }
}

impl FromStr for Plan {
    type Err = InvalidValue;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().to_ascii_lowercase().as_str() {
            "lite" => Ok(Self::Lite),
            "pro" => Ok(Self::Pro),
            "max" => Ok(Self::Max),
            "developer" | "pay-per-token" | "payg" => Ok(Self::Developer),
            _ => Err(InvalidValue::new(text, "a plan", "lite, pro, max or developer")),
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

/// `API_LLM_THINKING`: `medium` (or `enabled`) and `disabled` (or `off`). There is no text for
/// [`Thinking::ProviderDefault`]: only the fallback uses it, and it is not a setting.
impl FromStr for Thinking {
    type Err = InvalidValue;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().to_ascii_lowercase().as_str() {
            "medium" | "enabled" => Ok(Self::Enabled),
            "disabled" | "off" => Ok(Self::Disabled),
            _ => Err(InvalidValue::new(text, "a thinking setting", "medium or disabled")),
        }
    }
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
    pub(crate) fn provider_name(&self) -> String {
        provider_name(&self.base_url)
    }

    pub(crate) fn is_coding_plan(&self) -> bool {
        self.base_url.path().contains("/coding/")
    }

    /// The base URL as an operator wrote it, without credentials (keys never go in URLs, but a
    /// proxy's user info might).
    pub(crate) fn display_base_url(&self) -> String {
        let mut url = self.base_url.clone();
        let _ = url.set_password(None);
        let _ = url.set_username("");
        url.to_string()
    }
}

pub(crate) fn provider_name(url: &Url) -> String {
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

/// What one provider is built from: its three variables (the main provider's or the
/// fallback's, named in `variables`: model, base URL, key) and the request options that differ
/// between the two.
struct ProviderInput<'a> {
    variables: [&'static str; 3],
    model: Option<&'a str>,
    base_url: Option<&'a str>,
    api_key: Option<&'a SecretString>,
    thinking: Thinking,
    custom_json: Map<String, Value>,
    timeout: Duration,
}

impl ProviderInput<'_> {
    /// The provider, if all three variables are set; `None` if none is (no provider, no problem).
    fn build(self, found: &mut Found) -> Option<ProviderSettings> {
        let [model_var, url_var, key_var] = self.variables;
        let model = non_empty(self.model);
        let base_url = non_empty(self.base_url);
        // A key pasted from a file often carries a trailing newline, which would break the header.
        let key = self
            .api_key
            .map(|k| k.expose_secret().trim())
            .filter(|k| !k.is_empty())
            .map(|k| SecretString::from(k.to_owned()));
        if model.is_none() && base_url.is_none() && key.is_none() {
            return None;
        }
        let before = found.0.len();
        if model.is_none() {
            found.note(
                model_var,
                format!(
                    "is empty: set a model id, such as one Z.AI lists ({}); the other {url_var} and {key_var} are set",
                    models::listed_in_words()
                ),
            );
        }
        if key.is_none() {
            found.note(key_var, format!("is empty: set the API key that matches {url_var}"));
        }
        let url = match base_url {
            None => {
                found.note(
                    url_var,
                    format!(
                        "is empty: use {CODING_PLAN_BASE_URL} (Coding Plan) or {DEVELOPER_BASE_URL} (pay-per-token)"
                    ),
                );
                None
            }
            Some(text) => match Url::parse(text) {
                Ok(url) if matches!(url.scheme(), "http" | "https") && url.host_str().is_some() => {
                    Some(normalise_base_url(url))
                }
                Ok(_) | Err(_) => {
                    found.note(
                        url_var,
                        format!("`{text}` is not an http(s) URL: use {CODING_PLAN_BASE_URL} or {DEVELOPER_BASE_URL}"),
                    );
                    None
                }
            },
        };
        if let (Some(url), Some(model)) = (&url, model) {
            if url.path().trim_end_matches('/').ends_with("/v1") && url.host_str().is_some_and(|h| h.ends_with("z.ai"))
            {
                found.note(
                    url_var,
                    "Z.AI has no /v1 segment: drop it (calls would answer 404)".to_owned(),
                );
            }
            if url.path().contains("/coding/") && !models::is_glm(model) {
                found.note(
                    model_var,
                    format!(
                        "`{model}` is not a GLM model, and the Coding Plan endpoint rejects non-GLM names: use {}",
                        models::listed_in_words()
                    ),
                );
            }
        }
        if found.0.len() > before {
            return None;
        }
        Some(ProviderSettings {
            model: model?.to_owned(),
            base_url: url?,
            api_key: key?,
            thinking: self.thinking,
            custom_json: self.custom_json,
            timeout: self.timeout,
        })
    }
}

fn normalise_base_url(mut url: Url) -> Url {
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    url
}

/// The main provider (Fixed Mode), its request options, and the plan that caps the deployment's
/// calls.
#[derive(Debug)]
struct MainSection {
    provider: Option<ProviderSettings>,
    plan: Plan,
    max_concurrent_requests: u32,
}

impl MainSection {
    fn parse(raw: &Raw, timeout: Duration) -> Result<Self, Vec<Problem>> {
        let mut found = Found::default();
        let thinking = found.or(
            setting("API_LLM_THINKING", raw.api_llm_thinking.as_deref()),
            Thinking::Enabled,
        );
        let custom_json = found.or_else(custom_json(raw.api_llm_custom_json.as_deref()), Map::new);
        let provider = ProviderInput {
            variables: [
                "API_LLM_PROVIDER_MODEL",
                "API_OPENAI_FORCE_BASE_URL",
                "API_OPEN_AI_API_KEY",
            ],
            model: raw.api_llm_provider_model.as_deref(),
            base_url: raw.api_openai_force_base_url.as_deref(),
            api_key: raw.api_open_ai_api_key.as_ref(),
            thinking,
            custom_json,
            timeout,
        }
        .build(&mut found);
        let inferred = if provider.as_ref().is_some_and(ProviderSettings::is_coding_plan) {
            Plan::Lite
        } else {
            Plan::Developer
        };
        let plan = found.or(setting("API_LLM_PLAN", raw.api_llm_plan.as_deref()), inferred);
        let most = if plan == Plan::Developer {
            1_000
        } else {
            u64::from(MAX_PLAN_CAP)
        };
        let max_concurrent_requests = found.or(
            number(
                "API_LLM_MAX_CONCURRENT_REQUESTS",
                raw.api_llm_max_concurrent_requests.as_deref(),
                1..=most,
            ),
            plan.default_cap(),
        );
        found.into_section(Self {
            provider,
            plan,
            max_concurrent_requests,
        })
    }
}

/// The fallback provider and its own cap. It shares no request options with the main provider
/// (it may not be a GLM endpoint at all), only the timeout.
#[derive(Debug)]
struct FallbackSection {
    provider: Option<ProviderSettings>,
    max_concurrent_requests: u32,
}

impl FallbackSection {
    fn parse(raw: &Raw, timeout: Duration) -> Result<Self, Vec<Problem>> {
        let mut found = Found::default();
        let provider = ProviderInput {
            variables: [
                "API_LLM_FALLBACK_PROVIDER_MODEL",
                "API_LLM_FALLBACK_BASE_URL",
                "API_LLM_FALLBACK_API_KEY",
            ],
            model: raw.api_llm_fallback_provider_model.as_deref(),
            base_url: raw.api_llm_fallback_base_url.as_deref(),
            api_key: raw.api_llm_fallback_api_key.as_ref(),
            thinking: Thinking::ProviderDefault,
            custom_json: Map::new(),
            timeout,
        }
        .build(&mut found);
        // A Coding Plan fallback is taken for the smallest plan.
        let default_cap = if provider.as_ref().is_some_and(ProviderSettings::is_coding_plan) {
            Plan::Lite.default_cap()
        } else {
            DEVELOPER_DEFAULT_CAP
        };
        let max_concurrent_requests = found.or(
            number(
                "API_LLM_FALLBACK_MAX_CONCURRENT_REQUESTS",
                raw.api_llm_fallback_max_concurrent_requests.as_deref(),
                1..=1_000,
            ),
            default_cap,
        );
        found.into_section(Self {
            provider,
            max_concurrent_requests,
        })
    }
}

/// `API_LLM_CUSTOM_JSON`: a JSON object, with the product's `{"openaiCompatible": {...}}`
/// wrapper taken off.
fn custom_json(value: Option<&str>) -> Result<Option<Map<String, Value>>, Problem> {
    let Some(text) = non_empty(value) else {
        return Ok(None);
    };
    let refused = |message: String| Problem {
        variable: "API_LLM_CUSTOM_JSON",
        message,
    };
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(mut object)) => {
            // Only a lone wrapper is unwrapped; a key of that name among others is the operator's.
            if object.len() == 1
                && let Some(Value::Object(inner)) = object.get_mut("openaiCompatible")
            {
                return Ok(Some(std::mem::take(inner)));
            }
            Ok(Some(object))
        }
        Ok(other) => {
            let kind = match other {
                Value::Array(_) => "an array",
                Value::String(_) => "a string",
                Value::Number(_) => "a number",
                Value::Bool(_) => "a boolean",
                _ => "null",
            };
            Err(refused(format!(
                "is {kind}, not a JSON object: use e.g. {{\"thinking\":{{\"type\":\"enabled\",\"budget_tokens\":20000}}}}"
            )))
        }
        Err(error) => Err(refused(format!(
            "is not valid JSON ({error}): use e.g. {{\"thinking\":{{\"type\":\"disabled\"}}}}"
        ))),
    }
}

// The broker: `API_RABBITMQ_*`.

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
    pub(crate) fn display_uri(&self) -> String {
        self.uris
            .iter()
            .map(|uri| redact_uri(uri.expose_secret()))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn parse(raw: &Raw) -> Result<Self, Vec<Problem>> {
        let mut found = Found::default();
        let topology = parse_topology(&mut found, raw);
        let uris = match raw.api_rabbitmq_uri.as_ref().map(ExposeSecret::expose_secret) {
            Some(list) if !list.trim().is_empty() => parse_uri_list(&mut found, list),
            _ => vec![SecretString::from(with_frame_max(DEFAULT_RABBITMQ_URI))],
        };
        found.into_section(Self { uris, topology })
    }
}

const DEFAULT_RABBITMQ_URI: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

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
fn parse_uri_list(found: &mut Found, list: &str) -> Vec<SecretString> {
    let mut uris = Vec::new();
    for text in list.split(',').map(str::trim) {
        if text.is_empty() {
            found.note(
                "API_RABBITMQ_URI",
                "has an empty entry; separate URIs with single commas".to_owned(),
            );
        } else if !(text.starts_with("amqp://") || text.starts_with("amqps://")) {
            found.note(
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

fn parse_topology(found: &mut Found, raw: &Raw) -> Topology {
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
            found.note(
                variable,
                format!("`{slot}` is not a usable name: at most 200 bytes, not starting with amq."),
            );
        }
    }
    topology
}

// Limits: assembled from the provider sections and the replica's own concurrency.

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

// Reviews: `API_REVIEW_*`.

#[derive(Debug, Clone)]
pub struct ReviewSettings {
    pub max_job_bytes: usize,
    pub max_attempts: u32,
    pub max_job_age: Duration,
    /// `None`: by endpoint ([`ReviewSettings::max_calls_for`]).
    pub max_calls: Option<u32>,
    /// Tokens of diff one review call may carry; `None`: as much as the model's window allows.
    pub call_tokens: Option<usize>,
}

const DEFAULT_MAX_JOB_BYTES: usize = 16 * 1024 * 1024;
const DEFAULT_MAX_ATTEMPTS: u32 = 5;
const DEFAULT_MAX_JOB_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// On a Coding Plan every prompt counts against the 5-hour window, so a PR gets fewer calls there
/// than on pay-per-token, where a call costs only its tokens.
const DEFAULT_MAX_CALLS_CODING_PLAN: u32 = 3;
const DEFAULT_MAX_CALLS_PAY_PER_TOKEN: u32 = 6;

impl ReviewSettings {
    /// The most review calls one job may make on `provider`'s endpoint.
    pub(crate) fn max_calls_for(&self, provider: &ProviderSettings) -> u32 {
        self.max_calls.unwrap_or(if provider.is_coding_plan() {
            DEFAULT_MAX_CALLS_CODING_PLAN
        } else {
            DEFAULT_MAX_CALLS_PAY_PER_TOKEN
        })
    }

    fn parse(raw: &Raw) -> Result<Self, Vec<Problem>> {
        let mut found = Found::default();
        let section = Self {
            max_job_bytes: found.or(
                number(
                    "API_REVIEW_MAX_JOB_BYTES",
                    raw.api_review_max_job_bytes.as_deref(),
                    1_024..=128 * 1024 * 1024,
                ),
                DEFAULT_MAX_JOB_BYTES,
            ),
            max_attempts: found.or(
                number(
                    "API_REVIEW_MAX_ATTEMPTS",
                    raw.api_review_max_attempts.as_deref(),
                    1..=100,
                ),
                DEFAULT_MAX_ATTEMPTS,
            ),
            max_job_age: found.or(
                duration("API_REVIEW_MAX_JOB_AGE", raw.api_review_max_job_age.as_deref()),
                DEFAULT_MAX_JOB_AGE,
            ),
            max_calls: found.or(
                number("API_REVIEW_MAX_CALLS", raw.api_review_max_calls.as_deref(), 1..=50).map(|n| n.map(Some)),
                None,
            ),
            call_tokens: found.or(
                number(
                    "API_REVIEW_CALL_TOKENS",
                    raw.api_review_call_tokens.as_deref(),
                    1_000..=10_000_000,
                )
                .map(|n| n.map(Some)),
                None,
            ),
        };
        found.into_section(section)
    }
}

// The answer cache: `API_REVIEW_CACHE_*`.

/// The leader's cache of model answers by request body (see `crate::cache`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    /// How long an answer is reused; zero turns the cache off.
    pub ttl: Duration,
    /// The most bytes of answers kept; zero turns the cache off.
    pub max_bytes: u64,
}

const DEFAULT_CACHE_TTL_SECS: u64 = 3_600;
const DEFAULT_CACHE_MAX_MB: u64 = 32;

impl CacheSettings {
    /// The cache is in use.
    pub fn enabled(&self) -> bool {
        !self.ttl.is_zero() && self.max_bytes > 0
    }

    fn parse(raw: &Raw) -> Result<Self, Vec<Problem>> {
        let mut found = Found::default();
        // A week at most: an answer is only worth reusing for a redelivery or an unchanged push,
        // and the plan's longest window is a week.
        let ttl_secs: u64 = found.or(
            number(
                "API_REVIEW_CACHE_TTL_SECS",
                raw.api_review_cache_ttl_secs.as_deref(),
                0..=7 * 86_400,
            ),
            DEFAULT_CACHE_TTL_SECS,
        );
        let max_mb: u64 = found.or(
            number(
                "API_REVIEW_CACHE_MAX_MB",
                raw.api_review_cache_max_mb.as_deref(),
                0..=4_096,
            ),
            DEFAULT_CACHE_MAX_MB,
        );
        let section = Self {
            ttl: Duration::from_secs(ttl_secs),
            max_bytes: max_mb.saturating_mul(1024 * 1024),
        };
        found.into_section(section)
    }
}

// This replica's operation: `API_WORKER_*`, `WORKER_HEALTH_PORT`.

/// How this replica runs: reviews at once, the health port, the drain on shutdown.
#[derive(Debug)]
struct OpsSection {
    /// `None`: follows the deployment's cap (see [`default_worker_concurrency`]).
    worker_concurrency: Option<u32>,
    health_port: u16,
    drain_timeout: Duration,
}

const DEFAULT_DRAIN_TIMEOUT_MS: u64 = 60_000;
const DEFAULT_HEALTH_PORT: u16 = 3334;

impl OpsSection {
    fn parse(raw: &Raw) -> Result<Self, Vec<Problem>> {
        let mut found = Found::default();
        let section = Self {
            worker_concurrency: found.or(
                number(
                    "API_WORKER_CONCURRENCY",
                    raw.api_worker_concurrency.as_deref(),
                    1..=1_000,
                )
                .map(|n| n.map(Some)),
                None,
            ),
            health_port: found.or(
                number("WORKER_HEALTH_PORT", raw.worker_health_port.as_deref(), 0..=65_535),
                DEFAULT_HEALTH_PORT,
            ),
            drain_timeout: Duration::from_millis(found.or(
                number(
                    "API_WORKER_DRAIN_TIMEOUT_MS",
                    raw.api_worker_drain_timeout_ms.as_deref(),
                    0..=3_600_000,
                ),
                DEFAULT_DRAIN_TIMEOUT_MS,
            )),
        };
        found.into_section(section)
    }
}

/// The cap plus a quarter (at least one): jobs held beyond the cap wait locally for a free call,
/// so the next review starts the moment one ends instead of after a broker round trip (a result
/// confirm, an ack and a delivery), which at cap 1 costs about 3% of the plan.
fn default_worker_concurrency(cap: u32) -> u32 {
    cap.saturating_add((cap / 4).max(1))
}

// Logs: `API_LOG_*`.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
    }
}

impl FromStr for LogFormat {
    type Err = InvalidValue;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err(InvalidValue::new(text, "a log format", "text or json")),
        }
    }
}

/// Dependencies that log every frame or request at `info` and below: held at `warn` unless the
/// level names targets itself.
const CHATTY_DEPENDENCIES: [&str; 5] = ["lapin", "amq_protocol", "hyper", "reqwest", "h2"];

/// `API_LOG_LEVEL`, checked at start: a level (`trace`, `debug`, `info`, `warn`, `error`, `off`),
/// or `tracing` filter directives (`info,review_worker=debug`). A level alone also holds
/// [`CHATTY_DEPENDENCIES`] at `warn`; directives with a `=` are taken as written.
///
/// Stricter than `tracing`'s own syntax in one way: a bare word must be a level. `tracing` would
/// take `inof` for a target and log nothing else; here it is a typo, refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLevel {
    directives: Vec<Directive>,
}

impl LogLevel {
    fn with_chatty_dependencies_quiet(mut directives: Vec<Directive>) -> Self {
        directives.extend(
            CHATTY_DEPENDENCIES
                .iter()
                .filter_map(|target| format!("{target}=warn").parse::<Directive>().ok()),
        );
        Self { directives }
    }

    /// The filter for the subscriber. Building it cannot fail: the directives were checked at
    /// start.
    pub fn filter(&self) -> EnvFilter {
        self.directives
            .iter()
            .cloned()
            .fold(EnvFilter::default(), EnvFilter::add_directive)
    }
}

impl Default for LogLevel {
    /// `info`.
    fn default() -> Self {
        Self::with_chatty_dependencies_quiet(vec![Directive::from(LevelFilter::INFO)])
    }
}

impl FromStr for LogLevel {
    type Err = InvalidValue;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        const WHAT: &str = "a log level";
        const EXPECTED: &str = "trace, debug, info, warn, error or off, or target=level directives such as \
             info,review_worker=debug";
        let mut directives = Vec::new();
        // Empty entries are skipped, as `tracing` does: `info,` is `info`.
        for entry in text.split(',').map(str::trim).filter(|entry| !entry.is_empty()) {
            let directive = if entry.contains(['=', '[']) {
                entry.parse::<Directive>().ok()
            } else {
                entry.parse::<LevelFilter>().ok().map(Directive::from)
            };
            directives.push(directive.ok_or_else(|| InvalidValue::new(entry, WHAT, EXPECTED))?);
        }
        if directives.is_empty() {
            return Err(InvalidValue::new(text, WHAT, EXPECTED));
        }
        Ok(if text.contains('=') {
            Self { directives }
        } else {
            Self::with_chatty_dependencies_quiet(directives)
        })
    }
}

/// The directives, comma-separated: what [`LogLevel::from_str`] reads back to the same level.
impl std::fmt::Display for LogLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (at, directive) in self.directives.iter().enumerate() {
            if at > 0 {
                f.write_str(",")?;
            }
            write!(f, "{directive}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub level: LogLevel,
    pub format: LogFormat,
}

impl LogSettings {
    fn parse(raw: &Raw) -> Result<Self, Vec<Problem>> {
        let mut found = Found::default();
        let section = Self {
            level: found.or_else(
                setting("API_LOG_LEVEL", raw.api_log_level.as_deref()),
                LogLevel::default,
            ),
            format: found.or(
                setting("API_LOG_FORMAT", raw.api_log_format.as_deref()),
                LogFormat::Text,
            ),
        };
        found.into_section(section)
    }
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
    fn a_pr_gets_three_calls_on_the_coding_plan_six_on_pay_per_token_or_what_is_set() {
        let coding = with(&[]).unwrap();
        assert_eq!(coding.review.max_calls_for(&coding.provider.unwrap()), 3);
        let developer = with(&[("API_OPENAI_FORCE_BASE_URL", "https://api.z.ai/api/paas/v4/")]).unwrap();
        assert_eq!(developer.review.max_calls_for(&developer.provider.unwrap()), 6);
        let set = with(&[("API_REVIEW_MAX_CALLS", "2"), ("API_REVIEW_CALL_TOKENS", "20000")]).unwrap();
        assert_eq!(set.review.max_calls_for(&set.provider.unwrap()), 2);
        assert_eq!(set.review.call_tokens, Some(20_000));
        assert_eq!(coding.review.call_tokens, None, "by default, what the window allows");
        let refused = problems(with(&[
            ("API_REVIEW_MAX_CALLS", "0"),
            ("API_REVIEW_CALL_TOKENS", "999"),
        ]));
        let variables: Vec<&str> = refused.iter().map(|p| p.variable).collect();
        assert_eq!(variables, ["API_REVIEW_MAX_CALLS", "API_REVIEW_CALL_TOKENS"]);
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

    /// The raw layer of `vars`, as the environment would give it.
    fn raw(vars: &[(&'static str, &'static str)]) -> Raw {
        Raw::from_vars(vars.iter().copied()).unwrap()
    }

    fn variables(problems: &[Problem]) -> Vec<&'static str> {
        problems.iter().map(|p| p.variable).collect()
    }

    const TIMEOUT: Duration = Duration::from_secs(300);

    #[test]
    fn the_main_section_refuses_an_unknown_plan_thinking_and_a_cap_above_the_plans_naming_each() {
        let mut vars = CODING.to_vec();
        vars.extend([
            ("API_LLM_PLAN", "ultra"),
            ("API_LLM_THINKING", "high"),
            ("API_LLM_MAX_CONCURRENT_REQUESTS", "31"),
        ]);
        let found = MainSection::parse(&raw(&vars), TIMEOUT).unwrap_err();
        assert_eq!(
            variables(&found),
            ["API_LLM_THINKING", "API_LLM_PLAN", "API_LLM_MAX_CONCURRENT_REQUESTS"]
        );
        assert!(found[0].message.contains("use medium or disabled"), "{found:?}");
        assert!(found[1].message.contains("`ultra` is not a plan"), "{found:?}");
        assert!(found[2].message.contains("use 1 to 30"), "{found:?}");
    }

    #[test]
    fn the_main_section_names_each_missing_variable_of_a_half_set_triple() {
        let found = MainSection::parse(&raw(&[("API_LLM_PROVIDER_MODEL", "glm-5.1")]), TIMEOUT).unwrap_err();
        assert_eq!(variables(&found), ["API_OPEN_AI_API_KEY", "API_OPENAI_FORCE_BASE_URL"]);
        assert!(found[1].message.contains(CODING_PLAN_BASE_URL), "{found:?}");
    }

    #[test]
    fn the_main_section_advises_the_models_z_ai_lists() {
        let found = MainSection::parse(
            &raw(&[("API_LLM_PROVIDER_MODEL", "gpt-4o"), CODING[1], CODING[2]]),
            TIMEOUT,
        )
        .unwrap_err();
        assert!(found[0].message.ends_with(&models::listed_in_words()), "{found:?}");
    }

    #[test]
    fn the_fallback_is_checked_by_the_same_rules_as_the_main_provider_under_its_own_names() {
        let found = FallbackSection::parse(
            &raw(&[
                ("API_LLM_FALLBACK_PROVIDER_MODEL", "glm-4.5"),
                ("API_LLM_FALLBACK_BASE_URL", "https://api.z.ai/api/paas/v1"),
                ("API_LLM_FALLBACK_API_KEY", "sk-fallback"),
                ("API_LLM_FALLBACK_MAX_CONCURRENT_REQUESTS", "0"),
            ]),
            TIMEOUT,
        )
        .unwrap_err();
        assert_eq!(
            variables(&found),
            ["API_LLM_FALLBACK_BASE_URL", "API_LLM_FALLBACK_MAX_CONCURRENT_REQUESTS"]
        );
        assert!(found[0].message.contains("no /v1 segment"), "{found:?}");
    }

    #[test]
    fn a_fallback_sends_no_thinking_and_a_coding_plan_fallback_defaults_to_one_call() {
        let fallback = FallbackSection::parse(
            &raw(&[
                ("API_LLM_FALLBACK_PROVIDER_MODEL", "glm-4.5-air"),
                ("API_LLM_FALLBACK_BASE_URL", CODING_PLAN_BASE_URL),
                ("API_LLM_FALLBACK_API_KEY", "sk-fallback\n"),
            ]),
            TIMEOUT,
        )
        .unwrap();
        let provider = fallback.provider.unwrap();
        assert_eq!(provider.thinking, Thinking::ProviderDefault);
        assert_eq!(provider.timeout, TIMEOUT);
        assert_eq!(fallback.max_concurrent_requests, 1);
        let none = FallbackSection::parse(&raw(&[]), TIMEOUT).unwrap();
        assert!(none.provider.is_none());
        assert_eq!(none.max_concurrent_requests, DEVELOPER_DEFAULT_CAP);
    }

    #[test]
    fn the_broker_section_refuses_reserved_queue_names_and_non_amqp_uris() {
        let found = BrokerSettings::parse(&raw(&[
            ("API_RABBITMQ_JOBS_QUEUE", "amq.jobs"),
            ("API_RABBITMQ_URI", "http://rabbit:5672/"),
        ]))
        .unwrap_err();
        assert_eq!(variables(&found), ["API_RABBITMQ_JOBS_QUEUE", "API_RABBITMQ_URI"]);
        assert!(found[0].message.contains("not starting with amq."), "{found:?}");
    }

    #[test]
    fn the_review_section_refuses_an_unknown_duration_unit_zero_attempts_and_tiny_jobs() {
        let found = ReviewSettings::parse(&raw(&[
            ("API_REVIEW_MAX_JOB_AGE", "2w"),
            ("API_REVIEW_MAX_ATTEMPTS", "0"),
            ("API_REVIEW_MAX_JOB_BYTES", "12"),
        ]))
        .unwrap_err();
        assert_eq!(
            variables(&found),
            [
                "API_REVIEW_MAX_JOB_BYTES",
                "API_REVIEW_MAX_ATTEMPTS",
                "API_REVIEW_MAX_JOB_AGE"
            ]
        );
        assert!(found[2].message.contains("is not a duration"), "{found:?}");
        let review = ReviewSettings::parse(&raw(&[("API_REVIEW_MAX_JOB_AGE", "36h")])).unwrap();
        assert_eq!(review.max_job_age, Duration::from_secs(36 * 3_600));
    }

    #[test]
    fn the_cache_section_is_on_by_default_off_at_zero_and_refuses_a_ttl_over_a_week() {
        let default = CacheSettings::parse(&raw(&[])).unwrap();
        assert!(default.enabled());
        assert_eq!(default.ttl, Duration::from_secs(3_600));
        assert_eq!(default.max_bytes, 32 * 1024 * 1024);
        assert!(
            !CacheSettings::parse(&raw(&[("API_REVIEW_CACHE_TTL_SECS", "0")]))
                .unwrap()
                .enabled()
        );
        assert!(
            !CacheSettings::parse(&raw(&[("API_REVIEW_CACHE_MAX_MB", "0")]))
                .unwrap()
                .enabled()
        );
        let found = CacheSettings::parse(&raw(&[
            ("API_REVIEW_CACHE_TTL_SECS", "604801"),
            ("API_REVIEW_CACHE_MAX_MB", "lots"),
        ]))
        .unwrap_err();
        assert_eq!(
            variables(&found),
            ["API_REVIEW_CACHE_TTL_SECS", "API_REVIEW_CACHE_MAX_MB"]
        );
    }

    #[test]
    fn the_ops_section_refuses_a_port_above_65535_and_a_concurrency_that_is_not_a_number() {
        let found = OpsSection::parse(&raw(&[
            ("WORKER_HEALTH_PORT", "70000"),
            ("API_WORKER_CONCURRENCY", "many"),
            ("API_WORKER_DRAIN_TIMEOUT_MS", "-1"),
        ]))
        .unwrap_err();
        assert_eq!(
            variables(&found),
            [
                "API_WORKER_CONCURRENCY",
                "WORKER_HEALTH_PORT",
                "API_WORKER_DRAIN_TIMEOUT_MS"
            ]
        );
        assert!(found[1].message.contains("use 0 to 65535"), "{found:?}");
        let ops = OpsSection::parse(&raw(&[])).unwrap();
        assert_eq!((ops.worker_concurrency, ops.health_port), (None, DEFAULT_HEALTH_PORT));
    }

    #[test]
    fn the_log_section_refuses_a_typoed_level_naming_api_log_level() {
        for typo in ["inof", "debug,lapin=loud", "info!", "verbose"] {
            let found = LogSettings::parse(&raw(&[("API_LOG_LEVEL", typo), ("API_LOG_FORMAT", "yaml")])).unwrap_err();
            assert_eq!(variables(&found), ["API_LOG_LEVEL", "API_LOG_FORMAT"], "{typo}");
            assert!(found[0].message.contains("is not a log level"), "{typo}: {found:?}");
        }
        // And it stops the start like any other setting.
        let found = problems(with(&[("API_LOG_LEVEL", "inof")]));
        assert_eq!(variables(&found), ["API_LOG_LEVEL"]);
        assert!(
            found[0]
                .to_string()
                .starts_with("API_LOG_LEVEL: `inof` is not a log level"),
            "{found:?}"
        );
    }

    #[test]
    fn a_bare_level_holds_chatty_dependencies_at_warn_and_directives_are_taken_as_written() {
        let level: LogLevel = "DEBUG".parse().unwrap();
        assert_eq!(
            level.to_string(),
            "debug,lapin=warn,amq_protocol=warn,hyper=warn,reqwest=warn,h2=warn"
        );
        assert_eq!(
            LogLevel::default().to_string(),
            level.to_string().replace("debug,", "info,")
        );
        let written: LogLevel = "info,review_worker=trace".parse().unwrap();
        assert_eq!(written.to_string(), "info,review_worker=trace");
        assert_eq!(with(&[]).unwrap().log.level, LogLevel::default());
        // The filter has what was checked: nothing is lost on the way to the subscriber.
        assert!(written.filter().to_string().contains("review_worker=trace"));
    }

    #[test]
    fn plans_log_formats_and_log_levels_read_back_what_they_print() {
        for plan in [Plan::Lite, Plan::Pro, Plan::Max, Plan::Developer] {
            assert_eq!(plan.as_str().parse::<Plan>(), Ok(plan));
            assert_eq!(plan.as_str().to_ascii_uppercase().parse::<Plan>(), Ok(plan));
        }
        for format in [LogFormat::Text, LogFormat::Json] {
            assert_eq!(format.as_str().parse::<LogFormat>(), Ok(format));
        }
        for text in ["trace", "off", "warn,review_worker=debug", "info,[job{id}]=debug"] {
            let level: LogLevel = text.parse().unwrap();
            assert_eq!(level.to_string().parse::<LogLevel>(), Ok(level), "{text}");
        }
    }

    #[test]
    fn thinking_and_plan_take_their_documented_spellings_and_refuse_others() {
        for (text, thinking) in [
            ("medium", Thinking::Enabled),
            (" Enabled ", Thinking::Enabled),
            ("disabled", Thinking::Disabled),
            ("OFF", Thinking::Disabled),
        ] {
            assert_eq!(text.parse::<Thinking>(), Ok(thinking), "{text}");
        }
        for alias in ["pay-per-token", "payg"] {
            assert_eq!(alias.parse::<Plan>(), Ok(Plan::Developer));
        }
        let refused = "high".parse::<Thinking>().unwrap_err();
        assert_eq!(
            refused.to_string(),
            "`high` is not a thinking setting: use medium or disabled"
        );
        assert!("provider-default".parse::<Thinking>().is_err());
        assert!("enterprise".parse::<Plan>().is_err());
        assert!("xml".parse::<LogFormat>().is_err());
    }

    #[test]
    fn without_the_triple_only_commands_that_need_it_fail() {
        let settings = Settings::from_vars([]).unwrap();
        assert!(settings.provider.is_none());
        assert!(settings.require_provider().is_err());
    }
}
