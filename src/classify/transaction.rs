//! Raw transaction statements the switchable connection treats specially: a
//! `BEGIN … READ ONLY` that a replica can serve, and the statement that ends it.

use super::lexer::{Kind, Lexer, Token};
use super::Dialect;

/// What a raw statement does to a transaction, when that matters for routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TransactionStatement {
    /// One `BEGIN` / `START TRANSACTION` statement whose modes include `READ ONLY`
    /// (and neither `READ WRITE` nor `SERIALIZABLE`, which a hot standby refuses).
    BeginReadOnly,
    /// One `COMMIT`, `END`, `ABORT` or `ROLLBACK` that ends the transaction (not
    /// `ROLLBACK TO SAVEPOINT`, not `… AND CHAIN`).
    End,
    /// One statement whose effect ends with the transaction: `SET LOCAL`,
    /// `SET TRANSACTION`, `SAVEPOINT`, `RELEASE`, `ROLLBACK TO`, a cursor declared
    /// without `WITH HOLD`, `FETCH`, `MOVE`, `CLOSE`.
    Scoped,
}

/// `Some` when `sql` is exactly one statement of those kinds (comments and a
/// trailing `;` allowed); anything else is `None` and is routed as before.
pub(crate) fn transaction_statement(sql: &str, dialect: Dialect) -> Option<TransactionStatement> {
    let tokens: Vec<Token<'_>> = Lexer::new(sql, dialect).collect();
    let mut end = tokens.len();
    while end > 0 && tokens[end - 1].kind == Kind::Semi {
        end -= 1;
    }
    let tokens = &tokens[..end];
    if tokens
        .iter()
        .any(|t| matches!(t.kind, Kind::Semi | Kind::Error))
    {
        return None;
    }
    let first = tokens.first()?;
    let words = || tokens.iter().skip(1);
    let has = |kw: &str| words().any(|t| t.is_kw(kw));
    let has_pair = |a: &str, b: &str| tokens.windows(2).any(|w| w[0].is_kw(a) && w[1].is_kw(b));
    if first.is_kw("BEGIN")
        || (first.is_kw("START") && tokens.get(1).is_some_and(|t| t.is_kw("TRANSACTION")))
    {
        let read_only = has_pair("READ", "ONLY");
        let refused = has_pair("READ", "WRITE") || has("SERIALIZABLE");
        return (read_only && !refused).then_some(TransactionStatement::BeginReadOnly);
    }
    let second = |kw: &str| tokens.get(1).is_some_and(|t| t.is_kw(kw));
    let scoped = (first.is_kw("SET") && (second("LOCAL") || second("TRANSACTION")))
        || first.is_kw("SAVEPOINT")
        || first.is_kw("RELEASE")
        || (first.is_kw("ROLLBACK") && has("TO"))
        || (first.is_kw("DECLARE") && !has_pair("WITH", "HOLD"))
        || first.is_kw("FETCH")
        || first.is_kw("MOVE")
        || first.is_kw("CLOSE");
    if scoped {
        return Some(TransactionStatement::Scoped);
    }
    if first.is_kw("COMMIT")
        || first.is_kw("END")
        || first.is_kw("ABORT")
        || first.is_kw("ROLLBACK")
    {
        let chained = has_pair("AND", "CHAIN");
        let to_savepoint = has("TO") || first.is_kw("ROLLBACK") && has("SAVEPOINT");
        let prepared = has("PREPARED");
        return (!chained && !to_savepoint && !prepared).then_some(TransactionStatement::End);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::TransactionStatement::{BeginReadOnly, End, Scoped};
    use super::*;

    #[test]
    fn raw_transaction_statements() {
        let cases: &[(&str, Option<TransactionStatement>)] = &[
            ("BEGIN READ ONLY", Some(BeginReadOnly)),
            (
                "begin transaction isolation level repeatable read, read only;",
                Some(BeginReadOnly),
            ),
            ("START TRANSACTION READ ONLY", Some(BeginReadOnly)),
            ("BEGIN /* a comment */ READ ONLY ;", Some(BeginReadOnly)),
            ("BEGIN WORK READ ONLY DEFERRABLE", Some(BeginReadOnly)),
            ("BEGIN", None),
            ("BEGIN READ WRITE", None),
            ("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY", None),
            ("BEGIN READ ONLY; INSERT INTO t VALUES (1)", None),
            ("BEGIN READ ONLY; COMMIT", None),
            ("START TRANSACTION", None),
            ("SELECT 'BEGIN READ ONLY'", None),
            ("COMMIT", Some(End)),
            ("commit work;", Some(End)),
            ("END", Some(End)),
            ("ABORT", Some(End)),
            ("ROLLBACK", Some(End)),
            ("ROLLBACK TRANSACTION", Some(End)),
            ("ROLLBACK TO SAVEPOINT s1", Some(Scoped)),
            ("ROLLBACK TO s1", Some(Scoped)),
            ("COMMIT AND CHAIN", None),
            ("COMMIT AND NO CHAIN", Some(End)),
            ("COMMIT PREPARED 'x'", None),
            ("RELEASE SAVEPOINT s1", Some(Scoped)),
            ("SAVEPOINT s1", Some(Scoped)),
            ("SET LOCAL statement_timeout = 100", Some(Scoped)),
            (
                "set transaction isolation level repeatable read",
                Some(Scoped),
            ),
            ("SET statement_timeout = 100", None),
            (
                "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
                None,
            ),
            ("DECLARE c CURSOR FOR SELECT 1", Some(Scoped)),
            ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", None),
            ("FETCH 10 FROM c", Some(Scoped)),
            ("CLOSE c", Some(Scoped)),
            ("SET LOCAL a = 1; SET b = 2", None),
            ("BEGIN READ ONLY -- unterminated '", Some(BeginReadOnly)),
            ("BEGIN READ ONLY /* unterminated", None),
        ];
        for (sql, expected) in cases {
            assert_eq!(
                transaction_statement(sql, Dialect::Postgres),
                *expected,
                "{sql}"
            );
        }
        assert_eq!(
            transaction_statement("START TRANSACTION READ ONLY", Dialect::Mysql),
            Some(BeginReadOnly)
        );
    }
}
