//! PromQL, parsed by the `promql-parser` crate (it follows Prometheus's own
//! grammar): series selectors for the series API ([`selector`]) and
//! evaluation ([`eval`]).

pub mod eval;

use promql_parser::parser::Expr;

use crate::tsdb::head::Matcher;

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
    eval::matchers(&vs).map_err(|e| format!("`{expr}`: {e}"))
}
