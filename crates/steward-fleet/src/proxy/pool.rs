//! The instances a service's proxy routes to: readiness-ordered rotation,
//! least-busy choice, in-flight counts for drains, and each instance's idle
//! keep-alive connections.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use prometheus_client::metrics::counter::Counter;

use super::Conn;

/// Idle connections kept per instance.
const MAX_IDLE: usize = 128;

/// One instance the proxy may send requests to.
#[derive(Debug)]
pub struct Upstream {
    /// Instance id.
    pub id: String,
    /// Its address.
    pub addr: SocketAddr,
    pub(super) inflight: AtomicU64,
    /// Idle keep-alive connections to it.
    idle: Mutex<Vec<Conn>>,
    /// Out of rotation: its connections are not kept any more.
    retired: AtomicBool,
    /// Its request and error counters, looked up once.
    pub(super) counters: OnceLock<(Counter, Counter)>,
}

impl Upstream {
    fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// An idle connection that is still clean: not closed by the instance and
    /// with nothing unread on it. Bytes an instance sent after the response
    /// they belonged to ended (more than its framing said) must never be read
    /// as the answer to another client's request.
    pub(super) fn take_idle(&self) -> Option<Conn> {
        loop {
            let c = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()?;
            let mut probe = [0u8; 1];
            match c.s.try_read(&mut probe) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Some(c),
                _ => continue,
            }
        }
    }

    /// Keeps a connection for the next request, unless the instance is out
    /// of rotation or enough are kept.
    pub(super) fn keep_idle(&self, c: Conn) {
        if self.retired.load(Ordering::Relaxed) {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(c);
        }
    }

    /// Requests it is handling now.
    pub fn inflight(&self) -> u64 {
        self.inflight.load(Ordering::Relaxed)
    }
}

/// The instances taking traffic. The controller sets it; the proxy reads it.
#[derive(Debug, Default)]
pub struct Pool {
    ready: RwLock<Arc<Vec<Arc<Upstream>>>>,
    next: AtomicUsize,
}

impl Pool {
    /// Sets the instances that take traffic (ids with addresses). Instances kept
    /// keep their in-flight counts.
    pub fn set(&self, wanted: &[(String, SocketAddr)]) {
        let mut ready = self.ready.write().unwrap_or_else(|e| e.into_inner());
        if ready.len() == wanted.len()
            && ready
                .iter()
                .zip(wanted)
                .all(|(u, (id, addr))| &u.id == id && u.addr == *addr)
        {
            return;
        }
        let next: Vec<Arc<Upstream>> = wanted
            .iter()
            .map(|(id, addr)| {
                ready
                    .iter()
                    .find(|u| &u.id == id && u.addr == *addr)
                    .cloned()
                    .unwrap_or_else(|| {
                        Arc::new(Upstream {
                            id: id.clone(),
                            addr: *addr,
                            inflight: AtomicU64::new(0),
                            idle: Mutex::default(),
                            retired: Default::default(),
                            counters: OnceLock::new(),
                        })
                    })
            })
            .collect();
        for gone in ready
            .iter()
            .filter(|u| !next.iter().any(|n| Arc::ptr_eq(n, u)))
        {
            gone.retire();
        }
        *ready = Arc::new(next);
    }

    /// Takes an instance out of rotation; returns it so its in-flight requests
    /// can be waited for.
    pub fn remove(&self, id: &str) -> Option<Arc<Upstream>> {
        let mut ready = self.ready.write().unwrap_or_else(|e| e.into_inner());
        let found = ready.iter().find(|u| u.id == id).cloned();
        if let Some(u) = &found {
            u.retire();
            let rest: Vec<_> = ready.iter().filter(|u| u.id != id).cloned().collect();
            *ready = Arc::new(rest);
        }
        found
    }

    /// Instances in rotation.
    pub fn ready(&self) -> Arc<Vec<Arc<Upstream>>> {
        self.ready.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The least busy instance not in `skip`, round-robin among equals.
    pub(super) fn pick(&self, skip: &[String]) -> Option<Arc<Upstream>> {
        let ready = self.ready();
        let n = ready.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &ready[(start + i) % n])
            .filter(|u| !skip.contains(&u.id))
            .min_by_key(|u| u.inflight())
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_least_busy_and_skips_tried_ones() {
        let pool = Pool::default();
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        pool.set(&[("a".into(), a), ("b".into(), b)]);
        let first = pool.pick(&[]).unwrap();
        first.inflight.fetch_add(1, Ordering::Relaxed);
        let second = pool.pick(&[]).unwrap();
        assert_ne!(first.id, second.id, "the idle one is picked");
        assert_eq!(
            pool.pick(&["a".into(), "b".into()]).map(|u| u.id.clone()),
            None
        );
        pool.set(&[("a".into(), a), ("b".into(), b)]);
        assert_eq!(pool.ready().iter().map(|u| u.inflight()).sum::<u64>(), 1);
        assert!(pool.remove("a").is_some());
        assert_eq!(pool.ready().len(), 1);
    }
}
