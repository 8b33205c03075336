//! What each fuzz target checks, shared by the libFuzzer binaries (`fuzz_targets/`) and the
//! `cargo test` smoke run (`tests/smoke.rs`). A panic is a finding: every `assert!` below
//! is a property the parser must keep for any input, not only "does not crash".
#![forbid(unsafe_code)]

use std::sync::OnceLock;

use data_encoding::BASE32_NOPAD;
use sls_kernel::activation::{
    manual_code as make_manual_code, parse_manual_code, ActivationFields, ActivationSigner,
    ActivationVerifier, ManualCodeError, MANUAL_ALPHABET,
};
use sls_kernel::{HmacKey, OcraInput, OcraSuite, Outcome};

/// The clock every payload is checked at.
pub const NOW: u64 = 1_800_000_100;
const SEED_1: [u8; 32] = [7; 32];
const SEED_2: [u8; 32] = [9; 32];

struct Keys {
    /// One signer per key id, so an accepted payload can be re-signed under its own key.
    signers: [(u8, ActivationSigner); 2],
    verifier: ActivationVerifier,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let pairs = [(1, &SEED_1), (2, &SEED_2)];
        let signer = |active| ActivationSigner::new(pairs, active).expect("fixed keys");
        let publics = signer(1).public_keys();
        Keys {
            signers: [(1, signer(1)), (2, signer(2))],
            verifier: ActivationVerifier::new(publics.iter().map(|(id, k)| (*id, k)), 30)
                .expect("fixed keys"),
        }
    })
}

fn check_payload_text(text: &[u8]) {
    let k = keys();
    if let Ok(payload) = k.verifier.verify(text, NOW) {
        // An accepted payload is exactly what the signer writes for its fields: Ed25519 is
        // deterministic and the encoding has one spelling, so nothing else may verify.
        let (_, signer) = k
            .signers
            .iter()
            .find(|(id, _)| *id == payload.key_id)
            .expect("the verifier holds only these ids");
        let again = signer.sign(&payload.fields).expect("accepted fields sign");
        assert_eq!(
            again.as_bytes(),
            text,
            "a second spelling of a payload verified"
        );
    }
}

/// Fields built from fuzz bytes; the username keeps to `a-z0-9`.
fn fields_from(data: &[u8]) -> Option<ActivationFields> {
    const NEED: usize = 1 + 16 + 8 + 4 + 32 + 1;
    if data.len() < NEED {
        return None;
    }
    let (head, rest) = data.split_at(NEED);
    let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let len = 1 + usize::from(head[NEED - 1]) % 64;
    let username: String = (0..len)
        .map(|i| {
            let b = rest.get(i).copied().unwrap_or(i as u8);
            char::from(alphabet[usize::from(b) % alphabet.len()])
        })
        .collect();
    let issued_at = u64::from_be_bytes(head[17..25].try_into().ok()?) >> 1;
    let lifetime = 1 + u64::from(u32::from_be_bytes(head[25..29].try_into().ok()?));
    Some(ActivationFields {
        flags: head[0],
        session_id: head[1..17].try_into().ok()?,
        username,
        issued_at,
        expires_at: issued_at + lifetime,
        server_public: head[29..61].try_into().ok()?,
    })
}

/// The payload parser and verifier: any text, any decoded bytes, and sign → verify round
/// trips of fields made from the input.
pub fn activation_payload(data: &[u8]) {
    // The bytes as a text, and behind the prefix so the base32 decoder is reached.
    check_payload_text(data);
    let mut prefixed = b"SLS1:".to_vec();
    prefixed.extend_from_slice(data);
    check_payload_text(&prefixed);
    // The bytes as a decoded payload, so the structure checks are reached.
    let mut encoded = String::from("SLS1:");
    BASE32_NOPAD.encode_append(data, &mut encoded);
    check_payload_text(encoded.as_bytes());
    // The bytes as fields: what is signed verifies to the same fields while valid, and
    // expires at expires_at.
    if let Some(fields) = fields_from(data) {
        let k = keys();
        let text = k.signers[1]
            .1
            .sign(&fields)
            .expect("fields within the rules");
        let at = fields.issued_at;
        let payload = k
            .verifier
            .verify(text.as_bytes(), at)
            .expect("a fresh payload");
        assert_eq!(payload.fields, fields);
        assert!(k
            .verifier
            .verify(text.as_bytes(), fields.expires_at)
            .is_err());
    }
}

/// The manual-string decoder: anything it accepts is a canonical code up to case, spaces
/// and hyphens; every code round-trips; a substituted character is always a bad check.
pub fn manual_code(data: &[u8]) {
    if let Ok(prefix) = parse_manual_code(data) {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&prefix);
        let canonical = make_manual_code(&id).replace('-', "");
        let typed: Vec<u8> = data
            .iter()
            .filter(|c| !b" -".contains(c))
            .map(|c| c.to_ascii_uppercase())
            .collect();
        assert_eq!(typed, canonical.as_bytes(), "a non-canonical code parsed");
    }
    if data.len() >= 18 {
        let id: [u8; 16] = data[..16].try_into().expect("16 bytes");
        let code = make_manual_code(&id);
        assert_eq!(
            parse_manual_code(code.as_bytes()),
            Ok(id[..8].try_into().expect("8"))
        );
        let mut bare = code.replace('-', "").into_bytes();
        let at = usize::from(data[16]) % bare.len();
        let symbol = MANUAL_ALPHABET[usize::from(data[17]) % MANUAL_ALPHABET.len()];
        if symbol != bare[at] {
            bare[at] = symbol;
            assert_eq!(parse_manual_code(&bare), Err(ManualCodeError::BadCheck));
        }
    }
}

/// The OCRA suite parser: an accepted suite keeps its text and parses again to itself; with
/// inputs drawn from the rest of the data, compute never panics and what it computes
/// verifies.
pub fn ocra_suite(data: &[u8]) {
    let (suite_text, rest) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(suite_text) else {
        return;
    };
    let Ok(suite) = OcraSuite::parse(text) else {
        return;
    };
    assert_eq!(suite.as_str(), text);
    assert_eq!(OcraSuite::parse(suite.as_str()), Ok(suite.clone()));
    let key = HmacKey::new(suite.algorithm(), b"12345678901234567890").expect("20-byte key");
    let pin_hash = suite
        .pin_algorithm()
        .map(|_| suite.hash_pin(b"1234").expect("a PIN"));
    let session: Option<Vec<u8>> = suite.session_len().map(|n| vec![0x5a; n]);
    let input = OcraInput {
        counter: suite.uses_counter().then_some(7),
        question: rest,
        pin_hash: pin_hash.as_ref().map(|h| h.as_bytes()),
        session: session.as_deref(),
        timestamp: suite.time_step().map(|_| 1_700_000_000),
    };
    if let Ok(response) = suite.compute(&key, &input) {
        assert_eq!(
            suite.verify(&key, response.as_bytes(), &input),
            Ok(Outcome::Ok)
        );
    }
    let _ = suite.verify(&key, rest, &input);
}

/// Starting inputs for each target: valid payloads, codes and RFC 6287 suites.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "activation_payload" => {
            let fields = ActivationFields {
                flags: 1,
                session_id: *b"0123456789abcdef",
                username: "alice".to_owned(),
                issued_at: NOW - 100,
                expires_at: NOW + 200,
                server_public: [3; 32],
            };
            let k = keys();
            k.signers
                .iter()
                .map(|(_, s)| s.sign(&fields).expect("valid").into_bytes())
                .collect()
        }
        "manual_code" => [[0u8; 16], [0xff; 16], *b"0123456789abcdef"]
            .iter()
            .flat_map(|id| {
                let code = make_manual_code(id);
                [
                    code.clone().into_bytes(),
                    code.to_lowercase().replace('-', " ").into_bytes(),
                ]
            })
            .collect(),
        "ocra_suite" => [
            "OCRA-1:HOTP-SHA1-6:QN08\n00000000",
            "OCRA-1:HOTP-SHA256-8:C-QN08-PSHA1\n12345678",
            "OCRA-1:HOTP-SHA256-8:QN08-PSHA1\n22222222",
            "OCRA-1:HOTP-SHA512-8:C-QN08\n33333333",
            "OCRA-1:HOTP-SHA512-8:QN08-T1M\n44444444",
            "OCRA-1:HOTP-SHA256-8:QA08\nCLI22220SRV11110",
            "OCRA-1:HOTP-SHA512-8:QA10-T1M\nSIG1000000",
            "OCRA-1:HOTP-SHA1-8:QN06-PSHA1\n123456",
            "OCRA-1:HOTP-SHA1-6:QH40-S064\n0123456789abcdef",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect(),
        _ => Vec::new(),
    }
}
