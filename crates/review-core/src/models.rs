//! Every fact about a model, in one table: its context window, its pay-per-token price, and
//! whether Z.AI's endpoints list it (the ids that advice names and the simulator serves by
//! default). Code that needs a model fact asks here; nothing else holds a model's name.
//!
//! Names match case-insensitively and by prefix (`GLM-4.5-Air`, `glm-4.5-airx`), after dropping
//! a router's `vendor/` prefix (`z-ai/glm-4.6`). The longest matching id wins, so `glm-5.1` is
//! not taken for `glm-5` whatever the table's order.

/// USD per million tokens on pay-per-token access.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Price {
    input: f64,
    output: f64,
}

/// One model, or a family named by its id's prefix.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Model {
    id: &'static str,
    /// Prompt and answer together, in tokens.
    context_window: u32,
    /// `None`: the product document's price table has no row for it; it counts as
    /// [`UNKNOWN_PRICE`].
    price: Option<Price>,
    /// Z.AI's endpoints list it (`GET /models`).
    listed: bool,
}

const GLM_5_1_PRICE: Price = Price {
    input: 0.95,
    output: 3.15,
};
const GLM_4_5_PRICE: Price = Price {
    input: 0.60,
    output: 2.20,
};

/// The models, newest first: the listed ones are named in this order.
///
/// For `glm-5` the product documentation says about 131k while Z.AI's model page says about 200k.
/// Over-estimating costs a job (the provider rejects the request as too long:
/// `provider_rejected`), under-estimating only leaves a few more files out, so the lower figure
/// wins.
const MODELS: &[Model] = &[
    Model {
        id: "glm-5.1",
        context_window: 200_000,
        price: Some(GLM_5_1_PRICE),
        listed: true,
    },
    Model {
        id: "glm-5-turbo",
        context_window: 200_000,
        price: None,
        listed: true,
    },
    Model {
        id: "glm-5",
        context_window: 131_072,
        price: Some(Price {
            input: 0.72,
            output: 2.30,
        }),
        listed: true,
    },
    Model {
        id: "glm-4.7",
        context_window: 200_000,
        price: None,
        listed: false,
    },
    Model {
        id: "glm-4.6",
        context_window: 200_000,
        price: None,
        listed: false,
    },
    // The vision variants have smaller windows than the text models they are named after.
    Model {
        id: "glm-4.6v",
        context_window: 128_000,
        price: None,
        listed: false,
    },
    Model {
        id: "glm-4.5",
        context_window: 131_072,
        price: Some(GLM_4_5_PRICE),
        listed: true,
    },
    // The product document's price table has one row for the glm-4.5 family.
    Model {
        id: "glm-4.5-air",
        context_window: 131_072,
        price: Some(GLM_4_5_PRICE),
        listed: true,
    },
    Model {
        id: "glm-4.5v",
        context_window: 65_536,
        price: Some(GLM_4_5_PRICE),
        listed: false,
    },
];

/// An unknown model is most likely a fallback provider's; 128k is what current chat models
/// commonly offer, and a model with less will reject the request rather than misread it.
const UNKNOWN_WINDOW: u32 = 128_000;
/// What the product document says to count an unknown model as: glm-5.1.
const UNKNOWN_PRICE: Price = GLM_5_1_PRICE;

/// The table's entry for `model`: the longest id that prefixes its name.
fn lookup(model: &str) -> Option<&'static Model> {
    let name = model.trim().to_ascii_lowercase();
    let name = name.rsplit('/').next().unwrap_or(&name);
    MODELS
        .iter()
        .filter(|entry| name.starts_with(entry.id))
        .max_by_key(|entry| entry.id.len())
}

/// The context window of `model`, in tokens (prompt and answer together); 128 000 for a model
/// the table does not know.
pub fn context_window(model: &str) -> u32 {
    lookup(model).map_or(UNKNOWN_WINDOW, |entry| entry.context_window)
}

/// Pay-per-token prices of `model`: USD per million (input, output) tokens, from the product
/// document's table, used to show what the Coding Plan saved. Unknown models count as glm-5.1.
pub fn price_per_million(model: &str) -> (f64, f64) {
    let price = lookup(model).and_then(|entry| entry.price).unwrap_or(UNKNOWN_PRICE);
    (price.input, price.output)
}

/// Whether `model` is named like a GLM model: the Coding Plan endpoint rejects any other name.
pub fn is_glm(model: &str) -> bool {
    model.trim().to_ascii_lowercase().starts_with("glm-")
}

/// The ids Z.AI's endpoints list, newest first.
fn listed() -> impl Iterator<Item = &'static str> {
    MODELS.iter().filter(|entry| entry.listed).map(|entry| entry.id)
}

/// The listed ids for a sentence of advice: `glm-5.1, glm-5-turbo, …, glm-4.5 or glm-4.5-air`.
pub fn listed_in_words() -> String {
    let ids: Vec<&str> = listed().collect();
    match ids.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        Some((last, _)) => (*last).to_owned(),
        None => String::new(),
    }
}

/// The listed ids joined by commas (`glm-5.1,glm-5-turbo,…`): the simulator's default model
/// list. A constant, because a command-line default must be one; it is built from the table at
/// compile time, so the two cannot drift apart.
pub const LISTED_IDS: &str = match std::str::from_utf8(&LISTED_ID_BYTES) {
    Ok(ids) => ids,
    Err(_) => panic!("model ids are UTF-8"),
};

/// The length of [`LISTED_IDS`]. Compile-time code cannot use iterators; the sums are far below
/// any overflow (and one would stop the build, not wrap).
const fn listed_ids_len() -> usize {
    let mut len = 0_usize;
    let mut at = 0;
    while at < MODELS.len() {
        if MODELS[at].listed {
            // The id and the comma before the next one.
            len = len.saturating_add(MODELS[at].id.len()).saturating_add(1);
        }
        at = at.saturating_add(1);
    }
    len.saturating_sub(1)
}

const LISTED_ID_BYTES: [u8; listed_ids_len()] = {
    let mut out = [0_u8; listed_ids_len()];
    let mut len = 0_usize;
    let mut at = 0;
    while at < MODELS.len() {
        if MODELS[at].listed {
            if len > 0 {
                out[len] = b',';
                len = len.saturating_add(1);
            }
            let id = MODELS[at].id.as_bytes();
            let mut byte = 0;
            while byte < id.len() {
                out[len] = id[byte];
                len = len.saturating_add(1);
                byte = byte.saturating_add(1);
            }
        }
        at = at.saturating_add(1);
    }
    out
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_models_have_their_windows() {
        assert_eq!(context_window("glm-5.1"), 200_000);
        assert_eq!(context_window("glm-5-turbo"), 200_000);
        assert_eq!(context_window("glm-5"), 131_072);
        assert_eq!(context_window("glm-4.5"), 131_072);
        assert_eq!(context_window("glm-4.5-air"), 131_072);
        assert_eq!(context_window("glm-4.6"), 200_000);
        assert_eq!(context_window("glm-4.6v"), 128_000);
        assert_eq!(context_window("glm-4.7"), 200_000);
        assert_eq!(context_window("glm-4.5v"), 65_536);
    }

    #[test]
    fn model_names_match_by_prefix_and_case_insensitively() {
        assert_eq!(context_window("GLM-4.5-Air"), 131_072);
        assert_eq!(context_window(" GLM-5.1 "), 200_000);
        assert_eq!(context_window("glm-4.7-flash"), 200_000);
        assert_eq!(context_window("z-ai/glm-4.6"), 200_000);
    }

    #[test]
    fn unknown_models_get_a_modest_default() {
        assert_eq!(context_window("gpt-4o"), 128_000);
        assert_eq!(context_window(""), 128_000);
    }

    #[test]
    fn ids_are_unique_so_the_longest_matching_prefix_is_one_entry() {
        for (at, entry) in MODELS.iter().enumerate() {
            assert!(
                MODELS[at + 1..].iter().all(|other| other.id != entry.id),
                "{} twice",
                entry.id
            );
            assert_eq!(lookup(entry.id), Some(entry), "{} finds itself", entry.id);
        }
    }

    #[test]
    fn prices_follow_the_product_documents_table_and_unknown_models_count_as_glm_5_1() {
        assert_eq!(price_per_million("glm-5.1"), (0.95, 3.15));
        assert_eq!(price_per_million("glm-5"), (0.72, 2.30));
        assert_eq!(price_per_million("glm-4.5"), (0.60, 2.20));
        assert_eq!(price_per_million("GLM-4.5-Air"), (0.60, 2.20));
        assert_eq!(price_per_million("glm-4.5v"), (0.60, 2.20));
        assert_eq!(price_per_million("glm-5-turbo"), (0.95, 3.15));
        assert_eq!(price_per_million("glm-4.7"), (0.95, 3.15));
        assert_eq!(price_per_million("gpt-4o"), (0.95, 3.15));
    }

    #[test]
    fn the_listed_ids_are_named_newest_first_for_advice_and_the_simulator() {
        assert_eq!(LISTED_IDS, "glm-5.1,glm-5-turbo,glm-5,glm-4.5,glm-4.5-air");
        assert_eq!(LISTED_IDS.split(',').collect::<Vec<_>>(), listed().collect::<Vec<_>>());
        assert_eq!(listed_in_words(), "glm-5.1, glm-5-turbo, glm-5, glm-4.5 or glm-4.5-air");
    }

    #[test]
    fn glm_names_are_told_apart_from_others() {
        assert!(is_glm("GLM-5.1"));
        assert!(is_glm("glm-9"));
        assert!(!is_glm("gpt-4o"));
        assert!(!is_glm("z-ai/glm-4.6"));
    }
}
