//! Uptime and 24-hour charts for every check, computed from rollups and cached.
//!
//! Computing them reads a few rows per check; with thousands of checks that is
//! tens of milliseconds, too much for every page load. The cache lives for 50×
//! the time the last computation took (at most 30 s): a handful of checks are
//! always fresh, thousands are at most seconds old. `serve` also refreshes it in
//! the background so requests rarely pay for it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use steward_state::{Bucket, CheckHistory, StateError, Store, Uptime, now_ms};

/// One computation.
#[derive(Clone)]
pub(crate) struct Summaries {
    pub(crate) uptime: Arc<BTreeMap<String, Uptime>>,
    /// Hourly buckets of the last 24 hours, per check.
    pub(crate) day_series: Arc<BTreeMap<String, Vec<Bucket>>>,
    at: Instant,
    ttl: Duration,
}

/// The cache.
#[derive(Default)]
pub struct SummaryCache {
    inner: Mutex<Option<Summaries>>,
}

fn compute(store: &Store) -> Result<Summaries, StateError> {
    let started = Instant::now();
    let now = now_ms();
    let uptime = store.uptime_all(now)?;
    let day_series = store.series_all(now - 86_400_000, true)?;
    let took = started.elapsed();
    Ok(Summaries {
        uptime: Arc::new(uptime),
        day_series: Arc::new(day_series),
        at: Instant::now(),
        ttl: (took * 50).min(Duration::from_secs(30)),
    })
}

impl SummaryCache {
    /// Fresh summaries, recomputed on a blocking thread when expired.
    pub(crate) async fn get(&self, store: &Arc<Store>) -> Result<Summaries, String> {
        if let Some(s) = self
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            && s.at.elapsed() <= s.ttl
        {
            return Ok(s.clone());
        }
        self.refresh(store).await
    }

    /// Recomputes now.
    pub(crate) async fn refresh(&self, store: &Arc<Store>) -> Result<Summaries, String> {
        let store = store.clone();
        let s = tokio::task::spawn_blocking(move || compute(&store))
            .await
            .map_err(|e| format!("computing uptime: {e}"))?
            .map_err(|e| e.to_string())?;
        *self.inner.lock().unwrap_or_else(|e| e.into_inner()) = Some(s.clone());
        Ok(s)
    }

    /// How long until the cached value expires (zero when empty).
    pub(crate) fn remaining(&self) -> Duration {
        match self
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            Some(s) => s.ttl.saturating_sub(s.at.elapsed()),
            None => Duration::ZERO,
        }
    }
}
