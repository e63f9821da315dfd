//! The built-in judgement: leading verb first, then a single pass over a read's tokens
//! looking for anything that makes it more than a read.

use crate::SwitchReason;

use super::functions::{self, strip_quotes};
use super::lexer::{Kind, Lexer, Token};
use super::{Dialect, Extensions, Verdict};

const WRITE: SwitchReason = SwitchReason::WriteStatement;
const LOCK: SwitchReason = SwitchReason::LockingRead;
const SIDE: SwitchReason = SwitchReason::SideEffectFunction;
const BEGIN: SwitchReason = SwitchReason::TransactionBegin;
const TXN: SwitchReason = SwitchReason::TransactionControl;
const SESSION: SwitchReason = SwitchReason::SessionState;
const UNKNOWN: SwitchReason = SwitchReason::Unknown;

/// A statement's outcome: `Ok(None)` is a read, `Ok(Some(r))` goes to the primary for `r`,
/// `Err(())` is unparseable (unterminated, unbalanced, unknown verb).
type Outcome = Result<Option<SwitchReason>, ()>;

/// Upper bound on a keyword's length for the stack buffer used to lower-case it.
const KW_MAX: usize = 24;

/// A word lower-cased into `buf`, if it is an ASCII keyword candidate short enough.
fn lower<'b>(word: &str, buf: &'b mut [u8; KW_MAX]) -> &'b str {
    let bytes = word.as_bytes();
    if bytes.len() > KW_MAX || !bytes.is_ascii() {
        return "";
    }
    let out = &mut buf[..bytes.len()];
    for (o, b) in out.iter_mut().zip(bytes) {
        *o = b.to_ascii_lowercase();
    }
    // ASCII in, ASCII out.
    std::str::from_utf8(out).unwrap_or("")
}

/// Which of two reasons a statement reports when it shows both.
fn rank(reason: SwitchReason) -> u8 {
    match reason {
        SwitchReason::WriteStatement => 4,
        SwitchReason::LockingRead => 3,
        SwitchReason::SideEffectFunction => 2,
        _ => 1,
    }
}

fn worse(current: Option<SwitchReason>, found: SwitchReason) -> Option<SwitchReason> {
    match current {
        Some(c) if rank(c) >= rank(found) => Some(c),
        _ => Some(found),
    }
}

/// Judges one SQL string with the built-in rules and the user's function lists.
pub(crate) struct Judge<'e> {
    pub(crate) dialect: Dialect,
    pub(crate) ext: &'e Extensions,
}

impl Judge<'_> {
    /// The verdict for a whole (possibly multi-statement) string.
    pub(crate) fn verdict(&self, sql: &str) -> Verdict {
        let mut lex = Lexer::new(sql, self.dialect);
        let mut statements = 0usize;
        loop {
            let first = loop {
                match lex.next() {
                    Some(t) if t.kind == Kind::Semi => continue,
                    other => break other,
                }
            };
            let Some(first) = first else { break };
            statements += 1;
            match self.statement(first, &mut lex) {
                Ok(None) => {}
                Ok(Some(reason)) => return Verdict::Primary(reason),
                Err(()) => return Verdict::Primary(UNKNOWN),
            }
        }
        if statements == 0 {
            Verdict::Primary(UNKNOWN)
        } else {
            Verdict::Replica
        }
    }

    /// Judge the statement that starts with `first`, consuming it up to its `;`.
    fn statement(&self, first: Token<'_>, lex: &mut Lexer<'_>) -> Outcome {
        match first.kind {
            Kind::LParen => return self.read(lex, 1),
            Kind::Word => {}
            _ => return Err(()),
        }
        let mut buf = [0u8; KW_MAX];
        let verb = lower(first.text, &mut buf);
        match self.dialect {
            Dialect::Postgres => self.postgres(verb, lex),
            Dialect::Mysql => self.mysql(verb, lex),
        }
    }

    fn postgres(&self, verb: &str, lex: &mut Lexer<'_>) -> Outcome {
        match verb {
            "select" | "with" | "values" | "table" => self.read(lex, 0),
            "show" => finish(lex, 0),
            "explain" => self.explain(lex),
            "copy" => self.copy(lex),
            "create" => Ok(Some(if creates_temporary(lex) {
                SESSION
            } else {
                WRITE
            })),
            "insert" | "update" | "delete" | "merge" | "truncate" | "alter" | "drop"
            | "comment" | "grant" | "revoke" | "security" | "reassign" | "import" | "vacuum"
            | "analyze" | "analyse" | "reindex" | "cluster" | "refresh" | "checkpoint" | "call"
            | "do" => Ok(Some(WRITE)),
            "begin" | "start" => Ok(Some(BEGIN)),
            "commit" | "end" | "rollback" | "abort" | "savepoint" | "release" => Ok(Some(TXN)),
            "prepare" => Ok(Some(if next_is(lex, "transaction") {
                TXN
            } else {
                SESSION
            })),
            "set" => Ok(Some(match lex.next() {
                Some(t) if t.is_kw("transaction") || t.is_kw("constraints") => TXN,
                _ => SESSION,
            })),
            "reset" | "discard" | "listen" | "unlisten" | "notify" | "lock" | "load"
            | "execute" | "deallocate" | "declare" | "fetch" | "move" | "close" => {
                Ok(Some(SESSION))
            }
            _ => Err(()),
        }
    }

    fn mysql(&self, verb: &str, lex: &mut Lexer<'_>) -> Outcome {
        match verb {
            "select" | "with" | "values" | "table" => self.read(lex, 0),
            "show" | "help" => finish(lex, 0),
            "explain" | "describe" | "desc" => self.explain(lex),
            "create" => Ok(Some(if creates_temporary(lex) {
                SESSION
            } else {
                WRITE
            })),
            "drop" => Ok(Some(match lex.next() {
                Some(t) if t.is_kw("temporary") || t.is_kw("prepare") => SESSION,
                _ => WRITE,
            })),
            "insert" | "update" | "delete" | "replace" | "load" | "alter" | "rename"
            | "truncate" | "grant" | "revoke" | "optimize" | "repair" | "analyze" | "check"
            | "checksum" | "flush" | "kill" | "install" | "uninstall" | "purge" | "change"
            | "stop" | "call" | "do" | "cache" | "binlog" | "import" | "shutdown" | "restart"
            | "clone" | "reset" => Ok(Some(WRITE)),
            "start" => Ok(Some(if next_is(lex, "transaction") {
                BEGIN
            } else {
                WRITE
            })),
            "begin" => Ok(Some(BEGIN)),
            "commit" | "rollback" | "savepoint" | "release" => Ok(Some(TXN)),
            "xa" => Ok(Some(match lex.next() {
                Some(t) if t.is_kw("start") || t.is_kw("begin") => BEGIN,
                _ => TXN,
            })),
            "set" => {
                let mut ahead = lex.clone().take(2);
                let txn = ahead.any(|t| t.is_kw("transaction"));
                Ok(Some(if txn { TXN } else { SESSION }))
            }
            "use" | "lock" | "unlock" | "handler" | "prepare" | "execute" | "deallocate"
            | "get" => Ok(Some(SESSION)),
            _ => Err(()),
        }
    }

    /// `EXPLAIN`: without ANALYZE nothing runs; with it the inner statement runs, and decides.
    fn explain(&self, lex: &mut Lexer<'_>) -> Outcome {
        let mut analyze = false;
        let mut inner = lex.next();
        if self.dialect == Dialect::Postgres && inner.is_some_and(|t| t.kind == Kind::LParen) {
            let starts_statement = lex.clone().next().is_some_and(|t| {
                t.kind == Kind::LParen
                    || ["select", "with", "values", "table"]
                        .iter()
                        .any(|k| t.is_kw(k))
            });
            if starts_statement {
                // `EXPLAIN (SELECT ..)`: a parenthesised query, not an option list.
                return finish(lex, 1);
            }
            analyze = explain_options(lex)?;
            inner = lex.next();
        } else {
            while let Some(t) = inner {
                if t.is_kw("analyze") || t.is_kw("analyse") {
                    analyze = true;
                } else if !(t.is_kw("verbose")
                    || (self.dialect == Dialect::Mysql && t.is_kw("extended")))
                {
                    break;
                }
                inner = lex.next();
            }
        }
        let Some(inner) = inner else { return Err(()) };
        if analyze {
            return self.statement(inner, lex);
        }
        if inner.is_kw("execute") {
            // The prepared statement lives in the session that prepared it.
            return Ok(Some(SESSION));
        }
        if self.dialect == Dialect::Mysql
            && ["insert", "update", "delete", "replace"]
                .iter()
                .any(|k| inner.is_kw(k))
        {
            // MariaDB refuses even the plan of a write on a read-only server (1290,
            // seen on a real replica by tests/classify_mysql_replica.rs).
            return Ok(Some(WRITE));
        }
        finish(lex, 0)
    }

    /// `COPY`: `TO STDOUT` is a read (of a table or of a query), anything else writes.
    fn copy(&self, lex: &mut Lexer<'_>) -> Outcome {
        let body = lex.clone();
        let mut depth = 0usize;
        loop {
            let Some(t) = lex.next() else { return Err(()) };
            match t.kind {
                Kind::LParen => depth += 1,
                Kind::RParen => depth = depth.checked_sub(1).ok_or(())?,
                Kind::Semi | Kind::Error => return Err(()),
                Kind::Word if depth == 0 && t.is_kw("from") => return Ok(Some(WRITE)),
                Kind::Word if depth == 0 && t.is_kw("to") => {
                    if !lex.next().is_some_and(|t| t.is_kw("stdout")) {
                        return Ok(Some(WRITE));
                    }
                    *lex = body;
                    return self.read(lex, 0);
                }
                _ => {}
            }
        }
    }

    /// Scan a read (SELECT, WITH, VALUES, TABLE, COPY .. TO STDOUT) to its end, at
    /// parenthesis depth `depth`, for anything that makes it more than a read.
    fn read(&self, lex: &mut Lexer<'_>, mut depth: usize) -> Outcome {
        let mut found: Option<SwitchReason> = None;
        let mut prev: Option<Token<'_>> = None;
        let mut buf = [0u8; KW_MAX];
        while let Some(t) = lex.next() {
            match t.kind {
                Kind::Semi => {
                    if depth != 0 {
                        return Err(());
                    }
                    return Ok(found);
                }
                Kind::Error => return Err(()),
                Kind::LParen => {
                    depth += 1;
                    if let Some(p) = prev.filter(|p| matches!(p.kind, Kind::Word | Kind::Quoted)) {
                        if let Some(reason) = self.function(&p) {
                            found = worse(found, reason);
                        }
                    }
                }
                Kind::RParen => depth = depth.checked_sub(1).ok_or(())?,
                Kind::Word if !prev.is_some_and(|p| p.kind == Kind::Dot) => {
                    if let Some(reason) = self.read_keyword(lower(t.text, &mut buf), lex) {
                        if reason == WRITE {
                            return Ok(Some(WRITE));
                        }
                        found = worse(found, reason);
                    }
                }
                Kind::Var => found = worse(found, SESSION),
                Kind::SysVar if session_bound_sysvar(t.text) => found = worse(found, SESSION),
                _ => {}
            }
            prev = Some(t);
        }
        if depth != 0 {
            return Err(());
        }
        Ok(found)
    }

    /// What an unquoted keyword inside a read means, looking ahead in `lex` if needed.
    fn read_keyword(&self, kw: &str, lex: &mut Lexer<'_>) -> Option<SwitchReason> {
        let mysql = self.dialect == Dialect::Mysql;
        match kw {
            // A data-modifying CTE, or a DML statement after a WITH list.
            "insert" | "update" | "delete" | "merge" => Some(WRITE),
            "for" => locking_clause(lex).then_some(LOCK),
            "nowait" => Some(LOCK),
            "skip" if next_is(&mut lex.clone(), "locked") => Some(LOCK),
            "lock" if mysql => {
                let mut ahead = lex.clone();
                (next_is(&mut ahead, "in") && next_is(&mut ahead, "share")).then_some(LOCK)
            }
            "into" => Some(match lex.clone().next() {
                Some(t) if !mysql && (t.is_kw("temp") || t.is_kw("temporary")) => SESSION,
                Some(t) if mysql && t.kind == Kind::Var => SESSION,
                _ => WRITE,
            }),
            "next" | "previous" if mysql => {
                let mut ahead = lex.clone();
                (next_is(&mut ahead, "value") && next_is(&mut ahead, "for")).then_some(SIDE)
            }
            // Sets the state a later FOUND_ROWS() reads, in this session only.
            "sql_calc_found_rows" if mysql => Some(SESSION),
            _ => None,
        }
    }

    /// The reason a call of the function named by `name` goes to the primary, if it does.
    fn function(&self, name: &Token<'_>) -> Option<SwitchReason> {
        let ext = self.ext;
        if !ext.read_only.is_empty() && ext.read_only.iter().any(|f| f.matches(name, self.dialect))
        {
            return None;
        }
        if !ext.write.is_empty() && ext.write.iter().any(|f| f.matches(name, self.dialect)) {
            return Some(SIDE);
        }
        let exact = name.kind == Kind::Quoted && self.dialect == Dialect::Postgres;
        let text = if name.kind == Kind::Quoted {
            strip_quotes(name.text)
        } else {
            name.text
        };
        functions::builtin(self.dialect, text, exact)
    }
}

/// Consume the rest of a statement that is a read without further inspection, checking
/// only that it lexes and its parentheses balance.
fn finish(lex: &mut Lexer<'_>, mut depth: usize) -> Outcome {
    for t in lex.by_ref() {
        match t.kind {
            Kind::LParen => depth += 1,
            Kind::RParen => depth = depth.checked_sub(1).ok_or(())?,
            Kind::Semi if depth == 0 => return Ok(None),
            Kind::Semi | Kind::Error => return Err(()),
            _ => {}
        }
    }
    if depth == 0 {
        Ok(None)
    } else {
        Err(())
    }
}

fn next_is(lex: &mut Lexer<'_>, kw: &str) -> bool {
    lex.next().is_some_and(|t| t.is_kw(kw))
}

/// After `FOR`: `UPDATE`, `NO KEY UPDATE`, `SHARE`, `KEY SHARE`? Consumes the clause words
/// only when it is one, so `substring(x FOR 2)` is left alone.
fn locking_clause(lex: &mut Lexer<'_>) -> bool {
    let mut ahead = lex.clone();
    let hit = match ahead.next() {
        Some(t) if t.is_kw("update") || t.is_kw("share") => true,
        Some(t) if t.is_kw("no") => next_is(&mut ahead, "key") && next_is(&mut ahead, "update"),
        Some(t) if t.is_kw("key") => next_is(&mut ahead, "share"),
        _ => false,
    };
    if hit {
        *lex = ahead;
    }
    hit
}

/// `CREATE [OR REPLACE] [GLOBAL|LOCAL] TEMP|TEMPORARY ...`
fn creates_temporary(lex: &mut Lexer<'_>) -> bool {
    for t in lex.take(4) {
        if t.is_kw("temp") || t.is_kw("temporary") {
            return true;
        }
        if !(t.is_kw("or") || t.is_kw("replace") || t.is_kw("global") || t.is_kw("local")) {
            return false;
        }
    }
    false
}

/// Parse a PostgreSQL `EXPLAIN ( option [value] , ... )` list (the `(` is consumed):
/// is ANALYZE on? A value that is not plainly false counts as on: doubt runs the statement.
fn explain_options(lex: &mut Lexer<'_>) -> Result<bool, ()> {
    let mut analyze = false;
    let mut depth = 1usize;
    let mut at_option_start = true;
    while depth > 0 {
        let t = lex.next().ok_or(())?;
        match t.kind {
            Kind::LParen => depth += 1,
            Kind::RParen => depth -= 1,
            Kind::Comma if depth == 1 => at_option_start = true,
            Kind::Semi | Kind::Error => return Err(()),
            Kind::Word if at_option_start && (t.is_kw("analyze") || t.is_kw("analyse")) => {
                at_option_start = false;
                let off = match lex.clone().next() {
                    Some(v) if v.kind == Kind::Word || v.kind == Kind::Num => {
                        ["false", "off", "0", "no"]
                            .iter()
                            .any(|f| v.text.eq_ignore_ascii_case(f))
                    }
                    Some(v) if v.kind == Kind::Str => {
                        let inner = v.text.trim_matches('\'');
                        ["false", "off", "0", "no", "f", "n"]
                            .iter()
                            .any(|f| inner.eq_ignore_ascii_case(f))
                    }
                    _ => false,
                };
                analyze |= !off;
            }
            _ => at_option_start = false,
        }
    }
    Ok(analyze)
}

/// `@@identity` and `@@last_insert_id` are LAST_INSERT_ID() under another name.
fn session_bound_sysvar(text: &str) -> bool {
    let name = text.trim_start_matches('@');
    let name = name.rsplit('.').next().unwrap_or(name);
    name.eq_ignore_ascii_case("identity") || name.eq_ignore_ascii_case("last_insert_id")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judge(dialect: Dialect, sql: &str) -> Verdict {
        let ext = Extensions::default();
        Judge { dialect, ext: &ext }.verdict(sql)
    }

    fn label(v: Verdict) -> &'static str {
        match v {
            Verdict::Replica => "replica",
            Verdict::Primary(r) => r.as_str(),
        }
    }

    #[test]
    fn postgres_rules() {
        let cases: &[(&str, &str)] = &[
            ("SELECT 1", "replica"),
            ("select 'DELETE FROM x'", "replica"),
            ("SELECT \"update\" FROM t", "replica"),
            ("SELECT * FROM deleted_items", "replica"),
            ("SELECT 1 -- FOR UPDATE", "replica"),
            ("/* route=/users */ DELETE FROM t", "write_statement"),
            ("SELECT * FROM t FOR UPDATE", "locking_read"),
            (
                "SELECT * FROM t FOR NO KEY UPDATE SKIP LOCKED",
                "locking_read",
            ),
            ("SELECT * FROM t FOR KEY SHARE", "locking_read"),
            ("SELECT substring(a FROM 1 FOR 2) FROM t", "replica"),
            (
                "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
                "write_statement",
            ),
            ("WITH c AS (SELECT 1) UPDATE t SET a = 1", "write_statement"),
            ("SELECT nextval('s')", "side_effect_function"),
            ("SELECT pg_catalog.NEXTVAL('s')", "side_effect_function"),
            ("SELECT \"nextval\"('s')", "side_effect_function"),
            ("SELECT \"NEXTVAL\"('s')", "replica"),
            ("SELECT set_config('a', 'b', false)", "session_state"),
            ("SELECT my_func(1)", "replica"),
            ("SELECT t.update FROM t", "replica"),
            ("SELECT * INTO new_t FROM t", "write_statement"),
            ("SELECT * INTO TEMP new_t FROM t", "session_state"),
            ("CREATE TEMP TABLE x (a int)", "session_state"),
            (
                "CREATE OR REPLACE TEMPORARY VIEW v AS SELECT 1",
                "session_state",
            ),
            ("CREATE TABLE x AS SELECT 1", "write_statement"),
            ("COPY t TO STDOUT", "replica"),
            (
                "COPY (SELECT * FROM t) TO STDOUT WITH (FORMAT csv)",
                "replica",
            ),
            (
                "COPY (SELECT nextval('s')) TO STDOUT",
                "side_effect_function",
            ),
            ("COPY t FROM STDIN", "write_statement"),
            ("COPY t TO '/tmp/x'", "write_statement"),
            ("COPY (SELECT 1) TO PROGRAM 'cat'", "write_statement"),
            ("EXPLAIN DELETE FROM t", "replica"),
            ("EXPLAIN ANALYZE DELETE FROM t", "write_statement"),
            ("EXPLAIN ANALYZE SELECT 1", "replica"),
            (
                "EXPLAIN (ANALYZE, BUFFERS) INSERT INTO t VALUES (1)",
                "write_statement",
            ),
            (
                "EXPLAIN (ANALYZE false) INSERT INTO t VALUES (1)",
                "replica",
            ),
            ("EXPLAIN (ANALYZE off, COSTS on) DELETE FROM t", "replica"),
            (
                "EXPLAIN (COSTS off, ANALYZE) DELETE FROM t",
                "write_statement",
            ),
            ("EXPLAIN (FORMAT json) SELECT 1", "replica"),
            (
                "EXPLAIN VERBOSE ANALYZE UPDATE t SET a = 1",
                "write_statement",
            ),
            ("EXPLAIN EXECUTE p(1)", "session_state"),
            ("BEGIN", "transaction_begin"),
            ("START TRANSACTION READ ONLY", "transaction_begin"),
            ("COMMIT", "transaction_control"),
            ("PREPARE TRANSACTION 'x'", "transaction_control"),
            ("PREPARE p AS SELECT 1", "session_state"),
            (
                "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
                "transaction_control",
            ),
            ("SET search_path = x", "session_state"),
            ("SELECT 1; DELETE FROM t", "write_statement"),
            ("SELECT 1; SELECT 2;", "replica"),
            ("", "unknown"),
            (" ; -- x\n ;", "unknown"),
            ("SELECT 'open", "unknown"),
            ("SELECT (1", "unknown"),
            ("SELECT 1)", "unknown"),
            ("frobnicate", "unknown"),
            ("(SELECT 1) UNION (SELECT 2)", "replica"),
            ("SHOW search_path", "replica"),
            ("TABLE t", "replica"),
            ("VALUES (1), (2)", "replica"),
        ];
        let mut bad = Vec::new();
        for (sql, want) in cases {
            let got = label(judge(Dialect::Postgres, sql));
            if got != *want {
                bad.push(format!("{sql:?}: got {got}, want {want}"));
            }
        }
        assert!(bad.is_empty(), "{}", bad.join("\n"));
    }

    #[test]
    fn mysql_rules() {
        let cases: &[(&str, &str)] = &[
            ("SELECT \"DELETE\" FROM t", "replica"),
            ("SELECT * FROM `update` WHERE id = ?", "replica"),
            ("SELECT 1 # FOR UPDATE", "replica"),
            ("SELECT * FROM t LOCK IN SHARE MODE", "locking_read"),
            ("SELECT * FROM t FOR SHARE", "locking_read"),
            ("REPLACE INTO t VALUES (1)", "write_statement"),
            ("SELECT REPLACE(a, 'x', 'y') FROM t", "replica"),
            ("SELECT GET_LOCK('a', 1)", "side_effect_function"),
            ("SELECT NEXT VALUE FOR s", "side_effect_function"),
            ("SELECT @a := 1", "session_state"),
            ("SELECT @@version", "replica"),
            ("SELECT @@IDENTITY", "session_state"),
            ("SELECT a INTO OUTFILE '/tmp/x' FROM t", "write_statement"),
            ("SELECT a FROM t INTO @x", "session_state"),
            ("/*!40101 SET NAMES utf8 */", "session_state"),
            ("SELECT /*+ MAX_EXECUTION_TIME(1) */ a FROM t", "replica"),
            ("SELECT 1 /*! FOR UPDATE */", "locking_read"),
            ("CREATE TEMPORARY TABLE x (a INT)", "session_state"),
            ("DROP TEMPORARY TABLE x", "session_state"),
            ("EXPLAIN ANALYZE SELECT * FROM t", "replica"),
            ("EXPLAIN DELETE FROM t", "write_statement"),
            ("EXPLAIN EXTENDED UPDATE t SET a = 1", "write_statement"),
            ("EXPLAIN SELECT * FROM t", "replica"),
            ("EXPLAIN t", "replica"),
            ("DESCRIBE t", "replica"),
            ("XA START 'x'", "transaction_begin"),
            ("XA COMMIT 'x'", "transaction_control"),
            ("USE db", "session_state"),
            ("LOCK TABLES t READ", "session_state"),
            ("START SLAVE", "write_statement"),
            ("SELECT SQL_CALC_FOUND_ROWS * FROM t", "session_state"),
        ];
        let mut bad = Vec::new();
        for (sql, want) in cases {
            let got = label(judge(Dialect::Mysql, sql));
            if got != *want {
                bad.push(format!("{sql:?}: got {got}, want {want}"));
            }
        }
        assert!(bad.is_empty(), "{}", bad.join("\n"));
    }
}
