//! Health endpoint monitoring: probes (I/O at the edge), judging and the
//! up/down/degraded state machine (pure), and the controller that schedules
//! checks in `serve`.

mod dns;
mod http;
mod judge;
mod machine;
mod monitor;
mod probe;
pub mod tls;

pub use judge::{Judgement, judge};
pub use machine::{Thresholds, Transition, advance, initial};
pub use monitor::{Board, HealthMetrics, Monitor, run_once};
pub use probe::{Outcome, Prober, error_chain};
