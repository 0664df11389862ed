//! The series store in memory: every series by its labels, an inverted index
//! from `name=value` to series (postings) for selection by matchers, and per
//! series its sealed chunks plus the one being written.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

use steward_state::{ChunkRow, RollupRow, SeriesChunks, StateError};

use super::chunk::{AppendError, Chunk};

/// Samples per chunk before it is sealed (as Prometheus's head does).
pub const CHUNK_SAMPLES: usize = 120;

/// A series' labels, sorted by name, `__name__` among them.
pub type Labels = Vec<(Arc<str>, Arc<str>)>;

/// Series with their samples, as [`Head::select`] finds them.
pub type Selected = Vec<(Labels, Vec<(i64, f64)>)>;

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
    /// Written to the store as it is.
    persisted: bool,
}

impl Sealed {
    /// A chunk that was being written, sealed as it is (not yet written to
    /// the store).
    fn of(open: &Chunk) -> Sealed {
        let (min_t, max_t) = open.range().unwrap_or_default();
        Sealed {
            min_t,
            max_t,
            count: open.len() as u16,
            bytes: open.bytes().into(),
            persisted: false,
        }
    }
}

#[derive(Debug)]
struct Series {
    /// Never reused (unlike its slot): what a flush checks before recording.
    uid: u64,
    /// Its labels as [`Symbols`]: name, value, name, value, … sorted by name.
    labels: Box<[u32]>,
    sealed: Vec<Sealed>,
    open: Chunk,
    /// Its number in the store (given when it is made, with a store behind).
    db: Option<i64>,
    /// Written to the store under that number.
    stored: bool,
    /// The end of the newest chunk held in the store only: every chunk in
    /// memory ends later (samples are appended in time order), every chunk
    /// ending there or before is read from the store.
    cold_max: Option<i64>,
}

impl Series {
    fn new(uid: u64, labels: Box<[u32]>) -> Series {
        Series {
            uid,
            labels,
            sealed: Vec::new(),
            open: Chunk::new(),
            db: None,
            stored: false,
            cold_max: None,
        }
    }
}

/// Identifies a series in a [`Head`] (valid until [`Head::truncate`] drops it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SeriesRef(u32);

/// The series store: every series and its recent chunks in memory; with a
/// [`SeriesChunks`] behind it, older chunks read from there.
#[derive(Default)]
pub struct Head {
    /// Where flushed chunks are, if anywhere.
    cold: Option<Arc<dyn SeriesChunks>>,
    symbols: Symbols,
    series: Vec<Option<Series>>,
    free: Vec<u32>,
    /// Every series by the hash of its labels (the table holds only the
    /// slot; the hash is made again from the labels when it grows).
    by_hash: hashbrown::HashTable<u32>,
    hasher: foldhash::fast::RandomState,
    /// `(name, value)` symbols → the series carrying them, in slot order.
    postings: HashMap<(u32, u32), Vec<u32>>,
    /// Counts removals of series: a [`SeriesRef`] kept across a change of
    /// generation may name another series.
    generation: u64,
    /// Store numbers of series removed since the last flush (which deletes
    /// them from the store).
    dropped: Vec<i64>,
    next_uid: u64,
    /// The store number the next series gets.
    next_db: i64,
    /// Samples kept for readers (see [`Head::add_tap`]).
    taps: Vec<Tap>,
    /// Raw samples before this time are gone (retention): older ranges
    /// are read from the store's per-minute rollups.
    raw_from: Option<i64>,
    /// Most series scrapes may make (0: no limit).
    series_limit: usize,
}

/// Samples appended, kept for one reader.
#[derive(Debug, Default)]
struct Tap {
    name: String,
    samples: Vec<(u32, u64, i64, f64)>,
    capacity: usize,
    lost: u64,
}

/// Label names and values, each string held once and known by a number
/// (a series' labels are a few numbers, not a few shared pointers), dropped
/// when the last series using it goes.
#[derive(Default)]
struct Symbols {
    strings: Vec<Option<Arc<str>>>,
    uses: Vec<u32>,
    ids: HashMap<Arc<str>, u32>,
    free: Vec<u32>,
}

impl Symbols {
    fn get(&self, id: u32) -> &Arc<str> {
        self.strings[id as usize]
            .as_ref()
            .expect("a symbol in use is held")
    }

    fn str(&self, id: u32) -> &str {
        self.get(id)
    }

    fn id(&self, s: &str) -> Option<u32> {
        self.ids.get(s).copied()
    }

    /// The number of `s`, counting one more use.
    fn intern(&mut self, s: &str) -> u32 {
        if let Some(&id) = self.ids.get(s) {
            self.uses[id as usize] += 1;
            return id;
        }
        let a: Arc<str> = Arc::from(s);
        let id = match self.free.pop() {
            Some(id) => {
                self.strings[id as usize] = Some(a.clone());
                self.uses[id as usize] = 1;
                id
            }
            None => {
                self.strings.push(Some(a.clone()));
                self.uses.push(1);
                (self.strings.len() - 1) as u32
            }
        };
        self.ids.insert(a, id);
        id
    }

    /// One use fewer; the string goes with its last.
    fn release(&mut self, id: u32) {
        let uses = &mut self.uses[id as usize];
        *uses -= 1;
        if *uses == 0
            && let Some(a) = self.strings[id as usize].take()
        {
            self.ids.remove(&a);
            self.free.push(id);
        }
    }
}

/// The hash a series is found by: of its label names and values in order.
fn hash_pairs<'a>(
    hasher: &foldhash::fast::RandomState,
    pairs: impl Iterator<Item = (&'a str, &'a str)>,
) -> u64 {
    let mut h = hasher.build_hasher();
    for (n, v) in pairs {
        n.hash(&mut h);
        v.hash(&mut h);
    }
    h.finish()
}

/// A series' labels as strings.
fn pairs_of<'a>(
    symbols: &'a Symbols,
    labels: &'a [u32],
) -> impl Iterator<Item = (&'a str, &'a str)> {
    labels
        .chunks_exact(2)
        .map(|p| (symbols.str(p[0]), symbols.str(p[1])))
}

impl Head {
    /// An empty store.
    pub fn new() -> Head {
        Head::default()
    }

    /// The store as `chunks` holds it: every series; in memory the sealed
    /// chunks ending at or after `memory_from`, and the open chunks of the
    /// last flush's snapshot (appended to from there). Older chunks stay in
    /// `chunks` and are read from there by [`Head::select`].
    pub fn open(chunks: Arc<dyn SeriesChunks>, memory_from: i64) -> Result<Head, StateError> {
        let mut h = Head {
            next_db: 1,
            ..Head::new()
        };
        let mut by_db: HashMap<i64, u32> = HashMap::new();
        for (id, json) in chunks.all_series()? {
            let Ok(pairs) = serde_json::from_str::<Vec<(String, String)>>(&json) else {
                tracing::warn!(
                    series = id,
                    "unreadable labels in the metrics store; series skipped"
                );
                continue;
            };
            let refs: Vec<(&str, &str)> = pairs
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            if !refs.windows(2).all(|w| w[0].0 < w[1].0) {
                continue;
            }
            let r = h.series_ref(&refs);
            if let Some(Some(s)) = h.series.get_mut(r.0 as usize) {
                s.db = Some(id);
                s.stored = true;
            }
            by_db.insert(id, r.0);
            h.next_db = h.next_db.max(id + 1);
        }
        for (id, max_t) in chunks.newest_before(memory_from)? {
            if let Some(Some(s)) = by_db.get(&id).map(|&i| &mut h.series[i as usize]) {
                s.cold_max = Some(max_t);
            }
        }
        for c in chunks.chunks_since(memory_from)? {
            if let Some(Some(s)) = by_db.get(&c.series).map(|&x| &mut h.series[x as usize]) {
                s.sealed.push(Sealed {
                    min_t: c.min_t,
                    max_t: c.max_t,
                    count: c.count,
                    bytes: c.data.into(),
                    persisted: true,
                });
            }
        }
        if let Some(snapshot) = chunks.open_chunks()? {
            for e in OpenEntries::new(&snapshot) {
                let Some(Some(s)) = by_db.get(&e.series).map(|&x| &mut h.series[x as usize]) else {
                    continue;
                };
                // Only what follows the series' sealed chunks (a snapshot
                // older than them has nothing they do not).
                let newest = s.sealed.last().map(|c| c.max_t).or(s.cold_max);
                if newest.is_some_and(|n| e.min_t <= n) {
                    continue;
                }
                let mut open = Chunk::new();
                for (t, v) in Chunk::decode(e.bytes, usize::from(e.count)) {
                    let _ = open.append(t, v);
                }
                s.open = open;
            }
        }
        // A series with nothing left but its minutes (its chunks gone with
        // the raw retention): kept to be found by, as if its newest sample
        // were just before `memory_from` (so until the minutes expire).
        for s in h.series.iter_mut().flatten() {
            if s.stored && s.sealed.is_empty() && s.open.is_empty() && s.cold_max.is_none() {
                s.cold_max = Some(memory_from.saturating_sub(1));
            }
        }
        h.cold = Some(chunks);
        Ok(h)
    }

    /// A series' labels, as the store's readers take them.
    fn labels_of(&self, s: &Series) -> Labels {
        s.labels
            .chunks_exact(2)
            .map(|p| {
                (
                    self.symbols.get(p[0]).clone(),
                    self.symbols.get(p[1]).clone(),
                )
            })
            .collect()
    }

    /// The series with exactly these labels (sorted by name), if there is one.
    pub fn find(&self, labels: &[(&str, &str)]) -> Option<SeriesRef> {
        let h = hash_pairs(&self.hasher, labels.iter().copied());
        self.by_hash
            .find(h, |&id| {
                self.series[id as usize].as_ref().is_some_and(|s| {
                    s.labels.len() == 2 * labels.len()
                        && pairs_of(&self.symbols, &s.labels).eq(labels.iter().copied())
                })
            })
            .map(|&id| SeriesRef(id))
    }

    /// The series with exactly these labels (sorted by name), created when new.
    pub fn series_ref(&mut self, labels: &[(&str, &str)]) -> SeriesRef {
        debug_assert!(
            labels.windows(2).all(|w| w[0].0 < w[1].0),
            "labels sorted, unique"
        );
        if let Some(r) = self.find(labels) {
            return r;
        }
        let h = hash_pairs(&self.hasher, labels.iter().copied());
        let interned: Box<[u32]> = labels
            .iter()
            .flat_map(|(n, v)| [*n, *v])
            .map(|x| self.symbols.intern(x))
            .collect();
        self.next_uid += 1;
        let mut series = Series::new(self.next_uid, interned.clone());
        if self.cold.is_some() {
            series.db = Some(self.next_db);
            self.next_db += 1;
        }
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
        let Head {
            by_hash,
            series,
            symbols,
            hasher,
            ..
        } = self;
        by_hash.insert_unique(h, id, |&id| match &series[id as usize] {
            Some(s) => hash_pairs(hasher, pairs_of(symbols, &s.labels)),
            None => 0,
        });
        for pair in interned.chunks_exact(2) {
            let list = self.postings.entry((pair[0], pair[1])).or_default();
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
        // The open chunk refuses what is older than its newest sample;
        // when it is empty, the newest sealed chunk (in memory or, after
        // that, in the store) sets the floor.
        if s.open.is_empty()
            && let Some(newest) = s.sealed.last().map(|c| c.max_t).or(s.cold_max)
            && t <= newest
        {
            return Err(AppendError::OutOfOrder { t, newest });
        }
        s.open.append(t, v)?;
        let uid = s.uid;
        if s.open.len() >= CHUNK_SAMPLES {
            let full = std::mem::replace(&mut s.open, Chunk::new());
            s.sealed.push(Sealed::of(&full));
        }
        for tap in &mut self.taps {
            if tap.samples.len() < tap.capacity {
                tap.samples.push((r.0, uid, t, v));
            } else {
                tap.lost += 1;
            }
        }
        Ok(())
    }

    /// The tap named `name`, made if new: from then on every sample appended
    /// is also kept, up to `capacity` at a time, for [`Head::take_tap`]
    /// (remote write reads here; a reader started again finds its tap with
    /// what it missed). Returns its number.
    pub fn add_tap(&mut self, name: &str, capacity: usize) -> usize {
        if let Some(i) = self.taps.iter().position(|t| t.name == name) {
            return i;
        }
        self.taps.push(Tap {
            name: name.to_string(),
            samples: Vec::new(),
            capacity: capacity.max(1),
            lost: 0,
        });
        self.taps.len() - 1
    }

    /// What a tap kept since it was last taken: (series slot, series uid,
    /// time, value) in the order appended, and how many it had no room for.
    pub fn take_tap(&mut self, tap: usize) -> (Vec<(u32, u64, i64, f64)>, u64) {
        match self.taps.get_mut(tap) {
            Some(t) => (std::mem::take(&mut t.samples), std::mem::take(&mut t.lost)),
            None => (Vec::new(), 0),
        }
    }

    /// The labels of the series in `slot`, if it is still the one with `uid`.
    pub fn labels_at(&self, slot: u32, uid: u64) -> Option<Labels> {
        match self.series.get(slot as usize) {
            Some(Some(s)) if s.uid == uid => Some(self.labels_of(s)),
            _ => None,
        }
    }

    /// The series matching every matcher, with their samples in `[mint, maxt]`
    /// (series without samples there are left out), in label order. Samples
    /// no longer in memory are read from the store behind.
    pub fn select(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Selected, StateError> {
        let mut out: Selected = Vec::new();
        // Each matcher's label as a symbol (none: no series carries it).
        let names: Vec<Option<u32>> = matchers.iter().map(|m| self.symbols.id(&m.name)).collect();
        for s in self
            .candidates(matchers)
            .into_iter()
            .filter_map(|id| self.series[id as usize].as_ref())
            .filter(|s| {
                matchers.iter().zip(&names).all(|(m, name)| {
                    let v = name
                        .and_then(|n| s.labels.chunks_exact(2).find(|p| p[0] == n))
                        .map_or("", |p| self.symbols.str(p[1]));
                    m.matches(v)
                })
            })
        {
            let mut samples = Vec::new();
            // Before the raw retention: one sample a minute, the minute's
            // last, from the rollups; raw samples from there on.
            let mut mint = mint;
            if let (Some(cold), Some(db), Some(raw_from)) = (&self.cold, s.db, self.raw_from)
                && mint < raw_from
                && s.stored
            {
                let upto = maxt.min(raw_from - 1);
                samples.extend(
                    cold.rollups_of(db, mint, upto)?
                        .into_iter()
                        .map(|r| (r.last_t, r.last))
                        .filter(|(t, _)| *t >= mint && *t <= upto),
                );
                mint = raw_from;
            }
            if let (Some(cold), Some(db), Some(cold_max)) = (&self.cold, s.db, s.cold_max)
                && cold_max >= mint
                && mint <= maxt
            {
                for c in cold.chunks_of(db, mint, maxt, cold_max + 1)? {
                    samples.extend(
                        Chunk::decode(&c.data, usize::from(c.count))
                            .filter(|(t, _)| *t >= mint && *t <= maxt),
                    );
                }
            }
            if mint <= maxt {
                samples_in(s, mint, maxt, &mut samples);
            }
            if !samples.is_empty() {
                out.push((self.labels_of(s), samples));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Series worth looking at: the intersection of the postings of the
    /// equality matchers with a non-empty value; every series without one.
    fn candidates(&self, matchers: &[Matcher]) -> Vec<u32> {
        let mut lists: Vec<&Vec<u32>> = Vec::new();
        for m in matchers
            .iter()
            .filter(|m| m.op == MatchOp::Eq && !m.value.is_empty())
        {
            let key = self.symbols.id(&m.name).zip(self.symbols.id(&m.value));
            match key.and_then(|k| self.postings.get(&k)) {
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
    /// left with no sample at all — but a series whose chunks were written
    /// to the store behind stays (its labels, to be found by) while its
    /// per-minute rollups there may still hold a minute at or after
    /// `forget_before`. Returns the samples dropped.
    pub fn truncate(&mut self, before: i64, forget_before: i64) -> usize {
        self.raw_from = Some(self.raw_from.map_or(before, |r| r.max(before)));
        let has_store = self.cold.is_some();
        let mut dropped = 0;
        let mut gone = Vec::new();
        for (id, slot) in self.series.iter_mut().enumerate() {
            let Some(s) = slot else { continue };
            let keep = s.sealed.partition_point(|c| c.max_t < before);
            for c in s.sealed.drain(..keep) {
                dropped += usize::from(c.count);
                // Its minutes are in the store: the series' newest there.
                if c.persisted {
                    s.cold_max = Some(s.cold_max.map_or(c.max_t, |m| m.max(c.max_t)));
                }
            }
            if s.open.range().is_some_and(|(_, max_t)| max_t < before) {
                let old = std::mem::replace(&mut s.open, Chunk::new());
                if has_store && s.db.is_some() {
                    // A series that stopped mid-chunk: sealed, so the next
                    // flush writes its minutes (the chunk itself goes with
                    // the store's retention).
                    s.sealed.push(Sealed::of(&old));
                } else {
                    dropped += old.len();
                }
            }
            let minutes_left =
                has_store && s.stored && s.cold_max.is_some_and(|c| c >= forget_before);
            if s.cold_max.is_some_and(|c| c < before) && !minutes_left {
                s.cold_max = None;
            }
            if s.sealed.is_empty() && s.open.is_empty() && s.cold_max.is_none() {
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
        let h = hash_pairs(&self.hasher, pairs_of(&self.symbols, &s.labels));
        if let Ok(entry) = self.by_hash.find_entry(h, |&x| x == id) {
            entry.remove();
        }
        for pair in s.labels.chunks_exact(2) {
            let key = (pair[0], pair[1]);
            if let Some(list) = self.postings.get_mut(&key) {
                list.retain(|&x| x != id);
                if list.is_empty() {
                    self.postings.remove(&key);
                }
            }
        }
        for &symbol in &s.labels {
            self.symbols.release(symbol);
        }
        self.free.push(id);
        self.generation += 1;
        if let (Some(db), true) = (s.db, s.stored) {
            self.dropped.push(db);
        }
    }

    /// Bounds the series scrapes may make (0: none): a scrape that would go
    /// past it fails whole (see [`crate::scrape`]).
    pub fn set_series_limit(&mut self, limit: usize) {
        self.series_limit = limit;
    }

    /// The series limit (0: none).
    pub fn series_limit(&self) -> usize {
        self.series_limit
    }

    /// Whether `more` new series fit under the limit.
    pub fn has_room_for(&self, more: usize) -> bool {
        self.series_limit == 0 || self.series_count() + more <= self.series_limit
    }

    /// Changes whenever a series is dropped (see [`SeriesRef`]).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Series held.
    pub fn series_count(&self) -> usize {
        // Every slot holds a series but the freed ones.
        self.series.len() - self.free.len()
    }

    /// Every label name in use, sorted.
    pub fn label_names(&self) -> BTreeSet<Arc<str>> {
        self.postings
            .keys()
            .map(|&(n, _)| self.symbols.get(n).clone())
            .collect()
    }

    /// Every value of a label in use, sorted.
    pub fn label_values(&self, name: &str) -> BTreeSet<Arc<str>> {
        let Some(name) = self.symbols.id(name) else {
            return BTreeSet::new();
        };
        self.postings
            .keys()
            .filter(|&&(n, _)| n == name)
            .map(|&(_, v)| self.symbols.get(v).clone())
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
            *out.entry(self.symbols.get(*n).clone()).or_default() += ids.len();
        }
        out
    }
}

fn samples_in(s: &Series, mint: i64, maxt: i64, out: &mut Vec<(i64, f64)>) {
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
}

/// Adds a sealed chunk's samples, per minute, to `out` (staleness markers
/// left out: they are not values).
fn minutes(series: i64, bytes: &[u8], count: u16, out: &mut Vec<RollupRow>) {
    let mut cur: Option<RollupRow> = None;
    for (t, v) in Chunk::decode(bytes, usize::from(count)) {
        if v.to_bits() == crate::scrape::STALE_NAN {
            continue;
        }
        let minute = t - t.rem_euclid(60_000);
        match &mut cur {
            Some(r) if r.minute == minute => {
                r.min = r.min.min(v);
                r.max = r.max.max(v);
                r.sum += v;
                r.count += 1;
                r.last = v;
                r.last_t = t;
            }
            _ => {
                out.extend(cur.take());
                cur = Some(RollupRow {
                    series,
                    minute,
                    min: v,
                    max: v,
                    sum: v,
                    count: 1,
                    last: v,
                    last_t: t,
                });
            }
        }
    }
    out.extend(cur);
}

/// One open chunk in a snapshot.
struct OpenEntry<'a> {
    series: i64,
    min_t: i64,
    count: u16,
    bytes: &'a [u8],
}

/// The snapshot of open chunks: `SOC1`, then per chunk its series (i64),
/// first and last time (i64), samples (u16), length (u32) and bytes, all
/// little-endian. A truncated or foreign snapshot reads as far as it is whole.
const SNAPSHOT_MAGIC: &[u8; 4] = b"SOC1";

struct OpenEntries<'a> {
    rest: &'a [u8],
}

impl<'a> OpenEntries<'a> {
    fn new(snapshot: &'a [u8]) -> OpenEntries<'a> {
        OpenEntries {
            rest: snapshot.strip_prefix(SNAPSHOT_MAGIC).unwrap_or(&[]),
        }
    }
}

impl<'a> Iterator for OpenEntries<'a> {
    type Item = OpenEntry<'a>;
    fn next(&mut self) -> Option<OpenEntry<'a>> {
        let r = self.rest;
        if r.len() < 30 {
            return None;
        }
        let i64_at = |at: usize| i64::from_le_bytes(r[at..at + 8].try_into().expect("8 bytes"));
        let count = u16::from_le_bytes([r[24], r[25]]);
        let len = u32::from_le_bytes(r[26..30].try_into().expect("4 bytes")) as usize;
        let bytes = r.get(30..30 + len)?;
        self.rest = &r[30 + len..];
        Some(OpenEntry {
            series: i64_at(0),
            min_t: i64_at(8),
            count,
            bytes,
        })
    }
}

/// What a flush writes: taken under the store's lock, written without it.
///
/// Series are named by slot and uid: a slot freed and reused since the plan
/// holds another series, and is left alone when the flush is recorded.
#[derive(Debug, Default)]
pub struct Flush {
    /// Series not yet in the store: their number and where their labels,
    /// as JSON, are in `labels` (one buffer, not a string each); `new_in`
    /// says where each is in the head.
    new_series: Vec<(i64, std::ops::Range<usize>)>,
    labels: String,
    new_in: Vec<(u32, u64)>,
    /// Sealed chunks not yet written, as the store takes them; `sealed_in`
    /// says whose each is.
    sealed: Vec<ChunkRow>,
    sealed_in: Vec<(u32, u64)>,
    /// The snapshot of the open chunks, encoded (see [`SNAPSHOT_MAGIC`]).
    snapshot: Vec<u8>,
    /// Open chunks in it.
    open: usize,
    /// Store numbers of series dropped since the last flush.
    dropped: Vec<i64>,
}

impl Flush {
    /// Sealed chunks to write.
    pub fn sealed(&self) -> usize {
        self.sealed.len()
    }

    /// Open chunks in the snapshot.
    pub fn open(&self) -> usize {
        self.open
    }

    /// Writes it: new series, the sealed chunks, the snapshot of the open
    /// ones and the dropped series, in one transaction.
    /// The chunks' samples per minute are made as the store takes them (a
    /// chunk's at a time: a flush of every series' sealed chunks holds no
    /// more than their bytes).
    pub fn write(&self, store: &dyn SeriesChunks) -> Result<(), StateError> {
        let new: Vec<(i64, &str)> = self
            .new_series
            .iter()
            .map(|(id, at)| (*id, &self.labels[at.clone()]))
            .collect();
        let mut rollups = self.sealed.iter().flat_map(|c| {
            let mut minutes_of = Vec::new();
            minutes(c.series, &c.data, c.count, &mut minutes_of);
            minutes_of
        });
        store.flush(
            &new,
            &self.sealed,
            &mut rollups,
            &self.snapshot,
            &self.dropped,
        )
    }
}

impl Head {
    /// What the store needs to hold what this head holds: series without a
    /// number, sealed chunks not written, every open chunk, and the series
    /// dropped since the last flush. (The open chunks are copied whole each
    /// time: one snapshot, one row, however many series.)
    pub fn plan_flush(&mut self) -> Flush {
        let mut f = Flush {
            dropped: std::mem::take(&mut self.dropped),
            ..Flush::default()
        };
        // Sized first: grown by doubling, the copy of every open chunk
        // would briefly take up to twice its bytes.
        let size: usize = self
            .series
            .iter()
            .flatten()
            .filter(|s| s.db.is_some() && !s.open.is_empty())
            .map(|s| 30 + s.open.encoded_len())
            .sum();
        f.snapshot.reserve_exact(SNAPSHOT_MAGIC.len() + size);
        f.snapshot.extend_from_slice(SNAPSHOT_MAGIC);
        for (slot, s) in self.series.iter().enumerate() {
            let Some(s) = s else { continue };
            let Some(db) = s.db else { continue };
            let id = (slot as u32, s.uid);
            let unsealed = s.sealed.iter().any(|c| !c.persisted);
            if !s.stored && (unsealed || !s.open.is_empty()) {
                let pairs: Vec<(&str, &str)> = pairs_of(&self.symbols, &s.labels).collect();
                let from = f.labels.len();
                f.labels
                    .push_str(&serde_json::to_string(&pairs).unwrap_or_default());
                f.new_series.push((db, from..f.labels.len()));
                f.new_in.push(id);
            }
            for c in s.sealed.iter().filter(|c| !c.persisted) {
                f.sealed.push(ChunkRow {
                    series: db,
                    min_t: c.min_t,
                    max_t: c.max_t,
                    count: c.count,
                    data: c.bytes.to_vec(),
                });
                f.sealed_in.push(id);
            }
            if let Some((min_t, max_t)) = s.open.range() {
                let bytes = s.open.bytes();
                let out = &mut f.snapshot;
                out.extend_from_slice(&db.to_le_bytes());
                out.extend_from_slice(&min_t.to_le_bytes());
                out.extend_from_slice(&max_t.to_le_bytes());
                out.extend_from_slice(&(s.open.len() as u16).to_le_bytes());
                out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
                out.extend_from_slice(bytes);
                f.open += 1;
            }
        }
        f
    }

    /// Records how [`Flush::write`] went: written, as [`Head::flushed`];
    /// failed, as [`Head::unflushed`]. Returns the sealed chunks written.
    pub fn record_flush(
        &mut self,
        f: Flush,
        written: Result<(), StateError>,
        memory_from: i64,
    ) -> Result<usize, StateError> {
        match written {
            Ok(()) => {
                self.flushed(&f, memory_from);
                Ok(f.sealed())
            }
            Err(e) => {
                self.unflushed(f);
                Err(e)
            }
        }
    }

    /// A flush that failed: the series it was to delete are deleted by the
    /// next.
    pub fn unflushed(&mut self, f: Flush) {
        self.dropped.extend(f.dropped);
    }

    /// Records what [`Flush::write`] wrote (for series still there), then
    /// lets go of the memory of written chunks ending before `memory_from`.
    pub fn flushed(&mut self, f: &Flush, memory_from: i64) {
        for (slot, uid) in &f.new_in {
            if let Some(Some(s)) = self.series.get_mut(*slot as usize)
                && s.uid == *uid
            {
                s.stored = true;
            }
        }
        for ((r, uid), row) in f.sealed_in.iter().zip(&f.sealed) {
            if let Some(Some(s)) = self.series.get_mut(*r as usize)
                && s.uid == *uid
                && let Some(c) = s.sealed.iter_mut().find(|c| c.min_t == row.min_t)
            {
                c.persisted = true;
            }
        }
        if self.cold.is_none() {
            return;
        }
        for s in self.series.iter_mut().flatten() {
            let keep = s
                .sealed
                .iter()
                .position(|c| !c.persisted || c.max_t >= memory_from)
                .unwrap_or(s.sealed.len());
            if keep > 0 {
                let last = s.sealed[keep - 1].max_t;
                s.sealed.drain(..keep);
                s.cold_max = Some(last);
            }
        }
    }
}
