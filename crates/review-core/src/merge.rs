//! One review out of several calls: the suggestions of every call (and those carried forward
//! from an earlier push) merged, duplicates collapsed, the job's limits applied once over the
//! whole PR, and one summary composed from the calls' summaries.
//!
//! The summary is composed, not asked for: on a Coding Plan a summarising call would spend a
//! prompt of the 5-hour window to restate what the calls already said, and find nothing new.

use std::collections::{HashMap, HashSet};

use crate::contract::{MAX_PREVIOUS_SUGGESTIONS, ReviewOptions, Suggestion};

/// Merges the calls' suggestions. Two suggestions are duplicates when they are on the same file,
/// their lines overlap and they say the same thing (the same title, or mostly the same words);
/// of duplicates the more severe stays (the earlier on a tie). Then `min_severity` and
/// `max_suggestions` apply, most severe first, the calls' order kept within a severity.
pub fn merge(parts: impl IntoIterator<Item = Vec<Suggestion>>, options: &ReviewOptions) -> Vec<Suggestion> {
    let mut all: Vec<Suggestion> = parts.into_iter().flatten().collect();
    if let Some(min) = options.min_severity {
        all.retain(|s| s.severity >= min);
    }
    // Stable: within a severity the calls' (and the model's) order survives.
    all.sort_by_key(|s| std::cmp::Reverse(s.severity));
    // Duplicates share a file, so each suggestion is compared only with those kept on its file.
    let mut kept: Vec<Suggestion> = Vec::with_capacity(all.len());
    let mut by_file: HashMap<String, Vec<(usize, HashSet<String>)>> = HashMap::new();
    for suggestion in all {
        let words = words(&suggestion);
        let on_file = by_file.entry(suggestion.file.clone()).or_default();
        let duplicate = on_file.iter().any(|(at, other_words)| {
            kept.get(*at)
                .is_some_and(|other| same_issue(&suggestion, &words, other, other_words))
        });
        if !duplicate {
            on_file.push((kept.len(), words));
            kept.push(suggestion);
        }
    }
    // A producer echoes the result back as the next push's `previous_result`, which is refused
    // past this many suggestions.
    kept.truncate(
        options
            .max_suggestions
            .unwrap_or(MAX_PREVIOUS_SUGGESTIONS)
            .min(MAX_PREVIOUS_SUGGESTIONS),
    );
    kept
}

fn same_issue(a: &Suggestion, a_words: &HashSet<String>, b: &Suggestion, b_words: &HashSet<String>) -> bool {
    if a.file != b.file || a.line_start > b.line_end || b.line_start > a.line_end {
        return false;
    }
    if let (Some(x), Some(y)) = (&a.title, &b.title)
        && x.trim().eq_ignore_ascii_case(y.trim())
    {
        return true;
    }
    // Jaccard similarity of the words of title and body, at least a half.
    let shared = a_words.intersection(b_words).count();
    let union = a_words.union(b_words).count();
    union > 0 && shared.saturating_mul(2) >= union
}

/// The lower-cased words (three letters or more) of a suggestion's title and body.
fn words(s: &Suggestion) -> HashSet<String> {
    s.title
        .iter()
        .map(String::as_str)
        .chain(std::iter::once(s.body.as_str()))
        .flat_map(|text| text.split(|c: char| !c.is_alphanumeric()))
        .filter(|word| word.chars().count() >= 3)
        .map(str::to_lowercase)
        .collect()
}

/// One summary for the PR from the calls' summaries, in call order, each said once.
pub fn compose_summary<'a>(summaries: impl IntoIterator<Item = &'a str>) -> String {
    let mut seen = HashSet::new();
    summaries
        .into_iter()
        .map(str::trim)
        .filter(|summary| !summary.is_empty() && seen.insert(summary.to_owned()))
        .collect::<Vec<_>>()
        .join("\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::Severity;

    fn suggestion(file: &str, lines: (u32, u32), severity: Severity, title: &str, body: &str) -> Suggestion {
        Suggestion {
            file: file.into(),
            line_start: lines.0,
            line_end: lines.1,
            severity,
            label: None,
            title: (!title.is_empty()).then(|| title.to_owned()),
            body: body.into(),
            existing_code: None,
            improved_code: None,
            fingerprint: None,
            carried: false,
        }
    }

    #[test]
    fn the_same_issue_on_overlapping_lines_collapses_to_the_more_severe() {
        let low = suggestion("a.rs", (3, 5), Severity::Low, "", "unwrap panics on bad input here");
        let high = suggestion("a.rs", (5, 6), Severity::High, "", "This unwrap panics on bad input");
        let merged = merge([vec![low], vec![high.clone()]], &ReviewOptions::default());
        assert_eq!(merged, [high]);
    }

    #[test]
    fn different_issues_files_or_lines_are_all_kept() {
        let base = suggestion(
            "a.rs",
            (3, 5),
            Severity::Medium,
            "Unchecked index",
            "index may be out of range",
        );
        let other_issue = suggestion(
            "a.rs",
            (4, 4),
            Severity::Medium,
            "Leaks a secret",
            "the token is logged in clear",
        );
        let other_file = suggestion(
            "b.rs",
            (3, 5),
            Severity::Medium,
            "Unchecked index",
            "index may be out of range",
        );
        let other_lines = suggestion(
            "a.rs",
            (9, 9),
            Severity::Medium,
            "Unchecked index",
            "index may be out of range",
        );
        let merged = merge(
            [vec![base], vec![other_issue, other_file, other_lines]],
            &ReviewOptions::default(),
        );
        assert_eq!(merged.len(), 4);
    }

    #[test]
    fn a_same_title_is_the_same_issue_whatever_the_wording() {
        let a = suggestion(
            "a.rs",
            (3, 3),
            Severity::Medium,
            "SQL injection",
            "query built by format!",
        );
        let b = suggestion(
            "a.rs",
            (3, 4),
            Severity::Medium,
            "sql injection ",
            "user input reaches the SQL string",
        );
        assert_eq!(merge([vec![a.clone()], vec![b]], &ReviewOptions::default()), [a]);
    }

    #[test]
    fn severity_order_and_limits_apply_after_the_merge() {
        let parts = [
            vec![
                suggestion("a.rs", (1, 1), Severity::Low, "", "naming nit about x"),
                suggestion("a.rs", (2, 2), Severity::High, "", "off by one in the loop bound"),
            ],
            vec![
                suggestion(
                    "b.rs",
                    (1, 1),
                    Severity::Critical,
                    "",
                    "secret committed to the repository",
                ),
                suggestion("b.rs", (2, 2), Severity::Medium, "", "missing timeout on the request"),
            ],
        ];
        let options = ReviewOptions {
            max_suggestions: Some(2),
            min_severity: Some(Severity::Medium),
            ..ReviewOptions::default()
        };
        let merged = merge(parts, &options);
        let severities: Vec<Severity> = merged.iter().map(|s| s.severity).collect();
        assert_eq!(severities, [Severity::Critical, Severity::High]);
    }

    #[test]
    fn the_summary_is_the_calls_summaries_in_order_each_once() {
        assert_eq!(
            compose_summary([
                "Parser looks fine.",
                "  ",
                "Client leaks a token.",
                "Parser looks fine."
            ]),
            "Parser looks fine.\n\nClient leaks a token."
        );
    }

    #[test]
    fn a_merged_review_never_holds_more_suggestions_than_a_previous_result_may() {
        let many: Vec<Suggestion> = (0..=MAX_PREVIOUS_SUGGESTIONS)
            .map(|i| suggestion(&format!("f{i}.rs"), (1, 1), Severity::Low, "", "a nit"))
            .collect();
        assert_eq!(merge([many], &ReviewOptions::default()).len(), MAX_PREVIOUS_SUGGESTIONS);
    }
}
