//! The guest's view of its command line: space-separated `key=value` words,
//! of which it reads the `mvm.*` ones and ignores the rest (as Linux does
//! with parameters it does not know).

use core::fmt;

/// The status of a guest panic: distinct from any `mvm.exit` a test would pick
/// by accident, and the one a panicking Rust process exits with.
pub const PANIC_STATUS: u8 = 101;

pub struct Args {
    pub pvm: bool,
    pub exit_status: u8,
    pub tsc_khz: Option<u64>,
    pub test: Option<&'static [u8]>,
    /// Run the job on the job disk (`mvm.job=1`) instead of exiting.
    pub job: bool,
}

impl Args {
    pub fn parse(cmdline: &'static [u8]) -> Args {
        let mut args = Args { pvm: false, exit_status: 0, tsc_khz: None, test: None, job: false };
        for word in cmdline.split(|b| *b == b' ').filter(|w| !w.is_empty()) {
            let (key, value) = match word.iter().position(|b| *b == b'=') {
                Some(i) => (&word[..i], &word[i + 1..]),
                None => (word, &b""[..]),
            };
            match key {
                b"mvm.pvm" => args.pvm = value == b"1",
                b"mvm.exit" => match parse_u64(value).and_then(|n| u8::try_from(n).ok()) {
                    Some(status) => args.exit_status = status,
                    None => panic!("mvm.exit={}: expected a status from 0 to 255", Display(value)),
                },
                b"mvm.tsc_khz" => match parse_u64(value) {
                    Some(khz) => args.tsc_khz = Some(khz),
                    None => panic!("mvm.tsc_khz={}: expected a frequency in kHz", Display(value)),
                },
                b"mvm.test" => args.test = Some(value),
                b"mvm.job" => args.job = value == b"1",
                _ => {}
            }
        }
        args
    }
}

pub fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, d| {
        let digit = char::from(*d).to_digit(10)?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// Shows command-line bytes as text, escaping what is not printable ASCII.
pub struct Display<'a>(pub &'a [u8]);

impl fmt::Display for Display<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in self.0 {
            match b {
                b'"' | b'\\' => write!(f, "\\{}", b as char)?,
                0x20..=0x7e => write!(f, "{}", b as char)?,
                _ => write!(f, "\\x{b:02x}")?,
            }
        }
        Ok(())
    }
}
