//! Transports: JSON webhook, Slack-compatible webhook, SMTP.

use std::sync::Arc;
use std::time::Duration;

use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use steward_spec::{Channel, Resolver, SmtpTls};

use crate::{Notice, NoticeKind};

/// Time budget for one delivery attempt.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Delivers notices; holds the HTTP client.
#[derive(Clone)]
pub struct Sender {
    http: reqwest::Client,
    resolver: Arc<dyn Resolver>,
}

impl Sender {
    /// A sender resolving secret references with `resolver`.
    pub fn new(resolver: Arc<dyn Resolver>) -> Self {
        let http = steward_net::http(steward_net::HttpOptions {
            timeout: Some(DELIVERY_TIMEOUT),
            connect_timeout: None,
            no_proxy: true,
        })
        .expect("the default HTTP client");
        Sender { http, resolver }
    }

    /// Delivers one notice over one channel; the error never contains secrets.
    pub async fn send(&self, channel: &Channel, n: &Notice) -> Result<(), String> {
        deliver(&self.http, self.resolver.as_ref(), channel, n).await
    }
}

fn headline(n: &Notice) -> String {
    match n.kind {
        NoticeKind::Down => format!("{} is DOWN", n.check),
        NoticeKind::Degraded => format!("{} is DEGRADED", n.check),
        NoticeKind::Recovered => format!("{} has RECOVERED", n.check),
        NoticeKind::Reminder => format!("{} is still DOWN", n.check),
        NoticeKind::Firing => format!("{} is FIRING", n.check),
        NoticeKind::Resolved => format!("{} has RESOLVED", n.check),
        NoticeKind::StillFiring => format!("{} is still FIRING", n.check),
        NoticeKind::Test => format!("test notice: alert channel {} works", n.check),
    }
}

fn since(n: &Notice) -> String {
    chrono::DateTime::from_timestamp_millis(n.since)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// JSON body of the generic webhook.
pub(crate) fn webhook_body(n: &Notice) -> serde_json::Value {
    serde_json::json!({
        "app": n.app,
        "check": n.check,
        "kind": n.kind.as_str(),
        "status": n.health.as_str(),
        "previous": n.previous.as_str(),
        "since": since(n),
        "error": n.error,
        "event_id": n.event_id,
        "message": headline(n),
    })
}

/// Body of a Slack-compatible incoming webhook.
pub(crate) fn slack_body(n: &Notice) -> serde_json::Value {
    let emoji = match n.kind {
        NoticeKind::Down | NoticeKind::Reminder | NoticeKind::Firing | NoticeKind::StillFiring => {
            ":red_circle:"
        }
        NoticeKind::Degraded => ":large_yellow_circle:",
        NoticeKind::Recovered | NoticeKind::Resolved => ":large_green_circle:",
        NoticeKind::Test => ":white_check_mark:",
    };
    let mut text = format!("{emoji} *[{}] {}* since {}", n.app, headline(n), since(n));
    if let Some(e) = &n.error
        && !matches!(
            n.kind,
            NoticeKind::Recovered | NoticeKind::Resolved | NoticeKind::Test
        )
    {
        text.push_str(&format!("\n```{e}```"));
    }
    serde_json::json!({ "text": text })
}

/// Delivers with a given client (exposed for tests and benchmarks).
pub async fn deliver(
    http: &reqwest::Client,
    r: &dyn Resolver,
    channel: &Channel,
    n: &Notice,
) -> Result<(), String> {
    match channel {
        Channel::Webhook { url, headers } => {
            let url = url.resolve(r).map_err(|e| e.to_string())?;
            let mut req = http.post(url.expose()).json(&webhook_body(n));
            if let Some(id) = n.event_id {
                req = req.header("X-Steward-Event-Id", id.to_string());
            }
            for (k, v) in headers {
                req = req.header(k, v.resolve(r).map_err(|e| e.to_string())?.expose());
            }
            post(req).await
        }
        Channel::Slack { url } => {
            let url = url.resolve(r).map_err(|e| e.to_string())?;
            post(http.post(url.expose()).json(&slack_body(n))).await
        }
        Channel::Email {
            host,
            port,
            tls,
            username,
            password,
            from,
            to,
        } => {
            let from: Mailbox = from
                .parse()
                .map_err(|e| format!("bad sender address: {e}"))?;
            let mut msg = Message::builder().from(from).subject(format!(
                "[steward] [{}] {}",
                n.app,
                headline(n)
            ));
            for t in to {
                msg = msg.to(t.parse().map_err(|e| format!("bad recipient `{t}`: {e}"))?);
            }
            let mut body = format!(
                "{}\n\nCheck: {}\nStatus: {}\nSince: {}\n",
                headline(n),
                n.check,
                n.health.as_str(),
                since(n)
            );
            if let Some(e) = &n.error {
                body.push_str(&format!("Last error: {e}\n"));
            }
            let msg = msg
                .body(body)
                .map_err(|e| format!("cannot build message: {e}"))?;
            let builder = match tls {
                SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host),
                SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host)
                    .map_err(|e| format!("SMTP TLS setup: {e}"))?,
                SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(host)
                    .map_err(|e| format!("SMTP TLS setup: {e}"))?,
            };
            let mut builder = builder.port(*port).timeout(Some(DELIVERY_TIMEOUT));
            if let (Some(u), Some(p)) = (username, password) {
                let u = u.resolve(r).map_err(|e| e.to_string())?;
                let p = p.resolve(r).map_err(|e| e.to_string())?;
                builder = builder.credentials(Credentials::new(
                    u.expose().to_string(),
                    p.expose().to_string(),
                ));
            }
            let transport = builder.build();
            tokio::time::timeout(DELIVERY_TIMEOUT, transport.send(msg))
                .await
                .map_err(|_| "SMTP delivery timed out".to_string())?
                .map(|_| ())
                .map_err(|e| format!("SMTP delivery failed: {e}"))
        }
    }
}

async fn post(req: reqwest::RequestBuilder) -> Result<(), String> {
    match req.send().await {
        Ok(resp) if resp.status().is_success() => Ok(()),
        Ok(resp) => Err(format!("webhook answered HTTP {}", resp.status().as_u16())),
        // The URL is a secret (webhook tokens live in it): never echo it.
        Err(e) => Err(format!(
            "webhook request failed: {}",
            steward_health::error_chain(&e.without_url())
        )),
    }
}
