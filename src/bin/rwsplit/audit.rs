//! `rwsplit audit`: estimate, before adopting, how much of a workload replicas could
//! serve, from a `pg_stat_statements` export or a PostgreSQL statement log.
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
//! Without `--format`, a `.csv` or `.log` extension decides, else the first non-blank line.
//!
//! # Output
//!
//! Tables by default; with `--json` one JSON object (`format_version` 1):
//!
//! | field | meaning |
//! |---|---|
//! | `format_version` | `1`; bumped only if a field changes meaning or goes away |
//! | `input`, `format`, `dialect` | the file (`-` for stdin), `csv`/`log`, `postgres`/`mysql` |
//! | `statements` | statements read: CSV rows (top-level ones), or log statements |
//! | `distinct_statements` | distinct statements: by fingerprint (and verdict) |
//! | `calls` | total calls (a log statement is one call) |
//! | `replica_calls`, `primary_calls` | calls a replica could serve / that need the primary |
//! | `replica_distinct_statements`, `primary_distinct_statements` | the same for distinct statements |
//! | `replica_share_of_calls`, `replica_share_of_distinct_statements` | fractions in 0..=1; `null` when the total is 0 |
//! | `exec_time_ms` | `null`, or for a CSV with a time column `{total, replica, replica_share}` |
//! | `calls_by_reason`, `distinct_statements_by_reason` | objects keyed by the reasons that occur (`write_statement`, `locking_read`, ...) |
//! | `top_primary` | up to `--top` objects `{rank, fingerprint, hash, reason, calls, share_of_calls, statements, first_line}`, most calls first |
//! | `unknown` | every statement classified `unknown`: `{fingerprint, hash, calls, lines}`, by first line |
//!
//! `fingerprint` is the normalised text (literals folded to `?`, never a value), `hash`
//! its 16-hex-digit hash (as `rwsplit classify --fingerprint` prints it), `first_line`
//! and `lines` 1-based input lines where the statement's record or log entry starts;
//! `statements` in a `top_primary` entry counts the input statements merged into it.
//!
//! Exit status: 0 when the report is printed, 2 for a usage or input error (printed
//! with the line it is on), 1 when the report cannot be written.

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

  Without --format: a .csv or .log extension decides, else the first non-blank line.

Output: tables; with --json one object with the fields format_version, input, format,
dialect, statements, distinct_statements, calls, replica_calls, primary_calls,
replica_distinct_statements, primary_distinct_statements, replica_share_of_calls,
replica_share_of_distinct_statements, exec_time_ms, calls_by_reason,
distinct_statements_by_reason, top_primary (rank, fingerprint, hash, reason, calls,
share_of_calls, statements, first_line) and unknown (fingerprint, hash, calls, lines).
Shares are fractions from 0 to 1, or null when the total is 0.

Exit status: 0 report printed; 2 usage or input error (with its line number);
1 the report could not be written."#;

/// Arguments of `rwsplit audit`.
///
/// Reads a `pg_stat_statements` CSV export or a PostgreSQL `log_statement = 'all'` log,
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
    /// Input format [default: from the extension (.csv, .log), else the first line].
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// SQL dialect of the statements.
    #[arg(long, value_enum, default_value_t = DialectArg::Postgres)]
    dialect: DialectArg,
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

fn build(args: &AuditArgs) -> Result<Classifier, String> {
    let builder = classifier_builder(
        args.dialect,
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

pub(crate) fn run(args: AuditArgs) -> ExitCode {
    let classifier = match build(&args) {
        Ok(c) => c,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    let name = if is_stdin(&args.input) {
        "standard input".to_owned()
    } else {
        args.input.display().to_string()
    };
    let report = match audit(&args, &classifier) {
        Ok(report) => report,
        Err(err) => {
            eprintln!("error: {name}: {err}");
            return ExitCode::from(2);
        }
    };
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

fn audit(args: &AuditArgs, classifier: &Classifier) -> Result<Report, InputError> {
    let reader: Box<dyn BufRead> = if is_stdin(&args.input) {
        Box::new(io::stdin().lock())
    } else {
        let file =
            File::open(&args.input).map_err(|e| InputError::whole(format!("cannot open: {e}")))?;
        Box::new(BufReader::with_capacity(1 << 16, file))
    };
    let opened = input::open(reader)?;
    let format = match args
        .format
        .or_else(|| format_from_extension(&args.input))
        .or_else(|| opened.sniff())
    {
        Some(format) => format,
        None => {
            let first: String = opened.first().chars().take(60).collect();
            return Err(InputError::at(
                opened.first_line(),
                format!(
                    "cannot tell the input format: {first:?} is neither a CSV header with `query` and `calls` columns nor a PostgreSQL log line with a supported prefix; pass --format csv|log"
                ),
            ));
        }
    };
    let mut tally = Tally::new(classifier);
    opened.read(format, |statement| tally.add(&statement))?;
    Ok(tally.report(args, format))
}

fn is_stdin(path: &Path) -> bool {
    path.as_os_str() == "-"
}

fn format_from_extension(path: &Path) -> Option<Format> {
    let ext = path.extension()?.to_str()?;
    if ext.eq_ignore_ascii_case("csv") {
        Some(Format::Csv)
    } else if ext.eq_ignore_ascii_case("log") {
        Some(Format::Log)
    } else {
        None
    }
}
