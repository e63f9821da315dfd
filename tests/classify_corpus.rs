//! The labelled corpora: every statement's verdict, reason included, must match its label.

#[path = "data/classify/corpus.rs"]
mod corpus;

use std::collections::BTreeMap;

use diesel_rwsplit::classify::{Dialect, Verdict};
use diesel_rwsplit::SwitchReason;

/// Every reason the classifier can give (the connection adds the hook and explicit ones).
const CLASSIFIER_REASONS: [SwitchReason; 8] = [
    SwitchReason::WriteStatement,
    SwitchReason::LockingRead,
    SwitchReason::SideEffectFunction,
    SwitchReason::TransactionBegin,
    SwitchReason::TransactionControl,
    SwitchReason::SessionState,
    SwitchReason::Rule,
    SwitchReason::Unknown,
];

fn check(dialect: Dialect, minimum: usize) {
    let corpus = corpus::load(dialect);
    let mut mismatches = Vec::new();
    let mut per_label: BTreeMap<String, usize> = BTreeMap::new();
    for entry in &corpus.entries {
        *per_label.entry(corpus::label(entry.expected)).or_default() += 1;
        let got = corpus.classifier.classify(&entry.sql);
        if got != entry.expected {
            mismatches.push(format!(
                "{}:{}: expected {}, got {}: {}",
                corpus.path,
                entry.line,
                corpus::label(entry.expected),
                corpus::label(got),
                entry.sql
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} statements misclassified:\n{}",
        mismatches.len(),
        corpus.entries.len(),
        mismatches.join("\n")
    );
    assert!(
        corpus.entries.len() >= minimum,
        "{}: {} statements, want at least {minimum}",
        corpus.path,
        corpus.entries.len()
    );
    let mut labels = vec![corpus::label(Verdict::Replica)];
    labels.extend(
        CLASSIFIER_REASONS
            .iter()
            .map(|r| corpus::label(Verdict::Primary(*r))),
    );
    for label in labels {
        assert!(
            per_label.contains_key(&label),
            "{}: no statement labelled {label}",
            corpus.path
        );
    }
    eprintln!(
        "{}: {} statements: {per_label:?}",
        corpus.path,
        corpus.entries.len()
    );
}

#[test]
fn postgres_corpus() {
    check(Dialect::Postgres, 300);
}

#[test]
fn mysql_corpus() {
    check(Dialect::Mysql, 120);
}

#[test]
fn corpus_fingerprints_never_hold_literals_and_match_the_fast_hash() {
    for dialect in [Dialect::Postgres, Dialect::Mysql] {
        let corpus = corpus::load(dialect);
        for entry in &corpus.entries {
            let fp = corpus.classifier.fingerprint(&entry.sql);
            assert_eq!(
                corpus.classifier.fingerprint_hash(&entry.sql),
                fp.hash(),
                "{}",
                entry.sql
            );
            let left = literals_left(fp.text(), dialect);
            assert!(
                left.is_empty(),
                "{}:{}: literal left in {:?}: {left:?} (from {:?})",
                corpus.path,
                entry.line,
                fp.text(),
                entry.sql
            );
        }
    }
}

/// What looks like a literal in a fingerprint's text, read the way the dialect
/// lexes it: quoted identifiers (`"..."` in PostgreSQL, `` `...` `` in MySQL, with
/// doubled quotes inside) and unquoted identifiers (`t2`, `sha256`, `foo$bar`) are
/// skipped; a string quote (`'`, and `"` in MySQL), a `$` that starts a token (a
/// dollar-quoted string or a `$1` placeholder left unfolded) and a number that starts
/// a token (`42`, `0.5`, `.5`, `1e3`) are reported.
fn literals_left(text: &str, dialect: Dialect) -> Vec<String> {
    let ident_quote = match dialect {
        Dialect::Postgres => '"',
        Dialect::Mysql => '`',
    };
    let is_ident = |c: char| c.is_alphanumeric() || c == '_' || c == '$';
    let chars: Vec<char> = text.chars().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == ident_quote {
            // To the closing quote; a doubled quote is one quote inside.
            i += 1;
            while i < chars.len() {
                if chars[i] == ident_quote {
                    if chars.get(i + 1) == Some(&ident_quote) {
                        i += 2;
                        continue;
                    }
                    break;
                }
                i += 1;
            }
            i += 1;
        } else if c.is_alphabetic() || c == '_' {
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()))
        {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            found.push(format!(
                "number {}",
                chars[start..i].iter().collect::<String>()
            ));
        } else if c == '\'' || (c == '"' && dialect == Dialect::Mysql) {
            found.push(format!("string quote {c} at {i}"));
            i += 1;
        } else if c == '$' {
            let start = i;
            i += 1;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            found.push(format!(
                "dollar quote or placeholder {}",
                chars[start..i].iter().collect::<String>()
            ));
        } else {
            i += 1;
        }
    }
    found
}

#[test]
fn the_literal_check_tells_literals_from_identifiers() {
    let pg = |text| literals_left(text, Dialect::Postgres);
    let my = |text| literals_left(text, Dialect::Mysql);
    for clean in [
        "select \"users\".\"id\" from \"users\" where (\"users\".\"id\" = ?) limit ?",
        "select ? as \"x\"\"y\", ? as \"'; DELETE FROM users; --\"",
        "select * from t2 join \"t3\" on t2.id = \"t3\".\"id 4\"",
        "select lo_truncate64(?, ?), sha256(?), foo$bar from t",
        "rollback to savepoint diesel_savepoint_1",
    ] {
        assert_eq!(pg(clean), Vec::<String>::new(), "{clean}");
    }
    for dirty in [
        "select * from users where id = 42",
        "select percentile_cont(0.5) within group (order by total) from orders",
        "select * from \"users\" limit 10",
        "select .5",
        "select 'x' as \"a\"",
        "select \"a\" from \"b\" where c = 'bob'",
        "select $$raw$$",
        "select \"users\".\"id\" from \"users\" where \"id\" = $1",
    ] {
        assert!(!pg(dirty).is_empty(), "{dirty}");
    }
    assert_eq!(
        my("select `a``b`, `x'y` from t2 where c = ?"),
        Vec::<String>::new()
    );
    assert!(!my("select `a` from t where c = \"bob\"").is_empty());
    assert!(!my("select `a` from t limit 10").is_empty());
}
