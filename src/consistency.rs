//! Read-your-writes across connections: the [`CausalToken`].
//!
//! A unit of work that wrote on the primary ends with the primary's position in a
//! token: its WAL position (`pg_current_wal_lsn()`) on PostgreSQL, its GTID
//! position on MariaDB (`@@gtid_binlog_pos`) and MySQL (`@@gtid_executed`). A later
//! request, on another connection or another process, presents the token; a
//! replica may serve it once it has applied that position, because it then shows
//! everything the write did.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::gtid::{self, MariaPosition};
use crate::{Error, Lsn};

/// The text prefix of a MariaDB GTID token.
const MARIADB_PREFIX: &str = "rw1m.";
/// The text prefix of a MySQL GTID-set token.
const MYSQL_PREFIX: &str = "rw1y.";

/// The version prefix of the text form.
const PREFIX: &str = "rw1.";
/// Hexadecimal digits after the prefix: the whole 64-bit LSN, zero-padded.
const DIGITS: usize = 16;
/// Length of the text form.
const TEXT_LEN: usize = PREFIX.len() + DIGITS;

/// A causal-consistency token: the primary's position after a unit of work that
/// wrote. Reads that present it must see that work.
///
/// # Text form
///
/// [`Display`](fmt::Display) writes a version prefix and the position, in ASCII
/// characters that are safe unquoted in a cookie, a header or a URL query:
///
/// | backend | form | example |
/// |---|---|---|
/// | PostgreSQL | `rw1.` and the LSN as exactly 16 lowercase hexadecimal digits (20 characters) | `rw1.00000016b374d848` for LSN `16/B374D848` |
/// | MariaDB | `rw1m.` and the GTID position, `domain-server-sequence` per domain, by domain | `rw1m.0-1-42,1-2-7` |
/// | MySQL | `rw1y.` and the GTID set without whitespace | `rw1y.3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5` |
///
/// [`FromStr`] parses them back (uppercase hexadecimal digits are accepted too; no
/// surrounding whitespace; GTID forms at most 4096 characters) and returns
/// [`Error::InvalidCausalToken`] for anything else, without echoing the input.
/// `rw1` is a format version: a later format will use another prefix.
///
/// The token is not authenticated. A forged one can only name a position: too high
/// and the read waits for, or falls back to, the primary; too low and the caller
/// gets exactly the staleness it asked for.
///
/// # Across a failover
///
/// A PostgreSQL token holds a WAL position, not a timeline. PostgreSQL numbers WAL
/// positions continuously across a promotion: the promoted standby's new timeline
/// begins at the position where it left the old one, so every member that replayed
/// the old primary up to the token holds the write, whichever timeline it is on
/// now, and a token from before a failover keeps working on the new primary and its
/// replicas (a pool built with [`nodes`](crate::SwitchablePoolBuilder::nodes)
/// follows them). MariaDB GTID sequence numbers likewise continue within a domain
/// on the promoted server; MySQL GTID sets name every transaction by its origin.
///
/// A write lost in an asynchronous failover (acknowledged by the old primary,
/// never streamed) has a token past the fork point. No member holds that write;
/// [`get_after`](crate::SwitchablePool::get_after) waits at most its
/// `causal_wait` bound and then serves the read from the primary (counted as
/// [`CausalOutcome::Primary`](crate::CausalOutcome::Primary)), so such a token
/// cannot hang a read. Once the new primary has written past that position, members
/// that replayed it satisfy a PostgreSQL or MariaDB token: the read sees everything
/// that exists, which cannot include the lost write. Synchronous replication
/// (Patroni's `synchronous_mode`, MySQL semi-synchronous replication) is what keeps
/// acknowledged writes from being lost.
///
/// # Ordering
///
/// PostgreSQL tokens order by LSN: a later write gives a greater token, so a client
/// holding several keeps the greatest (`a.max(b)`). GTID tokens are only partially
/// ordered (two domains may each be ahead in one): keep both, or
/// [`merge`](Self::merge) them.
///
/// ```
/// use diesel_rwsplit::{CausalToken, Lsn};
///
/// let token = CausalToken::new("16/B374D848".parse::<Lsn>().unwrap());
/// let text = token.to_string();
/// assert_eq!(text, "rw1.00000016b374d848");
/// assert_eq!(text.parse::<CausalToken>().unwrap(), token);
/// assert!(token.is_reached_by("16/B374D900".parse().unwrap()));
///
/// let gtid = CausalToken::mariadb_gtid("0-1-42").unwrap();
/// assert_eq!(gtid.to_string(), "rw1m.0-1-42");
/// assert_eq!(gtid.gtid().as_deref(), Some("0-1-42"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CausalToken {
    position: Position,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Position {
    Wal(Lsn),
    MariaGtid(Arc<MariaPosition>),
    /// Whitespace-free text and the number of transactions it names.
    MysqlGtid(Arc<str>, u64),
}

impl CausalToken {
    /// A token for the PostgreSQL primary's position `lsn` (typically
    /// `pg_current_wal_lsn()` read after the write committed).
    pub const fn new(lsn: Lsn) -> Self {
        CausalToken {
            position: Position::Wal(lsn),
        }
    }

    /// A token for a MariaDB primary's GTID position (`@@gtid_binlog_pos` read after
    /// the write committed), e.g. `0-1-42,1-2-7`. [`Error::InvalidCausalToken`] if the
    /// text is not one.
    pub fn mariadb_gtid(position: &str) -> Result<Self, Error> {
        let position = MariaPosition::parse(position)
            .map_err(|e| Error::InvalidCausalToken { reason: e.0 })?;
        Ok(CausalToken {
            position: Position::MariaGtid(Arc::new(position)),
        })
    }

    /// A token for a MySQL primary's GTID set (`@@gtid_executed` read after the write
    /// committed). [`Error::InvalidCausalToken`] if the text is not one.
    pub fn mysql_gtid_set(set: &str) -> Result<Self, Error> {
        let (set, count) =
            gtid::mysql_gtid_set(set).map_err(|e| Error::InvalidCausalToken { reason: e.0 })?;
        Ok(CausalToken {
            position: Position::MysqlGtid(Arc::from(set), count),
        })
    }

    /// The WAL position a PostgreSQL replica must have replayed to serve reads for
    /// this token; `None` for a GTID token.
    pub fn lsn(&self) -> Option<Lsn> {
        match self.position {
            Position::Wal(lsn) => Some(lsn),
            _ => None,
        }
    }

    /// The GTID position (MariaDB) or set (MySQL) a replica must have applied;
    /// `None` for a PostgreSQL token.
    pub fn gtid(&self) -> Option<String> {
        match &self.position {
            Position::Wal(_) => None,
            Position::MariaGtid(position) => Some(position.to_string()),
            Position::MysqlGtid(set, _) => Some(set.to_string()),
        }
    }

    /// Whether a PostgreSQL node that has replayed up to `replayed` shows everything
    /// this token stands for. Always `false` for a GTID token: one number cannot
    /// tell whether every domain or source is reached, so replicas are asked.
    pub fn is_reached_by(&self, replayed: Lsn) -> bool {
        match self.position {
            Position::Wal(lsn) => replayed.0 >= lsn.0,
            _ => false,
        }
    }

    /// A token reached only once both are: the later LSN, or each MariaDB domain at
    /// its later sequence. `None` for tokens of different backends, and for two
    /// different MySQL GTID sets (hand both to the reader instead).
    pub fn merge(&self, other: &CausalToken) -> Option<CausalToken> {
        let position = match (&self.position, &other.position) {
            (Position::Wal(a), Position::Wal(b)) => Position::Wal(*a.max(b)),
            (Position::MariaGtid(a), Position::MariaGtid(b)) => {
                Position::MariaGtid(Arc::new(a.merge(b)))
            }
            (Position::MysqlGtid(a, _), Position::MysqlGtid(b, _)) if a == b => {
                self.position.clone()
            }
            _ => return None,
        };
        Some(CausalToken { position })
    }

    /// The MariaDB position, for the backend's replica check.
    #[cfg_attr(not(feature = "mysql"), allow(dead_code))]
    pub(crate) fn maria_position(&self) -> Option<&MariaPosition> {
        match &self.position {
            Position::MariaGtid(position) => Some(position),
            _ => None,
        }
    }

    /// The MySQL GTID set text, for the backend's replica check.
    #[cfg_attr(not(feature = "mysql"), allow(dead_code))]
    pub(crate) fn mysql_set(&self) -> Option<&str> {
        match &self.position {
            Position::MysqlGtid(set, _) => Some(set),
            _ => None,
        }
    }
}

impl PartialOrd for CausalToken {
    /// PostgreSQL tokens by LSN; MariaDB tokens domain by domain (`None` when each
    /// is ahead in some domain); MySQL tokens only when equal; tokens of different
    /// backends not at all.
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        match (&self.position, &other.position) {
            (Position::Wal(a), Position::Wal(b)) => Some(a.cmp(b)),
            (Position::MariaGtid(a), Position::MariaGtid(b)) => a.partial_cmp(b),
            (Position::MysqlGtid(a, _), Position::MysqlGtid(b, _)) if a == b => {
                Some(Ordering::Equal)
            }
            _ => None,
        }
    }
}

impl From<Lsn> for CausalToken {
    fn from(lsn: Lsn) -> Self {
        CausalToken::new(lsn)
    }
}

impl fmt::Display for CausalToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.position {
            Position::Wal(lsn) => write!(f, "{PREFIX}{:016x}", lsn.0),
            Position::MariaGtid(position) => write!(f, "{MARIADB_PREFIX}{position}"),
            Position::MysqlGtid(set, _) => write!(f, "{MYSQL_PREFIX}{set}"),
        }
    }
}

impl FromStr for CausalToken {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| Error::InvalidCausalToken { reason };
        if s.is_empty() {
            return Err(invalid("empty"));
        }
        if s.len() > gtid::MAX_GTID_TEXT + MARIADB_PREFIX.len() {
            return Err(invalid("too long"));
        }
        if let Some(position) = s.strip_prefix(MARIADB_PREFIX) {
            if position.contains(char::is_whitespace) {
                return Err(invalid("whitespace in the GTID position"));
            }
            return CausalToken::mariadb_gtid(position);
        }
        if let Some(set) = s.strip_prefix(MYSQL_PREFIX) {
            if set.contains(char::is_whitespace) {
                return Err(invalid("whitespace in the GTID set"));
            }
            return CausalToken::mysql_gtid_set(set);
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
            assert_eq!(parsed.lsn(), Some(Lsn(value)));
        }
    }

    #[test]
    fn accepts_uppercase_digits() {
        let token: CausalToken = "rw1.00000016B374D848".parse().unwrap();
        assert_eq!(token.lsn(), Some("16/B374D848".parse().unwrap()));
    }

    #[test]
    fn rejects_every_malformed_shape() {
        let long = format!("rw1.{}", "0".repeat(10_000));
        let long_gtid = format!("rw1m.{}", "0-1-1,".repeat(1000));
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            (&long, "too long"),
            (&long_gtid, "too long"),
            ("rw1m.0-1", "domain-server-sequence"),
            ("rw1m.0-1-2 ", "whitespace"),
            ("rw1m.0-1-x", "not a decimal number"),
            ("rw1y.3e11fa47:1-5", "server UUID"),
            ("rw1y.3e11fa47-71ca-11e1-9e33-c80aa9429562:0", "starts at 0"),
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
            assert_eq!(pair[0].merge(&pair[1]).as_ref(), Some(&pair[1]));
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

    #[test]
    fn gtid_tokens_round_trip_and_never_match_a_wal_position() {
        let cases = [
            ("rw1m.0-1-42", Some("0-1-42")),
            ("rw1m.1-2-7,0-1-42", Some("0-1-42,1-2-7")),
            ("rw1m.", Some("")),
            (
                "rw1y.3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5:7",
                Some("3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5:7"),
            ),
        ];
        for (text, gtid) in cases {
            let token: CausalToken = text.parse().unwrap();
            assert_eq!(token.gtid().as_deref(), gtid, "{text}");
            assert_eq!(token.lsn(), None);
            assert!(!token.is_reached_by(Lsn(u64::MAX)));
            let again: CausalToken = token.to_string().parse().unwrap();
            assert_eq!(again, token);
        }
        let wal = CausalToken::new(Lsn(5));
        let maria = CausalToken::mariadb_gtid("0-1-5").unwrap();
        assert_eq!(wal.partial_cmp(&maria), None);
        assert_eq!(wal.merge(&maria), None);
        let later = CausalToken::mariadb_gtid("0-1-6,1-1-1").unwrap();
        assert!(maria < later);
        assert_eq!(maria.merge(&later), Some(later.clone()));
    }
}
