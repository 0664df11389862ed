//! `[scrape.NAME]`: a target steward scrapes on its own, and a service's
//! `metrics`: each of its instances scraped.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::diag::Diagnostics;
use crate::duration::Dur;
use crate::secret::{Resolver, Text};
use crate::validate::secret_ok;

/// What a scrape may cost; see each field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScrapeLimits {
    /// Most samples in one scrape.
    pub samples: usize,
    /// Most labels on one sample (its name and the target's labels included).
    pub labels: usize,
    /// Most bytes of body.
    pub body_bytes: usize,
}

impl Default for ScrapeLimits {
    fn default() -> Self {
        ScrapeLimits {
            samples: 50_000,
            labels: 64,
            body_bytes: 16 << 20,
        }
    }
}

/// `[scrape.NAME]`
#[derive(Debug, Clone)]
pub struct Scrape {
    /// Its name (the `job` label unless `labels` sets one).
    pub name: String,
    /// Where its metrics are (may hold a secret reference).
    pub url: Text,
    /// How often.
    pub interval: Duration,
    /// How long one scrape may take.
    pub timeout: Duration,
    /// Labels added to every series scraped from it; `job` and `instance`
    /// are always among them.
    pub labels: BTreeMap<String, String>,
    /// What a scrape may cost.
    pub limits: ScrapeLimits,
}

/// A service's `metrics`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceMetrics {
    /// The path on each instance.
    pub path: String,
    /// How often.
    pub interval: Duration,
    /// How long one scrape may take.
    pub timeout: Duration,
    /// What a scrape may cost.
    pub limits: ScrapeLimits,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawScrape {
    url: Spanned<Text>,
    interval: Option<Dur>,
    timeout: Option<Dur>,
    labels: Option<Spanned<BTreeMap<String, String>>>,
    sample_limit: Option<u64>,
    label_limit: Option<u64>,
    body_limit: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServiceMetrics {
    path: Option<Spanned<String>>,
    interval: Option<Dur>,
    timeout: Option<Dur>,
    sample_limit: Option<u64>,
    label_limit: Option<u64>,
    body_limit: Option<Spanned<String>>,
}

/// Scrape defaults: every 15 s, at most 10 s each (never longer than the interval).
const INTERVAL: Duration = Duration::from_secs(15);
const TIMEOUT: Duration = Duration::from_secs(10);

fn timing(
    d: &mut Diagnostics,
    span: Range<usize>,
    what: &str,
    interval: Option<Dur>,
    timeout: Option<Dur>,
) -> (Duration, Duration) {
    let interval = interval.map_or(INTERVAL, |i| i.0);
    let timeout = timeout.map_or(TIMEOUT.min(interval), |t| t.0);
    if interval < Duration::from_secs(1) {
        d.error(
            span.clone(),
            format!("{what}: interval {} is below the 1s minimum", Dur(interval)),
            "too often",
            None,
        );
    }
    if timeout > interval {
        d.error(
            span,
            format!(
                "{what}: timeout {} is longer than the interval {}",
                Dur(timeout),
                Dur(interval)
            ),
            "timeout too long",
            Some("a scrape must end before the next one starts".into()),
        );
    }
    (interval, timeout)
}

fn limits(
    d: &mut Diagnostics,
    samples: Option<u64>,
    labels: Option<u64>,
    body: &Option<Spanned<String>>,
) -> ScrapeLimits {
    let mut out = ScrapeLimits::default();
    if let Some(n) = samples {
        out.samples = n as usize;
    }
    if let Some(n) = labels {
        out.labels = n as usize;
    }
    if let Some(b) = body {
        match crate::service::bytes(b.get_ref()) {
            Some(n) if n > 0 => out.body_bytes = n as usize,
            _ => d.error(
                b.span(),
                format!("invalid size `{}`", b.get_ref()),
                "not a size",
                Some("a size in bytes, or with K, M or G, e.g. \"16M\"".into()),
            ),
        }
    }
    out
}

pub(crate) fn label_name_ok(n: &str) -> bool {
    let mut chars = n.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !n.starts_with("__")
}

pub(crate) fn scrape(
    d: &mut Diagnostics,
    name: &str,
    span: Range<usize>,
    raw: &RawScrape,
    resolver: &dyn Resolver,
) -> Option<Scrape> {
    let before = d.errors.len();
    let url = raw.url.get_ref();
    secret_ok(d, url, raw.url.span(), resolver);
    let written = url.as_written();
    let rest = written
        .strip_prefix("http://")
        .or_else(|| written.strip_prefix("https://"));
    let Some(rest) = rest else {
        d.error(
            raw.url.span(),
            format!("scrape `{name}`: the url must start with http:// or https://"),
            "not an HTTP URL",
            None,
        );
        return None;
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let (interval, timeout) = timing(
        d,
        span,
        &format!("scrape `{name}`"),
        raw.interval,
        raw.timeout,
    );
    let mut labels = BTreeMap::new();
    if let Some(given) = &raw.labels {
        for (k, v) in given.get_ref() {
            if !label_name_ok(k) {
                d.error(
                    given.span(),
                    format!("scrape `{name}`: `{k}` is not a label name"),
                    "bad label name",
                    Some("letters, digits and `_`, not starting with a digit or `__`".into()),
                );
            }
            labels.insert(k.clone(), v.clone());
        }
    }
    labels
        .entry("job".into())
        .or_insert_with(|| name.to_string());
    labels
        .entry("instance".into())
        .or_insert_with(|| host.to_string());
    let limits = limits(d, raw.sample_limit, raw.label_limit, &raw.body_limit);
    (d.errors.len() == before).then(|| Scrape {
        name: name.to_string(),
        url: url.clone(),
        interval,
        timeout,
        labels,
        limits,
    })
}

pub(crate) fn service_metrics(
    d: &mut Diagnostics,
    service: &str,
    span: Range<usize>,
    raw: &RawServiceMetrics,
) -> ServiceMetrics {
    let path = raw
        .path
        .as_ref()
        .map_or("/metrics".to_string(), |p| p.get_ref().clone());
    if let Some(p) = &raw.path
        && !p.get_ref().starts_with('/')
    {
        d.error(
            p.span(),
            format!("service `{service}`: the metrics path must start with `/`"),
            "not a path",
            None,
        );
    }
    let (interval, timeout) = timing(
        d,
        span,
        &format!("service `{service}` metrics"),
        raw.interval,
        raw.timeout,
    );
    ServiceMetrics {
        path,
        interval,
        timeout,
        limits: limits(d, raw.sample_limit, raw.label_limit, &raw.body_limit),
    }
}
