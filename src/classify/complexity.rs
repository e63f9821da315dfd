//! How heavy a read looks, from its tokens alone: the score that
//! [`ClassifierBuilder::heavy_reads`](super::ClassifierBuilder::heavy_reads) compares
//! with its threshold.
//!
//! One pass of the crate's lexer, no parser: nothing inside a comment, a string or a
//! quoted identifier counts. The score is the sum, over every statement of the
//! string, of
//!
//! - 1 per `JOIN` (`LEFT OUTER JOIN` is one join; MySQL's `STRAIGHT_JOIN` too);
//! - 1 per subquery: a `SELECT` (or `WITH`, `VALUES`) right after an opening
//!   parenthesis, so `IN (SELECT ..)`, `EXISTS (SELECT ..)`, a derived table and a
//!   CTE body each count;
//! - 1 for each `GROUP BY`;
//! - 1 for each `HAVING`;
//! - 1 per window function (`OVER (`).

use super::lexer::{Kind, Lexer, Token};
use super::Dialect;

/// The complexity score of `sql` (see the module docs).
pub(crate) fn score(sql: &str, dialect: Dialect) -> u32 {
    let mut lex = Lexer::new(sql, dialect);
    let mut score = 0u32;
    let mut prev: Option<Token<'_>> = None;
    while let Some(t) = lex.next() {
        match t.kind {
            Kind::Error => break,
            Kind::Word if !prev.is_some_and(|p| p.kind == Kind::Dot) => {
                let counts = if t.is_kw("join") || t.is_kw("straight_join") || t.is_kw("having") {
                    true
                } else if t.is_kw("select") || t.is_kw("with") || t.is_kw("values") {
                    prev.is_some_and(|p| p.kind == Kind::LParen)
                } else if t.is_kw("group") {
                    lex.clone().next().is_some_and(|n| n.is_kw("by"))
                } else if t.is_kw("over") {
                    lex.clone().next().is_some_and(|n| n.kind == Kind::LParen)
                } else {
                    false
                };
                if counts {
                    score = score.saturating_add(1);
                }
            }
            _ => {}
        }
        prev = Some(t);
    }
    score
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores() {
        let cases: &[(&str, u32)] = &[
            ("SELECT 1", 0),
            ("SELECT * FROM users WHERE id = $1", 0),
            ("SELECT * FROM a JOIN b ON a.id = b.a_id", 1),
            (
                "SELECT * FROM a LEFT OUTER JOIN b ON a.id = b.a_id INNER JOIN c USING (id)",
                2,
            ),
            ("SELECT * FROM a CROSS JOIN b NATURAL JOIN c", 2),
            ("SELECT kind, count(*) FROM events GROUP BY kind", 1),
            (
                "SELECT kind, count(*) FROM events GROUP BY kind HAVING count(*) > 1",
                2,
            ),
            (
                "SELECT u.name, count(*) FROM users u JOIN orders o ON o.user_id = u.id \
                 GROUP BY u.name HAVING count(*) > 3",
                3,
            ),
            ("SELECT * FROM t WHERE id IN (SELECT id FROM s)", 1),
            (
                "SELECT * FROM t WHERE EXISTS (SELECT 1 FROM s WHERE s.t = t.id) \
                 AND x IN (SELECT x FROM u)",
                2,
            ),
            ("SELECT * FROM (SELECT * FROM (SELECT 1) a) b", 2),
            ("WITH c AS (SELECT 1) SELECT * FROM c", 1),
            ("SELECT count(*) FROM t", 0),
            ("SELECT (1 + 2) * 3", 0),
            (
                "SELECT id, row_number() OVER (PARTITION BY kind ORDER BY id) FROM t",
                1,
            ),
            (
                "SELECT sum(x) OVER (ORDER BY id), avg(x) OVER (PARTITION BY k) FROM t",
                2,
            ),
            // Nothing in a string, a comment or a quoted identifier counts.
            ("SELECT 'a JOIN b GROUP BY c HAVING (SELECT' FROM t", 0),
            ("SELECT 1 -- JOIN b GROUP BY c\n FROM t", 0),
            ("SELECT /* (SELECT 1) JOIN */ 1", 0),
            ("SELECT \"join\", \"group\" FROM t", 0),
            ("SELECT $$ JOIN $$", 0),
            // A qualified name is not a keyword.
            ("SELECT t.join, s.having FROM t, s", 0),
            // `group` as a column name is not GROUP BY.
            ("SELECT \"group\", group_id FROM t ORDER BY 1", 0),
            // Every statement of a string counts.
            (
                "SELECT * FROM a JOIN b USING (id); SELECT * FROM c JOIN d USING (id)",
                2,
            ),
            // Unterminated input scores what came before.
            ("SELECT * FROM a JOIN b WHERE x = 'open", 1),
        ];
        let mut bad = Vec::new();
        for (sql, want) in cases {
            let got = score(sql, Dialect::Postgres);
            if got != *want {
                bad.push(format!("{sql:?}: got {got}, want {want}"));
            }
        }
        assert!(bad.is_empty(), "{}", bad.join("\n"));
    }

    #[test]
    fn mysql_scores() {
        let cases: &[(&str, u32)] = &[
            ("SELECT * FROM `a` JOIN `b` USING (id) GROUP BY `a`.`k`", 2),
            ("SELECT `join` FROM t # JOIN x\n", 0),
            ("SELECT \"JOIN\" FROM t WHERE id IN (SELECT id FROM s)", 1),
            ("SELECT * FROM a STRAIGHT_JOIN b", 1),
        ];
        for (sql, want) in cases {
            assert_eq!(score(sql, Dialect::Mysql), *want, "{sql}");
        }
    }
}
