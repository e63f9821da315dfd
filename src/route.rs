//! Where a statement or a connection goes, and why it went to the primary.

use std::fmt;

/// The node a statement runs on, or a connection is currently attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// The read/write primary.
    Primary,
    /// A read-only streaming replica.
    Replica,
}

impl Target {
    /// Lower-case name, as printed by the CLI and used in metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            Target::Primary => "primary",
            Target::Replica => "replica",
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a freshly checked-out connection starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Route {
    /// Start on a replica; the safety interlock flips to the primary when needed (default).
    #[default]
    Replica,
    /// Start on the primary (targeted adoption: only chosen reads go to a replica).
    Primary,
}

/// Why a statement or a connection went to the primary.
///
/// The classifier reports the statement-level reasons; the connection adds the
/// hook and transaction reasons. Every automatic flip is counted under exactly one
/// of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum SwitchReason {
    /// DML, DDL, maintenance, `SELECT ... INTO`, `COPY ... FROM`, `CALL`, `DO`, `EXPLAIN ANALYZE` of a write.
    WriteStatement,
    /// `FOR UPDATE` / `FOR SHARE` / `NOWAIT` / `SKIP LOCKED` / `LOCK IN SHARE MODE`.
    LockingRead,
    /// A function with a side effect or bound to the session or the primary (`nextval`, advisory locks, ...),
    /// including the application's own declared write functions.
    SideEffectFunction,
    /// A transaction begins (`BEGIN`, `START TRANSACTION`, `transaction()`).
    TransactionBegin,
    /// Other transaction control (`COMMIT`, `ROLLBACK`, `SAVEPOINT`, ...).
    TransactionControl,
    /// Session state (`SET`, `PREPARE`, `LISTEN`, `LOCK`, temporary tables, ...).
    SessionState,
    /// The model layer's `before_save()` hook.
    SaveHook,
    /// The model layer's `before_delete()` hook.
    DeleteHook,
    /// Application code called `switch_to_primary()`.
    Explicit,
    /// A user routing rule sent the statement to the primary.
    Rule,
    /// Empty, unterminated or otherwise unparseable input: doubtful, so the primary.
    Unknown,
    /// A replica refused the statement as a write (SQLSTATE 25006: a user function
    /// that writes, an extension the classifier does not know); it was run again on
    /// the primary, and statements with the same fingerprint now go there directly.
    ReplicaRefused,
}

impl SwitchReason {
    /// Every reason, in declaration order (for counters and reports).
    pub const ALL: [SwitchReason; 12] = [
        SwitchReason::WriteStatement,
        SwitchReason::LockingRead,
        SwitchReason::SideEffectFunction,
        SwitchReason::TransactionBegin,
        SwitchReason::TransactionControl,
        SwitchReason::SessionState,
        SwitchReason::SaveHook,
        SwitchReason::DeleteHook,
        SwitchReason::Explicit,
        SwitchReason::Rule,
        SwitchReason::Unknown,
        SwitchReason::ReplicaRefused,
    ];

    /// Stable snake-case name, as printed by the CLI and used in metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            SwitchReason::WriteStatement => "write_statement",
            SwitchReason::LockingRead => "locking_read",
            SwitchReason::SideEffectFunction => "side_effect_function",
            SwitchReason::TransactionBegin => "transaction_begin",
            SwitchReason::TransactionControl => "transaction_control",
            SwitchReason::SessionState => "session_state",
            SwitchReason::SaveHook => "save_hook",
            SwitchReason::DeleteHook => "delete_hook",
            SwitchReason::Explicit => "explicit",
            SwitchReason::Rule => "rule",
            SwitchReason::Unknown => "unknown",
            SwitchReason::ReplicaRefused => "replica_refused",
        }
    }

    /// Position in [`SwitchReason::ALL`], for array-indexed counters.
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for SwitchReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SwitchReason {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SwitchReason::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_index_matches_all_order_and_names_round_trip() {
        for (i, reason) in SwitchReason::ALL.into_iter().enumerate() {
            assert_eq!(reason.index(), i);
            assert_eq!(reason.as_str().parse::<SwitchReason>(), Ok(reason));
        }
        assert!("nonsense".parse::<SwitchReason>().is_err());
    }
}
