//! The review request: a system message that fixes the answer's shape (the contract's §6) and a
//! user message with the PR and its diff, each line numbered in the new file's numbering.

use crate::chat::Message;
use crate::context::Fitted;
use crate::contract::Job;
use crate::diff::render_into;

const SYSTEM: &str = "You are a meticulous senior code reviewer. Review the pull request diff \
you are given and report real problems: bugs, security issues, performance problems, \
maintainability issues. Do not praise, do not restate the change, do not invent code that is not \
in the diff.

Each diff line is shown as `<new line number> <marker><code>`: marker `+` is an added line, `-` a \
removed line (no number), a space an unchanged line. Comment only on added lines (`+`), and use \
the new-file line numbers shown at the left.

Answer with ONE JSON object and nothing else, exactly of this shape:
{\"summary\": \"<one paragraph about the whole PR>\",
 \"suggestions\": [{\"file\": \"<path as shown after === FILE:>\", \"line_start\": <int>, \
\"line_end\": <int>, \"severity\": \"low|medium|high|critical\", \"label\": \"bug|security|performance|maintainability|style\", \
\"title\": \"<short title>\", \"body\": \"<what is wrong and why>\", \"existing_code\": \"<the offending line(s)>\", \
\"improved_code\": \"<the fix>\"}]}
Use an empty suggestions array when there is nothing worth reporting.";

/// The most of the PR description and of the team rules a prompt carries, in characters. Either
/// may be megabytes long in a job; past this they would crowd the diff out of the window, and
/// every copy of them costs memory.
const MAX_TEXT_CHARS: usize = 20_000;
/// The most of a title or a language name a prompt carries, in characters.
const MAX_LINE_CHARS: usize = 500;

/// `text` cut to `max` characters, saying so when it is cut.
fn bounded(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(max) {
        None => text.into(),
        Some((at, _)) => format!("{} […cut: longer than {max} characters]", &text[..at]).into(),
    }
}

/// Builds the messages for one review.
pub fn build_messages(job: &Job, fitted: &Fitted<'_>) -> Vec<Message> {
    let mut system = SYSTEM.to_owned();
    if let Some(language) = job.options.language.as_deref().filter(|l| !l.trim().is_empty()) {
        let language = bounded(language, MAX_LINE_CHARS);
        system.push_str(&format!(
            "\nWrite the summary, titles and bodies in the natural language `{language}`; keep code as is."
        ));
    }
    if let Some(rules) = job.options.instructions.as_deref().filter(|r| !r.trim().is_empty()) {
        system.push_str("\n\nTeam rules to apply on top of the default review:\n");
        system.push_str(&bounded(rules.trim(), MAX_TEXT_CHARS));
    }

    let pr = &job.pull_request;
    let mut user = format!("Repository: {}\nPull request #{}", job.repository.full_name, pr.number);
    if let Some(title) = pr.title.as_deref().filter(|t| !t.trim().is_empty()) {
        user.push_str(": ");
        user.push_str(&bounded(title.trim(), MAX_LINE_CHARS));
    }
    user.push('\n');
    if let Some(language) = job.repository.language.as_deref() {
        user.push_str(&format!("Main language: {}\n", bounded(language, MAX_LINE_CHARS)));
    }
    if let Some(body) = pr.body.as_deref().filter(|b| !b.trim().is_empty()) {
        user.push_str("\nDescription:\n");
        user.push_str(&bounded(body.trim(), MAX_TEXT_CHARS));
        user.push('\n');
    }
    if !fitted.skipped_files.is_empty() {
        user.push_str(&format!(
            "\n{} file(s) are not shown (generated, vendored, binary, ignored or over the context budget).\n",
            fitted.skipped_files.len()
        ));
    }
    if let Some((part, of)) = fitted.part {
        user.push_str(&format!(
            "\nThis PR is reviewed in {of} parts; this is part {part}. Review only the files shown below: \
             the others are reviewed in the other parts.\n"
        ));
    }
    if !fitted.map.is_empty() {
        user.push('\n');
        user.push_str(&fitted.map);
    }
    user.push_str("\nDiff:\n");
    for file in &fitted.files {
        render_into(file, &mut user);
    }
    vec![Message::system(system), Message::user(user)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::parse_job;

    #[test]
    fn the_prompt_carries_the_title_body_rules_and_numbered_diff() {
        let mut job = parse_job(include_bytes!("../../../docs/contract/examples/job.json"), 1 << 20).unwrap();
        job.options.instructions = Some("Never allow unwrap() in handlers.".into());
        let files = crate::diff::parse_unified(&job.diff).unwrap();
        let plan = crate::plan::plan(
            files,
            &globset::GlobSet::empty(),
            crate::plan::Limits {
                call_tokens: 100_000,
                max_calls: 1,
            },
            None,
        );
        let fitted = plan.fitted(0);
        let messages = build_messages(&job, &fitted);
        assert_eq!(messages.len(), 2);
        assert!(messages[0].content.contains("Never allow unwrap() in handlers."));
        assert!(messages[0].content.contains("in the natural language `en`"));
        let user = &messages[1].content;
        assert!(user.contains("Pull request #42: Parse refund amounts from the webhook"));
        assert!(user.contains("Adds refund parsing."));
        assert!(user.contains("=== FILE: src/refund.rs (modified)"));
        assert!(user.contains("     4 +    let cents"), "{user}");
        // The map of the whole PR comes before the diff.
        let map = user.find("Changed files (1; added and removed lines):\n  src/refund.rs (modified) +");
        let diff = user.find("\nDiff:\n");
        assert!(map.is_some() && map < diff, "{user}");
    }

    #[test]
    fn a_part_of_a_split_pr_says_which_part_it_is() {
        let job = parse_job(include_bytes!("../../../docs/contract/examples/job.json"), 1 << 20).unwrap();
        let whole = build_messages(&job, &Fitted::default());
        assert!(!whole[1].content.contains("reviewed in"));
        let part = build_messages(
            &job,
            &Fitted {
                part: Some((2, 3)),
                ..Fitted::default()
            },
        );
        assert!(
            part[1]
                .content
                .contains("This PR is reviewed in 3 parts; this is part 2."),
            "{}",
            part[1].content
        );
    }
}
