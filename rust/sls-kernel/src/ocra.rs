//! OCRA, the OATH challenge-response algorithm (RFC 6287).
//!
//! A suite such as `OCRA-1:HOTP-SHA1-8:QN06-PSHA1` fixes the hash, the response length and
//! which data inputs enter the MAC (section 6). The MAC input is (section 5.1):
//! `suite || 0x00 || C (8) || Q (128) || P (hash length) || S (nnn) || T (8)`, with only
//! the fields the suite names. Nothing here logs, and no error carries a key, PIN or code.

use std::str::FromStr;

use crate::code::{same_code, CodeFormat, MAX_DIGITS};
use crate::error::Error;
#[cfg(test)]
use crate::mac::HmacKey;
use crate::mac::{DigestOutput, HashAlgorithm, HmacKeyRef, PaddedMessage};
use crate::types::Outcome;

/// The Q field is always 128 bytes in the MAC input (RFC 6287 section 5.1).
pub const QUESTION_FIELD_LEN: usize = 128;
/// Shortest question accepted: the smallest `xx` of `QFxx` (section 6.3).
pub const MIN_QUESTION_LEN: usize = 4;
/// Longest question accepted. The suite's `xx` is nominal: mutual challenge-response
/// (section 7.3) sends the client and server questions concatenated, longer than `xx`.
pub const MAX_QUESTION_LEN: usize = 128;

/// How the challenge question is written (`QA`, `QN`, `QH`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuestionFormat {
    /// `QA`: printable ASCII, used as bytes.
    Alphanumeric,
    /// `QN`: decimal digits, converted to a big-endian hex number.
    Numeric,
    /// `QH`: hexadecimal digits, used as nibbles.
    Hex,
}

impl QuestionFormat {
    /// The format's letter in a suite (`QA`, `QN`, `QH`).
    pub fn letter(self) -> char {
        match self {
            QuestionFormat::Alphanumeric => 'A',
            QuestionFormat::Numeric => 'N',
            QuestionFormat::Hex => 'H',
        }
    }
}

/// A parsed OCRA suite (RFC 6287 section 6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OcraSuite {
    text: String,
    algorithm: HashAlgorithm,
    format: CodeFormat,
    counter: bool,
    question_format: QuestionFormat,
    question_nominal_len: u8,
    pin: Option<HashAlgorithm>,
    session_len: Option<usize>,
    time_step: Option<u64>,
    layout: MessageLayout,
}

/// Where each data input starts in the MAC message (section 5.1), and the message's
/// length: `suite || 0x00 || C (8) || Q (128) || P || S || T (8)`, absent fields taking no
/// room. Fixed by the suite, so a batch lays the message out once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MessageLayout {
    counter: usize,
    question: usize,
    pin: usize,
    session: usize,
    time: usize,
    len: usize,
}

impl MessageLayout {
    fn new(
        suite_len: usize,
        counter: bool,
        pin: Option<HashAlgorithm>,
        session_len: Option<usize>,
        time: bool,
    ) -> Self {
        let counter_at = suite_len + 1;
        let question = counter_at + if counter { 8 } else { 0 };
        let pin_at = question + QUESTION_FIELD_LEN;
        let session = pin_at + pin.map_or(0, HashAlgorithm::output_len);
        let time_at = session + session_len.unwrap_or(0);
        let len = time_at + if time { 8 } else { 0 };
        MessageLayout {
            counter: counter_at,
            question,
            pin: pin_at,
            session,
            time: time_at,
            len,
        }
    }
}

/// The data inputs of one OCRA computation. `timestamp` is Unix time in seconds; the
/// suite's `T` step divides it.
#[derive(Debug, Clone, Copy, Default)]
pub struct OcraInput<'a> {
    pub counter: Option<u64>,
    pub question: &'a [u8],
    pub pin_hash: Option<&'a [u8]>,
    pub session: Option<&'a [u8]>,
    pub timestamp: Option<u64>,
}

impl FromStr for OcraSuite {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        OcraSuite::parse(text)
    }
}

fn hash_name(algorithm: HashAlgorithm) -> &'static str {
    match algorithm {
        HashAlgorithm::Sha1 => "SHA1",
        HashAlgorithm::Sha256 => "SHA256",
        HashAlgorithm::Sha512 => "SHA512",
    }
}

fn parse_hash(name: &str) -> Option<HashAlgorithm> {
    match name {
        "SHA1" => Some(HashAlgorithm::Sha1),
        "SHA256" => Some(HashAlgorithm::Sha256),
        "SHA512" => Some(HashAlgorithm::Sha512),
        _ => None,
    }
}

/// A decimal number with no sign, no leading zero and only ASCII digits.
fn parse_plain_number(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 3 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if text.len() > 1 && text.starts_with('0') {
        return None;
    }
    text.parse().ok()
}

impl OcraSuite {
    /// Parses a suite string such as `OCRA-1:HOTP-SHA1-8:QN06-PSHA1`.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let err = |rule: &str| Error::suite(text, rule);
        let mut parts = text.split(':');
        let (Some(version), Some(function), Some(data_input), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(err(
                "must have three ':'-separated parts, e.g. OCRA-1:HOTP-SHA1-8:QN06-PSHA1",
            ));
        };
        if version != "OCRA-1" {
            return Err(err("version must be OCRA-1"));
        }

        // CryptoFunction: HOTP-SHAx-t (section 6.2).
        let mut function_parts = function.split('-');
        let (Some("HOTP"), Some(hash), Some(digits), None) = (
            function_parts.next(),
            function_parts.next(),
            function_parts.next(),
            function_parts.next(),
        ) else {
            return Err(err(
                "crypto function must be HOTP-SHA1-t, HOTP-SHA256-t or HOTP-SHA512-t",
            ));
        };
        let algorithm = parse_hash(hash)
            .ok_or_else(|| err("crypto function hash must be SHA1, SHA256 or SHA512"))?;
        let digits = match parse_plain_number(digits) {
            Some(d @ (0 | 4..=10)) => d as u8,
            _ => return Err(err("truncation length t must be 0 or 4 to 10")),
        };
        debug_assert!(digits <= MAX_DIGITS);

        // DataInput: [C] | QFxx | [PH] | [Snnn] | [TG], in that order (section 6.3).
        let mut fields = data_input.split('-').peekable();
        let counter = fields.next_if_eq(&"C").is_some();
        let question = fields
            .next()
            .ok_or_else(|| err("data input must contain a question QFxx"))?;
        let (question_format, question_nominal_len) = {
            let bytes = question.as_bytes();
            if bytes.len() != 4 || bytes[0] != b'Q' {
                return Err(err(
                    "data input must contain a question QFxx (QA, QN or QH with xx from 04 to 64) after the optional C",
                ));
            }
            let format = match bytes[1] {
                b'A' => QuestionFormat::Alphanumeric,
                b'N' => QuestionFormat::Numeric,
                b'H' => QuestionFormat::Hex,
                _ => return Err(err("question format must be A, N or H")),
            };
            let len = match (bytes[2], bytes[3]) {
                (tens @ b'0'..=b'9', ones @ b'0'..=b'9') => (tens - b'0') * 10 + (ones - b'0'),
                _ => 0,
            };
            if !(4..=64).contains(&len) {
                return Err(err("question length xx must be two digits from 04 to 64"));
            }
            (format, len)
        };
        let pin = match fields.next_if(|f| f.starts_with('P')) {
            Some(field) => Some(
                parse_hash(&field[1..])
                    .ok_or_else(|| err("PIN hash must be PSHA1, PSHA256 or PSHA512"))?,
            ),
            None => None,
        };
        let session_len = match fields.next_if(|f| f.starts_with('S')) {
            Some(field) => {
                let digits = &field[1..];
                let len = (digits.len() == 3 && digits.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| digits.parse::<usize>().ok())
                    .flatten()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| err("session length must be three digits, S001 to S999"))?;
                Some(len)
            }
            None => None,
        };
        let time_step = match fields.next_if(|f| f.starts_with('T')) {
            Some(field) => {
                let body = &field[1..];
                // Erratum 3729 narrows hours to 1-48: a zero step cannot divide time.
                let (number, max, seconds) = if let Some(n) = body.strip_suffix('S') {
                    (n, 59, 1)
                } else if let Some(n) = body.strip_suffix('M') {
                    (n, 59, 60)
                } else if let Some(n) = body.strip_suffix('H') {
                    (n, 48, 3600)
                } else {
                    return Err(err("time step must be 1-59S, 1-59M or 1-48H"));
                };
                match parse_plain_number(number) {
                    Some(n) if (1..=max).contains(&n) => Some(n * seconds),
                    _ => return Err(err("time step must be 1-59S, 1-59M or 1-48H")),
                }
            }
            None => None,
        };
        if fields.next().is_some() {
            return Err(err(
                "unexpected data input: the order is [C]-QFxx-[PH]-[Snnn]-[TG], each at most once",
            ));
        }

        let layout = MessageLayout::new(text.len(), counter, pin, session_len, time_step.is_some());
        Ok(OcraSuite {
            layout,
            text: text.to_owned(),
            algorithm,
            format: CodeFormat::new(digits),
            counter,
            question_format,
            question_nominal_len,
            pin,
            session_len,
            time_step,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn algorithm(&self) -> HashAlgorithm {
        self.algorithm
    }

    /// Response length; 0 means untruncated (the whole 31-bit value, unpadded).
    pub fn digits(&self) -> u8 {
        self.format.digits()
    }

    pub fn code_format(&self) -> CodeFormat {
        self.format
    }

    pub fn uses_counter(&self) -> bool {
        self.counter
    }

    pub fn question_format(&self) -> QuestionFormat {
        self.question_format
    }

    pub fn question_nominal_len(&self) -> u8 {
        self.question_nominal_len
    }

    pub fn pin_algorithm(&self) -> Option<HashAlgorithm> {
        self.pin
    }

    pub fn session_len(&self) -> Option<usize> {
        self.session_len
    }

    /// Seconds per time step of the `T` input.
    pub fn time_step(&self) -> Option<u64> {
        self.time_step
    }

    /// Hashes a PIN with the suite's `P` algorithm.
    pub fn hash_pin(&self, pin: &[u8]) -> Result<DigestOutput, Error> {
        let algorithm = self
            .pin
            .ok_or_else(|| Error::input("pin", "the suite has no P (PIN) data input"))?;
        if pin.is_empty() {
            return Err(Error::input("pin", "must not be empty"));
        }
        Ok(algorithm.digest(pin))
    }

    /// Writes the 128-byte Q field for `question` (section 5.1 and Appendix A's encoding).
    pub fn encode_question(
        &self,
        question: &[u8],
        field: &mut [u8; QUESTION_FIELD_LEN],
    ) -> Result<(), Error> {
        self.write_question(question, field)
    }

    /// [`OcraSuite::encode_question`] into the Q field of a message (`field` is 128 bytes).
    #[inline]
    fn write_question(&self, question: &[u8], field: &mut [u8]) -> Result<(), Error> {
        if !(MIN_QUESTION_LEN..=MAX_QUESTION_LEN).contains(&question.len()) {
            return Err(Error::input("question", "must be 4 to 128 characters long"));
        }
        match self.question_format {
            QuestionFormat::Alphanumeric => {
                if !question.iter().all(|b| b.is_ascii_graphic()) {
                    return Err(Error::input(
                        "question",
                        "QA format accepts printable ASCII without spaces only",
                    ));
                }
                field[..question.len()].copy_from_slice(question);
                field[question.len()..].fill(0);
            }
            QuestionFormat::Numeric => {
                if !question.iter().all(u8::is_ascii_digit) {
                    return Err(Error::input(
                        "question",
                        "QN format accepts ASCII digits 0-9 only",
                    ));
                }
                encode_decimal_question(question, field);
            }
            QuestionFormat::Hex => {
                field.fill(0);
                for (i, &b) in question.iter().enumerate() {
                    let nibble = match b {
                        b'0'..=b'9' => b - b'0',
                        b'a'..=b'f' => b - b'a' + 10,
                        b'A'..=b'F' => b - b'A' + 10,
                        _ => {
                            return Err(Error::input(
                                "question",
                                "QH format accepts hexadecimal digits 0-9, A-F only",
                            ))
                        }
                    };
                    field[i / 2] |= if i % 2 == 0 { nibble << 4 } else { nibble };
                }
            }
        }
        Ok(())
    }

    /// Checks that exactly the data inputs the suite names are present and well formed.
    fn check_inputs(&self, input: &OcraInput<'_>) -> Result<(), Error> {
        match (self.counter, input.counter) {
            (true, None) => {
                return Err(Error::input(
                    "counter",
                    "required: the suite has a C data input",
                ))
            }
            (false, Some(_)) => {
                return Err(Error::input(
                    "counter",
                    "not allowed: the suite has no C data input",
                ))
            }
            _ => {}
        }
        match (self.pin, input.pin_hash) {
            (Some(_), None) => {
                return Err(Error::input(
                    "pin",
                    "required: the suite has a P data input (give pin or pin_hash)",
                ))
            }
            (None, Some(_)) => {
                return Err(Error::input(
                    "pin",
                    "not allowed: the suite has no P data input",
                ))
            }
            (Some(algorithm), Some(hash)) if hash.len() != algorithm.output_len() => {
                return Err(Error::input(
                    "pin_hash",
                    format!(
                        "must be {} bytes, the P{} digest of the PIN",
                        algorithm.output_len(),
                        hash_name(algorithm)
                    ),
                ));
            }
            _ => {}
        }
        match (self.session_len, input.session) {
            (Some(_), None) => {
                return Err(Error::input(
                    "session",
                    "required: the suite has an S data input",
                ))
            }
            (None, Some(_)) => {
                return Err(Error::input(
                    "session",
                    "not allowed: the suite has no S data input",
                ))
            }
            (Some(len), Some(session)) if session.len() != len => {
                return Err(Error::input(
                    "session",
                    format!("must be exactly {len} bytes (S{len:03})"),
                ));
            }
            _ => {}
        }
        match (self.time_step, input.timestamp) {
            (Some(_), None) => Err(Error::input(
                "timestamp",
                "required: the suite has a T data input",
            )),
            (None, Some(_)) => Err(Error::input(
                "timestamp",
                "not allowed: the suite has no T data input",
            )),
            _ => Ok(()),
        }
    }

    fn check_key(&self, key: HmacKeyRef<'_>) -> Result<(), Error> {
        if key.algorithm() != self.algorithm {
            return Err(self.key_mismatch(key));
        }
        Ok(())
    }

    /// A MAC message laid out for this suite: the suite text, its 0x00 separator and the
    /// hash padding written once; [`OcraSuite::write_inputs`] fills in each item.
    pub(crate) fn new_message(&self) -> PaddedMessage {
        let mut message = PaddedMessage::new(self.algorithm, self.layout.len);
        message.message_mut()[..self.text.len()].copy_from_slice(self.text.as_bytes());
        message
    }

    /// Checks one item's inputs against the suite and writes them into `message` (from
    /// [`OcraSuite::new_message`]). Every field the suite has is overwritten in full, so
    /// nothing of an earlier item survives into this one's MAC.
    #[inline]
    pub(crate) fn write_inputs(
        &self,
        message: &mut PaddedMessage,
        input: &OcraInput<'_>,
    ) -> Result<(), Error> {
        self.check_inputs(input)?;
        let at = self.layout;
        let bytes = message.message_mut();
        if let Some(counter) = input.counter {
            bytes[at.counter..at.question].copy_from_slice(&counter.to_be_bytes());
        }
        self.write_question(input.question, &mut bytes[at.question..at.pin])?;
        if let Some(hash) = input.pin_hash {
            bytes[at.pin..at.session].copy_from_slice(hash);
        }
        if let Some(session) = input.session {
            bytes[at.session..at.time].copy_from_slice(session);
        }
        if let (Some(step), Some(unix)) = (self.time_step, input.timestamp) {
            bytes[at.time..at.len].copy_from_slice(&(unix / step).to_be_bytes());
        }
        Ok(())
    }

    /// The code value of a message filled by [`OcraSuite::write_inputs`].
    #[inline]
    fn value_in(&self, key: HmacKeyRef<'_>, message: &PaddedMessage) -> Result<u64, Error> {
        let truncated = message
            .truncated_mac(key)
            .ok_or_else(|| self.key_mismatch(key))?;
        Ok(self.format.value_of_truncated(truncated))
    }

    fn key_mismatch(&self, key: HmacKeyRef<'_>) -> Error {
        Error::input(
            "key",
            format!(
                "prepared for {} but the suite uses HOTP-{}",
                key.algorithm().name(),
                hash_name(self.algorithm)
            ),
        )
    }

    /// The response value (before formatting) for one set of inputs.
    pub fn compute_value<'k>(
        &self,
        key: impl Into<HmacKeyRef<'k>>,
        input: &OcraInput<'_>,
    ) -> Result<u64, Error> {
        let key = key.into();
        self.check_key(key)?;
        let mut message = self.new_message();
        self.write_inputs(&mut message, input)?;
        self.value_in(key, &message)
    }

    /// The response a device shows for these inputs.
    pub fn compute<'k>(
        &self,
        key: impl Into<HmacKeyRef<'k>>,
        input: &OcraInput<'_>,
    ) -> Result<String, Error> {
        Ok(self.format.format(self.compute_value(key, input)?))
    }

    /// Verifies a typed response. Bad inputs other than the response are errors; a response
    /// that is not a code of the suite's shape is [`Outcome::Malformed`].
    pub fn verify<'k>(
        &self,
        key: impl Into<HmacKeyRef<'k>>,
        response: &[u8],
        input: &OcraInput<'_>,
    ) -> Result<Outcome, Error> {
        let key = key.into();
        self.check_key(key)?;
        let mut message = self.new_message();
        self.write_inputs(&mut message, input)?;
        let Some(typed) = self.format.parse(response) else {
            return Ok(Outcome::Malformed);
        };
        let expected = self.value_in(key, &message)?;
        Ok(Outcome::from_match(same_code(typed, expected)))
    }
}

impl core::fmt::Display for OcraSuite {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.text)
    }
}

/// `QN` encoding: the decimal question as a hex number without leading zeros, written
/// nibble by nibble from the start of the field (RFC 6287 Appendix A:
/// `new BigInteger(question, 10).toString(16)`, right-padded with '0').
fn encode_decimal_question(digits: &[u8], field: &mut [u8]) {
    field.fill(0);
    if digits.len() <= 19 {
        // Fast path: every 19-digit decimal fits in a u64.
        let value = digits
            .iter()
            .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
        if value != 0 {
            let shift = value.leading_zeros() & !3;
            field[..8].copy_from_slice(&(value << shift).to_be_bytes());
        }
        return;
    }
    // Up to 128 decimal digits: at most 426 bits, so 54 bytes of big-endian magnitude.
    let mut magnitude = [0u8; 54];
    for &d in digits {
        let mut carry = u16::from(d - b'0');
        for byte in magnitude.iter_mut().rev() {
            let v = u16::from(*byte) * 10 + carry;
            *byte = (v & 0xff) as u8;
            carry = v >> 8;
        }
    }
    let nibbles = magnitude.iter().flat_map(|b| [b >> 4, b & 0x0f]);
    for (i, nibble) in nibbles.skip_while(|&n| n == 0).enumerate() {
        field[i / 2] |= if i % 2 == 0 { nibble << 4 } else { nibble };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn suite(text: &str) -> OcraSuite {
        OcraSuite::parse(text).unwrap()
    }

    #[test]
    fn parses_every_data_input() {
        let s = suite("OCRA-1:HOTP-SHA512-10:C-QH64-PSHA256-S512-T48H");
        assert_eq!(s.algorithm(), HashAlgorithm::Sha512);
        assert_eq!(s.digits(), 10);
        assert!(s.uses_counter());
        assert_eq!(s.question_format(), QuestionFormat::Hex);
        assert_eq!(s.question_nominal_len(), 64);
        assert_eq!(s.pin_algorithm(), Some(HashAlgorithm::Sha256));
        assert_eq!(s.session_len(), Some(512));
        assert_eq!(s.time_step(), Some(48 * 3600));
        assert_eq!(s.question_format().letter(), 'H');
        let s = suite("OCRA-1:HOTP-SHA1-0:QA04-T30S");
        assert_eq!(s.digits(), 0);
        assert_eq!(s.time_step(), Some(30));
    }

    #[test]
    fn refuses_malformed_suites_with_the_rule() {
        let cases = [
            ("OCRA-2:HOTP-SHA1-6:QN08", "version must be OCRA-1"),
            ("OCRA-1:HOTP-MD5-6:QN08", "hash must be SHA1"),
            ("OCRA-1:HOTP-SHA1-3:QN08", "truncation length"),
            ("OCRA-1:HOTP-SHA1-11:QN08", "truncation length"),
            ("OCRA-1:HOTP-SHA1-06:QN08", "truncation length"),
            ("OCRA-1:HOTP-SHA1-6:QX08", "question format"),
            ("OCRA-1:HOTP-SHA1-6:QN03", "04 to 64"),
            ("OCRA-1:HOTP-SHA1-6:QN65", "04 to 64"),
            ("OCRA-1:HOTP-SHA1-6:C", "question"),
            ("OCRA-1:HOTP-SHA1-6:PSHA1", "question"),
            ("OCRA-1:HOTP-SHA1-6:QN08-PMD5", "PIN hash"),
            ("OCRA-1:HOTP-SHA1-6:QN08-S64", "session length"),
            ("OCRA-1:HOTP-SHA1-6:QN08-S000", "session length"),
            ("OCRA-1:HOTP-SHA1-6:QN08-T0H", "time step"),
            ("OCRA-1:HOTP-SHA1-6:QN08-T49H", "time step"),
            ("OCRA-1:HOTP-SHA1-6:QN08-T60M", "time step"),
            ("OCRA-1:HOTP-SHA1-6:QN08-T1D", "time step"),
            ("OCRA-1:HOTP-SHA1-6:QN08-T1\u{e9}", "time step"),
            ("OCRA-1:HOTP-SHA1-6:QN08-T1M-PSHA1", "order"),
            ("OCRA-1:HOTP-SHA1-6:QN08-C", "order"),
            ("OCRA-1:HOTP-SHA1-6:QN08:extra", "three"),
            ("ocra-1:hotp-sha1-6:qn08", "version"),
            ("", "three"),
        ];
        for (text, rule) in cases {
            let err = OcraSuite::parse(text).unwrap_err();
            assert_eq!(err.field(), "suite");
            assert!(err.to_string().contains(rule), "{text}: {err}");
        }
    }

    #[test]
    fn numeric_questions_are_left_aligned_hex() {
        let s = suite("OCRA-1:HOTP-SHA1-6:QN08");
        let mut field = [0u8; QUESTION_FIELD_LEN];
        s.encode_question(b"22222222", &mut field).unwrap();
        assert_eq!(&field[..5], &[0x15, 0x31, 0x58, 0xe0, 0]);
        // The long-number path agrees with the u64 path.
        let mut long = [0u8; QUESTION_FIELD_LEN];
        s.encode_question(b"00000000000000000000022222222", &mut long)
            .unwrap();
        assert_eq!(field, long);
        s.encode_question(b"0000", &mut field).unwrap();
        assert_eq!(field, [0u8; QUESTION_FIELD_LEN]);
    }

    #[test]
    fn questions_outside_their_format_are_errors() {
        let mut field = [0u8; QUESTION_FIELD_LEN];
        let numeric = suite("OCRA-1:HOTP-SHA1-6:QN06");
        for bad in [
            &b"12 456"[..],
            b"12345a",
            "１２３４５６".as_bytes(),
            b"-12345",
        ] {
            let err = numeric.encode_question(bad, &mut field).unwrap_err();
            assert_eq!(
                err.to_string(),
                "question: QN format accepts ASCII digits 0-9 only"
            );
        }
        assert!(numeric.encode_question(b"123", &mut field).is_err());
        assert!(numeric.encode_question(&[b'1'; 129], &mut field).is_err());
        assert!(numeric.encode_question(&[b'9'; 128], &mut field).is_ok());
        let hex = suite("OCRA-1:HOTP-SHA1-6:QH08");
        assert!(hex.encode_question(b"ABCDEFG0", &mut field).is_err());
        let alpha = suite("OCRA-1:HOTP-SHA1-6:QA08");
        assert!(alpha.encode_question(b"ABC DEF0", &mut field).is_err());
    }

    #[test]
    fn inputs_must_match_the_suite() {
        let s = suite("OCRA-1:HOTP-SHA1-8:C-QN06-PSHA1-S064-T1M");
        let key = HmacKey::new(HashAlgorithm::Sha1, b"12345678901234567890").unwrap();
        let pin = s.hash_pin(b"1234").unwrap();
        let session = [7u8; 64];
        let full = OcraInput {
            counter: Some(1),
            question: b"123456",
            pin_hash: Some(pin.as_bytes()),
            session: Some(&session),
            timestamp: Some(1_700_000_000),
        };
        assert!(s.compute(&key, &full).is_ok());
        let missing = [
            (
                OcraInput {
                    counter: None,
                    ..full
                },
                "counter",
            ),
            (
                OcraInput {
                    pin_hash: None,
                    ..full
                },
                "pin",
            ),
            (
                OcraInput {
                    pin_hash: Some(&[1; 19]),
                    ..full
                },
                "pin_hash",
            ),
            (
                OcraInput {
                    session: None,
                    ..full
                },
                "session",
            ),
            (
                OcraInput {
                    session: Some(&[1; 63]),
                    ..full
                },
                "session",
            ),
            (
                OcraInput {
                    timestamp: None,
                    ..full
                },
                "timestamp",
            ),
        ];
        for (input, field) in missing {
            assert_eq!(s.compute(&key, &input).unwrap_err().field(), field);
        }
        let bare = suite("OCRA-1:HOTP-SHA1-8:QN06");
        for (input, field) in [
            (
                OcraInput {
                    counter: Some(1),
                    question: b"123456",
                    ..Default::default()
                },
                "counter",
            ),
            (
                OcraInput {
                    pin_hash: Some(pin.as_bytes()),
                    question: b"123456",
                    ..Default::default()
                },
                "pin",
            ),
            (
                OcraInput {
                    session: Some(&session),
                    question: b"123456",
                    ..Default::default()
                },
                "session",
            ),
            (
                OcraInput {
                    timestamp: Some(1),
                    question: b"123456",
                    ..Default::default()
                },
                "timestamp",
            ),
        ] {
            assert_eq!(bare.compute(&key, &input).unwrap_err().field(), field);
        }
        let sha256_key = HmacKey::new(HashAlgorithm::Sha256, b"k").unwrap();
        let err = bare
            .compute(
                &sha256_key,
                &OcraInput {
                    question: b"123456",
                    ..Default::default()
                },
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "key: prepared for sha256 but the suite uses HOTP-SHA1"
        );
    }

    /// The message laid out once and filled per item is the RFC's concatenation
    /// `suite || 0x00 || C || Q || P || S || T` (section 5.1): every suite shape, one
    /// message reused across items of different inputs, against the plain HMAC of the
    /// concatenated parts.
    #[test]
    fn a_reused_message_is_the_concatenation_of_each_items_inputs() {
        use crate::code::CodeFormat;
        let suites = [
            "OCRA-1:HOTP-SHA1-8:QN06-PSHA1",
            "OCRA-1:HOTP-SHA1-6:QN08",
            "OCRA-1:HOTP-SHA256-8:C-QN08-PSHA1",
            "OCRA-1:HOTP-SHA512-8:C-QN08",
            "OCRA-1:HOTP-SHA512-8:QN08-T1M",
            "OCRA-1:HOTP-SHA256-10:C-QA64-PSHA256-S064-T30S",
            "OCRA-1:HOTP-SHA512-0:QH40-PSHA512-S512-T48H",
            "OCRA-1:HOTP-SHA1-4:QA10-S128",
        ];
        let questions: [&[u8]; 3] = [b"12345678", b"4D3A50FF", b"00000000000000000000022222222"];
        for text in suites {
            let s = suite(text);
            let key =
                HmacKey::new(s.algorithm(), b"3132333435363738393031323334353637383930").unwrap();
            let mut message = s.new_message();
            for item in 0u8..6 {
                let question = match s.question_format() {
                    QuestionFormat::Numeric => questions[usize::from(item % 3 / 2) * 2],
                    QuestionFormat::Hex => questions[usize::from(item % 2)],
                    QuestionFormat::Alphanumeric => {
                        &b"SIG1230000Q-Z~"[..10 + usize::from(item % 3)]
                    }
                };
                let pin = s.pin_algorithm().map(|a| a.digest(&[b'0' + item; 4]));
                let session = s.session_len().map(|len| vec![item ^ 0x5a; len]);
                let input = OcraInput {
                    counter: s.uses_counter().then_some(u64::from(item) << 40 | 7),
                    question,
                    pin_hash: pin.as_ref().map(DigestOutput::as_bytes),
                    session: session.as_deref(),
                    timestamp: s
                        .time_step()
                        .map(|_| 1_700_000_000 + u64::from(item) * 7919),
                };
                s.write_inputs(&mut message, &input).unwrap();
                let mut question_field = [0u8; QUESTION_FIELD_LEN];
                s.encode_question(question, &mut question_field).unwrap();
                let counter = input.counter.map(u64::to_be_bytes);
                let time = s
                    .time_step()
                    .zip(input.timestamp)
                    .map(|(step, unix)| (unix / step).to_be_bytes());
                let parts: [&[u8]; 7] = [
                    s.as_str().as_bytes(),
                    &[0],
                    counter.as_ref().map_or(&[][..], |c| &c[..]),
                    &question_field,
                    input.pin_hash.unwrap_or_default(),
                    input.session.unwrap_or_default(),
                    time.as_ref().map_or(&[][..], |t| &t[..]),
                ];
                assert_eq!(message.message(), parts.concat(), "{text} item {item}");
                let expected = CodeFormat::new(s.digits()).value(key.mac(&parts).as_bytes());
                assert_eq!(s.compute_value(&key, &input).unwrap(), expected, "{text}");
            }
        }
    }

    #[test]
    fn malformed_responses_are_not_wrong_ones() {
        let s = suite("OCRA-1:HOTP-SHA1-8:QN06");
        let key = HmacKey::new(HashAlgorithm::Sha1, b"12345678901234567890").unwrap();
        let input = OcraInput {
            question: b"123456",
            ..Default::default()
        };
        let right = s.compute(&key, &input).unwrap();
        assert_eq!(
            s.verify(&key, right.as_bytes(), &input).unwrap(),
            Outcome::Ok
        );
        let mut wrong = right.clone().into_bytes();
        wrong[0] = if wrong[0] == b'9' { b'0' } else { wrong[0] + 1 };
        assert_eq!(s.verify(&key, &wrong, &input).unwrap(), Outcome::Wrong);
        for bad in [
            &right.as_bytes()[..7],
            b"1234 678",
            b"12345678 ",
            b"abcdefgh",
        ] {
            assert_eq!(s.verify(&key, bad, &input).unwrap(), Outcome::Malformed);
        }
    }
}
