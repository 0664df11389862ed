//! The spec parser and validator on arbitrary text: they return errors, never
//! panic — also while the report is rendered as `steward validate` shows it —
//! and never write to disk (a `${generated:…}` secret is made by the command
//! that uses it, never by validation).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use steward_spec::{Resolver, Spec};

/// Every reference resolves, so validation runs to the end; making a
/// generated secret is the one thing it must never ask for.
struct Anything;
impl Resolver for Anything {
    fn env(&self, _: &str) -> Option<String> {
        Some("x".into())
    }
    fn file(&self, _: &Path) -> Result<String, String> {
        Ok("x".into())
    }
    fn generated(&self, path: &Path) -> Result<String, String> {
        panic!("validation asked to write {}", path.display());
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Err(e) = Spec::parse("fuzz.toml", text, Path::new("/nonexistent"), &Anything)
    {
        // Rendering must not panic either, and stays short whatever the input.
        let mut out = String::new();
        miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
            .render_report(&mut out, &e)
            .expect("the report renders");
        assert!(
            out.len() <= 4_096 * (e.errors.len() + 1),
            "{} bytes for {} errors",
            out.len(),
            e.errors.len()
        );
    }
});
