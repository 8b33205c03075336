//! Opening sealed values (device secrets, PIN hashes) in one batch, across cores.
//!
//! The sealed format is the one `sls_core.sealing` writes (version 1):
//!
//! ```text
//! 0x01 | len(key_id) as u8 | key_id (ASCII) | 12-byte nonce | ciphertext + 16-byte tag
//! ```
//!
//! AES-256-GCM, whose associated data is the header (version, key-id length, key id)
//! followed by the record's place (e.g. `device:42:secret`), so a value copied to another
//! row fails to open. A process that starts with a million devices opens two million of
//! them: here one call does the whole column, each row decrypted in place in one shared
//! buffer, on a rayon pool. The errors are those of the Python path, word for word, and
//! never carry a key or a plaintext; data keys are wiped when [`DataKeys`] is dropped.

use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use rayon::prelude::*;
use zeroize::Zeroizing;

use crate::error::Error;
use crate::types::Execution;

/// The one format version this build reads.
pub const FORMAT_VERSION: u8 = 1;
/// AES-256.
pub const KEY_BYTES: usize = 32;
/// 96-bit GCM nonce, NIST SP 800-38D section 8.2.2.
pub const NONCE_BYTES: usize = 12;
pub const TAG_BYTES: usize = 16;
/// The rule a key id follows (the same words as the Python path).
pub const KEY_ID_RULE: &str = "must be 1-32 characters from [A-Za-z0-9_-]";
const MAX_KEY_ID: usize = 32;
/// Rows per unit of parallel work: big enough that a task outweighs its scheduling.
const ROWS_PER_TASK: usize = 4096;

fn valid_key_id(id: &[u8]) -> bool {
    (1..=MAX_KEY_ID).contains(&id.len())
        && id
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The master (data) keys of a key ring, by key id, ready to open records. The AES key
/// schedules are wiped on drop (`aes-gcm`'s `zeroize` feature); `Debug` shows ids only.
pub struct DataKeys {
    keys: Vec<(String, Aes256Gcm)>,
}

impl std::fmt::Debug for DataKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKeys")
            .field("key_ids", &self.key_ids())
            .finish_non_exhaustive()
    }
}

impl Default for DataKeys {
    fn default() -> Self {
        Self::new()
    }
}

impl DataKeys {
    pub fn new() -> Self {
        DataKeys { keys: Vec::new() }
    }

    /// Adds (or replaces) the key `key_id`: 32 bytes, an id of 1-32 `[A-Za-z0-9_-]`.
    pub fn insert(&mut self, key_id: &str, key: &[u8]) -> Result<(), Error> {
        if !valid_key_id(key_id.as_bytes()) {
            return Err(Error::input("key_id", KEY_ID_RULE));
        }
        if key.len() != KEY_BYTES {
            return Err(Error::input(
                "key",
                format!("must be exactly {KEY_BYTES} bytes, got {}", key.len()),
            ));
        }
        let cipher = Aes256Gcm::new_from_slice(key)
            .map_err(|_| Error::input("key", format!("must be exactly {KEY_BYTES} bytes")))?;
        self.keys.retain(|(id, _)| id != key_id);
        self.keys.push((key_id.to_owned(), cipher));
        Ok(())
    }

    /// Every key id, sorted.
    pub fn key_ids(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        ids.sort_unstable();
        ids
    }

    fn cipher(&self, key_id: &[u8]) -> Option<&Aes256Gcm> {
        self.keys
            .iter()
            .find(|(id, _)| id.as_bytes() == key_id)
            .map(|(_, cipher)| cipher)
    }

    /// Opens one sealed record bound to `aad`.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealingError> {
        let layout = Layout::parse(sealed)?;
        let mut plaintext = Zeroizing::new(sealed[layout.body..sealed.len() - TAG_BYTES].to_vec());
        let mut associated = Vec::with_capacity(layout.header + aad.len());
        self.open_in_place(sealed, &layout, aad, &mut associated, &mut plaintext)?;
        Ok(plaintext)
    }

    /// Decrypts `out` (the ciphertext of `sealed`, copied) in place.
    fn open_in_place(
        &self,
        sealed: &[u8],
        layout: &Layout,
        aad: &[u8],
        associated: &mut Vec<u8>,
        out: &mut [u8],
    ) -> Result<(), SealingError> {
        let key_id = &sealed[2..layout.header];
        let cipher = self
            .cipher(key_id)
            .ok_or_else(|| SealingError::UnknownKeyId {
                key_id: ascii(key_id),
                known: self.key_ids().join(", "),
            })?;
        associated.clear();
        associated.extend_from_slice(&sealed[..layout.header]);
        associated.extend_from_slice(aad);
        let nonce = Nonce::try_from(&sealed[layout.header..layout.header + NONCE_BYTES])
            .map_err(|_| SealingError::authentication(key_id))?;
        let tag = Tag::try_from(&sealed[sealed.len() - TAG_BYTES..])
            .map_err(|_| SealingError::authentication(key_id))?;
        let body = &mut out[..sealed.len() - TAG_BYTES - layout.body];
        if cipher
            .decrypt_inout_detached(&nonce, associated, body.into(), &tag)
            .is_err()
        {
            body.fill(0); // in-place: whatever was written is not the plaintext, wipe it
            return Err(SealingError::authentication(key_id));
        }
        Ok(())
    }

    /// Opens a column of sealed records; `aad(i, buffer)` appends row `i`'s place to
    /// `buffer`. `None` rows stay `None`. On the first (lowest) row that fails, returns
    /// that row and why, and wipes every plaintext opened so far.
    pub fn open_column<F>(
        &self,
        sealed: &[Option<&[u8]>],
        aad: F,
        execution: Execution,
    ) -> Result<OpenedColumn, (usize, SealingError)>
    where
        F: Fn(usize, &mut Vec<u8>) + Sync,
    {
        // Pass 1 (sequential, cheap): check the headers, lay the plaintexts out. A bad
        // header stops the column there: only the rows before it are opened, so the row
        // reported is the lowest that fails, as opening one row after another would find.
        let mut layouts = Vec::with_capacity(sealed.len());
        let mut offsets = Vec::with_capacity(sealed.len() + 1);
        offsets.push(0usize);
        let mut total = 0usize;
        let mut bad_header = None;
        for (i, row) in sealed.iter().enumerate() {
            let layout = match row.map(Layout::parse).transpose() {
                Ok(layout) => layout,
                Err(error) => {
                    bad_header = Some((i, error));
                    break;
                }
            };
            if let (Some(bytes), Some(layout)) = (row, &layout) {
                total += bytes.len() - layout.body - TAG_BYTES;
            }
            offsets.push(total);
            layouts.push(layout);
        }
        let sealed = &sealed[..layouts.len()];
        // Pass 2: copy each ciphertext to its place, then decrypt the column in place,
        // in tasks of ROWS_PER_TASK rows that each own their part of the buffer.
        let mut data = Zeroizing::new(vec![0u8; total]);
        for (i, row) in sealed.iter().enumerate() {
            if let (Some(bytes), Some(layout)) = (row, &layouts[i]) {
                data[offsets[i]..offsets[i + 1]]
                    .copy_from_slice(&bytes[layout.body..bytes.len() - TAG_BYTES]);
            }
        }
        let mut tasks: Vec<(usize, &mut [u8])> = Vec::new();
        let mut rest: &mut [u8] = &mut data;
        let mut first = 0;
        while first < sealed.len() {
            let end = (first + ROWS_PER_TASK).min(sealed.len());
            let (part, tail) = rest.split_at_mut(offsets[end] - offsets[first]);
            tasks.push((first, part));
            rest = tail;
            first = end;
        }
        let open_task =
            |(first, part): &mut (usize, &mut [u8])| -> Result<(), (usize, SealingError)> {
                let base = offsets[*first];
                let end = (*first + ROWS_PER_TASK).min(sealed.len());
                let mut place = Vec::with_capacity(64);
                let mut associated = Vec::with_capacity(128);
                for i in *first..end {
                    if let (Some(bytes), Some(layout)) = (sealed[i], &layouts[i]) {
                        place.clear();
                        aad(i, &mut place);
                        let out = &mut part[offsets[i] - base..offsets[i + 1] - base];
                        self.open_in_place(bytes, layout, &place, &mut associated, out)
                            .map_err(|e| (i, e))?;
                    }
                }
                Ok(())
            };
        let outcome: Vec<Result<(), (usize, SealingError)>> = match execution {
            Execution::Sequential => tasks.iter_mut().map(open_task).collect(),
            Execution::Parallel => tasks.par_iter_mut().map(open_task).collect(),
        };
        drop(tasks);
        if let Some(Err(failure)) = outcome.into_iter().find(Result::is_err) {
            return Err(failure); // `data` is wiped as it drops
        }
        if let Some(failure) = bad_header {
            return Err(failure);
        }
        let present = sealed.iter().map(Option::is_some).collect();
        Ok(OpenedColumn {
            data,
            offsets,
            present,
        })
    }
}

/// Where the parts of a sealed record start.
#[derive(Debug, Clone, Copy)]
struct Layout {
    /// Header length: version, key-id length, key id.
    header: usize,
    /// Where the ciphertext starts (after the nonce).
    body: usize,
}

impl Layout {
    /// Checks the header and the length, in the order (and words) of the Python path.
    fn parse(sealed: &[u8]) -> Result<Layout, SealingError> {
        if sealed.len() < 2 {
            return Err(SealingError::Header(format!(
                "truncated: {} bytes, the header alone needs 2+",
                sealed.len()
            )));
        }
        if sealed[0] != FORMAT_VERSION {
            return Err(SealingError::Header(format!(
                "unsupported format version {} (this build reads {FORMAT_VERSION})",
                sealed[0]
            )));
        }
        let id_length = usize::from(sealed[1]);
        if !(1..=MAX_KEY_ID).contains(&id_length) {
            return Err(SealingError::Header(format!(
                "key id length {id_length} is outside 1-32"
            )));
        }
        let header = 2 + id_length;
        if sealed.len() < header {
            return Err(SealingError::Header(format!(
                "truncated: {} bytes, the header says {header}",
                sealed.len()
            )));
        }
        let key_id = &sealed[2..header];
        if !valid_key_id(key_id) {
            return Err(SealingError::Header(format!("key id {KEY_ID_RULE}")));
        }
        let minimum = header + NONCE_BYTES + TAG_BYTES;
        if sealed.len() < minimum {
            return Err(SealingError::Record {
                key_id: ascii(key_id),
                rule: format!(
                    "truncated: {} bytes, needs at least {minimum}",
                    sealed.len()
                ),
            });
        }
        Ok(Layout {
            header,
            body: header + NONCE_BYTES,
        })
    }
}

/// A key id already checked against [`KEY_ID_RULE`] (so ASCII).
fn ascii(key_id: &[u8]) -> String {
    key_id.iter().map(|&b| char::from(b)).collect()
}

/// Why a sealed record did not open. Never holds key material or plaintext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SealingError {
    /// The header cannot be read (so there is no key id to name).
    Header(String),
    /// The record under `key_id` breaks `rule` (truncated body).
    Record { key_id: String, rule: String },
    /// The record's key id is not among the keys (`known`: the ids, sorted, joined).
    UnknownKeyId { key_id: String, known: String },
    /// The tag did not verify: wrong key, wrong place, or tampered.
    Authentication { key_id: String },
}

impl SealingError {
    fn authentication(key_id: &[u8]) -> Self {
        SealingError::Authentication {
            key_id: ascii(key_id),
        }
    }

    /// The record's key id, when its header could be read.
    pub fn key_id(&self) -> Option<&str> {
        match self {
            SealingError::Header(_) => None,
            SealingError::Record { key_id, .. }
            | SealingError::UnknownKeyId { key_id, .. }
            | SealingError::Authentication { key_id } => Some(key_id),
        }
    }

    /// What went wrong, in the words of the Python path.
    pub fn rule(&self) -> String {
        match self {
            SealingError::Header(rule) | SealingError::Record { rule, .. } => rule.clone(),
            SealingError::UnknownKeyId { known, .. } => {
                format!("key id is not in the key ring (known: {known})")
            }
            SealingError::Authentication { .. } => "authentication failed: wrong key, wrong aad \
                 (record moved from another row) or tampered"
                .to_owned(),
        }
    }
}

/// The plaintexts of a column, end to end in one buffer (wiped on drop): row `i` is
/// `data[offsets[i]..offsets[i + 1]]`, or `None` where `present[i]` is false.
#[derive(Debug)]
pub struct OpenedColumn {
    pub data: Zeroizing<Vec<u8>>,
    pub offsets: Vec<usize>,
    pub present: Vec<bool>,
}

impl OpenedColumn {
    pub fn len(&self) -> usize {
        self.present.len()
    }

    pub fn is_empty(&self) -> bool {
        self.present.is_empty()
    }

    /// Row `i`'s plaintext (`None` for a row that held no value).
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        self.present[i].then(|| &self.data[self.offsets[i]..self.offsets[i + 1]])
    }

    /// Every row zero-padded to `width` bytes, row-major (wiped on drop), for the batch
    /// path's key and PIN-hash columns; a row longer than `width` is left all zeros.
    pub fn padded(&self, width: usize) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(vec![0u8; self.len() * width]);
        for (i, cell) in out
            .chunks_exact_mut(width.max(1))
            .enumerate()
            .take(self.len())
        {
            if let Some(value) = self.get(i) {
                if value.len() <= width {
                    cell[..value.len()].copy_from_slice(value);
                }
            }
        }
        out
    }
}

/// A device record's place, as the stores bind it: `device:{device_id}:{what}`.
pub fn device_aad(device_id: i64, what: &str, out: &mut Vec<u8>) {
    use std::io::Write;
    // Writing to a Vec cannot fail.
    let _ = write!(out, "device:{device_id}:{what}");
}
