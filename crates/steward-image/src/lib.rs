//! Gold images: a base root, converge sets applied with `--root`, artifacts and
//! build commands, packed as a content-addressed `tar.zst` in an object store with
//! a manifest (digest, inputs, packages with versions). `audit` compares an image's
//! packages with what its apt sources offer now.
//!
//! Identical inputs (base, converge sets, artifacts, commands, version) are built
//! once: their digest points at the image already stored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use steward_converge::{Converger, RunLock, Status, Target};
use steward_objects::{ObjectStore, StoreError};
use steward_spec::{Image, ImageBase, Resolver, Spec};

/// Why an image operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The object store failed.
    #[error("image store: {0}")]
    Store(#[from] StoreError),
    /// Building the root failed.
    #[error("{0}")]
    Build(String),
    /// There is no image yet.
    #[error("image `{0}` has never been built; `steward image build {0}` builds it")]
    NotBuilt(String),
}

/// What an image is, stored next to it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// Image name.
    pub name: String,
    /// `sha256:` of the compressed image.
    pub digest: String,
    /// Digest of everything that went into it.
    pub inputs: String,
    /// When it was built (RFC 3339).
    pub created: String,
    /// When it was built (Unix ms).
    pub created_ms: i64,
    /// `debian`, `empty` or `dir:PATH`.
    pub base: String,
    /// Application version.
    pub version: Option<String>,
    /// Installed packages and their versions (`dpkg`).
    pub packages: BTreeMap<String, String>,
    /// Compressed size in bytes.
    pub size: u64,
}

/// The result of a build.
#[derive(Debug, Clone, Serialize)]
pub struct BuildReport {
    /// The image.
    pub manifest: Manifest,
    /// An image with the same inputs existed and was reused.
    pub reused: bool,
    /// Seconds taken.
    pub seconds: f64,
}

/// A package the apt sources offer a newer version of.
#[derive(Debug, Clone, Serialize)]
pub struct Outdated {
    /// Package.
    pub name: String,
    /// Version in the image.
    pub installed: String,
    /// Version offered now.
    pub available: String,
    /// Offered by a security suite.
    pub security: bool,
}

/// The result of an audit.
#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    /// The image audited (the newest).
    pub manifest: Manifest,
    /// Age in days.
    pub age_days: f64,
    /// Older than `audit.max_age`.
    pub too_old: bool,
    /// Packages with newer versions available.
    pub outdated: Vec<Outdated>,
    /// Too old, or a package is outdated.
    pub stale: bool,
}

fn store_of(
    spec: &Spec,
    image: &Image,
    resolver: &dyn Resolver,
) -> Result<Arc<dyn ObjectStore>, ImageError> {
    steward_objects::open(spec, &image.store, resolver)
        .map_err(|e| ImageError::Build(e.to_string()))
}

/// The cached Debian root images start from (built with debootstrap on first use).
pub fn debian_root() -> Result<PathBuf, ImageError> {
    let codename = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VERSION_CODENAME=")
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "bookworm".into());
    let cache = std::env::var_os("STEWARD_DEBIAN_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .unwrap_or_else(|| PathBuf::from("/var/cache"));
            home.join("steward")
                .join(format!("debian-{codename}-minbase"))
        });
    if cache.join(".steward-complete").exists() {
        return Ok(cache);
    }
    let partial = cache.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(cache.parent().unwrap_or(Path::new("/")))
        .map_err(|e| ImageError::Build(format!("cache directory: {e}")))?;
    let out = Command::new("debootstrap")
        .args(["--variant=minbase", &codename])
        .arg(&partial)
        .arg("http://deb.debian.org/debian")
        .output()
        .map_err(|e| {
            ImageError::Build(format!(
                "cannot run debootstrap (apt-get install debootstrap): {e}"
            ))
        })?;
    if !out.status.success() {
        return Err(ImageError::Build(format!(
            "debootstrap failed: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or_default()
        )));
    }
    let _ = std::fs::remove_dir_all(&cache);
    std::fs::rename(&partial, &cache).map_err(|e| ImageError::Build(e.to_string()))?;
    std::fs::write(cache.join(".steward-complete"), "")
        .map_err(|e| ImageError::Build(e.to_string()))?;
    Ok(cache)
}

fn hash_file(h: &mut Sha256, p: &Path) {
    if let Ok(b) = std::fs::read(p) {
        h.update((b.len() as u64).to_le_bytes());
        h.update(&b);
    }
}

/// Hashes the files under `path` (a file or a directory, recursively, in
/// name order): each one's path relative to `base`, its permission bits and
/// its content. Directories named `.git` or `target`, and `skip` (the state
/// directory, the artifacts `prepare` makes), are left out.
fn hash_tree(h: &mut Sha256, base: &Path, path: &Path, skip: &[&Path]) {
    use std::os::unix::fs::PermissionsExt;
    let mut files = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if (p != path && (name == ".git" || name == "target")) || skip.contains(&p.as_path()) {
                continue;
            }
            for e in std::fs::read_dir(&p).into_iter().flatten().flatten() {
                stack.push(e.path());
            }
        } else if !skip.contains(&p.as_path()) {
            files.push(p);
        }
    }
    files.sort();
    for f in files {
        h.update(
            f.strip_prefix(base)
                .unwrap_or(&f)
                .to_string_lossy()
                .as_bytes(),
        );
        let mode = std::fs::metadata(&f)
            .map(|m| m.permissions().mode())
            .unwrap_or(0);
        h.update(mode.to_le_bytes());
        hash_file(h, &f);
    }
}

/// What every build of the image shares: base, commands, version, converge
/// sets and where artifacts go.
fn recipe(h: &mut Sha256, spec: &Spec, image: &Image) -> Result<(), ImageError> {
    h.update(format!("{:?}|{:?}|{:?}|", image.base, image.run, image.version).as_bytes());
    match &image.base {
        ImageBase::Debian => {
            let root = debian_root()?;
            hash_file(h, &root.join("var/lib/dpkg/status"));
            hash_file(h, &root.join("etc/os-release"));
        }
        ImageBase::Dir(dir) => {
            let mut files = Vec::new();
            let mut stack = vec![dir.clone()];
            while let Some(d) = stack.pop() {
                for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                    if e.path().is_dir() {
                        stack.push(e.path());
                    } else {
                        files.push(e.path());
                    }
                }
            }
            files.sort();
            for f in files {
                h.update(
                    f.strip_prefix(dir)
                        .unwrap_or(&f)
                        .to_string_lossy()
                        .as_bytes(),
                );
                hash_file(h, &f);
            }
        }
        ImageBase::Empty => {}
    }
    for name in &image.converge {
        if let Some(set) = spec.converge.get(name) {
            // The validated model prints deterministically (ordered maps, vectors).
            h.update(format!("{set:?}").as_bytes());
        }
    }
    for a in &image.artifacts {
        h.update(format!("{}|{:?}|", a.to.display(), a.mode).as_bytes());
    }
    Ok(())
}

/// Digest of everything that goes into an image: the recipe and the
/// artifacts' contents.
fn inputs_digest(spec: &Spec, image: &Image) -> Result<String, ImageError> {
    let mut h = Sha256::new();
    recipe(&mut h, spec, image)?;
    for a in &image.artifacts {
        hash_file(&mut h, &a.from);
    }
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

/// Digest of what decides an image before `prepare` runs: the recipe, the
/// `prepare` commands, where the artifacts come from, and the contents of
/// the declared `sources`. `None` without `sources`.
fn sources_digest(spec: &Spec, image: &Image) -> Result<Option<String>, ImageError> {
    if image.sources.is_empty() {
        return Ok(None);
    }
    let mut h = Sha256::new();
    h.update(b"sources-v1|");
    recipe(&mut h, spec, image)?;
    h.update(format!("{:?}|", image.prepare).as_bytes());
    for a in &image.artifacts {
        h.update(format!("{}|", a.from.display()).as_bytes());
    }
    let mut skip: Vec<&Path> = vec![spec.settings.state_dir.as_path()];
    skip.extend(image.artifacts.iter().map(|a| a.from.as_path()));
    for src in &image.sources {
        h.update(format!("{}|", src.display()).as_bytes());
        hash_tree(&mut h, &image.dir, src, &skip);
    }
    Ok(Some(format!("sha256:{}", hex::encode(h.finalize()))))
}

/// The stored build a pointer (`inputs/…` or `sources/…`) names, if both
/// exist.
fn pointed(store: &dyn ObjectStore, image: &Image, pointer: &str) -> Option<Manifest> {
    let digest = store.get(pointer).ok()?;
    let digest = String::from_utf8_lossy(&digest).trim().to_string();
    let m = store
        .get(&key(
            &image.name,
            &format!("{}.json", digest.trim_start_matches("sha256:")),
        ))
        .ok()?;
    serde_json::from_slice(&m).ok()
}

/// Runs `apt-get ARGS` inside `root` (through chroot, non-interactive); its output.
fn apt_in(root: &Path, args: &[&str]) -> Result<String, ImageError> {
    let out = Command::new("chroot")
        .arg(root)
        .arg("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| ImageError::Build(format!("chroot apt-get: {e}")))?;
    if !out.status.success() {
        return Err(ImageError::Build(format!(
            "apt-get {} failed in the image: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn key(image: &str, rest: &str) -> String {
    format!("images/{image}/{rest}")
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), ImageError> {
    let status = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .status()
        .map_err(|e| ImageError::Build(format!("cp: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(ImageError::Build(format!(
            "copying {} failed",
            from.display()
        )))
    }
}

/// How a build goes beyond the default.
#[derive(Debug, Clone, Copy, Default)]
pub struct BuildOptions {
    /// Build even when an image with identical inputs exists.
    pub force: bool,
    /// Debian base: install every available update before converging (what a
    /// rebuild of a stale image needs; identical inputs give newer packages).
    pub upgrade: bool,
}

/// Builds an image (or reuses the one with identical inputs). `say` hears progress.
pub fn build(
    spec: &Spec,
    image: &Image,
    resolver: &dyn Resolver,
    say: &mut dyn FnMut(&str),
) -> Result<BuildReport, ImageError> {
    build_with(spec, image, resolver, BuildOptions::default(), say)
}

/// [`build`] with options.
pub fn build_with(
    spec: &Spec,
    image: &Image,
    resolver: &dyn Resolver,
    options: BuildOptions,
    say: &mut dyn FnMut(&str),
) -> Result<BuildReport, ImageError> {
    let started = Instant::now();
    let store = store_of(spec, image, resolver)?;
    store.ensure()?;
    // With declared sources, unchanged sources mean the stored build: no
    // `prepare` (a compile, often) at all.
    let sources = sources_digest(spec, image)?;
    let sources_pointer = sources.as_ref().map(|d| {
        key(
            &image.name,
            &format!("sources/{}", d.trim_start_matches("sha256:")),
        )
    });
    if let Some(p) = sources_pointer.as_ref().filter(|_| !options.force)
        && let Some(manifest) = pointed(store.as_ref(), image, p)
    {
        say(&format!(
            "sources unchanged: reusing {} (prepare not run)",
            manifest.digest
        ));
        return Ok(BuildReport {
            manifest,
            reused: true,
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    for argv in &image.prepare {
        say(&format!("preparing: `{}`", argv.join(" ")));
        let status = Command::new(&argv[0])
            .args(&argv[1..])
            .current_dir(&image.dir)
            .stdin(Stdio::null())
            .status()
            .map_err(|e| ImageError::Build(format!("`{}`: {e}", argv[0])))?;
        if !status.success() {
            return Err(ImageError::Build(format!(
                "`{}` failed ({status})",
                argv.join(" ")
            )));
        }
    }
    for a in &image.artifacts {
        if !a.from.is_file() {
            return Err(ImageError::Build(format!(
                "artifact `{}` does not exist",
                a.from.display()
            )));
        }
    }
    let inputs = inputs_digest(spec, image)?;
    let pointer = key(
        &image.name,
        &format!("inputs/{}", inputs.trim_start_matches("sha256:")),
    );
    if let Some(manifest) = (!options.force)
        .then(|| pointed(store.as_ref(), image, &pointer))
        .flatten()
    {
        say(&format!("inputs unchanged: reusing {}", manifest.digest));
        if let Some(p) = &sources_pointer {
            store.put(p, &[Bytes::from(manifest.digest.clone().into_bytes())])?;
        }
        return Ok(BuildReport {
            manifest,
            reused: true,
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    std::fs::create_dir_all(&spec.settings.state_dir)
        .map_err(|e| ImageError::Build(e.to_string()))?;
    let work = tempfile::Builder::new()
        .prefix("image-build-")
        .tempdir_in(&spec.settings.state_dir)
        .map_err(|e| ImageError::Build(format!("build directory: {e}")))?;
    let root = work.path().join("root");
    std::fs::create_dir_all(&root).map_err(|e| ImageError::Build(e.to_string()))?;
    match &image.base {
        ImageBase::Debian => {
            say("copying the Debian base root");
            copy_tree(&debian_root()?, &root)?;
            let _ = std::fs::remove_file(root.join(".steward-complete"));
            if options.upgrade {
                say("installing available updates");
                apt_in(&root, &["update", "-qq"])?;
                apt_in(&root, &["-y", "-qq", "dist-upgrade"])?;
            }
        }
        ImageBase::Dir(dir) => copy_tree(dir, &root)?,
        ImageBase::Empty => {}
    }
    if !image.converge.is_empty() {
        let lock = RunLock::acquire(&spec.settings.state_dir)
            .map_err(|e| ImageError::Build(e.to_string()))?;
        for name in &image.converge {
            let set = &spec.converge[name];
            say(&format!("converging `{name}`"));
            let report = Converger::new(set, Target::root(&root), resolver, None)
                .and_then(|c| c.apply(&lock, &mut |_| {}))
                .map_err(|e| ImageError::Build(e.to_string()))?;
            let failed: Vec<String> = report
                .outcomes
                .iter()
                .filter(|o| matches!(o.status, Status::Failed | Status::Skipped))
                .map(|o| format!("{}: {}", o.id, o.message.clone().unwrap_or_default()))
                .collect();
            if !failed.is_empty() {
                return Err(ImageError::Build(format!(
                    "converge set `{name}` failed in the image: {}",
                    failed.join("; ")
                )));
            }
        }
    }
    for a in &image.artifacts {
        let dest = root.join(a.to.strip_prefix("/").unwrap_or(&a.to));
        if let Some(p) = dest.parent() {
            std::fs::create_dir_all(p).map_err(|e| ImageError::Build(e.to_string()))?;
        }
        std::fs::copy(&a.from, &dest)
            .map_err(|e| ImageError::Build(format!("artifact {}: {e}", a.from.display())))?;
        if let Some(mode) = a.mode {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode))
                .map_err(|e| ImageError::Build(e.to_string()))?;
        }
    }
    for argv in &image.run {
        say(&format!("running `{}`", argv.join(" ")));
        let out = Command::new("chroot")
            .arg(&root)
            .args(argv)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| ImageError::Build(format!("chroot: {e}")))?;
        if !out.status.success() {
            return Err(ImageError::Build(format!(
                "`{}` failed in the image ({}): {}",
                argv.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
    }
    // Downloaded packages are not part of the image.
    for e in std::fs::read_dir(root.join("var/cache/apt/archives"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if e.path().extension().is_some_and(|x| x == "deb") {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let packages = steward_converge::installed_packages(&Target::root(&root));
    say("packing");
    let mut tarred = Vec::new();
    {
        let enc =
            zstd::Encoder::new(&mut tarred, 3).map_err(|e| ImageError::Build(e.to_string()))?;
        let mut t = tar::Builder::new(enc);
        t.follow_symlinks(false);
        t.append_dir_all(".", &root)
            .map_err(|e| ImageError::Build(format!("packing: {e}")))?;
        let enc = t
            .into_inner()
            .map_err(|e| ImageError::Build(format!("packing: {e}")))?;
        enc.finish()
            .map_err(|e| ImageError::Build(format!("packing: {e}")))?;
    }
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&tarred)));
    let hex_digest = digest.trim_start_matches("sha256:").to_string();
    let now = chrono::Utc::now();
    let manifest = Manifest {
        name: image.name.clone(),
        digest: digest.clone(),
        inputs: inputs.clone(),
        created: now.to_rfc3339(),
        created_ms: now.timestamp_millis(),
        base: match &image.base {
            ImageBase::Debian => "debian".into(),
            ImageBase::Empty => "empty".into(),
            ImageBase::Dir(d) => format!("dir:{}", d.display()),
        },
        version: image.version.clone(),
        size: tarred.len() as u64,
        packages,
    };
    say(&format!("storing {} ({} bytes)", digest, tarred.len()));
    // The image first, then its manifest, then the pointer: readers never see a
    // manifest without its image.
    store.put(
        &key(&image.name, &format!("{hex_digest}.tar.zst")),
        &[Bytes::from(tarred)],
    )?;
    let json =
        serde_json::to_vec_pretty(&manifest).map_err(|e| ImageError::Build(e.to_string()))?;
    store.put(
        &key(&image.name, &format!("{hex_digest}.json")),
        &[Bytes::from(json)],
    )?;
    if let Some(p) = &sources_pointer {
        store.put(p, &[Bytes::from(digest.clone().into_bytes())])?;
    }
    store.put(&pointer, &[Bytes::from(digest.into_bytes())])?;
    Ok(BuildReport {
        manifest,
        reused: false,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Every built version of an image, oldest first.
pub fn list(
    spec: &Spec,
    image: &Image,
    resolver: &dyn Resolver,
) -> Result<Vec<Manifest>, ImageError> {
    let store = store_of(spec, image, resolver)?;
    let mut out = Vec::new();
    for o in store.list(&key(&image.name, ""))? {
        if o.name.ends_with(".json") && !o.name.contains("/inputs/") {
            let m = store.get(&o.name)?;
            if let Ok(m) = serde_json::from_slice::<Manifest>(&m) {
                out.push(m);
            }
        }
    }
    out.sort_by_key(|m| m.created_ms);
    Ok(out)
}

/// The manifest of one build of `image` (`digest` may be given without `sha256:`
/// and shortened to a unique prefix), or the newest build when `digest` is `None`.
pub fn manifest(
    spec: &Spec,
    image: &Image,
    digest: Option<&str>,
    resolver: &dyn Resolver,
) -> Result<Manifest, ImageError> {
    let all = list(spec, image, resolver)?;
    let Some(want) = digest else {
        return all
            .into_iter()
            .next_back()
            .ok_or_else(|| ImageError::NotBuilt(image.name.clone()));
    };
    let want = want.trim_start_matches("sha256:");
    let mut found: Vec<Manifest> = all
        .into_iter()
        .filter(|m| m.digest.trim_start_matches("sha256:").starts_with(want))
        .collect();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(ImageError::Build(format!(
            "image `{}` has no build `{want}` (see `steward image list {}`)",
            image.name, image.name
        ))),
        n => Err(ImageError::Build(format!(
            "`{want}` matches {n} builds of `{}`; give more of the digest",
            image.name
        ))),
    }
}

/// Unpacks one build into `cache/<hex digest>` (once: later calls return the
/// existing directory). The directory appears whole or not at all, so a crash
/// mid-unpack never leaves a half image that later instances would use.
pub fn unpack(
    spec: &Spec,
    image: &Image,
    digest: &str,
    cache: &Path,
    resolver: &dyn Resolver,
) -> Result<PathBuf, ImageError> {
    let hex_digest = digest.trim_start_matches("sha256:");
    let dest = cache.join(hex_digest);
    if dest.is_dir() {
        return Ok(dest);
    }
    std::fs::create_dir_all(cache).map_err(|e| ImageError::Build(e.to_string()))?;
    let store = store_of(spec, image, resolver)?;
    let tarred = store.get(&key(&image.name, &format!("{hex_digest}.tar.zst")))?;
    if format!("sha256:{}", hex::encode(Sha256::digest(&tarred))) != format!("sha256:{hex_digest}")
    {
        return Err(ImageError::Build(format!(
            "stored image {digest} does not match its digest (damaged object)"
        )));
    }
    let work = tempfile::Builder::new()
        .prefix(".unpack-")
        .tempdir_in(cache)
        .map_err(|e| ImageError::Build(e.to_string()))?;
    let root = work.path().join("root");
    let dec = zstd::Decoder::new(&tarred[..]).map_err(|e| ImageError::Build(e.to_string()))?;
    let mut ar = tar::Archive::new(dec);
    ar.set_preserve_permissions(true);
    ar.unpack(&root)
        .map_err(|e| ImageError::Build(format!("unpacking: {e}")))?;
    match std::fs::rename(&root, &dest) {
        Ok(()) => Ok(dest),
        // Someone else unpacked it meanwhile.
        Err(_) if dest.is_dir() => Ok(dest),
        Err(e) => Err(ImageError::Build(format!("unpacking: {e}"))),
    }
}

/// Audits the newest build: age, and packages its apt sources offer newer versions
/// of (read by unpacking the image and asking apt inside it).
pub fn audit(
    spec: &Spec,
    image: &Image,
    resolver: &dyn Resolver,
) -> Result<AuditReport, ImageError> {
    let manifest = list(spec, image, resolver)?
        .pop()
        .ok_or_else(|| ImageError::NotBuilt(image.name.clone()))?;
    let age_ms = chrono::Utc::now().timestamp_millis() - manifest.created_ms;
    let too_old = image
        .max_age
        .is_some_and(|m| age_ms > m.0.as_millis() as i64);
    let mut outdated = Vec::new();
    if !manifest.packages.is_empty() {
        let store = store_of(spec, image, resolver)?;
        let tarred = store.get(&key(
            &image.name,
            &format!("{}.tar.zst", manifest.digest.trim_start_matches("sha256:")),
        ))?;
        let work = tempfile::Builder::new()
            .prefix("image-audit-")
            .tempdir_in(&spec.settings.state_dir)
            .map_err(|e| ImageError::Build(e.to_string()))?;
        let root = work.path().join("root");
        let dec = zstd::Decoder::new(&tarred[..]).map_err(|e| ImageError::Build(e.to_string()))?;
        let mut ar = tar::Archive::new(dec);
        ar.set_preserve_permissions(true);
        ar.set_preserve_ownerships(true);
        ar.unpack(&root)
            .map_err(|e| ImageError::Build(format!("unpacking: {e}")))?;
        let apt = |args: &[&str]| apt_in(&root, args);
        apt(&["update", "-qq"])?;
        // A simulated upgrade lists every package apt would upgrade and from where:
        // `Inst NAME [OLD] (NEW SUITE…)`.
        let sim = apt(&["-s", "-qq", "dist-upgrade"])?;
        for line in sim.lines() {
            let Some(rest) = line.strip_prefix("Inst ") else {
                continue;
            };
            let mut parts = rest.splitn(2, ' ');
            let name = parts.next().unwrap_or_default().to_string();
            let rest = parts.next().unwrap_or_default();
            let installed = rest
                .strip_prefix('[')
                .and_then(|r| r.split_once(']'))
                .map(|(v, _)| v.to_string());
            let Some(installed) = installed else { continue }; // a new dependency, not an upgrade
            let (available, suites) = rest
                .split_once('(')
                .and_then(|(_, r)| r.split_once(' '))
                .map(|(v, s)| (v.to_string(), s.to_string()))
                .unwrap_or_default();
            outdated.push(Outdated {
                name,
                installed,
                available,
                security: suites.contains("-security") || suites.contains("Security"),
            });
        }
    }
    let stale = too_old || !outdated.is_empty();
    Ok(AuditReport {
        manifest,
        age_days: age_ms as f64 / 86_400_000.0,
        too_old,
        outdated,
        stale,
    })
}

/// `serve`'s image controller: audits each image with `audit.every` on that
/// interval; a stale image is an `image.stale` event (once per change of verdict)
/// and shows in `steward_image_stale{image}` and
/// `steward_image_outdated_packages{image}`.
pub mod controller {
    use std::sync::Arc;
    use std::time::Duration;

    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::registry::Registry;
    use steward_runtime::{Controller, Next, Step, StepError};
    use steward_spec::{Resolver, Spec};
    use steward_state::{EventKind, EventLog, NewEvent, Severity};

    type Labels = Vec<(String, String)>;

    /// Metrics of the image controller.
    #[derive(Default, Clone)]
    pub struct ImageMetrics {
        stale: Family<Labels, Gauge>,
        outdated: Family<Labels, Gauge>,
        age: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    }

    impl ImageMetrics {
        /// Registers every metric.
        pub fn register(&self, r: &mut Registry) {
            r.register(
                "steward_image_stale",
                "1 when the newest build of an image is stale",
                self.stale.clone(),
            );
            r.register(
                "steward_image_outdated_packages",
                "Packages of the newest build its apt sources offer newer versions of",
                self.outdated.clone(),
            );
            r.register(
                "steward_image_age_seconds",
                "Age of the newest build",
                self.age.clone(),
            );
        }
    }

    /// The audit of one image with `audit.every`, as a supervised
    /// controller: one audit per step.
    pub struct Audit {
        spec: Arc<Spec>,
        store: Arc<dyn EventLog>,
        resolver: Arc<dyn Resolver>,
        metrics: ImageMetrics,
        name: String,
        was_stale: Option<bool>,
    }

    impl Audit {
        /// The controller for `name` (an image of `spec`).
        pub fn new(
            spec: Arc<Spec>,
            store: Arc<dyn EventLog>,
            resolver: Arc<dyn Resolver>,
            metrics: ImageMetrics,
            name: String,
        ) -> Audit {
            Audit {
                spec,
                store,
                resolver,
                metrics,
                name,
                was_stale: None,
            }
        }

        /// The images `serve` audits, by name.
        pub fn audited(spec: &Spec) -> Vec<String> {
            spec.images
                .values()
                .filter(|i| i.audit_every.is_some())
                .map(|i| i.name.clone())
                .collect()
        }
    }

    impl Controller for Audit {
        fn reconcile(&mut self) -> Step<'_> {
            Box::pin(async move {
                let every = self.spec.images[&self.name]
                    .audit_every
                    .map_or(Duration::from_secs(3600), |d| d.0)
                    .max(Duration::from_secs(1));
                let (spec, resolver, name) =
                    (self.spec.clone(), self.resolver.clone(), self.name.clone());
                let result = tokio::task::spawn_blocking(move || {
                    super::audit(&spec, &spec.images[&name], resolver.as_ref())
                })
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
                let labels = vec![("image".to_string(), self.name.clone())];
                match result {
                    Ok(r) => {
                        self.metrics
                            .stale
                            .get_or_create(&labels)
                            .set(r.stale as i64);
                        self.metrics
                            .outdated
                            .get_or_create(&labels)
                            .set(r.outdated.len() as i64);
                        self.metrics
                            .age
                            .get_or_create(&labels)
                            .set(r.age_days * 86_400.0);
                        if self.was_stale != Some(r.stale) && r.stale {
                            let stale = NewEvent::now(
                                EventKind::ImageStale,
                                &self.name,
                                Severity::Warning,
                                format!(
                                    "{} outdated package(s) ({} security), {:.1} days old",
                                    r.outdated.len(),
                                    r.outdated.iter().filter(|o| o.security).count(),
                                    r.age_days
                                ),
                                serde_json::to_value(&r).unwrap_or_default(),
                            );
                            steward_state::record_off_thread(&self.store, stale).await;
                        }
                        self.was_stale = Some(r.stale);
                        Ok(Next::After(every))
                    }
                    // Nothing built yet: nothing to audit, and nothing wrong.
                    Err(super::ImageError::NotBuilt(_)) => Ok(Next::After(every)),
                    // An audit is costly (apt in a chroot): the next try
                    // waits the usual interval.
                    Err(e) => Err(StepError::new("audit", e).retry_after(every)),
                }
            })
        }
    }
}
