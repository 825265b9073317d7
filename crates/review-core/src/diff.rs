//! Unified diffs: parsing `git diff` output (or the job's `files`) into files and hunks with
//! new-file line numbers, and rendering them for the prompt.
//!
//! Line numbers here are the ground truth for anchoring: a suggestion may only point at a line
//! that `FileDiff::changed_lines` returns.
//!
//! Everything borrows from the diff text: a hunk keeps its body as one slice and reads its lines
//! when asked ([`Hunk::lines`]), so a parsed diff costs a few dozen bytes per hunk and per file,
//! not per line. A 15 MiB diff is mostly lines the budget leaves out of the prompt anyway.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;

use crate::contract::{FileStatusHint, HunkRef, JobFile, MAX_FILES};

pub mod rendered;

/// Why a diff could not be read. Each means the job is unusable (`invalid_job`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiffError {
    #[error("the diff has no file sections (no `diff --git` or `---`/`+++` headers)")]
    NoFiles,
    /// `line` is cut to a few dozen characters: it may be a megabyte of junk.
    #[error("unreadable hunk header {line:?}")]
    BadHunkHeader { line: String },
    #[error("the diff has more than {limit} files; split the pull request")]
    TooManyFiles { limit: usize },
}

/// What happened to a file in the PR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileStatus {
    Added,
    Modified,
    Removed,
    Renamed,
}

impl FileStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Added => "added",
            Self::Modified => "modified",
            Self::Removed => "removed",
            Self::Renamed => "renamed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    Context,
    Added,
    Removed,
}

/// One line of a hunk, without its `+`/`-`/` ` marker and without a trailing `\r`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiffLine<'a> {
    pub kind: LineKind,
    pub text: &'a str,
    /// Line number in the new file (context and added lines).
    pub new_line: Option<u32>,
    /// Line number in the old file (context and removed lines).
    pub old_line: Option<u32>,
}

/// One hunk: its `@@` line and the lines that belong to it, as one slice of the diff. Its numbers
/// are read from that text when asked, so a hunk costs 16 bytes whatever its size: a 15 MiB diff
/// of one-line hunks holds half a million of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hunk<'a> {
    /// The `@@` line, then the hunk's lines as the diff has them (markers, line ends and
    /// `\ No newline at end of file` notes included): exactly the lines its counts describe.
    text: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDiff<'a> {
    /// Path in the new tree (for a removed file, the old path).
    pub path: Cow<'a, str>,
    /// Path before a rename.
    pub old_path: Option<Cow<'a, str>>,
    pub status: FileStatus,
    /// `Binary files ... differ` or a `GIT binary patch`: there is nothing to review line by line.
    pub binary: bool,
    /// A hunk ended before the lines its header announced, or changed no line at all (a word
    /// diff, a diff cut mid-hunk): the text is not the diff it claims to be.
    pub damaged: bool,
    pub hunks: Vec<Hunk<'a>>,
}

impl<'a> FileDiff<'a> {
    /// New-file line numbers of the lines this diff added: where suggestions may point.
    pub(crate) fn changed_lines(&self) -> BTreeSet<u32> {
        self.lines()
            .filter(|l| l.kind == LineKind::Added)
            .filter_map(|l| l.new_line)
            .collect()
    }

    pub fn added_line_count(&self) -> usize {
        self.count_lines(LineKind::Added)
    }

    pub(crate) fn count_lines(&self, kind: LineKind) -> usize {
        self.lines().filter(|l| l.kind == kind).count()
    }

    /// Every line of every hunk, in order.
    pub fn lines(&self) -> impl Iterator<Item = DiffLine<'a>> + '_ {
        self.hunks.iter().flat_map(Hunk::lines)
    }
}

impl<'a> Hunk<'a> {
    /// A hunk over `text`, an `@@` line and the lines that follow it, as tests write them; the
    /// parser knows where a hunk ends and builds them itself.
    #[cfg(test)]
    pub(crate) fn new(text: &'a str) -> Self {
        Self { text }
    }

    fn header_line(&self) -> &'a str {
        let line = self.text.split('\n').next().unwrap_or_default();
        line.strip_suffix('\r').unwrap_or(line)
    }

    /// What the `@@` line says; hunks come from [`read_hunk`], which refused any other, so the
    /// zeros are for hunks built by hand.
    fn numbers(&self) -> HunkHeader<'a> {
        HunkHeader::read(self.header_line()).unwrap_or_default()
    }

    pub(crate) fn old_start(&self) -> u32 {
        self.numbers().old_start
    }

    pub(crate) fn new_start(&self) -> u32 {
        self.numbers().new_start
    }

    /// Whatever follows the second `@@` (often the enclosing function).
    #[cfg(test)]
    pub(crate) fn section(&self) -> &'a str {
        self.numbers().section
    }

    /// Old-file and new-file lines the hunk holds: its header's counts, or fewer when the hunk was
    /// cut short. Counted from the lines, which is why it is not a field.
    pub(crate) fn counts(&self) -> (u32, u32) {
        self.lines().fold((0, 0), |(old, new), line| {
            (
                old.saturating_add(u32::from(line.old_line.is_some())),
                new.saturating_add(u32::from(line.new_line.is_some())),
            )
        })
    }

    /// The hunk's lines with their numbers.
    pub(crate) fn lines(&self) -> HunkLines<'a> {
        let numbers = self.numbers();
        HunkLines {
            rest: self.text.split_once('\n').map_or("", |(_, body)| body),
            old_next: numbers.old_start,
            new_next: numbers.new_start,
        }
    }

    /// The `@@` line, rebuilt from the parsed numbers so that it always agrees with the body.
    pub(crate) fn header(&self) -> String {
        let numbers = self.numbers();
        let (old_lines, new_lines) = self.counts();
        let mut header = format!(
            "@@ -{},{old_lines} +{},{new_lines} @@",
            numbers.old_start, numbers.new_start
        );
        if !numbers.section.is_empty() {
            header.push(' ');
            header.push_str(numbers.section);
        }
        header
    }

    /// Appends the hunk as [`render_into`] shows it: the header, then one numbered line per diff
    /// line, each ending with `\n`.
    fn render_into(&self, out: &mut String) {
        out.push_str(&self.header());
        out.push('\n');
        for line in self.lines() {
            let (marker, number) = match line.kind {
                LineKind::Context => (' ', line.new_line),
                LineKind::Added => ('+', line.new_line),
                // A removed line has no place in the new file, and suggestions may only point at
                // new-file numbers, so it gets none.
                LineKind::Removed => ('-', None),
            };
            // Writing to a String cannot fail.
            let _ = match number {
                Some(number) => writeln!(out, "{number:>6} {marker}{}", line.text),
                None => writeln!(out, "{:>6} {marker}{}", "", line.text),
            };
        }
    }
}

/// The lines of a hunk body. Numbers saturate rather than wrap: a hunk built by hand (tests) may
/// start at `u32::MAX`.
#[derive(Debug, Clone)]
pub(crate) struct HunkLines<'a> {
    rest: &'a str,
    old_next: u32,
    new_next: u32,
}

impl<'a> Iterator for HunkLines<'a> {
    type Item = DiffLine<'a>;

    fn next(&mut self) -> Option<DiffLine<'a>> {
        loop {
            count_line();
            if self.rest.is_empty() {
                return None;
            }
            let (line, rest) = self.rest.split_once('\n').unwrap_or((self.rest, ""));
            self.rest = rest;
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.starts_with('\\') {
                continue;
            }
            let (kind, text) = classify(line).unwrap_or((LineKind::Context, line));
            let (old_line, new_line) = match kind {
                LineKind::Context => (Some(self.old_next), Some(self.new_next)),
                LineKind::Added => (None, Some(self.new_next)),
                LineKind::Removed => (Some(self.old_next), None),
            };
            self.old_next = self.old_next.saturating_add(u32::from(old_line.is_some()));
            self.new_next = self.new_next.saturating_add(u32::from(new_line.is_some()));
            return Some(DiffLine {
                kind,
                text,
                new_line,
                old_line,
            });
        }
    }
}

/// A hunk line's kind and text without its marker; `None` for a line that cannot be in a hunk.
fn classify(line: &str) -> Option<(LineKind, &str)> {
    if let Some(text) = line.strip_prefix(' ') {
        Some((LineKind::Context, text))
    } else if let Some(text) = line.strip_prefix('+') {
        Some((LineKind::Added, text))
    } else if let Some(text) = line.strip_prefix('-') {
        Some((LineKind::Removed, text))
    } else if line.is_empty() {
        // Mail clients and editors strip the lone space of an empty context line.
        Some((LineKind::Context, ""))
    } else {
        None
    }
}

/// How the prompt's rendering of a file starts; [`rendered`] reads it back.
const FILE_HEADER_PREFIX: &str = "=== FILE: ";
/// What separates a renamed file's path from its old path in its header.
const RENAMED_FROM: &str = " (renamed from ";

/// The first line of the prompt's rendering of a file.
fn file_header(file: &FileDiff<'_>) -> String {
    match (file.status, &file.old_path) {
        (FileStatus::Renamed, Some(old_path)) => {
            format!("{FILE_HEADER_PREFIX}{}{RENAMED_FROM}{old_path})\n", file.path)
        }
        (status, _) => format!("{FILE_HEADER_PREFIX}{} ({})\n", file.path, status.as_str()),
    }
}

/// Renders one file for the review prompt, appending to `out` so that a prompt is written once.
/// This format is a contract: [`rendered`] reads it back, and the simulator reviews what it reads.
///
/// ```text
/// === FILE: src/lib.rs (modified)
/// @@ -10,3 +10,4 @@ fn main() {
///     10  let a = 1;
///        -let b = 2;
///     11 +let b = 3;
///     12 +let c = 4;
///     13  let d = 5;
/// ```
///
/// - The first line is `=== FILE: {path} ({status})` with `status` from [`FileStatus::as_str`],
///   or `=== FILE: {path} (renamed from {old_path})` for a rename.
/// - Each hunk follows as its header, rebuilt as `@@ -{old_start},{old_lines}
///   +{new_start},{new_lines} @@`, plus one space and the section text when there is one.
/// - Then one line per diff line: `format!("{:>6} {}{}", number, marker, text)`, where `number`
///   is the new-file line number for context and added lines and blank (six spaces) for removed
///   lines, and `marker` is `' '`, `'+'` or `'-'`.
/// - Lines are joined with `\n` and the text ends with `\n`. A file without hunks (binary,
///   mode-only) is its first line alone.
pub(crate) fn render_into(file: &FileDiff<'_>, out: &mut String) {
    out.push_str(&file_header(file));
    for hunk in &file.hunks {
        hunk.render_into(out);
    }
}

/// How a rendering splits into ASCII bytes and other characters, which is all a token estimate
/// needs (`context::estimate_tokens`): the rendering itself need not be built to be priced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct TextSize {
    pub ascii: usize,
    pub other: usize,
}

impl TextSize {
    pub(crate) fn of(text: &str) -> Self {
        let ascii = text.bytes().filter(u8::is_ascii).count();
        Self {
            ascii,
            // Every ASCII byte is a char of its own, so this cannot go below zero.
            other: text.chars().count().saturating_sub(ascii),
        }
    }

    pub(crate) fn add(self, other: Self) -> Self {
        Self {
            ascii: self.ascii.saturating_add(other.ascii),
            other: self.other.saturating_add(other.other),
        }
    }
}

/// [`render_into`] into a new string.
#[cfg(test)]
pub(crate) fn render_for_prompt(file: &FileDiff<'_>) -> String {
    let mut out = String::new();
    render_into(file, &mut out);
    out
}

/// The size of [`render_into`]'s first line for `file`.
pub(crate) fn header_size(file: &FileDiff<'_>) -> TextSize {
    TextSize::of(&file_header(file))
}

/// The size of a hunk's rendering, without rendering it.
pub(crate) fn hunk_size(hunk: &Hunk<'_>) -> TextSize {
    let mut size = TextSize::of(&hunk.header()).add(TextSize { ascii: 1, other: 0 });
    for line in hunk.lines() {
        let number = match line.kind {
            LineKind::Removed => None,
            LineKind::Context | LineKind::Added => line.new_line,
        };
        // A u32 has at most ten digits.
        let digits = number.map_or(0, |n| n.checked_ilog10().map_or(1, |d| d.saturating_add(1)));
        // Number padded to six, a space, the marker, the text, the newline.
        let frame = TextSize {
            ascii: usize::try_from(digits.max(6)).unwrap_or(usize::MAX).saturating_add(3),
            other: 0,
        };
        size = size.add(frame).add(TextSize::of(line.text));
    }
    size
}

/// The size of [`render_into`]'s output for `file`.
pub(crate) fn rendered_size(file: &FileDiff<'_>) -> TextSize {
    file.hunks.iter().map(hunk_size).fold(header_size(file), TextSize::add)
}

/// Hex digits of a [`fingerprint`]: 64 bits, so two different hunks of one PR share one with a
/// chance of about one in 10^19 per pair.
const FINGERPRINT_HEX: usize = 16;

/// A hunk's identity across pushes: the same text on every machine and Rust version (SHA-256,
/// not `std`'s hasher, whose output is not stable), over the file's `path` and the hunk's lines
/// (kind and text) but not its numbers or its `@@` section. A hunk that only moved (lines
/// added or removed above it) keeps its fingerprint; one changed character, or the same lines in
/// another file, gives another. It ends up in results and comes back in a later job's
/// `previous_result`, so changing what it covers discards every producer's carried reviews once.
///
/// `\ No newline at end of file` notes and `\r` line ends do not count: they are not part of
/// the lines a suggestion is about.
pub fn fingerprint(path: &str, hunk: &Hunk<'_>) -> String {
    use sha2::{Digest, Sha256};

    let mut hasher = Sha256::new();
    // The path's length first, so that no path and lines can spell another's; a line cannot hold
    // a `\n`, so each line's end is unambiguous.
    hasher.update(u64::try_from(path.len()).unwrap_or(u64::MAX).to_le_bytes());
    hasher.update(path.as_bytes());
    for line in hunk.lines() {
        let marker: &[u8] = match line.kind {
            LineKind::Context => b" ",
            LineKind::Added => b"+",
            LineKind::Removed => b"-",
        };
        hasher.update(marker);
        hasher.update(line.text.as_bytes());
        hasher.update(b"\n");
    }
    let mut hex = String::with_capacity(FINGERPRINT_HEX);
    for byte in hasher.finalize().iter().take(FINGERPRINT_HEX / 2) {
        // Writing to a String cannot fail.
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// Where a hunk of the file at `path` is, as a result's `coverage.hunks` lists it: its
/// [`fingerprint`] and the first new-file line its header gives. A hunk that only removes lines
/// gives the line after which they were, which is 0 at the top of a file; the contract's lines
/// start at 1, and such a hunk has no line a suggestion could shift with, so it says 1. Carrying
/// a review forward shifts suggestions by the difference of two such lines, so both must come
/// from here.
pub fn hunk_ref(path: &str, hunk: &Hunk<'_>) -> HunkRef {
    HunkRef {
        file: path.to_owned(),
        fingerprint: fingerprint(path, hunk),
        line: hunk.new_start().max(1),
    }
}

/// Parses `git diff` output, or a plain unified diff (`---`/`+++` headers only), into files.
///
/// Text that is empty or only whitespace is no files (`Ok(vec![])`); any other text without a
/// file section is [`DiffError::NoFiles`]. Lines outside file sections (mail headers, commit
/// messages, `diff -r` chatter) are skipped. Paths lose git's `a/` and `b/` prefixes; a plain
/// diff's other prefixes (`old/`, `new/`) are kept as they are.
///
/// Sections of the same path (`git log -p`, a patch series, `format-patch` output concatenated)
/// become one file with the hunks of all of them: suggestions on a later commit's lines anchor
/// too. The line numbers are each section's own; the union is what a reviewer of the series
/// sees as changed.
pub fn parse_unified(text: &str) -> Result<Vec<FileDiff<'_>>, DiffError> {
    let mut cursor = Cursor {
        text,
        at: 0,
        line_start: 0,
    };
    let mut files = Files::default();
    let mut section: Option<Section<'_>> = None;
    while let Some(line) = cursor.next_line() {
        if let Some(rest) = line.strip_prefix("diff --git ") {
            files.finish(section.take())?;
            section = Some(Section::from_git_header(rest));
        } else if line.starts_with("@@") {
            match read_hunk(line, &mut cursor) {
                Ok((hunk, damaged)) => {
                    if let Some(section) = section.as_mut() {
                        section.hunks.push(hunk);
                        section.damaged |= damaged;
                    }
                }
                Err(error) if section.is_some() => return Err(error),
                // Before any file header this is prose that happens to start with `@@`.
                Err(_) => {}
            }
        } else if let Some(minus) = line.strip_prefix("--- ")
            && let Some(plus) = cursor.peek_line().and_then(|next| next.strip_prefix("+++ "))
        {
            cursor.next_line();
            if !section.as_ref().is_some_and(Section::awaits_paths) {
                files.finish(section.take())?;
            }
            let current = section.get_or_insert_with(Section::default);
            current.minus = Some(marker_path(minus, "a/"));
            current.plus = Some(marker_path(plus, "b/"));
            current.saw_markers = true;
        } else if let Some(rest) = line
            .strip_prefix("Binary files ")
            .and_then(|rest| rest.strip_suffix(" differ"))
        {
            if !section.as_ref().is_some_and(Section::awaits_paths) {
                files.finish(section.take())?;
            }
            let current = section.get_or_insert_with(Section::default);
            current.binary = true;
            if let Some((minus, plus)) = binary_paths(rest) {
                current.minus.get_or_insert(minus);
                current.plus.get_or_insert(plus);
            }
        } else if let Some(current) = section.as_mut() {
            current.extended_header(line);
        }
    }
    files.finish(section.take())?;
    if files.list.is_empty() && !text.trim().is_empty() {
        return Err(DiffError::NoFiles);
    }
    Ok(files.list)
}

/// Builds files from the job's `files` entries (the alternative to a whole `diff`).
///
/// A `patch` is read from its first `@@` line; an empty patch is a file without hunks (a binary
/// or mode-only change). The status comes from the entry's hint; a `previous_path` that differs
/// from `path` makes it a rename; without a hint, a lone `@@ -0,0` hunk means added and a lone
/// `+0,0` hunk means removed, anything else modified. Entries of the same path are merged as in
/// [`parse_unified`].
pub fn from_job_files(entries: &[JobFile]) -> Result<Vec<FileDiff<'_>>, DiffError> {
    let mut files = Files::default();
    for entry in entries {
        files.add(from_job_file(entry)?)?;
    }
    Ok(files.list)
}

fn from_job_file(file: &JobFile) -> Result<FileDiff<'_>, DiffError> {
    let mut cursor = Cursor {
        text: &file.patch,
        at: 0,
        line_start: 0,
    };
    let mut hunks = Vec::new();
    let mut binary = false;
    let mut damaged = false;
    while let Some(line) = cursor.next_line() {
        if line.starts_with("@@") {
            let (hunk, cut) = read_hunk(line, &mut cursor)?;
            hunks.push(hunk);
            damaged |= cut;
        } else if line == "GIT binary patch" || (line.starts_with("Binary files ") && line.ends_with(" differ")) {
            binary = true;
        }
    }

    let path = file.path.as_str();
    let renamed_from = file.previous_path.as_deref().filter(|previous| *previous != path);
    let status = match (file.status, renamed_from) {
        (Some(FileStatusHint::Added), _) => FileStatus::Added,
        (Some(FileStatusHint::Removed), _) => FileStatus::Removed,
        (_, Some(_)) => FileStatus::Renamed,
        // A rename hint without an old path has nothing to show as "renamed from".
        (Some(FileStatusHint::Renamed | FileStatusHint::Modified), None) => FileStatus::Modified,
        (None, None) => match hunks.as_slice() {
            [only] if only.old_start() == 0 && only.counts().0 == 0 => FileStatus::Added,
            [only] if only.new_start() == 0 && only.counts().1 == 0 => FileStatus::Removed,
            _ => FileStatus::Modified,
        },
    };
    Ok(FileDiff {
        path: Cow::Borrowed(path),
        old_path: renamed_from
            .filter(|_| status == FileStatus::Renamed)
            .map(Cow::Borrowed),
        status,
        binary,
        damaged,
        hunks,
    })
}

const DEV_NULL: &str = "/dev/null";

/// Reads a text line by line, with one line of lookahead, without collecting the lines: a
/// `Vec<&str>` of a 15 MiB diff of short lines would cost more than the diff.
#[derive(Debug)]
struct Cursor<'a> {
    text: &'a str,
    /// Byte offset of the next line.
    at: usize,
    /// Byte offset of the line [`Cursor::next_line`] returned last.
    line_start: usize,
}

#[cfg(test)]
thread_local! {
    /// Lines looked at by the parser and by hunk iteration, for tests that prove the work
    /// linear in the input.
    pub(crate) static LINES_READ: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

fn count_line() {
    #[cfg(test)]
    LINES_READ.with(|n| n.set(n.get() + 1));
}

impl<'a> Cursor<'a> {
    /// The next line without its `\n` or `\r\n`, and the offset after it.
    fn peek(&self) -> Option<(&'a str, usize)> {
        count_line();
        let rest = self.text.get(self.at..).filter(|rest| !rest.is_empty())?;
        let (line, used) = match rest.split_once('\n') {
            // The `\n` is one byte.
            Some((line, _)) => (line, line.len().saturating_add(1)),
            None => (rest, rest.len()),
        };
        // `used` is at most what is left of the text, so this stays within it.
        Some((line.strip_suffix('\r').unwrap_or(line), self.at.saturating_add(used)))
    }

    fn peek_line(&self) -> Option<&'a str> {
        self.peek().map(|(line, _)| line)
    }

    fn next_line(&mut self) -> Option<&'a str> {
        let (line, next) = self.peek()?;
        self.line_start = self.at;
        self.at = next;
        Some(line)
    }
}

/// The files of a diff, in order of first appearance, one per path.
#[derive(Debug, Default)]
struct Files<'a> {
    list: Vec<FileDiff<'a>>,
    by_path: HashMap<Cow<'a, str>, usize>,
}

impl<'a> Files<'a> {
    fn finish(&mut self, section: Option<Section<'a>>) -> Result<(), DiffError> {
        match section.and_then(Section::into_file) {
            Some(file) => self.add(file),
            None => Ok(()),
        }
    }

    fn add(&mut self, file: FileDiff<'a>) -> Result<(), DiffError> {
        if let Some(&at) = self.by_path.get(file.path.as_ref()) {
            merge(&mut self.list[at], file);
            return Ok(());
        }
        if self.list.len() == MAX_FILES {
            return Err(DiffError::TooManyFiles { limit: MAX_FILES });
        }
        self.by_path.insert(file.path.clone(), self.list.len());
        self.list.push(file);
        Ok(())
    }
}

/// Folds a later section of the same path into the earlier one: hunks in order, and the status
/// the series ends with (a file added then changed is still added; one renamed then changed is
/// still renamed).
fn merge<'a>(earlier: &mut FileDiff<'a>, later: FileDiff<'a>) {
    let status = match (earlier.status, later.status) {
        (_, FileStatus::Removed) => FileStatus::Removed,
        (FileStatus::Added, _) => FileStatus::Added,
        (FileStatus::Renamed, FileStatus::Modified) => FileStatus::Renamed,
        (_, later) => later,
    };
    if later.status == FileStatus::Renamed {
        earlier.old_path = later.old_path;
    }
    if status != FileStatus::Renamed {
        earlier.old_path = None;
    }
    earlier.status = status;
    earlier.binary |= later.binary;
    earlier.damaged |= later.damaged;
    earlier.hunks.extend(later.hunks);
}

/// What one file section of a diff said about the file, before it is settled into a
/// [`FileDiff`]. Paths are kept per source because they disagree in order of trust.
#[derive(Debug, Default)]
struct Section<'a> {
    /// Opened by `diff --git`, so git's extended header lines may follow.
    git: bool,
    git_old: Option<Cow<'a, str>>,
    git_new: Option<Cow<'a, str>>,
    /// The `---` and `+++` paths, `/dev/null` included.
    minus: Option<Cow<'a, str>>,
    plus: Option<Cow<'a, str>>,
    saw_markers: bool,
    rename_from: Option<Cow<'a, str>>,
    rename_to: Option<Cow<'a, str>>,
    copied_to: Option<Cow<'a, str>>,
    new_file: bool,
    deleted_file: bool,
    binary: bool,
    damaged: bool,
    hunks: Vec<Hunk<'a>>,
}

impl<'a> Section<'a> {
    fn from_git_header(rest: &'a str) -> Self {
        let (git_old, git_new) = match git_header_paths(rest) {
            Some((old, new)) => (Some(old), Some(new)),
            None => (None, None),
        };
        Self {
            git: true,
            git_old,
            git_new,
            ..Self::default()
        }
    }

    /// Whether `---`/`+++` or a `Binary files` line still belongs to this section rather than
    /// opening the next file (plain diffs have no other separator).
    fn awaits_paths(&self) -> bool {
        self.git && !self.saw_markers && !self.binary && self.hunks.is_empty()
    }

    fn extended_header(&mut self, line: &'a str) {
        if !self.awaits_paths() {
            // `GIT binary patch` data and stray text after the hunks are not headers.
            if line == "GIT binary patch" {
                self.binary = true;
            }
            return;
        }
        if line.starts_with("new file mode ") {
            self.new_file = true;
        } else if line.starts_with("deleted file mode ") {
            self.deleted_file = true;
        } else if let Some(path) = line.strip_prefix("rename from ") {
            self.rename_from = Some(header_path(path));
        } else if let Some(path) = line.strip_prefix("rename to ") {
            self.rename_to = Some(header_path(path));
        } else if let Some(path) = line.strip_prefix("copy to ") {
            self.copied_to = Some(header_path(path));
        } else if line == "GIT binary patch" {
            self.binary = true;
        }
        // `index`, `old mode`, `new mode`, `similarity index`, `copy from`: nothing to keep.
    }

    fn into_file(self) -> Option<FileDiff<'a>> {
        let real = |path: Option<Cow<'a, str>>| path.filter(|p| p != DEV_NULL);
        let from_nothing = self.minus.as_deref() == Some(DEV_NULL);
        let to_nothing = self.plus.as_deref() == Some(DEV_NULL);
        let copied = self.copied_to.is_some();
        let renamed = self.rename_from.is_some() || self.rename_to.is_some();
        let old = self.rename_from.or(real(self.minus)).or(self.git_old);
        let new = self.rename_to.or(self.copied_to).or(real(self.plus)).or(self.git_new);

        let status = if self.deleted_file || to_nothing {
            FileStatus::Removed
        } else if self.new_file || from_nothing || copied {
            // A copy is a new file in the tree; its source is not worth a status of its own.
            FileStatus::Added
        } else if renamed && old.is_some() && old != new {
            FileStatus::Renamed
        } else {
            FileStatus::Modified
        };
        let (path, old_path) = match status {
            FileStatus::Removed => (old.or(new)?, None),
            FileStatus::Renamed => (new?, old),
            FileStatus::Added | FileStatus::Modified => (new.or(old)?, None),
        };
        Some(FileDiff {
            path,
            old_path,
            status,
            binary: self.binary,
            damaged: self.damaged,
            hunks: self.hunks,
        })
    }
}

/// Reads a hunk whose `@@` line is `header` from the lines after it, advancing `lines` past
/// them. Returns the hunk and whether it is damaged: cut short of the lines its header announced,
/// or without a single added or removed line.
///
/// The header's counts say where the hunk ends, so a body line such as `--- a/x` (a removed
/// `-- a/x`) or `diff --git` is read as content. A hunk cut short by a line that cannot belong
/// to it ends there, and its counts are lowered to what it holds.
fn read_hunk<'a>(header: &'a str, lines: &mut Cursor<'a>) -> Result<(Hunk<'a>, bool), DiffError> {
    let numbers = HunkHeader::read(header)
        .filter(|n| n.old_start.checked_add(n.old_lines).is_some() && n.new_start.checked_add(n.new_lines).is_some())
        .ok_or_else(|| DiffError::BadHunkHeader {
            line: header.chars().take(60).collect(),
        })?;
    // The header line, which the cursor has just passed, starts the hunk's text.
    let start = lines.line_start;

    let (mut old_left, mut new_left) = (numbers.old_lines, numbers.new_lines);
    let mut changes = false;
    while let Some((line, next)) = lines.peek() {
        // `\ No newline at end of file` describes the line before it; it is not a line.
        if line.starts_with('\\') {
            lines.at = next;
            continue;
        }
        if old_left == 0 && new_left == 0 {
            break;
        }
        let Some((kind, _)) = classify(line) else { break };
        match kind {
            LineKind::Context if old_left > 0 && new_left > 0 => {
                old_left = old_left.saturating_sub(1);
                new_left = new_left.saturating_sub(1);
            }
            LineKind::Added if new_left > 0 => new_left = new_left.saturating_sub(1),
            LineKind::Removed if old_left > 0 => old_left = old_left.saturating_sub(1),
            _ => break,
        }
        changes |= kind != LineKind::Context;
        lines.at = next;
    }
    let hunk = Hunk {
        text: &lines.text[start..lines.at],
    };
    let damaged = old_left > 0 || new_left > 0 || !changes;
    Ok((hunk, damaged))
}

/// The numbers of an `@@ -{old_start},{old_lines} +{new_start},{new_lines} @@ {section}` line.
#[derive(Debug, Clone, Copy, Default)]
struct HunkHeader<'a> {
    old_start: u32,
    old_lines: u32,
    new_start: u32,
    new_lines: u32,
    section: &'a str,
}

impl<'a> HunkHeader<'a> {
    fn read(header: &'a str) -> Option<Self> {
        let rest = header.strip_prefix("@@ -")?;
        let (old_range, rest) = rest.split_once(' ')?;
        let rest = rest.strip_prefix('+')?;
        let (new_range, rest) = rest.split_once(' ')?;
        let section = rest.strip_prefix("@@")?.trim();
        let (old_start, old_lines) = parse_range(old_range)?;
        let (new_start, new_lines) = parse_range(new_range)?;
        Some(Self {
            old_start,
            old_lines,
            new_start,
            new_lines,
            section,
        })
    }
}

/// `start,count` or `start` (count 1).
fn parse_range(range: &str) -> Option<(u32, u32)> {
    match range.split_once(',') {
        Some((start, count)) => Some((start.parse().ok()?, count.parse().ok()?)),
        None => Some((range.parse().ok()?, 1)),
    }
}

/// The path on a `---` or `+++` line: quoted, or cut at the tab that precedes a timestamp (plain
/// diffs) or that git adds after a path with spaces.
fn marker_path<'a>(raw: &'a str, prefix: &str) -> Cow<'a, str> {
    let path = if raw.starts_with('"') {
        match unquote(raw) {
            Some((path, _)) => Cow::Owned(path),
            None => Cow::Borrowed(raw),
        }
    } else {
        Cow::Borrowed(raw.split('\t').next().unwrap_or(raw))
    };
    if path == DEV_NULL {
        return path;
    }
    strip_prefix(path, prefix)
}

/// A path on a `rename from`/`rename to`/`copy to` line: no prefix, quoted when unusual.
fn header_path(raw: &str) -> Cow<'_, str> {
    match raw.starts_with('"').then(|| unquote(raw)).flatten() {
        Some((path, _)) => Cow::Owned(path),
        None => Cow::Borrowed(raw),
    }
}

/// The two paths of `diff --git {a} {b}`. Unquoted paths with spaces are ambiguous; the header is
/// only the last resort after `rename`, `---` and `+++` lines, so a best guess is enough.
fn git_header_paths(rest: &str) -> Option<(Cow<'_, str>, Cow<'_, str>)> {
    if rest.starts_with('"') {
        let (old, tail) = unquote(rest)?;
        let tail = tail.strip_prefix(' ')?;
        let new = header_path(tail);
        return Some((strip_prefix(Cow::Owned(old), "a/"), strip_prefix(new, "b/")));
    }
    if rest.ends_with('"')
        && let Some(at) = rest.find(" \"")
        && let Some((new, "")) = rest[at..].strip_prefix(' ').and_then(unquote)
    {
        return Some((
            strip_prefix(Cow::Borrowed(&rest[..at]), "a/"),
            strip_prefix(Cow::Owned(new), "b/"),
        ));
    }
    // Without a rename both sides name the same path, so the middle space is the separator.
    let mid = rest.len() / 2;
    if rest.len() % 2 == 1
        && let Some((old, new)) = rest.split_at_checked(mid)
        && let Some(new) = new.strip_prefix(' ')
    {
        let (old, new) = (
            strip_prefix(Cow::Borrowed(old), "a/"),
            strip_prefix(Cow::Borrowed(new), "b/"),
        );
        if old == new {
            return Some((old, new));
        }
    }
    let (old, new) = match rest.find(" b/") {
        Some(at) => (&rest[..at], rest[at..].strip_prefix(' ')?),
        None => rest.split_once(' ')?,
    };
    Some((
        strip_prefix(Cow::Borrowed(old), "a/"),
        strip_prefix(Cow::Borrowed(new), "b/"),
    ))
}

/// The two paths of `Binary files {a} and {b} differ`, where ` and ` may also sit inside a path.
fn binary_paths(rest: &str) -> Option<(Cow<'_, str>, Cow<'_, str>)> {
    let looks_right = |old: &str, new: &str| {
        (old == DEV_NULL || old.starts_with("a/") || old.starts_with('"'))
            && (new == DEV_NULL || new.starts_with("b/") || new.starts_with('"'))
    };
    let (old, new) = rest
        .match_indices(" and ")
        .map(|(at, sep)| (&rest[..at], rest[at..].strip_prefix(sep).unwrap_or_default()))
        .find(|(old, new)| looks_right(old, new))
        .or_else(|| rest.split_once(" and "))?;
    Some((marker_path(old, "a/"), marker_path(new, "b/")))
}

fn strip_prefix<'a>(path: Cow<'a, str>, prefix: &str) -> Cow<'a, str> {
    match path {
        Cow::Borrowed(path) => Cow::Borrowed(path.strip_prefix(prefix).unwrap_or(path)),
        Cow::Owned(path) => match path.strip_prefix(prefix) {
            Some(rest) => Cow::Owned(rest.to_owned()),
            None => Cow::Owned(path),
        },
    }
}

/// Reads a C-style quoted path as git writes it for unusual names (`"a/caf\303\251.txt"`).
/// Returns the path and what follows the closing quote.
fn unquote(quoted: &str) -> Option<(String, &str)> {
    let mut bytes = Vec::new();
    let mut rest = quoted.strip_prefix('"')?.as_bytes();
    loop {
        match *rest {
            [] => return None,
            [b'"', ..] => {
                // `rest` is a tail of `quoted`, so this is where the closing quote sits.
                let tail = quoted
                    .get(quoted.len().saturating_sub(rest.len())..)?
                    .strip_prefix('"')?;
                return Some((String::from_utf8_lossy(&bytes).into_owned(), tail));
            }
            [b'\\', a @ b'0'..=b'3', b @ b'0'..=b'7', c @ b'0'..=b'7', ..] => {
                // Three octal digits led by 0-3: at most 0o377, one byte.
                let digits = [a, b, c];
                bytes.push(u8::from_str_radix(std::str::from_utf8(&digits).ok()?, 8).ok()?);
                rest = &rest[4..];
            }
            [b'\\', escaped, ..] => {
                bytes.push(match escaped {
                    b'n' => b'\n',
                    b't' => b'\t',
                    b'r' => b'\r',
                    b'a' => 0x07,
                    b'b' => 0x08,
                    b'f' => 0x0c,
                    b'v' => 0x0b,
                    other => other,
                });
                rest = &rest[2..];
            }
            [byte, ..] => {
                bytes.push(byte);
                rest = &rest[1..];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_one(text: &str) -> FileDiff<'_> {
        let mut files = parse_unified(text).unwrap();
        assert_eq!(files.len(), 1, "{files:#?}");
        files.remove(0)
    }

    fn texts<'a>(hunk: &Hunk<'a>) -> Vec<(LineKind, &'a str, Option<u32>, Option<u32>)> {
        hunk.lines().map(|l| (l.kind, l.text, l.old_line, l.new_line)).collect()
    }

    const MODIFIED: &str = "\
diff --git a/src/lib.rs b/src/lib.rs
index 1111111..2222222 100644
--- a/src/lib.rs
+++ b/src/lib.rs
@@ -10,4 +10,5 @@ fn main() {
     let a = 1;
-    let b = 2;
+    let b = 3;
+    let c = 4;
     let d = 5;
 }
";

    #[test]
    fn a_modified_file_gets_new_and_old_line_numbers() {
        let file = parse_one(MODIFIED);
        assert_eq!(file.path, "src/lib.rs");
        assert_eq!(file.old_path, None);
        assert_eq!(file.status, FileStatus::Modified);
        assert!(!file.binary);
        let hunk = &file.hunks[0];
        assert_eq!(
            (hunk.old_start(), hunk.counts().0, hunk.new_start(), hunk.counts().1),
            (10, 4, 10, 5)
        );
        assert_eq!(hunk.section(), "fn main() {");
        assert_eq!(
            texts(hunk),
            vec![
                (LineKind::Context, "    let a = 1;", Some(10), Some(10)),
                (LineKind::Removed, "    let b = 2;", Some(11), None),
                (LineKind::Added, "    let b = 3;", None, Some(11)),
                (LineKind::Added, "    let c = 4;", None, Some(12)),
                (LineKind::Context, "    let d = 5;", Some(12), Some(13)),
                (LineKind::Context, "}", Some(13), Some(14)),
            ]
        );
        assert_eq!(file.changed_lines().into_iter().collect::<Vec<_>>(), [11, 12]);
        assert_eq!((file.added_line_count(), file.count_lines(LineKind::Removed)), (2, 1));
    }

    #[test]
    fn several_files_and_hunks_are_kept_apart() {
        let text = "\
diff --git a/a.txt b/a.txt
--- a/a.txt
+++ b/a.txt
@@ -1,2 +1,2 @@
-one
+uno
 two
@@ -20 +20,2 @@ section two
 twenty
+twenty-one
diff --git a/b.txt b/b.txt
--- a/b.txt
+++ b/b.txt
@@ -5,0 +6 @@
+six
";
        let files = parse_unified(text).unwrap();
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].hunks.len(), 2);
        assert_eq!(files[0].hunks[1].counts().0, 1);
        assert_eq!(files[0].hunks[1].section(), "section two");
        assert_eq!(files[0].changed_lines().into_iter().collect::<Vec<_>>(), [1, 21]);
        assert_eq!(files[1].path, "b.txt");
        assert_eq!(files[1].hunks[0].counts().0, 0);
        assert_eq!(files[1].changed_lines().into_iter().collect::<Vec<_>>(), [6]);
    }

    #[test]
    fn a_new_file_is_added() {
        let file = parse_one(
            "diff --git a/new.rs b/new.rs\nnew file mode 100644\nindex 0000000..abc\n\
             --- /dev/null\n+++ b/new.rs\n@@ -0,0 +1,2 @@\n+fn a() {}\n+fn b() {}\n",
        );
        assert_eq!(file.status, FileStatus::Added);
        assert_eq!(file.path, "new.rs");
        assert_eq!(file.changed_lines().into_iter().collect::<Vec<_>>(), [1, 2]);
    }

    #[test]
    fn a_deleted_file_is_removed_under_its_old_path() {
        let file = parse_one(
            "diff --git a/old.rs b/old.rs\ndeleted file mode 100644\nindex abc..0000000\n\
             --- a/old.rs\n+++ /dev/null\n@@ -1,2 +0,0 @@\n-fn a() {}\n-fn b() {}\n",
        );
        assert_eq!(file.status, FileStatus::Removed);
        assert_eq!(file.path, "old.rs");
        assert!(file.changed_lines().is_empty());
        assert_eq!(file.count_lines(LineKind::Removed), 2);
        assert_eq!(file.hunks[0].lines().nth(1).unwrap().old_line, Some(2));
    }

    #[test]
    fn a_pure_rename_keeps_both_paths_and_has_no_hunks() {
        let file = parse_one(
            "diff --git a/old name.rs b/new name.rs\nsimilarity index 100%\n\
             rename from old name.rs\nrename to new name.rs\n",
        );
        assert_eq!(file.status, FileStatus::Renamed);
        assert_eq!(file.path, "new name.rs");
        assert_eq!(file.old_path.as_deref(), Some("old name.rs"));
        assert!(file.hunks.is_empty());
    }

    #[test]
    fn a_rename_with_changes_keeps_both_paths_and_its_hunks() {
        let files = parse_unified(
            "diff --git a/src/a.rs b/src/b.rs\nsimilarity index 90%\nrename from src/a.rs\n\
             rename to src/b.rs\nindex 1..2 100644\n--- a/src/a.rs\n+++ b/src/b.rs\n\
             @@ -1 +1 @@\n-x\n+y\ndiff --git a/c.rs b/c.rs\n--- a/c.rs\n+++ b/c.rs\n\
             @@ -1 +1 @@\n-p\n+q\n",
        )
        .unwrap();
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].status, FileStatus::Renamed);
        assert_eq!(files[0].path, "src/b.rs");
        assert_eq!(files[0].old_path.as_deref(), Some("src/a.rs"));
        assert_eq!(files[0].changed_lines().into_iter().collect::<Vec<_>>(), [1]);
        assert_eq!(files[1].status, FileStatus::Modified);
    }

    #[test]
    fn binary_files_have_no_hunks() {
        let files = parse_unified(
            "diff --git a/logo.png b/logo.png\nnew file mode 100644\nindex 0000000..1234567\n\
             Binary files /dev/null and b/logo.png differ\n\
             diff --git a/font.woff b/font.woff\nindex 1..2 100644\nGIT binary patch\n\
             literal 12\nzcmZ?wbhEHb6krfw_{6~Y\n\nliteral 0\nHcmV?d00001\n\n\
             diff --git a/x.txt b/x.txt\n--- a/x.txt\n+++ b/x.txt\n@@ -1 +1 @@\n-a\n+b\n",
        )
        .unwrap();
        assert_eq!(files.len(), 3);
        assert!(files[0].binary && files[0].hunks.is_empty());
        assert_eq!(
            (files[0].path.as_ref(), files[0].status),
            ("logo.png", FileStatus::Added)
        );
        assert!(files[1].binary && files[1].hunks.is_empty());
        assert_eq!(
            (files[1].path.as_ref(), files[1].status),
            ("font.woff", FileStatus::Modified)
        );
        assert!(!files[2].binary);
    }

    #[test]
    fn a_binary_line_without_a_git_header_is_a_file() {
        let file = parse_one("Binary files a/my pic.png and /dev/null differ\n");
        assert!(file.binary);
        assert_eq!((file.path.as_ref(), file.status), ("my pic.png", FileStatus::Removed));
    }

    #[test]
    fn no_newline_markers_are_not_lines() {
        let file = parse_one(
            "diff --git a/a b/a\n--- a/a\n+++ b/a\n@@ -1,2 +1,2 @@\n keep\n-old\n\
             \\ No newline at end of file\n+new\n\\ No newline at end of file\n",
        );
        let hunk = &file.hunks[0];
        let lines: Vec<DiffLine<'_>> = hunk.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[2].text, "new");
        assert_eq!(lines[2].new_line, Some(2));
    }

    #[test]
    fn crlf_line_endings_are_stripped() {
        let file =
            parse_one("diff --git a/w.txt b/w.txt\r\n--- a/w.txt\r\n+++ b/w.txt\r\n@@ -1 +1,2 @@ s\r\n a\r\n+b\r\n");
        assert_eq!(file.path, "w.txt");
        assert_eq!(file.hunks[0].section(), "s");
        let texts: Vec<&str> = file.hunks[0].lines().map(|l| l.text).collect();
        assert_eq!(texts, ["a", "b"]);
    }

    #[test]
    fn paths_with_spaces_survive_git_headers_and_tabs() {
        let file = parse_one(
            "diff --git a/my dir/a b.txt b/my dir/a b.txt\nindex 1..2 100644\n\
             --- a/my dir/a b.txt\t\n+++ b/my dir/a b.txt\t\n@@ -1 +1 @@\n-x\n+y\n",
        );
        assert_eq!(file.path, "my dir/a b.txt");
        assert_eq!(file.status, FileStatus::Modified);
    }

    #[test]
    fn a_mode_change_is_a_modified_file_without_hunks() {
        let file = parse_one("diff --git a/run me.sh b/run me.sh\nold mode 100644\nnew mode 100755\n");
        assert_eq!(file.path, "run me.sh");
        assert_eq!(file.status, FileStatus::Modified);
        assert!(file.hunks.is_empty() && !file.binary);
    }

    #[test]
    fn quoted_paths_are_unquoted() {
        let file = parse_one(
            "diff --git \"a/caf\\303\\251.txt\" \"b/caf\\303\\251.txt\"\n\
             --- \"a/caf\\303\\251.txt\"\n+++ \"b/caf\\303\\251.txt\"\n@@ -1 +1 @@\n-x\n+y\n",
        );
        assert_eq!(file.path, "café.txt");
    }

    #[test]
    fn a_plain_unified_diff_without_git_headers_is_read() {
        let files = parse_unified(
            "Only in old: junk\n--- a.c\t2024-01-01 10:00:00.000000000 +0000\n\
             +++ a.c\t2024-01-02 10:00:00.000000000 +0000\n@@ -1,2 +1,2 @@\n int x;\n-int y;\n+long y;\n\
             --- b.c\n+++ b.c\n@@ -3 +3 @@\n-a\n+b\n",
        )
        .unwrap();
        assert_eq!(files.len(), 2);
        assert_eq!((files[0].path.as_ref(), files[0].status), ("a.c", FileStatus::Modified));
        assert_eq!(files[0].changed_lines().into_iter().collect::<Vec<_>>(), [2]);
        assert_eq!(files[1].path, "b.c");
        assert_eq!(files[1].changed_lines().into_iter().collect::<Vec<_>>(), [3]);
    }

    #[test]
    fn hunk_counts_decide_where_a_hunk_ends() {
        // The removed line `-- a/x` and the added line `diff --git` look like headers.
        let files = parse_unified(
            "diff --git a/notes.md b/notes.md\n--- a/notes.md\n+++ b/notes.md\n@@ -1,2 +1,2 @@\n\
             --- a/x\n+++ b/y\n-diff --git a/q b/q\n+diff --git a/r b/r\n",
        );
        let files = files.unwrap();
        assert_eq!(files.len(), 1);
        let kinds: Vec<_> = files[0].hunks[0].lines().map(|l| (l.kind, l.text)).collect();
        assert_eq!(
            kinds,
            [
                (LineKind::Removed, "-- a/x"),
                (LineKind::Added, "++ b/y"),
                (LineKind::Removed, "diff --git a/q b/q"),
                (LineKind::Added, "diff --git a/r b/r"),
            ]
        );
    }

    #[test]
    fn garbage_between_files_is_skipped() {
        let files = parse_unified(
            "From abc Mon Sep 17 00:00:00 2001\nSubject: [PATCH] x\n\n---\n a | 2 +-\n\n\
             diff --git a/a b/a\n--- a/a\n+++ b/a\n@@ -1 +1 @@\n-x\n+y\nsome noise\n\n\
             diff --git a/b b/b\n--- a/b\n+++ b/b\n@@ -1 +1 @@\n-x\n+y\n-- \n2.40.0\n",
        )
        .unwrap();
        assert_eq!(files.iter().map(|f| f.path.as_ref()).collect::<Vec<_>>(), ["a", "b"]);
        assert!(files.iter().all(|f| f.hunks[0].lines().count() == 2));
    }

    #[test]
    fn a_blank_context_line_without_its_space_still_counts() {
        let file = parse_one("--- a/a\n+++ b/a\n@@ -1,3 +1,3 @@\n x\n\n-y\n+z\n");
        let lines: Vec<DiffLine<'_>> = file.hunks[0].lines().collect();
        assert_eq!(lines[1].text, "");
        assert_eq!(lines[3].new_line, Some(3));
    }

    #[test]
    fn a_hunk_cut_short_keeps_what_it_has() {
        let file = parse_one("--- a/a\n+++ b/a\n@@ -1,5 +1,5 @@\n x\n+y\nnot a diff line\n");
        assert_eq!(file.hunks[0].lines().count(), 2);
        assert_eq!(file.hunks[0].counts(), (1, 2));
    }

    #[test]
    fn text_without_files_is_an_error_but_empty_text_is_not() {
        assert_eq!(parse_unified("hello\nworld\n"), Err(DiffError::NoFiles));
        assert_eq!(parse_unified(""), Ok(vec![]));
        assert_eq!(parse_unified(" \n"), Ok(vec![]));
    }

    #[test]
    fn a_bad_hunk_header_is_an_error() {
        for header in ["@@ -x,1 +1 @@", "@@ -1,1 @@", "@@ -1 +1", "@@@ -1 -1 +1 @@@"] {
            let text = format!("--- a/a\n+++ b/a\n{header}\n+x\n");
            assert_eq!(
                parse_unified(&text),
                Err(DiffError::BadHunkHeader {
                    line: header.to_owned()
                }),
                "{header}"
            );
        }
    }

    #[test]
    fn a_hunk_header_past_u32_is_an_error() {
        let text = "--- a/a\n+++ b/a\n@@ -4294967295,2 +1 @@\n+x\n";
        assert!(matches!(parse_unified(text), Err(DiffError::BadHunkHeader { .. })));
    }

    fn job_file(path: &str, previous: Option<&str>, status: Option<FileStatusHint>, patch: &str) -> JobFile {
        JobFile {
            path: path.to_owned(),
            previous_path: previous.map(str::to_owned),
            status,
            patch: patch.to_owned(),
        }
    }

    #[test]
    fn job_files_are_read_from_their_first_hunk() {
        let entries = [job_file(
            "src/a.rs",
            None,
            Some(FileStatusHint::Modified),
            "preamble\n@@ -1,2 +1,3 @@ fn a\n a\n+b\n c\n@@ -10 +11 @@\n-x\n+y",
        )];
        let files = from_job_files(&entries).unwrap();
        let file = &files[0];
        assert_eq!(file.status, FileStatus::Modified);
        assert_eq!(file.hunks.len(), 2);
        assert_eq!(file.hunks[0].section(), "fn a");
        assert_eq!(file.changed_lines().into_iter().collect::<Vec<_>>(), [2, 11]);
    }

    #[test]
    fn job_file_statuses_come_from_hints_renames_or_hunks() {
        let entries = [
            job_file("a", None, None, "@@ -0,0 +1 @@\n+x\n"),
            job_file("b", None, None, "@@ -1 +0,0 @@\n-x\n"),
            job_file("c", Some("old/c"), None, "@@ -1 +1 @@\n-x\n+y\n"),
            job_file("d", Some("d"), None, "@@ -1 +1 @@\n-x\n+y\n"),
            job_file("e", None, Some(FileStatusHint::Removed), ""),
            job_file("f", None, Some(FileStatusHint::Renamed), ""),
            job_file("g", Some("old/g"), Some(FileStatusHint::Modified), ""),
        ];
        let files = from_job_files(&entries).unwrap();
        let got: Vec<_> = files
            .iter()
            .map(|f| (f.path.as_ref(), f.status, f.old_path.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                ("a", FileStatus::Added, None),
                ("b", FileStatus::Removed, None),
                ("c", FileStatus::Renamed, Some("old/c")),
                ("d", FileStatus::Modified, None),
                ("e", FileStatus::Removed, None),
                ("f", FileStatus::Modified, None),
                ("g", FileStatus::Renamed, Some("old/g")),
            ]
        );
    }

    #[test]
    fn an_empty_job_patch_is_a_file_without_hunks() {
        let entries = [
            job_file("img.png", None, Some(FileStatusHint::Added), ""),
            job_file("bin.dat", None, None, "Binary files a/bin.dat and b/bin.dat differ"),
        ];
        let files = from_job_files(&entries).unwrap();
        assert!(files[0].hunks.is_empty() && !files[0].binary);
        assert_eq!(files[0].status, FileStatus::Added);
        assert!(files[1].hunks.is_empty() && files[1].binary);
    }

    #[test]
    fn a_bad_hunk_header_in_a_job_file_is_an_error() {
        let entries = [job_file("a", None, None, "@@ nonsense @@\n+x\n")];
        let result = from_job_files(&entries);
        assert!(matches!(result, Err(DiffError::BadHunkHeader { .. })));
    }

    #[test]
    fn render_for_prompt_follows_the_documented_format() {
        let file = parse_one(MODIFIED);
        let expected = "\
=== FILE: src/lib.rs (modified)
@@ -10,4 +10,5 @@ fn main() {
    10      let a = 1;
       -    let b = 2;
    11 +    let b = 3;
    12 +    let c = 4;
    13      let d = 5;
    14  }
";
        assert_eq!(render_for_prompt(&file), expected);
    }

    #[test]
    fn render_for_prompt_names_renames_and_rebuilds_headers() {
        let file = parse_one(
            "diff --git a/a.rs b/b.rs\nrename from a.rs\nrename to b.rs\n--- a/a.rs\n+++ b/b.rs\n\
             @@ -1 +1 @@\n-x\n+y\n",
        );
        assert_eq!(
            render_for_prompt(&file),
            "=== FILE: b.rs (renamed from a.rs)\n@@ -1,1 +1,1 @@\n       -x\n     1 +y\n"
        );
        let removed = parse_one("--- a/gone\n+++ /dev/null\n@@ -1 +0,0 @@\n-x\n");
        assert_eq!(
            render_for_prompt(&removed),
            "=== FILE: gone (removed)\n@@ -1,1 +0,0 @@\n       -x\n"
        );
    }

    #[test]
    fn a_file_without_hunks_renders_as_its_header_alone() {
        let file = parse_one("diff --git a/p.png b/p.png\nBinary files a/p.png and b/p.png differ\n");
        assert_eq!(render_for_prompt(&file), "=== FILE: p.png (modified)\n");
    }

    #[test]
    fn sections_of_one_path_from_a_patch_series_are_merged_into_one_file() {
        let series = "\
From 1 Mon Sep 17 00:00:00 2001
Subject: [PATCH 1/2] first

diff --git a/src/a.rs b/src/a.rs
--- a/src/a.rs
+++ b/src/a.rs
@@ -1,2 +1,3 @@
 fn a() {}
+fn b() {}
 fn c() {}
diff --git a/src/other.rs b/src/other.rs
new file mode 100644
--- /dev/null
+++ b/src/other.rs
@@ -0,0 +1 @@
+x
From 2 Mon Sep 17 00:00:00 2001
Subject: [PATCH 2/2] second

diff --git a/src/a.rs b/src/a.rs
--- a/src/a.rs
+++ b/src/a.rs
@@ -10,2 +10,3 @@
 fn j() {}
+fn k() {}
 fn l() {}
diff --git a/src/other.rs b/src/other.rs
--- a/src/other.rs
+++ b/src/other.rs
@@ -1 +1,2 @@
 x
+y
";
        let files = parse_unified(series).unwrap();
        let summary: Vec<(&str, FileStatus, usize)> = files
            .iter()
            .map(|f| (f.path.as_ref(), f.status, f.hunks.len()))
            .collect();
        assert_eq!(
            summary,
            [
                ("src/a.rs", FileStatus::Modified, 2),
                ("src/other.rs", FileStatus::Added, 2)
            ]
        );
        assert_eq!(files[0].changed_lines().into_iter().collect::<Vec<_>>(), [2, 11]);
    }

    #[test]
    fn a_removal_after_changes_leaves_a_removed_file() {
        let files = parse_unified("--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n--- a/x\n+++ /dev/null\n@@ -1 +0,0 @@\n-b\n")
            .unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].status, FileStatus::Removed);
    }

    #[test]
    fn a_word_diff_or_a_hunk_cut_short_marks_the_file_damaged() {
        let word_diff = parse_one("--- a/a\n+++ b/a\n@@ -1,2 +1,2 @@\nfoo [-bar-]{+baz+}\nqux\n");
        assert!(word_diff.damaged && word_diff.added_line_count() == 0);
        let cut = parse_one("--- a/a\n+++ b/a\n@@ -1,4 +1,4 @@\n keep\n-gone\n");
        assert!(cut.damaged && cut.added_line_count() == 0);
        let whole = parse_one("--- a/a\n+++ b/a\n@@ -1,2 +1,1 @@\n keep\n-gone\n");
        assert!(!whole.damaged, "a complete deletion is not damage");
    }

    #[test]
    fn more_files_than_the_limit_are_an_error() {
        let text = (0..=MAX_FILES)
            .map(|i| format!("--- a/f{i}\n+++ b/f{i}\n"))
            .collect::<String>();
        assert_eq!(parse_unified(&text), Err(DiffError::TooManyFiles { limit: MAX_FILES }));
        let same = "--- a/f\n+++ b/f\n@@ -1 +1 @@\n-a\n+b\n".repeat(MAX_FILES + 1);
        assert_eq!(
            parse_unified(&same).unwrap().len(),
            1,
            "one path many times is one file"
        );
    }

    #[test]
    fn a_bad_hunk_header_is_quoted_short() {
        let header = format!("@@ -1 +1 @@@{}", "x".repeat(100_000));
        let error = parse_unified(&format!("--- a/a\n+++ b/a\n{header}\n")).map(|_| ());
        let header = format!("@@ -1 {}", "x".repeat(100_000));
        let error2 = parse_unified(&format!("--- a/a\n+++ b/a\n{header}\n")).map(|_| ());
        for error in [error, error2].into_iter().filter_map(Result::err) {
            assert!(error.to_string().len() < 100, "{error}");
        }
    }

    #[test]
    fn a_hunk_costs_sixteen_bytes_whatever_its_size() {
        assert_eq!(std::mem::size_of::<Hunk<'_>>(), 16);
        let file = parse_one(MODIFIED);
        assert_eq!(file.hunks[0].header(), "@@ -10,4 +10,5 @@ fn main() {");
    }

    #[test]
    fn pricing_a_rendering_agrees_with_the_rendering() {
        let file = parse_one(MODIFIED);
        assert_eq!(rendered_size(&file), TextSize::of(&render_for_prompt(&file)));
        let renamed = parse_one(
            "diff --git a/a.rs b/b.rs\nrename from a.rs\nrename to b.rs\n--- a/a.rs\n+++ b/b.rs\n\
             @@ -99999 +1234567,2 @@ fn x\n-x\n+y\n+é日\n",
        );
        assert_eq!(rendered_size(&renamed), TextSize::of(&render_for_prompt(&renamed)));
    }

    #[test]
    fn a_hunk_that_only_moved_keeps_its_fingerprint() {
        let before = parse_one(MODIFIED);
        let text = MODIFIED.replace("@@ -10,4 +10,5 @@ fn main() {", "@@ -12,4 +40,5 @@ fn other() {");
        let moved = parse_one(&text);
        assert_ne!(before.hunks[0].new_start(), moved.hunks[0].new_start());
        assert_eq!(
            fingerprint("src/lib.rs", &before.hunks[0]),
            fingerprint("src/lib.rs", &moved.hunks[0])
        );
        assert_eq!(hunk_ref("src/lib.rs", &moved.hunks[0]).line, 40);
    }

    #[test]
    fn one_changed_character_changes_the_fingerprint() {
        let before = parse_one(MODIFIED);
        for changed in [
            MODIFIED.replace("let c = 4;", "let c = 5;"),
            MODIFIED.replace("+    let c = 4;", "     let c = 4;"),
            MODIFIED.replace("     let d = 5;", "     let d = 5; "),
        ] {
            let after = parse_one(&changed);
            assert_ne!(
                fingerprint("src/lib.rs", &before.hunks[0]),
                fingerprint("src/lib.rs", &after.hunks[0]),
                "{changed}"
            );
        }
    }

    #[test]
    fn the_same_hunk_in_another_file_has_another_fingerprint() {
        let file = parse_one(MODIFIED);
        assert_ne!(
            fingerprint("src/lib.rs", &file.hunks[0]),
            fingerprint("src/main.rs", &file.hunks[0])
        );
        // The path's length is hashed first, so a path cannot borrow the first line's text.
        let short = Hunk::new("@@ -1 +1 @@\n+ab\n");
        let long = Hunk::new("@@ -1 +1 @@\n+b\n");
        assert_ne!(fingerprint("x", &short), fingerprint("x+a", &long));
    }

    #[test]
    fn a_fingerprint_is_sixteen_hex_digits_and_the_same_on_every_machine() {
        let file = parse_one(MODIFIED);
        let print = fingerprint("src/lib.rs", &file.hunks[0]);
        assert_eq!(print.len(), 16);
        assert!(print.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        // Pinned (and checked with Python's hashlib: the first 8 bytes of SHA-256 over the path's
        // length as a little-endian u64, the path, then each line as marker, text, `\n`). A new
        // value here means every stored fingerprint stops matching.
        assert_eq!(print, "6a82addf51f68bff");
    }

    /// Lines read while parsing `text` and walking every line of the result.
    fn work(text: &str) -> u64 {
        LINES_READ.with(|n| n.set(0));
        let files = parse_unified(text).unwrap();
        let walked: usize = files.iter().map(|f| f.lines().count()).sum();
        assert!(walked > 0);
        LINES_READ.with(std::cell::Cell::get)
    }

    #[test]
    fn parsing_is_linear_in_the_diff_whatever_its_shape() {
        let shapes = [
            // Many files.
            "diff --git a/x{i} b/x{i}\n--- a/x{i}\n+++ b/x{i}\n@@ -1 +1 @@\n-a\n+b\n".to_owned(),
            // One file, many hunks, repeated sections of one path.
            "--- a/x\n+++ b/x\n@@ -{i} +{i},2 @@\n a\n+b\n".to_owned(),
            // Long hunks and junk between them.
            format!(
                "--- a/y{{i}}\n+++ b/y{{i}}\n@@ -1,40 +1,40 @@\n{}noise\n",
                " x\n".repeat(40)
            ),
        ];
        for shape in shapes {
            let text = |n: usize| (0..n).map(|i| shape.replace("{i}", &i.to_string())).collect::<String>();
            let (small, large) = (work(&text(200)), work(&text(1600)));
            assert!(
                large <= 8 * small + 64,
                "{small} lines read for n, {large} for 8n: {shape:?}"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(64),
            ..ProptestConfig::default()
        })]

        /// Diff-like text from the lines diffs are made of, shuffled: headers out of order, hunks
        /// whose counts lie, CRLF, quotes, `\ No newline`, junk.
        #[test]
        fn no_diff_text_makes_the_parser_panic_and_every_line_number_is_in_its_hunk(
            lines in prop::collection::vec(
                prop_oneof![
                    Just("diff --git a/x b/x".to_owned()),
                    Just("diff --git \"a/q\\303\\251 x\" \"b/q y\"".to_owned()),
                    Just("--- a/x".to_owned()),
                    Just("+++ b/x".to_owned()),
                    Just("--- /dev/null".to_owned()),
                    Just("+++ /dev/null".to_owned()),
                    Just("rename from a".to_owned()),
                    Just("rename to b".to_owned()),
                    Just("Binary files a/x and b/x differ".to_owned()),
                    Just("GIT binary patch".to_owned()),
                    Just("\\ No newline at end of file".to_owned()),
                    (0u32..5, 0u32..4, 0u32..5, 0u32..4)
                        .prop_map(|(a, b, c, d)| format!("@@ -{a},{b} +{c},{d} @@ f")),
                    Just("@@ -4294967295,1 +1 @@".to_owned()),
                    "[ +-][a-z\"\\\\é\r]{0,6}",
                    "[a-z@ ]{0,8}",
                ],
                0..60,
            )
        ) {
            let text = lines.join("\n");
            if let Ok(files) = parse_unified(&text) {
                for file in &files {
                    for hunk in &file.hunks {
                        for line in hunk.lines() {
                            if let Some(n) = line.new_line {
                                prop_assert!(n >= hunk.new_start() && n < hunk.new_start() + hunk.counts().1.max(1));
                            }
                        }
                    }
                    prop_assert_eq!(rendered_size(file), TextSize::of(&render_for_prompt(file)));
                }
            }
        }
    }
}
