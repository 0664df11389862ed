//! Where each service stands, for `steward fleet status`, the API and the
//! dashboard (wire types, separate from the spec's).

use serde::Serialize;
use steward_spec::Spec;
use steward_state::{DeployRow, FleetState, InstanceRow};

/// One service's state.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    /// Name.
    pub service: String,
    /// Image name.
    pub image: String,
    /// Digest it should run.
    pub target: Option<String>,
    /// Digest a rollback returns to.
    pub previous: Option<String>,
    /// Instances wanted.
    pub desired: u32,
    /// Spec minimum.
    pub min: u32,
    /// Spec maximum.
    pub max: u32,
    /// Instances passing readiness.
    pub ready: u32,
    /// Proxy address.
    pub listen: Option<String>,
    /// Every instance, oldest first.
    pub instances: Vec<InstanceRow>,
    /// The newest deploy.
    pub deploy: Option<DeployRow>,
}

/// Every service of the spec with its recorded state.
pub fn report(spec: &Spec, store: &dyn FleetState) -> Vec<ServiceStatus> {
    spec.services
        .values()
        .map(|s| {
            let row = store.fleet_service(&s.name).ok().flatten();
            let instances = store.fleet_instances(Some(&s.name)).unwrap_or_default();
            ServiceStatus {
                service: s.name.clone(),
                image: s.image.clone(),
                target: row.as_ref().and_then(|r| r.target.clone()),
                previous: row.as_ref().and_then(|r| r.previous.clone()),
                desired: s.replicas.desired(row.as_ref().and_then(|r| r.replicas)),
                min: s.replicas.min,
                max: s.replicas.max,
                ready: instances.iter().filter(|i| i.state == "ready").count() as u32,
                listen: s.listen.map(|l| l.to_string()),
                instances,
                deploy: store
                    .fleet_deploys(Some(&s.name), 1)
                    .ok()
                    .and_then(|mut d| d.pop()),
            }
        })
        .collect()
}
