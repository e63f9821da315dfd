//! The statement classifier: may this SQL run on a read-only replica, or must it go to the
//! primary, and why?
//!
//! Pure, synchronous and allocation-free for the built-in rules. A real lexer reads the
//! statement first, so nothing inside a comment, a string literal (`'..'`, `E'..'`,
//! `$tag$..$tag$`, MySQL `".."`) or a quoted identifier can look like a keyword; then the
//! leading verb and a single pass over the tokens decide. Whatever the classifier cannot
//! prove read-only goes to the primary:
//!
//! | to the primary, for | examples |
//! |---|---|
//! | [`WriteStatement`](SwitchReason::WriteStatement) | DML (incl. `MERGE`, upserts, MySQL `REPLACE`), DDL, `GRANT`, `COMMENT`, `VACUUM`/`ANALYZE`/`REINDEX`/`CLUSTER`/`REFRESH`, `SELECT .. INTO`, `CREATE TABLE AS`, `COPY .. FROM`, `COPY .. TO 'file'`, `CALL`, `DO`, data-modifying CTEs, `EXPLAIN ANALYZE` of a write |
//! | [`LockingRead`](SwitchReason::LockingRead) | `FOR UPDATE`, `FOR NO KEY UPDATE`, `FOR SHARE`, `FOR KEY SHARE`, `NOWAIT`, `SKIP LOCKED`, MySQL `LOCK IN SHARE MODE` |
//! | [`SideEffectFunction`](SwitchReason::SideEffectFunction) | `nextval`, `setval`, `currval`, `lastval`, advisory locks, `pg_notify`, `txid_current`, large-object writers, `dblink*`, server administration; MySQL `GET_LOCK`, `LAST_INSERT_ID`, `NEXT VALUE FOR`; the user's [write functions](ClassifierBuilder::write_function) |
//! | [`TransactionBegin`](SwitchReason::TransactionBegin) | `BEGIN`, `START TRANSACTION`, MySQL `XA START` |
//! | [`TransactionControl`](SwitchReason::TransactionControl) | `COMMIT`, `ROLLBACK`, `SAVEPOINT`, `RELEASE`, `PREPARE TRANSACTION`, `SET TRANSACTION` |
//! | [`SessionState`](SwitchReason::SessionState) | `SET`, `RESET`, `DISCARD`, `PREPARE`/`EXECUTE`/`DEALLOCATE`, `LISTEN`/`NOTIFY`, `LOCK`, cursors, temporary tables, `set_config`; MySQL `USE`, `LOCK TABLES`, `HANDLER`, `@variables` |
//! | [`Rule`](SwitchReason::Rule) | a user [routing rule](ClassifierBuilder::rule) to the primary matched |
//! | [`Unknown`](SwitchReason::Unknown) | empty, unterminated, unbalanced or unrecognised input |
//!
//! A multi-statement string goes to the primary if any of its statements does, for the
//! first such statement's reason.
//!
//! Assumptions: PostgreSQL's `standard_conforming_strings` is on (the default since 9.1),
//! so a backslash in `'..'` is an ordinary character; MySQL's `ANSI_QUOTES` is off, so
//! `".."` is a string.
//!
//! ```
//! use diesel_rwsplit::classify::{Classifier, Dialect, Verdict};
//! use diesel_rwsplit::SwitchReason;
//!
//! let c = Classifier::new(Dialect::Postgres);
//! assert_eq!(c.classify(r#"SELECT "users"."id" FROM "users" WHERE ("users"."id" = $1)"#), Verdict::Replica);
//! assert_eq!(c.classify("SELECT * FROM jobs FOR UPDATE SKIP LOCKED"), Verdict::Primary(SwitchReason::LockingRead));
//! assert_eq!(c.classify("/* route=/users */ DELETE FROM users"), Verdict::Primary(SwitchReason::WriteStatement));
//! ```

mod complexity;
mod fingerprint;
mod functions;
mod lexer;
mod rules;
mod transaction;

pub(crate) use transaction::{transaction_statement, TransactionStatement};

use std::sync::Arc;

use regex::Regex;

use crate::{Error, SwitchReason, Target};

use functions::UserFunction;

/// SQL dialect the classifier lexes and judges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// PostgreSQL.
    Postgres,
    /// MySQL / MariaDB.
    Mysql,
}

/// The classifier's judgement of one statement (or multi-statement string).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Provably read-only: may run on a replica.
    Replica,
    /// Must run on the primary, for this reason.
    Primary(SwitchReason),
}

impl Verdict {
    /// Where the statement goes.
    pub const fn target(self) -> Target {
        match self {
            Verdict::Replica => Target::Replica,
            Verdict::Primary(_) => Target::Primary,
        }
    }

    /// Why it goes to the primary (`None` for a replica verdict).
    pub const fn reason(self) -> Option<SwitchReason> {
        match self {
            Verdict::Replica => None,
            Verdict::Primary(reason) => Some(reason),
        }
    }
}

/// A statement's normalised form, with literals folded, and its stable 64-bit hash.
///
/// The text has comments dropped, keywords and unquoted identifiers lower-cased, quoted
/// identifiers kept with their quotes, every string, number, placeholder and
/// dollar-quoted string replaced by `?`, `IN (..)` lists of values and repeated
/// `VALUES` rows collapsed to one, and a canonical spacing. It never contains a literal.
///
/// ```
/// use diesel_rwsplit::classify::{Classifier, Dialect};
///
/// let c = Classifier::new(Dialect::Postgres);
/// let a = c.fingerprint("SELECT * FROM t WHERE id IN (1, 2, 3) AND name = 'bob'");
/// let b = c.fingerprint("select *  from t where id in ($1) and name = $2");
/// assert_eq!(a.text(), "select * from t where id in (?) and name = ?");
/// assert_eq!(a, b);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fingerprint {
    text: String,
    hash: u64,
}

impl Fingerprint {
    /// The normalised text; never contains a literal value.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Stable 64-bit hash of the normalised text: FNV-1a 64 over its UTF-8 bytes, the same
    /// on every platform and version.
    pub fn hash(&self) -> u64 {
        self.hash
    }
}

/// Judges SQL statements: replica or primary, and why. Cheap to clone, `Send + Sync`.
///
/// ```
/// use diesel_rwsplit::classify::{Classifier, Dialect};
/// use diesel_rwsplit::{SwitchReason, Target};
///
/// let c = Classifier::new(Dialect::Mysql);
/// assert_eq!(c.classify("SELECT `id` FROM `users` WHERE `name` = ?").target(), Target::Replica);
/// assert_eq!(c.classify("SELECT GET_LOCK('job', 10)").reason(), Some(SwitchReason::SideEffectFunction));
/// ```
#[derive(Debug, Clone)]
pub struct Classifier {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dialect: Dialect,
    ext: Extensions,
}

/// The user's additions, checked before the built-in rules.
#[derive(Debug, Default)]
pub(crate) struct Extensions {
    pub(crate) write: Vec<UserFunction>,
    pub(crate) read_only: Vec<UserFunction>,
    pub(crate) rules: Vec<(Regex, Target)>,
    /// Replica group routing (never consulted by [`Classifier::classify`]).
    groups: GroupRouting,
}

/// Which replica group a read goes to: rules naming groups by index in `names`.
#[derive(Debug, Default)]
struct GroupRouting {
    /// Every group a rule names, each once, in the order first named.
    names: Vec<Arc<str>>,
    /// `group_rule`s, in the order added.
    patterns: Vec<(Regex, usize)>,
    /// `heavy_reads` rules (threshold, group), in the order added.
    heavy: Vec<(u32, usize)>,
}

impl GroupRouting {
    fn index_of(&mut self, name: &str) -> usize {
        match self.names.iter().position(|n| &**n == name) {
            Some(index) => index,
            None => {
                self.names.push(Arc::from(name));
                self.names.len() - 1
            }
        }
    }
}

/// Whether `name` can name a replica group: 1 to 64 ASCII letters, digits, `_`,
/// `-` or `.` (it appears as a metric label value).
pub(crate) fn valid_group_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

impl Classifier {
    /// A classifier with the built-in rules only.
    pub fn new(dialect: Dialect) -> Self {
        Classifier {
            inner: Arc::new(Inner {
                dialect,
                ext: Extensions::default(),
            }),
        }
    }

    /// A builder for user extensions (extra write functions, read-only overrides, routing rules).
    pub fn builder(dialect: Dialect) -> ClassifierBuilder {
        ClassifierBuilder {
            dialect,
            write: Vec::new(),
            read_only: Vec::new(),
            rules: Vec::new(),
            heavy: Vec::new(),
        }
    }

    /// The dialect this classifier judges.
    pub fn dialect(&self) -> Dialect {
        self.inner.dialect
    }

    /// Judge one SQL string (one statement, or several separated by `;`).
    ///
    /// Routing rules are tried first, in the order they were added; then the built-in
    /// rules, with the user's function lists consulted before the built-in ones. Never
    /// panics, and never allocates unless routing rules are configured.
    pub fn classify(&self, sql: &str) -> Verdict {
        let inner = &*self.inner;
        for (regex, target) in &inner.ext.rules {
            if regex.is_match(sql) {
                return match target {
                    Target::Primary => Verdict::Primary(SwitchReason::Rule),
                    Target::Replica => Verdict::Replica,
                };
            }
        }
        rules::Judge {
            dialect: inner.dialect,
            ext: &inner.ext,
        }
        .verdict(sql)
    }

    /// The replica group a read should be served by, or `None` for any replica
    /// (the default group): the group of the first
    /// [`group_rule`](ClassifierBuilder::group_rule) whose pattern matches, else of
    /// the first [`heavy_reads`](ClassifierBuilder::heavy_reads) rule whose threshold
    /// the statement's [`complexity`](Self::complexity) reaches. It says nothing about
    /// whether the statement may run on a replica at all: the pool asks only for
    /// statements that [`classify`](Self::classify) sends to a replica. Never
    /// allocates; without group rules it returns `None` at once.
    ///
    /// ```
    /// use diesel_rwsplit::classify::{Classifier, Dialect};
    ///
    /// let c = Classifier::builder(Dialect::Postgres)
    ///     .group_rule(r"(?i)\bfrom\s+reports\b", "reporting")
    ///     .heavy_reads(2, "analytics")
    ///     .build()?;
    /// assert_eq!(c.group("SELECT * FROM reports"), Some("reporting"));
    /// assert_eq!(c.group("SELECT k, count(*) FROM a JOIN b USING (id) GROUP BY k"), Some("analytics"));
    /// assert_eq!(c.group("SELECT * FROM a JOIN b USING (id)"), None);
    /// # Ok::<(), diesel_rwsplit::Error>(())
    /// ```
    pub fn group(&self, sql: &str) -> Option<&str> {
        self.group_index(sql)
            .map(|index| &*self.inner.ext.groups.names[index])
    }

    /// [`group`](Self::group) as an index into [`group_names`](Self::group_names).
    pub(crate) fn group_index(&self, sql: &str) -> Option<usize> {
        let groups = &self.inner.ext.groups;
        for (regex, group) in &groups.patterns {
            if regex.is_match(sql) {
                return Some(*group);
            }
        }
        if groups.heavy.is_empty() {
            return None;
        }
        let score = self.complexity(sql);
        groups
            .heavy
            .iter()
            .find(|(threshold, _)| score >= *threshold)
            .map(|(_, group)| *group)
    }

    /// Every replica group the classifier's rules name, each once, in the order
    /// first named.
    pub(crate) fn group_names(&self) -> &[Arc<str>] {
        &self.inner.ext.groups.names
    }

    /// How heavy a read looks, from its tokens alone (no parser): 1 per `JOIN`, 1 per
    /// subquery (a `SELECT` right after an opening parenthesis: `IN (SELECT ..)`,
    /// `EXISTS (..)`, a derived table, a CTE body), 1 per `GROUP BY`, 1 per `HAVING`
    /// and 1 per window function (`OVER (`), summed over the statements of the
    /// string. Nothing inside a comment, a string or a quoted identifier counts.
    ///
    /// ```
    /// use diesel_rwsplit::classify::{Classifier, Dialect};
    ///
    /// let c = Classifier::new(Dialect::Postgres);
    /// assert_eq!(c.complexity("SELECT * FROM users WHERE id = $1"), 0);
    /// assert_eq!(
    ///     c.complexity("SELECT u.name, count(*) FROM users u JOIN orders o ON o.user_id = u.id \
    ///                   WHERE o.id IN (SELECT id FROM refunds) GROUP BY u.name HAVING count(*) > 3"),
    ///     4
    /// );
    /// ```
    pub fn complexity(&self, sql: &str) -> u32 {
        complexity::score(sql, self.inner.dialect)
    }

    /// The statement's fingerprint (normalised text and hash).
    pub fn fingerprint(&self, sql: &str) -> Fingerprint {
        let mut text = String::with_capacity(sql.len());
        fingerprint::normalise(sql, self.inner.dialect, &mut text);
        let hash = fingerprint::fnv1a(&text);
        Fingerprint { text, hash }
    }

    /// The same value as `self.fingerprint(sql).hash()`, computed without allocating.
    ///
    /// ```
    /// use diesel_rwsplit::classify::{Classifier, Dialect};
    ///
    /// let c = Classifier::new(Dialect::Postgres);
    /// let sql = "SELECT * FROM t WHERE id = 42";
    /// assert_eq!(c.fingerprint_hash(sql), c.fingerprint(sql).hash());
    /// ```
    pub fn fingerprint_hash(&self, sql: &str) -> u64 {
        let mut hash = fingerprint::Fnv::default();
        fingerprint::normalise(sql, self.inner.dialect, &mut hash);
        hash.0
    }
}

/// Builds a [`Classifier`] with user extensions.
///
/// By default there are no extra write functions, no read-only overrides, no routing
/// rules and no replica group rules: the result behaves exactly like [`Classifier::new`].
///
/// ```
/// use diesel_rwsplit::classify::{Classifier, Dialect, Verdict};
/// use diesel_rwsplit::{SwitchReason, Target};
///
/// let c = Classifier::builder(Dialect::Postgres)
///     .write_function("billing.charge_card")
///     .read_only_function("currval")
///     .rule(r"(?i)^\s*select .* from reports\b", Target::Primary)
///     .build()?;
/// assert_eq!(c.classify("SELECT charge_card(7)"), Verdict::Primary(SwitchReason::SideEffectFunction));
/// assert_eq!(c.classify("SELECT currval('s')"), Verdict::Replica);
/// assert_eq!(c.classify("SELECT * FROM reports"), Verdict::Primary(SwitchReason::Rule));
/// # Ok::<(), diesel_rwsplit::Error>(())
/// ```
#[derive(Debug)]
#[must_use]
pub struct ClassifierBuilder {
    dialect: Dialect,
    write: Vec<String>,
    read_only: Vec<String>,
    /// `rule` and `group_rule` patterns, in the order added (one index space for
    /// [`Error::InvalidRule`]).
    rules: Vec<(String, RuleTo)>,
    heavy: Vec<(u32, String)>,
}

/// Where a pending rule sends what it matches.
#[derive(Debug)]
enum RuleTo {
    Target(Target),
    Group(String),
}

impl ClassifierBuilder {
    /// Declare a function that writes (or otherwise must run on the primary): a statement
    /// calling it goes to the primary as [`SwitchReason::SideEffectFunction`].
    ///
    /// `name` may be schema-qualified (`billing.charge`); the schema is ignored, so a call
    /// matches with any qualifier or none. An unquoted name matches calls in any case; a
    /// PostgreSQL `"Quoted"` name matches exactly, as the server resolves it. MySQL names
    /// ignore case. Default: none.
    #[must_use = "the builder is consumed: keep the returned one"]
    pub fn write_function(mut self, name: &str) -> Self {
        self.write.push(name.to_owned());
        self
    }

    /// Declare several write functions at once (see [`write_function`](Self::write_function)),
    /// for example those [`volatile_user_functions`](crate::volatile_user_functions)
    /// reads from the database. Default: none.
    #[must_use = "the builder is consumed: keep the returned one"]
    pub fn write_functions<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.write
            .extend(names.into_iter().map(|name| name.as_ref().to_owned()));
        self
    }

    /// Declare a function read-only: calls to it never send a statement to the primary,
    /// even if it is a built-in side-effect function (say `currval`, when the application
    /// knows what it is doing) or was declared with
    /// [`write_function`](Self::write_function). Same name rules. Default: none.
    #[must_use = "the builder is consumed: keep the returned one"]
    pub fn read_only_function(mut self, name: &str) -> Self {
        self.read_only.push(name.to_owned());
        self
    }

    /// Add a routing rule: a statement whose raw SQL matches `pattern` (a [`regex`]
    /// crate expression, unanchored unless you anchor it) goes to `target`, before any
    /// built-in judgement. The first matching rule, in the order added, wins. A rule to
    /// [`Target::Primary`] gives `Verdict::Primary(SwitchReason::Rule)`; a rule to
    /// [`Target::Replica`] gives `Verdict::Replica` *even for a write*, so keep such rules
    /// narrow. An invalid pattern makes [`build`](Self::build) fail. Default: none.
    #[must_use = "the builder is consumed: keep the returned one"]
    pub fn rule(mut self, pattern: &str, target: Target) -> Self {
        self.rules
            .push((pattern.to_owned(), RuleTo::Target(target)));
        self
    }

    /// Send the reads whose raw SQL matches `pattern` (a [`regex`] expression, as for
    /// [`rule`](Self::rule)) to the replicas of `group` (see
    /// [`SwitchablePoolBuilder::replica_group`](crate::SwitchablePoolBuilder::replica_group)).
    ///
    /// Only reads are concerned: the rule is consulted after the statement has been
    /// judged, and only when it goes to a replica. A write or a doubtful statement
    /// that matches still goes to the primary; a group never weakens the interlock.
    /// Group rules are tried in the order added, before the
    /// [`heavy_reads`](Self::heavy_reads) rules; the first match wins. When no replica
    /// of the group can serve, the read runs on another replica (counted as a group
    /// fallback). `group`: 1 to 64 ASCII letters, digits, `_`, `-`, `.`; anything else,
    /// or an invalid pattern, makes [`build`](Self::build) fail. Default: none.
    #[must_use = "the builder is consumed: keep the returned one"]
    pub fn group_rule(mut self, pattern: &str, group: impl Into<String>) -> Self {
        self.rules
            .push((pattern.to_owned(), RuleTo::Group(group.into())));
        self
    }

    /// Send heavy reads to the replicas of `group`: a read whose
    /// [`complexity`](Classifier::complexity) score (1 per `JOIN`, subquery,
    /// `GROUP BY`, `HAVING` and window function) is at least `threshold`.
    ///
    /// Consulted after the [`group_rule`](Self::group_rule)s, and only for statements
    /// judged to be reads (a heavy write still goes to the primary). Several tiers
    /// may be given (say `heavy_reads(6, "warehouse").heavy_reads(2, "analytics")`):
    /// the first, in the order added, whose threshold is reached wins. A threshold of
    /// 0 sends every read to the group. Same group name rules as `group_rule`.
    /// Default: none.
    #[must_use = "the builder is consumed: keep the returned one"]
    pub fn heavy_reads(mut self, threshold: u32, group: impl Into<String>) -> Self {
        self.heavy.push((threshold, group.into()));
        self
    }

    /// Build the classifier.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRule`] for the first routing rule whose pattern does not compile
    /// (`index` counts [`rule`](Self::rule)s and [`group_rule`](Self::group_rule)s
    /// together, in the order added); [`Error::InvalidConfig`] for a group name that
    /// is not 1 to 64 ASCII letters, digits, `_`, `-` or `.`.
    pub fn build(self) -> Result<Classifier, Error> {
        let dialect = self.dialect;
        let mut groups = GroupRouting::default();
        let mut rules = Vec::new();
        let check = |group: &str| {
            if valid_group_name(group) {
                Ok(())
            } else {
                Err(Error::InvalidConfig(format!(
                    "{group:?} is not a replica group name (1 to 64 ASCII letters, digits, '_', '-', '.')"
                )))
            }
        };
        for (index, (pattern, to)) in self.rules.into_iter().enumerate() {
            let regex =
                Regex::new(&pattern).map_err(|source| Error::InvalidRule { index, source })?;
            match to {
                RuleTo::Target(target) => rules.push((regex, target)),
                RuleTo::Group(group) => {
                    check(&group)?;
                    let group = groups.index_of(&group);
                    groups.patterns.push((regex, group));
                }
            }
        }
        for (threshold, group) in self.heavy {
            check(&group)?;
            let group = groups.index_of(&group);
            groups.heavy.push((threshold, group));
        }
        let parse = |names: Vec<String>| {
            names
                .iter()
                .map(|n| UserFunction::parse(n, dialect))
                .collect::<Vec<_>>()
        };
        let ext = Extensions {
            write: parse(self.write),
            read_only: parse(self.read_only),
            rules,
            groups,
        };
        Ok(Classifier {
            inner: Arc::new(Inner { dialect, ext }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifier_is_send_sync_and_cheap_to_clone() {
        fn assert_send_sync<T: Send + Sync + Clone>() {}
        assert_send_sync::<Classifier>();
    }

    #[test]
    fn invalid_rule_is_a_typed_error_with_its_index() {
        let err = Classifier::builder(Dialect::Postgres)
            .rule("^select", Target::Replica)
            .rule("(unclosed", Target::Primary)
            .build()
            .unwrap_err();
        assert!(
            matches!(err, Error::InvalidRule { index: 1, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn first_matching_rule_wins_and_rules_come_first() {
        let c = Classifier::builder(Dialect::Postgres)
            .rule("(?i)^delete from scratch", Target::Replica)
            .rule("(?i)delete", Target::Primary)
            .rule("(?i)reports", Target::Primary)
            .build()
            .unwrap();
        assert_eq!(c.classify("DELETE FROM scratch"), Verdict::Replica);
        assert_eq!(
            c.classify("DELETE FROM t"),
            Verdict::Primary(SwitchReason::Rule)
        );
        assert_eq!(
            c.classify("SELECT * FROM reports"),
            Verdict::Primary(SwitchReason::Rule)
        );
        assert_eq!(c.classify("SELECT 1"), Verdict::Replica);
    }

    #[test]
    fn group_rules_route_reads_and_never_change_verdicts() {
        let c = Classifier::builder(Dialect::Postgres)
            .rule("(?i)audit_log", Target::Primary)
            .group_rule(r"(?i)\breports\b", "reporting")
            .heavy_reads(4, "warehouse")
            .heavy_reads(2, "analytics")
            .build()
            .unwrap();
        assert_eq!(c.group_names().len(), 3);
        let cases: &[(&str, Verdict, Option<&str>)] = &[
            ("SELECT 1", Verdict::Replica, None),
            ("SELECT * FROM reports", Verdict::Replica, Some("reporting")),
            (
                "SELECT k, count(*) FROM a JOIN b USING (id) GROUP BY k",
                Verdict::Replica,
                Some("analytics"),
            ),
            (
                "SELECT k, count(*) FROM a JOIN b USING (id) JOIN c USING (id) GROUP BY k HAVING count(*) > 1",
                Verdict::Replica,
                Some("warehouse"),
            ),
            ("SELECT * FROM a JOIN b USING (id)", Verdict::Replica, None),
            // A group says where a read goes; the verdict alone says whether it is one.
            (
                "INSERT INTO t SELECT k, count(*) FROM a JOIN b USING (id) GROUP BY k",
                Verdict::Primary(SwitchReason::WriteStatement),
                Some("analytics"),
            ),
            (
                "SELECT * FROM reports FOR UPDATE",
                Verdict::Primary(SwitchReason::LockingRead),
                Some("reporting"),
            ),
            (
                "SELECT * FROM audit_log JOIN a USING (id) GROUP BY 1",
                Verdict::Primary(SwitchReason::Rule),
                Some("analytics"),
            ),
        ];
        for (sql, verdict, group) in cases {
            assert_eq!(c.classify(sql), *verdict, "{sql}");
            assert_eq!(c.group(sql), *group, "{sql}");
        }
        assert_eq!(
            Classifier::new(Dialect::Postgres).group("SELECT * FROM a JOIN b ON true GROUP BY 1"),
            None
        );
    }

    #[test]
    fn group_rules_share_the_rule_index_and_names_are_checked() {
        let err = Classifier::builder(Dialect::Postgres)
            .rule("^select", Target::Replica)
            .group_rule("(unclosed", "analytics")
            .build()
            .unwrap_err();
        assert!(
            matches!(err, Error::InvalidRule { index: 1, .. }),
            "{err:?}"
        );
        for bad in ["", "has space", "quo\"te", &"x".repeat(65)] {
            let err = Classifier::builder(Dialect::Postgres)
                .heavy_reads(2, bad)
                .build()
                .unwrap_err();
            assert!(matches!(err, Error::InvalidConfig(_)), "{bad:?}: {err:?}");
        }
        assert!(Classifier::builder(Dialect::Postgres)
            .group_rule("x", "eu-west_1.analytics")
            .build()
            .is_ok());
    }

    #[test]
    fn user_functions_come_before_builtins() {
        let c = Classifier::builder(Dialect::Postgres)
            .write_function("app.touch")
            .write_function("\"Audit\"")
            .read_only_function("nextval")
            .read_only_function("touch_ro")
            .write_function("touch_ro")
            .build()
            .unwrap();
        let se = Verdict::Primary(SwitchReason::SideEffectFunction);
        assert_eq!(c.classify("SELECT touch(1)"), se);
        assert_eq!(c.classify("SELECT app.TOUCH(1)"), se);
        assert_eq!(c.classify("SELECT \"Audit\"()"), se);
        assert_eq!(c.classify("SELECT audit()"), Verdict::Replica);
        assert_eq!(c.classify("SELECT nextval('s')"), Verdict::Replica);
        assert_eq!(c.classify("SELECT touch_ro()"), Verdict::Replica);
        assert_eq!(c.classify("SELECT setval('s', 1)"), se);
    }

    #[test]
    fn fingerprints_fold_literals_and_match_the_fast_hash() {
        let c = Classifier::new(Dialect::Postgres);
        let a = c.fingerprint("SELECT * FROM t WHERE id = 1");
        let b = c.fingerprint("select *  from t where id=$1");
        assert_eq!(a, b);
        assert_eq!(a.text(), "select * from t where id = ?");
        for sql in [
            "SELECT * FROM t WHERE id = 1",
            "INSERT INTO t VALUES ('secret', 2), ('other', 3)",
            "SELECT 'unterminated",
            "",
        ] {
            assert_eq!(c.fingerprint_hash(sql), c.fingerprint(sql).hash(), "{sql}");
        }
        let secret = c.fingerprint("SELECT 'hunter2', $$hunter3$$, E'hunter4', 31337 -- hunter5");
        for leak in ["hunter", "31337"] {
            assert!(!secret.text().contains(leak), "{}", secret.text());
        }
    }
}
