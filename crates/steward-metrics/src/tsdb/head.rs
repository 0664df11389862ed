//! The series store in memory: every series by its labels, an inverted index
//! from `name=value` to series (postings) for selection by matchers, and per
//! series its sealed chunks plus the one being written.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use super::chunk::{AppendError, Chunk};

/// Samples per chunk before it is sealed (as Prometheus's head does).
pub const CHUNK_SAMPLES: usize = 120;

/// A series' labels, sorted by name, `__name__` among them.
pub type Labels = Vec<(Arc<str>, Arc<str>)>;

/// How a matcher compares a label's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchOp {
    /// `=`
    Eq,
    /// `!=`
    Neq,
    /// `=~` (the whole value)
    Re,
    /// `!~` (the whole value)
    Nre,
}

/// A label matcher, as in a PromQL selector. A series without the label
/// is matched as if its value were empty.
#[derive(Debug, Clone)]
pub struct Matcher {
    /// The label.
    pub name: String,
    /// How.
    pub op: MatchOp,
    /// Against what.
    pub value: String,
    re: Option<regex::Regex>,
}

impl Matcher {
    /// A matcher; a regular expression must match the whole value.
    pub fn new(name: &str, op: MatchOp, value: &str) -> Result<Matcher, regex::Error> {
        let re = match op {
            MatchOp::Re | MatchOp::Nre => Some(regex::Regex::new(&format!("^(?s:{value})$"))?),
            _ => None,
        };
        Ok(Matcher {
            name: name.to_string(),
            op,
            value: value.to_string(),
            re,
        })
    }

    /// Whether `value` (empty for a missing label) matches.
    pub fn matches(&self, value: &str) -> bool {
        match self.op {
            MatchOp::Eq => value == self.value,
            MatchOp::Neq => value != self.value,
            MatchOp::Re => self.re.as_ref().is_some_and(|r| r.is_match(value)),
            MatchOp::Nre => !self.re.as_ref().is_some_and(|r| r.is_match(value)),
        }
    }
}

/// A sealed chunk: its bytes and what they hold.
#[derive(Debug, Clone)]
struct Sealed {
    min_t: i64,
    max_t: i64,
    count: u16,
    bytes: Box<[u8]>,
}

#[derive(Debug)]
struct Series {
    labels: Labels,
    sealed: Vec<Sealed>,
    open: Chunk,
}

/// Identifies a series in a [`Head`] (valid until [`Head::truncate`] drops it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SeriesRef(u32);

/// The in-memory series store.
#[derive(Debug, Default)]
pub struct Head {
    strings: HashSet<Arc<str>>,
    series: Vec<Option<Series>>,
    free: Vec<u32>,
    by_hash: HashMap<u64, Vec<u32>>,
    postings: HashMap<(Arc<str>, Arc<str>), Vec<u32>>,
    /// Counts removals of series: a [`SeriesRef`] kept across a change of
    /// generation may name another series.
    generation: u64,
}

fn labels_hash(labels: &[(&str, &str)]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (n, v) in labels {
        n.hash(&mut h);
        v.hash(&mut h);
    }
    h.finish()
}

impl Head {
    /// An empty store.
    pub fn new() -> Head {
        Head::default()
    }

    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.strings.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.strings.insert(a.clone());
        a
    }

    /// The series with exactly these labels (sorted by name), created when new.
    pub fn series_ref(&mut self, labels: &[(&str, &str)]) -> SeriesRef {
        debug_assert!(
            labels.windows(2).all(|w| w[0].0 < w[1].0),
            "labels sorted, unique"
        );
        let h = labels_hash(labels);
        if let Some(ids) = self.by_hash.get(&h) {
            for &id in ids {
                if let Some(s) = &self.series[id as usize]
                    && s.labels.len() == labels.len()
                    && s.labels
                        .iter()
                        .zip(labels)
                        .all(|((a, b), (c, d))| &**a == *c && &**b == *d)
                {
                    return SeriesRef(id);
                }
            }
        }
        let interned: Labels = labels
            .iter()
            .map(|(n, v)| (self.intern(n), self.intern(v)))
            .collect();
        let series = Series {
            labels: interned.clone(),
            sealed: Vec::new(),
            open: Chunk::new(),
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.series[id as usize] = Some(series);
                id
            }
            None => {
                self.series.push(Some(series));
                (self.series.len() - 1) as u32
            }
        };
        self.by_hash.entry(h).or_default().push(id);
        for pair in interned {
            let list = self.postings.entry(pair).or_default();
            // Ids are mostly increasing; a reused id is inserted in order.
            match list.last() {
                Some(&last) if last > id => {
                    let at = list.partition_point(|&x| x < id);
                    list.insert(at, id);
                }
                _ => list.push(id),
            }
        }
        SeriesRef(id)
    }

    /// Appends a sample to a series; seals its chunk at [`CHUNK_SAMPLES`].
    pub fn append(&mut self, r: SeriesRef, t: i64, v: f64) -> Result<(), AppendError> {
        let Some(Some(s)) = self.series.get_mut(r.0 as usize) else {
            return Ok(());
        };
        if let Some(last) = s.sealed.last()
            && s.open.is_empty()
            && t <= last.max_t
        {
            return Err(AppendError::OutOfOrder {
                t,
                newest: last.max_t,
            });
        }
        s.open.append(t, v)?;
        if s.open.len() >= CHUNK_SAMPLES {
            let full = std::mem::replace(&mut s.open, Chunk::new());
            let (min_t, max_t) = full.range().unwrap_or_default();
            s.sealed.push(Sealed {
                min_t,
                max_t,
                count: full.len() as u16,
                bytes: full.bytes().into(),
            });
        }
        Ok(())
    }

    /// The series matching every matcher, with their samples in `[mint, maxt]`
    /// (series without samples there are left out), in label order.
    pub fn select(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Vec<(Labels, Vec<(i64, f64)>)> {
        let mut out: Vec<(Labels, Vec<(i64, f64)>)> = self
            .candidates(matchers)
            .into_iter()
            .filter_map(|id| self.series[id as usize].as_ref())
            .filter(|s| {
                matchers.iter().all(|m| {
                    let v = s
                        .labels
                        .iter()
                        .find(|(n, _)| **n == *m.name)
                        .map_or("", |(_, v)| &**v);
                    m.matches(v)
                })
            })
            .filter_map(|s| {
                let samples = samples_in(s, mint, maxt);
                (!samples.is_empty()).then(|| (s.labels.clone(), samples))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Series worth looking at: the intersection of the postings of the
    /// equality matchers with a non-empty value; every series without one.
    fn candidates(&self, matchers: &[Matcher]) -> Vec<u32> {
        let mut lists: Vec<&Vec<u32>> = Vec::new();
        for m in matchers
            .iter()
            .filter(|m| m.op == MatchOp::Eq && !m.value.is_empty())
        {
            let key = (
                Arc::<str>::from(m.name.as_str()),
                Arc::<str>::from(m.value.as_str()),
            );
            match self.postings.get(&key) {
                Some(l) => lists.push(l),
                None => return Vec::new(),
            }
        }
        if lists.is_empty() {
            return (0..self.series.len() as u32).collect();
        }
        lists.sort_by_key(|l| l.len());
        let mut acc: Vec<u32> = lists[0].clone();
        for l in &lists[1..] {
            acc.retain(|id| l.binary_search(id).is_ok());
        }
        acc
    }

    /// Drops every sealed chunk that ends before `before`, and every series
    /// left with no sample at all. Returns the samples dropped.
    pub fn truncate(&mut self, before: i64) -> usize {
        let mut dropped = 0;
        let mut gone = Vec::new();
        for (id, slot) in self.series.iter_mut().enumerate() {
            let Some(s) = slot else { continue };
            let keep = s.sealed.partition_point(|c| c.max_t < before);
            dropped += s
                .sealed
                .drain(..keep)
                .map(|c| usize::from(c.count))
                .sum::<usize>();
            let open_old = s.open.range().is_some_and(|(_, max)| max < before);
            if open_old {
                dropped += s.open.len();
                s.open = Chunk::new();
            }
            if s.sealed.is_empty() && s.open.is_empty() {
                gone.push(id as u32);
            }
        }
        for id in gone {
            self.remove(id);
        }
        dropped
    }

    fn remove(&mut self, id: u32) {
        let Some(s) = self.series[id as usize].take() else {
            return;
        };
        let pairs: Vec<(&str, &str)> = s.labels.iter().map(|(n, v)| (&**n, &**v)).collect();
        let h = labels_hash(&pairs);
        if let Some(ids) = self.by_hash.get_mut(&h) {
            ids.retain(|&x| x != id);
            if ids.is_empty() {
                self.by_hash.remove(&h);
            }
        }
        for pair in s.labels {
            if let Some(list) = self.postings.get_mut(&pair) {
                list.retain(|&x| x != id);
                if list.is_empty() {
                    self.postings.remove(&pair);
                }
            }
        }
        self.free.push(id);
        self.generation += 1;
        // Strings no series uses any more are dropped with their last Arc
        // outside the interner.
        self.strings.retain(|s| Arc::strong_count(s) > 1);
    }

    /// Changes whenever a series is dropped (see [`SeriesRef`]).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Series held.
    pub fn series_count(&self) -> usize {
        self.series.iter().filter(|s| s.is_some()).count()
    }

    /// Every label name in use, sorted.
    pub fn label_names(&self) -> BTreeSet<Arc<str>> {
        self.postings.keys().map(|(n, _)| n.clone()).collect()
    }

    /// Every value of a label in use, sorted.
    pub fn label_values(&self, name: &str) -> BTreeSet<Arc<str>> {
        self.postings
            .keys()
            .filter(|(n, _)| &**n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Encoded bytes of samples held (sealed and open chunks), and samples.
    pub fn sample_bytes(&self) -> (usize, usize) {
        let mut bytes = 0;
        let mut samples = 0;
        for s in self.series.iter().flatten() {
            for c in &s.sealed {
                bytes += c.bytes.len();
                samples += usize::from(c.count);
            }
            bytes += s.open.encoded_len();
            samples += s.open.len();
        }
        (bytes, samples)
    }

    /// Per label name, how many series carry each value (for cardinality
    /// reports).
    pub fn cardinality(&self) -> BTreeMap<Arc<str>, usize> {
        let mut out: BTreeMap<Arc<str>, usize> = BTreeMap::new();
        for ((n, _), ids) in &self.postings {
            *out.entry(n.clone()).or_default() += ids.len();
        }
        out
    }
}

fn samples_in(s: &Series, mint: i64, maxt: i64) -> Vec<(i64, f64)> {
    let mut out = Vec::new();
    for c in s
        .sealed
        .iter()
        .filter(|c| c.max_t >= mint && c.min_t <= maxt)
    {
        out.extend(
            Chunk::decode(&c.bytes, usize::from(c.count)).filter(|(t, _)| *t >= mint && *t <= maxt),
        );
    }
    if let Some((min, max)) = s.open.range()
        && max >= mint
        && min <= maxt
    {
        out.extend(s.open.samples().filter(|(t, _)| *t >= mint && *t <= maxt));
    }
    out
}
