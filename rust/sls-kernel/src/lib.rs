//! sls-kernel: the pure-Rust verification kernel of sls_core.
//!
//! It computes and verifies second-factor codes: OCRA challenge/response (RFC 6287) and
//! HOTP/TOTP (RFC 4226/6238), one at a time or in parallel batches. It knows nothing of
//! Python. It never logs, and its errors never carry a key, a PIN, a PIN hash or a code:
//! they name the field and the rule that was broken.
#![forbid(unsafe_code)]

pub mod batch;
pub mod card;
pub mod challenge;
pub mod code;
pub mod error;
pub mod mac;
pub mod ocra;
pub mod otp;

pub use batch::{ByteColumn, Execution, KeyColumn, KeyTable, Outcome};
pub use card::CardKey;
pub use challenge::{ChallengeClaims, TokenKeys, TokenStatus};
pub use error::Error;
pub use mac::{HashAlgorithm, HmacKey, HmacKeyRef, PreparedKeys};
pub use ocra::{OcraInput, OcraSuite};
pub use otp::{OtpParams, TotpParams, WindowMatch};
