//! `rwsplit classify`: judge statements read one per line from standard input.

use std::io::{self, BufRead, BufWriter, Write};
use std::process::ExitCode;

use diesel_rwsplit::classify::{Classifier, Verdict};
use diesel_rwsplit::{Error, Target};

use crate::options::{classifier_builder, parse_rule, DialectArg};

/// Arguments of `rwsplit classify`.
///
/// Reads one statement per line on stdin and prints one line per statement: `replica`, or
/// `primary`, a tab and the reason (`write_statement`, `locking_read`, ...). Blank lines
/// are skipped and print nothing. With `--fingerprint`, every line has four tab-separated
/// fields: target, reason (empty for a replica), the fingerprint hash as 16 hex digits and
/// the fingerprint text.
#[derive(Debug, clap::Args)]
pub(crate) struct ClassifyArgs {
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
    /// Also print each statement's fingerprint hash and text.
    #[arg(long)]
    fingerprint: bool,
}

fn build(args: &ClassifyArgs) -> Result<Classifier, Error> {
    classifier_builder(
        args.dialect,
        &args.write_functions,
        &args.read_only_functions,
        &args.rules,
    )
    .build()
}

pub(crate) fn run(args: ClassifyArgs) -> ExitCode {
    let classifier = match build(&args) {
        Ok(c) => c,
        Err(err) => {
            let detail = std::error::Error::source(&err)
                .map(|s| format!(": {s}"))
                .unwrap_or_default();
            if let Error::InvalidRule { index, .. } = &err {
                let pattern = args.rules.get(*index).map_or("", |(p, _)| p.as_str());
                eprintln!("error: --rule {pattern:?}: {err}{detail}");
            } else {
                eprintln!("error: {err}{detail}");
            }
            return ExitCode::from(2);
        }
    };
    match classify_lines(
        &classifier,
        args.fingerprint,
        io::stdin().lock(),
        io::stdout().lock(),
    ) {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (`| head`) is a normal end for a filter.
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn classify_lines(
    classifier: &Classifier,
    fingerprint: bool,
    mut input: impl BufRead,
    output: impl Write,
) -> io::Result<()> {
    let mut out = BufWriter::new(output);
    let mut raw = Vec::new();
    loop {
        raw.clear();
        if input.read_until(b'\n', &mut raw)? == 0 {
            break;
        }
        // Invalid UTF-8 is judged as replaced characters: the server would reject it anyway.
        let line = String::from_utf8_lossy(&raw);
        let sql = line.trim_end_matches(['\n', '\r']);
        if sql.trim().is_empty() {
            continue;
        }
        let verdict = classifier.classify(sql);
        let (target, reason) = match verdict {
            Verdict::Replica => ("replica", ""),
            Verdict::Primary(reason) => ("primary", reason.as_str()),
        };
        if fingerprint {
            let fp = classifier.fingerprint(sql);
            writeln!(out, "{target}\t{reason}\t{:016x}\t{}", fp.hash(), fp.text())?;
        } else if reason.is_empty() {
            writeln!(out, "{target}")?;
        } else {
            writeln!(out, "{target}\t{reason}")?;
        }
    }
    out.flush()
}
