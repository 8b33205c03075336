//! Python and numpy inputs as kernel columns, with errors that name the field.
//!
//! Byte strings are held as `PyBackedBytes`/`PyBackedStr` (immutable, owned references), so
//! the kernel can read them with the GIL released. numpy `S` arrays become a borrowed
//! (rows, itemsize) `uint8` view: no per-item Python object is ever created for them.

use std::ops::Deref;
use std::sync::Arc;

use numpy::{
    PyArray1, PyArray2, PyArrayDescrMethods, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2,
    PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use pyo3::pybacked::{PyBackedBytes, PyBackedStr};
use pyo3::types::{PyByteArray, PyBytes, PyFloat, PyInt, PyMemoryView, PyString};
use sls_kernel::{ByteColumn, Execution, HashAlgorithm, KeyColumn};
use zeroize::Zeroizing;

use crate::errors::{invalid, wrong_type, Error, InvalidSuiteError, Result};
use crate::threads::run_batch;

/// An immutable byte string borrowed from Python.
pub enum Blob {
    Bytes(PyBackedBytes),
    Str(PyBackedStr),
}

impl Deref for Blob {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Blob::Bytes(b) => b,
            Blob::Str(s) => s.as_bytes(),
        }
    }
}

/// bytes, bytearray or memoryview; with `allow_str`, also str (as UTF-8).
pub fn blob(obj: &Bound<'_, PyAny>, field: &str, allow_str: bool) -> Result<Blob> {
    if obj.is_instance_of::<PyBytes>() || obj.is_instance_of::<PyByteArray>() {
        return Ok(Blob::Bytes(obj.extract()?));
    }
    if allow_str && obj.is_instance_of::<PyString>() {
        return match obj.extract::<PyBackedStr>() {
            Ok(text) => Ok(Blob::Str(text)),
            // Lone surrogates: keep the bytes so the value is judged (malformed) like any
            // other non-digit text, instead of failing the call.
            Err(_) => {
                let raw = obj.call_method1("encode", ("utf-8", "surrogatepass"))?;
                Ok(Blob::Bytes(raw.extract()?))
            }
        };
    }
    if obj.is_instance_of::<PyMemoryView>() {
        let copy = PyBytes::new(
            obj.py(),
            &obj.call_method0("tobytes")?.extract::<Vec<u8>>()?,
        );
        return Ok(Blob::Bytes(copy.into_any().extract()?));
    }
    let expected = if allow_str { "str or bytes" } else { "bytes" };
    Err(wrong_type(field, expected, obj))
}

/// A Python `int` (not a float, str, None or numpy scalar), as an i128: wide enough for
/// every parameter. A larger value saturates with its sign, so it stays outside every range.
fn integer(obj: &Bound<'_, PyAny>, field: &str) -> Result<i128> {
    if !obj.is_instance_of::<PyInt>() {
        return Err(wrong_type(field, "int", obj));
    }
    match obj.extract::<i128>() {
        Ok(value) => Ok(value),
        Err(_) if obj.lt(0)? => Ok(i128::MIN),
        Err(_) => Ok(i128::MAX),
    }
}

/// An int parameter as the Rust integer `T`; a value `T` cannot hold breaks `rule`.
/// (PyO3's own conversion would raise a plain OverflowError or TypeError.)
pub fn int_param<T: TryFrom<i128>>(obj: &Bound<'_, PyAny>, field: &str, rule: &str) -> Result<T> {
    T::try_from(integer(obj, field)?).map_err(|_| invalid(field, rule))
}

/// A non-negative integer that fits in 64 bits.
pub fn unsigned(obj: &Bound<'_, PyAny>, field: &str) -> Result<u64> {
    int_param(obj, field, "must be an integer from 0 to 2**64-1")
}

/// Exactly `N` bytes from bytes-like `obj`; the copy is wiped when dropped.
pub fn secret_bytes<const N: usize>(
    obj: &Bound<'_, PyAny>,
    field: &str,
    what: &str,
) -> Result<Zeroizing<[u8; N]>> {
    let data = blob(obj, field, false)?;
    if data.len() != N {
        return Err(invalid(field, format!("must be {what} of {N} bytes")));
    }
    let mut out = Zeroizing::new([0u8; N]);
    out.copy_from_slice(&data);
    Ok(out)
}

/// Exactly `N` bytes of public data from bytes-like `obj`.
pub fn public_bytes<const N: usize>(
    obj: &Bound<'_, PyAny>,
    field: &str,
    what: &str,
) -> Result<[u8; N]> {
    let data = blob(obj, field, false)?;
    <[u8; N]>::try_from(&*data).map_err(|_| invalid(field, format!("must be {what} of {N} bytes")))
}

/// An integer from 0 to 255 (a key id, flags, a decision).
pub fn byte_param(obj: &Bound<'_, PyAny>, field: &str) -> Result<u8> {
    int_param(obj, field, "must be an integer from 0 to 255")
}

/// An integer from 0 to `max` as `T` (a key id, a card index, a challenge).
pub fn small<T: TryFrom<u64>>(obj: &Bound<'_, PyAny>, field: &str, max: u64) -> Result<T> {
    let value = unsigned(obj, field)?;
    if value > max {
        return Err(invalid(field, format!("must be at most {max}")));
    }
    T::try_from(value).map_err(|_| invalid(field, format!("must be at most {max}")))
}

const NO_SURROGATES: &str = "must be text without lone surrogates";

/// A `str` parameter, borrowed; `None` when it holds lone surrogates (not UTF-8).
fn text<'a>(obj: &'a Bound<'_, PyAny>, field: &str) -> Result<Option<&'a str>> {
    let text = obj
        .cast::<PyString>()
        .map_err(|_| wrong_type(field, "str", obj))?;
    Ok(text.to_str().ok())
}

// Converters for the entry points' typed parameters (`#[pyo3(from_py_with = ...)]`), so a
// value of the wrong type or out of the Rust type's range raises an sls_core error naming
// the field, as every other bad input does. PyO3 wants a `PyResult` from these.

pub fn suite_arg<'a>(obj: &'a Bound<'_, PyAny>) -> PyResult<&'a str> {
    text(obj, "suite")?.ok_or_else(|| InvalidSuiteError::new_err(("suite", NO_SURROGATES)))
}

pub fn algorithm_arg<'a>(obj: &'a Bound<'_, PyAny>) -> PyResult<&'a str> {
    Ok(text(obj, "algorithm")?.ok_or_else(|| invalid("algorithm", NO_SURROGATES))?)
}

pub fn kind_arg<'a>(obj: &'a Bound<'_, PyAny>) -> PyResult<&'a str> {
    Ok(text(obj, "kind")?.ok_or_else(|| invalid("kind", NO_SURROGATES))?)
}

pub fn digits_arg(obj: &Bound<'_, PyAny>) -> PyResult<u8> {
    Ok(int_param(obj, "digits", sls_kernel::otp::OTP_DIGITS_RULE)?)
}

pub fn step_arg(obj: &Bound<'_, PyAny>) -> PyResult<u64> {
    Ok(int_param(
        obj,
        "step",
        "must be at least 1 second and at most 2**64-1",
    )?)
}

pub fn t0_arg(obj: &Bound<'_, PyAny>) -> PyResult<u64> {
    Ok(unsigned(obj, "t0")?)
}

/// HOTP's `window`: counters of look-ahead (TOTP's window may also be a tuple).
pub fn look_ahead_arg(obj: &Bound<'_, PyAny>) -> PyResult<u64> {
    Ok(unsigned(obj, "window")?)
}

/// `threads`: None (the default count) or an int. A value outside `usize` saturates (a
/// negative one to 0), so `threads::thread_count` refuses it with the bound it breaks.
pub fn threads_arg(obj: Option<&Bound<'_, PyAny>>) -> Result<Option<usize>> {
    obj.map(|obj| Ok(usize::try_from(integer(obj, "threads")?.max(0)).unwrap_or(usize::MAX)))
        .transpose()
}

/// Unix time in whole seconds from an int, or a float rounded down.
pub fn unix_seconds(obj: &Bound<'_, PyAny>, field: &str) -> Result<u64> {
    if obj.is_instance_of::<PyFloat>() {
        let value: f64 = obj.extract()?;
        if !value.is_finite() || !(0.0..18446744073709551616.0).contains(&value) {
            return Err(invalid(
                field,
                "must be a finite, non-negative Unix time in seconds",
            ));
        }
        return Ok(value.floor() as u64);
    }
    unsigned(obj, field).map_err(|e| {
        if obj.is_instance_of::<PyInt>() {
            invalid(field, "must be a non-negative Unix time in seconds")
        } else {
            e
        }
    })
}

pub fn algorithm(name: &str) -> Result<HashAlgorithm> {
    Ok(HashAlgorithm::from_name(name)?)
}

/// One column of byte strings from Python.
pub enum ColumnData<'py> {
    Matrix {
        array: PyReadonlyArray2<'py, u8>,
        nul_padded: bool,
    },
    Rows(Vec<Blob>),
    Empty(usize),
}

impl ColumnData<'_> {
    pub fn column(&self) -> Result<ByteColumn<'_>> {
        Ok(match self {
            ColumnData::Matrix { array, nul_padded } => {
                let width = array.shape()[1];
                if width == 0 {
                    ByteColumn::Rows(vec![&[][..]; array.shape()[0]])
                } else {
                    ByteColumn::Fixed {
                        data: array.as_slice()?,
                        width,
                        nul_padded: *nul_padded,
                    }
                }
            }
            ColumnData::Rows(rows) => ByteColumn::Rows(rows.iter().map(|b| &**b).collect()),
            ColumnData::Empty(n) => ByteColumn::Rows(vec![&[][..]; *n]),
        })
    }
}

fn contiguous<'py>(obj: &Bound<'py, PyAny>) -> Result<Bound<'py, PyAny>> {
    let numpy = obj.py().import("numpy")?;
    Ok(numpy.call_method1("ascontiguousarray", (obj,))?)
}

/// A column of byte strings: a list/tuple of bytes (or str with `allow_str`), a numpy
/// `S` array (NUL-padded), a numpy `U` array (encoded as UTF-8) or a 2-D `uint8` matrix
/// (one row per item, used as is).
pub fn column<'py>(
    obj: &Bound<'py, PyAny>,
    field: &str,
    allow_str: bool,
) -> Result<ColumnData<'py>> {
    if let Ok(array) = obj.cast::<PyUntypedArray>() {
        let dtype = array.dtype();
        let kind = dtype.kind();
        let ndim = array.ndim();
        if kind == b'u' && ndim == 2 && dtype.itemsize() == 1 {
            let matrix = contiguous(obj)?;
            let typed = matrix.cast_into::<PyArray2<u8>>()?;
            return Ok(ColumnData::Matrix {
                array: typed.readonly(),
                nul_padded: false,
            });
        }
        if ndim != 1 {
            return Err(invalid(
                field,
                "a numpy column must be 1-D (S or U dtype) or a 2-D uint8 matrix",
            ));
        }
        let array = match kind {
            b'S' => contiguous(obj)?,
            b'U' if allow_str => {
                let numpy = obj.py().import("numpy")?;
                numpy
                    .getattr("char")?
                    .call_method1("encode", (obj, "utf-8", "surrogatepass"))?
            }
            b'O' => return rows(obj, field, allow_str),
            _ => {
                let expected = if allow_str {
                    "numpy S or U array"
                } else {
                    "numpy S array or 2-D uint8 matrix"
                };
                return Err(invalid(
                    field,
                    format!("expected a {expected}, got dtype kind {:?}", kind as char),
                ));
            }
        };
        let rows = array.len()?;
        let width: usize = array.getattr("itemsize")?.extract()?;
        if width == 0 {
            return Ok(ColumnData::Empty(rows));
        }
        let matrix = array
            .call_method1("view", ("u1",))?
            .call_method1("reshape", ((rows, width),))?;
        let typed = matrix.cast_into::<PyArray2<u8>>()?;
        // numpy pads S cells with NULs; text columns end at the padding, while binary
        // columns (keys, PIN hashes, sessions) keep every byte, since a digest may end in 0x00.
        return Ok(ColumnData::Matrix {
            array: typed.readonly(),
            nul_padded: allow_str,
        });
    }
    rows(obj, field, allow_str)
}

fn rows<'py>(obj: &Bound<'py, PyAny>, field: &str, allow_str: bool) -> Result<ColumnData<'py>> {
    if obj.is_instance_of::<PyString>() || obj.is_instance_of::<PyBytes>() {
        return Err(wrong_type(
            field,
            "a sequence of byte strings, one per item",
            obj,
        ));
    }
    let expected = if allow_str { "str or bytes" } else { "bytes" };
    let iter = obj
        .try_iter()
        .map_err(|_| wrong_type(field, "a sequence or numpy array", obj))?;
    let mut out = Vec::with_capacity(obj.len().unwrap_or(0));
    for (row, item) in iter.enumerate() {
        let item = item?;
        out.push(blob(&item, field, allow_str).map_err(|_| {
            let type_name = item
                .get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default();
            Error::WrongType {
                field: field.to_owned(),
                rule: format!("row {row}: expected {expected}, got {type_name}"),
            }
        })?);
    }
    Ok(ColumnData::Rows(out))
}

/// A column of unsigned 64-bit integers.
pub enum IntColumn<'py> {
    Array(PyReadonlyArray1<'py, u64>),
    Owned(Vec<u64>),
}

impl IntColumn<'_> {
    pub fn as_slice(&self) -> Result<&[u64]> {
        match self {
            IntColumn::Array(a) => Ok(a.as_slice()?),
            IntColumn::Owned(v) => Ok(v),
        }
    }
}

/// Integers from a numpy integer array (no copy when already contiguous uint64) or a list.
pub fn int_column<'py>(obj: &Bound<'py, PyAny>, field: &str) -> Result<IntColumn<'py>> {
    if let Ok(array) = obj.cast::<PyUntypedArray>() {
        let kind = array.dtype().kind();
        if array.ndim() != 1 || !(kind == b'i' || kind == b'u') {
            return Err(invalid(
                field,
                "a numpy column of integers must be a 1-D integer array",
            ));
        }
        if kind == b'i' {
            let negative: bool = obj
                .call_method1("__lt__", (0,))?
                .call_method0("any")?
                .extract()?;
            if negative {
                return Err(invalid(field, "must not contain negative values"));
            }
        }
        let numpy = obj.py().import("numpy")?;
        let converted = numpy.call_method1("ascontiguousarray", (obj, "u8"))?;
        let typed = converted.cast_into::<PyArray1<u64>>()?;
        return Ok(IntColumn::Array(typed.readonly()));
    }
    if obj.is_instance_of::<PyInt>() || obj.is_instance_of::<PyString>() {
        return Err(wrong_type(
            field,
            "a sequence of integers, one per item",
            obj,
        ));
    }
    let iter = obj
        .try_iter()
        .map_err(|_| wrong_type(field, "a sequence or numpy array of integers", obj))?;
    let mut out = Vec::with_capacity(obj.len().unwrap_or(0));
    for (row, item) in iter.enumerate() {
        let item = item?;
        if !item.is_instance_of::<PyInt>() {
            return Err(wrong_type(field, &format!("int at row {row}"), &item));
        }
        out.push(item.extract::<u64>().map_err(|_| {
            invalid(
                field,
                format!("row {row}: must be an integer from 0 to 2**64-1"),
            )
        })?);
    }
    Ok(IntColumn::Owned(out))
}

/// HMAC keys prepared once, for servers that verify the same devices all day.
///
/// Batches refer to a table's keys by row (`key_index`), and each MAC then skips the two
/// key-pad compressions. The table never exposes its keys: no getter, no pickling, and a
/// repr with only the algorithm and the count.
#[pyclass(frozen, module = "sls_core", name = "KeyTable")]
pub struct KeyTable {
    pub inner: Arc<sls_kernel::KeyTable>,
}

impl std::fmt::Debug for KeyTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The kernel table's Debug redacts every key.
        self.inner.fmt(f)
    }
}

#[pymethods]
impl KeyTable {
    #[new]
    #[pyo3(signature = (keys, *, algorithm = "sha1", threads = None))]
    fn new(
        py: Python<'_>,
        keys: &Bound<'_, PyAny>,
        #[pyo3(from_py_with = algorithm_arg)] algorithm: &str,
        threads: Option<&Bound<'_, PyAny>>,
    ) -> Result<Self> {
        let algorithm = self::algorithm(algorithm)?;
        let threads = threads_arg(threads)?;
        let data = column(keys, "keys", false)?;
        let column = data.column()?;
        let table = run_batch(py, column.len(), threads, |execution: Execution| {
            sls_kernel::KeyTable::new(algorithm, &column, execution)
        })?;
        Ok(KeyTable {
            inner: Arc::new(table),
        })
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    /// The HMAC hash every key was prepared for.
    #[getter]
    fn algorithm(&self) -> &'static str {
        self.inner.algorithm().name()
    }

    fn __repr__(&self) -> String {
        format!(
            "KeyTable(algorithm={:?}, keys={})",
            self.inner.algorithm().name(),
            self.inner.len()
        )
    }

    fn __reduce__(&self) -> PyResult<()> {
        Err(pyo3::exceptions::PyTypeError::new_err(
            "KeyTable cannot be pickled: it holds key material",
        ))
    }
}

/// The key source of a batch: a `KeyTable` (optionally with `key_index`) or raw keys.
pub enum KeysData<'py> {
    Table(Arc<sls_kernel::KeyTable>, Option<IntColumn<'py>>),
    Raw(ColumnData<'py>),
}

pub fn keys_data<'py>(
    keys: &Bound<'py, PyAny>,
    key_index: Option<&Bound<'py, PyAny>>,
) -> Result<KeysData<'py>> {
    if let Ok(table) = keys.cast::<KeyTable>() {
        let index = key_index.map(|i| int_column(i, "key_index")).transpose()?;
        return Ok(KeysData::Table(Arc::clone(&table.get().inner), index));
    }
    if key_index.is_some() {
        return Err(invalid("key_index", "only allowed when keys is a KeyTable"));
    }
    Ok(KeysData::Raw(column(keys, "keys", false)?))
}

impl KeysData<'_> {
    pub fn column(&self) -> Result<KeyColumn<'_>> {
        Ok(match self {
            KeysData::Table(table, index) => KeyColumn::Prepared {
                table,
                index: index.as_ref().map(|i| i.as_slice()).transpose()?,
            },
            KeysData::Raw(data) => KeyColumn::Raw(data.column()?),
        })
    }
}

/// Codes computed into an (N, width) matrix, returned to Python as a uint8 array.
pub fn code_matrix<'py>(
    py: Python<'py>,
    codes: Vec<u8>,
    rows: usize,
    width: usize,
) -> Result<Bound<'py, PyArray2<u8>>> {
    let flat = PyArray1::from_vec(py, codes);
    Ok(flat.reshape([rows, width])?)
}
