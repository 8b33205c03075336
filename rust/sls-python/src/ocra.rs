//! OCRA entry points: scalar compute/verify and batch verify/compute.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use numpy::{PyArray1, PyArray2};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use sls_kernel::batch::{code_width, OcraBatch};
use sls_kernel::{Execution, HmacKey, OcraInput, OcraSuite, Outcome};

use crate::convert::{
    blob, code_matrix, column, int_column, keys_data, suite_arg, threads_arg, unix_seconds,
    unsigned, Blob, ColumnData, IntColumn,
};
use crate::errors::{invalid, Result};
use crate::threads::run_batch;

thread_local! {
    // Parsed suites by text: a gateway uses a handful of suites all day.
    static SUITES: RefCell<HashMap<String, Rc<OcraSuite>>> = RefCell::new(HashMap::new());
}

const SUITE_CACHE_MAX: usize = 64;

fn parse_suite(text: &str) -> Result<Rc<OcraSuite>> {
    SUITES.with(|cache| {
        if let Some(suite) = cache.borrow().get(text) {
            return Ok(Rc::clone(suite));
        }
        let suite = Rc::new(OcraSuite::parse(text)?);
        let mut cache = cache.borrow_mut();
        if cache.len() >= SUITE_CACHE_MAX {
            cache.clear();
        }
        cache.insert(text.to_owned(), Rc::clone(&suite));
        Ok(suite)
    })
}

/// The PIN hash for a call: from `pin` (hashed with the suite's P algorithm) or `pin_hash`
/// (raw digest bytes, or its hex text).
fn pin_hash_bytes(
    suite: &OcraSuite,
    pin: Option<&Bound<'_, PyAny>>,
    pin_hash: Option<&Bound<'_, PyAny>>,
) -> Result<Option<Vec<u8>>> {
    match (pin, pin_hash) {
        (Some(_), Some(_)) => Err(invalid("pin", "give pin or pin_hash, not both")),
        (Some(pin), None) => {
            let pin = blob(pin, "pin", true)?;
            Ok(Some(suite.hash_pin(&pin)?.as_bytes().to_vec()))
        }
        (None, Some(hash)) => {
            if let Ok(text) = hash.cast::<PyString>() {
                let text = text.to_str()?;
                let decoded = decode_hex(text).ok_or_else(|| {
                    invalid(
                        "pin_hash",
                        "hex text must have an even number of hex digits 0-9, a-f",
                    )
                })?;
                return Ok(Some(decoded));
            }
            Ok(Some(blob(hash, "pin_hash", false)?.to_vec()))
        }
        (None, None) => Ok(None),
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
        })
        .collect()
}

struct ScalarInputs {
    key: HmacKey,
    question: Blob,
    counter: Option<u64>,
    pin_hash: Option<Vec<u8>>,
    session: Option<Blob>,
    timestamp: Option<u64>,
}

impl ScalarInputs {
    #[allow(clippy::too_many_arguments)]
    fn new(
        suite: &OcraSuite,
        key: &Bound<'_, PyAny>,
        question: &Bound<'_, PyAny>,
        counter: Option<&Bound<'_, PyAny>>,
        pin: Option<&Bound<'_, PyAny>>,
        pin_hash: Option<&Bound<'_, PyAny>>,
        session: Option<&Bound<'_, PyAny>>,
        timestamp: Option<&Bound<'_, PyAny>>,
    ) -> Result<Self> {
        let key = blob(key, "key", false)?;
        Ok(ScalarInputs {
            key: HmacKey::new(suite.algorithm(), &key)?,
            question: blob(question, "question", true)?,
            counter: counter.map(|c| unsigned(c, "counter")).transpose()?,
            pin_hash: pin_hash_bytes(suite, pin, pin_hash)?,
            session: session.map(|s| blob(s, "session", false)).transpose()?,
            timestamp: timestamp
                .map(|t| unix_seconds(t, "timestamp"))
                .transpose()?,
        })
    }

    fn input(&self) -> OcraInput<'_> {
        OcraInput {
            counter: self.counter,
            question: &self.question,
            pin_hash: self.pin_hash.as_deref(),
            session: self.session.as_deref(),
            timestamp: self.timestamp,
        }
    }
}

/// Computes the OCRA response (RFC 6287) a device shows.
#[pyfunction]
#[pyo3(signature = (suite, key, *, question, counter=None, pin=None, pin_hash=None, session=None, timestamp=None))]
#[allow(clippy::too_many_arguments)]
pub fn ocra_compute(
    #[pyo3(from_py_with = suite_arg)] suite: &str,
    key: &Bound<'_, PyAny>,
    question: &Bound<'_, PyAny>,
    counter: Option<&Bound<'_, PyAny>>,
    pin: Option<&Bound<'_, PyAny>>,
    pin_hash: Option<&Bound<'_, PyAny>>,
    session: Option<&Bound<'_, PyAny>>,
    timestamp: Option<&Bound<'_, PyAny>>,
) -> Result<String> {
    let suite = parse_suite(suite)?;
    let inputs = ScalarInputs::new(
        &suite, key, question, counter, pin, pin_hash, session, timestamp,
    )?;
    Ok(suite.compute(&inputs.key, &inputs.input())?)
}

/// Verifies a typed OCRA response in constant time. A malformed response is `False`.
#[pyfunction]
#[pyo3(signature = (suite, key, response, *, question, counter=None, pin=None, pin_hash=None, session=None, timestamp=None))]
#[allow(clippy::too_many_arguments)]
pub fn ocra_verify(
    #[pyo3(from_py_with = suite_arg)] suite: &str,
    key: &Bound<'_, PyAny>,
    response: &Bound<'_, PyAny>,
    question: &Bound<'_, PyAny>,
    counter: Option<&Bound<'_, PyAny>>,
    pin: Option<&Bound<'_, PyAny>>,
    pin_hash: Option<&Bound<'_, PyAny>>,
    session: Option<&Bound<'_, PyAny>>,
    timestamp: Option<&Bound<'_, PyAny>>,
) -> Result<bool> {
    let suite = parse_suite(suite)?;
    let response = blob(response, "response", true)?;
    let inputs = ScalarInputs::new(
        &suite, key, question, counter, pin, pin_hash, session, timestamp,
    )?;
    let outcome = suite.verify(&inputs.key, &response, &inputs.input())?;
    Ok(outcome == Outcome::Ok)
}

/// Batch columns shared by verify and compute.
struct BatchData<'py> {
    keys: crate::convert::KeysData<'py>,
    questions: ColumnData<'py>,
    pin_hashes: Option<ColumnData<'py>>,
    counters: Option<IntColumn<'py>>,
    timestamps: Option<IntColumn<'py>>,
    sessions: Option<ColumnData<'py>>,
}

impl<'py> BatchData<'py> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        keys: &Bound<'py, PyAny>,
        questions: &Bound<'py, PyAny>,
        pin_hashes: Option<&Bound<'py, PyAny>>,
        counters: Option<&Bound<'py, PyAny>>,
        timestamps: Option<&Bound<'py, PyAny>>,
        sessions: Option<&Bound<'py, PyAny>>,
        key_index: Option<&Bound<'py, PyAny>>,
    ) -> Result<Self> {
        Ok(BatchData {
            keys: keys_data(keys, key_index)?,
            questions: column(questions, "questions", true)?,
            pin_hashes: pin_hashes
                .map(|c| column(c, "pin_hashes", false))
                .transpose()?,
            counters: counters.map(|c| int_column(c, "counters")).transpose()?,
            timestamps: timestamps
                .map(|c| int_column(c, "timestamps"))
                .transpose()?,
            sessions: sessions.map(|c| column(c, "sessions", false)).transpose()?,
        })
    }

    fn batch(&self) -> Result<OcraBatch<'_>> {
        Ok(OcraBatch {
            keys: self.keys.column()?,
            questions: self.questions.column()?,
            pin_hashes: self.pin_hashes.as_ref().map(|c| c.column()).transpose()?,
            counters: self.counters.as_ref().map(|c| c.as_slice()).transpose()?,
            timestamps: self.timestamps.as_ref().map(|c| c.as_slice()).transpose()?,
            sessions: self.sessions.as_ref().map(|c| c.column()).transpose()?,
        })
    }
}

/// Verifies N OCRA responses: a uint8 array, 0 OK, 1 WRONG, 2 MALFORMED per item.
#[pyfunction]
#[pyo3(signature = (suite, keys, questions, responses, *, pin_hashes=None, counters=None, timestamps=None, sessions=None, key_index=None, threads=None))]
#[allow(clippy::too_many_arguments)]
pub fn ocra_verify_batch<'py>(
    py: Python<'py>,
    #[pyo3(from_py_with = suite_arg)] suite: &str,
    keys: &Bound<'py, PyAny>,
    questions: &Bound<'py, PyAny>,
    responses: &Bound<'py, PyAny>,
    pin_hashes: Option<&Bound<'py, PyAny>>,
    counters: Option<&Bound<'py, PyAny>>,
    timestamps: Option<&Bound<'py, PyAny>>,
    sessions: Option<&Bound<'py, PyAny>>,
    key_index: Option<&Bound<'py, PyAny>>,
    threads: Option<&Bound<'py, PyAny>>,
) -> Result<Bound<'py, PyArray1<u8>>> {
    let suite = parse_suite(suite)?;
    let suite: &OcraSuite = &suite;
    let threads = threads_arg(threads)?;
    let data = BatchData::new(
        keys, questions, pin_hashes, counters, timestamps, sessions, key_index,
    )?;
    let responses = column(responses, "responses", true)?;
    let batch = data.batch()?;
    let responses = responses.column()?;
    let mut outcomes = vec![0u8; batch.len()];
    run_batch(py, batch.len(), threads, |execution: Execution| {
        suite.verify_batch(&batch, &responses, &mut outcomes, execution)
    })?;
    Ok(PyArray1::from_vec(py, outcomes))
}

/// Computes N OCRA responses as an (N, width) uint8 matrix of ASCII digits.
#[pyfunction]
#[pyo3(signature = (suite, keys, questions, *, pin_hashes=None, counters=None, timestamps=None, sessions=None, key_index=None, threads=None))]
#[allow(clippy::too_many_arguments)]
pub fn ocra_compute_batch<'py>(
    py: Python<'py>,
    #[pyo3(from_py_with = suite_arg)] suite: &str,
    keys: &Bound<'py, PyAny>,
    questions: &Bound<'py, PyAny>,
    pin_hashes: Option<&Bound<'py, PyAny>>,
    counters: Option<&Bound<'py, PyAny>>,
    timestamps: Option<&Bound<'py, PyAny>>,
    sessions: Option<&Bound<'py, PyAny>>,
    key_index: Option<&Bound<'py, PyAny>>,
    threads: Option<&Bound<'py, PyAny>>,
) -> Result<Bound<'py, PyArray2<u8>>> {
    let suite = parse_suite(suite)?;
    let suite: &OcraSuite = &suite;
    let threads = threads_arg(threads)?;
    let data = BatchData::new(
        keys, questions, pin_hashes, counters, timestamps, sessions, key_index,
    )?;
    let batch = data.batch()?;
    let width = code_width(suite.digits());
    let rows = batch.len();
    let mut codes = vec![0u8; rows * width];
    run_batch(py, rows, threads, |execution: Execution| {
        suite.compute_batch(&batch, &mut codes, execution)
    })?;
    code_matrix(py, codes, rows, width)
}

/// What a suite string declares, as a dict (parsed and validated).
#[pyfunction]
pub fn ocra_suite_info<'py>(
    py: Python<'py>,
    #[pyo3(from_py_with = suite_arg)] suite: &str,
) -> Result<Bound<'py, PyDict>> {
    let suite = parse_suite(suite)?;
    let info = PyDict::new(py);
    info.set_item("suite", suite.as_str())?;
    info.set_item("algorithm", suite.algorithm().name())?;
    info.set_item("digits", suite.digits())?;
    info.set_item("counter", suite.uses_counter())?;
    info.set_item(
        "question_format",
        suite.question_format().letter().to_string(),
    )?;
    info.set_item("question_length", suite.question_nominal_len())?;
    info.set_item("pin_algorithm", suite.pin_algorithm().map(|a| a.name()))?;
    info.set_item("session_length", suite.session_len())?;
    info.set_item("time_step", suite.time_step())?;
    Ok(info)
}
