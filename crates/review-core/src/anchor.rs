//! Pinning the model's suggestions to lines the diff changed, and applying the job's limits.
//!
//! The contract promises that every suggestion in a result points at lines the diff added, in the
//! new file's numbering. Models misplace lines (off by a few, counted from the hunk, quoted from
//! the old file) and misspell paths, so each suggestion is matched to a file, then kept, shrunk,
//! moved to the code it quotes or to a changed line next to it, or dropped; never passed on as
//! the model wrote it. `min_severity` and `max_suggestions` are applied here too, after anchoring,
//! so that the limit counts only suggestions that can be shown. Each suggestion is stamped with
//! the fingerprint of the hunk it lands in, so that a later push can carry it forward
//! ([`crate::carry`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::Bound;

use crate::answer::RawSuggestion;
use crate::contract::{ReviewOptions, Severity, Suggestion};
use crate::diff::{FileDiff, LineKind, fingerprint};

/// The suggestions that made it, with counts for logs and metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Anchored {
    /// Most severe first.
    pub suggestions: Vec<Suggestion>,
    /// Raw suggestions not in `suggestions`, for any reason: unknown file, no changed line near,
    /// empty body, below `min_severity`, duplicate, beyond `max_suggestions`. Always
    /// `raw.len() - suggestions.len()`.
    pub dropped: usize,
    /// How many of `suggestions` were moved to other lines than the model gave.
    pub reanchored: usize,
}

/// How far (in lines) a suggestion may sit from a changed line and still be moved onto it; models
/// are often off by a line or two, and further away the comment is likely about something else.
const NEAR_LINES: i64 = 3;

/// Anchors `raw` to the changed lines of `files` and applies `options`' severity floor and limit.
pub fn anchor(raw: Vec<RawSuggestion>, files: &[FileDiff<'_>], options: &ReviewOptions) -> Anchored {
    let total = raw.len();
    let added: Vec<AddedLines<'_>> = files.iter().map(AddedLines::of).collect();
    let index = FileIndex::of(files);
    let mut prints = Fingerprints::default();
    let mut kept: Vec<Placed> = raw
        .into_iter()
        .filter_map(|suggestion| place(suggestion, files, &index, &added, &mut prints))
        .collect();
    if let Some(min) = options.min_severity {
        kept.retain(|placed| placed.suggestion.severity >= min);
    }
    // Stable, so that the model's own order survives within a severity.
    kept.sort_by_key(|placed| std::cmp::Reverse(placed.suggestion.severity));
    // After sorting, so that of two duplicates the more severe one stays.
    let mut seen = HashSet::new();
    kept.retain(|placed| {
        let s = &placed.suggestion;
        seen.insert((s.file.clone(), s.line_start, s.line_end, s.body.clone()))
    });
    if let Some(max) = options.max_suggestions {
        kept.truncate(max);
    }
    let reanchored = kept.iter().filter(|placed| placed.moved).count();
    let suggestions: Vec<Suggestion> = kept.into_iter().map(|placed| placed.suggestion).collect();
    Anchored {
        // What is kept is a part of the total.
        dropped: total.saturating_sub(suggestions.len()),
        reanchored,
        suggestions,
    }
}

struct Placed {
    suggestion: Suggestion,
    moved: bool,
}

/// What a file's diff added: where suggestions may point, the text there, and which hunk added
/// it.
struct AddedLines<'a> {
    changed: BTreeSet<u32>,
    text: BTreeMap<u32, Added<'a>>,
}

#[derive(Clone, Copy)]
struct Added<'a> {
    text: &'a str,
    /// Index in the file's `hunks`.
    hunk: usize,
}

impl<'a> AddedLines<'a> {
    /// Sections of one path merged from a patch series may add the same line number twice; the
    /// later text (and hunk) wins, as the later commit's does.
    fn of(file: &FileDiff<'a>) -> Self {
        let text = file
            .hunks
            .iter()
            .enumerate()
            .flat_map(|(hunk, lines)| lines.lines().map(move |line| (hunk, line)))
            .filter(|(_, line)| line.kind == LineKind::Added)
            .filter_map(|(hunk, line)| Some((line.new_line?, Added { text: line.text, hunk })))
            .collect();
        Self {
            changed: file.changed_lines(),
            text,
        }
    }
}

/// The fingerprints of the hunks suggestions landed in, each hashed once: an answer may put many
/// suggestions in one large hunk.
#[derive(Default)]
struct Fingerprints(HashMap<(usize, usize), String>);

impl Fingerprints {
    fn of(&mut self, files: &[FileDiff<'_>], file: usize, hunk: usize) -> Option<String> {
        if let Some(print) = self.0.get(&(file, hunk)) {
            return Some(print.clone());
        }
        let diff = files.get(file)?;
        let print = fingerprint(&diff.path, diff.hunks.get(hunk)?);
        self.0.insert((file, hunk), print.clone());
        Some(print)
    }
}

fn place(
    raw: RawSuggestion,
    files: &[FileDiff<'_>],
    by: &FileIndex<'_>,
    added: &[AddedLines<'_>],
    prints: &mut Fingerprints,
) -> Option<Placed> {
    let body = raw.body.trim();
    if body.is_empty() {
        return None;
    }
    let index = match_file(&raw.file, by)?;
    let (line_start, line_end, moved) = place_lines(&raw, &added[index])?;
    // `line_start` is an added line, so some hunk holds it.
    let fingerprint = added[index]
        .text
        .get(&line_start)
        .and_then(|line| prints.of(files, index, line.hunk));
    Some(Placed {
        suggestion: Suggestion {
            file: files[index].path.clone().into_owned(),
            line_start,
            line_end,
            severity: raw.severity.unwrap_or(Severity::Medium),
            label: trimmed(raw.label),
            title: trimmed(raw.title),
            body: body.to_owned(),
            existing_code: raw.existing_code,
            improved_code: raw.improved_code,
            fingerprint,
            carried: false,
        },
        moved,
    })
}

fn trimmed(text: Option<String>) -> Option<String> {
    text.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty())
}

/// The files' paths, looked up once per review rather than scanned once per suggestion: a PR of
/// thousands of files and an answer of hundreds of suggestions would otherwise cost their
/// product.
struct FileIndex<'f> {
    /// The first file of each path (and of each old path of a rename).
    by_path: HashMap<&'f str, usize>,
    by_old_path: HashMap<&'f str, usize>,
    /// Files by their last path component, in order: only those can end like a wanted path.
    by_name: HashMap<&'f str, Vec<usize>>,
    components: Vec<Vec<&'f str>>,
}

impl<'f> FileIndex<'f> {
    fn of(files: &'f [FileDiff<'_>]) -> Self {
        let mut index = Self {
            by_path: HashMap::new(),
            by_old_path: HashMap::new(),
            by_name: HashMap::new(),
            components: Vec::with_capacity(files.len()),
        };
        for (at, file) in files.iter().enumerate() {
            index.by_path.entry(file.path.as_ref()).or_insert(at);
            if let Some(old) = file.old_path.as_deref() {
                index.by_old_path.entry(old).or_insert(at);
            }
            let components = path_components(&file.path);
            if let Some(name) = components.last() {
                index.by_name.entry(name).or_default().push(at);
            }
            index.components.push(components);
        }
        index
    }
}

/// The index in `files` of the file the model meant by `path`.
fn match_file(path: &str, files: &FileIndex<'_>) -> Option<usize> {
    if let Some(&index) = files.by_path.get(path) {
        return Some(index);
    }
    let components = path_components(path);
    let plain = components.join("/");
    // `a/` and `b/` are git's prefixes, but also possible directory names: a path that exists
    // as written wins over one with the prefix stripped.
    let unprefixed = match components.as_slice() {
        [first, rest @ ..] if !rest.is_empty() && (*first == "a" || *first == "b") => Some(rest.join("/")),
        _ => None,
    };
    let spellings = std::iter::once(plain.as_str()).chain(unprefixed.as_deref());
    for spelling in spellings {
        if let Some(&index) = files.by_path.get(spelling) {
            return Some(index);
        }
        // Lines in a renamed file are in its new numbering whichever name the model used.
        if let Some(&index) = files.by_old_path.get(spelling) {
            return Some(index);
        }
    }
    unique_suffix_match(&components, files)
}

/// A path's components, whatever the separators, leading `/` or `./`.
fn path_components(path: &str) -> Vec<&str> {
    path.trim()
        .split(['/', '\\'])
        .filter(|c| !c.is_empty() && *c != ".")
        .collect()
}

/// The file whose path ends with the model's (a shortened path) or whose path the model's ends
/// with (a path from some other root), if exactly one matches on the most components.
fn unique_suffix_match(wanted: &[&str], files: &FileIndex<'_>) -> Option<usize> {
    let candidates = files.by_name.get(wanted.last()?)?;
    let mut best: Option<(usize, usize)> = None;
    let mut tied = false;
    for &index in candidates {
        let have = &files.components[index];
        if !(have.ends_with(wanted) || wanted.ends_with(have)) {
            continue;
        }
        let score = have.len().min(wanted.len());
        match best {
            Some((_, top)) if score < top => {}
            Some((_, top)) if score == top => tied = true,
            _ => {
                best = Some((index, score));
                tied = false;
            }
        }
    }
    if tied { None } else { best.map(|(index, _)| index) }
}

/// The lines to attach the suggestion to, and whether they differ from the model's choice
/// (beyond shrinking its range).
fn place_lines(raw: &RawSuggestion, added: &AddedLines<'_>) -> Option<(u32, u32, bool)> {
    let start = raw.line_start;
    let end = raw.line_end.filter(|&end| end >= start).unwrap_or(start);
    let (low, high) = (to_line(start), to_line(end));
    if let Some(&first) = added.changed.range(low..=high).next() {
        let mut last = first;
        // `last < high` keeps the next line within u32.
        while last < high && added.changed.contains(&last.saturating_add(1)) {
            last = last.saturating_add(1);
        }
        return Some((first, last, false));
    }
    if let Some((first, last)) = quoted_lines(raw.existing_code.as_deref(), added, start, end) {
        return Some((first, last, true));
    }
    nearest_changed(&added.changed, start, end, low, high).map(|line| (line, line, true))
}

/// Clamps a model's line number into the diff's domain; line 0 never exists, so a negative or
/// zero line simply matches nothing.
fn to_line(line: i64) -> u32 {
    u32::try_from(line.clamp(0, i64::from(u32::MAX))).unwrap_or(u32::MAX)
}

fn distance(line: u32, start: i64, end: i64) -> i64 {
    let line = i64::from(line);
    if line < start {
        start.saturating_sub(line)
    } else if line > end {
        line.saturating_sub(end)
    } else {
        0
    }
}

/// The added lines that `existing_code` quotes: its first non-blank line, extended over the
/// following lines as long as they match too.
fn quoted_lines(existing_code: Option<&str>, added: &AddedLines<'_>, start: i64, end: i64) -> Option<(u32, u32)> {
    let mut wanted: Vec<&str> = existing_code?
        .lines()
        .map(str::trim)
        .skip_while(|line| line.is_empty())
        .collect();
    while wanted.last().is_some_and(|line| line.is_empty()) {
        wanted.pop();
    }
    let (first_text, rest) = wanted.split_first()?;
    // Short lines (`}`) recur; the occurrence nearest the model's lines is the one it meant.
    let first = added
        .text
        .iter()
        .filter(|(_, added)| added.text.trim() == *first_text)
        .map(|(&line, _)| line)
        .min_by_key(|&line| (distance(line, start, end), line))?;
    let mut last = first;
    for expected in rest {
        let Some(next) = last.checked_add(1) else {
            break;
        };
        match added.text.get(&next) {
            Some(added) if added.text.trim() == *expected => last = next,
            _ => break,
        }
    }
    Some((first, last))
}

/// The changed line within [`NEAR_LINES`] of the range, the earlier one on a tie.
fn nearest_changed(changed: &BTreeSet<u32>, start: i64, end: i64, low: u32, high: u32) -> Option<u32> {
    let before = changed.range(..low).next_back().copied();
    let after = changed.range((Bound::Excluded(high), Bound::Unbounded)).next().copied();
    [before, after]
        .into_iter()
        .flatten()
        .map(|line| (distance(line, start, end), line))
        .filter(|&(gap, _)| gap <= NEAR_LINES)
        .min()
        .map(|(_, line)| line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::{FileStatus, Hunk};
    use proptest::prelude::*;

    /// A modified file whose diff added `added` (line, text), one hunk per run of consecutive
    /// lines; it also removed a line, which must never count as changed. Bodies are leaked: a
    /// test's few bytes.
    fn file(path: &str, added: &[(u32, &str)]) -> FileDiff<'static> {
        let mut hunks = vec![Hunk::new("@@ -1,1 +1,0 @@\n-removed\n")];
        let mut at = 0;
        while at < added.len() {
            let mut end = at + 1;
            while end < added.len() && added[end - 1].0.checked_add(1) == Some(added[end].0) {
                end += 1;
            }
            let body: String = added[at..end].iter().map(|(_, text)| format!("+{text}\n")).collect();
            let text = format!("@@ -1,0 +{},{} @@\n{body}", added[at].0, end - at);
            hunks.push(Hunk::new(Box::leak(text.into_boxed_str())));
            at = end;
        }
        FileDiff {
            path: path.to_owned().into(),
            old_path: None,
            status: FileStatus::Modified,
            binary: false,
            damaged: false,
            hunks,
        }
    }

    fn lines(path: &str, numbers: &[u32]) -> FileDiff<'static> {
        let added: Vec<(u32, &str)> = numbers.iter().map(|&n| (n, "x")).collect();
        file(path, &added)
    }

    fn raw(path: &str, start: i64, end: Option<i64>) -> RawSuggestion {
        RawSuggestion {
            file: path.into(),
            line_start: start,
            line_end: end,
            severity: Some(Severity::High),
            label: None,
            title: None,
            body: "Fix this.".into(),
            existing_code: None,
            improved_code: None,
        }
    }

    fn with_body(body: &str, severity: Option<Severity>) -> RawSuggestion {
        RawSuggestion {
            body: body.into(),
            severity,
            ..raw("src/lib.rs", 10, None)
        }
    }

    fn no_limits() -> ReviewOptions {
        ReviewOptions::default()
    }

    /// Where each suggestion ended up: (file, start, end).
    fn spots(anchored: &Anchored) -> Vec<(&str, u32, u32)> {
        anchored
            .suggestions
            .iter()
            .map(|s| (s.file.as_str(), s.line_start, s.line_end))
            .collect()
    }

    fn anchor_one(suggestion: RawSuggestion, files: &[FileDiff<'_>]) -> Option<(String, u32, u32)> {
        let anchored = anchor(vec![suggestion], files, &no_limits());
        anchored
            .suggestions
            .first()
            .map(|s| (s.file.clone(), s.line_start, s.line_end))
    }

    #[test]
    fn a_suggestion_on_changed_lines_passes_with_all_its_fields() {
        let files = [lines("src/lib.rs", &[10, 11, 12])];
        let suggestion = RawSuggestion {
            label: Some("bug".into()),
            title: Some("Off by one".into()),
            existing_code: Some("x".into()),
            improved_code: Some("y".into()),
            ..raw("src/lib.rs", 10, Some(11))
        };
        let anchored = anchor(vec![suggestion], &files, &no_limits());
        assert_eq!(
            anchored,
            Anchored {
                suggestions: vec![Suggestion {
                    file: "src/lib.rs".into(),
                    line_start: 10,
                    line_end: 11,
                    severity: Severity::High,
                    label: Some("bug".into()),
                    title: Some("Off by one".into()),
                    body: "Fix this.".into(),
                    existing_code: Some("x".into()),
                    improved_code: Some("y".into()),
                    fingerprint: Some(fingerprint("src/lib.rs", &files[0].hunks[1])),
                    carried: false,
                }],
                dropped: 0,
                reanchored: 0,
            }
        );
    }

    #[test]
    fn each_suggestion_carries_the_fingerprint_of_the_hunk_its_first_line_is_in() {
        // Hunks: [0] removes a line, [1] adds 10..=12, [2] adds 20..=21.
        let files = [lines("src/lib.rs", &[10, 11, 12, 20, 21])];
        let first = fingerprint("src/lib.rs", &files[0].hunks[1]);
        let second = fingerprint("src/lib.rs", &files[0].hunks[2]);
        assert_ne!(first, second);
        let anchored = anchor(
            vec![
                raw("src/lib.rs", 11, Some(12)),
                raw("src/lib.rs", 21, None),
                // Moved onto line 20, the nearest changed line.
                raw("src/lib.rs", 18, None),
            ],
            &files,
            &no_limits(),
        );
        let prints: Vec<_> = anchored
            .suggestions
            .iter()
            .map(|s| (s.line_start, s.fingerprint.as_deref()))
            .collect();
        assert_eq!(
            prints,
            [
                (11, Some(first.as_str())),
                (21, Some(second.as_str())),
                (20, Some(second.as_str()))
            ]
        );
        assert!(anchored.suggestions.iter().all(|s| !s.carried));
    }

    #[test]
    fn of_two_hunks_adding_one_line_number_the_later_names_the_suggestion() {
        // A patch series merged into one file: both commits added line 5.
        let mut file = lines("src/lib.rs", &[5]);
        file.hunks.push(Hunk::new(
            "@@ -5,0 +5,1 @@
+y
",
        ));
        let later = fingerprint("src/lib.rs", &file.hunks[2]);
        assert_ne!(later, fingerprint("src/lib.rs", &file.hunks[1]));
        let anchored = anchor(vec![raw("src/lib.rs", 5, None)], &[file], &no_limits());
        assert_eq!(anchored.suggestions[0].fingerprint, Some(later));
    }

    #[test]
    fn git_prefixes_dot_slashes_leading_slashes_and_backslashes_are_normalised() {
        let files = [lines("src/lib.rs", &[10])];
        for path in [
            "b/src/lib.rs",
            "a/src/lib.rs",
            "./src/lib.rs",
            "/src/lib.rs",
            "src\\lib.rs",
            " src//lib.rs ",
        ] {
            assert_eq!(
                anchor_one(raw(path, 10, None), &files),
                Some(("src/lib.rs".into(), 10, 10)),
                "{path}"
            );
        }
    }

    #[test]
    fn a_real_directory_named_like_a_git_prefix_is_kept() {
        let files = [lines("a/x.rs", &[1]), lines("x.rs", &[1])];
        let file_of = |path: &str| anchor_one(raw(path, 1, None), &files).map(|spot| spot.0);
        assert_eq!(file_of("a/x.rs").as_deref(), Some("a/x.rs"));
        assert_eq!(file_of("./a/x.rs").as_deref(), Some("a/x.rs"));
        assert_eq!(file_of("b/a/x.rs").as_deref(), Some("a/x.rs"));
        assert_eq!(file_of("b/x.rs").as_deref(), Some("x.rs"));
    }

    #[test]
    fn a_unique_suffix_of_the_path_is_matched_in_either_direction() {
        let files = [lines("src/deep/x.rs", &[5]), lines("src/y.rs", &[5])];
        for path in [
            "x.rs",
            "deep/x.rs",
            "/home/me/repo/src/deep/x.rs",
            "repo\\src\\deep\\x.rs",
        ] {
            assert_eq!(
                anchor_one(raw(path, 5, None), &files).map(|spot| spot.0).as_deref(),
                Some("src/deep/x.rs"),
                "{path}"
            );
        }
    }

    #[test]
    fn the_longest_suffix_match_wins_and_a_tie_is_dropped() {
        let files = [
            lines("src/mod.rs", &[1]),
            lines("tests/mod.rs", &[1]),
            lines("lib.rs", &[1]),
            lines("src/lib.rs", &[1]),
        ];
        assert_eq!(anchor_one(raw("mod.rs", 1, None), &files), None);
        let longest = anchor_one(raw("/checkout/src/lib.rs", 1, None), &files);
        assert_eq!(longest.map(|spot| spot.0).as_deref(), Some("src/lib.rs"));
    }

    #[test]
    fn a_file_outside_the_diff_is_dropped() {
        let files = [lines("src/lib.rs", &[10])];
        let anchored = anchor(
            vec![raw("src/main.rs", 10, None), raw("", 10, None)],
            &files,
            &no_limits(),
        );
        assert!(anchored.suggestions.is_empty());
        assert_eq!(anchored.dropped, 2);
    }

    #[test]
    fn a_renamed_file_named_by_its_old_path_gets_its_new_path() {
        let mut renamed = lines("src/new.rs", &[3]);
        renamed.old_path = Some("src/old.rs".into());
        renamed.status = FileStatus::Renamed;
        let spot = anchor_one(raw("b/src/old.rs", 3, None), &[renamed]);
        assert_eq!(spot, Some(("src/new.rs".into(), 3, 3)));
    }

    #[test]
    fn a_range_shrinks_to_the_run_of_changed_lines_that_starts_inside_it() {
        let files = [lines("f.rs", &[10, 11, 12, 15, 16])];
        let at = |start, end| anchor_one(raw("f.rs", start, Some(end)), &files).map(|s| (s.1, s.2));
        assert_eq!(at(9, 16), Some((10, 12)));
        assert_eq!(at(11, 20), Some((11, 12)));
        assert_eq!(at(12, 15), Some((12, 12)));
        assert_eq!(at(13, 16), Some((15, 16)));
        assert_eq!(at(10, 11), Some((10, 11)));
    }

    #[test]
    fn shrinking_a_range_is_not_counted_as_reanchoring() {
        let files = [lines("f.rs", &[10, 11])];
        let anchored = anchor(vec![raw("f.rs", 8, Some(20))], &files, &no_limits());
        assert_eq!(spots(&anchored), vec![("f.rs", 10, 11)]);
        assert_eq!(anchored.reanchored, 0);
    }

    #[test]
    fn a_missing_or_inverted_line_end_becomes_the_start_line() {
        let files = [lines("f.rs", &[10, 11, 12])];
        assert_eq!(anchor_one(raw("f.rs", 11, None), &files), Some(("f.rs".into(), 11, 11)));
        assert_eq!(
            anchor_one(raw("f.rs", 11, Some(3)), &files),
            Some(("f.rs".into(), 11, 11))
        );
    }

    #[test]
    fn a_misplaced_suggestion_moves_to_the_added_lines_its_existing_code_quotes() {
        let files = [file(
            "f.rs",
            &[
                (20, "    let x = compute();"),
                (21, "    x + 1"),
                (22, "}"),
                (40, "other"),
            ],
        )];
        let suggestion = RawSuggestion {
            existing_code: Some("\n  let x = compute();\n x + 1   \nnot in the diff\n".into()),
            ..raw("f.rs", 3, Some(4))
        };
        let anchored = anchor(vec![suggestion], &files, &no_limits());
        assert_eq!(spots(&anchored), vec![("f.rs", 20, 21)]);
        assert_eq!((anchored.reanchored, anchored.dropped), (1, 0));
    }

    #[test]
    fn a_line_quoted_several_times_anchors_to_the_occurrence_nearest_the_model_s_lines() {
        let files = [file("f.rs", &[(10, "}"), (30, "}"), (31, "fn next() {")])];
        let suggestion = RawSuggestion {
            existing_code: Some("}".into()),
            ..raw("f.rs", 50, None)
        };
        assert_eq!(anchor_one(suggestion, &files), Some(("f.rs".into(), 30, 30)));
    }

    #[test]
    fn existing_code_that_matches_nothing_falls_back_to_the_nearest_changed_line() {
        let files = [file("f.rs", &[(10, "a"), (11, "b")])];
        let suggestion = RawSuggestion {
            existing_code: Some("not there".into()),
            ..raw("f.rs", 13, None)
        };
        let anchored = anchor(vec![suggestion], &files, &no_limits());
        assert_eq!(spots(&anchored), vec![("f.rs", 11, 11)]);
        assert_eq!(anchored.reanchored, 1);
    }

    #[test]
    fn a_changed_line_within_three_lines_becomes_the_anchor_and_a_tie_goes_to_the_earlier() {
        let files = [lines("f.rs", &[10, 16])];
        let at = |start, end| anchor_one(raw("f.rs", start, end), &files).map(|s| (s.1, s.2));
        assert_eq!(at(13, None), Some((10, 10)));
        assert_eq!(at(14, None), Some((16, 16)));
        assert_eq!(at(6, Some(7)), Some((10, 10)));
        assert_eq!(at(12, Some(14)), Some((10, 10)));
        assert_eq!(at(20, None), None);
        assert_eq!(at(5, None), None);
    }

    #[test]
    fn a_suggestion_on_context_or_removed_lines_far_from_any_addition_is_dropped() {
        let mut with_context = lines("f.rs", &[50]);
        with_context.hunks.push(Hunk::new("@@ -5,1 +5,1 @@\n context\n"));
        let suggestion = RawSuggestion {
            existing_code: Some("context".into()),
            ..raw("f.rs", 5, None)
        };
        let anchored = anchor(vec![suggestion], &[with_context], &no_limits());
        assert!(anchored.suggestions.is_empty());
        assert_eq!((anchored.dropped, anchored.reanchored), (1, 0));
    }

    #[test]
    fn removed_and_binary_files_take_no_suggestions() {
        let mut removed = file("gone.rs", &[]);
        removed.status = FileStatus::Removed;
        let binary = FileDiff {
            path: "logo.png".into(),
            old_path: None,
            status: FileStatus::Added,
            binary: true,
            damaged: false,
            hunks: Vec::new(),
        };
        let anchored = anchor(
            vec![raw("gone.rs", 1, None), raw("logo.png", 1, None)],
            &[removed, binary],
            &no_limits(),
        );
        assert!(anchored.suggestions.is_empty());
        assert_eq!(anchored.dropped, 2);
    }

    #[test]
    fn absurd_line_numbers_are_handled_without_panicking() {
        let files = [lines("f.rs", &[1, 2, u32::MAX])];
        assert_eq!(anchor_one(raw("f.rs", -1, None), &files).map(|s| s.1), Some(1));
        assert_eq!(anchor_one(raw("f.rs", -50, Some(-40)), &files), None);
        assert_eq!(
            anchor_one(raw("f.rs", 0, Some(i64::MAX)), &files).map(|s| (s.1, s.2)),
            Some((1, 2))
        );
        assert_eq!(
            anchor_one(raw("f.rs", i64::MAX, None), &files).map(|s| s.1),
            Some(u32::MAX)
        );
        assert_eq!(anchor_one(raw("f.rs", i64::MIN, Some(i64::MIN)), &files), None);
    }

    #[test]
    fn a_missing_severity_becomes_medium() {
        let files = [lines("src/lib.rs", &[10])];
        let anchored = anchor(vec![with_body("b", None)], &files, &no_limits());
        assert_eq!(anchored.suggestions[0].severity, Severity::Medium);
    }

    #[test]
    fn suggestions_below_the_minimum_severity_are_dropped() {
        let files = [lines("src/lib.rs", &[10])];
        let options = ReviewOptions {
            min_severity: Some(Severity::Medium),
            ..ReviewOptions::default()
        };
        let anchored = anchor(
            vec![
                with_body("low", Some(Severity::Low)),
                with_body("defaulted", None),
                with_body("critical", Some(Severity::Critical)),
            ],
            &files,
            &options,
        );
        let bodies: Vec<&str> = anchored.suggestions.iter().map(|s| s.body.as_str()).collect();
        assert_eq!(bodies, ["critical", "defaulted"]);
        assert_eq!(anchored.dropped, 1);
    }

    #[test]
    fn suggestions_are_ordered_most_severe_first_keeping_the_model_s_order_otherwise() {
        let files = [lines("src/lib.rs", &[10])];
        let anchored = anchor(
            vec![
                with_body("low 1", Some(Severity::Low)),
                with_body("high 1", Some(Severity::High)),
                with_body("low 2", Some(Severity::Low)),
                with_body("critical", Some(Severity::Critical)),
                with_body("high 2", Some(Severity::High)),
            ],
            &files,
            &no_limits(),
        );
        let bodies: Vec<&str> = anchored.suggestions.iter().map(|s| s.body.as_str()).collect();
        assert_eq!(bodies, ["critical", "high 1", "high 2", "low 1", "low 2"]);
    }

    #[test]
    fn exact_duplicates_are_dropped_keeping_the_most_severe() {
        let files = [lines("src/lib.rs", &[10, 11])];
        let moved_onto_the_same_line = RawSuggestion {
            body: "same".into(),
            ..raw("b/src/lib.rs", 12, None)
        };
        let anchored = anchor(
            vec![
                with_body("same", Some(Severity::Low)),
                with_body("  same\n", Some(Severity::Critical)),
                with_body("different", Some(Severity::Low)),
                RawSuggestion {
                    body: "same".into(),
                    ..raw("src/lib.rs", 11, None)
                },
                moved_onto_the_same_line,
            ],
            &files,
            &no_limits(),
        );
        let kept: Vec<(&str, u32, Severity)> = anchored
            .suggestions
            .iter()
            .map(|s| (s.body.as_str(), s.line_start, s.severity))
            .collect();
        assert_eq!(
            kept,
            [
                ("same", 10, Severity::Critical),
                ("same", 11, Severity::High),
                ("different", 10, Severity::Low),
            ]
        );
        assert_eq!(anchored.dropped, 2);
    }

    #[test]
    fn max_suggestions_keeps_the_most_severe_and_zero_keeps_none() {
        let files = [lines("src/lib.rs", &[10])];
        let raws = || {
            vec![
                with_body("low", Some(Severity::Low)),
                with_body("critical", Some(Severity::Critical)),
                with_body("medium", Some(Severity::Medium)),
            ]
        };
        let limit = |max| ReviewOptions {
            max_suggestions: max,
            ..ReviewOptions::default()
        };
        let two = anchor(raws(), &files, &limit(Some(2)));
        let bodies: Vec<&str> = two.suggestions.iter().map(|s| s.body.as_str()).collect();
        assert_eq!((bodies, two.dropped), (vec!["critical", "medium"], 1));
        let none = anchor(raws(), &files, &limit(Some(0)));
        assert_eq!((none.suggestions.len(), none.dropped), (0, 3));
        assert_eq!(anchor(raws(), &files, &limit(None)).suggestions.len(), 3);
    }

    #[test]
    fn reanchored_counts_only_suggestions_that_are_kept() {
        let files = [lines("src/lib.rs", &[10])];
        let options = ReviewOptions {
            max_suggestions: Some(1),
            ..ReviewOptions::default()
        };
        let moved = RawSuggestion {
            severity: Some(Severity::Low),
            ..raw("src/lib.rs", 12, None)
        };
        let anchored = anchor(vec![moved, with_body("b", Some(Severity::High))], &files, &options);
        assert_eq!((anchored.reanchored, anchored.dropped), (0, 1));
    }

    #[test]
    fn bodies_and_titles_are_trimmed_and_a_blank_body_is_dropped() {
        let files = [lines("src/lib.rs", &[10])];
        let anchored = anchor(
            vec![
                RawSuggestion {
                    title: Some("  Title \n".into()),
                    label: Some("   ".into()),
                    ..with_body("\n  Body.  \n", None)
                },
                RawSuggestion {
                    title: Some(" ".into()),
                    ..with_body("   \n\t", None)
                },
            ],
            &files,
            &no_limits(),
        );
        assert_eq!(anchored.suggestions.len(), 1);
        let kept = &anchored.suggestions[0];
        assert_eq!(
            (kept.body.as_str(), kept.title.as_deref(), kept.label.as_deref()),
            ("Body.", Some("Title"), None)
        );
        assert_eq!(anchored.dropped, 1);
    }

    #[test]
    fn a_suggestion_on_a_later_section_of_a_path_anchors() {
        // `git log -p`: the same file twice, the second commit's lines far from the first's.
        let text = "--- a/src/a.rs\n+++ b/src/a.rs\n@@ -1 +1,2 @@\n a\n+b\n\
                    --- a/src/a.rs\n+++ b/src/a.rs\n@@ -40 +40,2 @@\n x\n+y.unwrap()\n";
        let files = crate::diff::parse_unified(text).unwrap();
        assert_eq!(
            anchor_one(raw("src/a.rs", 41, None), &files),
            Some(("src/a.rs".into(), 41, 41))
        );
        assert_eq!(
            anchor_one(raw("src/a.rs", 2, None), &files),
            Some(("src/a.rs".into(), 2, 2))
        );
    }

    /// A diff of `files` files, each adding `added` lines in one hunk at line 10.
    fn diff_text(files: usize, added: usize) -> String {
        (0..files)
            .map(|i| {
                let lines: String = (0..added).map(|n| format!("+line {n} of {i}\n")).collect();
                format!("--- a/src/f{i}.rs\n+++ b/src/f{i}.rs\n@@ -10,0 +10,{added} @@\n{lines}")
            })
            .collect()
    }

    /// Lines read while anchoring `n` suggestions (one per file, half by a shortened path) on a
    /// diff of `n` files.
    fn anchoring_work(n: usize) -> u64 {
        let text = diff_text(n, 5);
        let files = crate::diff::parse_unified(&text).unwrap();
        let raws: Vec<RawSuggestion> = (0..n)
            .map(|i| {
                let path = if i % 2 == 0 {
                    format!("src/f{i}.rs")
                } else {
                    format!("/checkout/src/f{i}.rs")
                };
                raw(&path, 11, Some(12))
            })
            .collect();
        crate::diff::LINES_READ.with(|count| count.set(0));
        let anchored = anchor(raws, &files, &no_limits());
        assert_eq!(anchored.suggestions.len(), n);
        crate::diff::LINES_READ.with(std::cell::Cell::get)
    }

    #[test]
    fn anchoring_is_linear_in_files_and_suggestions() {
        let (small, large) = (anchoring_work(300), anchoring_work(2400));
        assert!(large <= 8 * small + 64, "{small} lines read for n, {large} for 8n");
    }

    fn any_path() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("src/a.rs".to_owned()),
            Just("b/src/a.rs".to_owned()),
            Just("a.rs".to_owned()),
            Just("lib/a.rs".to_owned()),
            Just("/abs/lib/a.rs".to_owned()),
            Just("src\\b.rs".to_owned()),
            Just(String::new()),
            "[a-z/.]{0,12}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(64),
            ..ProptestConfig::default()
        })]

        #[test]
        fn every_kept_suggestion_covers_only_lines_its_file_added(
            hunks in prop::collection::vec(
                (prop::sample::select(vec!["src/a.rs", "lib/a.rs", "src/b.rs", "a.rs"]), 1u32..60, prop::collection::vec(0u8..3, 1..12)),
                0..8,
            ),
            raws in prop::collection::vec(
                (any_path(), prop_oneof![any::<i64>(), -5i64..80], prop::option::of(prop_oneof![any::<i64>(), -5i64..80]),
                 prop::option::of(prop_oneof![Just("x"), Just("}"), Just(" l3 "), Just("l4\nl5\n"), Just("")]),
                 prop_oneof![Just("body"), Just("  "), Just("other")]),
                0..20,
            ),
            max in prop::option::of(0usize..5),
        ) {
            let text: String = hunks
                .iter()
                .map(|(path, start, kinds)| {
                    let body: String = kinds
                        .iter()
                        .enumerate()
                        .map(|(n, kind)| format!("{}l{n}\n", [" ", "+", "-"][usize::from(*kind)]))
                        .collect();
                    let old = kinds.iter().filter(|k| **k != 1).count();
                    let new = kinds.iter().filter(|k| **k != 2).count();
                    format!("--- a/{path}\n+++ b/{path}\n@@ -{start},{old} +{start},{new} @@\n{body}")
                })
                .collect();
            let files = crate::diff::parse_unified(&text).unwrap();
            let suggestions: Vec<RawSuggestion> = raws
                .into_iter()
                .map(|(file, start, end, quoted, body)| RawSuggestion {
                    existing_code: quoted.map(str::to_owned),
                    body: body.to_owned(),
                    ..raw(&file, start, end)
                })
                .collect();
            let total = suggestions.len();
            let options = ReviewOptions { max_suggestions: max, ..ReviewOptions::default() };
            let anchored = anchor(suggestions, &files, &options);
            prop_assert_eq!(anchored.dropped, total - anchored.suggestions.len());
            prop_assert!(max.is_none_or(|max| anchored.suggestions.len() <= max));
            for suggestion in &anchored.suggestions {
                let file = files.iter().find(|f| f.path == suggestion.file.as_str());
                prop_assert!(file.is_some(), "{} is not in the diff", suggestion.file);
                let changed = file.map(FileDiff::changed_lines).unwrap_or_default();
                prop_assert!(suggestion.line_start <= suggestion.line_end);
                for line in suggestion.line_start..=suggestion.line_end {
                    prop_assert!(changed.contains(&line), "{}:{} was not added", suggestion.file, line);
                }
            }
        }
    }
}
