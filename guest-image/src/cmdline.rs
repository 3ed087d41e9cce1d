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
    pub test: Option<&'static [u8]>,
}

impl Args {
    pub fn parse(cmdline: &'static [u8]) -> Args {
        let mut args = Args { pvm: false, exit_status: 0, test: None };
        for word in cmdline.split(|b| *b == b' ').filter(|w| !w.is_empty()) {
            let (key, value) = match word.iter().position(|b| *b == b'=') {
                Some(i) => (&word[..i], &word[i + 1..]),
                None => (word, &b""[..]),
            };
            match key {
                b"mvm.pvm" => args.pvm = value == b"1",
                b"mvm.exit" => match parse_u8(value) {
                    Some(status) => args.exit_status = status,
                    None => panic!("mvm.exit={}: expected a status from 0 to 255", Display(value)),
                },
                b"mvm.test" => args.test = Some(value),
                _ => {}
            }
        }
        args
    }
}

fn parse_u8(digits: &[u8]) -> Option<u8> {
    if digits.is_empty() || digits.len() > 3 {
        return None;
    }
    let mut n: u16 = 0;
    for d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u16::from(d - b'0');
    }
    u8::try_from(n).ok()
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
