//! The bindings' one error type, and how it becomes a Python exception.
//!
//! Entry points return [`Result`], so `?` takes a kernel error, a PyO3 error or a refusal
//! of the bindings' own alike; [`From<Error> for PyErr`] then raises the matching class of
//! `sls_core/errors.py`. A message names the field and the rule; it never quotes the value
//! (the value may be a secret, a PIN or a code).

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use sls_kernel::activation::{ManualCodeError, RandomSourceError};

pyo3::import_exception!(sls_core.errors, InvalidInputError);
pyo3::import_exception!(sls_core.errors, InvalidSuiteError);
pyo3::import_exception!(sls_core.errors, InvalidInputTypeError);

/// Why a call into the bindings failed.
#[derive(Debug)]
pub enum Error {
    /// The kernel refused an input (`InvalidSuiteError` or `InvalidInputError`).
    Kernel(sls_kernel::Error),
    /// A bad value for `field`, with the rule it breaks (`InvalidInputError`).
    Invalid { field: String, rule: String },
    /// A value of the wrong Python type for `field` (`InvalidInputTypeError`); the rule
    /// names the expected type and the type given, never the value.
    WrongType { field: String, rule: String },
    /// The operating system's random source failed (`OSError`).
    RandomSource,
    /// An exception Python (or PyO3, or numpy) raised, passed on as it is.
    Py(PyErr),
}

/// What every entry point returns.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for PyErr {
    fn from(error: Error) -> Self {
        match error {
            Error::Kernel(sls_kernel::Error::InvalidSuite { suite, rule }) => {
                InvalidSuiteError::new_err(("suite", format!("{suite:?}: {rule}")))
            }
            Error::Kernel(sls_kernel::Error::InvalidInput { field, rule }) => {
                InvalidInputError::new_err((field, rule))
            }
            Error::Invalid { field, rule } => InvalidInputError::new_err((field, rule)),
            Error::WrongType { field, rule } => InvalidInputTypeError::new_err((field, rule)),
            Error::RandomSource => {
                PyOSError::new_err("the operating system's random source failed")
            }
            Error::Py(error) => error,
        }
    }
}

impl From<sls_kernel::Error> for Error {
    fn from(error: sls_kernel::Error) -> Self {
        Error::Kernel(error)
    }
}

impl From<PyErr> for Error {
    fn from(error: PyErr) -> Self {
        Error::Py(error)
    }
}

impl From<pyo3::CastError<'_, '_>> for Error {
    fn from(error: pyo3::CastError<'_, '_>) -> Self {
        Error::Py(error.into())
    }
}

impl From<pyo3::CastIntoError<'_>> for Error {
    fn from(error: pyo3::CastIntoError<'_>) -> Self {
        Error::Py(error.into())
    }
}

impl From<numpy::AsSliceError> for Error {
    fn from(error: numpy::AsSliceError) -> Self {
        Error::Py(error.into())
    }
}

impl From<RandomSourceError> for Error {
    fn from(_: RandomSourceError) -> Self {
        Error::RandomSource
    }
}

/// Only a typed manual activation string is parsed, so its errors are that field's.
impl From<ManualCodeError> for Error {
    fn from(error: ManualCodeError) -> Self {
        invalid("manual_code", error.to_string())
    }
}

/// A bad value for `field`, with the rule it breaks.
pub fn invalid(field: &str, rule: impl Into<String>) -> Error {
    Error::Invalid {
        field: field.to_owned(),
        rule: rule.into(),
    }
}

/// A value of the wrong Python type for `field`. Never echoes the value itself.
pub fn wrong_type(field: &str, expected: &str, got: &Bound<'_, PyAny>) -> Error {
    Error::WrongType {
        field: field.to_owned(),
        rule: format!("expected {expected}, got {}", type_name(got)),
    }
}

/// The name of `obj`'s type ("?" if even that fails): safe to show, unlike its value.
fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".to_owned())
}
