//! Code cards: the 3-digit codes of a card's index numbers (to print the card), and the two
//! codes a user typed checked one at a time or in batches.
//!
//! Card secrets cross into Rust as `bytes`; no error names a secret or a code.

use numpy::{PyArray1, PyArrayMethods};
use pyo3::prelude::*;
use sls_kernel::card as kernel;
use sls_kernel::{CardKey, Execution};

use crate::convert::{blob, column, small};
use crate::errors::{invalid, Result};
use crate::threads::run_batch;

fn card_key(secret: &Bound<'_, PyAny>) -> Result<CardKey> {
    Ok(CardKey::new(&blob(secret, "card_secret", false)?)?)
}

/// The 3-digit codes of index numbers 1..=count of a code card, as strings.
#[pyfunction]
#[pyo3(signature = (card_secret, count))]
pub fn card_codes(card_secret: &Bound<'_, PyAny>, count: &Bound<'_, PyAny>) -> Result<Vec<String>> {
    let key = card_key(card_secret)?;
    let count: u32 = small(count, "count", u64::from(kernel::MAX_INDEX))?;
    Ok(key
        .codes(count)?
        .into_iter()
        .map(|c| format!("{c:03}"))
        .collect())
}

/// Checks the two codes typed for index numbers `first` and `second` (concatenated, no
/// space): 0 OK, 1 WRONG, 2 MALFORMED.
#[pyfunction]
#[pyo3(signature = (card_secret, first, second, response))]
pub fn card_verify(
    card_secret: &Bound<'_, PyAny>,
    first: &Bound<'_, PyAny>,
    second: &Bound<'_, PyAny>,
    response: &Bound<'_, PyAny>,
) -> Result<u8> {
    let key = card_key(card_secret)?;
    let first: u32 = small(first, "first", u64::from(kernel::MAX_INDEX))?;
    let second: u32 = small(second, "second", u64::from(kernel::MAX_INDEX))?;
    let response = blob(response, "response", true)?;
    Ok(key.verify(first, second, &response) as u8)
}

/// Verifies N card answers: per-item secrets, packed index pairs (`first << 16 | second`,
/// uint32) and responses. A uint8 array of outcomes.
#[pyfunction]
#[pyo3(signature = (card_secrets, indices, responses, *, threads=None))]
pub fn card_verify_batch<'py>(
    py: Python<'py>,
    card_secrets: &Bound<'py, PyAny>,
    indices: &Bound<'py, PyAny>,
    responses: &Bound<'py, PyAny>,
    threads: Option<usize>,
) -> Result<Bound<'py, PyArray1<u8>>> {
    let secrets = column(card_secrets, "card_secrets", false)?;
    let responses = column(responses, "responses", true)?;
    let numpy = py.import("numpy")?;
    let indices = numpy
        .call_method1("ascontiguousarray", (indices, "u4"))
        .map_err(|_| invalid("indices", "must be a 1-D array of packed index pairs"))?;
    let indices = indices
        .cast_into::<PyArray1<u32>>()
        .map_err(|_| invalid("indices", "must be a 1-D array of packed index pairs"))?
        .readonly();
    let indices = indices.as_slice()?;
    let (secrets, responses) = (secrets.column()?, responses.column()?);
    let mut outcomes = vec![0u8; indices.len()];
    run_batch(py, indices.len(), threads, |execution: Execution| {
        kernel::verify_batch(&secrets, indices, &responses, &mut outcomes, execution)
    })?;
    Ok(PyArray1::from_vec(py, outcomes))
}
