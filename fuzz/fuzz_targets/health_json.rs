//! `application/health+json` bodies from monitored services are untrusted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use steward_health_endpoint::HealthResponse;

fuzz_target!(|data: &[u8]| {
    if let Ok(doc) = HealthResponse::parse(data) {
        let _ = doc.worst();
    }
});
