//! Spec diagnostics: every problem carries the file, a byte span and a hint.

use std::ops::Range;
use std::sync::Arc;

use miette::{Diagnostic, NamedSource, SourceSpan};

/// One problem in a spec file, pointing at the offending text.
#[derive(Debug, Clone, thiserror::Error, Diagnostic)]
#[error("{message}")]
pub struct SpecError {
    /// What is wrong, in one sentence.
    pub message: String,
    #[source_code]
    src: NamedSource<Arc<str>>,
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
        self.src.name()
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
        self.errors.push(SpecError {
            message: message.into(),
            src: NamedSource::new(self.name.clone(), self.src.clone()),
            span: span.into(),
            label: label.into(),
            help,
            line,
            column,
        });
    }

    /// Turns a TOML parse or deserialize error into a spec error, improving serde's
    /// wording (unknown fields get a "did you mean").
    pub(crate) fn toml(&mut self, err: &toml::de::Error, fallback: Range<usize>) {
        let span = err.span().unwrap_or(fallback);
        let raw = err.message().trim().to_string();
        let (message, help) = improve_serde_message(&raw);
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
    let first = raw.lines().next().unwrap_or(raw).to_string();
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
    fn suggestions_only_for_near_misses() {
        let keys = ["interval", "timeout", "url"];
        assert_eq!(did_you_mean("intervl", keys), Some("interval"));
        assert_eq!(did_you_mean("timout", keys), Some("timeout"));
        assert_eq!(did_you_mean("zzzzzzzz", keys), None);
    }
}
