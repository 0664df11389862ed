//! Spec diagnostics: every problem carries the file, a byte span and a hint.

use std::ops::Range;
use std::sync::Arc;

use miette::{Diagnostic, MietteError, MietteSpanContents, SourceCode, SourceSpan, SpanContents};

/// Lines longer than this (in characters) near an error are cut to a window.
const WIDE_LINE: usize = 160;
/// Characters kept on either side of an error on a cut line.
const WINDOW: usize = 60;

/// The text an error shows. Usually the whole spec; when a line near the
/// error is long, only the error's line and its neighbours, each long one cut
/// to a window around the error — read by miette with the real line and
/// column numbers, so a spec with a 50 KB line still gets a one-screen report
/// that points at the right place.
#[derive(Debug, Clone)]
struct Excerpt {
    name: String,
    text: Arc<str>,
    /// 0-based line of the file where `text` starts.
    first_line: usize,
    /// 0-based line of `text` where the error is, and the characters of that
    /// line hidden before the window.
    error_line: usize,
    hidden: usize,
}

impl SourceCode for Excerpt {
    fn read_span<'a>(
        &'a self,
        span: &SourceSpan,
        context_lines_before: usize,
        context_lines_after: usize,
    ) -> Result<Box<dyn SpanContents<'a> + 'a>, MietteError> {
        let inner =
            self.text
                .as_ref()
                .read_span(span, context_lines_before, context_lines_after)?;
        // Columns in characters, as steward reports them everywhere (miette
        // counts bytes), plus what the window hides on the error's line.
        let off = span.offset();
        let line_start = self
            .text
            .get(..off)
            .and_then(|t| t.rfind('\n'))
            .map_or(0, |i| i + 1);
        let column = match self.text.get(line_start..off) {
            Some(before) if context_lines_before == 0 => {
                before.chars().count()
                    + if inner.line() == self.error_line {
                        self.hidden
                    } else {
                        0
                    }
            }
            _ => inner.column(),
        };
        Ok(Box::new(MietteSpanContents::new_named(
            self.name.clone(),
            inner.data(),
            *inner.span(),
            inner.line() + self.first_line,
            column,
            inner.line_count(),
        )))
    }
}

/// One problem in a spec file, pointing at the offending text.
#[derive(Debug, Clone, thiserror::Error, Diagnostic)]
#[error("{message}")]
pub struct SpecError {
    /// What is wrong, in one sentence.
    pub message: String,
    #[source_code]
    src: Excerpt,
    #[label("{label}")]
    span: SourceSpan,
    label: String,
    /// How to fix it, when we can tell.
    #[help]
    pub help: Option<String>,
    /// 1-based line of the span start.
    pub line: usize,
    /// 1-based column (in characters) of the span start.
    pub column: usize,
}

impl SpecError {
    /// The file this error points into.
    pub fn file(&self) -> &str {
        &self.src.name
    }
}

/// All problems found in one spec; reported together so a user fixes them in one go.
#[derive(Debug, Clone, thiserror::Error, Diagnostic)]
#[error("{file}: {} problem{} in the spec; nothing was started", errors.len(), if errors.len() == 1 { "" } else { "s" })]
#[diagnostic(code(steward::spec::invalid))]
pub struct SpecErrors {
    /// The spec file.
    pub file: String,
    /// Every problem, in file order.
    #[related]
    pub errors: Vec<SpecError>,
}

/// Collects errors against one source text.
pub(crate) struct Diagnostics {
    name: String,
    src: Arc<str>,
    pub(crate) errors: Vec<SpecError>,
}

impl Diagnostics {
    pub(crate) fn new(name: &str, src: &str) -> Self {
        Self {
            name: name.to_string(),
            src: Arc::from(src),
            errors: Vec::new(),
        }
    }

    pub(crate) fn error(
        &mut self,
        span: Range<usize>,
        message: impl Into<String>,
        label: impl Into<String>,
        help: Option<String>,
    ) {
        let span = clamp(span, self.src.len());
        let (line, column) = line_col(&self.src, span.start);
        let (src, span) = excerpt(&self.name, &self.src, span, line);
        self.errors.push(SpecError {
            message: clip(message.into()),
            src,
            span: span.into(),
            label: clip(label.into()),
            help,
            line,
            column,
        });
    }

    /// Turns a TOML parse or deserialize error into a spec error, improving serde's
    /// wording (unknown fields get a "did you mean").
    /// `key`, when given, is named in the message.
    pub(crate) fn toml(
        &mut self,
        err: &toml::de::Error,
        fallback: Range<usize>,
        key: Option<&str>,
    ) {
        let span = err.span().unwrap_or(fallback);
        let raw = err.message().trim().to_string();
        let (mut message, help) = improve_serde_message(&raw);
        if raw == "duplicate key" {
            // Name what is duplicated — the whole table header when it is
            // one — and the line where it first appears.
            let line_start = self.src[..span.start.min(self.src.len())]
                .rfind('\n')
                .map_or(0, |i| i + 1);
            let line_end = self.src[line_start..]
                .find('\n')
                .map_or(self.src.len(), |i| line_start + i);
            let line = self.src[line_start..line_end].trim();
            let header = line
                .strip_prefix('[')
                .and_then(|l| l.split(']').next())
                .map(|h| h.trim_matches(['[', ' ']));
            let name = header.unwrap_or_else(|| self.src.get(span.clone()).unwrap_or("").trim());
            let first = header
                .and_then(|_| self.src[..line_start].find(line))
                .map(|at| line_col(&self.src, at).0);
            if !name.is_empty() {
                message = match first {
                    Some(l) => format!("`{name}` is defined twice (first on line {l})"),
                    None => format!("`{name}` is defined twice"),
                };
            }
        }
        let message = match key {
            Some(k) if !message.contains(&format!("`{k}`")) => format!("`{k}`: {message}"),
            _ => message,
        };
        self.error(span, message, "here", help);
    }

    /// 1-based line of a byte offset in this source.
    pub(crate) fn line_of(&self, offset: usize) -> usize {
        line_col(&self.src, offset).0
    }

    pub(crate) fn finish(mut self) -> Result<(), SpecErrors> {
        if self.errors.is_empty() {
            return Ok(());
        }
        self.errors.sort_by_key(|e| (e.line, e.column));
        self.errors
            .dedup_by(|a, b| a.line == b.line && a.column == b.column && a.message == b.message);
        Err(SpecErrors {
            file: self.name,
            errors: self.errors,
        })
    }
}

/// The source an error at `span` (on 1-based `line`) shows, and the span in it.
fn excerpt(name: &str, src: &Arc<str>, span: Range<usize>, line: usize) -> (Excerpt, Range<usize>) {
    let whole = || Excerpt {
        name: name.to_string(),
        text: src.clone(),
        first_line: 0,
        error_line: line - 1,
        hidden: 0,
    };
    let starts: Vec<usize> = std::iter::once(0)
        .chain(src.match_indices('\n').map(|(i, _)| i + 1))
        .collect();
    let line_of = |i: usize| {
        let start = starts[i];
        let end = starts.get(i + 1).map(|e| e - 1).unwrap_or(src.len());
        start..end
    };
    let at = line - 1;
    let first = at.saturating_sub(1);
    let last = (at + 1).min(starts.len() - 1);
    let wide = (first..=last).any(|i| src[line_of(i)].chars().count() > WIDE_LINE);
    if !wide {
        return (whole(), span);
    }
    let mut text = String::new();
    let (mut new_span, mut hidden) = (0..0, 0);
    for i in first..=last {
        let r = line_of(i);
        let chars: Vec<(usize, char)> = src[r.clone()].char_indices().collect();
        let (from, to) = if i == at {
            let col = chars
                .iter()
                .take_while(|(b, _)| r.start + b < span.start)
                .count();
            let end = chars
                .iter()
                .take_while(|(b, _)| r.start + b < span.end.min(r.end))
                .count()
                .max(col + 1);
            let from = col.saturating_sub(WINDOW);
            (from, (end + WINDOW).min(col + 2 * WINDOW).min(chars.len()))
        } else {
            (0, (2 * WINDOW).min(chars.len()))
        };
        let byte = |c: usize| chars.get(c).map(|(b, _)| r.start + b).unwrap_or(r.end);
        if from > 0 {
            text.push('…');
        }
        let window_start = text.len();
        text.push_str(&src[byte(from)..byte(to)]);
        if i == at {
            hidden = from.saturating_sub(usize::from(from > 0));
            let start = window_start + span.start.max(byte(from)) - byte(from);
            let end = window_start + span.end.clamp(span.start, byte(to)) - byte(from);
            new_span = start..end.max(start);
        }
        if to < chars.len() {
            text.push('…');
        }
        if i != last {
            text.push('\n');
        }
    }
    (
        Excerpt {
            name: name.to_string(),
            text: Arc::from(text),
            first_line: first,
            error_line: at - first,
            hidden,
        },
        new_span,
    )
}

/// A message that quotes a long value keeps its start (3 × `WINDOW` characters).
fn clip(text: String) -> String {
    match text.char_indices().nth(3 * WINDOW) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

fn clamp(span: Range<usize>, len: usize) -> Range<usize> {
    let start = span.start.min(len);
    let end = span.end.clamp(start, len);
    start..end
}

/// 1-based line and character column of a byte offset.
pub(crate) fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let before = &src[..offset.min(src.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// The closest candidate by edit distance, if it is close enough to be a typo.
pub fn did_you_mean<'a>(
    given: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(given, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3) && *d < c.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn improve_serde_message(raw: &str) -> (String, Option<String>) {
    // serde: "unknown field `intervl`, expected one of `a`, `b`" / "expected `a` or `b`"
    if let Some(rest) = raw.strip_prefix("unknown field `")
        && let Some((field, tail)) = rest.split_once('`')
    {
        let expected: Vec<&str> = tail.split('`').skip(1).step_by(2).collect();
        let help = match did_you_mean(field, expected.iter().copied()) {
            Some(best) => Some(format!("did you mean `{best}`?")),
            None if !expected.is_empty() => {
                Some(format!("known keys here: {}", expected.join(", ")))
            }
            None => None,
        };
        return (format!("unknown key `{field}`"), help);
    }
    if let Some(rest) = raw.strip_prefix("unknown variant `")
        && let Some((given, tail)) = rest.split_once('`')
    {
        let expected: Vec<&str> = tail.split('`').skip(1).step_by(2).collect();
        let help = match did_you_mean(given, expected.iter().copied()) {
            Some(best) => Some(format!("did you mean `{best}`?")),
            None => Some(format!("expected one of: {}", expected.join(", "))),
        };
        return (format!("unknown value `{given}`"), help);
    }
    if let Some(field) = raw.strip_prefix("missing field `") {
        let field = field.trim_end_matches('`');
        return (format!("missing required key `{field}`"), None);
    }
    if raw == "duplicate key" {
        return (
            "duplicate name: this is already defined above".into(),
            Some("every table and key may appear once; rename or merge the two".into()),
        );
    }
    let first = raw.lines().next().unwrap_or(raw);
    // serde names Rust types; say what a spec writer would.
    let first = [
        ("expected u8", "expected a whole number from 0 to 255"),
        ("expected u16", "expected a whole number from 0 to 65535"),
        (
            "expected u32",
            "expected a whole number from 0 to 4294967295",
        ),
        ("expected u64", "expected a whole number, 0 or more"),
        ("expected usize", "expected a whole number, 0 or more"),
        ("expected i64", "expected a whole number"),
        ("expected f64", "expected a number"),
        ("expected a boolean", "expected `true` or `false`"),
    ]
    .iter()
    .fold(first.to_string(), |m, (rust, words)| {
        if m.ends_with(rust) {
            format!("{}{words}", &m[..m.len() - rust.len()])
        } else {
            m
        }
    });
    (first, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_characters() {
        let src = "a = 1\nbé = \"x\"\n";
        let off = src.find('=').unwrap();
        assert_eq!(line_col(src, off), (1, 3));
        let off2 = src.rfind('=').unwrap();
        assert_eq!(line_col(src, off2), (2, 4));
    }

    #[test]
    fn errors_on_long_lines_show_a_window_with_the_real_position() {
        let long = "x".repeat(40_000);
        let src = format!("[steward]\nname = \"{long}\"\nbogus = 1 # {long}\n[check.a]\n");
        let mut d = Diagnostics::new("long.toml", &src);
        let at = src.find("bogus").unwrap();
        d.error(at..at + 5, "unknown key `bogus`", "here", None);
        let late = src.rfind("xxx#").unwrap_or(src.len() - 20);
        d.error(late..late + 1, "late", "here", None);
        let e = d.finish().unwrap_err();
        let text = format!("{:?}", miette::Report::new(e));
        assert!(text.len() < 4_000, "{} bytes of report", text.len());
        assert!(text.contains("long.toml:3:1]"), "{text}");
        assert!(text.contains("bogus = 1"), "{text}");
        assert!(text.contains('…'), "{text}");
    }

    #[test]
    fn errors_far_into_a_long_line_keep_their_column() {
        let src = format!("a = \"{}\" bogus\n", "é".repeat(20_000));
        let mut d = Diagnostics::new("s.toml", &src);
        let at = src.find("bogus").unwrap();
        d.error(at..at + 5, "junk after a value", "here", None);
        let e = d.finish().unwrap_err();
        assert_eq!((e.errors[0].line, e.errors[0].column), (1, 20_008));
        let text = format!("{:?}", miette::Report::new(e));
        assert!(text.contains("s.toml:1:20008]"), "{text}");
        assert!(text.contains("bogus"), "{text}");
        assert!(text.len() < 4_000, "{} bytes", text.len());
    }

    #[test]
    fn suggestions_only_for_near_misses() {
        let keys = ["interval", "timeout", "url"];
        assert_eq!(did_you_mean("intervl", keys), Some("interval"));
        assert_eq!(did_you_mean("timout", keys), Some("timeout"));
        assert_eq!(did_you_mean("zzzzzzzz", keys), None);
    }
}
