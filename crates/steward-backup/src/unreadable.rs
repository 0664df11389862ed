//! A `paths` source that remembers what it could not read. rustic_core skips
//! an entry it cannot list, open or read with a log line and carries on, so
//! a snapshot can lack files without anyone being told; steward wraps the
//! local source, counts those entries (keeping the first few with their
//! reasons), and marks such a snapshot `partial`.

use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rustic_core::{LocalSource, ReadSource, ReadSourceEntry, ReadSourceOpen, RusticResult};

/// How many skipped entries are named (the rest are only counted).
const NAMED: usize = 5;

/// What a run could not read.
#[derive(Debug, Default, Clone)]
pub(crate) struct Skipped {
    /// Entries skipped.
    pub(crate) count: u64,
    /// The first few, as `path: reason`.
    pub(crate) first: Vec<String>,
}

type Shared = Arc<Mutex<Skipped>>;

fn note(skipped: &Shared, what: String) {
    let mut s = skipped.lock().unwrap_or_else(|e| e.into_inner());
    s.count += 1;
    if s.first.len() < NAMED {
        s.first.push(what);
    }
}

/// The local source, counting what it skips.
pub(crate) struct Counting {
    inner: LocalSource,
    skipped: Shared,
}

impl Counting {
    pub(crate) fn new(inner: LocalSource) -> Self {
        Counting {
            inner,
            skipped: Shared::default(),
        }
    }

    /// What was skipped so far.
    pub(crate) fn skipped(&self) -> Skipped {
        self.skipped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl ReadSource for Counting {
    type Open = CountingOpen<<LocalSource as ReadSource>::Open>;
    type Iter = CountingIter<<LocalSource as ReadSource>::Iter>;

    fn size(&self) -> RusticResult<Option<u64>> {
        self.inner.size()
    }

    fn entries(&self) -> Self::Iter {
        CountingIter {
            inner: self.inner.entries(),
            skipped: self.skipped.clone(),
        }
    }
}

/// Entries, noting those that cannot be listed.
pub(crate) struct CountingIter<I> {
    inner: I,
    skipped: Shared,
}

impl<I, O> Iterator for CountingIter<I>
where
    I: Iterator<Item = RusticResult<ReadSourceEntry<O>>>,
    O: ReadSourceOpen,
{
    type Item = RusticResult<ReadSourceEntry<CountingOpen<O>>>;

    fn next(&mut self) -> Option<Self::Item> {
        Some(match self.inner.next()? {
            Err(e) => {
                note(&self.skipped, crate::concise(&e.display_log()));
                Err(e)
            }
            Ok(entry) => Ok(ReadSourceEntry {
                open: entry.open.map(|inner| CountingOpen {
                    inner,
                    path: entry.path.clone(),
                    skipped: self.skipped.clone(),
                }),
                path: entry.path,
                node: entry.node,
            }),
        })
    }
}

/// Opening a file, noting when it cannot be opened.
pub(crate) struct CountingOpen<O> {
    inner: O,
    path: PathBuf,
    skipped: Shared,
}

impl<O: ReadSourceOpen> ReadSourceOpen for CountingOpen<O> {
    type Reader = CountingReader<O::Reader>;

    fn open(self) -> RusticResult<Self::Reader> {
        match self.inner.open() {
            Ok(reader) => Ok(CountingReader {
                inner: reader,
                path: self.path,
                skipped: self.skipped,
                failed: false,
            }),
            Err(e) => {
                note(
                    &self.skipped,
                    format!(
                        "{}: {}",
                        self.path.display(),
                        crate::concise(&e.display_log())
                    ),
                );
                Err(e)
            }
        }
    }
}

/// Reading a file, noting when a read fails part-way (the file is skipped).
pub(crate) struct CountingReader<R> {
    inner: R,
    path: PathBuf,
    skipped: Shared,
    failed: bool,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let r = self.inner.read(buf);
        if let Err(e) = &r
            && !self.failed
            && e.kind() != std::io::ErrorKind::Interrupted
        {
            self.failed = true;
            note(&self.skipped, format!("{}: {e}", self.path.display()));
        }
        r
    }
}
