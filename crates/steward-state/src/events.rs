//! What may be written to the event log: every kind and severity, in one place.
//!
//! The README's event table is checked against [`EventKind::ALL`] by a test, so
//! a kind cannot be added, renamed or dropped without the table following.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! kinds {
    ($($variant:ident => $name:literal, $what:literal;)*) => {
        /// The kind of an event: a dotted name, `area.what`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum EventKind {
            $(#[doc = $what] $variant,)*
        }

        impl EventKind {
            /// Every kind with what it means, in the README's order.
            pub const ALL: &'static [(EventKind, &'static str)] = &[$((EventKind::$variant, $what),)*];

            /// The dotted name stored in the log and shown in the API.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(EventKind::$variant => $name,)*
                }
            }

            /// The kind with this dotted name.
            pub fn parse(name: &str) -> Option<EventKind> {
                match name {
                    $($name => Some(EventKind::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

kinds! {
    CheckUp => "check.up", "a check passes again (or for the first time) after its success threshold";
    CheckDegraded => "check.degraded", "a check passes with a warning";
    CheckDown => "check.down", "a check failed its failure threshold in a row";
    AlertSent => "alert.sent", "a notice reached an alert channel";
    AlertFailed => "alert.failed", "a notice could not be delivered after every retry";
    AlertSuppressed => "alert.suppressed", "a notice was held back by a maintenance window or a down dependency";
    AlertLagged => "alert.lagged", "retired: written by steward before alerting kept a cursor in the log";
    BackupSucceeded => "backup.succeeded", "a backup made a snapshot (a warning when it is partial)";
    BackupFailed => "backup.failed", "a backup run made no snapshot";
    BackupOverdue => "backup.overdue", "no successful backup for longer than its schedule allows";
    BackupForgot => "backup.forgot", "retention removed snapshots";
    BackupRestored => "backup.restored", "`steward backup restore` restored a snapshot";
    BackupCheckFailed => "backup.check_failed", "`steward backup check` found a damaged repository";
    DrillSucceeded => "drill.succeeded", "a restore drill restored and verified a snapshot";
    DrillFailed => "drill.failed", "a restore drill failed";
    ConvergeApplied => "converge.applied", "`steward converge apply` changed the host";
    ConvergeDrift => "converge.drift", "a drift check found resources that differ from the spec";
    ConvergeConverged => "converge.converged", "a drift check found the host matching the spec again";
    ConvergeCorrected => "converge.corrected", "`auto_correct` put drifted resources back";
    ConvergeFailed => "converge.failed", "`auto_correct` could not put every resource back";
    ImageBuilt => "image.built", "an image was built";
    ImageStale => "image.stale", "an audit found an image stale (in `serve`, once per change of verdict); what `auto_rebuild` acts on";
    ImageRebuilt => "image.rebuilt", "`auto_rebuild` rebuilt a stale image";
    ImageRebuildFailed => "image.rebuild_failed", "`auto_rebuild` could not rebuild a stale image";
    SnapshotTaken => "snapshot.taken", "a server snapshot was taken and uploaded";
    SnapshotFailed => "snapshot.failed", "a server snapshot could not be taken";
    SnapshotForgot => "snapshot.forgot", "retention deleted server snapshots";
    SnapshotDrillSucceeded => "snapshot.drill_succeeded", "the newest server snapshot booted and passed its check";
    SnapshotDrillFailed => "snapshot.drill_failed", "a server snapshot drill failed (it did not boot, or its check failed)";
    DeployRequested => "deploy.requested", "a deploy, rollback or revert was asked for";
    DeployStarted => "deploy.started", "the fleet began a rollout";
    DeploySucceeded => "deploy.succeeded", "a rollout finished";
    DeployFailed => "deploy.failed", "a rollout failed and was not reverted";
    DeployReverted => "deploy.reverted", "a rollout failed and the previous version is being restored";
    FleetScaled => "fleet.scaled", "a service's instance count was changed";
    FleetDown => "fleet.down", "`steward down` destroyed every instance";
    FleetStartFailed => "fleet.start_failed", "an instance could not be created or started";
    FleetBuildFailed => "fleet.build_failed", "the image of a service could not be built";
    FleetDestroyFailed => "fleet.destroy_failed", "an instance could not be stopped or removed (it is tried again)";
    FleetInstanceStarted => "fleet.instance_started", "an instance was created and started";
    FleetInstanceReady => "fleet.instance_ready", "an instance passed its readiness check and takes traffic";
    FleetInstanceUnready => "fleet.instance_unready", "an instance failed its readiness check and left rotation";
    FleetInstanceRevived => "fleet.instance_revived", "a parked instance was started again";
    FleetInstanceDraining => "fleet.instance_draining", "an instance left rotation and finishes its requests";
    FleetInstanceStopped => "fleet.instance_stopped", "an instance was stopped (and parked or destroyed)";
    FleetInstanceDestroyed => "fleet.instance_destroyed", "an instance and its copy of the image were removed";
    FleetInstanceExited => "fleet.instance_exited", "an instance's process ended by itself";
    RuleFiring => "rule.firing", "an alerting rule's alert began to fire (its `for` passed)";
    RuleResolved => "rule.resolved", "an alerting rule's alert stopped firing";
    AutoscaleRecommended => "autoscale.recommended", "the autoscaler in `recommend` mode would change a service's count (the arithmetic in the message)";
    ServeStarted => "serve.started", "`steward serve` started";
    ServeStopped => "serve.stopped", "`steward serve` stopped";
    ServeTlsReloaded => "serve.tls_reloaded", "SIGHUP re-read the TLS certificate";
    ServeTlsReloadFailed => "serve.tls_reload_failed", "SIGHUP found a broken certificate; the old one stays";
    ControllerPanicked => "controller.panicked", "a controller panicked and was started again";
    ControllerFailed => "controller.failed", "a controller's step failed (the first of a streak of the same failure)";
    AuthLogin => "auth.login", "someone signed in to the status page";
    AuthFailed => "auth.failed", "a token or sign-in was refused";
    AuthCsrf => "auth.csrf", "a form post without a valid CSRF token was refused";
    ApiDenied => "api.denied", "a token lacked the scope for a request";
    ApiRequest => "api.request", "a change was made through the API";
    TokenCreated => "token.created", "an API token was created";
    TokenRevoked => "token.revoked", "an API token was revoked";
}

impl EventKind {
    /// The event a check's move to `health` writes.
    pub fn check(health: crate::Health) -> EventKind {
        match health {
            crate::Health::Up | crate::Health::Unknown => EventKind::CheckUp,
            crate::Health::Degraded => EventKind::CheckDegraded,
            crate::Health::Down => EventKind::CheckDown,
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for EventKind {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl Serialize for EventKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EventKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        EventKind::parse(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown event kind `{name}`")))
    }
}

/// How much an event matters to whoever reads the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Something happened as it should.
    Info,
    /// Worth a look; nothing failed outright.
    Warning,
    /// Something failed.
    Error,
}

impl Severity {
    /// The lowercase name stored in the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }

    /// The severity with this name; anything unknown reads as `error`, so a
    /// damaged row is never quieter than it was.
    pub fn parse(name: &str) -> Severity {
        match name {
            "info" => Severity::Info,
            "warning" => Severity::Warning,
            _ => Severity::Error,
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for Severity {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}
