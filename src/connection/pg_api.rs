//! The rest of `AsyncPgConnection`'s own (inherent) API on a switchable
//! connection, so that a service swaps one type:
//!
//! | `AsyncPgConnection` | `SwitchableConnection<AsyncPgConnection>` |
//! |---|---|
//! | `build_transaction()` | [`build_transaction()`](SwitchableConnection::build_transaction): `read_only()` runs on the replica |
//! | `notifications_stream()` | [`notifications_stream()`](SwitchableConnection::notifications_stream): the primary's, after `LISTEN` |
//! | `cancel_token()` | [`cancel_token()`](SwitchableConnection::cancel_token): the node the connection is on now |
//! | `try_from(client)`, `try_from_client_and_connection(..)` | none: a switchable connection comes from a [`SwitchablePool`](crate::SwitchablePool) (its nodes' sessions are opened by the pool, with TLS, credentials and keepalives) or from [`establish`](diesel_async::AsyncConnection::establish) (one node) |
//!
//! Everything of the `AsyncConnection` traits (`transaction`, `begin_test_transaction`,
//! `set_instrumentation`, `set_prepared_statement_cache_size`, ...) is implemented
//! by the switchable connection itself.

use diesel::QueryResult;
use diesel_async::AsyncPgConnection;
use futures_util::Stream;

use super::SwitchableConnection;

impl SwitchableConnection<AsyncPgConnection> {
    /// The notifications this connection's session has received, as
    /// `AsyncPgConnection::notifications_stream`.
    ///
    /// `LISTEN` is session state, so it flips the connection to the primary
    /// ([`SwitchReason::SessionState`](crate::SwitchReason::SessionState)) and the
    /// stream is the primary session's. `NOTIFY` is delivered only on the primary:
    /// a hot standby neither sends nor receives notifications, so on a connection
    /// still on its replica the stream yields nothing. Call it after `LISTEN` (the
    /// stream belongs to the session the connection is on when it is called).
    pub fn notifications_stream(
        &mut self,
    ) -> impl Stream<Item = QueryResult<diesel::pg::PgNotification>> + '_ {
        self.active_mut().notifications_stream()
    }

    /// A token that cancels the statement running on the node this connection is
    /// on *now*, as `AsyncPgConnection::cancel_token`.
    ///
    /// Across a flip: a token taken on the replica cancels only what runs on that
    /// replica session; once the connection has flipped to the primary, take a new
    /// token. A token taken after the flip always targets the primary session.
    /// Send it with [`cancel_query`](crate::cancel_query) (over TLS when the
    /// session used TLS) or with `token.cancel_query(tokio_postgres::NoTls)` for a
    /// plain-text session. A cancelled replica read is not retried elsewhere (the
    /// server reports SQLSTATE 57014, the statement's own error).
    pub fn cancel_token(&mut self) -> tokio_postgres::CancelToken {
        self.active_mut().cancel_token()
    }
}
