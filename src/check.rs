//! The probe: the product's "Test & save" (`GET {base}/models`), used by `review-worker check`,
//! at `run`'s start, and to find out when a paused account is usable again.

use std::time::{Duration, Instant};

use crate::provider::{AccountProblem, Provider, ProviderError};

/// What a successful probe found.
#[derive(Debug, Clone)]
pub(crate) struct Probe {
    pub latency: Duration,
    pub models: Vec<String>,
    /// Whether the endpoint lists the configured model (some proxies list none: then `None`).
    pub model_listed: Option<bool>,
}

/// Lists the models with the configured key. An endpoint that answers but does not list the
/// configured model is reported as the 1211 it would answer at review time.
pub(crate) async fn probe(provider: &Provider) -> Result<Probe, ProviderError> {
    let started = Instant::now();
    let models = provider.list_models().await.map_err(ProviderError::at_probe)?;
    let latency = started.elapsed();
    let model_listed = (!models.is_empty()).then(|| models.iter().any(|m| m.eq_ignore_ascii_case(provider.model())));
    if model_listed == Some(false) {
        return Err(ProviderError::Account {
            status: 400,
            code: Some("1211".to_owned()),
            message: format!(
                "Unknown Model: {} is not among the {} models this endpoint lists ({})",
                provider.model(),
                models.len(),
                models.join(", ")
            ),
            problem: AccountProblem::UnknownModel,
        });
    }
    Ok(Probe {
        latency,
        models,
        model_listed,
    })
}
