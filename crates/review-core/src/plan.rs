//! Splitting a PR into review calls: which files and hunks each call carries, and what the
//! review will cover. Budgets here are tokens as [`crate::context::estimate_tokens`] counts them.
//!
//! A PR that fits one call's budget is one call.
//! A larger one is split along file boundaries into at most `max_calls` calls, related files
//! (one directory, a test with the file it tests) kept together where they fit. When even that
//! is not enough, the whole PR's budget (`max_calls` calls' worth) is shared max-min fairly
//! first, so that no file starves the others across calls either. Each call carries the map of
//! the whole PR, paid for out of its budget.
//!
//! The plan is a pure function of the diff and the limits: a job that comes back after a quota
//! window plans the same calls, and [`Chunk::key`] tells which of them were already answered.

use std::collections::{BTreeMap, HashMap, HashSet};

use globset::GlobSet;
use sha2::{Digest as _, Sha256};

use crate::carry::carry_forward;
use crate::context::{Fitted, MAP_SHARE, estimate_tokens, file_name, is_test, pr_map, rank, share_fairly, skip_reason};
use crate::contract::{Coverage, MAX_PREVIOUS_HUNKS, PreviousResult, SkipReason, SkippedFile, Suggestion};
use crate::diff::{FileDiff, hunk_ref, render_into, rendered_size};

/// How much one review may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Tokens of diff (the PR map included) one call may carry.
    pub call_tokens: usize,
    /// Calls one review may make (at least one).
    pub max_calls: usize,
}

/// One review call's share of the PR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk<'a> {
    /// In path order, each possibly clipped to some of its hunks.
    pub files: Vec<FileDiff<'a>>,
    /// The sum of the files' estimated rendered costs.
    pub estimated_tokens: usize,
    /// A hash of what the call shows of the diff: the same chunk of the same PR has the same key
    /// on every replica and every delivery.
    pub key: String,
}

/// The calls a review will make, and what it covers if they all answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan<'a> {
    pub chunks: Vec<Chunk<'a>>,
    /// The whole PR's map, opening every call's diff.
    pub map: String,
    /// Paths left out entirely, for any reason (the result's `skipped_files`).
    pub skipped_files: Vec<String>,
    /// Whether any reviewable added line is not read.
    pub truncated: bool,
    /// Counts as if every chunk is answered; `calls` is the number of chunks.
    pub coverage: Coverage,
    /// The previous result's suggestions on hunks this plan does not send, at their new lines.
    pub carried: Vec<Suggestion>,
}

impl<'a> Plan<'a> {
    /// What chunk `index` shows, shaped for [`crate::prompt::build_messages`].
    pub fn fitted(&self, index: usize) -> Fitted<'a> {
        let chunk = self.chunks.get(index);
        Fitted {
            files: chunk.map(|c| c.files.clone()).unwrap_or_default(),
            skipped_files: self.skipped_files.clone(),
            truncated: self.truncated,
            estimated_tokens: chunk.map_or(0, |c| c.estimated_tokens),
            map: self.map.clone(),
            part: (self.chunks.len() > 1).then(|| (index.saturating_add(1), self.chunks.len())),
        }
    }
}

/// Steps of the search for the largest whole-PR share that packs into `max_calls` calls, when
/// the full share does not: the last step is within 1/4096 of the best.
const PACKING_TRIES: usize = 12;

/// Plans the review of `files`. Hunks that `previous` (the last result for this PR) already
/// reviewed are not sent again ([`carry_forward`]): they count as reviewed, and its suggestions
/// on them come back in [`Plan::carried`].
pub fn plan<'a>(
    files: Vec<FileDiff<'a>>,
    ignore: &GlobSet,
    limits: Limits,
    previous: Option<&PreviousResult>,
) -> Plan<'a> {
    let max_calls = limits.max_calls.max(1);
    let map = pr_map(&files, limits.call_tokens / MAP_SHARE);
    let budget = limits.call_tokens.saturating_sub(estimate_tokens(&map));
    let mut plan = Plan { map, ..Plan::default() };
    let coverage = &mut plan.coverage;
    coverage.files_changed = count(files.len());

    // What each reviewable file adds, carried lines included; the order of the diff.
    let mut reviewable: Vec<(String, u64)> = Vec::new();
    let mut kept = Vec::new();
    for file in files {
        let added = count(file.added_line_count());
        if let Some(reason) = skip_reason(&file, ignore) {
            coverage.skipped.push(SkippedFile {
                file: file.path.to_string(),
                reason,
                lines: added,
                clipped: false,
            });
            plan.skipped_files.push(file.path.into_owned());
            continue;
        }
        reviewable.push((file.path.to_string(), added));
        kept.push(file);
    }
    let carried = carry_forward(kept, previous);
    let mut carried_lines: HashMap<String, u64> = HashMap::new();
    let mut candidates = Vec::new();
    for (file, done) in carried.files.into_iter().zip(&carried.per_file) {
        if done.added_lines > 0 {
            carried_lines.insert(file.path.to_string(), count(done.added_lines));
        }
        if file.added_line_count() > 0 {
            candidates.push(file);
        }
    }
    plan.carried = carried.suggestions;
    plan.coverage.hunks = carried.hunks;
    rank(&mut candidates);

    // No file may take more than one call; what does not fit one is clipped for `budget`.
    let per_call = clip_each(&mut candidates, budget);
    // Then the whole PR shares `max_calls` calls' worth. Whole files do not always pack into the
    // calls as tightly as the sum says, so when they do not, the largest shared total that does
    // pack is searched for (packing more rarely packs into fewer calls).
    let share_and_pack = |total: usize| {
        let mut kept = candidates.clone();
        let picks = share_fairly(&kept, total);
        keep(&mut kept, &picks);
        let bins = pack(&kept, budget);
        (kept, bins)
    };
    let mut best = share_and_pack(budget.saturating_mul(max_calls));
    if best.1.len() > max_calls {
        let (mut fits, mut fails) = (0, budget.saturating_mul(max_calls));
        best = share_and_pack(fits);
        for _ in 0..PACKING_TRIES {
            let middle = fits.saturating_add(fails.saturating_sub(fits) / 2);
            if middle == fits {
                break;
            }
            let tried = share_and_pack(middle);
            if tried.1.len() <= max_calls {
                fits = middle;
                best = tried;
            } else {
                fails = middle;
            }
        }
    }
    let (kept, bins) = best;

    let mut read: HashMap<String, u64> = HashMap::new();
    let mut by_file: Vec<Option<FileDiff<'a>>> = kept.into_iter().map(Some).collect();
    for bin in bins {
        let files: Vec<FileDiff<'a>> = bin.iter().filter_map(|&at| by_file.get_mut(at)?.take()).collect();
        for file in &files {
            let lines = read.entry(file.path.to_string()).or_default();
            *lines = lines.saturating_add(count(file.added_line_count()));
            plan.coverage
                .hunks
                .extend(file.hunks.iter().map(|hunk| hunk_ref(&file.path, hunk)));
        }
        plan.chunks.push(chunk(files));
    }

    let coverage = &mut plan.coverage;
    coverage.calls = u32::try_from(plan.chunks.len()).unwrap_or(u32::MAX);
    // A producer echoes these back; past the job's cap its next job would be refused. The hunks
    // past it are only reviewed again on the next push.
    coverage.hunks.truncate(MAX_PREVIOUS_HUNKS);
    for (path, total) in &reviewable {
        let carried = carried_lines.get(path).copied().unwrap_or(0);
        let read = read.get(path).copied().unwrap_or(0);
        let reviewed = read.saturating_add(carried).min(*total);
        coverage.files_reviewable = coverage.files_reviewable.saturating_add(1);
        coverage.lines_reviewable = coverage.lines_reviewable.saturating_add(*total);
        coverage.lines_reviewed = coverage.lines_reviewed.saturating_add(reviewed);
        coverage.lines_carried = coverage.lines_carried.saturating_add(carried);
        if reviewed > 0 {
            coverage.files_reviewed = coverage.files_reviewed.saturating_add(1);
        }
        if reviewed < *total {
            plan.truncated = true;
            let reason = if per_call.contains(path) {
                SkipReason::Budget
            } else {
                SkipReason::MaxCalls
            };
            coverage.skipped.push(SkippedFile {
                file: path.clone(),
                reason,
                lines: total.saturating_sub(reviewed),
                clipped: reviewed > 0,
            });
            if reviewed == 0 {
                plan.skipped_files.push(path.clone());
            }
        }
    }
    plan
}

/// Clips every file larger than `budget` to its most reviewable hunks that fit (the files are
/// in rank order, and share nothing: each gets the whole budget). Returns the clipped paths.
fn clip_each(files: &mut Vec<FileDiff<'_>>, budget: usize) -> HashSet<String> {
    let mut clipped = HashSet::new();
    for file in files.iter_mut() {
        if crate::context::tokens(rendered_size(file)) <= budget {
            continue;
        }
        let pick = crate::context::Pick::clipped(file, budget);
        let mut kept = pick.kept.iter();
        file.hunks.retain(|_| kept.next().copied().unwrap_or(false));
        clipped.insert(file.path.to_string());
    }
    files.retain(|file| !file.hunks.is_empty());
    clipped
}

/// Keeps each file's picked hunks; drops files with none.
fn keep(files: &mut Vec<FileDiff<'_>>, picks: &[crate::context::Pick]) {
    for (file, pick) in files.iter_mut().zip(picks) {
        let mut kept = pick.kept.iter();
        file.hunks.retain(|_| kept.next().copied().unwrap_or(false));
    }
    files.retain(|file| !file.hunks.is_empty());
}

/// Packs files (each at most `budget`) into as few calls of `budget` as it can, first-fit
/// decreasing over groups of related files, so that a group shares a call where it fits and is
/// split by file where it does not. Returns each call's file indexes, in path order.
fn pack(files: &[FileDiff<'_>], budget: usize) -> Vec<Vec<usize>> {
    let costs: Vec<usize> = files
        .iter()
        .map(|file| crate::context::tokens(rendered_size(file)))
        .collect();
    let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let stems = source_stems(files);
    for (at, file) in files.iter().enumerate() {
        groups.entry(group_of(&file.path, &stems)).or_default().push(at);
    }
    let group_cost =
        |members: &[usize]| -> usize { members.iter().map(|&at| costs.get(at).copied().unwrap_or(0)).sum() };
    let mut order: Vec<Vec<usize>> = groups.into_values().collect();
    // Largest first; the sort is stable, so equal groups stay in path order.
    order.sort_by_key(|members| std::cmp::Reverse(group_cost(members)));

    let mut bins: Vec<(usize, Vec<usize>)> = Vec::new();
    let place = |items: &[usize], cost: usize, bins: &mut Vec<(usize, Vec<usize>)>| -> bool {
        if let Some(bin) = bins.iter_mut().find(|(used, _)| used.saturating_add(cost) <= budget) {
            bin.0 = bin.0.saturating_add(cost);
            bin.1.extend_from_slice(items);
            return true;
        }
        if cost <= budget {
            bins.push((cost, items.to_vec()));
            return true;
        }
        false
    };
    for members in order {
        if place(&members, group_cost(&members), &mut bins) {
            continue;
        }
        let mut split = members;
        split.sort_by_key(|&at| std::cmp::Reverse(costs.get(at).copied().unwrap_or(0)));
        for at in split {
            let cost = costs.get(at).copied().unwrap_or(0);
            if !place(&[at], cost, &mut bins) {
                // Larger than a call: cannot happen after clipping, but never loop on it.
                bins.push((cost, vec![at]));
            }
        }
    }
    bins.into_iter()
        .map(|(_, mut members)| {
            members.sort_by(|&a, &b| {
                let path = |at: usize| files.get(at).map(|f| f.path.as_ref()).unwrap_or("");
                path(a).cmp(path(b))
            });
            members
        })
        .collect()
}

/// Non-test files by their stem, so that a test can join the file it tests.
fn source_stems(files: &[FileDiff<'_>]) -> HashMap<String, String> {
    let mut stems = HashMap::new();
    for file in files {
        let name = file_name(&file.path);
        if !is_test(&file.path, name) {
            stems
                .entry(stem(name).to_ascii_lowercase())
                .or_insert_with(|| directory(&file.path).to_owned());
        }
    }
    stems
}

/// The group a file reviews best with: its directory, or for a test, the directory of the file
/// it tests (`foo_test.go`, `test_foo.py`, `tests/foo.rs`, `FooTest.java` → `foo`).
fn group_of(path: &str, stems: &HashMap<String, String>) -> String {
    let name = file_name(path);
    if is_test(path, name) {
        let lower = stem(name).to_ascii_lowercase();
        let tested = lower
            .strip_prefix("test_")
            .or_else(|| {
                [
                    "_test", "_tests", ".test", ".spec", "_spec", "-test", "-spec", "test", "tests",
                ]
                .iter()
                .find_map(|suffix| lower.strip_suffix(suffix))
            })
            .unwrap_or(&lower);
        if let Some(dir) = stems.get(tested) {
            return dir.clone();
        }
    }
    directory(path).to_owned()
}

fn stem(name: &str) -> &str {
    name.split_once('.').map_or(name, |(stem, _)| stem)
}

fn directory(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(dir, _)| dir)
}

fn chunk(files: Vec<FileDiff<'_>>) -> Chunk<'_> {
    let mut hasher = Sha256::new();
    let mut rendered = String::new();
    let mut estimated_tokens: usize = 0;
    for file in &files {
        rendered.clear();
        render_into(file, &mut rendered);
        hasher.update(rendered.as_bytes());
        estimated_tokens = estimated_tokens.saturating_add(crate::context::tokens(rendered_size(file)));
    }
    let digest = hasher.finalize();
    let key = digest.iter().take(16).map(|byte| format!("{byte:02x}")).collect();
    Chunk {
        files,
        estimated_tokens,
        key,
    }
}

fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::tokens;
    use crate::diff::{FileStatus, Hunk};

    fn hunk(new_start: u32, added: usize, salt: &str) -> Hunk<'static> {
        let body: String = (0..added).map(|i| format!("+let {salt}_{i} = {i};\n")).collect();
        let text = format!("@@ -{new_start},0 +{new_start},{added} @@\n{body}");
        Hunk::new(Box::leak(text.into_boxed_str()))
    }

    /// A file with one hunk per entry of `hunks`, each adding that many lines.
    fn file(path: &str, hunks: &[usize]) -> FileDiff<'static> {
        let mut start = 1;
        FileDiff {
            path: path.to_owned().into(),
            old_path: None,
            status: FileStatus::Modified,
            binary: false,
            damaged: false,
            hunks: hunks
                .iter()
                .map(|&added| {
                    let h = hunk(start, added, path);
                    start += u32::try_from(added).unwrap() + 10;
                    h
                })
                .collect(),
        }
    }

    fn cost(file: &FileDiff<'_>) -> usize {
        tokens(rendered_size(file))
    }

    fn limits(call_tokens: usize, max_calls: usize) -> Limits {
        Limits { call_tokens, max_calls }
    }

    fn run(files: Vec<FileDiff<'static>>, limits: Limits) -> Plan<'static> {
        plan(files, &GlobSet::empty(), limits, None)
    }

    fn chunk_paths(plan: &Plan<'_>) -> Vec<Vec<String>> {
        plan.chunks
            .iter()
            .map(|c| c.files.iter().map(|f| f.path.to_string()).collect())
            .collect()
    }

    #[test]
    fn a_pr_that_fits_one_call_is_one_call_that_reads_everything() {
        let plan = run(
            vec![file("src/a.rs", &[5, 5]), file("src/b.rs", &[3])],
            limits(100_000, 3),
        );
        assert_eq!(plan.chunks.len(), 1);
        assert_eq!(plan.fitted(0).part, None, "one call is not announced as a part");
        let c = &plan.coverage;
        assert_eq!((c.files_changed, c.files_reviewable, c.files_reviewed), (2, 2, 2));
        assert_eq!((c.lines_reviewable, c.lines_reviewed, c.calls), (13, 13, 1));
        assert!(c.skipped.is_empty() && !plan.truncated);
    }

    #[test]
    fn a_pr_larger_than_a_call_is_split_along_file_boundaries_within_max_calls() {
        let files: Vec<_> = (0..6).map(|i| file(&format!("dir{i}/f.rs"), &[40])).collect();
        let one = cost(&files[0]);
        // Room for two files a call (plus the map), so six files need three calls.
        let plan = run(files, limits(one * 2 + one / 2 + 200, 3));
        assert_eq!(plan.chunks.len(), 3, "{:?}", chunk_paths(&plan));
        let mut seen: Vec<String> = chunk_paths(&plan).concat();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 6, "every file in exactly one call");
        assert_eq!(plan.coverage.lines_reviewed, 240);
        assert_eq!(plan.coverage.calls, 3);
        assert_eq!(plan.fitted(1).part, Some((2, 3)));
        for chunk in &plan.chunks {
            assert!(chunk.estimated_tokens <= one * 2 + one / 2 + 200);
        }
    }

    #[test]
    fn related_files_share_a_call() {
        let files = vec![
            file("src/parse/lexer.rs", &[30]),
            file("src/net/client.rs", &[30]),
            file("tests/lexer.rs", &[30]),
            file("src/net/server.rs", &[30]),
        ];
        let one = cost(&files[0]);
        let plan = run(files, limits(one * 2 + one / 2 + 200, 2));
        let chunks = chunk_paths(&plan);
        assert_eq!(chunks.len(), 2, "{chunks:?}");
        assert!(
            chunks.contains(&vec!["src/parse/lexer.rs".to_owned(), "tests/lexer.rs".to_owned()]),
            "a test goes with the file it tests: {chunks:?}"
        );
        assert!(chunks.contains(&vec!["src/net/client.rs".to_owned(), "src/net/server.rs".to_owned()]));
    }

    #[test]
    fn a_file_larger_than_a_call_is_clipped_and_reported_for_budget() {
        let huge = file("src/huge.rs", &[200, 200, 200]);
        let small = file("src/small.rs", &[10]);
        let call = cost(&huge) / 2;
        let plan = run(vec![huge, small], limits(call, 6));
        let skipped = &plan.coverage.skipped;
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        assert_eq!(skipped[0].file, "src/huge.rs");
        assert_eq!(skipped[0].reason, SkipReason::Budget);
        assert!(skipped[0].clipped);
        assert_eq!(skipped[0].lines, 400, "two of its three hunks do not fit a call");
        assert_eq!(plan.coverage.lines_reviewed, 210);
        assert!(plan.truncated);
        assert!(plan.skipped_files.is_empty(), "a clipped file is not left out");
    }

    #[test]
    fn a_pr_over_the_call_limit_shares_the_calls_fairly_and_reports_max_calls() {
        let mut files = vec![file("gen/big.rs", &[100; 30])];
        files.extend((0..8).map(|i| file(&format!("src/m{i}.rs"), &[20])));
        let small = cost(&files[1]);
        let plan = run(files, limits(small * 8, 2));
        assert_eq!(plan.chunks.len(), 2);
        let c = &plan.coverage;
        assert_eq!(c.lines_reviewable, 3_160);
        assert!(c.lines_reviewed < c.lines_reviewable);
        // No small file is starved by the big one: all eight are read whole.
        let read: Vec<String> = chunk_paths(&plan).concat();
        assert!((0..8).all(|i| read.contains(&format!("src/m{i}.rs"))), "{read:?}");
        let big = c.skipped.iter().find(|s| s.file == "gen/big.rs").unwrap();
        assert_eq!(big.reason, SkipReason::Budget, "larger than a call");
        for chunk in &plan.chunks {
            assert!(chunk.estimated_tokens + estimate_tokens(&plan.map) <= small * 8);
        }
        // With the limit met by small files alone, a left-out file is reported for max_calls.
        let files: Vec<_> = (0..12).map(|i| file(&format!("src/m{i}.rs"), &[20])).collect();
        let plan = run(files, limits(small * 3, 2));
        assert_eq!(plan.chunks.len(), 2);
        assert!(
            plan.coverage.skipped.iter().all(|s| s.reason == SkipReason::MaxCalls),
            "{:?}",
            plan.coverage.skipped
        );
        assert!(!plan.coverage.skipped.is_empty());
        assert_eq!(
            plan.coverage.lines_reviewed + plan.coverage.skipped.iter().map(|s| s.lines).sum::<u64>(),
            240,
            "every reviewable line is either read or reported"
        );
    }

    #[test]
    fn files_skipped_for_what_they_are_carry_their_reason() {
        let ignore = crate::context::build_ignore_set(&["docs/**"]).unwrap();
        let files = vec![
            file("Cargo.lock", &[50]),
            file("docs/a.rs", &[5]),
            file("vendor/x/lib.rs", &[5]),
            file("src/lib.rs", &[5]),
        ];
        let plan = plan(files, &ignore, limits(100_000, 3), None);
        let reasons: Vec<(&str, SkipReason, u64)> = plan
            .coverage
            .skipped
            .iter()
            .map(|s| (s.file.as_str(), s.reason, s.lines))
            .collect();
        assert_eq!(
            reasons,
            [
                ("Cargo.lock", SkipReason::Lockfile, 50),
                ("docs/a.rs", SkipReason::IgnorePaths, 5),
                ("vendor/x/lib.rs", SkipReason::Vendored, 5)
            ]
        );
        assert_eq!(plan.coverage.files_reviewable, 1);
        assert_eq!(plan.skipped_files, ["Cargo.lock", "docs/a.rs", "vendor/x/lib.rs"]);
    }

    #[test]
    fn chunk_keys_are_stable_and_change_with_the_code() {
        let a = run(vec![file("src/a.rs", &[5])], limits(10_000, 3));
        let b = run(vec![file("src/a.rs", &[5])], limits(10_000, 3));
        let c = run(vec![file("src/a.rs", &[6])], limits(10_000, 3));
        assert_eq!(a.chunks[0].key, b.chunks[0].key);
        assert_ne!(a.chunks[0].key, c.chunks[0].key);
        assert_eq!(a.chunks[0].key.len(), 32);
    }

    #[test]
    fn hunks_reviewed_in_an_earlier_push_are_not_sent_and_count_as_reviewed() {
        let first = run(
            vec![file("src/done.rs", &[5]), file("src/a.rs", &[7, 3])],
            limits(10_000, 3),
        );
        assert_eq!(first.coverage.hunks.len(), 3, "every hunk read is listed");
        let previous = PreviousResult {
            suggestions: Vec::new(),
            hunks: first.coverage.hunks.clone(),
        };
        // The next push changes a.rs's second hunk only.
        let mut changed = file("src/a.rs", &[7, 4]);
        changed.hunks[0] = file("src/a.rs", &[7, 3]).hunks[0];
        let next = plan(
            vec![file("src/done.rs", &[5]), changed],
            &GlobSet::empty(),
            limits(10_000, 3),
            Some(&previous),
        );
        assert_eq!(
            chunk_paths(&next),
            [["src/a.rs"]],
            "a file with nothing new is not sent"
        );
        assert_eq!(next.chunks[0].files[0].hunks.len(), 1, "only the changed hunk");
        let c = &next.coverage;
        assert_eq!((c.files_reviewable, c.files_reviewed), (2, 2));
        assert_eq!((c.lines_reviewable, c.lines_reviewed, c.lines_carried), (16, 16, 12));
        assert_eq!(c.hunks.len(), 3, "carried and read hunks both listed for the next push");
    }

    #[test]
    fn any_pr_is_planned_within_its_limits_and_accounts_for_every_line() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..60 {
            let files: Vec<_> = (0..rng.usize(1..30))
                .map(|i| {
                    let hunks: Vec<usize> = (0..rng.usize(1..5)).map(|_| rng.usize(1..80)).collect();
                    file(&format!("d{}/f{i}.rs", rng.usize(0..4)), &hunks)
                })
                .collect();
            let total: usize = files.iter().map(FileDiff::added_line_count).sum();
            let call = rng.usize(200..6_000);
            let max_calls = rng.usize(1..7);
            let plan = run(files, limits(call, max_calls));
            assert!(plan.chunks.len() <= max_calls);
            let map = estimate_tokens(&plan.map);
            for chunk in &plan.chunks {
                assert!(
                    chunk.estimated_tokens + map <= call.max(map),
                    "{} + {map} > {call}",
                    chunk.estimated_tokens
                );
                assert!(!chunk.files.is_empty());
            }
            let c = &plan.coverage;
            let unread: u64 = c.skipped.iter().map(|s| s.lines).sum();
            assert_eq!(c.lines_reviewed + unread, total as u64);
            let read: usize = plan
                .chunks
                .iter()
                .flat_map(|c| &c.files)
                .map(FileDiff::added_line_count)
                .sum();
            assert_eq!(read as u64, c.lines_reviewed);
        }
    }

    #[test]
    fn a_plan_never_lists_more_hunks_than_a_previous_result_may_hold() {
        let hunks = vec![1; MAX_PREVIOUS_HUNKS + 1];
        let plan = run(vec![file("src/many.rs", &hunks)], limits(10_000_000, 1));
        assert_eq!(
            plan.coverage.lines_reviewed,
            (MAX_PREVIOUS_HUNKS + 1) as u64,
            "all read"
        );
        assert_eq!(plan.coverage.hunks.len(), MAX_PREVIOUS_HUNKS);
    }
}
