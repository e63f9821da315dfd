//! A zero-allocation SQL lexer for both dialects.
//!
//! It yields `&str` slices of the input and never builds a token vector: the classifier
//! walks it once, cloning it (a position and a few flags) when it needs to look ahead.
//! Comments are skipped, literals are recognised whole, so nothing inside a string, a
//! quoted identifier or a comment can ever look like a keyword.

use super::Dialect;

/// What a token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// An unquoted identifier or keyword.
    Word,
    /// `"ident"` (PostgreSQL) or `` `ident` `` (MySQL), quotes included.
    Quoted,
    /// Any string literal: `'..'`, `E'..'`, `B'..'`, `X'..'`, `N'..'`, `$tag$..$tag$`, MySQL `".."`.
    Str,
    /// A numeric literal.
    Num,
    /// A bind placeholder: `$1` (PostgreSQL) or `?` (MySQL).
    Param,
    /// A MySQL user variable: `@name`, `@'name'`, `` @`name` ``.
    Var,
    /// A MySQL system variable: `@@name`, `@@session.name`.
    SysVar,
    /// An operator (a run of operator characters).
    Op,
    /// `(`
    LParen,
    /// `)`
    RParen,
    /// `[`
    LBracket,
    /// `]`
    RBracket,
    /// `,`
    Comma,
    /// `.`
    Dot,
    /// `;`
    Semi,
    /// `::`
    Cast,
    /// `:` alone.
    Colon,
    /// Any other single character.
    Other,
    /// An unterminated string, quoted identifier, dollar quote or comment. Always the last token.
    Error,
}

/// One token: its kind and its exact text in the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Token<'a> {
    pub(crate) kind: Kind,
    pub(crate) text: &'a str,
}

impl<'a> Token<'a> {
    /// An unquoted word equal to `kw` (ASCII case-insensitive).
    pub(crate) fn is_kw(&self, kw: &str) -> bool {
        self.kind == Kind::Word && self.text.eq_ignore_ascii_case(kw)
    }

    /// A literal or placeholder: what a fingerprint folds to `?`.
    pub(crate) fn is_value(&self) -> bool {
        matches!(self.kind, Kind::Str | Kind::Num | Kind::Param)
    }
}

/// Iterator over the tokens of a SQL string. Cheap to clone (for look-ahead).
#[derive(Debug, Clone)]
pub(crate) struct Lexer<'a> {
    src: &'a str,
    pos: usize,
    mysql: bool,
    /// Inside a MySQL `/*! ... */` executable comment, whose contents are code.
    in_exec_comment: bool,
    done: bool,
}

fn is_ident_start(b: u8, mysql: bool) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80 || (mysql && b == b'$')
}

fn is_ident_cont(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn is_op_char(b: u8, mysql: bool) -> bool {
    match b {
        b'+' | b'-' | b'*' | b'/' | b'<' | b'>' | b'=' | b'~' | b'!' | b'%' | b'^' | b'&'
        | b'|' => true,
        b'@' | b'#' | b'`' | b'?' => !mysql,
        _ => false,
    }
}

impl<'a> Lexer<'a> {
    /// A lexer over `src` for `dialect`.
    pub(crate) fn new(src: &'a str, dialect: Dialect) -> Self {
        Lexer {
            src,
            pos: 0,
            mysql: dialect == Dialect::Mysql,
            in_exec_comment: false,
            done: false,
        }
    }

    fn byte(&self, at: usize) -> Option<u8> {
        self.src.as_bytes().get(at).copied()
    }

    fn bytes(&self) -> &'a [u8] {
        self.src.as_bytes()
    }

    /// Does a `--` at `at` start a comment? Always in PostgreSQL; in MySQL only when
    /// followed by whitespace, a control character or the end.
    fn dash_comment_at(&self, at: usize) -> bool {
        if self.byte(at) != Some(b'-') || self.byte(at + 1) != Some(b'-') {
            return false;
        }
        !self.mysql || self.byte(at + 2).is_none_or(|b| b <= b' ')
    }

    fn block_comment_at(&self, at: usize) -> bool {
        self.byte(at) == Some(b'/') && self.byte(at + 1) == Some(b'*')
    }

    fn exec_comment_end_at(&self, at: usize) -> bool {
        self.in_exec_comment && self.byte(at) == Some(b'*') && self.byte(at + 1) == Some(b'/')
    }

    /// Skip whitespace and comments. `Err(())` on an unterminated comment.
    fn skip_trivia(&mut self) -> Result<(), ()> {
        let bytes = self.bytes();
        loop {
            let Some(&b) = bytes.get(self.pos) else {
                return if self.in_exec_comment {
                    Err(())
                } else {
                    Ok(())
                };
            };
            if is_space(b) {
                self.pos += 1;
            } else if self.dash_comment_at(self.pos) || (self.mysql && b == b'#') {
                self.pos = memchr_newline(bytes, self.pos);
            } else if self.exec_comment_end_at(self.pos) {
                self.in_exec_comment = false;
                self.pos += 2;
            } else if self.block_comment_at(self.pos) {
                self.skip_block_comment()?;
            } else {
                return Ok(());
            }
        }
    }

    fn skip_block_comment(&mut self) -> Result<(), ()> {
        let bytes = self.bytes();
        let mut i = self.pos + 2;
        if self.mysql {
            // `/*! ... */` and MariaDB's `/*M! ... */` run their contents as code.
            let exec = match (bytes.get(i), bytes.get(i + 1)) {
                (Some(b'!'), _) => Some(i + 1),
                (Some(b'M'), Some(b'!')) => Some(i + 2),
                _ => None,
            };
            if let Some(mut j) = exec {
                if self.in_exec_comment {
                    // MySQL does not nest them: a doubtful shape, refuse it.
                    return Err(());
                }
                while bytes.get(j).is_some_and(u8::is_ascii_digit) {
                    j += 1;
                }
                self.in_exec_comment = true;
                self.pos = j;
                return Ok(());
            }
            while i + 1 < bytes.len() {
                if bytes[i] == b'*' && bytes[i + 1] == b'/' {
                    self.pos = i + 2;
                    return Ok(());
                }
                i += 1;
            }
            return Err(());
        }
        // PostgreSQL comments nest.
        let mut depth = 1usize;
        while i + 1 < bytes.len() {
            if bytes[i] == b'/' && bytes[i + 1] == b'*' {
                depth += 1;
                i += 2;
            } else if bytes[i] == b'*' && bytes[i + 1] == b'/' {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    self.pos = i;
                    return Ok(());
                }
            } else {
                i += 1;
            }
        }
        Err(())
    }

    /// End (exclusive) of a quoted run starting at `start` (the opening quote), with the
    /// quote doubled to escape it and, if `backslash`, backslash escapes too.
    fn quoted_end(&self, start: usize, quote: u8, backslash: bool) -> Option<usize> {
        let bytes = self.bytes();
        let mut i = start + 1;
        while i < bytes.len() {
            let b = bytes[i];
            if backslash && b == b'\\' {
                i += 2;
            } else if b == quote {
                if bytes.get(i + 1) == Some(&quote) {
                    i += 2;
                } else {
                    return Some(i + 1);
                }
            } else {
                i += 1;
            }
        }
        None
    }

    /// A PostgreSQL dollar-quoted string `$tag$...$tag$` starting at `start`, if the
    /// text there is a valid opening tag. `Some(None)` when it opens but never closes.
    fn dollar_string_end(&self, start: usize) -> Option<Option<usize>> {
        let bytes = self.bytes();
        let mut i = start + 1;
        if bytes.get(i).is_some_and(u8::is_ascii_digit) {
            return None;
        }
        while i < bytes.len() && bytes[i] != b'$' {
            if !is_ident_cont(bytes[i]) || bytes[i] == b'$' {
                return None;
            }
            i += 1;
        }
        if i >= bytes.len() {
            return None;
        }
        let tag = &self.src[start..=i];
        let body = i + 1;
        Some(self.src[body..].find(tag).map(|at| body + at + tag.len()))
    }

    fn number_end(&self, start: usize) -> usize {
        let bytes = self.bytes();
        let mut i = start;
        let radix_prefix = bytes[i] == b'0'
            && bytes
                .get(i + 1)
                .is_some_and(|b| matches!(b, b'x' | b'X' | b'o' | b'O' | b'b' | b'B'));
        if radix_prefix {
            i += 2;
            while bytes
                .get(i)
                .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
            {
                i += 1;
            }
            return i;
        }
        let digits = |mut i: usize| {
            while bytes
                .get(i)
                .is_some_and(|b| b.is_ascii_digit() || *b == b'_')
            {
                i += 1;
            }
            i
        };
        i = digits(i);
        if bytes.get(i) == Some(&b'.') && bytes.get(i + 1) != Some(&b'.') {
            i = digits(i + 1);
        }
        if matches!(bytes.get(i), Some(b'e' | b'E')) {
            let mut j = i + 1;
            if matches!(bytes.get(j), Some(b'+' | b'-')) {
                j += 1;
            }
            if bytes.get(j).is_some_and(u8::is_ascii_digit) {
                i = digits(j);
            }
        }
        i
    }

    fn op_end(&self, start: usize) -> usize {
        let bytes = self.bytes();
        let mut i = start + 1;
        while i < bytes.len()
            && is_op_char(bytes[i], self.mysql)
            && !self.dash_comment_at(i)
            && !self.block_comment_at(i)
            && !self.exec_comment_end_at(i)
        {
            i += 1;
        }
        // As PostgreSQL does: a multi-character operator cannot end in `+` or `-` unless it
        // contains one of `~ ! @ # % ^ & | ` ?`, so `=-1` is `=` then `-1`.
        let run = &bytes[start..i];
        let special = !self.mysql
            && run.iter().any(|b| {
                matches!(
                    b,
                    b'~' | b'!' | b'@' | b'#' | b'%' | b'^' | b'&' | b'|' | b'`' | b'?'
                )
            });
        if !special {
            while i > start + 1 && matches!(bytes[i - 1], b'+' | b'-') {
                i -= 1;
            }
        }
        i
    }

    fn mysql_var_end(&self, start: usize) -> (Kind, usize) {
        let bytes = self.bytes();
        let mut i = start + 1;
        if bytes.get(i) == Some(&b'@') {
            i += 1;
            while bytes
                .get(i)
                .is_some_and(|b| is_ident_cont(*b) || *b == b'.')
            {
                i += 1;
            }
            return (Kind::SysVar, i);
        }
        match bytes.get(i) {
            Some(&q @ (b'\'' | b'"' | b'`')) => match self.quoted_end(i, q, q != b'`') {
                Some(end) => (Kind::Var, end),
                None => (Kind::Error, bytes.len()),
            },
            Some(&b) if is_ident_cont(b) || b == b'.' => {
                while bytes
                    .get(i)
                    .is_some_and(|b| is_ident_cont(*b) || *b == b'.')
                {
                    i += 1;
                }
                (Kind::Var, i)
            }
            _ => (Kind::Other, i),
        }
    }

    fn lex_token(&mut self) -> (Kind, usize) {
        let bytes = self.bytes();
        let start = self.pos;
        let b = bytes[start];
        let next = bytes.get(start + 1).copied();
        let unterminated = (Kind::Error, bytes.len());
        match b {
            b'\'' => self
                .quoted_end(start, b'\'', self.mysql)
                .map_or(unterminated, |e| (Kind::Str, e)),
            b'"' if self.mysql => self
                .quoted_end(start, b'"', true)
                .map_or(unterminated, |e| (Kind::Str, e)),
            b'"' => self
                .quoted_end(start, b'"', false)
                .map_or(unterminated, |e| (Kind::Quoted, e)),
            b'`' if self.mysql => self
                .quoted_end(start, b'`', false)
                .map_or(unterminated, |e| (Kind::Quoted, e)),
            b'$' if !self.mysql => {
                if next.is_some_and(|n| n.is_ascii_digit()) {
                    let mut i = start + 1;
                    while bytes.get(i).is_some_and(u8::is_ascii_digit) {
                        i += 1;
                    }
                    (Kind::Param, i)
                } else {
                    match self.dollar_string_end(start) {
                        Some(Some(end)) => (Kind::Str, end),
                        Some(None) => unterminated,
                        None => (Kind::Other, start + 1),
                    }
                }
            }
            b'?' if self.mysql => (Kind::Param, start + 1),
            b'@' if self.mysql => self.mysql_var_end(start),
            b'0'..=b'9' => self.number_or_word(start),
            b'.' if next.is_some_and(|n| n.is_ascii_digit()) => self.number_or_word(start),
            b'(' => (Kind::LParen, start + 1),
            b')' => (Kind::RParen, start + 1),
            b'[' => (Kind::LBracket, start + 1),
            b']' => (Kind::RBracket, start + 1),
            b',' => (Kind::Comma, start + 1),
            b'.' => (Kind::Dot, start + 1),
            b';' => (Kind::Semi, start + 1),
            b':' => match next {
                Some(b':') => (Kind::Cast, start + 2),
                Some(b'=') => (Kind::Op, start + 2),
                _ => (Kind::Colon, start + 1),
            },
            _ if is_ident_start(b, self.mysql) => self.word(start),
            _ if is_op_char(b, self.mysql) => (Kind::Op, self.op_end(start)),
            _ => (Kind::Other, start + 1),
        }
    }

    fn number_or_word(&self, start: usize) -> (Kind, usize) {
        let end = self.number_end(start);
        if self.byte(end).is_some_and(is_ident_cont) {
            // `1abc` is an identifier in MySQL and junk in PostgreSQL: either way not a value.
            let mut i = end;
            while self.byte(i).is_some_and(is_ident_cont) {
                i += 1;
            }
            return (Kind::Word, i);
        }
        (Kind::Num, end)
    }

    fn word(&self, start: usize) -> (Kind, usize) {
        let bytes = self.bytes();
        let mut i = start + 1;
        while bytes.get(i).is_some_and(|b| is_ident_cont(*b)) {
            i += 1;
        }
        if i == start + 1 && bytes.get(i) == Some(&b'\'') {
            // Prefixed string literals: E'..' has backslash escapes; B'..', X'..', N'..' do not.
            let backslash = match bytes[start] {
                b'e' | b'E' => Some(true),
                b'b' | b'B' | b'x' | b'X' | b'n' | b'N' => Some(self.mysql),
                _ => None,
            };
            if let Some(backslash) = backslash {
                return self
                    .quoted_end(i, b'\'', backslash)
                    .map_or((Kind::Error, bytes.len()), |e| (Kind::Str, e));
            }
        }
        (Kind::Word, i)
    }
}

/// Position of the next `\n` at or after `from` (or the end).
fn memchr_newline(bytes: &[u8], from: usize) -> usize {
    bytes[from..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(bytes.len(), |p| from + p)
}

impl<'a> Iterator for Lexer<'a> {
    type Item = Token<'a>;

    fn next(&mut self) -> Option<Token<'a>> {
        if self.done {
            return None;
        }
        if self.skip_trivia().is_err() {
            self.done = true;
            let text = &self.src[self.pos.min(self.src.len())..];
            return Some(Token {
                kind: Kind::Error,
                text,
            });
        }
        if self.pos >= self.src.len() {
            self.done = true;
            return None;
        }
        let start = self.pos;
        let (kind, end) = self.lex_token();
        let end = end.min(self.src.len());
        if kind == Kind::Error {
            self.done = true;
        }
        self.pos = end;
        // Every token boundary sits on an ASCII byte or the end, so this never splits a
        // character; `get` keeps that a proof rather than a panic.
        let text = self.src.get(start..end).unwrap_or("");
        Some(Token { kind, text })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lex(sql: &str, dialect: Dialect) -> Vec<(Kind, String)> {
        Lexer::new(sql, dialect)
            .map(|t| (t.kind, t.text.to_owned()))
            .collect()
    }

    fn kinds(sql: &str, dialect: Dialect) -> Vec<Kind> {
        Lexer::new(sql, dialect).map(|t| t.kind).collect()
    }

    use Kind::*;

    #[test]
    fn postgres_tokens() {
        let pg = Dialect::Postgres;
        let cases: &[(&str, &[Kind])] = &[
            ("SELECT 1", &[Word, Num]),
            ("select 'it''s' ", &[Word, Str]),
            (r"E'a\'b'", &[Str]),
            (r"'a\' x", &[Str, Word]),
            ("$$ DELETE ; $$", &[Str]),
            ("$fn$ it's $x$ $fn$ x", &[Str, Word]),
            ("$1 + $22", &[Param, Op, Param]),
            ("\"up\"\"date\"", &[Quoted]),
            ("a -- DELETE\n b", &[Word, Word]),
            ("a /* x /* y */ DELETE */ b", &[Word, Word]),
            ("x::int", &[Word, Cast, Word]),
            ("a<=-1", &[Word, Op, Op, Num]),
            ("a @> b", &[Word, Op, Word]),
            ("j ? 'k'", &[Word, Op, Str]),
            ("1.5e3 .5 0x1F 1_000", &[Num, Num, Num, Num]),
            ("foo$bar", &[Word]),
            ("B'0101' X'1F'", &[Str, Str]),
            ("t.\"c\"", &[Word, Dot, Quoted]),
            ("f(a, b)", &[Word, LParen, Word, Comma, Word, RParen]),
            ("a[1]", &[Word, LBracket, Num, RBracket]),
            ("#", &[Op]),
            ("1; 2", &[Num, Semi, Num]),
            ("'open", &[Error]),
            ("\"open", &[Error]),
            ("$q$ open", &[Error]),
            ("/* open /* */", &[Error]),
            ("x /* open", &[Word, Error]),
            ("$ x", &[Other, Word]),
            ("é", &[Word]),
        ];
        for (sql, want) in cases {
            assert_eq!(kinds(sql, pg), *want, "{sql}");
        }
    }

    #[test]
    fn mysql_tokens() {
        let my = Dialect::Mysql;
        let cases: &[(&str, &[Kind])] = &[
            ("SELECT \"DELETE\"", &[Word, Str]),
            (r#"'a\'b' "c\"d""#, &[Str, Str]),
            ("`my``col`", &[Quoted]),
            ("a # DELETE\n b", &[Word, Word]),
            ("a -- DELETE\n b", &[Word, Word]),
            ("a--1", &[Word, Op, Op, Num]),
            ("a /* DELETE */ b", &[Word, Word]),
            ("/*!50001 DELETE */", &[Word]),
            ("/*M!100100 SET x=1 */", &[Word, Word, Op, Num]),
            ("SELECT /*! FOR UPDATE*/", &[Word, Word, Word]),
            ("? , ?", &[Param, Comma, Param]),
            ("@a := 1", &[Var, Op, Num]),
            ("@'my var' @`v`", &[Var, Var]),
            ("@@session.sql_mode @@version", &[SysVar, SysVar]),
            ("$x", &[Word]),
            ("1abc", &[Word]),
            ("'open", &[Error]),
            ("/*! open", &[Word, Error]),
            ("/* open", &[Error]),
        ];
        for (sql, want) in cases {
            assert_eq!(kinds(sql, my), *want, "{sql}");
        }
    }

    #[test]
    fn token_text_is_exact() {
        let toks = lex(
            "SELECT \"a\" FROM t WHERE x = E'q\\'' -- c",
            Dialect::Postgres,
        );
        let texts: Vec<&str> = toks.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(
            texts,
            ["SELECT", "\"a\"", "FROM", "t", "WHERE", "x", "=", "E'q\\''"]
        );
    }

    #[test]
    fn never_panics_on_awkward_utf8() {
        for sql in [
            "é'",
            "$é$ x $é$",
            "\"é",
            "`é",
            "@é",
            "@@é",
            "1é",
            "/*é",
            "--é",
            "E'é",
        ] {
            for d in [Dialect::Postgres, Dialect::Mysql] {
                let _ = lex(sql, d);
            }
        }
    }
}
