//! Check conditions in Gatus's syntax, so users can bring their conditions along:
//! `[STATUS] == 200`, `[BODY].data[0].id == 1`, `len([BODY].items) > 0`,
//! `[STATUS] == any(200, 204)`, `[BODY].name == pat(web-*)`,
//! `[CERTIFICATE_EXPIRATION] > 48h`, `has([BODY].errors) == false`.
//!
//! Parsing and evaluation are pure: evaluation reads an [`Observed`] and returns a
//! [`Verdict`] with a human-readable resolution of the condition.

use std::fmt;
use std::sync::OnceLock;

use crate::duration::Dur;

/// A value a probe can observe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Placeholder {
    /// HTTP status code.
    Status,
    /// Response body (HTTP), command output (exec), parsed as JSON for paths.
    Body,
    /// Latency in milliseconds.
    ResponseTime,
    /// Time until the peer certificate expires.
    CertificateExpiration,
    /// Whether a connection was established.
    Connected,
    /// Resolved or connected IP address.
    Ip,
    /// DNS response code (NOERROR, NXDOMAIN, ...).
    DnsRcode,
    /// Exit code of an exec check.
    ExitCode,
    /// Query result (postgres) or key value (redis).
    Value,
    /// Messages ready in an AMQP queue.
    Messages,
    /// Consumers of an AMQP queue.
    Consumers,
}

impl Placeholder {
    /// All placeholders with their spelling.
    pub const ALL: [(Placeholder, &'static str); 11] = [
        (Placeholder::Status, "STATUS"),
        (Placeholder::Body, "BODY"),
        (Placeholder::ResponseTime, "RESPONSE_TIME"),
        (Placeholder::CertificateExpiration, "CERTIFICATE_EXPIRATION"),
        (Placeholder::Connected, "CONNECTED"),
        (Placeholder::Ip, "IP"),
        (Placeholder::DnsRcode, "DNS_RCODE"),
        (Placeholder::ExitCode, "EXIT_CODE"),
        (Placeholder::Value, "VALUE"),
        (Placeholder::Messages, "MESSAGES"),
        (Placeholder::Consumers, "CONSUMERS"),
    ];

    /// The spelling inside brackets.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(p, _)| *p == self)
            .map(|(_, n)| *n)
            .unwrap_or("?")
    }

    fn parse(name: &str) -> Option<Placeholder> {
        Self::ALL.iter().find(|(_, n)| *n == name).map(|(p, _)| *p)
    }

    fn allows_path(self) -> bool {
        matches!(self, Placeholder::Body | Placeholder::Value)
    }
}

/// One step of a body path: `.name` or `[index]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSeg {
    /// Object key.
    Key(String),
    /// Array index.
    Index(usize),
}

/// A placeholder with an optional JSON path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    /// The observed value.
    pub placeholder: Placeholder,
    /// Path into the JSON document, empty for the whole value.
    pub path: Vec<PathSeg>,
}

/// Either side of a comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operand {
    /// `[X]` or `[BODY].a.b[0]`
    Select(Selector),
    /// `len([X])`
    Len(Selector),
    /// `has([X])`
    Has(Selector),
    /// `any(a, b, ...)` (written on either side; kept on the right once parsed)
    Any(Vec<String>),
    /// `pat(glob)` (written on either side; kept on the right once parsed)
    Pat(String),
    /// A literal as written.
    Literal(String),
}

/// Comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "==",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
        }
    }
}

/// A parsed condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    /// The text as written.
    pub text: String,
    /// Left operand.
    pub left: Operand,
    /// Operator.
    pub op: Op,
    /// Right operand.
    pub right: Operand,
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A parse error with the byte offset inside the condition text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionError {
    /// What is wrong.
    pub message: String,
    /// Byte range inside the condition text.
    pub at: std::ops::Range<usize>,
}

fn err(message: impl Into<String>, at: std::ops::Range<usize>) -> ConditionError {
    ConditionError {
        message: message.into(),
        at,
    }
}

/// Finds the operator outside brackets, parentheses and quotes.
fn find_op(s: &str) -> Option<(usize, Op)> {
    let b = s.as_bytes();
    let mut depth = 0i32;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'[' | b'(' => depth += 1,
            b']' | b')' => depth -= 1,
            b'=' | b'!' | b'<' | b'>' if depth == 0 => {
                let two = b.get(i + 1) == Some(&b'=');
                let op = match (b[i], two) {
                    (b'=', true) => Op::Eq,
                    (b'!', true) => Op::Ne,
                    (b'<', true) => Op::Le,
                    (b'>', true) => Op::Ge,
                    (b'<', false) => Op::Lt,
                    (b'>', false) => Op::Gt,
                    _ => {
                        i += 1;
                        continue;
                    }
                };
                return Some((i, op));
            }
            _ => {}
        }
        i += 1;
    }
    None
}

impl Condition {
    /// Parses one condition.
    pub fn parse(text: &str) -> Result<Condition, ConditionError> {
        let (at, op) = find_op(text).ok_or_else(|| {
            err(
                "no comparison operator: write e.g. `[STATUS] == 200` (operators: ==, !=, <, <=, >, >=)",
                0..text.len(),
            )
        })?;
        let oplen = op.as_str().len();
        let (l, r) = (&text[..at], &text[at + oplen..]);
        let lstart = l.len() - l.trim_start().len();
        let rstart = at + oplen + (r.len() - r.trim_start().len());
        let (l, r) = (l.trim(), r.trim());
        if l.is_empty() {
            return Err(err("missing left-hand side", 0..at.max(1)));
        }
        if r.is_empty() {
            return Err(err("missing right-hand side", at..text.len()));
        }
        let left = parse_operand(l, lstart)?;
        let right = parse_operand(r, rstart)?;
        let is_fn = |o: &Operand| matches!(o, Operand::Any(_) | Operand::Pat(_));
        if is_fn(&left) && is_fn(&right) {
            return Err(err(
                "any() and pat() compare with a value: one side must be a placeholder or a literal",
                0..text.len(),
            ));
        }
        // Gatus accepts any() and pat() on either side; steward keeps them on
        // the right, where evaluation looks for them.
        let (left, right, rstart, r) = if is_fn(&left) {
            (right, left, lstart, l)
        } else {
            (left, right, rstart, r)
        };
        if matches!(left, Operand::Literal(_)) && matches!(right, Operand::Literal(_)) {
            return Err(err(
                "condition compares two literals: one side must be a placeholder such as [STATUS] or [BODY]",
                0..text.len(),
            ));
        }
        if !matches!(op, Op::Eq | Op::Ne) && matches!(right, Operand::Any(_) | Operand::Pat(_)) {
            return Err(err(
                "any() and pat() work only with == and !=",
                rstart..rstart + r.len(),
            ));
        }
        Ok(Condition {
            text: text.trim().to_string(),
            left,
            op,
            right,
        })
    }

    /// Every placeholder this condition reads.
    pub fn placeholders(&self) -> Vec<Placeholder> {
        [&self.left, &self.right]
            .into_iter()
            .filter_map(|o| match o {
                Operand::Select(s) | Operand::Len(s) | Operand::Has(s) => Some(s.placeholder),
                _ => None,
            })
            .collect()
    }
}

fn parse_operand(s: &str, offset: usize) -> Result<Operand, ConditionError> {
    let span = offset..offset + s.len();
    for (fname, kind) in [("len(", 0), ("has(", 1), ("any(", 2), ("pat(", 3)] {
        if let Some(inner) = s.strip_prefix(fname) {
            let inner = inner.strip_suffix(')').ok_or_else(|| {
                err(
                    format!("`{}` is missing its closing `)`", &fname[..3]),
                    span.clone(),
                )
            })?;
            let inner_off = offset + fname.len();
            return match kind {
                0 | 1 => {
                    let sel = parse_selector(inner.trim(), inner_off)?.ok_or_else(|| {
                        err(
                            format!(
                                "{}() takes a placeholder, e.g. {}([BODY].items)",
                                &fname[..3],
                                &fname[..3]
                            ),
                            span.clone(),
                        )
                    })?;
                    Ok(if kind == 0 {
                        Operand::Len(sel)
                    } else {
                        Operand::Has(sel)
                    })
                }
                2 => {
                    let items: Vec<String> =
                        inner.split(',').map(|x| x.trim().to_string()).collect();
                    if items.iter().any(|x| x.is_empty()) {
                        return Err(err("any() needs a comma-separated list of values", span));
                    }
                    Ok(Operand::Any(items))
                }
                _ => Ok(Operand::Pat(inner.trim().to_string())),
            };
        }
    }
    match parse_selector(s, offset)? {
        Some(sel) => Ok(Operand::Select(sel)),
        None => Ok(Operand::Literal(s.trim_matches('"').to_string())),
    }
}

fn parse_selector(s: &str, offset: usize) -> Result<Option<Selector>, ConditionError> {
    let Some(rest) = s.strip_prefix('[') else {
        return Ok(None);
    };
    let close = rest.find(']').ok_or_else(|| {
        err(
            "placeholder is missing its closing `]`",
            offset..offset + s.len(),
        )
    })?;
    let name = &rest[..close];
    // Placeholders are case-insensitive, as in Gatus (`[status]`); paths are not.
    let placeholder = Placeholder::parse(&name.to_ascii_uppercase()).ok_or_else(|| {
        let names: Vec<&str> = Placeholder::ALL.iter().map(|(_, n)| *n).collect();
        let hint = crate::diag::did_you_mean(name, names.iter().copied())
            .map(|b| format!(" (did you mean [{b}]?)"))
            .unwrap_or_else(|| {
                format!(
                    "; known: {}",
                    names
                        .iter()
                        .map(|n| format!("[{n}]"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            });
        err(
            format!("unknown placeholder `[{name}]`{hint}"),
            offset..offset + close + 2,
        )
    })?;
    let mut path_str = &rest[close + 1..];
    let path_off = offset + close + 2;
    let mut path = Vec::new();
    if !path_str.is_empty() && !placeholder.allows_path() {
        return Err(err(
            format!("[{name}] has no fields; only [BODY] and [VALUE] take a path"),
            path_off..offset + s.len(),
        ));
    }
    while !path_str.is_empty() {
        if let Some(r) = path_str.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            if end == 0 {
                return Err(err("empty field name in path", path_off..offset + s.len()));
            }
            path.push(PathSeg::Key(r[..end].to_string()));
            path_str = &r[end..];
        } else if let Some(r) = path_str.strip_prefix('[') {
            let end = r.find(']').ok_or_else(|| {
                err(
                    "index is missing its closing `]`",
                    path_off..offset + s.len(),
                )
            })?;
            let idx = r[..end].trim().parse::<usize>().map_err(|_| {
                err(
                    format!("`{}` is not an array index", &r[..end]),
                    path_off..offset + s.len(),
                )
            })?;
            path.push(PathSeg::Index(idx));
            path_str = &r[end + 1..];
        } else {
            return Err(err(
                format!("unexpected `{path_str}` after the placeholder"),
                path_off..offset + s.len(),
            ));
        }
    }
    Ok(Some(Selector { placeholder, path }))
}

/// What a probe saw; absent fields are values the probe type does not produce.
#[derive(Debug, Default, Clone)]
pub struct Observed {
    /// A connection was made.
    pub connected: bool,
    /// HTTP status.
    pub status: Option<u16>,
    /// Latency in milliseconds.
    pub response_time_ms: Option<f64>,
    /// Body or command output (possibly truncated by the probe).
    pub body: Option<String>,
    /// Time left on the peer certificate, in milliseconds (negative once expired).
    pub certificate_expiration_ms: Option<i64>,
    /// IP address.
    pub ip: Option<String>,
    /// DNS rcode.
    pub dns_rcode: Option<String>,
    /// Exit code.
    pub exit_code: Option<i32>,
    /// Query result / key value.
    pub value: Option<String>,
    /// Queue message count.
    pub messages: Option<u64>,
    /// Queue consumer count.
    pub consumers: Option<u64>,
    json_body: OnceLock<Option<serde_json::Value>>,
    json_value: OnceLock<Option<serde_json::Value>>,
}

/// What one side of a condition resolves to: the text Gatus would compare,
/// or that the value is not there (Gatus's `(INVALID)`).
#[derive(Debug, Clone, PartialEq)]
enum Side {
    Text(String),
    Invalid,
}

impl Side {
    fn text(&self) -> &str {
        match self {
            Side::Text(t) => t,
            Side::Invalid => "INVALID",
        }
    }
}

/// Gatus's integer reading (Go's `strconv.ParseInt(s, 0, 64)`): an optional
/// sign, `0x`/`0o`/`0b` prefixes, a leading `0` meaning octal, and `_`
/// between digits.
fn go_int(s: &str) -> Option<i64> {
    let (neg, body) = match s.as_bytes().first()? {
        b'+' => (false, &s[1..]),
        b'-' => (true, &s[1..]),
        _ => (false, s),
    };
    let b = body.as_bytes();
    let (radix, digits, prefixed) = match b {
        [b'0', p, _, ..] if p.eq_ignore_ascii_case(&b'x') => (16, &body[2..], true),
        [b'0', p, _, ..] if p.eq_ignore_ascii_case(&b'o') => (8, &body[2..], true),
        [b'0', p, _, ..] if p.eq_ignore_ascii_case(&b'b') => (2, &body[2..], true),
        [b'0', _, ..] => (8, &body[1..], true),
        [] => return None,
        _ => (10, body, false),
    };
    // Underscores only between digits (or right after a base prefix).
    let d = digits.as_bytes();
    if d.is_empty()
        || d.last() == Some(&b'_')
        || (!prefixed && d.first() == Some(&b'_'))
        || digits.contains("__")
    {
        return None;
    }
    let clean: String = digits.chars().filter(|c| *c != '_').collect();
    let magnitude = u64::from_str_radix(&clean, radix).ok()?;
    if neg {
        0i64.checked_sub_unsigned(magnitude)
    } else {
        i64::try_from(magnitude).ok()
    }
}

/// A side as a number for `<`, `<=`, `>`, `>=`: a duration (in
/// milliseconds), then an integer as Gatus reads it, then a float. Gatus
/// reads anything else as 0; steward never lets it satisfy an ordering.
fn ordinal(side: &Side) -> Option<f64> {
    let t = match side {
        Side::Text(t) => t.trim(),
        Side::Invalid => return None,
    };
    if let Ok(d) = Dur::parse(t)
        && !d.0.is_zero()
    {
        return Some(d.0.as_secs_f64() * 1000.0);
    }
    go_int(t)
        .map(|n| n as f64)
        .or_else(|| t.parse::<f64>().ok().filter(|f| !f.is_nan()))
}

/// Equality as Gatus decides it: two integers (in any base Go reads) by
/// value, anything else by text.
fn same(a: &Side, b: &Side) -> bool {
    match (a, b) {
        (Side::Text(a), Side::Text(b)) => match (go_int(a), go_int(b)) {
            (Some(x), Some(y)) => x == y,
            _ => a == b,
        },
        _ => false,
    }
}

/// A JSON value's text as Gatus resolves it: strings as they are, objects as
/// compact JSON with sorted keys (Go's `json.Marshal`, HTML characters
/// escaped), arrays as Go prints them (`[a b c]`), numbers and booleans as
/// written.
fn json_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Object(_) => go_marshal(v),
        serde_json::Value::Array(_) => go_print(v),
        other => other.to_string(),
    }
}

fn go_marshal(v: &serde_json::Value) -> String {
    v.to_string()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

/// Go's `%v` of a decoded JSON value.
fn go_print(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "<nil>".into(),
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(a) => {
            format!("[{}]", a.iter().map(go_print).collect::<Vec<_>>().join(" "))
        }
        serde_json::Value::Object(m) => format!(
            "map[{}]",
            m.iter()
                .map(|(k, v)| format!("{k}:{}", go_print(v)))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        other => other.to_string(),
    }
}

impl Observed {
    fn json(&self, p: Placeholder) -> Option<&serde_json::Value> {
        let (cell, text) = match p {
            Placeholder::Body => (&self.json_body, &self.body),
            _ => (&self.json_value, &self.value),
        };
        cell.get_or_init(|| text.as_deref().and_then(|t| serde_json::from_str(t).ok()))
            .as_ref()
    }

    /// The raw text of a placeholder (no path).
    fn raw(&self, p: Placeholder) -> Option<String> {
        let num = |v: Option<i64>| v.map(|n| n.to_string());
        match p {
            Placeholder::Status => num(self.status.map(i64::from)),
            // Whole milliseconds, as Gatus (`Duration.Milliseconds()`).
            Placeholder::ResponseTime => num(self.response_time_ms.map(|ms| ms as i64)),
            Placeholder::CertificateExpiration => num(self.certificate_expiration_ms),
            Placeholder::Connected => Some(self.connected.to_string()),
            Placeholder::Ip => self.ip.clone(),
            Placeholder::DnsRcode => self.dns_rcode.clone(),
            Placeholder::ExitCode => num(self.exit_code.map(i64::from)),
            Placeholder::Messages => num(self.messages.map(|n| n as i64)),
            Placeholder::Consumers => num(self.consumers.map(|n| n as i64)),
            Placeholder::Body => self.body.clone(),
            Placeholder::Value => self.value.clone(),
        }
    }

    /// The JSON value a path leads to; `None` when the document is not
    /// JSON, the path does not exist or leads to `null`.
    fn walk(&self, sel: &Selector) -> Option<&serde_json::Value> {
        let mut cur = self.json(sel.placeholder)?;
        for seg in &sel.path {
            cur = match seg {
                PathSeg::Key(k) => cur.get(k)?,
                PathSeg::Index(i) => cur.get(*i)?,
            };
        }
        (!cur.is_null()).then_some(cur)
    }

    fn select(&self, sel: &Selector) -> Side {
        if sel.path.is_empty() {
            return match self.raw(sel.placeholder) {
                // Gatus trims the body it compares.
                Some(t) if sel.placeholder == Placeholder::Body => Side::Text(t.trim().to_string()),
                Some(t) => Side::Text(t),
                None => Side::Invalid,
            };
        }
        match self.walk(sel) {
            Some(v) => Side::Text(json_text(v)),
            None => Side::Invalid,
        }
    }

    /// `len()`: an array's element count, a string's length in bytes, an
    /// object's length as compact JSON; a whole body that is not a JSON
    /// array, its length in bytes (Gatus's meaning).
    fn len(&self, sel: &Selector) -> Side {
        if sel.path.is_empty() {
            let Some(raw) = self.raw(sel.placeholder) else {
                return Side::Invalid;
            };
            let looks_like_array = raw.starts_with('[') && raw.ends_with(']');
            let n = match self.json(sel.placeholder) {
                Some(serde_json::Value::Array(a)) if looks_like_array => a.len(),
                _ if looks_like_array => raw.trim().len(),
                _ => raw.len(),
            };
            return Side::Text(n.to_string());
        }
        match self.walk(sel) {
            Some(serde_json::Value::Array(a)) => Side::Text(a.len().to_string()),
            Some(v) => Side::Text(json_text(v).len().to_string()),
            None => Side::Invalid,
        }
    }

    /// `has()`: the path leads to a value that is not `null`; without a
    /// path, the value is not empty.
    fn has(&self, sel: &Selector) -> bool {
        if sel.path.is_empty() {
            return matches!(self.select(sel), Side::Text(t) if !t.is_empty());
        }
        self.walk(sel).is_some()
    }
}

/// Outcome of evaluating a condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the condition held.
    pub success: bool,
    /// The condition with observed values filled in, e.g. `[STATUS] (503) == 200`.
    pub resolved: String,
}

fn describe(o: &Operand, v: &Side) -> String {
    match o {
        Operand::Select(s) => format!("{} ({})", sel_text(s), v.text()),
        Operand::Len(s) => format!("len({}) ({})", sel_text(s), v.text()),
        Operand::Has(s) => format!("has({}) ({})", sel_text(s), v.text()),
        Operand::Any(items) => format!("any({})", items.join(", ")),
        Operand::Pat(p) => format!("pat({p})"),
        Operand::Literal(l) => l.clone(),
    }
}

fn sel_text(s: &Selector) -> String {
    let mut t = format!("[{}]", s.placeholder.name());
    for seg in &s.path {
        match seg {
            PathSeg::Key(k) => {
                t.push('.');
                t.push_str(k);
            }
            PathSeg::Index(i) => t.push_str(&format!("[{i}]")),
        }
    }
    t
}

impl Condition {
    /// Evaluates the condition against what a probe observed.
    pub fn evaluate(&self, obs: &Observed) -> Verdict {
        let resolve = |o: &Operand| -> Side {
            match o {
                Operand::Select(s) => obs.select(s),
                Operand::Len(s) => obs.len(s),
                Operand::Has(s) => Side::Text(obs.has(s).to_string()),
                Operand::Literal(l) => Side::Text(l.clone()),
                Operand::Any(_) | Operand::Pat(_) => Side::Invalid,
            }
        };
        let lv = resolve(&self.left);
        let rv = resolve(&self.right);
        let success = match (&self.right, self.op) {
            (Operand::Any(items), op) => {
                let hit = matches!(&lv, Side::Text(t) if items.iter().any(|i| i.trim() == t));
                hit == (op == Op::Eq)
            }
            (Operand::Pat(p), op) => {
                let hit = matches!(&lv, Side::Text(t) if p == "*" || wildmatch::WildMatch::new(p).matches(t));
                hit == (op == Op::Eq)
            }
            (_, Op::Eq) => same(&lv, &rv),
            // A value that is not there differs from everything (Gatus compares
            // its `(INVALID)` text).
            (_, Op::Ne) => !same(&lv, &rv),
            (_, op) => match (ordinal(&lv), ordinal(&rv)) {
                (Some(a), Some(b)) => match op {
                    Op::Lt => a < b,
                    Op::Le => a <= b,
                    Op::Gt => a > b,
                    _ => a >= b,
                },
                // Gatus reads a non-number as 0 (so a missing field passes
                // `< 5`); steward lets it satisfy no ordering.
                _ => false,
            },
        };
        Verdict {
            success,
            resolved: format!(
                "{} {} {}",
                describe(&self.left, &lv),
                self.op.as_str(),
                describe(&self.right, &rv)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs_http(status: u16, body: &str, ms: f64) -> Observed {
        Observed {
            connected: true,
            status: Some(status),
            body: Some(body.to_string()),
            response_time_ms: Some(ms),
            ..Default::default()
        }
    }

    fn eval(cond: &str, o: &Observed) -> bool {
        Condition::parse(cond).unwrap().evaluate(o).success
    }

    // Cases below mirror the behaviour documented for Gatus's conditions
    // (gatus README, "Conditions" and "Functions" tables).
    #[test]
    fn gatus_documented_examples() {
        let o = obs_http(
            200,
            r#"{"status":"UP","data":[{"id":1}],"items":[1,2,3],"name":"web-01"}"#,
            120.0,
        );
        assert!(eval("[STATUS] == 200", &o));
        assert!(!eval("[STATUS] == 201", &o));
        assert!(eval("[STATUS] < 300", &o));
        assert!(eval("[STATUS] == any(200, 204)", &o));
        assert!(!eval("[STATUS] != any(200, 204)", &o));
        assert!(eval("[BODY].status == UP", &o));
        assert!(eval("[BODY].data[0].id == 1", &o));
        assert!(eval("len([BODY].items) == 3", &o));
        assert!(eval("len([BODY].items) > 0", &o));
        assert!(eval("has([BODY].errors) == false", &o));
        assert!(eval("has([BODY].status) == true", &o));
        assert!(eval("[BODY].name == pat(web-*)", &o));
        assert!(!eval("[BODY].name == pat(db-*)", &o));
        assert!(eval("[RESPONSE_TIME] < 300", &o));
        assert!(!eval("[RESPONSE_TIME] > 300", &o));
        assert!(eval("[CONNECTED] == true", &o));
    }

    #[test]
    fn certificate_expiration_compares_durations() {
        let o = Observed {
            connected: true,
            certificate_expiration_ms: Some(72 * 3600 * 1000),
            ..Default::default()
        };
        assert!(eval("[CERTIFICATE_EXPIRATION] > 48h", &o));
        assert!(!eval("[CERTIFICATE_EXPIRATION] > 4d", &o));
    }

    #[test]
    fn missing_values_fail_comparisons() {
        let o = obs_http(500, "not json", 5.0);
        assert!(!eval("[BODY].status == pass", &o));
        assert!(eval("[BODY].status != pass", &o));
        assert!(!eval("len([BODY].items) > 0", &o));
        let v = Condition::parse("[STATUS] == 200").unwrap().evaluate(&o);
        assert_eq!(v.resolved, "[STATUS] (500) == 200");
    }

    #[test]
    fn parse_errors_point_into_the_text() {
        let e = Condition::parse("[STATSU] == 200").unwrap_err();
        assert!(e.message.contains("did you mean [STATUS]"), "{}", e.message);
        assert_eq!(e.at, 0..8);
        assert!(
            Condition::parse("[STATUS] 200")
                .unwrap_err()
                .message
                .contains("operator")
        );
        assert!(Condition::parse("[STATUS] < any(1,2)").is_err());
        assert!(Condition::parse("1 == 2").is_err());
        assert!(Condition::parse("[STATUS].x == 2").is_err());
        assert!(Condition::parse("len([BODY] > 1").is_err());
    }
}
