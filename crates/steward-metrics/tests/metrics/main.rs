//! steward-metrics' tests, one binary: the exposition parser, the
//! autoscaler's decision, the time-series store and scraping.

mod autoscale;
mod autoscaler;
mod exposition;
mod persist;
mod promql;
mod rules;
mod scrape;
mod tsdb;
