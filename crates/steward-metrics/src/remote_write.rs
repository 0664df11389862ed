//! Remote write: every sample the store takes, sent on to Prometheus-compatible
//! long-term storage with the remote-write 1.0 protocol (a protobuf
//! `WriteRequest`, snappy block-compressed, POSTed with
//! `Content-Encoding: snappy` and `X-Prometheus-Remote-Write-Version: 0.1.0`;
//! <https://prometheus.io/docs/specs/remote_write_spec/>).
//!
//! The store keeps a tap per destination (see [`Head::add_tap`]); the
//! `remote_write.NAME` controller drains it into a bounded queue and sends
//! batches in order. A 5xx, a 429 or a failed connection is retried with
//! exponential backoff, the batch kept; any other 4xx drops it (the receiver
//! will never take it). When the queue is full the oldest samples go, and are
//! counted: nothing is lost across a receiver restart as long as the queue
//! holds what arrives meanwhile.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use steward_runtime::{Controller, Next, Step, StepError};

use crate::controller::Series;
use crate::tsdb::head::Labels;

/// The remote-write 1.0 messages (field numbers are the protocol's).
pub mod proto {
    /// `prometheus.WriteRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct WriteRequest {
        /// The series, each with its samples.
        #[prost(message, repeated, tag = "1")]
        pub timeseries: Vec<TimeSeries>,
    }

    /// `prometheus.TimeSeries`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TimeSeries {
        /// Sorted by name.
        #[prost(message, repeated, tag = "1")]
        pub labels: Vec<Label>,
        /// In time order.
        #[prost(message, repeated, tag = "2")]
        pub samples: Vec<Sample>,
    }

    /// `prometheus.Label`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Label {
        /// Name.
        #[prost(string, tag = "1")]
        pub name: String,
        /// Value.
        #[prost(string, tag = "2")]
        pub value: String,
    }

    /// `prometheus.Sample`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        /// Value.
        #[prost(double, tag = "1")]
        pub value: f64,
        /// Unix milliseconds.
        #[prost(int64, tag = "2")]
        pub timestamp: i64,
    }
}

/// A queued sample: its series' labels (shared) and the sample.
type Queued = (Arc<Labels>, i64, f64);

/// The body of one request: samples grouped by series (in queue order, so
/// each series' samples stay in time order), encoded and snappy-compressed.
pub fn encode(batch: &[Queued]) -> Vec<u8> {
    use prost::Message;
    let mut by_series: Vec<proto::TimeSeries> = Vec::new();
    let mut index: HashMap<*const Labels, usize> = HashMap::new();
    for (labels, t, v) in batch {
        let at = *index.entry(Arc::as_ptr(labels)).or_insert_with(|| {
            by_series.push(proto::TimeSeries {
                labels: labels
                    .iter()
                    .map(|(n, v)| proto::Label {
                        name: n.to_string(),
                        value: v.to_string(),
                    })
                    .collect(),
                samples: Vec::new(),
            });
            by_series.len() - 1
        });
        by_series[at].samples.push(proto::Sample {
            value: *v,
            timestamp: *t,
        });
    }
    let raw = proto::WriteRequest {
        timeseries: by_series,
    }
    .encode_to_vec();
    snap::raw::Encoder::new()
        .compress_vec(&raw)
        .expect("snappy takes any input below 4 GiB")
}

/// Counters of every destination, on `/metrics`.
#[derive(Clone, Default)]
pub struct RemoteWriteMetrics {
    sent: Family<Vec<(String, String)>, Counter>,
    dropped: Family<Vec<(String, String)>, Counter>,
    refused: Family<Vec<(String, String)>, Counter>,
    retries: Family<Vec<(String, String)>, Counter>,
    pending: Family<Vec<(String, String)>, Gauge>,
}

impl RemoteWriteMetrics {
    /// Registers `steward_remote_write_samples_{sent,dropped,refused}_total`,
    /// `steward_remote_write_retries_total` and
    /// `steward_remote_write_samples_pending`, each by `remote`.
    pub fn register(&self, r: &mut prometheus_client::registry::Registry) {
        r.register(
            "steward_remote_write_samples_sent",
            "Samples the remote-write destination accepted",
            self.sent.clone(),
        );
        r.register(
            "steward_remote_write_samples_dropped",
            "Samples dropped because the queue was full",
            self.dropped.clone(),
        );
        r.register(
            "steward_remote_write_samples_refused",
            "Samples the destination refused with a 4xx (not retried)",
            self.refused.clone(),
        );
        r.register(
            "steward_remote_write_retries",
            "Requests retried after a 5xx, a 429 or a failed connection",
            self.retries.clone(),
        );
        r.register(
            "steward_remote_write_samples_pending",
            "Samples queued for the destination",
            self.pending.clone(),
        );
    }
}

/// `remote_write.NAME`: one destination.
pub struct RemoteWriter {
    remote: steward_spec::RemoteWrite,
    url: String,
    head: Series,
    tap: usize,
    client: reqwest::Client,
    queue: VecDeque<Queued>,
    /// Labels of the series seen, by (slot, uid).
    labels: HashMap<(u32, u64), Arc<Labels>>,
    backoff: Duration,
    metrics: RemoteWriteMetrics,
    key: Vec<(String, String)>,
}

impl RemoteWriter {
    /// A destination; its tap on the store is opened here (so samples are
    /// kept from now on).
    pub fn new(
        remote: steward_spec::RemoteWrite,
        resolver: &dyn steward_spec::Resolver,
        head: Series,
        client: reqwest::Client,
        metrics: RemoteWriteMetrics,
    ) -> Result<RemoteWriter, String> {
        let url = remote
            .url
            .resolve(resolver)
            .map_err(|e| e.to_string())?
            .expose()
            .to_string();
        let tap = head
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add_tap(&remote.name, remote.capacity);
        Ok(RemoteWriter {
            key: vec![("remote".into(), remote.name.clone())],
            backoff: remote.min_backoff,
            url,
            remote,
            head,
            tap,
            client,
            queue: VecDeque::new(),
            labels: HashMap::new(),
            metrics,
        })
    }

    /// Moves what the tap holds into the queue (the oldest out beyond its
    /// capacity).
    fn drain(&mut self) {
        let (taken, lost, fresh) = {
            let mut h = self.head.lock().unwrap_or_else(|e| e.into_inner());
            let (taken, lost) = h.take_tap(self.tap);
            let mut fresh = Vec::new();
            for (slot, uid, _, _) in &taken {
                if !self.labels.contains_key(&(*slot, *uid))
                    && let Some(l) = h.labels_at(*slot, *uid)
                {
                    fresh.push(((*slot, *uid), Arc::new(l)));
                }
            }
            (taken, lost, fresh)
        };
        for (k, l) in fresh {
            self.labels.insert(k, l);
        }
        let mut dropped = lost;
        for (slot, uid, t, v) in taken {
            let Some(l) = self.labels.get(&(slot, uid)) else {
                dropped += 1;
                continue;
            };
            self.queue.push_back((l.clone(), t, v));
        }
        while self.queue.len() > self.remote.capacity {
            self.queue.pop_front();
            dropped += 1;
        }
        if dropped > 0 {
            self.metrics
                .dropped
                .get_or_create(&self.key)
                .inc_by(dropped);
            tracing::warn!(remote = %self.remote.name, dropped, "remote write queue full; oldest samples dropped");
        }
        // Labels of series no sample in the queue needs any more.
        if self.labels.len() > 2 * self.queue.len().max(1024) {
            let live: std::collections::HashSet<*const Labels> =
                self.queue.iter().map(|q| Arc::as_ptr(&q.0)).collect();
            self.labels.retain(|_, l| live.contains(&Arc::as_ptr(l)));
        }
        self.metrics
            .pending
            .get_or_create(&self.key)
            .set(self.queue.len() as i64);
    }
}

/// How a request ended.
enum Sent {
    Accepted,
    /// A 4xx other than 429: never to be accepted.
    Refused(String),
    /// Worth another try.
    Retry(String),
}

async fn send(client: &reqwest::Client, url: &str, body: Vec<u8>, timeout: Duration) -> Sent {
    let resp = client
        .post(url)
        .timeout(timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf")
        .header(reqwest::header::CONTENT_ENCODING, "snappy")
        .header("X-Prometheus-Remote-Write-Version", "0.1.0")
        .header(
            reqwest::header::USER_AGENT,
            concat!("steward/", env!("CARGO_PKG_VERSION")),
        )
        .body(body)
        .send()
        .await;
    match resp {
        Err(e) => Sent::Retry(steward_net::error_chain(&e.without_url())),
        Ok(r) if r.status().is_success() => Sent::Accepted,
        Ok(r) => {
            let status = r.status();
            let text = r.text().await.unwrap_or_default();
            let why = format!("HTTP {status}: {}", text.trim());
            if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
                Sent::Retry(why)
            } else {
                Sent::Refused(why)
            }
        }
    }
}

impl Controller for RemoteWriter {
    fn reconcile(&mut self) -> Step<'_> {
        Box::pin(async move {
            self.drain();
            while !self.queue.is_empty() {
                let n = self.queue.len().min(self.remote.max_samples_per_send);
                let batch: Vec<Queued> = self.queue.iter().take(n).cloned().collect();
                let body = encode(&batch);
                match send(&self.client, &self.url, body, self.remote.timeout).await {
                    Sent::Accepted => {
                        self.queue.drain(..n);
                        self.metrics.sent.get_or_create(&self.key).inc_by(n as u64);
                        self.backoff = self.remote.min_backoff;
                    }
                    Sent::Refused(why) => {
                        self.queue.drain(..n);
                        self.metrics
                            .refused
                            .get_or_create(&self.key)
                            .inc_by(n as u64);
                        tracing::error!(remote = %self.remote.name, samples = n, error = %why, "remote write refused a batch; dropped");
                    }
                    Sent::Retry(why) => {
                        self.metrics.retries.get_or_create(&self.key).inc();
                        let wait = self.backoff;
                        self.backoff = (self.backoff * 2).min(self.remote.max_backoff);
                        self.metrics
                            .pending
                            .get_or_create(&self.key)
                            .set(self.queue.len() as i64);
                        // Reported once per streak by the supervisor; the
                        // step ends here and comes back after the backoff.
                        return Err(StepError::new("send", why).retry_after(wait));
                    }
                }
                // What arrived while sending goes in the same round.
                self.drain();
            }
            Ok(Next::After(self.remote.batch_send_deadline))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_snappy_protobuf_grouped_by_series_in_time_order() {
        use prost::Message;
        let l = |name: &str, job: &str| -> Arc<Labels> {
            Arc::new(vec![
                ("__name__".into(), name.into()),
                ("job".into(), job.into()),
            ])
        };
        let (a, b) = (l("up", "api"), l("jobs_waiting", "worker"));
        let stale = f64::from_bits(crate::scrape::STALE_NAN);
        let batch = vec![
            (a.clone(), 1_000, 1.0),
            (b.clone(), 1_000, 4.0),
            (a.clone(), 2_000, 0.0),
            (b.clone(), 2_000, stale),
        ];
        let body = encode(&batch);
        let raw = snap::raw::Decoder::new().decompress_vec(&body).unwrap();
        let req = proto::WriteRequest::decode(raw.as_slice()).unwrap();
        assert_eq!(req.timeseries.len(), 2);
        let names: Vec<(&str, &str)> = req.timeseries[1]
            .labels
            .iter()
            .map(|l| (l.name.as_str(), l.value.as_str()))
            .collect();
        assert_eq!(names, [("__name__", "jobs_waiting"), ("job", "worker")]);
        let ts: Vec<(i64, u64)> = req.timeseries[1]
            .samples
            .iter()
            .map(|s| (s.timestamp, s.value.to_bits()))
            .collect();
        // The staleness marker goes as its own NaN, bit for bit.
        assert_eq!(
            ts,
            [(1_000, 4.0f64.to_bits()), (2_000, crate::scrape::STALE_NAN)]
        );
        assert_eq!(req.timeseries[0].samples.len(), 2);
    }
}
