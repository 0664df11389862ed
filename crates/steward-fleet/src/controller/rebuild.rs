//! `auto_rebuild`: following the event log for stale images, rebuilding them
//! and asking every service using one for a deploy of the new build.

use std::collections::BTreeMap;
use std::time::Duration;

use steward_runtime::{Controller, LogCursor, Next, Step, StepError};
use steward_spec::{Image, Service};
use steward_state::{EventKind, Severity};

use super::{Fleet, FleetStore, event, state};
use crate::requests::{DeployKind, request_deploy, short};
use std::sync::Arc;

/// `auto_rebuild`: a new `image.stale` event about an image rebuilds it
/// (updates installed, cache ignored) and rolls the new build out to every
/// service using it, through the normal health-gated rollout.
///
/// The log is followed from a durable cursor ([`REBUILD_CONSUMER`]): a stale
/// verdict that arrives while steward is down is acted on at the next start;
/// one in flight at a crash is acted on again; several about one image in a
/// batch make one rebuild.
pub(super) struct Rebuilder {
    pub(super) fleet: Fleet,
    pub(super) images: BTreeMap<String, Image>,
    pub(super) cursor: LogCursor,
}

/// Where `auto_rebuild` starts without a stored cursor: before it, steward
/// kept one "handled" id per image (`fleet.rebuilt.NAME`); the lowest of
/// those, 0 for an image without one.
pub(super) fn legacy_start(
    s: Arc<dyn FleetStore>,
    names: Vec<String>,
) -> impl Fn() -> Result<i64, steward_state::StateError> + Send + Sync + 'static {
    move || {
        let mut after = i64::MAX;
        for name in &names {
            let handled = s.meta(&format!("fleet.rebuilt.{name}"))?;
            after = after.min(handled.and_then(|v| v.parse().ok()).unwrap_or(0));
        }
        Ok(after)
    }
}

impl Controller for Rebuilder {
    fn reconcile(&mut self) -> Step<'_> {
        Box::pin(async move {
            let batch = self
                .cursor
                .next_batch()
                .await
                .map_err(|e| StepError::new("observe", e))?;
            let Some(last) = batch.last().map(|e| e.id) else {
                return Ok(Next::When(self.cursor.wake()));
            };
            let mut newest: BTreeMap<String, i64> = BTreeMap::new();
            for ev in batch {
                if self.images.contains_key(&ev.event.subject) {
                    newest.insert(ev.event.subject, ev.id);
                }
            }
            for (name, stale) in newest {
                self.fleet.rebuild(&self.images[&name], stale).await;
            }
            self.cursor.handled(last);
            self.cursor
                .save()
                .await
                .map_err(|e| StepError::new("state", e))?;
            Ok(Next::After(Duration::ZERO))
        })
    }
}

impl Fleet {
    /// Rebuilds one stale image and asks every service using it for a deploy.
    pub(super) async fn rebuild(&self, image: &Image, stale: i64) {
        let (spec, img, resolver) = (self.spec.clone(), image.clone(), self.resolver.clone());
        let built = tokio::task::spawn_blocking(move || {
            let options = steward_image::BuildOptions {
                force: true,
                upgrade: true,
            };
            steward_image::build_with(&spec, &img, resolver.as_ref(), options, &mut |_| {})
        })
        .await;
        let manifest = match built {
            Ok(Ok(r)) => r.manifest,
            Ok(Err(e)) => {
                let failed = event(
                    EventKind::ImageRebuildFailed,
                    &image.name,
                    Severity::Error,
                    format!("rebuilding stale image {} failed: {e}", image.name),
                    serde_json::json!({"stale_event": stale}),
                );
                let _ = state(&self.store, "act", move |s| {
                    s.record(&failed);
                    Ok(())
                })
                .await;
                return;
            }
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        let rebuilt = event(
            EventKind::ImageRebuilt,
            &image.name,
            Severity::Info,
            format!(
                "stale image {} rebuilt: {}",
                image.name,
                short(&manifest.digest)
            ),
            serde_json::json!({"digest": manifest.digest, "stale_event": stale}),
        );
        let services: Vec<Service> = self
            .spec
            .services
            .values()
            .filter(|s| s.image == image.name)
            .cloned()
            .collect();
        let digest = manifest.digest.clone();
        let asked = state(&self.store, "act", move |store| {
            store.record(&rebuilt);
            for svc in &services {
                let current = store.fleet_service(&svc.name)?;
                if current.and_then(|c| c.target).as_deref() == Some(digest.as_str()) {
                    continue;
                }
                request_deploy(
                    store,
                    svc,
                    &digest,
                    "serve (auto_rebuild)",
                    DeployKind::Rebuild,
                )?;
            }
            Ok(())
        })
        .await;
        if let Err(e) = asked {
            tracing::error!(image = %image.name, error = %e.message, "auto_rebuild: cannot ask for the deploys");
        }
    }
}
