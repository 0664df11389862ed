//! The validated spec model that controllers consume.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::condition::Condition;
use crate::duration::Dur;
use crate::raw::{AuthMode, CheckKind, SmtpTls};
use crate::secret::Text;

/// A whole, validated spec.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The file it came from (as given).
    pub file: String,
    /// `[steward]`
    pub settings: Settings,
    /// `[check.*]`, by name; shared, since every controller holds them.
    pub checks: BTreeMap<String, Arc<Check>>,
    /// `[alert.*]`, by name.
    pub alerts: BTreeMap<String, Alert>,
    /// `[maintenance.*]`, by name.
    pub maintenance: BTreeMap<String, Maintenance>,
    /// `[converge.*]`, by name.
    pub converge: BTreeMap<String, crate::converge::ConvergeSet>,
    /// `[store.*]`, by name, always with the default `local` store.
    pub stores: BTreeMap<String, crate::backup::Store>,
    /// `[backup.*]`, by name.
    pub backups: BTreeMap<String, crate::backup::Backup>,
    /// `[image.*]`, by name.
    pub images: BTreeMap<String, crate::image::Image>,
    /// `[service.*]`, by name.
    pub services: BTreeMap<String, crate::service::Service>,
    /// `[scrape.*]`, by name.
    pub scrapes: BTreeMap<String, crate::scrape::Scrape>,
    /// `[rule.*]`, by name.
    pub rules: BTreeMap<String, crate::rule::Rule>,
    /// `[remote_write.*]`, by name.
    pub remote_writes: BTreeMap<String, crate::remote_write::RemoteWrite>,
    /// `[cloud.*]`, by name.
    pub clouds: BTreeMap<String, crate::cloud::Cloud>,
    /// `[snapshot.*]`, by name.
    pub snapshots: BTreeMap<String, crate::snapshot::Snapshot>,
}

/// `[steward]`: process-wide settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Shown on the status page.
    pub name: String,
    /// SQLite database and local objects live here.
    pub state_dir: PathBuf,
    /// Address of `serve`'s HTTP listener.
    pub listen: SocketAddr,
    /// How long history is kept at each resolution.
    pub retention: Retention,
    /// How the HTTP API authenticates.
    pub auth: AuthMode,
    /// Accept serving without authentication on a non-loopback address.
    pub insecure: bool,
    /// With token auth, leave `/metrics` open (for a Prometheus without credentials).
    pub public_metrics: bool,
    /// Serve HTTPS with these PEM files (reloaded on SIGHUP).
    pub tls: Option<TlsPaths>,
    /// How often `serve` stores its own metrics as series.
    pub self_scrape_interval: std::time::Duration,
    /// How often new samples are written to `series.db` (what a `kill -9`
    /// may lose).
    pub metrics_flush_interval: std::time::Duration,
    /// Most series the metrics store holds (0: no limit); a scrape that
    /// would pass it fails.
    pub max_series: usize,
}

/// Certificate chain and private key of `serve`'s HTTPS listener.
#[derive(Debug, Clone)]
pub struct TlsPaths {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// History retention per resolution.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Raw results.
    pub raw: Dur,
    /// Per-minute aggregates.
    pub minute: Dur,
    /// Per-hour aggregates.
    pub hour: Dur,
    /// Per-day aggregates.
    pub day: Dur,
    /// Events.
    pub events: Dur,
}

impl Default for Retention {
    fn default() -> Self {
        let d = |s| Dur(std::time::Duration::from_secs(s));
        Retention {
            raw: d(2 * 86400),
            minute: d(2 * 86400),
            hour: d(31 * 86400),
            day: d(400 * 86400),
            events: d(90 * 86400),
        }
    }
}

/// Defaults shared by the parser and the docs.
pub mod defaults {
    /// Listen address of `serve`.
    pub const LISTEN: &str = "127.0.0.1:7070";
    /// State directory, relative to the spec file.
    pub const STATE_DIR: &str = ".steward";
    /// Check interval.
    pub const INTERVAL_SECS: u64 = 60;
    /// Check timeout.
    pub const TIMEOUT_SECS: u64 = 10;
    /// Failures in a row before a check is down.
    pub const FAILURE_THRESHOLD: u32 = 3;
    /// Successes in a row before a down check is up again.
    pub const SUCCESS_THRESHOLD: u32 = 1;
    /// Largest response body read by an HTTP or exec check.
    pub const MAX_BODY: u64 = 1024 * 1024;
}

/// One health check.
#[derive(Debug, Clone)]
pub struct Check {
    /// Its name (the key in `[check.NAME]`).
    pub name: String,
    /// What it probes and how.
    pub probe: Probe,
    /// Time between runs.
    pub interval: Dur,
    /// Budget for one run, connect to last byte.
    pub timeout: Dur,
    /// Consecutive failures before the state becomes down.
    pub failure_threshold: u32,
    /// Consecutive successes before a down check is up again.
    pub success_threshold: u32,
    /// All must hold for the check to pass.
    pub conditions: Vec<Condition>,
    /// When one of these fails (and `conditions` hold) the result is `warn`.
    pub warn: Vec<Condition>,
    /// Alert channels notified on state changes.
    pub alerts: Vec<String>,
    /// Checks this one depends on: while a parent is down this check alerts not.
    pub depends_on: Vec<String>,
    /// Group on the status page.
    pub group: Option<String>,
    /// Free text shown on the status page.
    pub description: Option<String>,
}

impl Check {
    /// The kind of check.
    pub fn kind(&self) -> CheckKind {
        match self.probe {
            Probe::Http(_) => CheckKind::Http,
            Probe::Tcp { .. } => CheckKind::Tcp,
            Probe::Tls { .. } => CheckKind::Tls,
            Probe::Dns { .. } => CheckKind::Dns,
            Probe::Exec { .. } => CheckKind::Exec,
            Probe::Postgres { .. } => CheckKind::Postgres,
            Probe::Redis { .. } => CheckKind::Redis,
            Probe::Amqp { .. } => CheckKind::Amqp,
        }
    }
}

/// Kind-specific probe settings.
#[derive(Debug, Clone)]
pub enum Probe {
    /// HTTP(S).
    Http(HttpProbe),
    /// TCP connect to `address`.
    Tcp {
        /// host:port
        address: String,
    },
    /// TLS handshake.
    Tls {
        /// host:port
        address: String,
        /// SNI and verification name; defaults to the host.
        server_name: Option<String>,
        /// Extra CA to trust (PEM).
        ca_file: Option<PathBuf>,
        /// Accept any certificate (expiry still observed).
        insecure_skip_verify: bool,
    },
    /// DNS lookup.
    Dns {
        /// Name to resolve.
        name: String,
        /// A, AAAA, CNAME, MX, TXT, NS, SOA, SRV, PTR.
        record_type: String,
        /// Resolver to ask; the system's when absent.
        resolver: Option<SocketAddr>,
    },
    /// A local command.
    Exec {
        /// Program and arguments.
        command: Vec<String>,
        /// Extra environment.
        env: BTreeMap<String, Text>,
        /// Working directory.
        cwd: Option<PathBuf>,
        /// Largest stdout kept.
        max_output: u64,
    },
    /// PostgreSQL.
    Postgres {
        /// Connection URL (usually a reference).
        url: Text,
        /// Query to run; its first column of the first row is `[VALUE]`.
        query: String,
        /// Expected `[VALUE]`.
        expect: Option<String>,
    },
    /// Redis.
    Redis {
        /// Connection URL.
        url: Text,
        /// Key whose value becomes `[VALUE]`.
        key: Option<String>,
    },
    /// AMQP 0-9-1 (RabbitMQ).
    Amqp {
        /// Connection URL.
        url: Text,
        /// Queue to passive-declare; message and consumer counts are observed.
        queue: Option<String>,
    },
}

/// HTTP probe settings.
#[derive(Debug, Clone)]
pub struct HttpProbe {
    /// Target URL.
    pub url: Text,
    /// Method.
    pub method: String,
    /// Request headers.
    pub headers: BTreeMap<String, Text>,
    /// Request body.
    pub body: Option<Text>,
    /// Extra CA to trust (PEM).
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate.
    pub insecure_skip_verify: bool,
    /// Follow redirects (up to 10).
    pub follow_redirects: bool,
    /// Largest body read; larger bodies fail the check.
    pub max_body: u64,
}

/// An alert channel.
#[derive(Debug, Clone)]
pub struct Alert {
    /// Its name.
    pub name: String,
    /// Where it goes.
    pub channel: Channel,
    /// Repeat while still down, every this long.
    pub reminder: Option<Dur>,
    /// Send a message when a check recovers.
    pub send_recovered: bool,
    /// Send a message when a check becomes degraded.
    pub send_warn: bool,
}

/// Alert transport.
#[derive(Debug, Clone)]
pub enum Channel {
    /// Generic JSON webhook.
    Webhook {
        /// Target URL (often a secret).
        url: Text,
        /// Extra headers.
        headers: BTreeMap<String, Text>,
    },
    /// Slack-compatible webhook.
    Slack {
        /// Incoming webhook URL (a secret).
        url: Text,
    },
    /// SMTP e-mail.
    Email {
        /// SMTP server host.
        host: String,
        /// SMTP port.
        port: u16,
        /// Transport security.
        tls: SmtpTls,
        /// Login user.
        username: Option<Text>,
        /// Login password.
        password: Option<Text>,
        /// Sender.
        from: String,
        /// Recipients.
        to: Vec<String>,
    },
}

/// A recurring maintenance window that silences alerts.
#[derive(Debug, Clone)]
pub struct Maintenance {
    /// Its name.
    pub name: String,
    /// When the window starts (UTC), parsed once at validation.
    pub schedule: croner::Cron,
    /// Window length.
    pub duration: Dur,
    /// Checks silenced; all when empty.
    pub checks: Vec<String>,
}

impl Maintenance {
    /// Whether `now` falls inside a window.
    pub fn active_at(&self, now: chrono::DateTime<chrono::Utc>) -> bool {
        let Ok(len) = chrono::Duration::from_std(self.duration.0) else {
            return false;
        };
        match self.schedule.find_previous_occurrence(&now, true) {
            Ok(start) => now < start + len,
            Err(_) => false,
        }
    }

    /// Whether the window covers a check.
    pub fn covers(&self, check: &str) -> bool {
        self.checks.is_empty() || self.checks.iter().any(|c| c == check)
    }
}
