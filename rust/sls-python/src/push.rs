//! Push approvals: the app's Ed25519 key pair, the message an approval signs, and its
//! signature checked one at a time or in batches.
//!
//! A seed crosses into Rust as `bytes`; the Rust copy is wiped when dropped (Python's own
//! `bytes` cannot be). No error names a seed or a key. Signing and checking (tens of
//! microseconds) run with the GIL released.

use numpy::PyArray1;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use sls_kernel::push as kernel;
use sls_kernel::Execution;

use crate::convert::{blob, byte_param, column, secret_bytes, threads_arg, unix_seconds, unsigned};
use crate::errors::{invalid, Result};
use crate::threads::run_batch;

/// A fresh Ed25519 push key pair: `(seed, public)`, 32 bytes each.
#[pyfunction]
pub fn push_keypair<'py>(py: Python<'py>) -> Result<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)> {
    let pair = kernel::push_keypair()?;
    Ok((
        PyBytes::new(py, &*pair.seed),
        PyBytes::new(py, &pair.public),
    ))
}

/// The Ed25519 public key of a 32-byte seed.
#[pyfunction]
pub fn push_public_key<'py>(
    py: Python<'py>,
    seed: &Bound<'py, PyAny>,
) -> Result<Bound<'py, PyBytes>> {
    let seed = secret_bytes::<32>(seed, "seed", "an Ed25519 seed")?;
    Ok(PyBytes::new(py, &kernel::push_public_key(&seed)))
}

/// The bytes an approval signs (see `sls_kernel::push::approval_message`); `decision` is 1
/// (approve) or 2 (decline).
#[pyfunction]
pub fn approval_message<'py>(
    py: Python<'py>,
    challenge_id: &Bound<'py, PyAny>,
    user_id: &Bound<'py, PyAny>,
    device_id: &Bound<'py, PyAny>,
    expires_at: &Bound<'py, PyAny>,
    decision: &Bound<'py, PyAny>,
) -> Result<Bound<'py, PyBytes>> {
    let decision = kernel::Decision::try_from(byte_param(decision, "decision").map_err(|e| {
        if decision.is_instance_of::<pyo3::types::PyInt>() {
            invalid("decision", "must be 1 (approve) or 2 (decline)")
        } else {
            e
        }
    })?)?;
    let message = kernel::approval_message(
        unsigned(challenge_id, "challenge_id")?,
        unsigned(user_id, "user_id")?,
        unsigned(device_id, "device_id")?,
        unix_seconds(expires_at, "expires_at")?,
        decision,
    );
    Ok(PyBytes::new(py, &message))
}

/// The 64-byte Ed25519 signature of `message` under a 32-byte seed.
#[pyfunction]
pub fn sign_approval<'py>(
    py: Python<'py>,
    seed: &Bound<'py, PyAny>,
    message: &Bound<'py, PyAny>,
) -> Result<Bound<'py, PyBytes>> {
    let seed = secret_bytes::<32>(seed, "seed", "an Ed25519 seed")?;
    let message = blob(message, "message", false)?;
    let signature = py.detach(|| kernel::sign_approval(&seed, &message));
    Ok(PyBytes::new(py, &signature))
}

/// True when `signature` is the strict Ed25519 signature of `message` under `public`; a key
/// or signature of the wrong length or encoding is False.
#[pyfunction]
pub fn verify_approval(
    py: Python<'_>,
    public: &Bound<'_, PyAny>,
    message: &Bound<'_, PyAny>,
    signature: &Bound<'_, PyAny>,
) -> Result<bool> {
    let public = blob(public, "public", false)?;
    let message = blob(message, "message", false)?;
    let signature = blob(signature, "signature", false)?;
    Ok(py.detach(|| kernel::verify_approval(&public, &message, &signature)))
}

/// Verifies N approvals (per-item public keys, messages, signatures: lists of bytes, numpy
/// `S` arrays or 2-D uint8 matrices): a uint8 array of outcomes, 0 OK, 1 WRONG, 2 MALFORMED.
#[pyfunction]
#[pyo3(signature = (publics, messages, signatures, *, threads=None))]
pub fn verify_approvals_batch<'py>(
    py: Python<'py>,
    publics: &Bound<'py, PyAny>,
    messages: &Bound<'py, PyAny>,
    signatures: &Bound<'py, PyAny>,
    threads: Option<&Bound<'py, PyAny>>,
) -> Result<Bound<'py, PyArray1<u8>>> {
    let threads = threads_arg(threads)?;
    let publics = column(publics, "publics", false)?;
    let messages = column(messages, "messages", false)?;
    let signatures = column(signatures, "signatures", false)?;
    let (publics, messages, signatures) =
        (publics.column()?, messages.column()?, signatures.column()?);
    let mut outcomes = vec![0u8; publics.len()];
    run_batch(py, outcomes.len(), threads, |execution: Execution| {
        kernel::verify_approvals_batch(&publics, &messages, &signatures, &mut outcomes, execution)
    })?;
    Ok(PyArray1::from_vec(py, outcomes))
}
