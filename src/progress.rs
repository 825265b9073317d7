//! Calls a review already paid for, carried with its job while it waits.
//!
//! A PR reviewed in several calls can be interrupted after some of them (the quota window ran
//! out, the provider failed past its retries). Its answers so far travel with the job: the job
//! goes back to wait with a header holding them, and whichever replica reviews it next reuses
//! them by [`review_core::plan::Chunk::key`] instead of spending the calls again. No database:
//! the broker holds the job, so it holds the progress.

use lapin::types::{AMQPValue, LongString};
use review_core::contract::{Suggestion, Usage};
use serde::{Deserialize, Serialize};

use crate::broker::{Envelope, headers};

/// The answered calls of one review.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Progress {
    pub(crate) answers: Vec<CallAnswer>,
}

/// What one call of a review brought back, anchored to its chunk's lines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct CallAnswer {
    pub(crate) key: String,
    pub(crate) summary: String,
    pub(crate) suggestions: Vec<Suggestion>,
    pub(crate) usage: Usage,
}

/// Past this, progress is not carried (the job is reviewed whole again): a message's headers must
/// fit in one AMQP frame (128 KiB by default), with the other headers.
const MAX_HEADER_BYTES: usize = 96 * 1024;

impl Progress {
    /// The progress a job carries; none if it carries none, or none this worker can read (a
    /// damaged header costs the calls again, never the job).
    pub(crate) fn of(envelope: &Envelope) -> Self {
        let Some(AMQPValue::LongString(text)) = envelope.header(headers::PROGRESS) else {
            return Self::default();
        };
        serde_json::from_slice(text.as_bytes()).unwrap_or_else(|error| {
            tracing::warn!("ignoring the job's {} header: {error}", headers::PROGRESS);
            Self::default()
        })
    }

    pub(crate) fn answer(&self, key: &str) -> Option<&CallAnswer> {
        self.answers.iter().find(|answer| answer.key == key)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.answers.is_empty()
    }

    /// The header that carries this progress, if there is any and it fits.
    pub(crate) fn header(&self) -> Option<AMQPValue> {
        if self.is_empty() {
            return None;
        }
        let bytes = serde_json::to_vec(self).ok()?;
        if bytes.len() > MAX_HEADER_BYTES {
            tracing::info!(
                bytes = bytes.len(),
                "the review's answers so far are too large to carry with the job: it will be reviewed whole again"
            );
            return None;
        }
        Some(AMQPValue::LongString(LongString::from(bytes)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::BasicProperties;
    use lapin::types::{FieldTable, ShortString};

    fn envelope(value: Option<AMQPValue>) -> Envelope {
        let mut table = FieldTable::default();
        if let Some(value) = value {
            table.insert(ShortString::from(headers::PROGRESS), value);
        }
        Envelope {
            routing_key: "job.created".into(),
            properties: BasicProperties::default().with_headers(table),
        }
    }

    fn progress(body_bytes: usize) -> Progress {
        Progress {
            answers: vec![CallAnswer {
                key: "k1".into(),
                summary: "x".repeat(body_bytes),
                suggestions: Vec::new(),
                usage: Usage {
                    requests: 1,
                    prompt_tokens: 10,
                    completion_tokens: 2,
                    ..Usage::default()
                },
            }],
        }
    }

    #[test]
    fn progress_round_trips_through_its_header() {
        let sent = progress(10);
        let read = Progress::of(&envelope(sent.header()));
        assert_eq!(read, sent);
        assert_eq!(read.answer("k1").map(|a| a.usage.requests), Some(1));
        assert!(read.answer("k2").is_none());
    }

    #[test]
    fn no_progress_or_too_much_is_no_header() {
        assert!(Progress::default().header().is_none());
        assert!(progress(MAX_HEADER_BYTES).header().is_none());
    }

    #[test]
    fn a_damaged_header_is_no_progress() {
        let damaged = AMQPValue::LongString(LongString::from(b"{not json".to_vec()));
        assert!(Progress::of(&envelope(Some(damaged))).is_empty());
        assert!(Progress::of(&envelope(None)).is_empty());
    }
}
