//! Scrape bodies are untrusted: whatever a target serves, the parser answers
//! with samples or an error, and what it answers is consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use steward_metrics::exposition::{Format, parse};

fuzz_target!(|data: &[u8]| {
    let Ok(body) = std::str::from_utf8(data) else {
        return;
    };
    for format in [Format::Text, Format::OpenMetrics] {
        if let Ok(e) = parse(body, format) {
            for s in &e.samples {
                if let Some(i) = s.family {
                    let family = &e.families[i as usize];
                    assert!(s.name.starts_with(family.name));
                }
                let labels = e.labels_of(s);
                for (i, l) in labels.iter().enumerate() {
                    assert!(labels[..i].iter().all(|o| o.name != l.name));
                }
            }
        }
    }
});
