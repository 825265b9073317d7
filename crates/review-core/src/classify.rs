//! What a provider's answer means for the job: the one place that reads Z.AI's error codes.
//!
//! Z.AI answers many different problems with HTTP 429, so the class comes from the body's `code`
//! (a string), never from the status alone, and never from the message text, which the China
//! twin sends in Chinese. The message is read only for the reset time of a quota window.
//! The caller decides retry / wait / pause / fail from [`ProviderError::action`].

use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use serde_json::Value;

/// Which quota window ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaWindow {
    FiveHour,
    Weekly,
    /// 1316–1321: further 5-hour / 7-day / spend-limit variants whose text is unconfirmed.
    Other,
}

impl QuotaWindow {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FiveHour => "5-hour",
            Self::Weekly => "weekly",
            Self::Other => "quota",
        }
    }
}

/// What the worker does about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// A transient failure: retry with backoff, counting an attempt.
    Retry,
    /// Concurrency, rate or overload: retry shortly without counting an attempt.
    RetrySoon { lower_cap: bool },
    /// A quota window is exhausted: pause the provider until the reset (or a capped backoff).
    PauseUntilReset,
    /// Key, account, plan or model problem: pause and re-probe; never fail the job.
    PauseAccount,
    /// The provider will never accept this request: fail the job (`provider_rejected`).
    Reject,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// Could not reach the provider (DNS, refused, reset, TLS): `detail` is the exact upstream
    /// error chain.
    #[error("connection error: {detail}")]
    Connection { detail: String },
    #[error("no answer within {}s", .0.as_secs())]
    Timeout(Duration),
    /// 5xx without a known code, an unreadable body, a `network_error` finish.
    #[error("server error (HTTP {status}{}): {message}", code_suffix(.code))]
    Server {
        status: u16,
        code: Option<String>,
        message: String,
    },
    /// 1302 (in flight), 1303 (frequency), 1305 (overloaded), 1312 (model busy), unknown 429s.
    #[error("rate limited (HTTP {status}{}): {message}", code_suffix(.code))]
    RateLimited {
        status: u16,
        code: Option<String>,
        message: String,
    },
    /// 1308, 1310, 1316–1321.
    #[error("{} quota exhausted (code {code}){}: {message}", .window.as_str(), reset_suffix(.reset_at))]
    QuotaExhausted {
        code: String,
        window: QuotaWindow,
        reset_at: Option<DateTime<Utc>>,
        message: String,
    },
    /// 401, 1000–1004, 1113, 1309, 1211, 1311, 1313, 404: the operator must act.
    #[error("account or configuration problem (HTTP {status}{}): {message}; {}", code_suffix(.code), .problem.advice())]
    Account {
        status: u16,
        code: Option<String>,
        message: String,
        problem: AccountProblem,
    },
    /// 1210, 1214, other 4xx, context too large, content refused.
    #[error("request rejected (HTTP {status}{}): {message}", code_suffix(.code))]
    Rejected {
        status: u16,
        code: Option<String>,
        message: String,
    },
    /// An answer body larger than `limit` bytes: not read further. A review is tens of
    /// kilobytes; megabytes are a broken proxy or a runaway answer, which a retry may not repeat.
    #[error("answer body over {limit} bytes (HTTP {status}): refused unread")]
    TooLarge { status: u16, limit: usize },
}

fn code_suffix(code: &Option<String>) -> String {
    code.as_deref().map(|c| format!(", code {c}")).unwrap_or_default()
}

fn reset_suffix(reset_at: &Option<DateTime<Utc>>) -> String {
    reset_at
        .map(|at| format!(", resets at {}", crate::contract::rfc3339(at)))
        .unwrap_or_default()
}

/// Which account or configuration problem an answer names: each is the operator's to fix, and
/// each has its own advice. Decided from the code (or, without one, the status) in [`classify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountProblem {
    /// 401/403, 1000–1004, and 1113 at the probe: the key is invalid, or is one plan's key sent
    /// to the other plan's endpoint.
    InvalidKey,
    /// 1113 at review time: no balance or resource package (or a Coding Plan key on the
    /// developer endpoint).
    NoBalance,
    /// 1309: the Coding Plan package has expired.
    PlanExpired,
    /// 1211: the endpoint does not know the model id.
    UnknownModel,
    /// 1311: the model exists but the plan does not include it.
    ModelNotInPlan,
    /// 1313: the account is throttled under the Fair Usage Policy.
    FairUse,
    /// 404: the base URL is wrong.
    WrongBaseUrl,
}

impl AccountProblem {
    /// The problem a Z.AI code names, if it names one.
    fn from_code(code: &str) -> Option<Self> {
        Some(match code {
            "1000" | "1001" | "1002" | "1003" | "1004" => Self::InvalidKey,
            "1113" => Self::NoBalance,
            "1309" => Self::PlanExpired,
            "1211" => Self::UnknownModel,
            "1311" => Self::ModelNotInPlan,
            "1313" => Self::FairUse,
            _ => return None,
        })
    }

    /// What the operator should do: goes into the error's text, so into `check`'s output, the
    /// start-up failure and the pause log line.
    pub(crate) fn advice(self) -> &'static str {
        match self {
            Self::InvalidKey => {
                "the key doesn't match the endpoint: Coding Plan keys work only on \
                 https://api.z.ai/api/coding/paas/v4, developer keys only on https://api.z.ai/api/paas/v4/ \
                 (check API_OPENAI_FORCE_BASE_URL and API_OPEN_AI_API_KEY)"
            }
            Self::NoBalance => {
                "insufficient balance or no resource package; if this is a Coding Plan key, \
                 point API_OPENAI_FORCE_BASE_URL at https://api.z.ai/api/coding/paas/v4"
            }
            Self::PlanExpired => "the GLM Coding Plan package has expired: renew it at z.ai/subscribe",
            Self::UnknownModel => {
                "the model id is wrong: set API_LLM_PROVIDER_MODEL to one the endpoint lists \
                 (glm-5.1, glm-5-turbo, glm-5, glm-4.5, glm-4.5-air)"
            }
            Self::ModelNotInPlan => "the model is not included in this plan: choose another API_LLM_PROVIDER_MODEL",
            Self::FairUse => "the account is throttled under the Fair Usage Policy: slow down or contact Z.AI",
            Self::WrongBaseUrl => {
                "the base URL is wrong: use https://api.z.ai/api/coding/paas/v4 or \
                 https://api.z.ai/api/paas/v4/ (no /v1 segment)"
            }
        }
    }

    /// A few words an operator can grep for; also the reason `/ready` gives while paused.
    pub(crate) fn meaning(self) -> &'static str {
        match self {
            Self::InvalidKey => "invalid key",
            Self::WrongBaseUrl => "wrong base URL",
            Self::UnknownModel | Self::ModelNotInPlan => "model not available",
            Self::NoBalance | Self::PlanExpired | Self::FairUse => "account unusable",
        }
    }

    /// Problems that `GET /models` answers 200 to, so a successful probe says nothing about them.
    fn invisible_to_probe(self) -> bool {
        matches!(self, Self::PlanExpired | Self::ModelNotInPlan | Self::FairUse)
    }
}

impl ProviderError {
    /// Classifies a non-success answer (or a 200 that carries an `error` object).
    pub fn from_response(status: u16, body: &str) -> Self {
        let parsed: Option<Value> = serde_json::from_str(body).ok();
        let error = parsed.as_ref().and_then(|v| v.get("error"));
        // Z.AI sends the code as a string; accept a number too, and the `type` of the
        // code-less 401 shape only as a fallback for the status. Anything that is not a short
        // token is no code: it would travel into logs, `/ready` and the pause log.
        let code = error
            .and_then(|e| e.get("code"))
            .and_then(|c| match c {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .filter(|c| is_code_token(c));
        let message = error
            .and_then(|e| e.get("message"))
            .and_then(Value::as_str)
            .map(crate::contract::one_line)
            .unwrap_or_else(|| crate::contract::one_line(&body.chars().take(300).collect::<String>()));
        classify(status, code, message, Utc::now())
    }

    /// At the probe (a cheap `GET /models`), a 1113 "insufficient balance" is what a key sent
    /// to the other plan's endpoint gets: say that, not "recharge".
    pub fn at_probe(self) -> Self {
        match self {
            Self::Account {
                status, code, message, ..
            } if code.as_deref() == Some("1113") => Self::Account {
                status,
                code,
                message,
                problem: AccountProblem::InvalidKey,
            },
            other => other,
        }
    }

    pub fn action(&self) -> Action {
        match self {
            Self::Connection { .. } | Self::Timeout(_) | Self::Server { .. } | Self::TooLarge { .. } => Action::Retry,
            Self::RateLimited { code, .. } => Action::RetrySoon {
                lower_cap: code.as_deref() == Some("1302"),
            },
            Self::QuotaExhausted { .. } => Action::PauseUntilReset,
            Self::Account { .. } => Action::PauseAccount,
            Self::Rejected { .. } => Action::Reject,
        }
    }

    /// Z.AI's code, or the HTTP status for answers without one; `None` when nothing answered.
    pub fn code(&self) -> Option<String> {
        match self {
            Self::Connection { .. } | Self::Timeout(_) => None,
            Self::QuotaExhausted { code, .. } => Some(code.clone()),
            Self::TooLarge { status, .. } => Some(status.to_string()),
            Self::Server { status, code, .. }
            | Self::RateLimited { status, code, .. }
            | Self::Account { status, code, .. }
            | Self::Rejected { status, code, .. } => Some(code.clone().unwrap_or_else(|| status.to_string())),
        }
    }

    /// A few words an operator can grep for.
    pub fn meaning(&self) -> &'static str {
        match self {
            Self::Connection { .. } => "connection error",
            Self::Timeout(_) => "timeout",
            Self::Server { .. } => "server error",
            Self::TooLarge { .. } => "answer too large",
            Self::RateLimited { code, .. } => match code.as_deref() {
                Some("1302") => "too much concurrency",
                Some("1303") => "too many requests",
                Some("1305") => "provider overloaded",
                Some("1312") => "model busy",
                _ => "rate limited",
            },
            Self::QuotaExhausted { window, .. } => match window {
                QuotaWindow::FiveHour => "5-hour quota exhausted",
                QuotaWindow::Weekly => "weekly quota exhausted",
                QuotaWindow::Other => "quota exhausted",
            },
            Self::Account { problem, .. } => problem.meaning(),
            Self::Rejected { .. } => "request rejected",
        }
    }

    /// The code as a metric label: one of the codes this module classifies, an HTTP status it
    /// classifies, `-` when nothing answered, else `other`. The provider may send any string,
    /// and each new label value is a new time series for as long as the process lives.
    pub fn code_label(&self) -> &'static str {
        self.code().map_or("-", |code| known_code(&code).unwrap_or("other"))
    }

    /// 1309 (plan expired), 1311 (model not in the plan), 1313 (fair-use throttle): account
    /// problems that `GET /models` answers 200 to, so a successful probe says nothing about them.
    pub fn invisible_to_probe(&self) -> bool {
        matches!(self, Self::Account { problem, .. } if problem.invisible_to_probe())
    }
}

/// Every code `classify` names, and the HTTP statuses it tells apart, as static labels.
const KNOWN_CODES: &[&str] = &[
    "1000", "1001", "1002", "1003", "1004", "1113", "1210", "1211", "1214", "1302", "1303", "1305", "1308", "1309",
    "1310", "1311", "1312", "1313", "1316", "1317", "1318", "1319", "1320", "1321", "200", "400", "401", "403", "404",
    "408", "409", "413", "422", "429", "500", "502", "503", "504",
];

fn known_code(code: &str) -> Option<&'static str> {
    KNOWN_CODES.iter().copied().find(|known| *known == code)
}

/// Z.AI's codes are four digits; 32 characters of `[A-Za-z0-9_.-]` leave room for other
/// providers' names (`rate_limit_exceeded`) without letting a page of text pass for a code.
fn is_code_token(code: &str) -> bool {
    (1..=32).contains(&code.len())
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn classify(status: u16, code: Option<String>, message: String, now: DateTime<Utc>) -> ProviderError {
    use ProviderError::*;
    let account = |problem| Account {
        status,
        code: code.clone(),
        message: message.clone(),
        problem,
    };
    if let Some(problem) = code.as_deref().and_then(AccountProblem::from_code) {
        return account(problem);
    }
    match code.as_deref() {
        Some("1302" | "1303" | "1305" | "1312") => RateLimited { status, code, message },
        Some(c @ ("1308" | "1310" | "1316" | "1317" | "1318" | "1319" | "1320" | "1321")) => QuotaExhausted {
            code: c.to_owned(),
            window: match c {
                "1308" => QuotaWindow::FiveHour,
                "1310" => QuotaWindow::Weekly,
                _ => window_from_message(&message),
            },
            reset_at: parse_reset_time(&message, now),
            message,
        },
        Some("1210" | "1214") => Rejected { status, code, message },
        _ => match status {
            401 | 403 => account(AccountProblem::InvalidKey),
            404 => account(AccountProblem::WrongBaseUrl),
            // An unknown 429 is a rate limit: back off, never fail the job for it.
            429 => RateLimited { status, code, message },
            408 | 500..=599 => Server { status, code, message },
            400..=499 => Rejected { status, code, message },
            // A 200 carrying an error object with an unknown code: retrying is the safe side.
            _ => Server { status, code, message },
        },
    }
}

fn window_from_message(message: &str) -> QuotaWindow {
    let lower = message.to_lowercase();
    if lower.contains("5 hour") || lower.contains("5-hour") || message.contains("5 小时") || message.contains("5小时")
    {
        QuotaWindow::FiveHour
    } else if lower.contains("week") || lower.contains("7-day") || lower.contains("7 day") || message.contains('周') {
        QuotaWindow::Weekly
    } else {
        QuotaWindow::Other
    }
}

/// Reads `YYYY-MM-DD HH:MM:SS` in the message as Beijing time (UTC+8), which is what Z.AI's quota
/// API confirms for 1308 and what we assume for the other windows. A reset lies ahead by
/// definition, so of several times the earliest one after `now` is taken: another date earlier in
/// the message (when the plan started, the time of the answer) must not pass for the reset. When
/// none lies ahead (a skewed clock), the latest is returned and the caller treats it as past.
pub(crate) fn parse_reset_time(message: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let beijing = chrono::FixedOffset::east_opt(8 * 3600)?;
    let times = message.char_indices().filter_map(|(at, c)| {
        if !c.is_ascii_digit() {
            return None;
        }
        let candidate = message.get(at..at.saturating_add(19))?;
        let naive = NaiveDateTime::parse_from_str(candidate, "%Y-%m-%d %H:%M:%S").ok()?;
        Some(beijing.from_local_datetime(&naive).single()?.with_timezone(&Utc))
    });
    let (ahead, behind): (Vec<_>, Vec<_>) = times.partition(|t| *t > now);
    ahead.into_iter().min().or_else(|| behind.into_iter().max())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The advice is a constant (it goes into error texts as is), so the model list it spells out
    /// is pinned to the models table here rather than built at run time.
    #[test]
    fn the_unknown_model_advice_lists_exactly_the_models_the_table_lists() {
        let advice = AccountProblem::UnknownModel.advice();
        let listed = crate::models::LISTED_IDS.split(',').collect::<Vec<_>>().join(", ");
        assert!(advice.contains(&format!("({listed})")), "{advice} vs {listed}");
    }

    fn body(code: &str, message: &str) -> String {
        serde_json::json!({"error": {"code": code, "message": message}}).to_string()
    }

    fn class(status: u16, code: &str, message: &str) -> ProviderError {
        ProviderError::from_response(status, &body(code, message))
    }

    fn problem(e: &ProviderError) -> Option<AccountProblem> {
        match e {
            ProviderError::Account { problem, .. } => Some(*problem),
            _ => None,
        }
    }

    #[test]
    fn each_account_code_names_its_problem_and_the_problem_gives_the_advice() {
        use AccountProblem::*;
        let coding_plan_keys = "Coding Plan keys work only on https://api.z.ai/api/coding/paas/v4";
        for (status, code, expected, advice) in [
            (401, "1000", InvalidKey, coding_plan_keys),
            (401, "1001", InvalidKey, coding_plan_keys),
            (401, "1002", InvalidKey, coding_plan_keys),
            (401, "1003", InvalidKey, coding_plan_keys),
            (401, "1004", InvalidKey, coding_plan_keys),
            (429, "1113", NoBalance, "insufficient balance or no resource package"),
            (429, "1309", PlanExpired, "renew it at z.ai/subscribe"),
            (
                400,
                "1211",
                UnknownModel,
                "set API_LLM_PROVIDER_MODEL to one the endpoint lists",
            ),
            (429, "1311", ModelNotInPlan, "not included in this plan"),
            (429, "1313", FairUse, "Fair Usage Policy"),
        ] {
            let e = class(status, code, "whatever the text says");
            assert_eq!(problem(&e), Some(expected), "{code}");
            assert!(e.to_string().ends_with(expected.advice()), "{code}: {e}");
            assert!(expected.advice().contains(advice), "{code}: {}", expected.advice());
            assert_eq!(e.meaning(), expected.meaning(), "{code}");
        }
    }

    #[test]
    fn without_a_code_401_and_403_are_an_invalid_key_and_404_a_wrong_base_url() {
        for (status, expected) in [
            (401, AccountProblem::InvalidKey),
            (403, AccountProblem::InvalidKey),
            (404, AccountProblem::WrongBaseUrl),
        ] {
            let e = ProviderError::from_response(status, "");
            assert_eq!(problem(&e), Some(expected), "{status}");
        }
        assert!(AccountProblem::WrongBaseUrl.advice().contains("no /v1 segment"));
    }

    #[test]
    fn the_meanings_operators_grep_for_come_from_the_problem() {
        use AccountProblem::*;
        for (p, meaning) in [
            (InvalidKey, "invalid key"),
            (WrongBaseUrl, "wrong base URL"),
            (UnknownModel, "model not available"),
            (ModelNotInPlan, "model not available"),
            (NoBalance, "account unusable"),
            (PlanExpired, "account unusable"),
            (FairUse, "account unusable"),
        ] {
            assert_eq!(p.meaning(), meaning, "{p:?}");
        }
    }

    #[test]
    fn every_authorization_code_pauses_for_the_operator() {
        for code in ["1000", "1001", "1002", "1003", "1004"] {
            let e = class(
                401,
                code,
                "Authorization Token is invalid, please ensure the token is correct",
            );
            assert_eq!(problem(&e), Some(AccountProblem::InvalidKey), "{code}");
            assert_eq!(e.action(), Action::PauseAccount, "{code}");
            assert_eq!(e.code().as_deref(), Some(code));
            assert_eq!(e.meaning(), "invalid key");
        }
    }

    #[test]
    fn the_codeless_401_shape_is_an_invalid_key() {
        let e = ProviderError::from_response(
            401,
            r#"{"error":{"message":"token expired or incorrect","type":"401"}}"#,
        );
        assert_eq!(e.action(), Action::PauseAccount);
        assert_eq!(e.code().as_deref(), Some("401"));
        assert!(e.to_string().contains("Coding Plan keys work only on"));
    }

    #[test]
    fn insufficient_balance_is_an_account_problem_not_a_rate_limit() {
        let e = class(
            429,
            "1113",
            "Insufficient balance or no resource package. Please recharge.",
        );
        assert_eq!(e.action(), Action::PauseAccount);
        assert_eq!(e.meaning(), "account unusable");
    }

    #[test]
    fn at_the_probe_1113_means_the_key_does_not_match_the_endpoint() {
        let e = class(
            429,
            "1113",
            "Insufficient balance or no resource package. Please recharge.",
        )
        .at_probe();
        assert_eq!(problem(&e), Some(AccountProblem::InvalidKey));
        assert_eq!(e.meaning(), "invalid key");
        assert!(e.to_string().contains("Coding Plan keys work only on"));
    }

    #[test]
    fn invalid_parameters_reject_the_job() {
        for code in ["1210", "1214"] {
            let e = class(400, code, "Invalid API parameter, please check the documentation.");
            assert_eq!(e.action(), Action::Reject, "{code}");
        }
    }

    #[test]
    fn an_unknown_model_pauses_for_the_operator() {
        let e = class(400, "1211", "Unknown Model, please check the model code.");
        assert_eq!(e.action(), Action::PauseAccount);
        assert_eq!(e.meaning(), "model not available");
    }

    #[test]
    fn concurrency_1302_retries_soon_and_lowers_the_cap() {
        let msg = "High concurrency usage of this API, please reduce concurrency or contact customer service to increase limits";
        let e = class(429, "1302", msg);
        assert_eq!(e.action(), Action::RetrySoon { lower_cap: true });
        assert_eq!(e.meaning(), "too much concurrency");
        let e = class(429, "1302", "Rate limit reached for requests");
        assert_eq!(e.action(), Action::RetrySoon { lower_cap: true });
    }

    #[test]
    fn frequency_overload_and_busy_model_retry_soon_without_lowering_the_cap() {
        for (status, code) in [
            (429, "1303"),
            (429, "1305"),
            (503, "1305"),
            (200, "1305"),
            (429, "1312"),
        ] {
            let e = class(
                status,
                code,
                "The service may be temporarily overloaded, please try again later",
            );
            assert_eq!(e.action(), Action::RetrySoon { lower_cap: false }, "{code}");
        }
    }

    #[test]
    fn the_five_hour_window_carries_its_reset_time_in_utc() {
        let e = class(
            429,
            "1308",
            "Usage limit reached for 5 hour. Your limit will reset at 2026-09-09 05:38:28",
        );
        let ProviderError::QuotaExhausted { window, reset_at, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(*window, QuotaWindow::FiveHour);
        assert_eq!(crate::contract::rfc3339(reset_at.unwrap()), "2026-09-08T21:38:28Z");
        assert_eq!(e.action(), Action::PauseUntilReset);
    }

    #[test]
    fn the_chinese_five_hour_message_is_read_the_same_way() {
        let e = class(
            429,
            "1308",
            "已达到 5 小时的使用上限。您的限额将在 2026-09-06 09:04:58 重置。",
        );
        let ProviderError::QuotaExhausted { window, reset_at, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(*window, QuotaWindow::FiveHour);
        assert_eq!(crate::contract::rfc3339(reset_at.unwrap()), "2026-09-06T01:04:58Z");
    }

    #[test]
    fn the_weekly_window_in_both_languages() {
        let e = class(
            429,
            "1310",
            "Weekly/Monthly Limit Exhausted. Your limit will reset at 2026-09-03 18:01:05",
        );
        let ProviderError::QuotaExhausted { window, reset_at, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(*window, QuotaWindow::Weekly);
        assert_eq!(crate::contract::rfc3339(reset_at.unwrap()), "2026-09-03T10:01:05Z");
        let e = class(
            429,
            "1310",
            "您已达到每周/每月使用上限，您的限额将在 2026-09-03 18:01:05 重置",
        );
        assert!(matches!(
            e,
            ProviderError::QuotaExhausted {
                window: QuotaWindow::Weekly,
                reset_at: Some(_),
                ..
            }
        ));
    }

    #[test]
    fn the_expired_plan_and_plan_model_and_fair_use_pause_for_the_operator() {
        for (code, meaning) in [
            ("1309", "account unusable"),
            ("1311", "model not available"),
            ("1313", "account unusable"),
        ] {
            let e = class(429, code, "Your GLM Coding Plan package has expired");
            assert_eq!(e.action(), Action::PauseAccount, "{code}");
            assert_eq!(e.meaning(), meaning, "{code}");
        }
    }

    #[test]
    fn the_further_window_variants_pause_until_reset_even_without_a_time() {
        for code in ["1316", "1317", "1318", "1319", "1320", "1321"] {
            let e = class(429, code, "Spend limit reached");
            assert!(
                matches!(e, ProviderError::QuotaExhausted { reset_at: None, .. }),
                "{code}"
            );
            assert_eq!(e.action(), Action::PauseUntilReset);
        }
        let e = class(429, "1317", "Usage limit reached for 7-day window");
        assert!(matches!(
            e,
            ProviderError::QuotaExhausted {
                window: QuotaWindow::Weekly,
                ..
            }
        ));
    }

    #[test]
    fn an_unknown_429_is_a_rate_limit_with_backoff() {
        let e = ProviderError::from_response(429, "Too Many Requests");
        assert_eq!(e.action(), Action::RetrySoon { lower_cap: false });
        let e = class(429, "1399", "something new");
        assert_eq!(e.action(), Action::RetrySoon { lower_cap: false });
    }

    #[test]
    fn server_errors_retry_and_a_404_is_a_wrong_base_url() {
        assert_eq!(
            ProviderError::from_response(502, "<html>bad gateway</html>").action(),
            Action::Retry
        );
        assert_eq!(
            ProviderError::from_response(500, &body("500", "Internal error")).action(),
            Action::Retry
        );
        let e = ProviderError::from_response(404, "");
        assert_eq!(e.action(), Action::PauseAccount);
        assert_eq!(e.meaning(), "wrong base URL");
    }

    #[test]
    fn a_numeric_code_is_read_like_a_string() {
        let e = ProviderError::from_response(429, r#"{"error":{"code":1302,"message":"x"}}"#);
        assert_eq!(e.code().as_deref(), Some("1302"));
    }

    #[test]
    fn the_metric_label_is_a_known_code_or_other() {
        assert_eq!(
            class(429, "1308", "Usage limit reached for 5 hour.").code_label(),
            "1308"
        );
        assert_eq!(class(429, "1313", "Fair Usage Policy").code_label(), "1313");
        assert_eq!(ProviderError::from_response(502, "bad gateway").code_label(), "502");
        assert_eq!(class(429, "1777", "something new").code_label(), "other");
        assert_eq!(class(418, "teapot", "short and stout").code_label(), "other");
        assert_eq!(ProviderError::from_response(599, "").code_label(), "other");
        assert_eq!(ProviderError::Timeout(Duration::from_secs(1)).code_label(), "-");
        let body = "x".repeat(4096);
        assert_eq!(ProviderError::from_response(429, &body).code_label(), "429");
    }

    #[test]
    fn a_code_that_is_not_a_short_token_is_no_code() {
        let long = "1".repeat(33);
        let e = class(429, &long, "x");
        assert_eq!(e.code().as_deref(), Some("429"), "classified by the status alone");
        let e = class(401, "1000\n<script>", "x");
        assert_eq!(e.code().as_deref(), Some("401"));
        assert_eq!(
            class(429, "rate_limit_exceeded", "x").code().as_deref(),
            Some("rate_limit_exceeded")
        );
    }

    #[test]
    fn plan_expired_plan_model_and_fair_use_are_invisible_to_the_probe() {
        for code in ["1309", "1311", "1313"] {
            assert!(class(429, code, "x").invisible_to_probe(), "{code}");
        }
        for code in ["1000", "1113", "1211"] {
            assert!(!class(401, code, "x").invisible_to_probe(), "{code}");
        }
        assert!(!ProviderError::from_response(404, "").invisible_to_probe());
    }

    #[test]
    fn an_oversized_body_is_a_transient_failure() {
        let e = ProviderError::TooLarge {
            status: 200,
            limit: 4 << 20,
        };
        assert_eq!(e.action(), Action::Retry);
        assert_eq!(e.meaning(), "answer too large");
        assert_eq!(e.code_label(), "200");
    }

    #[test]
    fn of_several_times_in_a_message_the_first_one_ahead_is_the_reset() {
        let now = Utc.with_ymd_and_hms(2026, 9, 8, 12, 0, 0).unwrap();
        let message = "As of 2026-09-08 19:00:00 you used 100%. Your limit will reset at 2026-09-08 23:30:00";
        assert_eq!(
            crate::contract::rfc3339(parse_reset_time(message, now).unwrap()),
            "2026-09-08T15:30:00Z"
        );
        let message = "Plan ends 2026-12-31 00:00:00; your limit will reset at 2026-09-08 23:30:00";
        assert_eq!(
            crate::contract::rfc3339(parse_reset_time(message, now).unwrap()),
            "2026-09-08T15:30:00Z",
            "the earliest time ahead, not the first in the text"
        );
    }

    #[test]
    fn a_message_whose_times_are_all_past_yields_the_latest_of_them() {
        let now = Utc.with_ymd_and_hms(2026, 9, 9, 0, 0, 0).unwrap();
        let message = "Since 2026-09-01 00:00:00. Your limit will reset at 2026-09-08 05:38:28";
        assert_eq!(
            crate::contract::rfc3339(parse_reset_time(message, now).unwrap()),
            "2026-09-07T21:38:28Z"
        );
    }

    #[test]
    fn reset_times_are_only_read_when_well_formed() {
        let now = Utc::now();
        assert!(parse_reset_time("reset at 2026-13-01 00:00:00", now).is_none());
        assert!(parse_reset_time("no time here", now).is_none());
    }
}
