//! `build_transaction()`: diesel-async's transaction builder for a switchable
//! connection, where `read_only()` lets a replica serve the whole transaction.

use std::fmt;
use std::future::Future;

use diesel::QueryResult;
use diesel_async::{AnsiTransactionManager, AsyncPgConnection, TransactionManager};

use super::{SwitchTransactionManager, SwitchableConnection};

/// The closure of [`TransactionBuilder::run`]: an async closure taking the
/// connection, whose future is `Send` (the same trick diesel-async uses to name
/// the closure's future; implemented for every such closure, never by hand).
pub trait TransactionFn<T, R>:
    AsyncFnOnce(T) -> R + FnOnce(T) -> <Self as TransactionFn<T, R>>::Fut
{
    /// The closure's future.
    type Fut: Future<Output = R>;
}

impl<F, T, Fut, R> TransactionFn<T, R> for F
where
    F: AsyncFnOnce(T) -> R + FnOnce(T) -> Fut,
    Fut: Future<Output = R>,
{
    type Fut = Fut;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isolation {
    ReadCommitted,
    RepeatableRead,
    Serializable,
}

/// A transaction with options (isolation level, read mode, deferrability), as
/// diesel-async's `AsyncPgConnection::build_transaction()` makes, from
/// [`SwitchableConnection::build_transaction`].
///
/// Where it runs:
///
/// - `read_only()` on a connection that is on a replica (and not in `Observe`
///   mode): on that replica, from `BEGIN` to `COMMIT`, and the connection stays on
///   the replica afterwards: a consistent multi-statement snapshot off the primary
///   (`repeatable_read().read_only()` is the usual choice). Every statement inside
///   runs there, unjudged: a write fails as PostgreSQL fails any write in a
///   read-only transaction (SQLSTATE 25006, not run again on the primary), and a
///   hook or [`switch_to_primary`](SwitchableConnection::switch_to_primary) inside
///   returns [`Error::InReplicaTransaction`](crate::Error::InReplicaTransaction).
///   Nothing is retried elsewhere inside it (a retry would leave the snapshot), and
///   the client-side replica read bound does not apply (the server's
///   `statement_timeout` does). Counted in
///   [`StatsSnapshot::replica_read_only_transactions`](crate::StatsSnapshot::replica_read_only_transactions).
/// - `serializable().read_only()` goes to the primary: a hot standby refuses
///   serializable transactions ("cannot use serializable mode in a hot standby",
///   SQLSTATE 0A000), and a serializable read-only transaction's guarantee
///   (including `deferrable()`) needs the primary's predicate locks.
/// - Everything else flips to the primary first, as `transaction()` does
///   ([`SwitchReason::TransactionBegin`](crate::SwitchReason::TransactionBegin);
///   in `Raise` mode it is refused).
///
/// If the future of [`run`](Self::run) is dropped while the transaction is open,
/// the session is left in a transaction; its pool discards it rather than hand it
/// out again.
#[must_use = "a transaction builder does nothing until `run` is called"]
pub struct TransactionBuilder<'a> {
    conn: &'a mut SwitchableConnection<AsyncPgConnection>,
    isolation: Option<Isolation>,
    read_only: Option<bool>,
    deferrable: Option<bool>,
}

impl fmt::Debug for TransactionBuilder<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransactionBuilder")
            .field("isolation", &self.isolation)
            .field("read_only", &self.read_only)
            .field("deferrable", &self.deferrable)
            .finish_non_exhaustive()
    }
}

impl<'a> TransactionBuilder<'a> {
    pub(super) fn new(conn: &'a mut SwitchableConnection<AsyncPgConnection>) -> Self {
        TransactionBuilder {
            conn,
            isolation: None,
            read_only: None,
            deferrable: None,
        }
    }

    /// `READ ONLY`: on a replica connection, the replica serves the transaction.
    pub fn read_only(mut self) -> Self {
        self.read_only = Some(true);
        self
    }

    /// `READ WRITE`: on the primary.
    pub fn read_write(mut self) -> Self {
        self.read_only = Some(false);
        self
    }

    /// `DEFERRABLE` (meaningful for `SERIALIZABLE READ ONLY`, which runs on the primary).
    pub fn deferrable(mut self) -> Self {
        self.deferrable = Some(true);
        self
    }

    /// `NOT DEFERRABLE`.
    pub fn not_deferrable(mut self) -> Self {
        self.deferrable = Some(false);
        self
    }

    /// `ISOLATION LEVEL READ COMMITTED`.
    pub fn read_committed(mut self) -> Self {
        self.isolation = Some(Isolation::ReadCommitted);
        self
    }

    /// `ISOLATION LEVEL REPEATABLE READ`: with `read_only()`, one snapshot for every
    /// statement of the transaction, on the replica.
    pub fn repeatable_read(mut self) -> Self {
        self.isolation = Some(Isolation::RepeatableRead);
        self
    }

    /// `ISOLATION LEVEL SERIALIZABLE`: always on the primary.
    pub fn serializable(mut self) -> Self {
        self.isolation = Some(Isolation::Serializable);
        self
    }

    /// Begin the transaction where the options allow (see the type's docs), run
    /// `f` in it, and commit if it returns `Ok`, roll back if it returns `Err`.
    pub async fn run<'b, T, E, F>(&mut self, f: F) -> Result<T, E>
    where
        for<'r> F: AsyncFnOnce(&'r mut SwitchableConnection<AsyncPgConnection>) -> Result<T, E>
            + TransactionFn<&'r mut SwitchableConnection<AsyncPgConnection>, Result<T, E>, Fut: Send>
            + Send
            + 'a,
        T: 'b,
        E: From<diesel::result::Error> + 'b,
    {
        let sql = begin_sql(self.isolation, self.read_only, self.deferrable);
        let conn = &mut *self.conn;
        let on_replica = self.read_only == Some(true)
            && self.isolation != Some(Isolation::Serializable)
            && conn.can_begin_on_replica();
        if on_replica {
            begin_on_replica(conn, &sql).await?;
        } else {
            conn.begin_hook().await?;
            AnsiTransactionManager::begin_transaction_sql(conn.active_mut(), &sql).await?;
        }
        type Manager = SwitchTransactionManager<AsyncPgConnection>;
        match f(&mut *conn).await {
            Ok(value) => {
                Manager::commit_transaction(conn).await?;
                Ok(value)
            }
            Err(error) => {
                Manager::rollback_transaction(conn).await?;
                Err(error)
            }
        }
    }
}

/// The `BEGIN` statement the options make.
fn begin_sql(
    isolation: Option<Isolation>,
    read_only: Option<bool>,
    deferrable: Option<bool>,
) -> String {
    let mut sql = String::from("BEGIN TRANSACTION");
    match isolation {
        Some(Isolation::ReadCommitted) => sql.push_str(" ISOLATION LEVEL READ COMMITTED"),
        Some(Isolation::RepeatableRead) => sql.push_str(" ISOLATION LEVEL REPEATABLE READ"),
        Some(Isolation::Serializable) => sql.push_str(" ISOLATION LEVEL SERIALIZABLE"),
        None => {}
    }
    match read_only {
        Some(true) => sql.push_str(" READ ONLY"),
        Some(false) => sql.push_str(" READ WRITE"),
        None => {}
    }
    match deferrable {
        Some(true) => sql.push_str(" DEFERRABLE"),
        Some(false) => sql.push_str(" NOT DEFERRABLE"),
        None => {}
    }
    sql
}

async fn begin_on_replica(
    conn: &mut SwitchableConnection<AsyncPgConnection>,
    sql: &str,
) -> QueryResult<()> {
    AnsiTransactionManager::begin_transaction_sql(conn.active_mut(), sql).await?;
    conn.pin_to_replica_transaction();
    Ok(())
}

impl SwitchableConnection<AsyncPgConnection> {
    /// A transaction with options, as `AsyncPgConnection::build_transaction()`:
    /// `read_only()` on a replica connection runs the whole transaction on that
    /// replica and leaves the connection there; anything else flips to the primary
    /// first (see [`TransactionBuilder`]).
    ///
    /// ```no_run
    /// # async fn demo(pool: &diesel_rwsplit::SwitchablePool) -> Result<(), Box<dyn std::error::Error>> {
    /// use diesel_async::RunQueryDsl;
    ///
    /// let mut conn = pool.get().await?;
    /// let (users, orders): (i64, i64) = conn
    ///     .build_transaction()
    ///     .repeatable_read()
    ///     .read_only()
    ///     .run(async |conn| {
    ///         // one snapshot, on the replica, for both counts
    ///         let users = diesel::dsl::sql::<diesel::sql_types::BigInt>("SELECT count(*) FROM users");
    ///         let orders = diesel::dsl::sql::<diesel::sql_types::BigInt>("SELECT count(*) FROM orders");
    ///         Ok::<_, diesel::result::Error>((
    ///             diesel::select(users).get_result(conn).await?,
    ///             diesel::select(orders).get_result(conn).await?,
    ///         ))
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn build_transaction(&mut self) -> TransactionBuilder<'_> {
        TransactionBuilder::new(self)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn begin_statements() {
        let cases = [
            ((None, None, None), "BEGIN TRANSACTION"),
            (
                (Some(super::Isolation::RepeatableRead), Some(true), None),
                "BEGIN TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY",
            ),
            (
                (Some(super::Isolation::Serializable), Some(true), Some(true)),
                "BEGIN TRANSACTION ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE",
            ),
            (
                (
                    Some(super::Isolation::ReadCommitted),
                    Some(false),
                    Some(false),
                ),
                "BEGIN TRANSACTION ISOLATION LEVEL READ COMMITTED READ WRITE NOT DEFERRABLE",
            ),
        ];
        for ((isolation, read_only, deferrable), expected) in cases {
            assert_eq!(super::begin_sql(isolation, read_only, deferrable), expected);
        }
    }
}
