//! The kernel's one error type. Messages name the field and the rule; they never quote a
//! secret, a PIN, a PIN hash or a code.

/// Why an input was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The OCRA suite string does not follow RFC 6287 section 6.
    #[error("suite {suite:?}: {rule}")]
    InvalidSuite { suite: String, rule: String },
    /// An input other than the suite breaks a rule.
    #[error("{field}: {rule}")]
    InvalidInput { field: &'static str, rule: String },
}

impl Error {
    pub(crate) fn input(field: &'static str, rule: impl Into<String>) -> Self {
        Error::InvalidInput {
            field,
            rule: rule.into(),
        }
    }

    pub(crate) fn suite(suite: &str, rule: impl Into<String>) -> Self {
        // A suite is public configuration, but cap what we echo so a misplaced secret
        // passed as a suite is never reflected whole.
        let shown: String = suite.chars().take(48).collect();
        Error::InvalidSuite {
            suite: shown,
            rule: rule.into(),
        }
    }

    /// The name of the offending field (`"suite"` for suite errors).
    pub fn field(&self) -> &'static str {
        match self {
            Error::InvalidSuite { .. } => "suite",
            Error::InvalidInput { field, .. } => field,
        }
    }
}
