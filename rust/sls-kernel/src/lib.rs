//! sls-kernel: the pure-Rust verification kernel of sls_core.
//!
//! It computes and verifies second-factor codes: OCRA challenge/response (RFC 6287) and
//! HOTP/TOTP (RFC 4226/6238), one at a time or in parallel batches; it signs and checks IB Key
//! activation payloads and push approvals (Ed25519, X25519 + HKDF). It knows nothing of
//! Python. It never logs, and its errors never carry a key, a PIN, a PIN hash or a code:
//! they name the field and the rule that was broken.
#![forbid(unsafe_code)]

pub mod activation;
pub mod batch;
pub mod card;
pub mod challenge;
pub mod code;
pub mod error;
pub mod mac;
pub mod ocra;
pub mod otp;
pub mod push;
pub mod sealing;
pub mod types;

pub use activation::{
    derive_ocra_secret, manual_code, parse_manual_code, x25519_keypair, ActivationFields,
    ActivationPayload, ActivationSigner, ActivationVerifier, ManualCodeError, PayloadError,
    RandomSourceError, X25519Keypair,
};
pub use batch::{KeyColumn, KeyTable};
pub use card::CardKey;
pub use challenge::{ChallengeClaims, TokenKeys, TokenStatus};
pub use error::Error;
pub use mac::{HashAlgorithm, HmacKey, HmacKeyRef, PreparedKeys};
pub use ocra::{OcraInput, OcraSuite};
pub use otp::{OtpParams, TotpParams, WindowMatch};
pub use push::{
    approval_message, push_keypair, sign_approval, verify_approval, verify_approvals_batch,
    Decision, PushKeypair,
};
pub use types::{ByteColumn, Execution, Outcome};
