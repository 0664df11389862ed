//! `[remote_write.NAME]`: Prometheus-compatible long-term storage that every
//! stored sample is sent on to.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::diag::Diagnostics;
use crate::duration::Dur;
use crate::secret::{Resolver, Text};
use crate::validate::secret_ok;

/// `[remote_write.NAME]`
#[derive(Debug, Clone)]
pub struct RemoteWrite {
    /// Its name (the `remote` label of its metrics).
    pub name: String,
    /// The receiver's write endpoint (may hold a secret reference).
    pub url: Text,
    /// Most samples waiting to be sent; beyond, the oldest are dropped.
    pub capacity: usize,
    /// Most samples in one request.
    pub max_samples_per_send: usize,
    /// Longest a sample waits for a request to fill.
    pub batch_send_deadline: Duration,
    /// First wait after a failed request.
    pub min_backoff: Duration,
    /// Longest wait between retries.
    pub max_backoff: Duration,
    /// Longest one request may take.
    pub timeout: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRemoteWrite {
    url: Spanned<Text>,
    capacity: Option<Spanned<u64>>,
    max_samples_per_send: Option<Spanned<u64>>,
    batch_send_deadline: Option<Dur>,
    min_backoff: Option<Dur>,
    max_backoff: Option<Dur>,
    timeout: Option<Dur>,
}

pub(crate) fn remote_write(
    d: &mut Diagnostics,
    name: &str,
    raw: &RawRemoteWrite,
    resolver: &dyn Resolver,
) -> Option<RemoteWrite> {
    let before = d.errors.len();
    let url = raw.url.get_ref();
    secret_ok(d, url, raw.url.span(), resolver);
    let written = url.as_written();
    if !(written.starts_with("http://")
        || written.starts_with("https://")
        || written.starts_with("${"))
    {
        d.error(
            raw.url.span(),
            format!("remote_write `{name}`: the url must start with http:// or https://"),
            "not an HTTP URL",
            Some("the receiver's write endpoint, e.g. http://127.0.0.1:9090/api/v1/write".into()),
        );
    }
    let positive = |d: &mut Diagnostics, v: &Option<Spanned<u64>>, what: &str, default: u64| match v
    {
        Some(n) if *n.get_ref() == 0 => {
            d.error(
                n.span(),
                format!("remote_write `{name}`: {what} must be at least 1"),
                "zero",
                None,
            );
            default
        }
        Some(n) => *n.get_ref(),
        None => default,
    };
    let capacity = positive(d, &raw.capacity, "capacity", 100_000) as usize;
    let max_samples_per_send =
        positive(d, &raw.max_samples_per_send, "max_samples_per_send", 2_000) as usize;
    let min_backoff = raw.min_backoff.map_or(Duration::from_millis(30), |b| b.0);
    let max_backoff = raw
        .max_backoff
        .map_or(Duration::from_secs(5), |b| b.0)
        .max(min_backoff);
    (d.errors.len() == before).then(|| RemoteWrite {
        name: name.to_string(),
        url: url.clone(),
        capacity,
        max_samples_per_send,
        batch_send_deadline: raw
            .batch_send_deadline
            .map_or(Duration::from_secs(5), |b| b.0)
            .max(Duration::from_millis(100)),
        min_backoff,
        max_backoff,
        timeout: raw.timeout.map_or(Duration::from_secs(30), |t| t.0),
    })
}
