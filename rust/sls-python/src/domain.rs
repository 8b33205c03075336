//! Kernel pieces the domain layer needs: signed challenge tokens and code-card cells.

use numpy::{PyArray1, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyMapping};
use sls_kernel::batch::Execution;
use sls_kernel::challenge::{ChallengeClaims, TokenKeys as KernelTokenKeys, TokenStatus};
use sls_kernel::{card, CardKey};
use zeroize::Zeroize;

use crate::convert::{blob, column, unix_seconds, unsigned};
use crate::errors::{invalid, to_py, wrong_type};
use crate::threads::run_batch;

fn card_key(secret: &Bound<'_, PyAny>) -> PyResult<CardKey> {
    CardKey::new(&blob(secret, "card_secret", false)?).map_err(to_py)
}

fn small<T: TryFrom<u64>>(obj: &Bound<'_, PyAny>, field: &str, max: u64) -> PyResult<T> {
    let value = unsigned(obj, field)?;
    if value > max {
        return Err(invalid(field, format!("must be at most {max}")));
    }
    T::try_from(value).map_err(|_| invalid(field, format!("must be at most {max}")))
}

/// The server's challenge-token keys: `{key_id: secret}` (ids 0-255, secrets of at least
/// 16 bytes) and the id that signs new tokens. Holds key material: no getter, no pickle.
/// (status, purpose, challenge_id, user_id, device_id, issued_at, expires_at, challenge)
type OpenedToken = (u8, u8, u64, u64, u64, u64, u64, u32);

#[pyclass(frozen, module = "sls_core", name = "TokenKeys")]
#[derive(Debug)]
pub struct TokenKeys {
    inner: KernelTokenKeys,
}

fn status_name(status: u8) -> &'static str {
    match status {
        0 => "valid",
        1 => "malformed",
        2 => "unsupported version",
        3 => "unknown key id",
        4 => "bad signature",
        5 => "expired",
        _ => "not yet valid",
    }
}

#[pymethods]
impl TokenKeys {
    #[new]
    #[pyo3(signature = (keys, *, active))]
    fn new(keys: &Bound<'_, PyAny>, active: &Bound<'_, PyAny>) -> PyResult<Self> {
        let mapping = keys
            .cast::<PyMapping>()
            .map_err(|_| wrong_type("token_keys", "a mapping of key id to bytes", keys))?;
        let mut owned: Vec<(u8, Vec<u8>)> = Vec::new();
        for item in mapping.items()?.iter() {
            let (id, secret): (Bound<'_, PyAny>, Bound<'_, PyAny>) = item.extract()?;
            owned.push((
                small(&id, "token_keys", 255)?,
                blob(&secret, "token_keys", false)?.to_vec(),
            ));
        }
        let active: u8 = small(active, "active_key_id", 255)?;
        let inner = KernelTokenKeys::new(owned.iter().map(|(id, s)| (*id, s.as_slice())), active);
        // The copies held key material: wipe them whatever happened.
        for (_, secret) in owned.iter_mut() {
            secret.zeroize();
        }
        Ok(TokenKeys {
            inner: inner.map_err(to_py)?,
        })
    }

    #[getter]
    fn active_key_id(&self) -> u8 {
        self.inner.active_key_id()
    }

    /// Signs a challenge. `challenge` is the 6-digit number or the packed card indices.
    #[pyo3(signature = (*, purpose, challenge_id, user_id, device_id, issued_at, expires_at, challenge))]
    #[allow(clippy::too_many_arguments)]
    fn seal(
        &self,
        purpose: &Bound<'_, PyAny>,
        challenge_id: &Bound<'_, PyAny>,
        user_id: &Bound<'_, PyAny>,
        device_id: &Bound<'_, PyAny>,
        issued_at: &Bound<'_, PyAny>,
        expires_at: &Bound<'_, PyAny>,
        challenge: &Bound<'_, PyAny>,
    ) -> PyResult<String> {
        let claims = ChallengeClaims {
            purpose: small(purpose, "purpose", 255)?,
            challenge_id: unsigned(challenge_id, "challenge_id")?,
            user_id: unsigned(user_id, "user_id")?,
            device_id: unsigned(device_id, "device_id")?,
            issued_at: unix_seconds(issued_at, "issued_at")?,
            expires_at: unix_seconds(expires_at, "expires_at")?,
            challenge: small(challenge, "challenge", u64::from(u32::MAX))?,
        };
        self.inner.seal(&claims).map_err(to_py)
    }

    /// Opens one token at `now`: `(status, purpose, challenge_id, user_id, device_id,
    /// issued_at, expires_at, challenge)`, status 0 when valid (claims are 0 otherwise).
    #[pyo3(signature = (token, now, *, skew=0))]
    fn open(
        &self,
        token: &Bound<'_, PyAny>,
        now: &Bound<'_, PyAny>,
        skew: u64,
    ) -> PyResult<OpenedToken> {
        let token = blob(token, "token", true)?;
        let now = unix_seconds(now, "now")?;
        let (status, c) = match self.inner.open(&token, now, skew) {
            Ok(c) => (TokenStatus::Valid as u8, c),
            Err(why) => (why as u8, ChallengeClaims::default()),
        };
        Ok((
            status,
            c.purpose,
            c.challenge_id,
            c.user_id,
            c.device_id,
            c.issued_at,
            c.expires_at,
            c.challenge,
        ))
    }

    /// Opens N tokens: a dict of numpy columns `status` (uint8), `purpose` (uint8),
    /// `challenge_id`, `user_id`, `device_id`, `issued_at`, `expires_at` (uint64) and
    /// `challenge` (uint32).
    #[pyo3(signature = (tokens, now, *, skew=0, threads=None))]
    fn open_batch<'py>(
        &self,
        py: Python<'py>,
        tokens: &Bound<'py, PyAny>,
        now: &Bound<'py, PyAny>,
        skew: u64,
        threads: Option<usize>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let now = unix_seconds(now, "now")?;
        let data = column(tokens, "tokens", true)?;
        let tokens = data.column()?;
        let n = tokens.len();
        let mut status = vec![0u8; n];
        let mut claims = vec![ChallengeClaims::default(); n];
        run_batch(py, n, threads, |execution: Execution| {
            self.inner
                .open_batch(&tokens, now, skew, &mut status, &mut claims, execution)
        })?
        .map_err(to_py)?;
        let out = PyDict::new(py);
        out.set_item("status", PyArray1::from_vec(py, status))?;
        let col64 = |f: fn(&ChallengeClaims) -> u64| -> Vec<u64> { claims.iter().map(f).collect() };
        out.set_item(
            "purpose",
            PyArray1::from_vec(py, claims.iter().map(|c| c.purpose).collect::<Vec<u8>>()),
        )?;
        out.set_item(
            "challenge_id",
            PyArray1::from_vec(py, col64(|c| c.challenge_id)),
        )?;
        out.set_item("user_id", PyArray1::from_vec(py, col64(|c| c.user_id)))?;
        out.set_item("device_id", PyArray1::from_vec(py, col64(|c| c.device_id)))?;
        out.set_item("issued_at", PyArray1::from_vec(py, col64(|c| c.issued_at)))?;
        out.set_item(
            "expires_at",
            PyArray1::from_vec(py, col64(|c| c.expires_at)),
        )?;
        out.set_item(
            "challenge",
            PyArray1::from_vec(py, claims.iter().map(|c| c.challenge).collect::<Vec<u32>>()),
        )?;
        Ok(out)
    }

    /// The human name of a token status number ("expired", "bad signature", ...).
    #[staticmethod]
    fn status_name(status: u8) -> &'static str {
        status_name(status)
    }

    fn __repr__(&self) -> String {
        format!(
            "TokenKeys(active_key_id={}, redacted)",
            self.inner.active_key_id()
        )
    }

    fn __reduce__(&self) -> PyResult<()> {
        Err(pyo3::exceptions::PyTypeError::new_err(
            "TokenKeys cannot be pickled: it holds key material",
        ))
    }
}

/// The 3-digit codes of index numbers 1..=count of a code card, as strings.
#[pyfunction]
#[pyo3(signature = (card_secret, count))]
pub fn card_codes(
    card_secret: &Bound<'_, PyAny>,
    count: &Bound<'_, PyAny>,
) -> PyResult<Vec<String>> {
    let key = card_key(card_secret)?;
    let count: u32 = small(count, "count", u64::from(card::MAX_INDEX))?;
    Ok(key
        .codes(count)
        .map_err(to_py)?
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
) -> PyResult<u8> {
    let key = card_key(card_secret)?;
    let first: u32 = small(first, "first", u64::from(card::MAX_INDEX))?;
    let second: u32 = small(second, "second", u64::from(card::MAX_INDEX))?;
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
) -> PyResult<Bound<'py, PyArray1<u8>>> {
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
        card::verify_batch(&secrets, indices, &responses, &mut outcomes, execution)
    })?
    .map_err(to_py)?;
    Ok(PyArray1::from_vec(py, outcomes))
}
