//! Carrying a review forward between pushes of one PR: which hunks need no new review because
//! the job's `previous_result` already covered them, and which of its suggestions come back.
//!
//! The worker keeps no state: the producer echoes the last result back, and its
//! `coverage.hunks` say which hunks (by [`fingerprint`](crate::diff::fingerprint)) that review
//! read and where each started. A hunk of the new diff with a listed fingerprint is taken out of
//! what is sent; the old suggestions that point into it are moved by as many lines as the hunk
//! moved and marked `carried`. Everything else (new hunks, changed hunks, suggestions without a
//! fingerprint or whose hunk is gone) is left to the review, which sees only the rest.

use std::collections::{HashMap, HashSet, VecDeque};

use crate::contract::{HunkRef, PreviousResult, Suggestion};
use crate::diff::{FileDiff, Hunk, LineKind, hunk_ref};

/// A diff with the hunks the previous review covered taken out, and what they carry.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Carried<'a> {
    /// Every file of the diff, in its order, without its carried hunks. A file keeps its place
    /// even when no hunk is left (its [`CarriedFile`] says why).
    pub files: Vec<FileDiff<'a>>,
    /// The previous suggestions whose hunk is still in the diff, at its new lines, with the
    /// file's current path and `carried` set; in the previous result's order.
    pub suggestions: Vec<Suggestion>,
    /// The carried hunks at their new lines, in diff order: the `coverage.hunks` entries of
    /// hunks this review does not send.
    pub hunks: Vec<HunkRef>,
    /// What was carried of each file, index for index with `files`.
    pub per_file: Vec<CarriedFile>,
}

/// What was carried of one file: enough to count it as reviewed and its lines as carried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CarriedFile {
    pub hunks: usize,
    /// Added lines in the carried hunks.
    pub added_lines: usize,
}

impl Carried<'_> {
    /// Added lines not sent again (`coverage.lines_carried`).
    pub fn lines_carried(&self) -> u64 {
        self.per_file
            .iter()
            .map(|file| u64::try_from(file.added_lines).unwrap_or(u64::MAX))
            .fold(0, u64::saturating_add)
    }
}

/// Takes out of `files` the hunks `previous` covered, and brings back its suggestions on them.
///
/// - A hunk is carried when its fingerprint is among `previous.hunks`. Equal fingerprints (the
///   same lines twice in one file) are paired in order: the diff's first such hunk with the
///   first listed, and so on; a hunk left without a partner is sent.
/// - A suggestion is carried when its fingerprint is that of a carried hunk and its lines,
///   shifted by as much as that hunk moved (new start minus the listed `line`), are added lines
///   of it. Otherwise it is dropped: no fingerprint (a result of an older worker), its hunk
///   changed (the hunk is reviewed again), or an echo whose lines do not fit.
///
/// Without `previous`, or with no hunks in it, `files` come back as they are.
pub fn carry_forward<'a>(files: Vec<FileDiff<'a>>, previous: Option<&PreviousResult>) -> Carried<'a> {
    let per_file = vec![CarriedFile::default(); files.len()];
    let Some(previous) = previous.filter(|previous| !previous.hunks.is_empty()) else {
        return Carried {
            files,
            per_file,
            ..Carried::default()
        };
    };
    let mut listed: HashMap<&str, VecDeque<u32>> = HashMap::new();
    for hunk in &previous.hunks {
        listed
            .entry(hunk.fingerprint.as_str())
            .or_default()
            .push_back(hunk.line);
    }
    // Only hunks a suggestion may point into need their added lines kept.
    let pointed: HashSet<&str> = previous
        .suggestions
        .iter()
        .filter_map(|suggestion| suggestion.fingerprint.as_deref())
        .collect();

    let mut carried = Carried {
        files: Vec::with_capacity(files.len()),
        per_file,
        ..Carried::default()
    };
    let mut matches: HashMap<String, Vec<Match>> = HashMap::new();
    for (at, mut file) in files.into_iter().enumerate() {
        let mut sent = Vec::with_capacity(file.hunks.len());
        for hunk in std::mem::take(&mut file.hunks) {
            let entry = hunk_ref(&file.path, &hunk);
            let Some(old_line) = listed.get_mut(entry.fingerprint.as_str()).and_then(VecDeque::pop_front) else {
                sent.push(hunk);
                continue;
            };
            let added = added_lines(&hunk);
            if let Some(counts) = carried.per_file.get_mut(at) {
                counts.hunks = counts.hunks.saturating_add(1);
                counts.added_lines = counts.added_lines.saturating_add(added.len());
            }
            if pointed.contains(entry.fingerprint.as_str()) {
                matches.entry(entry.fingerprint.clone()).or_default().push(Match {
                    file: at,
                    old_line,
                    new_line: entry.line,
                    added,
                });
            }
            carried.hunks.push(entry);
        }
        file.hunks = sent;
        carried.files.push(file);
    }

    for suggestion in &previous.suggestions {
        let Some(candidates) = suggestion.fingerprint.as_deref().and_then(|print| matches.get(print)) else {
            continue;
        };
        // Of equal hunks, the one whose old lines held the suggestion: their new places do not
        // overlap, so at most one fits.
        let placed = candidates
            .iter()
            .find_map(|candidate| candidate.place(suggestion).map(|lines| (candidate.file, lines)));
        if let Some((at, (line_start, line_end))) = placed
            && let Some(file) = carried.files.get(at)
        {
            carried.suggestions.push(Suggestion {
                file: file.path.clone().into_owned(),
                line_start,
                line_end,
                carried: true,
                ..suggestion.clone()
            });
        }
    }
    carried
}

/// A hunk of the new diff paired with one the previous result listed.
#[derive(Debug)]
struct Match {
    /// Index in the diff's files.
    file: usize,
    old_line: u32,
    new_line: u32,
    /// New-file numbers of the hunk's added lines, ascending.
    added: Vec<u32>,
}

impl Match {
    /// The suggestion's lines moved into this hunk, if they are all added lines of it.
    fn place(&self, suggestion: &Suggestion) -> Option<(u32, u32)> {
        let start = self.shift(suggestion.line_start)?;
        let end = self.shift(suggestion.line_end)?;
        let first = self.added.binary_search(&start).ok()?;
        let last = self.added.binary_search(&end).ok()?;
        // Added lines are distinct and ascending, so the range is all added when as many of
        // them lie between its ends as it has lines.
        let between = u64::try_from(last.checked_sub(first)?).ok()?;
        (u64::from(end.checked_sub(start)?) == between).then_some((start, end))
    }

    fn shift(&self, line: u32) -> Option<u32> {
        let moved = i64::from(line)
            .checked_sub(i64::from(self.old_line))?
            .checked_add(i64::from(self.new_line))?;
        u32::try_from(moved).ok().filter(|&line| line >= 1)
    }
}

fn added_lines(hunk: &Hunk<'_>) -> Vec<u32> {
    hunk.lines()
        .filter(|line| line.kind == LineKind::Added)
        .filter_map(|line| line.new_line)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anchor::anchor;
    use crate::answer::RawSuggestion;
    use crate::contract::{ReviewOptions, Severity, parse_job};
    use crate::diff::{fingerprint, parse_unified};

    const FIRST_PUSH: &str = "\
--- a/src/lib.rs
+++ b/src/lib.rs
@@ -10,3 +10,4 @@ fn main() {
     let a = 1;
+    let b = a.unwrap();
     let c = 3;
 }
@@ -40,2 +41,3 @@ fn other() {
     let x = 1;
+    let y = x + 1;
 }
";

    fn raw(path: &str, line: i64, body: &str) -> RawSuggestion {
        RawSuggestion {
            file: path.into(),
            line_start: line,
            line_end: None,
            severity: Some(Severity::High),
            label: None,
            title: None,
            body: body.into(),
            existing_code: None,
            improved_code: None,
        }
    }

    /// What the worker would have published for `diff` with these suggestions: anchored
    /// suggestions (fingerprinted) and every hunk in `coverage.hunks`.
    fn reviewed(diff: &str, suggestions: Vec<RawSuggestion>) -> PreviousResult {
        let files = parse_unified(diff).unwrap();
        let anchored = anchor(suggestions, &files, &ReviewOptions::default());
        assert!(anchored.suggestions.iter().all(|s| s.fingerprint.is_some()));
        PreviousResult {
            suggestions: anchored.suggestions,
            hunks: files
                .iter()
                .flat_map(|file| file.hunks.iter().map(|hunk| hunk_ref(&file.path, hunk)))
                .collect(),
        }
    }

    fn spots(carried: &Carried<'_>) -> Vec<(String, u32, u32, String)> {
        carried
            .suggestions
            .iter()
            .map(|s| (s.file.clone(), s.line_start, s.line_end, s.body.clone()))
            .collect()
    }

    fn sent_headers(carried: &Carried<'_>) -> Vec<Vec<String>> {
        carried
            .files
            .iter()
            .map(|file| file.hunks.iter().map(Hunk::header).collect())
            .collect()
    }

    #[test]
    fn an_unchanged_hunk_is_not_sent_again_and_its_suggestion_comes_back_carried() {
        let previous = reviewed(FIRST_PUSH, vec![raw("src/lib.rs", 11, "unwrap panics")]);
        // The second push changes only the second hunk.
        let second = FIRST_PUSH.replace("x + 1", "x + 2");
        let files = parse_unified(&second).unwrap();
        let carried = carry_forward(files, Some(&previous));
        assert_eq!(sent_headers(&carried), [["@@ -40,2 +41,3 @@ fn other() {"]]);
        assert_eq!(spots(&carried), [("src/lib.rs".into(), 11, 11, "unwrap panics".into())]);
        let suggestion = &carried.suggestions[0];
        assert!(suggestion.carried);
        assert_eq!(suggestion.fingerprint, previous.suggestions[0].fingerprint);
        assert_eq!(suggestion.severity, Severity::High);
        assert_eq!(carried.hunks, previous.hunks[..1]);
        assert_eq!(
            carried.per_file,
            [CarriedFile {
                hunks: 1,
                added_lines: 1
            }]
        );
        assert_eq!(carried.lines_carried(), 1);
    }

    #[test]
    fn a_changed_hunk_is_sent_again_and_its_old_suggestion_is_dropped() {
        let previous = reviewed(
            FIRST_PUSH,
            vec![
                raw("src/lib.rs", 11, "unwrap panics"),
                raw("src/lib.rs", 42, "overflow"),
            ],
        );
        let second = FIRST_PUSH.replace("x + 1", "x.checked_add(1)");
        let carried = carry_forward(parse_unified(&second).unwrap(), Some(&previous));
        assert_eq!(sent_headers(&carried), [["@@ -40,2 +41,3 @@ fn other() {"]]);
        assert_eq!(spots(&carried), [("src/lib.rs".into(), 11, 11, "unwrap panics".into())]);
        // A changed context line is a changed hunk too.
        let second = FIRST_PUSH.replace("let c = 3;", "let c = 4;");
        let carried = carry_forward(parse_unified(&second).unwrap(), Some(&previous));
        assert_eq!(sent_headers(&carried), [["@@ -10,3 +10,4 @@ fn main() {"]]);
        assert_eq!(spots(&carried), [("src/lib.rs".into(), 42, 42, "overflow".into())]);
    }

    #[test]
    fn a_hunk_that_moved_is_carried_and_its_suggestion_follows_it() {
        let previous = reviewed(FIRST_PUSH, vec![raw("src/lib.rs", 42, "overflow")]);
        // Five lines added near the top move the second hunk down by five.
        let second = FIRST_PUSH
            .replace(
                "--- a/src/lib.rs\n+++ b/src/lib.rs\n",
                "--- a/src/lib.rs\n+++ b/src/lib.rs\n@@ -1,1 +1,6 @@\n use std::fmt;\n+a\n+b\n+c\n+d\n+e\n",
            )
            .replace("@@ -10,3 +10,4 @@", "@@ -10,3 +15,4 @@")
            .replace("@@ -40,2 +41,3 @@", "@@ -40,2 +46,3 @@");
        let carried = carry_forward(parse_unified(&second).unwrap(), Some(&previous));
        assert_eq!(sent_headers(&carried), [["@@ -1,1 +1,6 @@"]]);
        assert_eq!(spots(&carried), [("src/lib.rs".into(), 47, 47, "overflow".into())]);
        let lines: Vec<u32> = carried.hunks.iter().map(|hunk| hunk.line).collect();
        assert_eq!(lines, [15, 46], "the carried hunks at their new lines");
        assert_eq!(
            carried.per_file,
            [CarriedFile {
                hunks: 2,
                added_lines: 2
            }]
        );
    }

    #[test]
    fn without_a_previous_result_or_its_hunks_the_diff_is_sent_as_it_is() {
        let files = parse_unified(FIRST_PUSH).unwrap();
        let identity = Carried {
            files: files.clone(),
            per_file: vec![CarriedFile::default()],
            ..Carried::default()
        };
        assert_eq!(carry_forward(files.clone(), None), identity);
        // A result of a worker before coverage: suggestions, but no hunks and no fingerprints.
        let mut older = reviewed(FIRST_PUSH, vec![raw("src/lib.rs", 11, "unwrap panics")]);
        older.hunks.clear();
        older.suggestions[0].fingerprint = None;
        assert_eq!(carry_forward(files.clone(), Some(&older)), identity);
        assert_eq!(carry_forward(files, Some(&PreviousResult::default())), identity);
    }

    #[test]
    fn a_suggestion_without_a_fingerprint_is_dropped_though_its_hunk_is_carried() {
        let mut previous = reviewed(FIRST_PUSH, vec![raw("src/lib.rs", 11, "unwrap panics")]);
        previous.suggestions[0].fingerprint = None;
        let carried = carry_forward(parse_unified(FIRST_PUSH).unwrap(), Some(&previous));
        assert!(carried.suggestions.is_empty());
        assert_eq!(carried.hunks.len(), 2);
    }

    #[test]
    fn a_file_whose_hunks_are_all_carried_keeps_its_place_with_no_hunks() {
        let diff = format!("{FIRST_PUSH}--- a/src/new.rs\n+++ b/src/new.rs\n@@ -1 +1,2 @@\n a\n+b\n");
        let previous = reviewed(FIRST_PUSH, vec![]);
        let carried = carry_forward(parse_unified(&diff).unwrap(), Some(&previous));
        let files: Vec<(&str, usize)> = carried
            .files
            .iter()
            .map(|file| (file.path.as_ref(), file.hunks.len()))
            .collect();
        assert_eq!(files, [("src/lib.rs", 0), ("src/new.rs", 1)]);
        assert_eq!(carried.files[0].added_line_count(), 0);
        assert_eq!(
            carried.per_file,
            [
                CarriedFile {
                    hunks: 2,
                    added_lines: 2
                },
                CarriedFile::default()
            ]
        );
    }

    #[test]
    fn identical_hunks_in_one_file_are_paired_in_order_and_each_keeps_its_suggestion() {
        let twice = "\
--- a/src/lib.rs
+++ b/src/lib.rs
@@ -10,2 +10,3 @@
 x
+dup();
 y
@@ -30,2 +31,3 @@
 x
+dup();
 y
";
        let previous = reviewed(
            twice,
            vec![raw("src/lib.rs", 11, "first"), raw("src/lib.rs", 32, "second")],
        );
        assert_eq!(previous.hunks[0].fingerprint, previous.hunks[1].fingerprint);
        // Both move down by three; a third copy appears further down.
        let moved = twice.replace("+10,3", "+13,3").replace("+31,3", "+34,3") + "@@ -60,2 +64,3 @@\n x\n+dup();\n y\n";
        let carried = carry_forward(parse_unified(&moved).unwrap(), Some(&previous));
        assert_eq!(
            spots(&carried),
            [
                ("src/lib.rs".into(), 14, 14, "first".into()),
                ("src/lib.rs".into(), 35, 35, "second".into())
            ]
        );
        assert_eq!(
            sent_headers(&carried),
            [["@@ -60,2 +64,3 @@"]],
            "the unpaired copy is sent"
        );
        // The result listed one copy, the diff has two: the first is carried, the second sent.
        let mut one = previous.clone();
        one.hunks.truncate(1);
        let carried = carry_forward(parse_unified(twice).unwrap(), Some(&one));
        assert_eq!(sent_headers(&carried), [["@@ -30,2 +31,3 @@"]]);
        assert_eq!(spots(&carried), [("src/lib.rs".into(), 11, 11, "first".into())]);
    }

    #[test]
    fn a_suggestion_whose_shifted_lines_leave_the_added_lines_of_its_hunk_is_dropped() {
        let previous = reviewed(FIRST_PUSH, vec![raw("src/lib.rs", 11, "unwrap panics")]);
        let files = parse_unified(FIRST_PUSH).unwrap();
        for (start, end) in [(10, 10), (11, 12), (12, 11), (1, 1), (u32::MAX, u32::MAX)] {
            let mut echoed = previous.clone();
            echoed.suggestions[0].line_start = start;
            echoed.suggestions[0].line_end = end;
            let carried = carry_forward(files.clone(), Some(&echoed));
            assert!(carried.suggestions.is_empty(), "{start}..={end}");
            assert_eq!(carried.hunks.len(), 2, "the hunks are carried all the same");
        }
        // A listed line far from the truth moves the suggestion out of its hunk.
        let mut echoed = previous.clone();
        echoed.hunks[0].line = 1;
        assert!(carry_forward(files.clone(), Some(&echoed)).suggestions.is_empty());
        // A range over a context line is not all added lines.
        let gap = "--- a/a\n+++ b/a\n@@ -1,1 +1,3 @@\n+x\n y\n+z\n";
        let mut echoed = reviewed(gap, vec![raw("a", 1, "x")]);
        echoed.suggestions[0].line_end = 3;
        assert!(
            carry_forward(parse_unified(gap).unwrap(), Some(&echoed))
                .suggestions
                .is_empty()
        );
        echoed.suggestions[0].line_end = 1;
        assert_eq!(
            carry_forward(parse_unified(gap).unwrap(), Some(&echoed))
                .suggestions
                .len(),
            1
        );
    }

    #[test]
    fn the_contract_example_of_a_second_push_carries_its_suggestion_and_sends_only_the_new_hunk() {
        let job = parse_job(
            include_bytes!("../../../docs/contract/examples/job-with-previous-result.json"),
            1 << 20,
        )
        .unwrap();
        let files = parse_unified(&job.diff).unwrap();
        assert_eq!(
            job.previous_result.as_ref().unwrap().hunks[0].fingerprint,
            fingerprint("src/refund.rs", &files[0].hunks[0]),
            "the example's fingerprint is the one the worker computes"
        );
        let carried = carry_forward(files, job.previous_result.as_ref());
        assert_eq!(
            sent_headers(&carried),
            [["@@ -20,3 +24,6 @@ pub fn refund_currency(v: &Value) -> &str {"]]
        );
        assert_eq!(carried.suggestions.len(), 1);
        assert_eq!(
            (carried.suggestions[0].line_start, carried.suggestions[0].carried),
            (4, true)
        );
        assert_eq!(carried.lines_carried(), 5);
    }
}
