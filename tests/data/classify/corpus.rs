//! Loader for the labelled classifier corpora (`postgres.tsv`, `mysql.tsv`), shared by the
//! corpus, property, allocation and standby tests and the benchmark through `#[path]`.
#![allow(dead_code)]

use diesel_rwsplit::classify::{Classifier, Dialect, Verdict};
use diesel_rwsplit::{SwitchReason, Target};

/// One labelled statement.
#[derive(Debug, Clone)]
pub struct Entry {
    /// 1-based line in the data file.
    pub line: usize,
    pub expected: Verdict,
    pub sql: String,
}

/// A corpus and the classifier configured by its `#!` directives.
#[derive(Debug)]
pub struct Corpus {
    pub dialect: Dialect,
    pub path: &'static str,
    pub entries: Vec<Entry>,
    pub classifier: Classifier,
}

pub const POSTGRES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/classify/postgres.tsv"
);
pub const MYSQL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/classify/mysql.tsv");

pub fn parse_label(label: &str) -> Option<Verdict> {
    if label == "replica" {
        return Some(Verdict::Replica);
    }
    let reason = label.strip_prefix("primary:")?;
    reason.parse::<SwitchReason>().ok().map(Verdict::Primary)
}

pub fn label(verdict: Verdict) -> String {
    match verdict {
        Verdict::Replica => "replica".to_owned(),
        Verdict::Primary(reason) => format!("primary:{reason}"),
    }
}

/// Load a corpus; panics with the line number on a malformed line.
pub fn load(dialect: Dialect) -> Corpus {
    let path = match dialect {
        Dialect::Postgres => POSTGRES,
        Dialect::Mysql => MYSQL,
    };
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut builder = Classifier::builder(dialect);
    let mut entries = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if let Some(directive) = raw.strip_prefix("#!") {
            let (key, value) = directive
                .trim()
                .split_once(' ')
                .unwrap_or_else(|| panic!("{path}:{line}: directive needs a value"));
            builder = match key {
                "write_function" => builder.write_function(value),
                "read_only_function" => builder.read_only_function(value),
                "rule" => {
                    let (pattern, target) = value
                        .rsplit_once('=')
                        .unwrap_or_else(|| panic!("{path}:{line}: rule needs REGEX=target"));
                    let target = match target {
                        "primary" => Target::Primary,
                        "replica" => Target::Replica,
                        other => panic!("{path}:{line}: bad rule target {other}"),
                    };
                    builder.rule(pattern, target)
                }
                other => panic!("{path}:{line}: unknown directive {other}"),
            };
            continue;
        }
        if raw.starts_with('#') || raw.trim().is_empty() {
            continue;
        }
        let (label, sql) = raw
            .split_once('\t')
            .unwrap_or_else(|| panic!("{path}:{line}: expected label<TAB>sql"));
        let expected =
            parse_label(label).unwrap_or_else(|| panic!("{path}:{line}: bad label {label:?}"));
        entries.push(Entry {
            line,
            expected,
            sql: sql.to_owned(),
        });
    }
    let classifier = builder
        .build()
        .unwrap_or_else(|e| panic!("{path}: bad directive: {e}"));
    Corpus {
        dialect,
        path,
        entries,
        classifier,
    }
}

impl Corpus {
    /// Statements that need no user extension to judge: the directives' markers absent.
    pub fn plain(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(|e| {
            !e.sql.contains("route:") && e.expected.reason() != Some(SwitchReason::Rule)
        })
    }
}
