//! Observing a service's instances: is each still running (its provider
//! says), does it pass readiness; moves go through `plan::lifecycle` and are
//! written through; the proxy's pool and the instance gauges follow.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use steward_state::{EventKind, InstanceRow, Severity, now_ms};

use super::{Live, READY_PROBE_MAX, STARTING_PROBE, ServiceLoop, StateLabel, handle};
use crate::plan::{InstanceState, Seen, lifecycle};
use crate::provider::Status;

impl ServiceLoop {
    /// Liveness and readiness of every instance that should be running; state
    /// changes are written through.
    pub(super) async fn observe(&mut self, rows: &mut [InstanceRow]) {
        let now = now_ms();
        let mut probes = tokio::task::JoinSet::new();
        for (i, r) in rows.iter_mut().enumerate() {
            match r.state {
                InstanceState::Starting | InstanceState::Ready | InstanceState::Unready => {}
                InstanceState::Draining(then) => {
                    let mine = self
                        .draining
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .contains(&r.id);
                    if !mine {
                        // Left over from an earlier steward: finish it as recorded.
                        self.drain(r.clone(), then, "resuming an interrupted drain")
                            .await;
                    }
                    continue;
                }
                InstanceState::Parked | InstanceState::Failed => continue,
            }
            let h = handle(r);
            let alive = match self
                .call("status", &r.id, self.fleet.provider.status(&h))
                .await
            {
                Ok(st) => st == Status::Running,
                // Not known either way: look again next time.
                Err(e) => {
                    tracing::warn!(instance = %r.id, error = %e, "cannot tell whether an instance runs");
                    continue;
                }
            };
            if !alive {
                let seen = Seen { alive, ready: None };
                if let Some(next) = lifecycle(r.state, seen) {
                    self.record(
                        EventKind::FleetInstanceExited,
                        Severity::Warning,
                        format!("instance {} exited without being asked", r.id),
                        serde_json::json!({"instance": r.id}),
                    )
                    .await;
                    r.state = next;
                    r.reason = Some(format!("exited; see `steward logs {} {}`", r.service, r.id));
                    r.updated_ms = now;
                    self.put(r).await;
                }
                continue;
            }
            let live = self.live.entry(r.id.clone()).or_insert(Live {
                next_probe: Instant::now(),
            });
            if Instant::now() < live.next_probe {
                continue;
            }
            let addr: Option<SocketAddr> = r.addr.parse().ok();
            let check = addr.and_then(|a| self.svc.readiness_for(a));
            let every = match (&check, r.state) {
                (_, InstanceState::Starting) => STARTING_PROBE,
                (Some(c), _) => c.interval.0.min(READY_PROBE_MAX),
                (None, _) => READY_PROBE_MAX,
            };
            live.next_probe = Instant::now() + every;
            let prober = self.fleet.prober.clone();
            probes.spawn(async move {
                let pass = match check {
                    None => true,
                    Some(mut c) => {
                        c.timeout = steward_spec::Dur(c.timeout.0.min(Duration::from_secs(2)));
                        let out = prober.run(&c).await;
                        let j = steward_health::judge(&c, &out);
                        j.status != steward_state::Status::Fail
                    }
                };
                (i, pass)
            });
        }
        while let Some(Ok((i, pass))) = probes.join_next().await {
            let r = &mut rows[i];
            let now = now_ms();
            let seen = Seen {
                alive: true,
                ready: Some(pass),
            };
            let Some(next) = lifecycle(r.state, seen) else {
                continue;
            };
            if next == InstanceState::Ready {
                r.ready_ms = Some(now);
                self.record(
                    EventKind::FleetInstanceReady,
                    Severity::Info,
                    format!("instance {} is ready on {}", r.id, r.addr),
                    serde_json::json!({"instance": r.id, "addr": r.addr}),
                )
                .await;
            } else {
                self.record(
                    EventKind::FleetInstanceUnready,
                    Severity::Warning,
                    format!("instance {} stopped passing readiness", r.id),
                    serde_json::json!({"instance": r.id}),
                )
                .await;
            }
            r.state = next;
            r.updated_ms = now;
            self.put(r).await;
        }
        self.live.retain(|id, _| rows.iter().any(|r| &r.id == id));
    }

    pub(super) fn update_pool(&self, rows: &[InstanceRow]) {
        if self.svc.listen.is_none() {
            return;
        }
        let ready: Vec<(String, SocketAddr)> = rows
            .iter()
            .filter(|r| r.state == InstanceState::Ready)
            .filter_map(|r| Some((r.id.clone(), r.addr.parse().ok()?)))
            .collect();
        self.pool.set(&ready);
    }

    /// Every 5 s: what each running instance uses (CPU, memory, open
    /// files), as the provider tells; the series of instances gone are
    /// removed.
    pub(super) fn measure(&mut self, rows: &[InstanceRow]) {
        if self
            .usage_at
            .is_some_and(|t| t.elapsed() < Duration::from_secs(5))
        {
            return;
        }
        self.usage_at = Some(Instant::now());
        let m = &self.fleet.metrics;
        let mut seen = std::collections::HashSet::new();
        for r in rows.iter().filter(|r| r.state.runs()) {
            let Some(u) = self.fleet.provider.usage(&handle(r)) else {
                continue;
            };
            let label = super::InstanceLabel {
                service: self.svc.name.clone(),
                id: r.id.clone(),
            };
            let last = self.usage.insert(r.id.clone(), u.cpu_seconds);
            let delta = u.cpu_seconds - last.unwrap_or(0.0);
            if delta > 0.0 {
                m.cpu.get_or_create(&label).inc_by(delta);
            }
            m.memory.get_or_create(&label).set(u.memory_bytes as i64);
            m.fds.get_or_create(&label).set(u.open_fds as i64);
            seen.insert(r.id.clone());
        }
        let gone: Vec<String> = self
            .usage
            .keys()
            .filter(|id| !seen.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            self.usage.remove(&id);
            let label = super::InstanceLabel {
                service: self.svc.name.clone(),
                id,
            };
            m.cpu.remove(&label);
            m.memory.remove(&label);
            m.fds.remove(&label);
        }
    }

    pub(super) fn count(&self, rows: &[InstanceRow]) {
        for state in [
            "starting", "ready", "unready", "draining", "parked", "failed",
        ] {
            let n = rows.iter().filter(|r| r.state.as_str() == state).count();
            self.fleet
                .metrics
                .instances
                .get_or_create(&StateLabel {
                    service: self.svc.name.clone(),
                    state: state.into(),
                })
                .set(n as i64);
        }
    }
}
