//! Reading the prompt's diff rendering back: the inverse of [`super::render_into`], line by line.
//!
//! Whoever answers a review prompt without a model (the simulator) reads the diff here, next to
//! the renderer, so the format has one owner and a round-trip test holds the two together. The
//! reader is exactly as strict as the format: a `=== FILE:` line with a status the renderer does
//! not write, or a numbered line with a marker it does not write, is [`RenderedLine::Other`].

use super::{FILE_HEADER_PREFIX, FileStatus, LineKind, RENAMED_FROM};

/// One line of a rendered prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenderedLine<'a> {
    /// `=== FILE: {path} ({status})` or `=== FILE: {path} (renamed from {old_path})`.
    File(RenderedFile<'a>),
    /// A hunk's `@@` line, as written.
    HunkHeader(&'a str),
    /// One line of a hunk: `{new_line:>6} {marker}{text}`.
    Diff {
        kind: LineKind,
        /// The new-file line number; `None` on removed lines, which have none.
        new_line: Option<u32>,
        /// The line's text as the diff has it, without the marker.
        text: &'a str,
    },
    /// Anything else: the prompt's text around the diff.
    Other(&'a str),
}

/// What a file header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenderedFile<'a> {
    pub path: &'a str,
    pub status: FileStatus,
    /// The path before a rename, when the header names one.
    pub old_path: Option<&'a str>,
}

/// The lines of `text`, split on `\n` only: a diff line's text may itself end with `\r`.
pub fn lines(text: &str) -> impl Iterator<Item = RenderedLine<'_>> {
    text.split_terminator('\n').map(read_line)
}

/// Whether `text` holds at least one rendered file header, i.e. is a review prompt.
pub fn has_files(text: &str) -> bool {
    lines(text).any(|line| matches!(line, RenderedLine::File(_)))
}

/// What one line (without its `\n`) of a rendering is.
pub fn read_line(line: &str) -> RenderedLine<'_> {
    if let Some(header) = line.strip_prefix(FILE_HEADER_PREFIX) {
        return file_header(header).map_or(RenderedLine::Other(line), RenderedLine::File);
    }
    if line.starts_with("@@") {
        return RenderedLine::HunkHeader(line.strip_suffix('\r').unwrap_or(line));
    }
    diff_line(line).unwrap_or(RenderedLine::Other(line))
}

/// The path and status of a header (after `=== FILE: `). The status is matched from the end,
/// because a path may itself hold parentheses; a rename's old path is what follows the first
/// ` (renamed from `. (A path holding that text, or an old path ending in ` (added`, renders the
/// same as another header: the format cannot tell those apart.)
fn file_header(header: &str) -> Option<RenderedFile<'_>> {
    // The header ends with `)`: whitespace after it is not part of any path.
    let header = header.trim_end();
    for status in [
        FileStatus::Added,
        FileStatus::Modified,
        FileStatus::Removed,
        FileStatus::Renamed,
    ] {
        let path = header
            .strip_suffix(')')
            .and_then(|rest| rest.strip_suffix(status.as_str()))
            .and_then(|rest| rest.strip_suffix(" ("));
        if let Some(path) = path {
            return Some(RenderedFile {
                path,
                status,
                old_path: None,
            });
        }
    }
    let (path, old_path) = header.strip_suffix(')')?.split_once(RENAMED_FROM)?;
    Some(RenderedFile {
        path,
        status: FileStatus::Renamed,
        old_path: Some(old_path),
    })
}

/// A numbered line (`    12 +text`, `    13  text`) or a removed one (`       -text`). Numbers
/// wider than the column push it right, so the number is read up to its space, not by offset.
fn diff_line(line: &str) -> Option<RenderedLine<'_>> {
    if let Some(text) = line.strip_prefix(BLANK_NUMBER).and_then(|rest| rest.strip_prefix('-')) {
        return Some(RenderedLine::Diff {
            kind: LineKind::Removed,
            new_line: None,
            text,
        });
    }
    let rest = line.trim_start_matches(' ');
    let (number, rest) = rest.split_once(' ')?;
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let new_line = number.parse().ok()?;
    let (kind, text) = if let Some(text) = rest.strip_prefix('+') {
        (LineKind::Added, text)
    } else {
        (LineKind::Context, rest.strip_prefix(' ')?)
    };
    Some(RenderedLine::Diff {
        kind,
        new_line: Some(new_line),
        text,
    })
}

/// What a removed line has where the number would be: the blank column and its space.
const BLANK_NUMBER: &str = "       ";

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use proptest::prelude::*;

    use super::super::{FileDiff, Hunk, parse_unified, render_into};
    use super::*;

    /// What reading `files`' rendering must give back, line by line.
    fn expected<'a>(files: &'a [FileDiff<'a>]) -> Vec<RenderedLine<'a>> {
        let mut out = vec![RenderedLine::Other("Diff:")];
        for file in files {
            out.push(RenderedLine::File(RenderedFile {
                path: &file.path,
                status: file.status,
                old_path: file.old_path.as_deref(),
            }));
            for hunk in &file.hunks {
                // The header is rebuilt on rendering; its text is compared separately.
                out.push(RenderedLine::HunkHeader(""));
                for line in hunk.lines() {
                    out.push(RenderedLine::Diff {
                        kind: line.kind,
                        new_line: line.new_line.filter(|_| line.kind != LineKind::Removed),
                        text: line.text,
                    });
                }
            }
        }
        out
    }

    fn render(files: &[FileDiff<'_>]) -> String {
        let mut out = String::from("Diff:\n");
        for file in files {
            render_into(file, &mut out);
        }
        out
    }

    /// Reads `rendered` back, checking each hunk header against the hunks in order.
    fn read_back<'a>(rendered: &'a str, files: &[FileDiff<'_>]) -> Vec<RenderedLine<'a>> {
        let mut headers = files.iter().flat_map(|f| f.hunks.iter().map(Hunk::header));
        lines(rendered)
            .map(|line| match line {
                RenderedLine::HunkHeader(header) => {
                    assert_eq!(Some(header.to_owned()), headers.next());
                    RenderedLine::HunkHeader("")
                }
                other => other,
            })
            .collect()
    }

    #[test]
    fn a_rendered_diff_reads_back_to_its_paths_statuses_numbers_and_texts() {
        let diff = "\
diff --git a/src/a (copy).rs b/src/a (copy).rs
--- a/src/a (copy).rs
+++ b/src/a (copy).rs
@@ -10,3 +10,4 @@ fn main() {
 keep (this)
-gone
+    let v = x.unwrap(); // (added)
+
 
diff --git a/docs/a (1).md b/docs/b (2).md
rename from docs/a (1).md
rename to docs/b (2).md
--- a/docs/a (1).md
+++ b/docs/b (2).md
@@ -1234567,2 +12345678,2 @@
-old
+new
  spaced
diff --git a/new (modified).txt b/new (modified).txt
new file mode 100644
--- /dev/null
+++ b/new (modified).txt
@@ -0,0 +1 @@
++plus and -minus
diff --git a/gone.rs b/gone.rs
deleted file mode 100644
--- a/gone.rs
+++ /dev/null
@@ -1 +0,0 @@
-     1 +looks numbered
diff --git a/logo.png b/logo.png
Binary files a/logo.png and b/logo.png differ
";
        let files = parse_unified(diff).unwrap();
        let rendered = render(&files);
        assert_eq!(read_back(&rendered, &files), expected(&files));
        let numbers: Vec<u32> = lines(&rendered)
            .filter_map(|line| match line {
                RenderedLine::Diff { new_line, .. } => new_line,
                _ => None,
            })
            .collect();
        assert_eq!(numbers, [10, 11, 12, 13, 12_345_678, 12_345_679, 1]);
        assert!(has_files(&rendered));
    }

    #[test]
    fn file_headers_keep_parentheses_in_paths_and_tolerate_a_crlf() {
        let read = |line| match read_line(line) {
            RenderedLine::File(file) => Some((file.path, file.status, file.old_path)),
            _ => None,
        };
        assert_eq!(
            read("=== FILE: src/a (copy).rs (modified)"),
            Some(("src/a (copy).rs", FileStatus::Modified, None))
        );
        assert_eq!(
            read("=== FILE: b.rs (renamed from a.rs)\r"),
            Some(("b.rs", FileStatus::Renamed, Some("a.rs")))
        );
        assert_eq!(read("=== FILE: x (renamed)"), Some(("x", FileStatus::Renamed, None)));
        assert_eq!(read("=== FILE: x (copied)"), None);
        assert_eq!(read("=== FILE: x"), None);
    }

    #[test]
    fn lines_the_renderer_does_not_write_are_other_text() {
        for line in [
            "Repository: acme/api",
            "    12 -numbered removal",
            "12+no space",
            " x  y",
            "",
        ] {
            assert_eq!(read_line(line), RenderedLine::Other(line), "{line:?}");
        }
        assert_eq!(
            read_line("99999999999 +past u32"),
            RenderedLine::Other("99999999999 +past u32")
        );
    }

    fn path() -> impl Strategy<Value = String> {
        // Parentheses, but balanced: an unbalanced one can make two headers render alike.
        prop::collection::vec("[a-z0-9._-]{1,6}( \\([a-z0-9 ]{0,5}\\))?", 1..4).prop_map(|parts| parts.join("/"))
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(64),
            ..ProptestConfig::default()
        })]

        #[test]
        fn any_rendering_reads_back_to_what_was_rendered(
            path in path(),
            old_path in prop::option::of(path()),
            status in prop::sample::select(vec![
                FileStatus::Added, FileStatus::Modified, FileStatus::Removed, FileStatus::Renamed,
            ]),
            new_start in prop_oneof![0u32..20, 999_990u32..1_000_010, (u32::MAX - 40)..u32::MAX],
            body in prop::collection::vec(("[ +-]", "[ -~\r]{0,12}"), 1..12),
        ) {
            let body: String = body.iter().map(|(marker, text)| format!("{marker}{text}\n")).collect();
            let text = format!("@@ -1 +{new_start} @@ f (x)\n{body}");
            let file = FileDiff {
                path: Cow::Owned(path),
                old_path: old_path.filter(|_| status == FileStatus::Renamed).map(Cow::Owned),
                status,
                binary: false,
                damaged: false,
                hunks: vec![Hunk::new(&text)],
            };
            let files = [file];
            let rendered = render(&files);
            prop_assert_eq!(read_back(&rendered, &files), expected(&files));
        }
    }
}
