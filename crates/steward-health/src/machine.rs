//! The up/down/degraded state machine. Pure: no clock, no I/O.

use steward_state::{CheckStateRow, Health, ResultRow, Status};

/// How many results in a row change the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Failures in a row before `down`.
    pub failure: u32,
    /// Passes in a row before a `down` check is `up` again.
    pub success: u32,
}

/// A change of health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// Before.
    pub from: Health,
    /// After.
    pub to: Health,
}

/// Applies one result to a check's state; returns the new state and the
/// transition, if the health changed.
pub fn advance(
    prev: &CheckStateRow,
    result: ResultRow,
    th: Thresholds,
) -> (CheckStateRow, Option<Transition>) {
    let mut next = prev.clone();
    let ts = result.ts;
    let target = match result.status {
        Status::Fail => {
            next.consecutive_failures = next.consecutive_failures.saturating_add(1);
            next.consecutive_successes = 0;
            (next.consecutive_failures >= th.failure).then_some(Health::Down)
        }
        Status::Pass | Status::Warn => {
            next.consecutive_successes = next.consecutive_successes.saturating_add(1);
            next.consecutive_failures = 0;
            let healthy = if result.status == Status::Pass {
                Health::Up
            } else {
                Health::Degraded
            };
            match prev.health {
                Health::Down if next.consecutive_successes < th.success => None,
                _ => Some(healthy),
            }
        }
    };
    next.last = Some(result);
    let transition = match target {
        Some(to) if to != prev.health => {
            next.health = to;
            next.since = ts;
            Some(Transition {
                from: prev.health,
                to,
            })
        }
        _ => None,
    };
    (next, transition)
}

/// The state of a check that has never run.
pub fn initial(check: &str, now: i64) -> CheckStateRow {
    CheckStateRow {
        check: check.to_string(),
        health: Health::Unknown,
        since: now,
        consecutive_failures: 0,
        consecutive_successes: 0,
        last: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(status: Status, ts: i64) -> ResultRow {
        ResultRow {
            check: "c".into(),
            ts,
            status,
            duration_us: 1,
            error: None,
            observed: None,
        }
    }

    fn run(th: Thresholds, seq: &[Status]) -> (Health, Vec<(Health, Health)>) {
        let mut s = initial("c", 0);
        let mut ts = Vec::new();
        for (i, st) in seq.iter().enumerate() {
            let (n, t) = advance(&s, r(*st, i as i64 + 1), th);
            if let Some(t) = t {
                ts.push((t.from, t.to));
            }
            s = n;
        }
        (s.health, ts)
    }

    const TH: Thresholds = Thresholds {
        failure: 3,
        success: 2,
    };
    use Status::*;

    #[test]
    fn failures_must_be_confirmed() {
        assert_eq!(run(TH, &[Pass, Fail, Fail]).0, Health::Up);
        let (h, t) = run(TH, &[Pass, Fail, Fail, Fail]);
        assert_eq!(h, Health::Down);
        assert_eq!(
            t,
            vec![(Health::Unknown, Health::Up), (Health::Up, Health::Down)]
        );
        // A pass in between resets the count.
        assert_eq!(run(TH, &[Pass, Fail, Fail, Pass, Fail, Fail]).0, Health::Up);
    }

    #[test]
    fn recovery_needs_success_threshold() {
        let (h, _) = run(TH, &[Fail, Fail, Fail, Pass]);
        assert_eq!(h, Health::Down);
        let (h, t) = run(TH, &[Fail, Fail, Fail, Pass, Pass]);
        assert_eq!(h, Health::Up);
        assert_eq!(t.last(), Some(&(Health::Down, Health::Up)));
    }

    #[test]
    fn warn_is_degraded_and_flips_immediately() {
        let (h, t) = run(TH, &[Pass, Warn, Pass]);
        assert_eq!(h, Health::Up);
        assert_eq!(
            t,
            vec![
                (Health::Unknown, Health::Up),
                (Health::Up, Health::Degraded),
                (Health::Degraded, Health::Up)
            ]
        );
    }

    #[test]
    fn one_transition_per_change() {
        // Staying down produces no more transitions however long it lasts.
        let seq: Vec<Status> = std::iter::repeat_n(Fail, 50).collect();
        let (_, t) = run(TH, &seq);
        assert_eq!(t, vec![(Health::Unknown, Health::Down)]);
    }
}
