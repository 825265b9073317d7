//! The answer cache: the leader's memory of recent model answers, keyed by the SHA-256 of the
//! exact request body, so that an identical prompt within `API_REVIEW_CACHE_TTL_SECS` (a
//! redelivered job, an unchanged re-push) is answered without a provider request.
//!
//! It owns no policy beyond that: the executor asks it before a call takes a slot of the
//! deployment-wide cap, and fills it only with successful answers. The body holds the model and
//! every parameter, so a fallback model never gets the main model's answers. Bounded by bytes
//! (`API_REVIEW_CACHE_MAX_MB`), by entries (each weighs at least [`MIN_ENTRY_WEIGHT`]) and by
//! time; it lives in this process only, so a restart starts it empty.

use std::sync::Arc;
use std::time::Duration;

use review_core::contract::Usage;
use sha2::{Digest as _, Sha256};

use crate::provider::ChatAnswer;
use crate::settings::CacheSettings;

/// What an entry weighs at least, whatever its answer's length: the key, the bookkeeping, and
/// the cache's own node. It bounds the number of entries to `max_bytes / MIN_ENTRY_WEIGHT`.
pub(crate) const MIN_ENTRY_WEIGHT: u32 = 1024;

/// The SHA-256 of a request body.
pub(crate) type Key = [u8; 32];

/// What is kept of an answer: what the model said, not what it cost.
#[derive(Debug)]
struct Kept {
    content: Option<String>,
    tool_arguments: Vec<String>,
}

impl Kept {
    fn weight(&self) -> u32 {
        let bytes = self
            .tool_arguments
            .iter()
            .map(String::len)
            .fold(self.content.as_ref().map_or(0, String::len), usize::saturating_add);
        u32::try_from(bytes)
            .unwrap_or(u32::MAX)
            .saturating_add(MIN_ENTRY_WEIGHT)
    }
}

/// Cheap to clone; all clones share the entries.
#[derive(Clone)]
pub(crate) struct AnswerCache {
    entries: Option<moka::sync::Cache<Key, Arc<Kept>>>,
}

impl std::fmt::Debug for AnswerCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The answers themselves are review text of private code: not for a debug line.
        f.debug_struct("AnswerCache")
            .field("enabled", &self.entries.is_some())
            .field("entries", &self.entries.as_ref().map(moka::sync::Cache::entry_count))
            .finish()
    }
}

impl AnswerCache {
    pub(crate) fn new(settings: &CacheSettings) -> Self {
        if !settings.enabled() {
            return Self::disabled();
        }
        Self::bounded(settings.max_bytes, settings.ttl)
    }

    pub(crate) fn disabled() -> Self {
        Self { entries: None }
    }

    fn bounded(max_bytes: u64, ttl: Duration) -> Self {
        let entries = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_: &Key, kept: &Arc<Kept>| kept.weight())
            .time_to_live(ttl)
            .build();
        Self { entries: Some(entries) }
    }

    /// The key for `body`, or `None` when the cache is off (no hashing then).
    pub(crate) fn key(&self, body: &[u8]) -> Option<Key> {
        self.entries.as_ref().map(|_| Sha256::digest(body).into())
    }

    /// The answer kept for `key`, as a reuse: no request, no tokens, one cache hit.
    pub(crate) fn get(&self, key: &Key) -> Option<ChatAnswer> {
        let kept = self.entries.as_ref()?.get(key)?;
        Some(ChatAnswer {
            content: kept.content.clone(),
            tool_arguments: kept.tool_arguments.clone(),
            usage: Usage {
                cache_hits: 1,
                ..Usage::default()
            },
            latency: Duration::ZERO,
        })
    }

    /// Keeps a successful answer for `key`.
    pub(crate) fn insert(&self, key: Key, answer: &ChatAnswer) {
        if let Some(entries) = &self.entries {
            entries.insert(
                key,
                Arc::new(Kept {
                    content: answer.content.clone(),
                    tool_arguments: answer.tool_arguments.clone(),
                }),
            );
        }
    }

    /// Answers kept now, and their weight in bytes (after pending evictions are applied).
    #[cfg(test)]
    fn size(&self) -> (u64, u64) {
        self.entries.as_ref().map_or((0, 0), |entries| {
            entries.run_pending_tasks();
            (entries.entry_count(), entries.weighted_size())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(content: &str) -> ChatAnswer {
        ChatAnswer {
            content: Some(content.to_owned()),
            tool_arguments: vec!["{}".to_owned()],
            usage: Usage {
                requests: 1,
                prompt_tokens: 1_000,
                completion_tokens: 50,
                cached_tokens: 10,
                cache_hits: 0,
            },
            latency: Duration::from_millis(700),
        }
    }

    fn on() -> AnswerCache {
        AnswerCache::new(&CacheSettings {
            ttl: Duration::from_secs(3_600),
            max_bytes: 1024 * 1024,
        })
    }

    #[test]
    fn a_hit_gives_the_answer_back_as_a_reuse_that_cost_no_request_and_no_tokens() {
        let cache = on();
        let key = cache.key(b"{\"model\":\"glm-5.1\"}").unwrap();
        assert!(cache.get(&key).is_none());
        cache.insert(key, &answer("the review"));
        let hit = cache.get(&key).unwrap();
        assert_eq!(hit.content.as_deref(), Some("the review"));
        assert_eq!(hit.tool_arguments, vec!["{}".to_owned()]);
        assert_eq!(
            hit.usage,
            Usage {
                cache_hits: 1,
                ..Usage::default()
            }
        );
        assert_eq!(hit.latency, Duration::ZERO);
    }

    #[tokio::test]
    async fn the_same_messages_to_another_model_share_nothing() {
        use crate::provider::{Message, Provider};
        let settings = |model: &str| crate::settings::ProviderSettings {
            model: model.into(),
            ..crate::settings::Settings::from_vars([
                ("API_LLM_PROVIDER_MODEL", "glm-5.1"),
                ("API_OPENAI_FORCE_BASE_URL", "http://127.0.0.1:9/api/coding/paas/v4"),
                ("API_OPEN_AI_API_KEY", "k"),
            ])
            .unwrap()
            .provider
            .unwrap()
        };
        let (main, fallback) = (
            Provider::new(&settings("glm-5.1")).unwrap(),
            Provider::new(&settings("glm-4.5")).unwrap(),
        );
        let messages = [Message::user("review this")];
        let cache = on();
        let main_key = cache.key(&main.request_body(&messages).unwrap()).unwrap();
        cache.insert(main_key, &answer("glm-5.1's review"));
        let fallback_key = cache.key(&fallback.request_body(&messages).unwrap()).unwrap();
        assert_ne!(main_key, fallback_key);
        assert!(cache.get(&fallback_key).is_none());
        // The same provider and messages give the same bytes, so the same key.
        assert_eq!(cache.key(&main.request_body(&messages).unwrap()).unwrap(), main_key);
    }

    #[test]
    fn a_ttl_or_a_size_of_zero_turns_the_cache_off() {
        for (ttl, max_bytes) in [(0, 1 << 20), (3_600, 0)] {
            let cache = AnswerCache::new(&CacheSettings {
                ttl: Duration::from_secs(ttl),
                max_bytes,
            });
            assert!(cache.key(b"body").is_none());
            cache.insert([0; 32], &answer("x"));
            assert!(cache.get(&[0; 32]).is_none());
        }
    }

    #[test]
    fn the_cache_keeps_within_its_bytes_and_so_within_its_entries() {
        let max_bytes = 64 * u64::from(MIN_ENTRY_WEIGHT);
        let cache = AnswerCache::bounded(max_bytes, Duration::from_secs(3_600));
        for i in 0..1_000u32 {
            let key = cache.key(&i.to_le_bytes()).unwrap();
            cache.insert(key, &answer(&"x".repeat(200)));
        }
        let (entries, bytes) = cache.size();
        assert!(bytes <= max_bytes, "{bytes} bytes kept, bound {max_bytes}");
        assert!(entries <= 64, "{entries} entries kept");
        assert!(entries > 0);
        // An answer larger than the whole cache is not kept at all.
        let key = cache.key(b"huge").unwrap();
        cache.insert(key, &answer(&"x".repeat(70 * 1024)));
        let (_, bytes) = cache.size();
        assert!(cache.get(&key).is_none());
        assert!(bytes <= max_bytes);
    }

    #[test]
    fn an_answer_is_not_reused_after_its_time_to_live() {
        let cache = AnswerCache::bounded(1 << 20, Duration::from_millis(50));
        let key = cache.key(b"body").unwrap();
        cache.insert(key, &answer("x"));
        assert!(cache.get(&key).is_some());
        // The scenario is the passing of the TTL itself (the cache reads its own clock).
        std::thread::sleep(Duration::from_millis(120));
        assert!(cache.get(&key).is_none());
    }
}
