//! Fitting a PR into the model's context window: how many tokens a text costs, which files are
//! not worth reviewing, and which files (and hunks) go into the prompt when not everything fits.
//! How large each model's window is lives in [`crate::models`].

use std::cmp::Reverse;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::diff::{FileDiff, FileStatus, TextSize, header_size, hunk_size, rendered_size};

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

/// Why a file stays out of the prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum SkipReason {
    /// Matched one of the job's `ignore_paths`.
    Ignored,
    Lockfile,
    Binary,
    /// Third-party code checked into the repository.
    Vendored,
    /// Build output, minified or code-generated files, snapshots.
    Generated,
    /// A deleted file has no new lines for a suggestion to point at.
    Removed,
}

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

/// Why `file` is not worth reviewing, if it is not. [`SkipReason::TooLarge`] is never returned
/// here: only [`fit`] knows the budget.
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
        Some(SkipReason::Ignored)
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
    } else if file.status == FileStatus::Removed {
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
}

/// Chooses what the prompt shows within `budget_tokens`, the part of the window left for diffs
/// (the caller subtracts its instructions and the room the answer needs).
///
/// Skippable files are dropped. The rest are ranked so that the most reviewable code comes first
/// (source code, then tests, then config and build files, then docs, then anything else; within
/// a class more added lines first; ties by path) and taken in that order while their rendering
/// fits. A file that does not fit whole keeps its leading hunks that do (hunks are never split);
/// a file of which no hunk fits is left out. Later, smaller files still get their chance.
pub fn fit<'a>(files: Vec<FileDiff<'a>>, ignore: &GlobSet, budget_tokens: usize) -> Fitted<'a> {
    let mut fitted = Fitted::default();
    let mut candidates = Vec::with_capacity(files.len());
    for file in files {
        if skip_reason(&file, ignore).is_some() {
            fitted.skipped_files.push(file.path.into_owned());
        } else {
            candidates.push(file);
        }
    }
    candidates.sort_by_cached_key(|file| {
        (
            FileClass::of(&file.path),
            Reverse(file.added_line_count()),
            file.path.clone(),
        )
    });

    for mut file in candidates {
        let left = budget_tokens.saturating_sub(fitted.estimated_tokens);
        let whole = tokens(rendered_size(&file));
        if whole <= left {
            // At most the budget: `whole` fits in what is left of it.
            fitted.estimated_tokens = fitted.estimated_tokens.saturating_add(whole);
            fitted.files.push(file);
            continue;
        }
        fitted.truncated = true;
        let (kept, cost) = leading_hunks_that_fit(&file, left);
        if kept == 0 {
            fitted.skipped_files.push(file.path.into_owned());
            continue;
        }
        file.hunks.truncate(kept);
        fitted.estimated_tokens = fitted.estimated_tokens.saturating_add(cost);
        fitted.files.push(file);
    }
    fitted
}

/// How many of the file's first hunks fit in `budget` tokens together with its header line, and
/// what the file cut to them costs.
fn leading_hunks_that_fit(file: &FileDiff<'_>, budget: usize) -> (usize, usize) {
    let mut size = header_size(file);
    let mut kept = 0_usize;
    for hunk in &file.hunks {
        let next = size.add(hunk_size(hunk));
        if tokens(next) > budget {
            break;
        }
        size = next;
        kept = kept.saturating_add(1);
    }
    (kept, tokens(size))
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

fn is_test(path: &str, name: &str) -> bool {
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

fn file_name(path: &str) -> &str {
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
        let ignored = |path: &str| skip_reason(&sized(path, 1), &set) == Some(SkipReason::Ignored);
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
    fn a_zero_budget_keeps_nothing() {
        let fitted = fit(vec![sized("src/a.rs", 1)], &no_ignores(), 0);
        assert!(fitted.files.is_empty());
        assert_eq!(fitted.skipped_files, ["src/a.rs"]);
        assert!(fitted.truncated);
        assert_eq!(fitted.estimated_tokens, 0);
    }
}
