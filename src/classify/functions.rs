//! Built-in functions that must run on the primary, and the user's own function lists.
//!
//! Names are matched without allocating: a case-insensitive binary search over a static
//! table sorted by lower-case name, then a short list of prefixes for the families
//! (`pg_advisory_*`, `pg_stat_reset*`, ...). Quoted identifiers match exactly.

use std::cmp::Ordering;

use crate::SwitchReason;

use super::lexer::{Kind, Lexer, Token};
use super::Dialect;

const SE: SwitchReason = SwitchReason::SideEffectFunction;
const SS: SwitchReason = SwitchReason::SessionState;

/// PostgreSQL functions with a side effect, bound to the session, or that only work on a
/// primary. Sorted by name (checked by a test).
static PG_EXACT: &[(&str, SwitchReason)] = &[
    ("brin_desummarize_range", SE),
    ("currval", SE),
    ("gin_clean_pending_list", SE),
    ("lastval", SE),
    ("lo_close", SE),
    ("lo_creat", SE),
    ("lo_create", SE),
    ("lo_export", SE),
    ("lo_from_bytea", SE),
    ("lo_import", SE),
    ("lo_lseek", SE),
    ("lo_lseek64", SE),
    ("lo_open", SE),
    ("lo_put", SE),
    ("lo_tell", SE),
    ("lo_tell64", SE),
    ("lo_truncate", SE),
    ("lo_truncate64", SE),
    ("lo_unlink", SE),
    ("loread", SE),
    ("lowrite", SE),
    ("nextval", SE),
    ("pg_cancel_backend", SE),
    ("pg_drop_replication_slot", SE),
    ("pg_export_snapshot", SE),
    ("pg_extension_config_dump", SE),
    ("pg_import_system_collations", SE),
    ("pg_listening_channels", SS),
    ("pg_log_backend_memory_contexts", SE),
    ("pg_log_standby_snapshot", SE),
    ("pg_logical_emit_message", SE),
    ("pg_notify", SE),
    ("pg_promote", SE),
    ("pg_reload_conf", SE),
    ("pg_replication_slot_advance", SE),
    ("pg_rotate_logfile", SE),
    ("pg_rotate_logfile_old", SE),
    ("pg_stat_statements_reset", SE),
    ("pg_switch_wal", SE),
    ("pg_switch_xlog", SE),
    ("pg_sync_replication_slots", SE),
    ("pg_terminate_backend", SE),
    ("pg_walfile_name", SE),
    ("pg_walfile_name_offset", SE),
    ("pg_xlogfile_name", SE),
    ("pg_xlogfile_name_offset", SE),
    ("set_config", SS),
    ("setseed", SS),
    ("setval", SE),
    ("txid_current", SE),
    ("txid_current_if_assigned", SE),
];

/// PostgreSQL function families, by name prefix.
static PG_PREFIX: &[(&str, SwitchReason)] = &[
    ("brin_summarize_", SE),
    ("dblink", SE),
    ("pg_advisory_", SE),
    ("pg_backup_", SE),
    ("pg_copy_", SE),
    ("pg_create_", SE),
    ("pg_current_wal_", SE),
    ("pg_current_xact_id", SE),
    ("pg_current_xlog_", SE),
    ("pg_file_", SE),
    ("pg_logical_slot_", SE),
    ("pg_replication_origin_", SE),
    ("pg_start_backup", SE),
    ("pg_stat_reset", SE),
    ("pg_stop_backup", SE),
    ("pg_try_advisory_", SE),
    ("pg_wal_replay_", SE),
];

/// MySQL / MariaDB functions with a side effect or bound to the session. Sorted.
static MYSQL_EXACT: &[(&str, SwitchReason)] = &[
    ("found_rows", SE),
    ("get_lock", SE),
    ("is_free_lock", SE),
    ("is_used_lock", SE),
    ("last_insert_id", SE),
    ("lastval", SE),
    ("nextval", SE),
    ("release_all_locks", SE),
    ("release_lock", SE),
    ("row_count", SE),
    ("setval", SE),
];

/// `a` vs `b` as if both were ASCII lower-cased (`b` is already lower case).
fn cmp_lower(a: &str, b: &str) -> Ordering {
    a.bytes().map(|c| c.to_ascii_lowercase()).cmp(b.bytes())
}

fn starts_with_lower(name: &str, prefix: &str) -> bool {
    name.len() >= prefix.len()
        && name.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// The built-in verdict for a call of `name` (the identifier's text without quotes);
/// `exact` for a quoted PostgreSQL identifier, which must match case and all.
pub(crate) fn builtin(dialect: Dialect, name: &str, exact: bool) -> Option<SwitchReason> {
    if exact && name.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let (table, prefixes) = match dialect {
        Dialect::Postgres => (PG_EXACT, PG_PREFIX),
        Dialect::Mysql => (MYSQL_EXACT, &[][..]),
    };
    if let Ok(i) = table.binary_search_by(|(entry, _)| cmp_lower(name, entry).reverse()) {
        return Some(table[i].1);
    }
    prefixes
        .iter()
        .find(|(prefix, _)| starts_with_lower(name, prefix))
        .map(|(_, reason)| *reason)
}

/// A user-declared function name, folded the way the server folds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UserFunction {
    /// For PostgreSQL: the identifier as stored in the catalog (unquoted declarations
    /// lower-cased, quoted ones exact). For MySQL: lower-cased (names ignore case).
    name: String,
}

impl UserFunction {
    /// Parse a declaration such as `audit_log`, `billing.charge`, `"Billing"."Charge"` or
    /// `` `charge` ``: the schema, if any, is dropped (calls match whatever the qualifier).
    pub(crate) fn parse(decl: &str, dialect: Dialect) -> Self {
        let last = Lexer::new(decl, dialect)
            .filter(|t| matches!(t.kind, Kind::Word | Kind::Quoted))
            .last();
        let name = match last {
            Some(t) if t.kind == Kind::Quoted && dialect == Dialect::Postgres => unquote(t.text),
            Some(t) => unquote(t.text).to_ascii_lowercase(),
            None => decl.trim().to_ascii_lowercase(),
        };
        UserFunction { name }
    }

    /// Does a call through `token` (a word or a quoted identifier) name this function?
    pub(crate) fn matches(&self, token: &Token<'_>, dialect: Dialect) -> bool {
        match (token.kind, dialect) {
            (Kind::Quoted, Dialect::Postgres) => {
                let inner = strip_quotes(token.text);
                if inner.contains("\"\"") {
                    unquote(token.text) == self.name
                } else {
                    inner == self.name
                }
            }
            (Kind::Quoted, Dialect::Mysql) => {
                let inner = strip_quotes(token.text);
                inner.eq_ignore_ascii_case(&self.name)
            }
            _ => {
                token.text.eq_ignore_ascii_case(&self.name)
                    && (dialect == Dialect::Mysql
                        || !self.name.bytes().any(|b| b.is_ascii_uppercase()))
            }
        }
    }
}

/// The text between a quoted identifier's quotes (or the text itself when unquoted).
pub(crate) fn strip_quotes(text: &str) -> &str {
    let b = text.as_bytes();
    if b.len() >= 2 && matches!(b[0], b'"' | b'`') && b[b.len() - 1] == b[0] {
        &text[1..text.len() - 1]
    } else {
        text
    }
}

fn unquote(text: &str) -> String {
    let inner = strip_quotes(text);
    if inner.len() == text.len() {
        return inner.to_owned();
    }
    let quote = &text[..1];
    inner.replace(&quote.repeat(2), quote)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_sorted_and_lower_case() {
        for table in [PG_EXACT, MYSQL_EXACT] {
            for pair in table.windows(2) {
                assert!(pair[0].0 < pair[1].0, "{} !< {}", pair[0].0, pair[1].0);
            }
            for (name, _) in table {
                assert_eq!(*name, name.to_ascii_lowercase());
            }
        }
    }

    #[test]
    fn builtin_lookup() {
        let pg = Dialect::Postgres;
        let cases: &[(&str, bool, Option<SwitchReason>)] = &[
            ("nextval", false, Some(SE)),
            ("NEXTVAL", false, Some(SE)),
            ("NEXTVAL", true, None),
            ("nextval", true, Some(SE)),
            ("pg_advisory_xact_lock", false, Some(SE)),
            ("PG_TRY_ADVISORY_LOCK_SHARED", false, Some(SE)),
            ("pg_stat_reset_shared", false, Some(SE)),
            ("set_config", false, Some(SS)),
            ("pg_current_xact_id_if_assigned", false, Some(SE)),
            ("pg_current_wal_lsn", false, Some(SE)),
            ("dblink_exec", false, Some(SE)),
            ("now", false, None),
            ("pg_sleep", false, None),
            ("current_setting", false, None),
            ("pg_is_in_recovery", false, None),
            ("lo_get", false, None),
            ("pg_last_wal_replay_lsn", false, None),
            ("", false, None),
            ("next", false, None),
        ];
        for (name, exact, want) in cases {
            assert_eq!(builtin(pg, name, *exact), *want, "{name} exact={exact}");
        }
        assert_eq!(builtin(Dialect::Mysql, "GET_LOCK", false), Some(SE));
        assert_eq!(builtin(Dialect::Mysql, "pg_notify", false), None);
        assert_eq!(builtin(Dialect::Mysql, "now", false), None);
    }

    fn word(text: &str) -> Token<'_> {
        Lexer::new(text, Dialect::Postgres).next().unwrap()
    }

    #[test]
    fn user_functions_fold_like_the_server() {
        let pg = Dialect::Postgres;
        let plain = UserFunction::parse("Audit_Log", pg);
        assert!(plain.matches(&word("audit_log"), pg));
        assert!(plain.matches(&word("AUDIT_LOG"), pg));
        assert!(plain.matches(&word("\"audit_log\""), pg));
        assert!(!plain.matches(&word("\"Audit_Log\""), pg));

        let quoted = UserFunction::parse("billing.\"Charge\"", pg);
        assert!(quoted.matches(&word("\"Charge\""), pg));
        assert!(!quoted.matches(&word("charge"), pg));
        assert!(!quoted.matches(&word("Charge"), pg));

        let my = Dialect::Mysql;
        let f = UserFunction::parse("`Billing`.`Charge`", my);
        let tok = Lexer::new("`CHARGE`", my).next().unwrap();
        assert!(f.matches(&tok, my));
        let tok = Lexer::new("charge", my).next().unwrap();
        assert!(f.matches(&tok, my));
    }
}
