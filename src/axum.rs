//! [axum](https://docs.rs/axum) integration (feature `axum`): per-handler adoption.
//!
//! Each handler says by its signature where its database work goes:
//!
//! | extractor | checks out | for |
//! |-----------|------------|-----|
//! | [`ReplicaConn`] | [`SwitchablePool::get_replica`]: a replica-first connection, interlock armed | handlers that only read |
//! | [`PrimaryConn`] | [`SwitchablePool::get_primary`]: the primary, now | handlers that write, or must read their own writes |
//! | [`Conn`] | [`SwitchablePool::get`]: the pool's default route | handlers not sorted yet |
//!
//! A [`ReplicaConn`] handler that unexpectedly writes is caught by the safety
//! interlock: in [`InterlockMode::Switch`](crate::InterlockMode::Switch) its
//! connection flips to the primary, the write runs there and the flip is counted
//! (by reason and statement fingerprint, visible in [`metrics`](fn@metrics) and [`audit`]); in
//! [`InterlockMode::Raise`](crate::InterlockMode::Raise) the write returns an error
//! (see [`interlock_refusal`](crate::interlock_refusal)) and nothing runs.
//!
//! The extractors work with any router state from which the pool can be obtained
//! (`SwitchablePool<C>: FromRef<S>`): the pool itself, or an application state
//! struct with a `FromRef` impl. When no connection can be checked out the request
//! is rejected with [`ConnectionRejection`]: `503 Service Unavailable` and a short
//! text that names neither a node nor a URL.
//!
//! ```no_run
//! # async fn demo(pool: diesel_rwsplit::SwitchablePool) {
//! use axum::extract::Path;
//! use axum::routing::get;
//! use axum::Router;
//! use diesel::prelude::*;
//! use diesel_async::RunQueryDsl;
//! use diesel_rwsplit::axum::{audit, metrics, PrimaryConn, ReplicaConn};
//! # diesel::table! { users (id) { id -> BigInt, name -> Text } }
//!
//! async fn show(Path(id): Path<i64>, mut conn: ReplicaConn) -> String {
//!     // Runs on a replica.
//!     users::table
//!         .find(id)
//!         .select(users::name)
//!         .first::<String>(&mut conn)
//!         .await
//!         .unwrap_or_default()
//! }
//!
//! async fn rename(Path(id): Path<i64>, mut conn: PrimaryConn, name: String) -> String {
//!     // Runs on the primary.
//!     let n = diesel::update(users::table.find(id))
//!         .set(users::name.eq(name))
//!         .execute(&mut conn)
//!         .await
//!         .unwrap_or(0);
//!     format!("{n} updated")
//! }
//!
//! let app = Router::new()
//!     .route("/users/{id}", get(show).put(rename))
//!     .route("/metrics", get(metrics))
//!     .route("/audit", get(audit))
//!     .with_state(pool);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await.unwrap();
//! axum::serve(listener, app).await.unwrap();
//! # }
//! ```
//!
//! Cancellation: if a request is abandoned (the client goes away and axum drops the
//! handler's future), an extractor still waiting for a node returns whatever it had
//! checked out to its pool, and a connection already extracted is dropped with the
//! handler: its node connections go back to their pools, or are discarded if a
//! transaction was open (see [`PooledConnection`]).

use std::fmt;
use std::ops::{Deref, DerefMut};

use axum::extract::{FromRef, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use diesel_async::AsyncPgConnection;

use crate::{Error, PooledConnection, Route, SwitchTarget, SwitchablePool};

/// Content type of the Prometheus text exposition format served by [`metrics`](fn@metrics).
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

macro_rules! connection_extractor {
    ($(#[$doc:meta])* $name:ident, $route:expr, $checkout:ident) => {
        $(#[$doc])*
        pub struct $name<C: SwitchTarget = AsyncPgConnection>(pub PooledConnection<C>);

        impl<C: SwitchTarget> $name<C> {
            /// The pooled connection, e.g. to keep it beyond the handler's arguments.
            pub fn into_inner(self) -> PooledConnection<C> {
                self.0
            }
        }

        impl<C: SwitchTarget> fmt::Debug for $name<C> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_tuple(stringify!($name)).field(&self.0).finish()
            }
        }

        impl<C: SwitchTarget> Deref for $name<C> {
            type Target = PooledConnection<C>;

            fn deref(&self) -> &PooledConnection<C> {
                &self.0
            }
        }

        impl<C: SwitchTarget> DerefMut for $name<C> {
            fn deref_mut(&mut self) -> &mut PooledConnection<C> {
                &mut self.0
            }
        }

        impl<S, C> FromRequestParts<S> for $name<C>
        where
            C: SwitchTarget,
            SwitchablePool<C>: FromRef<S>,
            S: Send + Sync,
        {
            type Rejection = ConnectionRejection;

            async fn from_request_parts(
                _parts: &mut Parts,
                state: &S,
            ) -> Result<Self, Self::Rejection> {
                let pool = SwitchablePool::<C>::from_ref(state);
                match pool.$checkout().await {
                    Ok(conn) => Ok($name(conn)),
                    Err(error) => Err(ConnectionRejection::new($route, error)),
                }
            }
        }
    };
}

connection_extractor!(
    /// A replica-first connection ([`SwitchablePool::get_replica`]), whatever the
    /// pool's default route: for handlers that only read.
    ///
    /// The safety interlock stays armed: a statement that needs the primary flips the
    /// connection there (`Switch` mode, counted) or is refused (`Raise` mode). With
    /// every replica out, the primary serves it (counted) unless fallback is off, in
    /// which case the request is rejected with `503`.
    ///
    /// Derefs to the [`PooledConnection`]: pass `&mut conn` to diesel-async's
    /// `RunQueryDsl` methods. Extraction is cancel-safe: dropped while waiting for a
    /// node, it returns what it had checked out to its pool.
    ReplicaConn,
    Route::Replica,
    get_replica
);

connection_extractor!(
    /// A connection on the primary ([`SwitchablePool::get_primary`]), checked out
    /// before the handler runs: for handlers that write, or that must read what
    /// was just written.
    ///
    /// Derefs to the [`PooledConnection`]: pass `&mut conn` to diesel-async's
    /// `RunQueryDsl` methods. Extraction is cancel-safe: dropped while waiting for
    /// the primary, it leaks nothing.
    PrimaryConn,
    Route::Primary,
    get_primary
);

connection_extractor!(
    /// A connection on the pool's default route ([`SwitchablePool::get`]):
    /// replica-first with the interlock armed, unless the pool was built with
    /// [`Route::Primary`].
    ///
    /// Derefs to the [`PooledConnection`]. Extraction is cancel-safe: dropped while
    /// waiting for a node, it returns what it had checked out to its pool.
    Conn,
    Route::Replica,
    get
);

/// Why a connection extractor rejected a request: no connection could be checked
/// out of the pool.
///
/// As a response it is `503 Service Unavailable` with a short plain-text body
/// (`database unavailable (replica)` or `(primary)`) and `Retry-After: 1`; the
/// body names no node, URL or password. The full error is logged as a `tracing`
/// WARN event (target `diesel_rwsplit::axum`) and available from
/// [`error`](Self::error) for custom rejections (e.g. `Result<ReplicaConn,
/// ConnectionRejection>` as the handler argument).
pub struct ConnectionRejection {
    route: Route,
    error: Error,
}

impl ConnectionRejection {
    fn new(route: Route, error: Error) -> Self {
        ConnectionRejection { route, error }
    }

    /// Where the connection was asked for: [`Route::Replica`] for [`ReplicaConn`]
    /// (and for [`Conn`]), [`Route::Primary`] for [`PrimaryConn`].
    pub fn route(&self) -> Route {
        self.route
    }

    /// Why the checkout failed.
    pub fn error(&self) -> &Error {
        &self.error
    }

    /// The error, by value.
    pub fn into_error(self) -> Error {
        self.error
    }

    fn role(&self) -> &'static str {
        match self.route {
            Route::Replica => "replica",
            Route::Primary => "primary",
        }
    }
}

impl fmt::Debug for ConnectionRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionRejection")
            .field("route", &self.route)
            .field("error", &self.error)
            .finish()
    }
}

impl fmt::Display for ConnectionRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "could not check out a {} connection", self.role())
    }
}

impl std::error::Error for ConnectionRejection {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl IntoResponse for ConnectionRejection {
    fn into_response(self) -> Response {
        tracing::warn!(
            target: "diesel_rwsplit::axum",
            route = self.role(),
            error = %self.error,
            "request rejected: no database connection"
        );
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                (header::RETRY_AFTER, "1"),
            ],
            format!("database unavailable ({})\n", self.role()),
        )
            .into_response()
    }
}

/// A handler serving the pool's counters in the Prometheus text exposition format
/// ([`StatsSnapshot::to_prometheus`](crate::StatsSnapshot::to_prometheus)), with
/// content type [`PROMETHEUS_CONTENT_TYPE`].
///
/// `.route("/metrics", get(metrics))`. Works with any state from which the pool
/// can be obtained (`SwitchablePool<C>: FromRef<S>`); if the connection type cannot
/// be inferred from the state, spell it out: `get(metrics::<AsyncPgConnection>)`.
pub async fn metrics<C: SwitchTarget>(State(pool): State<SwitchablePool<C>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)],
        pool.stats().to_prometheus(),
    )
}

/// A handler serving the pool's [`audit_report`](SwitchablePool::audit_report) as
/// a plain-text table: the statements that tripped the interlock, by fingerprint,
/// with reason and count.
///
/// Fingerprints hold no literal or bind value, but they do show the application's
/// SQL: mount it on an internal or authenticated route, e.g.
/// `.route("/audit", get(audit))` (`audit::<AsyncPgConnection>` if the connection
/// type cannot be inferred from the state).
pub async fn audit<C: SwitchTarget>(State(pool): State<SwitchablePool<C>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        pool.audit_report().to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rejection_is_503_without_details() {
        let rejection = ConnectionRejection::new(
            Route::Replica,
            Error::Node {
                node: "replica1 (db.internal:5433)".into(),
                step: crate::NodeStep::Checkout,
                kind: crate::FailureKind::Authentication,
                source: "password authentication failed for user \"app\"".into(),
            },
        );
        assert_eq!(
            rejection.to_string(),
            "could not check out a replica connection"
        );
        assert!(std::error::Error::source(&rejection).is_some());
        let response = rejection.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        assert_eq!(&body[..], b"database unavailable (replica)\n");
    }
}
