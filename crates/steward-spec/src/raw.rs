//! The spec as written: serde types with spans, one per top-level table entry.
//! [`crate::validate`] turns these into the typed model.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use crate::duration::Dur;
use crate::secret::Text;

/// `[steward]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSettings {
    pub(crate) name: Option<String>,
    pub(crate) state_dir: Option<Spanned<String>>,
    pub(crate) listen: Option<Spanned<String>>,
    pub(crate) retention: Option<RawRetention>,
    pub(crate) auth: Option<Spanned<AuthMode>>,
    pub(crate) insecure: Option<bool>,
    pub(crate) public_metrics: Option<bool>,
    pub(crate) tls: Option<RawTls>,
    pub(crate) self_scrape_interval: Option<crate::duration::Dur>,
    pub(crate) metrics_flush_interval: Option<crate::duration::Dur>,
    pub(crate) max_series: Option<u64>,
}

/// `tls = { cert = "...", key = "..." }`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    pub(crate) cert: Spanned<String>,
    pub(crate) key: Spanned<String>,
}

/// How `serve`'s HTTP API authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// No authentication (only sensible on loopback).
    #[default]
    None,
    /// Bearer tokens (`steward token create`) and a dashboard sign-in.
    Token,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetention {
    pub(crate) raw: Option<Dur>,
    pub(crate) minute: Option<Dur>,
    pub(crate) hour: Option<Dur>,
    pub(crate) day: Option<Dur>,
    pub(crate) events: Option<Dur>,
}

/// `[check.NAME]`: one flat table for all kinds; validation rejects keys that do not
/// apply to the chosen `type` (serde's internally tagged enums would lose spans).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCheck {
    #[serde(rename = "type")]
    pub(crate) kind: Spanned<CheckKind>,
    pub(crate) interval: Option<Dur>,
    pub(crate) timeout: Option<Dur>,
    pub(crate) failure_threshold: Option<Spanned<u32>>,
    pub(crate) success_threshold: Option<Spanned<u32>>,
    #[serde(default)]
    pub(crate) conditions: Vec<Spanned<String>>,
    #[serde(default)]
    pub(crate) warn: Vec<Spanned<String>>,
    #[serde(default)]
    pub(crate) alerts: Vec<Spanned<String>>,
    #[serde(default)]
    pub(crate) depends_on: Vec<Spanned<String>>,
    pub(crate) group: Option<String>,
    pub(crate) description: Option<String>,
    // http
    pub(crate) url: Option<Spanned<Text>>,
    pub(crate) method: Option<Spanned<String>>,
    pub(crate) headers: Option<Spanned<BTreeMap<String, Spanned<Text>>>>,
    pub(crate) body: Option<Spanned<Text>>,
    pub(crate) ca_file: Option<Spanned<String>>,
    pub(crate) insecure_skip_verify: Option<Spanned<bool>>,
    pub(crate) follow_redirects: Option<Spanned<bool>>,
    pub(crate) max_body: Option<Spanned<u64>>,
    // tcp / tls
    pub(crate) address: Option<Spanned<String>>,
    pub(crate) server_name: Option<Spanned<String>>,
    // dns
    pub(crate) name: Option<Spanned<String>>,
    pub(crate) record_type: Option<Spanned<String>>,
    pub(crate) resolver: Option<Spanned<String>>,
    // exec
    pub(crate) command: Option<Spanned<Vec<String>>>,
    pub(crate) env: Option<Spanned<BTreeMap<String, Spanned<Text>>>>,
    pub(crate) cwd: Option<Spanned<String>>,
    // postgres / redis / amqp
    pub(crate) query: Option<Spanned<String>>,
    pub(crate) expect: Option<Spanned<String>>,
    pub(crate) key: Option<Spanned<String>>,
    pub(crate) queue: Option<Spanned<String>>,
}

/// Check kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// HTTP(S) request with conditions.
    Http,
    /// TCP connect.
    Tcp,
    /// TLS handshake and certificate expiry.
    Tls,
    /// DNS resolution.
    Dns,
    /// A local command.
    Exec,
    /// PostgreSQL connect + query.
    Postgres,
    /// Redis PING and optional key.
    Redis,
    /// AMQP (RabbitMQ) queue.
    Amqp,
}

impl CheckKind {
    /// The spelling in the spec.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckKind::Http => "http",
            CheckKind::Tcp => "tcp",
            CheckKind::Tls => "tls",
            CheckKind::Dns => "dns",
            CheckKind::Exec => "exec",
            CheckKind::Postgres => "postgres",
            CheckKind::Redis => "redis",
            CheckKind::Amqp => "amqp",
        }
    }
}

/// `[alert.NAME]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAlert {
    #[serde(rename = "type")]
    pub(crate) kind: Spanned<AlertKind>,
    pub(crate) url: Option<Spanned<Text>>,
    pub(crate) headers: Option<Spanned<BTreeMap<String, Spanned<Text>>>>,
    pub(crate) reminder: Option<Dur>,
    pub(crate) send_recovered: Option<bool>,
    pub(crate) send_warn: Option<bool>,
    // email
    pub(crate) smtp_host: Option<Spanned<String>>,
    pub(crate) smtp_port: Option<Spanned<u16>>,
    pub(crate) smtp_tls: Option<Spanned<SmtpTls>>,
    pub(crate) username: Option<Spanned<Text>>,
    pub(crate) password: Option<Spanned<Text>>,
    pub(crate) from: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) to: Vec<Spanned<String>>,
}

/// Alert channel kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertKind {
    /// Generic JSON POST.
    Webhook,
    /// Slack-compatible incoming webhook.
    Slack,
    /// E-mail over SMTP.
    Email,
}

/// How to secure the SMTP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain text (only sensible on loopback).
    None,
    /// STARTTLS upgrade (port 587).
    Starttls,
    /// Implicit TLS (port 465).
    Tls,
}

/// `[maintenance.NAME]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMaintenance {
    pub(crate) schedule: Spanned<String>,
    pub(crate) duration: Dur,
    #[serde(default)]
    pub(crate) checks: Vec<Spanned<String>>,
}
