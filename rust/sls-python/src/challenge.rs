//! Signed challenge tokens: the server's token keys seal a challenge's claims and open
//! them again, one token at a time or in batches.
//!
//! Token secrets cross into Rust as `bytes`; the Rust copies are wiped whatever happens.
//! No error and no repr names a secret.

use numpy::PyArray1;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyMapping};
use sls_kernel::challenge::{ChallengeClaims, TokenKeys as KernelTokenKeys, TokenStatus};
use sls_kernel::Execution;
use zeroize::Zeroize;

use crate::convert::{blob, column, small, unix_seconds, unsigned};
use crate::errors::{wrong_type, Result};
use crate::threads::run_batch;

/// (status, purpose, challenge_id, user_id, device_id, issued_at, expires_at, challenge)
type OpenedToken = (u8, u8, u64, u64, u64, u64, u64, u32);

/// The server's challenge-token keys: `{key_id: secret}` (ids 0-255, secrets of at least
/// 16 bytes) and the id that signs new tokens. Holds key material: no getter, no pickle.
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
    fn new(keys: &Bound<'_, PyAny>, active: &Bound<'_, PyAny>) -> Result<Self> {
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
        Ok(TokenKeys { inner: inner? })
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
    ) -> Result<String> {
        let claims = ChallengeClaims {
            purpose: small(purpose, "purpose", 255)?,
            challenge_id: unsigned(challenge_id, "challenge_id")?,
            user_id: unsigned(user_id, "user_id")?,
            device_id: unsigned(device_id, "device_id")?,
            issued_at: unix_seconds(issued_at, "issued_at")?,
            expires_at: unix_seconds(expires_at, "expires_at")?,
            challenge: small(challenge, "challenge", u64::from(u32::MAX))?,
        };
        Ok(self.inner.seal(&claims)?)
    }

    /// Opens one token at `now`: `(status, purpose, challenge_id, user_id, device_id,
    /// issued_at, expires_at, challenge)`, status 0 when valid (claims are 0 otherwise).
    #[pyo3(signature = (token, now, *, skew=0))]
    fn open(
        &self,
        token: &Bound<'_, PyAny>,
        now: &Bound<'_, PyAny>,
        skew: u64,
    ) -> Result<OpenedToken> {
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
    ) -> Result<Bound<'py, PyDict>> {
        let now = unix_seconds(now, "now")?;
        let data = column(tokens, "tokens", true)?;
        let tokens = data.column()?;
        let n = tokens.len();
        let mut status = vec![0u8; n];
        let mut claims = vec![ChallengeClaims::default(); n];
        run_batch(py, n, threads, |execution: Execution| {
            self.inner
                .open_batch(&tokens, now, skew, &mut status, &mut claims, execution)
        })?;
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
