//! One-time codes: dynamic truncation (RFC 4226 section 5.3) and the strict code syntax.
//!
//! A code is ASCII digits `0-9` and nothing else: no spaces, signs, NUL, full-width or
//! Arabic-Indic digits. Anything else is malformed, never normalized.

use subtle::{Choice, ConstantTimeEq};

/// The largest supported code length (a 31-bit value has at most 10 digits).
pub const MAX_DIGITS: u8 = 10;

/// RFC 4226 section 5.3: the 31-bit value picked by the low nibble of the MAC's last byte.
#[inline]
pub fn dynamic_truncation(mac: &[u8]) -> u32 {
    let offset = usize::from(mac[mac.len() - 1] & 0x0f);
    u32::from_be_bytes([
        mac[offset] & 0x7f,
        mac[offset + 1],
        mac[offset + 2],
        mac[offset + 3],
    ])
}

/// How a code is written: `digits` zero-padded decimal digits, or for `digits == 0`
/// (OCRA's "no truncation", RFC 6287 section 5.1) the whole 31-bit value in decimal with
/// no padding, as the `oath` reference library does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeFormat {
    digits: u8,
}

impl CodeFormat {
    /// `digits` must be 0 or at most [`MAX_DIGITS`]; callers check their own lower bound.
    pub const fn new(digits: u8) -> Self {
        assert!(digits <= MAX_DIGITS);
        CodeFormat { digits }
    }

    pub const fn digits(self) -> u8 {
        self.digits
    }

    /// The code value of a MAC.
    #[inline]
    pub fn value(self, mac: &[u8]) -> u64 {
        self.value_of_truncated(dynamic_truncation(mac))
    }

    /// The code value of a dynamically truncated MAC: its last `digits` decimal digits.
    #[inline]
    pub fn value_of_truncated(self, truncated: u32) -> u64 {
        // One arm per length, so each remainder is by a constant (a multiply, not a divide).
        u64::from(match self.digits {
            1 => truncated % 10,
            2 => truncated % 100,
            3 => truncated % 1_000,
            4 => truncated % 10_000,
            5 => truncated % 100_000,
            6 => truncated % 1_000_000,
            7 => truncated % 10_000_000,
            8 => truncated % 100_000_000,
            9 => truncated % 1_000_000_000,
            // 0 (untruncated) and 10: a 31-bit value has at most 10 digits.
            _ => truncated,
        })
    }

    /// Writes a code value as the user types it.
    pub fn format(self, value: u64) -> String {
        format!("{:0width$}", value, width = usize::from(self.digits))
    }

    /// Writes a code value into `out`, which must be `digits` bytes long (fixed formats only).
    pub fn write_fixed(self, mut value: u64, out: &mut [u8]) {
        debug_assert_eq!(out.len(), usize::from(self.digits));
        for slot in out.iter_mut().rev() {
            *slot = b'0' + (value % 10) as u8;
            value /= 10;
        }
    }

    /// Parses a typed code; `None` means malformed (wrong length or a non-ASCII-digit byte).
    #[inline]
    pub fn parse(self, code: &[u8]) -> Option<u64> {
        let expected = match self.digits {
            0 => {
                // Canonical decimal of a 31-bit value: 1 to 10 digits, no leading zero.
                if code.is_empty() || code.len() > 10 || (code.len() > 1 && code[0] == b'0') {
                    return None;
                }
                code.len()
            }
            d => usize::from(d),
        };
        if code.len() != expected {
            return None;
        }
        let mut value: u64 = 0;
        for &byte in code {
            if !byte.is_ascii_digit() {
                return None;
            }
            value = value * 10 + u64::from(byte - b'0');
        }
        if self.digits == 0 && value > u64::from(u32::MAX >> 1) {
            return None;
        }
        Some(value)
    }
}

/// Constant-time equality of a typed code value and a computed one.
#[inline]
pub fn same_code(typed: u64, computed: u64) -> Choice {
    typed.ct_eq(&computed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4226_section_5_4_truncation_example() {
        let mac = hex::decode("1f8698690e02ca16618550ef7f19da8e945b555a").unwrap();
        assert_eq!(dynamic_truncation(&mac), 0x50ef7f19);
        assert_eq!(CodeFormat::new(6).value(&mac), 872921);
    }

    #[test]
    fn only_ascii_digits_of_the_exact_length_parse() {
        let six = CodeFormat::new(6);
        assert_eq!(six.parse(b"012345"), Some(12345));
        for bad in [
            &b"12345"[..],
            b"1234567",
            b"12 345",
            b"+12345",
            b"-12345",
            b"12345\0",
            b"12a456",
            "１２３４５６".as_bytes(),
            "١٢٣٤٥٦".as_bytes(),
            b"",
        ] {
            assert_eq!(six.parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn untruncated_codes_are_canonical_decimal() {
        let full = CodeFormat::new(0);
        assert_eq!(full.parse(b"0"), Some(0));
        assert_eq!(full.parse(b"2147483647"), Some(2147483647));
        assert_eq!(full.parse(b"2147483648"), None);
        assert_eq!(full.parse(b"0123"), None);
        assert_eq!(full.format(123), "123");
    }

    #[test]
    fn every_length_keeps_the_last_digits() {
        for truncated in [0u32, 7, 1_234_567_890, 0x7fff_ffff, 999_999_999] {
            for digits in 0..=MAX_DIGITS {
                let expected = match digits {
                    0 => u64::from(truncated),
                    d => u64::from(truncated) % 10u64.pow(u32::from(d)),
                };
                let got = CodeFormat::new(digits).value_of_truncated(truncated);
                assert_eq!(got, expected, "{truncated} {digits}");
            }
        }
    }

    #[test]
    fn fixed_codes_are_zero_padded() {
        let eight = CodeFormat::new(8);
        assert_eq!(eight.format(42), "00000042");
        let mut out = [0u8; 8];
        eight.write_fixed(42, &mut out);
        assert_eq!(&out, b"00000042");
    }
}
