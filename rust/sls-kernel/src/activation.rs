//! IB Key activation: the signed payload the portal shows as a QR code, the manual string
//! printed under it, and the key agreement that gives app and server the same OCRA secret.
//!
//! The server signs each payload with Ed25519 under one of its keys (the key id travels in
//! the payload, so keys rotate); the app checks it against the server's public keys. The
//! manual string carries the first 8 bytes of the activation session id for a person to
//! type. Completing the activation, both sides run X25519 and HKDF-SHA256 to derive the
//! OCRA secret, which never travels. Nothing here logs, and no error carries a seed, a
//! private key or a derived secret.
//!
//! Payload wire layout (133 to 196 bytes), integers big-endian:
//! `version u8 | key_id u8 | flags u8 | session_id [u8; 16] | issued_at u64 |
//! expires_at u64 | server_public [u8; 32] | username_len u8 | username | signature [u8; 64]`,
//! where `signature` is Ed25519 over [`PAYLOAD_DOMAIN`] followed by every byte before it.
//! The text is `SLS1:` then RFC 4648 base32 without padding: upper-case letters, digits
//! 2-7 and the colon, all in the QR alphanumeric set (ISO/IEC 18004 table 5), so a QR code
//! holds it in alphanumeric mode (5.5 bits a character).

use core::fmt;

use data_encoding::BASE32_NOPAD;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use hkdf::Hkdf;
use rayon::prelude::*;
use sha2::Sha256;
use x25519_dalek::{PublicKey as X25519Public, StaticSecret};
use zeroize::Zeroizing;

use crate::error::Error;
use crate::types::{ByteColumn, Execution};

/// The scheme marker every payload text starts with.
pub const PAYLOAD_PREFIX: &str = "SLS1:";
/// The only payload version this kernel writes and reads.
pub const PAYLOAD_VERSION: u8 = 1;
/// Signed before the payload bytes, so an activation signature means nothing elsewhere.
pub const PAYLOAD_DOMAIN: &[u8] = b"sls-activation-payload-v1\0";
/// Bytes of an activation session id.
pub const SESSION_ID_BYTES: usize = 16;
/// Usernames: 1 to 64 characters, lower-case ASCII letters and digits.
pub const MAX_USERNAME_CHARS: usize = 64;
const SIGNATURE_BYTES: usize = 64;
const USERNAME_LEN_AT: usize = 1 + 1 + 1 + SESSION_ID_BYTES + 8 + 8 + 32;
const FIXED_BYTES: usize = USERNAME_LEN_AT + 1;
/// Smallest decoded payload: a one-character username.
pub const MIN_PAYLOAD_BYTES: usize = FIXED_BYTES + 1 + SIGNATURE_BYTES;
/// Largest decoded payload: a 64-character username.
pub const MAX_PAYLOAD_BYTES: usize = FIXED_BYTES + MAX_USERNAME_CHARS + SIGNATURE_BYTES;
/// Longest payload text: the prefix and the base32 of the largest payload.
pub const MAX_PAYLOAD_CHARS: usize = PAYLOAD_PREFIX.len() + (MAX_PAYLOAD_BYTES * 8).div_ceil(5);

/// The statuses of a batch: [`PAYLOAD_VALID`] or a [`PayloadError`] as its number.
pub const PAYLOAD_VALID: u8 = 0;

/// Why a payload was refused; the numbers are the values of the batch status array.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[repr(u8)]
pub enum PayloadError {
    /// Not `SLS1:` + base32, a length no payload has, or a username outside the rules.
    #[error("malformed")]
    Malformed = 1,
    #[error("unsupported version")]
    UnsupportedVersion = 2,
    /// Signed under a key id this verifier does not hold (retired, or never the server's).
    #[error("unknown key id")]
    UnknownKeyId = 3,
    /// The signature does not verify: forged or altered.
    #[error("bad signature")]
    BadSignature = 4,
    /// `now >= expires_at`.
    #[error("expired")]
    Expired = 5,
    /// Issued later than now plus the allowed clock skew.
    #[error("not yet valid")]
    NotYetValid = 6,
}

/// The human name of a batch status number, `None` for a number no status has.
pub fn payload_status_name(status: u8) -> Option<&'static str> {
    Some(match status {
        PAYLOAD_VALID => "valid",
        1 => "malformed",
        2 => "unsupported version",
        3 => "unknown key id",
        4 => "bad signature",
        5 => "expired",
        6 => "not yet valid",
        _ => return None,
    })
}

/// What the server puts in a payload. Nothing in it is secret: it is printed as a QR code.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ActivationFields {
    /// Opaque to the kernel; the domain layer numbers them.
    pub flags: u8,
    /// 16 random bytes naming the activation session on the server.
    pub session_id: [u8; SESSION_ID_BYTES],
    pub username: String,
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds; the payload is refused at and after this instant.
    pub expires_at: u64,
    /// The server's ephemeral X25519 public key for this session.
    pub server_public: [u8; 32],
}

/// A verified payload: its fields and how it was signed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ActivationPayload {
    pub version: u8,
    pub key_id: u8,
    pub fields: ActivationFields,
}

/// True for 1 to 64 characters of `a-z0-9`.
pub fn is_valid_username(username: &[u8]) -> bool {
    (1..=MAX_USERNAME_CHARS).contains(&username.len())
        && username
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

fn check_username(username: &str) -> Result<(), Error> {
    if is_valid_username(username.as_bytes()) {
        Ok(())
    } else {
        Err(Error::input(
            "username",
            format!("must be 1 to {MAX_USERNAME_CHARS} lower-case letters a-z or digits 0-9"),
        ))
    }
}

/// The server's payload signing keys: several ids so keys rotate, one active for signing.
/// The seeds are wiped when this is dropped (`SigningKey` zeroizes itself).
#[derive(Clone)]
pub struct ActivationSigner {
    keys: Vec<(u8, SigningKey)>,
    active: u8,
}

impl fmt::Debug for ActivationSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<u8> = self.keys.iter().map(|(id, _)| *id).collect();
        write!(
            f,
            "ActivationSigner(ids={ids:?}, active={}, redacted)",
            self.active
        )
    }
}

impl ActivationSigner {
    /// `keys` are (key id, 32-byte Ed25519 seed) pairs; `active` must be one of the ids.
    pub fn new<'k>(
        keys: impl IntoIterator<Item = (u8, &'k [u8; 32])>,
        active: u8,
    ) -> Result<Self, Error> {
        let mut prepared: Vec<(u8, SigningKey)> = Vec::new();
        for (id, seed) in keys {
            if prepared.iter().any(|(seen, _)| *seen == id) {
                return Err(Error::input(
                    "signing_keys",
                    format!("key id {id}: appears twice"),
                ));
            }
            prepared.push((id, SigningKey::from_bytes(seed)));
        }
        if !prepared.iter().any(|(id, _)| *id == active) {
            return Err(Error::input(
                "active_key_id",
                format!("{active} is not one of the signing keys"),
            ));
        }
        Ok(ActivationSigner {
            keys: prepared,
            active,
        })
    }

    pub fn active_key_id(&self) -> u8 {
        self.active
    }

    /// (key id, Ed25519 public key) of every key, in the order given: what the app needs.
    pub fn public_keys(&self) -> Vec<(u8, [u8; 32])> {
        self.keys
            .iter()
            .map(|(id, key)| (*id, key.verifying_key().to_bytes()))
            .collect()
    }

    /// Signs `fields` under the active key: the `SLS1:` text for the QR code.
    pub fn sign(&self, fields: &ActivationFields) -> Result<String, Error> {
        check_username(&fields.username)?;
        if fields.expires_at <= fields.issued_at {
            return Err(Error::input("expires_at", "must be after issued_at"));
        }
        let key = self
            .keys
            .iter()
            .find(|(id, _)| *id == self.active)
            .map(|(_, key)| key)
            .expect("the active key is checked in new");
        let mut raw = Vec::with_capacity(FIXED_BYTES + fields.username.len() + SIGNATURE_BYTES);
        raw.push(PAYLOAD_VERSION);
        raw.push(self.active);
        raw.push(fields.flags);
        raw.extend_from_slice(&fields.session_id);
        raw.extend_from_slice(&fields.issued_at.to_be_bytes());
        raw.extend_from_slice(&fields.expires_at.to_be_bytes());
        raw.extend_from_slice(&fields.server_public);
        raw.push(fields.username.len() as u8);
        raw.extend_from_slice(fields.username.as_bytes());
        let signature = key.sign(&signed_message(&raw));
        raw.extend_from_slice(&signature.to_bytes());
        let mut text = String::with_capacity(MAX_PAYLOAD_CHARS);
        text.push_str(PAYLOAD_PREFIX);
        BASE32_NOPAD.encode_append(&raw, &mut text);
        Ok(text)
    }
}

fn signed_message(signed: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(PAYLOAD_DOMAIN.len() + signed.len());
    message.extend_from_slice(PAYLOAD_DOMAIN);
    message.extend_from_slice(signed);
    message
}

/// The server's payload public keys, by id: what the app (or a server) checks payloads with.
#[derive(Clone)]
pub struct ActivationVerifier {
    keys: Vec<(u8, VerifyingKey)>,
    skew: u64,
}

impl fmt::Debug for ActivationVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ActivationVerifier(ids={:?}, skew={})",
            self.key_ids(),
            self.skew
        )
    }
}

impl ActivationVerifier {
    /// `keys` are (key id, 32-byte Ed25519 public key) pairs. A key that is not a point of
    /// the curve, or one of small order (it would "verify" almost any message), is an error.
    /// `issued_at` may be up to `skew` seconds ahead of the verifier's clock.
    pub fn new<'k>(
        keys: impl IntoIterator<Item = (u8, &'k [u8; 32])>,
        skew: u64,
    ) -> Result<Self, Error> {
        let mut prepared: Vec<(u8, VerifyingKey)> = Vec::new();
        for (id, public) in keys {
            if prepared.iter().any(|(seen, _)| *seen == id) {
                return Err(Error::input(
                    "public_keys",
                    format!("key id {id}: appears twice"),
                ));
            }
            let key = VerifyingKey::from_bytes(public)
                .ok()
                .filter(|key| !key.is_weak())
                .ok_or_else(|| {
                    Error::input(
                        "public_keys",
                        format!("key id {id}: not a valid Ed25519 public key"),
                    )
                })?;
            prepared.push((id, key));
        }
        if prepared.is_empty() {
            return Err(Error::input("public_keys", "must hold at least one key"));
        }
        Ok(ActivationVerifier {
            keys: prepared,
            skew,
        })
    }

    pub fn key_ids(&self) -> Vec<u8> {
        self.keys.iter().map(|(id, _)| *id).collect()
    }

    pub fn skew(&self) -> u64 {
        self.skew
    }

    /// Checks a payload text at time `now` (Unix seconds). The signature is checked (strict
    /// Ed25519) before any field is trusted; the times after it.
    pub fn verify(&self, text: &[u8], now: u64) -> Result<ActivationPayload, PayloadError> {
        let body = text
            .strip_prefix(PAYLOAD_PREFIX.as_bytes())
            .filter(|body| body.len() <= MAX_PAYLOAD_CHARS - PAYLOAD_PREFIX.len())
            .ok_or(PayloadError::Malformed)?;
        // Strict base32: the alphabet, a length base32 can have, zero trailing bits (so each
        // payload has exactly one spelling).
        let raw = BASE32_NOPAD
            .decode(body)
            .map_err(|_| PayloadError::Malformed)?;
        if raw.first() != Some(&PAYLOAD_VERSION) {
            return Err(if raw.is_empty() {
                PayloadError::Malformed
            } else {
                PayloadError::UnsupportedVersion
            });
        }
        if raw.len() < MIN_PAYLOAD_BYTES
            || raw.len() != FIXED_BYTES + usize::from(raw[USERNAME_LEN_AT]) + SIGNATURE_BYTES
        {
            return Err(PayloadError::Malformed);
        }
        let (signed, signature) = raw.split_at(raw.len() - SIGNATURE_BYTES);
        let username = &signed[FIXED_BYTES..];
        if !is_valid_username(username) {
            return Err(PayloadError::Malformed);
        }
        let key_id = raw[1];
        let key = self
            .keys
            .iter()
            .find(|(id, _)| *id == key_id)
            .map(|(_, key)| key)
            .ok_or(PayloadError::UnknownKeyId)?;
        let signature = Signature::from_bytes(signature.try_into().expect("64 bytes"));
        key.verify_strict(&signed_message(signed), &signature)
            .map_err(|_| PayloadError::BadSignature)?;
        let array = |at: usize| -> [u8; 8] { raw[at..at + 8].try_into().expect("8 bytes") };
        let mut fields = ActivationFields {
            flags: raw[2],
            session_id: raw[3..3 + SESSION_ID_BYTES].try_into().expect("16 bytes"),
            username: String::new(),
            issued_at: u64::from_be_bytes(array(19)),
            expires_at: u64::from_be_bytes(array(27)),
            server_public: raw[35..35 + 32].try_into().expect("32 bytes"),
        };
        if fields.expires_at <= fields.issued_at {
            // Signed, yet no signer of ours writes it.
            return Err(PayloadError::Malformed);
        }
        if now >= fields.expires_at {
            return Err(PayloadError::Expired);
        }
        if fields.issued_at > now.saturating_add(self.skew) {
            return Err(PayloadError::NotYetValid);
        }
        fields.username = String::from_utf8(username.to_vec()).expect("checked ASCII");
        Ok(ActivationPayload {
            version: PAYLOAD_VERSION,
            key_id,
            fields,
        })
    }

    /// Verifies every payload of `texts` into `statuses` ([`PAYLOAD_VALID`] or a
    /// [`PayloadError`] number) and `payloads` (the default payload where not valid).
    pub fn verify_batch(
        &self,
        texts: &ByteColumn<'_>,
        now: u64,
        statuses: &mut [u8],
        payloads: &mut [ActivationPayload],
        execution: Execution,
    ) -> Result<(), Error> {
        let n = texts.len();
        if statuses.len() != n || payloads.len() != n {
            return Err(Error::input(
                "payloads",
                "statuses and payloads must have one row per payload",
            ));
        }
        let fill = |(row, (status, out)): (usize, (&mut u8, &mut ActivationPayload))| match self
            .verify(texts.get(row), now)
        {
            Ok(payload) => {
                *status = PAYLOAD_VALID;
                *out = payload;
            }
            Err(why) => {
                *status = why as u8;
                *out = ActivationPayload::default();
            }
        };
        match execution {
            Execution::Sequential => statuses
                .iter_mut()
                .zip(payloads.iter_mut())
                .enumerate()
                .for_each(fill),
            Execution::Parallel => statuses
                .par_iter_mut()
                .zip(payloads.par_iter_mut())
                .enumerate()
                .with_min_len(64)
                .for_each(fill),
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// The manual activation string
// ---------------------------------------------------------------------------------------

/// The 31 upper-case letters and digits left once 0, O, 1, I and L are gone. 31 is prime,
/// which the check character needs.
pub const MANUAL_ALPHABET: &[u8; 31] = b"23456789ABCDEFGHJKMNPQRSTUVWXYZ";
const BASE: u32 = 31;
/// Bytes of the session id a manual string carries: the first 8 (64 bits).
pub const MANUAL_PREFIX_BYTES: usize = 8;
/// 13 symbols hold 64 bits (31^13 > 2^64).
const DATA_SYMBOLS: usize = 13;
/// Symbols of a manual string: the data and the check character.
pub const MANUAL_CODE_SYMBOLS: usize = DATA_SYMBOLS + 1;
/// Symbols per group as printed: `XXXX-XXXX-XXXX-XX`, the way IBANs are grouped.
const GROUP: usize = 4;
/// Longest text `parse_manual_code` reads: room for any spacing a person might type.
pub const MAX_MANUAL_CODE_CHARS: usize = 64;

/// Why a typed manual string was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[repr(u8)]
pub enum ManualCodeError {
    /// A character outside the alphabet, spaces and hyphens, or not 14 symbols.
    #[error("malformed: must be {MANUAL_CODE_SYMBOLS} characters of 2-9 and A-Z without I, L and O, optionally grouped with spaces or hyphens")]
    Malformed = 1,
    /// Every character is allowed but the check fails: one was mistyped, or two swapped.
    #[error("the check character does not match: a character was mistyped or two were swapped")]
    BadCheck = 2,
}

/// Position `i`'s weight in the check sum: 14 down to 1 (the check character). The
/// weights are distinct and nonzero modulo 31, so a single changed symbol changes the sum
/// by `w * d` and swapping two different symbols by `(w_i - w_j) * d`, both nonzero in
/// the field of 31 elements: every such mistake is caught (ISO 7064's idea, over GF(31)).
const fn weight(position: usize) -> u32 {
    (MANUAL_CODE_SYMBOLS - position) as u32
}

fn symbol_value(c: u8) -> Option<u32> {
    let upper = c.to_ascii_uppercase();
    MANUAL_ALPHABET
        .iter()
        .position(|&s| s == upper)
        .map(|v| v as u32)
}

fn check_value(data: &[u32; DATA_SYMBOLS]) -> u32 {
    let sum: u32 = data
        .iter()
        .enumerate()
        .map(|(i, &v)| weight(i) * v)
        .sum::<u32>()
        % BASE;
    // The check symbol has weight 1: it brings the whole sum to 0 modulo 31.
    (BASE - sum) % BASE
}

/// The manual string for a session: the first 8 bytes of `session_id` in base 31, big
/// endian, then the check character, grouped `XXXX-XXXX-XXXX-XX`.
pub fn manual_code(session_id: &[u8; SESSION_ID_BYTES]) -> String {
    let mut value = u64::from_be_bytes(
        session_id[..MANUAL_PREFIX_BYTES]
            .try_into()
            .expect("8 bytes"),
    );
    let mut data = [0u32; DATA_SYMBOLS];
    for slot in data.iter_mut().rev() {
        *slot = (value % u64::from(BASE)) as u32;
        value /= u64::from(BASE);
    }
    let check = check_value(&data);
    let mut text = String::with_capacity(MANUAL_CODE_SYMBOLS + MANUAL_CODE_SYMBOLS / GROUP);
    for (i, v) in data.iter().chain(core::iter::once(&check)).enumerate() {
        if i > 0 && i % GROUP == 0 {
            text.push('-');
        }
        text.push(char::from(MANUAL_ALPHABET[*v as usize]));
    }
    text
}

/// Reads a manual string as a person typed it: any case, with or without spaces and
/// hyphens anywhere. Anything else (another character, `0` for `O`, a wrong length) is
/// malformed; a wrong check character is [`ManualCodeError::BadCheck`]. Returns the first
/// 8 bytes of the session id, which the server looks the session up by.
pub fn parse_manual_code(text: &[u8]) -> Result<[u8; MANUAL_PREFIX_BYTES], ManualCodeError> {
    if text.len() > MAX_MANUAL_CODE_CHARS {
        return Err(ManualCodeError::Malformed);
    }
    let mut symbols = [0u32; MANUAL_CODE_SYMBOLS];
    let mut count = 0;
    for &c in text {
        if c == b' ' || c == b'-' {
            continue;
        }
        let value = symbol_value(c).ok_or(ManualCodeError::Malformed)?;
        *symbols.get_mut(count).ok_or(ManualCodeError::Malformed)? = value;
        count += 1;
    }
    if count != MANUAL_CODE_SYMBOLS {
        return Err(ManualCodeError::Malformed);
    }
    let sum: u32 = symbols
        .iter()
        .enumerate()
        .map(|(i, &v)| weight(i) * v)
        .sum();
    if !sum.is_multiple_of(BASE) {
        return Err(ManualCodeError::BadCheck);
    }
    let value = symbols[..DATA_SYMBOLS]
        .iter()
        .fold(0u128, |acc, &v| acc * u128::from(BASE) + u128::from(v));
    // 31^13 exceeds 2^64: a string above it was never written by `manual_code`.
    let value = u64::try_from(value).map_err(|_| ManualCodeError::Malformed)?;
    Ok(value.to_be_bytes())
}

// ---------------------------------------------------------------------------------------
// Key agreement
// ---------------------------------------------------------------------------------------

/// HKDF `info` prefix of the OCRA secret; the username follows it.
pub const OCRA_SECRET_INFO: &[u8] = b"sls-ibkey-ocra-v1";

/// The operating system's random source failed (it does not, short of a broken system).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the operating system's random source failed")]
pub struct RandomSourceError;

/// 32 random bytes from the operating system, wiped when dropped.
pub fn random_secret() -> Result<Zeroizing<[u8; 32]>, RandomSourceError> {
    let mut secret = Zeroizing::new([0u8; 32]);
    getrandom::fill(secret.as_mut()).map_err(|_| RandomSourceError)?;
    Ok(secret)
}

/// A random activation session id.
pub fn new_session_id() -> Result<[u8; SESSION_ID_BYTES], RandomSourceError> {
    let mut id = [0u8; SESSION_ID_BYTES];
    getrandom::fill(&mut id).map_err(|_| RandomSourceError)?;
    Ok(id)
}

/// An X25519 key pair: the private key (wiped when dropped) and its public key.
#[derive(Clone)]
pub struct X25519Keypair {
    pub private: Zeroizing<[u8; 32]>,
    pub public: [u8; 32],
}

impl fmt::Debug for X25519Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "X25519Keypair(public={:02x?}, private=redacted)",
            self.public
        )
    }
}

/// A fresh X25519 key pair from the operating system's random source.
pub fn x25519_keypair() -> Result<X25519Keypair, RandomSourceError> {
    let private = random_secret()?;
    let public = x25519_public(&private);
    Ok(X25519Keypair { private, public })
}

/// The X25519 public key of `private`.
pub fn x25519_public(private: &[u8; 32]) -> [u8; 32] {
    X25519Public::from(&StaticSecret::from(*private)).to_bytes()
}

/// The OCRA secret both sides of an activation derive:
/// HKDF-SHA256(ikm = X25519(own_private, peer_public), salt = session_id,
/// info = "sls-ibkey-ocra-v1" || username), 32 bytes. A peer key of small order makes the
/// shared secret all zeros whatever our key: refused, as is a username outside the rules.
pub fn derive_ocra_secret(
    own_private: &[u8; 32],
    peer_public: &[u8; 32],
    session_id: &[u8; SESSION_ID_BYTES],
    username: &str,
) -> Result<Zeroizing<[u8; 32]>, Error> {
    check_username(username)?;
    let own = StaticSecret::from(*own_private);
    let shared = own.diffie_hellman(&X25519Public::from(*peer_public));
    if !shared.was_contributory() {
        return Err(Error::input(
            "peer_public",
            "is a low-order point: the shared secret would be all zeros",
        ));
    }
    let hkdf = Hkdf::<Sha256>::new(Some(session_id), shared.as_bytes());
    let mut secret = Zeroizing::new([0u8; 32]);
    hkdf.expand_multi_info(&[OCRA_SECRET_INFO, username.as_bytes()], secret.as_mut())
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_100;

    fn seed(byte: u8) -> [u8; 32] {
        [byte; 32]
    }

    fn signer() -> ActivationSigner {
        ActivationSigner::new([(1, &seed(7)), (2, &seed(9))], 2).unwrap()
    }

    fn verifier() -> ActivationVerifier {
        let publics = signer().public_keys();
        ActivationVerifier::new(publics.iter().map(|(id, k)| (*id, k)), 0).unwrap()
    }

    fn fields() -> ActivationFields {
        ActivationFields {
            flags: 0b101,
            session_id: *b"0123456789abcdef",
            username: "alice2024".to_owned(),
            issued_at: 1_700_000_000,
            expires_at: 1_700_000_300,
            server_public: x25519_public(&[3u8; 32]),
        }
    }

    /// A small deterministic generator, so tests need no random crate.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn bytes<const N: usize>(&mut self) -> [u8; N] {
            let mut out = [0u8; N];
            for b in out.iter_mut() {
                *b = self.next() as u8;
            }
            out
        }
    }

    #[test]
    fn a_signed_payload_verifies_to_its_fields() {
        let text = signer().sign(&fields()).unwrap();
        assert!(text.starts_with("SLS1:"));
        let payload = verifier().verify(text.as_bytes(), NOW).unwrap();
        assert_eq!(payload.version, PAYLOAD_VERSION);
        assert_eq!(payload.key_id, 2);
        assert_eq!(payload.fields, fields());
    }

    #[test]
    fn payload_text_is_qr_alphanumeric_and_compact() {
        // ISO/IEC 18004 alphanumeric mode: 0-9, A-Z, space and $%*+-./:
        let qr = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:";
        for username in ["a", "alice", &"z".repeat(64)] {
            let mut f = fields();
            f.username = username.to_owned();
            let text = signer().sign(&f).unwrap();
            assert!(text.bytes().all(|c| qr.contains(&c)), "{text}");
            assert!(text.len() <= MAX_PAYLOAD_CHARS);
            assert_eq!(
                text.len(),
                5 + ((FIXED_BYTES + username.len() + 64) * 8).div_ceil(5)
            );
        }
        let text = signer().sign(&fields()).unwrap();
        assert_eq!(text.len(), 231); // 141 bytes for "alice2024"
    }

    #[test]
    fn every_single_bit_flip_of_the_decoded_payload_is_refused() {
        let text = signer().sign(&fields()).unwrap();
        let raw = BASE32_NOPAD.decode(&text.as_bytes()[5..]).unwrap();
        let v = verifier();
        for at in 0..raw.len() {
            for bit in 0..8 {
                let mut bad = raw.clone();
                bad[at] ^= 1 << bit;
                let bad_text = format!("SLS1:{}", BASE32_NOPAD.encode(&bad));
                let verdict = v.verify(bad_text.as_bytes(), NOW);
                assert!(verdict.is_err(), "byte {at} bit {bit} accepted");
                let expected: &[PayloadError] = match at {
                    0 => &[PayloadError::UnsupportedVersion],
                    1 => &[PayloadError::UnknownKeyId, PayloadError::BadSignature],
                    USERNAME_LEN_AT => &[PayloadError::Malformed],
                    // A username byte may still be a letter or digit: then the signature fails.
                    a if (FIXED_BYTES..FIXED_BYTES + 9).contains(&a) => {
                        &[PayloadError::Malformed, PayloadError::BadSignature]
                    }
                    _ => &[PayloadError::BadSignature],
                };
                assert!(
                    expected.contains(&verdict.clone().unwrap_err()),
                    "byte {at} bit {bit}: {verdict:?}"
                );
            }
        }
    }

    #[test]
    fn every_truncation_and_extension_of_the_text_is_refused() {
        let text = signer().sign(&fields()).unwrap();
        let v = verifier();
        for cut in 0..text.len() {
            assert_eq!(
                v.verify(&text.as_bytes()[..cut], NOW),
                Err(PayloadError::Malformed),
                "cut at {cut}"
            );
        }
        for extra in ["A", "AA", "AAAAAAAA", "=", " ", "\n"] {
            let longer = format!("{text}{extra}");
            assert_eq!(
                v.verify(longer.as_bytes(), NOW),
                Err(PayloadError::Malformed)
            );
        }
        assert_eq!(
            v.verify(text.to_lowercase().as_bytes(), NOW),
            Err(PayloadError::Malformed)
        );
        assert_eq!(
            v.verify(&text.as_bytes()[..text.len()].repeat(2), NOW),
            Err(PayloadError::Malformed)
        );
    }

    #[test]
    fn every_changed_character_of_the_text_is_refused() {
        let text = signer().sign(&fields()).unwrap().into_bytes();
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
        let v = verifier();
        for at in 5..text.len() {
            for &c in alphabet.iter().filter(|&&c| c != text[at]) {
                let mut bad = text.clone();
                bad[at] = c;
                assert!(v.verify(&bad, NOW).is_err(), "position {at}");
            }
        }
    }

    #[test]
    fn precise_errors() {
        let v = verifier();
        let text = signer().sign(&fields()).unwrap();
        // Times: expiry is exclusive; issue time may lead by the skew.
        assert_eq!(
            v.verify(text.as_bytes(), 1_700_000_300),
            Err(PayloadError::Expired)
        );
        assert!(v.verify(text.as_bytes(), 1_700_000_299).is_ok());
        assert!(v.verify(text.as_bytes(), 1_700_000_000).is_ok());
        assert_eq!(
            v.verify(text.as_bytes(), 1_699_999_999),
            Err(PayloadError::NotYetValid)
        );
        let lenient =
            ActivationVerifier::new(signer().public_keys().iter().map(|(id, k)| (*id, k)), 60)
                .unwrap();
        assert!(lenient.verify(text.as_bytes(), 1_699_999_940).is_ok());
        assert_eq!(
            lenient.verify(text.as_bytes(), 1_699_999_939),
            Err(PayloadError::NotYetValid)
        );
        // Another version byte, even correctly signed.
        let mut raw = BASE32_NOPAD.decode(&text.as_bytes()[5..]).unwrap();
        raw[0] = 2;
        let other = format!("SLS1:{}", BASE32_NOPAD.encode(&raw));
        assert_eq!(
            v.verify(other.as_bytes(), NOW),
            Err(PayloadError::UnsupportedVersion)
        );
        // A key this verifier does not hold; a key it holds under that id but another seed.
        let retired = ActivationSigner::new([(5, &seed(1))], 5).unwrap();
        assert_eq!(
            v.verify(retired.sign(&fields()).unwrap().as_bytes(), NOW),
            Err(PayloadError::UnknownKeyId)
        );
        let impostor = ActivationSigner::new([(2, &seed(8))], 2).unwrap();
        assert_eq!(
            v.verify(impostor.sign(&fields()).unwrap().as_bytes(), NOW),
            Err(PayloadError::BadSignature)
        );
        // Not base32, wrong prefix, padding, empty.
        for bad in [
            "",
            "SLS1:",
            "SLS2:AAAA",
            "sls1:AAAA",
            "SLS1:0189",
            "SLS1:AAAAAAAA====",
        ] {
            assert_eq!(
                v.verify(bad.as_bytes(), NOW),
                Err(PayloadError::Malformed),
                "{bad}"
            );
        }
        // Too long to be a payload at all.
        let huge = format!("SLS1:{}", "A".repeat(MAX_PAYLOAD_CHARS));
        assert_eq!(v.verify(huge.as_bytes(), NOW), Err(PayloadError::Malformed));
    }

    #[test]
    fn a_signed_payload_with_a_bad_username_or_times_is_malformed() {
        // Forge with the real key to show the verifier checks structure, not only the signature.
        let key = SigningKey::from_bytes(&seed(9));
        let forge = |username: &[u8], issued: u64, expires: u64| {
            let mut raw = vec![PAYLOAD_VERSION, 2, 0];
            raw.extend_from_slice(&[0u8; 16]);
            raw.extend_from_slice(&issued.to_be_bytes());
            raw.extend_from_slice(&expires.to_be_bytes());
            raw.extend_from_slice(&[9u8; 32]);
            raw.push(username.len() as u8);
            raw.extend_from_slice(username);
            let sig = key.sign(&signed_message(&raw));
            raw.extend_from_slice(&sig.to_bytes());
            format!("SLS1:{}", BASE32_NOPAD.encode(&raw))
        };
        let v = verifier();
        assert!(v.verify(forge(b"bob", 1, NOW + 1).as_bytes(), NOW).is_ok());
        for bad in [&b"Bob"[..], b"bo b", b"", b"caf\xc3\xa9", &[b'a'; 65]] {
            assert_eq!(
                v.verify(forge(bad, 1, NOW + 1).as_bytes(), NOW),
                Err(PayloadError::Malformed)
            );
        }
        assert_eq!(
            v.verify(forge(b"bob", NOW + 1, NOW + 1).as_bytes(), NOW),
            Err(PayloadError::Malformed)
        );
    }

    #[test]
    fn rotation_keeps_old_payloads_valid() {
        let old = ActivationSigner::new([(1, &seed(7))], 1).unwrap();
        let text = old.sign(&fields()).unwrap();
        assert_eq!(verifier().verify(text.as_bytes(), NOW).unwrap().key_id, 1);
    }

    #[test]
    fn bad_keys_and_fields_are_errors() {
        assert!(ActivationSigner::new([(1, &seed(7)), (1, &seed(8))], 1).is_err());
        assert!(ActivationSigner::new([(1, &seed(7))], 2).is_err());
        assert!(ActivationVerifier::new([], 0).is_err());
        let public = signer().public_keys()[0].1;
        assert!(ActivationVerifier::new([(1, &public), (1, &public)], 0).is_err());
        // The identity point (small order) and a y with no point on the curve.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(ActivationVerifier::new([(1, &identity)], 0).is_err());
        let mut off_curve = [0u8; 32];
        off_curve[0] = 2;
        assert!(ActivationVerifier::new([(1, &off_curve)], 0).is_err());
        for username in ["", "Alice", "al ice", "ali-ce", &"a".repeat(65), "é"] {
            let mut f = fields();
            f.username = username.to_owned();
            assert!(signer().sign(&f).is_err(), "{username:?}");
        }
        let mut f = fields();
        f.expires_at = f.issued_at;
        assert!(signer().sign(&f).is_err());
        let debug = format!("{:?}", signer());
        assert!(debug.contains("redacted") && !debug.contains("07, 07"));
    }

    #[test]
    fn batch_verification_matches_single_verification() {
        let s = signer();
        let v = verifier();
        let good = s.sign(&fields()).unwrap();
        let mut late = fields();
        late.issued_at = NOW + 10;
        late.expires_at = NOW + 20;
        let late = s.sign(&late).unwrap();
        let rows: Vec<&[u8]> = vec![good.as_bytes(), b"nope", late.as_bytes(), good.as_bytes()];
        let rows: Vec<&[u8]> = rows.iter().cycle().take(4 * 100).copied().collect();
        let column = ByteColumn::Rows(rows.clone());
        for execution in [Execution::Sequential, Execution::Parallel] {
            let mut statuses = vec![9u8; rows.len()];
            let mut payloads = vec![ActivationPayload::default(); rows.len()];
            v.verify_batch(&column, NOW, &mut statuses, &mut payloads, execution)
                .unwrap();
            for (row, text) in rows.iter().enumerate() {
                match v.verify(text, NOW) {
                    Ok(p) => {
                        assert_eq!(statuses[row], PAYLOAD_VALID);
                        assert_eq!(payloads[row], p);
                    }
                    Err(e) => {
                        assert_eq!(statuses[row], e as u8);
                        assert_eq!(payloads[row], ActivationPayload::default());
                    }
                }
            }
        }
        let mut short = vec![0u8; 1];
        let mut out = vec![ActivationPayload::default(); 1];
        assert!(v
            .verify_batch(&column, NOW, &mut short, &mut out, Execution::Sequential)
            .is_err());
    }

    #[test]
    fn status_names_cover_every_status() {
        for e in [
            PayloadError::Malformed,
            PayloadError::UnsupportedVersion,
            PayloadError::UnknownKeyId,
            PayloadError::BadSignature,
            PayloadError::Expired,
            PayloadError::NotYetValid,
        ] {
            assert_eq!(payload_status_name(e as u8), Some(e.to_string().as_str()));
        }
        assert_eq!(payload_status_name(0), Some("valid"));
        assert_eq!(payload_status_name(7), None);
    }

    // --- manual strings ---

    #[test]
    fn manual_code_round_trips_to_the_session_prefix() {
        let mut rng = XorShift(0x5eed);
        let mut ids: Vec<[u8; 16]> = (0..2000).map(|_| rng.bytes()).collect();
        ids.push([0u8; 16]);
        ids.push([0xff; 16]);
        for id in ids {
            let code = manual_code(&id);
            assert_eq!(code.len(), 17);
            assert_eq!(code.as_bytes()[4], b'-');
            assert_eq!(code.as_bytes()[9], b'-');
            assert_eq!(code.as_bytes()[14], b'-');
            assert!(code
                .bytes()
                .all(|c| c == b'-' || MANUAL_ALPHABET.contains(&c)));
            assert_eq!(
                parse_manual_code(code.as_bytes()),
                Ok(id[..8].try_into().unwrap())
            );
            let typed = code.to_lowercase().replace('-', " ");
            assert_eq!(
                parse_manual_code(typed.as_bytes()),
                Ok(id[..8].try_into().unwrap())
            );
            let bare = code.replace('-', "");
            assert_eq!(
                parse_manual_code(bare.as_bytes()),
                Ok(id[..8].try_into().unwrap())
            );
        }
    }

    #[test]
    fn the_alphabet_has_no_ambiguous_characters() {
        for c in b"0O1IL" {
            assert!(!MANUAL_ALPHABET.contains(c));
        }
        let mut sorted = MANUAL_ALPHABET.to_vec();
        sorted.dedup();
        assert_eq!(sorted.len(), 31);
        assert!(MANUAL_ALPHABET
            .iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()));
    }

    /// Proof over every code at once: the check is linear, so a change of `d` at position
    /// `i` moves the sum by `w_i * d` whatever the other symbols are. All positions and all
    /// nonzero differences, and all swaps of two different symbols, move it off zero.
    #[test]
    fn the_check_catches_every_single_substitution_and_every_swap_algebraically() {
        for i in 0..MANUAL_CODE_SYMBOLS {
            for d in 1..BASE {
                assert_ne!(weight(i) * d % BASE, 0, "position {i}, difference {d}");
            }
        }
        for i in 0..MANUAL_CODE_SYMBOLS {
            for j in i + 1..MANUAL_CODE_SYMBOLS {
                for a in 0..BASE {
                    for b in (0..BASE).filter(|&b| b != a) {
                        // Swapping a at i with b at j changes the sum by (w_i - w_j)(b - a).
                        let delta = (weight(i) + BASE - weight(j)) * (b + BASE - a);
                        assert_ne!(delta % BASE, 0, "swap {i} {j}");
                    }
                }
            }
        }
    }

    /// The same, by brute force on real codes: every substituted symbol at every position
    /// and every swap of two adjacent different symbols is refused as a bad check.
    #[test]
    fn every_mistyped_or_swapped_character_is_refused_exhaustively() {
        let mut rng = XorShift(42);
        for _ in 0..300 {
            let id: [u8; 16] = rng.bytes();
            let bare = manual_code(&id).replace('-', "").into_bytes();
            for at in 0..bare.len() {
                for &c in MANUAL_ALPHABET.iter().filter(|&&c| c != bare[at]) {
                    let mut typo = bare.clone();
                    typo[at] = c;
                    assert_eq!(
                        parse_manual_code(&typo),
                        Err(ManualCodeError::BadCheck),
                        "{} at {at}",
                        String::from_utf8_lossy(&typo)
                    );
                }
            }
            for at in 0..bare.len() - 1 {
                if bare[at] != bare[at + 1] {
                    let mut swapped = bare.clone();
                    swapped.swap(at, at + 1);
                    assert_eq!(parse_manual_code(&swapped), Err(ManualCodeError::BadCheck));
                }
            }
        }
    }

    #[test]
    fn manual_code_parsing_is_strict_beyond_case_and_separators() {
        let code = manual_code(b"0123456789abcdef");
        let bare = code.replace('-', "");
        let bad_inputs: Vec<String> = vec![
            String::new(),
            bare[..13].to_owned(),
            format!("{bare}2"),
            bare.replace(&bare[..1], "0"),
            format!("{}O{}", &bare[..3], &bare[4..]),
            format!("{}1{}", &bare[..3], &bare[4..]),
            format!("{}I{}", &bare[..3], &bare[4..]),
            format!("{}L{}", &bare[..3], &bare[4..]),
            format!("{}_{}", &bare[..4], &bare[4..]),
            format!("{}\t{}", &bare[..4], &bare[4..]),
            format!("{}.{}", &bare[..4], &bare[4..]),
            format!("{}\u{a0}{}", &bare[..4], &bare[4..]),
            format!("{}\u{ff21}{}", &bare[..3], &bare[4..]),
            format!("{bare}{}", " ".repeat(MAX_MANUAL_CODE_CHARS)),
        ];
        for bad in bad_inputs {
            assert_eq!(
                parse_manual_code(bad.as_bytes()),
                Err(ManualCodeError::Malformed),
                "{bad:?}"
            );
        }
        // Separators anywhere, any case, are fine.
        let spaced: String = bare.chars().flat_map(|c| [c, ' ']).collect();
        assert!(parse_manual_code(spaced.as_bytes()).is_ok());
        assert!(parse_manual_code(format!(" -{}- ", bare.to_lowercase()).as_bytes()).is_ok());
    }

    #[test]
    fn a_code_above_64_bits_with_a_good_check_is_malformed() {
        // The largest 13 data symbols, with the check character that fits them.
        let data = [BASE - 1; DATA_SYMBOLS];
        let check = check_value(&data);
        let text: Vec<u8> = data
            .iter()
            .chain(core::iter::once(&check))
            .map(|&v| MANUAL_ALPHABET[v as usize])
            .collect();
        assert_eq!(parse_manual_code(&text), Err(ManualCodeError::Malformed));
        // The largest 64-bit value still round-trips.
        assert_eq!(
            parse_manual_code(manual_code(&[0xff; 16]).as_bytes()),
            Ok([0xff; 8])
        );
    }

    // --- key agreement ---

    #[test]
    fn both_sides_derive_the_same_ocra_secret() {
        let server = x25519_keypair().unwrap();
        let app = x25519_keypair().unwrap();
        assert_ne!(server.public, app.public);
        assert_eq!(x25519_public(&server.private), server.public);
        let id = new_session_id().unwrap();
        let on_server = derive_ocra_secret(&server.private, &app.public, &id, "alice").unwrap();
        let on_app = derive_ocra_secret(&app.private, &server.public, &id, "alice").unwrap();
        assert_eq!(*on_server, *on_app);
        // Bound to the session and the username.
        let mut other_id = id;
        other_id[0] ^= 1;
        assert_ne!(
            *derive_ocra_secret(&app.private, &server.public, &other_id, "alice").unwrap(),
            *on_app
        );
        assert_ne!(
            *derive_ocra_secret(&app.private, &server.public, &id, "alice2").unwrap(),
            *on_app
        );
        assert!(format!("{server:?}").contains("redacted"));
    }

    /// RFC 7748 section 6.1's Alice and Bob, then HKDF computed step by step with HMAC.
    #[test]
    fn derivation_matches_rfc7748_and_rfc5869_by_hand() {
        let alice_private: [u8; 32] =
            hex::decode("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
                .unwrap()
                .try_into()
                .unwrap();
        let bob_public: [u8; 32] =
            hex::decode("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
                .unwrap()
                .try_into()
                .unwrap();
        assert_eq!(
            hex::encode(x25519_public(&alice_private)),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
        let shared =
            hex::decode("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
                .unwrap();
        let id = *b"session-id-16byt";
        // RFC 5869: PRK = HMAC(salt, IKM); OKM = T(1) = HMAC(PRK, info || 0x01).
        use hmac::{KeyInit, Mac};
        let mut extract = hmac::Hmac::<Sha256>::new_from_slice(&id).unwrap();
        extract.update(&shared);
        let prk = extract.finalize().into_bytes();
        let mut expand = hmac::Hmac::<Sha256>::new_from_slice(&prk).unwrap();
        expand.update(b"sls-ibkey-ocra-v1alice");
        expand.update(&[1]);
        let okm = expand.finalize().into_bytes();
        let derived = derive_ocra_secret(&alice_private, &bob_public, &id, "alice").unwrap();
        assert_eq!(derived.as_slice(), okm.as_slice());
    }

    #[test]
    fn a_low_order_peer_key_or_bad_username_is_refused() {
        let own = x25519_keypair().unwrap();
        let id = [1u8; 16];
        // Small-order Montgomery u-coordinates: 0, 1, and a point of order 8 (RFC 7748 sec 7
        // and the curve25519 "twist" lists); each makes the shared secret all zeros.
        let order8 =
            hex::decode("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")
                .unwrap();
        let mut p_minus_1 = [0xffu8; 32];
        p_minus_1[0] = 0xec;
        p_minus_1[31] = 0x7f;
        for low in [
            [0u8; 32],
            {
                let mut one = [0u8; 32];
                one[0] = 1;
                one
            },
            order8.try_into().unwrap(),
            p_minus_1,
        ] {
            let err = derive_ocra_secret(&own.private, &low, &id, "alice").unwrap_err();
            assert_eq!(err.field(), "peer_public");
        }
        let peer = x25519_keypair().unwrap();
        let err = derive_ocra_secret(&own.private, &peer.public, &id, "Alice").unwrap_err();
        assert_eq!(err.field(), "username");
    }
}
