//! PostgreSQL write-ahead-log positions.

use std::fmt;
use std::str::FromStr;

/// A PostgreSQL log sequence number: a 64-bit byte position in the write-ahead log.
///
/// PostgreSQL prints it as two hexadecimal halves, `X/Y`, meaning `(X << 32) | Y`.
/// Arithmetic is done on the whole 64 bits, so lag in bytes stays exact across the
/// 4 GiB boundary where the high half changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Bytes by which `self` is ahead of `earlier` (zero when it is not ahead).
    pub const fn bytes_ahead_of(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// The text was not a PostgreSQL LSN of the form `X/Y` (hexadecimal halves).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a PostgreSQL LSN (expected hexadecimal `X/Y`)")]
pub struct ParseLsnError;

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (high, low) = s.split_once('/').ok_or(ParseLsnError)?;
        let parse_half = |half: &str| {
            if half.is_empty() || half.len() > 8 {
                return Err(ParseLsnError);
            }
            u32::from_str_radix(half, 16).map_err(|_| ParseLsnError)
        };
        let high = parse_half(high)?;
        let low = parse_half(low)?;
        Ok(Lsn((u64::from(high) << 32) | u64::from(low)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_like_postgres() {
        let cases = [
            ("0/0", 0u64),
            ("0/3000060", 0x0300_0060),
            ("1/0", 1 << 32),
            ("16/B374D848", (0x16 << 32) | 0xB374_D848),
            ("FFFFFFFF/FFFFFFFF", u64::MAX),
        ];
        for (text, value) in cases {
            let lsn: Lsn = text.parse().unwrap();
            assert_eq!(lsn, Lsn(value), "{text}");
            assert_eq!(lsn.to_string(), text);
        }
    }

    #[test]
    fn rejects_malformed_text() {
        for bad in [
            "",
            "0",
            "/",
            "0/",
            "/0",
            "G/0",
            "0/1/2",
            "123456789/0",
            " 0/0",
        ] {
            assert_eq!(bad.parse::<Lsn>(), Err(ParseLsnError), "{bad:?}");
        }
    }

    #[test]
    fn lag_is_exact_across_the_high_half() {
        let replica: Lsn = "0/FFFFFF00".parse().unwrap();
        let primary: Lsn = "1/00000100".parse().unwrap();
        assert_eq!(primary.bytes_ahead_of(replica), 0x200);
        assert_eq!(replica.bytes_ahead_of(primary), 0);
    }
}
