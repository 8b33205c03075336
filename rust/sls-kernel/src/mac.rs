//! HMAC keys (RFC 2104) over SHA-1/SHA-256/SHA-512, prepared once and reused.
//!
//! A prepared key holds the HMAC state after the inner and outer key pads were absorbed, so
//! each further MAC costs only the message's compressions. The states are key-equivalent
//! secrets: they are zeroized on drop and never printed. A [`PaddedMessage`] does the same
//! for the message side of a batch: laid out and padded once, refilled in place per item.

use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::Error;
use crate::types::Execution;

/// The hash function under an HMAC or a PIN hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashAlgorithm {
    Sha1,
    Sha256,
    Sha512,
}

impl HashAlgorithm {
    /// Parses `"sha1"`, `"sha256"`, `"sha512"` (any case, with or without a dash).
    pub fn from_name(name: &str) -> Result<Self, Error> {
        match name.to_ascii_lowercase().replace('-', "").as_str() {
            "sha1" => Ok(HashAlgorithm::Sha1),
            "sha256" => Ok(HashAlgorithm::Sha256),
            "sha512" => Ok(HashAlgorithm::Sha512),
            _ => Err(Error::input(
                "algorithm",
                "must be one of \"sha1\", \"sha256\", \"sha512\"",
            )),
        }
    }

    /// The lower-case name used by the Python API.
    pub fn name(self) -> &'static str {
        match self {
            HashAlgorithm::Sha1 => "sha1",
            HashAlgorithm::Sha256 => "sha256",
            HashAlgorithm::Sha512 => "sha512",
        }
    }

    /// Digest length in bytes.
    pub const fn output_len(self) -> usize {
        match self {
            HashAlgorithm::Sha1 => 20,
            HashAlgorithm::Sha256 => 32,
            HashAlgorithm::Sha512 => 64,
        }
    }

    /// Plain digest of `data` (used for OCRA's PIN hash, RFC 6287 section 5.1 "P").
    pub fn digest(self, data: &[u8]) -> DigestOutput {
        let mut out = DigestOutput::empty(self.output_len());
        match self {
            HashAlgorithm::Sha1 => out.bytes[..20].copy_from_slice(&Sha1::digest(data)),
            HashAlgorithm::Sha256 => out.bytes[..32].copy_from_slice(&Sha256::digest(data)),
            HashAlgorithm::Sha512 => out.bytes[..64].copy_from_slice(&Sha512::digest(data)),
        }
        out
    }
}

/// A digest or MAC value of up to 64 bytes, wiped when dropped.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct DigestOutput {
    bytes: [u8; 64],
    len: usize,
}

impl DigestOutput {
    fn empty(len: usize) -> Self {
        DigestOutput {
            bytes: [0; 64],
            len,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl core::fmt::Debug for DigestOutput {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "DigestOutput({} bytes, redacted)", self.len)
    }
}

/// FIPS 180-4 initial hash values (sections 5.3.1, 5.3.3 and 5.3.5).
const SHA1_IV: [u32; 5] = [0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476, 0xc3d2e1f0];
const SHA256_IV: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];
const SHA512_IV: [u64; 8] = [
    0x6a09e667f3bcc908,
    0xbb67ae8584caa73b,
    0x3c6ef372fe94f82b,
    0xa54ff53a5f1d36f1,
    0x510e527fade682d1,
    0x9b05688c2b3e6c1f,
    0x1f83d9abfb41bd6b,
    0x5be0cd19137e2179,
];

/// Messages up to this size are padded on the stack; longer ones (never OCRA's usual
/// inputs) use the heap.
const STACK_MESSAGE: usize = 512;

/// A hash function's chaining state, driven block by block through RustCrypto's
/// compression functions (`sha1::block_api::compress`, `sha2::block_api::compress256/512`).
trait ChainingState: Copy + Zeroize {
    /// Block size in bytes.
    const BLOCK: usize;
    /// Bytes of the message-length field in the final block.
    const LENGTH_FIELD: usize;
    /// Digest size in bytes.
    const OUTPUT: usize;
    const IV: Self;
    /// Absorbs whole blocks (`blocks.len()` is a multiple of `BLOCK`).
    fn compress(&mut self, blocks: &[u8]);
    /// Writes the digest (big-endian words) into `out[..OUTPUT]`.
    fn write_digest(&self, out: &mut [u8]);
    /// The first and last words folded together: reading them touches every cache line
    /// the state lies on.
    fn edge_words(&self) -> u64;
    /// RFC 4226 section 5.3 dynamic truncation of the digest, read from the state words:
    /// the digest never needs to be written out as bytes.
    fn dynamic_truncation(&self) -> u32;
    /// The outer hash's only block: room for the inner digest, then 0x80 and the bit
    /// length of (opad block + digest) (FIPS 180-4 section 5.1).
    const OUTER_PADDING: [u8; 128] = outer_padding(Self::BLOCK, Self::OUTPUT, Self::LENGTH_FIELD);
}

const fn outer_padding(block: usize, output: usize, length_field: usize) -> [u8; 128] {
    let mut padding = [0u8; 128];
    padding[output] = 0x80;
    let bits = (((block + output) * 8) as u128).to_be_bytes();
    let mut i = 0;
    while i < length_field {
        padding[block - length_field + i] = bits[16 - length_field + i];
        i += 1;
    }
    padding
}

/// RFC 4226 section 5.3 on a digest held as big-endian 32-bit words: the low nibble of the
/// last byte picks a byte offset (0 to 15), and the 31 bits from there are the value.
#[inline]
fn truncate_words32(words: &[u32]) -> u32 {
    let last = words[words.len() - 1];
    let offset = (last & 0x0f) as usize;
    let (word, byte) = (offset / 4, offset % 4);
    let pair = (u64::from(words[word]) << 32) | u64::from(words[word + 1]);
    (pair >> (32 - 8 * byte)) as u32 & 0x7fff_ffff
}

impl ChainingState for [u32; 5] {
    const BLOCK: usize = 64;
    const LENGTH_FIELD: usize = 8;
    const OUTPUT: usize = 20;
    const IV: Self = SHA1_IV;
    #[inline]
    fn compress(&mut self, blocks: &[u8]) {
        sha1::block_api::compress(self, blocks.as_chunks::<64>().0);
    }
    #[inline]
    fn write_digest(&self, out: &mut [u8]) {
        for (chunk, word) in out.chunks_exact_mut(4).zip(self) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
    }
    #[inline]
    fn edge_words(&self) -> u64 {
        u64::from(self[0]) ^ u64::from(self[4])
    }
    #[inline]
    fn dynamic_truncation(&self) -> u32 {
        truncate_words32(self)
    }
}

impl ChainingState for [u32; 8] {
    const BLOCK: usize = 64;
    const LENGTH_FIELD: usize = 8;
    const OUTPUT: usize = 32;
    const IV: Self = SHA256_IV;
    #[inline]
    fn compress(&mut self, blocks: &[u8]) {
        sha2::block_api::compress256(self, blocks.as_chunks::<64>().0);
    }
    #[inline]
    fn write_digest(&self, out: &mut [u8]) {
        for (chunk, word) in out.chunks_exact_mut(4).zip(self) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
    }
    #[inline]
    fn edge_words(&self) -> u64 {
        u64::from(self[0]) ^ u64::from(self[7])
    }
    #[inline]
    fn dynamic_truncation(&self) -> u32 {
        truncate_words32(self)
    }
}

impl ChainingState for [u64; 8] {
    const BLOCK: usize = 128;
    const LENGTH_FIELD: usize = 16;
    const OUTPUT: usize = 64;
    const IV: Self = SHA512_IV;
    #[inline]
    fn compress(&mut self, blocks: &[u8]) {
        sha2::block_api::compress512(self, blocks.as_chunks::<128>().0);
    }
    #[inline]
    fn write_digest(&self, out: &mut [u8]) {
        for (chunk, word) in out.chunks_exact_mut(8).zip(self) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
    }
    #[inline]
    fn edge_words(&self) -> u64 {
        self[0] ^ self[7]
    }
    #[inline]
    fn dynamic_truncation(&self) -> u32 {
        let offset = (self[7] & 0x0f) as usize;
        let (word, byte) = (offset / 8, offset % 8);
        let pair = (u128::from(self[word]) << 64) | u128::from(self[word + 1]);
        (pair >> (96 - 8 * byte)) as u32 & 0x7fff_ffff
    }
}

/// The inner and outer states after absorbing `key XOR ipad` and `key XOR opad`
/// (RFC 2104 section 2): each later MAC starts from here.
#[derive(Clone)]
struct Pads<S: ChainingState> {
    inner: S,
    outer: S,
}

impl<S: ChainingState> Pads<S> {
    fn new(key: &[u8], hashed_key: impl FnOnce(&[u8]) -> DigestOutput) -> Self {
        // RFC 2104: a key longer than the block is replaced by its hash.
        let mut block = [0u8; 128];
        if key.len() > S::BLOCK {
            let digest = hashed_key(key);
            block[..digest.len].copy_from_slice(digest.as_bytes());
        } else {
            block[..key.len()].copy_from_slice(key);
        }
        let block = &mut block[..S::BLOCK];
        let mut inner = S::IV;
        let mut outer = S::IV;
        block.iter_mut().for_each(|b| *b ^= 0x36);
        inner.compress(block);
        block.iter_mut().for_each(|b| *b ^= 0x36 ^ 0x5c);
        outer.compress(block);
        block.zeroize();
        Pads { inner, outer }
    }

    /// HMAC of the concatenated `parts`.
    #[inline]
    fn mac(&self, parts: &[&[u8]], out: &mut DigestOutput) {
        let mut outer = self.with_padded(parts, |padded| self.outer_state(padded));
        outer.write_digest(&mut out.bytes);
        out.len = S::OUTPUT;
        outer.zeroize();
    }

    /// RFC 4226 section 5.3's dynamic truncation of the HMAC of the concatenated `parts`.
    #[inline]
    fn truncated_mac_of_parts(&self, parts: &[&[u8]]) -> u32 {
        self.with_padded(parts, |padded| self.truncated_mac(padded))
    }

    /// HMAC of a message already padded for the inner hash (see [`PaddedMessage`]),
    /// dynamically truncated: no byte of the message is copied or padded here, and the
    /// digest stays in the state words.
    #[inline]
    fn truncated_mac(&self, padded: &[u8]) -> u32 {
        let mut outer = self.outer_state(padded);
        let value = outer.dynamic_truncation();
        outer.zeroize();
        value
    }

    /// Runs `f` on the concatenated `parts` padded for the inner hash: message, 0x80,
    /// zeros, then the bit length of (ipad block + message).
    #[inline]
    fn with_padded<R>(&self, parts: &[&[u8]], f: impl FnOnce(&[u8]) -> R) -> R {
        let length: usize = parts.iter().map(|p| p.len()).sum();
        let padded = (length + 1 + S::LENGTH_FIELD).div_ceil(S::BLOCK) * S::BLOCK;
        let mut stack = [0u8; STACK_MESSAGE];
        let mut heap = Vec::new();
        let buffer: &mut [u8] = if padded <= STACK_MESSAGE {
            &mut stack[..padded]
        } else {
            heap.resize(padded, 0);
            &mut heap
        };
        let mut at = 0;
        for part in parts {
            buffer[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        buffer[at] = 0x80;
        let bits = ((S::BLOCK + length) as u128) * 8;
        buffer[padded - S::LENGTH_FIELD..]
            .copy_from_slice(&bits.to_be_bytes()[16 - S::LENGTH_FIELD..]);
        f(buffer)
    }

    /// The outer hash's final state for a message padded for the inner hash.
    #[inline]
    fn outer_state(&self, padded: &[u8]) -> S {
        let mut inner = self.inner;
        inner.compress(padded);
        // Outer hash: one block holding the inner digest.
        let mut block = S::OUTER_PADDING;
        inner.write_digest(&mut block);
        inner.zeroize();
        let mut outer = self.outer;
        outer.compress(&block[..S::BLOCK]);
        outer
    }
}

impl<S: ChainingState> Drop for Pads<S> {
    fn drop(&mut self) {
        self.inner.zeroize();
        self.outer.zeroize();
    }
}

/// An HMAC key with its pads already absorbed: 40 bytes of state for SHA-1 instead of
/// the key, so a table of a million prepared keys stays small. Wiped on drop; its Debug
/// output is redacted.
#[derive(Clone)]
pub struct HmacKey(PreparedPads);

#[derive(Clone)]
enum PreparedPads {
    Sha1(Pads<[u32; 5]>),
    Sha256(Pads<[u32; 8]>),
    Sha512(Pads<[u64; 8]>),
}

/// A borrowed prepared key: what every MAC computation takes, whether the key was
/// prepared alone ([`HmacKey`]) or in a dense table ([`PreparedKeys`]).
#[derive(Clone, Copy)]
pub struct HmacKeyRef<'a>(PadsRef<'a>);

#[derive(Clone, Copy)]
enum PadsRef<'a> {
    Sha1(&'a Pads<[u32; 5]>),
    Sha256(&'a Pads<[u32; 8]>),
    Sha512(&'a Pads<[u64; 8]>),
}

impl core::fmt::Debug for HmacKeyRef<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "HmacKeyRef({}, redacted)", self.algorithm().name())
    }
}

impl<'a> From<&'a HmacKey> for HmacKeyRef<'a> {
    fn from(key: &'a HmacKey) -> Self {
        HmacKeyRef(match &key.0 {
            PreparedPads::Sha1(pads) => PadsRef::Sha1(pads),
            PreparedPads::Sha256(pads) => PadsRef::Sha256(pads),
            PreparedPads::Sha512(pads) => PadsRef::Sha512(pads),
        })
    }
}

impl HmacKeyRef<'_> {
    pub fn algorithm(self) -> HashAlgorithm {
        match self.0 {
            PadsRef::Sha1(_) => HashAlgorithm::Sha1,
            PadsRef::Sha256(_) => HashAlgorithm::Sha256,
            PadsRef::Sha512(_) => HashAlgorithm::Sha512,
        }
    }

    /// HMAC of the concatenation of `parts`.
    #[inline]
    pub fn mac(self, parts: &[&[u8]]) -> DigestOutput {
        let mut out = DigestOutput::empty(0);
        match self.0 {
            PadsRef::Sha1(pads) => pads.mac(parts, &mut out),
            PadsRef::Sha256(pads) => pads.mac(parts, &mut out),
            PadsRef::Sha512(pads) => pads.mac(parts, &mut out),
        }
        out
    }

    /// RFC 4226 section 5.3's dynamic truncation of the HMAC of the concatenation of
    /// `parts`: the 31-bit value of an HOTP code, without writing the digest out.
    #[inline]
    pub fn truncated_mac(self, parts: &[&[u8]]) -> u32 {
        match self.0 {
            PadsRef::Sha1(pads) => pads.truncated_mac_of_parts(parts),
            PadsRef::Sha256(pads) => pads.truncated_mac_of_parts(parts),
            PadsRef::Sha512(pads) => pads.truncated_mac_of_parts(parts),
        }
    }
}

/// A message of one length, laid out once with the padding of an HMAC's inner hash
/// (0x80, zeros and the bit length of ipad block + message; FIPS 180-4 section 5.1), so
/// that many messages of the same shape are MACed by overwriting their own bytes in place:
/// a MAC then costs its compressions only, with nothing copied or padded per message.
/// The bytes are wiped on drop (they hold whatever the caller wrote, e.g. PIN hashes).
#[derive(Clone)]
pub struct PaddedMessage {
    algorithm: HashAlgorithm,
    len: usize,
    bytes: Vec<u8>,
}

impl core::fmt::Debug for PaddedMessage {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "PaddedMessage({}, {} bytes, redacted)",
            self.algorithm.name(),
            self.len
        )
    }
}

fn inner_padding<S: ChainingState>(len: usize) -> Vec<u8> {
    let padded = (len + 1 + S::LENGTH_FIELD).div_ceil(S::BLOCK) * S::BLOCK;
    let mut bytes = vec![0u8; padded];
    bytes[len] = 0x80;
    let bits = ((S::BLOCK + len) as u128) * 8;
    bytes[padded - S::LENGTH_FIELD..].copy_from_slice(&bits.to_be_bytes()[16 - S::LENGTH_FIELD..]);
    bytes
}

impl PaddedMessage {
    /// An all-zero message of `len` bytes, padded for an HMAC with `algorithm`.
    pub fn new(algorithm: HashAlgorithm, len: usize) -> Self {
        let bytes = match algorithm {
            HashAlgorithm::Sha1 => inner_padding::<[u32; 5]>(len),
            HashAlgorithm::Sha256 => inner_padding::<[u32; 8]>(len),
            HashAlgorithm::Sha512 => inner_padding::<[u64; 8]>(len),
        };
        PaddedMessage {
            algorithm,
            len,
            bytes,
        }
    }

    pub fn algorithm(&self) -> HashAlgorithm {
        self.algorithm
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The message bytes (without the padding), to fill in place.
    #[inline]
    pub fn message_mut(&mut self) -> &mut [u8] {
        &mut self.bytes[..self.len]
    }

    pub fn message(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// RFC 4226 section 5.3's dynamic truncation of the HMAC of the message under a
    /// prepared key: the 31-bit value HOTP and OCRA codes are taken from. `None` when the
    /// key was prepared for another hash than the message was padded for.
    #[inline]
    pub fn truncated_mac(&self, key: HmacKeyRef<'_>) -> Option<u32> {
        match (key.0, self.algorithm) {
            (PadsRef::Sha1(pads), HashAlgorithm::Sha1) => Some(pads.truncated_mac(&self.bytes)),
            (PadsRef::Sha256(pads), HashAlgorithm::Sha256) => Some(pads.truncated_mac(&self.bytes)),
            (PadsRef::Sha512(pads), HashAlgorithm::Sha512) => Some(pads.truncated_mac(&self.bytes)),
            _ => None,
        }
    }

    /// As [`PaddedMessage::truncated_mac`] with a raw key, its pads absorbed here (two more
    /// compressions) and wiped after. `None` for an empty key.
    #[inline]
    pub fn truncated_mac_with_key(&self, key: &[u8]) -> Option<u32> {
        if key.is_empty() {
            return None;
        }
        let algorithm = self.algorithm;
        let hash = |k: &[u8]| algorithm.digest(k);
        Some(match algorithm {
            HashAlgorithm::Sha1 => Pads::<[u32; 5]>::new(key, hash).truncated_mac(&self.bytes),
            HashAlgorithm::Sha256 => Pads::<[u32; 8]>::new(key, hash).truncated_mac(&self.bytes),
            HashAlgorithm::Sha512 => Pads::<[u64; 8]>::new(key, hash).truncated_mac(&self.bytes),
        })
    }
}

impl Drop for PaddedMessage {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

/// Many keys prepared for one algorithm, stored densely (40 bytes a key for SHA-1), so a
/// table of a million devices stays cache-friendly under random access.
#[derive(Clone)]
pub struct PreparedKeys(TableStorage);

#[derive(Clone)]
enum TableStorage {
    Sha1(Vec<Pads<[u32; 5]>>),
    Sha256(Vec<Pads<[u32; 8]>>),
    Sha512(Vec<Pads<[u64; 8]>>),
}

impl core::fmt::Debug for PreparedKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "PreparedKeys({}, {} keys, redacted)",
            self.algorithm().name(),
            self.len()
        )
    }
}

fn prepare_all<'k, S: ChainingState + Send + Sync>(
    algorithm: HashAlgorithm,
    rows: usize,
    key_at: &(dyn Fn(usize) -> &'k [u8] + Sync),
    execution: Execution,
) -> Result<Vec<Pads<S>>, usize> {
    use rayon::prelude::*;
    if let Some(row) = (0..rows).find(|&row| key_at(row).is_empty()) {
        return Err(row);
    }
    let prepare = |row: usize| Pads::<S>::new(key_at(row), |k| algorithm.digest(k));
    // Allocated once at its final size: a growing Vec would move prepared pads by
    // reallocation and leave unwiped copies in freed memory.
    let mut out = Vec::with_capacity(rows);
    match execution {
        Execution::Sequential => out.extend((0..rows).map(prepare)),
        Execution::Parallel => (0..rows)
            .into_par_iter()
            .with_min_len(1024)
            .map(prepare)
            .collect_into_vec(&mut out),
    }
    Ok(out)
}

impl PreparedKeys {
    /// Prepares `rows` keys; `Err(row)` names the first empty key found.
    pub fn new<'k>(
        algorithm: HashAlgorithm,
        rows: usize,
        key_at: &(dyn Fn(usize) -> &'k [u8] + Sync),
        execution: Execution,
    ) -> Result<Self, usize> {
        Ok(PreparedKeys(match algorithm {
            HashAlgorithm::Sha1 => {
                TableStorage::Sha1(prepare_all(algorithm, rows, key_at, execution)?)
            }
            HashAlgorithm::Sha256 => {
                TableStorage::Sha256(prepare_all(algorithm, rows, key_at, execution)?)
            }
            HashAlgorithm::Sha512 => {
                TableStorage::Sha512(prepare_all(algorithm, rows, key_at, execution)?)
            }
        }))
    }

    pub fn algorithm(&self) -> HashAlgorithm {
        match self.0 {
            TableStorage::Sha1(_) => HashAlgorithm::Sha1,
            TableStorage::Sha256(_) => HashAlgorithm::Sha256,
            TableStorage::Sha512(_) => HashAlgorithm::Sha512,
        }
    }

    pub fn len(&self) -> usize {
        match &self.0 {
            TableStorage::Sha1(v) => v.len(),
            TableStorage::Sha256(v) => v.len(),
            TableStorage::Sha512(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[inline]
    pub fn get(&self, row: usize) -> Option<HmacKeyRef<'_>> {
        Some(HmacKeyRef(match &self.0 {
            TableStorage::Sha1(v) => PadsRef::Sha1(v.get(row)?),
            TableStorage::Sha256(v) => PadsRef::Sha256(v.get(row)?),
            TableStorage::Sha512(v) => PadsRef::Sha512(v.get(row)?),
        }))
    }

    /// Loads the keys at `rows` into the cache, in one pass that uses none of them.
    ///
    /// For a large table addressed in random order each key is a cache miss, and a MAC
    /// cannot start before its key arrives, so item after item would wait out a full miss.
    /// The loads here depend on nothing but the row, so the CPU keeps many in flight; the
    /// MACs that follow then find their keys in the cache. Rows out of range are skipped.
    pub fn warm(&self, rows: impl Iterator<Item = usize>) {
        fn touch<S: ChainingState>(table: &[Pads<S>], rows: impl Iterator<Item = usize>) {
            // The loads must not be optimized away, yet no key material may be kept: only
            // a count (of all-zero edge words, in practice none) reaches `black_box`.
            let zeros = rows
                .filter_map(|row| table.get(row))
                .filter(|pads| pads.inner.edge_words() | pads.outer.edge_words() == 0)
                .count();
            std::hint::black_box(zeros);
        }
        match &self.0 {
            TableStorage::Sha1(v) => touch(v, rows),
            TableStorage::Sha256(v) => touch(v, rows),
            TableStorage::Sha512(v) => touch(v, rows),
        }
    }
}

impl core::fmt::Debug for HmacKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "HmacKey({}, redacted)", self.algorithm().name())
    }
}

impl HmacKey {
    /// Prepares `key` for HMAC with `algorithm`. An empty key is refused.
    pub fn new(algorithm: HashAlgorithm, key: &[u8]) -> Result<Self, Error> {
        if key.is_empty() {
            return Err(Error::input("key", "must not be empty"));
        }
        let hash = |k: &[u8]| algorithm.digest(k);
        Ok(HmacKey(match algorithm {
            HashAlgorithm::Sha1 => PreparedPads::Sha1(Pads::new(key, hash)),
            HashAlgorithm::Sha256 => PreparedPads::Sha256(Pads::new(key, hash)),
            HashAlgorithm::Sha512 => PreparedPads::Sha512(Pads::new(key, hash)),
        }))
    }

    pub fn algorithm(&self) -> HashAlgorithm {
        HmacKeyRef::from(self).algorithm()
    }

    /// HMAC of the concatenation of `parts`, leaving the prepared key untouched.
    #[inline]
    pub fn mac(&self, parts: &[&[u8]]) -> DigestOutput {
        HmacKeyRef::from(self).mac(parts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc2202_hmac_sha1_case_2() {
        let key = HmacKey::new(HashAlgorithm::Sha1, b"Jefe").unwrap();
        let tag = key.mac(&[b"what do ya want ", b"for nothing?"]);
        assert_eq!(
            hex::encode(tag.as_bytes()),
            "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"
        );
    }

    /// RFC 4231 test case 6: a 131-byte key (longer than a block) with SHA-256/512.
    #[test]
    fn rfc4231_case_6_long_key() {
        let key = [0xaau8; 131];
        let msg = b"Test Using Larger Than Block-Size Key - Hash Key First";
        let sha256 = HmacKey::new(HashAlgorithm::Sha256, &key)
            .unwrap()
            .mac(&[msg]);
        assert_eq!(
            hex::encode(sha256.as_bytes()),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
        let sha512 = HmacKey::new(HashAlgorithm::Sha512, &key)
            .unwrap()
            .mac(&[msg]);
        assert_eq!(
            hex::encode(sha512.as_bytes()),
            "80b24263c7c1a3ebb71493c1dd7be8b49b46d1f41b4aeec1121b013783f8f352\
             6b56d037e05f2598bd0fd2215d6a1e5295e64f73f63f0aec8b915a985d786598"
        );
    }

    /// The block-level HMAC agrees with RustCrypto's `hmac` crate for every key and
    /// message length around the block and padding boundaries.
    #[test]
    fn agrees_with_the_hmac_crate_at_every_boundary() {
        use hmac::{Hmac, KeyInit, Mac};
        fn reference<M: Mac + KeyInit>(key: &[u8], msg: &[u8]) -> Vec<u8> {
            let mut mac = <M as KeyInit>::new_from_slice(key).unwrap();
            mac.update(msg);
            mac.finalize().into_bytes().to_vec()
        }
        let data: Vec<u8> = (0..700u32).map(|i| (i * 31 + 7) as u8).collect();
        for key_len in [1, 20, 63, 64, 65, 127, 128, 129, 200] {
            for msg_len in [0, 1, 54, 55, 56, 63, 64, 111, 112, 119, 128, 300, 511, 600] {
                let (key, msg) = (&data[..key_len], &data[100..100 + msg_len]);
                let split = msg_len / 3;
                let parts: [&[u8]; 2] = [&msg[..split], &msg[split..]];
                for (algorithm, expected) in [
                    (HashAlgorithm::Sha1, reference::<Hmac<Sha1>>(key, msg)),
                    (HashAlgorithm::Sha256, reference::<Hmac<Sha256>>(key, msg)),
                    (HashAlgorithm::Sha512, reference::<Hmac<Sha512>>(key, msg)),
                ] {
                    let ours = HmacKey::new(algorithm, key).unwrap().mac(&parts);
                    assert_eq!(
                        ours.as_bytes(),
                        &expected[..],
                        "{algorithm:?} {key_len} {msg_len}"
                    );
                }
            }
        }
    }

    /// A padded message reused for message after message gives RFC 4226's truncation of
    /// the plain HMAC, with prepared and raw keys alike, at every length around the block
    /// and padding boundaries, and the word-level truncation meets all 16 offsets.
    #[test]
    fn padded_messages_give_the_truncated_plain_hmac() {
        use crate::code::dynamic_truncation;
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 37 + 11) as u8).collect();
        let mut offsets = [false; 16];
        for algorithm in [
            HashAlgorithm::Sha1,
            HashAlgorithm::Sha256,
            HashAlgorithm::Sha512,
        ] {
            for msg_len in [0, 1, 54, 55, 56, 63, 64, 111, 112, 119, 128, 178, 300, 600] {
                let mut message = PaddedMessage::new(algorithm, msg_len);
                assert_eq!(message.len(), msg_len);
                for (round, key_len) in [1, 20, 63, 64, 65, 128, 129, 200].into_iter().enumerate() {
                    let key = &data[round..round + key_len];
                    let msg = &data[300 + round..300 + round + msg_len];
                    message.message_mut().copy_from_slice(msg);
                    assert_eq!(message.message(), msg);
                    let prepared = HmacKey::new(algorithm, key).unwrap();
                    let plain = prepared.mac(&[msg]);
                    let expected = dynamic_truncation(plain.as_bytes());
                    offsets[usize::from(plain.as_bytes()[plain.as_bytes().len() - 1] & 0x0f)] =
                        true;
                    let label = format!("{algorithm:?} key {key_len} message {msg_len}");
                    assert_eq!(
                        message.truncated_mac((&prepared).into()),
                        Some(expected),
                        "{label}"
                    );
                    assert_eq!(
                        message.truncated_mac_with_key(key),
                        Some(expected),
                        "{label}"
                    );
                    let split = msg_len / 2;
                    let parts: [&[u8]; 2] = [&msg[..split], &msg[split..]];
                    let by_parts = HmacKeyRef::from(&prepared).truncated_mac(&parts);
                    assert_eq!(by_parts, expected, "{label}");
                }
            }
        }
        assert!(offsets.iter().all(|&hit| hit), "offsets met: {offsets:?}");
    }

    #[test]
    fn a_padded_message_refuses_an_empty_key_and_a_key_of_another_hash() {
        let message = PaddedMessage::new(HashAlgorithm::Sha1, 10);
        assert_eq!(message.truncated_mac_with_key(b""), None);
        let other = HmacKey::new(HashAlgorithm::Sha256, b"key").unwrap();
        assert_eq!(message.truncated_mac((&other).into()), None);
        assert_eq!(
            format!("{message:?}"),
            "PaddedMessage(sha1, 10 bytes, redacted)"
        );
    }

    #[test]
    fn empty_key_is_refused_by_field_name() {
        let err = HmacKey::new(HashAlgorithm::Sha256, b"").unwrap_err();
        assert_eq!(err.to_string(), "key: must not be empty");
    }

    #[test]
    fn debug_never_shows_key_material() {
        let key = HmacKey::new(HashAlgorithm::Sha1, b"secret-key-bytes").unwrap();
        assert_eq!(format!("{key:?}"), "HmacKey(sha1, redacted)");
    }
}
