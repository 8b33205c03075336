//! IB Key activation: signed QR payloads, the manual string and the X25519 + HKDF key
//! agreement that gives the device its OCRA secret. (Push approvals are in `push`.)
//!
//! Seeds and private keys cross into Rust as `bytes`; the Rust copies are wiped when
//! dropped (Python's own `bytes` cannot be). No error names a seed, a key or a secret.
//! Ed25519 and X25519 work (tens of microseconds) runs with the GIL released.

use numpy::{PyArray1, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyMapping, PyString};
use sls_kernel::activation::{
    self as kernel, ActivationFields, ActivationPayload, PAYLOAD_VALID, SESSION_ID_BYTES,
};
use sls_kernel::Execution;
use zeroize::Zeroizing;

use crate::convert::{
    blob, byte_param, column, int_param, public_bytes, secret_bytes, threads_arg, unix_seconds,
    unsigned,
};
use crate::errors::{invalid, wrong_type, Result};
use crate::threads::run_batch;

/// A `str` parameter (a username), refusing lone surrogates.
fn text_param<'a>(obj: &'a Bound<'_, PyAny>, field: &str) -> Result<&'a str> {
    obj.cast::<PyString>()
        .map_err(|_| wrong_type(field, "str", obj))?
        .to_str()
        .map_err(|_| invalid(field, "must be text without lone surrogates"))
}

/// `{key_id: bytes}` as (id, N-byte value) pairs; `secret` values are wiped when dropped.
fn keyed_bytes<const N: usize>(
    keys: &Bound<'_, PyAny>,
    field: &str,
    what: &str,
) -> Result<Vec<(u8, Zeroizing<[u8; N]>)>> {
    let mapping = keys
        .cast::<PyMapping>()
        .map_err(|_| wrong_type(field, "a mapping of key id to bytes", keys))?;
    let mut out = Vec::new();
    for item in mapping.items()?.iter() {
        let (id, value): (Bound<'_, PyAny>, Bound<'_, PyAny>) = item.extract()?;
        let id = byte_param(&id, field)?;
        let value = secret_bytes::<N>(&value, field, what)
            .map_err(|_| invalid(field, format!("key id {id}: must be {what} of {N} bytes")))?;
        out.push((id, value));
    }
    Ok(out)
}

fn payload_dict<'py>(py: Python<'py>, payload: &ActivationPayload) -> Result<Bound<'py, PyDict>> {
    let f = &payload.fields;
    let out = PyDict::new(py);
    out.set_item("version", payload.version)?;
    out.set_item("key_id", payload.key_id)?;
    out.set_item("flags", f.flags)?;
    out.set_item("session_id", PyBytes::new(py, &f.session_id))?;
    out.set_item("username", &f.username)?;
    out.set_item("issued_at", f.issued_at)?;
    out.set_item("expires_at", f.expires_at)?;
    out.set_item("server_public", PyBytes::new(py, &f.server_public))?;
    Ok(out)
}

/// The server's payload signing keys: `{key_id: 32-byte Ed25519 seed}` (ids 0-255) and the
/// id that signs new payloads. Holds key material: no getter for it, no pickle.
#[pyclass(frozen, module = "sls_core", name = "ActivationSigner")]
#[derive(Debug)]
pub struct ActivationSigner {
    inner: kernel::ActivationSigner,
}

#[pymethods]
impl ActivationSigner {
    #[new]
    #[pyo3(signature = (keys, *, active))]
    fn new(keys: &Bound<'_, PyAny>, active: &Bound<'_, PyAny>) -> Result<Self> {
        let seeds = keyed_bytes::<32>(keys, "signing_keys", "an Ed25519 seed")?;
        let active = byte_param(active, "active_key_id")?;
        let inner = kernel::ActivationSigner::new(seeds.iter().map(|(id, s)| (*id, &**s)), active)?;
        Ok(ActivationSigner { inner })
    }

    #[getter]
    fn active_key_id(&self) -> u8 {
        self.inner.active_key_id()
    }

    /// `{key_id: 32-byte Ed25519 public key}`: what an `ActivationVerifier` (the app) needs.
    fn public_keys<'py>(&self, py: Python<'py>) -> Result<Bound<'py, PyDict>> {
        let out = PyDict::new(py);
        for (id, public) in self.inner.public_keys() {
            out.set_item(id, PyBytes::new(py, &public))?;
        }
        Ok(out)
    }

    /// Signs an activation under the active key: the `SLS1:...` text for the QR code.
    #[pyo3(signature = (*, session_id, username, issued_at, expires_at, server_public, flags=None))]
    #[allow(clippy::too_many_arguments)]
    fn sign(
        &self,
        py: Python<'_>,
        session_id: &Bound<'_, PyAny>,
        username: &Bound<'_, PyAny>,
        issued_at: &Bound<'_, PyAny>,
        expires_at: &Bound<'_, PyAny>,
        server_public: &Bound<'_, PyAny>,
        flags: Option<&Bound<'_, PyAny>>,
    ) -> Result<String> {
        let fields = ActivationFields {
            flags: flags
                .map(|f| byte_param(f, "flags"))
                .transpose()?
                .unwrap_or(0),
            session_id: public_bytes::<SESSION_ID_BYTES>(session_id, "session_id", "bytes")?,
            username: text_param(username, "username")?.to_owned(),
            issued_at: unix_seconds(issued_at, "issued_at")?,
            expires_at: unix_seconds(expires_at, "expires_at")?,
            server_public: public_bytes::<32>(
                server_public,
                "server_public",
                "an X25519 public key",
            )?,
        };
        Ok(py.detach(|| self.inner.sign(&fields))?)
    }

    fn __repr__(&self) -> String {
        format!(
            "ActivationSigner(active_key_id={}, redacted)",
            self.inner.active_key_id()
        )
    }

    fn __reduce__(&self) -> PyResult<()> {
        Err(pyo3::exceptions::PyTypeError::new_err(
            "ActivationSigner cannot be pickled: it holds key material",
        ))
    }
}

/// The server's payload public keys, `{key_id: 32-byte Ed25519 public key}`, and how many
/// seconds `issued_at` may lead the verifier's clock (`skew`).
#[pyclass(frozen, module = "sls_core", name = "ActivationVerifier")]
#[derive(Debug)]
pub struct ActivationVerifier {
    inner: kernel::ActivationVerifier,
}

#[pymethods]
impl ActivationVerifier {
    #[new]
    #[pyo3(signature = (public_keys, *, skew=None))]
    fn new(public_keys: &Bound<'_, PyAny>, skew: Option<&Bound<'_, PyAny>>) -> Result<Self> {
        let keys = keyed_bytes::<32>(public_keys, "public_keys", "an Ed25519 public key")?;
        let skew = skew.map(|s| unsigned(s, "skew")).transpose()?.unwrap_or(0);
        let inner = kernel::ActivationVerifier::new(keys.iter().map(|(id, k)| (*id, &**k)), skew)?;
        Ok(ActivationVerifier { inner })
    }

    /// The key ids this verifier holds, in the order given.
    #[getter]
    fn key_ids(&self) -> Vec<u16> {
        // (A Vec<u8> would become bytes.)
        self.inner.key_ids().into_iter().map(u16::from).collect()
    }

    #[getter]
    fn skew(&self) -> u64 {
        self.inner.skew()
    }

    /// Checks one payload text at `now` (Unix seconds): `(status, fields)`, status 0 and a
    /// dict of the fields when valid, else a status number (see `payload_status_name`) and
    /// None.
    fn verify<'py>(
        &self,
        py: Python<'py>,
        payload: &Bound<'py, PyAny>,
        now: &Bound<'py, PyAny>,
    ) -> Result<(u8, Option<Bound<'py, PyDict>>)> {
        let text = blob(payload, "payload", true)?;
        let now = unix_seconds(now, "now")?;
        let verdict = py.detach(|| self.inner.verify(&text, now));
        match verdict {
            Ok(payload) => Ok((PAYLOAD_VALID, Some(payload_dict(py, &payload)?))),
            Err(why) => Ok((why as u8, None)),
        }
    }

    /// Checks N payloads: a dict of numpy columns `status`, `version`, `key_id`, `flags`
    /// (uint8), `session_id` ((N, 16) uint8), `username` (S64), `issued_at`, `expires_at`
    /// (uint64) and `server_public` ((N, 32) uint8); zeros where the status is not 0.
    #[pyo3(signature = (payloads, now, *, threads=None))]
    fn verify_batch<'py>(
        &self,
        py: Python<'py>,
        payloads: &Bound<'py, PyAny>,
        now: &Bound<'py, PyAny>,
        threads: Option<&Bound<'py, PyAny>>,
    ) -> Result<Bound<'py, PyDict>> {
        let now = unix_seconds(now, "now")?;
        let threads = threads_arg(threads)?;
        let data = column(payloads, "payloads", true)?;
        let texts = data.column()?;
        let n = texts.len();
        let mut status = vec![0u8; n];
        let mut out = vec![ActivationPayload::default(); n];
        run_batch(py, n, threads, |execution: Execution| {
            self.inner
                .verify_batch(&texts, now, &mut status, &mut out, execution)
        })?;
        let matrix =
            |width: usize, f: &dyn Fn(&ActivationPayload) -> &[u8]| -> Result<Bound<'py, PyAny>> {
                let mut flat = Vec::with_capacity(n * width);
                for p in &out {
                    let cell = f(p);
                    flat.extend_from_slice(cell);
                    flat.resize(flat.len() + width - cell.len(), 0);
                }
                Ok(PyArray1::from_vec(py, flat).reshape([n, width])?.into_any())
            };
        let usernames = matrix(kernel::MAX_USERNAME_CHARS, &|p| {
            p.fields.username.as_bytes()
        })?
        .call_method1("view", (format!("S{}", kernel::MAX_USERNAME_CHARS),))?
        .call_method1("reshape", (n,))?;
        let result = PyDict::new(py);
        let col8 =
            |f: fn(&ActivationPayload) -> u8| PyArray1::from_vec(py, out.iter().map(f).collect());
        let col64 =
            |f: fn(&ActivationPayload) -> u64| PyArray1::from_vec(py, out.iter().map(f).collect());
        result.set_item("version", col8(|p| p.version))?;
        result.set_item("key_id", col8(|p| p.key_id))?;
        result.set_item("flags", col8(|p| p.fields.flags))?;
        result.set_item(
            "session_id",
            matrix(SESSION_ID_BYTES, &|p| &p.fields.session_id)?,
        )?;
        result.set_item("username", usernames)?;
        result.set_item("issued_at", col64(|p| p.fields.issued_at))?;
        result.set_item("expires_at", col64(|p| p.fields.expires_at))?;
        result.set_item("server_public", matrix(32, &|p| &p.fields.server_public)?)?;
        result.set_item("status", PyArray1::from_vec(py, status))?;
        Ok(result)
    }

    fn __repr__(&self) -> String {
        format!(
            "ActivationVerifier(key_ids={:?}, skew={})",
            self.inner.key_ids(),
            self.inner.skew()
        )
    }

    fn __reduce__(&self) -> PyResult<()> {
        Err(pyo3::exceptions::PyTypeError::new_err(
            "ActivationVerifier cannot be pickled",
        ))
    }
}

/// The name of a payload status number: "valid", "malformed", "unsupported version",
/// "unknown key id", "bad signature", "expired" or "not yet valid".
#[pyfunction]
pub fn payload_status_name(status: &Bound<'_, PyAny>) -> Result<&'static str> {
    let status: u8 = int_param(status, "status", "must be a payload status from 0 to 6")?;
    kernel::payload_status_name(status)
        .ok_or_else(|| invalid("status", "must be a payload status from 0 to 6"))
}

/// The manual activation string of a 16-byte session id: `XXXX-XXXX-XXXX-XX`.
#[pyfunction]
pub fn manual_code(session_id: &Bound<'_, PyAny>) -> Result<String> {
    let id = public_bytes::<SESSION_ID_BYTES>(session_id, "session_id", "bytes")?;
    Ok(kernel::manual_code(&id))
}

/// The first 8 bytes of the session id a typed manual string names. Case, spaces and
/// hyphens do not matter; anything else wrong raises `InvalidInputError` (field
/// `manual_code`) whose rule starts with "malformed" or says the check character does not
/// match.
#[pyfunction]
pub fn parse_manual_code<'py>(
    py: Python<'py>,
    text: &Bound<'py, PyAny>,
) -> Result<Bound<'py, PyBytes>> {
    let text = blob(text, "manual_code", true)?;
    let prefix = kernel::parse_manual_code(&text)?;
    Ok(PyBytes::new(py, &prefix))
}

/// A fresh X25519 key pair: `(private, public)`, 32 bytes each.
#[pyfunction]
pub fn x25519_keypair<'py>(py: Python<'py>) -> Result<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)> {
    let pair = kernel::x25519_keypair()?;
    Ok((
        PyBytes::new(py, &*pair.private),
        PyBytes::new(py, &pair.public),
    ))
}

/// The X25519 public key of a 32-byte private key.
#[pyfunction]
pub fn x25519_public_key<'py>(
    py: Python<'py>,
    private: &Bound<'py, PyAny>,
) -> Result<Bound<'py, PyBytes>> {
    let private = secret_bytes::<32>(private, "private", "an X25519 private key")?;
    Ok(PyBytes::new(py, &kernel::x25519_public(&private)))
}

/// The 32-byte OCRA secret of an activation: HKDF-SHA256 over the X25519 shared secret,
/// salted with the session id, info "sls-ibkey-ocra-v1" + username. A low-order peer key
/// raises `InvalidInputError` (field `peer_public`).
#[pyfunction]
pub fn derive_ocra_secret<'py>(
    py: Python<'py>,
    own_private: &Bound<'py, PyAny>,
    peer_public: &Bound<'py, PyAny>,
    session_id: &Bound<'py, PyAny>,
    username: &Bound<'py, PyAny>,
) -> Result<Bound<'py, PyBytes>> {
    let own = secret_bytes::<32>(own_private, "own_private", "an X25519 private key")?;
    let peer = public_bytes::<32>(peer_public, "peer_public", "an X25519 public key")?;
    let id = public_bytes::<SESSION_ID_BYTES>(session_id, "session_id", "bytes")?;
    let username = text_param(username, "username")?;
    let secret = py.detach(|| kernel::derive_ocra_secret(&own, &peer, &id, username))?;
    Ok(PyBytes::new(py, &*secret))
}
