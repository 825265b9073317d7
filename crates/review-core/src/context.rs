//! Fitting a PR into the model's context window: how many tokens a text costs, which files are
//! not worth reviewing, and which files (and hunks) go into the prompt when not everything fits.
//! How large each model's window is lives in [`crate::models`].

use std::cmp::Reverse;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::diff::{FileDiff, FileStatus, LineKind, TextSize, header_size, hunk_size, rendered_size};

/// A deliberately high estimate of how many tokens `text` costs: a third of its ASCII characters
/// (rounded up) plus one per other character.
///
/// GLM's tokenizer averages closer to four characters per token on English and code, and about
/// one token per CJK character or so. Guessing high only leaves a little of the window unused;
/// guessing low sends a request the provider rejects as too long, which fails the job.
pub fn estimate_tokens(text: &str) -> usize {
    tokens(TextSize::of(text))
}

/// [`estimate_tokens`] of a text known only by its size.
pub(crate) fn tokens(size: TextSize) -> usize {
    size.ascii.div_ceil(3).saturating_add(size.other)
}

pub(crate) use crate::contract::SkipReason;

const LOCKFILES: &[&str] = &[
    "Cargo.lock",
    "package-lock.json",
    "npm-shrinkwrap.json",
    "yarn.lock",
    "pnpm-lock.yaml",
    "bun.lock",
    "bun.lockb",
    "deno.lock",
    "poetry.lock",
    "Pipfile.lock",
    "pdm.lock",
    "uv.lock",
    "composer.lock",
    "Gemfile.lock",
    "go.sum",
    "go.work.sum",
    "mix.lock",
    "flake.lock",
    "Podfile.lock",
    "Package.resolved",
    "packages.lock.json",
    "pubspec.lock",
    "gradle.lockfile",
];

/// Images, archives, fonts, media, documents and compiled code: a diff of them says nothing.
const BINARY_EXTENSIONS: &[&str] = &[
    "png", "jpg", "jpeg", "gif", "bmp", "ico", "icns", "webp", "avif", "heic", "tif", "tiff", "psd", "zip", "tar",
    "gz", "tgz", "bz2", "xz", "zst", "7z", "rar", "jar", "war", "ear", "whl", "ttf", "otf", "woff", "woff2", "eot",
    "mp3", "mp4", "m4a", "mov", "avi", "mkv", "webm", "wav", "ogg", "flac", "pdf", "exe", "dll", "so", "dylib", "a",
    "o", "obj", "lib", "class", "pyc", "wasm", "bin",
];

const VENDOR_DIRS: &[&str] = &[
    "vendor",
    "third_party",
    "third-party",
    "node_modules",
    "bower_components",
    ".yarn",
];

const GENERATED_DIRS: &[&str] = &["dist", "build", "__snapshots__"];

const GENERATED_SUFFIXES: &[&str] = &[
    ".min.js",
    ".min.mjs",
    ".min.css",
    ".js.map",
    ".css.map",
    ".pb.go",
    ".pb.cc",
    ".pb.h",
    "_pb2.py",
    "_pb2.pyi",
    "_pb2_grpc.py",
    ".g.dart",
    ".freezed.dart",
    ".snap",
];

/// Why `file` is not worth reviewing, if it is not. [`SkipReason::Budget`] and
/// [`SkipReason::MaxCalls`] are never returned here: only the planner knows the budget.
///
/// Besides names and paths, a file whose first lines say it is generated (Go's
/// `Code generated … DO NOT EDIT`, `@generated`) counts as generated.
pub(crate) fn skip_reason(file: &FileDiff<'_>, ignore: &GlobSet) -> Option<SkipReason> {
    let path = file.path.as_ref();
    let name = file_name(path);
    let lower_name = name.to_ascii_lowercase();
    let extension = extension(&lower_name);
    let dirs = || path.split('/').rev().skip(1);

    if ignore.is_match(path) {
        Some(SkipReason::IgnorePaths)
    } else if LOCKFILES.contains(&name) || extension == Some("lock") {
        Some(SkipReason::Lockfile)
    } else if file.binary || extension.is_some_and(|ext| BINARY_EXTENSIONS.contains(&ext)) {
        Some(SkipReason::Binary)
    } else if dirs().any(|dir| VENDOR_DIRS.contains(&dir)) {
        Some(SkipReason::Vendored)
    } else if dirs().any(|dir| GENERATED_DIRS.contains(&dir))
        || GENERATED_SUFFIXES.iter().any(|suffix| lower_name.ends_with(suffix))
        || lower_name.contains(".generated.")
        || says_generated(file)
    {
        Some(SkipReason::Generated)
    } else if file.status == FileStatus::Removed || file.added_line_count() == 0 {
        // Deleted, or only deleting lines: no new line for a suggestion to point at.
        Some(SkipReason::Removed)
    } else {
        None
    }
}

/// Whether the file's first lines carry a "generated, do not edit" banner.
fn says_generated(file: &FileDiff<'_>) -> bool {
    file.lines().filter(|l| l.new_line.is_some_and(|n| n <= 5)).any(|l| {
        let text = l.text.to_ascii_lowercase();
        text.contains("@generated") || (text.contains("generated") && text.contains("do not edit"))
    })
}

/// Why the job's `ignore_paths` cannot be used; the job is then `invalid_job`. A pattern is
/// quoted cut to a few dozen characters: the message goes into logs and a broker header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    #[error("ignore_paths: {pattern:?} is not a valid glob: {reason}")]
    BadGlob { pattern: String, reason: String },
    #[error("ignore_paths: the patterns together are too complex: {reason}")]
    TooComplex { reason: String },
}

/// Compiles the job's `ignore_paths` the way users of `.gitignore` and CODEOWNERS expect:
///
/// - a pattern without `/` matches a name at any depth (`*.md`, `fixtures`);
/// - a pattern with `/` is relative to the repository root (a leading `/` or `./` is dropped);
/// - a pattern also matches everything under a directory it matches (`docs`, `docs/`,
///   `src/gen` ignore whole trees);
/// - `*` and `?` stay within one path segment, `**` crosses segments, `{a,b}` and `[ab]` work.
///
/// Empty patterns are ignored. Matching is case-sensitive, like git's.
pub fn build_ignore_set(patterns: &[impl AsRef<str>]) -> Result<GlobSet, ContextError> {
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        let pattern = pattern.as_ref();
        let trimmed = pattern.trim();
        let rooted = trimmed.trim_start_matches("./").trim_start_matches('/');
        let rooted = rooted.trim_end_matches('/');
        if rooted.is_empty() {
            continue;
        }
        let base = if trimmed.trim_end_matches('/').contains('/') {
            rooted.to_owned()
        } else {
            format!("**/{rooted}")
        };
        for glob in [base.clone(), format!("{base}/**")] {
            let glob = GlobBuilder::new(&glob)
                .literal_separator(true)
                .build()
                .map_err(|error| ContextError::BadGlob {
                    pattern: pattern.chars().take(60).collect(),
                    reason: error.kind().to_string(),
                })?;
            builder.add(glob);
        }
    }
    builder.build().map_err(|error| ContextError::TooComplex {
        reason: error.to_string(),
    })
}

/// What goes into the prompt.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fitted<'a> {
    /// In rank order, some possibly cut to their leading hunks.
    pub files: Vec<FileDiff<'a>>,
    /// Paths left out entirely: first the files [`skip_reason`] rejects (input order), then those
    /// that did not fit at all (rank order). Files cut short are not listed.
    pub skipped_files: Vec<String>,
    /// Whether the budget cost any reviewable code: a file cut short or left out for size.
    pub truncated: bool,
    /// The sum of `estimate_tokens(render_for_prompt(file))` over `files`, computed without
    /// rendering anything.
    pub estimated_tokens: usize,
    /// The map of the whole PR that opens the diff ([`pr_map`]), paid for out of the budget first.
    pub map: String,
    /// Which of how many calls this is, when the PR is split ([`crate::plan`]).
    pub part: Option<(usize, usize)>,
}

/// The most of a diff budget the PR map may take: past it, the map ends with a count of the
/// files it does not list.
pub(crate) const MAP_SHARE: usize = 8;

/// A short map of the whole PR: every changed file with its added and removed line counts, in
/// the diff's order, so the model sees the shape of what it is not shown. At most
/// `max_tokens`; a map that would be longer lists what fits and counts the rest.
pub fn pr_map(files: &[FileDiff<'_>], max_tokens: usize) -> String {
    let removed = |file: &FileDiff<'_>| {
        file.hunks
            .iter()
            .flat_map(|hunk| hunk.lines())
            .filter(|line| line.kind == LineKind::Removed)
            .count()
    };
    let mut map = format!("Changed files ({}; added and removed lines):\n", files.len());
    // A running sum of the lines' estimates, never below the whole map's (each rounds up), so
    // the map is priced once and not rescanned per line. Room is kept for the closing count
    // line, whose length a file count bounds.
    let mut cost = estimate_tokens(&map);
    let closing_room = 24;
    for (at, file) in files.iter().enumerate() {
        let line = format!(
            "  {} ({}) +{} -{}\n",
            file.path,
            file.status.as_str(),
            file.added_line_count(),
            removed(file)
        );
        cost = cost.saturating_add(estimate_tokens(&line));
        if cost.saturating_add(closing_room) > max_tokens {
            let rest = files.get(at..).unwrap_or_default();
            let added: usize = rest.iter().map(FileDiff::added_line_count).sum();
            map.push_str(&format!("  … and {} more file(s), +{added} lines\n", rest.len()));
            break;
        }
        map.push_str(&line);
    }
    map
}

/// Puts the most reviewable code first: source code, then tests, then config and build files,
/// then docs, then anything else; within a class more added lines first; ties by path.
pub(crate) fn rank(files: &mut [FileDiff<'_>]) {
    files.sort_by_cached_key(|file| {
        (
            FileClass::of(&file.path),
            Reverse(file.added_line_count()),
            file.path.clone(),
        )
    });
}

/// Shares `budget_tokens` among `files` (in rank order) max-min fairly: every file gets up to
/// the same share (the largest share for which all files' costs, each counted up to it, fit the
/// budget), so a file smaller than the share goes in whole and no single huge file can starve
/// the small ones. A file larger than the share is clipped to its most reviewable whole hunks
/// (most added lines first; hunks are never split, and keep their order in the prompt). What
/// the shares leave unused goes, in rank order, to the clipped files' next hunks. Returns which
/// hunks of each file are kept; a file of which no hunk fits keeps none.
pub(crate) fn share_fairly(files: &[FileDiff<'_>], budget_tokens: usize) -> Vec<Pick> {
    let costs: Vec<usize> = files.iter().map(|file| tokens(rendered_size(file))).collect();
    let share = fair_share(&costs, budget_tokens);
    let mut picks: Vec<Pick> = files
        .iter()
        .zip(&costs)
        .map(|(file, &cost)| {
            if cost <= share {
                Pick::whole(file, cost)
            } else {
                Pick::clipped(file, share)
            }
        })
        .collect();
    // The shares add up to at most the budget; what they leave goes to clipped files in rank order.
    let mut left = budget_tokens.saturating_sub(picks.iter().map(|pick| pick.cost).sum());
    for (pick, file) in picks.iter_mut().zip(files) {
        if left == 0 {
            break;
        }
        if pick.clipped {
            let before = pick.cost;
            pick.extend(file, before.saturating_add(left));
            left = left.saturating_sub(pick.cost.saturating_sub(before));
        }
    }
    picks
}

/// The largest share `s` such that the costs, each counted up to `s`, add up to at most
/// `budget` (max-min fairness); `usize::MAX` when everything fits whole.
fn fair_share(costs: &[usize], budget: usize) -> usize {
    let mut sorted = costs.to_vec();
    sorted.sort_unstable();
    let mut left = budget;
    let mut files = sorted.len();
    for cost in sorted {
        // `files` counts the costs not yet taken, so it is at least one here.
        let share = left.checked_div(files).unwrap_or(0);
        if cost > share {
            return share;
        }
        left = left.saturating_sub(cost);
        files = files.saturating_sub(1);
    }
    usize::MAX
}

/// Which hunks of one file go into the prompt, and what the file costs with just those.
#[derive(Debug)]
pub(crate) struct Pick {
    pub(crate) kept: Vec<bool>,
    size: TextSize,
    pub(crate) cost: usize,
    clipped: bool,
}

impl Pick {
    fn whole(file: &FileDiff<'_>, cost: usize) -> Self {
        Self {
            kept: vec![true; file.hunks.len()],
            size: rendered_size(file),
            cost,
            clipped: false,
        }
    }

    /// The file's most reviewable hunks that fit in `allowance` tokens with its header line.
    pub(crate) fn clipped(file: &FileDiff<'_>, allowance: usize) -> Self {
        let mut pick = Self {
            kept: vec![false; file.hunks.len()],
            size: header_size(file),
            cost: 0,
            clipped: true,
        };
        pick.extend(file, allowance);
        pick
    }

    /// Adds, most added lines first (the earlier hunk on a tie), every hunk not yet kept that
    /// still fits in `allowance` tokens for the whole file. Costs nothing while no hunk fits.
    fn extend(&mut self, file: &FileDiff<'_>, allowance: usize) {
        let mut order: Vec<usize> = (0..file.hunks.len()).filter(|&at| !self.kept[at]).collect();
        order.sort_by_key(|&at| Reverse(file.hunks[at].lines().filter(|l| l.kind == LineKind::Added).count()));
        for at in order {
            let next = self.size.add(hunk_size(&file.hunks[at]));
            if tokens(next) <= allowance {
                self.size = next;
                self.kept[at] = true;
            }
        }
        if self.kept.iter().any(|&kept| kept) {
            self.cost = tokens(self.size);
        }
    }
}

/// How reviewable a file is by its kind, most reviewable first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum FileClass {
    Source,
    Test,
    Config,
    Docs,
    Other,
}

const SOURCE_EXTENSIONS: &[&str] = &[
    "rs", "go", "py", "pyi", "js", "mjs", "cjs", "jsx", "ts", "mts", "cts", "tsx", "java", "kt", "kts", "scala",
    "groovy", "c", "h", "cc", "cpp", "cxx", "hh", "hpp", "hxx", "m", "mm", "cs", "fs", "vb", "swift", "rb", "php",
    "pl", "pm", "lua", "r", "jl", "dart", "ex", "exs", "erl", "hrl", "hs", "ml", "mli", "clj", "cljs", "elm", "zig",
    "nim", "v", "sv", "vhd", "sol", "sh", "bash", "zsh", "fish", "ps1", "sql", "proto", "graphql", "gql", "vue",
    "svelte", "astro", "html", "htm", "css", "scss", "sass", "less", "tf", "hcl",
];

const CONFIG_EXTENSIONS: &[&str] = &[
    "json",
    "jsonc",
    "json5",
    "yaml",
    "yml",
    "toml",
    "ini",
    "cfg",
    "conf",
    "xml",
    "properties",
    "gradle",
    "env",
    "mk",
    "cmake",
    "bazel",
    "bzl",
    "nix",
    "plist",
    "csproj",
    "sln",
    "pom",
];

const CONFIG_NAMES: &[&str] = &[
    "makefile",
    "gnumakefile",
    "dockerfile",
    "containerfile",
    "cmakelists.txt",
    "jenkinsfile",
    "procfile",
    "vagrantfile",
    "gemfile",
    "rakefile",
    "build",
    "workspace",
    "justfile",
];

const DOC_EXTENSIONS: &[&str] = &["md", "markdown", "mdx", "rst", "txt", "adoc", "asciidoc", "org"];

const DOC_NAMES: &[&str] = &[
    "readme",
    "license",
    "licence",
    "changelog",
    "changes",
    "authors",
    "contributors",
    "notice",
    "copying",
    "contributing",
];

const TEST_DIRS: &[&str] = &["test", "tests", "__tests__", "spec", "specs", "testing", "e2e"];

impl FileClass {
    fn of(path: &str) -> Self {
        let name = file_name(path);
        let lower = name.to_ascii_lowercase();
        let extension = extension(&lower);
        let stem = lower.split('.').next().unwrap_or(&lower);
        let is = |list: &[&str]| extension.is_some_and(|ext| list.contains(&ext));

        if CONFIG_NAMES.contains(&lower.as_str()) || lower.starts_with("dockerfile.") {
            Self::Config
        } else if DOC_NAMES.contains(&stem) && (extension.is_none() || is(DOC_EXTENSIONS)) {
            Self::Docs
        } else if is(SOURCE_EXTENSIONS) {
            if is_test(path, name) { Self::Test } else { Self::Source }
        } else if is(CONFIG_EXTENSIONS) || (name.starts_with('.') && extension.is_none()) {
            Self::Config
        } else if is(DOC_EXTENSIONS) {
            Self::Docs
        } else {
            Self::Other
        }
    }
}

pub(crate) fn is_test(path: &str, name: &str) -> bool {
    let in_test_dir = path.split('/').rev().skip(1).any(|dir| TEST_DIRS.contains(&dir));
    // `Test`/`Tests` stay case-sensitive so that `latest.go` or `contest.py` are not tests.
    let stem = name.rsplit_once('.').map_or(name, |(stem, _)| stem);
    let lower = stem.to_ascii_lowercase();
    in_test_dir
        || lower.starts_with("test_")
        || lower == "conftest"
        || ["_test", "_tests", ".test", ".spec", "_spec", "-test", "-spec"]
            .iter()
            .any(|suffix| lower.ends_with(suffix))
        || stem.ends_with("Test")
        || stem.ends_with("Tests")
}

pub(crate) fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The last extension of an already lower-cased file name; none for `.gitignore`-like names.
fn extension(lower_name: &str) -> Option<&str> {
    match lower_name.rsplit_once('.') {
        Some(("", _)) | None => None,
        Some((_, ext)) => Some(ext),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::{Hunk, render_for_prompt};

    // One call's share, as the planner makes it for a PR that fits one call: the tests of the
    // sharing rules below run through it.

    /// [`fit`], with the PR's map ([`pr_map`], at most an eighth of the budget) paid for first.
    fn fit_with_map<'a>(files: Vec<FileDiff<'a>>, ignore: &GlobSet, budget_tokens: usize) -> Fitted<'a> {
        let map = pr_map(&files, budget_tokens / MAP_SHARE);
        let budget_tokens = budget_tokens.saturating_sub(estimate_tokens(&map));
        Fitted {
            map,
            ..fit(files, ignore, budget_tokens)
        }
    }

    /// Chooses what the prompt shows within `budget_tokens`, the part of the window left for diffs
    /// (the caller subtracts its instructions and the room the answer needs).
    ///
    /// Skippable files are dropped. The rest are ranked so that the most reviewable code comes first
    /// (source code, then tests, then config and build files, then docs, then anything else; within
    /// a class more added lines first; ties by path), and the budget is shared fairly: every file
    /// gets up to the same share (the largest share for which all files' costs, each counted up to
    /// it, fit the budget), so a file smaller than the share goes in whole and no single huge file
    /// can starve the small ones. A file larger than the share is clipped to its most reviewable
    /// whole hunks (most added lines first; hunks are never split, and keep their order in the
    /// prompt). What the shares leave unused goes, in rank order, to the clipped files' next hunks.
    /// A file of which no hunk fits is left out.
    fn fit<'a>(files: Vec<FileDiff<'a>>, ignore: &GlobSet, budget_tokens: usize) -> Fitted<'a> {
        let mut fitted = Fitted::default();
        let mut candidates = Vec::with_capacity(files.len());
        for file in files {
            if skip_reason(&file, ignore).is_some() {
                fitted.skipped_files.push(file.path.into_owned());
            } else {
                candidates.push(file);
            }
        }
        rank(&mut candidates);
        let picks = share_fairly(&candidates, budget_tokens);

        for (mut file, pick) in candidates.into_iter().zip(picks) {
            // Truncation is a hunk left out, whichever pass decided it.
            if !pick.kept.iter().all(|&kept| kept) {
                fitted.truncated = true;
            }
            if !pick.kept.iter().any(|&kept| kept) {
                fitted.skipped_files.push(file.path.into_owned());
                continue;
            }
            if pick.clipped {
                let mut kept = pick.kept.iter();
                file.hunks.retain(|_| kept.next().copied().unwrap_or(false));
            }
            fitted.estimated_tokens = fitted.estimated_tokens.saturating_add(pick.cost);
            fitted.files.push(file);
        }
        fitted
    }

    fn no_ignores() -> GlobSet {
        GlobSet::empty()
    }

    /// A hunk that adds `added` from `new_start` on. Its text is leaked: a test's few bytes.
    fn hunk(new_start: u32, added: &[&str]) -> Hunk<'static> {
        let body: String = added.iter().map(|text| format!("+{text}\n")).collect();
        let text = format!("@@ -{new_start},0 +{new_start},{} @@\n{body}", added.len());
        Hunk::new(Box::leak(text.into_boxed_str()))
    }

    fn file(path: &str, hunks: Vec<Hunk<'static>>) -> FileDiff<'static> {
        FileDiff {
            path: path.to_owned().into(),
            old_path: None,
            status: FileStatus::Modified,
            binary: false,
            damaged: false,
            hunks,
        }
    }

    fn lines(count: usize) -> Vec<String> {
        (0..count).map(|i| format!("let value_{i} = {i};")).collect()
    }

    fn sized(path: &str, added: usize) -> FileDiff<'static> {
        let texts = lines(added);
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        file(path, vec![hunk(1, &refs)])
    }

    fn paths<'a>(files: &'a [FileDiff<'_>]) -> Vec<&'a str> {
        files.iter().map(|f| f.path.as_ref()).collect()
    }

    #[test]
    fn token_estimates_round_up_and_count_non_ascii_heavily() {
        assert_eq!(estimate_tokens(""), 0);
        assert_eq!(estimate_tokens("a"), 1);
        assert_eq!(estimate_tokens("abc"), 1);
        assert_eq!(estimate_tokens("abcd"), 2);
        assert_eq!(estimate_tokens("日本語"), 3);
        assert_eq!(estimate_tokens("ab日"), 2);
    }

    #[test]
    fn lockfiles_are_skipped() {
        for path in [
            "Cargo.lock",
            "web/package-lock.json",
            "yarn.lock",
            "pnpm-lock.yaml",
            "poetry.lock",
            "Pipfile.lock",
            "composer.lock",
            "Gemfile.lock",
            "go.sum",
            "deps/custom.lock",
        ] {
            assert_eq!(
                skip_reason(&sized(path, 1), &no_ignores()),
                Some(SkipReason::Lockfile),
                "{path}"
            );
        }
    }

    #[test]
    fn binaries_are_skipped_by_flag_or_extension() {
        let mut flagged = file("data/blob", vec![]);
        flagged.binary = true;
        assert_eq!(skip_reason(&flagged, &no_ignores()), Some(SkipReason::Binary));
        for path in ["img/Logo.PNG", "a.zip", "fonts/x.woff2", "dist.tar.gz"] {
            assert_eq!(
                skip_reason(&file(path, vec![]), &no_ignores()),
                Some(SkipReason::Binary),
                "{path}"
            );
        }
    }

    #[test]
    fn vendored_code_is_skipped() {
        for path in [
            "vendor/github.com/x/y.go",
            "libs/third_party/z.c",
            "web/node_modules/left-pad/index.js",
            ".yarn/releases/yarn.cjs",
        ] {
            assert_eq!(
                skip_reason(&sized(path, 1), &no_ignores()),
                Some(SkipReason::Vendored),
                "{path}"
            );
        }
        assert_eq!(skip_reason(&sized("src/vendor.rs", 1), &no_ignores()), None);
    }

    #[test]
    fn generated_files_are_skipped() {
        for path in [
            "static/app.min.js",
            "static/app.min.css",
            "api/v1/service.pb.go",
            "api/service_pb2.py",
            "src/schema.generated.ts",
            "dist/index.js",
            "web/build/main.js",
            "tests/__snapshots__/a.ts.snap",
            "ui/button.snap",
        ] {
            assert_eq!(
                skip_reason(&sized(path, 1), &no_ignores()),
                Some(SkipReason::Generated),
                "{path}"
            );
        }
    }

    #[test]
    fn a_generated_banner_marks_a_file_as_generated() {
        let banner = file(
            "internal/mock.go",
            vec![hunk(1, &["// Code generated by mockgen. DO NOT EDIT.", "package x"])],
        );
        assert_eq!(skip_reason(&banner, &no_ignores()), Some(SkipReason::Generated));
        let late = file("internal/real.go", vec![hunk(40, &["// DO NOT EDIT: generated below"])]);
        assert_eq!(skip_reason(&late, &no_ignores()), None);
    }

    #[test]
    fn removed_files_are_skipped() {
        let mut removed = sized("src/old.rs", 0);
        removed.status = FileStatus::Removed;
        assert_eq!(skip_reason(&removed, &no_ignores()), Some(SkipReason::Removed));
    }

    #[test]
    fn ordinary_source_is_not_skipped() {
        assert_eq!(skip_reason(&sized("src/main.rs", 3), &no_ignores()), None);
        assert_eq!(skip_reason(&sized("build.rs", 3), &no_ignores()), None);
    }

    #[test]
    fn ignore_globs_match_names_anywhere_and_paths_from_the_root() {
        let set = build_ignore_set(&[
            "*.md".to_owned(),
            "docs/".to_owned(),
            "/config/*.yaml".to_owned(),
            "fixtures".to_owned(),
            "src/**/gen_*.rs".to_owned(),
            String::new(),
        ])
        .unwrap();
        let ignored = |path: &str| skip_reason(&sized(path, 1), &set) == Some(SkipReason::IgnorePaths);
        assert!(ignored("README.md"));
        assert!(ignored("a/b/notes.md"));
        assert!(ignored("docs/guide/intro.rs"));
        assert!(ignored("config/app.yaml"));
        assert!(!ignored("config/nested/app.yaml"));
        assert!(!ignored("other/config/app.yaml"));
        assert!(ignored("tests/fixtures/case.rs"));
        assert!(ignored("src/gen_a.rs"));
        assert!(ignored("src/x/y/gen_b.rs"));
        assert!(!ignored("src/main.rs"));
        assert!(!ignored("mydocs/a.rs"));
    }

    #[test]
    fn a_bad_glob_is_an_error_naming_the_pattern() {
        let error = build_ignore_set(&["src/[a".to_owned()]).unwrap_err();
        assert!(matches!(&error, ContextError::BadGlob { pattern, .. } if pattern == "src/[a"));
        assert!(error.to_string().contains("src/[a"), "{error}");
    }

    #[test]
    fn skipped_files_are_listed_without_truncating() {
        let set = build_ignore_set(&["*.md".to_owned()]).unwrap();
        let fitted = fit(
            vec![sized("src/a.rs", 2), sized("Cargo.lock", 50), sized("README.md", 2)],
            &set,
            10_000,
        );
        assert_eq!(paths(&fitted.files), ["src/a.rs"]);
        assert_eq!(fitted.skipped_files, ["Cargo.lock", "README.md"]);
        assert!(!fitted.truncated);
        assert_eq!(
            fitted.estimated_tokens,
            estimate_tokens(&render_for_prompt(&fitted.files[0]))
        );
    }

    #[test]
    fn source_comes_before_tests_config_and_docs() {
        let fitted = fit(
            vec![
                sized("docs/guide.md", 50),
                sized("Dockerfile", 40),
                sized("config/app.yaml", 30),
                sized("tests/api.rs", 20),
                sized("src/api_test.go", 25),
                sized("src/small.rs", 1),
                sized("src/big.rs", 10),
                sized("src/also_big.py", 10),
                sized("assets/data.csv", 60),
            ],
            &no_ignores(),
            1_000_000,
        );
        assert_eq!(
            paths(&fitted.files),
            [
                "src/also_big.py",
                "src/big.rs",
                "src/small.rs",
                "src/api_test.go",
                "tests/api.rs",
                "Dockerfile",
                "config/app.yaml",
                "docs/guide.md",
                "assets/data.csv",
            ]
        );
        assert!(!fitted.truncated);
    }

    #[test]
    fn a_file_too_large_is_cut_to_whole_leading_hunks() {
        let first = lines(30);
        let second = lines(30);
        let refs1: Vec<&str> = first.iter().map(String::as_str).collect();
        let refs2: Vec<&str> = second.iter().map(String::as_str).collect();
        let big = file("src/big.rs", vec![hunk(1, &refs1), hunk(100, &refs2)]);
        let whole = estimate_tokens(&render_for_prompt(&big));
        let budget = whole - 10;

        let fitted = fit(vec![big.clone()], &no_ignores(), budget);
        assert!(fitted.truncated);
        assert!(fitted.skipped_files.is_empty());
        assert_eq!(fitted.files.len(), 1);
        assert_eq!(fitted.files[0].hunks, big.hunks[..1]);
        assert!(fitted.estimated_tokens <= budget);
        assert_eq!(
            fitted.estimated_tokens,
            estimate_tokens(&render_for_prompt(&fitted.files[0]))
        );
    }

    #[test]
    fn a_file_of_which_no_hunk_fits_is_left_out_and_smaller_ones_still_go_in() {
        let huge = sized("src/huge.rs", 500);
        let small = sized("src/small.rs", 2);
        let budget = estimate_tokens(&render_for_prompt(&small)) + 5;

        let fitted = fit(vec![small.clone(), huge], &no_ignores(), budget);
        assert_eq!(paths(&fitted.files), ["src/small.rs"]);
        assert_eq!(fitted.skipped_files, ["src/huge.rs"]);
        assert!(fitted.truncated);
        assert!(fitted.estimated_tokens <= budget);
    }

    #[test]
    fn one_huge_file_does_not_starve_the_small_ones() {
        // The huge file ranks first (most added lines) and alone costs many times the budget.
        let chunks: Vec<Vec<String>> = (0..40).map(|_| lines(25)).collect();
        let hunks = chunks
            .iter()
            .enumerate()
            .map(|(i, texts)| {
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                hunk(u32::try_from(i * 100 + 1).unwrap(), &refs)
            })
            .collect();
        let huge = file("src/huge.rs", hunks);
        let small: Vec<FileDiff<'static>> = (0..5).map(|i| sized(&format!("src/small_{i}.rs"), 3)).collect();
        let small_cost: usize = small.iter().map(|f| estimate_tokens(&render_for_prompt(f))).sum();
        let budget = small_cost * 4;
        assert!(estimate_tokens(&render_for_prompt(&huge)) > budget * 10);

        let mut files = vec![huge.clone()];
        files.extend(small.iter().cloned());
        let fitted = fit(files, &no_ignores(), budget);

        assert!(fitted.truncated);
        assert!(fitted.skipped_files.is_empty(), "{:?}", fitted.skipped_files);
        assert_eq!(paths(&fitted.files)[0], "src/huge.rs", "rank order is kept");
        for small in &small {
            let shown = fitted
                .files
                .iter()
                .find(|f| f.path == small.path)
                .expect("every small file is shown");
            assert_eq!(shown.hunks, small.hunks, "{} whole", small.path);
        }
        let clipped = &fitted.files[0];
        assert!(!clipped.hunks.is_empty() && clipped.hunks.len() < huge.hunks.len());
        assert!(fitted.estimated_tokens <= budget);
        let rendered: usize = fitted
            .files
            .iter()
            .map(|f| estimate_tokens(&render_for_prompt(f)))
            .sum();
        assert_eq!(fitted.estimated_tokens, rendered);
        // The shares' leftovers went to the clipped file: not even one more hunk would fit.
        let one_hunk = estimate_tokens(&render_for_prompt(&file("src/huge.rs", vec![huge.hunks[0]])));
        assert!(budget - fitted.estimated_tokens < one_hunk);
    }

    #[test]
    fn a_clipped_file_keeps_its_most_reviewable_hunks_in_their_order() {
        let (few, many, last) = (lines(2), lines(30), lines(3));
        fn refs(texts: &[String]) -> Vec<&str> {
            texts.iter().map(String::as_str).collect()
        }
        let big = file(
            "src/big.rs",
            vec![hunk(1, &refs(&few)), hunk(100, &refs(&many)), hunk(300, &refs(&last))],
        );
        let without_the_few = file("src/big.rs", vec![big.hunks[1], big.hunks[2]]);
        let budget = estimate_tokens(&render_for_prompt(&without_the_few));

        let fitted = fit(vec![big.clone()], &no_ignores(), budget);
        assert!(fitted.truncated);
        assert_eq!(fitted.files[0].hunks, without_the_few.hunks);
        assert_eq!(fitted.estimated_tokens, budget);
    }

    #[test]
    fn the_fair_share_is_the_largest_that_fits_the_budget() {
        assert_eq!(fair_share(&[10, 20, 30], 60), usize::MAX, "everything fits");
        assert_eq!(fair_share(&[10, 100, 100], 70), 30, "10 whole, then 60 shared by two");
        assert_eq!(fair_share(&[100, 100], 0), 0);
        assert_eq!(fair_share(&[], 0), usize::MAX);
        assert_eq!(
            fair_share(&[10, 100], 100),
            90,
            "the larger file's share is all that is left"
        );
        // Costs each counted up to the share never exceed the budget.
        let costs = [5, 17, 230, 1_000, 3, 44];
        for budget in [0, 1, 50, 333, 1_298, 1_299, 5_000] {
            let share = fair_share(&costs, budget);
            let used: usize = costs.iter().map(|&c| c.min(share)).sum();
            assert!(used <= budget, "budget {budget}: share {share} uses {used}");
        }
    }

    #[test]
    fn the_map_lists_every_changed_file_with_its_counts_and_counts_what_it_cannot_list() {
        let files: Vec<FileDiff<'static>> = (0..50).map(|i| sized(&format!("src/f{i:02}.rs"), i + 1)).collect();
        let whole = pr_map(&files, usize::MAX);
        assert!(whole.starts_with("Changed files (50; added and removed lines):\n"));
        assert!(whole.contains("  src/f00.rs (modified) +1 -0\n"), "{whole}");
        assert!(whole.contains("  src/f49.rs (modified) +50 -0\n"), "{whole}");
        assert_eq!(whole.lines().count(), 51);

        let cut = pr_map(&files, 100);
        assert!(estimate_tokens(&cut) <= 100, "{cut}");
        let listed = cut.lines().filter(|l| l.starts_with("  src/")).count();
        assert!(listed > 0 && listed < 50, "{cut}");
        let rest = 50 - listed;
        let rest_added: usize = (listed + 1..=50).sum();
        assert!(
            cut.ends_with(&format!("  … and {rest} more file(s), +{rest_added} lines\n")),
            "{cut}"
        );
    }

    #[test]
    fn the_map_is_paid_for_before_the_files_and_names_skipped_ones_too() {
        let files = vec![sized("src/a.rs", 40), sized("Cargo.lock", 5), sized("src/b.rs", 40)];
        // Both source files would fit whole, were it not for the map.
        let budget = estimate_tokens(&render_for_prompt(&files[0])) * 2 + 5;
        let fitted = fit_with_map(files, &no_ignores(), budget);
        assert!(fitted.map.contains("Cargo.lock"), "{}", fitted.map);
        assert!(estimate_tokens(&fitted.map) <= budget / MAP_SHARE);
        assert!(fitted.estimated_tokens + estimate_tokens(&fitted.map) <= budget);
        assert!(fitted.truncated, "both files do not fit in what the map leaves");
    }

    #[test]
    fn a_zero_budget_keeps_nothing() {
        let fitted = fit(vec![sized("src/a.rs", 1)], &no_ignores(), 0);
        assert!(fitted.files.is_empty());
        assert_eq!(fitted.skipped_files, ["src/a.rs"]);
        assert!(fitted.truncated);
        assert_eq!(fitted.estimated_tokens, 0);
    }
}
