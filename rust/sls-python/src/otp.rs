//! HOTP (RFC 4226) and TOTP (RFC 6238) entry points, scalar and batch.

use numpy::{PyArray1, PyArray2};
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use sls_kernel::batch::{OtpBatch, OtpMode};
use sls_kernel::otp::hotp_window;
use sls_kernel::{Execution, HmacKey, OtpParams, TotpParams, WindowMatch};

use crate::convert::{
    algorithm, algorithm_arg, blob, code_matrix, column, digits_arg, int_column, keys_data,
    kind_arg, look_ahead_arg, step_arg, t0_arg, threads_arg, unix_seconds, unsigned,
};
use crate::errors::{invalid, wrong_type, Result};
use crate::threads::run_batch;

fn key(obj: &Bound<'_, PyAny>, algorithm_name: &str) -> Result<HmacKey> {
    let algorithm = algorithm(algorithm_name)?;
    Ok(HmacKey::new(algorithm, &blob(obj, "key", false)?)?)
}

/// `window` as (look_behind, look_ahead): an int for both sides, or a 2-tuple.
fn window_sides(window: &Bound<'_, PyAny>) -> Result<(u64, u64)> {
    if let Ok(pair) = window.cast::<PyTuple>() {
        if pair.len() != 2 {
            return Err(invalid(
                "window",
                "a tuple window must be (look_behind, look_ahead)",
            ));
        }
        return Ok((
            unsigned(&pair.get_item(0)?, "window")?,
            unsigned(&pair.get_item(1)?, "window")?,
        ));
    }
    let both = unsigned(window, "window").map_err(|e| {
        if window.is_instance_of::<pyo3::types::PyInt>() {
            e
        } else {
            wrong_type("window", "int or (look_behind, look_ahead)", window)
        }
    })?;
    Ok((both, both))
}

fn matched(result: WindowMatch) -> Option<u64> {
    match result {
        WindowMatch::Matched(at) => Some(at),
        WindowMatch::Wrong | WindowMatch::Malformed => None,
    }
}

/// The HOTP code for `counter`.
#[pyfunction]
#[pyo3(signature = (key, counter, *, digits=6, algorithm="sha1"))]
pub fn hotp_compute(
    key: &Bound<'_, PyAny>,
    counter: &Bound<'_, PyAny>,
    #[pyo3(from_py_with = digits_arg)] digits: u8,
    #[pyo3(from_py_with = algorithm_arg)] algorithm: &str,
) -> Result<String> {
    let params = OtpParams::new(digits)?;
    let key = self::key(key, algorithm)?;
    Ok(params.code(&key, unsigned(counter, "counter")?))
}

/// Checks an HOTP code against `counter` and up to `window` counters ahead; returns the
/// matched counter or None (wrong or malformed).
#[pyfunction]
#[pyo3(signature = (key, code, counter, *, window=0, digits=6, algorithm="sha1"))]
pub fn hotp_verify(
    key: &Bound<'_, PyAny>,
    code: &Bound<'_, PyAny>,
    counter: &Bound<'_, PyAny>,
    #[pyo3(from_py_with = look_ahead_arg)] window: u64,
    #[pyo3(from_py_with = digits_arg)] digits: u8,
    #[pyo3(from_py_with = algorithm_arg)] algorithm: &str,
) -> Result<Option<u64>> {
    let params = OtpParams::new(digits)?;
    let key = self::key(key, algorithm)?;
    let code = blob(code, "code", true)?;
    let (first, last) = hotp_window(unsigned(counter, "counter")?, window)?;
    Ok(matched(params.verify_range(&key, &code, first, last)))
}

/// The TOTP code at `unix_time`.
#[pyfunction]
#[pyo3(signature = (key, unix_time, *, step=30, digits=6, algorithm="sha1", t0=0))]
pub fn totp_compute(
    key: &Bound<'_, PyAny>,
    unix_time: &Bound<'_, PyAny>,
    #[pyo3(from_py_with = step_arg)] step: u64,
    #[pyo3(from_py_with = digits_arg)] digits: u8,
    #[pyo3(from_py_with = algorithm_arg)] algorithm: &str,
    #[pyo3(from_py_with = t0_arg)] t0: u64,
) -> Result<String> {
    let params = TotpParams::new(digits, step, t0)?;
    let key = self::key(key, algorithm)?;
    Ok(params.code(&key, unix_seconds(unix_time, "unix_time")?)?)
}

/// Checks a TOTP code around `unix_time`; returns the matched time step or None.
#[pyfunction]
#[pyo3(signature = (key, code, unix_time, *, step=30, window=None, digits=6, algorithm="sha1", t0=0))]
#[allow(clippy::too_many_arguments)]
pub fn totp_verify(
    key: &Bound<'_, PyAny>,
    code: &Bound<'_, PyAny>,
    unix_time: &Bound<'_, PyAny>,
    #[pyo3(from_py_with = step_arg)] step: u64,
    window: Option<&Bound<'_, PyAny>>,
    #[pyo3(from_py_with = digits_arg)] digits: u8,
    #[pyo3(from_py_with = algorithm_arg)] algorithm: &str,
    #[pyo3(from_py_with = t0_arg)] t0: u64,
) -> Result<Option<u64>> {
    let params = TotpParams::new(digits, step, t0)?;
    let key = self::key(key, algorithm)?;
    let code = blob(code, "code", true)?;
    let (behind, ahead) = window.map(window_sides).transpose()?.unwrap_or((1, 1));
    let (first, last) = params.window(unix_seconds(unix_time, "unix_time")?, behind, ahead)?;
    Ok(matched(params.otp.verify_range(&key, &code, first, last)))
}

fn mode(
    kind: &str,
    digits: u8,
    step: u64,
    t0: u64,
    window: Option<&Bound<'_, PyAny>>,
) -> Result<OtpMode> {
    match kind {
        "hotp" => {
            let look_ahead = window
                .map(|w| unsigned(w, "window"))
                .transpose()?
                .unwrap_or(0);
            Ok(OtpMode::Hotp {
                params: OtpParams::new(digits)?,
                look_ahead,
            })
        }
        "totp" => {
            let (look_behind, look_ahead) = window.map(window_sides).transpose()?.unwrap_or((1, 1));
            Ok(OtpMode::Totp {
                params: TotpParams::new(digits, step, t0)?,
                look_behind,
                look_ahead,
            })
        }
        _ => Err(invalid("kind", "must be \"hotp\" or \"totp\"")),
    }
}

/// (outcomes, matched counters or time steps) of an HOTP/TOTP batch.
type OtpBatchArrays<'py> = (Bound<'py, PyArray1<u8>>, Bound<'py, PyArray1<u64>>);

/// Verifies N HOTP/TOTP codes: (outcomes uint8, matched counters/steps uint64).
#[pyfunction]
#[pyo3(signature = (kind, keys, codes, moving_factors, *, window=None, digits=6, algorithm="sha1", step=30, t0=0, key_index=None, threads=None))]
#[allow(clippy::too_many_arguments)]
pub fn otp_verify_batch<'py>(
    py: Python<'py>,
    #[pyo3(from_py_with = kind_arg)] kind: &str,
    keys: &Bound<'py, PyAny>,
    codes: &Bound<'py, PyAny>,
    moving_factors: &Bound<'py, PyAny>,
    window: Option<&Bound<'py, PyAny>>,
    #[pyo3(from_py_with = digits_arg)] digits: u8,
    #[pyo3(from_py_with = algorithm_arg)] algorithm: &str,
    #[pyo3(from_py_with = step_arg)] step: u64,
    #[pyo3(from_py_with = t0_arg)] t0: u64,
    key_index: Option<&Bound<'py, PyAny>>,
    threads: Option<&Bound<'py, PyAny>>,
) -> Result<OtpBatchArrays<'py>> {
    let mode = mode(kind, digits, step, t0, window)?;
    let algorithm = self::algorithm(algorithm)?;
    let threads = threads_arg(threads)?;
    let field = if kind == "hotp" {
        "counters"
    } else {
        "unix_times"
    };
    let keys = keys_data(keys, key_index)?;
    let factors = int_column(moving_factors, field)?;
    let codes = column(codes, "codes", true)?;
    let batch = OtpBatch {
        keys: keys.column()?,
        moving_factors: factors.as_slice()?,
    };
    let codes = codes.column()?;
    let n = batch.moving_factors.len();
    let mut outcomes = vec![0u8; n];
    let mut matched = vec![0u64; n];
    run_batch(py, n, threads, |execution: Execution| {
        batch.verify(
            mode,
            algorithm,
            &codes,
            &mut outcomes,
            &mut matched,
            execution,
        )
    })?;
    Ok((
        PyArray1::from_vec(py, outcomes),
        PyArray1::from_vec(py, matched),
    ))
}

/// Computes N HOTP/TOTP codes as an (N, digits) uint8 matrix of ASCII digits.
#[pyfunction]
#[pyo3(signature = (kind, keys, moving_factors, *, digits=6, algorithm="sha1", step=30, t0=0, key_index=None, threads=None))]
#[allow(clippy::too_many_arguments)]
pub fn otp_compute_batch<'py>(
    py: Python<'py>,
    #[pyo3(from_py_with = kind_arg)] kind: &str,
    keys: &Bound<'py, PyAny>,
    moving_factors: &Bound<'py, PyAny>,
    #[pyo3(from_py_with = digits_arg)] digits: u8,
    #[pyo3(from_py_with = algorithm_arg)] algorithm: &str,
    #[pyo3(from_py_with = step_arg)] step: u64,
    #[pyo3(from_py_with = t0_arg)] t0: u64,
    key_index: Option<&Bound<'py, PyAny>>,
    threads: Option<&Bound<'py, PyAny>>,
) -> Result<Bound<'py, PyArray2<u8>>> {
    let mode = mode(kind, digits, step, t0, None)?;
    let algorithm = self::algorithm(algorithm)?;
    let threads = threads_arg(threads)?;
    let field = if kind == "hotp" {
        "counters"
    } else {
        "unix_times"
    };
    let keys = keys_data(keys, key_index)?;
    let factors = int_column(moving_factors, field)?;
    let batch = OtpBatch {
        keys: keys.column()?,
        moving_factors: factors.as_slice()?,
    };
    let rows = batch.moving_factors.len();
    let width = usize::from(digits);
    let mut codes = vec![0u8; rows * width];
    run_batch(py, rows, threads, |execution: Execution| {
        batch.compute(mode, algorithm, &mut codes, execution)
    })?;
    code_matrix(py, codes, rows, width)
}
