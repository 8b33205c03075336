//! HOTP (RFC 4226) and TOTP (RFC 6238) with windowed, constant-time verification.
//!
//! Verification returns the counter or time step that matched, so the caller can store it
//! and refuse a second use of the same code.

use subtle::{Choice, ConditionallySelectable};

use crate::code::{same_code, CodeFormat};
use crate::error::Error;
use crate::mac::HmacKeyRef;

/// RFC 4226 section 5.3 requires at least 6 digits; 10 is all a 31-bit value holds.
pub const MIN_OTP_DIGITS: u8 = 6;
/// The rule an HOTP/TOTP `digits` outside `MIN_OTP_DIGITS..=MAX_DIGITS` breaks.
pub const OTP_DIGITS_RULE: &str = "must be from 6 to 10 (RFC 4226 section 5.3)";
/// Candidates checked on each side of a window at most, so one request cannot buy unbounded work.
pub const MAX_WINDOW: u64 = 1000;

/// The result of checking one code against a window of counters or time steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowMatch {
    /// The code matched at this counter (HOTP) or time step (TOTP).
    Matched(u64),
    /// Well-formed but matched nothing in the window.
    Wrong,
    /// Not a code of the expected shape; nothing was computed.
    Malformed,
}

/// Code length shared by HOTP and TOTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OtpParams {
    format: CodeFormat,
}

impl OtpParams {
    pub fn new(digits: u8) -> Result<Self, Error> {
        if !(MIN_OTP_DIGITS..=crate::code::MAX_DIGITS).contains(&digits) {
            return Err(Error::input("digits", OTP_DIGITS_RULE));
        }
        Ok(OtpParams {
            format: CodeFormat::new(digits),
        })
    }

    pub fn digits(self) -> u8 {
        self.format.digits()
    }

    pub fn format(self) -> CodeFormat {
        self.format
    }

    /// HOTP value for `counter` (RFC 4226 section 5.3).
    #[inline]
    pub fn value<'k>(self, key: impl Into<HmacKeyRef<'k>>, counter: u64) -> u64 {
        let truncated = key.into().truncated_mac(&[&counter.to_be_bytes()]);
        self.format.value_of_truncated(truncated)
    }

    /// HOTP code for `counter`, zero-padded.
    pub fn code<'k>(self, key: impl Into<HmacKeyRef<'k>>, counter: u64) -> String {
        self.format.format(self.value(key, counter))
    }

    /// Checks `code` against every counter in `first..=last`, each candidate in constant
    /// time (no early exit), and returns the lowest matching counter.
    pub fn verify_range<'k>(
        self,
        key: impl Into<HmacKeyRef<'k>>,
        code: &[u8],
        first: u64,
        last: u64,
    ) -> WindowMatch {
        let key = key.into();
        let Some(typed) = self.format.parse(code) else {
            return WindowMatch::Malformed;
        };
        let mut found = Choice::from(0);
        let mut matched = 0u64;
        let mut counter = first;
        loop {
            let hit = same_code(typed, self.value(key, counter));
            matched.conditional_assign(&counter, hit & !found);
            found |= hit;
            if counter == last {
                break;
            }
            counter += 1;
        }
        if bool::from(found) {
            WindowMatch::Matched(matched)
        } else {
            WindowMatch::Wrong
        }
    }
}

/// The counters an HOTP check covers: `counter` and up to `look_ahead` after it
/// (RFC 4226 section 7.4 resynchronization). Looking behind would accept used codes.
pub fn hotp_window(counter: u64, look_ahead: u64) -> Result<(u64, u64), Error> {
    if look_ahead > MAX_WINDOW {
        return Err(Error::input("window", "must be at most 1000"));
    }
    Ok((counter, counter.saturating_add(look_ahead)))
}

/// TOTP's time parameters (RFC 6238 section 4.1: X = step, T0 = t0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TotpParams {
    pub otp: OtpParams,
    step: u64,
    t0: u64,
}

impl TotpParams {
    pub fn new(digits: u8, step: u64, t0: u64) -> Result<Self, Error> {
        if step == 0 {
            return Err(Error::input("step", "must be at least 1 second"));
        }
        Ok(TotpParams {
            otp: OtpParams::new(digits)?,
            step,
            t0,
        })
    }

    /// RFC 6238 section 4.2: T = floor((unix_time - T0) / X).
    pub fn time_step(self, unix_time: u64) -> Result<u64, Error> {
        if unix_time < self.t0 {
            return Err(Error::input("unix_time", "must not be before t0"));
        }
        Ok((unix_time - self.t0) / self.step)
    }

    /// The time steps a check at `unix_time` covers.
    pub fn window(
        self,
        unix_time: u64,
        look_behind: u64,
        look_ahead: u64,
    ) -> Result<(u64, u64), Error> {
        if look_behind > MAX_WINDOW || look_ahead > MAX_WINDOW {
            return Err(Error::input(
                "window",
                "must be at most 1000 steps each side",
            ));
        }
        let now = self.time_step(unix_time)?;
        Ok((
            now.saturating_sub(look_behind),
            now.saturating_add(look_ahead),
        ))
    }

    pub fn code<'k>(self, key: impl Into<HmacKeyRef<'k>>, unix_time: u64) -> Result<String, Error> {
        Ok(self.otp.code(key, self.time_step(unix_time)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mac::{HashAlgorithm, HmacKey};

    fn rfc_key() -> HmacKey {
        HmacKey::new(HashAlgorithm::Sha1, b"12345678901234567890").unwrap()
    }

    #[test]
    fn window_returns_the_matching_counter() {
        let params = OtpParams::new(6).unwrap();
        // RFC 4226 Appendix D: counter 5 -> 254676.
        let (first, last) = hotp_window(2, 5).unwrap();
        assert_eq!(
            params.verify_range(&rfc_key(), b"254676", first, last),
            WindowMatch::Matched(5)
        );
        let (first, last) = hotp_window(6, 5).unwrap();
        assert_eq!(
            params.verify_range(&rfc_key(), b"254676", first, last),
            WindowMatch::Wrong
        );
        assert_eq!(
            params.verify_range(&rfc_key(), b"25467", 0, 9),
            WindowMatch::Malformed
        );
    }

    #[test]
    fn window_saturates_at_the_ends_of_the_counter_space() {
        let params = OtpParams::new(6).unwrap();
        assert_eq!(hotp_window(u64::MAX, 3).unwrap(), (u64::MAX, u64::MAX));
        let code = params.code(&rfc_key(), u64::MAX);
        assert_eq!(
            params.verify_range(&rfc_key(), code.as_bytes(), u64::MAX, u64::MAX),
            WindowMatch::Matched(u64::MAX)
        );
        let totp = TotpParams::new(6, 30, 0).unwrap();
        assert_eq!(totp.window(10, 1, 1).unwrap(), (0, 1));
    }

    #[test]
    fn digits_and_windows_have_bounds() {
        assert_eq!(
            OtpParams::new(5).unwrap_err().to_string(),
            "digits: must be from 6 to 10 (RFC 4226 section 5.3)"
        );
        assert!(OtpParams::new(11).is_err());
        assert!(hotp_window(0, 1001).is_err());
        assert!(TotpParams::new(6, 0, 0).is_err());
        let totp = TotpParams::new(6, 30, 100).unwrap();
        assert_eq!(
            totp.time_step(99).unwrap_err().to_string(),
            "unix_time: must not be before t0"
        );
    }
}
