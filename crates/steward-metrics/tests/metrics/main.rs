//! steward-metrics' tests, one binary: the exposition parser and the
//! autoscaler's decision.

mod autoscale;
mod exposition;
