//! Batch verification: many items, one suite, every core.
//!
//! Columns borrow caller memory (numpy buffers or Python byte strings) and items are checked
//! in parallel with rayon on whatever thread pool the caller installed. An item whose inputs
//! break a rule is [`Outcome::Malformed`]; it never fails its neighbours.

use rayon::prelude::*;

use crate::code::same_code;
use crate::error::Error;
use crate::mac::{HashAlgorithm, HmacKey, HmacKeyRef, PaddedMessage, PreparedKeys};
use crate::ocra::{OcraInput, OcraSuite};
use crate::otp::{OtpParams, TotpParams, WindowMatch};
use crate::types::{ByteColumn, Execution, Outcome};

/// Items per rayon task: large enough to amortize scheduling, small enough to balance.
const CHUNK: usize = 1024;

/// Runs `f(chunk_index, chunk)` over `CHUNK * width`-sized pieces of `out`.
fn each_chunk<T, E, F>(execution: Execution, out: &mut [T], width: usize, f: F) -> Result<(), E>
where
    T: Send,
    E: Send,
    F: Fn(usize, &mut [T]) -> Result<(), E> + Sync + Send,
{
    let size = CHUNK * width.max(1);
    match execution {
        Execution::Sequential => out
            .chunks_mut(size)
            .enumerate()
            .try_for_each(|(i, chunk)| f(i, chunk)),
        Execution::Parallel => out
            .par_chunks_mut(size)
            .enumerate()
            .try_for_each(|(i, chunk)| f(i, chunk)),
    }
}

/// HMAC keys prepared once, for servers that verify the same devices all day: each MAC
/// then skips the two key-pad compressions.
#[derive(Debug, Clone)]
pub struct KeyTable {
    keys: PreparedKeys,
}

impl KeyTable {
    /// Prepares every key of `keys`. An empty key is an error naming its row.
    pub fn new(
        algorithm: HashAlgorithm,
        keys: &ByteColumn<'_>,
        execution: Execution,
    ) -> Result<Self, Error> {
        let keys = PreparedKeys::new(algorithm, keys.len(), &|row| keys.get(row), execution)
            .map_err(|row| Error::input("keys", format!("row {row}: must not be empty")))?;
        Ok(KeyTable { keys })
    }

    pub fn algorithm(&self) -> HashAlgorithm {
        self.keys.algorithm()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    #[inline]
    pub fn get(&self, row: usize) -> Option<HmacKeyRef<'_>> {
        self.keys.get(row)
    }
}

/// Where each item's key comes from.
#[derive(Debug, Clone)]
pub enum KeyColumn<'a> {
    /// Raw key bytes per item, prepared on the fly (6 compressions per OCRA-SHA1 item).
    Raw(ByteColumn<'a>),
    /// A prepared table; item `i` uses `table[index[i]]`, or `table[i]` without an index.
    Prepared {
        table: &'a KeyTable,
        index: Option<&'a [u64]>,
    },
}

// Boxing the owned key would allocate once per item in the hot loop.
#[allow(clippy::large_enum_variant)]
enum KeyRef<'k> {
    Borrowed(HmacKeyRef<'k>),
    Owned(HmacKey),
}

impl KeyRef<'_> {
    #[inline]
    fn get(&self) -> HmacKeyRef<'_> {
        match self {
            KeyRef::Borrowed(key) => *key,
            KeyRef::Owned(key) => key.into(),
        }
    }
}

impl<'a> KeyColumn<'a> {
    fn len(&self) -> usize {
        match self {
            KeyColumn::Raw(column) => column.len(),
            KeyColumn::Prepared {
                index: Some(index), ..
            } => index.len(),
            KeyColumn::Prepared { table, index: None } => table.len(),
        }
    }

    /// Checks the table's algorithm and every index before any work starts.
    fn validate(&self, algorithm: HashAlgorithm) -> Result<(), Error> {
        let KeyColumn::Prepared { table, index } = self else {
            return Ok(());
        };
        if table.algorithm() != algorithm {
            return Err(Error::input(
                "keys",
                format!(
                    "prepared for {} but the computation uses {}",
                    table.algorithm().name(),
                    algorithm.name()
                ),
            ));
        }
        if let Some(index) = index {
            let bound = table.len() as u64;
            if let Some(row) = index.iter().position(|&i| i >= bound) {
                return Err(Error::input(
                    "key_index",
                    format!(
                        "row {row}: {} is out of range for {} prepared keys",
                        index[row],
                        table.len()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The key of `row`; `None` when a raw key is empty (the item is malformed).
    #[inline]
    fn key(&self, algorithm: HashAlgorithm, row: usize) -> Option<KeyRef<'a>> {
        match self {
            KeyColumn::Raw(column) => HmacKey::new(algorithm, column.get(row))
                .ok()
                .map(KeyRef::Owned),
            KeyColumn::Prepared { table, index } => {
                let at = index.map_or(row, |index| index[row] as usize);
                table.get(at).map(KeyRef::Borrowed)
            }
        }
    }
}

impl KeyColumn<'_> {
    /// The dynamically truncated HMAC of `message` under the key of `row` (see
    /// [`PaddedMessage::truncated_mac`]); `None` when a raw key is empty. A raw key's pads
    /// are absorbed on the stack and wiped, never moved into an owned [`HmacKey`].
    #[inline]
    fn truncated_mac(&self, row: usize, message: &PaddedMessage) -> Option<u32> {
        match self {
            KeyColumn::Raw(column) => message.truncated_mac_with_key(column.get(row)),
            KeyColumn::Prepared { table, index } => {
                let at = index.map_or(row, |index| index[row] as usize);
                message.truncated_mac(table.get(at)?)
            }
        }
    }

    /// Readies the keys of `rows` before a chunk's work starts.
    ///
    /// Prepared keys addressed through an index are loaded into the cache first (see
    /// [`PreparedKeys::warm`]): for a table larger than the cache, a random order otherwise
    /// costs one unhidden cache miss per item. Keys read in row order, and raw keys, stream
    /// in on their own.
    fn warm(&self, rows: std::ops::Range<usize>) {
        if let KeyColumn::Prepared {
            table,
            index: Some(index),
        } = self
        {
            table.keys.warm(index[rows].iter().map(|&at| at as usize));
        }
    }
}

/// Refuses columns whose length differs from the batch's.
fn check_len(field: &'static str, len: usize, expected: usize) -> Result<(), Error> {
    if len != expected {
        return Err(Error::input(
            field,
            format!("has {len} rows but the batch has {expected}"),
        ));
    }
    Ok(())
}

/// Refuses an optional column whose presence does not match the suite.
fn check_presence(field: &'static str, present: bool, required: bool) -> Result<(), Error> {
    match (required, present) {
        (true, false) => Err(Error::input(field, "required by the suite")),
        (false, true) => Err(Error::input(
            field,
            "not allowed: the suite does not use it",
        )),
        _ => Ok(()),
    }
}

/// The inputs of an OCRA batch. Every column has one row per item.
#[derive(Debug, Clone)]
pub struct OcraBatch<'a> {
    pub keys: KeyColumn<'a>,
    pub questions: ByteColumn<'a>,
    pub pin_hashes: Option<ByteColumn<'a>>,
    pub counters: Option<&'a [u64]>,
    pub timestamps: Option<&'a [u64]>,
    pub sessions: Option<ByteColumn<'a>>,
}

impl<'a> OcraBatch<'a> {
    pub fn len(&self) -> usize {
        self.questions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.questions.is_empty()
    }

    fn validate(&self, suite: &OcraSuite) -> Result<(), Error> {
        let n = self.len();
        check_len("keys", self.keys.len(), n)?;
        check_presence(
            "pin_hashes",
            self.pin_hashes.is_some(),
            suite.pin_algorithm().is_some(),
        )?;
        check_presence("counters", self.counters.is_some(), suite.uses_counter())?;
        check_presence(
            "timestamps",
            self.timestamps.is_some(),
            suite.time_step().is_some(),
        )?;
        check_presence(
            "sessions",
            self.sessions.is_some(),
            suite.session_len().is_some(),
        )?;
        if let Some(c) = &self.pin_hashes {
            check_len("pin_hashes", c.len(), n)?;
        }
        if let Some(c) = self.counters {
            check_len("counters", c.len(), n)?;
        }
        if let Some(c) = self.timestamps {
            check_len("timestamps", c.len(), n)?;
        }
        if let Some(c) = &self.sessions {
            check_len("sessions", c.len(), n)?;
        }
        self.keys.validate(suite.algorithm())
    }

    #[inline]
    fn input(&self, row: usize) -> OcraInput<'a> {
        OcraInput {
            counter: self.counters.map(|c| c[row]),
            question: self.questions.get(row),
            pin_hash: self.pin_hashes.as_ref().map(|c| c.get(row)),
            session: self.sessions.as_ref().map(|c| c.get(row)),
            timestamp: self.timestamps.map(|c| c[row]),
        }
    }
}

impl OcraSuite {
    /// Verifies `responses[i]` for every item into `outcomes[i]` (as [`Outcome`] bytes).
    ///
    /// Column errors (lengths, presence, key table) are returned before any work; per-item
    /// input errors make that item [`Outcome::Malformed`].
    pub fn verify_batch(
        &self,
        batch: &OcraBatch<'_>,
        responses: &ByteColumn<'_>,
        outcomes: &mut [u8],
        execution: Execution,
    ) -> Result<(), Error> {
        batch.validate(self)?;
        check_len("responses", responses.len(), batch.len())?;
        check_len("outcomes", outcomes.len(), batch.len())?;
        let format = self.code_format();
        each_chunk(execution, outcomes, 1, |chunk, slots| {
            let base = chunk * CHUNK;
            batch.keys.warm(base..base + slots.len());
            // Laid out once per chunk: each item only overwrites its own fields.
            let mut message = self.new_message();
            for (offset, slot) in slots.iter_mut().enumerate() {
                let row = base + offset;
                let verdict = self
                    .write_inputs(&mut message, &batch.input(row))
                    .ok()
                    .and_then(|()| format.parse(responses.get(row)))
                    .and_then(|typed| {
                        let truncated = batch.keys.truncated_mac(row, &message)?;
                        Some(same_code(typed, format.value_of_truncated(truncated)))
                    });
                *slot = verdict.map_or(Outcome::Malformed, Outcome::from_match) as u8;
            }
            Ok::<(), Error>(())
        })
    }

    /// Computes every item's response into `codes`, `width` bytes per row, NUL-padded
    /// (width is the suite's digits, or 10 for an untruncated suite). A bad item is an
    /// error naming its row: a computed batch has no room for a per-item verdict.
    pub fn compute_batch(
        &self,
        batch: &OcraBatch<'_>,
        codes: &mut [u8],
        execution: Execution,
    ) -> Result<(), Error> {
        batch.validate(self)?;
        let width = code_width(self.digits());
        check_len("codes", codes.len() / width, batch.len())?;
        let format = self.code_format();
        each_chunk(execution, codes, width, |chunk, cells| {
            let base = chunk * CHUNK;
            batch.keys.warm(base..base + cells.len() / width);
            let mut message = self.new_message();
            for (offset, cell) in cells.chunks_mut(width).enumerate() {
                let row = base + offset;
                self.write_inputs(&mut message, &batch.input(row))
                    .map_err(|e| {
                        let field = e.field();
                        Error::input(field, format!("row {row}: {}", rule_of(&e)))
                    })?;
                let truncated = batch
                    .keys
                    .truncated_mac(row, &message)
                    .ok_or_else(|| Error::input("keys", format!("row {row}: must not be empty")))?;
                write_code(format, format.value_of_truncated(truncated), cell);
            }
            Ok(())
        })
    }
}

/// Bytes per computed code: the digits, or 10 for an untruncated (t = 0) suite.
pub fn code_width(digits: u8) -> usize {
    if digits == 0 {
        10
    } else {
        usize::from(digits)
    }
}

fn write_code(format: crate::code::CodeFormat, value: u64, cell: &mut [u8]) {
    if format.digits() == 0 {
        let text = format.format(value);
        cell.fill(0);
        cell[..text.len()].copy_from_slice(text.as_bytes());
    } else {
        format.write_fixed(value, cell);
    }
}

fn rule_of(error: &Error) -> String {
    match error {
        Error::InvalidInput { rule, .. } | Error::InvalidSuite { rule, .. } => rule.clone(),
    }
}

/// HOTP or TOTP batch inputs: keys, codes and the moving factor (counter or Unix time).
#[derive(Debug, Clone)]
pub struct OtpBatch<'a> {
    pub keys: KeyColumn<'a>,
    /// Counters (HOTP) or Unix times in seconds (TOTP), one per item.
    pub moving_factors: &'a [u64],
}

/// Which one-time-password flavour a batch runs, with its window.
#[derive(Debug, Clone, Copy)]
pub enum OtpMode {
    /// HOTP: check `counter..=counter + look_ahead`.
    Hotp { params: OtpParams, look_ahead: u64 },
    /// TOTP: check the step of the item's time, `look_behind` before to `look_ahead` after.
    Totp {
        params: TotpParams,
        look_behind: u64,
        look_ahead: u64,
    },
}

impl OtpMode {
    fn params(self) -> OtpParams {
        match self {
            OtpMode::Hotp { params, .. } => params,
            OtpMode::Totp { params, .. } => params.otp,
        }
    }

    /// The window of an item, or an error for a time before T0 or an oversized window.
    fn window(self, factor: u64) -> Result<(u64, u64), Error> {
        match self {
            OtpMode::Hotp { look_ahead, .. } => crate::otp::hotp_window(factor, look_ahead),
            OtpMode::Totp {
                params,
                look_behind,
                look_ahead,
            } => params.window(factor, look_behind, look_ahead),
        }
    }

    fn counter(self, factor: u64) -> Result<u64, Error> {
        match self {
            OtpMode::Hotp { .. } => Ok(factor),
            OtpMode::Totp { params, .. } => params.time_step(factor),
        }
    }
}

impl<'a> OtpBatch<'a> {
    fn validate(&self, algorithm: HashAlgorithm) -> Result<(), Error> {
        check_len("keys", self.keys.len(), self.moving_factors.len())?;
        self.keys.validate(algorithm)
    }

    /// Verifies `codes` into `outcomes` and, for matches, the matched counter or time step
    /// into `matched` (0 where there was no match).
    pub fn verify(
        &self,
        mode: OtpMode,
        algorithm: HashAlgorithm,
        codes: &ByteColumn<'_>,
        outcomes: &mut [u8],
        matched: &mut [u64],
        execution: Execution,
    ) -> Result<(), Error> {
        self.validate(algorithm)?;
        let n = self.moving_factors.len();
        check_len("codes", codes.len(), n)?;
        check_len("outcomes", outcomes.len(), n)?;
        check_len("matched", matched.len(), n)?;
        // Fail fast on a window that is too large for every item alike.
        if n > 0 {
            if let Err(
                e @ Error::InvalidInput {
                    field: "window", ..
                },
            ) = mode.window(self.moving_factors[0])
            {
                return Err(e);
            }
        }
        let params = mode.params();
        let fill = |chunk: usize, (outcomes, matched): (&mut [u8], &mut [u64])| {
            let base = chunk * CHUNK;
            self.keys.warm(base..base + outcomes.len());
            for (offset, (outcome, step)) in outcomes.iter_mut().zip(matched).enumerate() {
                let row = base + offset;
                let verdict = match (
                    self.keys.key(algorithm, row),
                    mode.window(self.moving_factors[row]),
                ) {
                    (Some(key), Ok((first, last))) => {
                        params.verify_range(key.get(), codes.get(row), first, last)
                    }
                    _ => WindowMatch::Malformed,
                };
                (*outcome, *step) = match verdict {
                    WindowMatch::Matched(at) => (Outcome::Ok as u8, at),
                    WindowMatch::Wrong => (Outcome::Wrong as u8, 0),
                    WindowMatch::Malformed => (Outcome::Malformed as u8, 0),
                };
            }
        };
        match execution {
            Execution::Sequential => outcomes
                .chunks_mut(CHUNK)
                .zip(matched.chunks_mut(CHUNK))
                .enumerate()
                .for_each(|(chunk, pair)| fill(chunk, pair)),
            Execution::Parallel => outcomes
                .par_chunks_mut(CHUNK)
                .zip(matched.par_chunks_mut(CHUNK))
                .enumerate()
                .for_each(|(chunk, pair)| fill(chunk, pair)),
        }
        Ok(())
    }

    /// Computes every item's code into `codes` (`digits` bytes per row).
    pub fn compute(
        &self,
        mode: OtpMode,
        algorithm: HashAlgorithm,
        codes: &mut [u8],
        execution: Execution,
    ) -> Result<(), Error> {
        self.validate(algorithm)?;
        let params = mode.params();
        let width = usize::from(params.digits());
        check_len("codes", codes.len() / width, self.moving_factors.len())?;
        each_chunk(execution, codes, width, |chunk, cells| {
            let base = chunk * CHUNK;
            self.keys.warm(base..base + cells.len() / width);
            for (offset, cell) in cells.chunks_mut(width).enumerate() {
                let row = base + offset;
                let key = self
                    .keys
                    .key(algorithm, row)
                    .ok_or_else(|| Error::input("keys", format!("row {row}: must not be empty")))?;
                let counter = mode
                    .counter(self.moving_factors[row])
                    .map_err(|e| Error::input(e.field(), format!("row {row}: {}", rule_of(&e))))?;
                params
                    .format()
                    .write_fixed(params.value(key.get(), counter), cell);
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table read through an index in random order, rows repeating, over several chunks
    /// and a partial one: every batch gives the scalar result of the item's own key.
    #[test]
    fn prepared_keys_in_random_order_give_the_scalar_results() {
        let mut state = 0x2545f4914f6cdd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let items = 3 * CHUNK + 17;
        let rows = 700u64;
        for suite in [
            "OCRA-1:HOTP-SHA1-8:QN06",
            "OCRA-1:HOTP-SHA256-8:QN06",
            "OCRA-1:HOTP-SHA512-8:QN06",
        ] {
            let suite = OcraSuite::parse(suite).unwrap();
            let algorithm = suite.algorithm();
            // Key lengths 1..=150 cover short keys and keys longer than a block.
            let keys: Vec<Vec<u8>> = (0..rows)
                .map(|_| (0..1 + next() % 150).map(|_| next() as u8).collect())
                .collect();
            let raw = ByteColumn::Rows(keys.iter().map(Vec::as_slice).collect());
            let table = KeyTable::new(algorithm, &raw, Execution::Parallel).unwrap();
            let index: Vec<u64> = (0..items).map(|_| next() % rows).collect();
            let own_key = |item: usize| HmacKey::new(algorithm, &keys[index[item] as usize]);
            let questions: Vec<u8> = (0..items)
                .flat_map(|_| format!("{:06}", next() % 1_000_000).into_bytes())
                .collect();
            let batch = OcraBatch {
                keys: KeyColumn::Prepared {
                    table: &table,
                    index: Some(&index),
                },
                questions: ByteColumn::Fixed {
                    data: &questions,
                    width: 6,
                    nul_padded: true,
                },
                pin_hashes: None,
                counters: None,
                timestamps: None,
                sessions: None,
            };
            for execution in [Execution::Sequential, Execution::Parallel] {
                let mut codes = vec![0u8; items * 8];
                suite.compute_batch(&batch, &mut codes, execution).unwrap();
                for (item, code) in codes.chunks(8).enumerate() {
                    let key = own_key(item).unwrap();
                    let expected = suite.compute(&key, &batch.input(item)).unwrap();
                    assert_eq!(code, expected.as_bytes(), "{algorithm:?} item {item}");
                }
                // Every third response is spoiled: the verdicts stay in input order.
                for code in codes.chunks_mut(8).step_by(3) {
                    code[0] = if code[0] == b'9' { b'0' } else { code[0] + 1 };
                }
                let responses = ByteColumn::Fixed {
                    data: &codes,
                    width: 8,
                    nul_padded: false,
                };
                let mut outcomes = vec![9u8; items];
                suite
                    .verify_batch(&batch, &responses, &mut outcomes, execution)
                    .unwrap();
                for (item, &outcome) in outcomes.iter().enumerate() {
                    let expected = if item % 3 == 0 {
                        Outcome::Wrong
                    } else {
                        Outcome::Ok
                    };
                    assert_eq!(outcome, expected as u8, "{algorithm:?} item {item}");
                }

                let counters: Vec<u64> = (0..items).map(|_| next() % 1000).collect();
                let otp = OtpBatch {
                    keys: batch.keys.clone(),
                    moving_factors: &counters,
                };
                let params = OtpParams::new(6).unwrap();
                let mode = OtpMode::Hotp {
                    params,
                    look_ahead: 2,
                };
                let mut otp_codes = vec![0u8; items * 6];
                otp.compute(mode, algorithm, &mut otp_codes, execution)
                    .unwrap();
                for (item, code) in otp_codes.chunks(6).enumerate() {
                    let expected = params.code(&own_key(item).unwrap(), counters[item]);
                    assert_eq!(code, expected.as_bytes(), "{algorithm:?} item {item}");
                }
                // Codes two counters ahead match at counter + 2, in input order.
                let ahead: Vec<u8> = (0..items)
                    .flat_map(|item| {
                        params
                            .code(&own_key(item).unwrap(), counters[item] + 2)
                            .into_bytes()
                    })
                    .collect();
                let codes = ByteColumn::Fixed {
                    data: &ahead,
                    width: 6,
                    nul_padded: false,
                };
                let mut matched = vec![0u64; items];
                otp.verify(
                    mode,
                    algorithm,
                    &codes,
                    &mut outcomes,
                    &mut matched,
                    execution,
                )
                .unwrap();
                assert!(outcomes.iter().all(|&o| o == Outcome::Ok as u8));
                let expected: Vec<u64> = counters.iter().map(|c| c + 2).collect();
                assert_eq!(matched, expected);
            }
        }
    }
}
