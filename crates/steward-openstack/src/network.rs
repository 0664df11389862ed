//! Neutron lookups: a network named in the spec, by name or id. Written from
//! the Networking API v2.0 reference; the test bed answers with a stand-in
//! (scripts/neutron-stub) that keeps the same shapes.

use std::sync::Arc;

use reqwest::Method;

use crate::Error;
use crate::session::{Call, Session};

/// A network's id and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
}

/// The network with this name or id.
pub async fn network(session: &Arc<Session>, wanted: &str) -> Result<Network, Error> {
    let doc = session
        .send(Call::new("network", Method::GET, "/v2.0/networks"))
        .await?
        .json()?;
    let all: Vec<Network> = doc["networks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| {
            Some(Network {
                id: n["id"].as_str()?.to_string(),
                name: n["name"].as_str().unwrap_or_default().to_string(),
            })
        })
        .collect();
    let by_name: Vec<&Network> = all.iter().filter(|n| n.name == wanted).collect();
    if let Some(n) = all.iter().find(|n| n.id == wanted) {
        return Ok(n.clone());
    }
    match by_name.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(Error::NotFound(format!(
            "network `{wanted}` does not exist (networks: {})",
            all.iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
        many => Err(Error::Invalid(format!(
            "{} networks are named `{wanted}`; name it by id ({})",
            many.len(),
            many.iter()
                .map(|n| n.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}
