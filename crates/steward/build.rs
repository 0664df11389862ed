//! Puts the commit steward is built from into `steward --version`
//! (`STEWARD_COMMIT`): `git describe` of the source tree, `-dirty` when it
//! has changes; "unknown commit" when it is not a git checkout (a source
//! tarball, `cargo install` from a registry).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

fn main() {
    let commit = git(&["describe", "--always", "--dirty", "--abbrev=12"])
        .map(|c| format!("commit {c}"))
        .unwrap_or_else(|| "unknown commit".into());
    println!("cargo:rustc-env=STEWARD_COMMIT={commit}");
    // Built again when HEAD moves or the index changes (a commit, a checkout).
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        println!("cargo:rerun-if-changed={dir}/index");
        if let Some(head) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={dir}/{head}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
