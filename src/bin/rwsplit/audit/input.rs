//! Reading the audit's input: a `pg_stat_statements` CSV export or a PostgreSQL log, or
//! (in [`mysql`]) a MySQL/MariaDB `performance_schema` digest export or general query log.
//!
//! Every reader streams (a `log_statement = 'all'` log or a general log can be large)
//! and hands every statement to a callback with the line it starts on, its calls and,
//! for an export with a time column, its execution time. Every problem is an
//! [`InputError`] naming the line.

mod mysql;

use std::borrow::Cow;
use std::fmt;
use std::io::{self, BufRead, Cursor, Read};
use std::sync::OnceLock;

use regex::Regex;

use crate::options::DialectArg;

/// How the input is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// A `pg_stat_statements` export: CSV with a header and `query` and `calls` columns.
    Csv,
    /// A PostgreSQL server log written with `log_statement = 'all'`.
    Log,
    /// A MySQL/MariaDB `performance_schema.events_statements_summary_by_digest` export:
    /// CSV with a header and `DIGEST_TEXT` and `COUNT_STAR` columns.
    DigestCsv,
    /// The same export as `mariadb --batch` (`mysql --batch`) prints it: tab-separated,
    /// with a header line.
    DigestTsv,
    /// A MySQL/MariaDB general query log (`general_log = 1`, written to a file).
    MysqlLog,
}

impl Format {
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Log => "log",
            Format::DigestCsv => "digest-csv",
            Format::DigestTsv => "digest-tsv",
            Format::MysqlLog => "mysql-log",
        }
    }

    /// The dialect the statements of this format are in, unless `--dialect` says
    /// otherwise: a `pg_stat_statements` CSV may hold any dialect's statements (other
    /// tools write the same two columns), so it says PostgreSQL, as before.
    pub(crate) const fn dialect(self) -> DialectArg {
        match self {
            Format::Csv | Format::Log => DialectArg::Postgres,
            Format::DigestCsv | Format::DigestTsv | Format::MysqlLog => DialectArg::Mysql,
        }
    }
}

/// A malformed or empty input, optionally at a 1-based line: exit code 2.
#[derive(Debug)]
pub(crate) struct InputError {
    pub(crate) line: Option<u64>,
    pub(crate) message: String,
}

impl InputError {
    pub(crate) fn at(line: u64, message: impl Into<String>) -> Self {
        InputError {
            line: Some(line),
            message: message.into(),
        }
    }

    pub(crate) fn whole(message: impl Into<String>) -> Self {
        InputError {
            line: None,
            message: message.into(),
        }
    }

    fn io(err: &io::Error, line: u64) -> Self {
        InputError::at(line, format!("cannot read the input: {err}"))
    }
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// One statement read from the input.
#[derive(Debug)]
pub(crate) struct Statement<'a> {
    /// 1-based line the statement (CSV record or log entry) starts on.
    pub(crate) line: u64,
    pub(crate) sql: &'a str,
    pub(crate) calls: u64,
    /// Total execution time in milliseconds (exports with a time column only).
    pub(crate) time_ms: Option<f64>,
}

/// The input with its first non-blank line looked at (and put back).
pub(crate) struct Opened<R> {
    reader: io::Chain<Cursor<Vec<u8>>, R>,
    /// The first non-blank line, without its line ending, and its 1-based number.
    first: String,
    first_line: u64,
}

/// Read up to the first non-blank line of `input`: an error if there is none (empty
/// input) or if what was read is not UTF-8. A leading UTF-8 byte order mark is dropped.
pub(crate) fn open<R: BufRead>(mut input: R) -> Result<Opened<R>, InputError> {
    let mut head = Vec::new();
    let mut line_no = 0;
    loop {
        let start = head.len();
        let n = input
            .read_until(b'\n', &mut head)
            .map_err(|e| InputError::io(&e, line_no + 1))?;
        if n == 0 {
            return Err(InputError::whole(
                "the input is empty: no statement to audit",
            ));
        }
        line_no += 1;
        if line_no == 1 && head.starts_with(b"\xEF\xBB\xBF") {
            head.drain(..3);
        }
        let raw = trim_eol(&head[start..]);
        let text = utf8(raw, line_no)?;
        if !text.trim().is_empty() {
            let first = text.to_owned();
            return Ok(Opened {
                reader: Cursor::new(head).chain(input),
                first,
                first_line: line_no,
            });
        }
    }
}

fn trim_eol(raw: &[u8]) -> &[u8] {
    let raw = raw.strip_suffix(b"\n").unwrap_or(raw);
    raw.strip_suffix(b"\r").unwrap_or(raw)
}

fn utf8(raw: &[u8], line: u64) -> Result<&str, InputError> {
    std::str::from_utf8(raw).map_err(|e| {
        InputError::at(
            line,
            format!(
                "invalid UTF-8 at byte {} of the line (export the statements as UTF-8, e.g. with `ENCODING 'UTF8'`)",
                e.valid_up_to() + 1
            ),
        )
    })
}

impl<R: BufRead> Opened<R> {
    /// The format of the input: the file's extension decides between the families
    /// (`.csv`: `csv`, or `digest-csv`/`digest-tsv` when the header names
    /// `DIGEST_TEXT`; `.tsv`: `digest-tsv`; `.log`: `mysql-log` when the first line is
    /// a MySQL/MariaDB general log line, else `log`); without one of those extensions,
    /// the first non-blank line alone decides ([`sniff`](Self::sniff)).
    pub(crate) fn detect(&self, extension: Option<&str>) -> Option<Format> {
        let is = |ext: &str| extension.is_some_and(|e| e.eq_ignore_ascii_case(ext));
        if is("csv") {
            Some(self.digest_header().unwrap_or(Format::Csv))
        } else if is("tsv") {
            Some(Format::DigestTsv)
        } else if is("log") {
            Some(if mysql::is_log_line(&self.first) {
                Format::MysqlLog
            } else {
                Format::Log
            })
        } else {
            self.sniff()
        }
    }

    /// The format the first non-blank line suggests, if any.
    pub(crate) fn sniff(&self) -> Option<Format> {
        if mysql::is_log_line(&self.first) {
            Some(Format::MysqlLog)
        } else if log_entry(&self.first).is_some() {
            Some(Format::Log)
        } else if let Some(format) = self.digest_header() {
            Some(format)
        } else if header_names(&self.first, ',').any(|c| c.eq_ignore_ascii_case("query")) {
            Some(Format::Csv)
        } else {
            None
        }
    }

    /// `digest-tsv` or `digest-csv` if the first line is a header naming `DIGEST_TEXT`,
    /// separated by tabs or by commas.
    fn digest_header(&self) -> Option<Format> {
        let digest = |c: &str| c.eq_ignore_ascii_case("digest_text");
        if self.first.contains('\t') && header_names(&self.first, '\t').any(digest) {
            Some(Format::DigestTsv)
        } else if header_names(&self.first, ',').any(digest) {
            Some(Format::DigestCsv)
        } else {
            None
        }
    }

    pub(crate) fn first_line(&self) -> u64 {
        self.first_line
    }

    pub(crate) fn first(&self) -> &str {
        &self.first
    }

    /// Read every statement, in input order. Returns warnings about what was read
    /// but left out of the audit (for standard error), if any.
    pub(crate) fn read(
        self,
        format: Format,
        each: impl FnMut(Statement<'_>),
    ) -> Result<Vec<String>, InputError> {
        match format {
            Format::Csv => read_csv(self.reader, each).map(|()| Vec::new()),
            Format::Log => read_log(self.reader, each).map(|()| Vec::new()),
            Format::DigestCsv => mysql::read_digest(CsvReader::new(self.reader), format, each),
            Format::DigestTsv => {
                mysql::read_digest(mysql::TsvReader::new(self.reader), format, each)
            }
            Format::MysqlLog => mysql::read_log(self.reader, each),
        }
    }
}

/// The names in a header line split on `separator`, trimmed and unquoted.
fn header_names(line: &str, separator: char) -> impl Iterator<Item = &str> {
    line.split(separator).map(|c| c.trim().trim_matches('"'))
}

// ---------------------------------------------------------------------------------------
// pg_stat_statements CSV

fn column(header: &[String], names: &[&str]) -> Option<usize> {
    names
        .iter()
        .find_map(|name| header.iter().position(|c| c.eq_ignore_ascii_case(name)))
}

fn read_csv(input: impl BufRead, mut each: impl FnMut(Statement<'_>)) -> Result<(), InputError> {
    let mut reader = CsvReader::new(input);
    let mut fields = Vec::new();
    let (header_line, names) = read_header(&mut reader, &mut fields)?;
    let query = column(&names, &["query"]);
    let calls = column(&names, &["calls"]);
    let (Some(query), Some(calls)) = (query, calls) else {
        return Err(InputError::at(
            header_line,
            format!(
                "the CSV header has no `{}` column (it has: {}); expected a pg_stat_statements export with a header row and at least `query` and `calls`{}",
                missing(&[("query", query), ("calls", calls)]),
                describe_columns(&names),
                if column(&names, &["digest_text"]).is_some() {
                    " (this header is a performance_schema digest export's: pass --format digest-csv)"
                } else {
                    ""
                },
            ),
        ));
    };
    let time = column(&names, &["total_exec_time", "total_time"]);
    let toplevel = column(&names, &["toplevel"]);
    let width = fields.len();
    let mut rows = 0u64;
    while let Some(line) = next_row(&mut reader, &mut fields, width, "bad CSV record")? {
        if let Some(i) = toplevel {
            match fields[i].trim() {
                "t" | "true" => {}
                // Run inside a function (`pg_stat_statements.track = 'all'`): the
                // application did not send it.
                "f" | "false" => continue,
                other => {
                    return Err(InputError::at(
                        line,
                        format!("`toplevel` must be `t` or `f`, not {other:?}"),
                    ))
                }
            }
        }
        let calls = count(&fields[calls], "calls", line)?;
        let time_ms = match time {
            None => None,
            Some(i) => {
                let text = fields[i].trim();
                match text.parse::<f64>() {
                    Ok(t) if t.is_finite() && t >= 0.0 => Some(t),
                    _ => {
                        return Err(InputError::at(
                            line,
                            format!(
                                "`{}` must be a non-negative number of milliseconds, not {text:?}",
                                names[i]
                            ),
                        ))
                    }
                }
            }
        };
        rows += 1;
        each(Statement {
            line,
            sql: &fields[query],
            calls,
            time_ms,
        });
    }
    if rows == 0 {
        return Err(InputError::at(
            header_line,
            "the CSV has a header but no rows: no statement to audit",
        ));
    }
    Ok(())
}

fn describe_columns(names: &[String]) -> String {
    let mut shown: Vec<String> = names.iter().take(12).map(|n| format!("{n:?}")).collect();
    if names.len() > 12 {
        shown.push(format!("... {} more", names.len() - 12));
    }
    shown.join(", ")
}

/// The required columns not found, as a message names them: "`a` and `b`".
fn missing(required: &[(&str, Option<usize>)]) -> String {
    let missing: Vec<&str> = required
        .iter()
        .filter(|(_, found)| found.is_none())
        .map(|(name, _)| *name)
        .collect();
    missing.join("` and `")
}

/// Records of a table with a header: CSV or `mariadb --batch` output.
trait Records {
    /// Read the next record into `fields`; the line it starts on, or `None` at the end.
    fn record(&mut self, fields: &mut Vec<String>) -> Result<Option<u64>, InputError>;
}

/// Read the header record into `fields`: its line and its names, trimmed; an error if
/// the input has no record.
fn read_header(
    reader: &mut impl Records,
    fields: &mut Vec<String>,
) -> Result<(u64, Vec<String>), InputError> {
    let Some(header_line) = reader.record(fields)? else {
        return Err(InputError::whole(
            "the input is empty: no statement to audit",
        ));
    };
    Ok((
        header_line,
        fields.iter().map(|f| f.trim().to_owned()).collect(),
    ))
}

/// Read the next row into `fields`: its line, `None` at the end, or an error (`what:
/// it has N fields, ...`) if it does not have the header's `width`.
fn next_row(
    reader: &mut impl Records,
    fields: &mut Vec<String>,
    width: usize,
    what: &str,
) -> Result<Option<u64>, InputError> {
    let line = reader.record(fields)?;
    match line {
        Some(line) if fields.len() != width => Err(InputError::at(
            line,
            format!(
                "{what}: it has {} field{}, the header has {width}",
                fields.len(),
                if fields.len() == 1 { "" } else { "s" }
            ),
        )),
        _ => Ok(line),
    }
}

/// The count in the field of column `name` (calls).
fn count(field: &str, name: &str, line: u64) -> Result<u64, InputError> {
    let text = field.trim();
    text.parse::<u64>().map_err(|_| {
        InputError::at(
            line,
            format!("`{name}` must be a non-negative integer, not {text:?}"),
        )
    })
}

/// The physical lines of an input, counted: what every reader below reads through.
struct Lines<R> {
    input: R,
    raw: Vec<u8>,
    /// Lines read so far.
    line: u64,
}

impl<R: BufRead> Lines<R> {
    fn new(input: R) -> Self {
        Lines {
            input,
            raw: Vec::new(),
            line: 0,
        }
    }

    /// The next line, without its line end, and its 1-based number; `None` at the end
    /// of the input.
    fn next_raw(&mut self) -> Result<Option<(u64, &[u8])>, InputError> {
        self.raw.clear();
        let n = self
            .input
            .read_until(b'\n', &mut self.raw)
            .map_err(|e| InputError::io(&e, self.line + 1))?;
        if n == 0 {
            return Ok(None);
        }
        self.line += 1;
        Ok(Some((self.line, trim_eol(&self.raw))))
    }

    /// [`next_raw`](Self::next_raw) as UTF-8: a line that is not is an error.
    fn next_str(&mut self) -> Result<Option<(u64, &str)>, InputError> {
        match self.next_raw()? {
            None => Ok(None),
            Some((line, raw)) => utf8(raw, line).map(|text| Some((line, text))),
        }
    }
}

/// A CSV reader for what PostgreSQL's `COPY ... (FORMAT csv)` writes (RFC 4180: `,`
/// separators, `"` quotes doubled inside quoted fields, newlines inside quoted fields,
/// `\n` or `\r\n` line ends), that knows the line every record starts on. Blank lines
/// between records are skipped; a quote inside an unquoted field is an ordinary
/// character.
struct CsvReader<R> {
    lines: Lines<R>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    Start,
    Unquoted,
    Quoted,
    /// A `"` inside a quoted field: the end of the field, or the first of `""`.
    QuoteInQuoted,
}

impl<R: BufRead> CsvReader<R> {
    fn new(input: R) -> Self {
        CsvReader {
            lines: Lines::new(input),
        }
    }
}

impl<R: BufRead> Records for CsvReader<R> {
    fn record(&mut self, fields: &mut Vec<String>) -> Result<Option<u64>, InputError> {
        fields.clear();
        let mut start = None;
        let mut field = String::new();
        let mut state = Field::Start;
        loop {
            let Some((line_no, line)) = self.lines.next_str()? else {
                return match start {
                    None => Ok(None),
                    Some(start) => Err(InputError::at(
                        start,
                        "bad CSV record: a quoted field is not closed before the end of the input",
                    )),
                };
            };
            if start.is_none() {
                if line.trim().is_empty() {
                    continue;
                }
                start = Some(line_no);
            }
            for c in line.chars() {
                state = match (state, c) {
                    (Field::Start, '"') => Field::Quoted,
                    (Field::Start | Field::Unquoted | Field::QuoteInQuoted, ',') => {
                        fields.push(std::mem::take(&mut field));
                        Field::Start
                    }
                    (Field::Start | Field::Unquoted, c) => {
                        field.push(c);
                        Field::Unquoted
                    }
                    (Field::Quoted, '"') => Field::QuoteInQuoted,
                    (Field::Quoted, c) => {
                        field.push(c);
                        Field::Quoted
                    }
                    (Field::QuoteInQuoted, '"') => {
                        field.push('"');
                        Field::Quoted
                    }
                    (Field::QuoteInQuoted, c) => {
                        return Err(InputError::at(
                            line_no,
                            format!("bad CSV record: {c:?} after the closing quote of a field (expected `,` or the end of the line)"),
                        ))
                    }
                };
            }
            if state == Field::Quoted {
                // The quoted field goes on on the next line.
                field.push('\n');
                continue;
            }
            fields.push(field);
            return Ok(start);
        }
    }
}

// ---------------------------------------------------------------------------------------
// PostgreSQL log

/// A line that starts a log entry: an optional `log_line_prefix` beginning with a
/// timestamp (`%m`, `%t` or `%n`), then the severity and two spaces.
fn entry_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(
            r"^(?:(?:\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}|\d{9,11}\.\d{3})\D.*?)?\b(LOG|ERROR|WARNING|NOTICE|INFO|DEBUG[1-5]?|DETAIL|HINT|CONTEXT|STATEMENT|QUERY|LOCATION|FATAL|PANIC):  (.*)$",
        )
        .expect("the log entry pattern compiles")
    })
}

/// `Some((severity, message))` if `line` starts a log entry.
fn log_entry(line: &str) -> Option<(&str, &str)> {
    let caps = entry_regex().captures(line)?;
    Some((caps.get(1)?.as_str(), caps.get(2)?.as_str()))
}

/// The SQL of a `LOG:` message that records a statement being run: `statement: ..`,
/// `execute <name>: ..` (extended protocol, incl. `execute fetch from ..`), each
/// optionally after `duration: N ms  ` (`log_min_duration_statement`).
fn logged_sql<'m>(severity: &str, message: &'m str) -> Option<&'m str> {
    if severity != "LOG" {
        return None;
    }
    let message = match message.strip_prefix("duration: ") {
        Some(rest) => rest.split_once(" ms  ")?.1,
        None => message,
    };
    if let Some(sql) = message.strip_prefix("statement: ") {
        return Some(sql);
    }
    let rest = message.strip_prefix("execute ")?;
    rest.split_once(": ").map(|(_, sql)| sql)
}

/// The PostgreSQL log: a line is an entry if it starts with a `log_line_prefix` and a
/// severity; a line that is not UTF-8 is an error.
struct PgLog;

impl LogFormat for PgLog {
    fn text<'r>(&mut self, raw: &'r [u8], line: u64) -> Result<Cow<'r, str>, InputError> {
        utf8(raw, line).map(Cow::Borrowed)
    }

    fn classify<'l>(&self, line: &'l str) -> LogLine<'l> {
        match log_entry(line) {
            Some((severity, message)) => LogLine::Entry(logged_sql(severity, message)),
            None => LogLine::Text,
        }
    }
}

fn read_log(input: impl BufRead, each: impl FnMut(Statement<'_>)) -> Result<(), InputError> {
    let read = read_entries(input, &mut PgLog, each)?;
    if read.statements > 0 {
        return Ok(());
    }
    let (lines, entries) = (read.lines, read.entries);
    Err(match read.first_stray {
        Some(line) if entries == 0 => InputError::at(
            line,
            "not a PostgreSQL log line: no log entry with a supported log_line_prefix (one that starts with a timestamp, %m, %t or %n, or none) in the whole input, so no statement to audit",
        ),
        _ => InputError::at(
            1,
            format!(
                "none of the {entries} log entries in lines 1-{lines} is a `LOG:  statement: ...` or `LOG:  execute <name>: ...`, so no statement to audit: was log_statement = 'all' set (with English lc_messages)?"
            ),
        ),
    })
}

// ---------------------------------------------------------------------------------------
// Logs in general: entries that may go on over several lines

/// What a line of a log is.
enum LogLine<'l> {
    /// The start of an entry, with its SQL if the entry records a statement being run.
    Entry(Option<&'l str>),
    /// A line that ends the entry before it without starting one (a header line).
    Break,
    /// Any other line: it continues the entry before it (the statement's next line),
    /// or is text before the first entry.
    Text,
}

/// What tells one log format from another.
trait LogFormat {
    /// The text of a line (`raw`, without its line end), or an error.
    fn text<'r>(&mut self, raw: &'r [u8], line: u64) -> Result<Cow<'r, str>, InputError>;

    /// What `line` is.
    fn classify<'l>(&self, line: &'l str) -> LogLine<'l>;
}

/// What [`read_entries`] read, for the error when it found no statement.
struct LogRead {
    lines: u64,
    /// Lines that start an entry.
    entries: u64,
    statements: u64,
    /// The first line with text before the first entry.
    first_stray: Option<u64>,
}

/// Read a log in `format`: every entry that records a statement is one call of it,
/// from the line it starts on up to the next entry or [`LogLine::Break`].
fn read_entries(
    input: impl BufRead,
    format: &mut impl LogFormat,
    mut each: impl FnMut(Statement<'_>),
) -> Result<LogRead, InputError> {
    let mut lines = Lines::new(input);
    let mut read = LogRead {
        lines: 0,
        entries: 0,
        statements: 0,
        first_stray: None,
    };
    // The statement being read (it may continue on the following lines) and its line.
    let mut current: Option<(u64, String)> = None;
    let mut flush = |current: &mut Option<(u64, String)>, statements: &mut u64| {
        if let Some((line, sql)) = current.take() {
            *statements += 1;
            each(Statement {
                line,
                sql: &sql,
                calls: 1,
                time_ms: None,
            });
        }
    };
    while let Some((line_no, raw)) = lines.next_raw()? {
        read.lines = line_no;
        let line = format.text(raw, line_no)?;
        match format.classify(&line) {
            LogLine::Entry(sql) => {
                flush(&mut current, &mut read.statements);
                read.entries += 1;
                current = sql.map(|sql| (line_no, sql.to_owned()));
            }
            LogLine::Break => flush(&mut current, &mut read.statements),
            LogLine::Text => {
                if let Some((_, sql)) = &mut current {
                    sql.push('\n');
                    sql.push_str(&line);
                } else if read.entries == 0 && read.first_stray.is_none() && !line.trim().is_empty()
                {
                    read.first_stray = Some(line_no);
                }
            }
        }
    }
    flush(&mut current, &mut read.statements);
    Ok(read)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_prefixes() {
        for line in [
            "2026-11-22 07:00:00.123 UTC [1234] LOG:  statement: SELECT 1",
            "2026-11-22 07:00:00 UTC [1234]: [3-1] user=app,db=app LOG:  statement: SELECT 1",
            "2026-11-22 08:00:00.123 CET [1234] app@appdb LOG:  statement: SELECT 1",
            "2026-11-22 07:00:00 UTC:10.0.0.7(50412):app@appdb:[1234]:LOG:  statement: SELECT 1",
            "1795417200.123 [1234] LOG:  statement: SELECT 1",
            "LOG:  statement: SELECT 1",
            "2026-11-22 07:00:00.123 UTC [1234] LOG:  execute <unnamed>: SELECT 1",
            "2026-11-22 07:00:00.123 UTC [1234] LOG:  execute S_1: SELECT 1",
            "2026-11-22 07:00:00.123 UTC [1234] LOG:  execute fetch from S_2/C_3: SELECT 1",
            "2026-11-22 07:00:00.123 UTC [1234] LOG:  duration: 0.042 ms  statement: SELECT 1",
            "2026-11-22 07:00:00.123 UTC [1234] LOG:  duration: 0.042 ms  execute <unnamed>: SELECT 1",
        ] {
            let (severity, message) = log_entry(line).expect(line);
            assert_eq!(logged_sql(severity, message), Some("SELECT 1"), "{line}");
        }
        for line in [
            "2026-11-22 07:00:00.123 UTC [1234] DETAIL:  parameters: $1 = '5'",
            "2026-11-22 07:00:00.123 UTC [1234] STATEMENT:  SELECT 1",
            "2026-11-22 07:00:00.123 UTC [1234] LOG:  duration: 0.042 ms",
            "2026-11-22 07:00:00.123 UTC [1234] LOG:  duration: 0.042 ms  parse <unnamed>: SELECT 1",
            "2026-11-22 07:00:00.123 UTC [1234] LOG:  connection received: host=[local]",
        ] {
            let (severity, message) = log_entry(line).expect(line);
            assert_eq!(logged_sql(severity, message), None, "{line}");
        }
        for line in [
            "    FROM \"users\" WHERE LOG:  statement: x",
            "\tAND id = 1",
            "",
            "2026-11-22 is not a log line",
        ] {
            assert!(log_entry(line).is_none(), "{line}");
        }
    }
}
