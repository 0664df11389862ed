//! The store behind the series: chunks flushed to `series.db` read back
//! exactly (from memory, from the file once memory lets go of them, and
//! after the process starts again), an open chunk goes on growing after a
//! restart, and retention drops old chunks from both.

use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use steward_metrics::tsdb::head::{CHUNK_SAMPLES, Head, MatchOp, Matcher, SeriesRef};
use steward_state::{SeriesChunks, SeriesDb};

fn all_of(h: &Head, name: &str) -> Vec<(i64, u64)> {
    let m = Matcher::new("__name__", MatchOp::Eq, name).unwrap();
    h.select(&[m], i64::MIN, i64::MAX)
        .unwrap()
        .into_iter()
        .flat_map(|(_, s)| s)
        .map(|(t, v)| (t, v.to_bits()))
        .collect()
}

fn flush(h: &mut Head, db: &dyn SeriesChunks, memory_from: i64) -> usize {
    let plan = h.plan_flush();
    plan.write(db).unwrap();
    h.flushed(&plan, memory_from);
    plan.sealed()
}

#[derive(Debug, Clone)]
enum Op {
    /// Samples appended to series `0` or `1`.
    Append(usize, Vec<f64>),
    /// A flush keeping in memory what ends within the last `n` samples.
    Flush(i64),
    /// A restart (after a flush or not: what was not flushed is lost, and
    /// the model forgets it too).
    Restart { flushed: bool, keep: i64 },
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..2usize, proptest::collection::vec(prop_oneof![Just(1.0), -1e6..1e6f64], 1..200))
            .prop_map(|(s, v)| Op::Append(s, v)),
        2 => (0..400i64).prop_map(Op::Flush),
        1 => (any::<bool>(), 0..400i64).prop_map(|(flushed, keep)| Op::Restart { flushed, keep }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn flushed_samples_read_back_from_memory_the_file_and_after_a_restart(
        ops in proptest::collection::vec(arb_op(), 1..12)
    ) {
        let dir = tempfile::tempdir().unwrap();
        let db: Arc<dyn SeriesChunks> = Arc::new(SeriesDb::open(dir.path()).unwrap());
        let mut h = Head::open(db.clone(), i64::MIN).unwrap();
        let names = ["a_total", "b"];
        // What each series holds, and what of it is safely in the file.
        let mut model: [Vec<(i64, u64)>; 2] = Default::default();
        let mut durable: [Vec<(i64, u64)>; 2] = Default::default();
        let mut next_t = [0i64; 2];
        for op in ops {
            match op {
                Op::Append(s, values) => {
                    let r: SeriesRef = h.series_ref(&[("__name__", names[s]), ("job", "x")]);
                    for v in values {
                        h.append(r, next_t[s], v).unwrap();
                        model[s].push((next_t[s], v.to_bits()));
                        next_t[s] += 1000;
                    }
                }
                Op::Flush(n) => {
                    let newest = next_t.iter().max().copied().unwrap_or(0);
                    flush(&mut h, db.as_ref(), newest - n * 1000);
                    durable = model.clone();
                }
                Op::Restart { flushed, keep } => {
                    if flushed {
                        flush(&mut h, db.as_ref(), i64::MIN);
                        durable = model.clone();
                    }
                    drop(h);
                    let newest = next_t.iter().max().copied().unwrap_or(0);
                    h = Head::open(db.clone(), newest - keep * 1000).unwrap();
                    model = durable.clone();
                    // Time goes on after the last durable sample (a later
                    // sample, lost, does not hold the series back).
                    for s in 0..2 {
                        next_t[s] = model[s].last().map_or(0, |(t, _)| t + 1000);
                    }
                }
            }
            for s in 0..2 {
                prop_assert_eq!(&all_of(&h, names[s]), &model[s], "series {}", names[s]);
            }
        }
    }
}

#[test]
fn memory_lets_go_of_flushed_chunks_and_reads_them_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let db: Arc<dyn SeriesChunks> = Arc::new(SeriesDb::open(dir.path()).unwrap());
    let head = Arc::new(Mutex::new(Head::open(db.clone(), i64::MIN).unwrap()));
    let n = CHUNK_SAMPLES as i64 * 5 + 7;
    {
        let mut h = head.lock().unwrap();
        let r = h.series_ref(&[("__name__", "up"), ("job", "api")]);
        for i in 0..n {
            h.append(r, i * 10_000, (i % 3) as f64).unwrap();
        }
        assert_eq!(h.sample_bytes().1, n as usize);
    }
    // Samples from 1970 are far older than the memory window: every sealed
    // chunk leaves memory once written; the open one stays.
    let written = steward_metrics::controller::flush(&head, db.as_ref()).unwrap();
    assert_eq!(
        written, 5,
        "five sealed chunks (and a snapshot of the open one)"
    );
    let h = head.lock().unwrap();
    assert_eq!(h.sample_bytes().1, 7, "only the open chunk is in memory");
    let back = all_of(&h, "up");
    assert_eq!(back.len(), n as usize);
    assert!(
        back.iter()
            .enumerate()
            .all(|(i, (t, v))| *t == i as i64 * 10_000 && f64::from_bits(*v) == (i % 3) as f64)
    );
    // A window in the middle reads from the file and memory alike.
    let m = Matcher::new("job", MatchOp::Eq, "api").unwrap();
    let mid = h.select(&[m], 1_000_000, 6_000_000).unwrap();
    assert_eq!(mid[0].1.len(), 501);
    assert!(db.disk_bytes().unwrap() > 0);
}

#[test]
fn an_open_chunk_goes_on_after_a_restart_and_retention_drops_old_chunks_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let db: Arc<dyn SeriesChunks> = Arc::new(SeriesDb::open(dir.path()).unwrap());
    let mut h = Head::open(db.clone(), i64::MIN).unwrap();
    let old = h.series_ref(&[("__name__", "old")]);
    let live = h.series_ref(&[("__name__", "live")]);
    for i in 0..(CHUNK_SAMPLES as i64 * 2) {
        h.append(old, i * 1000, 1.0).unwrap();
    }
    for i in 0..50 {
        h.append(live, i * 1000, i as f64).unwrap();
    }
    flush(&mut h, db.as_ref(), i64::MIN);
    drop(h);
    // After the restart the 50 samples of `live` are its open chunk again:
    // 70 more fill it, and it seals with the same first sample.
    let mut h = Head::open(db.clone(), i64::MIN).unwrap();
    let live = h.series_ref(&[("__name__", "live")]);
    for i in 50..CHUNK_SAMPLES as i64 + 1 {
        h.append(live, i * 1000, i as f64).unwrap();
    }
    flush(&mut h, db.as_ref(), i64::MIN);
    let live_id = db
        .all_series()
        .unwrap()
        .into_iter()
        .find(|(_, l)| l.contains("live"))
        .unwrap()
        .0;
    let rows = db.chunks_since(i64::MIN).unwrap();
    let live_rows: Vec<(i64, u16)> = rows
        .iter()
        .filter(|c| c.series == live_id)
        .map(|c| (c.min_t, c.count))
        .collect();
    assert_eq!(
        live_rows,
        [(0, CHUNK_SAMPLES as u16)],
        "the restored chunk sealed at {CHUNK_SAMPLES} samples (the next is in the snapshot)"
    );
    // Retention at t = 200 s: `old`'s first chunk (0–119 s) goes from the
    // file and memory; its second (120–239 s) stays.
    h.truncate(200_000, 200_000);
    db.drop_before(200_000).unwrap();
    // Raw samples from the cut on; before it, one a minute (the minute's
    // last) from the rollups.
    let back = all_of(&h, "old");
    let times: Vec<i64> = back.iter().map(|s| s.0).take(4).collect();
    assert_eq!(times, [59_000, 119_000, 179_000, 200_000]);
    // `live` stopped mid-chunk: retention sealed that chunk for the next
    // flush to write its minutes; the pass after drops it, and, its minutes
    // older than `forget_before` too, the series.
    flush(&mut h, db.as_ref(), i64::MIN);
    h.truncate(200_000, 200_000);
    db.drop_before(200_000).unwrap();
    // The next flush deletes the series the store in memory dropped.
    flush(&mut h, db.as_ref(), i64::MIN);
    drop(h);
    let h = Head::open(db.clone(), i64::MIN).unwrap();
    assert_eq!(all_of(&h, "old").len(), CHUNK_SAMPLES);
    // `live` ended at 120 s: nothing of it is left, not even its series.
    assert!(all_of(&h, "live").is_empty());
    assert_eq!(h.series_count(), 1);
    let left: Vec<String> = db
        .all_series()
        .unwrap()
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    assert_eq!(left, [r#"[["__name__","old"]]"#]);
}

#[test]
fn past_the_raw_retention_a_series_reads_one_sample_a_minute() {
    let dir = tempfile::tempdir().unwrap();
    let db: Arc<dyn SeriesChunks> = Arc::new(SeriesDb::open(dir.path()).unwrap());
    let mut h = Head::open(db.clone(), i64::MIN).unwrap();
    let r = h.series_ref(&[("__name__", "reqs_total")]);
    // Ten minutes of a counter every second: five sealed chunks.
    for i in 0..600i64 {
        h.append(r, i * 1000, (i * 3) as f64).unwrap();
    }
    flush(&mut h, db.as_ref(), i64::MIN);
    // Retention keeps raw samples from 300 s on.
    h.truncate(300_000, 300_000);
    db.drop_before(300_000).unwrap();
    let back = all_of(&h, "reqs_total");
    type Points = Vec<(i64, u64)>;
    let (old, raw): (Points, Points) = back.iter().partition(|(t, _)| *t < 300_000);
    // Each of the five minutes before it: its last sample, as it was.
    let want: Vec<(i64, u64)> = (0..5)
        .map(|m| {
            let t = m * 60_000 + 59_000;
            (t, (((t / 1000) * 3) as f64).to_bits())
        })
        .collect();
    assert_eq!(old, want);
    assert_eq!(raw.len(), 300);
    assert_eq!(raw[0].0, 300_000);
    // The minutes carry min, max, sum and count too.
    let id = db.all_series().unwrap()[0].0;
    let m = db.rollups_of(id, 60_000, 60_000).unwrap();
    assert_eq!((m[0].min, m[0].max, m[0].count), (180.0, 357.0, 60));
    assert_eq!(m[0].sum, (60..120).map(|i| (i * 3) as f64).sum::<f64>());
}

/// A series that stopped keeps its per-minute rollups — its last, unsealed
/// chunk's minutes too — past the raw retention, across a restart, until
/// they expire; then it goes from memory and the store.
#[test]
fn a_stopped_series_keeps_its_minutes_until_they_expire() {
    let dir = tempfile::tempdir().unwrap();
    let db: Arc<dyn SeriesChunks> = Arc::new(SeriesDb::open(dir.path()).unwrap());
    let mut h = Head::open(db.clone(), i64::MIN).unwrap();
    let r = h.series_ref(&[("__name__", "stopped")]);
    // Three minutes, one sample a second: one sealed chunk (0-119 s), the
    // rest (120-179 s) in the open chunk when the series stops.
    for i in 0..180i64 {
        h.append(r, i * 1000, i as f64).unwrap();
    }
    flush(&mut h, db.as_ref(), i64::MIN);
    // Raw retention passes all of it; the minutes are kept (forget_before 0).
    h.truncate(1_000_000, 0);
    flush(&mut h, db.as_ref(), i64::MIN);
    h.truncate(1_000_000, 0);
    db.drop_before(1_000_000).unwrap();
    assert!(db.chunks_since(i64::MIN).unwrap().is_empty());
    let minutes = [
        (59_000, 59.0f64.to_bits()),
        (119_000, 119.0f64.to_bits()),
        (179_000, 179.0f64.to_bits()),
    ];
    assert_eq!(all_of(&h, "stopped"), minutes);
    // A restart finds it again (once retention has set where raw begins).
    drop(h);
    let mut h = Head::open(db.clone(), 1_000_000).unwrap();
    h.truncate(1_000_000, 0);
    assert_eq!(all_of(&h, "stopped"), minutes);
    // The minutes expire: the series goes, from memory and the store.
    h.truncate(1_000_000, 2_000_000);
    assert!(all_of(&h, "stopped").is_empty());
    flush(&mut h, db.as_ref(), i64::MIN);
    assert!(db.all_series().unwrap().is_empty());
    assert!(db.rollups_of(1, i64::MIN, i64::MAX).unwrap().is_empty());
}
