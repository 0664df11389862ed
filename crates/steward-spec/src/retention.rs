//! Which snapshots a retention policy keeps. Pure: no repository, no clock; the
//! same rules as restic's `forget` (so the two agree on the same list, which a test
//! checks against the real restic), with one deliberate difference: the newest
//! snapshot is always kept. Like restic, hours, days, weeks, months and years
//! are those of each snapshot's time as it was stamped, in the offset it was
//! stamped with (a snapshot taken at 23:30 in New York belongs to that day, not
//! to the next day in UTC); order is by the instant.

use crate::Keep;
use chrono::{DateTime, Datelike, FixedOffset, Timelike};

/// A snapshot as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snap {
    /// Its id.
    pub id: String,
    /// When it was taken, in the offset it was stamped with.
    pub time: DateTime<FixedOffset>,
    /// Its tags.
    pub tags: Vec<String>,
}

/// The decision for one snapshot, with the rules that keep it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The snapshot id.
    pub id: String,
    /// Kept or removed.
    pub keep: bool,
    /// Why it is kept (`last`, `daily`, `within`, `tag`, `newest`); empty when removed.
    pub reasons: Vec<&'static str>,
}

/// Applies `keep` to `snaps` (any order). Returns decisions newest first.
/// An empty policy keeps everything (as restic refuses to forget without one).
pub fn select_kept(snaps: &[Snap], keep: &Keep) -> Vec<Decision> {
    let mut sorted: Vec<&Snap> = snaps.iter().collect();
    // Newest first; ties by id so the result does not depend on input order.
    sorted.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| b.id.cmp(&a.id)));
    if keep.is_empty() {
        return sorted
            .iter()
            .map(|s| Decision {
                id: s.id.clone(),
                keep: true,
                reasons: vec!["no policy"],
            })
            .collect();
    }
    type Bucketer = fn(&DateTime<FixedOffset>, usize) -> i64;
    let mut buckets: Vec<(&'static str, u32, Bucketer, Option<i64>)> = vec![
        ("last", keep.last, |_, i| i as i64, None),
        (
            "hourly",
            keep.hourly,
            |t, _| {
                t.year() as i64 * 1_000_000
                    + t.month() as i64 * 10_000
                    + t.day() as i64 * 100
                    + t.hour() as i64
            },
            None,
        ),
        (
            "daily",
            keep.daily,
            |t, _| t.year() as i64 * 10_000 + t.month() as i64 * 100 + t.day() as i64,
            None,
        ),
        (
            "weekly",
            keep.weekly,
            |t, _| {
                let w = t.iso_week();
                w.year() as i64 * 100 + w.week() as i64
            },
            None,
        ),
        (
            "monthly",
            keep.monthly,
            |t, _| t.year() as i64 * 100 + t.month() as i64,
            None,
        ),
        ("yearly", keep.yearly, |t, _| t.year() as i64, None),
    ];
    let newest = sorted.first().map(|s| s.time);
    let within = keep
        .within
        .and_then(|w| chrono::Duration::from_std(w.0).ok());
    let mut out = Vec::with_capacity(sorted.len());
    for (i, s) in sorted.iter().enumerate() {
        let mut reasons = Vec::new();
        if i == 0 {
            reasons.push("newest");
        }
        if s.tags.iter().any(|t| keep.tags.contains(t)) {
            reasons.push("tag");
        }
        if let (Some(w), Some(n)) = (within, newest)
            && s.time > n - w
        {
            reasons.push("within");
        }
        for (name, left, bucketer, last) in buckets.iter_mut() {
            if *left == 0 {
                continue;
            }
            let value = bucketer(&s.time, i);
            if *last != Some(value) {
                *last = Some(value);
                *left -= 1;
                reasons.push(name);
            }
        }
        out.push(Decision {
            id: s.id.clone(),
            keep: !reasons.is_empty(),
            reasons,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn snap(id: &str, rfc3339: &str) -> Snap {
        Snap {
            id: id.into(),
            time: DateTime::parse_from_rfc3339(rfc3339).unwrap(),
            tags: vec![],
        }
    }

    #[test]
    fn buckets_are_those_of_the_time_as_stamped() {
        // 23:00 on New Year's Eve at -08:00 is 07:00 on New Year's Day in UTC,
        // and later than 01:00 UTC that day: by the stamped times they are two
        // years, by UTC one.
        let snaps = [
            snap("eve", "2026-12-31T23:00:00-08:00"),
            snap("day", "2027-01-01T01:00:00+00:00"),
        ];
        let keep = Keep {
            yearly: 2,
            ..Keep::default()
        };
        let d = select_kept(&snaps, &keep);
        assert_eq!(d[0].id, "eve", "newest by the instant");
        assert!(
            d.iter().all(|d| d.keep && d.reasons.contains(&"yearly")),
            "{d:?}"
        );
    }

    #[test]
    fn daily_keeps_the_newest_of_each_day() {
        let snaps = [
            snap("a", "2026-01-01T10:00:00Z"),
            snap("b", "2026-01-01T22:00:00Z"),
            snap("c", "2026-01-02T09:00:00Z"),
            snap("d", "2026-01-03T09:00:00Z"),
        ];
        let keep = Keep {
            daily: 2,
            ..Keep::default()
        };
        let kept: Vec<_> = select_kept(&snaps, &keep)
            .into_iter()
            .filter(|d| d.keep)
            .map(|d| d.id)
            .collect();
        assert_eq!(kept, ["d", "c"]);
    }

    #[test]
    fn the_newest_survives_a_tag_only_policy() {
        let mut tagged = snap("old", "2026-01-01T00:00:00Z");
        tagged.tags = vec!["release".into()];
        let snaps = [tagged, snap("new", "2026-02-01T00:00:00Z")];
        let keep = Keep {
            tags: vec!["release".into()],
            ..Keep::default()
        };
        let d = select_kept(&snaps, &keep);
        assert!(d.iter().all(|d| d.keep));
        assert_eq!(d[0].reasons, ["newest"]);
    }

    prop_compose! {
        // Times stamped in offsets from -12:00 to +14:00, in quarter hours.
        fn arb_snaps()(times in prop::collection::vec((0i64..(3 * 365 * 86400), -48i32..=56), 1..40)) -> Vec<Snap> {
            times.iter().enumerate().map(|(i, (t, quarter))| Snap {
                id: format!("{i:04}"),
                time: DateTime::from_timestamp(1_700_000_000 + t, 0)
                    .unwrap()
                    .with_timezone(&FixedOffset::east_opt(quarter * 900).unwrap()),
                tags: vec![],
            }).collect()
        }
    }

    prop_compose! {
        fn arb_keep()(last in 0u32..4, hourly in 0u32..4, daily in 0u32..8, weekly in 0u32..5,
                      monthly in 0u32..13, yearly in 0u32..3) -> Keep {
            Keep { last, hourly, daily, weekly, monthly, yearly, ..Keep::default() }
        }
    }

    proptest! {
        #[test]
        fn never_removes_the_newest_and_is_stable(snaps in arb_snaps(), keep in arb_keep()) {
            let d = select_kept(&snaps, &keep);
            prop_assert_eq!(d.len(), snaps.len());
            prop_assert!(d[0].keep);
            // Order of the input does not matter.
            let mut reversed = snaps.clone();
            reversed.reverse();
            prop_assert_eq!(select_kept(&reversed, &keep), d.clone());
            // Applying the policy to what it kept keeps all of it.
            let kept: Vec<Snap> = snaps.iter().filter(|s| d.iter().any(|x| x.keep && x.id == s.id)).cloned().collect();
            prop_assert!(select_kept(&kept, &keep).iter().all(|x| x.keep));
            // Each bucket keeps at most its count.
            let daily = d.iter().filter(|x| x.reasons.contains(&"daily")).count();
            prop_assert!(daily <= keep.daily as usize);
        }
    }
}
