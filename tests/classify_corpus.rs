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
            for quote in ['\'', '$'] {
                assert!(
                    !fp.text().contains(quote)
                        || fp.text().contains('`')
                        || fp.text().contains('"'),
                    "{}:{}: literal left in {:?}",
                    corpus.path,
                    entry.line,
                    fp.text()
                );
            }
        }
    }
}
