//! Acting on the planner's decisions through the provider: the first deploy,
//! starting and reviving instances, draining, destroying, and a failed
//! deploy's bookkeeping (and revert). Every provider call is bounded by the
//! fleet's `provider_timeout`; every state write goes through the blocking pool.

use std::time::{Duration, Instant};

use steward_state::{EventKind, InstanceRow, Severity, now_ms};

use super::{Fleet, ServiceLoop, event, handle, state};
use crate::plan::{After, InstanceState};
use crate::provider::{ImageRef, InstanceSpec, Publish};
use crate::requests::{DeployKind, request_deploy, short};

impl ServiceLoop {
    /// The first start of a service: its image's newest build, built now when
    /// there is none.
    pub(super) async fn first_deploy(&mut self) {
        if self.build_backoff.is_some_and(|t| Instant::now() < t) {
            return;
        }
        let (spec, image, resolver) = (
            self.fleet.spec.clone(),
            self.image.clone(),
            self.fleet.resolver.clone(),
        );
        let found = tokio::task::spawn_blocking(move || {
            match steward_image::manifest(&spec, &image, None, resolver.as_ref()) {
                Ok(m) => Ok((m, false)),
                Err(steward_image::ImageError::NotBuilt(_)) => {
                    steward_image::build(&spec, &image, resolver.as_ref(), &mut |_| {})
                        .map(|r| (r.manifest, true))
                }
                Err(e) => Err(e),
            }
        })
        .await;
        match found {
            Ok(Ok((m, built))) => {
                if built {
                    self.record(
                        EventKind::ImageBuilt,
                        Severity::Info,
                        format!("image {} built: {}", self.image.name, short(&m.digest)),
                        serde_json::json!({"image": self.image.name, "digest": m.digest}),
                    )
                    .await;
                }
                let (svc, digest) = (self.svc.clone(), m.digest.clone());
                self.write("the first deploy", move |s| {
                    request_deploy(s, &svc, &digest, "serve", DeployKind::Initial).map(|_| ())
                })
                .await;
            }
            Ok(Err(e)) => {
                self.error("build", format!("image {}: {e}", self.image.name))
                    .await;
                self.build_backoff = Some(Instant::now() + Duration::from_secs(30));
            }
            Err(e) => {
                self.error("build", format!("image {}: {e}", self.image.name))
                    .await
            }
        }
    }

    pub(super) fn env(&self) -> Result<Vec<(String, String)>, String> {
        self.svc
            .env
            .iter()
            .map(|(k, v)| {
                v.resolve(self.fleet.resolver.as_ref())
                    .map(|s| (k.clone(), s.expose().to_string()))
                    .map_err(|e| format!("env {k}: {e}"))
            })
            .collect()
    }

    /// The target build, made runnable by the provider (once per digest).
    pub(super) async fn published(&mut self, digest: &str) -> Result<ImageRef, String> {
        if let Some(r) = self.images.get(digest) {
            return Ok(r.clone());
        }
        let publish = Publish {
            spec: self.fleet.spec.clone(),
            image: self.image.clone(),
            digest: digest.to_string(),
            service: self.svc.name.clone(),
            resolver: self.fleet.resolver.clone(),
        };
        let published = self
            .call("publish", digest, self.fleet.provider.publish(&publish))
            .await?;
        self.images.insert(digest.to_string(), published.clone());
        Ok(published)
    }

    pub(super) async fn start(&mut self, digest: &str, reason: &str) -> Result<(), String> {
        let id = format!("{}-{}", self.svc.name, crate::short_id());
        let env = self.env()?;
        let image = self.published(digest).await?;
        let spec = InstanceSpec {
            id: &id,
            service: &self.svc,
            digest,
            env: &env,
        };
        let created = self
            .call("create", &id, self.fleet.provider.create(spec, &image))
            .await?;
        let now = now_ms();
        // Recorded before the instance runs: a crash in between leaves a
        // record the next run cleans up, never an unknown instance.
        let mut row = InstanceRow {
            id: id.clone(),
            service: self.svc.name.clone(),
            digest: digest.to_string(),
            state: InstanceState::Starting,
            addr: created.address.to_string(),
            provider: created.data.clone(),
            created_ms: now,
            ready_ms: None,
            updated_ms: now,
            reason: None,
        };
        let r = row.clone();
        self.db(move |s| s.fleet_put_instance(&r))
            .await
            .map_err(|e| e.to_string())?;
        match self
            .call("start", &id, self.fleet.provider.start(&created, spec))
            .await
        {
            Ok(started) => {
                row.addr = started.address.to_string();
                row.provider = started.data;
                self.put(&row).await;
            }
            Err(e) => {
                // Nothing of it may stay behind: the provider's part, then the record.
                if let Err(d) = self
                    .call("destroy", &id, self.fleet.provider.destroy(&created))
                    .await
                {
                    return Err(format!(
                        "{e}; and it could not be removed (tried again later): {d}"
                    ));
                }
                let i = id.clone();
                return match self.db(move |s| s.fleet_delete_instance(&i)).await {
                    Ok(()) => Err(e),
                    // The record stays; the next step sees a failed instance.
                    Err(d) => Err(format!("{e}; and its record could not be removed: {d}")),
                };
            }
        }
        let place = self.fleet.provider.describe(&handle(&row));
        self.record(
            EventKind::FleetInstanceStarted,
            Severity::Info,
            format!("instance {id} started on {} ({reason})", row.addr),
            serde_json::json!({"instance": id, "addr": row.addr, "digest": row.digest, "where": place}),
        )
        .await;
        Ok(())
    }

    pub(super) async fn revive(&mut self, mut r: InstanceRow) -> Result<(), String> {
        let env = self.env()?;
        let h = handle(&r);
        let spec = InstanceSpec {
            id: &r.id,
            service: &self.svc,
            digest: &r.digest,
            env: &env,
        };
        let started = self
            .call("start", &r.id, self.fleet.provider.start(&h, spec))
            .await?;
        r.state = InstanceState::Starting;
        r.addr = started.address.to_string();
        r.provider = started.data;
        r.ready_ms = None;
        r.updated_ms = now_ms();
        r.reason = None;
        let row = r.clone();
        self.db(move |s| s.fleet_put_instance(&row))
            .await
            .map_err(|e| e.to_string())?;
        self.record(
            EventKind::FleetInstanceRevived,
            Severity::Info,
            format!("parked instance {} started again on {}", r.id, r.addr),
            serde_json::json!({"instance": r.id, "addr": r.addr, "digest": r.digest}),
        )
        .await;
        Ok(())
    }

    /// Takes the instance out of the proxy, lets its requests finish (up to
    /// `drain_timeout`), stops it, then parks or destroys it — in the
    /// background. A stop or destroy that fails or times out leaves the drain
    /// recorded; the next step takes it up again.
    pub(super) async fn drain(&mut self, mut r: InstanceRow, then: After, reason: &str) {
        {
            let mut d = self.draining.lock().unwrap_or_else(|e| e.into_inner());
            if !d.insert(r.id.clone()) {
                return;
            }
        }
        let upstream = self.pool.remove(&r.id);
        let verb = match then {
            After::Park => "park",
            After::Destroy => "destroy",
        };
        if !matches!(r.state, InstanceState::Draining(_)) {
            r.state = InstanceState::Draining(then);
            r.reason = Some(format!("{verb}: {reason}"));
            r.updated_ms = now_ms();
            self.put(&r).await;
            self.count_removed(reason);
            self.record(
                EventKind::FleetInstanceDraining,
                Severity::Info,
                format!("instance {} draining ({reason})", r.id),
                serde_json::json!({"instance": r.id, "then": verb}),
            )
            .await;
        }
        let (fleet, draining) = (self.fleet.clone(), self.draining.clone());
        let (drain_timeout, stop_timeout) = (self.svc.drain_timeout, self.svc.stop_timeout);
        let service = self.svc.name.clone();
        tokio::spawn(async move {
            let deadline = Instant::now() + drain_timeout;
            if let Some(u) = &upstream {
                while u.inflight() > 0 && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            let id = r.id.clone();
            let done = finish_drain(&fleet, &service, r, then, stop_timeout).await;
            if let Err(e) = done {
                tracing::error!(service = %service, instance = %id, "{e}; the drain is tried again");
                fleet
                    .store_event(event(
                        EventKind::FleetDestroyFailed,
                        &service,
                        Severity::Error,
                        e,
                        serde_json::json!({"instance": id}),
                    ))
                    .await;
            }
            draining
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
        });
    }

    pub(super) async fn destroy(&mut self, r: InstanceRow, reason: &str) {
        self.pool.remove(&r.id);
        let h = handle(&r);
        let grace = self.svc.stop_timeout;
        // Stopped first with its grace, then removed: both bounded.
        let gone = match self
            .call("stop", &r.id, self.fleet.provider.stop(&h, grace))
            .await
        {
            Ok(stopped) => {
                self.call("destroy", &r.id, self.fleet.provider.destroy(&stopped))
                    .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = gone {
            // The record stays as it was: the planner asks again next step.
            self.error("destroy", e).await;
            return;
        }
        let id = r.id.clone();
        self.write("a destroyed instance", move |s| {
            s.fleet_delete_instance(&id)
        })
        .await;
        self.count_removed(reason);
        self.record(
            EventKind::FleetInstanceDestroyed,
            Severity::Info,
            format!("instance {} destroyed ({reason})", r.id),
            serde_json::json!({"instance": r.id}),
        )
        .await;
    }

    pub(super) async fn failed(
        &self,
        d: &steward_state::DeployRow,
        reason: &str,
        row: &steward_state::ServiceRow,
    ) {
        let now = now_ms();
        let name = &self.svc.name;
        let back = d
            .from_digest
            .clone()
            .or_else(|| row.previous.clone())
            .filter(|p| p != &d.to_digest);
        let (result, kind) = if self.svc.rollout.auto_revert && back.is_some() {
            ("reverted", EventKind::DeployReverted)
        } else {
            ("failed", EventKind::DeployFailed)
        };
        let msg = format!(
            "{} of {name} to {} {result}: {reason}",
            d.kind,
            short(&d.to_digest)
        );
        self.finish_deploy(d.id, result, &msg, now).await;
        self.record(
            kind,
            Severity::Error,
            msg,
            serde_json::json!({"deploy": d.id, "to": d.to_digest, "reason": reason}),
        )
        .await;
        if result == "reverted"
            && let Some(back) = back
        {
            let svc = self.svc.clone();
            self.write("the revert", move |s| {
                request_deploy(s, &svc, &back, "serve", DeployKind::Revert).map(|_| ())
            })
            .await;
        }
    }
}

/// The end of a drain: stop, then park (keeping the provider's record of the
/// stopped instance) or destroy. Errors leave the record as it was.
async fn finish_drain(
    fleet: &Fleet,
    service: &str,
    mut r: InstanceRow,
    then: After,
    stop_timeout: Duration,
) -> Result<(), String> {
    let h = handle(&r);
    let limit = fleet.provider_timeout + stop_timeout;
    let stopped = match tokio::time::timeout(limit, fleet.provider.stop(&h, stop_timeout)).await {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => return Err(format!("stopping instance {}: {e}", r.id)),
        Err(_) => return Err(format!("stopping instance {} timed out", r.id)),
    };
    let msg = match then {
        After::Park => {
            r.state = InstanceState::Parked;
            r.provider = stopped.data;
            r.updated_ms = now_ms();
            let row = r.clone();
            state(&fleet.store, "act", move |s| s.fleet_put_instance(&row))
                .await
                .map_err(|e| e.message)?;
            format!("instance {} stopped and parked for a rollback", r.id)
        }
        After::Destroy => {
            match tokio::time::timeout(fleet.provider_timeout, fleet.provider.destroy(&stopped))
                .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(format!("destroying instance {}: {e}", r.id)),
                Err(_) => {
                    return Err(format!(
                        "destroying instance {} did not finish within {:?}",
                        r.id, fleet.provider_timeout
                    ));
                }
            }
            let id = r.id.clone();
            state(&fleet.store, "act", move |s| s.fleet_delete_instance(&id))
                .await
                .map_err(|e| e.message)?;
            format!("instance {} stopped and destroyed", r.id)
        }
    };
    fleet
        .store_event(event(
            EventKind::FleetInstanceStopped,
            service,
            Severity::Info,
            msg,
            serde_json::json!({"instance": r.id}),
        ))
        .await;
    Ok(())
}
