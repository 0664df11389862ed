//! Secret references: `${env:NAME}` and `${file:/path}` inside spec strings.
//!
//! A spec string is kept as written ([`Text`]) and resolved late, right before use,
//! into a [`Secret`] whose `Debug`/`Display` never show the value.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Deserializer};

/// A spec string that may contain secret references.
#[derive(Clone, Default)]
pub struct Text {
    raw: String,
    /// The directory relative `${file:…}`/`${generated:…}` paths are taken
    /// from: the spec's, for texts made while a spec is parsed.
    base: Option<Arc<Path>>,
}

impl PartialEq for Text {
    fn eq(&self, other: &Self) -> bool {
        self.raw == other.raw
    }
}

impl Eq for Text {}

thread_local! {
    static BASE: std::cell::RefCell<Option<Arc<Path>>> = const { std::cell::RefCell::new(None) };
}

/// While alive, texts made on this thread take relative reference paths from
/// `dir` (the spec parser holds one for the spec's directory).
pub(crate) struct RelativeTo(Option<Arc<Path>>);

impl RelativeTo {
    pub(crate) fn dir(dir: &Path) -> Self {
        RelativeTo(BASE.with(|b| b.replace(Some(Arc::from(dir)))))
    }
}

impl Drop for RelativeTo {
    fn drop(&mut self) {
        BASE.with(|b| *b.borrow_mut() = self.0.take());
    }
}

fn current_base() -> Option<Arc<Path>> {
    BASE.with(|b| b.borrow().clone())
}

/// One `${kind:arg}` reference inside a [`Text`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// `${env:NAME}`
    Env(String),
    /// `${file:PATH}`: the file's content with one trailing newline removed.
    File(PathBuf),
    /// `${generated:PATH}`: like `file`, but a missing file is first created
    /// holding a random secret (mode 0600), as Ansible's `password` lookup does.
    Generated(PathBuf),
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Env(n) => write!(f, "${{env:{n}}}"),
            Reference::File(p) => write!(f, "${{file:{}}}", p.display()),
            Reference::Generated(p) => write!(f, "${{generated:{}}}", p.display()),
        }
    }
}

/// Why a reference could not be resolved.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    /// Syntax problem in the string.
    #[error("{0}")]
    Syntax(String),
    /// Environment variable not set.
    #[error("environment variable `{0}` is not set")]
    MissingEnv(String),
    /// File could not be read.
    #[error("cannot read `{path}`: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// The OS error.
        reason: String,
    },
}

/// Where references are looked up; tests pass their own.
pub trait Resolver: Send + Sync {
    /// Value of an environment variable.
    fn env(&self, name: &str) -> Option<String>;
    /// Content of a file.
    fn file(&self, path: &Path) -> Result<String, String>;
    /// Content of a file made with a random secret when missing.
    fn generated(&self, path: &Path) -> Result<String, String> {
        self.file(path)
    }
}

/// Resolves from the process environment and the file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsResolver;

impl Resolver for OsResolver {
    fn env(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
    fn file(&self, path: &Path) -> Result<String, String> {
        refuse_shared(path)?;
        std::fs::read_to_string(path).map_err(|e| e.to_string())
    }
    fn generated(&self, path: &Path) -> Result<String, String> {
        if !path.exists() {
            generate(path)?;
        }
        self.file(path)
    }
}

/// Writes 32 random hex characters to a new file only its owner can read.
#[cfg(unix)]
fn generate(path: &Path) -> Result<(), String> {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| format!("no random source: {e}"))?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        // Directories made for a secret are its owner's alone.
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(dir)
            .map_err(|e| e.to_string())?;
    }
    // Written whole to a private temporary file, then published under its
    // name by a hard link, which fails if another process got there first:
    // whoever reads the secret reads all of it, and two processes — or two
    // threads of one, a backup and its drill starting at the same minute —
    // making it at once end up with one value. The temporary name is this
    // call's own (the random value is in it), so no one else's is touched.
    let tmp = path.with_file_name(format!(
        ".{}.{}.{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("secret"),
        std::process::id(),
        &hex[..12]
    ));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| e.to_string())?;
    let written = (|| {
        let mut f = file;
        writeln!(f, "{hex}")?;
        f.sync_all()?;
        match std::fs::hard_link(&tmp, path) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            other => other,
        }
    })();
    let _ = std::fs::remove_file(&tmp);
    written.map_err(|e| e.to_string())
}

#[cfg(not(unix))]
fn generate(_: &Path) -> Result<(), String> {
    Err("generated secrets need a Unix system".into())
}

/// A secret file any user on the machine can read is already leaked: refuse it.
#[cfg(unix)]
pub(crate) fn refuse_shared(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| e.to_string())?
        .permissions()
        .mode();
    if mode & 0o007 != 0 {
        return Err(format!(
            "it is accessible to every user on this machine (mode {:04o}); run `chmod o-rwx {}`",
            mode & 0o7777,
            path.display()
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
pub(crate) fn refuse_shared(_: &Path) -> Result<(), String> {
    Ok(())
}

enum Piece<'a> {
    Lit(&'a str),
    Ref(Reference),
}

fn pieces(raw: &str) -> Result<Vec<Piece<'_>>, SecretError> {
    let mut out = Vec::new();
    let mut rest = raw;
    while let Some(i) = rest.find("${") {
        if i > 0 {
            out.push(Piece::Lit(&rest[..i]));
        }
        let after = &rest[i + 2..];
        let end = after.find('}').ok_or_else(|| {
            SecretError::Syntax("unterminated reference: `${` without a closing `}`".into())
        })?;
        let inner = &after[..end];
        let r = match inner.split_once(':') {
            Some(("env", name)) if is_env_name(name) => Reference::Env(name.to_string()),
            Some(("env", name)) => {
                return Err(SecretError::Syntax(format!(
                    "`{name}` is not a valid environment variable name"
                )));
            }
            Some(("file", path)) if !path.is_empty() => Reference::File(PathBuf::from(path)),
            Some(("generated", path)) if !path.is_empty() => {
                Reference::Generated(PathBuf::from(path))
            }
            _ => {
                return Err(SecretError::Syntax(format!(
                    "unknown reference `${{{inner}}}`: use `${{env:NAME}}`, `${{file:/path}}` or `${{generated:/path}}`"
                )));
            }
        };
        out.push(Piece::Ref(r));
        rest = &after[end + 1..];
    }
    if !rest.is_empty() {
        out.push(Piece::Lit(rest));
    }
    Ok(out)
}

fn is_env_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

impl Text {
    /// A text without references (or with them, unresolved).
    pub fn new(raw: impl Into<String>) -> Self {
        Self {
            raw: raw.into(),
            base: current_base(),
        }
    }

    /// A reference's path as it is read: relative ones from the spec's directory.
    fn located(&self, path: &Path) -> PathBuf {
        match &self.base {
            Some(base) if path.is_relative() => base.join(path),
            _ => path.to_path_buf(),
        }
    }

    /// The string as written in the spec (references unresolved; safe to show).
    pub fn as_written(&self) -> &str {
        &self.raw
    }

    /// References in the text, or a syntax error.
    pub fn references(&self) -> Result<Vec<Reference>, SecretError> {
        Ok(pieces(&self.raw)?
            .into_iter()
            .filter_map(|p| match p {
                Piece::Ref(r) => Some(r),
                Piece::Lit(_) => None,
            })
            .collect())
    }

    /// True when the text contains at least one reference.
    pub fn has_references(&self) -> bool {
        self.references().map(|r| !r.is_empty()).unwrap_or(false)
    }

    /// Checks that every reference would resolve, without side effects: a
    /// `${generated:…}` file that does not exist yet is fine (it is made when
    /// a command first uses it), one that exists must be readable and private.
    /// This is what validation does, so a refused spec — or `validate` — leaves
    /// the disk as it was.
    pub fn check(&self, resolver: &dyn Resolver) -> Result<(), SecretError> {
        self.expand(resolver, false).map(drop)
    }

    /// Resolves every reference now.
    pub fn resolve(&self, resolver: &dyn Resolver) -> Result<Secret, SecretError> {
        self.expand(resolver, true).map(Secret)
    }

    /// The text with its references replaced. Without `generate`, a
    /// `${generated:…}` file that does not exist yet stays unmade (and empty).
    fn expand(&self, resolver: &dyn Resolver, generate: bool) -> Result<String, SecretError> {
        let mut out = String::with_capacity(self.raw.len());
        for p in pieces(&self.raw)? {
            let content = match p {
                Piece::Lit(s) => {
                    out.push_str(s);
                    continue;
                }
                Piece::Ref(Reference::Env(n)) => {
                    out.push_str(&resolver.env(&n).ok_or(SecretError::MissingEnv(n))?);
                    continue;
                }
                Piece::Ref(Reference::File(path)) => resolver
                    .file(&self.located(&path))
                    .map_err(|reason| SecretError::File { path, reason })?,
                Piece::Ref(Reference::Generated(path)) => {
                    let at = self.located(&path);
                    let read = if generate {
                        resolver.generated(&at)
                    } else if at.exists() {
                        resolver.file(&at)
                    } else {
                        Ok(String::new())
                    };
                    read.map_err(|reason| SecretError::File { path, reason })?
                }
            };
            out.push_str(content.strip_suffix('\n').unwrap_or(&content));
        }
        Ok(out)
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.raw)
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        pieces(&raw).map_err(serde::de::Error::custom)?;
        Ok(Text::new(raw))
    }
}

/// A resolved value that must not leak: `Debug` and `Display` print `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(v: impl Into<String>) -> Self {
        Self(v.into())
    }
    /// The value; call only where it is handed to the peer that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Fake(HashMap<&'static str, &'static str>);
    impl Resolver for Fake {
        fn env(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|s| s.to_string())
        }
        fn file(&self, path: &Path) -> Result<String, String> {
            Err(format!("no file {}", path.display()))
        }
    }

    #[test]
    fn resolves_env_inside_text() {
        let t = Text::new("postgres://u:${env:PW}@h/db");
        let r = Fake(HashMap::from([("PW", "s3cret")]));
        assert_eq!(t.resolve(&r).unwrap().expose(), "postgres://u:s3cret@h/db");
        assert_eq!(format!("{:?}", t.resolve(&r).unwrap()), "***");
    }

    #[test]
    fn reports_missing_and_bad_references() {
        let r = Fake(HashMap::new());
        assert_eq!(
            Text::new("${env:NOPE}").resolve(&r),
            Err(SecretError::MissingEnv("NOPE".into()))
        );
        assert!(matches!(
            Text::new("${vault:x}").references(),
            Err(SecretError::Syntax(_))
        ));
        assert!(matches!(
            Text::new("abc ${env:X").references(),
            Err(SecretError::Syntax(_))
        ));
    }

    #[cfg(unix)]
    #[test]
    fn checking_a_generated_secret_makes_nothing() {
        let dir = std::env::temp_dir().join(format!("steward-gen-check-{}", std::process::id()));
        let t = Text::new(format!("${{generated:{}}}", dir.join("pw").display()));
        t.check(&OsResolver).unwrap();
        assert!(!dir.exists(), "check created {}", dir.display());
        t.resolve(&OsResolver).unwrap();
        t.check(&OsResolver).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A backup and its drill scheduled for the same minute resolve the
    /// password on two threads at once: both get the one value made.
    #[cfg(unix)]
    #[test]
    fn a_generated_secret_made_by_many_threads_at_once_is_one_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/pw");
        let t = Text::new(format!("${{generated:{}}}", path.display()));
        let barrier = std::sync::Barrier::new(16);
        let values: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..16)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        t.resolve(&OsResolver).map(|v| v.expose().to_string())
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap().unwrap())
                .collect()
        });
        assert!(
            values.iter().all(|v| v == &values[0] && v.len() == 32),
            "{values:?}"
        );
        let left: Vec<_> = std::fs::read_dir(dir.path().join("state"))
            .unwrap()
            .collect();
        assert_eq!(left.len(), 1, "no temporary file is left behind");
    }

    #[cfg(unix)]
    #[test]
    fn generated_secrets_are_made_once_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("steward-gen-{}", std::process::id()));
        let path = dir.join("sub/pw");
        let t = Text::new(format!("${{generated:{}}}", path.display()));
        let first = t.resolve(&OsResolver).unwrap();
        assert_eq!(first.expose().len(), 32);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            t.resolve(&OsResolver).unwrap().expose(),
            first.expose(),
            "made once"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[cfg(unix)]
    #[test]
    fn relative_reference_paths_mean_the_spec_directory() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("steward-rel-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("pw"), "hunter2\n").unwrap();
        std::fs::set_permissions(dir.join("pw"), std::fs::Permissions::from_mode(0o600)).unwrap();
        let t = {
            let _spec = RelativeTo::dir(&dir);
            Text::new("${file:pw}")
        };
        assert_eq!(t.resolve(&OsResolver).unwrap().expose(), "hunter2");
        // Outside a spec, relative still means the working directory.
        let err = Text::new("${file:pw}").resolve(&OsResolver).unwrap_err();
        assert!(matches!(err, SecretError::File { ref path, .. } if path == Path::new("pw")));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
