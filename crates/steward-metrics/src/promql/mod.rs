//! PromQL, parsed by the `promql-parser` crate (it follows Prometheus's own
//! grammar): series selectors for the series API ([`selector`]) and
//! evaluation ([`eval`]).

pub mod eval;

use promql_parser::label::MatchOp as P;
use promql_parser::parser::Expr;

use crate::tsdb::head::{MatchOp, Matcher};

/// The matchers of a series selector such as `up{job="api"}`, the metric
/// name as a `__name__` matcher.
pub fn selector(expr: &str) -> Result<Vec<Matcher>, String> {
    let parsed = promql_parser::parser::parse(expr)?;
    let Expr::VectorSelector(vs) = parsed else {
        return Err(format!("`{expr}` is not a series selector"));
    };
    if vs.offset.is_some() || vs.at.is_some() {
        return Err(format!(
            "`{expr}`: a series selector takes no `offset` or `@`"
        ));
    }
    if !vs.matchers.or_matchers.is_empty() {
        return Err(format!("`{expr}`: `or` between matchers is not supported"));
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
