//! HMAC keys (RFC 2104) over SHA-1/SHA-256/SHA-512, prepared once and reused.
//!
//! A prepared key holds the HMAC state after the inner and outer key pads were absorbed, so
//! each further MAC costs only the message's compressions. The states are key-equivalent
//! secrets: they are zeroized on drop and never printed.

use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::Error;

/// The hash function under an HMAC or a PIN hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashAlgorithm {
    Sha1,
    Sha256,
    Sha512,
}

impl HashAlgorithm {
    /// Parses `"sha1"`, `"sha256"`, `"sha512"` (any case, with or without a dash).
    pub fn from_name(name: &str) -> Result<Self, Error> {
        match name.to_ascii_lowercase().replace('-', "").as_str() {
            "sha1" => Ok(HashAlgorithm::Sha1),
            "sha256" => Ok(HashAlgorithm::Sha256),
            "sha512" => Ok(HashAlgorithm::Sha512),
            _ => Err(Error::input(
                "algorithm",
                "must be one of \"sha1\", \"sha256\", \"sha512\"",
            )),
        }
    }

    /// The lower-case name used by the Python API.
    pub fn name(self) -> &'static str {
        match self {
            HashAlgorithm::Sha1 => "sha1",
            HashAlgorithm::Sha256 => "sha256",
            HashAlgorithm::Sha512 => "sha512",
        }
    }

    /// Digest length in bytes.
    pub const fn output_len(self) -> usize {
        match self {
            HashAlgorithm::Sha1 => 20,
            HashAlgorithm::Sha256 => 32,
            HashAlgorithm::Sha512 => 64,
        }
    }

    /// Plain digest of `data` (used for OCRA's PIN hash, RFC 6287 section 5.1 "P").
    pub fn digest(self, data: &[u8]) -> DigestOutput {
        let mut out = DigestOutput::empty(self.output_len());
        match self {
            HashAlgorithm::Sha1 => out.bytes[..20].copy_from_slice(&Sha1::digest(data)),
            HashAlgorithm::Sha256 => out.bytes[..32].copy_from_slice(&Sha256::digest(data)),
            HashAlgorithm::Sha512 => out.bytes[..64].copy_from_slice(&Sha512::digest(data)),
        }
        out
    }
}

/// A digest or MAC value of up to 64 bytes, wiped when dropped.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct DigestOutput {
    bytes: [u8; 64],
    len: usize,
}

impl DigestOutput {
    fn empty(len: usize) -> Self {
        DigestOutput {
            bytes: [0; 64],
            len,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl core::fmt::Debug for DigestOutput {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "DigestOutput({} bytes, redacted)", self.len)
    }
}

/// An HMAC key with its pads already absorbed.
#[derive(Clone)]
pub enum HmacKey {
    Sha1(Hmac<Sha1>),
    Sha256(Hmac<Sha256>),
    Sha512(Hmac<Sha512>),
}

// The prepared states are as secret as the key. `Hmac` is made of hash cores and block
// buffers; with the `zeroize` features each of those wipes itself on drop. Fail the build
// if a dependency update ever drops that guarantee.
const _: () = {
    const fn wiped_on_drop<T: ZeroizeOnDrop>() {}
    wiped_on_drop::<sha1::block_api::Sha1Core>();
    wiped_on_drop::<sha2::block_api::Sha256VarCore>();
    wiped_on_drop::<sha2::block_api::Sha512VarCore>();
};

impl core::fmt::Debug for HmacKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "HmacKey({}, redacted)", self.algorithm().name())
    }
}

impl HmacKey {
    /// Prepares `key` for HMAC with `algorithm`. An empty key is refused.
    pub fn new(algorithm: HashAlgorithm, key: &[u8]) -> Result<Self, Error> {
        if key.is_empty() {
            return Err(Error::input("key", "must not be empty"));
        }
        // HMAC accepts any key length (RFC 2104 section 2), so these cannot fail.
        Ok(match algorithm {
            HashAlgorithm::Sha1 => HmacKey::Sha1(Hmac::new_from_slice(key).expect("any length")),
            HashAlgorithm::Sha256 => {
                HmacKey::Sha256(Hmac::new_from_slice(key).expect("any length"))
            }
            HashAlgorithm::Sha512 => {
                HmacKey::Sha512(Hmac::new_from_slice(key).expect("any length"))
            }
        })
    }

    pub fn algorithm(&self) -> HashAlgorithm {
        match self {
            HmacKey::Sha1(_) => HashAlgorithm::Sha1,
            HmacKey::Sha256(_) => HashAlgorithm::Sha256,
            HmacKey::Sha512(_) => HashAlgorithm::Sha512,
        }
    }

    /// HMAC of the concatenation of `parts`, leaving the prepared key untouched.
    #[inline]
    pub fn mac(&self, parts: &[&[u8]]) -> DigestOutput {
        fn run<M: Mac + Clone>(key: &M, parts: &[&[u8]], out: &mut DigestOutput) {
            let mut mac = key.clone();
            for part in parts {
                mac.update(part);
            }
            let tag = mac.finalize().into_bytes();
            out.bytes[..tag.len()].copy_from_slice(&tag);
        }
        let mut out = DigestOutput::empty(self.algorithm().output_len());
        match self {
            HmacKey::Sha1(key) => run(key, parts, &mut out),
            HmacKey::Sha256(key) => run(key, parts, &mut out),
            HmacKey::Sha512(key) => run(key, parts, &mut out),
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc2202_hmac_sha1_case_2() {
        let key = HmacKey::new(HashAlgorithm::Sha1, b"Jefe").unwrap();
        let tag = key.mac(&[b"what do ya want ", b"for nothing?"]);
        assert_eq!(
            hex::encode(tag.as_bytes()),
            "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"
        );
    }

    #[test]
    fn empty_key_is_refused_by_field_name() {
        let err = HmacKey::new(HashAlgorithm::Sha256, b"").unwrap_err();
        assert_eq!(err.to_string(), "key: must not be empty");
    }

    #[test]
    fn debug_never_shows_key_material() {
        let key = HmacKey::new(HashAlgorithm::Sha1, b"secret-key-bytes").unwrap();
        assert_eq!(format!("{key:?}"), "HmacKey(sha1, redacted)");
    }
}
