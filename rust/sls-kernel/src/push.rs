//! Push approvals: the IB Key app signs "approve" or "decline" for one login challenge with
//! its Ed25519 key, and the server checks the signature, one at a time or in batches.
//!
//! The signed message ([`approval_message`]) names the challenge, the user, the device, the
//! expiry and the decision behind a domain-separation prefix, so an approval verifies for
//! nothing else. Single checks are strict Ed25519 (`verify_strict`: canonical `s` and `R`,
//! no small-order `R` or key). Batches use ed25519-dalek's batch equation on chunks and
//! fall back to strict single checks inside a chunk that fails, so every item gets its own
//! verdict and a bad item never fails its neighbours. Before batching, every item goes
//! through the cheap checks strict verification adds (encodings, small order), so batch
//! verdicts equal single ones except for one case only a key's holder can build: an `R` or
//! a key with a mixed-order (torsion) component, which the batch equation may accept and
//! the strict check refuses; that holder could sign a valid approval anyway. Nothing here
//! logs, and no error carries a seed.

use curve25519_dalek::edwards::CompressedEdwardsY;
use curve25519_dalek::Scalar;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use rayon::prelude::*;
use zeroize::Zeroizing;

use crate::activation::{random_secret, RandomSourceError};
use crate::error::Error;
use crate::types::{ByteColumn, Execution, Outcome};

/// Signed before the fields, so an approval signature means nothing elsewhere.
pub const APPROVAL_DOMAIN: &[u8] = b"sls-push-approval-v1\0";
/// Bytes of an approval message: the prefix, four u64 and the decision.
pub const APPROVAL_MESSAGE_BYTES: usize = APPROVAL_DOMAIN.len() + 4 * 8 + 1;
pub const PUBLIC_KEY_BYTES: usize = 32;
pub const SIGNATURE_BYTES: usize = 64;
/// Items per batch equation. Small, so a chunk holding a bad item costs few extra single
/// checks; ed25519-dalek's batch gains little past a few dozen items.
const CHUNK: usize = 16;

/// What the user answered on the phone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Decision {
    Approve = 1,
    Decline = 2,
}

impl TryFrom<u8> for Decision {
    type Error = Error;
    fn try_from(value: u8) -> Result<Self, Error> {
        match value {
            1 => Ok(Decision::Approve),
            2 => Ok(Decision::Decline),
            _ => Err(Error::input(
                "decision",
                "must be 1 (approve) or 2 (decline)",
            )),
        }
    }
}

/// The bytes an approval signs: `"sls-push-approval-v1\0" | challenge_id u64 | user_id u64 |
/// device_id u64 | expires_at u64 | decision u8`, integers big-endian.
pub fn approval_message(
    challenge_id: u64,
    user_id: u64,
    device_id: u64,
    expires_at: u64,
    decision: Decision,
) -> [u8; APPROVAL_MESSAGE_BYTES] {
    let mut message = [0u8; APPROVAL_MESSAGE_BYTES];
    let (prefix, rest) = message.split_at_mut(APPROVAL_DOMAIN.len());
    prefix.copy_from_slice(APPROVAL_DOMAIN);
    for (slot, value) in
        rest.chunks_exact_mut(8)
            .zip([challenge_id, user_id, device_id, expires_at])
    {
        slot.copy_from_slice(&value.to_be_bytes());
    }
    message[APPROVAL_MESSAGE_BYTES - 1] = decision as u8;
    message
}

/// An app's push key pair: the Ed25519 seed (wiped when dropped) and its public key.
#[derive(Clone)]
pub struct PushKeypair {
    pub seed: Zeroizing<[u8; 32]>,
    pub public: [u8; PUBLIC_KEY_BYTES],
}

impl core::fmt::Debug for PushKeypair {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "PushKeypair(public={:02x?}, seed=redacted)", self.public)
    }
}

/// A fresh Ed25519 push key pair from the operating system's random source.
pub fn push_keypair() -> Result<PushKeypair, RandomSourceError> {
    let seed = random_secret()?;
    let public = push_public_key(&seed);
    Ok(PushKeypair { seed, public })
}

/// The Ed25519 public key of `seed`.
pub fn push_public_key(seed: &[u8; 32]) -> [u8; PUBLIC_KEY_BYTES] {
    SigningKey::from_bytes(seed).verifying_key().to_bytes()
}

/// Signs `message` (normally an [`approval_message`]) with the app's seed.
pub fn sign_approval(seed: &[u8; 32], message: &[u8]) -> [u8; SIGNATURE_BYTES] {
    // SigningKey wipes its copy of the seed when dropped.
    SigningKey::from_bytes(seed).sign(message).to_bytes()
}

/// An item that passed the encoding checks, ready for the batch equation.
// Boxing the candidate would allocate once per item in the hot loop.
#[allow(clippy::large_enum_variant)]
enum Checked {
    Verdict(Outcome),
    Candidate(VerifyingKey, Signature),
}

/// The checks strict verification makes besides its equation, without the equation.
/// Malformed: a key or signature of the wrong length, a key that is not a curve point or has
/// small order, an `s` that is not a canonical scalar, an `R` that is not a curve point.
/// Wrong: an `R` that is of small order or not canonically encoded (strict verification
/// compares encodings, so it refuses those whatever the equation says).
fn check_encodings(public: &[u8], signature: &[u8]) -> Checked {
    let malformed = Checked::Verdict(Outcome::Malformed);
    let Ok(public) = <&[u8; PUBLIC_KEY_BYTES]>::try_from(public) else {
        return malformed;
    };
    let Ok(signature) = <&[u8; SIGNATURE_BYTES]>::try_from(signature) else {
        return malformed;
    };
    let Some(key) = VerifyingKey::from_bytes(public)
        .ok()
        .filter(|key| !key.is_weak())
    else {
        return malformed;
    };
    let signature = Signature::from_bytes(signature);
    if Option::<Scalar>::from(Scalar::from_canonical_bytes(*signature.s_bytes())).is_none() {
        return malformed;
    }
    let r = signature.r_bytes();
    let Some(r_point) = CompressedEdwardsY(*r).decompress() else {
        return malformed;
    };
    if r_point.is_small_order() || !is_canonical_point_encoding(r) {
        return Checked::Verdict(Outcome::Wrong);
    }
    Checked::Candidate(key, signature)
}

/// A compressed Edwards point is canonically encoded when its y coordinate (the low 255
/// bits) is below p = 2^255 - 19. (x = 0 with the sign bit set is the other non-canonical
/// form; both such points have small order and are refused as such.)
fn is_canonical_point_encoding(bytes: &[u8; 32]) -> bool {
    let top_is_max = bytes[31] & 0x7f == 0x7f && bytes[1..31].iter().all(|&b| b == 0xff);
    !(top_is_max && bytes[0] >= 0xed)
}

/// The verdict on one approval: OK, WRONG (a well-formed signature that does not verify:
/// another message, another key, forged) or MALFORMED (see [`verify_approvals_batch`]).
pub fn check_approval(public: &[u8], message: &[u8], signature: &[u8]) -> Outcome {
    match check_encodings(public, signature) {
        Checked::Verdict(outcome) => outcome,
        Checked::Candidate(key, signature) => strict(&key, message, &signature),
    }
}

fn strict(key: &VerifyingKey, message: &[u8], signature: &Signature) -> Outcome {
    if key.verify_strict(message, signature).is_ok() {
        Outcome::Ok
    } else {
        Outcome::Wrong
    }
}

/// True when `signature` is `public`'s strict Ed25519 signature of `message`.
pub fn verify_approval(public: &[u8], message: &[u8], signature: &[u8]) -> bool {
    // Same verdict as `check_approval(..) == Outcome::Ok` (strict verification refuses
    // everything `check_encodings` does), without decoding R twice.
    let (Ok(public), Ok(signature)) = (
        <&[u8; PUBLIC_KEY_BYTES]>::try_from(public),
        <&[u8; SIGNATURE_BYTES]>::try_from(signature),
    ) else {
        return false;
    };
    VerifyingKey::from_bytes(public).is_ok_and(|key| {
        key.verify_strict(message, &Signature::from_bytes(signature))
            .is_ok()
    })
}

/// Verifies item `i` = (`publics[i]`, `messages[i]`, `signatures[i]`) into `outcomes[i]`
/// (0 OK, 1 WRONG, 2 MALFORMED: a key or signature of the wrong length or encoding, a
/// small-order key). Columns of different lengths are an error before any work.
pub fn verify_approvals_batch(
    publics: &ByteColumn<'_>,
    messages: &ByteColumn<'_>,
    signatures: &ByteColumn<'_>,
    outcomes: &mut [u8],
    execution: Execution,
) -> Result<(), Error> {
    let n = outcomes.len();
    if publics.len() != n || messages.len() != n || signatures.len() != n {
        return Err(Error::input(
            "approvals",
            "publics, messages, signatures and outcomes must have one row per approval",
        ));
    }
    let chunk = |(index, out): (usize, &mut [u8])| {
        let first = index * CHUNK;
        verify_chunk(publics, messages, signatures, first, out);
    };
    match execution {
        Execution::Sequential => outcomes.chunks_mut(CHUNK).enumerate().for_each(chunk),
        Execution::Parallel => outcomes.par_chunks_mut(CHUNK).enumerate().for_each(chunk),
    }
    Ok(())
}

fn verify_chunk(
    publics: &ByteColumn<'_>,
    messages: &ByteColumn<'_>,
    signatures: &ByteColumn<'_>,
    first: usize,
    out: &mut [u8],
) {
    let mut rows = Vec::with_capacity(out.len());
    let mut keys = Vec::with_capacity(out.len());
    let mut sigs = Vec::with_capacity(out.len());
    let mut msgs: Vec<&[u8]> = Vec::with_capacity(out.len());
    for (offset, slot) in out.iter_mut().enumerate() {
        let row = first + offset;
        match check_encodings(publics.get(row), signatures.get(row)) {
            Checked::Verdict(outcome) => *slot = outcome as u8,
            Checked::Candidate(key, signature) => {
                rows.push(offset);
                keys.push(key);
                sigs.push(signature);
                msgs.push(messages.get(row));
            }
        }
    }
    let all_good = match rows.len() {
        0 => return,
        1 => false, // one item: the strict check below is the cheaper one
        _ => ed25519_dalek::verify_batch(&msgs, &sigs, &keys).is_ok(),
    };
    for (i, &offset) in rows.iter().enumerate() {
        out[offset] = if all_good {
            Outcome::Ok
        } else {
            strict(&keys[i], msgs[i], &sigs[i])
        } as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(i: u32) -> [u8; 32] {
        let mut s = [0x5au8; 32];
        s[..4].copy_from_slice(&i.to_le_bytes());
        s
    }

    fn message(i: u64) -> [u8; APPROVAL_MESSAGE_BYTES] {
        approval_message(1000 + i, 7, 9, 1_700_000_300, Decision::Approve)
    }

    #[test]
    fn a_signed_approval_verifies_only_for_its_own_message_and_key() {
        let pair = push_keypair().unwrap();
        assert_eq!(push_public_key(&pair.seed), pair.public);
        let m = approval_message(1, 2, 3, 4, Decision::Approve);
        let sig = sign_approval(&pair.seed, &m);
        assert!(verify_approval(&pair.public, &m, &sig));
        for other in [
            approval_message(2, 2, 3, 4, Decision::Approve),
            approval_message(1, 3, 3, 4, Decision::Approve),
            approval_message(1, 2, 4, 4, Decision::Approve),
            approval_message(1, 2, 3, 5, Decision::Approve),
            approval_message(1, 2, 3, 4, Decision::Decline),
        ] {
            assert_eq!(check_approval(&pair.public, &other, &sig), Outcome::Wrong);
        }
        let stranger = push_keypair().unwrap();
        assert_eq!(check_approval(&stranger.public, &m, &sig), Outcome::Wrong);
        assert!(format!("{pair:?}").contains("seed=redacted"));
    }

    #[test]
    fn approval_message_layout() {
        let m = approval_message(0x0102, 3, 4, 5, Decision::Decline);
        assert_eq!(m.len(), APPROVAL_MESSAGE_BYTES);
        assert_eq!(&m[..APPROVAL_DOMAIN.len()], APPROVAL_DOMAIN);
        let at = APPROVAL_DOMAIN.len();
        assert_eq!(&m[at..at + 8], &0x0102u64.to_be_bytes());
        assert_eq!(&m[at + 24..at + 32], &5u64.to_be_bytes());
        assert_eq!(m[APPROVAL_MESSAGE_BYTES - 1], 2);
        assert_eq!(Decision::try_from(1).unwrap(), Decision::Approve);
        assert!(Decision::try_from(0).is_err());
        assert!(Decision::try_from(3).is_err());
    }

    #[test]
    fn rfc8032_test_1_verifies_and_every_bit_flip_does_not() {
        // RFC 8032 section 7.1, TEST 1 (empty message).
        let seed: [u8; 32] =
            hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
                .unwrap()
                .try_into()
                .unwrap();
        let public =
            hex::decode("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
                .unwrap();
        let sig = hex::decode(
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155\
             5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
        )
        .unwrap();
        assert_eq!(push_public_key(&seed).to_vec(), public);
        assert_eq!(sign_approval(&seed, b"").to_vec(), sig);
        assert!(verify_approval(&public, b"", &sig));
        for at in 0..64 {
            for bit in 0..8 {
                let mut bad = sig.clone();
                bad[at] ^= 1 << bit;
                assert_ne!(check_approval(&public, b"", &bad), Outcome::Ok);
            }
        }
    }

    #[test]
    fn bad_lengths_and_encodings_are_malformed() {
        let pair = push_keypair().unwrap();
        let m = message(0);
        let sig = sign_approval(&pair.seed, &m);
        assert_eq!(
            check_approval(&pair.public[..31], &m, &sig),
            Outcome::Malformed
        );
        assert_eq!(
            check_approval(&pair.public, &m, &sig[..63]),
            Outcome::Malformed
        );
        assert_eq!(check_approval(&pair.public, &m, &[]), Outcome::Malformed);
        let mut long = sig.to_vec();
        long.push(0);
        assert_eq!(check_approval(&pair.public, &m, &long), Outcome::Malformed);
        // s = s + l: the same signature with a non-canonical scalar (malleability).
        let l: [u8; 32] =
            hex::decode("edd3f55c1a631258d69cf7a2def9de1400000000000000000000000000000010")
                .unwrap()
                .try_into()
                .unwrap();
        let mut s_plus_l = sig;
        let mut carry = 0u16;
        for i in 0..32 {
            let sum = u16::from(sig[32 + i]) + u16::from(l[i]) + carry;
            s_plus_l[32 + i] = sum as u8;
            carry = sum >> 8;
        }
        assert_eq!(
            check_approval(&pair.public, &m, &s_plus_l),
            Outcome::Malformed
        );
        // The identity as a public key (small order): malformed, whatever is signed.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(check_approval(&identity, &m, &sig), Outcome::Malformed);
    }

    /// A signature whose R is the identity (small order) under a key whose scalar is 0 mod l
    /// would satisfy the cofactorless equation for any message if R and A were not checked.
    #[test]
    fn small_order_and_non_canonical_r_are_refused_in_single_and_batch() {
        let pair = push_keypair().unwrap();
        let m = message(0);
        let good = sign_approval(&pair.seed, &m);
        let mut identity_r = good;
        identity_r[..32].copy_from_slice(&{
            let mut id = [0u8; 32];
            id[0] = 1;
            id
        });
        // y = p + 1 encodes the identity non-canonically.
        let mut non_canonical_r = good;
        non_canonical_r[..32].copy_from_slice(&{
            let mut y = [0xffu8; 32];
            y[0] = 0xee;
            y[31] = 0x7f;
            y
        });
        for bad in [identity_r, non_canonical_r] {
            assert_eq!(check_approval(&pair.public, &m, &bad), Outcome::Wrong);
        }
        assert!(!is_canonical_point_encoding(
            &non_canonical_r[..32].try_into().unwrap()
        ));
        let publics = vec![&pair.public[..]; 3];
        let messages = vec![&m[..]; 3];
        let sigs = vec![&good[..], &identity_r[..], &non_canonical_r[..]];
        let mut out = [9u8; 3];
        verify_approvals_batch(
            &ByteColumn::Rows(publics),
            &ByteColumn::Rows(messages),
            &ByteColumn::Rows(sigs),
            &mut out,
            Execution::Sequential,
        )
        .unwrap();
        assert_eq!(out, [0, 1, 1]);
    }

    /// The classic forgery: identity key, identity R, s = 0 satisfies the plain
    /// (cofactorless) equation for every message. Refused everywhere.
    fn rows(v: &[u8]) -> ByteColumn<'_> {
        ByteColumn::Rows(vec![v; 20])
    }

    #[test]
    fn the_identity_key_forgery_is_refused_everywhere() {
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let mut forged = [0u8; 64];
        forged[0] = 1;
        for m in [&b""[..], &message(1)[..]] {
            assert!(!verify_approval(&identity, m, &forged));
            assert_eq!(check_approval(&identity, m, &forged), Outcome::Malformed);
        }
        let m = message(1);
        let mut out = [9u8; 20];
        verify_approvals_batch(
            &rows(&identity),
            &rows(&m),
            &rows(&forged),
            &mut out,
            Execution::Sequential,
        )
        .unwrap();
        assert_eq!(out, [Outcome::Malformed as u8; 20]);
    }

    /// `verify_approval` skips the separate encoding checks; its verdict must still be
    /// exactly `check_approval(..) == Ok` on every odd input.
    #[test]
    fn the_boolean_check_agrees_with_the_outcome_check() {
        let pair = push_keypair().unwrap();
        let m = message(3);
        let good = sign_approval(&pair.seed, &m);
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let mut cases: Vec<([u8; 32], Vec<u8>)> = vec![
            (pair.public, good.to_vec()),
            (identity, good.to_vec()),
            (pair.public, good[..63].to_vec()),
            (pair.public, [&identity[..], &good[32..]].concat()),
            (pair.public, [&good[..32], &[0xff; 32][..]].concat()),
        ];
        for at in (0..64).step_by(3) {
            let mut bad = good.to_vec();
            bad[at] ^= 0x41;
            cases.push((pair.public, bad));
        }
        for (public, sig) in cases {
            assert_eq!(
                verify_approval(&public, &m, &sig),
                check_approval(&public, &m, &sig) == Outcome::Ok
            );
        }
    }

    #[test]
    fn canonical_point_encoding_check() {
        let mut p = [0xffu8; 32];
        p[31] = 0x7f;
        p[0] = 0xed; // y = p
        assert!(!is_canonical_point_encoding(&p));
        p[0] = 0xec; // y = p - 1
        assert!(is_canonical_point_encoding(&p));
        p[31] = 0xff; // the sign bit is not part of y
        p[0] = 0xed;
        assert!(!is_canonical_point_encoding(&p));
        p[30] = 0xfe;
        assert!(is_canonical_point_encoding(&p));
        assert!(is_canonical_point_encoding(&[0u8; 32]));
    }

    /// Every item gets its own verdict, equal to the single check, whatever its neighbours:
    /// good items beside wrong ones, malformed ones, and chunks that are all good.
    #[test]
    fn batch_verdicts_equal_single_verdicts_item_by_item() {
        let n = 200;
        let seeds: Vec<[u8; 32]> = (0..n as u32).map(seed).collect();
        let publics: Vec<[u8; 32]> = seeds.iter().map(push_public_key).collect();
        let messages: Vec<[u8; APPROVAL_MESSAGE_BYTES]> = (0..n as u64).map(message).collect();
        let mut sigs: Vec<Vec<u8>> = seeds
            .iter()
            .zip(&messages)
            .map(|(s, m)| sign_approval(s, m).to_vec())
            .collect();
        let mut keys: Vec<Vec<u8>> = publics.iter().map(|p| p.to_vec()).collect();
        // Rows 0-15 (the first chunk) all good; then a mix.
        sigs[20][33] ^= 1; // wrong: s changed, still canonical
        sigs[22][5] ^= 1; // R changed: malformed or wrong, as the single check says
        sigs[21] = sign_approval(&seeds[0], &messages[21]).to_vec(); // another key's signature
        sigs[40].truncate(10); // malformed length
        keys[41].pop(); // malformed key
        sigs[60][63] |= 0xf0; // s not canonical: malformed
        keys[80] = publics[81].to_vec(); // wrong key
        for sig in &mut sigs[100..116] {
            sig[40] ^= 0x10; // a whole chunk wrong
        }
        sigs[199][0] ^= 2; // last item, a short last chunk
        let column = |rows: &[Vec<u8>]| -> Vec<Vec<u8>> { rows.to_vec() };
        let (keys, sigs) = (column(&keys), column(&sigs));
        let key_rows: Vec<&[u8]> = keys.iter().map(|k| &k[..]).collect();
        let msg_rows: Vec<&[u8]> = messages.iter().map(|m| &m[..]).collect();
        let sig_rows: Vec<&[u8]> = sigs.iter().map(|s| &s[..]).collect();
        for execution in [Execution::Sequential, Execution::Parallel] {
            let mut out = vec![9u8; n];
            verify_approvals_batch(
                &ByteColumn::Rows(key_rows.clone()),
                &ByteColumn::Rows(msg_rows.clone()),
                &ByteColumn::Rows(sig_rows.clone()),
                &mut out,
                execution,
            )
            .unwrap();
            for row in 0..n {
                let single = check_approval(key_rows[row], msg_rows[row], sig_rows[row]);
                assert_eq!(out[row], single as u8, "row {row}");
            }
            let ok = out.iter().filter(|&&o| o == 0).count();
            assert_eq!(ok, n - 7 - 16 - 1);
            assert_eq!(out[40], Outcome::Malformed as u8);
            assert_eq!(out[41], Outcome::Malformed as u8);
            assert_eq!(out[60], Outcome::Malformed as u8);
            assert_eq!(out[20], Outcome::Wrong as u8);
            assert_eq!(out[80], Outcome::Wrong as u8);
        }
    }

    #[test]
    fn batch_columns_of_different_lengths_are_an_error() {
        let rows: Vec<&[u8]> = vec![b"x"; 2];
        let mut out = [0u8; 3];
        assert!(verify_approvals_batch(
            &ByteColumn::Rows(rows.clone()),
            &ByteColumn::Rows(rows.clone()),
            &ByteColumn::Rows(rows),
            &mut out,
            Execution::Sequential,
        )
        .is_err());
        let mut none: [u8; 0] = [];
        let empty = ByteColumn::Rows(vec![]);
        verify_approvals_batch(&empty, &empty, &empty, &mut none, Execution::Parallel).unwrap();
    }
}
