//! The spec parser and validator on arbitrary text: must return errors, never panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use steward_spec::{Resolver, Spec};

/// Every reference resolves, so validation runs to the end.
struct Anything;
impl Resolver for Anything {
    fn env(&self, _: &str) -> Option<String> {
        Some("x".into())
    }
    fn file(&self, _: &Path) -> Result<String, String> {
        Ok("x".into())
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = Spec::parse("fuzz.toml", text, Path::new("/nonexistent"), &Anything) {
            // Rendering must not panic either (spans inside the text).
            let _ = format!("{:?}", miette_free(&e));
        }
    }
});

fn miette_free(e: &steward_spec::SpecErrors) -> Vec<(usize, usize, String)> {
    e.errors
        .iter()
        .map(|x| (x.line, x.column, x.message.clone()))
        .collect()
}
