//! Statement classifier (not implemented yet: everything goes to the primary).

use std::sync::Arc;

use crate::{Error, SwitchReason, Target};

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

/// Judges SQL statements: replica or primary, and why. Cheap to clone, `Send + Sync`.
#[derive(Debug, Clone)]
pub struct Classifier {
    inner: Arc<Dialect>,
}

impl Classifier {
    /// A classifier with the built-in rules only.
    pub fn new(dialect: Dialect) -> Self {
        Classifier {
            inner: Arc::new(dialect),
        }
    }

    /// The dialect this classifier judges.
    pub fn dialect(&self) -> Dialect {
        *self.inner
    }

    /// Judge one SQL string. Not implemented yet: everything is doubtful, so the primary.
    pub fn classify(&self, _sql: &str) -> Verdict {
        Verdict::Primary(SwitchReason::Unknown)
    }

    /// Build-time validation hook for user rules (none yet).
    pub fn validate(&self) -> Result<(), Error> {
        Ok(())
    }
}
