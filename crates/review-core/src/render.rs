//! A result as people read it: the PR comment a team sees ([`markdown`]), the same for a terminal
//! ([`text`]), and the one sentence on what a review read ([`coverage_line`]).
//!
//! Everything the model wrote (summary, titles, bodies, code) is untrusted text placed into a
//! comment other people read. It must not be able to break the comment's structure (an unclosed
//! code fence swallows the rest, a `<details>` or `<!--` hides it), ping people (`@org/team`),
//! or, on a terminal, send escape sequences. So prose keeps its Markdown but its fences are
//! closed, its HTML is shown as text and its mentions are defused; code goes in a fence longer
//! than any run of backticks it holds; control characters are dropped everywhere.
//!
//! Line links are built for the forges whose URLs are known here: GitHub (and GitHub
//! Enterprise), GitLab (gitlab.com and self-hosted), Gitea/Forgejo, and Bitbucket Cloud. Others
//! (Azure DevOps, Bitbucket Server) get no links rather than wrong ones.

use std::collections::HashMap;

use crate::contract::{Coverage, Job, ReviewResult, Severity, SkipReason, Status, Suggestion};

/// A forge whose file-at-commit URLs [`Links`] knows how to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    GitHub,
    GitLab,
    Gitea,
    Bitbucket,
}

impl Platform {
    /// `repository.platform` of a job. `None` for a forge without links here (`azure_devops`),
    /// and for `other`, which leaves the decision to the URL.
    fn from_word(word: &str) -> Option<Self> {
        match word {
            "github" => Some(Self::GitHub),
            "gitlab" => Some(Self::GitLab),
            "gitea" => Some(Self::Gitea),
            "bitbucket" => Some(Self::Bitbucket),
            _ => None,
        }
    }

    fn from_host(host: &str) -> Option<Self> {
        match host.to_ascii_lowercase().as_str() {
            "github.com" | "www.github.com" => Some(Self::GitHub),
            "gitlab.com" => Some(Self::GitLab),
            "codeberg.org" | "gitea.com" => Some(Self::Gitea),
            "bitbucket.org" => Some(Self::Bitbucket),
            _ => None,
        }
    }

    /// A self-hosted forge, told by the shape of its PR URL.
    fn from_shape(segments: &[&str]) -> Option<Self> {
        [Self::GitLab, Self::GitHub, Self::Gitea, Self::Bitbucket]
            .into_iter()
            .find(|platform| platform.repository_segments(segments).is_some())
    }

    /// How many leading path segments of a PR URL name the repository: `o/r` of
    /// `o/r/pull/42`, `group/sub/project` of `group/sub/project/-/merge_requests/8`.
    fn repository_segments(self, segments: &[&str]) -> Option<usize> {
        let number = |at: usize| {
            segments
                .get(at)
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        };
        match self {
            Self::GitLab => {
                let dash = segments.windows(2).position(|pair| pair == ["-", "merge_requests"])?;
                (dash >= 2 && number(dash.checked_add(2)?)).then_some(dash)
            }
            Self::GitHub | Self::Gitea | Self::Bitbucket => {
                let word = match self {
                    Self::GitHub => "pull",
                    Self::Gitea => "pulls",
                    _ => "pull-requests",
                };
                (segments.get(2) == Some(&word) && number(3)).then_some(2)
            }
        }
    }
}

/// Where a suggestion's lines can be seen: the repository's web root, its forge and the PR's head
/// commit. Built from a job's `pull_request.url` and `head_sha`; without both there are no links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Links {
    platform: Platform,
    repository: String,
    sha: String,
}

impl Links {
    pub fn from_job(job: &Job) -> Option<Self> {
        let pr = &job.pull_request;
        Self::new(
            pr.url.as_deref()?,
            pr.head_sha.as_deref()?,
            job.repository.platform.as_deref(),
        )
    }

    /// From a PR's web URL, the head commit and the job's `repository.platform` if any. The
    /// platform, or else a well-known host, or else the URL's shape (`/pull/N`,
    /// `/-/merge_requests/N`, `/pulls/N`, `/pull-requests/N`) says which forge it is. `None` when
    /// the URL is not a PR URL of a known forge, holds characters that would break a Markdown
    /// link or credentials, or the sha is not a (short or full) hex commit id.
    pub fn new(pr_url: &str, head_sha: &str, platform: Option<&str>) -> Option<Self> {
        let sha = head_sha.trim();
        if !(7..=64).contains(&sha.len()) || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let (scheme, rest) = pr_url.trim().split_once("://")?;
        if !scheme.eq_ignore_ascii_case("https") && !scheme.eq_ignore_ascii_case("http") {
            return None;
        }
        let rest = rest.split(['?', '#']).next().unwrap_or_default();
        let (host, path) = rest.split_once('/')?;
        if host.is_empty() || host.contains('@') || !rest.bytes().all(safe_in_link) {
            return None;
        }
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let platform = match platform {
            Some(word) if word != "other" => Platform::from_word(word)?,
            _ => Platform::from_host(host).or_else(|| Platform::from_shape(&segments))?,
        };
        let repository = segments.get(..platform.repository_segments(&segments)?)?.join("/");
        Some(Self {
            platform,
            repository: format!("{}://{host}/{repository}", scheme.to_ascii_lowercase()),
            sha: sha.to_ascii_lowercase(),
        })
    }

    pub fn platform(&self) -> Platform {
        self.platform
    }

    /// The URL of `file`'s lines `start..=end` at the head commit.
    pub fn lines(&self, file: &str, start: u32, end: u32) -> String {
        let Self { repository, sha, .. } = self;
        let path = percent_encode_path(file);
        let end = end.max(start);
        let span = |between: &str| {
            if end > start {
                format!("{start}{between}{end}")
            } else {
                start.to_string()
            }
        };
        match self.platform {
            Platform::GitHub => format!("{repository}/blob/{sha}/{path}#L{}", span("-L")),
            Platform::GitLab => format!("{repository}/-/blob/{sha}/{path}#L{}", span("-")),
            Platform::Gitea => format!("{repository}/src/commit/{sha}/{path}#L{}", span("-L")),
            Platform::Bitbucket => format!("{repository}/src/{sha}/{path}#lines-{}", span(":")),
        }
    }
}

/// Characters a URL may keep inside `[text](url)`: printable ASCII without spaces, quotes,
/// brackets, angle brackets or backslashes.
fn safe_in_link(b: u8) -> bool {
    b.is_ascii_graphic()
        && !matches!(
            b,
            b'<' | b'>' | b'"' | b'\'' | b'`' | b'(' | b')' | b'[' | b']' | b'{' | b'}' | b'|' | b'\\' | b'^'
        )
}

fn percent_encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The result as the PR comment a team reads: the summary, the suggestions grouped by file
/// (files in order of their most severe suggestion, most severe first within a file, then by
/// line), each with its severity, a link to its lines and the suggested change, then what the
/// review read. A failed review says its error kind and message.
///
/// The suggested change is a GitHub ```` ```suggestion ```` block on GitHub and when the forge
/// is unknown (elsewhere it shows as a code block); on the other forges, whose suggestion syntax
/// only works in diff comments, a ```` ```diff ```` of the existing and improved code, or the
/// improved code alone when the model gave no existing code.
pub fn markdown(result: &ReviewResult, links: Option<&Links>) -> String {
    let mut out = String::from("## Code review\n\n");
    if result.status == Status::Failed {
        let (kind, message) = failure(result);
        out.push_str(&format!(
            "**The review failed** (`{kind}`): {}\n",
            markdown_line(message)
        ));
        return out;
    }
    if let Some(summary) = summary(result) {
        out.push_str(&prose_markdown(summary));
        out.push_str("\n\n");
    }
    let suggestions = result.suggestions.as_deref().unwrap_or_default();
    out.push_str(&format!("{}\n\n", tally(suggestions)));
    for (file, group) in by_file(suggestions) {
        out.push_str(&format!("### {}\n\n", code_span(file)));
        for suggestion in group {
            suggestion_markdown(&mut out, suggestion, links);
        }
    }
    if let Some(footer) = footer(result) {
        out.push_str(&format!("---\n\n{}\n", markdown_line(&footer)));
    }
    out.truncate(out.trim_end().len());
    out.push('\n');
    out
}

fn suggestion_markdown(out: &mut String, suggestion: &Suggestion, links: Option<&Links>) {
    let mut head = vec![format!("**{}**", severity_word(suggestion.severity))];
    if let Some(label) = suggestion.label.as_deref().filter(|l| !l.trim().is_empty()) {
        head.push(markdown_line(label));
    }
    let lines = lines_word(suggestion);
    head.push(match links {
        Some(links) => format!(
            "[{lines}]({})",
            links.lines(&suggestion.file, suggestion.line_start, suggestion.line_end)
        ),
        None => lines,
    });
    if let Some(title) = suggestion.title.as_deref().filter(|t| !t.trim().is_empty()) {
        head.push(format!("**{}**", markdown_line(title)));
    }
    let mut head = head.join(" · ");
    if suggestion.carried {
        head.push_str(" (unchanged since the last review)");
    }
    out.push_str(&head);
    out.push_str("\n\n");
    if !suggestion.body.trim().is_empty() {
        out.push_str(&prose_markdown(&suggestion.body));
        out.push_str("\n\n");
    }
    if let Some(improved) = suggestion.improved_code.as_deref() {
        let block = match (links.map(Links::platform), suggestion.existing_code.as_deref()) {
            (None | Some(Platform::GitHub), _) => fenced("suggestion", improved),
            (Some(_), Some(existing)) => fenced("diff", &diff_lines(existing, improved)),
            (Some(_), None) => fenced("", improved),
        };
        out.push_str(&block);
        out.push_str("\n\n");
    }
}

/// The result for a terminal: the same content and order as [`markdown`], without markup,
/// links on their own lines.
pub fn text(result: &ReviewResult, links: Option<&Links>) -> String {
    let mut out = String::new();
    if result.status == Status::Failed {
        let (kind, message) = failure(result);
        out.push_str(&format!("Review failed ({kind}): {}\n", clean(message)));
        return out;
    }
    let suggestions = result.suggestions.as_deref().unwrap_or_default();
    out.push_str(&format!("Code review: {}\n\n", tally(suggestions).replace("**", "")));
    if let Some(summary) = summary(result) {
        out.push_str(clean(summary).trim());
        out.push_str("\n\n");
    }
    for (file, group) in by_file(suggestions) {
        out.push_str(&format!("{}\n", one_line(file)));
        for suggestion in group {
            let mut head = format!("  {:<8} {}", severity_word(suggestion.severity), lines_word(suggestion));
            if let Some(title) = suggestion.title.as_deref().filter(|t| !t.trim().is_empty()) {
                head.push_str(&format!(": {}", one_line(title)));
            }
            if let Some(label) = suggestion.label.as_deref().filter(|l| !l.trim().is_empty()) {
                head.push_str(&format!(" [{}]", one_line(label)));
            }
            if suggestion.carried {
                head.push_str(" (unchanged since the last review)");
            }
            out.push_str(&head);
            out.push('\n');
            let indent = "      ";
            if let Some(links) = links {
                out.push_str(&format!(
                    "{indent}{}\n",
                    links.lines(&suggestion.file, suggestion.line_start, suggestion.line_end)
                ));
            }
            push_indented(&mut out, indent, &suggestion.body);
            if let Some(improved) = suggestion.improved_code.as_deref() {
                out.push_str(&format!("{indent}Suggested change:\n"));
                push_indented(&mut out, "          ", improved);
            }
            out.push('\n');
        }
    }
    if let Some(footer) = footer(result) {
        out.push_str(&clean(&footer));
        out.push('\n');
    }
    out.truncate(out.trim_end().len());
    out.push('\n');
    out
}

fn push_indented(out: &mut String, indent: &str, text: &str) {
    for line in clean(text).trim_matches('\n').lines() {
        out.push_str(indent);
        out.push_str(line);
        out.push('\n');
    }
}

/// One sentence on what a review read, for the comment's footer and a terminal:
/// `Reviewed 118 of 131 files (41,210 of 45,002 added lines, 91.6%) in 3 calls; not read:
/// 4 lockfile, 2 generated, 7 clipped for budget.`
pub fn coverage_line(coverage: &Coverage) -> String {
    let files = |n: u64| if n == 1 { "file" } else { "files" };
    let mut line = if coverage.files_reviewable == 0 {
        "Nothing to review".to_owned()
    } else {
        let lines = if coverage.lines_reviewable == 0 {
            "no added lines".to_owned()
        } else {
            format!(
                "{} of {} added lines, {}",
                thousands(coverage.lines_reviewed),
                thousands(coverage.lines_reviewable),
                percent(coverage.lines_reviewed, coverage.lines_reviewable)
            )
        };
        let carried = if coverage.lines_carried > 0 {
            format!(
                "; {} unchanged since the last review",
                thousands(coverage.lines_carried)
            )
        } else {
            String::new()
        };
        format!(
            "Reviewed {} of {} {} ({lines}{carried})",
            thousands(coverage.files_reviewed),
            thousands(coverage.files_reviewable),
            files(coverage.files_reviewable)
        )
    };
    match coverage.calls {
        0 => {}
        1 => line.push_str(" in 1 call"),
        calls => line.push_str(&format!(" in {calls} calls")),
    }
    // Files by why they were not (fully) read, in a fixed order: what they are, then the budget.
    let mut counts: Vec<(&str, u64)> = Vec::new();
    for word in SKIP_WORDS {
        let n = coverage
            .skipped
            .iter()
            .filter(|skipped| skip_word(skipped.reason, skipped.clipped) == word)
            .count();
        if n > 0 {
            counts.push((word, u64::try_from(n).unwrap_or(u64::MAX)));
        }
    }
    if !counts.is_empty() {
        let listed: Vec<String> = counts
            .iter()
            .map(|(word, n)| format!("{} {word}", thousands(*n)))
            .collect();
        line.push_str("; not read: ");
        line.push_str(&listed.join(", "));
    }
    line.push('.');
    line
}

const SKIP_WORDS: [&str; 10] = [
    "ignored",
    "lockfile",
    "generated",
    "vendored",
    "binary",
    "deleted",
    "clipped for budget",
    "over budget",
    "clipped for the call limit",
    "over the call limit",
];

fn skip_word(reason: SkipReason, clipped: bool) -> &'static str {
    match (reason, clipped) {
        (SkipReason::IgnorePaths, _) => "ignored",
        (SkipReason::Lockfile, _) => "lockfile",
        (SkipReason::Generated, _) => "generated",
        (SkipReason::Vendored, _) => "vendored",
        (SkipReason::Binary, _) => "binary",
        (SkipReason::Removed, _) => "deleted",
        (SkipReason::Budget, true) => "clipped for budget",
        (SkipReason::Budget, false) => "over budget",
        (SkipReason::MaxCalls, true) => "clipped for the call limit",
        (SkipReason::MaxCalls, false) => "over the call limit",
    }
}

/// `part` of `whole` to one decimal, rounded, but never `100.0%` short of all nor `0.0%` above
/// none.
fn percent(part: u64, whole: u64) -> String {
    let part = part.min(whole);
    let per_mille = u128::from(part)
        .checked_mul(1000)
        .and_then(|p| p.checked_add(u128::from(whole) / 2))
        .and_then(|p| p.checked_div(u128::from(whole)))
        .unwrap_or(0);
    let per_mille = match per_mille {
        1000 if part < whole => 999,
        0 if part > 0 => 1,
        other => other,
    };
    format!("{}.{}%", per_mille / 10, per_mille % 10)
}

/// `41210` as `41,210`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len().saturating_mul(2));
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && digits.len().saturating_sub(i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// What closes the comment: what the review read, and by which model.
fn footer(result: &ReviewResult) -> Option<String> {
    let mut parts = Vec::new();
    if let Some(coverage) = &result.coverage {
        parts.push(coverage_line(coverage));
    } else {
        // A result of an older worker: what it says of what it left out.
        let skipped = result.skipped_files.as_deref().unwrap_or_default();
        if !skipped.is_empty() {
            parts.push(format!(
                "Not read: {} {}.",
                skipped.len(),
                if skipped.len() == 1 { "file" } else { "files" }
            ));
        } else if result.truncated == Some(true) {
            parts.push("Part of the diff was left out to fit the model's context.".to_owned());
        }
    }
    if let Some(model) = result.model.as_deref() {
        let fallback = if result.used_fallback == Some(true) {
            ", the fallback"
        } else {
            ""
        };
        parts.push(format!("Model: {}{fallback}.", one_line(model)));
    }
    (!parts.is_empty()).then(|| parts.join(" "))
}

fn failure(result: &ReviewResult) -> (&'static str, &str) {
    result.error.as_ref().map_or(("unknown", "no error given"), |error| {
        (error.kind.as_str(), error.message.as_str())
    })
}

fn summary(result: &ReviewResult) -> Option<&str> {
    result.summary.as_deref().filter(|s| !s.trim().is_empty())
}

fn severity_word(severity: Severity) -> &'static str {
    match severity {
        Severity::Low => "low",
        Severity::Medium => "medium",
        Severity::High => "high",
        Severity::Critical => "critical",
    }
}

fn lines_word(suggestion: &Suggestion) -> String {
    if suggestion.line_end > suggestion.line_start {
        format!("lines {}-{}", suggestion.line_start, suggestion.line_end)
    } else {
        format!("line {}", suggestion.line_start)
    }
}

/// `3 suggestions in 2 files: 1 high, 2 low.`
fn tally(suggestions: &[Suggestion]) -> String {
    if suggestions.is_empty() {
        return "No suggestions.".to_owned();
    }
    let files = by_file(suggestions).len();
    let mut counts = Vec::new();
    for severity in [Severity::Critical, Severity::High, Severity::Medium, Severity::Low] {
        let n = suggestions.iter().filter(|s| s.severity == severity).count();
        if n > 0 {
            counts.push(format!("{n} {}", severity_word(severity)));
        }
    }
    let carried = suggestions.iter().filter(|s| s.carried).count();
    let carried = if carried > 0 {
        format!(" ({carried} unchanged since the last review)")
    } else {
        String::new()
    };
    format!(
        "**{} {}** in {files} {}: {}{carried}.",
        suggestions.len(),
        if suggestions.len() == 1 {
            "suggestion"
        } else {
            "suggestions"
        },
        if files == 1 { "file" } else { "files" },
        counts.join(", ")
    )
}

/// The suggestions by file: files in order of their most severe suggestion (the result's order
/// among equals), and within a file most severe first, then by line.
fn by_file(suggestions: &[Suggestion]) -> Vec<(&str, Vec<&Suggestion>)> {
    let mut groups: Vec<(&str, Vec<&Suggestion>)> = Vec::new();
    for suggestion in suggestions {
        match groups.iter_mut().find(|(file, _)| *file == suggestion.file) {
            Some((_, group)) => group.push(suggestion),
            None => groups.push((&suggestion.file, vec![suggestion])),
        }
    }
    for (_, group) in &mut groups {
        group.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.line_start.cmp(&b.line_start)));
    }
    let worst = |group: &[&Suggestion]| group.iter().map(|s| s.severity).max();
    groups.sort_by_key(|(_, group)| std::cmp::Reverse(worst(group)));
    groups
}

/// `existing` and `improved` as the lines of a unified diff.
fn diff_lines(existing: &str, improved: &str) -> String {
    let mut out = String::new();
    for (sign, code) in [('-', existing), ('+', improved)] {
        for line in code.trim_end_matches('\n').lines() {
            out.push(sign);
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Drops control characters (terminal escapes, carriage returns, NULs) and bidirectional
/// overrides, keeping newlines and tabs.
fn clean(text: &str) -> String {
    text.chars()
        .filter(|&c| c == '\n' || c == '\t' || !c.is_control())
        // Bidirectional overrides make text read otherwise than it is ("Trojan Source").
        .filter(|c| !matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'))
        .collect()
}

fn one_line(text: &str) -> String {
    clean(text).split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `code` in a fence longer than any run of backticks in it, so nothing in it can close it.
fn fenced(info: &str, code: &str) -> String {
    let code = clean(code);
    let code = code.trim_end_matches('\n');
    let fence = "`".repeat(longest_run(code, '`').saturating_add(1).max(3));
    format!("{fence}{info}\n{code}\n{fence}")
}

/// `text` as an inline code span, whatever backticks it holds.
fn code_span(text: &str) -> String {
    let text = one_line(text);
    let ticks = "`".repeat(longest_run(&text, '`').saturating_add(1));
    if text.starts_with('`') || text.ends_with('`') {
        format!("{ticks} {text} {ticks}")
    } else {
        format!("{ticks}{text}{ticks}")
    }
}

fn longest_run(text: &str, of: char) -> usize {
    let (mut longest, mut run) = (0usize, 0usize);
    for c in text.chars() {
        run = if c == of { run.saturating_add(1) } else { 0 };
        longest = longest.max(run);
    }
    longest
}

/// The model's Markdown, kept as Markdown but unable to break the comment: a code fence left
/// open is closed (at its own indentation, so a fence in a list item closes in it), and outside
/// code, HTML is shown as text and mentions are defused.
fn prose_markdown(text: &str) -> String {
    let text = clean(text);
    let mut out = String::with_capacity(text.len());
    let mut open: Option<Fence> = None;
    for line in text.trim_matches('\n').lines() {
        match &open {
            Some(fence) => {
                if fence.closed_by(line) {
                    open = None;
                }
                out.push_str(line);
            }
            None => match Fence::opened_by(line) {
                Some(fence) => {
                    open = Some(fence);
                    out.push_str(line);
                }
                None => out.push_str(&defuse(line, false)),
            },
        }
        out.push('\n');
    }
    if let Some(fence) = open {
        out.push_str(&" ".repeat(fence.indent));
        out.push_str(&fence.mark.to_string().repeat(fence.length));
    }
    out.truncate(out.trim_end().len());
    out
}

/// Untrusted text as one line of Markdown (a title, a label, an error): whitespace collapsed,
/// control characters dropped, HTML and mentions defused, emphasis markers escaped.
pub fn markdown_line(text: &str) -> String {
    defuse(&one_line(text), true)
}

/// Untrusted text as one line for a terminal: whitespace collapsed, control characters dropped.
pub fn text_line(text: &str) -> String {
    one_line(text)
}

/// A CommonMark code fence: three or more backticks or tildes, indented at most three spaces.
#[derive(Debug)]
struct Fence {
    indent: usize,
    mark: char,
    length: usize,
}

impl Fence {
    fn opened_by(line: &str) -> Option<Self> {
        let rest = line.trim_start_matches(' ');
        let indent = line.len().saturating_sub(rest.len());
        let mark = rest.chars().next().filter(|c| matches!(c, '`' | '~'))?;
        let length = rest.chars().take_while(|&c| c == mark).count();
        let info = rest.get(length..).unwrap_or_default();
        (indent <= 3 && length >= 3 && !(mark == '`' && info.contains('`'))).then_some(Self { indent, mark, length })
    }

    fn closed_by(&self, line: &str) -> bool {
        let rest = line.trim_start_matches(' ');
        let indent = line.len().saturating_sub(rest.len());
        let length = rest.chars().take_while(|&c| c == self.mark).count();
        indent <= 3.max(self.indent) && length >= self.length && rest.get(length..).is_some_and(|r| r.trim().is_empty())
    }
}

/// Outside inline code spans: `<` as `&lt;` (no HTML blocks, comments or tags), `@name` as
/// `@&#8203;name` (no notification; the zero-width space is what bots such as Renovate use), and
/// with `emphasis`, `\`, `*` and `_` escaped so a title cannot end the bold around it.
fn defuse(line: &str, emphasis: bool) -> String {
    let chars: Vec<char> = line.chars().collect();
    // The runs of backticks (start, length), and for each length where its runs are: a code
    // span ends at the next run of exactly as many backticks, found here in O(log n).
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (at, &c) in chars.iter().enumerate() {
        if c == '`' {
            match runs.last_mut() {
                Some((start, length)) if start.saturating_add(*length) == at => *length = length.saturating_add(1),
                _ => runs.push((at, 1)),
            }
        }
    }
    let mut by_length: HashMap<usize, Vec<usize>> = HashMap::new();
    for &(start, length) in &runs {
        by_length.entry(length).or_default().push(start);
    }
    let mut out = String::with_capacity(line.len());
    let mut at = 0usize;
    while let Some(&c) = chars.get(at) {
        if c == '`' {
            // Only a run's first backtick is ever reached here: a run is consumed whole.
            let length = runs
                .binary_search_by_key(&at, |&(start, _)| start)
                .ok()
                .and_then(|i| runs.get(i))
                .map_or(1, |&(_, length)| length);
            let after = at.saturating_add(length);
            let closing = by_length
                .get(&length)
                .and_then(|starts| starts.get(starts.partition_point(|&start| start < after)).copied());
            let stop = closing.map_or(after, |start| start.saturating_add(length));
            out.extend(chars.get(at..stop).unwrap_or_default());
            at = stop;
            continue;
        }
        let previous = at.checked_sub(1).and_then(|i| chars.get(i)).copied();
        match c {
            '<' => out.push_str("&lt;"),
            '@' if !previous.is_some_and(|p| p.is_alphanumeric() || p == '_')
                && chars.get(at.saturating_add(1)).is_some_and(|n| n.is_alphanumeric()) =>
            {
                out.push_str("@&#8203;");
            }
            '\\' | '*' | '_' if emphasis => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
        at = at.saturating_add(1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{FailureKind, SkippedFile};

    fn suggestion(file: &str, line: u32, severity: Severity) -> Suggestion {
        Suggestion {
            file: file.to_owned(),
            line_start: line,
            line_end: line,
            severity,
            label: None,
            title: Some(format!("Issue at {file}:{line}")),
            body: format!("Body of {file}:{line}."),
            existing_code: None,
            improved_code: None,
            fingerprint: None,
            carried: false,
        }
    }

    fn completed(suggestions: Vec<Suggestion>) -> ReviewResult {
        let mut result: ReviewResult =
            serde_json::from_str(include_str!("../../../docs/contract/examples/result-completed.json")).unwrap();
        result.suggestions = Some(suggestions);
        // Each test says what coverage it renders.
        result.coverage = None;
        result
    }

    fn coverage() -> Coverage {
        let skipped = |file: &str, reason, clipped| SkippedFile {
            file: file.to_owned(),
            reason,
            lines: 10,
            clipped,
        };
        Coverage {
            files_changed: 140,
            files_reviewable: 131,
            files_reviewed: 118,
            lines_reviewable: 45_002,
            lines_reviewed: 41_210,
            lines_carried: 0,
            calls: 3,
            skipped: vec![
                skipped("big.rs", SkipReason::Budget, true),
                skipped("Cargo.lock", SkipReason::Lockfile, false),
                skipped("schema.pb.go", SkipReason::Generated, false),
                skipped("yarn.lock", SkipReason::Lockfile, false),
            ],
            hunks: Vec::new(),
        }
    }

    fn github() -> Links {
        Links::new("https://github.com/acme/payments/pull/42", "2222222abc", Some("github")).unwrap()
    }

    #[test]
    fn files_come_in_order_of_their_most_severe_suggestion_and_suggestions_by_severity_then_line() {
        let result = completed(vec![
            suggestion("a.rs", 9, Severity::Low),
            suggestion("b.rs", 3, Severity::Medium),
            suggestion("c.rs", 1, Severity::Low),
            suggestion("b.rs", 20, Severity::Critical),
            suggestion("b.rs", 7, Severity::Medium),
            suggestion("a.rs", 2, Severity::Low),
        ]);
        let md = markdown(&result, None);
        let at = |needle: &str| md.find(needle).unwrap_or_else(|| panic!("{needle:?} not in:\n{md}"));
        assert!(at("### `b.rs`") < at("### `a.rs`"), "{md}");
        assert!(
            at("### `a.rs`") < at("### `c.rs`"),
            "ties keep the result's order:\n{md}"
        );
        assert!(at("b.rs:20") < at("b.rs:3") && at("b.rs:3") < at("b.rs:7"), "{md}");
        assert!(at("a.rs:2") < at("a.rs:9"), "{md}");
        assert!(
            md.contains("**6 suggestions** in 3 files: 1 critical, 2 medium, 3 low."),
            "{md}"
        );
        assert_eq!(md.matches("### ").count(), 3);
    }

    #[test]
    fn github_links_point_at_the_head_commit_with_a_line_range() {
        let links = github();
        assert_eq!(
            links.lines("src/refund.rs", 4, 6),
            "https://github.com/acme/payments/blob/2222222abc/src/refund.rs#L4-L6"
        );
        assert_eq!(
            links.lines("src/a b#c.rs", 4, 4),
            "https://github.com/acme/payments/blob/2222222abc/src/a%20b%23c.rs#L4"
        );
        let mut s = suggestion("src/refund.rs", 4, Severity::High);
        s.line_end = 6;
        let md = markdown(&completed(vec![s]), Some(&links));
        assert!(
            md.contains("[lines 4-6](https://github.com/acme/payments/blob/2222222abc/src/refund.rs#L4-L6)"),
            "{md}"
        );
    }

    #[test]
    fn gitlab_links_keep_the_group_path_and_use_gitlab_ranges() {
        let links = Links::new(
            "https://gitlab.example.com/acme/billing/api/-/merge_requests/8?tab=diffs",
            "abcdef1234",
            None,
        )
        .unwrap();
        assert_eq!(links.platform(), Platform::GitLab);
        assert_eq!(
            links.lines("app/settings.py", 4, 6),
            "https://gitlab.example.com/acme/billing/api/-/blob/abcdef1234/app/settings.py#L4-6"
        );
        let on_gitlab_com = Links::new(
            "https://gitlab.com/acme/billing/-/merge_requests/8",
            "abcdef1",
            Some("gitlab"),
        )
        .unwrap();
        assert_eq!(
            on_gitlab_com.lines("x.py", 3, 3),
            "https://gitlab.com/acme/billing/-/blob/abcdef1/x.py#L3"
        );
    }

    #[test]
    fn self_hosted_github_gitea_and_bitbucket_urls_are_told_by_their_shape_or_platform() {
        let ghe = Links::new("https://git.corp.example/team/svc/pull/5", "abcdef1", None).unwrap();
        assert_eq!(
            ghe.lines("a.rs", 1, 2),
            "https://git.corp.example/team/svc/blob/abcdef1/a.rs#L1-L2"
        );
        let gitea = Links::new("https://codeberg.org/o/r/pulls/5", "abcdef1", Some("gitea")).unwrap();
        assert_eq!(
            gitea.lines("a.rs", 1, 2),
            "https://codeberg.org/o/r/src/commit/abcdef1/a.rs#L1-L2"
        );
        let bitbucket = Links::new("https://bitbucket.org/o/r/pull-requests/5", "abcdef1", None).unwrap();
        assert_eq!(
            bitbucket.lines("a.rs", 1, 2),
            "https://bitbucket.org/o/r/src/abcdef1/a.rs#lines-1:2"
        );
    }

    #[test]
    fn there_are_no_links_without_a_usable_url_and_sha() {
        let url = "https://github.com/acme/payments/pull/42";
        assert!(Links::new(url, "2222222", None).is_some());
        for (url, sha, platform) in [
            (url, "main", None),
            (url, "222", None),
            (url, "2222222", Some("azure_devops")),
            (url, "2222222", Some("gitlab")),
            ("https://example.com/acme/payments", "2222222", None),
            (
                "https://github.com/acme/payments/pull/42)](javascript:x)",
                "2222222",
                None,
            ),
            ("https://token@github.com/acme/payments/pull/42", "2222222", None),
            ("ftp://github.com/acme/payments/pull/42", "2222222", None),
            ("not a url", "2222222", None),
        ] {
            assert_eq!(Links::new(url, sha, platform), None, "{url} {sha} {platform:?}");
        }
        let mut job =
            crate::contract::parse_job(include_bytes!("../../../docs/contract/examples/job.json"), 1 << 20).unwrap();
        job.pull_request.url = None;
        assert_eq!(Links::from_job(&job), None);
        let md = markdown(&completed(vec![suggestion("a.rs", 4, Severity::High)]), None);
        assert!(md.contains("**high** · line 4 · **Issue at a.rs:4**"), "{md}");
        assert!(!md.contains("](http"), "{md}");
    }

    #[test]
    fn the_change_is_a_suggestion_block_on_github_and_a_diff_elsewhere() {
        let mut s = suggestion("src/refund.rs", 4, Severity::High);
        s.existing_code = Some("let x = a.unwrap();".to_owned());
        s.improved_code = Some("let x = a?;\n".to_owned());
        let result = completed(vec![s]);
        let md = markdown(&result, Some(&github()));
        assert!(md.contains("\n```suggestion\nlet x = a?;\n```\n"), "{md}");
        assert_eq!(
            markdown(&result, None),
            md.replace(
                "[line 4](https://github.com/acme/payments/blob/2222222abc/src/refund.rs#L4)",
                "line 4"
            )
        );
        let gitlab = Links::new("https://gitlab.com/acme/billing/-/merge_requests/8", "abcdef1", None).unwrap();
        let md = markdown(&result, Some(&gitlab));
        assert!(
            md.contains("\n```diff\n-let x = a.unwrap();\n+let x = a?;\n```\n"),
            "{md}"
        );
        assert!(!md.contains("suggestion\n"), "{md}");
    }

    #[test]
    fn a_carried_suggestion_is_marked_unchanged() {
        let mut carried = suggestion("a.rs", 4, Severity::High);
        carried.carried = true;
        let md = markdown(&completed(vec![carried, suggestion("a.rs", 9, Severity::Low)]), None);
        assert!(
            md.contains("**high** · line 4 · **Issue at a.rs:4** (unchanged since the last review)\n"),
            "{md}"
        );
        assert!(md.contains("**low** · line 9 · **Issue at a.rs:9**\n"), "{md}");
        assert!(md.contains("2 suggestions** in 1 file: 1 high, 1 low (1 unchanged since the last review)."));
        let text = text(&completed(vec![suggestion("a.rs", 4, Severity::High)]), None);
        assert!(!text.contains("unchanged"), "{text}");
    }

    #[test]
    fn the_coverage_line_counts_files_lines_calls_and_what_was_not_read() {
        assert_eq!(
            coverage_line(&coverage()),
            "Reviewed 118 of 131 files (41,210 of 45,002 added lines, 91.6%) in 3 calls; \
             not read: 2 lockfile, 1 generated, 1 clipped for budget."
        );
        let carried = Coverage {
            files_reviewable: 1,
            files_reviewed: 1,
            lines_reviewable: 2000,
            lines_reviewed: 1999,
            lines_carried: 1500,
            calls: 1,
            skipped: Vec::new(),
            ..coverage()
        };
        assert_eq!(
            coverage_line(&carried),
            "Reviewed 1 of 1 file (1,999 of 2,000 added lines, 99.9%; 1,500 unchanged since the last review) in 1 call."
        );
        let nothing = Coverage {
            files_reviewable: 0,
            files_reviewed: 0,
            calls: 0,
            skipped: vec![SkippedFile {
                file: "Cargo.lock".to_owned(),
                reason: SkipReason::Lockfile,
                lines: 40,
                clipped: false,
            }],
            ..coverage()
        };
        assert_eq!(coverage_line(&nothing), "Nothing to review; not read: 1 lockfile.");
        let mut result = completed(vec![suggestion("a.rs", 4, Severity::High)]);
        result.coverage = Some(coverage());
        let md = markdown(&result, None);
        assert!(
            md.ends_with(&format!("---\n\n{} Model: glm-5.1.\n", coverage_line(&coverage()))),
            "{md}"
        );
        assert!(text(&result, None).ends_with(&format!("{} Model: glm-5.1.\n", coverage_line(&coverage()))));
    }

    #[test]
    fn percentages_round_but_never_claim_all_or_nothing_falsely() {
        assert_eq!(percent(41_210, 45_002), "91.6%");
        assert_eq!(percent(99_999, 100_000), "99.9%");
        assert_eq!(percent(1, 100_000), "0.1%");
        assert_eq!(percent(0, 10), "0.0%");
        assert_eq!(percent(10, 10), "100.0%");
        assert_eq!(percent(u64::MAX, u64::MAX), "100.0%");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(999), "999");
    }

    #[test]
    fn code_with_fences_gets_a_longer_fence_and_an_unclosed_fence_in_prose_is_closed() {
        let mut s = suggestion("README.md", 4, Severity::Low);
        s.improved_code = Some("```rust\nfn main() {}\n```".to_owned());
        s.body = "Try this:\n\n```rust\nlet x = 1;\n<!-- not a comment".to_owned();
        let mut result = completed(vec![s, suggestion("z.rs", 1, Severity::Low)]);
        result.summary = Some("Mind <details> and @acme/security, not a@b.c or `<T>` and `@x`.".to_owned());
        let md = markdown(&result, None);
        assert!(
            md.contains("\n````suggestion\n```rust\nfn main() {}\n```\n````\n"),
            "{md}"
        );
        assert!(md.contains("```rust\nlet x = 1;\n<!-- not a comment\n```\n"), "{md}");
        assert!(md.contains("### `z.rs`"), "{md}");
        assert!(
            md.contains("Mind &lt;details> and @&#8203;acme/security, not a@b.c or `<T>` and `@x`."),
            "{md}"
        );
        // Every fence the comment opens is closed: outside fences, what follows is Markdown again.
        let mut open: Option<Fence> = None;
        for line in md.lines() {
            match &open {
                Some(fence) if fence.closed_by(line) => open = None,
                Some(_) => {}
                None => open = Fence::opened_by(line),
            }
        }
        assert!(open.is_none(), "{md}");
    }

    #[test]
    fn titles_and_paths_cannot_break_their_line() {
        let mut s = suggestion("we`ird\npath.rs", 4, Severity::Medium);
        s.title = Some("Use **bold**\nand `a_b` <b>\u{1b}[31m\\".to_owned());
        s.label = Some("bug".to_owned());
        let md = markdown(&completed(vec![s]), None);
        assert!(md.contains("### ``we`ird path.rs``\n"), "{md}");
        assert!(
            md.contains("**medium** · bug · line 4 · **Use \\*\\*bold\\*\\* and `a_b` &lt;b>[31m\\\\**\n"),
            "{md}"
        );
        assert!(!md.contains('\u{1b}'));
    }

    #[test]
    fn code_spans_are_kept_verbatim_and_unmatched_backticks_are_text() {
        assert_eq!(
            defuse("`<a>` <b> ``x ` <c>`` ``` <d> @e", false),
            "`<a>` &lt;b> ``x ` <c>`` ``` &lt;d> @&#8203;e"
        );
        assert_eq!(defuse("a_b `c_d` *e*", true), "a\\_b `c_d` \\*e\\*");
        assert_eq!(clean("ok\u{202E}txt.exe\u{1b}[0m"), "oktxt.exe[0m");
    }

    #[test]
    fn a_long_line_of_backtick_runs_is_defused_in_linear_time() {
        // Runs of 1, 2, 3… backticks, none closed: quadratic scanning would take minutes.
        let line: String = (1..2000).map(|n| format!("{}<", "`".repeat(n))).collect();
        let started = std::time::Instant::now();
        let out = defuse(&line, false);
        assert_eq!(out.matches("&lt;").count(), 1999);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_failed_result_renders_its_error_kind_and_message() {
        let failed = ReviewResult::failed("j1", FailureKind::ProviderRejected, "the model <refused>", 2);
        assert_eq!(
            markdown(&failed, Some(&github())),
            "## Code review\n\n**The review failed** (`provider_rejected`): the model &lt;refused>\n"
        );
        assert_eq!(
            text(&failed, None),
            "Review failed (provider_rejected): the model <refused>\n"
        );
    }

    #[test]
    fn text_has_the_summary_files_suggestions_links_and_changes_without_markup() {
        let mut s = suggestion("src/refund.rs", 4, Severity::High);
        s.improved_code = Some("let x = a?;".to_owned());
        s.body = "Panics.\u{1b}[2J".to_owned();
        let result = completed(vec![s]);
        let text = text(&result, Some(&github()));
        assert_eq!(
            text,
            "Code review: 1 suggestion in 1 file: 1 high.\n\n\
             Refund parsing panics on malformed input and hard-codes a secret.\n\n\
             src/refund.rs\n\
             \x20 high     line 4: Issue at src/refund.rs:4\n\
             \x20     https://github.com/acme/payments/blob/2222222abc/src/refund.rs#L4\n\
             \x20     Panics.[2J\n\
             \x20     Suggested change:\n\
             \x20         let x = a?;\n\n\
             Model: glm-5.1.\n"
        );
    }
}
