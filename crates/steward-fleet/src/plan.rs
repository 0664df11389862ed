//! What to do next with a service's instances: rollouts, scaling and
//! self-healing in one pure function over plain data. No I/O, no clock (the
//! time is an input), so it is tested exhaustively.
//!
//! Rules, in the words an operator would use:
//! - instances of the target version are "new", every other running one is "old";
//! - new instances start at most `max_parallel` at a time while old ones remain
//!   (parked instances of the target version are revived first and all at once:
//!   that is what makes a rollback instant);
//! - an instance counts as healthy after passing readiness for `min_healthy_time`;
//! - a serving instance is only taken away while at least `min_healthy` others
//!   still serve — and an old one only once a healthy new one replaces it;
//! - a deploy fails when a new instance exits, is not healthy within
//!   `healthy_deadline`, or the whole rollout outlasts `progress_deadline`;
//! - replaced old instances that were healthy are parked (stopped, kept) for a
//!   rollback; everything else that leaves is destroyed.

use std::time::Duration;

use steward_spec::Rollout;

/// Where an instance is in its life, as the planner needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Running, not yet ready; since its creation (or revival).
    Starting {
        /// When it was started (ms).
        since: i64,
    },
    /// Passing readiness since `since` (ms).
    Ready {
        /// First passed (ms).
        since: i64,
    },
    /// Was ready, now failing readiness since `since` (ms).
    Unready {
        /// Started failing (ms).
        since: i64,
    },
    /// The process is gone without being asked to go.
    Exited,
    /// Taken out of traffic, finishing its requests.
    Draining,
    /// Stopped but kept, for a rollback.
    Parked,
}

/// One instance as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// Instance id.
    pub id: String,
    /// Image digest it runs.
    pub digest: String,
    /// Its phase.
    pub phase: Phase,
    /// When it was created (ms).
    pub created_ms: i64,
    /// It passed readiness at least once.
    pub ever_ready: bool,
}

/// Everything the planner looks at.
#[derive(Debug, Clone)]
pub struct Input {
    /// Now (ms).
    pub now: i64,
    /// The version instances should run.
    pub target: String,
    /// The version before it (where a rollback goes): its parked instances
    /// are the ones kept.
    pub previous: Option<String>,
    /// How many instances should run.
    pub desired: u32,
    /// Rollout parameters.
    pub rollout: Rollout,
    /// Canaries may be followed by the rest.
    pub promoted: bool,
    /// A deploy is running, started at this time (ms): failures end it.
    pub deploy_started: Option<i64>,
    /// The last deploy failed and was not reverted: hold still.
    pub halted: bool,
    /// A ready instance failing readiness longer than this is replaced.
    pub health_grace: Duration,
    /// Instances older than this are replaced.
    pub max_lifetime: Option<Duration>,
    /// The instances.
    pub instances: Vec<View>,
}

/// What happens to an instance once drained (recorded with its drain, so a
/// restarted steward finishes it the same way).
pub use steward_state::AfterDrain as After;
pub use steward_state::InstanceState;

/// What one look at a running instance found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// Its process is still there.
    pub alive: bool,
    /// Its readiness check passed (`Some(true)`), failed (`Some(false)`), or
    /// was not run this time (`None`).
    pub ready: Option<bool>,
}

/// The instance lifecycle: the state an instance moves to after a look at
/// it, if it moves. A running instance whose process is gone has failed;
/// readiness moves it in and out of the proxy's rotation. Drains, parking and
/// starts are the planner's actions, not observations: they never change here.
pub fn lifecycle(state: InstanceState, seen: Seen) -> Option<InstanceState> {
    use InstanceState::*;
    match (state, seen.alive, seen.ready) {
        (Starting | Ready | Unready, false, _) => Some(Failed),
        (Starting | Unready, true, Some(true)) => Some(Ready),
        (Ready, true, Some(false)) => Some(Unready),
        _ => None,
    }
}

/// One step to take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create and start a new instance of the target version.
    Start {
        /// Why.
        reason: String,
    },
    /// Start a parked instance of the target version again.
    Revive {
        /// Which.
        id: String,
    },
    /// Take it out of traffic, let it finish, then park or destroy it.
    Drain {
        /// Which.
        id: String,
        /// Then what.
        then: After,
        /// Why.
        reason: String,
    },
    /// Remove it now (it serves nothing).
    Destroy {
        /// Which.
        id: String,
        /// Why.
        reason: String,
    },
    /// The running deploy failed.
    Fail {
        /// Why.
        reason: String,
    },
    /// The running deploy is complete: every instance runs the target and is healthy.
    Complete,
}

/// The planner's answer: steps and a one-line account of the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Steps, in order.
    pub actions: Vec<Action>,
    /// Where the service stands, for status output.
    pub reason: String,
}

fn ms(d: Duration) -> i64 {
    d.as_millis() as i64
}

/// Why a service is pointed at a version (the deploy history's `kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeployKind {
    /// The first version a service runs.
    Initial,
    /// A new version, asked for (CLI, API, `up`).
    Deploy,
    /// A new build of the same image, made by `serve` (`auto_rebuild`).
    Rebuild,
    /// Back to the previous version, asked for.
    Rollback,
    /// Back to the previous version after a failed deploy, by `serve`.
    Revert,
}

impl DeployKind {
    /// The word the history records.
    pub fn as_str(self) -> &'static str {
        match self {
            DeployKind::Initial => "initial",
            DeployKind::Deploy => "deploy",
            DeployKind::Rebuild => "rebuild",
            DeployKind::Rollback => "rollback",
            DeployKind::Revert => "revert",
        }
    }

    /// Whether a deploy of this kind starts promoted. A new version — a
    /// deploy or a rebuild, from any door — stops after its canaries when the
    /// rollout asks for that (`canary > 0` and `auto_promote = false`); a
    /// first version has nothing to wait beside, and a rollback or a revert
    /// goes back to a version that already ran.
    pub fn starts_promoted(self, rollout: &Rollout) -> bool {
        match self {
            DeployKind::Deploy | DeployKind::Rebuild => rollout.canary == 0 || rollout.auto_promote,
            DeployKind::Initial | DeployKind::Rollback | DeployKind::Revert => true,
        }
    }
}

/// The smallest number of instances that must keep serving.
pub fn min_healthy(desired: u32, percent: u32) -> u32 {
    (desired * percent).div_ceil(100)
}

/// Decides the next steps for one service.
pub fn decide(input: &Input) -> Decision {
    let now = input.now;
    let r = &input.rollout;
    let mut actions = Vec::new();
    let is_new = |v: &View| v.digest == input.target;
    let healthy = |v: &View| matches!(v.phase, Phase::Ready { since } if now - since >= ms(r.min_healthy_time));
    let serving = |v: &View| matches!(v.phase, Phase::Ready { .. });
    let active = |v: &View| {
        matches!(
            v.phase,
            Phase::Starting { .. } | Phase::Ready { .. } | Phase::Unready { .. }
        )
    };
    let expired = |v: &View| {
        input
            .max_lifetime
            .is_some_and(|l| now - v.created_ms > ms(l))
    };
    let sick = |v: &View| match v.phase {
        Phase::Unready { since } => now - since > ms(input.health_grace),
        Phase::Starting { since } => now - since > ms(r.healthy_deadline),
        _ => false,
    };

    // Exited instances serve nothing: remove them right away.
    for v in input.instances.iter().filter(|v| v.phase == Phase::Exited) {
        // A new instance that dies before it was ever ready fails the deploy;
        // one that served first is only replaced, like any other.
        if input.deploy_started.is_some() && is_new(v) && !v.ever_ready && !input.halted {
            return Decision {
                actions: vec![Action::Fail {
                    reason: format!("new instance {} exited", v.id),
                }],
                reason: "deploy failed".into(),
            };
        }
        actions.push(Action::Destroy {
            id: v.id.clone(),
            reason: "its process exited".into(),
        });
    }

    let old: Vec<&View> = input
        .instances
        .iter()
        .filter(|v| active(v) && !is_new(v))
        .collect();
    let new: Vec<&View> = input
        .instances
        .iter()
        .filter(|v| active(v) && is_new(v))
        .collect();
    let rolling = !old.is_empty();

    if let Some(started) = input.deploy_started
        && !input.halted
    {
        if let Some(v) = new.iter().find(|v| sick(v)) {
            return fail(match v.phase {
                Phase::Starting { .. } => format!(
                    "new instance {} not ready within healthy_deadline ({})",
                    v.id,
                    steward_spec::Dur(r.healthy_deadline)
                ),
                _ => format!(
                    "new instance {} failing readiness for longer than {}",
                    v.id,
                    steward_spec::Dur(input.health_grace)
                ),
            });
        }
        if rolling && now - started > ms(r.progress_deadline) {
            return fail(format!(
                "rollout not finished within {}",
                steward_spec::Dur(r.progress_deadline)
            ));
        }
    }

    let desired = input.desired;
    let floor = min_healthy(desired, r.min_healthy_percent);
    let mut serving_count = input.instances.iter().filter(|v| serving(v)).count() as u32;
    let condemned = |v: &View| sick(v) || expired(v);
    let good_new: Vec<&View> = new.iter().copied().filter(|v| !condemned(v)).collect();
    let healthy_new = good_new.iter().filter(|v| healthy(v)).count() as u32;
    let canary_wait = rolling && r.canary > 0 && !input.promoted;

    // Start what is missing.
    if !input.halted {
        let cap = if canary_wait {
            r.canary.min(desired)
        } else {
            desired
        };
        let mut missing = cap.saturating_sub(good_new.len() as u32);
        let parked: Vec<&View> = input
            .instances
            .iter()
            .filter(|v| v.phase == Phase::Parked && is_new(v))
            .collect();
        for v in parked.iter().take(missing as usize) {
            actions.push(Action::Revive { id: v.id.clone() });
            missing -= 1;
        }
        if rolling {
            let in_flight = good_new.iter().filter(|v| !healthy(v)).count() as u32
                + parked.len().min(cap as usize) as u32;
            missing = missing.min(r.max_parallel.saturating_sub(in_flight));
        }
        for _ in 0..missing {
            actions.push(Action::Start {
                reason: if rolling {
                    "rolling out the new version".into()
                } else if good_new.len() < new.len() {
                    "replacing an unhealthy or expired instance".into()
                } else {
                    "below the desired count".into()
                },
            });
        }
    }

    // Take away what is no longer wanted, never below the floor.
    let drain = |v: &View,
                 then: After,
                 reason: &str,
                 actions: &mut Vec<Action>,
                 serving_count: &mut u32| {
        if serving(v) {
            *serving_count -= 1;
        }
        actions.push(Action::Drain {
            id: v.id.clone(),
            then,
            reason: reason.into(),
        });
    };
    // Old instances: non-serving ones go now; serving ones once replaced.
    let mut old_sorted = old.clone();
    old_sorted.sort_by_key(|v| (serving(v), v.created_ms));
    let mut old_left = old.len() as u32;
    if !input.halted {
        for v in old_sorted {
            let replaced = healthy_new + old_left > desired;
            let may_go = !serving(v)
                || (!canary_wait && serving_count > floor && (replaced || floor < desired));
            if !may_go {
                continue;
            }
            let then = if healthy(v) {
                After::Park
            } else {
                After::Destroy
            };
            drain(
                v,
                then,
                "replaced by the new version",
                &mut actions,
                &mut serving_count,
            );
            old_left -= 1;
        }
    }
    // Condemned new instances: once enough healthy good ones serve (an unready
    // one serves nothing and goes at once).
    for v in new.iter().filter(|v| condemned(v)) {
        if !serving(v) || (healthy_new >= desired && serving_count > floor) {
            let reason = if expired(v) {
                "older than max_instance_lifetime"
            } else {
                "failing readiness beyond its grace period"
            };
            drain(v, After::Destroy, reason, &mut actions, &mut serving_count);
        }
    }
    // Surplus (scale-in): the not-ready first, then the youngest.
    if good_new.len() as u32 > desired && !rolling {
        let mut surplus: Vec<&View> = good_new.clone();
        surplus.sort_by_key(|v| (serving(v), std::cmp::Reverse(v.created_ms)));
        let mut extra = good_new.len() as u32 - desired;
        for v in surplus {
            if extra == 0 {
                break;
            }
            if serving(v) && serving_count <= desired {
                break;
            }
            drain(
                v,
                After::Destroy,
                "above the desired count",
                &mut actions,
                &mut serving_count,
            );
            extra -= 1;
        }
    }
    // Keep parked instances of one version only: the one before the target
    // (where a rollback goes), else the newest parked one.
    let parked_old = || {
        input
            .instances
            .iter()
            .filter(|v| v.phase == Phase::Parked && !is_new(v))
    };
    let keep_parked = input
        .previous
        .clone()
        .filter(|p| parked_old().any(|v| &v.digest == p))
        .or_else(|| {
            parked_old()
                .max_by_key(|v| v.created_ms)
                .map(|v| v.digest.clone())
        });
    for v in input
        .instances
        .iter()
        .filter(|v| v.phase == Phase::Parked && !is_new(v))
    {
        if Some(&v.digest) != keep_parked.as_ref() {
            actions.push(Action::Destroy {
                id: v.id.clone(),
                reason: "parked instance of an older version".into(),
            });
        }
    }

    let done = !rolling
        && good_new.len() as u32 == desired
        && healthy_new == desired
        && !input.instances.iter().any(|v| v.phase == Phase::Draining);
    if input.deploy_started.is_some() && !input.halted && done {
        actions.push(Action::Complete);
    }
    let reason = if input.halted {
        "halted after a failed deploy: run `steward deploy` or `steward rollback`".to_string()
    } else if canary_wait && healthy_new >= r.canary.min(desired) {
        format!("{healthy_new} canaries healthy; waiting for `steward deploy --promote`")
    } else if rolling {
        format!(
            "rolling out: {healthy_new}/{desired} new healthy, {} old",
            old.len()
        )
    } else if healthy_new == desired {
        format!("{desired} healthy")
    } else {
        format!("{healthy_new}/{desired} healthy")
    };
    Decision { actions, reason }
}

fn fail(reason: String) -> Decision {
    Decision {
        actions: vec![Action::Fail { reason }],
        reason: "deploy failed".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rollout() -> Rollout {
        Rollout {
            min_healthy_time: Duration::from_secs(10),
            healthy_deadline: Duration::from_secs(60),
            ..Rollout::default()
        }
    }

    /// Every state against every observation: which move, if any.
    #[test]
    fn the_lifecycle_moves_only_on_what_was_seen() {
        use InstanceState::*;
        for state in InstanceState::ALL {
            for alive in [true, false] {
                for ready in [None, Some(true), Some(false)] {
                    let got = lifecycle(state, Seen { alive, ready });
                    let want = match (state, alive, ready) {
                        (Starting | Ready | Unready, false, _) => Some(Failed),
                        (Starting | Unready, true, Some(true)) => Some(Ready),
                        (Ready, true, Some(false)) => Some(Unready),
                        _ => None,
                    };
                    assert_eq!(got, want, "{state:?} alive={alive} ready={ready:?}");
                    if let Some(next) = got {
                        assert_ne!(next, state, "a move changes the state");
                    }
                }
            }
        }
        // Spelled out, the cases that matter most.
        let dead = Seen {
            alive: false,
            ready: None,
        };
        assert_eq!(lifecycle(Ready, dead), Some(Failed));
        assert_eq!(
            lifecycle(Draining(After::Park), dead),
            None,
            "a drain ends by the planner"
        );
        assert_eq!(
            lifecycle(Parked, dead),
            None,
            "a parked instance is meant to be stopped"
        );
        assert_eq!(lifecycle(Failed, dead), None, "failed once, recorded once");
    }

    #[test]
    fn only_new_versions_wait_after_their_canaries() {
        let gated = Rollout {
            canary: 1,
            auto_promote: false,
            ..rollout()
        };
        for kind in [DeployKind::Deploy, DeployKind::Rebuild] {
            assert!(
                !kind.starts_promoted(&gated),
                "{kind:?} waits for --promote"
            );
            assert!(
                kind.starts_promoted(&rollout()),
                "{kind:?} without canaries"
            );
            let auto = Rollout {
                canary: 1,
                ..rollout()
            };
            assert!(kind.starts_promoted(&auto), "{kind:?} with auto_promote");
        }
        for kind in [
            DeployKind::Initial,
            DeployKind::Rollback,
            DeployKind::Revert,
        ] {
            assert!(kind.starts_promoted(&gated), "{kind:?} never waits");
        }
    }

    fn input(instances: Vec<View>) -> Input {
        Input {
            now: 1_000_000,
            target: "B".into(),
            previous: None,
            desired: 2,
            rollout: rollout(),
            promoted: true,
            deploy_started: Some(900_000),
            halted: false,
            health_grace: Duration::from_secs(30),
            max_lifetime: None,
            instances,
        }
    }

    fn v(id: &str, digest: &str, phase: Phase) -> View {
        View {
            id: id.into(),
            digest: digest.into(),
            phase,
            created_ms: 0,
            ever_ready: false,
        }
    }

    const LONG_READY: Phase = Phase::Ready { since: 0 };

    #[test]
    fn a_rollout_starts_one_new_instance_and_keeps_the_old_ones() {
        let d = decide(&input(vec![
            v("a1", "A", LONG_READY),
            v("a2", "A", LONG_READY),
        ]));
        assert_eq!(
            d.actions,
            vec![Action::Start {
                reason: "rolling out the new version".into()
            }]
        );
    }

    #[test]
    fn an_old_instance_goes_only_when_a_new_one_is_healthy() {
        let fresh = Phase::Ready { since: 995_000 };
        let d = decide(&input(vec![
            v("a1", "A", LONG_READY),
            v("a2", "A", LONG_READY),
            v("b1", "B", fresh),
        ]));
        assert!(d.actions.iter().all(|a| !matches!(a, Action::Drain { .. })));
        let d = decide(&input(vec![
            v("a1", "A", LONG_READY),
            v("a2", "A", LONG_READY),
            v("b1", "B", LONG_READY),
        ]));
        let drains: Vec<_> = d
            .actions
            .iter()
            .filter(|a| {
                matches!(
                    a,
                    Action::Drain {
                        then: After::Park,
                        ..
                    }
                )
            })
            .collect();
        assert_eq!(drains.len(), 1, "{d:?}");
        assert!(d.actions.contains(&Action::Start {
            reason: "rolling out the new version".into()
        }));
    }

    #[test]
    fn a_new_instance_not_healthy_in_time_fails_the_deploy() {
        let d = decide(&input(vec![
            v("a1", "A", LONG_READY),
            v("a2", "A", LONG_READY),
            v("b1", "B", Phase::Starting { since: 900_000 }),
        ]));
        assert!(matches!(d.actions[..], [Action::Fail { .. }]), "{d:?}");
        let d = decide(&input(vec![
            v("a1", "A", LONG_READY),
            v("a2", "A", LONG_READY),
            v("b1", "B", Phase::Exited),
        ]));
        assert!(matches!(d.actions[..], [Action::Fail { .. }]), "{d:?}");
    }

    #[test]
    fn a_crash_after_serving_is_healed_not_a_failed_deploy() {
        let d = decide(&input(vec![
            v("b1", "B", LONG_READY),
            View {
                ever_ready: true,
                ..v("b2", "B", Phase::Exited)
            },
        ]));
        assert!(
            !d.actions.iter().any(|a| matches!(a, Action::Fail { .. })),
            "{d:?}"
        );
        assert!(d.actions.iter().any(|a| matches!(a, Action::Start { .. })));
        assert!(d.actions.contains(&Action::Destroy {
            id: "b2".into(),
            reason: "its process exited".into()
        }));
    }

    #[test]
    fn rollback_revives_parked_instances_at_once() {
        let mut i = input(vec![
            v("b1", "B", Phase::Parked),
            v("b2", "B", Phase::Parked),
            v("c1", "C", LONG_READY),
            v("c2", "C", LONG_READY),
        ]);
        i.rollout.max_parallel = 1;
        let d = decide(&i);
        let revived = d
            .actions
            .iter()
            .filter(|a| matches!(a, Action::Revive { .. }))
            .count();
        assert_eq!(revived, 2, "{d:?}");
    }

    /// Deploy B over A, roll back to A, deploy C: A's parked instances (the
    /// version a rollback now goes to) are kept, though B's are newer.
    #[test]
    fn the_previous_versions_parked_instances_are_kept() {
        let mut older = v("a1", "A", Phase::Parked);
        older.created_ms = 100;
        let mut newer = v("b1", "B", Phase::Parked);
        newer.created_ms = 500;
        let mut i = input(vec![older, newer, v("c1", "C", LONG_READY)]);
        i.target = "C".into();
        i.previous = Some("A".into());
        i.deploy_started = None;
        i.desired = 1;
        let d = decide(&i);
        let destroyed: Vec<&str> = d
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Destroy { id, .. } => Some(id.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(
            destroyed,
            ["b1"],
            "A's parked instance stays for a rollback"
        );
        i.previous = None;
        let d = decide(&i);
        assert!(
            d.actions.contains(&Action::Destroy {
                id: "a1".into(),
                reason: "parked instance of an older version".into()
            }),
            "without a known previous version the newest parked one stays: {d:?}"
        );
    }

    #[test]
    fn steady_state_scales_out_and_in() {
        let mut i = input(vec![v("b1", "B", LONG_READY)]);
        i.deploy_started = None;
        i.desired = 3;
        let starts = decide(&i)
            .actions
            .iter()
            .filter(|a| matches!(a, Action::Start { .. }))
            .count();
        assert_eq!(starts, 2);
        let mut i = input(vec![
            v("b1", "B", LONG_READY),
            View {
                created_ms: 5,
                ..v("b2", "B", LONG_READY)
            },
            v("b3", "B", Phase::Starting { since: 999_000 }),
        ]);
        i.deploy_started = None;
        i.desired = 1;
        let d = decide(&i);
        let drained: Vec<_> = d
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Drain { id, .. } => Some(id.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(
            drained,
            vec!["b3", "b2"],
            "the not-ready first, then the youngest"
        );
    }

    #[test]
    fn an_expired_instance_is_replaced_before_it_goes() {
        let mut i = input(vec![
            View {
                created_ms: 0,
                ..v("b1", "B", LONG_READY)
            },
            View {
                created_ms: 990_000,
                ..v("b2", "B", LONG_READY)
            },
        ]);
        i.deploy_started = None;
        i.max_lifetime = Some(Duration::from_secs(100));
        let d = decide(&i);
        assert!(d.actions.iter().any(|a| matches!(a, Action::Start { .. })));
        assert!(
            !d.actions.iter().any(|a| matches!(a, Action::Drain { .. })),
            "{d:?}"
        );
    }

    #[test]
    fn a_complete_rollout_says_so() {
        let mut i = input(vec![v("b1", "B", LONG_READY), v("b2", "B", LONG_READY)]);
        i.instances.push(v("a1", "A", Phase::Parked));
        assert!(decide(&i).actions.contains(&Action::Complete));
    }

    #[test]
    fn canaries_wait_for_promotion() {
        let mut i = input(vec![
            v("a1", "A", LONG_READY),
            v("a2", "A", LONG_READY),
            v("b1", "B", LONG_READY),
        ]);
        i.rollout.canary = 1;
        i.promoted = false;
        let d = decide(&i);
        assert!(d.actions.is_empty(), "{d:?}");
        i.promoted = true;
        assert!(!decide(&i).actions.is_empty());
    }

    fn phase() -> impl Strategy<Value = Phase> {
        prop_oneof![
            (0i64..1_000_000).prop_map(|since| Phase::Starting { since }),
            (0i64..1_000_000).prop_map(|since| Phase::Ready { since }),
            (0i64..1_000_000).prop_map(|since| Phase::Unready { since }),
            Just(Phase::Exited),
            Just(Phase::Draining),
            Just(Phase::Parked),
        ]
    }

    proptest! {
        /// The one promise rollouts make: serving instances never drop below the
        /// minimum healthy count (or below what serves now, when that is less).
        #[test]
        fn never_below_the_minimum_healthy(
            phases in proptest::collection::vec((phase(), any::<bool>(), 0i64..1_000_000), 0..10),
            desired in 1u32..6,
            percent in prop_oneof![Just(100u32), 0u32..=100],
            parallel in 1u32..4,
            deploying in any::<bool>(),
            halted in any::<bool>(),
            canary in 0u32..3,
            promoted in any::<bool>(),
        ) {
            let instances: Vec<View> = phases
                .iter()
                .enumerate()
                .map(|(n, (p, newer, created))| View {
                    id: format!("i{n}"),
                    digest: if *newer { "B".into() } else { "A".into() },
                    phase: *p,
                    created_ms: *created,
                    ever_ready: false,
                })
                .collect();
            let mut i = input(instances.clone());
            i.desired = desired;
            i.rollout.min_healthy_percent = percent;
            i.rollout.max_parallel = parallel;
            i.rollout.canary = canary;
            i.promoted = promoted;
            i.halted = halted;
            i.deploy_started = deploying.then_some(900_000);
            i.max_lifetime = Some(Duration::from_secs(500));
            let d = decide(&i);
            let serving_before = instances.iter().filter(|v| matches!(v.phase, Phase::Ready { .. })).count() as u32;
            let removed: Vec<&str> = d.actions.iter().filter_map(|a| match a {
                Action::Drain { id, .. } | Action::Destroy { id, .. } => Some(id.as_str()),
                _ => None,
            }).collect();
            let serving_after = instances
                .iter()
                .filter(|v| matches!(v.phase, Phase::Ready { .. }) && !removed.contains(&v.id.as_str()))
                .count() as u32;
            let floor = min_healthy(desired, percent).min(serving_before);
            prop_assert!(serving_after >= floor,
                "serving {serving_before} -> {serving_after}, floor {floor}: {d:?}");
            // Never two steps for one instance, and a failed deploy does nothing else.
            let mut ids = removed.clone();
            ids.sort();
            ids.dedup();
            prop_assert_eq!(ids.len(), removed.len());
            if d.actions.iter().any(|a| matches!(a, Action::Fail { .. })) {
                prop_assert_eq!(d.actions.len(), 1);
            }
            // Halted: nothing new starts.
            if halted {
                let starts = d.actions.iter().any(|a| matches!(a, Action::Start { .. } | Action::Revive { .. }));
                prop_assert!(!starts);
            }
        }
    }
}
