//! The audit's tally, its report (the `--json` document) and the text tables.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};

use diesel_rwsplit::classify::{Classifier, Verdict};
use diesel_rwsplit::SwitchReason;
use serde::Serialize;

use super::input::{Format, Statement};
use super::AuditArgs;
use crate::options::DialectArg;

/// Statements with the same fingerprint and verdict.
#[derive(Debug)]
struct Group {
    fingerprint: String,
    hash: u64,
    verdict: Verdict,
    calls: u64,
    statements: u64,
    first_line: u64,
    /// Every line, for `unknown` statements only.
    lines: Vec<u64>,
}

pub(super) struct Tally<'c> {
    classifier: &'c Classifier,
    groups: HashMap<(u64, Verdict), Group>,
    statements: u64,
    calls: u64,
    /// Total and replica execution time, when every statement had one.
    time_ms: Option<(f64, f64)>,
}

impl<'c> Tally<'c> {
    pub(super) fn new(classifier: &'c Classifier) -> Self {
        Tally {
            classifier,
            groups: HashMap::new(),
            statements: 0,
            calls: 0,
            time_ms: Some((0.0, 0.0)),
        }
    }

    pub(super) fn add(&mut self, statement: &Statement<'_>) {
        let verdict = self.classifier.classify(statement.sql);
        let hash = self.classifier.fingerprint_hash(statement.sql);
        let group = self.groups.entry((hash, verdict)).or_insert_with(|| Group {
            fingerprint: self.classifier.fingerprint(statement.sql).text().to_owned(),
            hash,
            verdict,
            calls: 0,
            statements: 0,
            first_line: statement.line,
            lines: Vec::new(),
        });
        group.calls = group.calls.saturating_add(statement.calls);
        group.statements += 1;
        if verdict == Verdict::Primary(SwitchReason::Unknown) {
            group.lines.push(statement.line);
        }
        self.statements += 1;
        self.calls = self.calls.saturating_add(statement.calls);
        self.time_ms = match (self.time_ms, statement.time_ms) {
            (Some((total, replica)), Some(t)) => Some((
                total + t,
                if verdict == Verdict::Replica {
                    replica + t
                } else {
                    replica
                },
            )),
            _ => None,
        };
    }

    /// The report, for `args`' input read as `format` and classified in `dialect`.
    pub(super) fn report(self, args: &AuditArgs, format: Format, dialect: DialectArg) -> Report {
        let mut groups: Vec<Group> = self.groups.into_values().collect();
        // Most calls first; ties by input order, so the report is deterministic.
        groups.sort_by(|a, b| {
            b.calls
                .cmp(&a.calls)
                .then(a.first_line.cmp(&b.first_line))
                .then(a.hash.cmp(&b.hash))
        });
        let replica = groups.iter().filter(|g| g.verdict == Verdict::Replica);
        let replica_calls = replica.clone().fold(0u64, |n, g| n.saturating_add(g.calls));
        let replica_distinct = replica.count() as u64;
        let distinct = groups.len() as u64;
        let mut calls_by_reason = BTreeMap::new();
        let mut distinct_by_reason = BTreeMap::new();
        for group in &groups {
            if let Verdict::Primary(reason) = group.verdict {
                let calls: &mut u64 = calls_by_reason.entry(reason.as_str()).or_default();
                *calls = calls.saturating_add(group.calls);
                *distinct_by_reason.entry(reason.as_str()).or_default() += 1;
            }
        }
        let top_primary = groups
            .iter()
            .filter_map(|g| g.verdict.reason().map(|reason| (g, reason)))
            .take(args.top)
            .enumerate()
            .map(|(i, (g, reason))| TopEntry {
                rank: i + 1,
                fingerprint: g.fingerprint.clone(),
                hash: format!("{:016x}", g.hash),
                reason: reason.as_str(),
                calls: g.calls,
                share_of_calls: share(g.calls, self.calls),
                statements: g.statements,
                first_line: g.first_line,
            })
            .collect();
        let mut unknown: Vec<UnknownEntry> = groups
            .iter()
            .filter(|g| g.verdict == Verdict::Primary(SwitchReason::Unknown))
            .map(|g| UnknownEntry {
                fingerprint: g.fingerprint.clone(),
                hash: format!("{:016x}", g.hash),
                calls: g.calls,
                lines: g.lines.clone(),
            })
            .collect();
        unknown.sort_by_key(|u| u.lines.first().copied());
        Report {
            format_version: 1,
            input: args.input.display().to_string(),
            format: format.as_str(),
            dialect: dialect.as_str(),
            statements: self.statements,
            distinct_statements: distinct,
            calls: self.calls,
            replica_calls,
            primary_calls: self.calls - replica_calls.min(self.calls),
            replica_distinct_statements: replica_distinct,
            primary_distinct_statements: distinct - replica_distinct,
            replica_share_of_calls: share(replica_calls, self.calls),
            replica_share_of_distinct_statements: share(replica_distinct, distinct),
            exec_time_ms: self.time_ms.map(|(total, replica)| ExecTime {
                total,
                replica,
                replica_share: (total > 0.0).then(|| replica / total),
            }),
            calls_by_reason,
            distinct_statements_by_reason: distinct_by_reason,
            top_primary,
            unknown,
        }
    }
}

fn share(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

/// The `--json` document; field names are stable (see the module documentation).
#[derive(Debug, Serialize)]
pub(super) struct Report {
    format_version: u32,
    input: String,
    format: &'static str,
    dialect: &'static str,
    statements: u64,
    distinct_statements: u64,
    calls: u64,
    replica_calls: u64,
    primary_calls: u64,
    replica_distinct_statements: u64,
    primary_distinct_statements: u64,
    replica_share_of_calls: Option<f64>,
    replica_share_of_distinct_statements: Option<f64>,
    exec_time_ms: Option<ExecTime>,
    calls_by_reason: BTreeMap<&'static str, u64>,
    distinct_statements_by_reason: BTreeMap<&'static str, u64>,
    top_primary: Vec<TopEntry>,
    unknown: Vec<UnknownEntry>,
}

#[derive(Debug, Serialize)]
struct ExecTime {
    total: f64,
    replica: f64,
    replica_share: Option<f64>,
}

#[derive(Debug, Serialize)]
struct TopEntry {
    rank: usize,
    fingerprint: String,
    hash: String,
    reason: &'static str,
    calls: u64,
    share_of_calls: Option<f64>,
    statements: u64,
    first_line: u64,
}

#[derive(Debug, Serialize)]
struct UnknownEntry {
    fingerprint: String,
    hash: String,
    calls: u64,
    lines: Vec<u64>,
}

fn percent(share: Option<f64>) -> String {
    share.map_or_else(|| "-".to_owned(), |s| format!("{:.2}%", s * 100.0))
}

/// At most `max` characters, with `...` when cut.
fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut clipped: String = text.chars().take(max.saturating_sub(3)).collect();
    clipped.push_str("...");
    clipped
}

const STATEMENT_WIDTH: usize = 90;

pub(super) fn render(r: &Report, out: &mut impl Write) -> io::Result<()> {
    writeln!(
        out,
        "rwsplit audit of {} ({}, {} dialect)",
        r.input, r.format, r.dialect
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "statements: {} ({} distinct)   calls: {}",
        r.statements, r.distinct_statements, r.calls
    )?;
    writeln!(
        out,
        "a replica could serve {} of calls ({} of {}) and {} of distinct statements ({} of {})",
        percent(r.replica_share_of_calls),
        r.replica_calls,
        r.calls,
        percent(r.replica_share_of_distinct_statements),
        r.replica_distinct_statements,
        r.distinct_statements,
    )?;
    if let Some(time) = &r.exec_time_ms {
        writeln!(
            out,
            "execution time on replicas: {} ({:.2} of {:.2} ms)",
            percent(time.replica_share),
            time.replica,
            time.total
        )?;
    }

    writeln!(out)?;
    writeln!(out, "calls by target and reason:")?;
    writeln!(
        out,
        "  {:<22} {:>12} {:>8} {:>9}",
        "", "calls", "share", "distinct"
    )?;
    let mut rows: Vec<(&str, u64, u64)> =
        vec![("replica", r.replica_calls, r.replica_distinct_statements)];
    let mut reasons: Vec<(&str, u64, u64)> = r
        .calls_by_reason
        .iter()
        .map(|(reason, calls)| {
            let distinct = r
                .distinct_statements_by_reason
                .get(reason)
                .copied()
                .unwrap_or(0);
            (*reason, *calls, distinct)
        })
        .collect();
    reasons.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    rows.push(("primary", r.primary_calls, r.primary_distinct_statements));
    for (label, calls, distinct) in rows {
        writeln!(
            out,
            "  {label:<22} {calls:>12} {:>8} {distinct:>9}",
            percent(share(calls, r.calls))
        )?;
        if label == "primary" {
            for (reason, calls, distinct) in &reasons {
                writeln!(
                    out,
                    "    {reason:<20} {calls:>12} {:>8} {distinct:>9}",
                    percent(share(*calls, r.calls))
                )?;
            }
        }
    }

    writeln!(out)?;
    if r.top_primary.is_empty() {
        writeln!(out, "no statement needs the primary.")?;
    } else {
        writeln!(
            out,
            "top {} statements for the primary, by calls:",
            r.top_primary.len()
        )?;
        writeln!(
            out,
            "  {:>3} {:>12} {:>8}  {:<20}  {:<16}  {:>6}  statement",
            "#", "calls", "share", "reason", "hash", "line"
        )?;
        for e in &r.top_primary {
            writeln!(
                out,
                "  {:>3} {:>12} {:>8}  {:<20}  {:<16}  {:>6}  {}",
                e.rank,
                e.calls,
                percent(e.share_of_calls),
                e.reason,
                e.hash,
                e.first_line,
                clip(&e.fingerprint, STATEMENT_WIDTH)
            )?;
        }
    }

    writeln!(out)?;
    if r.unknown.is_empty() {
        writeln!(out, "unknown (could not classify): none")?;
    } else {
        let calls = r
            .unknown
            .iter()
            .fold(0u64, |n, u| n.saturating_add(u.calls));
        writeln!(
            out,
            "unknown (could not classify, so sent to the primary): {} distinct, {} calls",
            r.unknown.len(),
            calls
        )?;
        writeln!(
            out,
            "  {:>12}  {:<16}  {:<20}  statement",
            "calls", "hash", "lines"
        )?;
        for u in &r.unknown {
            const SHOWN: usize = 8;
            let mut lines: Vec<String> = u.lines.iter().take(SHOWN).map(u64::to_string).collect();
            if u.lines.len() > SHOWN {
                lines.push(format!("+{} more", u.lines.len() - SHOWN));
            }
            writeln!(
                out,
                "  {:>12}  {:<16}  {:<20}  {}",
                u.calls,
                u.hash,
                lines.join(","),
                clip(&u.fingerprint, STATEMENT_WIDTH)
            )?;
        }
    }
    Ok(())
}
