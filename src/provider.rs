//! The OpenAI-compatible provider client: `POST {base}/chat/completions` and the cheap
//! `GET {base}/models` probe. It turns every failure into a classified [`ProviderError`]
//! (see `review_core::classify`) and never lets the API key reach a log line or an error message.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::{StatusCode, Url};
use secrecy::ExposeSecret;
use serde_json::{Map, Value, json};

pub(crate) use review_core::chat::{ChatAnswer, Message};
pub(crate) use review_core::classify::{AccountProblem, Action, ProviderError};

/// The largest answer body read. A review answer is tens of kilobytes, and even a model's whole
/// output window (~128k tokens) is well under this; anything larger is refused as transient.
pub(crate) const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

use crate::settings::{ProviderSettings, Thinking};
use review_core::contract::Usage;

/// A provider the worker can call; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Provider {
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
    pub(crate) fn new(settings: &ProviderSettings) -> anyhow::Result<Self> {
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
    pub(crate) fn name(&self) -> &str {
        &self.inner.name
    }

    pub(crate) fn model(&self) -> &str {
        &self.inner.settings.model
    }

    pub(crate) fn settings(&self) -> &ProviderSettings {
        &self.inner.settings
    }

    /// The request body: model and messages, the thinking setting, then `API_LLM_CUSTOM_JSON`
    /// deep-merged on top so the operator's override always wins.
    pub(crate) fn chat_body(&self, messages: &[Message]) -> Value {
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

    /// The exact bytes [`Self::send_chat`] posts for `messages`: what the answer cache
    /// (`crate::cache`) keys on, so the model, the thinking setting and the operator's overrides
    /// are all part of the key.
    pub(crate) fn request_body(&self, messages: &[Message]) -> Result<Vec<u8>, ProviderError> {
        serde_json::to_vec(&self.chat_body(messages)).map_err(|e| ProviderError::Rejected {
            status: 0,
            code: None,
            message: format!("the request body could not be written: {e}"),
        })
    }

    #[cfg(test)]
    pub(crate) async fn chat(&self, messages: &[Message]) -> Result<ChatAnswer, ProviderError> {
        self.send_chat(self.request_body(messages)?).await
    }

    /// One chat completion with `body` (from [`Self::request_body`]).
    pub(crate) async fn send_chat(&self, body: Vec<u8>) -> Result<ChatAnswer, ProviderError> {
        let started = Instant::now();
        // The client's timeout is a deadline for the whole exchange, body included (reqwest
        // applies it until the last byte): a body that trickles in is a timeout like any other.
        let response = self
            .inner
            .http
            .post(self.inner.chat_url.clone())
            .bearer_auth(self.inner.settings.api_key.expose_secret())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| self.transport_error(e))?;
        let status = response.status().as_u16();
        let body = self.read_body(status, response).await?;
        let latency = started.elapsed();
        // Parsing megabytes is CPU work: off the async threads, so it stalls no other job.
        crate::blocking::heavy(body.len(), move || read_chat_body(status, &body, latency))
            .await
            .unwrap_or_else(|e| {
                Err(ProviderError::Server {
                    status,
                    code: None,
                    message: format!("reading the answer body failed: {e}"),
                })
            })
    }

    /// The product's "Test & save": lists the models the key may use.
    pub(crate) async fn list_models(&self) -> Result<Vec<String>, ProviderError> {
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
        let body = self.read_body(status.as_u16(), response).await?;
        let text = String::from_utf8_lossy(&body);
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

    /// The body, chunk by chunk, up to `MAX_BODY_BYTES`: a larger one is refused before it is
    /// all in memory (or, with a `Content-Length`, before any of it is read).
    async fn read_body(&self, status: u16, mut response: reqwest::Response) -> Result<Vec<u8>, ProviderError> {
        let too_large = ProviderError::TooLarge {
            status,
            limit: MAX_BODY_BYTES,
        };
        let announced = response.content_length().unwrap_or(0);
        if announced > MAX_BODY_BYTES as u64 {
            return Err(too_large);
        }
        let mut body = Vec::with_capacity(usize::try_from(announced).unwrap_or(0));
        while let Some(chunk) = response.chunk().await.map_err(|e| self.transport_error(e))? {
            if body.len().saturating_add(chunk.len()) > MAX_BODY_BYTES {
                return Err(too_large);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
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

/// A chat completion's body as the worker sees it: an error (also inside an HTTP 200), or the
/// answer.
fn read_chat_body(status: u16, body: &[u8], latency: Duration) -> Result<ChatAnswer, ProviderError> {
    if !(200..300).contains(&status) {
        return Err(ProviderError::from_response(status, &String::from_utf8_lossy(body)));
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| ProviderError::Server {
        status,
        code: None,
        message: format!("unreadable answer body: {e}"),
    })?;
    // Z.AI can report an overload (1305) inside an HTTP 200.
    if value.get("error").is_some() {
        return Err(ProviderError::from_response(status, &String::from_utf8_lossy(body)));
    }
    parse_chat_answer(&value, latency)
}

fn parse_chat_answer(value: &Value, latency: Duration) -> Result<ChatAnswer, ProviderError> {
    let choice = value.get("choices").and_then(|c| c.get(0));
    let message = choice.and_then(|c| c.get("message"));
    match choice.and_then(|c| c.get("finish_reason")).and_then(Value::as_str) {
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
        usage: Usage {
            requests: 1,
            prompt_tokens: count("/prompt_tokens"),
            completion_tokens: count("/completion_tokens"),
            cached_tokens: count("/prompt_tokens_details/cached_tokens"),
            cache_hits: 0,
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
                cached_tokens: 2,
                cache_hits: 0
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

    /// Serves one canned HTTP response per connection: `head`, then `body` in pieces of `piece`
    /// bytes every `pause`, then holds the connection open.
    async fn raw_server(head: String, body: Vec<u8>, piece: usize, pause: Duration) -> u16 {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (head, body) = (head.clone(), body.clone());
                tokio::spawn(async move {
                    let mut request = [0u8; 64 * 1024];
                    let _ = socket.read(&mut request).await;
                    if socket.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    for chunk in body.chunks(piece.max(1)) {
                        if socket.write_all(chunk).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(pause).await;
                    }
                    tokio::time::sleep(Duration::from_secs(30)).await;
                });
            }
        });
        port
    }

    #[tokio::test]
    async fn a_body_that_trickles_in_past_the_timeout_is_a_retryable_timeout() {
        let body = b"{\"choices\":[{\"message\":{\"content\":\"ok\"}}]}".to_vec();
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        // Headers at once, then a byte every 100 ms: 4.5 s for the body against a 400 ms deadline.
        let port = raw_server(head, body, 1, Duration::from_millis(100)).await;
        let p = local_provider(
            &format!("http://127.0.0.1:{port}/api/paas/v4/"),
            Duration::from_millis(400),
        );
        let started = Instant::now();
        let error = p.chat(&[Message::user("hi")]).await.unwrap_err();
        assert!(matches!(error, ProviderError::Timeout(_)), "{error:?}");
        assert_eq!(error.action(), Action::Retry);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the deadline covers the body: {:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused_while_it_streams_in() {
        let body = vec![b' '; MAX_BODY_BYTES + 1];
        // No length announced: the reader has to count.
        let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n".to_owned();
        let port = raw_server(head, body, 64 * 1024, Duration::ZERO).await;
        let p = local_provider(
            &format!("http://127.0.0.1:{port}/api/paas/v4/"),
            Duration::from_secs(10),
        );
        let error = p.chat(&[Message::user("hi")]).await.unwrap_err();
        assert!(
            matches!(error, ProviderError::TooLarge { status: 200, .. }),
            "{error:?}"
        );
        assert_eq!(error.action(), Action::Retry);
    }

    #[tokio::test]
    async fn a_body_announced_over_the_limit_is_refused_unread() {
        let head = format!(
            "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            MAX_BODY_BYTES + 1
        );
        let port = raw_server(head, Vec::new(), 1, Duration::ZERO).await;
        let p = local_provider(
            &format!("http://127.0.0.1:{port}/api/paas/v4/"),
            Duration::from_secs(10),
        );
        let error = p.chat(&[Message::user("hi")]).await.unwrap_err();
        assert!(
            matches!(error, ProviderError::TooLarge { status: 429, .. }),
            "{error:?}"
        );
        let error = p.list_models().await.unwrap_err();
        assert!(matches!(error, ProviderError::TooLarge { .. }), "{error:?}");
    }

    #[test]
    fn an_error_inside_an_http_200_is_classified_by_its_code() {
        let body = br#"{"error":{"code":"1305","message":"The service may be temporarily overloaded"}}"#;
        let error = read_chat_body(200, body, Duration::ZERO).unwrap_err();
        assert_eq!(error.action(), Action::RetrySoon { lower_cap: false });
        let error = read_chat_body(200, b"<html>", Duration::ZERO).unwrap_err();
        assert_eq!(error.action(), Action::Retry);
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
