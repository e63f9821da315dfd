//! MySQL and MariaDB replication positions (GTIDs), as text and as numbers.
//!
//! MariaDB: a GTID position is a list of `domain-server-sequence` triples, one per
//! replication domain (`@@gtid_binlog_pos` on a primary, `@@gtid_slave_pos` on a
//! replica), e.g. `0-1-42,1-2-7`. Sequence numbers grow within a domain whichever
//! server wrote them, so a position is reached when every domain's sequence is.
//!
//! MySQL: a GTID set (`@@gtid_executed`) names, per source server UUID (and, from
//! 8.3, tag), the intervals of transactions applied, e.g.
//! `3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5:7`. Whether a set is reached is asked
//! of the server (`WAIT_FOR_EXECUTED_GTID_SET`).
//!
//! The lag monitor keeps one number per node: the sequence numbers summed over
//! domains (MariaDB) or the count of transactions in the set (MySQL). Both only
//! grow, and a replica's is below its primary's by the transactions it has yet to
//! apply (on MariaDB exactly so within one domain).

use std::cmp::Ordering;
use std::fmt;

/// The longest GTID text accepted (a token is read from untrusted input).
pub(crate) const MAX_GTID_TEXT: usize = 4096;

/// One MariaDB replication domain's last transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct MariaGtid {
    pub(crate) domain: u32,
    pub(crate) server: u32,
    pub(crate) sequence: u64,
}

/// A MariaDB GTID position: at most one entry per domain, sorted by domain.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub(crate) struct MariaPosition(pub(crate) Vec<MariaGtid>);

/// Why GTID text was refused (never echoes the text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GtidError(pub(crate) &'static str);

impl MariaPosition {
    /// Parses `@@gtid_binlog_pos` / `@@gtid_slave_pos` text (empty: no transaction yet).
    pub(crate) fn parse(text: &str) -> Result<Self, GtidError> {
        if text.len() > MAX_GTID_TEXT {
            return Err(GtidError("too long"));
        }
        let mut entries: Vec<MariaGtid> = Vec::new();
        if text.trim().is_empty() {
            return Ok(MariaPosition(entries));
        }
        for part in text.split(',') {
            let mut fields = part.trim().split('-');
            let (Some(domain), Some(server), Some(sequence), None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return Err(GtidError(
                    "expected domain-server-sequence triples separated by commas",
                ));
            };
            let number = |field: &str| {
                if field.is_empty() || !field.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(GtidError("a GTID field is not a decimal number"));
                }
                field
                    .parse::<u64>()
                    .map_err(|_| GtidError("a GTID field is out of range"))
            };
            let domain = u32::try_from(number(domain)?)
                .map_err(|_| GtidError("a GTID field is out of range"))?;
            let server = u32::try_from(number(server)?)
                .map_err(|_| GtidError("a GTID field is out of range"))?;
            let sequence = number(sequence)?;
            if entries.iter().any(|e| e.domain == domain) {
                return Err(GtidError("a replication domain appears twice"));
            }
            entries.push(MariaGtid {
                domain,
                server,
                sequence,
            });
        }
        entries.sort_by_key(|e| e.domain);
        Ok(MariaPosition(entries))
    }

    /// The sequence numbers summed over domains (the monitor's one number).
    #[cfg_attr(not(feature = "mysql"), allow(dead_code))]
    pub(crate) fn total(&self) -> u64 {
        self.0
            .iter()
            .fold(0u64, |sum, e| sum.saturating_add(e.sequence))
    }

    fn sequence_of(&self, domain: u32) -> Option<u64> {
        self.0
            .iter()
            .find(|e| e.domain == domain)
            .map(|e| e.sequence)
    }

    /// Whether a node at `applied` has every transaction this position names.
    pub(crate) fn is_reached_by(&self, applied: &MariaPosition) -> bool {
        self.0.iter().all(|wanted| {
            applied
                .sequence_of(wanted.domain)
                .is_some_and(|seq| seq >= wanted.sequence)
        })
    }

    /// Domain by domain: `Less` when `other` reaches `self` and not the reverse.
    pub(crate) fn partial_cmp(&self, other: &MariaPosition) -> Option<Ordering> {
        match (other.is_reached_by(self), self.is_reached_by(other)) {
            (true, true) => Some(Ordering::Equal),
            (true, false) => Some(Ordering::Greater),
            (false, true) => Some(Ordering::Less),
            (false, false) => None,
        }
    }

    /// Every domain at the later of the two sequences: a position reached only
    /// once both are.
    pub(crate) fn merge(&self, other: &MariaPosition) -> MariaPosition {
        let mut merged = self.0.clone();
        for theirs in &other.0 {
            match merged.iter_mut().find(|e| e.domain == theirs.domain) {
                Some(ours) if ours.sequence >= theirs.sequence => {}
                Some(ours) => *ours = *theirs,
                None => merged.push(*theirs),
            }
        }
        merged.sort_by_key(|e| e.domain);
        MariaPosition(merged)
    }
}

impl fmt::Display for MariaPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}-{}-{}", e.domain, e.server, e.sequence)?;
        }
        Ok(())
    }
}

/// Checks MySQL GTID set text (`@@gtid_executed`) and returns it without
/// whitespace, with the number of transactions it names.
pub(crate) fn mysql_gtid_set(text: &str) -> Result<(String, u64), GtidError> {
    if text.len() > MAX_GTID_TEXT {
        return Err(GtidError("too long"));
    }
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    let mut count = 0u64;
    if compact.is_empty() {
        return Ok((compact, 0));
    }
    for member in compact.split(',') {
        let mut parts = member.split(':');
        let uuid = parts.next().unwrap_or_default();
        let hex_groups: Vec<&str> = uuid.split('-').collect();
        let uuid_ok = hex_groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
            && hex_groups
                .iter()
                .all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()));
        if !uuid_ok {
            return Err(GtidError("expected a server UUID before each `:`"));
        }
        let mut intervals = 0;
        for part in parts {
            // MySQL 8.3+ tags: a letter or `_`, then up to 31 letters, digits or `_`.
            if part
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            {
                if part.len() > 32 || !part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return Err(GtidError("a GTID tag is malformed"));
                }
                continue;
            }
            let (start, end) = part.split_once('-').unwrap_or((part, part));
            let number = |s: &str| {
                if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(GtidError("a GTID interval is not `n` or `n-m`"));
                }
                s.parse::<u64>()
                    .map_err(|_| GtidError("a GTID interval is out of range"))
            };
            let (start, end) = (number(start)?, number(end)?);
            if start == 0 || end < start {
                return Err(GtidError("a GTID interval is empty or starts at 0"));
            }
            count = count.saturating_add(end - start + 1);
            intervals += 1;
        }
        if intervals == 0 {
            return Err(GtidError("a server UUID has no interval"));
        }
    }
    Ok((compact, count))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(text: &str) -> MariaPosition {
        MariaPosition::parse(text).unwrap()
    }

    #[test]
    fn mariadb_positions_parse_print_and_sum() {
        let cases: &[(&str, &str, u64)] = &[
            ("", "", 0),
            ("0-1-42", "0-1-42", 42),
            ("1-2-7,0-1-42", "0-1-42,1-2-7", 49),
            (" 0-1-1 , 5-3-10 ", "0-1-1,5-3-10", 11),
            (
                "0-4294967295-18446744073709551615",
                "0-4294967295-18446744073709551615",
                u64::MAX,
            ),
        ];
        for (text, printed, total) in cases {
            let p = pos(text);
            assert_eq!(p.to_string(), *printed, "{text:?}");
            assert_eq!(p.total(), *total, "{text:?}");
        }
    }

    #[test]
    fn mariadb_positions_refuse_malformed_text() {
        let long = "0-1-1,".repeat(1000);
        let cases = [
            "0-1",
            "0-1-2-3",
            "a-1-2",
            "0-1-",
            "0--1",
            "-0-1-2",
            "0-1-2,",
            "0-1-2,0-3-4",
            "0-4294967296-1",
            "0-1-18446744073709551616",
            "0-1-+2",
            &long,
        ];
        for text in cases {
            assert!(MariaPosition::parse(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn mariadb_reach_is_domain_by_domain() {
        let cases: &[(&str, &str, bool)] = &[
            ("0-1-42", "0-1-42", true),
            ("0-1-42", "0-1-41", false),
            ("0-1-42", "0-2-43", true),
            ("0-1-42", "", false),
            ("", "", true),
            ("", "0-1-1", true),
            // A larger sum in another domain does not reach domain 0.
            ("0-1-42", "0-1-40,1-1-100", false),
            ("0-1-42,1-1-5", "0-1-42", false),
            ("0-1-42,1-1-5", "0-1-50,1-2-5", true),
        ];
        for (wanted, applied, reached) in cases {
            assert_eq!(
                pos(wanted).is_reached_by(&pos(applied)),
                *reached,
                "{wanted} by {applied}"
            );
        }
    }

    #[test]
    fn mariadb_order_and_merge() {
        use std::cmp::Ordering::*;
        let cases: &[(&str, &str, Option<Ordering>, &str)] = &[
            ("0-1-1", "0-1-2", Some(Less), "0-1-2"),
            ("0-1-2", "0-1-2", Some(Equal), "0-1-2"),
            ("0-1-3", "0-1-2", Some(Greater), "0-1-3"),
            ("0-1-3,1-1-1", "0-1-2,1-1-5", None, "0-1-3,1-1-5"),
            ("0-1-3", "1-1-1", None, "0-1-3,1-1-1"),
        ];
        for (a, b, order, merged) in cases {
            assert_eq!(pos(a).partial_cmp(&pos(b)), *order, "{a} vs {b}");
            assert_eq!(pos(a).merge(&pos(b)).to_string(), *merged, "{a} + {b}");
        }
    }

    #[test]
    fn mysql_sets_are_checked_and_counted() {
        let uuid = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
        let other = "4E11FA47-71CA-11E1-9E33-C80AA9429562";
        let ok: Vec<(String, u64)> = vec![
            (String::new(), 0),
            (format!("{uuid}:1-5"), 5),
            (format!("{uuid}:1-5:7"), 6),
            (format!("{uuid}:1-5,\n{other}:1-100"), 105),
            (format!("{uuid}:tag_1:1-3"), 3),
        ];
        for (text, count) in ok {
            let (compact, counted) = mysql_gtid_set(&text).unwrap();
            assert_eq!(counted, count, "{text:?}");
            assert!(!compact.contains(char::is_whitespace));
        }
        let bad = [
            uuid.to_owned(),
            format!("{uuid}:0-5"),
            format!("{uuid}:5-1"),
            format!("{uuid}:x"),
            format!("{uuid}:1-"),
            "3e11fa47:1-5".to_owned(),
            format!("{uuid}:1-5,"),
            format!("{uuid}:1Tag:1"),
        ];
        for text in bad {
            assert!(mysql_gtid_set(&text).is_err(), "{text:?}");
        }
    }
}
