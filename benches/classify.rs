//! Classifier cost per statement over the labelled corpora, side by side with parsing the
//! same statements with sqlparser-rs (the parser PgCat uses).
//!
//! Run: `cargo bench --bench classify`. Before criterion's own groups it prints a table of
//! per-statement medians (each statement timed alone, median of its samples; then the
//! median over statements) for the classifier and for sqlparser, and their ratio.

#[path = "../tests/data/classify/corpus.rs"]
mod corpus;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use diesel_rwsplit::classify::{Classifier, Dialect};
use sqlparser::dialect::{MySqlDialect, PostgreSqlDialect};
use sqlparser::parser::Parser;

struct Set {
    name: &'static str,
    dialect: Dialect,
    /// Every statement of the set.
    all: Vec<String>,
    /// Those sqlparser parses (the fair comparison).
    parsed: Vec<String>,
}

fn sqlparser_parse(dialect: Dialect, sql: &str) -> bool {
    match dialect {
        Dialect::Postgres => Parser::parse_sql(&PostgreSqlDialect {}, sql).is_ok(),
        Dialect::Mysql => Parser::parse_sql(&MySqlDialect {}, sql).is_ok(),
    }
}

/// Diesel-generated shapes: quoted `"table"."column"` or backticked `` `table`.`column` ``.
fn typical(sql: &str) -> bool {
    sql.contains("\".\"") || sql.contains("`.`")
}

fn sets() -> Vec<Set> {
    let mut sets = Vec::new();
    for (dialect, corpus_name, typical_name) in [
        (Dialect::Postgres, "postgres_corpus", "postgres_diesel"),
        (Dialect::Mysql, "mysql_corpus", "mysql_diesel"),
    ] {
        let corpus = corpus::load(dialect);
        let all: Vec<String> = corpus.entries.iter().map(|e| e.sql.clone()).collect();
        for (name, stmts) in [
            (corpus_name, all.clone()),
            (
                typical_name,
                all.iter().filter(|s| typical(s)).cloned().collect(),
            ),
        ] {
            let parsed = stmts
                .iter()
                .filter(|s| sqlparser_parse(dialect, s))
                .cloned()
                .collect();
            sets.push(Set {
                name,
                dialect,
                all: stmts,
                parsed,
            });
        }
    }
    sets
}

/// Median time of one call of `f`, from `samples` batches sized to take about `target`.
fn per_call(mut f: impl FnMut(), samples: usize, target: Duration) -> f64 {
    let start = Instant::now();
    let mut calibration = 0u64;
    while start.elapsed() < target / 4 || calibration < 3 {
        f();
        calibration += 1;
    }
    let one = start.elapsed().as_secs_f64() / calibration as f64;
    let batch = ((target.as_secs_f64() / one) as u64).max(1);
    let mut times: Vec<f64> = (0..samples)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..batch {
                f();
            }
            t.elapsed().as_secs_f64() / batch as f64
        })
        .collect();
    median(&mut times)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn summary(sets: &[Set]) {
    let samples = 7;
    let target = Duration::from_micros(300);
    println!();
    println!(
        "per-statement medians (ns); ratio = sqlparser / classifier on the statements both handle"
    );
    println!(
        "{:<18} {:>6} {:>10} {:>8} {:>14} {:>14} {:>8}",
        "set", "stmts", "classify", "parsed", "classify(par.)", "sqlparser", "ratio"
    );
    for set in sets {
        let classifier = Classifier::new(set.dialect);
        let mut ours_all: Vec<f64> = set
            .all
            .iter()
            .map(|sql| {
                per_call(
                    || {
                        black_box(classifier.classify(black_box(sql)));
                    },
                    samples,
                    target,
                )
            })
            .collect();
        let mut ours_parsed: Vec<f64> = set
            .parsed
            .iter()
            .map(|sql| {
                per_call(
                    || {
                        black_box(classifier.classify(black_box(sql)));
                    },
                    samples,
                    target,
                )
            })
            .collect();
        let mut theirs: Vec<f64> = set
            .parsed
            .iter()
            .map(|sql| {
                per_call(
                    || {
                        black_box(sqlparser_parse(set.dialect, black_box(sql)));
                    },
                    samples,
                    target,
                )
            })
            .collect();
        let ours_all = median(&mut ours_all) * 1e9;
        let ours_parsed = median(&mut ours_parsed) * 1e9;
        let theirs = median(&mut theirs) * 1e9;
        println!(
            "{:<18} {:>6} {:>10.0} {:>8} {:>14.0} {:>14.0} {:>7.1}x",
            set.name,
            set.all.len(),
            ours_all,
            set.parsed.len(),
            ours_parsed,
            theirs,
            theirs / ours_parsed
        );
    }
    println!();
}

fn bench(c: &mut Criterion, sets: &[Set]) {
    for set in sets {
        let classifier = Classifier::new(set.dialect);
        let mut group = c.benchmark_group(set.name);
        group.throughput(Throughput::Elements(set.parsed.len() as u64));
        group.bench_function("classify", |b| {
            b.iter(|| {
                for sql in &set.parsed {
                    black_box(classifier.classify(black_box(sql)));
                }
            })
        });
        group.bench_function("fingerprint_hash", |b| {
            b.iter(|| {
                for sql in &set.parsed {
                    black_box(classifier.fingerprint_hash(black_box(sql)));
                }
            })
        });
        group.bench_function("sqlparser", |b| {
            b.iter(|| {
                for sql in &set.parsed {
                    black_box(sqlparser_parse(set.dialect, black_box(sql)));
                }
            })
        });
        group.finish();
    }
}

fn main() {
    let sets = sets();
    // `cargo test --benches` runs this binary with `--test`: keep that quick.
    let quick = std::env::args().any(|a| a == "--test");
    if !quick {
        summary(&sets);
    }
    let mut criterion = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    bench(&mut criterion, &sets);
    criterion.final_summary();
}
