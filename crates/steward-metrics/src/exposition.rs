//! The Prometheus text exposition format (0.0.4) and OpenMetrics 1.0 text,
//! parsed without copying: metric names, label names and label values
//! borrow from the scrape buffer (a label value or help text with an escape
//! in it is the one thing that allocates).
//!
//! Written from the two format specifications
//! (<https://prometheus.io/docs/instrumenting/exposition_formats/> and
//! <https://github.com/OpenObservability/OpenMetrics/blob/main/specification/OpenMetrics.md>).
//! Where they leave room, it accepts what Prometheus's own scraper accepts:
//! blanks around tokens and comments in the text format; values as Go's
//! `ParseFloat` reads them (`NaN`, `+Inf`, `-Inf`, `Inf` in any case — hex
//! floats are the exception: rejected); unknown escapes in label values kept
//! as written; a trailing comma in a label set. It rejects what must fail a
//! scrape whole: a malformed line, a duplicate label name, a second `TYPE`
//! or `HELP` for one name, a `UNIT` that is not a suffix of its family's
//! name, and in OpenMetrics a missing `# EOF`, anything after it, blank
//! lines and comments.

use std::borrow::Cow;
use std::collections::HashMap;

/// The `Accept` header Prometheus sends when it scrapes: OpenMetrics
/// preferred, the text format understood, anything else tried.
pub const ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// Which of the two text formats a body is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format, version 0.0.4 (`text/plain`).
    Text,
    /// OpenMetrics 1.0 (`application/openmetrics-text`).
    OpenMetrics,
}

impl Format {
    /// The format a response's `Content-Type` names; the text format for
    /// anything that is not OpenMetrics (as Prometheus does).
    pub fn from_content_type(content_type: &str) -> Format {
        let media = content_type.split(';').next().unwrap_or("").trim();
        if media.eq_ignore_ascii_case("application/openmetrics-text") {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }
}

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    /// Only goes up (reset on restart).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Cumulative buckets (`_bucket{le}`), `_sum`, `_count`.
    Histogram,
    /// A histogram of a gauge (OpenMetrics): `_bucket`, `_gsum`, `_gcount`.
    GaugeHistogram,
    /// Quantiles (`{quantile}`), `_sum`, `_count`.
    Summary,
    /// A set of boolean states, one label named like the family (OpenMetrics).
    StateSet,
    /// Constant facts as labels on `_info` with value 1 (OpenMetrics).
    Info,
    /// Untyped (`untyped` in the text format, `unknown` in OpenMetrics).
    Unknown,
}

impl MetricType {
    fn parse(word: &str, format: Format) -> Option<MetricType> {
        Some(match (word, format) {
            ("counter", _) => MetricType::Counter,
            ("gauge", _) => MetricType::Gauge,
            ("histogram", _) => MetricType::Histogram,
            ("summary", _) => MetricType::Summary,
            ("untyped", Format::Text) | ("unknown", Format::OpenMetrics) => MetricType::Unknown,
            ("gaugehistogram", Format::OpenMetrics) => MetricType::GaugeHistogram,
            ("stateset", Format::OpenMetrics) => MetricType::StateSet,
            ("info", Format::OpenMetrics) => MetricType::Info,
            _ => return None,
        })
    }

    /// The name as OpenMetrics writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Histogram => "histogram",
            MetricType::GaugeHistogram => "gaugehistogram",
            MetricType::Summary => "summary",
            MetricType::StateSet => "stateset",
            MetricType::Info => "info",
            MetricType::Unknown => "unknown",
        }
    }

    /// Whether a sample's name may add `suffix` to its family's name. (A
    /// match on constant strings: compared inline, no call per sample.)
    fn allows(self, format: Format, suffix: &str) -> bool {
        let om = format == Format::OpenMetrics;
        match self {
            MetricType::Counter if om => matches!(suffix, "_total" | "_created"),
            MetricType::Histogram => {
                matches!(suffix, "_bucket" | "_count" | "_sum") || (om && suffix == "_created")
            }
            MetricType::GaugeHistogram => matches!(suffix, "_bucket" | "_gcount" | "_gsum"),
            MetricType::Summary => {
                matches!(suffix, "" | "_count" | "_sum") || (om && suffix == "_created")
            }
            MetricType::Info => suffix == "_info",
            _ => suffix.is_empty(),
        }
    }
}

/// One label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its value, unescaped.
    pub value: Cow<'a, str>,
}

/// An exemplar attached to a sample (OpenMetrics).
#[derive(Debug, Clone, PartialEq)]
pub struct Exemplar<'a> {
    /// Its labels (a trace id, typically).
    pub labels: Vec<Label<'a>>,
    /// Its value.
    pub value: f64,
    /// When, in seconds since the epoch.
    pub timestamp: Option<f64>,
}

/// One sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample<'a> {
    /// The sample's metric name (with any suffix such as `_bucket`).
    pub name: &'a str,
    /// Where its labels are in [`Exposition::labels`] (see
    /// [`Exposition::labels_of`]), in the order written.
    pub labels: std::ops::Range<u32>,
    /// Its value.
    pub value: f64,
    /// Its timestamp in milliseconds since the epoch, when the target gave one.
    pub timestamp_ms: Option<i64>,
    /// Its exemplar (OpenMetrics); boxed, as most samples have none.
    pub exemplar: Option<Box<Exemplar<'a>>>,
    /// The series as written: its name and label set, exactly as in the
    /// body (a scraper's key for series it has seen before).
    pub series: &'a str,
    /// The index of its family in [`Exposition::families`]; `None` for a
    /// sample with no `TYPE` or `HELP` line (untyped).
    pub family: Option<u32>,
}

/// A metric family's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Family<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its type (`Unknown` until a `TYPE` line says otherwise).
    pub kind: MetricType,
    /// Its help text, unescaped.
    pub help: Option<Cow<'a, str>>,
    /// Its unit (OpenMetrics).
    pub unit: Option<&'a str>,
}

/// A parsed scrape.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Exposition<'a> {
    /// Every family with metadata, in the order first named.
    pub families: Vec<Family<'a>>,
    /// Every sample, in the order written.
    pub samples: Vec<Sample<'a>>,
    /// The labels of every sample, one after the other (one vector for all,
    /// rather than one per sample).
    pub labels: Vec<Label<'a>>,
}

impl<'a> Exposition<'a> {
    /// A sample's labels.
    pub fn labels_of(&self, sample: &Sample<'a>) -> &[Label<'a>] {
        &self.labels[sample.labels.start as usize..sample.labels.end as usize]
    }
}

/// Why a body is not a valid exposition: where and what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct ParseError {
    /// Line, from 1.
    pub line: usize,
    /// Byte in the line, from 1.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

/// Parses a whole scrape body.
pub fn parse(body: &str, format: Format) -> Result<Exposition<'_>, ParseError> {
    // Room for a sample per 48 bytes and three labels each, reserved at once
    // rather than grown by copying.
    let guess = body.len() / 48 + 1;
    let mut p = Parser {
        format,
        out: Exposition {
            families: Vec::new(),
            samples: Vec::with_capacity(guess),
            labels: Vec::with_capacity(guess * 3),
        },
        by_name: HashMap::new(),
        typed: Vec::new(),
        current: None,
    };
    let lines = match format {
        Format::Text => body,
        Format::OpenMetrics => open_metrics_body(body)?,
    };
    let pieces = match format {
        Format::OpenMetrics => memchr::memchr_iter(b'\n', lines.as_bytes()).count() + 1,
        Format::Text => 0,
    };
    for (i, text) in split_lines(lines).enumerate() {
        let line = Line {
            text,
            pos: 0,
            number: i + 1,
        };
        match format {
            Format::Text => p.text_line(line)?,
            // The body before `# EOF` ends with a line feed (or is empty):
            // the last piece of the split is that ending, not a line.
            Format::OpenMetrics if text.is_empty() && i + 1 == pieces => {}
            Format::OpenMetrics if text.is_empty() => {
                return Err(line.error("blank lines are not allowed in OpenMetrics"));
            }
            Format::OpenMetrics => p.open_metrics_line(line)?,
        }
    }
    Ok(p.out)
}

/// `s.split('\n')`, with memchr.
fn split_lines(s: &str) -> impl Iterator<Item = &str> {
    let mut start = 0;
    memchr::memchr_iter(b'\n', s.as_bytes())
        .chain(std::iter::once(s.len()))
        .map(move |end| {
            let line = &s[start..end];
            start = end + 1;
            line
        })
}

/// Which bytes may continue a name: bit 0 a label name, bit 1 a metric name.
const NAME_CHARS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_alphanumeric() || c == b'_' {
            t[b] = 0b11;
        } else if c == b':' {
            t[b] = 0b10;
        }
        b += 1;
    }
    t
};

/// The lines before the closing `# EOF` (which may be followed by one line
/// feed and nothing else).
fn open_metrics_body(body: &str) -> Result<&str, ParseError> {
    let content = body.strip_suffix('\n').unwrap_or(body);
    if let Some(before) = content.strip_suffix("# EOF")
        && (before.is_empty() || before.ends_with('\n'))
    {
        return Ok(before);
    }
    let mut last = 0;
    for (i, line) in body.split('\n').enumerate() {
        if line == "# EOF" {
            return Err(ParseError {
                line: i + 2,
                column: 1,
                message: "nothing may follow `# EOF`".into(),
            });
        }
        last = i + 1;
    }
    Err(ParseError {
        line: last,
        column: 1,
        message: "the exposition does not end with `# EOF`".into(),
    })
}

struct Parser<'a> {
    format: Format,
    out: Exposition<'a>,
    by_name: HashMap<&'a str, u32>,
    /// Per family: whether a TYPE line named it.
    typed: Vec<bool>,
    /// The family most recently named: the usual home of the next sample.
    current: Option<u32>,
}

/// A cursor over one line.
struct Line<'a> {
    text: &'a str,
    pos: usize,
    number: usize,
}

impl<'a> Line<'a> {
    fn error(&self, message: impl Into<String>) -> ParseError {
        self.error_at(self.pos, message)
    }

    fn error_at(&self, pos: usize, message: impl Into<String>) -> ParseError {
        ParseError {
            line: self.number,
            column: pos + 1,
            message: message.into(),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn at_end(&self) -> bool {
        self.pos >= self.text.len()
    }

    fn rest(&self) -> &'a str {
        &self.text[self.pos..]
    }

    /// Skips blanks (spaces and tabs); whether any were there.
    fn blanks(&mut self) -> bool {
        let start = self.pos;
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
        self.pos > start
    }

    /// Exactly one space (OpenMetrics).
    fn space(&mut self, what: &str) -> Result<(), ParseError> {
        if self.peek() == Some(b' ') {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.error(format!("expected a space before {what}")))
        }
    }

    fn expect(&mut self, byte: u8) -> Result<(), ParseError> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.error(format!(
                "expected `{}`, found {}",
                byte as char,
                self.describe()
            )))
        }
    }

    fn describe(&self) -> String {
        match self.rest().chars().next() {
            None => "the end of the line".into(),
            Some(c) => format!("`{c}`"),
        }
    }

    /// `[a-zA-Z_:][a-zA-Z0-9_:]*`
    fn metric_name(&mut self) -> Result<&'a str, ParseError> {
        self.name(true, "a metric name")
    }

    /// `[a-zA-Z_][a-zA-Z0-9_]*`
    fn label_name(&mut self) -> Result<&'a str, ParseError> {
        self.name(false, "a label name")
    }

    fn name(&mut self, colon: bool, what: &str) -> Result<&'a str, ParseError> {
        let bytes = self.text.as_bytes();
        let start = self.pos;
        let ok_first = |b: u8| b.is_ascii_alphabetic() || b == b'_' || (colon && b == b':');
        match bytes.get(start) {
            Some(&b) if ok_first(b) => {}
            _ => return Err(self.error(format!("expected {what}, found {}", self.describe()))),
        }
        let mask = if colon { 0b10 } else { 0b01 };
        let end = bytes[start + 1..]
            .iter()
            .position(|&b| NAME_CHARS[b as usize] & mask == 0)
            .map_or(bytes.len(), |n| start + 1 + n);
        self.pos = end;
        Ok(&self.text[start..end])
    }

    /// A run of bytes up to a blank or the end.
    fn token(&mut self) -> &'a str {
        let start = self.pos;
        while !matches!(self.peek(), None | Some(b' ' | b'\t')) {
            self.pos += 1;
        }
        &self.text[start..self.pos]
    }

    /// `"…"` with `\\`, `\"` and `\n` unescaped (other escapes kept as written).
    fn quoted(&mut self) -> Result<Cow<'a, str>, ParseError> {
        self.expect(b'"')?;
        let bytes = self.text.as_bytes();
        let start = self.pos;
        let mut escaped = false;
        let mut i = start;
        loop {
            match memchr::memchr2(b'"', b'\\', &bytes[i.min(bytes.len())..]) {
                None => return Err(self.error_at(start - 1, "a label value is not closed")),
                Some(k) if bytes[i + k] == b'"' => {
                    i += k;
                    break;
                }
                Some(k) => {
                    escaped = true;
                    i += k + 2;
                }
            }
        }
        let raw = &self.text[start..i];
        self.pos = i + 1;
        Ok(if escaped {
            Cow::Owned(unescape(raw, false))
        } else {
            Cow::Borrowed(raw)
        })
    }

    /// `{name="value",…}` appended to `labels`; blanks around tokens only
    /// in the text format.
    fn labels(&mut self, format: Format, labels: &mut Vec<Label<'a>>) -> Result<(), ParseError> {
        let loose = format == Format::Text;
        self.expect(b'{')?;
        let first = labels.len();
        loop {
            if loose {
                self.blanks();
            }
            if self.peek() == Some(b'}') {
                self.pos += 1;
                return Ok(());
            }
            let at = self.pos;
            let name = self.label_name()?;
            if loose {
                self.blanks();
            }
            self.expect(b'=')?;
            if loose {
                self.blanks();
            }
            let value = self.quoted()?;
            if labels[first..].iter().any(|l| l.name == name) {
                return Err(self.error_at(at, format!("label `{name}` appears twice")));
            }
            labels.push(Label { name, value });
            if loose {
                self.blanks();
            }
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {}
                _ => {
                    return Err(self.error(format!(
                        "expected `,` or `}}` after a label, found {}",
                        self.describe()
                    )));
                }
            }
        }
    }

    fn value(&mut self, what: &str) -> Result<f64, ParseError> {
        let at = self.pos;
        let word = self.token();
        parse_float(word).ok_or_else(|| {
            self.error_at(
                at,
                if word.is_empty() {
                    format!("expected {what}")
                } else {
                    format!("`{word}` is not a valid {what}")
                },
            )
        })
    }
}

/// A float as Go's `ParseFloat` reads one (decimal only).
fn parse_float(word: &str) -> Option<f64> {
    // Rust's parser takes `inf`, `infinity` and `nan` in any case with an
    // optional sign, as Go's does; it takes neither Go's underscores (which
    // Go allows only after a base prefix) nor its hex floats.
    word.parse::<f64>().ok()
}

/// Unescapes `\\`, `\n` and (in label values and OpenMetrics help) `\"`.
fn unescape(raw: &str, help_text: bool) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('"') if !help_text => out.push('"'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

impl<'a> Parser<'a> {
    fn text_line(&mut self, mut line: Line<'a>) -> Result<(), ParseError> {
        line.blanks();
        match line.peek() {
            None => Ok(()),
            Some(b'#') => {
                line.pos += 1;
                if !line.blanks() {
                    return Ok(()); // `#text`: a comment
                }
                let keyword = line.token();
                match keyword {
                    "HELP" | "TYPE" => {}
                    _ => return Ok(()), // any other comment
                }
                line.blanks();
                let at = line.pos;
                let name = line.metric_name()?;
                if keyword == "TYPE" {
                    line.blanks();
                    let tat = line.pos;
                    let word = line.token();
                    let kind = MetricType::parse(word, Format::Text).ok_or_else(|| {
                        line.error_at(tat, format!("`{word}` is not a metric type"))
                    })?;
                    line.blanks();
                    if !line.at_end() {
                        return Err(line.error("unexpected text after the type"));
                    }
                    self.set_type(&line, at, name, kind)
                } else {
                    if !line.at_end() && !line.blanks() {
                        return Err(line.error("expected a blank after the metric name"));
                    }
                    let text = line.rest();
                    let help = if text.contains('\\') {
                        Cow::Owned(unescape(text, true))
                    } else {
                        Cow::Borrowed(text)
                    };
                    self.set_help(&line, at, name, help)
                }
            }
            Some(_) => {
                let start = line.pos;
                let name = line.metric_name()?;
                line.blanks();
                let first = self.out.labels.len() as u32;
                let mut end = start + name.len();
                if line.peek() == Some(b'{') {
                    line.labels(Format::Text, &mut self.out.labels)?;
                    end = line.pos;
                    line.blanks();
                }
                let series = &line.text[start..end];
                let labels = first..self.out.labels.len() as u32;
                let value = line.value("sample value")?;
                line.blanks();
                let timestamp_ms = if line.at_end() {
                    None
                } else {
                    let at = line.pos;
                    let word = line.token();
                    Some(word.parse::<i64>().map_err(|_| {
                        line.error_at(at, format!("`{word}` is not a timestamp in milliseconds"))
                    })?)
                };
                line.blanks();
                if !line.at_end() {
                    return Err(line.error("unexpected text after the sample"));
                }
                let family = self.family_of(name);
                self.out.samples.push(Sample {
                    name,
                    labels,
                    value,
                    timestamp_ms,
                    exemplar: None,
                    series,
                    family,
                });
                Ok(())
            }
        }
    }

    fn open_metrics_line(&mut self, mut line: Line<'a>) -> Result<(), ParseError> {
        if line.peek() == Some(b'#') {
            line.pos += 1;
            line.space("a keyword")?;
            let kat = line.pos;
            let keyword = line.token();
            if !matches!(keyword, "TYPE" | "HELP" | "UNIT") {
                return Err(line.error_at(
                    kat,
                    "OpenMetrics allows only `# TYPE`, `# HELP`, `# UNIT` and `# EOF` after `#`",
                ));
            }
            line.space("the metric name")?;
            let at = line.pos;
            let name = line.metric_name()?;
            match keyword {
                "TYPE" => {
                    line.space("the type")?;
                    let tat = line.pos;
                    let word = line.rest();
                    let kind = MetricType::parse(word, Format::OpenMetrics).ok_or_else(|| {
                        line.error_at(tat, format!("`{word}` is not an OpenMetrics type"))
                    })?;
                    self.set_type(&line, at, name, kind)
                }
                "HELP" => {
                    let text = if line.at_end() {
                        ""
                    } else {
                        line.space("the help text")?;
                        line.rest()
                    };
                    let help = if text.contains('\\') {
                        Cow::Owned(unescape(text, false))
                    } else {
                        Cow::Borrowed(text)
                    };
                    self.set_help(&line, at, name, help)
                }
                _ => {
                    let unit = if line.at_end() {
                        ""
                    } else {
                        line.space("the unit")?;
                        line.rest()
                    };
                    let uat = line.pos;
                    if !unit.is_empty()
                        && !name.strip_suffix(unit).is_some_and(|n| n.ends_with('_'))
                    {
                        return Err(line.error_at(
                            uat,
                            format!("unit `{unit}` is not a suffix of the metric family `{name}`"),
                        ));
                    }
                    let i = self.family_index(name);
                    let fam = &mut self.out.families[i as usize];
                    if fam.unit.is_some() {
                        return Err(line.error_at(at, format!("a second UNIT line for `{name}`")));
                    }
                    fam.unit = Some(unit);
                    Ok(())
                }
            }
        } else {
            let start = line.pos;
            let name = line.metric_name()?;
            let first = self.out.labels.len() as u32;
            if line.peek() == Some(b'{') {
                line.labels(Format::OpenMetrics, &mut self.out.labels)?;
            }
            let series = &line.text[start..line.pos];
            let labels = first..self.out.labels.len() as u32;
            line.space("the value")?;
            let value = line.value("sample value")?;
            let mut timestamp_ms = None;
            let mut exemplar = None;
            if !line.at_end() {
                line.space("a timestamp or an exemplar")?;
                if line.peek() != Some(b'#') {
                    timestamp_ms = Some(self.seconds(&mut line)?);
                    if !line.at_end() {
                        line.space("an exemplar")?;
                    }
                }
                if !line.at_end() {
                    line.expect(b'#')?;
                    line.space("the exemplar's labels")?;
                    let mut labels = Vec::new();
                    line.labels(Format::OpenMetrics, &mut labels)?;
                    line.space("the exemplar's value")?;
                    let value = line.value("exemplar value")?;
                    let timestamp = if line.at_end() {
                        None
                    } else {
                        line.space("the exemplar's timestamp")?;
                        Some(line.value("exemplar timestamp")?)
                    };
                    let runes: usize = labels
                        .iter()
                        .map(|l| l.name.chars().count() + l.value.chars().count())
                        .sum();
                    if runes > 128 {
                        return Err(
                            line.error("an exemplar's labels may hold at most 128 characters")
                        );
                    }
                    exemplar = Some(Box::new(Exemplar {
                        labels,
                        value,
                        timestamp,
                    }));
                }
            }
            if !line.at_end() {
                return Err(line.error("unexpected text after the sample"));
            }
            let family = self.family_of(name);
            self.out.samples.push(Sample {
                name,
                labels,
                value,
                timestamp_ms,
                exemplar,
                series,
                family,
            });
            Ok(())
        }
    }

    /// An OpenMetrics timestamp (seconds, possibly fractional) in milliseconds.
    fn seconds(&self, line: &mut Line<'a>) -> Result<i64, ParseError> {
        let at = line.pos;
        let s = line.value("timestamp")?;
        if !s.is_finite() {
            return Err(line.error_at(at, "a timestamp must be a finite number"));
        }
        Ok((s * 1000.0) as i64)
    }

    fn family_index(&mut self, name: &'a str) -> u32 {
        if let Some(&i) = self.by_name.get(name) {
            self.current = Some(i);
            return i;
        }
        let i = self.out.families.len() as u32;
        self.out.families.push(Family {
            name,
            kind: MetricType::Unknown,
            help: None,
            unit: None,
        });
        self.by_name.insert(name, i);
        self.typed.push(false);
        self.current = Some(i);
        i
    }

    fn set_type(
        &mut self,
        line: &Line<'a>,
        at: usize,
        name: &'a str,
        kind: MetricType,
    ) -> Result<(), ParseError> {
        if self
            .by_name
            .get(name)
            .is_some_and(|&i| self.typed[i as usize])
        {
            return Err(line.error_at(at, format!("a second TYPE line for `{name}`")));
        }
        let i = self.family_index(name);
        self.out.families[i as usize].kind = kind;
        self.typed[i as usize] = true;
        Ok(())
    }

    fn set_help(
        &mut self,
        line: &Line<'a>,
        at: usize,
        name: &'a str,
        help: Cow<'a, str>,
    ) -> Result<(), ParseError> {
        let i = self.family_index(name);
        let fam = &mut self.out.families[i as usize];
        if fam.help.is_some() {
            return Err(line.error_at(at, format!("a second HELP line for `{name}`")));
        }
        fam.help = Some(help);
        Ok(())
    }

    /// The family a sample belongs to: the current one when its name fits,
    /// otherwise the declared family whose name and type explain it.
    fn family_of(&self, name: &str) -> Option<u32> {
        let fits = |i: u32| {
            let f = &self.out.families[i as usize];
            name.strip_prefix(f.name)
                .is_some_and(|suffix| f.kind.allows(self.format, suffix))
        };
        if let Some(i) = self.current
            && fits(i)
        {
            return Some(i);
        }
        if let Some(&i) = self.by_name.get(name)
            && fits(i)
        {
            return Some(i);
        }
        for suffix in [
            "_total", "_created", "_bucket", "_count", "_sum", "_gcount", "_gsum", "_info",
        ] {
            if let Some(base) = name.strip_suffix(suffix)
                && let Some(&i) = self.by_name.get(base)
                && fits(i)
            {
                return Some(i);
            }
        }
        None
    }
}
