//! Health endpoint monitoring: probes (I/O at the edge), judging and the
//! up/down/degraded state machine (pure), and the controller that schedules
//! checks in `serve`.

mod dns;
mod judge;
mod machine;
mod monitor;
mod probe;
pub mod tls;

pub use judge::{judge, Judgement};
pub use machine::{advance, initial, Thresholds, Transition};
pub use probe::{error_chain, Outcome, Prober};
pub use monitor::{run_once, summary, Board, CheckEvent, HealthMetrics, Monitor};
