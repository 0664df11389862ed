//! Scraping a target as Prometheus does: fetched with Prometheus's `Accept`
//! header, bounded in time and size; parsed whole (a malformed body, too many
//! samples or a sample with too many labels fails the scrape and stores
//! nothing); each sample labelled with the target's labels (a scraped label
//! of the same name is kept as `exported_NAME`); series that vanish from the
//! target, or all of them when a scrape fails, get a staleness marker; and
//! the report series `up`, `scrape_duration_seconds`,
//! `scrape_samples_scraped`, `scrape_samples_post_metric_relabeling` and
//! `scrape_series_added` written for the target.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::exposition::{ACCEPT, Format, ParseError, parse};
use crate::tsdb::chunk::AppendError;
use crate::tsdb::head::{Head, SeriesRef};

/// The value Prometheus writes to mark a series stale: a NaN with a payload
/// of its own, told apart from a scraped NaN by its bits.
pub const STALE_NAN: u64 = 0x7ff0_0000_0000_0002;

/// Whether a stored value is a staleness marker.
pub fn is_stale(v: f64) -> bool {
    v.to_bits() == STALE_NAN
}

/// What a scrape may cost: the spec's limits, as they are.
pub use steward_spec::ScrapeLimits as Limits;

/// The times a target is scraped at: every `interval`, at an offset within
/// the interval taken from the target's URL (so targets spread over the
/// interval, as Prometheus spreads them). Samples are stamped with the slot
/// they were scraped for, not the moment the request left: on the grid,
/// the delta of deltas between timestamps is zero and a sample's timestamp
/// costs one bit in a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    interval_ms: i64,
    offset_ms: i64,
    last: Option<i64>,
}

impl Grid {
    /// The grid of a target at `url` scraped every `interval`.
    pub fn new(url: &str, interval: Duration) -> Grid {
        let interval_ms = (interval.as_millis() as i64).max(1);
        // FNV-1a: stable across runs and versions, unlike the std hasher.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in url.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        Grid {
            interval_ms,
            offset_ms: (h % interval_ms as u64) as i64,
            last: None,
        }
    }

    /// The slot a scrape starting at `now_ms` is stamped with: the first
    /// scrape, the latest slot before it (never a time still to come);
    /// later ones, the nearest slot (a scrape woken by [`Grid::wait`] starts
    /// a few milliseconds after its slot), always later than the slot of
    /// the scrape before.
    pub fn stamp(&mut self, now_ms: i64) -> i64 {
        let floor = now_ms - (now_ms - self.offset_ms).rem_euclid(self.interval_ms);
        let t = match self.last {
            None => floor,
            Some(last) => {
                let nearest = if (now_ms - floor) * 2 >= self.interval_ms {
                    floor + self.interval_ms
                } else {
                    floor
                };
                nearest.max(last + self.interval_ms)
            }
        };
        self.last = Some(t);
        t
    }

    /// How long from `now_ms` until the next slot's scrape is due (none,
    /// when it is late).
    pub fn wait(&self, now_ms: i64) -> Duration {
        let next = self.last.map_or(now_ms, |l| l + self.interval_ms);
        Duration::from_millis((next - now_ms).max(0) as u64)
    }
}

/// One scrape target.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// Where its metrics are.
    pub url: String,
    /// Labels added to everything scraped from it (`job`, `instance`, …),
    /// sorted by name.
    pub labels: Vec<(String, String)>,
    /// Longest a scrape may take.
    pub timeout: Duration,
    /// What a scrape may cost.
    pub limits: Limits,
}

/// Why a scrape failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScrapeError {
    /// The request failed.
    #[error("request failed: {0}")]
    Request(String),
    /// It took longer than the timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The target did not answer 200.
    #[error("the target answered HTTP {0}")]
    Status(u16),
    /// The body is larger than the limit.
    #[error("the body is larger than {0} bytes")]
    TooLarge(usize),
    /// The body is not UTF-8.
    #[error("the body is not UTF-8")]
    NotText,
    /// The body is not a valid exposition.
    #[error("{0}")]
    Parse(ParseError),
    /// More samples than the limit.
    #[error("{found} samples, more than the sample limit of {limit}")]
    SampleLimit {
        /// The limit.
        limit: usize,
        /// How many there were.
        found: usize,
    },
    /// The store holds as many series as it may.
    #[error(
        "{new} new series would pass the store's limit of {limit} series (`max_series` of [steward])"
    )]
    SeriesLimit {
        /// The limit.
        limit: usize,
        /// New series in this scrape.
        new: usize,
    },
    /// A sample with more labels than the limit.
    #[error("`{series}` has {found} labels, more than the label limit of {limit}")]
    LabelLimit {
        /// The limit.
        limit: usize,
        /// How many it had.
        found: usize,
        /// Which series.
        series: String,
    },
}

/// Fetches a target's body and the format its `Content-Type` names.
pub async fn fetch(
    client: &reqwest::Client,
    target: &Target,
) -> Result<(Format, String), ScrapeError> {
    let work = async {
        let mut resp = client
            .get(&target.url)
            .header(reqwest::header::ACCEPT, ACCEPT)
            .header(
                "X-Prometheus-Scrape-Timeout-Seconds",
                format!("{}", target.timeout.as_secs_f64()),
            )
            .send()
            .await
            .map_err(|e| ScrapeError::Request(steward_net::error_chain(&e.without_url())))?;
        if resp.status() != reqwest::StatusCode::OK {
            return Err(ScrapeError::Status(resp.status().as_u16()));
        }
        let format = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map_or(Format::Text, Format::from_content_type);
        let limit = target.limits.body_bytes;
        if resp.content_length().is_some_and(|n| n as usize > limit) {
            return Err(ScrapeError::TooLarge(limit));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| ScrapeError::Request(steward_net::error_chain(&e.without_url())))?
        {
            if body.len() + chunk.len() > limit {
                return Err(ScrapeError::TooLarge(limit));
            }
            body.extend_from_slice(&chunk);
        }
        let body = String::from_utf8(body).map_err(|_| ScrapeError::NotText)?;
        Ok((format, body))
    };
    tokio::time::timeout(target.timeout, work)
        .await
        .unwrap_or(Err(ScrapeError::Timeout(target.timeout)))
}

/// A series' labels while a scrape is checked: names (an `exported_` one
/// owned), values borrowed from the body.
type LabelSet<'a> = Vec<(std::borrow::Cow<'a, str>, &'a str)>;

/// What one scrape did.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Whether it succeeded.
    pub up: bool,
    /// How long it took, fetch and ingest.
    pub duration: Duration,
    /// Samples in the body.
    pub scraped: usize,
    /// Series seen for the first time.
    pub added: usize,
    /// Samples not stored: older than their series' newest, or a second
    /// value at one time.
    pub rejected: usize,
    /// Why it failed.
    pub error: Option<ScrapeError>,
}

/// One target's scrape loop state: which series its last scrape held.
#[derive(Debug)]
pub struct Scraper {
    /// The target.
    pub target: Target,
    /// Series as the target writes them → where they are in the store, for
    /// exactly the series of the last successful scrape (as Prometheus's
    /// scrape cache): a known series costs one hash lookup, not a label set.
    cache: HashMap<Box<str>, Cached, foldhash::fast::RandomState>,
    /// Counts ingest attempts; an entry seen in this one carries its number.
    attempt: u64,
    /// The cached series are already marked stale (the scrape after them
    /// failed): a series missing from the next one needs no second marker.
    marked_stale: bool,
    /// The store's generation the cache is valid for.
    generation: u64,
}

/// A series in a [`Scraper`]'s cache.
#[derive(Debug, Clone, Copy)]
struct Cached {
    series: SeriesRef,
    /// The ingest attempt that last saw it.
    seen: u64,
}

/// A scraped sample's series: known from the last scrape, or new with its
/// full label set.
enum Slot<'a> {
    Known(SeriesRef),
    New(LabelSet<'a>),
}

impl Scraper {
    /// A scraper for `target` (its labels are sorted here).
    pub fn new(mut target: Target) -> Scraper {
        target.labels.sort();
        Scraper {
            target,
            cache: HashMap::default(),
            attempt: 0,
            marked_stale: false,
            generation: 0,
        }
    }

    /// Fetches, ingests into `head` at `now_ms` and writes the report series.
    pub async fn scrape(
        &mut self,
        client: &reqwest::Client,
        head: &std::sync::Mutex<Head>,
        now_ms: i64,
    ) -> Report {
        let started = Instant::now();
        let fetched = fetch(client, &self.target).await;
        let mut head = head.lock().unwrap_or_else(|e| e.into_inner());
        self.finish(&mut head, fetched, started, now_ms)
    }

    /// The part of a scrape after the fetch (CPU only: parse, store, report).
    pub fn finish(
        &mut self,
        head: &mut Head,
        fetched: Result<(Format, String), ScrapeError>,
        started: Instant,
        now_ms: i64,
    ) -> Report {
        let result = fetched.and_then(|(format, body)| self.ingest(head, format, &body, now_ms));
        let report = match result {
            Ok((scraped, added, rejected)) => Report {
                up: true,
                duration: started.elapsed(),
                scraped,
                added,
                rejected,
                error: None,
            },
            Err(e) => {
                self.mark_all_stale(head, now_ms);
                Report {
                    up: false,
                    duration: started.elapsed(),
                    scraped: 0,
                    added: 0,
                    rejected: 0,
                    error: Some(e),
                }
            }
        };
        self.write_report(head, &report, now_ms);
        report
    }

    /// Parses a body and stores its samples, all or none: returns samples
    /// scraped, series added and samples rejected.
    pub fn ingest(
        &mut self,
        head: &mut Head,
        format: Format,
        body: &str,
        now_ms: i64,
    ) -> Result<(usize, usize, usize), ScrapeError> {
        let e = parse(body, format).map_err(ScrapeError::Parse)?;
        let limits = self.target.limits;
        if limits.samples > 0 && e.samples.len() > limits.samples {
            return Err(ScrapeError::SampleLimit {
                limit: limits.samples,
                found: e.samples.len(),
            });
        }
        // A change of generation means series were dropped from the store
        // and their refs may be reused: the cache starts over (dropped series
        // had no recent samples, so none of them can be in the last scrape —
        // unless a target sends timestamps older than retention, whose
        // staleness markers are then skipped once).
        if head.generation() != self.generation {
            self.cache.clear();
            self.generation = head.generation();
        }
        self.attempt += 1;
        let attempt = self.attempt;
        // Every new series' full label set first: a limit broken anywhere
        // fails the scrape before anything is stored. (A cached series
        // passed the same checks with the same labels.) Known series are
        // marked seen on the way: one lookup each.
        let mut slots: Vec<Slot<'_>> = Vec::with_capacity(e.samples.len());
        let mut known = 0;
        for s in &e.samples {
            if let Some(c) = self.cache.get_mut(s.series) {
                if c.seen != attempt {
                    c.seen = attempt;
                    known += 1;
                }
                slots.push(Slot::Known(c.series));
                continue;
            }
            let mut set: LabelSet<'_> =
                Vec::with_capacity(e.labels_of(s).len() + 1 + self.target.labels.len());
            set.push(("__name__".into(), s.name));
            for l in e.labels_of(s) {
                let taken = self.target.labels.iter().any(|(n, _)| n == l.name);
                let name = if taken {
                    format!("exported_{}", l.name).into()
                } else {
                    l.name.into()
                };
                set.push((name, l.value.as_ref()));
            }
            for (n, v) in &self.target.labels {
                set.push((n.as_str().into(), v.as_str()));
            }
            if limits.labels > 0 && set.len() > limits.labels {
                return Err(ScrapeError::LabelLimit {
                    limit: limits.labels,
                    found: set.len(),
                    series: s.name.to_string(),
                });
            }
            set.retain(|(_, v)| !v.is_empty());
            set.sort();
            set.dedup_by(|a, b| a.0 == b.0);
            slots.push(Slot::New(set));
        }
        // The store's series limit: the scrape's new series must all fit.
        let new = slots
            .iter()
            .filter(|slot| match slot {
                Slot::New(set) => {
                    let pairs: Vec<(&str, &str)> =
                        set.iter().map(|(n, v)| (n.as_ref(), *v)).collect();
                    head.find(&pairs).is_none()
                }
                Slot::Known(_) => false,
            })
            .count();
        if new > 0 && !head.has_room_for(new) {
            return Err(ScrapeError::SeriesLimit {
                limit: head.series_limit(),
                new,
            });
        }
        let before = head.series_count();
        let mut inserted = 0;
        let mut rejected = 0;
        for (s, slot) in e.samples.iter().zip(&slots) {
            let r = match slot {
                Slot::Known(r) => *r,
                Slot::New(set) => {
                    let pairs: Vec<(&str, &str)> =
                        set.iter().map(|(n, v)| (n.as_ref(), *v)).collect();
                    let r = head.series_ref(&pairs);
                    let entry = Cached {
                        series: r,
                        seen: attempt,
                    };
                    // The same series twice in one body is one entry.
                    if self.cache.insert(s.series.into(), entry).is_none() {
                        inserted += 1;
                    }
                    r
                }
            };
            let t = s.timestamp_ms.unwrap_or(now_ms);
            match head.append(r, t, s.value) {
                Ok(()) => {}
                Err(AppendError::OutOfOrder { .. } | AppendError::Duplicate { .. }) => {
                    rejected += 1
                }
                Err(AppendError::Full) => rejected += 1,
            }
        }
        let added = head.series_count().saturating_sub(before);
        // Series of the last scrape missing from this one leave the cache
        // and get a staleness marker (unless the failed scrape between
        // already gave them one, or another spelling of the same series is
        // still here).
        if known + inserted < self.cache.len() {
            let mut gone = Vec::new();
            self.cache.retain(|_, c| {
                let keep = c.seen == attempt;
                if !keep {
                    gone.push(c.series);
                }
                keep
            });
            if !self.marked_stale {
                let here: HashSet<SeriesRef> = self.cache.values().map(|c| c.series).collect();
                for r in gone.into_iter().filter(|r| !here.contains(r)) {
                    let _ = head.append(r, now_ms, f64::from_bits(STALE_NAN));
                }
            }
        }
        self.marked_stale = false;
        Ok((e.samples.len(), added, rejected))
    }

    /// A failed scrape: every series of the last successful one is stale
    /// from now (once).
    pub fn mark_all_stale(&mut self, head: &mut Head, now_ms: i64) {
        if self.marked_stale || head.generation() != self.generation {
            return;
        }
        for c in self.cache.values() {
            let _ = head.append(c.series, now_ms, f64::from_bits(STALE_NAN));
        }
        self.marked_stale = true;
    }

    fn write_report(&self, head: &mut Head, report: &Report, now_ms: i64) {
        let values = [
            ("up", if report.up { 1.0 } else { 0.0 }),
            ("scrape_duration_seconds", report.duration.as_secs_f64()),
            ("scrape_samples_scraped", report.scraped as f64),
            (
                "scrape_samples_post_metric_relabeling",
                report.scraped as f64,
            ),
            ("scrape_series_added", report.added as f64),
        ];
        for (name, v) in values {
            let mut set: Vec<(&str, &str)> = vec![("__name__", name)];
            set.extend(
                self.target
                    .labels
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_str())),
            );
            set.sort();
            let r = head.series_ref(&set);
            let _ = head.append(r, now_ms, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grid_stamps_every_scrape_on_its_slot_and_never_twice() {
        let mut g = Grid::new("http://127.0.0.1:9100/metrics", Duration::from_secs(10));
        let offset = g.offset_ms;
        assert!((0..10_000).contains(&offset));
        // 1_700_000_000_000 is a multiple of the interval.
        let base = 1_700_000_000_000 + offset;
        // The first scrape, at any moment, takes the slot before it.
        assert_eq!(g.stamp(base + 6_000), base);
        // Woken a few milliseconds after the next slot: stamped on it.
        assert_eq!(g.wait(base + 6_100), Duration::from_millis(3_900));
        assert_eq!(g.stamp(base + 10_003), base + 10_000);
        // Woken early (a clock step): never the same slot twice.
        assert_eq!(g.stamp(base + 10_500), base + 20_000);
        // Late by more than an interval: the slot of now, no wait after.
        assert_eq!(g.stamp(base + 55_000), base + 60_000);
        assert_eq!(g.wait(base + 70_200), Duration::ZERO);
        // Another target spreads elsewhere in the interval (the offset is
        // a hash of the URL, the same every run).
        let other = Grid::new("http://127.0.0.1:9101/metrics", Duration::from_secs(10));
        assert_ne!(other.offset_ms, offset);
        assert_eq!(
            Grid::new("http://127.0.0.1:9101/metrics", Duration::from_secs(10)).offset_ms,
            other.offset_ms
        );
    }
}
