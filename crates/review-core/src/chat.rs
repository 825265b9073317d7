//! What one chat call sends and gets back: the model-facing types the prompt builds and the
//! answer parser reads. The HTTP client that carries them lives in the worker (`provider`).

use std::time::Duration;

use serde::Serialize;

use crate::contract::Usage;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    pub(crate) role: &'static str,
    pub content: String,
}

impl Message {
    pub(crate) fn system(content: impl Into<String>) -> Self {
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
    pub usage: Usage,
    pub latency: Duration,
}
