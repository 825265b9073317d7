//! Z.AI's error answers as they appear on the wire: status, body shape and message text in
//! English or Chinese, copied from `shared/reference/zai-wire.md`, plus the reset-time format of
//! the quota errors (1308, 1310).
//!
//! Bodies are `{"error":{"code":"1308","message":"..."}}` with the code as a string, except the
//! uncoded 401 (`{"error":{"message":"token expired or incorrect","type":"401"}}`) that Z.AI sends
//! for a key of the other plan, and the 404 of an unknown path, which is the gateway's and not
//! Z.AI's. Where the reference only gives a message's beginning (`...`) it is kept as written: the
//! worker must classify by code and never by text, and a made-up ending would pretend otherwise.

use axum::http::StatusCode;
use chrono::{DateTime, FixedOffset, Offset as _, Utc};

use super::Lang;

/// One answer, ready to send, plus the key it is counted under in `/_sim/stats`.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    /// The Z.AI code for coded errors, the HTTP status for uncoded ones and successes.
    pub(crate) key: u16,
    pub(crate) body: String,
}

impl Answer {
    pub(crate) fn ok(body: String) -> Self {
        Self {
            status: StatusCode::OK,
            key: 200,
            body,
        }
    }
}

/// Wrong, unknown or missing key: Z.AI's 1000–1004 family.
pub(crate) fn invalid_key(lang: Lang) -> Answer {
    coded(1000, lang, None)
}

/// The uncoded 401 that the product document describes for a key sent to the other plan.
pub(crate) fn token_expired() -> Answer {
    Answer {
        status: StatusCode::UNAUTHORIZED,
        key: 401,
        body: r#"{"error":{"message":"token expired or incorrect","type":"401"}}"#.to_owned(),
    }
}

/// Unknown path (e.g. the `/v1` segment that Z.AI does not have).
pub(crate) fn not_found(path: &str) -> Answer {
    Answer {
        status: StatusCode::NOT_FOUND,
        key: 404,
        body: serde_json::json!({"status": 404, "error": "Not Found", "path": path}).to_string(),
    }
}

pub(crate) fn method_not_allowed(path: &str) -> Answer {
    Answer {
        status: StatusCode::METHOD_NOT_ALLOWED,
        key: 405,
        body: serde_json::json!({"status": 405, "error": "Method Not Allowed", "path": path}).to_string(),
    }
}

/// The answer Z.AI gives for `code`. A code from 100 to 599 is taken as a bare HTTP status
/// (`500`, `503`, `401`…), which is how `--fail-first-code` asks for gateway failures; the quota
/// codes need `reset`, and fall back to "now" so a caller that forgot it still gets a valid text.
pub(crate) fn coded(code: u16, lang: Lang, reset: Option<DateTime<Utc>>) -> Answer {
    if code == 401 {
        return token_expired();
    }
    let (status, message) = match code {
        100..=599 => (
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            http_message(code, lang).to_owned(),
        ),
        1308 => (
            StatusCode::TOO_MANY_REQUESTS,
            five_hour_message(lang, reset.unwrap_or_else(Utc::now)),
        ),
        1310 => (
            StatusCode::TOO_MANY_REQUESTS,
            weekly_message(lang, reset.unwrap_or_else(Utc::now)),
        ),
        _ => {
            let (status, en, zh) = fixed(code);
            let text = match lang {
                Lang::En => en,
                Lang::Zh => zh,
            };
            let text = if text.is_empty() {
                match lang {
                    Lang::En => format!("Simulated error {code}"),
                    Lang::Zh => format!("模拟错误 {code}"),
                }
            } else {
                text.to_owned()
            };
            (status, text)
        }
    };
    let body = serde_json::json!({"error": {"code": code.to_string(), "message": message}});
    Answer {
        status,
        key: code,
        body: body.to_string(),
    }
}

/// Beijing time, the zone Z.AI's reset texts are in (they carry no zone of their own).
pub(crate) fn format_reset(reset: DateTime<Utc>) -> String {
    let beijing = FixedOffset::east_opt(8 * 3600).unwrap_or_else(|| Utc.fix());
    reset.with_timezone(&beijing).format("%Y-%m-%d %H:%M:%S").to_string()
}

fn five_hour_message(lang: Lang, reset: DateTime<Utc>) -> String {
    let at = format_reset(reset);
    match lang {
        Lang::En => format!("Usage limit reached for 5 hour. Your limit will reset at {at}"),
        Lang::Zh => format!("已达到 5 小时的使用上限。您的限额将在 {at} 重置。"),
    }
}

fn weekly_message(lang: Lang, reset: DateTime<Utc>) -> String {
    let at = format_reset(reset);
    match lang {
        Lang::En => format!("Weekly/Monthly Limit Exhausted. Your limit will reset at {at}"),
        Lang::Zh => format!("您已达到每周/每月使用上限，您的限额将在 {at} 重置"),
    }
}

fn http_message(code: u16, lang: Lang) -> &'static str {
    match (code, lang) {
        (500, Lang::En) => "Internal Error",
        (500, Lang::Zh) => "内部错误",
        (502, Lang::En) => "Bad Gateway",
        (502, Lang::Zh) => "网关错误",
        (503, Lang::En) => "Service Unavailable",
        (503, Lang::Zh) => "服务不可用",
        (504, Lang::En) => "Gateway Timeout",
        (504, Lang::Zh) => "网关超时",
        (_, Lang::En) => "Simulated HTTP error",
        (_, Lang::Zh) => "模拟 HTTP 错误",
    }
}

/// Status, English and Chinese text of the codes whose message has no variable part. An empty
/// text means "not known": the caller writes a generic one rather than inventing Z.AI's.
fn fixed(code: u16) -> (StatusCode, &'static str, &'static str) {
    const TOO_MANY: StatusCode = StatusCode::TOO_MANY_REQUESTS;
    const BAD: StatusCode = StatusCode::BAD_REQUEST;
    match code {
        1000..=1004 => (
            StatusCode::UNAUTHORIZED,
            "Authorization Token is invalid, please ensure ...",
            "Authorization Token非法，请确认Authorization Token正确传递。",
        ),
        1113 => (
            TOO_MANY,
            "Insufficient balance or no resource package. Please recharge.",
            "余额不足或无可用资源包，请充值。",
        ),
        1210 => (
            BAD,
            "Invalid API parameter, please check the documentation.",
            "API 调用参数有误，请检查文档。",
        ),
        1211 => (
            BAD,
            "Unknown Model, please check the model code.",
            "模型不存在，请检查模型代码。",
        ),
        1214 => (
            BAD,
            "The messages parameter is illegal ...",
            "messages 参数非法。请检查文档。",
        ),
        1302 => (
            TOO_MANY,
            "High concurrency usage of this API, please reduce concurrency or contact customer service to increase limits",
            "您当前使用该API的并发数过高，请降低并发，或联系客服增加限额。",
        ),
        1303 => (
            TOO_MANY,
            "High frequency usage of this API, please reduce frequency ...",
            "您当前使用该API的频率过高，请降低频率，或联系客服增加限额。",
        ),
        1305 => (
            TOO_MANY,
            "The service may be temporarily overloaded, please try again later",
            "该模型当前访问量过大，请您稍后再试",
        ),
        1309 => (
            TOO_MANY,
            "Your GLM Coding Plan package has expired ...",
            "您的 GLM Coding Plan 套餐已到期 ...",
        ),
        1313 => (
            TOO_MANY,
            "Your account's current usage pattern does not comply with the Fair Usage Policy ...",
            "您的账户当前使用方式不符合公平使用政策 ...",
        ),
        _ => (TOO_MANY, "", ""),
    }
}
