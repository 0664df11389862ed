//! steward-metrics' tests, one binary: the exposition parser, the
//! autoscaler's decision and the time-series store.

mod autoscale;
mod exposition;
mod tsdb;
