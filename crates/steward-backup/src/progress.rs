//! Progress for people at a terminal: rustic's progress reports drawn with
//! indicatif (bytes with rate and ETA, counters, spinners). Off unless the CLI
//! turns it on, so logs and services stay quiet.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use rustic_core::{Progress, ProgressBars, ProgressType, RusticProgress};

static TERMINAL: AtomicBool = AtomicBool::new(false);

/// Draw progress bars on standard error from now on (the CLI, on a terminal).
pub fn enable_terminal_progress() {
    TERMINAL.store(true, Ordering::Relaxed);
}

pub(crate) fn enabled() -> bool {
    TERMINAL.load(Ordering::Relaxed)
}

/// rustic's progress hooks, as indicatif bars.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TerminalProgress;

#[derive(Debug)]
struct Bar(ProgressBar);

impl RusticProgress for Bar {
    fn is_hidden(&self) -> bool {
        false
    }
    fn set_length(&self, len: u64) {
        self.0.set_length(len);
    }
    fn set_title(&self, title: &str) {
        self.0.set_prefix(title.to_string());
    }
    fn inc(&self, inc: u64) {
        self.0.inc(inc);
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

impl ProgressBars for TerminalProgress {
    fn progress(&self, t: ProgressType, prefix: &str) -> Progress {
        let template = match t {
            ProgressType::Spinner => "{spinner} {prefix} {elapsed}",
            ProgressType::Counter => "{spinner} {prefix} {bar:30} {pos}/{len} {elapsed}",
            ProgressType::Bytes => {
                "{spinner} {prefix} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}"
            }
        };
        let bar = ProgressBar::new(0).with_prefix(prefix.to_string());
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        bar.enable_steady_tick(Duration::from_millis(120));
        Progress::new(Bar(bar))
    }
}
