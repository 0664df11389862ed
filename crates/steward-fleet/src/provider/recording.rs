//! A provider that runs no instance: it records every call, answers HTTP on
//! loopback for each started instance (so readiness checks and the proxy
//! reach it), and fails on command. The fleet's tests drive the real
//! controller through it — creates that fail, instances that never become
//! reachable, a `destroy` that hangs — and compare it with [`super::Local`] on
//! the same scenarios: the controller must not know which one it drives.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{
    ImageRef, InstanceHandle, InstanceSpec, Provider, ProviderError, ProviderFuture, Publish,
    Status,
};

/// One call the provider received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `publish(digest)`.
    Publish(String),
    /// `create(id)`.
    Create(String),
    /// `start(id)`.
    Start(String),
    /// `stop(id)`.
    Stop(String),
    /// `destroy(id)`.
    Destroy(String),
}

/// Failures to give, each for the next so many calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// `create` fails.
    pub create_errors: u32,
    /// `start` succeeds but nothing ever answers on the instance's address.
    pub unreachable: u32,
    /// `destroy` never returns (the caller's timeout must end it).
    pub hanging_destroys: u32,
}

struct Instance {
    address: SocketAddr,
    digest: String,
    server: Option<tokio::task::JoinHandle<()>>,
}

#[derive(Default)]
struct State {
    calls: Vec<Call>,
    faults: Faults,
    instances: BTreeMap<String, Instance>,
}

/// The recording provider; clones share their state.
#[derive(Clone, Default)]
pub struct Recording {
    state: Arc<Mutex<State>>,
}

impl Recording {
    /// A provider with no instances and no faults.
    pub fn new() -> Recording {
        Recording::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds failures to give.
    pub fn inject(&self, faults: Faults) {
        let mut s = self.lock();
        s.faults.create_errors += faults.create_errors;
        s.faults.unreachable += faults.unreachable;
        s.faults.hanging_destroys += faults.hanging_destroys;
    }

    /// Failures not given yet.
    pub fn pending(&self) -> Faults {
        self.lock().faults
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// The instances it holds: id → (digest, running).
    pub fn instances(&self) -> BTreeMap<String, (String, bool)> {
        self.lock()
            .instances
            .iter()
            .map(|(id, i)| (id.clone(), (i.digest.clone(), i.server.is_some())))
            .collect()
    }

    fn refused(id: &str, reason: &str) -> ProviderError {
        ProviderError::Refused {
            id: id.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// Answers every request on `listener` with `200 ok` and closes.
async fn answer(listener: tokio::net::TcpListener) {
    while let Ok((mut s, _)) = listener.accept().await {
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            // One request head is enough for a readiness probe or a proxied GET.
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                .await;
        });
    }
}

impl Provider for Recording {
    fn publish<'a>(&'a self, p: &'a Publish) -> ProviderFuture<'a, ImageRef> {
        Box::pin(async move {
            self.lock().calls.push(Call::Publish(p.digest.clone()));
            Ok(ImageRef {
                digest: p.digest.clone(),
                data: serde_json::json!({ "recorded": true }),
            })
        })
    }

    fn create<'a>(
        &'a self,
        spec: InstanceSpec<'a>,
        image: &'a ImageRef,
    ) -> ProviderFuture<'a, InstanceHandle> {
        Box::pin(async move {
            let mut s = self.lock();
            s.calls.push(Call::Create(spec.id.to_string()));
            if s.faults.create_errors > 0 {
                s.faults.create_errors -= 1;
                return Err(Self::refused(spec.id, "create refused (injected)"));
            }
            let address = SocketAddr::from(([127, 0, 0, 1], super::free_port().unwrap_or(9)));
            s.instances.insert(
                spec.id.to_string(),
                Instance {
                    address,
                    digest: image.digest.clone(),
                    server: None,
                },
            );
            Ok(InstanceHandle {
                id: spec.id.to_string(),
                address,
                data: serde_json::json!({ "recording": spec.id }),
            })
        })
    }

    fn start<'a>(
        &'a self,
        handle: &'a InstanceHandle,
        spec: InstanceSpec<'a>,
    ) -> ProviderFuture<'a, InstanceHandle> {
        Box::pin(async move {
            let unreachable = {
                let mut s = self.lock();
                s.calls.push(Call::Start(spec.id.to_string()));
                if !s.instances.contains_key(spec.id) {
                    return Err(Self::refused(spec.id, "no such instance"));
                }
                let u = s.faults.unreachable > 0;
                if u {
                    s.faults.unreachable -= 1;
                }
                u
            };
            let (address, server) = if unreachable {
                // A port bound but never listened on: connections are refused,
                // and, unlike a port merely found free, no other listener (a
                // later instance, another test) can take it while it is held.
                let io = |source| ProviderError::Io {
                    id: spec.id.to_string(),
                    what: "holding a port",
                    source,
                };
                let socket = tokio::net::TcpSocket::new_v4().map_err(io)?;
                socket
                    .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
                    .map_err(io)?;
                let address = socket.local_addr().map_err(io)?;
                let held = tokio::spawn(async move {
                    let _socket = socket;
                    std::future::pending::<()>().await
                });
                (address, held)
            } else {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .map_err(|source| ProviderError::Io {
                        id: spec.id.to_string(),
                        what: "listening",
                        source,
                    })?;
                let address = l.local_addr().map_err(|source| ProviderError::Io {
                    id: spec.id.to_string(),
                    what: "listening",
                    source,
                })?;
                (address, tokio::spawn(answer(l)))
            };
            let mut s = self.lock();
            let Some(i) = s.instances.get_mut(spec.id) else {
                return Err(Self::refused(spec.id, "destroyed while starting"));
            };
            i.address = address;
            // "Running" even when unreachable: the process is up, it just never answers.
            i.server = Some(server);
            Ok(InstanceHandle {
                address,
                ..handle.clone()
            })
        })
    }

    fn status<'a>(&'a self, handle: &'a InstanceHandle) -> ProviderFuture<'a, Status> {
        Box::pin(async move {
            let s = self.lock();
            Ok(match s.instances.get(&handle.id) {
                Some(i) if i.server.is_some() => Status::Running,
                _ => Status::Stopped,
            })
        })
    }

    fn stop<'a>(
        &'a self,
        handle: &'a InstanceHandle,
        _grace: Duration,
    ) -> ProviderFuture<'a, InstanceHandle> {
        Box::pin(async move {
            let mut s = self.lock();
            s.calls.push(Call::Stop(handle.id.clone()));
            if let Some(server) = s
                .instances
                .get_mut(&handle.id)
                .and_then(|i| i.server.take())
            {
                server.abort();
            }
            Ok(handle.clone())
        })
    }

    fn destroy<'a>(&'a self, handle: &'a InstanceHandle) -> ProviderFuture<'a, ()> {
        Box::pin(async move {
            let hang = {
                let mut s = self.lock();
                s.calls.push(Call::Destroy(handle.id.clone()));
                let h = s.faults.hanging_destroys > 0;
                if h {
                    s.faults.hanging_destroys -= 1;
                }
                h
            };
            if hang {
                std::future::pending::<()>().await;
            }
            let mut s = self.lock();
            if let Some(i) = s.instances.remove(&handle.id)
                && let Some(server) = i.server
            {
                server.abort();
            }
            Ok(())
        })
    }

    fn list(&self) -> ProviderFuture<'_, Vec<InstanceHandle>> {
        Box::pin(async move {
            let s = self.lock();
            Ok(s.instances
                .iter()
                .map(|(id, i)| InstanceHandle {
                    id: id.clone(),
                    address: i.address,
                    data: serde_json::json!({ "recording": id }),
                })
                .collect())
        })
    }

    fn describe(&self, handle: &InstanceHandle) -> String {
        format!("recorded {}", handle.id)
    }

    fn log_path(&self, _handle: &InstanceHandle) -> Option<PathBuf> {
        None
    }
}
