//! Condition parsing and evaluation on arbitrary text and bodies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use steward_spec::{Condition, Observed};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // First line: the condition; the rest: the body it is evaluated against.
    let (cond, body) = text.split_once('\n').unwrap_or((&text, ""));
    if let Ok(c) = Condition::parse(cond) {
        let mut obs = Observed::default();
        obs.connected = true;
        obs.status = Some(200);
        obs.response_time_ms = Some(12.0);
        obs.body = Some(body.to_string());
        obs.value = Some(body.to_string());
        obs.certificate_expiration_ms = Some(86_400_000);
        let _ = c.evaluate(&obs);
    }
});
