//! # diesel-rwsplit
//!
//! In-process read/write splitting for [Diesel](https://diesel.rs) applications over a
//! PostgreSQL primary and its streaming replicas: no proxy, no extra network hop.
//!
//! Its core is a *safety interlock*: a connection that starts on a replica and flips to
//! the primary when a write statement, a transaction begin or a save/delete hook
//! appears, counting every automatic flip so a team can audit where it leans on it.
//!
//! ## Feature flags
//!
//! | feature    | default | what it adds |
//! |------------|---------|--------------|
//! | `postgres` | yes     | PostgreSQL support through diesel-async's `AsyncPgConnection` |
//! | `testing`  | no      | [`testing::LocalCluster`]: a throwaway primary + streaming replicas built from the machine's PostgreSQL binaries, with fault injection, for your own tests |
//! | `cli`      | no      | the `rwsplit` binary: `rwsplit classify`, `rwsplit cluster up/status/down` |
//!
//! ## The statement classifier
//!
//! Every statement is judged by a lexer-based classifier that is exact on writes and
//! sends anything it cannot prove read-only to the primary:
//!
//! ```
//! use diesel_rwsplit::classify::{Classifier, Dialect};
//! use diesel_rwsplit::{SwitchReason, Target};
//!
//! let classifier = Classifier::new(Dialect::Postgres);
//! assert_eq!(classifier.classify("SELECT 'DELETE FROM x' FROM users").target(), Target::Replica);
//! let verdict = classifier.classify("SELECT nextval('events_id_seq')");
//! assert_eq!(verdict.target(), Target::Primary);
//! assert_eq!(verdict.reason(), Some(SwitchReason::SideEffectFunction));
//! ```
//!
//! ## Quick start
//!
//! ```no_run
//! # async fn demo(primary_url: &str, replica_urls: Vec<String>) -> Result<(), Box<dyn std::error::Error>> {
//! use diesel::prelude::*;
//! use diesel_async::{AsyncPgConnection, RunQueryDsl};
//! use diesel_rwsplit::{InterlockMode, Route, SwitchReason, SwitchablePool, Target};
//! # diesel::table! { users (id) { id -> BigInt, name -> Text } }
//!
//! let pool = SwitchablePool::<AsyncPgConnection>::builder()
//!     .primary(primary_url)
//!     .replicas(replica_urls)             // none: everything on the primary
//!     .interlock(InterlockMode::Switch)   // Switch (default) | Raise | Observe
//!     .default_route(Route::Replica)      // Replica (default) | Primary
//!     .build()
//!     .await?;
//!
//! let mut conn = pool.get().await?;       // a replica-first connection
//! let names: Vec<String> = users::table.select(users::name).load(&mut conn).await?;
//! assert_eq!(conn.target(), Target::Replica);
//! diesel::insert_into(users::table).values(users::name.eq("ada")).execute(&mut conn).await?;
//! assert_eq!(conn.target(), Target::Primary); // flipped, and stays until dropped
//!
//! let stats = pool.stats();
//! println!("{} flips for writes", stats.switches(SwitchReason::WriteStatement));
//! # Ok(()) }
//! ```
//!
//! ## The interlock modes
//!
//! | mode | a replica connection meets a write, a transaction or a hook |
//! |------|-------------------------------------------------------------|
//! | [`InterlockMode::Switch`] (default) | flips to the primary, runs it there, stays there; counted by reason and fingerprint |
//! | [`InterlockMode::Raise`] | returns [`Error::InterlockRefused`] and runs nothing (see [`interlock_refusal`]) |
//! | [`InterlockMode::Observe`] | everything runs on the primary; only what `Switch` would have done is counted |
//!
//! Replica sessions are read-only at the server (`default_transaction_read_only =
//! on`): a write that got past the classifier fails with SQLSTATE 25006 instead of
//! landing on a node that was promoted behind the application's back.
//!
//! ## A real replicated cluster for tests
//!
//! With feature `testing`, [`testing::LocalCluster`] starts a primary and N hot-standby
//! replicas (about 2 s for 1 + 2) and tears them down on drop, even when a test panics:
//!
//! ```no_run
//! # #[cfg(feature = "testing")]
//! # async fn demo() -> Result<(), diesel_rwsplit::Error> {
//! use diesel_rwsplit::testing::LocalCluster;
//!
//! let cluster = LocalCluster::builder().replicas(2).start().await?;
//! println!("primary: {}", cluster.primary_url());
//! cluster.pause_replay(0).await?;      // replica 0 now lags deterministically
//! cluster.resume_replay(0).await?;
//! # Ok(()) }
//! ```
#![deny(missing_docs, missing_debug_implementations)]
#![warn(unreachable_pub, rust_2018_idioms)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod classify;
mod connection;
mod error;
mod lsn;
mod manager;
mod pool;
mod route;
mod router;
mod stats;
#[cfg(feature = "testing")]
pub mod testing;

/// Types that appear in the signatures of the sealed [`SwitchTarget`] trait; not
/// part of the supported API.
#[doc(hidden)]
pub mod __private {
    pub use crate::connection::{LoadFut, NodeConnection, NodePool, NodePoolSettings, RowStream};
}

pub use connection::{
    interlock_refusal, InterlockMode, PgRow, SwitchTarget, SwitchTransactionManager,
    SwitchableConnection,
};
pub use error::{BoxError, ClusterStep, Error, NodeStep, Result};
pub use lsn::{Lsn, ParseLsnError};
pub use manager::SwitchableManager;
pub use pool::{Balance, PooledConnection, SwitchablePool, SwitchablePoolBuilder};
pub use route::{Route, SwitchReason, Target};
pub use stats::{FingerprintCount, StatsSnapshot};
