//! Signed challenge tokens: what the login gateway carries between "issue a challenge" and
//! "verify the answer".
//!
//! The server binds a challenge to its user, device, purpose and expiry, signs the lot with
//! HMAC-SHA256 under a server key, and hands it out as a URL-safe string. On the way back
//! it checks the signature instead of remembering what it issued, so any server process
//! holding the key can check any token. Single use is the store's job: each token carries
//! a unique `challenge_id` the store marks consumed.
//!
//! Wire layout (64 bytes, then unpadded base64url: 86 characters):
//! `version u8 | key_id u8 | purpose u8 | reserved u8 | challenge_id u64 | user_id u64 |
//! device_id u64 | issued_at u64 | expires_at u64 | challenge u32 | tag [u8; 16]`, integers
//! big-endian, `tag` = the first 16 bytes of HMAC-SHA256(key, the 48 bytes before it).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rayon::prelude::*;
use subtle::ConstantTimeEq;

use crate::error::Error;
use crate::mac::{HashAlgorithm, HmacKey};
use crate::types::{ByteColumn, Execution};

/// The only token version this kernel writes and reads.
pub const TOKEN_VERSION: u8 = 1;
const SIGNED_LEN: usize = 48;
const TAG_LEN: usize = 16;
/// Bytes in a decoded token.
pub const TOKEN_BYTES: usize = SIGNED_LEN + TAG_LEN;
/// Characters in an encoded token.
pub const TOKEN_CHARS: usize = 86;
/// Smallest server key: 128 bits.
pub const MIN_KEY_BYTES: usize = 16;

/// What a token says. Nothing in it is secret: the challenge is shown to the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChallengeClaims {
    /// What the answer unlocks (login, activation, ...), as the domain numbers it.
    pub purpose: u8,
    /// Unique per issued challenge; the store marks it consumed on first use.
    pub challenge_id: u64,
    pub user_id: u64,
    pub device_id: u64,
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds; the token is refused at and after this instant.
    pub expires_at: u64,
    /// The challenge value: a 6-digit number, or two card index numbers packed
    /// `first << 16 | second`.
    pub challenge: u32,
}

/// Why a token was refused; the numbers are the values of the batch status array.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TokenStatus {
    Valid = 0,
    /// Not base64url, wrong length, or reserved bits set.
    Malformed = 1,
    UnsupportedVersion = 2,
    /// Signed under a key id this server does not hold (retired, or never ours).
    UnknownKey = 3,
    /// The tag does not match: forged or altered.
    BadSignature = 4,
    Expired = 5,
    /// Issued later than now plus the allowed clock skew.
    NotYetValid = 6,
}

/// The server's token keys: several ids so keys can rotate, one active for signing.
#[derive(Clone)]
pub struct TokenKeys {
    keys: Vec<(u8, HmacKey)>,
    active: u8,
}

impl core::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let ids: Vec<u8> = self.keys.iter().map(|(id, _)| *id).collect();
        write!(
            f,
            "TokenKeys(ids={ids:?}, active={}, redacted)",
            self.active
        )
    }
}

impl TokenKeys {
    /// `keys` are (key id, secret) pairs; `active` must be one of the ids.
    pub fn new<'k>(
        keys: impl IntoIterator<Item = (u8, &'k [u8])>,
        active: u8,
    ) -> Result<Self, Error> {
        let mut prepared: Vec<(u8, HmacKey)> = Vec::new();
        for (id, secret) in keys {
            if secret.len() < MIN_KEY_BYTES {
                return Err(Error::input(
                    "token_keys",
                    format!("key id {id}: must be at least {MIN_KEY_BYTES} bytes"),
                ));
            }
            if prepared.iter().any(|(seen, _)| *seen == id) {
                return Err(Error::input(
                    "token_keys",
                    format!("key id {id}: appears twice"),
                ));
            }
            prepared.push((id, HmacKey::new(HashAlgorithm::Sha256, secret)?));
        }
        if !prepared.iter().any(|(id, _)| *id == active) {
            return Err(Error::input(
                "active_key_id",
                format!("{active} is not one of the token keys"),
            ));
        }
        Ok(TokenKeys {
            keys: prepared,
            active,
        })
    }

    pub fn active_key_id(&self) -> u8 {
        self.active
    }

    fn key(&self, id: u8) -> Option<&HmacKey> {
        self.keys.iter().find(|(k, _)| *k == id).map(|(_, key)| key)
    }

    fn tag(key: &HmacKey, signed: &[u8]) -> [u8; TAG_LEN] {
        let mac = key.mac(&[signed]);
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&mac.as_bytes()[..TAG_LEN]);
        tag
    }

    /// Signs `claims` under the active key.
    pub fn seal(&self, claims: &ChallengeClaims) -> Result<String, Error> {
        if claims.expires_at <= claims.issued_at {
            return Err(Error::input("expires_at", "must be after issued_at"));
        }
        let mut raw = [0u8; TOKEN_BYTES];
        raw[0] = TOKEN_VERSION;
        raw[1] = self.active;
        raw[2] = claims.purpose;
        raw[4..12].copy_from_slice(&claims.challenge_id.to_be_bytes());
        raw[12..20].copy_from_slice(&claims.user_id.to_be_bytes());
        raw[20..28].copy_from_slice(&claims.device_id.to_be_bytes());
        raw[28..36].copy_from_slice(&claims.issued_at.to_be_bytes());
        raw[36..44].copy_from_slice(&claims.expires_at.to_be_bytes());
        raw[44..48].copy_from_slice(&claims.challenge.to_be_bytes());
        let key = self
            .key(self.active)
            .expect("the active key is checked in new");
        let tag = Self::tag(key, &raw[..SIGNED_LEN]);
        raw[SIGNED_LEN..].copy_from_slice(&tag);
        Ok(URL_SAFE_NO_PAD.encode(raw))
    }

    /// Checks a token at time `now` (Unix seconds), allowing `skew` seconds of clock
    /// difference between the issuing and the checking server for `issued_at`.
    /// The signature is checked before any claim is trusted.
    pub fn open(&self, token: &[u8], now: u64, skew: u64) -> Result<ChallengeClaims, TokenStatus> {
        if token.len() != TOKEN_CHARS {
            return Err(TokenStatus::Malformed);
        }
        let mut raw = [0u8; TOKEN_BYTES];
        match URL_SAFE_NO_PAD.decode_slice(token, &mut raw) {
            Ok(TOKEN_BYTES) => {}
            _ => return Err(TokenStatus::Malformed),
        }
        // base64 of 64 bytes leaves 4 spare bits in the last character; the decoder
        // refuses non-zero ones, so every token has exactly one spelling.
        if raw[0] != TOKEN_VERSION {
            return Err(TokenStatus::UnsupportedVersion);
        }
        let key = self.key(raw[1]).ok_or(TokenStatus::UnknownKey)?;
        let tag = Self::tag(key, &raw[..SIGNED_LEN]);
        if !bool::from(tag.ct_eq(&raw[SIGNED_LEN..])) {
            return Err(TokenStatus::BadSignature);
        }
        if raw[3] != 0 {
            return Err(TokenStatus::Malformed);
        }
        let u64_at = |at: usize| u64::from_be_bytes(raw[at..at + 8].try_into().expect("8 bytes"));
        let claims = ChallengeClaims {
            purpose: raw[2],
            challenge_id: u64_at(4),
            user_id: u64_at(12),
            device_id: u64_at(20),
            issued_at: u64_at(28),
            expires_at: u64_at(36),
            challenge: u32::from_be_bytes(raw[44..48].try_into().expect("4 bytes")),
        };
        if now >= claims.expires_at {
            return Err(TokenStatus::Expired);
        }
        if claims.issued_at > now.saturating_add(skew) {
            return Err(TokenStatus::NotYetValid);
        }
        Ok(claims)
    }

    /// Opens every token of `tokens` into `status` and `claims` (default claims where the
    /// status is not [`TokenStatus::Valid`]).
    pub fn open_batch(
        &self,
        tokens: &ByteColumn<'_>,
        now: u64,
        skew: u64,
        status: &mut [u8],
        claims: &mut [ChallengeClaims],
        execution: Execution,
    ) -> Result<(), Error> {
        let n = tokens.len();
        if status.len() != n || claims.len() != n {
            return Err(Error::input(
                "tokens",
                "status and claims must have one row per token",
            ));
        }
        let fill = |(row, (slot, out)): (usize, (&mut u8, &mut ChallengeClaims))| match self.open(
            tokens.get(row),
            now,
            skew,
        ) {
            Ok(c) => {
                *slot = TokenStatus::Valid as u8;
                *out = c;
            }
            Err(why) => {
                *slot = why as u8;
                *out = ChallengeClaims::default();
            }
        };
        match execution {
            Execution::Sequential => status
                .iter_mut()
                .zip(claims.iter_mut())
                .enumerate()
                .for_each(fill),
            Execution::Parallel => status
                .par_iter_mut()
                .zip(claims.par_iter_mut())
                .enumerate()
                .with_min_len(1024)
                .for_each(fill),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> TokenKeys {
        TokenKeys::new([(1, &[7u8; 32][..]), (2, &[9u8; 32][..])], 2).unwrap()
    }

    fn claims() -> ChallengeClaims {
        ChallengeClaims {
            purpose: 1,
            challenge_id: 42,
            user_id: 7,
            device_id: 9,
            issued_at: 1_000,
            expires_at: 1_300,
            challenge: 123_456,
        }
    }

    #[test]
    fn a_sealed_token_opens_to_its_claims() {
        let token = keys().seal(&claims()).unwrap();
        assert_eq!(token.len(), TOKEN_CHARS);
        assert_eq!(keys().open(token.as_bytes(), 1_100, 0), Ok(claims()));
    }

    #[test]
    fn expiry_is_exclusive_and_issue_time_allows_skew() {
        let token = keys().seal(&claims()).unwrap();
        assert_eq!(
            keys().open(token.as_bytes(), 1_300, 0),
            Err(TokenStatus::Expired)
        );
        assert!(keys().open(token.as_bytes(), 1_299, 0).is_ok());
        assert_eq!(
            keys().open(token.as_bytes(), 990, 5),
            Err(TokenStatus::NotYetValid)
        );
        assert!(keys().open(token.as_bytes(), 995, 5).is_ok());
    }

    #[test]
    fn every_changed_character_is_refused() {
        let token = keys().seal(&claims()).unwrap().into_bytes();
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        for at in 0..token.len() {
            for &c in alphabet.iter().filter(|&&c| c != token[at]) {
                let mut bad = token.clone();
                bad[at] = c;
                assert!(keys().open(&bad, 1_100, 0).is_err(), "position {at}");
            }
        }
    }

    #[test]
    fn truncated_extended_and_foreign_tokens_are_refused() {
        let token = keys().seal(&claims()).unwrap();
        for cut in 0..token.len() {
            assert_eq!(
                keys().open(&token.as_bytes()[..cut], 1_100, 0),
                Err(TokenStatus::Malformed)
            );
        }
        let longer = format!("{token}A");
        assert_eq!(
            keys().open(longer.as_bytes(), 1_100, 0),
            Err(TokenStatus::Malformed)
        );
        let other = TokenKeys::new([(2, &[8u8; 32][..])], 2).unwrap();
        assert_eq!(
            other.open(token.as_bytes(), 1_100, 0),
            Err(TokenStatus::BadSignature)
        );
        let retired = TokenKeys::new([(1, &[7u8; 32][..])], 1).unwrap();
        assert_eq!(
            retired.open(token.as_bytes(), 1_100, 0),
            Err(TokenStatus::UnknownKey)
        );
    }

    #[test]
    fn rotation_keeps_old_tokens_valid() {
        let old = TokenKeys::new([(1, &[7u8; 32][..])], 1).unwrap();
        let token = old.seal(&claims()).unwrap();
        assert_eq!(keys().open(token.as_bytes(), 1_100, 0), Ok(claims()));
    }

    #[test]
    fn short_duplicate_or_absent_keys_are_errors() {
        assert!(TokenKeys::new([(1, &[7u8; 15][..])], 1).is_err());
        assert!(TokenKeys::new([(1, &[7u8; 16][..]), (1, &[8u8; 16][..])], 1).is_err());
        assert!(TokenKeys::new([(1, &[7u8; 16][..])], 2).is_err());
        let mut c = claims();
        c.expires_at = c.issued_at;
        assert!(keys().seal(&c).is_err());
    }

    #[test]
    fn batch_open_matches_single_open() {
        let k = keys();
        let good = k.seal(&claims()).unwrap();
        let rows: Vec<&[u8]> = vec![good.as_bytes(), b"nope", good.as_bytes()];
        let column = ByteColumn::Rows(rows);
        let mut status = [9u8; 3];
        let mut out = [ChallengeClaims::default(); 3];
        k.open_batch(
            &column,
            1_100,
            0,
            &mut status,
            &mut out,
            Execution::Parallel,
        )
        .unwrap();
        assert_eq!(status, [0, TokenStatus::Malformed as u8, 0]);
        assert_eq!(out[0], claims());
        assert_eq!(out[1], ChallengeClaims::default());
    }
}
