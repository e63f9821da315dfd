//! Read-your-writes across connections: the [`CausalToken`].
//!
//! A unit of work that wrote on the primary ends with the primary's WAL position
//! (`pg_current_wal_lsn()`) in a token. A later request, on another connection or
//! another process, presents the token; a replica may serve it once its replay LSN
//! has reached the token's LSN, because it then shows everything the write did.

use std::fmt;
use std::str::FromStr;

use crate::{Error, Lsn};

/// The version prefix of the text form.
const PREFIX: &str = "rw1.";
/// Hexadecimal digits after the prefix: the whole 64-bit LSN, zero-padded.
const DIGITS: usize = 16;
/// Length of the text form.
const TEXT_LEN: usize = PREFIX.len() + DIGITS;

/// A causal-consistency token: the primary's WAL position after a unit of work that
/// wrote. Reads that present it must see that work.
///
/// # Text form
///
/// [`Display`](fmt::Display) writes `rw1.` followed by the LSN as exactly 16
/// lowercase hexadecimal digits, e.g. `rw1.00000016b374d848` for LSN `16/B374D848`:
/// 20 ASCII characters, safe unquoted in a cookie, a header or a URL query.
/// [`FromStr`] parses it back (uppercase digits are accepted too; the prefix must be
/// exactly `rw1.`, no surrounding whitespace) and returns
/// [`Error::InvalidCausalToken`] for anything else, without echoing the input. `rw1`
/// is a format version: a later format will use another prefix.
///
/// The token is not authenticated. A forged one can only name a position: too high
/// and the read waits for, or falls back to, the primary; too low and the caller
/// gets exactly the staleness it asked for.
///
/// # Across a failover
///
/// A token holds a WAL position, not a timeline. PostgreSQL numbers WAL positions
/// continuously across a promotion: the promoted standby's new timeline begins at
/// the position where it left the old one, so every member that replayed the old
/// primary up to the token holds the write, whichever timeline it is on now, and a
/// token from before a failover keeps working on the new primary and its replicas
/// (a pool built with [`nodes`](crate::SwitchablePoolBuilder::nodes) follows them).
///
/// A write lost in an asynchronous failover (acknowledged by the old primary,
/// never streamed) has a token past the fork point. No member holds that write;
/// [`get_after`](crate::SwitchablePool::get_after) waits at most its
/// `causal_wait` bound and then serves the read from the primary (counted as
/// [`CausalOutcome::Primary`](crate::CausalOutcome::Primary)), so such a token
/// cannot hang a read. Once the new primary has written past that position, members
/// that replayed it satisfy the token: the read sees everything that exists, which
/// cannot include the lost write. Synchronous replication (Patroni's
/// `synchronous_mode`) is what keeps acknowledged writes from being lost.
///
/// # Ordering
///
/// Tokens order by LSN: a later write gives a greater token, so a client holding
/// several keeps the greatest (`a.max(b)`).
///
/// ```
/// use diesel_rwsplit::{CausalToken, Lsn};
///
/// let token = CausalToken::new("16/B374D848".parse::<Lsn>().unwrap());
/// let text = token.to_string();
/// assert_eq!(text, "rw1.00000016b374d848");
/// assert_eq!(text.parse::<CausalToken>().unwrap(), token);
/// assert!(token.is_reached_by("16/B374D900".parse().unwrap()));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CausalToken {
    lsn: Lsn,
}

impl CausalToken {
    /// A token for the primary's position `lsn` (typically `pg_current_wal_lsn()`
    /// read after the write committed).
    pub const fn new(lsn: Lsn) -> Self {
        CausalToken { lsn }
    }

    /// The WAL position a replica must have replayed to serve reads for this token.
    pub const fn lsn(self) -> Lsn {
        self.lsn
    }

    /// Whether a node that has replayed up to `replayed` shows everything this
    /// token stands for.
    pub const fn is_reached_by(self, replayed: Lsn) -> bool {
        replayed.0 >= self.lsn.0
    }
}

impl From<Lsn> for CausalToken {
    fn from(lsn: Lsn) -> Self {
        CausalToken::new(lsn)
    }
}

impl fmt::Display for CausalToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{:016x}", self.lsn.0)
    }
}

impl FromStr for CausalToken {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| Error::InvalidCausalToken { reason };
        if s.is_empty() {
            return Err(invalid("empty"));
        }
        if s.len() > TEXT_LEN {
            return Err(invalid("too long"));
        }
        let Some(digits) = s.strip_prefix(PREFIX) else {
            let unknown_version = s
                .strip_prefix("rw")
                .and_then(|rest| rest.split_once('.'))
                .is_some_and(|(version, _)| {
                    !version.is_empty() && version.bytes().all(|b| b.is_ascii_digit())
                });
            return Err(invalid(if unknown_version {
                "unsupported version (expected `rw1.`)"
            } else {
                "missing the `rw1.` prefix"
            }));
        };
        if digits.len() != DIGITS {
            return Err(invalid("expected 16 hexadecimal digits after `rw1.`"));
        }
        if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid("not hexadecimal after `rw1.`"));
        }
        u64::from_str_radix(digits, 16)
            .map(|value| CausalToken::new(Lsn(value)))
            .map_err(|_| invalid("not hexadecimal after `rw1.`"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let cases = [
            (0u64, "rw1.0000000000000000"),
            (1, "rw1.0000000000000001"),
            (0x0300_0060, "rw1.0000000003000060"),
            (1 << 32, "rw1.0000000100000000"),
            ((0x16 << 32) | 0xB374_D848, "rw1.00000016b374d848"),
            (u64::MAX, "rw1.ffffffffffffffff"),
        ];
        for (value, text) in cases {
            let token = CausalToken::new(Lsn(value));
            assert_eq!(token.to_string(), text);
            assert_eq!(token.to_string().len(), TEXT_LEN);
            let parsed: CausalToken = text.parse().unwrap();
            assert_eq!(parsed, token, "{text}");
            assert_eq!(parsed.lsn(), Lsn(value));
        }
    }

    #[test]
    fn accepts_uppercase_digits() {
        let token: CausalToken = "rw1.00000016B374D848".parse().unwrap();
        assert_eq!(token.lsn(), "16/B374D848".parse().unwrap());
    }

    #[test]
    fn rejects_every_malformed_shape() {
        let long = format!("rw1.{}", "0".repeat(10_000));
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            (&long, "too long"),
            ("rw1.00000000000000000", "too long"),
            ("rw1.", "expected 16 hexadecimal digits"),
            ("rw1.0", "expected 16 hexadecimal digits"),
            ("rw1.000000000000000", "expected 16 hexadecimal digits"),
            ("rw1.000000000000000g", "not hexadecimal"),
            ("rw1.+000000000000000", "not hexadecimal"),
            ("rw1.-000000000000001", "not hexadecimal"),
            ("rw1. 000000000000000", "not hexadecimal"),
            ("rw1.00000000000000é", "not hexadecimal"),
            ("rw1.0000_00000000000", "not hexadecimal"),
            ("rw2.0000000000000000", "unsupported version"),
            ("rw10.000000000000000", "unsupported version"),
            ("RW1.0000000000000000", "missing the `rw1.` prefix"),
            ("rw1-0000000000000000", "missing the `rw1.` prefix"),
            ("rwx.0000000000000000", "missing the `rw1.` prefix"),
            ("rw.00000000000000000", "missing the `rw1.` prefix"),
            ("0000000000000000", "missing the `rw1.` prefix"),
            ("16/B374D848", "missing the `rw1.` prefix"),
            (" rw1.000000000000000", "missing the `rw1.` prefix"),
            ("rw1.000000000000000 ", "not hexadecimal"),
        ];
        for (text, expected) in cases {
            match text.parse::<CausalToken>() {
                Err(Error::InvalidCausalToken { reason }) => {
                    assert!(
                        reason.contains(expected),
                        "{text:?}: reason {reason:?}, expected {expected:?}"
                    );
                }
                other => panic!("{text:?}: expected InvalidCausalToken, got {other:?}"),
            }
        }
    }

    #[test]
    fn error_message_does_not_echo_the_input() {
        let secret = format!("rw1.{}", "s3cr3t".repeat(100));
        let error = secret.parse::<CausalToken>().unwrap_err();
        let message = error.to_string();
        assert!(message.starts_with("invalid causal token"), "{message}");
        assert!(!message.contains("s3cr3t"), "{message}");
    }

    #[test]
    fn orders_by_lsn() {
        let tokens = [0u64, 1, 0xFFFF_FFFF, 1 << 32, (1 << 32) + 1, u64::MAX]
            .map(|v| CausalToken::new(Lsn(v)));
        for pair in tokens.windows(2) {
            assert!(pair[0] < pair[1], "{} < {}", pair[0], pair[1]);
            assert_eq!(pair[0].max(pair[1]), pair[1]);
            // The text form sorts the same way (fixed width).
            assert!(pair[0].to_string() < pair[1].to_string());
        }
    }

    #[test]
    fn reached_by_its_own_position_and_later() {
        let token = CausalToken::new(Lsn(1000));
        for (replayed, reached) in [(0u64, false), (999, false), (1000, true), (1001, true)] {
            assert_eq!(token.is_reached_by(Lsn(replayed)), reached, "{replayed}");
        }
        assert_eq!(CausalToken::from(Lsn(7)), CausalToken::new(Lsn(7)));
    }
}
