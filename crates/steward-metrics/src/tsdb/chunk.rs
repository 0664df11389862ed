//! A chunk of one series' samples, compressed as the Gorilla paper describes
//! (Pelkonen et al., "Gorilla: A Fast, Scalable, In-Memory Time Series
//! Database", VLDB 2015, section 4.1): timestamps as deltas of deltas in
//! variable-width buckets, values as the XOR with the previous value, storing
//! only the meaningful bits. Samples on a regular scrape grid cost one bit
//! for the timestamp; an unchanged value one bit.
//!
//! One change from the paper, for the values exporters mostly write —
//! counters and gauges of whole numbers: a chunk whose first value is an
//! integer (below 2^53 in magnitude) stores its values as integers, each as
//! the change in its change, in the same kind of buckets as timestamps (a
//! counter growing at a steady rate costs one bit a sample, where its XOR
//! costs a dozen or more). The first value that is not an integer switches
//! the rest of the chunk to XOR. VictoriaMetrics stores whole-number values
//! the same way, as deltas of deltas.
//!
//! A chunk starts with a byte naming its value encoding (1: XOR, 2:
//! integers). Chunks written before that byte existed start with the top
//! byte of a 64-bit timestamp — zero for any time after 1970 and before
//! the year 10,000 — and are still read.
//!
//! Written here rather than taken from a crate: the encoders published
//! are either unmaintained (`tsz`, last released 2017), pre-release codecs
//! of a database's own (`nodedb-codec`), or batch column codecs (`pco`)
//! that cannot append a sample at a time to a chunk that is still open —
//! which is what a scrape does.

/// Appends bits to a byte vector, most significant bit first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct BitWriter {
    bytes: Vec<u8>,
    /// Bits used in the last byte (0 = the last byte is full or there is none).
    used: u8,
}

impl BitWriter {
    fn bit(&mut self, one: bool) {
        if self.used == 0 {
            self.bytes.push(0);
        }
        if one {
            let last = self.bytes.len() - 1;
            self.bytes[last] |= 0x80 >> self.used;
        }
        self.used = (self.used + 1) % 8;
    }

    /// The low `n` bits of `v` (n ≤ 64).
    fn bits(&mut self, v: u64, mut n: u8) {
        while n > 0 {
            if self.used == 0 {
                self.bytes.push(0);
            }
            let free = 8 - self.used;
            let take = free.min(n);
            let chunk = ((v >> (n - take)) & ((1u64 << take) - 1)) as u8;
            let last = self.bytes.len() - 1;
            self.bytes[last] |= chunk << (free - take);
            self.used = (self.used + take) % 8;
            n -= take;
        }
    }
}

impl BitWriter {
    /// A signed number in the first of `buckets` it fits (`0` alone for
    /// zero); false, and nothing written, when it fits none.
    fn bucketed(&mut self, v: i64, buckets: &[(u64, u8, u8)]) -> bool {
        if v == 0 {
            self.bit(false);
            return true;
        }
        match buckets.iter().find(|b| fits(v, b.2)) {
            Some(&(prefix, len, width)) => {
                self.bits(prefix, len);
                self.bits(v as u64, width);
                true
            }
            None => false,
        }
    }
}

/// Reads bits written by [`BitWriter`].
struct BitReader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl BitReader<'_> {
    fn bit(&mut self) -> Option<bool> {
        let byte = *self.bytes.get(self.pos / 8)?;
        let one = byte & (0x80 >> (self.pos % 8)) != 0;
        self.pos += 1;
        Some(one)
    }

    /// A number written by [`BitWriter::bucketed`]; `Some(None)` when the
    /// prefix is all ones past the last bucket (the caller's escape).
    fn bucketed(&mut self, buckets: &[(u64, u8, u8)]) -> Option<Option<i64>> {
        if !self.bit()? {
            return Some(Some(0));
        }
        // Past each bucket's prefix of ones, a 0 chooses it.
        for &(_, _, width) in buckets {
            if !self.bit()? {
                return Some(Some(sign_extend(self.bits(width)?, width)));
            }
        }
        Some(None)
    }

    fn bits(&mut self, n: u8) -> Option<u64> {
        if self.pos + usize::from(n) > self.bytes.len() * 8 {
            return None;
        }
        let mut v = 0u64;
        let mut n = n;
        while n > 0 {
            let byte = self.bytes[self.pos / 8];
            let offset = (self.pos % 8) as u8;
            let avail = 8 - offset;
            let take = avail.min(n);
            let chunk = (byte >> (avail - take)) & (((1u16 << take) - 1) as u8);
            v = (v << take) | u64::from(chunk);
            self.pos += usize::from(take);
            n -= take;
        }
        Some(v)
    }
}

/// Timestamp delta-of-delta buckets: (prefix bits, prefix length, value bits).
const BUCKETS: [(u64, u8, u8); 3] = [(0b10, 2, 14), (0b110, 3, 17), (0b1110, 4, 20)];

fn fits(v: i64, bits: u8) -> bool {
    let half = 1i64 << (bits - 1);
    -half < v && v <= half
}

/// A chunk being written: samples are appended in time order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Chunk {
    w: BitWriter,
    count: u16,
    first_t: i64,
    last_t: i64,
    last_delta: i64,
    last_v: u64,
    /// Values are written as integers (deltas of deltas), not XOR.
    ints: bool,
    /// The last value's change, in integer mode.
    last_v_delta: i64,
    leading: u8,
    trailing: u8,
}

/// The first byte of a chunk: how its values are written.
const TAG_XOR: u8 = 1;
const TAG_INT: u8 = 2;

/// Integer-value delta-of-delta buckets, as [`BUCKETS`]; `0b11110` + 64 bits
/// holds any other, `0b11111` + 64 bits is a value that is not an integer,
/// written whole, after which the chunk's values are XOR-encoded.
const INT_BUCKETS: [(u64, u8, u8); 3] = [(0b10, 2, 7), (0b110, 3, 14), (0b1110, 4, 32)];

/// Whether a value is stored exactly as an integer: whole, below 2^53 in
/// magnitude (where every integer is a float), and not negative zero.
fn as_int(v: f64) -> Option<i64> {
    const LIMIT: f64 = 9_007_199_254_740_992.0; // 2^53
    (v.fract() == 0.0 && v.abs() < LIMIT && !(v == 0.0 && v.is_sign_negative())).then_some(v as i64)
}

/// Zigzag: small magnitudes of either sign to small unsigned numbers.
fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(u: u64) -> i64 {
    ((u >> 1) as i64) ^ -((u & 1) as i64)
}

/// Why a sample was not appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    /// Older than the chunk's newest sample.
    #[error("sample at {t} is older than the newest, at {newest}")]
    OutOfOrder {
        /// The sample's time.
        t: i64,
        /// The newest time in the chunk.
        newest: i64,
    },
    /// At the newest sample's time with a different value.
    #[error("a different value for the same timestamp {t}")]
    Duplicate {
        /// The time.
        t: i64,
    },
    /// The chunk holds as many samples as it can count.
    #[error("the chunk is full")]
    Full,
}

impl Chunk {
    /// An empty chunk.
    pub fn new() -> Chunk {
        Chunk {
            leading: u8::MAX,
            ..Chunk::default()
        }
    }

    /// Samples in it.
    pub fn len(&self) -> usize {
        usize::from(self.count)
    }

    /// Whether it holds no sample.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The first and the last sample's time (`None` when empty).
    pub fn range(&self) -> Option<(i64, i64)> {
        (self.count > 0).then_some((self.first_t, self.last_t))
    }

    /// Bytes of encoded samples (what the chunk weighs when stored).
    pub fn encoded_len(&self) -> usize {
        self.w.bytes.len()
    }

    /// The encoded samples: [`Chunk::decode`] reads them back with the count.
    pub fn bytes(&self) -> &[u8] {
        &self.w.bytes
    }

    /// Appends a sample. A sample at the newest time with the same value is
    /// accepted and dropped (a target scraped twice within a millisecond);
    /// with another value it is refused, as Prometheus refuses it.
    pub fn append(&mut self, t: i64, v: f64) -> Result<(), AppendError> {
        let bits = v.to_bits();
        if self.count > 0 {
            if t < self.last_t {
                return Err(AppendError::OutOfOrder {
                    t,
                    newest: self.last_t,
                });
            }
            if t == self.last_t {
                return if bits == self.last_v {
                    Ok(())
                } else {
                    Err(AppendError::Duplicate { t })
                };
            }
        }
        if self.count == u16::MAX {
            return Err(AppendError::Full);
        }
        match self.count {
            0 => {
                let int = as_int(v);
                self.ints = int.is_some();
                self.w
                    .bits(u64::from(if self.ints { TAG_INT } else { TAG_XOR }), 8);
                self.write_varbits(zigzag(t));
                match int {
                    Some(i) => self.write_varbits(zigzag(i)),
                    None => self.w.bits(bits, 64),
                }
                self.first_t = t;
            }
            1 => {
                let delta = t - self.last_t;
                self.write_dod(delta);
                self.last_delta = delta;
                self.write_value(bits);
            }
            _ => {
                let delta = t - self.last_t;
                self.write_dod(delta - self.last_delta);
                self.last_delta = delta;
                self.write_value(bits);
            }
        }
        self.last_t = t;
        self.last_v = bits;
        self.count += 1;
        Ok(())
    }

    /// A number in as many bits as it needs, after 7 bits saying how many.
    fn write_varbits(&mut self, u: u64) {
        let n = (64 - u.leading_zeros()) as u8;
        self.w.bits(u64::from(n), 7);
        self.w.bits(u, n);
    }

    fn write_dod(&mut self, dod: i64) {
        if !self.w.bucketed(dod, &BUCKETS) {
            self.w.bits(0b1111, 4);
            self.w.bits(dod as u64, 64);
        }
    }

    fn write_value(&mut self, bits: u64) {
        if self.ints {
            let Some(i) = as_int(f64::from_bits(bits)) else {
                // Not an integer: written whole; XOR from here on.
                self.w.bits(0b11111, 5);
                self.w.bits(bits, 64);
                self.ints = false;
                self.leading = u8::MAX;
                return;
            };
            let last = f64::from_bits(self.last_v) as i64;
            let delta = i - last;
            let dod = delta - self.last_v_delta;
            self.last_v_delta = delta;
            if !self.w.bucketed(dod, &INT_BUCKETS) {
                self.w.bits(0b11110, 5);
                self.w.bits(dod as u64, 64);
            }
            return;
        }
        let xor = bits ^ self.last_v;
        if xor == 0 {
            self.w.bit(false);
            return;
        }
        self.w.bit(true);
        let leading = (xor.leading_zeros() as u8).min(31);
        let trailing = xor.trailing_zeros() as u8;
        if self.leading != u8::MAX && leading >= self.leading && trailing >= self.trailing {
            // Fits the previous window: only its meaningful bits.
            self.w.bit(false);
            let width = 64 - self.leading - self.trailing;
            self.w.bits(xor >> self.trailing, width);
        } else {
            self.w.bit(true);
            let width = 64 - leading - trailing;
            self.w.bits(u64::from(leading), 5);
            // 64 meaningful bits are written as 0 (6 bits hold 0..=63).
            self.w.bits(u64::from(width) & 63, 6);
            self.w.bits(xor >> trailing, width);
            self.leading = leading;
            self.trailing = trailing;
        }
    }

    /// The samples, in order.
    pub fn samples(&self) -> Decoder<'_> {
        Chunk::decode(&self.w.bytes, self.len())
    }

    /// Reads `count` samples from bytes written by a chunk.
    pub fn decode(bytes: &[u8], count: usize) -> Decoder<'_> {
        Decoder {
            r: BitReader { bytes, pos: 0 },
            left: count,
            read: 0,
            t: 0,
            delta: 0,
            v: 0,
            ints: false,
            v_delta: 0,
            leading: 0,
            trailing: 0,
        }
    }
}

/// Iterates a chunk's samples; stops early (and [`Decoder::corrupt`] says so)
/// at bytes that do not decode.
pub struct Decoder<'a> {
    r: BitReader<'a>,
    left: usize,
    read: usize,
    t: i64,
    delta: i64,
    v: u64,
    ints: bool,
    v_delta: i64,
    leading: u8,
    trailing: u8,
}

impl Decoder<'_> {
    /// Whether it stopped before the count because the bytes ran out.
    pub fn corrupt(&self) -> bool {
        self.left > 0
    }

    fn next_sample(&mut self) -> Option<(i64, f64)> {
        match self.read {
            0 => match self.r.bits(8)? as u8 {
                // Written before chunks had a tag: a 64-bit time, a value.
                0 => {
                    self.r.pos = 0;
                    self.t = self.r.bits(64)? as i64;
                    self.v = self.r.bits(64)?;
                }
                TAG_XOR => {
                    self.t = unzigzag(self.read_varbits()?);
                    self.v = self.r.bits(64)?;
                }
                TAG_INT => {
                    self.t = unzigzag(self.read_varbits()?);
                    self.v = (unzigzag(self.read_varbits()?) as f64).to_bits();
                    self.ints = true;
                }
                _ => return None,
            },
            1 => {
                self.delta = self.read_dod()?;
                self.t += self.delta;
                self.read_value()?;
            }
            _ => {
                self.delta += self.read_dod()?;
                self.t += self.delta;
                self.read_value()?;
            }
        }
        Some((self.t, f64::from_bits(self.v)))
    }

    fn read_varbits(&mut self) -> Option<u64> {
        let n = self.r.bits(7)? as u8;
        if n > 64 {
            return None;
        }
        self.r.bits(n)
    }

    fn read_dod(&mut self) -> Option<i64> {
        match self.r.bucketed(&BUCKETS)? {
            Some(dod) => Some(dod),
            None => Some(self.r.bits(64)? as i64),
        }
    }

    fn read_value(&mut self) -> Option<()> {
        if self.ints {
            let dod = match self.r.bucketed(&INT_BUCKETS)? {
                Some(dod) => dod,
                None if !self.r.bit()? => self.r.bits(64)? as i64,
                None => {
                    self.v = self.r.bits(64)?;
                    self.ints = false;
                    return Some(());
                }
            };
            self.v_delta = self.v_delta.wrapping_add(dod);
            let i = (f64::from_bits(self.v) as i64).wrapping_add(self.v_delta);
            self.v = (i as f64).to_bits();
            return Some(());
        }
        if !self.r.bit()? {
            return Some(());
        }
        if self.r.bit()? {
            self.leading = self.r.bits(5)? as u8;
            let mut width = self.r.bits(6)? as u8;
            if width == 0 {
                width = 64;
            }
            self.trailing = 64 - self.leading - width;
        }
        let width = 64 - self.leading - self.trailing;
        let bits = self.r.bits(width)?;
        self.v ^= bits << self.trailing;
        Some(())
    }
}

/// The low `bits` of `raw` as a signed number (the dod buckets hold
/// -2^(bits-1)+1 ..= 2^(bits-1), written in two's complement).
fn sign_extend(raw: u64, bits: u8) -> i64 {
    let shift = 64 - u32::from(bits);
    let v = ((raw << shift) as i64) >> shift;
    // The bucket's top value, 2^(bits-1), reads as its negative: the range
    // excludes -2^(bits-1), so that pattern means +2^(bits-1).
    if v == -(1i64 << (bits - 1)) { -v } else { v }
}

impl Iterator for Decoder<'_> {
    type Item = (i64, f64);

    fn next(&mut self) -> Option<(i64, f64)> {
        if self.left == 0 {
            return None;
        }
        let s = self.next_sample()?;
        self.left -= 1;
        self.read += 1;
        Some(s)
    }
}
