//! The embedded time-series store: series in memory behind a label index,
//! their samples in Gorilla-compressed chunks.
//!
//! - [`chunk`]: the compressed chunk (one series' samples in time order);
//! - [`head`]: every series by its labels, selection by PromQL-style
//!   matchers, appends, truncation by age.

pub mod chunk;
pub mod head;
