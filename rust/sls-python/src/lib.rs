//! `sls_core._native`: the thin PyO3 layer over `sls-kernel`.
//!
//! It converts Python and numpy inputs, releases the GIL around kernel work, picks the
//! thread pool and maps kernel errors to the exception classes of `sls_core.errors`.
//! It holds no algorithm of its own, apart from the server's audit lines (`audit`: JSON
//! text formatting, nothing the kernel should know). Each file is named after what it
//! wraps (`ocra`, `otp`, `card`, `challenge`, `activation`, `push`); `errors` holds the one
//! error type every entry point returns. Users import the Python faces (`sls_core.ocra`,
//! `sls_core.card`, `sls_core.push`, ...), never this module.

use pyo3::prelude::*;

mod activation;
mod audit;
mod card;
mod challenge;
mod convert;
mod errors;
mod names;
mod ocra;
mod otp;
mod push;
mod sealing;
mod threads;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(ocra::ocra_compute, m)?)?;
    m.add_function(wrap_pyfunction!(ocra::ocra_verify, m)?)?;
    m.add_function(wrap_pyfunction!(ocra::ocra_verify_batch, m)?)?;
    m.add_function(wrap_pyfunction!(ocra::ocra_compute_batch, m)?)?;
    m.add_function(wrap_pyfunction!(ocra::ocra_suite_info, m)?)?;
    m.add_function(wrap_pyfunction!(otp::hotp_compute, m)?)?;
    m.add_function(wrap_pyfunction!(otp::hotp_verify, m)?)?;
    m.add_function(wrap_pyfunction!(otp::totp_compute, m)?)?;
    m.add_function(wrap_pyfunction!(otp::totp_verify, m)?)?;
    m.add_function(wrap_pyfunction!(otp::otp_verify_batch, m)?)?;
    m.add_function(wrap_pyfunction!(otp::otp_compute_batch, m)?)?;
    m.add_function(wrap_pyfunction!(threads::default_threads, m)?)?;
    m.add_class::<convert::KeyTable>()?;
    m.add_class::<challenge::TokenKeys>()?;
    m.add_class::<names::NameIndex>()?;
    m.add_class::<sealing::DataKeys>()?;
    m.add_function(wrap_pyfunction!(card::card_codes, m)?)?;
    m.add_function(wrap_pyfunction!(card::card_verify, m)?)?;
    m.add_function(wrap_pyfunction!(card::card_verify_batch, m)?)?;
    m.add_class::<activation::ActivationSigner>()?;
    m.add_class::<activation::ActivationVerifier>()?;
    m.add_function(wrap_pyfunction!(activation::payload_status_name, m)?)?;
    m.add_function(wrap_pyfunction!(activation::manual_code, m)?)?;
    m.add_function(wrap_pyfunction!(activation::parse_manual_code, m)?)?;
    m.add_function(wrap_pyfunction!(activation::x25519_keypair, m)?)?;
    m.add_function(wrap_pyfunction!(activation::x25519_public_key, m)?)?;
    m.add_function(wrap_pyfunction!(activation::derive_ocra_secret, m)?)?;
    m.add_function(wrap_pyfunction!(push::push_keypair, m)?)?;
    m.add_function(wrap_pyfunction!(push::push_public_key, m)?)?;
    m.add_function(wrap_pyfunction!(push::approval_message, m)?)?;
    m.add_function(wrap_pyfunction!(push::sign_approval, m)?)?;
    m.add_function(wrap_pyfunction!(push::verify_approval, m)?)?;
    m.add_function(wrap_pyfunction!(push::verify_approvals_batch, m)?)?;
    m.add_function(wrap_pyfunction!(audit::audit_lines, m)?)?;
    Ok(())
}
