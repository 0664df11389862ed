//! Validating `[alert.NAME]` channels.

use std::ops::Range;

use crate::diag::Diagnostics;
use crate::model::*;
use crate::raw::*;
use crate::secret::Resolver;
use crate::validate::{secret_ok, unspan};

pub(crate) fn alert(
    d: &mut Diagnostics,
    name: &str,
    span: Range<usize>,
    a: &RawAlert,
    resolver: &dyn Resolver,
) -> Option<Alert> {
    let before = d.errors.len();
    let kind = *a.kind.get_ref();
    let kname = match kind {
        AlertKind::Webhook => "webhook",
        AlertKind::Slack => "slack",
        AlertKind::Email => "email",
    };
    let http_only = [
        ("url", a.url.as_ref().map(|v| v.span())),
        ("headers", a.headers.as_ref().map(|v| v.span())),
    ];
    let email_only = [
        ("smtp_host", a.smtp_host.as_ref().map(|v| v.span())),
        ("smtp_port", a.smtp_port.as_ref().map(|v| v.span())),
        ("smtp_tls", a.smtp_tls.as_ref().map(|v| v.span())),
        ("username", a.username.as_ref().map(|v| v.span())),
        ("password", a.password.as_ref().map(|v| v.span())),
        ("from", a.from.as_ref().map(|v| v.span())),
        ("to", a.to.first().map(|v| v.span())),
    ];
    let wrong: Vec<(&str, Range<usize>)> = match kind {
        AlertKind::Email => http_only
            .iter()
            .filter_map(|(k, s)| s.clone().map(|s| (*k, s)))
            .collect(),
        _ => email_only
            .iter()
            .filter_map(|(k, s)| s.clone().map(|s| (*k, s)))
            .collect(),
    };
    for (k, s) in wrong {
        d.error(
            s,
            format!("`{k}` does not apply to a `{kname}` alert"),
            "not for this type",
            None,
        );
    }
    if kind == AlertKind::Slack
        && let Some(h) = &a.headers
    {
        d.error(
            h.span(),
            "`headers` does not apply to a `slack` alert",
            "not for this type",
            None,
        );
    }
    for t in [&a.url, &a.username, &a.password].into_iter().flatten() {
        secret_ok(d, t.get_ref(), t.span(), resolver);
    }
    if let Some(h) = &a.headers {
        for t in h.get_ref().values() {
            secret_ok(d, t.get_ref(), t.span(), resolver);
        }
    }
    let missing = |d: &mut Diagnostics, key: &str| {
        d.error(
            span.clone(),
            format!("alert `{name}` of type `{kname}` needs `{key}`"),
            format!("`{key}` missing"),
            None,
        );
    };
    let channel = match kind {
        AlertKind::Webhook | AlertKind::Slack => {
            let Some(url) = &a.url else {
                missing(d, "url");
                return None;
            };
            if kind == AlertKind::Webhook {
                Channel::Webhook {
                    url: url.get_ref().clone(),
                    headers: a.headers.as_ref().map(unspan).unwrap_or_default(),
                }
            } else {
                Channel::Slack {
                    url: url.get_ref().clone(),
                }
            }
        }
        AlertKind::Email => {
            if a.smtp_host.is_none() {
                missing(d, "smtp_host");
            }
            if a.from.is_none() {
                missing(d, "from");
            }
            if a.to.is_empty() {
                missing(d, "to");
            }
            for addr in a.from.iter().chain(a.to.iter()) {
                if !addr.get_ref().contains('@') {
                    d.error(
                        addr.span(),
                        format!("`{}` is not an e-mail address", addr.get_ref()),
                        "here",
                        None,
                    );
                }
            }
            let tls = a
                .smtp_tls
                .as_ref()
                .map(|t| *t.get_ref())
                .unwrap_or(SmtpTls::Starttls);
            Channel::Email {
                host: a
                    .smtp_host
                    .as_ref()
                    .map(|h| h.get_ref().clone())
                    .unwrap_or_default(),
                port: a
                    .smtp_port
                    .as_ref()
                    .map(|p| *p.get_ref())
                    .unwrap_or(match tls {
                        SmtpTls::None => 25,
                        SmtpTls::Starttls => 587,
                        SmtpTls::Tls => 465,
                    }),
                tls,
                username: a.username.as_ref().map(|u| u.get_ref().clone()),
                password: a.password.as_ref().map(|u| u.get_ref().clone()),
                from: a
                    .from
                    .as_ref()
                    .map(|f| f.get_ref().clone())
                    .unwrap_or_default(),
                to: a.to.iter().map(|t| t.get_ref().clone()).collect(),
            }
        }
    };
    if d.errors.len() > before {
        return None;
    }
    Some(Alert {
        name: name.to_string(),
        channel,
        reminder: a.reminder,
        send_recovered: a.send_recovered.unwrap_or(true),
        send_warn: a.send_warn.unwrap_or(false),
    })
}
