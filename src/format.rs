//! The two OFP8 formats and their constants (OCP OFP8 rev 1.0, Table 1).
//!
//! | | E4M3 | E5M2 |
//! |---|---|---|
//! | exponent bias | 7 | 15 |
//! | max normal | 0x7E = 448 | 0x7B = 57344 |
//! | min normal | 2^-6 | 2^-14 |
//! | min subnormal | 2^-9 | 2^-16 |
//! | infinity | none | 0x7C / 0xFC |
//! | NaN | 0x7F / 0xFF | 0x7D-0x7F / 0xFD-0xFF |

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// An 8-bit floating point format of the OCP OFP8 specification.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// 1 sign, 4 exponent, 3 mantissa bits; no infinities, one NaN pattern per sign.
    E4M3,
    /// 1 sign, 5 exponent, 2 mantissa bits; IEEE-like, the top byte of a binary16.
    E5M2,
}

impl Format {
    /// Both formats, for tests and tables.
    pub const ALL: [Format; 2] = [Format::E4M3, Format::E5M2];

    /// Explicit mantissa (trailing significand) bits.
    pub const fn mantissa_bits(self) -> u32 {
        match self {
            Format::E4M3 => 3,
            Format::E5M2 => 2,
        }
    }

    /// Exponent bias.
    pub const fn bias(self) -> i32 {
        match self {
            Format::E4M3 => 7,
            Format::E5M2 => 15,
        }
    }

    /// Unbiased exponent of the smallest normal number (`1 - bias`).
    pub const fn min_normal_exp(self) -> i32 {
        1 - self.bias()
    }

    /// Code of the largest finite magnitude (0x7E = 448 or 0x7B = 57344).
    pub const fn max_code(self) -> u8 {
        match self {
            Format::E4M3 => 0x7E,
            Format::E5M2 => 0x7B,
        }
    }

    /// The largest finite magnitude.
    pub const fn max_normal(self) -> f64 {
        match self {
            Format::E4M3 => 448.0,
            Format::E5M2 => 57344.0,
        }
    }

    /// Largest unbiased exponent of a finite value (8 for E4M3, 15 for E5M2); `emax_elem` of OCP MX.
    pub const fn max_exp(self) -> i32 {
        match self {
            Format::E4M3 => 8,
            Format::E5M2 => 15,
        }
    }

    /// The canonical positive NaN code written by encoders (0x7F, 0x7E: the top byte of the
    /// binary16 quiet NaN 0x7E00, as ml_dtypes writes it).
    pub const fn nan_code(self) -> u8 {
        match self {
            Format::E4M3 => 0x7F,
            Format::E5M2 => 0x7E,
        }
    }

    /// Code of +infinity, if the format has one.
    pub const fn inf_code(self) -> Option<u8> {
        match self {
            Format::E4M3 => None,
            Format::E5M2 => Some(0x7C),
        }
    }

    /// The positive code a value that overflows becomes (OFP8 §5.2): the max normal when
    /// saturating, otherwise infinity (E5M2) or NaN (E4M3, which has no infinity).
    pub const fn overflow_code(self, saturate: bool) -> u8 {
        match (self, saturate) {
            (_, true) => self.max_code(),
            (Format::E4M3, false) => 0x7F,
            (Format::E5M2, false) => 0x7C,
        }
    }

    /// Whether `code` (either sign) is a NaN.
    pub const fn is_nan(self, code: u8) -> bool {
        match self {
            Format::E4M3 => code & 0x7F == 0x7F,
            Format::E5M2 => code & 0x7F > 0x7C,
        }
    }

    /// Lower-case name as used by the Python API (`"e4m3"`, `"e5m2"`).
    pub const fn name(self) -> &'static str {
        match self {
            Format::E4M3 => "e4m3",
            Format::E5M2 => "e5m2",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = Error;

    /// Accepts `e4m3`, `e4m3fn`, `float8_e4m3fn`, `f8_e4m3` (any case) and the E5M2 equivalents.
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.to_ascii_lowercase().as_str() {
            "e4m3" | "e4m3fn" | "float8_e4m3fn" | "f8_e4m3" | "f8e4m3" => Ok(Format::E4M3),
            "e5m2" | "float8_e5m2" | "f8_e5m2" | "f8e5m2" => Ok(Format::E5M2),
            _ => Err(Error::value(format!(
                "unknown FP8 format {s:?}: expected \"e4m3\" or \"e5m2\""
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_agree_with_table_1() {
        for f in Format::ALL {
            let m = f.mantissa_bits();
            let code = f.max_code();
            let e = i32::from(code >> m) - f.bias();
            let frac = 1.0 + f64::from(code & ((1 << m) - 1)) / f64::from(1u32 << m);
            assert_eq!(frac * 2f64.powi(e), f.max_normal());
            assert_eq!(e, f.max_exp());
            assert!(f.is_nan(f.nan_code()) && f.is_nan(f.nan_code() | 0x80));
            assert!(!f.is_nan(code));
        }
        assert_eq!(Format::E4M3.min_normal_exp(), -6);
        assert_eq!(Format::E5M2.min_normal_exp(), -14);
    }

    #[test]
    fn parses_names() {
        assert_eq!("E4M3".parse::<Format>().unwrap(), Format::E4M3);
        assert_eq!("float8_e5m2".parse::<Format>().unwrap(), Format::E5M2);
        assert!("e3m4".parse::<Format>().is_err());
    }
}
