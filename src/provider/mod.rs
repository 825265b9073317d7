//! The OpenAI-compatible provider client: `POST {base}/chat/completions` and the cheap
//! `GET {base}/models` probe. It turns every failure into a classified [`ProviderError`]
//! (see `error.rs`) and never lets the API key reach a log line or an error message.

pub(crate) mod error;

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::{StatusCode, Url};
use secrecy::ExposeSecret;
use serde::Serialize;
use serde_json::{Map, Value, json};

pub(crate) use error::{Action, ProviderError, QuotaWindow};

use crate::contract::Usage;
use crate::settings::{ProviderSettings, Thinking};

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    pub role: &'static str,
    pub content: String,
}

impl Message {
    pub fn system(content: impl Into<String>) -> Self {
        Self {
            role: "system",
            content: content.into(),
        }
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: "user",
            content: content.into(),
        }
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self {
            role: "assistant",
            content: content.into(),
        }
    }
}

/// What the model answered.
#[derive(Debug, Clone)]
pub struct ChatAnswer {
    pub content: Option<String>,
    /// `tool_calls[].function.arguments`, for models that answer through a tool call.
    pub tool_arguments: Vec<String>,
    pub finish_reason: Option<String>,
    pub usage: Usage,
    pub latency: Duration,
}

/// A provider the worker can call; cheap to clone.
#[derive(Debug, Clone)]
pub struct Provider {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    settings: ProviderSettings,
    name: String,
    chat_url: Url,
    models_url: Url,
    http: reqwest::Client,
}

impl Provider {
    pub fn new(settings: &ProviderSettings) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("review-worker/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("could not build the HTTP client")?;
        Ok(Self {
            inner: Arc::new(Inner {
                name: settings.provider_name(),
                chat_url: settings
                    .base_url
                    .join("chat/completions")
                    .context("base URL cannot take a path")?,
                models_url: settings
                    .base_url
                    .join("models")
                    .context("base URL cannot take a path")?,
                settings: settings.clone(),
                http,
            }),
        })
    }

    /// `z.ai`, or the host for other endpoints.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn model(&self) -> &str {
        &self.inner.settings.model
    }

    pub fn settings(&self) -> &ProviderSettings {
        &self.inner.settings
    }

    /// The request body: model and messages, the thinking setting, then `API_LLM_CUSTOM_JSON`
    /// deep-merged on top so the operator's override always wins.
    pub fn chat_body(&self, messages: &[Message]) -> Value {
        let settings = &self.inner.settings;
        let mut body = json!({
            "model": settings.model,
            "messages": messages,
            "stream": false,
        });
        match settings.thinking {
            Thinking::Enabled => body["thinking"] = json!({"type": "enabled"}),
            Thinking::Disabled => body["thinking"] = json!({"type": "disabled"}),
            Thinking::ProviderDefault => {}
        }
        if let Value::Object(target) = &mut body {
            deep_merge(target, &settings.custom_json);
        }
        body
    }

    pub async fn chat(&self, messages: &[Message]) -> Result<ChatAnswer, ProviderError> {
        let started = Instant::now();
        let response = self
            .inner
            .http
            .post(self.inner.chat_url.clone())
            .bearer_auth(self.inner.settings.api_key.expose_secret())
            .json(&self.chat_body(messages))
            .send()
            .await
            .map_err(|e| self.transport_error(e))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| self.transport_error(e))?;
        if !status.is_success() {
            return Err(ProviderError::from_response(status.as_u16(), &text));
        }
        let value: Value = serde_json::from_str(&text).map_err(|e| ProviderError::Server {
            status: status.as_u16(),
            code: None,
            message: format!("unreadable answer body: {e}"),
        })?;
        // Z.AI can report an overload (1305) inside an HTTP 200.
        if value.get("error").is_some() {
            return Err(ProviderError::from_response(status.as_u16(), &text));
        }
        parse_chat_answer(&value, started.elapsed())
    }

    /// The product's "Test & save": lists the models the key may use.
    pub async fn list_models(&self) -> Result<Vec<String>, ProviderError> {
        let response = self
            .inner
            .http
            .get(self.inner.models_url.clone())
            .bearer_auth(self.inner.settings.api_key.expose_secret())
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| self.transport_error(e))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| self.transport_error(e))?;
        if status != StatusCode::OK {
            return Err(ProviderError::from_response(status.as_u16(), &text));
        }
        let value: Value = serde_json::from_str(&text).map_err(|e| ProviderError::Server {
            status: status.as_u16(),
            code: None,
            message: format!("unreadable /models body: {e}"),
        })?;
        Ok(value
            .get("data")
            .and_then(Value::as_array)
            .map(|models| {
                models
                    .iter()
                    .filter_map(|m| m.get("id").and_then(Value::as_str).map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Keeps the whole cause chain (DNS, refused, TLS, …): the operator's question at 3 a.m. is
    /// "which of those was it", and reqwest's top-level message alone does not say.
    fn transport_error(&self, error: reqwest::Error) -> ProviderError {
        if error.is_timeout() {
            return ProviderError::Timeout(self.inner.settings.timeout);
        }
        let mut detail = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            detail.push_str(": ");
            detail.push_str(&cause.to_string());
            source = cause.source();
        }
        ProviderError::Connection { detail }
    }
}

fn parse_chat_answer(value: &Value, latency: Duration) -> Result<ChatAnswer, ProviderError> {
    let choice = value.get("choices").and_then(|c| c.get(0));
    let message = choice.and_then(|c| c.get("message"));
    let finish_reason = choice
        .and_then(|c| c.get("finish_reason"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    match finish_reason.as_deref() {
        Some("sensitive") => {
            return Err(ProviderError::Rejected {
                status: 200,
                code: None,
                message: "the provider refused the content (finish_reason: sensitive)".to_owned(),
            });
        }
        Some("model_context_window_exceeded") => {
            return Err(ProviderError::Rejected {
                status: 200,
                code: None,
                message: "the prompt exceeds the model's context window".to_owned(),
            });
        }
        Some("network_error") => {
            return Err(ProviderError::Server {
                status: 200,
                code: None,
                message: "the provider reported a network error mid-answer".to_owned(),
            });
        }
        _ => {}
    }
    let content = message
        .and_then(|m| m.get("content"))
        .and_then(Value::as_str)
        .filter(|c| !c.trim().is_empty())
        .map(str::to_owned);
    let tool_arguments = message
        .and_then(|m| m.get("tool_calls"))
        .and_then(Value::as_array)
        .map(|calls| {
            calls
                .iter()
                .filter_map(|call| call.pointer("/function/arguments"))
                .map(|args| match args {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    let usage = value.get("usage");
    let count = |pointer: &str| {
        usage
            .and_then(|u| u.pointer(pointer))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    Ok(ChatAnswer {
        content,
        tool_arguments,
        finish_reason,
        usage: Usage {
            requests: 1,
            prompt_tokens: count("/prompt_tokens"),
            completion_tokens: count("/completion_tokens"),
            cached_tokens: count("/prompt_tokens_details/cached_tokens"),
        },
        latency,
    })
}

/// Merges `overlay` into `target`: objects merge key by key, anything else replaces.
pub(crate) fn deep_merge(target: &mut Map<String, Value>, overlay: &Map<String, Value>) {
    for (key, value) in overlay {
        match (target.get_mut(key), value) {
            (Some(Value::Object(inner)), Value::Object(overlay_inner)) => deep_merge(inner, overlay_inner),
            _ => {
                target.insert(key.clone(), value.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    fn provider(thinking: Thinking, custom: Value) -> Provider {
        let Value::Object(custom_json) = custom else { panic!() };
        Provider::new(&ProviderSettings {
            model: "glm-5.1".into(),
            base_url: Url::parse("https://api.z.ai/api/coding/paas/v4/").unwrap(),
            api_key: SecretString::from("sk-secret"),
            thinking,
            custom_json,
            timeout: Duration::from_secs(5),
        })
        .unwrap()
    }

    #[test]
    fn the_body_carries_thinking_and_the_custom_json_wins() {
        let p = provider(
            Thinking::Enabled,
            json!({"thinking": {"budget_tokens": 20000}, "temperature": 0.1}),
        );
        let body = p.chat_body(&[Message::user("hi")]);
        assert_eq!(body["thinking"], json!({"type": "enabled", "budget_tokens": 20000}));
        assert_eq!(body["temperature"], json!(0.1));
        assert_eq!(body["model"], "glm-5.1");
        let p = provider(Thinking::Disabled, json!({}));
        assert_eq!(p.chat_body(&[])["thinking"], json!({"type": "disabled"}));
    }

    #[test]
    fn urls_keep_the_whole_base_path() {
        let p = provider(Thinking::Enabled, json!({}));
        assert_eq!(
            p.inner.chat_url.as_str(),
            "https://api.z.ai/api/coding/paas/v4/chat/completions"
        );
        assert_eq!(
            p.inner.models_url.as_str(),
            "https://api.z.ai/api/coding/paas/v4/models"
        );
        assert!(!format!("{p:?}").contains("sk-secret"));
    }

    #[test]
    fn an_answer_reads_content_tool_calls_and_usage() {
        let value = json!({"choices":[{"message":{"content":"x","tool_calls":[{"function":{"arguments":"{\"a\":1}"}}]},"finish_reason":"stop"}],
                           "usage":{"prompt_tokens":10,"completion_tokens":5,"prompt_tokens_details":{"cached_tokens":2}}});
        let answer = parse_chat_answer(&value, Duration::ZERO).unwrap();
        assert_eq!(answer.content.as_deref(), Some("x"));
        assert_eq!(answer.tool_arguments, vec!["{\"a\":1}".to_owned()]);
        assert_eq!(
            answer.usage,
            Usage {
                requests: 1,
                prompt_tokens: 10,
                completion_tokens: 5,
                cached_tokens: 2
            }
        );
    }

    fn local_provider(base: &str, timeout: Duration) -> Provider {
        Provider::new(&ProviderSettings {
            model: "glm-5.1".into(),
            base_url: Url::parse(base).unwrap(),
            api_key: SecretString::from("sk-secret"),
            thinking: Thinking::Enabled,
            custom_json: Map::new(),
            timeout,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_retryable_connection_error_with_the_upstream_cause() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let p = local_provider(&format!("http://127.0.0.1:{port}/api/paas/v4/"), Duration::from_secs(5));
        let error = p.chat(&[Message::user("hi")]).await.unwrap_err();
        assert!(matches!(error, ProviderError::Connection { .. }), "{error:?}");
        assert_eq!(error.action(), Action::Retry);
        assert!(
            error.to_string().to_lowercase().contains("refused"),
            "the exact upstream error: {error}"
        );
        assert!(!error.to_string().contains("sk-secret"));
    }

    #[tokio::test]
    async fn an_answer_that_never_comes_is_a_retryable_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // Accepts and then says nothing.
        let _silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let p = local_provider(
            &format!("http://127.0.0.1:{port}/api/paas/v4/"),
            Duration::from_millis(300),
        );
        let error = p.chat(&[Message::user("hi")]).await.unwrap_err();
        assert!(matches!(error, ProviderError::Timeout(_)), "{error:?}");
        assert_eq!(error.action(), Action::Retry);
        assert_eq!(error.meaning(), "timeout");
    }

    #[tokio::test]
    async fn an_unknown_host_is_a_connection_error_naming_dns() {
        let p = local_provider("http://no-such-host.invalid/api/paas/v4/", Duration::from_secs(5));
        let error = p.chat(&[Message::user("hi")]).await.unwrap_err();
        assert!(matches!(error, ProviderError::Connection { .. }), "{error:?}");
        let text = error.to_string().to_lowercase();
        assert!(
            text.contains("dns") || text.contains("lookup") || text.contains("resolve"),
            "{text}"
        );
    }

    #[test]
    fn refused_and_oversized_finishes_reject_the_request() {
        for reason in ["sensitive", "model_context_window_exceeded"] {
            let value = json!({"choices":[{"message":{"content":""},"finish_reason": reason}]});
            let error = parse_chat_answer(&value, Duration::ZERO).unwrap_err();
            assert_eq!(error.action(), Action::Reject, "{reason}");
        }
    }
}
