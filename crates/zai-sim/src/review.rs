//! The simulated model's judgement: reads the diff that the worker rendered into its prompt (with
//! `review_core::diff::rendered`, the reader that sits next to the renderer) and flags a few
//! well-known smells on added lines, so that tests can predict the review exactly.

use review_core::diff::LineKind;
use review_core::diff::rendered::{self, RenderedLine};
use serde::Serialize;

/// What the model answers: `llm-review-output.v1.schema.json`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Review {
    pub(crate) summary: String,
    pub(crate) suggestions: Vec<Finding>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Finding {
    pub(crate) file: String,
    pub(crate) line_start: u64,
    pub(crate) line_end: u64,
    pub(crate) severity: &'static str,
    pub(crate) label: &'static str,
    pub(crate) title: &'static str,
    pub(crate) body: &'static str,
    pub(crate) existing_code: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) improved_code: Option<String>,
}

/// A review plus what the reasoning text talks about.
#[derive(Debug, Clone)]
pub(crate) struct Reviewed {
    pub(crate) review: Review,
    pub(crate) files: usize,
    pub(crate) added_lines: usize,
}

/// Reviews the diff rendered in `prompt`; a prompt without files gets an empty review.
pub(crate) fn review(prompt: &str) -> Reviewed {
    let mut suggestions = Vec::new();
    let mut files = 0usize;
    let mut added_lines = 0usize;
    let mut current: Option<&str> = None;
    let mut files_with_findings = 0usize;
    let mut current_has_finding = false;

    for line in rendered::lines(prompt) {
        match line {
            RenderedLine::File(file) => {
                files_with_findings = files_with_findings.saturating_add(usize::from(current_has_finding));
                current_has_finding = false;
                current = Some(file.path);
                files = files.saturating_add(1);
            }
            RenderedLine::Diff {
                kind: LineKind::Added,
                new_line: Some(number),
                text,
            } => {
                // Text before the first file (the PR's description) is not diff.
                let Some(path) = current else { continue };
                added_lines = added_lines.saturating_add(1);
                let before = suggestions.len();
                // A prompt sent with CRLF line ends keeps its `\r`s in the text.
                flag_line(path, number, text.trim_end_matches('\r'), &mut suggestions);
                current_has_finding |= suggestions.len() > before;
            }
            RenderedLine::Diff { .. } | RenderedLine::HunkHeader(_) | RenderedLine::Other(_) => {}
        }
    }
    files_with_findings = files_with_findings.saturating_add(usize::from(current_has_finding));

    let summary = if suggestions.is_empty() {
        "No issues found.".to_owned()
    } else {
        format!(
            "Found {} issue(s) in {} file(s).",
            suggestions.len(),
            files_with_findings
        )
    };
    Reviewed {
        review: Review { summary, suggestions },
        files,
        added_lines,
    }
}

struct Rule {
    severity: &'static str,
    label: &'static str,
    title: &'static str,
    body: &'static str,
}

const UNWRAP: Rule = Rule {
    severity: "high",
    label: "bug",
    title: "Possible panic on unwrap()",
    body: "`unwrap()` panics when the value is `None` or `Err`. Propagate the error with `?` or handle the failure explicitly.",
};
const TODO: Rule = Rule {
    severity: "low",
    label: "maintainability",
    title: "Unresolved TODO",
    body: "This change adds a TODO marker. Resolve it before merging or track it in an issue.",
};
const FIXME: Rule = Rule {
    severity: "low",
    label: "maintainability",
    title: "Unresolved FIXME",
    body: "This change adds a FIXME marker. Resolve it before merging or track it in an issue.",
};
const SECRET: Rule = Rule {
    severity: "critical",
    label: "security",
    title: "Hard-coded secret",
    body: "A credential is written into the source. Load it from configuration or a secret store, and rotate the exposed value.",
};
const DEBUG_OUTPUT: Rule = Rule {
    severity: "low",
    label: "style",
    title: "Debug output left in the code",
    body: "This prints debugging output. Use the project's logger or remove it before merging.",
};

fn flag_line(path: &str, number: u32, text: &str, out: &mut Vec<Finding>) {
    let mut push = |rule: &Rule, improved_code: Option<String>| {
        out.push(Finding {
            file: path.to_owned(),
            line_start: number.into(),
            line_end: number.into(),
            severity: rule.severity,
            label: rule.label,
            title: rule.title,
            body: rule.body,
            existing_code: text.to_owned(),
            improved_code,
        });
    };
    if text.contains("unwrap()") {
        let improved = text.contains(".unwrap()").then(|| text.replace(".unwrap()", "?"));
        push(&UNWRAP, improved);
    }
    if text.contains("TODO") {
        push(&TODO, None);
    } else if text.contains("FIXME") {
        push(&FIXME, None);
    }
    if has_secret(text) {
        push(&SECRET, None);
    }
    if has_debug_output(text) {
        push(&DEBUG_OUTPUT, None);
    }
}

const SECRET_NAMES: [&str; 5] = ["password", "passwd", "secret", "api_key", "token"];

/// A secret-looking name assigned a non-empty string literal (`password = "…"`, `"token": "…"`,
/// `API_KEY := '…'`), or an AWS access key id anywhere on the line.
fn has_secret(text: &str) -> bool {
    // ASCII lowercasing keeps every byte where it was, and names and separators are ASCII.
    let lower = text.to_ascii_lowercase();
    let assigned = SECRET_NAMES.iter().any(|name| {
        lower.match_indices(name).any(|(at, _)| {
            lower[at..]
                .strip_prefix(name)
                .is_some_and(|after| assigns_literal(after.as_bytes()))
        })
    });
    assigned || has_aws_key(text.as_bytes())
}

fn assigns_literal(after_name: &[u8]) -> bool {
    let mut rest = after_name;
    // A quoted key (`"token": "…"`) closes its quote before the separator.
    if let Some((b'"' | b'\'', tail)) = rest.split_first() {
        rest = tail;
    }
    rest = skip_spaces(rest);
    rest = match rest {
        [b':', b'=', tail @ ..] => tail,
        [b'=', b'=', ..] => return false,
        [b'=' | b':', tail @ ..] => tail,
        _ => return false,
    };
    rest = skip_spaces(rest);
    match rest.split_first() {
        Some((&quote @ (b'"' | b'\''), tail)) => tail.first().is_some_and(|&c| c != quote),
        _ => false,
    }
}

fn skip_spaces(mut s: &[u8]) -> &[u8] {
    while let Some((b' ' | b'\t', tail)) = s.split_first() {
        s = tail;
    }
    s
}

fn has_aws_key(bytes: &[u8]) -> bool {
    bytes.windows(20).enumerate().any(|(at, w)| {
        w.starts_with(b"AKIA")
            && w[4..].iter().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
            && at
                .checked_sub(1)
                .and_then(|before| bytes.get(before))
                .is_none_or(|c| !c.is_ascii_alphanumeric())
    })
}

/// `println!`, `print(`, `console.log(` or `dbg!` as a call of its own, not the tail of a longer
/// name (`eprintln!`, `self.print(`, `sprint(`).
fn has_debug_output(text: &str) -> bool {
    ["println!", "print(", "console.log(", "dbg!("].iter().any(|needle| {
        text.match_indices(needle).any(|(at, _)| {
            text[..at]
                .bytes()
                .next_back()
                .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == b'_' || c == b'.'))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(path: &str, status: &str, lines: &[(Option<u64>, char, &str)]) -> String {
        let mut out = format!("=== FILE: {path} ({status})\n@@ -1,3 +1,4 @@\n");
        for (number, marker, text) in lines {
            let number = number.map(|n| n.to_string()).unwrap_or_default();
            out.push_str(&format!("{number:>6} {marker}{text}\n"));
        }
        out
    }

    #[test]
    fn only_added_lines_after_a_file_header_are_reviewed() {
        let mut prompt = String::from("Description:\n    12 +let x = y.unwrap();\n");
        prompt.push_str(&render(
            "src/a (copy).rs",
            "modified",
            &[
                (Some(12), ' ', "let a = b.unwrap();"),
                (None, '-', "let c = d.unwrap();"),
                (Some(1_234_567), '+', "let e = f.unwrap();\r"),
            ],
        ));
        let reviewed = review(&prompt);
        let found: Vec<_> = reviewed
            .review
            .suggestions
            .iter()
            .map(|f| (f.file.as_str(), f.line_start, f.existing_code.as_str()))
            .collect();
        assert_eq!(found, [("src/a (copy).rs", 1_234_567, "let e = f.unwrap();")]);
        assert_eq!((reviewed.files, reviewed.added_lines), (1, 1));
    }

    #[test]
    fn secrets_need_a_non_empty_literal() {
        assert!(has_secret(r#"let password = "hunter2";"#));
        assert!(has_secret(r#"  "api_key": "abc","#));
        assert!(has_secret(r#"DB_PASSWD='x'"#));
        assert!(has_secret("key = AKIAABCDEFGHIJKLMNOP"));
        assert!(!has_secret(r#"let token = "";"#));
        assert!(!has_secret(r#"if token == "x" {"#));
        assert!(!has_secret("let password = env::var(\"PW\")?;"));
        assert!(!has_secret(r#"max_tokens = "12""#));
    }

    #[test]
    fn debug_output_is_flagged_only_as_a_call_of_its_own() {
        assert!(has_debug_output(r#"println!("x");"#));
        assert!(has_debug_output("print(x)"));
        assert!(has_debug_output("console.log(x);"));
        assert!(!has_debug_output(r#"eprintln!("x");"#));
        assert!(!has_debug_output("self.print(x)"));
    }

    #[test]
    fn a_clean_diff_gets_no_issues() {
        let prompt = render("a.rs", "modified", &[(Some(3), '+', "let x = 1;")]);
        let reviewed = review(&prompt);
        assert_eq!(reviewed.review.summary, "No issues found.");
        assert!(reviewed.review.suggestions.is_empty());
        assert_eq!((reviewed.files, reviewed.added_lines), (1, 1));
    }

    #[test]
    fn findings_are_counted_per_file_that_has_one() {
        let mut prompt = render(
            "a.rs",
            "modified",
            &[
                (Some(10), ' ', "fn main() {"),
                (None, '-', "    let v = x.unwrap();"),
                (Some(11), '+', "    let v = x.unwrap(); // TODO"),
            ],
        );
        prompt.push_str(&render("b.rs", "added", &[(Some(1), '+', "fn ok() {}")]));
        let reviewed = review(&prompt);
        let found: Vec<_> = reviewed
            .review
            .suggestions
            .iter()
            .map(|f| (f.file.as_str(), f.line_start, f.title))
            .collect();
        assert_eq!(
            found,
            [
                ("a.rs", 11, "Possible panic on unwrap()"),
                ("a.rs", 11, "Unresolved TODO")
            ]
        );
        assert_eq!(reviewed.review.summary, "Found 2 issue(s) in 1 file(s).");
        assert_eq!(
            reviewed.review.suggestions[0].improved_code.as_deref(),
            Some("    let v = x?; // TODO")
        );
    }
}
