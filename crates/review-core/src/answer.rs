//! Reading what the model answered: turning a chat completion's content or tool-call arguments
//! into a [`ModelReview`], and wording the one repair request when that fails.
//!
//! The model is asked for `llm-review-output.v1.schema.json`, but GLM models answer in many
//! shapes: fenced or bare JSON inside prose, after a `<think>` block, as a tool call (sometimes
//! double-encoded), with renamed fields, numbers as strings, wrappers around the object, or a bare
//! array. All of those are read here, leniently, so that the rest of the worker sees one shape.
//! Nothing here checks lines against the diff; that is `anchor`'s job.

use std::cell::{Cell, OnceCell};

use serde_json::{Map, Value};

use crate::contract::Severity;

/// One suggestion as the model gave it, before it is checked against the diff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawSuggestion {
    pub file: String,
    pub line_start: i64,
    pub line_end: Option<i64>,
    pub severity: Option<Severity>,
    pub label: Option<String>,
    pub title: Option<String>,
    pub body: String,
    pub existing_code: Option<String>,
    pub improved_code: Option<String>,
}

/// What the model answered, read leniently.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelReview {
    pub summary: Option<String>,
    pub suggestions: Vec<RawSuggestion>,
    /// Suggestions left out because they lacked a file, a line or a body.
    pub dropped_malformed: usize,
}

/// Why an answer could not be read as a review.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    #[error("the model answered nothing: no content and no tool call")]
    Empty,
    #[error("the model's answer contains no JSON: \"{excerpt}\"")]
    NoJson { excerpt: String },
    #[error("the model's answer contains JSON but no review object with `suggestions`: \"{excerpt}\"")]
    NotAReview { excerpt: String },
}

/// The answer shape, as the repair request shows it. It is a valid instance of the schema (a test
/// checks), so that a model copying it literally sends something readable.
const REVIEW_SHAPE: &str = r#"{"summary": "<one paragraph about the change>", "suggestions": [{"file": "<path as in the diff>", "line_start": 12, "line_end": 14, "severity": "medium", "label": "<short category, e.g. bug>", "title": "<one line>", "body": "<what is wrong and why>", "existing_code": "<the lines as they are now>", "improved_code": "<the replacement lines>"}]}"#;

/// Keys models use for each field, preferred first.
const SUGGESTION_LIST_KEYS: &[&str] = &["suggestions", "comments", "issues", "findings"];
const WRAPPER_KEYS: &[&str] = &["review", "result"];
const FILE_KEYS: &[&str] = &["file", "path", "filename", "file_path", "filepath"];
const LINE_START_KEYS: &[&str] = &["line_start", "start_line", "line", "lines", "line_number"];
const LINE_END_KEYS: &[&str] = &["line_end", "end_line"];
const BODY_KEYS: &[&str] = &["body", "comment", "message", "description"];
const SEVERITY_KEYS: &[&str] = &["severity", "level", "priority"];
const LABEL_KEYS: &[&str] = &["label", "category"];
const TITLE_KEYS: &[&str] = &["title"];
const EXISTING_CODE_KEYS: &[&str] = &["existing_code", "original_code", "current_code"];
const IMPROVED_CODE_KEYS: &[&str] = &["improved_code", "suggested_code", "fixed_code"];

/// Bounds the work spent on an answer that is mostly not JSON; a real answer needs a handful.
const MAX_CANDIDATES: usize = 512;
/// How deep wrappers and double encodings are followed.
const MAX_DEPTH: usize = 6;
const EXCERPT_CHARS: usize = 200;

/// Reads the model's review from a chat completion.
///
/// Tool-call arguments win when one of them holds a review; otherwise the content is read. An
/// answer with neither content nor tool call is [`AnswerError::Empty`].
pub fn parse_answer(content: Option<&str>, tool_call_arguments: &[&str]) -> Result<ModelReview, AnswerError> {
    let mut tool_error = None;
    for arguments in tool_call_arguments.iter().filter(|a| !a.trim().is_empty()) {
        match review_in_text(arguments) {
            Ok(review) => return Ok(review),
            Err(error) => {
                tool_error.get_or_insert(error);
            }
        }
    }
    let content = content.unwrap_or_default();
    if content.trim().is_empty() {
        return Err(tool_error.unwrap_or(AnswerError::Empty));
    }
    let answer = strip_thinking(content);
    if answer.trim().is_empty() {
        // All thinking and no answer: say so with what the model did write.
        return Err(AnswerError::NoJson {
            excerpt: excerpt(content),
        });
    }
    review_in_text(&answer)
}

/// The follow-up user message for the one repair attempt after `error`.
pub fn repair_instruction(error: &AnswerError) -> String {
    let problem = match error {
        AnswerError::Empty => "Your previous answer was empty.",
        AnswerError::NoJson { .. } => "Your previous answer contained no JSON object.",
        AnswerError::NotAReview { .. } => {
            "Your previous answer contained JSON, but not the review object with a `suggestions` array."
        }
    };
    format!(
        "{problem} Resend your review as one JSON object and nothing else: no prose, no Markdown \
         fences, no <think> block. It must have exactly this shape:\n{REVIEW_SHAPE}\n\
         `file`, `line_start` and `body` are required in every suggestion; the other fields are \
         optional. `line_start` and `line_end` are integers in the new file's numbering and must \
         point at lines the diff added. `severity` is one of \"low\", \"medium\", \"high\", \
         \"critical\". If you have nothing to suggest, send \
         {{\"summary\": \"<your summary>\", \"suggestions\": []}}."
    )
}

/// Tries every place a review may hide in `text`, in order of how deliberately it was put there.
fn review_in_text(text: &str) -> Result<ModelReview, AnswerError> {
    let spans = OnceCell::new();
    let candidates = std::iter::once(text.trim())
        .chain(fenced_blocks(text))
        .chain(balanced_spans(text, b'{', &spans))
        .chain(balanced_spans(text, b'[', &spans))
        .take(MAX_CANDIDATES);
    let budget = ParseBudget::for_text(text.len());
    let mut saw_json = false;
    for candidate in candidates {
        let Some(value) = parse_json(candidate, &budget) else {
            continue;
        };
        saw_json = true;
        if let Some(review) = find_review(&value, true, 0, &budget) {
            return Ok(review);
        }
    }
    let excerpt = excerpt(text);
    Err(if saw_json {
        AnswerError::NotAReview { excerpt }
    } else {
        AnswerError::NoJson { excerpt }
    })
}

/// How many bytes the JSON parser may be handed for one answer. Candidates nest (every object
/// inside a span is a span too), so without a bound an answer of nested objects would be parsed
/// once per level: quadratic. A real answer costs a few times its size (the whole text, a fence,
/// the object, a repair pass); what is left after 16 times is not worth the CPU, and is skipped.
#[derive(Debug)]
struct ParseBudget(Cell<usize>);

const PARSE_BYTES_PER_BYTE: usize = 16;
const PARSE_BYTES_AT_LEAST: usize = 1 << 20;

impl ParseBudget {
    fn for_text(len: usize) -> Self {
        Self(Cell::new(
            len.saturating_mul(PARSE_BYTES_PER_BYTE).max(PARSE_BYTES_AT_LEAST),
        ))
    }

    /// Takes `bytes` from what is left; takes nothing and says no when that is not enough.
    fn spend(&self, bytes: usize) -> bool {
        match self.0.get().checked_sub(bytes) {
            Some(left) => {
                self.0.set(left);
                true
            }
            None => false,
        }
    }
}

/// Removes `<think>...</think>` blocks, whose drafts must not be mistaken for the answer.
fn strip_thinking(text: &str) -> String {
    const OPEN: &str = "<think>";
    const CLOSE: &str = "</think>";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some((before, inner)) = rest.split_once(OPEN) {
        out.push_str(before);
        match inner.split_once(CLOSE) {
            Some((_, after)) => rest = after,
            None => {
                // Never closed: the answer may be in there, and losing it is worse than reading
                // a draft first.
                rest = inner;
                break;
            }
        }
    }
    out.push_str(rest);
    // Chat templates may open the block in the prompt, so only its end shows in the answer.
    out.split_once(CLOSE).map(|(_, after)| after.to_owned()).unwrap_or(out)
}

/// The bodies of Markdown code fences, whatever their language tag; an unclosed fence runs to the
/// end (the answer may have been cut off).
fn fenced_blocks(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        let (_, after) = rest.split_once("```")?;
        let tag_len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '+'))
            .unwrap_or(after.len());
        let body = &after[tag_len..];
        let (block, next) = body.split_once("```").unwrap_or((body, ""));
        rest = next;
        Some(block.trim())
    })
}

/// Balanced `{...}` (or `[...]`) spans that look like JSON, in order of their start, nested ones
/// included: a span that is not a review may still contain one, and a stray brace in prose must
/// not hide the answer that follows it. The table of where spans end is built on first use, once
/// for both kinds of bracket.
fn balanced_spans<'t>(text: &'t str, open: u8, spans: &'t OnceCell<SpanTable>) -> impl Iterator<Item = &'t str> {
    let bytes = text.as_bytes();
    let mut from = 0;
    std::iter::from_fn(move || {
        let spans = spans.get_or_init(|| SpanTable::build(bytes));
        while let Some(offset) = bytes[from..].iter().position(|&b| b == open) {
            // Both stay within the text, far from overflowing.
            let start = from.saturating_add(offset);
            from = start.saturating_add(1);
            if !looks_like_json_start(bytes, start) {
                continue;
            }
            if let Some(end) = spans.end(bytes, start) {
                // Both ends are ASCII bytes, hence char boundaries.
                return Some(&text[start..=end]);
            }
        }
        None
    })
}

/// Skips the braces of code and prose (`fn f() { x }`, `{name}`) without scanning them: a JSON
/// object opens with a key or closes at once, an array of suggestions opens with an object.
fn looks_like_json_start(bytes: &[u8], start: usize) -> bool {
    let next = bytes[start..]
        .iter()
        .skip(1)
        .find(|b| !b.is_ascii_whitespace())
        .copied();
    match bytes[start] {
        b'{' => matches!(next, Some(b'"' | b'}')),
        _ => matches!(next, Some(b'{' | b']')),
    }
}

fn closer(open: u8) -> u8 {
    if open == b'[' { b']' } else { b'}' }
}

/// Where every JSON-looking bracket of a text closes, found in time linear in the text.
///
/// A span is read from its opening bracket the way JSON is: brackets inside strings do not count,
/// and a closer of the wrong kind ends the span unmatched. Reading from each opening bracket anew
/// is quadratic when every bracket starts a span that runs to the end, as in `{"{"{"…`, where each
/// `{` opens a string that the next one's `"` closes. But what a reader does next depends only on
/// where it is and whether it is inside a string: two readers that meet in the same state read
/// the same from there on, so the later one's innermost bracket ends exactly where the earlier
/// one's did, with the same byte. The table keeps, for each position and state, the innermost
/// bracket of the first reader there; a later reader jumps to where that bracket ended. So each
/// (position, state) is read at most once, and each bracket jumped over at most once.
#[derive(Debug, Default)]
struct SpanTable {
    /// Per position, for a reader outside or inside a string: the innermost bracket of the first
    /// reader that was there, or `UNSEEN`. (Right after a backslash a reader moves on at once.)
    seen: Vec<[u32; 2]>,
    /// Per bracket any reader opened, in the order they were opened.
    fates: Vec<Fate>,
}

const UNSEEN: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
enum Fate {
    Open,
    /// Its span ended at `at` with `by`, a closer of the right kind or not.
    Closed {
        at: u32,
        by: u8,
    },
    /// Its reader met the text's end, or a wrong closer inside it, first.
    Died,
}

#[derive(Debug, Clone, Copy)]
enum Scan {
    Outside,
    InString,
    Escaped,
}

impl Scan {
    fn slot(self) -> Option<usize> {
        match self {
            Self::Outside => Some(0),
            Self::InString => Some(1),
            Self::Escaped => None,
        }
    }

    fn after(self, byte: u8) -> Self {
        match (self, byte) {
            (Self::Escaped, _) => Self::InString,
            (Self::InString, b'\\') => Self::Escaped,
            (Self::InString, b'"') => Self::Outside,
            (Self::Outside, b'"') => Self::InString,
            (scan, _) => scan,
        }
    }
}

impl SpanTable {
    fn build(bytes: &[u8]) -> Self {
        // Positions and bracket numbers are u32, which halves the table; answers are megabytes.
        if u32::try_from(bytes.len()).map_or(true, |len| len == UNSEEN) {
            return Self::default();
        }
        let mut table = Self {
            seen: vec![[UNSEEN; 2]; bytes.len()],
            fates: Vec::new(),
        };
        let mut open = Vec::new();
        for start in 0..bytes.len() {
            if matches!(bytes[start], b'{' | b'[')
                && looks_like_json_start(bytes, start)
                && table.bracket_at(start).is_none()
            {
                table.read_from(bytes, start, &mut open);
            }
        }
        table
    }

    /// Where the span opened at `start` closes, if it does.
    fn end(&self, bytes: &[u8], start: usize) -> Option<usize> {
        let bracket = self.bracket_at(start)?;
        match self.fates.get(bracket as usize)? {
            Fate::Closed { at, by } if *by == closer(bytes[start]) => Some(*at as usize),
            _ => None,
        }
    }

    /// The bracket some reader opened at `start`: right after opening it, that reader's
    /// innermost bracket is it, outside a string.
    fn bracket_at(&self, start: usize) -> Option<u32> {
        self.seen
            .get(start.checked_add(1)?)
            .map(|seen| seen[0])
            .filter(|&b| b != UNSEEN)
    }

    /// Reads from the bracket at `start` until it closes or dies, settling the fate of every
    /// bracket it opens; `open` is scratch space for the brackets open, innermost last.
    #[expect(
        clippy::arithmetic_side_effects,
        clippy::cast_possible_truncation,
        reason = "positions are below the text's length, which `build` checked fits a u32"
    )]
    fn read_from(&mut self, bytes: &[u8], start: usize, open: &mut Vec<(u32, u8)>) {
        open.clear();
        self.open(open, bytes[start]);
        let mut at = start + 1;
        let mut scan = Scan::Outside;
        while let Some(&byte) = bytes.get(at) {
            if let Some(slot) = scan.slot() {
                let Some(&(innermost, _)) = open.last() else { return };
                match self.seen[at][slot] {
                    UNSEEN => self.seen[at][slot] = innermost,
                    earlier => {
                        // Another reader was here in this state: from here on it read what this
                        // one would, so this one's innermost bracket ends where that one's did.
                        let Some(Fate::Closed { at: end, by }) = self.fates.get(earlier as usize).copied() else {
                            break;
                        };
                        if !self.close(open, end, by) {
                            return;
                        }
                        at = end as usize + 1;
                        scan = Scan::Outside;
                        continue;
                    }
                }
            }
            match (scan, byte) {
                (Scan::Outside, b'{' | b'[') => self.open(open, byte),
                (Scan::Outside, b'}' | b']') if !self.close(open, at as u32, byte) => return,
                _ => {}
            }
            scan = scan.after(byte);
            at += 1;
        }
        // The text ended with brackets open, or the reader joined one that died: none closes.
        self.die(open);
    }

    #[expect(
        clippy::cast_possible_truncation,
        reason = "there are fewer brackets than bytes, which `build` checked fit a u32"
    )]
    fn open(&mut self, open: &mut Vec<(u32, u8)>, bracket: u8) {
        open.push((self.fates.len() as u32, closer(bracket)));
        self.fates.push(Fate::Open);
    }

    /// Ends the innermost open bracket at `at` with `by`. Returns whether the reader goes on: not
    /// when that was its last bracket, nor after a closer of the wrong kind, which leaves every
    /// bracket it has open unmatched.
    fn close(&mut self, open: &mut Vec<(u32, u8)>, at: u32, by: u8) -> bool {
        let Some((bracket, expected)) = open.pop() else {
            return false;
        };
        self.fates[bracket as usize] = Fate::Closed { at, by };
        if by != expected {
            self.die(open);
            return false;
        }
        !open.is_empty()
    }

    fn die(&mut self, open: &mut Vec<(u32, u8)>) {
        for (bracket, _) in open.drain(..) {
            self.fates[bracket as usize] = Fate::Died;
        }
    }
}

fn parse_json(text: &str, budget: &ParseBudget) -> Option<Value> {
    if text.is_empty() || !budget.spend(text.len()) {
        return None;
    }
    serde_json::from_str(text).ok().or_else(|| {
        // Models often put raw newlines and tabs inside strings (code in `improved_code`), which
        // JSON forbids but whose meaning is plain. The repair reads the text twice more.
        if !budget.spend(text.len().saturating_mul(2)) {
            return None;
        }
        let repaired = escape_raw_controls(text)?;
        serde_json::from_str(&repaired).ok()
    })
}

/// Escapes control characters inside JSON strings; `None` when there were none.
fn escape_raw_controls(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len().saturating_add(16));
    let mut in_string = false;
    let mut escaped = false;
    let mut changed = false;
    for c in text.chars() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            } else if u32::from(c) < 0x20 {
                changed = true;
                match c {
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    other => out.push_str(&format!("\\u{:04x}", u32::from(other))),
                }
                continue;
            }
        } else if c == '"' {
            in_string = true;
        }
        out.push(c);
    }
    changed.then_some(out)
}

/// The review `value` holds, directly, through a wrapper, a double encoding or deeper nesting.
/// A bare array counts only where the answer itself is the array, not for any array nested in
/// unrelated JSON.
fn find_review(value: &Value, array_allowed: bool, depth: usize, budget: &ParseBudget) -> Option<ModelReview> {
    if depth > MAX_DEPTH {
        return None;
    }
    match value {
        Value::String(text) => {
            let decoded = decode_embedded(text, budget)?;
            find_review(&decoded, array_allowed, depth.saturating_add(1), budget)
        }
        Value::Array(items) if array_allowed => review_from_array(items),
        Value::Object(map) => review_from_object(map, budget).or_else(|| {
            let wrapped = WRAPPER_KEYS
                .iter()
                .filter_map(|key| map.get(*key))
                .find_map(|inner| find_review(inner, true, depth.saturating_add(1), budget));
            // Wrappers were searched already, and less strictly: searching them again would
            // double the work at every level of nesting.
            wrapped.or_else(|| {
                map.iter()
                    .filter(|(key, _)| !WRAPPER_KEYS.contains(&key.as_str()))
                    .find_map(|(_, inner)| find_review(inner, false, depth.saturating_add(1), budget))
            })
        }),
        _ => None,
    }
}

/// JSON sent as a JSON string (double encoding).
fn decode_embedded(text: &str, budget: &ParseBudget) -> Option<Value> {
    let text = text.trim();
    if text.starts_with('{') || text.starts_with('[') || text.starts_with('"') {
        parse_json(text, budget)
    } else {
        None
    }
}

fn review_from_object(map: &Map<String, Value>, budget: &ParseBudget) -> Option<ModelReview> {
    let summary = map.get("summary").and_then(Value::as_str);
    let list = SUGGESTION_LIST_KEYS.iter().find_map(|key| map.get(*key));
    let (suggestions, dropped_malformed) = match list {
        Some(list) => read_suggestion_list(list, 0, budget)?,
        // A summary alone is a review that found nothing to suggest.
        None if summary.is_some() => (Vec::new(), 0),
        None => return None,
    };
    Some(ModelReview {
        summary: summary.map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned),
        suggestions,
        dropped_malformed,
    })
}

/// An array is a review only if it looks like a list of suggestions, so that some unrelated
/// array in prose is not taken for "no suggestions".
fn review_from_array(items: &[Value]) -> Option<ModelReview> {
    let looks_like_suggestions = items.is_empty()
        || items.iter().any(|item| {
            item.as_object()
                .is_some_and(|map| FILE_KEYS.iter().any(|key| map.contains_key(*key)))
        });
    if !looks_like_suggestions {
        return None;
    }
    let (suggestions, dropped_malformed) = read_suggestions(items);
    Some(ModelReview {
        summary: None,
        suggestions,
        dropped_malformed,
    })
}

fn read_suggestion_list(list: &Value, depth: usize, budget: &ParseBudget) -> Option<(Vec<RawSuggestion>, usize)> {
    match list {
        Value::Null => Some((Vec::new(), 0)),
        Value::Array(items) => Some(read_suggestions(items)),
        Value::Object(_) => Some(read_suggestions(std::slice::from_ref(list))),
        Value::String(text) if text.trim().is_empty() => Some((Vec::new(), 0)),
        Value::String(text) if depth < MAX_DEPTH => {
            read_suggestion_list(&decode_embedded(text, budget)?, depth.saturating_add(1), budget)
        }
        _ => None,
    }
}

fn read_suggestions(items: &[Value]) -> (Vec<RawSuggestion>, usize) {
    let suggestions: Vec<RawSuggestion> = items.iter().filter_map(read_suggestion).collect();
    // One suggestion at most per item.
    let dropped = items.len().saturating_sub(suggestions.len());
    (suggestions, dropped)
}

fn read_suggestion(item: &Value) -> Option<RawSuggestion> {
    let map = item.as_object()?;
    let file = first_string(map, FILE_KEYS)?.trim();
    if file.is_empty() {
        return None;
    }
    let (line_start, range_end) = LINE_START_KEYS
        .iter()
        .filter_map(|key| map.get(*key))
        .find_map(read_line_range)?;
    let line_end = LINE_END_KEYS
        .iter()
        .filter_map(|key| map.get(*key))
        .find_map(read_number)
        .or(range_end);
    let body = first_string(map, BODY_KEYS)?;
    Some(RawSuggestion {
        file: file.to_owned(),
        line_start,
        line_end,
        severity: SEVERITY_KEYS
            .iter()
            .filter_map(|key| map.get(*key).and_then(Value::as_str))
            .find_map(Severity::parse_lenient),
        label: optional_string(map, LABEL_KEYS),
        title: optional_string(map, TITLE_KEYS),
        body: body.to_owned(),
        existing_code: optional_string(map, EXISTING_CODE_KEYS),
        improved_code: optional_string(map, IMPROVED_CODE_KEYS),
    })
}

fn first_string<'a>(map: &'a Map<String, Value>, keys: &[&str]) -> Option<&'a str> {
    keys.iter().find_map(|key| map.get(*key).and_then(Value::as_str))
}

/// An optional text field; blank counts as absent.
fn optional_string(map: &Map<String, Value>, keys: &[&str]) -> Option<String> {
    first_string(map, keys)
        .filter(|s| !s.trim().is_empty())
        .map(str::to_owned)
}

/// A start line, and an end when the model wrote a range (`"12-15"`, `[12, 15]`).
fn read_line_range(value: &Value) -> Option<(i64, Option<i64>)> {
    if let Some(start) = read_number(value) {
        return Some((start, None));
    }
    match value {
        Value::String(text) => {
            let (start, end) = text.trim().split_once(['-', '–'])?;
            Some((number_in_text(start)?, Some(number_in_text(end)?)))
        }
        Value::Array(items) => match items.as_slice() {
            [start] => Some((read_number(start)?, None)),
            [start, end] => Some((read_number(start)?, read_number(end))),
            _ => None,
        },
        _ => None,
    }
}

/// A line number written as `12`, `12.0`, `"12"` or `"L12"`; fractions are not line numbers.
fn read_number(value: &Value) -> Option<i64> {
    match value {
        Value::Number(number) => number.as_i64().or_else(|| number.as_f64().and_then(integral)),
        Value::String(text) => number_in_text(text),
        _ => None,
    }
}

fn number_in_text(text: &str) -> Option<i64> {
    let text = text.trim();
    let text = text.strip_prefix(['L', 'l']).unwrap_or(text).trim_start();
    text.parse::<i64>()
        .ok()
        .or_else(|| text.parse::<f64>().ok().and_then(integral))
}

fn integral(value: f64) -> Option<i64> {
    // Beyond 2^53 a float no longer names one integer.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    #[expect(
        clippy::cast_possible_truncation,
        reason = "a whole number within ±2^53 converts exactly"
    )]
    let exact = value as i64;
    (value.is_finite() && value.fract() == 0.0 && value.abs() <= EXACT).then_some(exact)
}

/// The start of `text` on one line, for error messages.
fn excerpt(text: &str) -> String {
    let folded = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match folded.char_indices().nth(EXCERPT_CHARS) {
        Some((cut, _)) => format!("{}…", &folded[..cut]),
        None => folded,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REVIEW: &str = r#"{"summary": "Looks fine.", "suggestions": [{"file": "src/lib.rs", "line_start": 3, "line_end": 4, "severity": "high", "label": "bug", "title": "Off by one", "body": "The loop skips the last item.", "existing_code": "for i in 0..n - 1 {", "improved_code": "for i in 0..n {"}]}"#;

    fn parse(content: &str) -> ModelReview {
        parse_answer(Some(content), &[]).unwrap()
    }

    fn one(content: &str) -> RawSuggestion {
        let review = parse(content);
        assert_eq!(review.suggestions.len(), 1, "{review:?}");
        review.suggestions.into_iter().next().unwrap()
    }

    fn expected() -> RawSuggestion {
        RawSuggestion {
            file: "src/lib.rs".into(),
            line_start: 3,
            line_end: Some(4),
            severity: Some(Severity::High),
            label: Some("bug".into()),
            title: Some("Off by one".into()),
            body: "The loop skips the last item.".into(),
            existing_code: Some("for i in 0..n - 1 {".into()),
            improved_code: Some("for i in 0..n {".into()),
        }
    }

    #[test]
    fn plain_json_is_read_field_by_field() {
        let review = parse(REVIEW);
        assert_eq!(review.summary.as_deref(), Some("Looks fine."));
        assert_eq!(review.suggestions, vec![expected()]);
        assert_eq!(review.dropped_malformed, 0);
    }

    #[test]
    fn a_fenced_answer_inside_prose_is_read() {
        let content = format!("Here is my review:\n\n```json\n{REVIEW}\n```\n\nHope it helps!");
        assert_eq!(one(&content), expected());
    }

    #[test]
    fn unlabelled_and_uppercase_fences_are_read() {
        for tag in ["", "JSON", "jsonc"] {
            let content = format!("Review:\n```{tag}\n{REVIEW}\n```");
            assert_eq!(one(&content), expected(), "fence tag {tag:?}");
        }
        assert_eq!(one(&format!("```json{REVIEW}```")), expected());
    }

    #[test]
    fn the_first_fence_that_holds_a_review_wins() {
        let content = format!(
            "The config:\n```json\n{{\"timeout\": 5}}\n```\nand some code:\n```rust\nfn main() {{}}\n```\nThe review:\n```json\n{REVIEW}\n```\nA second try:\n```json\n{{\"suggestions\": []}}\n```"
        );
        assert_eq!(one(&content), expected());
    }

    #[test]
    fn an_unclosed_fence_is_read_to_the_end() {
        assert_eq!(one(&format!("```json\n{REVIEW}\n")), expected());
    }

    #[test]
    fn a_bare_object_inside_prose_is_read() {
        let content = format!("Sure. {REVIEW} That is all.");
        assert_eq!(one(&content), expected());
    }

    #[test]
    fn braces_inside_strings_and_escaped_quotes_do_not_break_a_bare_object() {
        let content =
            r#"Result: {"suggestions": [{"file": "a.rs", "line": 1, "body": "Write \"}\" and {x} here ]"}]} done"#;
        assert_eq!(one(content).body, r#"Write "}" and {x} here ]"#);
    }

    #[test]
    fn braces_in_prose_and_code_before_the_answer_do_not_hide_it() {
        let content = format!(
            "In `fn f() {{ x }}` the {{name}} placeholder and {{\"timeout\": 5}} config are fine; an unbalanced {{ too.\n{REVIEW}"
        );
        assert_eq!(one(&content), expected());
    }

    #[test]
    fn a_fence_cut_short_by_backticks_inside_a_string_falls_back_to_the_bare_object() {
        let content = r#"```json
{"suggestions": [{"file": "a.rs", "line_start": 2, "body": "Use ```rust blocks```"}]}
```"#;
        assert_eq!(one(content).body, "Use ```rust blocks```");
    }

    #[test]
    fn a_think_block_before_the_answer_is_ignored() {
        let content = format!(
            "<think>Draft: {{\"suggestions\": [{{\"file\": \"x.rs\", \"line\": 9, \"body\": \"draft\"}}]}}</think>\n{REVIEW}"
        );
        assert_eq!(one(&content), expected());
    }

    #[test]
    fn a_closing_think_tag_without_its_opening_is_ignored_with_what_precedes_it() {
        let content = format!(
            "thinking {{\"suggestions\": [{{\"file\": \"x.rs\", \"line\": 9, \"body\": \"draft\"}}]}}</think>{REVIEW}"
        );
        assert_eq!(one(&content), expected());
    }

    #[test]
    fn an_unclosed_think_block_still_yields_the_answer_inside_it() {
        assert_eq!(one(&format!("<think>let me see\n{REVIEW}")), expected());
    }

    #[test]
    fn tool_call_arguments_are_read_and_take_precedence_over_content() {
        let other = r#"{"suggestions": [{"file": "x.rs", "line": 1, "body": "from content"}]}"#;
        let review = parse_answer(Some(other), &[REVIEW]).unwrap();
        assert_eq!(review.suggestions, vec![expected()]);
        let review = parse_answer(None, &[REVIEW]).unwrap();
        assert_eq!(review.suggestions, vec![expected()]);
    }

    #[test]
    fn double_encoded_tool_call_arguments_are_read() {
        let encoded = serde_json::to_string(REVIEW).unwrap();
        assert!(encoded.starts_with('"'));
        assert_eq!(parse_answer(None, &[&encoded]).unwrap().suggestions, vec![expected()]);
    }

    #[test]
    fn a_review_object_sent_as_a_string_field_is_decoded() {
        let wrapped = serde_json::json!({ "review": REVIEW }).to_string();
        assert_eq!(one(&wrapped), expected());
        let suggestions = serde_json::json!({
            "summary": "s",
            "suggestions": serde_json::to_string(&serde_json::json!([{"file": "a.rs", "line": 1, "body": "b"}])).unwrap(),
        });
        assert_eq!(one(&suggestions.to_string()).file, "a.rs");
    }

    #[test]
    fn unreadable_tool_call_arguments_fall_back_to_content() {
        let review = parse_answer(Some(REVIEW), &["{\"oops\": ", "   "]).unwrap();
        assert_eq!(review.suggestions, vec![expected()]);
    }

    #[test]
    fn a_later_tool_call_is_read_when_the_first_is_not_a_review() {
        let review = parse_answer(None, &["{\"thought\": \"hm\"}", REVIEW]).unwrap();
        assert_eq!(review.suggestions, vec![expected()]);
    }

    #[test]
    fn unknown_fields_anywhere_are_ignored() {
        let content = r#"{"version": 2, "summary": "s", "meta": {"x": [1]}, "suggestions": [{"file": "a.rs", "line_start": 1, "body": "b", "confidence": 0.9, "tags": ["x"]}]}"#;
        let review = parse(content);
        assert_eq!(review.suggestions.len(), 1);
        assert_eq!(review.dropped_malformed, 0);
    }

    #[test]
    fn missing_optional_fields_are_none() {
        let s = one(r#"{"suggestions": [{"file": "a.rs", "line_start": 7, "body": "b"}]}"#);
        assert_eq!(
            s,
            RawSuggestion {
                file: "a.rs".into(),
                line_start: 7,
                line_end: None,
                severity: None,
                label: None,
                title: None,
                body: "b".into(),
                existing_code: None,
                improved_code: None,
            }
        );
        assert_eq!(
            parse(r#"{"suggestions": [{"file": "a.rs", "line_start": 7, "body": "b"}]}"#).summary,
            None
        );
    }

    #[test]
    fn field_name_aliases_are_understood() {
        let s = one(r#"[{"path": "a.rs", "line": 5, "comment": "c"}]"#);
        assert_eq!((s.file.as_str(), s.line_start, s.body.as_str()), ("a.rs", 5, "c"));
        let s = one(r#"[{"filename": "b.rs", "start_line": 6, "end_line": 8, "message": "m"}]"#);
        assert_eq!(
            (s.file.as_str(), s.line_start, s.line_end, s.body.as_str()),
            ("b.rs", 6, Some(8), "m")
        );
        let s = one(r#"[{"file": "c.rs", "line_start": 1, "description": "d"}]"#);
        assert_eq!(s.body, "d");
    }

    #[test]
    fn the_canonical_field_wins_over_an_alias() {
        let s = one(r#"[{"file": "a.rs", "path": "b.rs", "line": 9, "line_start": 2, "body": "x", "comment": "y"}]"#);
        assert_eq!((s.file.as_str(), s.line_start, s.body.as_str()), ("a.rs", 2, "x"));
    }

    #[test]
    fn line_numbers_as_strings_floats_or_ranges_are_read() {
        let s = one(r#"[{"file": "a.rs", "line_start": "12", "line_end": 14.0, "body": "b"}]"#);
        assert_eq!((s.line_start, s.line_end), (12, Some(14)));
        let s = one(r#"[{"file": "a.rs", "line_start": 12.0, "line_end": " 13 ", "body": "b"}]"#);
        assert_eq!((s.line_start, s.line_end), (12, Some(13)));
        let s = one(r#"[{"file": "a.rs", "line": "L12-15", "body": "b"}]"#);
        assert_eq!((s.line_start, s.line_end), (12, Some(15)));
        let s = one(r#"[{"file": "a.rs", "lines": [20, 22], "body": "b"}]"#);
        assert_eq!((s.line_start, s.line_end), (20, Some(22)));
    }

    #[test]
    fn an_unreadable_line_end_is_left_out_but_an_unreadable_start_drops_the_suggestion() {
        let s = one(r#"[{"file": "a.rs", "line_start": 3, "line_end": "end", "body": "b"}]"#);
        assert_eq!(s.line_end, None);
        let review = parse(r#"{"suggestions": [{"file": "a.rs", "line_start": 12.5, "body": "b"}]}"#);
        assert_eq!((review.suggestions.len(), review.dropped_malformed), (0, 1));
    }

    #[test]
    fn severity_is_read_in_any_case_and_as_synonyms() {
        let severity = |word: &str| {
            let content = format!(r#"[{{"file": "a.rs", "line": 1, "body": "b", "severity": "{word}"}}]"#);
            one(&content).severity
        };
        assert_eq!(severity("HIGH"), Some(Severity::High));
        assert_eq!(severity("Critical"), Some(Severity::Critical));
        assert_eq!(severity("major"), Some(Severity::High));
        assert_eq!(severity("nit"), Some(Severity::Low));
        assert_eq!(severity("whatever"), None);
        let s = one(r#"[{"file": "a.rs", "line": 1, "body": "b", "severity": 3}]"#);
        assert_eq!(s.severity, None);
    }

    #[test]
    fn a_top_level_array_of_suggestions_is_a_review_without_summary() {
        let review = parse(r#"[{"file": "a.rs", "line": 1, "body": "b"}, {"file": "c.rs", "line": 2, "body": "d"}]"#);
        assert_eq!(review.summary, None);
        assert_eq!(review.suggestions.len(), 2);
        assert_eq!(parse("[]"), ModelReview::default());
    }

    #[test]
    fn review_and_result_wrappers_are_unwrapped() {
        assert_eq!(one(&format!(r#"{{"review": {REVIEW}}}"#)), expected());
        assert_eq!(one(&format!(r#"{{"result": {REVIEW}, "ok": true}}"#)), expected());
        let nested = r#"{"result": [{"file": "a.rs", "line": 1, "body": "b"}]}"#;
        assert_eq!(one(nested).file, "a.rs");
    }

    #[test]
    fn a_review_nested_under_an_unknown_key_is_found() {
        assert_eq!(one(&format!(r#"{{"data": {{"output": {REVIEW}}}}}"#)), expected());
        assert_eq!(one(&format!(r#"{{"result": {{"data": {REVIEW}}}}}"#)), expected());
    }

    #[test]
    fn null_suggestions_mean_none() {
        let review = parse(r#"{"summary": "Nothing to add.", "suggestions": null}"#);
        assert_eq!(review.summary.as_deref(), Some("Nothing to add."));
        assert!(review.suggestions.is_empty());
    }

    #[test]
    fn a_summary_without_suggestions_means_none() {
        let review = parse(r#"{"summary": "  All good.  "}"#);
        assert_eq!(review.summary.as_deref(), Some("All good."));
        assert!(review.suggestions.is_empty());
        assert_eq!(review.dropped_malformed, 0);
    }

    #[test]
    fn suggestions_without_file_line_or_body_are_dropped_and_counted() {
        let review = parse(
            r#"{"summary": "s", "suggestions": [
                {"file": "a.rs", "line_start": 1, "body": "kept"},
                {"line_start": 1, "body": "no file"},
                {"file": "  ", "line_start": 1, "body": "blank file"},
                {"file": "a.rs", "body": "no line"},
                {"file": "a.rs", "line_start": 1},
                {"file": "a.rs", "line_start": 1, "body": 5},
                "just a string",
                null
            ]}"#,
        );
        assert_eq!(review.suggestions.len(), 1);
        assert_eq!(review.suggestions[0].body, "kept");
        assert_eq!(review.dropped_malformed, 7);
    }

    #[test]
    fn a_single_suggestion_object_in_place_of_the_list_is_read() {
        let s = one(r#"{"suggestions": {"file": "a.rs", "line": 4, "body": "b"}}"#);
        assert_eq!(s.line_start, 4);
    }

    #[test]
    fn raw_newlines_inside_strings_are_tolerated() {
        let content = "```json\n{\"suggestions\": [{\"file\": \"a.rs\", \"line\": 1, \"body\": \"b\", \"improved_code\": \"fn f() {\n\tg();\n}\"}]}\n```";
        assert_eq!(one(content).improved_code.as_deref(), Some("fn f() {\n\tg();\n}"));
    }

    #[test]
    fn an_answer_without_content_or_tool_call_is_empty() {
        assert!(matches!(parse_answer(None, &[]), Err(AnswerError::Empty)));
        assert!(matches!(parse_answer(Some(" \n "), &[" "]), Err(AnswerError::Empty)));
    }

    #[test]
    fn an_answer_that_is_only_thinking_has_no_json() {
        let error = parse_answer(Some("<think>hmm</think>\n"), &[]).unwrap_err();
        assert!(matches!(&error, AnswerError::NoJson { excerpt } if excerpt == "<think>hmm</think>"));
    }

    #[test]
    fn prose_without_json_is_reported_with_an_excerpt() {
        let error = parse_answer(Some("I could not review this.\nSorry {not json}."), &[]).unwrap_err();
        match &error {
            AnswerError::NoJson { excerpt } => {
                assert_eq!(excerpt, "I could not review this. Sorry {not json}.");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(error.to_string().contains("no JSON"));
    }

    #[test]
    fn json_that_is_not_a_review_is_reported_as_such() {
        for content in [
            r#"{"answer": 42}"#,
            r#"[1, 2, 3]"#,
            r#"[{"name": "x"}]"#,
            r#"{"suggestions": 3}"#,
        ] {
            let error = parse_answer(Some(content), &[]).unwrap_err();
            assert!(matches!(error, AnswerError::NotAReview { .. }), "{content}: {error:?}");
        }
    }

    #[test]
    fn unreadable_tool_calls_without_content_report_the_tool_call() {
        let error = parse_answer(Some(""), &["{\"name\": \"x\"}"]).unwrap_err();
        assert!(matches!(&error, AnswerError::NotAReview { excerpt } if excerpt.contains("name")));
    }

    #[test]
    fn error_excerpts_are_one_line_of_about_two_hundred_characters() {
        let content = format!("no json here\n{}", "é".repeat(500));
        let error = parse_answer(Some(&content), &[]).unwrap_err();
        let AnswerError::NoJson { excerpt } = error else {
            panic!("expected NoJson");
        };
        assert!(!excerpt.contains('\n'));
        assert_eq!(excerpt.chars().count(), EXCERPT_CHARS + 1);
        assert!(excerpt.ends_with('…'));
    }

    /// The scan as it was, from each bracket anew: quadratic, so only for short texts.
    fn reference_end(bytes: &[u8], start: usize) -> Option<usize> {
        let mut closers = Vec::new();
        let mut in_string = false;
        let mut escaped = false;
        for (i, &b) in bytes.iter().enumerate().skip(start) {
            if in_string {
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    in_string = false;
                }
                continue;
            }
            match b {
                b'"' => in_string = true,
                b'{' => closers.push(b'}'),
                b'[' => closers.push(b']'),
                b'}' | b']' => {
                    if closers.pop() != Some(b) {
                        return None;
                    }
                    if closers.is_empty() {
                        return Some(i);
                    }
                }
                _ => {}
            }
        }
        None
    }

    #[test]
    fn the_span_table_ends_every_span_where_reading_from_its_bracket_anew_does() {
        // Pieces that make spans start inside each other's strings, escapes that shift readers
        // in and out of step, and closers of the wrong kind.
        let pieces = [
            "{\"", "\"", "\\\"", "\\", "{", "}", "[", "]", "[{", "{}", "a", " ", ":", ",", "\"}\"",
        ];
        let mut rng = fastrand::Rng::with_seed(20_261_129);
        let mut spans = 0;
        for case in 0..5_000 {
            let text: String = (0..rng.usize(1..40))
                .map(|_| pieces[rng.usize(..pieces.len())])
                .collect();
            let bytes = text.as_bytes();
            let table = SpanTable::build(bytes);
            for start in (0..bytes.len()).filter(|&at| matches!(bytes[at], b'{' | b'[')) {
                if looks_like_json_start(bytes, start) {
                    let end = table.end(bytes, start);
                    assert_eq!(end, reference_end(bytes, start), "case {case}, {text:?} from {start}");
                    spans += usize::from(end.is_some());
                }
            }
        }
        assert!(
            spans > 1_000,
            "the cases close spans too, not only leave them open: {spans}"
        );
    }

    /// Answers of about a megabyte built so that reading from each bracket anew, or parsing each
    /// nested span, costs their length squared.
    fn adversarial_answers() -> Vec<(&'static str, String)> {
        const MIB: usize = 1 << 20;
        let repeat = |unit: &str| unit.repeat(MIB / unit.len());
        let around = |levels: usize, open: &str, inner: String, close: &str| {
            format!("{}{inner}{}", open.repeat(levels), close.repeat(levels))
        };
        vec![
            ("unbalanced {\"", repeat("{\"")),
            ("escaped quotes {\"\\\"", repeat("{\"\\\"")),
            ("open objects {\"a\":", repeat("{\"a\":")),
            ("open arrays [{\"a\":[", repeat("[{\"a\":[")),
            ("quoted closers {\"}\"", repeat("{\"}\"")),
            ("empty objects {}", repeat("{}")),
            (
                "100 objects around a megabyte",
                around(100, "{\"a\":", format!("{{\"pad\":\"{}\"}}", "x".repeat(MIB)), "}"),
            ),
            (
                "100 objects around a megabyte with a raw newline",
                around(100, "{\"a\":", format!("{{\"pad\":\"{}\n\"}}", "x".repeat(MIB)), "}"),
            ),
            (
                "5 review wrappers around a megabyte of embedded JSON",
                around(5, "{\"review\":", format!("\"{}\"", "{\\\"".repeat(MIB / 3)), "}"),
            ),
        ]
    }

    #[test]
    fn megabyte_answers_built_to_be_slow_are_read_in_linear_time() {
        for (shape, junk) in adversarial_answers() {
            let started = std::time::Instant::now();
            let result = parse_answer(Some(&junk), &[]);
            // For the record (`--nocapture`); the bound is the algorithm, not a clock.
            eprintln!("{shape}: {} bytes read in {:?}", junk.len(), started.elapsed());
            assert!(result.is_err(), "{shape}: no review in it");
        }
    }

    #[test]
    fn a_review_after_a_megabyte_of_unbalanced_json_is_still_found() {
        for unit in ["{\"", "{\"\\\"", "{\"a\":", "[{\"a\":[", "{\"}\""] {
            let content = format!("{}\n{REVIEW}", unit.repeat((1 << 20) / unit.len()));
            assert_eq!(one(&content), expected(), "after {unit}");
        }
    }

    #[test]
    fn the_parse_budget_refuses_what_is_left_and_takes_nothing_for_it() {
        let budget = ParseBudget::for_text(0);
        assert!(budget.spend(PARSE_BYTES_AT_LEAST - 10));
        assert!(!budget.spend(11));
        assert!(budget.spend(10));
        assert!(parse_json("{}", &budget).is_none(), "nothing left");
    }

    #[test]
    fn the_repair_instruction_shows_the_exact_shape_and_names_the_problem() {
        let text = repair_instruction(&AnswerError::NotAReview { excerpt: "x".into() });
        assert!(text.contains(REVIEW_SHAPE));
        assert!(text.contains("not the review object"));
        assert!(text.contains("\"suggestions\": []"));
        assert!(repair_instruction(&AnswerError::Empty).starts_with("Your previous answer was empty."));
    }

    #[test]
    fn the_shape_in_the_repair_instruction_matches_the_schema_and_is_readable() {
        let schema: Value =
            serde_json::from_str(include_str!("../../../docs/contract/llm-review-output.v1.schema.json")).unwrap();
        let shape: Value = serde_json::from_str(REVIEW_SHAPE).unwrap();
        assert!(jsonschema::is_valid(&schema, &shape));
        let review = parse(REVIEW_SHAPE);
        assert_eq!(review.suggestions.len(), 1);
        assert_eq!(review.suggestions[0].severity, Some(Severity::Medium));
    }
}
