//! Sealed values opened in batches: the data keys of a `MasterKeyRing` as a native
//! `DataKeys`, and a whole column of device records opened in one call.
//!
//! Keys cross into Rust as `bytes` and live in the kernel's AES key schedules, wiped on
//! drop (Python's own `bytes` cannot be). A record that does not open raises
//! `sls_core.sealing.SealingError` naming the record (device id and field), its key id and
//! the rule, never a key or a plaintext.

use numpy::{PyArray1, PyArrayMethods, PyReadonlyArray1};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyBytes, PyDict, PyList};
use sls_kernel::sealing::{
    device_aad, DataKeys as KernelDataKeys, SealingError as Failure, KEY_BYTES, KEY_ID_RULE,
};
use sls_kernel::Execution;
use zeroize::Zeroizing;

use crate::convert::threads_arg;
use crate::errors::{invalid, wrong_type, Error, Result};
use crate::threads::run_batch;

pyo3::import_exception!(sls_core.sealing, SealingError);

/// Raises `SealingError(key_id, rule, record)`.
fn sealing_error(failure: &Failure, record: Option<String>) -> Error {
    Error::Py(SealingError::new_err((
        failure.key_id().map(str::to_owned),
        failure.rule(),
        record,
    )))
}

/// A record's field name: part of its associated data, so only a short plain name.
fn field_name(what: &str) -> Result<&str> {
    let plain = !what.is_empty()
        && what.len() <= 32
        && what.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    if plain {
        Ok(what)
    } else {
        Err(invalid("what", "must be 1-32 characters from [a-z_]"))
    }
}

/// The master keys of a key ring, by key id. No getter, no pickling; the repr shows the
/// key ids only.
#[pyclass(frozen, module = "sls_core", name = "DataKeys")]
#[derive(Debug)]
pub struct DataKeys {
    keys: KernelDataKeys,
}

#[pymethods]
impl DataKeys {
    /// `keys`: a dict of key id (str) to 32 raw bytes.
    #[new]
    fn new(keys: &Bound<'_, PyAny>) -> Result<Self> {
        let keys = keys
            .cast::<PyDict>()
            .map_err(|_| wrong_type("keys", "dict", keys))?;
        let mut ring = KernelDataKeys::new();
        for (key_id, key) in keys.iter() {
            let key_id: String = key_id
                .extract()
                .map_err(|_| wrong_type("keys", "str key ids", &key_id))?;
            let plain_id = (1..=32).contains(&key_id.len())
                && key_id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !plain_id {
                // Never echoed: a key pasted in the wrong place must not be shown.
                return Err(invalid("keys", format!("a key id {KEY_ID_RULE}")));
            }
            if !key.is_instance_of::<PyBytes>() {
                return Err(wrong_type(&format!("keys.{key_id}"), "bytes", &key));
            }
            let bytes = Zeroizing::new(key.extract::<Vec<u8>>()?);
            if bytes.len() != KEY_BYTES {
                return Err(invalid(
                    &format!("keys.{key_id}"),
                    format!("must be exactly {KEY_BYTES} bytes, got {}", bytes.len()),
                ));
            }
            ring.insert(&key_id, &bytes)?;
        }
        Ok(DataKeys { keys: ring })
    }

    /// Every key id, sorted.
    #[getter]
    fn key_ids(&self) -> Vec<String> {
        self.keys.key_ids().into_iter().map(str::to_owned).collect()
    }

    /// One record bound to `aad` (the Python path's `MasterKeyRing.open`, natively).
    fn open<'py>(&self, py: Python<'py>, sealed: &[u8], aad: &[u8]) -> Result<Bound<'py, PyBytes>> {
        let plaintext = self
            .keys
            .open(sealed, aad)
            .map_err(|f| sealing_error(&f, None))?;
        Ok(PyBytes::new(py, &plaintext))
    }

    /// A column of device records: `sealed[i]` (bytes or None) is the value of field
    /// `what` of device `device_ids[i]`, bound to `device:{id}:{what}`. Returns
    /// `(data, offsets, present, padded)`: row `i` is `data[offsets[i]:offsets[i + 1]]`
    /// where `present[i]`; with `width`, `padded` is every row zero-padded to `width`
    /// bytes (all zeros where longer), else None.
    #[pyo3(signature = (device_ids, sealed, what, *, width = None, threads = None))]
    #[allow(clippy::type_complexity)]
    fn open_device_column<'py>(
        &self,
        py: Python<'py>,
        device_ids: PyReadonlyArray1<'py, i64>,
        sealed: &Bound<'py, PyAny>,
        what: &str,
        width: Option<usize>,
        threads: Option<&Bound<'py, PyAny>>,
    ) -> Result<(
        Bound<'py, PyArray1<u8>>,
        Bound<'py, PyArray1<i64>>,
        Bound<'py, PyArray1<bool>>,
        Option<Bound<'py, PyAny>>,
    )> {
        let what = field_name(what)?;
        let threads = threads_arg(threads)?;
        if width == Some(0) {
            return Err(invalid("width", "must be at least 1"));
        }
        let ids = device_ids.as_slice()?;
        let list = sealed
            .cast::<PyList>()
            .map_err(|_| wrong_type("sealed", "list", sealed))?;
        if list.len() != ids.len() {
            return Err(invalid(
                "sealed",
                format!(
                    "must have one item per device id ({}), got {}",
                    ids.len(),
                    list.len()
                ),
            ));
        }
        let mut held: Vec<Option<PyBackedBytes>> = Vec::with_capacity(list.len());
        for item in list.iter() {
            if item.is_none() {
                held.push(None);
            } else if item.is_instance_of::<PyBytes>() {
                held.push(Some(item.extract()?));
            } else {
                return Err(wrong_type("sealed", "a list of bytes or None", &item));
            }
        }
        let rows: Vec<Option<&[u8]>> = held.iter().map(|b| b.as_deref()).collect();
        let opened = run_batch(py, rows.len(), threads, |execution: Execution| {
            self.keys
                .open_column(&rows, |i, out| device_aad(ids[i], what, out), execution)
                .map_err(|(i, failure)| {
                    sealing_error(&failure, Some(format!("device {} {what}", ids[i])))
                })
        })?;
        // Padded first: it reads the plaintexts that `data` then moves out.
        let padded = match width {
            None => None,
            Some(width) => {
                let mut cells = opened.padded(width);
                let flat = PyArray1::from_vec(py, std::mem::take(&mut *cells));
                Some(flat.reshape([opened.len(), width])?.into_any())
            }
        };
        let mut opened = opened;
        // The buffers move into numpy (no copy): from here on they are Python memory,
        // like the directory's key columns they become.
        let data = PyArray1::from_vec(py, std::mem::take(&mut *opened.data));
        let offsets: Vec<i64> = opened
            .offsets
            .iter()
            .map(|&o| i64::try_from(o).unwrap_or(i64::MAX))
            .collect();
        let offsets = PyArray1::from_vec(py, offsets);
        let present = PyArray1::from_slice(py, &opened.present);
        Ok((data, offsets, present, padded))
    }

    fn __repr__(&self) -> String {
        format!("DataKeys(key_ids={:?})", self.keys.key_ids())
    }

    fn __reduce__(&self) -> PyResult<()> {
        Err(pyo3::exceptions::PyTypeError::new_err(
            "DataKeys cannot be pickled: it holds key material",
        ))
    }
}
