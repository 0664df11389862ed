//! PromQL evaluation over the series store, following Prometheus 2.x:
//! instant selectors look back 5 minutes for the newest sample (none when it
//! is a staleness marker), range selectors take the samples in
//! `[t - range, t]`, functions and aggregations drop the metric name where
//! Prometheus does, binary operators match on all labels but the name (or
//! `on`/`ignoring`, with `group_left`/`group_right`).
//!
//! What is not evaluated yet says so in its error: subqueries, `@`, and the
//! functions not listed in [`call`].

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hash, Hasher};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use promql_parser::label::MatchOp as P;
use promql_parser::parser::{
    AggregateExpr, BinaryExpr, Call, Expr, LabelModifier, MatrixSelector, Offset,
    VectorMatchCardinality, VectorSelector,
};

use crate::scrape::is_stale;
use crate::tsdb::head::{Head, MatchOp, Matcher};

/// How far back an instant selector looks for a sample (Prometheus's default).
pub const LOOKBACK_MS: i64 = 5 * 60 * 1000;

/// A series' labels, sorted by name, `__name__` among them when it has one
/// (shared strings: copying a label set copies no text).
pub type Labels = Vec<(Arc<str>, Arc<str>)>;

/// One element of an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Its labels.
    pub labels: Labels,
    /// Its value.
    pub value: f64,
}

/// One element of a range vector (or of a range query's result).
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Its labels.
    pub labels: Labels,
    /// `(ms, value)` in time order.
    pub points: Vec<(i64, f64)>,
}

/// A PromQL value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A number.
    Scalar(f64),
    /// A string.
    String(String),
    /// One sample per series.
    Vector(Vec<Sample>),
    /// Samples over a range per series.
    Matrix(Vec<Series>),
}

type R<T> = Result<T, String>;

/// What an `*_over_time` function makes of a series' points.
type OverTime<'f> = &'f dyn Fn(&[(i64, f64)]) -> f64;

/// Why a query failed: it does not parse (Prometheus's `bad_data`) or it
/// cannot be evaluated (`execution`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// The expression does not parse.
    #[error("{0}")]
    Parse(String),
    /// The expression parses but cannot be evaluated.
    #[error("{0}")]
    Eval(String),
}

impl From<QueryError> for String {
    fn from(e: QueryError) -> String {
        e.to_string()
    }
}

fn parsed(expr: &str) -> Result<Expr, QueryError> {
    promql_parser::parser::parse(expr).map_err(QueryError::Parse)
}

/// Evaluates `expr` at `t_ms`.
pub fn instant(head: &Head, expr: &str, t_ms: i64) -> Result<Value, QueryError> {
    let e = parsed(expr)?;
    Evaluator {
        head,
        end: t_ms,
        cache: Default::default(),
    }
    .eval(&e, t_ms)
    .map_err(QueryError::Eval)
}

/// Evaluates `expr` at every step from `start_ms` to `end_ms` (both
/// included), as a range query does: one series per label set.
pub fn range(
    head: &Head,
    expr: &str,
    start_ms: i64,
    end_ms: i64,
    step_ms: i64,
) -> Result<Vec<Series>, QueryError> {
    if step_ms <= 0 {
        return Err(QueryError::Parse(
            "zero or negative query resolution step widths are not accepted. Try a positive integer".into(),
        ));
    }
    if end_ms < start_ms {
        return Err(QueryError::Parse(
            "end timestamp must not be before start time".into(),
        ));
    }
    if (end_ms - start_ms) / step_ms > 11_000 {
        return Err(QueryError::Parse(
            "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)".into(),
        ));
    }
    let parsed = parsed(expr)?;
    let ev = Evaluator {
        head,
        end: end_ms,
        cache: Default::default(),
    };
    let mut out: BTreeMap<Labels, Vec<(i64, f64)>> = BTreeMap::new();
    let mut t = start_ms;
    while t <= end_ms {
        match ev.eval(&parsed, t).map_err(QueryError::Eval)? {
            Value::Scalar(v) => out.entry(Vec::new()).or_default().push((t, v)),
            Value::Vector(v) => {
                for s in v {
                    out.entry(s.labels).or_default().push((t, s.value));
                }
            }
            Value::String(_) | Value::Matrix(_) => {
                return Err(QueryError::Parse(
                    "invalid expression type for range query, must be Scalar or instant Vector"
                        .into(),
                ));
            }
        }
        t += step_ms;
    }
    Ok(out
        .into_iter()
        .map(|(labels, points)| Series { labels, points })
        .collect())
}

struct Evaluator<'a> {
    head: &'a Head,
    /// The last time this evaluator will be asked about (a range query's
    /// end; an instant query's time).
    end: i64,
    /// Each selector's series, read once for the whole query: `(key, window
    /// width)` → the series from the first step's start to the last step's
    /// end. A range query's steps then slice them instead of decoding the
    /// chunks again at every step.
    cache: std::cell::RefCell<HashMap<(String, i64), Reads>>,
}

/// A selector's series as read for a query, shared by its steps.
type Reads = Rc<Vec<Read>>;

/// What is called with each series of a range selector and its window.
type EachWindow<'f> = &'f mut dyn FnMut(&Read, &[(i64, f64)]);

/// A selected series as read for a whole query: its labels with and without
/// the name (made once, not at every step), and its points.
struct Read {
    labels: Labels,
    nameless: Labels,
    points: Vec<(i64, f64)>,
}

impl Read {
    /// Its points in `[from, to]`.
    fn window(&self, from: i64, to: i64) -> &[(i64, f64)] {
        let lo = self.points.partition_point(|p| p.0 < from);
        let hi = self.points.partition_point(|p| p.0 <= to);
        &self.points[lo..hi.max(lo)]
    }
}

fn ms(d: Duration) -> i64 {
    d.as_millis() as i64
}

fn offset_ms(o: &Option<Offset>) -> i64 {
    match o {
        None => 0,
        Some(Offset::Pos(d)) => ms(*d),
        Some(Offset::Neg(d)) => -ms(*d),
    }
}

fn drop_name(mut l: Labels) -> Labels {
    l.retain(|(n, _)| &**n != "__name__");
    l
}

fn get<'l>(l: &'l Labels, name: &str) -> &'l str {
    l.iter()
        .find(|(n, _)| &**n == name)
        .map_or("", |(_, v)| &**v)
}

fn set(l: &mut Labels, name: &str, value: &str) {
    l.retain(|(n, _)| &**n != name);
    if !value.is_empty() {
        l.push((Arc::from(name), Arc::from(value)));
        l.sort();
    }
}

/// A selector's matchers, the metric name as a `__name__` matcher.
pub(crate) fn matchers(vs: &VectorSelector) -> R<Vec<Matcher>> {
    if vs.at.is_some() {
        return Err("the `@` modifier is not supported yet".into());
    }
    if !vs.matchers.or_matchers.is_empty() {
        return Err("`or` between matchers is not supported".into());
    }
    let mut out = Vec::new();
    for m in &vs.matchers.matchers {
        let op = match m.op {
            P::Equal => MatchOp::Eq,
            P::NotEqual => MatchOp::Neq,
            P::Re(_) => MatchOp::Re,
            P::NotRe(_) => MatchOp::Nre,
        };
        out.push(Matcher::new(&m.name, op, &m.value).map_err(|e| e.to_string())?);
    }
    if let Some(name) = &vs.name
        && !out.iter().any(|m| m.name == "__name__")
    {
        out.push(Matcher::new("__name__", MatchOp::Eq, name).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

impl Evaluator<'_> {
    /// The series a selector matches, read once per query from the first
    /// window asked for to the query's end: every step's window is a slice
    /// of them. Called with windows that only move forward in time (steps
    /// of one query).
    fn read(&self, vs: &VectorSelector, from: i64, to: i64, t: i64) -> R<Reads> {
        let key = (vs.to_string(), to - from);
        let mut cache = self.cache.borrow_mut();
        if let Some(r) = cache.get(&key) {
            return Ok(r.clone());
        }
        let m = matchers(vs)?;
        let read: Reads = Rc::new(
            self.head
                .select(&m, from, to + (self.end - t))
                .map_err(|e| e.to_string())?
                .into_iter()
                .map(|(labels, points)| Read {
                    nameless: drop_name(labels.clone()),
                    labels,
                    points,
                })
                .collect(),
        );
        cache.insert(key, read.clone());
        Ok(read)
    }

    fn vector_selector(&self, vs: &VectorSelector, t: i64) -> R<Vec<Sample>> {
        let at = t - offset_ms(&vs.offset);
        let mut out = Vec::new();
        for s in self.read(vs, at - LOOKBACK_MS, at, t)?.iter() {
            if let Some(&(_, v)) = s.window(at - LOOKBACK_MS, at).last()
                && !is_stale(v)
            {
                out.push(Sample {
                    labels: s.labels.clone(),
                    value: v,
                });
            }
        }
        Ok(out)
    }

    fn matrix_selector(&self, m: &MatrixSelector, t: i64) -> R<Vec<Series>> {
        let mut out = Vec::new();
        self.each_window(m, t, &mut |s, points| {
            out.push(Series {
                labels: s.labels.clone(),
                points: points.to_vec(),
            })
        })?;
        Ok(out)
    }

    /// Calls `f` with every series of a range selector and its points in
    /// the window ending at `t` (staleness markers left out; series with
    /// no points there are skipped).
    fn each_window(&self, m: &MatrixSelector, t: i64, f: EachWindow<'_>) -> R<()> {
        let at = t - offset_ms(&m.vs.offset);
        let from = at - ms(m.range);
        for s in self.read(&m.vs, from, at, t)?.iter() {
            let points = s.window(from, at);
            if points.iter().any(|p| is_stale(p.1)) {
                let kept: Vec<(i64, f64)> =
                    points.iter().copied().filter(|p| !is_stale(p.1)).collect();
                if !kept.is_empty() {
                    f(s, &kept);
                }
            } else if !points.is_empty() {
                f(s, points);
            }
        }
        Ok(())
    }

    fn eval(&self, e: &Expr, t: i64) -> R<Value> {
        match e {
            Expr::NumberLiteral(n) => Ok(Value::Scalar(n.val)),
            Expr::StringLiteral(s) => Ok(Value::String(s.val.clone())),
            Expr::Paren(p) => self.eval(&p.expr, t),
            Expr::Unary(u) => match self.eval(&u.expr, t)? {
                Value::Scalar(v) => Ok(Value::Scalar(-v)),
                Value::Vector(v) => Ok(Value::Vector(
                    v.into_iter()
                        .map(|s| Sample {
                            labels: drop_name(s.labels),
                            value: -s.value,
                        })
                        .collect(),
                )),
                _ => Err("unary minus needs a scalar or an instant vector".into()),
            },
            Expr::VectorSelector(vs) => Ok(Value::Vector(self.vector_selector(vs, t)?)),
            Expr::MatrixSelector(m) => Ok(Value::Matrix(self.matrix_selector(m, t)?)),
            Expr::Call(c) => self.call(c, t),
            Expr::Aggregate(a) => self.aggregate(a, t),
            Expr::Binary(b) => self.binary(b, t),
            Expr::Subquery(_) => Err("subqueries are not supported yet".into()),
            Expr::Extension(_) => Err("extension expressions are not supported".into()),
        }
    }

    fn vector(&self, e: &Expr, t: i64) -> R<Vec<Sample>> {
        match self.eval(e, t)? {
            Value::Vector(v) => Ok(v),
            _ => Err("expected an instant vector".into()),
        }
    }

    fn scalar(&self, e: &Expr, t: i64) -> R<f64> {
        match self.eval(e, t)? {
            Value::Scalar(v) => Ok(v),
            _ => Err("expected a scalar".into()),
        }
    }

    /// A function's range-vector argument: `f` gets each series and its
    /// window, which starts and ends at the two times returned first.
    fn matrix(&self, e: &Expr, t: i64) -> R<(i64, i64, impl FnOnce(EachWindow<'_>) -> R<()>)> {
        let mut e = e;
        while let Expr::Paren(p) = e {
            e = &p.expr;
        }
        let Expr::MatrixSelector(m) = e else {
            return Err("expected a range vector selector".into());
        };
        let end = t - offset_ms(&m.vs.offset);
        Ok((end - ms(m.range), end, move |f: EachWindow<'_>| {
            self.each_window(m, t, f)
        }))
    }

    fn call(&self, c: &Call, t: i64) -> R<Value> {
        let name = c.func.name;
        let args = &c.args.args;
        let per_sample = |f: &dyn Fn(f64) -> f64| -> R<Value> {
            Ok(Value::Vector(
                self.vector(&args[0], t)?
                    .into_iter()
                    .map(|s| Sample {
                        labels: drop_name(s.labels),
                        value: f(s.value),
                    })
                    .collect(),
            ))
        };
        let over_time = |f: OverTime<'_>| -> R<Value> {
            let mut out = Vec::new();
            let (_, _, each) = self.matrix(&args[0], t)?;
            each(&mut |s, points| {
                out.push(Sample {
                    value: f(points),
                    labels: s.nameless.clone(),
                })
            })?;
            Ok(Value::Vector(out))
        };
        match name {
            "rate" | "increase" | "delta" => {
                let counter = name != "delta";
                let per_second = name == "rate";
                let (start, end, each) = self.matrix(&args[0], t)?;
                let mut out = Vec::new();
                each(&mut |s, points| {
                    if let Some(value) = extrapolated(points, start, end, counter, per_second) {
                        out.push(Sample {
                            labels: s.nameless.clone(),
                            value,
                        });
                    }
                })?;
                Ok(Value::Vector(out))
            }
            "irate" | "idelta" => {
                let mut out = Vec::new();
                let (_, _, each) = self.matrix(&args[0], t)?;
                each(&mut |s, points| {
                    let n = points.len();
                    if n < 2 {
                        return;
                    }
                    let (t0, v0) = points[n - 2];
                    let (t1, v1) = points[n - 1];
                    let mut d = v1 - v0;
                    if name == "irate" {
                        if v1 < v0 {
                            d = v1;
                        }
                        if t1 == t0 {
                            return;
                        }
                        d /= (t1 - t0) as f64 / 1000.0;
                    }
                    out.push(Sample {
                        labels: s.nameless.clone(),
                        value: d,
                    });
                })?;
                Ok(Value::Vector(out))
            }
            "avg_over_time" => over_time(&|p| p.iter().map(|x| x.1).sum::<f64>() / p.len() as f64),
            "sum_over_time" => over_time(&|p| p.iter().map(|x| x.1).sum()),
            "count_over_time" => over_time(&|p| p.len() as f64),
            "min_over_time" => over_time(&|p| p.iter().map(|x| x.1).fold(f64::NAN, nan_min)),
            "max_over_time" => over_time(&|p| p.iter().map(|x| x.1).fold(f64::NAN, nan_max)),
            "last_over_time" => {
                let mut out = Vec::new();
                let (_, _, each) = self.matrix(&args[0], t)?;
                each(&mut |s, points| {
                    if let Some(p) = points.last() {
                        out.push(Sample {
                            value: p.1,
                            labels: s.labels.clone(),
                        });
                    }
                })?;
                Ok(Value::Vector(out))
            }
            "abs" => per_sample(&f64::abs),
            "ceil" => per_sample(&f64::ceil),
            "floor" => per_sample(&f64::floor),
            "sqrt" => per_sample(&f64::sqrt),
            "exp" => per_sample(&f64::exp),
            "ln" => per_sample(&f64::ln),
            "log2" => per_sample(&f64::log2),
            "log10" => per_sample(&f64::log10),
            "round" => {
                let to = match args.get(1) {
                    Some(a) => self.scalar(a, t)?,
                    None => 1.0,
                };
                // Prometheus rounds half up, through the inverse.
                let inverse = 1.0 / to;
                per_sample(&|v| (v * inverse + 0.5).floor() / inverse)
            }
            "clamp_min" => {
                let lo = self.scalar(&args[1], t)?;
                per_sample(&|v| if v.is_nan() { v } else { v.max(lo) })
            }
            "clamp_max" => {
                let hi = self.scalar(&args[1], t)?;
                per_sample(&|v| if v.is_nan() { v } else { v.min(hi) })
            }
            "clamp" => {
                let lo = self.scalar(&args[1], t)?;
                let hi = self.scalar(&args[2], t)?;
                if lo > hi {
                    return Ok(Value::Vector(Vec::new()));
                }
                per_sample(&|v| if v.is_nan() { v } else { v.max(lo).min(hi) })
            }
            "time" => Ok(Value::Scalar(t as f64 / 1000.0)),
            "vector" => Ok(Value::Vector(vec![Sample {
                labels: Vec::new(),
                value: self.scalar(&args[0], t)?,
            }])),
            "scalar" => {
                let v = self.vector(&args[0], t)?;
                Ok(Value::Scalar(if v.len() == 1 {
                    v[0].value
                } else {
                    f64::NAN
                }))
            }
            "absent" => {
                let v = self.vector(&args[0], t)?;
                if !v.is_empty() {
                    return Ok(Value::Vector(Vec::new()));
                }
                // The equality matchers of a plain selector become the labels.
                let mut labels: Labels = Vec::new();
                if let Expr::VectorSelector(vs) = &*args[0] {
                    for m in &vs.matchers.matchers {
                        if matches!(m.op, P::Equal) && m.name != "__name__" {
                            labels.push((Arc::from(m.name.as_str()), Arc::from(m.value.as_str())));
                        }
                    }
                }
                labels.sort();
                labels.dedup_by(|a, b| a.0 == b.0);
                Ok(Value::Vector(vec![Sample { labels, value: 1.0 }]))
            }
            "histogram_quantile" => {
                let q = self.scalar(&args[0], t)?;
                let v = self.vector(&args[1], t)?;
                Ok(Value::Vector(histogram_quantile(q, v)))
            }
            "label_replace" => {
                let v = self.vector(&args[0], t)?;
                let arg = |i: usize| -> R<String> {
                    match self.eval(&args[i], t)? {
                        Value::String(s) => Ok(s),
                        _ => Err("label_replace takes strings".into()),
                    }
                };
                let (dst, repl, src, re) = (arg(1)?, arg(2)?, arg(3)?, arg(4)?);
                let re = regex::Regex::new(&format!("^(?s:{re})$")).map_err(|e| e.to_string())?;
                let mut out = Vec::new();
                for mut s in v {
                    if let Some(caps) = re.captures(get(&s.labels, &src)) {
                        let mut value = String::new();
                        caps.expand(&repl, &mut value);
                        set(&mut s.labels, &dst, &value);
                    }
                    out.push(s);
                }
                Ok(Value::Vector(out))
            }
            other => Err(format!("function `{other}` is not supported yet")),
        }
    }

    fn aggregate(&self, a: &AggregateExpr, t: i64) -> R<Value> {
        let op = a.op.to_string();
        let v = self.vector(&a.expr, t)?;
        let param = match &a.param {
            Some(p) if op != "count_values" => Some(self.scalar(p, t)?),
            _ => None,
        };
        // A sample's group is its labels that `by` keeps (or `without`
        // does not drop). Groups are found by a hash of those labels,
        // compared in place: a sample costs no label set of its own.
        let kept = |n: &str| match &a.modifier {
            Some(LabelModifier::Include(keep)) => keep.labels.iter().any(|k| k == n),
            Some(LabelModifier::Exclude(drop)) => {
                n != "__name__" && !drop.labels.iter().any(|k| k == n)
            }
            None => false,
        };
        let hasher = foldhash::fast::RandomState::default();
        let mut index: HashMap<u64, Vec<usize>> = HashMap::new();
        let mut groups: Vec<(Labels, Vec<Sample>)> = Vec::new();
        for s in v {
            let key = || s.labels.iter().filter(|(n, _)| kept(n));
            let mut h = hasher.build_hasher();
            for pair in key() {
                pair.hash(&mut h);
            }
            let ids = index.entry(h.finish()).or_default();
            let g = match ids.iter().copied().find(|&g| groups[g].0.iter().eq(key())) {
                Some(g) => g,
                None => {
                    groups.push((key().cloned().collect(), Vec::new()));
                    ids.push(groups.len() - 1);
                    groups.len() - 1
                }
            };
            groups[g].1.push(s);
        }
        groups.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out = Vec::new();
        for (labels, members) in groups {
            let values: Vec<f64> = members.iter().map(|s| s.value).collect();
            let n = values.len() as f64;
            let value = match op.as_str() {
                "sum" => values.iter().sum(),
                "avg" => values.iter().sum::<f64>() / n,
                "count" => n,
                "min" => values.iter().copied().fold(f64::NAN, nan_min),
                "max" => values.iter().copied().fold(f64::NAN, nan_max),
                "group" => 1.0,
                "stddev" | "stdvar" => {
                    let mean = values.iter().sum::<f64>() / n;
                    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
                    if op == "stddev" { var.sqrt() } else { var }
                }
                "quantile" => quantile(param.unwrap_or(f64::NAN), values),
                "topk" | "bottomk" => {
                    let k = param.unwrap_or(0.0);
                    if k < 1.0 {
                        continue;
                    }
                    let mut members = members;
                    members.sort_by(|a, b| {
                        let o = a
                            .value
                            .partial_cmp(&b.value)
                            .unwrap_or(std::cmp::Ordering::Equal);
                        if op == "topk" { o.reverse() } else { o }
                    });
                    out.extend(members.into_iter().take(k as usize));
                    continue;
                }
                other => return Err(format!("aggregation `{other}` is not supported yet")),
            };
            out.push(Sample { labels, value });
        }
        Ok(Value::Vector(out))
    }

    fn binary(&self, b: &BinaryExpr, t: i64) -> R<Value> {
        let op = b.op.to_string();
        let lhs = self.eval(&b.lhs, t)?;
        let rhs = self.eval(&b.rhs, t)?;
        let returns_bool = b.modifier.as_ref().is_some_and(|m| m.return_bool);
        let comparison = b.op.is_comparison_operator();
        match (lhs, rhs) {
            (Value::Scalar(x), Value::Scalar(y)) => {
                let v =
                    arith(&op, x, y).ok_or_else(|| format!("operator `{op}` between scalars"))?;
                Ok(Value::Scalar(if comparison {
                    f64::from(v != 0.0 && !v.is_nan())
                } else {
                    v
                }))
            }
            (Value::Vector(v), Value::Scalar(y)) => Ok(Value::Vector(scalar_op(
                &op,
                v,
                y,
                false,
                comparison,
                returns_bool,
            )?)),
            (Value::Scalar(x), Value::Vector(v)) => Ok(Value::Vector(scalar_op(
                &op,
                v,
                x,
                true,
                comparison,
                returns_bool,
            )?)),
            (Value::Vector(l), Value::Vector(r)) => Ok(Value::Vector(self.vector_op(
                b,
                &op,
                l,
                r,
                comparison,
                returns_bool,
            )?)),
            _ => Err(format!("operator `{op}` needs scalars or instant vectors")),
        }
    }

    fn vector_op(
        &self,
        b: &BinaryExpr,
        op: &str,
        l: Vec<Sample>,
        r: Vec<Sample>,
        comparison: bool,
        returns_bool: bool,
    ) -> R<Vec<Sample>> {
        let modifier = b.modifier.as_ref();
        let matching = modifier.and_then(|m| m.matching.as_ref());
        let signature = |labels: &Labels| -> Labels {
            match matching {
                Some(LabelModifier::Include(on)) => {
                    let mut s: Labels = labels
                        .iter()
                        .filter(|(n, _)| on.labels.iter().any(|k| **k == **n))
                        .cloned()
                        .collect();
                    s.sort();
                    s
                }
                Some(LabelModifier::Exclude(ign)) => labels
                    .iter()
                    .filter(|(n, _)| &**n != "__name__" && !ign.labels.iter().any(|k| **k == **n))
                    .cloned()
                    .collect(),
                None => labels
                    .iter()
                    .filter(|(n, _)| &**n != "__name__")
                    .cloned()
                    .collect(),
            }
        };
        if b.op.is_set_operator() {
            let rsigs: std::collections::HashSet<Labels> =
                r.iter().map(|s| signature(&s.labels)).collect();
            return Ok(match op {
                "and" => l
                    .into_iter()
                    .filter(|s| rsigs.contains(&signature(&s.labels)))
                    .collect(),
                "unless" => l
                    .into_iter()
                    .filter(|s| !rsigs.contains(&signature(&s.labels)))
                    .collect(),
                _ => {
                    let lsigs: std::collections::HashSet<Labels> =
                        l.iter().map(|s| signature(&s.labels)).collect();
                    let mut out = l;
                    out.extend(
                        r.into_iter()
                            .filter(|s| !lsigs.contains(&signature(&s.labels))),
                    );
                    out
                }
            });
        }
        let card = modifier.map_or(&VectorMatchCardinality::OneToOne, |m| &m.card);
        let (many, one, swapped, include) = match card {
            VectorMatchCardinality::OneToMany(inc) => (r, l, true, Some(inc)),
            VectorMatchCardinality::ManyToOne(inc) => (l, r, false, Some(inc)),
            _ => (l, r, false, None),
        };
        let mut ones: HashMap<Labels, Sample> = HashMap::new();
        for s in one {
            let sig = signature(&s.labels);
            if ones.insert(sig, s).is_some() {
                return Err("found duplicate series for the match group on the right-hand side of the operation; many-to-many matching not allowed".into());
            }
        }
        let mut seen: HashMap<Labels, ()> = HashMap::new();
        let mut out = Vec::new();
        for s in many {
            let sig = signature(&s.labels);
            let Some(o) = ones.get(&sig) else { continue };
            if include.is_none() && seen.insert(sig.clone(), ()).is_some() {
                return Err("found duplicate series for the match group on the left-hand side of the operation; many-to-many matching not allowed".into());
            }
            let (x, y) = if swapped {
                (o.value, s.value)
            } else {
                (s.value, o.value)
            };
            let Some(v) = arith(op, x, y) else {
                return Err(format!("operator `{op}` between vectors"));
            };
            if comparison && !returns_bool && v == 0.0 {
                continue;
            }
            // The result's labels: the "many" side's (the left in
            // one-to-one), name dropped unless a filtering comparison.
            let mut labels = s.labels.clone();
            if !comparison || returns_bool {
                labels = drop_name(labels);
            }
            match (card, matching) {
                (VectorMatchCardinality::OneToOne, Some(LabelModifier::Include(on))) => {
                    labels.retain(|(n, _)| on.labels.iter().any(|k| **k == **n));
                }
                (VectorMatchCardinality::OneToOne, Some(LabelModifier::Exclude(ign))) => {
                    labels.retain(|(n, _)| !ign.labels.iter().any(|k| **k == **n));
                }
                _ => {}
            }
            if let Some(inc) = include {
                for name in &inc.labels {
                    let value = get(&o.labels, name).to_string();
                    set(&mut labels, name, &value);
                }
            }
            let value = if comparison {
                if returns_bool { v } else { x }
            } else {
                v
            };
            out.push(Sample { labels, value });
        }
        Ok(out)
    }
}

/// `x op y`; comparisons give 1 or 0.
fn arith(op: &str, x: f64, y: f64) -> Option<f64> {
    Some(match op {
        "+" => x + y,
        "-" => x - y,
        "*" => x * y,
        "/" => x / y,
        "%" => x % y,
        "^" => x.powf(y),
        "atan2" => x.atan2(y),
        "==" => f64::from(x == y),
        "!=" => f64::from(x != y),
        ">" => f64::from(x > y),
        "<" => f64::from(x < y),
        ">=" => f64::from(x >= y),
        "<=" => f64::from(x <= y),
        _ => return None,
    })
}

fn scalar_op(
    op: &str,
    v: Vec<Sample>,
    k: f64,
    scalar_left: bool,
    comparison: bool,
    returns_bool: bool,
) -> R<Vec<Sample>> {
    let mut out = Vec::new();
    for s in v {
        let (x, y) = if scalar_left {
            (k, s.value)
        } else {
            (s.value, k)
        };
        let r = arith(op, x, y)
            .ok_or_else(|| format!("operator `{op}` between a vector and a scalar"))?;
        if comparison && !returns_bool {
            if r != 0.0 {
                out.push(Sample {
                    labels: s.labels,
                    value: s.value,
                });
            }
            continue;
        }
        out.push(Sample {
            labels: drop_name(s.labels),
            value: r,
        });
    }
    Ok(out)
}

fn nan_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b < a { b } else { a }
}

fn nan_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b > a { b } else { a }
}

/// Prometheus's `extrapolatedRate`: the change over the samples, extended to
/// the range's edges when the samples come near them (not beyond where a
/// counter would be zero), per second for `rate`.
fn extrapolated(
    points: &[(i64, f64)],
    start: i64,
    end: i64,
    counter: bool,
    per_second: bool,
) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let (first_t, first_v) = points[0];
    let (last_t, last_v) = points[points.len() - 1];
    let mut result = last_v - first_v;
    if counter {
        let mut prev = first_v;
        for &(_, v) in &points[1..] {
            if v < prev {
                result += prev;
            }
            prev = v;
        }
    }
    let mut to_start = (first_t - start) as f64 / 1000.0;
    let to_end = (end - last_t) as f64 / 1000.0;
    let sampled = (last_t - first_t) as f64 / 1000.0;
    let average = sampled / (points.len() - 1) as f64;
    if counter && result > 0.0 && first_v >= 0.0 {
        let to_zero = sampled * (first_v / result);
        if to_zero < to_start {
            to_start = to_zero;
        }
    }
    let threshold = average * 1.1;
    let mut interval = sampled;
    interval += if to_start < threshold {
        to_start
    } else {
        average / 2.0
    };
    interval += if to_end < threshold {
        to_end
    } else {
        average / 2.0
    };
    let mut v = result * (interval / sampled);
    if per_second {
        v /= (end - start) as f64 / 1000.0;
    }
    Some(v)
}

/// Prometheus's `quantile` over values: linear interpolation between ranks.
fn quantile(q: f64, mut values: Vec<f64>) -> f64 {
    if values.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let n = values.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0) as usize;
    let upper = (rank.floor() + 1.0).min(n - 1.0) as usize;
    let weight = rank - rank.floor();
    values[lower] * (1.0 - weight) + values[upper] * weight
}

/// `histogram_quantile` over classic buckets (`le`), per label set without `le`.
fn histogram_quantile(q: f64, v: Vec<Sample>) -> Vec<Sample> {
    let mut groups: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
    for s in v {
        let le = get(&s.labels, "le");
        let Ok(upper) = le.parse::<f64>() else {
            continue;
        };
        let labels: Labels = s
            .labels
            .into_iter()
            .filter(|(n, _)| &**n != "le" && &**n != "__name__")
            .collect();
        groups.entry(labels).or_default().push((upper, s.value));
    }
    groups
        .into_iter()
        .map(|(labels, mut buckets)| Sample {
            labels,
            value: bucket_quantile(q, &mut buckets),
        })
        .collect()
}

fn bucket_quantile(q: f64, buckets: &mut [(f64, f64)]) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    if buckets.len() < 2 || buckets[buckets.len() - 1].0 != f64::INFINITY {
        return f64::NAN;
    }
    // Counts must not decrease with the bound (scrapes are not atomic).
    let mut max = f64::NEG_INFINITY;
    for b in buckets.iter_mut() {
        if b.1 < max {
            b.1 = max;
        } else {
            max = b.1;
        }
    }
    let total = buckets[buckets.len() - 1].1;
    if total == 0.0 {
        return f64::NAN;
    }
    let rank = q * total;
    let i = buckets
        .iter()
        .position(|b| b.1 >= rank)
        .unwrap_or(buckets.len() - 1);
    if i == buckets.len() - 1 {
        return buckets[buckets.len() - 2].0;
    }
    if i == 0 && buckets[0].0 <= 0.0 {
        return buckets[0].0;
    }
    let (start, count_before) = if i == 0 {
        (0.0, 0.0)
    } else {
        (buckets[i - 1].0, buckets[i - 1].1)
    };
    let (end, count) = (buckets[i].0, buckets[i].1 - count_before);
    start + (end - start) * ((rank - count_before) / count)
}
