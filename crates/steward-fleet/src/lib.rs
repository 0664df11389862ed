//! The fleet: services made of identical instances created from gold images,
//! the reverse proxy in front of each service, and the controller that rolls
//! out new versions, scales, and replaces unhealthy or expired instances.
//!
//! - [`plan`]: the pure decisions (no I/O, no clock);
//! - [`provider`]: the edge that creates, starts, stops and destroys instances
//!   ([`provider::Local`] on this machine);
//! - [`proxy`]: the HTTP/1.1 reverse proxy with readiness routing, draining,
//!   retries and its own metrics;
//! - [`controller`]: `serve`'s loop tying them to the state store;
//! - [`requests`] and [`status`]: what the CLI and the API use — asking for a
//!   deploy, and reports.

pub mod controller;
pub mod plan;
pub mod provider;
pub mod proxy;
pub mod requests;
pub mod sandbox;
pub mod snapshot;
pub mod status;

/// A random instance id suffix: 6 hex digits.
pub(crate) fn short_id() -> String {
    let mut b = [0u8; 3];
    getrandom::fill(&mut b).expect("the OS random source");
    hex::encode(b)
}
