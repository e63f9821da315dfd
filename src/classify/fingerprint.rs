//! Statement fingerprints: a normalised text with every literal folded to `?`, and its
//! FNV-1a 64 hash.
//!
//! One normaliser feeds either a `String` or a running hash, so
//! [`Classifier::fingerprint_hash`](super::Classifier::fingerprint_hash) equals
//! `fingerprint(sql).hash()` without allocating.

use super::lexer::{Kind, Lexer, Token};
use super::Dialect;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Where normalised text goes.
pub(crate) trait Sink {
    /// Append `s` as is.
    fn put(&mut self, s: &str);
    /// Append `s` with ASCII letters lower-cased.
    fn put_lower(&mut self, s: &str);
}

impl Sink for String {
    fn put(&mut self, s: &str) {
        self.push_str(s);
    }

    fn put_lower(&mut self, s: &str) {
        self.extend(s.chars().map(|c| c.to_ascii_lowercase()));
    }
}

/// FNV-1a 64 over the normalised bytes: stable across platforms, processes and versions.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fnv(pub(crate) u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(FNV_OFFSET)
    }
}

impl Fnv {
    fn byte(&mut self, b: u8) {
        self.0 ^= u64::from(b);
        self.0 = self.0.wrapping_mul(FNV_PRIME);
    }
}

impl Sink for Fnv {
    fn put(&mut self, s: &str) {
        for b in s.bytes() {
            self.byte(b);
        }
    }

    fn put_lower(&mut self, s: &str) {
        for b in s.bytes() {
            self.byte(b.to_ascii_lowercase());
        }
    }
}

/// FNV-1a 64 of `text`.
pub(crate) fn fnv1a(text: &str) -> u64 {
    let mut h = Fnv::default();
    h.put(text);
    h.0
}

/// How a piece of output sits next to its neighbours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Nothing written yet.
    Start,
    /// An identifier, or a word that may be called as a function: `count(`.
    Callable,
    /// A keyword after which `(` keeps its space: `IN (`, `VALUES (`.
    Keyword,
    Value,
    Open,
    OpenBracket,
    Close,
    Comma,
    Dot,
    Cast,
    Semi,
    Other,
}

fn space_between(prev: Class, cur: Class) -> bool {
    !matches!(
        (prev, cur),
        (
            Class::Start | Class::Open | Class::OpenBracket | Class::Dot | Class::Cast,
            _
        ) | (
            _,
            Class::Close | Class::Comma | Class::Dot | Class::Cast | Class::Semi
        ) | (Class::Callable, Class::Open)
            | (
                Class::Callable | Class::Close | Class::Value,
                Class::OpenBracket
            )
    )
}

/// Words after which an opening parenthesis is not a call.
fn keeps_space_before_paren(word: &str) -> bool {
    const WORDS: &[&str] = &[
        "all",
        "and",
        "as",
        "between",
        "by",
        "check",
        "conflict",
        "distinct",
        "else",
        "except",
        "exists",
        "filter",
        "from",
        "having",
        "ilike",
        "in",
        "intersect",
        "into",
        "is",
        "join",
        "key",
        "lateral",
        "like",
        "limit",
        "not",
        "offset",
        "on",
        "or",
        "over",
        "partition",
        "recursive",
        "references",
        "returning",
        "select",
        "set",
        "table",
        "then",
        "to",
        "union",
        "unique",
        "using",
        "values",
        "when",
        "where",
        "window",
        "with",
        "within",
    ];
    WORDS.iter().any(|w| w.eq_ignore_ascii_case(word))
}

/// Words after which the next identifier names a table whose `(` opens a column list.
fn names_a_table(word: &str) -> bool {
    ["into", "table", "references", "on", "index", "view"]
        .iter()
        .any(|w| w.eq_ignore_ascii_case(word))
}

struct Writer<'s, S: Sink> {
    sink: &'s mut S,
    prev: Class,
}

impl<S: Sink> Writer<'_, S> {
    fn piece(&mut self, class: Class, text: &str, lower: bool) {
        if space_between(self.prev, class) {
            self.sink.put(" ");
        }
        if lower {
            self.sink.put_lower(text);
        } else {
            self.sink.put(text);
        }
        self.prev = class;
    }
}

fn is_value_like(t: &Token<'_>) -> bool {
    t.is_value() || t.is_kw("null") || t.is_kw("true") || t.is_kw("false")
}

/// If `lex` (just after an opening `(` or `[`) holds only a list of values up to the
/// matching `close`, the lexer just after it.
fn value_list<'a>(lex: &Lexer<'a>, close: Kind) -> Option<Lexer<'a>> {
    let mut ahead = lex.clone();
    let mut want_value = true;
    loop {
        let t = ahead.next()?;
        if want_value {
            if t.kind == Kind::Op && (t.text == "-" || t.text == "+") {
                continue;
            }
            if !is_value_like(&t) {
                return None;
            }
            want_value = false;
        } else if t.kind == Kind::Comma {
            want_value = true;
        } else if t.kind == close {
            return Some(ahead);
        } else {
            return None;
        }
    }
}

fn is_sign(t: &Token<'_>) -> bool {
    t.kind == Kind::Op && (t.text == "-" || t.text == "+")
}

/// After these, a `-` or `+` is a sign, not a binary operator.
fn sign_is_unary(prev: Class) -> bool {
    matches!(
        prev,
        Class::Start
            | Class::Open
            | Class::OpenBracket
            | Class::Comma
            | Class::Other
            | Class::Keyword
    )
}

fn next_is_number(lex: &Lexer<'_>) -> bool {
    lex.clone().next().is_some_and(|t| t.kind == Kind::Num)
}

/// The next token, with a sign in front of a number skipped (both fold to `?`).
fn next_folded<'a>(lex: &mut Lexer<'a>) -> Option<Token<'a>> {
    let t = lex.next()?;
    if is_sign(&t) && next_is_number(lex) {
        return lex.next();
    }
    Some(t)
}

fn same_token(a: &Token<'_>, b: &Token<'_>) -> bool {
    (a.is_value() && b.is_value())
        || (a.kind == b.kind
            && if a.kind == Kind::Word {
                a.text.eq_ignore_ascii_case(b.text)
            } else {
                a.text == b.text
            })
}

/// Do the VALUES rows at `a` and `b` (each just after its `(`) normalise alike? If so,
/// the lexer just after `b`'s closing `)`.
fn same_row<'a>(mut a: Lexer<'a>, mut b: Lexer<'a>) -> Option<Lexer<'a>> {
    let mut depth = 1usize;
    loop {
        let (x, y) = (next_folded(&mut a)?, next_folded(&mut b)?);
        if !same_token(&x, &y) {
            return None;
        }
        match x.kind {
            Kind::LParen => depth += 1,
            Kind::RParen => {
                depth -= 1;
                if depth == 0 {
                    return Some(b);
                }
            }
            Kind::Error | Kind::Semi => return None,
            _ => {}
        }
    }
}

/// Write the normalised form of `sql` into `sink`.
pub(crate) fn normalise<S: Sink>(sql: &str, dialect: Dialect, sink: &mut S) {
    let mut out = Writer {
        sink,
        prev: Class::Start,
    };
    let mut lex = Lexer::new(sql, dialect);
    let mut depth = 0usize;
    let mut pending_semi = false;
    let mut prev_word: &str = "";
    let mut word: &str = "";
    // The first row of a VALUES list (just after its `(`) and the depth outside it.
    let mut values_row: Option<(Lexer<'_>, usize)> = None;
    let mut after_values = false;
    while let Some(t) = lex.next() {
        if t.kind == Kind::Semi {
            pending_semi = depth == 0 && out.prev != Class::Start;
            continue;
        }
        if pending_semi {
            out.piece(Class::Semi, ";", false);
            pending_semi = false;
        }
        let (w2, w1) = (prev_word, word);
        prev_word = word;
        word = if matches!(t.kind, Kind::Word | Kind::Quoted) {
            t.text
        } else {
            ""
        };
        match t.kind {
            Kind::Error => {
                // The rest may be a literal: fold it and stop.
                out.piece(Class::Value, "?", false);
                return;
            }
            Kind::Str | Kind::Num | Kind::Param => out.piece(Class::Value, "?", false),
            Kind::Word => {
                let class = if keeps_space_before_paren(t.text) {
                    Class::Keyword
                } else {
                    Class::Callable
                };
                out.piece(class, t.text, true);
                after_values = t.is_kw("values");
            }
            Kind::Quoted => {
                out.piece(Class::Callable, t.text, false);
            }
            // `@'name'` may as well be a host in `'user'@'host'`: fold it like a literal.
            Kind::Var if matches!(t.text.as_bytes().get(1), Some(b'\'' | b'"')) => {
                out.piece(Class::Callable, "@?", false);
            }
            Kind::Var | Kind::SysVar => out.piece(Class::Callable, t.text, true),
            Kind::LParen | Kind::LBracket => {
                let paren = t.kind == Kind::LParen;
                let (close, open_class, close_text) = if paren {
                    (Kind::RParen, Class::Open, ")")
                } else {
                    (Kind::RBracket, Class::OpenBracket, "]")
                };
                if paren && out.prev == Class::Callable && names_a_table(w2) {
                    // `INSERT INTO t (cols)`: a column list, not a call.
                    out.prev = Class::Keyword;
                }
                let collapse = w1.eq_ignore_ascii_case(if paren { "in" } else { "array" });
                if let Some(after) = collapse.then(|| value_list(&lex, close)).flatten() {
                    out.piece(open_class, t.text, false);
                    out.piece(Class::Value, "?", false);
                    out.piece(Class::Close, close_text, false);
                    lex = after;
                    continue;
                }
                if after_values && paren && values_row.is_none() {
                    values_row = Some((lex.clone(), depth));
                }
                after_values = false;
                depth += 1;
                out.piece(open_class, t.text, false);
            }
            Kind::RParen | Kind::RBracket => {
                depth = depth.saturating_sub(1);
                out.piece(Class::Close, t.text, false);
                if let Some((row, outer)) = values_row.clone() {
                    if outer == depth && t.kind == Kind::RParen {
                        // Fold every following row that normalises like the first.
                        loop {
                            let mut ahead = lex.clone();
                            let comma = ahead.next().is_some_and(|c| c.kind == Kind::Comma);
                            let paren =
                                comma && ahead.next().is_some_and(|p| p.kind == Kind::LParen);
                            match paren.then(|| same_row(row.clone(), ahead)).flatten() {
                                Some(after) => lex = after,
                                None => break,
                            }
                        }
                        values_row = None;
                    }
                }
            }
            Kind::Comma => out.piece(Class::Comma, ",", false),
            Kind::Dot => out.piece(Class::Dot, ".", false),
            Kind::Cast => out.piece(Class::Cast, "::", false),
            Kind::Op if is_sign(&t) && sign_is_unary(out.prev) && next_is_number(&lex) => {
                // `-1` is one literal: fold the sign with it.
            }
            Kind::Op | Kind::Colon | Kind::Other | Kind::Semi => {
                out.piece(Class::Other, t.text, false);
            }
        }
        if t.kind != Kind::Word {
            after_values = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(sql: &str, dialect: Dialect) -> String {
        let mut s = String::new();
        normalise(sql, dialect, &mut s);
        s
    }

    #[test]
    fn normal_forms() {
        let pg = Dialect::Postgres;
        let cases: &[(&str, &str)] = &[
            (
                "SELECT * FROM t WHERE id = 1",
                "select * from t where id = ?",
            ),
            (
                "select *  from t where id=$1",
                "select * from t where id = ?",
            ),
            (
                r#"SELECT "users"."id", "users"."name" FROM "users" WHERE ("users"."id" = $1) LIMIT $2"#,
                r#"select "users"."id", "users"."name" from "users" where ("users"."id" = ?) limit ?"#,
            ),
            (
                "SELECT a FROM t WHERE id IN (1, 2, 3)",
                "select a from t where id in (?)",
            ),
            (
                "SELECT a FROM t WHERE id IN ($1,$2)",
                "select a from t where id in (?)",
            ),
            (
                "SELECT a FROM t WHERE id IN (-1)",
                "select a from t where id in (?)",
            ),
            ("SELECT ARRAY[1,2,3]", "select array[?]"),
            ("SELECT COUNT(*) FROM t", "select count(*) from t"),
            ("SELECT count (*) FROM t -- hi", "select count(*) from t"),
            (
                "INSERT INTO t (a, b) VALUES (1, 'x'), (2, 'y'), ($1, $2)",
                "insert into t (a, b) values (?, ?)",
            ),
            (
                "INSERT INTO t (a) VALUES (1), (now())",
                "insert into t (a) values (?), (now())",
            ),
            (
                "SELECT 'secret', E'x\\'y', $$z$$, $q$w$q$, 42.5",
                "select ?, ?, ?, ?, ?",
            ),
            ("SELECT x::int, a[1] FROM t", "select x::int, a[?] from t"),
            ("SELECT 1; SELECT 2;", "select ?; select ?"),
            ("SELECT 'open", "select ?"),
            ("", ""),
            (
                "SELECT a FROM t WHERE b IN (SELECT c FROM u)",
                "select a from t where b in (select c from u)",
            ),
        ];
        for (sql, want) in cases {
            assert_eq!(fp(sql, pg), *want, "{sql}");
        }
        assert_eq!(
            fp(
                "SELECT `a` FROM `t` WHERE `id` = ? AND s = \"x\" # c",
                Dialect::Mysql
            ),
            "select `a` from `t` where `id` = ? and s = ?"
        );
    }

    #[test]
    fn hash_is_fnv1a_of_the_text() {
        assert_eq!(fnv1a(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a("a"), 0xaf63_dc4c_8601_ec8c);
        let sql = "SELECT Count(*) FROM T WHERE x IN (1,2)";
        let mut h = Fnv::default();
        normalise(sql, Dialect::Postgres, &mut h);
        assert_eq!(h.0, fnv1a(&fp(sql, Dialect::Postgres)));
    }
}
