//! Code cards: a grid of index numbers, each with a 3-digit code, derived from a per-card
//! secret so the server stores the secret, not the grid.
//!
//! `code(i) = DT(HMAC-SHA256(secret, "sls-card" || i as u32 big-endian)) mod 1000`, the
//! RFC 4226 dynamic truncation reduced to three digits. At login the user is shown two
//! index numbers and types both codes concatenated, no space: six ASCII digits.

use rayon::prelude::*;
use subtle::ConstantTimeEq;

use crate::code::{dynamic_truncation, CodeFormat};
use crate::error::Error;
use crate::mac::{HashAlgorithm, HmacKey};
use crate::types::{ByteColumn, Execution, Outcome};

/// Domain separation: a card secret MACs nothing but card cells.
const LABEL: &[u8] = b"sls-card";
/// The most index numbers a card can have.
pub const MAX_INDEX: u32 = 9_999;
/// Digits the user types: two 3-digit codes.
pub const RESPONSE_DIGITS: u8 = 6;

/// A card's secret, prepared for HMAC-SHA256. Wiped on drop (the HMAC key is).
#[derive(Debug, Clone)]
pub struct CardKey(HmacKey);

impl CardKey {
    pub fn new(secret: &[u8]) -> Result<Self, Error> {
        if secret.len() < 16 {
            return Err(Error::input("card_secret", "must be at least 16 bytes"));
        }
        Ok(CardKey(HmacKey::new(HashAlgorithm::Sha256, secret)?))
    }

    fn cell(&self, index: u32) -> u16 {
        let mac = self.0.mac(&[LABEL, &index.to_be_bytes()]);
        (dynamic_truncation(mac.as_bytes()) % 1000) as u16
    }

    /// The code printed next to `index` (1-based).
    pub fn code(&self, index: u32) -> Result<u16, Error> {
        check_index("index", index)?;
        Ok(self.cell(index))
    }

    /// The codes of index numbers `1..=count`, in order.
    pub fn codes(&self, count: u32) -> Result<Vec<u16>, Error> {
        if count == 0 || count > MAX_INDEX {
            return Err(Error::input(
                "count",
                format!("must be between 1 and {MAX_INDEX}"),
            ));
        }
        Ok((1..=count).map(|i| self.cell(i)).collect())
    }

    /// Checks the two codes typed for index numbers `first` and `second`, in constant time.
    /// A response that is not exactly six ASCII digits is malformed.
    pub fn verify(&self, first: u32, second: u32, response: &[u8]) -> Outcome {
        if check_index("first", first).is_err() || check_index("second", second).is_err() {
            return Outcome::Malformed;
        }
        let Some(typed) = CodeFormat::new(RESPONSE_DIGITS).parse(response) else {
            return Outcome::Malformed;
        };
        let expected = u64::from(self.cell(first)) * 1000 + u64::from(self.cell(second));
        Outcome::from_match(typed.ct_eq(&expected))
    }
}

fn check_index(field: &'static str, index: u32) -> Result<(), Error> {
    if index == 0 || index > MAX_INDEX {
        return Err(Error::input(
            field,
            format!("index numbers run from 1 to {MAX_INDEX}"),
        ));
    }
    Ok(())
}

/// Packs two index numbers the way a challenge token carries them.
pub fn pack_indices(first: u32, second: u32) -> u32 {
    (first << 16) | (second & 0xffff)
}

/// Verifies a batch of card answers: per-item raw secrets, packed index pairs
/// ([`pack_indices`]) and responses. A bad secret or index makes that item malformed.
pub fn verify_batch(
    secrets: &ByteColumn<'_>,
    indices: &[u32],
    responses: &ByteColumn<'_>,
    outcomes: &mut [u8],
    execution: Execution,
) -> Result<(), Error> {
    let n = indices.len();
    for (field, len) in [
        ("secrets", secrets.len()),
        ("responses", responses.len()),
        ("outcomes", outcomes.len()),
    ] {
        if len != n {
            return Err(Error::input(
                field,
                format!("has {len} rows but the batch has {n}"),
            ));
        }
    }
    let fill = |(row, slot): (usize, &mut u8)| {
        let packed = indices[row];
        *slot = match CardKey::new(secrets.get(row)) {
            Ok(key) => key.verify(packed >> 16, packed & 0xffff, responses.get(row)),
            Err(_) => Outcome::Malformed,
        } as u8;
    };
    match execution {
        Execution::Sequential => outcomes.iter_mut().enumerate().for_each(fill),
        Execution::Parallel => outcomes
            .par_iter_mut()
            .enumerate()
            .with_min_len(1024)
            .for_each(fill),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> CardKey {
        CardKey::new(b"0123456789abcdef0123").unwrap()
    }

    #[test]
    fn codes_are_three_digits_and_stable() {
        let codes = key().codes(100).unwrap();
        assert_eq!(codes.len(), 100);
        assert!(codes.iter().all(|&c| c < 1000));
        assert_eq!(key().code(17).unwrap(), codes[16]);
        // Not all equal: the grid is not degenerate.
        assert!(codes.iter().any(|&c| c != codes[0]));
    }

    #[test]
    fn two_codes_concatenated_verify() {
        let k = key();
        let (a, b) = (k.code(3).unwrap(), k.code(58).unwrap());
        let right = format!("{a:03}{b:03}");
        assert_eq!(k.verify(3, 58, right.as_bytes()), Outcome::Ok);
        let swapped = format!("{b:03}{a:03}");
        if a != b {
            assert_eq!(k.verify(3, 58, swapped.as_bytes()), Outcome::Wrong);
        }
        let spaced = format!("{a:03} {b:03}");
        assert_eq!(k.verify(3, 58, spaced.as_bytes()), Outcome::Malformed);
        assert_eq!(k.verify(0, 58, right.as_bytes()), Outcome::Malformed);
    }

    #[test]
    fn short_secrets_and_bad_counts_are_errors() {
        assert!(CardKey::new(b"short").is_err());
        assert!(key().codes(0).is_err());
        assert!(key().codes(MAX_INDEX + 1).is_err());
        assert!(key().code(0).is_err());
    }

    #[test]
    fn batch_matches_single() {
        let k = key();
        let right = format!("{:03}{:03}", k.code(1).unwrap(), k.code(2).unwrap());
        let secret: &[u8] = b"0123456789abcdef0123";
        let secrets = ByteColumn::Rows(vec![secret, secret, b"short"]);
        let responses = ByteColumn::Rows(vec![right.as_bytes(), b"000000x", right.as_bytes()]);
        let packed = pack_indices(1, 2);
        let mut out = [9u8; 3];
        verify_batch(
            &secrets,
            &[packed, packed, packed],
            &responses,
            &mut out,
            Execution::Parallel,
        )
        .unwrap();
        assert_eq!(out, [0, 2, 2]);
    }
}
