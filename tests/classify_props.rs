//! Property tests of the classifier, for both dialects:
//! - a statement wrapped in arbitrary comments, whitespace and keyword case keeps its verdict;
//! - changing a literal's content never changes a verdict (nor the fingerprint);
//! - arbitrary input never panics, and the allocation-free hash equals the fingerprint's.

use diesel_rwsplit::classify::{Classifier, Dialect, Verdict};
use diesel_rwsplit::SwitchReason;
use proptest::prelude::*;

/// Statements as token lists, so trivia can be put between any two tokens.
const PG_STATEMENTS: &[&[&str]] = &[
    &["DELETE", "FROM", "users", "WHERE", "id", "=", "1"],
    &[
        "INSERT",
        "INTO",
        "users",
        "(",
        "name",
        ")",
        "VALUES",
        "(",
        "'bob'",
        ")",
        "RETURNING",
        "id",
    ],
    &[
        "INSERT",
        "INTO",
        "\"users\"",
        "(",
        "\"id\"",
        ")",
        "VALUES",
        "(",
        "$1",
        ")",
        "ON",
        "CONFLICT",
        "(",
        "\"id\"",
        ")",
        "DO",
        "UPDATE",
        "SET",
        "\"id\"",
        "=",
        "excluded",
        ".",
        "\"id\"",
    ],
    &["UPDATE", "users", "SET", "name", "=", "'x'"],
    &[
        "MERGE", "INTO", "a", "USING", "b", "ON", "a", ".", "id", "=", "b", ".", "id", "WHEN",
        "MATCHED", "THEN", "DELETE",
    ],
    &[
        "WITH",
        "d",
        "AS",
        "(",
        "DELETE",
        "FROM",
        "t",
        "RETURNING",
        "*",
        ")",
        "SELECT",
        "*",
        "FROM",
        "d",
    ],
    &["SELECT", "*", "INTO", "t2", "FROM", "t"],
    &["CREATE", "TABLE", "t", "(", "a", "int", ")"],
    &["DROP", "TABLE", "t"],
    &["COPY", "t", "FROM", "STDIN"],
    &["EXPLAIN", "ANALYZE", "DELETE", "FROM", "t"],
    &[
        "EXPLAIN", "(", "ANALYZE", ",", "BUFFERS", ")", "DELETE", "FROM", "t",
    ],
    &[
        "SELECT", "*", "FROM", "jobs", "FOR", "UPDATE", "SKIP", "LOCKED",
    ],
    &["SELECT", "*", "FROM", "jobs", "FOR", "NO", "KEY", "UPDATE"],
    &["SELECT", "nextval", "(", "'s'", ")"],
    &[
        "SELECT",
        "pg_catalog",
        ".",
        "pg_advisory_lock",
        "(",
        "1",
        ")",
    ],
    &["BEGIN"],
    &["START", "TRANSACTION", "READ", "ONLY"],
    &["COMMIT"],
    &["SET", "search_path", "=", "app"],
    &["CREATE", "TEMP", "TABLE", "t", "(", "a", "int", ")"],
    &["SELECT", "1", ";", "DELETE", "FROM", "t"],
    &[
        "SELECT",
        "\"users\"",
        ".",
        "\"id\"",
        "FROM",
        "\"users\"",
        "WHERE",
        "(",
        "\"users\"",
        ".",
        "\"id\"",
        "=",
        "$1",
        ")",
        "LIMIT",
        "$2",
    ],
];

const MYSQL_STATEMENTS: &[&[&str]] = &[
    &["DELETE", "FROM", "`users`", "WHERE", "`id`", "=", "?"],
    &[
        "INSERT",
        "INTO",
        "`users`",
        "(",
        "`name`",
        ")",
        "VALUES",
        "(",
        "?",
        ")",
        "ON",
        "DUPLICATE",
        "KEY",
        "UPDATE",
        "`name`",
        "=",
        "VALUES",
        "(",
        "`name`",
        ")",
    ],
    &["REPLACE", "INTO", "t", "VALUES", "(", "1", ")"],
    &["UPDATE", "t", "SET", "a", "=", "\"x\""],
    &["SELECT", "*", "FROM", "t", "LOCK", "IN", "SHARE", "MODE"],
    &["SELECT", "*", "FROM", "t", "FOR", "UPDATE"],
    &["SELECT", "GET_LOCK", "(", "'a'", ",", "1", ")"],
    &["SELECT", "NEXT", "VALUE", "FOR", "s"],
    &["SELECT", "@a", ":=", "1"],
    &["SELECT", "a", "INTO", "OUTFILE", "'/tmp/x'", "FROM", "t"],
    &["LOAD", "DATA", "INFILE", "'x'", "INTO", "TABLE", "t"],
    &["USE", "db"],
    &["LOCK", "TABLES", "t", "READ"],
    &["XA", "START", "'x'"],
    &[
        "SELECT", "`users`", ".", "`id`", "FROM", "`users`", "WHERE", "(", "`users`", ".", "`id`",
        "=", "?", ")", "LIMIT", "?",
    ],
];

fn statements(dialect: Dialect) -> &'static [&'static [&'static str]] {
    match dialect {
        Dialect::Postgres => PG_STATEMENTS,
        Dialect::Mysql => MYSQL_STATEMENTS,
    }
}

/// Text for a comment body: SQL-looking words and quote characters, never a terminator.
fn comment_body() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just("SELECT".to_owned()),
            Just("FOR UPDATE".to_owned()),
            Just("DELETE FROM t;".to_owned()),
            Just("'".to_owned()),
            Just("\"".to_owned()),
            Just("`".to_owned()),
            Just("$$".to_owned()),
            Just(";".to_owned()),
            "[a-zA-Z0-9 ]{0,8}",
        ],
        0..5,
    )
    .prop_map(|parts| parts.join(" "))
}

/// Trivia between two tokens: at least one space-like separator, maybe comments.
fn trivia(dialect: Dialect) -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just(" ".to_owned()),
        Just("\t".to_owned()),
        Just("\n".to_owned()),
        Just("\r\n".to_owned()),
        Just("  ".to_owned()),
        comment_body().prop_map(|b| format!("/* {b} */")),
        comment_body().prop_map(|b| format!("-- {b}\n")),
        comment_body().prop_map(move |b| match dialect {
            Dialect::Postgres => format!("/* a /* {b} */ b */"),
            Dialect::Mysql => format!("# {b}\n"),
        }),
    ];
    prop::collection::vec(piece, 1..3).prop_map(|v| format!(" {} ", v.concat()))
}

fn recase(token: &str, mask: u64) -> String {
    // Only unquoted words change case: quoted identifiers and literals are exact.
    if !token.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return token.to_owned();
    }
    token
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if mask >> (i % 64) & 1 == 1 {
                c.to_ascii_lowercase()
            } else {
                c.to_ascii_uppercase()
            }
        })
        .collect()
}

fn render(tokens: &[&str], seps: &[String], masks: &[u64], lead: &str, trail: &str) -> String {
    let mut out = String::from(lead);
    for (i, token) in tokens.iter().enumerate() {
        if i > 0 {
            out.push_str(&seps[i % seps.len()]);
        }
        out.push_str(&recase(token, masks[i % masks.len()]));
    }
    out.push_str(trail);
    out
}

fn dressed(dialect: Dialect) -> impl Strategy<Value = (usize, String)> {
    let n = statements(dialect).len();
    (
        0..n,
        prop::collection::vec(trivia(dialect), 1..8),
        prop::collection::vec(any::<u64>(), 1..8),
        trivia(dialect),
        prop_oneof![
            Just(String::new()),
            Just(";".to_owned()),
            trivia(dialect),
            Just("; ;".to_owned())
        ],
    )
        .prop_map(move |(i, seps, masks, lead, trail)| {
            let tokens = statements(dialect)[i];
            (i, render(tokens, &seps, &masks, &lead, &trail))
        })
}

fn plain(dialect: Dialect, i: usize) -> String {
    statements(dialect)[i].join(" ")
}

/// A literal of the dialect with arbitrary content, correctly escaped.
fn literal(dialect: Dialect) -> impl Strategy<Value = String> {
    let content = ".{0,24}";
    match dialect {
        Dialect::Postgres => prop_oneof![
            content.prop_map(|s: String| format!("'{}'", s.replace('\'', "''"))),
            content.prop_map(|s: String| format!(
                "E'{}'",
                s.replace('\\', "\\\\").replace('\'', "\\'")
            )),
            content.prop_map(|s: String| format!("$${}$$", s.replace('$', ""))),
            content.prop_map(|s: String| format!("$q$ {} $q$", s.replace("$q$", ""))),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| format!("{:e}", f.abs())),
        ]
        .boxed(),
        Dialect::Mysql => prop_oneof![
            content.prop_map(|s: String| format!(
                "'{}'",
                s.replace('\\', "\\\\").replace('\'', "\\'")
            )),
            content.prop_map(|s: String| format!(
                "\"{}\"",
                s.replace('\\', "\\\\").replace('"', "\"\"")
            )),
            any::<i64>().prop_map(|n| n.to_string()),
        ]
        .boxed(),
    }
}

/// Statements with literal slots (`{}`), covering every verdict.
const PG_LITERAL_TEMPLATES: &[&str] = &[
    "SELECT {} FROM users WHERE name = {}",
    "SELECT * FROM users WHERE id IN ({}, {}) FOR UPDATE",
    "INSERT INTO users (name) VALUES ({}), ({})",
    "UPDATE users SET name = {} WHERE id = {}",
    "SELECT nextval({})",
    "SELECT {}; SELECT {}",
    "COPY (SELECT {}) TO STDOUT",
    "EXPLAIN (ANALYZE) SELECT {}",
    "SET search_path = {}",
    "SELECT {} AS a UNION SELECT {}",
];

const MYSQL_LITERAL_TEMPLATES: &[&str] = &[
    "SELECT {} FROM users WHERE name = {}",
    "SELECT * FROM users WHERE id IN ({}, {}) LOCK IN SHARE MODE",
    "INSERT INTO users (name) VALUES ({}), ({})",
    "SELECT GET_LOCK({}, {})",
    "SELECT {}; SELECT {}",
    "SET @x = {}, @y = {}",
];

/// Put `a` and `b` in the template's first and second `{}`. Split once, so that a
/// literal that itself contains `{}` is never substituted into.
fn fill(template: &str, a: &str, b: &str) -> String {
    let mut parts = template.splitn(3, "{}");
    let mut out = parts.next().unwrap_or_default().to_owned();
    for (value, rest) in [a, b].into_iter().zip(parts) {
        out.push_str(value);
        out.push_str(rest);
    }
    out
}

fn check_dressed(dialect: Dialect, i: usize, sql: &str) -> Result<(), TestCaseError> {
    let c = Classifier::new(dialect);
    let want = c.classify(&plain(dialect, i));
    prop_assert_ne!(want, Verdict::Primary(SwitchReason::Unknown));
    prop_assert_eq!(c.classify(sql), want, "{}", sql);
    prop_assert_eq!(
        c.fingerprint(sql),
        c.fingerprint(&plain(dialect, i)),
        "{}",
        sql
    );
    Ok(())
}

fn check_literals(dialect: Dialect, template: &str, a: &str, b: &str) -> Result<(), TestCaseError> {
    let c = Classifier::new(dialect);
    let base = fill(template, "'x'", "1");
    let sql = fill(template, a, b);
    prop_assert_eq!(c.classify(&sql), c.classify(&base), "{}", sql);
    prop_assert_eq!(c.fingerprint(&sql), c.fingerprint(&base), "{}", sql);
    Ok(())
}

fn check_never_panics(dialect: Dialect, sql: &str) -> Result<(), TestCaseError> {
    let c = Classifier::new(dialect);
    let _ = c.classify(sql);
    let fp = c.fingerprint(sql);
    prop_assert_eq!(c.fingerprint_hash(sql), fp.hash());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn postgres_dressing_keeps_the_verdict((i, sql) in dressed(Dialect::Postgres)) {
        check_dressed(Dialect::Postgres, i, &sql)?;
    }

    #[test]
    fn mysql_dressing_keeps_the_verdict((i, sql) in dressed(Dialect::Mysql)) {
        check_dressed(Dialect::Mysql, i, &sql)?;
    }

    #[test]
    fn postgres_literal_content_never_matters(
        t in 0..PG_LITERAL_TEMPLATES.len(),
        a in literal(Dialect::Postgres),
        b in literal(Dialect::Postgres),
    ) {
        check_literals(Dialect::Postgres, PG_LITERAL_TEMPLATES[t], &a, &b)?;
    }

    #[test]
    fn mysql_literal_content_never_matters(
        t in 0..MYSQL_LITERAL_TEMPLATES.len(),
        a in literal(Dialect::Mysql),
        b in literal(Dialect::Mysql),
    ) {
        check_literals(Dialect::Mysql, MYSQL_LITERAL_TEMPLATES[t], &a, &b)?;
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let sql = String::from_utf8_lossy(&bytes);
        check_never_panics(Dialect::Postgres, &sql)?;
        check_never_panics(Dialect::Mysql, &sql)?;
    }

    #[test]
    fn sql_shaped_noise_never_panics(sql in "[-'\"`$/*#;()\\[\\],.:@?!=<>|&%^~+ \n\taAeEsSlLuUpPdDrRfFoO0-9\\\\é]{0,80}") {
        check_never_panics(Dialect::Postgres, &sql)?;
        check_never_panics(Dialect::Mysql, &sql)?;
    }
}
