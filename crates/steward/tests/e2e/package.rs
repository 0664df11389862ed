//! The Debian package: `scripts/package` (cargo-deb) around the binary under
//! test, installed with dpkg into an overlay of the test bed's debootstrap
//! root, then purged.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use crate::common::{self, BIN};

#[test]
fn the_deb_installs_its_user_unit_spec_completions_and_man_pages_and_purging_keeps_the_state() {
    let lower = common::debian_root();
    let dir = tempfile::tempdir().unwrap();
    // scripts/package --no-build packages $CARGO_TARGET_DIR/release/steward:
    // a target directory of the test's own, holding the binary under test.
    let target = dir.path().join("target");
    std::fs::create_dir_all(target.join("release")).unwrap();
    std::fs::copy(BIN, target.join("release/steward")).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new(root.join("scripts/package"))
        .arg("--no-build")
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "scripts/package: {stderr}");
    let deb = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        deb.ends_with("_amd64.deb") && Path::new(&deb).exists(),
        "{deb}\n{stderr}"
    );

    let script = format!(
        r#"cp {deb} $ROOT/tmp/steward.deb
chroot $ROOT dpkg -i /tmp/steward.deb || exit 10
echo "version: $(chroot $ROOT steward --version)"
echo "validate: $(chroot --userspec=steward:steward $ROOT /usr/bin/steward -f /etc/steward/steward.toml validate 2>&1)"
echo "completion: $(chroot $ROOT bash -c '. /usr/share/bash-completion/completions/steward && complete -p steward')"
link=$(readlink $ROOT/etc/systemd/system/multi-user.target.wants/steward.service)
echo "unit: $link"
echo "unit-file: $(grep -c '^ExecStart=/usr/bin/steward serve$' $ROOT$link)"
echo "user: $(chroot $ROOT getent passwd steward)"
echo "state: $(chroot $ROOT stat -c '%U:%G %a' /var/lib/steward)"
echo "spec: $(chroot $ROOT stat -c '%U:%G %a' /etc/steward/steward.toml)"
echo "man: $(ls $ROOT/usr/share/man/man1/ | grep -c '^steward.*\.1\.gz$')"
zcat $ROOT/usr/share/man/man1/steward-init.1.gz | grep -q 'starter spec' && echo "man-init: ok"
chroot $ROOT dpkg --purge steward || exit 11
echo "purged-bin: $(test -e $ROOT/usr/bin/steward && echo present || echo gone)"
echo "purged-unit: $(test -e $ROOT/etc/systemd/system/multi-user.target.wants/steward.service && echo present || echo gone)"
echo "purged-state: $(test -d $ROOT/var/lib/steward && echo kept || echo gone)"
"#
    );
    let (code, text) = common::in_debian_root(&lower, &dir.path().join("ns"), &script);
    assert_eq!(code, 0, "{text}");
    let line = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}: ")))
            .unwrap_or_else(|| panic!("no `{key}:` in\n{text}"))
            .to_string()
    };
    assert!(
        line("version").starts_with("steward 0.1.0 (commit "),
        "{text}"
    );
    assert!(line("validate").contains("valid (1 checks"), "{text}");
    assert_eq!(
        line("completion"),
        "complete -o bashdefault -o default -o nosort -F _steward steward"
    );
    // Enabled as debhelper enables units (bookworm's helper links /lib/…,
    // the same directory as /usr/lib/… on a merged /usr).
    assert!(
        line("unit").ends_with("lib/systemd/system/steward.service"),
        "{text}"
    );
    assert_eq!(line("unit-file"), "1", "the link leads to steward's unit");
    let user = line("user");
    assert!(
        user.starts_with("steward:x:")
            && user.ends_with(":steward:/var/lib/steward:/usr/sbin/nologin"),
        "{user}"
    );
    let uid: u32 = user.split(':').nth(2).unwrap().parse().unwrap();
    assert!(uid < 1000, "a system user: {user}");
    assert_eq!(line("state"), "steward:steward 750");
    assert_eq!(line("spec"), "root:steward 640");
    assert!(
        line("man").parse::<u32>().unwrap() > 30,
        "a page per command: {text}"
    );
    assert_eq!(line("man-init"), "ok");
    assert_eq!(line("purged-bin"), "gone");
    assert_eq!(line("purged-unit"), "gone");
    assert_eq!(line("purged-state"), "kept", "backups may live there");
    // The overlay's upper layer holds what the package changed.
    let state = dir.path().join("ns/upper/var/lib/steward");
    assert_eq!(std::fs::metadata(&state).unwrap().mode() & 0o7777, 0o750);
}

/// The README's `cargo install` line, with `--debug --root DIR` added so it
/// reuses the test build instead of compiling a second, release, copy and
/// installs into a temporary directory; the installed binary runs.
#[test]
fn the_readme_cargo_install_line_installs_a_working_binary() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let section = &readme[readme.find("## Install").unwrap()..];
    let block = &section[section.find("```sh\n").unwrap() + 6..];
    let command = block
        .lines()
        .next()
        .unwrap()
        .split(" #")
        .next()
        .unwrap()
        .trim();
    assert_eq!(command, "cargo install --locked --path crates/steward");
    let dir = tempfile::tempdir().unwrap();
    let mut args: Vec<&str> = command.split_whitespace().skip(1).collect();
    let into = dir.path().to_str().unwrap();
    args.extend(["--debug", "--root", into]);
    let out = Command::new(env!("CARGO"))
        .args(&args)
        .current_dir(&root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let installed = dir.path().join("bin/steward");
    let out = Command::new(&installed).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("steward 0.1.0 (commit "));
    let out = Command::new(&installed)
        .args(["completions", "zsh"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("#compdef steward"));
}
