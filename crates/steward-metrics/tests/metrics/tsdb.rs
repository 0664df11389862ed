//! The time-series store: chunks read back exactly what was written (bits,
//! not approximately), grid-aligned samples compress to a fraction of a
//! byte, and selection by matchers agrees with a brute-force filter.

use std::collections::BTreeMap;

use proptest::prelude::*;
use steward_metrics::tsdb::chunk::{AppendError, Chunk};
use steward_metrics::tsdb::head::{CHUNK_SAMPLES, Head, MatchOp, Matcher};

fn roundtrip(samples: &[(i64, f64)]) {
    let mut c = Chunk::new();
    for &(t, v) in samples {
        c.append(t, v).unwrap();
    }
    let back: Vec<(i64, u64)> = c.samples().map(|(t, v)| (t, v.to_bits())).collect();
    let want: Vec<(i64, u64)> = samples.iter().map(|(t, v)| (*t, v.to_bits())).collect();
    assert_eq!(back, want);
    let again: Vec<(i64, u64)> = Chunk::decode(c.bytes(), c.len())
        .map(|(t, v)| (t, v.to_bits()))
        .collect();
    assert_eq!(again, want, "decoding the stored bytes gives the same");
}

#[test]
fn every_timestamp_bucket_and_value_window_reads_back() {
    // Deltas of deltas in each bucket and at each bucket's edges.
    let mut t = 1_700_000_000_000i64;
    let mut samples = vec![(t, 1.0)];
    let mut delta = 10_000;
    for dod in [
        0,
        1,
        -1,
        8191,
        8192,
        -8191,
        8193,
        65536,
        -65535,
        524288,
        524289,
        -524287,
        1 << 40,
        -(1 << 39),
        0,
    ] {
        delta += dod;
        t += delta.max(1);
        delta = delta.max(1);
        samples.push((t, samples.len() as f64 * 1.5));
    }
    roundtrip(&samples);
    // Values: equal, tiny and huge changes, signs, specials.
    let values = [
        0.0,
        -0.0,
        1.0,
        1.0,
        1.0000000000000002,
        f64::MAX,
        f64::MIN_POSITIVE,
        -3.5,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
        42.0,
        42.0,
        1e-300,
        7.0,
    ];
    let samples: Vec<(i64, f64)> = values
        .iter()
        .enumerate()
        .map(|(i, v)| (i as i64 * 15_000 - 60_000, *v))
        .collect();
    roundtrip(&samples);
}

#[test]
fn grid_aligned_samples_cost_a_fraction_of_a_byte() {
    let mut constant = Chunk::new();
    let mut counter = Chunk::new();
    let mut fractions = Chunk::new();
    for i in 0..120i64 {
        let t = 1_700_000_000_000 + i * 10_000;
        constant.append(t, 1.0).unwrap();
        counter.append(t, (i * 3) as f64).unwrap();
        fractions.append(t, i as f64 * 0.25).unwrap();
    }
    // A byte for the encoding, 7 + 42 bits for the first time and 7 + 2 for
    // the first value, 20 + 1 bits for the first interval, then one bit
    // for each timestamp on the grid and one for each value whose change
    // does not change: 323 bits.
    assert_eq!(constant.encoded_len(), 41);
    // A counter at a steady rate: its first change takes 9 bits, not 1.
    assert_eq!(counter.encoded_len(), 42);
    // Values that are not whole numbers are XOR-encoded, as in Gorilla.
    assert!(
        (fractions.encoded_len() as f64 / 120.0) < 2.0,
        "{} bytes for 120 samples",
        fractions.encoded_len()
    );
    assert!(fractions.encoded_len() > 2 * counter.encoded_len());
}

/// A chunk of whole numbers meets a fraction, a NaN, negative zero and
/// numbers past 2^53: it switches to XOR and every bit still reads back.
#[test]
fn integer_chunks_take_any_value_after_all() {
    let big = 9_007_199_254_740_992.0; // 2^53
    for odd in [0.5, f64::NAN, -0.0, big, -big, f64::INFINITY, 1e300] {
        let samples: Vec<(i64, f64)> = [1.0, 5.0, 9.0, odd, 13.0, 17.0, odd, 2.0]
            .iter()
            .enumerate()
            .map(|(i, v)| (i as i64 * 1000, *v))
            .collect();
        roundtrip(&samples);
    }
    // Changes in every bucket, at their edges, and past them.
    let mut v = 0i64;
    let mut delta = 0i64;
    let mut samples = vec![(0, 0.0)];
    for dod in [
        0,
        64,
        -63,
        65,
        8192,
        -8191,
        8193,
        1 << 31,
        -(1 << 31) + 1,
        1 << 32,
        -(1 << 40),
    ] {
        delta += dod;
        v += delta;
        samples.push((samples.len() as i64, v as f64));
    }
    roundtrip(&samples);
}

/// Chunks stored before chunks named their encoding (a 64-bit time, then a
/// 64-bit value) still read back.
#[test]
fn chunks_written_before_the_encoding_byte_still_read() {
    let t = 1_700_000_000_000i64;
    // Bits, most significant first: the time, the value 2.5, then the next
    // sample 10 s later — `110` and 10,000 in 17 bits — with the same value
    // (`0`).
    let mut bits = format!("{:064b}{:064b}110{:017b}0", t, 2.5f64.to_bits(), 10_000);
    while bits.len() % 8 != 0 {
        bits.push('0');
    }
    let bytes: Vec<u8> = bits
        .as_bytes()
        .chunks(8)
        .map(|b| u8::from_str_radix(std::str::from_utf8(b).unwrap(), 2).unwrap())
        .collect();
    let back: Vec<(i64, f64)> = Chunk::decode(&bytes, 2).collect();
    assert_eq!(back, [(t, 2.5), (t + 10_000, 2.5)]);
}

#[test]
fn late_and_conflicting_samples_are_refused() {
    let mut c = Chunk::new();
    c.append(1000, 1.0).unwrap();
    c.append(2000, 2.0).unwrap();
    assert_eq!(
        c.append(1500, 3.0),
        Err(AppendError::OutOfOrder {
            t: 1500,
            newest: 2000
        })
    );
    assert_eq!(c.append(2000, 9.0), Err(AppendError::Duplicate { t: 2000 }));
    // The same sample again is taken and dropped.
    c.append(2000, 2.0).unwrap();
    assert_eq!(c.len(), 2);
}

fn m(name: &str, op: MatchOp, value: &str) -> Matcher {
    Matcher::new(name, op, value).unwrap()
}

#[test]
fn series_seal_chunks_and_read_across_them_by_time() {
    let mut h = Head::new();
    let r = h.series_ref(&[("__name__", "up"), ("job", "api")]);
    for i in 0..(CHUNK_SAMPLES as i64 * 2 + 10) {
        h.append(r, i * 1000, i as f64).unwrap();
    }
    let all = h
        .select(&[m("__name__", MatchOp::Eq, "up")], i64::MIN, i64::MAX)
        .unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].1.len(), CHUNK_SAMPLES * 2 + 10);
    let some = h
        .select(&[m("job", MatchOp::Eq, "api")], 100_000, 130_000)
        .unwrap();
    let ts: Vec<i64> = some[0].1.iter().map(|(t, _)| *t).collect();
    assert_eq!(ts, (100..=130).map(|i| i * 1000).collect::<Vec<_>>());
    // A sealed chunk's end is the floor for the next sample, too.
    assert!(h.append(r, 5_000, 0.0).is_err());
    let (bytes, samples) = h.sample_bytes();
    assert_eq!(samples, CHUNK_SAMPLES * 2 + 10);
    assert!(bytes > 0);
}

#[test]
fn truncation_drops_old_chunks_and_forgotten_series() {
    let mut h = Head::new();
    let old = h.series_ref(&[("__name__", "gone"), ("pod", "a")]);
    let live = h.series_ref(&[("__name__", "kept"), ("pod", "b")]);
    for i in 0..CHUNK_SAMPLES as i64 {
        h.append(old, i, 1.0).unwrap();
        h.append(live, i, 1.0).unwrap();
    }
    h.append(live, 10_000, 2.0).unwrap();
    let dropped = h.truncate(5_000, 5_000);
    assert_eq!(dropped, CHUNK_SAMPLES * 2);
    assert_eq!(h.series_count(), 1);
    let pods: Vec<String> = h
        .label_values("pod")
        .iter()
        .map(|v| v.to_string())
        .collect();
    assert_eq!(pods, ["b"]);
    assert!(
        h.select(&[m("__name__", MatchOp::Eq, "gone")], 0, i64::MAX)
            .unwrap()
            .is_empty()
    );
    // A new series reuses the freed slot and is found by its labels.
    let again = h.series_ref(&[("__name__", "gone"), ("pod", "c")]);
    h.append(again, 20_000, 3.0).unwrap();
    let got = h
        .select(&[m("pod", MatchOp::Re, "b|c")], 0, i64::MAX)
        .unwrap();
    assert_eq!(got.len(), 2);
}

type Model = Vec<BTreeMap<String, String>>;

fn arb_series() -> impl Strategy<Value = Model> {
    proptest::collection::vec(
        proptest::collection::btree_map(
            prop_oneof![Just("__name__"), Just("job"), Just("pod"), Just("code")]
                .prop_map(String::from),
            prop_oneof![Just("a"), Just("b"), Just("ab"), Just("")].prop_map(String::from),
            1..4,
        )
        .prop_map(|mut m| {
            m.retain(|_, v| !v.is_empty());
            m.entry("__name__".into()).or_insert_with(|| "x".into());
            m
        }),
        1..30,
    )
}

fn arb_matcher() -> impl Strategy<Value = (String, MatchOp, String)> {
    (
        prop_oneof![
            Just("__name__"),
            Just("job"),
            Just("pod"),
            Just("code"),
            Just("none")
        ],
        prop_oneof![
            Just(MatchOp::Eq),
            Just(MatchOp::Neq),
            Just(MatchOp::Re),
            Just(MatchOp::Nre)
        ],
        prop_oneof![
            Just("a"),
            Just("b"),
            Just(""),
            Just("a.*"),
            Just("b|ab"),
            Just(".+")
        ],
    )
        .prop_map(|(n, op, v)| (n.to_string(), op, v.to_string()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Mostly whole numbers, as exporters write them, with the odd
    /// fraction or special value among them.
    #[test]
    fn whole_numbers_and_the_odd_other_read_back_bit_for_bit(
        values in proptest::collection::vec(prop_oneof![
            8 => -1000i64..1000,
            4 => any::<i64>().prop_map(|v| v >> 11),
            1 => Just(i64::MIN),
        ], 1..300),
        odd in proptest::collection::vec(any::<u64>(), 300),
    ) {
        let samples: Vec<(i64, f64)> = values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let v = if *v == i64::MIN { f64::from_bits(odd[i]) } else { *v as f64 };
                (i as i64 * 10_000, v)
            })
            .collect();
        roundtrip(&samples);
    }

    #[test]
    fn any_samples_read_back_bit_for_bit(
        gaps in proptest::collection::vec(prop_oneof![1i64..20_000, 1i64..(1i64 << 45)], 0..300),
        values in proptest::collection::vec(any::<u64>(), 300),
        start in -(1i64 << 50)..(1i64 << 50),
    ) {
        let mut t = start;
        let mut samples = Vec::new();
        for (i, gap) in gaps.iter().enumerate() {
            samples.push((t, f64::from_bits(values[i])));
            t += gap;
        }
        roundtrip(&samples);
    }

    /// Selection by matchers is the brute-force filter over every series
    /// (a missing label reads as empty).
    #[test]
    fn selection_agrees_with_brute_force(series in arb_series(), matchers in proptest::collection::vec(arb_matcher(), 0..3)) {
        let mut h = Head::new();
        let mut model: Model = Vec::new();
        for labels in &series {
            let pairs: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let r = h.series_ref(&pairs);
            if h.append(r, 1000, 1.0).is_ok() && !model.contains(labels) {
                model.push(labels.clone());
            }
        }
        let ms: Vec<Matcher> = matchers.iter().map(|(n, op, v)| m(n, *op, v)).collect();
        let got: Vec<BTreeMap<String, String>> = h
            .select(&ms, 0, i64::MAX)
            .unwrap()
            .into_iter()
            .map(|(labels, _)| labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
            .collect();
        let mut want: Vec<BTreeMap<String, String>> = model
            .into_iter()
            .filter(|l| ms.iter().all(|m| m.matches(l.get(&m.name).map_or("", String::as_str))))
            .collect();
        want.sort_by(|a, b| {
            let a: Vec<(&String, &String)> = a.iter().collect();
            let b: Vec<(&String, &String)> = b.iter().collect();
            a.cmp(&b)
        });
        prop_assert_eq!(got, want);
    }
}
