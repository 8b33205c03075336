//! Kernel errors become the Python exception classes defined in `sls_core/errors.py`.

use pyo3::prelude::*;
use sls_kernel::Error;

pyo3::import_exception!(sls_core.errors, InvalidInputError);
pyo3::import_exception!(sls_core.errors, InvalidSuiteError);
pyo3::import_exception!(sls_core.errors, InvalidInputTypeError);

/// A kernel error as the matching `sls_core.errors` exception (field, rule).
pub fn to_py(error: Error) -> PyErr {
    match error {
        Error::InvalidSuite { suite, rule } => {
            InvalidSuiteError::new_err(("suite", format!("{suite:?}: {rule}")))
        }
        Error::InvalidInput { field, rule } => InvalidInputError::new_err((field, rule)),
    }
}

/// A bad value for `field`, with the rule it breaks.
pub fn invalid(field: &str, rule: impl Into<String>) -> PyErr {
    InvalidInputError::new_err((field.to_owned(), rule.into()))
}

/// A value of the wrong Python type for `field`. Never echoes the value itself.
pub fn wrong_type(field: &str, expected: &str, got: &Bound<'_, PyAny>) -> PyErr {
    let type_name = got
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".to_owned());
    InvalidInputTypeError::new_err((
        field.to_owned(),
        format!("expected {expected}, got {type_name}"),
    ))
}
