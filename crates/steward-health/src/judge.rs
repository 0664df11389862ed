//! Turning a probe's outcome into pass/warn/fail. Pure.

use steward_health_endpoint::HealthStatus;
use steward_spec::Check;
use steward_state::Status;

use crate::probe::Outcome;

/// The verdict on one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    /// pass, warn or fail.
    pub status: Status,
    /// Why it is not `pass`.
    pub error: Option<String>,
    /// Observed values worth keeping (never the body: it may hold secrets).
    pub observed: serde_json::Value,
}

/// Judges an outcome against the check's conditions, the target's own health
/// document, and the warn conditions, in that order.
pub fn judge(check: &Check, out: &Outcome) -> Judgement {
    let observed = observed_json(out);
    let fail = |msg: String| Judgement {
        status: Status::Fail,
        error: Some(msg),
        observed: observed.clone(),
    };
    if let Some(e) = &out.error {
        return fail(e.clone());
    }
    let failed: Vec<String> = check
        .conditions
        .iter()
        .map(|c| c.evaluate(&out.observed))
        .filter(|v| !v.success)
        .map(|v| v.resolved)
        .collect();
    if !failed.is_empty() {
        let mut msg = format!("condition failed: {}", failed.join("; "));
        if let Some(d) = &out.detail {
            msg.push_str(&format!(" ({d})"));
        }
        return fail(msg);
    }
    if let Some(doc) = &out.health {
        let worst = doc.worst();
        if worst != HealthStatus::Pass {
            let bad: Vec<String> = doc
                .checks
                .iter()
                .flat_map(|(k, v)| v.iter().map(move |e| (k, e)))
                .filter(|(_, e)| e.status.is_some_and(|s| s != HealthStatus::Pass))
                .map(|(k, e)| match &e.output {
                    Some(o) if !o.is_empty() => format!("{k}: {o}"),
                    _ => format!("{k}: {}", e.status.map(|s| s.as_str()).unwrap_or("?")),
                })
                .collect();
            let what = if bad.is_empty() {
                doc.output.clone().unwrap_or_default()
            } else {
                bad.join("; ")
            };
            let msg = format!("target reports {}: {what}", worst.as_str());
            if worst == HealthStatus::Fail {
                return fail(msg);
            }
            return Judgement {
                status: Status::Warn,
                error: Some(msg),
                observed,
            };
        }
    }
    let warned: Vec<String> = check
        .warn
        .iter()
        .map(|c| c.evaluate(&out.observed))
        .filter(|v| !v.success)
        .map(|v| v.resolved)
        .collect();
    if !warned.is_empty() {
        return Judgement {
            status: Status::Warn,
            error: Some(format!("warn condition: {}", warned.join("; "))),
            observed,
        };
    }
    Judgement {
        status: Status::Pass,
        error: None,
        observed,
    }
}

fn observed_json(out: &Outcome) -> serde_json::Value {
    let o = &out.observed;
    let mut m = serde_json::Map::new();
    let mut put = |k: &str, v: serde_json::Value| {
        if !v.is_null() {
            m.insert(k.to_string(), v);
        }
    };
    put("connected", o.connected.into());
    put("status", o.status.into());
    put(
        "response_time_ms",
        o.response_time_ms
            .map(|v| (v * 1000.0).round() / 1000.0)
            .into(),
    );
    put("ip", o.ip.clone().into());
    put(
        "certificate_expires_in_s",
        o.certificate_expiration_ms.map(|v| v / 1000).into(),
    );
    put("dns_rcode", o.dns_rcode.clone().into());
    put("exit_code", o.exit_code.into());
    put(
        "value",
        o.value
            .clone()
            .map(|v| v.chars().take(256).collect::<String>())
            .into(),
    );
    put("messages", o.messages.into());
    put("consumers", o.consumers.into());
    if let Some(doc) = &out.health {
        put("health", doc.status.as_str().into());
        let comps: serde_json::Map<String, serde_json::Value> = doc
            .checks
            .iter()
            .map(|(k, v)| {
                let worst = v
                    .iter()
                    .filter_map(|e| e.status)
                    .max()
                    .unwrap_or(doc.status);
                (k.clone(), worst.as_str().into())
            })
            .collect();
        if !comps.is_empty() {
            put("components", comps.into());
        }
    }
    serde_json::Value::Object(m)
}
