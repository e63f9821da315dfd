//! `rwsplit audit`: estimate, before adopting, how much of a workload replicas could
//! serve, from a `pg_stat_statements` export or a PostgreSQL statement log, or from a
//! MySQL/MariaDB `performance_schema` digest export or general query log.
//!
//! # Input
//!
//! * **CSV** (`--format csv`, or a `.csv` file): a `pg_stat_statements` export with a
//!   header row and at least the columns `query` and `calls` (names matched without
//!   regard to case, in any order). Other columns are ignored, except
//!   `total_exec_time` (`total_time` before PostgreSQL 13), which adds the share of
//!   execution time when present, and `toplevel` (PostgreSQL 14+): rows with `f`
//!   (statements run inside functions, with `pg_stat_statements.track = 'all'`) are
//!   skipped, as the application did not send them. Produce it with:
//!
//!   ```text
//!   psql "$DATABASE_URL" -c "\copy (SELECT queryid, calls, total_exec_time, rows, query FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())) TO 'pgss.csv' WITH (FORMAT csv, HEADER, ENCODING 'UTF8')"
//!   ```
//!
//! * **Log** (`--format log`, or a `.log` file): a PostgreSQL server log (`stderr`
//!   destination, plain text, English messages) written with `log_statement = 'all'`
//!   (or `log_min_duration_statement = 0`). Every `LOG:  statement: ...` and
//!   `LOG:  execute <name>: ...` entry (extended protocol: `<unnamed>`, `S_1`, ...)
//!   counts as one call; lines that do not start an entry continue the previous one
//!   (multi-line statements). `DETAIL:  parameters: ...`, `ERROR`/`STATEMENT` echoes and
//!   other messages are ignored. Supported `log_line_prefix`es: any that starts with a
//!   timestamp (`%m`, `%t` or `%n`), whatever follows it — the default `'%m [%p] '`,
//!   Debian's `'%m [%p] %q%u@%d '`, RDS's `'%t:%r:%u@%d:[%p]:'` — and the empty prefix.
//!   Not supported: `syslog`/`eventlog` destinations, `csvlog`, `jsonlog`.
//!
//! * **MySQL/MariaDB digest export** (`--format digest-tsv` or `--format digest-csv`):
//!   `performance_schema.events_statements_summary_by_digest`, the MySQL counterpart of
//!   `pg_stat_statements`, with a header row and at least the columns `DIGEST_TEXT`
//!   (the statement as the server normalised it: literals `?`, identifiers often in
//!   backticks) and `COUNT_STAR` (its calls), any case, any order; `SUM_TIMER_WAIT`
//!   (picoseconds) adds the share of execution time; other columns (`SCHEMA_NAME`,
//!   `DIGEST`, ...) are ignored, so filter by schema in the export. Rows with a NULL
//!   `DIGEST_TEXT` (the statements the server had no room for once the table was full)
//!   are skipped, with a warning on standard error. `digest-tsv` is what `mariadb
//!   --batch` (`mysql --batch`) prints: tab-separated, `NULL` for NULL, `\t`, `\n`,
//!   `\0`, `\\` escapes; `digest-csv` is CSV as for `csv` (from a GUI client's export,
//!   say), NULL written `NULL`, `\N` or as an empty field. Produce it, as an account
//!   granted `SELECT` on the table (`SELECT ... INTO OUTFILE` needs the `FILE`
//!   privilege and writes on the server's host: not needed), with:
//!
//!   ```text
//!   mariadb --batch -h "$HOST" -u "$USER" -p "$DATABASE" -e "SELECT SCHEMA_NAME, DIGEST, DIGEST_TEXT, COUNT_STAR, SUM_TIMER_WAIT FROM performance_schema.events_statements_summary_by_digest WHERE SCHEMA_NAME = DATABASE()" > digests.tsv
//!   ```
//!
//!   (`mysql --batch` with the same arguments on MySQL). Not with `--skip-column-names`
//!   (`-N`): the header is needed; not with `--raw` (`-r`): a newline in a value would
//!   split its row. The server needs `performance_schema = ON` from start-up (MariaDB's
//!   default is `OFF`, MySQL's `ON`), and the account `GRANT SELECT ON
//!   performance_schema.events_statements_summary_by_digest TO ...` (without it the
//!   `SELECT` fails with error 1142). Counts run from the server's start or the last
//!   `TRUNCATE TABLE performance_schema.events_statements_summary_by_digest`. The server
//!   cuts `DIGEST_TEXT` at `max_digest_length` (1024 bytes of tokens by default) without
//!   a mark, and what was cut is not judged: a long statement's trailing `FOR UPDATE`
//!   can be missed there; raise `max_digest_length` and
//!   `performance_schema_max_digest_length` (at start-up), or audit a general log.
//!   MariaDB 10.11 leaves statements run as prepared statements (the binary protocol's
//!   `COM_STMT_EXECUTE`: `mysql_async`'s `exec`, and so diesel-async's queries with
//!   bind values) out of this table altogether: for such an application, audit a
//!   general log, which logs every `Execute`.
//!
//! * **MySQL/MariaDB general query log** (`--format mysql-log`, or a `.log` file whose
//!   first line is one): the file the server writes with `general_log = 1`
//!   (`log_output = FILE`, the default; `general_log_file` names it), as MariaDB (and
//!   MySQL 5.6) write it, `241204  1:02:03<TAB>    12 Query<TAB>SELECT 1` (the time
//!   only when the second changes: other entries start with two tabs), or as MySQL 5.7
//!   and 8 write it, `2024-12-04T01:02:03.123456Z<TAB>   12 Query<TAB>SELECT 1` (any
//!   `log_timestamps`). Every `Query` entry (text protocol) and `Execute` entry (a
//!   prepared statement, logged with its values) is one call; `Prepare` is not (it would
//!   count the statement once more than it ran), nor are `Connect`, `Init DB`, `Quit`,
//!   `Close stmt` and the other commands. Lines that do not start an entry continue the
//!   previous one (multi-line statements); the lines the server writes when it opens
//!   the log (`... Version: ... started with:`, `Tcp port: ...`, `Time Id Command
//!   Argument`) are skipped wherever they are. Bytes that are not UTF-8 (binary values)
//!   are read as U+FFFD, with a warning. Turn it on for a sample of traffic (every
//!   statement is written, which costs): `SET GLOBAL general_log_file =
//!   '/var/lib/mysql/audit.log'; SET GLOBAL general_log = 1;` and `SET GLOBAL general_log
//!   = 0` after (`SUPER`, or MySQL 8's `SYSTEM_VARIABLES_ADMIN`). A statement whose
//!   text has a line break followed by what looks like an entry (two tabs, a number, a
//!   space, a word and a tab) is read as two: the log cannot tell them apart.
//!
//! Without `--format`, the extension chooses the family and the first non-blank line
//! the format in it: `.csv` is `csv`, or `digest-csv` (`digest-tsv` if tab-separated)
//! when the header names `DIGEST_TEXT`; `.tsv` is `digest-tsv`; `.log` is `mysql-log`
//! when the first line is a general log line, else `log`. Any other name, and standard
//! input: the first non-blank line alone.
//!
//! # Dialect
//!
//! `--dialect postgres|mysql` says how to read the statements. Without it, the format
//! decides: `digest-csv`, `digest-tsv` and `mysql-log` are MySQL's, `csv` and `log`
//! PostgreSQL's; pass `--dialect mysql` for MySQL statements in a `query,calls` CSV
//! (another tool's export), where nothing tells.
//!
//! # Output
//!
//! Tables by default; with `--json` one JSON object (`format_version` 1):
//!
//! | field | meaning |
//! |---|---|
//! | `format_version` | `1`; bumped only if a field changes meaning or goes away |
//! | `input`, `format`, `dialect` | the file (`-` for stdin), `csv`/`log`/`digest-csv`/`digest-tsv`/`mysql-log`, `postgres`/`mysql` |
//! | `statements` | statements read: export rows (top-level ones, with a digest text), or log statements |
//! | `distinct_statements` | distinct statements: by fingerprint (and verdict) |
//! | `calls` | total calls (a log statement is one call) |
//! | `replica_calls`, `primary_calls` | calls a replica could serve / that need the primary |
//! | `replica_distinct_statements`, `primary_distinct_statements` | the same for distinct statements |
//! | `replica_share_of_calls`, `replica_share_of_distinct_statements` | fractions in 0..=1; `null` when the total is 0 |
//! | `exec_time_ms` | `null`, or for an export with a time column `{total, replica, replica_share}` |
//! | `calls_by_reason`, `distinct_statements_by_reason` | objects keyed by the reasons that occur (`write_statement`, `locking_read`, ...) |
//! | `top_primary` | up to `--top` objects `{rank, fingerprint, hash, reason, calls, share_of_calls, statements, first_line}`, most calls first |
//! | `unknown` | every statement classified `unknown`: `{fingerprint, hash, calls, lines}`, by first line |
//!
//! `fingerprint` is the normalised text (literals folded to `?`, never a value), `hash`
//! its 16-hex-digit hash (as `rwsplit classify --fingerprint` prints it), `first_line`
//! and `lines` 1-based input lines where the statement's record or log entry starts;
//! `statements` in a `top_primary` entry counts the input statements merged into it.
//!
//! Exit status: 0 when the report is printed (warnings about input left out, if any, on
//! standard error), 2 for a usage or input error (printed with the line it is on), 1
//! when the report cannot be written.

mod input;
mod report;

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::options::{classifier_builder, parse_rule, DialectArg};
use diesel_rwsplit::classify::Classifier;
use diesel_rwsplit::{Error, Target};

use input::{Format, InputError};
use report::{render, Report, Tally};

const AFTER_HELP: &str = r#"Input formats:
  csv  A pg_stat_statements export: a header row and at least the columns `query` and
       `calls` (any order, any case; other columns are ignored, except `total_exec_time`
       or `total_time`, which adds the share of execution time, and `toplevel`: rows
       with `f`, run inside functions, are skipped). Produce it with:

       psql "$DATABASE_URL" -c "\copy (SELECT queryid, calls, total_exec_time, rows, query FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())) TO 'pgss.csv' WITH (FORMAT csv, HEADER, ENCODING 'UTF8')"

  log  A PostgreSQL server log (stderr destination, English messages) written with
       log_statement = 'all' (or log_min_duration_statement = 0). Every
       `LOG:  statement: ...` and `LOG:  execute <name>: ...` entry is one call; lines
       that do not start an entry continue the previous one (multi-line statements);
       `DETAIL:  parameters: ...`, ERROR/STATEMENT echoes and other messages are
       ignored. Supported log_line_prefix: any that starts with a timestamp (%m, %t or
       %n), e.g. the default '%m [%p] ', Debian's '%m [%p] %q%u@%d ', RDS's
       '%t:%r:%u@%d:[%p]:'; or an empty prefix. Not supported: syslog, eventlog,
       csvlog, jsonlog.

  digest-tsv, digest-csv
       A MySQL/MariaDB performance_schema.events_statements_summary_by_digest export
       with a header row and at least the columns DIGEST_TEXT and COUNT_STAR (any order,
       any case; SUM_TIMER_WAIT, in picoseconds, adds the share of execution time; rows
       with a NULL DIGEST_TEXT are skipped with a warning). digest-tsv is what
       `mariadb --batch` (`mysql --batch`) prints; digest-csv is CSV. Produce it (the
       account needs SELECT on the table; performance_schema = ON at server start) with:

       mariadb --batch -h "$HOST" -u "$USER" -p "$DATABASE" -e "SELECT SCHEMA_NAME, DIGEST, DIGEST_TEXT, COUNT_STAR, SUM_TIMER_WAIT FROM performance_schema.events_statements_summary_by_digest WHERE SCHEMA_NAME = DATABASE()" > digests.tsv

       MariaDB leaves statements run as prepared statements (the binary protocol, as
       diesel-async runs queries with bind values) out of this table: audit a general
       log for such an application.

  mysql-log
       A MySQL/MariaDB general query log (general_log = 1, log_output = FILE), as
       MariaDB writes it (`241204  1:02:03<TAB>    12 Query<TAB>SELECT 1`, two tabs
       instead of an unchanged time) or MySQL 5.7/8
       (`2024-12-04T01:02:03.123456Z<TAB>   12 Query<TAB>SELECT 1`). Every Query and
       Execute entry is one call (not Prepare, Connect, Quit, ...); lines that do not
       start an entry continue the previous one; the server's header lines are skipped.

  Without --format: the extension chooses (.csv: csv, or digest-csv/digest-tsv when
  the header names DIGEST_TEXT; .tsv: digest-tsv; .log: mysql-log when the first line
  is a general log line, else log), else the first non-blank line.

Dialect: without --dialect, mysql for digest-tsv, digest-csv and mysql-log, postgres
for csv and log.

Output: tables; with --json one object with the fields format_version, input, format,
dialect, statements, distinct_statements, calls, replica_calls, primary_calls,
replica_distinct_statements, primary_distinct_statements, replica_share_of_calls,
replica_share_of_distinct_statements, exec_time_ms, calls_by_reason,
distinct_statements_by_reason, top_primary (rank, fingerprint, hash, reason, calls,
share_of_calls, statements, first_line) and unknown (fingerprint, hash, calls, lines).
Shares are fractions from 0 to 1, or null when the total is 0.

Exit status: 0 report printed (warnings about skipped input on stderr); 2 usage or
input error (with its line number); 1 the report could not be written."#;

/// Arguments of `rwsplit audit`.
///
/// Reads a `pg_stat_statements` CSV export or a PostgreSQL `log_statement = 'all'` log,
/// or a MySQL/MariaDB `performance_schema` digest export or general query log,
/// classifies every statement as `rwsplit classify` would, and reports how many calls
/// (and distinct statements) a replica could serve, the statements that would go to the
/// primary (most calls first, with their reason and fingerprint), calls per reason, and
/// the statements it could not classify. See the module documentation for the formats.
#[derive(Debug, clap::Args)]
#[command(after_long_help = AFTER_HELP)]
pub(crate) struct AuditArgs {
    /// The export or log to read; `-` for standard input.
    #[arg(value_name = "FILE")]
    input: PathBuf,
    /// Input format [default: from the extension (.csv, .tsv, .log) and the first line].
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// SQL dialect of the statements [default: mysql for digest-tsv, digest-csv and
    /// mysql-log, else postgres].
    #[arg(long, value_enum)]
    dialect: Option<DialectArg>,
    /// A function that writes (it sends a statement calling it to the primary). Repeatable.
    #[arg(long = "write-function", value_name = "NAME")]
    write_functions: Vec<String>,
    /// A function to treat as read-only, overriding a built-in side-effect one. Repeatable.
    #[arg(long = "read-only-function", value_name = "NAME")]
    read_only_functions: Vec<String>,
    /// A routing rule `REGEX=primary|replica` (split on the last `=`), tried first, in order. Repeatable.
    #[arg(long = "rule", value_name = "REGEX=TARGET", value_parser = parse_rule)]
    rules: Vec<(String, Target)>,
    /// How many primary-bound statements to list, most calls first.
    #[arg(long, value_name = "N", default_value_t = 10)]
    top: usize,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    json: bool,
}

fn build(args: &AuditArgs, dialect: DialectArg) -> Result<Classifier, String> {
    let builder = classifier_builder(
        dialect,
        &args.write_functions,
        &args.read_only_functions,
        &args.rules,
    );
    builder.build().map_err(|err| {
        let detail = std::error::Error::source(&err)
            .map(|s| format!(": {s}"))
            .unwrap_or_default();
        if let Error::InvalidRule { index, .. } = &err {
            let pattern = args.rules.get(*index).map_or("", |(p, _)| p.as_str());
            format!("--rule {pattern:?}: {err}{detail}")
        } else {
            format!("{err}{detail}")
        }
    })
}

/// Why there is no report: exit code 2 either way.
enum Failure {
    /// A bad option (`--rule`, ...): not about the input.
    Usage(String),
    /// The input cannot be read or audited.
    Input(InputError),
}

impl From<InputError> for Failure {
    fn from(err: InputError) -> Self {
        Failure::Input(err)
    }
}

pub(crate) fn run(args: AuditArgs) -> ExitCode {
    let name = if is_stdin(&args.input) {
        "standard input".to_owned()
    } else {
        args.input.display().to_string()
    };
    let (report, warnings) = match audit(&args) {
        Ok(audited) => audited,
        Err(Failure::Usage(message)) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
        Err(Failure::Input(err)) => {
            eprintln!("error: {name}: {err}");
            return ExitCode::from(2);
        }
    };
    for warning in &warnings {
        eprintln!("warning: {name}: {warning}");
    }
    let mut out = BufWriter::new(io::stdout().lock());
    let written = if args.json {
        serde_json::to_writer_pretty(&mut out, &report)
            .map_err(io::Error::from)
            .and_then(|()| writeln!(out))
    } else {
        render(&report, &mut out)
    }
    .and_then(|()| out.flush());
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: cannot write the report: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Open the input, tell its format (and so the dialect), build the classifier, then
/// read and tally every statement. The report and the warnings about input left out.
fn audit(args: &AuditArgs) -> Result<(Report, Vec<String>), Failure> {
    let reader: Box<dyn BufRead> = if is_stdin(&args.input) {
        Box::new(io::stdin().lock())
    } else {
        let file =
            File::open(&args.input).map_err(|e| InputError::whole(format!("cannot open: {e}")))?;
        Box::new(BufReader::with_capacity(1 << 16, file))
    };
    let opened = input::open(reader)?;
    let extension = if is_stdin(&args.input) {
        None
    } else {
        args.input.extension().and_then(|e| e.to_str())
    };
    let Some(format) = args.format.or_else(|| opened.detect(extension)) else {
        let first: String = opened.first().chars().take(60).collect();
        return Err(InputError::at(
            opened.first_line(),
            format!(
                "cannot tell the input format: {first:?} is neither a header with `query` and `calls` (pg_stat_statements) or `DIGEST_TEXT` and `COUNT_STAR` (performance_schema digests) columns, nor a line of a PostgreSQL log (with a supported prefix) or of a MySQL/MariaDB general query log; pass --format csv|log|digest-tsv|digest-csv|mysql-log"
            ),
        )
        .into());
    };
    let dialect = args.dialect.unwrap_or(format.dialect());
    let classifier = build(args, dialect).map_err(Failure::Usage)?;
    let mut tally = Tally::new(&classifier);
    let warnings = opened.read(format, |statement| tally.add(&statement))?;
    Ok((tally.report(args, format, dialect), warnings))
}

fn is_stdin(path: &Path) -> bool {
    path.as_os_str() == "-"
}
