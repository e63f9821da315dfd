//! MySQL and MariaDB inputs: a `performance_schema.events_statements_summary_by_digest`
//! export (CSV, or the tab-separated output of `mariadb --batch`) and a general query
//! log written to a file.
//!
//! Formats, as the servers write them (MariaDB 10.11 checked on a real server by
//! `tests/cli_audit_mysql.rs`; MySQL 8 from its `sql/log.cc`, `mysql` client and
//! reference manual, as MySQL 8 is not installed here):
//!
//! * `mariadb --batch` / `mysql --batch`: a header line of column names, then one line
//!   per row; fields are separated by tabs; NULL is printed `NULL`; inside a value a
//!   NUL, tab, newline and backslash are printed `\0`, `\t`, `\n` and `\\`.
//! * General log, MariaDB (and MySQL before 5.7): `YYMMDD H:MM:SS<TAB>`, or two tabs
//!   when the second has not changed since the previous entry, then the connection id
//!   right-aligned in 6 columns, a space, the command, a tab and its argument:
//!   `241204  1:02:03\t    12 Query\tSELECT 1`, `\t\t    12 Query\tSELECT 2`.
//! * General log, MySQL 5.7 and 8: an ISO 8601 time (`log_timestamps = UTC`:
//!   `2024-12-04T01:02:03.123456Z`, `SYSTEM`: `...+01:00`), a tab, the id in 5 columns,
//!   a space, the command, a tab, the argument.
//! * When it opens the log (at start-up, `SET GLOBAL general_log = 1`, `FLUSH LOGS`) the
//!   server writes three lines: `/usr/sbin/mariadbd, Version: ... started with:`,
//!   `Tcp port: 3306  Unix socket: ...` (`TCP Port: 3306, Named Pipe: ...` on Windows)
//!   and `Time Id Command Argument` (spaced with tabs by MariaDB, spaces by MySQL).

use std::borrow::Cow;
use std::io::BufRead;
use std::sync::OnceLock;

use regex::Regex;

use super::{
    column, count, describe_columns, missing, next_row, read_entries, read_header, Format,
    InputError, Lines, LogFormat, LogLine, Records, Statement,
};

// ---------------------------------------------------------------------------------------
// performance_schema digest export

/// A reader for what `mariadb --batch` (`-B`) prints: one record per line, fields
/// separated by tabs, `\0`, `\t`, `\n` and `\\` inside a value for a NUL, tab, newline
/// and backslash (any other backslash stays as it is, as `--raw` prints it). Empty lines
/// are skipped.
pub(super) struct TsvReader<R> {
    lines: Lines<R>,
}

impl<R: BufRead> TsvReader<R> {
    pub(super) fn new(input: R) -> Self {
        TsvReader {
            lines: Lines::new(input),
        }
    }
}

impl<R: BufRead> Records for TsvReader<R> {
    fn record(&mut self, fields: &mut Vec<String>) -> Result<Option<u64>, InputError> {
        fields.clear();
        while let Some((line, text)) = self.lines.next_str()? {
            if !text.is_empty() {
                fields.extend(text.split('\t').map(unescape));
                return Ok(Some(line));
            }
        }
        Ok(None)
    }
}

/// Undo `mariadb --batch`'s escaping of one field.
fn unescape(field: &str) -> String {
    if !field.contains('\\') {
        return field.to_owned();
    }
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('0') => out.push('\0'),
            Some('\\') => out.push('\\'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// A NULL as the exports write it: `NULL` (`mariadb --batch`, most CSV exports), `\N`
/// (`SELECT ... INTO OUTFILE`), or nothing (CSV exports that write NULL as an empty
/// field).
fn is_null(field: &str) -> bool {
    matches!(field.trim(), "" | "NULL" | "\\N")
}

/// Read a digest export: `DIGEST_TEXT` (the statement) and `COUNT_STAR` (its calls)
/// are required, `SUM_TIMER_WAIT` (picoseconds) gives the execution time; names are
/// matched without regard to case, in any order; other columns are ignored. Rows with
/// a NULL `DIGEST_TEXT` (statements that found the digest table full) are skipped, with
/// a warning.
pub(super) fn read_digest(
    mut reader: impl Records,
    format: Format,
    mut each: impl FnMut(Statement<'_>),
) -> Result<Vec<String>, InputError> {
    let mut fields = Vec::new();
    let (header_line, names) = read_header(&mut reader, &mut fields)?;
    let text = column(&names, &["digest_text"]);
    let calls = column(&names, &["count_star"]);
    let (Some(text), Some(calls)) = (text, calls) else {
        // One name may be a whole header separated by the other format's separator.
        let (other, separator) = match format {
            Format::DigestTsv => (Format::DigestCsv, ','),
            _ => (Format::DigestTsv, '\t'),
        };
        let resplit: Vec<String> = match names.as_slice() {
            [one] if one.contains(separator) => {
                one.split(separator).map(|n| n.trim().to_owned()).collect()
            }
            _ => names.clone(),
        };
        // The names as a comma-separated (pg_stat_statements) header would give them.
        let comma_names = if format == Format::DigestTsv {
            &resplit
        } else {
            &names
        };
        let hint = if resplit.len() > names.len() && column(&resplit, &["digest_text"]).is_some() {
            format!(
                " (the header is separated by {}: pass --format {})",
                if separator == ',' { "commas" } else { "tabs" },
                other.as_str()
            )
        } else if column(comma_names, &["query"]).is_some() {
            " (this header is a pg_stat_statements export's: pass --format csv)".to_owned()
        } else {
            " (was the header row left out, as `mariadb --skip-column-names` does?)".to_owned()
        };
        return Err(InputError::at(
            header_line,
            format!(
                "the header has no `{}` column (it has: {}); expected a performance_schema.events_statements_summary_by_digest export with a header row and at least `DIGEST_TEXT` and `COUNT_STAR`{hint}",
                missing(&[("DIGEST_TEXT", text), ("COUNT_STAR", calls)]),
                describe_columns(&names),
            ),
        ));
    };
    let time = column(&names, &["sum_timer_wait"]);
    let width = fields.len();
    let (mut rows, mut null_rows, mut null_calls) = (0u64, 0u64, 0u64);
    while let Some(line) = next_row(&mut reader, &mut fields, width, "bad record")? {
        let calls = count(&fields[calls], &names[calls], line)?;
        if is_null(&fields[text]) {
            null_rows += 1;
            null_calls = null_calls.saturating_add(calls);
            continue;
        }
        let time_ms = match time {
            None => None,
            Some(i) => {
                let text = fields[i].trim();
                let picoseconds = text.parse::<u64>().map_err(|_| {
                    InputError::at(
                        line,
                        format!(
                            "`{}` must be a non-negative integer number of picoseconds, not {text:?}",
                            names[i]
                        ),
                    )
                })?;
                Some(picoseconds as f64 / 1e9)
            }
        };
        rows += 1;
        each(Statement {
            line,
            sql: &fields[text],
            calls,
            time_ms,
        });
    }
    if rows == 0 {
        return Err(InputError::at(
            header_line,
            if null_rows == 0 {
                "the export has a header but no rows: no statement to audit".to_owned()
            } else {
                format!("every row ({null_rows}) has a NULL `DIGEST_TEXT`: no statement to audit")
            },
        ));
    }
    let mut warnings = Vec::new();
    if null_rows > 0 {
        warnings.push(format!(
            "skipped {null_rows} row{} with a NULL `DIGEST_TEXT` ({null_calls} calls): statements the server had no room for in the digest table (performance_schema_digests_size), not audited",
            if null_rows == 1 { "" } else { "s" }
        ));
    }
    Ok(warnings)
}

// ---------------------------------------------------------------------------------------
// General query log

/// The lines the server writes when it opens the general log.
fn header_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(
            r"^(?:\S.*, Version: .+ started with:|Tcp port: \d+  Unix socket: .*|TCP Port: \d+, Named Pipe: .*|Time\s+Id\s+Command\s+Argument)$",
        )
        .expect("the general log header pattern compiles")
    })
}

/// A line that starts an entry: MariaDB's `YYMMDD H:MM:SS` and a tab, or two tabs
/// (the same second as the entry before), or MySQL 5.7+'s ISO 8601 time and a tab;
/// then the connection id, a space, the command (`Query`, `Init DB`, `Close stmt`, ...),
/// and a tab before the argument (which an editor may have trimmed off an empty one).
fn entry_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(
            r"^(?:(?:\d{6} [ \d]\d:\d{2}:\d{2}|\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:Z|[+-]\d{2}:\d{2})?)\t|\t\t) *\d+ ([A-Za-z][A-Za-z_]*(?: [A-Za-z_]+)*)(?:\t(.*))?$",
        )
        .expect("the general log entry pattern compiles")
    })
}

/// `Some((command, argument))` if `line` starts a general log entry.
fn log_entry(line: &str) -> Option<(&str, &str)> {
    let caps = entry_regex().captures(line)?;
    Some((
        caps.get(1)?.as_str(),
        caps.get(2).map_or("", |m| m.as_str()),
    ))
}

/// Whether `line` is a line of a general log: a header line or the start of an entry.
pub(super) fn is_log_line(line: &str) -> bool {
    header_regex().is_match(line) || log_entry(line).is_some()
}

/// Whether an entry with this command is a statement the application ran: `Query`
/// (text protocol) and `Execute` (a prepared statement, logged with its values). Not
/// `Prepare`, which precedes its executions and would count them twice.
fn is_call(command: &str) -> bool {
    matches!(command, "Query" | "Execute")
}

/// The general log: header lines end an entry, `Query` and `Execute` entries are
/// statements; bytes that are not UTF-8 are read as U+FFFD.
struct GeneralLog {
    /// The first line that is not UTF-8, and how many are not.
    not_utf8: Option<(u64, u64)>,
}

impl LogFormat for GeneralLog {
    fn text<'r>(&mut self, raw: &'r [u8], line: u64) -> Result<Cow<'r, str>, InputError> {
        let text = String::from_utf8_lossy(raw);
        if let Cow::Owned(_) = text {
            self.not_utf8.get_or_insert((line, 0)).1 += 1;
        }
        Ok(text)
    }

    fn classify<'l>(&self, line: &'l str) -> LogLine<'l> {
        if header_regex().is_match(line) {
            LogLine::Break
        } else if let Some((command, argument)) = log_entry(line) {
            LogLine::Entry(is_call(command).then_some(argument))
        } else {
            LogLine::Text
        }
    }
}

/// Read a general log: every `Query` and `Execute` entry is one call; lines that do
/// not start an entry continue the one before (multi-line statements); header lines
/// are skipped wherever they are. Bytes that are not UTF-8 (binary values in logged
/// statements) are read as U+FFFD, with a warning.
pub(super) fn read_log(
    input: impl BufRead,
    each: impl FnMut(Statement<'_>),
) -> Result<Vec<String>, InputError> {
    let mut log = GeneralLog { not_utf8: None };
    let read = read_entries(input, &mut log, each)?;
    if read.statements > 0 {
        return Ok(log
            .not_utf8
            .map(|(first, count)| {
                format!(
                    "{count} line{} not UTF-8 (the first: line {first}): the bytes that are not were read as U+FFFD (binary values in statements?)",
                    if count == 1 { "" } else { "s" }
                )
            })
            .into_iter()
            .collect());
    }
    let (lines, entries) = (read.lines, read.entries);
    Err(match read.first_stray {
        Some(line) if entries == 0 => InputError::at(
            line,
            "not a MySQL/MariaDB general query log line: no entry (a time, or two tabs, then `ID Command<TAB>argument`, as MariaDB and MySQL write them) in the whole input, so no statement to audit",
        ),
        None if entries == 0 => InputError::at(
            1,
            "the general query log has no entries, only its header: no statement to audit",
        ),
        _ => InputError::at(
            1,
            format!(
                "none of the {entries} general log entries in lines 1-{lines} is a `Query` or an `Execute`, so no statement to audit"
            ),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::super::CsvReader;
    use super::*;

    /// `(line, sql, calls, time_ms)` of every statement read, and the warnings; or the
    /// error as printed.
    type Read = Result<(Vec<(u64, String, u64, Option<f64>)>, Vec<String>), String>;

    /// Read `input` with `read`.
    fn collect<F>(read: F) -> Read
    where
        F: FnOnce(&mut dyn FnMut(Statement<'_>)) -> Result<Vec<String>, InputError>,
    {
        let mut out = Vec::new();
        let warnings = read(&mut |s: Statement<'_>| {
            out.push((s.line, s.sql.to_owned(), s.calls, s.time_ms));
        })
        .map_err(|e| e.to_string())?;
        Ok((out, warnings))
    }

    fn log(input: &str) -> Read {
        collect(|each| read_log(input.as_bytes(), each))
    }

    fn tsv(input: &str) -> Read {
        collect(|each| read_digest(TsvReader::new(input.as_bytes()), Format::DigestTsv, each))
    }

    fn csv(input: &str) -> Read {
        collect(|each| read_digest(CsvReader::new(input.as_bytes()), Format::DigestCsv, each))
    }

    #[test]
    fn general_log_entry_lines() {
        // (line, command, argument): MariaDB 10.11 lines as its server wrote them (see
        // tests/cli_audit_mysql.rs), MySQL 8 lines as its sql/log.cc writes them
        // (`%s\t%5u %s\t%s`, the ISO 8601 time of `log_timestamps`).
        for (line, command, argument) in [
            // MariaDB: time when the second changes, two tabs otherwise; id in 6 columns.
            (
                "241204  1:02:03\t    12 Query\tSELECT 1",
                "Query",
                "SELECT 1",
            ),
            (
                "261207 11:42:27\t     3 Connect\troot@localhost on  using Socket",
                "Connect",
                "root@localhost on  using Socket",
            ),
            (
                "\t\t     3 Query\tselect version()",
                "Query",
                "select version()",
            ),
            ("\t\t     4 Quit\t", "Quit", ""),
            ("\t\t     4 Quit", "Quit", ""),
            ("\t\t     4 Init DB\ttest", "Init DB", "test"),
            (
                "\t\t    12 Prepare\tSELECT `id` FROM `t` WHERE `id` = ?",
                "Prepare",
                "SELECT `id` FROM `t` WHERE `id` = ?",
            ),
            (
                "\t\t    12 Execute\tSELECT `id` FROM `t` WHERE `id` = 5",
                "Execute",
                "SELECT `id` FROM `t` WHERE `id` = 5",
            ),
            ("\t\t    12 Close stmt\t", "Close stmt", ""),
            ("\t\t1234567 Query\tSELECT 1", "Query", "SELECT 1"),
            ("\t\t    12 Query\tSELECT 'a\tb'", "Query", "SELECT 'a\tb'"),
            // MySQL 8: a time on every entry; id in 5 columns.
            (
                "2024-12-04T01:02:03.123456Z\t   12 Query\tSELECT 1",
                "Query",
                "SELECT 1",
            ),
            (
                "2024-12-04T01:02:03.123456Z\t   12 Connect\tapp@localhost on app using SSL/TLS",
                "Connect",
                "app@localhost on app using SSL/TLS",
            ),
            (
                "2024-12-04T02:02:03.123456+01:00\t   12 Execute\tUPDATE t SET a = 1",
                "Execute",
                "UPDATE t SET a = 1",
            ),
            (
                "2024-12-04T01:02:03Z\t123456 Query\tSELECT 1",
                "Query",
                "SELECT 1",
            ),
            (
                "2024-12-04T01:02:03.123456Z\t   12 Reset stmt\t",
                "Reset stmt",
                "",
            ),
            (
                "2024-12-04T01:02:03.123456Z\t   12 Binlog Dump GTID\tLog: '' Pos: 4 GTIDs: ''",
                "Binlog Dump GTID",
                "Log: '' Pos: 4 GTIDs: ''",
            ),
            ("2024-12-04T01:02:03.123456Z\t   12 clone\t", "clone", ""),
        ] {
            assert_eq!(log_entry(line), Some((command, argument)), "{line:?}");
            assert!(is_log_line(line), "{line:?}");
        }
        // Continuation lines of multi-line statements, and other text.
        for line in [
            "from t",
            "\twhere id = 2",
            "\t\tand id = 3",
            "    12 Query\tSELECT 1",
            "\t    12 Query\tSELECT 1",
            "241204 1:02:03\t    12 Query\tSELECT 1",
            "2024-12-04 01:02:03\t   12 Query\tSELECT 1",
            "2024-12-04T01:02:03.123456Z   12 Query SELECT 1",
            "2026-11-22 07:00:00.123 UTC [1234] LOG:  statement: SELECT 1",
            "",
        ] {
            assert_eq!(log_entry(line), None, "{line:?}");
            assert!(!is_log_line(line), "{line:?}");
        }
        for (command, call) in [
            ("Query", true),
            ("Execute", true),
            ("Prepare", false),
            ("Connect", false),
            ("Init DB", false),
            ("Close stmt", false),
            ("Quit", false),
        ] {
            assert_eq!(is_call(command), call, "{command}");
        }
    }

    #[test]
    fn general_log_headers() {
        for line in [
            // MariaDB 10.11 (Debian), as its server wrote it.
            "/usr/sbin/mariadbd, Version: 10.11.19-MariaDB-0+deb12u1-log (Debian 12). started with:",
            "Tcp port: 0  Unix socket: /dev/shm/rws-abc/primary.sock",
            "Time\t\t    Id Command\tArgument",
            // MySQL 8 (sql/log.cc), Linux and Windows.
            "/usr/sbin/mysqld, Version: 8.0.36 (MySQL Community Server - GPL). started with:",
            "Tcp port: 3306  Unix socket: /var/run/mysqld/mysqld.sock",
            "Time                 Id Command    Argument",
            "C:\\Program Files\\MySQL\\MySQL Server 8.0\\bin\\mysqld.exe, Version: 8.0.42 (MySQL Community Server - GPL). started with:",
            "TCP Port: 3306, Named Pipe: MySQL",
        ] {
            assert!(header_regex().is_match(line), "{line:?}");
            assert!(log_entry(line).is_none(), "{line:?}");
        }
    }

    #[test]
    fn general_logs_of_both_servers() {
        // MariaDB: a header, entries with and without a time, a three-line statement,
        // a prepared statement (Prepare not counted, each Execute counted), the header
        // again after the log was reopened in the middle of the file.
        let mariadb = "\
/usr/sbin/mariadbd, Version: 10.11.19-MariaDB-0+deb12u1-log (Debian 12). started with:
Tcp port: 3306  Unix socket: /run/mysqld/mysqld.sock
Time\t\t    Id Command\tArgument
241204  1:02:03\t    12 Connect\tapp@localhost on app using TCP/IP
\t\t    12 Query\tSELECT 1
\t\t    12 Query\tselect v
from t
where id = 2 for update
\t\t    12 Prepare\tSELECT * FROM t WHERE id = ?
241204  1:02:04\t    12 Execute\tSELECT * FROM t WHERE id = 5
\t\t    12 Execute\tSELECT * FROM t WHERE id = 6
\t\t    12 Close stmt\t
/usr/sbin/mariadbd, Version: 10.11.19-MariaDB-0+deb12u1-log (Debian 12). started with:
Tcp port: 3306  Unix socket: /run/mysqld/mysqld.sock
Time\t\t    Id Command\tArgument
\t\t    12 Query\tINSERT INTO t VALUES (1)
\t\t    12 Quit\t
";
        let (statements, warnings) = log(mariadb).unwrap();
        let got: Vec<(u64, &str)> = statements
            .iter()
            .map(|(line, sql, calls, time)| {
                assert_eq!((*calls, *time), (1, None));
                (*line, sql.as_str())
            })
            .collect();
        assert_eq!(
            got,
            [
                (5, "SELECT 1"),
                (6, "select v\nfrom t\nwhere id = 2 for update"),
                (10, "SELECT * FROM t WHERE id = 5"),
                (11, "SELECT * FROM t WHERE id = 6"),
                (16, "INSERT INTO t VALUES (1)"),
            ]
        );
        assert!(warnings.is_empty(), "{warnings:?}");

        // MySQL 8 (`log_timestamps = UTC`), CRLF line ends, a multi-line statement whose
        // second line is empty, continuation lines of a multi-line Prepare ignored.
        let mysql8 = "\
/usr/sbin/mysqld, Version: 8.0.36 (MySQL Community Server - GPL). started with:\r
Tcp port: 3306  Unix socket: /var/run/mysqld/mysqld.sock\r
Time                 Id Command    Argument\r
2024-12-04T01:02:03.123456Z\t    8 Connect\tapp@localhost on app using SSL/TLS\r
2024-12-04T01:02:03.123500Z\t    8 Query\tSELECT `id`\r
\r
FROM `t`\r
2024-12-04T01:02:03.123600Z\t    8 Prepare\tUPDATE t\r
SET a = ?\r
2024-12-04T01:02:03.123700Z\t    8 Execute\tUPDATE t\r
SET a = 3\r
2024-12-04T01:02:03.123800Z\t    8 Quit\t\r
";
        let (statements, _) = log(mysql8).unwrap();
        let got: Vec<(u64, &str)> = statements
            .iter()
            .map(|(line, sql, _, _)| (*line, sql.as_str()))
            .collect();
        assert_eq!(
            got,
            [(5, "SELECT `id`\n\nFROM `t`"), (10, "UPDATE t\nSET a = 3")]
        );
    }

    #[test]
    fn general_log_errors_and_warnings() {
        // A log cut in the middle of a statement: the stray lines before the first entry
        // are ignored.
        let (statements, _) = log("WHERE id = 1\n\t\t    3 Query\tSELECT 2\n").unwrap();
        assert_eq!(statements.len(), 1);
        assert_eq!(statements[0].0, 2);

        for (input, expected) in [
            ("\nSELECT 1;\nSELECT 2;\n", "line 2: not a MySQL/MariaDB general query log line"),
            (
                "/usr/sbin/mariadbd, Version: 10.11.19-MariaDB-log (Debian 12). started with:\nTcp port: 3306  Unix socket: /s\nTime\t\t    Id Command\tArgument\n",
                "line 1: the general query log has no entries",
            ),
            (
                "241204  1:02:03\t    12 Connect\tapp@localhost on app using TCP/IP\n\t\t    12 Quit\t\n",
                "line 1: none of the 2 general log entries in lines 1-2 is a `Query` or an `Execute`",
            ),
        ] {
            let err = log(input).unwrap_err();
            assert!(err.starts_with(expected), "{input:?}: {err}");
        }

        // A binary value in a logged statement is no reason to stop.
        let input =
            b"\t\t    3 Query\tINSERT INTO b VALUES ('\xff\xfe')\n\t\t    3 Query\tSELECT 1\n";
        let (statements, warnings) = collect(|each| read_log(&input[..], each)).unwrap();
        assert_eq!(statements.len(), 2);
        assert_eq!(statements[0].1, "INSERT INTO b VALUES ('\u{fffd}\u{fffd}')");
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].starts_with("1 line not UTF-8 (the first: line 1)"),
            "{warnings:?}"
        );
    }

    #[test]
    fn batch_output_escapes() {
        for (field, value) in [
            ("SELECT ?", "SELECT ?"),
            ("a\\tb", "a\tb"),
            ("a\\nb", "a\nb"),
            ("a\\\\nb", "a\\nb"),
            ("a\\0b", "a\0b"),
            ("a\\xb", "a\\xb"),
            ("ab\\", "ab\\"),
            ("", ""),
        ] {
            assert_eq!(unescape(field), value, "{field:?}");
        }
        for (field, null) in [
            ("NULL", true),
            ("\\N", true),
            ("", true),
            (" ", true),
            ("null", false),
            ("SELECT NULL", false),
        ] {
            assert_eq!(is_null(field), null, "{field:?}");
        }
    }

    #[test]
    fn digest_exports() {
        // As `mariadb --batch` printed it (MariaDB 10.11), plus a NULL row and an escaped
        // newline; SUM_TIMER_WAIT in picoseconds.
        let batch = "\
SCHEMA_NAME\tDIGEST\tDIGEST_TEXT\tCOUNT_STAR\tSUM_TIMER_WAIT
test\t7f17825a0bea515a8f7db4ef074fdf50\tSELECT * FROM `t` WHERE ID = ? \t20\t225826000
test\t5ab51ac9afb5b431fafb7eb4c40a756a\tSELECT `v` FROM `t` WHERE ID = ? FOR UPDATE \t3\t1500000000000

NULL\tNULL\tNULL\t7\t1000
test\t89ac551cd43986967703506f325bf35f\tINSERT INTO `t` VALUES (...) /* , ... */ \\n\t1\t12457642000
";
        let (rows, warnings) = tsv(batch).unwrap();
        assert_eq!(
            rows,
            [
                (
                    2,
                    "SELECT * FROM `t` WHERE ID = ? ".to_owned(),
                    20,
                    Some(0.225826)
                ),
                (
                    3,
                    "SELECT `v` FROM `t` WHERE ID = ? FOR UPDATE ".to_owned(),
                    3,
                    Some(1500.0)
                ),
                (
                    6,
                    "INSERT INTO `t` VALUES (...) /* , ... */ \n".to_owned(),
                    1,
                    Some(12.457642)
                ),
            ]
        );
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].starts_with("skipped 1 row with a NULL `DIGEST_TEXT` (7 calls)"));

        // CSV, lower-case names in another order, no time column, NULL as an empty field.
        let (rows, warnings) =
            csv("count_star,digest_text,schema_name\n4,\"SELECT `a`, `b` FROM `t`\",app\n2,,\n")
                .unwrap();
        assert_eq!(rows, [(2, "SELECT `a`, `b` FROM `t`".to_owned(), 4, None)]);
        assert_eq!(warnings.len(), 1);

        for (read, input, expected) in [
            (
                tsv as fn(&str) -> _,
                "DIGEST_TEXT\tCOUNT_STAR\nSELECT ?\t1\nSELECT ?\t-1\n",
                "line 3: `COUNT_STAR` must be a non-negative integer, not \"-1\"",
            ),
            (
                tsv,
                "DIGEST_TEXT\tCOUNT_STAR\tSUM_TIMER_WAIT\nSELECT ?\t1\t1.5e9\n",
                "line 2: `SUM_TIMER_WAIT` must be a non-negative integer number of picoseconds",
            ),
            (
                tsv,
                "DIGEST_TEXT\tCOUNT_STAR\nSELECT ?\t1\t2\n",
                "line 2: bad record: it has 3 fields, the header has 2",
            ),
            (
                tsv,
                "DIGEST_TEXT\tCOUNT_STAR\n",
                "line 1: the export has a header but no rows",
            ),
            (
                tsv,
                "\nDIGEST_TEXT\tCOUNT_STAR\nNULL\t3\n",
                "line 2: every row (1) has a NULL",
            ),
            (
                tsv,
                "SELECT ?\t1\n",
                "line 1: the header has no `DIGEST_TEXT` and `COUNT_STAR` column",
            ),
            (tsv, "DIGEST_TEXT,COUNT_STAR\n", "line 1: the header has no"),
            (
                csv,
                "DIGEST_TEXT\tCOUNT_STAR\n",
                "line 1: the header has no",
            ),
            (csv, "query,calls\n", "line 1: the header has no"),
        ] {
            let err = read(input).unwrap_err();
            assert!(err.starts_with(expected), "{input:?}: {err}");
        }
        let hints = [
            (tsv("DIGEST_TEXT,COUNT_STAR\n"), "--format digest-csv"),
            (csv("DIGEST_TEXT\tCOUNT_STAR\n"), "--format digest-tsv"),
            (csv("query,calls\n"), "--format csv"),
            (csv("query\tcalls\n"), "--skip-column-names"),
            (tsv("SELECT ?\t1\n"), "--skip-column-names"),
        ];
        for (result, hint) in hints {
            let err = result.unwrap_err();
            assert!(err.contains(hint), "{hint}: {err}");
        }
        let err = collect(|each| {
            read_digest(
                TsvReader::new(&b"DIGEST_TEXT\tCOUNT_STAR\nSELECT '\xff'\t1\n"[..]),
                Format::DigestTsv,
                each,
            )
        })
        .unwrap_err();
        assert!(err.starts_with("line 2: invalid UTF-8"), "{err}");
    }
}
