//! The example schema (users, orders, events) shipped in `migrations/`.

use diesel::Connection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::AsyncPgConnection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use crate::{ClusterStep, Error, Result};

/// The crate's `migrations/` directory, embedded at compile time.
pub const EXAMPLE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Diesel table definitions of the example schema.
pub mod schema {
    diesel::table! {
        /// Application users.
        users (id) {
            /// Primary key (`BIGSERIAL`).
            id -> BigInt,
            /// Display name.
            name -> Text,
            /// Unique e-mail address.
            email -> Text,
            /// Insertion time.
            created_at -> Timestamptz,
        }
    }

    diesel::table! {
        /// Orders placed by users.
        orders (id) {
            /// Primary key (`BIGSERIAL`).
            id -> BigInt,
            /// The ordering user.
            user_id -> BigInt,
            /// Amount in cents, never negative.
            amount_cents -> BigInt,
            /// `new`, `paid`, ...
            status -> Text,
            /// Insertion time.
            created_at -> Timestamptz,
        }
    }

    diesel::table! {
        /// An append-only event log whose ids come from the `events_id_seq` sequence.
        events (id) {
            /// Primary key, `nextval('events_id_seq')` by default.
            id -> BigInt,
            /// Event kind.
            kind -> Text,
            /// Free-form payload.
            payload -> Text,
            /// Insertion time.
            created_at -> Timestamptz,
        }
    }

    diesel::joinable!(orders -> users (user_id));
    diesel::allow_tables_to_appear_in_same_query!(users, orders, events);
}

/// Apply [`EXAMPLE_MIGRATIONS`] to the database at `url` (the primary), with
/// `diesel_migrations` through diesel-async's `AsyncConnectionWrapper`.
///
/// Runs on a blocking thread; needs a Tokio runtime. If the future is cancelled the
/// migration still runs to completion on that thread.
pub async fn run_example_migrations(url: &str) -> Result<()> {
    let url = url.to_owned();
    let migrate_err = |source: crate::BoxError| Error::Cluster {
        node: "primary".into(),
        step: ClusterStep::Migrate,
        source,
    };
    tokio::task::spawn_blocking(move || -> std::result::Result<(), crate::BoxError> {
        let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::establish(&url)?;
        conn.run_pending_migrations(EXAMPLE_MIGRATIONS)?;
        Ok(())
    })
    .await
    .map_err(|e| migrate_err(e.into()))?
    .map_err(migrate_err)
}
