//! Metrics: what steward scrapes, stores, queries and scales on.
//!
//! - [`exposition`]: the Prometheus text format and OpenMetrics, parsed
//!   without copying.
//! - [`autoscale`]: the autoscaler's decision, a pure function (the
//!   Kubernetes HPA's algorithm and KEDA's activation to and from zero).
//! - [`controller`]: the scrape and retention controllers of `serve`.
//! - [`promql`]: PromQL as far as steward evaluates it (series selectors).
//! - [`remote_write`]: samples sent on with the remote-write 1.0 protocol.
//! - [`rules`]: alerting rules (`[rule.NAME]`), Prometheus's semantics.
//! - [`scrape`]: scraping a target into the store, as Prometheus does.
//! - [`store_thread`]: the thread the store's own work runs on.
//! - [`tsdb`]: the embedded time-series store (compressed chunks, series
//!   by labels).

pub mod autoscale;
pub mod controller;
pub mod exposition;
pub mod promql;
pub mod remote_write;
pub mod rules;
pub mod scrape;
pub mod store_thread;
pub mod tsdb;
