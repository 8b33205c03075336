//! The audit trail's JSON lines (`sls_core.server.audit`), one per login decision,
//! formatted without a Python object per item.
//!
//! Python gives the head of each line: its first keys as JSON text, escaped once by
//! `json.dumps`, with the object left open. Here every line gets its username (escaped as
//! `json.dumps` does with its default `ensure_ascii`), device id and outcome name, with the
//! GIL released. It only ever sees what the callers pass, and they pass no secret.

use numpy::{Element, PyArray1, PyArrayMethods, PyReadonlyArray1, PyUntypedArray};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use crate::convert::int_param;
use crate::errors::{invalid, wrong_type, Result};

/// Smaller batches keep the GIL: for a few lines, handing it over costs more than the work.
const DETACH_MIN_ITEMS: usize = 1024;

/// The texts of a column one after another in one buffer, readable without the GIL.
#[derive(Debug, Default)]
struct Texts {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl Texts {
    fn push(&mut self, text: &[u8]) {
        self.bytes.extend_from_slice(text);
        self.ends.push(self.bytes.len());
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    fn get(&self, row: usize) -> &[u8] {
        let start = row.checked_sub(1).map_or(0, |before| self.ends[before]);
        &self.bytes[start..self.ends[row]]
    }
}

/// The head of every line, or one per line (single calls verified together).
#[derive(Debug)]
enum Heads {
    One(Vec<u8>),
    PerItem(Texts),
}

impl Heads {
    fn get(&self, row: usize) -> &[u8] {
        match self {
            Heads::One(head) => head,
            Heads::PerItem(heads) => heads.get(row),
        }
    }
}

/// The items of a sequence of str (a list, a tuple, a protobuf repeated field). A row
/// where `blank(row)` is stored empty without being read. With `escaped`, a str holding
/// lone surrogates (not UTF-8) keeps them as `surrogatepass` bytes for
/// [`push_json_ascii`]; otherwise it is refused.
fn texts(
    obj: &Bound<'_, PyAny>,
    field: &str,
    escaped: bool,
    blank: impl Fn(usize) -> bool,
) -> Result<Texts> {
    const EXPECTED: &str = "a sequence of str, one per item";
    if obj.is_instance_of::<PyString>() {
        return Err(wrong_type(field, EXPECTED, obj));
    }
    let rows = obj.len().map_err(|_| wrong_type(field, EXPECTED, obj))?;
    let mut out = Texts {
        bytes: Vec::with_capacity(rows * 8),
        ends: Vec::with_capacity(rows),
    };
    for (row, item) in obj.try_iter()?.enumerate() {
        let item = item?;
        if blank(row) {
            out.push(b"");
            continue;
        }
        let text = item
            .cast::<PyString>()
            .map_err(|_| wrong_type(field, &format!("str at row {row}"), &item))?;
        match text.to_str() {
            Ok(text) => out.push(text.as_bytes()),
            Err(_) if escaped => {
                let raw = text.call_method1("encode", ("utf-8", "surrogatepass"))?;
                out.push(raw.cast::<PyBytes>()?.as_bytes());
            }
            Err(_) => {
                return Err(invalid(
                    field,
                    format!("row {row}: must be text without lone surrogates"),
                ))
            }
        }
    }
    Ok(out)
}

/// A 1-D numpy array of exactly `T`: the audit trail takes the domain's result columns
/// as they are, so another dtype is a caller's bug, not something to convert.
fn numpy_column<'py, T: Element>(
    obj: &Bound<'py, PyAny>,
    field: &str,
    dtype: &str,
) -> Result<PyReadonlyArray1<'py, T>> {
    let expected = format!("a 1-D numpy {dtype} array");
    if !obj.is_instance_of::<PyUntypedArray>() {
        return Err(wrong_type(field, &expected, obj));
    }
    let array = obj.cast::<PyArray1<T>>().map_err(|_| {
        let got = obj
            .getattr("dtype")
            .and_then(|d| d.str().map(|s| s.to_string()))
            .unwrap_or_default();
        let ndim = obj
            .getattr("ndim")
            .and_then(|n| n.extract::<usize>())
            .unwrap_or_default();
        invalid(
            field,
            format!("must be {expected}, got dtype {got} with {ndim} dimension(s)"),
        )
    })?;
    Ok(array.readonly())
}

/// A copy of the array's items: another Python thread could write to the array while
/// the GIL is released, and both passes must read the same values.
fn values<T: Element + Copy>(array: &Bound<'_, PyAny>, field: &str, dtype: &str) -> Result<Vec<T>> {
    Ok(numpy_column::<T>(array, field, dtype)?.as_array().to_vec())
}

fn same_length(field: &str, len: usize, rows: usize) -> Result<()> {
    if len == rows {
        return Ok(());
    }
    Err(invalid(
        field,
        format!("must have one item per outcome ({rows}), got {len}"),
    ))
}

/// The UTF-8 bytes of the audit lines of a batch, ready for one `write`.
///
/// Line `i` is `head[i]` (or `head` for every line: JSON text of an object's first keys,
/// without its closing brace) then `username`, `device_id` and `outcome` (the name of
/// `outcomes[i]` in `outcome_names`). A username whose outcome is `blank_username_outcome`
/// is written as `""` and never read: it failed validation and may be a password.
#[pyfunction]
#[pyo3(signature = (head, usernames, device_ids, outcomes, *, outcome_names, blank_username_outcome))]
pub fn audit_lines<'py>(
    py: Python<'py>,
    head: &Bound<'py, PyAny>,
    usernames: &Bound<'py, PyAny>,
    device_ids: &Bound<'py, PyAny>,
    outcomes: &Bound<'py, PyAny>,
    outcome_names: &Bound<'py, PyAny>,
    blank_username_outcome: &Bound<'py, PyAny>,
) -> Result<Bound<'py, PyBytes>> {
    let outcomes = values::<u8>(outcomes, "outcomes", "uint8")?;
    let rows = outcomes.len();
    let device_ids = values::<u64>(device_ids, "device_ids", "uint64")?;
    same_length("device_ids", device_ids.len(), rows)?;

    let names = texts(outcome_names, "outcome_names", true, |_| false)?;
    let tails: Vec<Vec<u8>> = (0..names.len()).map(|v| tail(names.get(v))).collect();
    if let Some(row) = outcomes.iter().position(|&o| usize::from(o) >= tails.len()) {
        return Err(invalid(
            "outcomes",
            format!(
                "row {row}: {} has no name in outcome_names ({} names)",
                outcomes[row],
                tails.len()
            ),
        ));
    }

    let blank: u8 = int_param(
        blank_username_outcome,
        "blank_username_outcome",
        "must be an integer from 0 to 255",
    )?;
    let usernames = texts(usernames, "usernames", true, |row| {
        outcomes.get(row) == Some(&blank)
    })?;
    same_length("usernames", usernames.len(), rows)?;

    let heads = match head.cast::<PyString>() {
        Ok(text) => Heads::One(
            text.to_str()
                .map_err(|_| invalid("head", "must be text without lone surrogates"))?
                .as_bytes()
                .to_vec(),
        ),
        Err(_) => {
            if head.len().is_err() {
                return Err(wrong_type(
                    "head",
                    "str, or a sequence of str (one per item)",
                    head,
                ));
            }
            let heads = texts(head, "head", false, |_| false)?;
            same_length("head", heads.len(), rows)?;
            Heads::PerItem(heads)
        }
    };

    // Two passes over the items, both without the GIL for a big batch: the exact length,
    // then the lines written straight into the bytes object (no second copy of the output).
    let columns = Columns {
        heads: &heads,
        usernames: &usernames,
        device_ids: &device_ids,
        outcomes: &outcomes,
        tails: &tails,
    };
    let len = run(py, rows, || {
        let mut counter = Counter(0);
        columns.write_lines(&mut counter);
        counter.0
    });
    Ok(PyBytes::new_with(py, len, |buffer| {
        let mut cursor = Cursor { buffer, at: 0 };
        run(py, rows, || columns.write_lines(&mut cursor));
        assert_eq!(cursor.at, len, "both passes write the same lines");
        Ok(())
    })?)
}

/// `work` without the GIL, unless the batch is too small for that to pay.
fn run<T: Send>(py: Python<'_>, rows: usize, work: impl FnOnce() -> T + Send) -> T {
    if rows < DETACH_MIN_ITEMS {
        work()
    } else {
        py.detach(work)
    }
}

/// Where the lines go: first a [`Counter`] for their length, then a [`Cursor`] into the
/// bytes object (a `Vec` for the few bytes of an outcome's tail).
trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

struct Counter(usize);

impl Sink for Counter {
    fn put(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }
}

struct Cursor<'a> {
    buffer: &'a mut [u8],
    at: usize,
}

impl Sink for Cursor<'_> {
    fn put(&mut self, bytes: &[u8]) {
        let end = self.at + bytes.len();
        self.buffer[self.at..end].copy_from_slice(bytes);
        self.at = end;
    }
}

/// The end of a line with this outcome name.
fn tail(name: &[u8]) -> Vec<u8> {
    let mut tail = b",\"outcome\":\"".to_vec();
    push_json_ascii(&mut tail, name);
    tail.extend_from_slice(b"\"}\n");
    tail
}

/// A batch's inputs, converted: every outcome has a tail, every column `outcomes.len()` rows.
#[derive(Debug, Clone, Copy)]
struct Columns<'a> {
    heads: &'a Heads,
    usernames: &'a Texts,
    device_ids: &'a [u64],
    outcomes: &'a [u8],
    tails: &'a [Vec<u8>],
}

impl Columns<'_> {
    fn write_lines(&self, out: &mut impl Sink) {
        let rows = self.device_ids.iter().zip(self.outcomes).enumerate();
        for (row, (&device_id, &outcome)) in rows {
            out.put(self.heads.get(row));
            out.put(b",\"username\":\"");
            push_json_ascii(out, self.usernames.get(row));
            out.put(b"\",\"device_id\":");
            push_decimal(out, device_id);
            out.put(&self.tails[usize::from(outcome)]);
        }
    }
}

fn push_decimal(out: &mut impl Sink, mut value: u64) {
    let mut digits = [0u8; 20]; // u64::MAX has 20 digits
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.put(&digits[start..]);
}

/// The body of a JSON string as `json.dumps` writes it with `ensure_ascii`: printable
/// ASCII as is, `"` `\` and `\n \r \t \b \f` as short escapes, everything else as
/// `\uXXXX` (lower-case hex) of its UTF-16 code units, so a line is ASCII whatever it holds.
fn push_json_ascii(out: &mut impl Sink, text: &[u8]) {
    let mut plain = 0; // start of the run copied as is
    let mut at = 0;
    while let Some(&byte) = text.get(at) {
        if (b' '..=b'~').contains(&byte) && byte != b'"' && byte != b'\\' {
            at += 1;
            continue;
        }
        out.put(&text[plain..at]);
        let (code_point, width) = decode(text, at);
        at += width;
        plain = at;
        match code_point {
            0x22 => out.put(b"\\\""),
            0x5c => out.put(b"\\\\"),
            0x0a => out.put(b"\\n"),
            0x0d => out.put(b"\\r"),
            0x09 => out.put(b"\\t"),
            0x08 => out.put(b"\\b"),
            0x0c => out.put(b"\\f"),
            0x10000.. => {
                let offset = code_point - 0x10000;
                push_unicode_escape(out, 0xd800 | (offset >> 10));
                push_unicode_escape(out, 0xdc00 | (offset & 0x3ff));
            }
            _ => push_unicode_escape(out, code_point),
        }
    }
    out.put(&text[plain..]);
}

fn push_unicode_escape(out: &mut impl Sink, unit: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digit = |shift: u32| HEX[((unit >> shift) & 0xf) as usize];
    out.put(&[b'\\', b'u', digit(12), digit(8), digit(4), digit(0)]);
}

/// The code point starting at `text[at]` and its length in bytes. `text` comes from a
/// Python str: UTF-8, where a lone surrogate is its own three bytes (`surrogatepass`).
/// A malformed byte, which Python never gives, reads as U+FFFD.
fn decode(text: &[u8], at: usize) -> (u32, usize) {
    const MALFORMED: (u32, usize) = (0xfffd, 1);
    let lead = text[at];
    let (width, bits) = match lead {
        0x00..=0x7f => return (u32::from(lead), 1),
        0xc2..=0xdf => (2, lead & 0x1f),
        0xe0..=0xef => (3, lead & 0x0f),
        0xf0..=0xf4 => (4, lead & 0x07),
        _ => return MALFORMED,
    };
    let Some(continuation) = text.get(at + 1..at + width) else {
        return MALFORMED;
    };
    let mut code_point = u32::from(bits);
    for &byte in continuation {
        if byte & 0xc0 != 0x80 {
            return MALFORMED;
        }
        code_point = (code_point << 6) | u32::from(byte & 0x3f);
    }
    if code_point > 0x10ffff {
        return MALFORMED;
    }
    (code_point, width)
}
