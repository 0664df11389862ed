//! Asking the fleet for something: the one door a deploy, rollback, revert
//! or rebuild goes through (CLI, API, `up` and `serve` itself), so whether
//! it starts promoted is decided in one place. Requests only write what
//! should happen into the state store; the service's controller carries it
//! out.

use steward_spec::Service;
use steward_state::{EventKind, EventLog, FleetState, NewEvent, Severity, StateError, now_ms};

pub use crate::plan::DeployKind;

/// Points `svc` at version `to` and records the deploy
/// ([`DeployKind::starts_promoted`] decides whether canaries wait).
pub fn request_deploy(
    store: &(impl FleetState + ?Sized),
    svc: &Service,
    to: &str,
    who: &str,
    kind: DeployKind,
) -> Result<i64, steward_state::StateError> {
    store.fleet_request_deploy(
        &svc.name,
        to,
        who,
        kind.as_str(),
        kind.starts_promoted(&svc.rollout),
        now_ms(),
    )
}

/// Why a scale request was refused.
#[derive(Debug, thiserror::Error)]
pub enum ScaleError {
    /// The count is outside the service's `replicas`.
    #[error("{service} {message}")]
    OutOfRange {
        /// The service.
        service: String,
        /// The range and the count.
        message: String,
    },
    /// The state database failed.
    #[error(transparent)]
    State(#[from] StateError),
}

/// Asks for `n` instances of `svc` (the one door for `steward scale`, the
/// API and the autoscaler): checked against `replicas`, written as the
/// desired count and recorded as `fleet.scaled` by `who` with `why`.
pub fn request_scale(
    store: &(impl FleetState + EventLog + ?Sized),
    svc: &Service,
    n: u32,
    who: &str,
    why: Option<&str>,
) -> Result<(), ScaleError> {
    svc.replicas
        .check(n)
        .map_err(|message| ScaleError::OutOfRange {
            service: svc.name.clone(),
            message,
        })?;
    store.fleet_set_replicas(&svc.name, n, now_ms())?;
    let mut message = format!("{} scaled to {n} by {who}", svc.name);
    if let Some(why) = why {
        message.push_str(": ");
        message.push_str(why);
    }
    store.append_event(&NewEvent::now(
        EventKind::FleetScaled,
        &svc.name,
        Severity::Info,
        message,
        serde_json::json!({"replicas": n, "who": who}),
    ))?;
    Ok(())
}

/// `user@host` of whoever runs this process, for the deploy history.
pub fn who() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(uid_name);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("{user}@{host}")
}

/// The name of the user this process runs as, from the user database (the
/// uid as a number when it has no entry) — for when the environment does
/// not say (a service, a container, `env -i`).
fn uid_name() -> String {
    let uid = nix::unistd::getuid();
    match nix::unistd::User::from_uid(uid) {
        Ok(Some(u)) => u.name,
        _ => uid.to_string(),
    }
}

/// `sha256:0123456789ab…` shortened to 12 hex digits, as reports show it.
pub fn short(digest: &str) -> String {
    digest
        .trim_start_matches("sha256:")
        .chars()
        .take(12)
        .collect()
}

#[cfg(test)]
mod tests {
    /// Without USER or LOGNAME, the deployer is the uid's name, as `id -un`
    /// says, not `unknown`.
    #[test]
    fn the_user_is_the_uid_s_name() {
        let id = std::process::Command::new("id")
            .arg("-un")
            .output()
            .unwrap();
        assert_eq!(
            super::uid_name(),
            String::from_utf8_lossy(&id.stdout).trim()
        );
    }
}
