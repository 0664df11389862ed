//! restic's repository layout on any [`ObjectStore`]: `config`, `keys/ID`,
//! `snapshots/ID`, `index/ID` and `data/XX/ID` — what restic itself reads and writes,
//! so a steward repository is a restic repository.

use std::sync::Arc;

use bytes::Bytes;
use rustic_core::{
    BytesList, ErrorKind, FileType, Id, ReadBackend, RusticError, RusticResult, WriteBackend,
};
use steward_objects::{ObjectStore, StoreError};

/// A rustic backend over an object store.
pub(crate) struct ResticBackend {
    store: Arc<dyn ObjectStore>,
}

impl ResticBackend {
    pub(crate) fn new(store: Arc<dyn ObjectStore>) -> ResticBackend {
        ResticBackend { store }
    }
}

/// The key of a repository file.
pub(crate) fn key(tpe: FileType, id: &Id) -> String {
    let hex = id.to_hex();
    match tpe {
        FileType::Config => "config".into(),
        FileType::Pack => format!("data/{}/{}", &hex[..2], hex.as_str()),
        other => format!("{}/{}", other.dirname(), hex.as_str()),
    }
}

fn err(what: String, e: StoreError) -> Box<RusticError> {
    RusticError::with_source(ErrorKind::Backend, what, e)
}

impl ReadBackend for ResticBackend {
    fn location(&self) -> String {
        self.store.location()
    }

    fn list_with_size(&self, tpe: FileType) -> RusticResult<Vec<(Id, u32)>> {
        let prefix = if tpe == FileType::Config {
            "config".to_string()
        } else {
            format!("{}/", tpe.dirname())
        };
        let objects = self
            .store
            .list(&prefix)
            .map_err(|e| err(format!("listing {prefix}"), e))?;
        let mut out = Vec::with_capacity(objects.len());
        for o in objects {
            let size = u32::try_from(o.size).unwrap_or(u32::MAX);
            if tpe == FileType::Config {
                if o.name == "config" {
                    out.push((Id::default(), size));
                }
                continue;
            }
            let file = o.name.rsplit('/').next().unwrap_or_default();
            // Foreign objects (temporaries, notes) are not repository files.
            if let Ok(id) = file.parse::<Id>() {
                out.push((id, size));
            }
        }
        Ok(out)
    }

    fn read_full(&self, tpe: FileType, id: &Id) -> RusticResult<Bytes> {
        let k = key(tpe, id);
        self.store
            .get(&k)
            .map_err(|e| err(format!("reading {k}"), e))
    }

    fn read_partial(
        &self,
        tpe: FileType,
        id: &Id,
        _cacheable: bool,
        offset: u32,
        length: u32,
    ) -> RusticResult<Bytes> {
        let k = key(tpe, id);
        self.store
            .get_range(&k, offset.into(), length.into())
            .map_err(|e| err(format!("reading {k}"), e))
    }

    fn warmup_path(&self, tpe: FileType, id: &Id) -> String {
        key(tpe, id)
    }
}

impl WriteBackend for ResticBackend {
    fn create(&self) -> RusticResult<()> {
        self.store
            .ensure()
            .map_err(|e| err(format!("creating {}", self.store.location()), e))
    }

    fn write_bytes(
        &self,
        tpe: FileType,
        id: &Id,
        _cacheable: bool,
        content: BytesList,
    ) -> RusticResult<()> {
        let k = key(tpe, id);
        self.store
            .put(&k, content.slice())
            .map_err(|e| err(format!("writing {k}"), e))
    }

    fn remove(&self, tpe: FileType, id: &Id, _cacheable: bool) -> RusticResult<()> {
        let k = key(tpe, id);
        self.store
            .delete(&k)
            .map_err(|e| err(format!("removing {k}"), e))
    }
}
