//! `SwitchTransactionManager<C>`: flips to the primary at `begin_transaction`, then delegates
//! every call to the *active* inner connection's own transaction manager (for
//! `AsyncPgConnection`: `AnsiTransactionManager`). Depth, savepoints, test-transaction flag,
//! the broken flag and `requires_rollback` all live in the inner connection's state; we own
//! no transaction state ourselves.

use std::marker::PhantomData;

use diesel::connection::TransactionManagerStatus;
use diesel::QueryResult;
use diesel_async::{AsyncConnection, TransactionManager};

use super::{SwitchTarget, SwitchableConnection};

/// The transaction manager of [`SwitchableConnection`]: a transaction begin flips
/// the connection to the primary (invariant 3: a transaction runs on one node), then
/// every call is delegated to the primary connection's own transaction manager,
/// which keeps all the state (depth, savepoints, the test flag, brokenness).
// `fn() -> C` keeps the marker `Send + Sync` whatever `C` is.
#[derive(Debug)]
pub struct SwitchTransactionManager<C>(PhantomData<fn() -> C>);

type Inner<C> = <C as AsyncConnection>::TransactionManager;

impl<C: SwitchTarget> TransactionManager<SwitchableConnection<C>> for SwitchTransactionManager<C> {
    type TransactionStateData = <Inner<C> as TransactionManager<C>>::TransactionStateData;

    /// Reached by `transaction()`, nested `transaction()` (then already on the
    /// primary: a savepoint) and `begin_test_transaction()`.
    async fn begin_transaction(conn: &mut SwitchableConnection<C>) -> QueryResult<()> {
        conn.begin_hook().await?;
        Inner::<C>::begin_transaction(conn.active_mut()).await
    }

    async fn rollback_transaction(conn: &mut SwitchableConnection<C>) -> QueryResult<()> {
        let result = Inner::<C>::rollback_transaction(conn.active_mut()).await;
        conn.transaction_may_have_ended();
        result
    }

    async fn commit_transaction(conn: &mut SwitchableConnection<C>) -> QueryResult<()> {
        let result = Inner::<C>::commit_transaction(conn.active_mut()).await;
        conn.transaction_may_have_ended();
        result
    }

    /// Before the flip this is the replica's (idle) status, which is what
    /// `begin_test_transaction`'s "not already in a transaction" assertion wants; after the
    /// flip it is the primary's, which is where `set_test_transaction_flag()` must land.
    fn transaction_manager_status_mut(
        conn: &mut SwitchableConnection<C>,
    ) -> &mut TransactionManagerStatus {
        Inner::<C>::transaction_manager_status_mut(conn.active_mut())
    }

    /// Broken if either held connection is (the default impl only looks at the active one).
    fn is_broken_transaction_manager(conn: &mut SwitchableConnection<C>) -> bool {
        conn.any_broken()
    }
}
