//! # diesel-rwsplit
//!
//! In-process read/write splitting for [Diesel](https://diesel.rs) applications over a
//! PostgreSQL primary and its streaming replicas, or a MySQL/MariaDB primary and its
//! GTID replicas (feature `mysql`): no proxy, no extra network hop.
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
//! | `mysql`    | no      | MySQL and MariaDB through diesel-async's `AsyncMysqlConnection`: see [MySQL and MariaDB](#mysql-and-mariadb) |
//! | `tls`      | yes     | TLS on every connection the crate opens (rustls), as the URLs' `sslmode`, `sslrootcert`, `sslcert`, `sslkey` say; without it a URL that asks for TLS is a configuration error |
//! | `testing`  | no      | [`testing::LocalCluster`]: a throwaway primary + streaming replicas built from the machine's PostgreSQL binaries, with fault injection, for your own tests, [`testing::PatroniCluster`]: the same servers managed by Patroni over etcd, for switchover and failover tests; and [`testing::MariaCluster`]: a throwaway MariaDB primary + GTID replicas |
//! | `deadpool` | no      | [`SwitchableDeadpool`]: a deadpool pool of switchable connections, for services that keep a deadpool `Pool` (the counterpart of the bb8 adapter [`SwitchableManager`]) |
//! | `axum`     | no      | [`axum`] extractors for replica-first and primary connections, and a `/metrics` handler |
//! | `metrics`  | no      | every counter and gauge of [`SwitchablePool::to_prometheus`], under the same names and labels, published through the [`metrics`](https://docs.rs/metrics) facade to the application's recorder (Prometheus exporter, OpenTelemetry): [`SwitchablePool::publish_metrics`], [`SwitchablePoolBuilder::metrics_interval`] |
//! | `patroni`  | no      | follow Patroni's REST API for who the primary is ([`SwitchablePoolBuilder::patroni`]) in a pool built with [`SwitchablePoolBuilder::nodes`] |
//! | `cli`      | no      | the `rwsplit` binary: `rwsplit classify`, `rwsplit audit`, `rwsplit cluster up/status/down` |
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
//! ## Adopting it in an existing service
//!
//! Teams add splitting to a large service after the fact; the crate supports the
//! three ways they do it, and measuring before any of them:
//!
//! 0. **Measure.** Offline, `rwsplit audit pgss.csv` estimates from a
//!    `pg_stat_statements` export (or a `log_statement = 'all'` log) the share of
//!    calls a replica could serve and what would go to the primary and why. Online,
//!    [`InterlockMode::Observe`] runs everything on the primary and records what
//!    routing would have done: [`SwitchablePool::audit_report`] gives the share of
//!    statements and units of work replicas would have served, and every statement
//!    that would have tripped the interlock, by fingerprint.
//! 1. **Targeted.** Keep [`Route::Primary`] as the default; send a chosen slow read
//!    through [`SwitchablePool::get_replica`] (example `adopt_targeted`).
//! 2. **Per handler.** Read-only request handlers take a replica-first connection
//!    (with feature `axum`, the [`axum`] extractors); writing handlers a
//!    primary one. A read-only handler that writes anyway is caught by the
//!    interlock and shows in the counters.
//! 3. **App-wide.** Default route [`Route::Replica`], nothing marked: the interlock
//!    flips every write and transaction (example `adopt_app_wide`). This cuts
//!    primary connections the most; [`SwitchablePool::audit_report`] and
//!    [`SwitchablePool::to_prometheus`] show where the interlock carried the app, so
//!    the hot spots can be fixed at the source (e.g. with an explicit
//!    [`SwitchableConnection::switch_to_primary`] or `get_primary()`).
//!
//! ## Replica groups
//!
//! Replicas can be put in named groups ([`SwitchablePoolBuilder::replica_group`]),
//! and the classifier can route reads to a group: by a regular expression on the
//! statement ([`classify::ClassifierBuilder::group_rule`]) or by how heavy the read
//! looks ([`classify::ClassifierBuilder::heavy_reads`]: 1 per `JOIN`, subquery,
//! `GROUP BY`, `HAVING` and window function, from the lexer, no parser), say to an
//! `analytics` replica. Only statements judged to be reads are routed: a heavy
//! write, a locking read or anything doubtful still goes to the primary.
//!
//! - A read routed to group G runs on a routable replica of G (per the balancing
//!   policy among them). If the connection is on a replica of another group, it
//!   moves to one of G's for that read, as a read retry moves (the old replica goes
//!   back to its pool once the new one is in hand), and stays there for the rest of
//!   the unit of work. If none of G's replicas can serve (ejected, unreachable,
//!   lagging, promoted), the read runs on the connection's replica: a *group
//!   fallback*; with every replica out, the primary serves as without groups.
//! - Everything else prefers the default group (the replicas without a group): a
//!   replica-first connection is checked out from one of them while one is usable,
//!   then from any replica. So a group's replicas serve the reads routed to them,
//!   and others only when the default group cannot.
//! - A connection on the primary stays there, and a read-only transaction stays
//!   on its replica: groups change neither. Raw SQL (`batch_execute`) is not routed.
//! - Counted per group: [`StatsSnapshot::group_reads`],
//!   [`StatsSnapshot::group_fallbacks`], and the metric families
//!   `rwsplit_group_reads_total{group="..."}` and
//!   `rwsplit_group_fallbacks_total{group="..."}` (absent for pools without groups).
//! - Cost: a pool whose classifier has no group rules pays one `Option` check per
//!   replica read. With group rules, each replica read is matched against them
//!   (the complexity score is one more pass of the lexer) and rendered to owned
//!   data, as read retry does.
//!
//! ```no_run
//! # async fn demo(primary: &str, replicas: Vec<String>) -> Result<(), diesel_rwsplit::Error> {
//! use diesel_async::AsyncPgConnection;
//! use diesel_rwsplit::classify::{Classifier, Dialect};
//! use diesel_rwsplit::SwitchablePool;
//!
//! let classifier = Classifier::builder(Dialect::Postgres)
//!     .group_rule(r"(?i)\bfrom\s+monthly_report\b", "analytics")
//!     .heavy_reads(3, "analytics")       // e.g. two JOINs and a GROUP BY
//!     .build()?;
//! let pool = SwitchablePool::<AsyncPgConnection>::builder()
//!     .primary(primary)
//!     .replicas(replicas)                // replica 0, replica 1, replica 2
//!     .replica_group(2, "analytics")     // replica 2 takes the heavy reads
//!     .classifier(classifier)
//!     .build()
//!     .await?;
//! println!("{} heavy reads", pool.stats().group_reads("analytics"));
//! # Ok(()) }
//! ```
//!
//! ## Read-your-writes
//!
//! - Within a unit of work (one checkout): once a connection has written it stays on
//!   the primary, so it always reads its own writes.
//! - Across connections, requests and services: take
//!   [`SwitchableConnection::causal_token`] after the write (a short string for a
//!   cookie or header) and read with [`SwitchablePool::get_after`], which uses a
//!   replica that provably replayed the write, waiting up to a bound, else the
//!   primary. Simpler: [`SwitchablePool::get_for_session`] keeps a session key on the
//!   primary for a window after it wrote; [`SwitchablePool::wait_for_replication`]
//!   waits for every replica.
//! - The lag monitor skips replicas over [`SwitchablePoolBuilder::max_replica_lag`]
//!   or [`SwitchablePoolBuilder::max_replica_lag_bytes`], and promoted ones.
//!
//! ## What the interlock catches, and what it cannot know
//!
//! It catches DML and DDL, locking reads (`FOR UPDATE`, `SKIP LOCKED`, ...),
//! data-modifying CTEs, side-effect and session-bound functions (`nextval`, advisory
//! locks, `pg_notify`, ...), session state (`SET`, `LISTEN`, temporary tables, ...),
//! every transaction begin (diesel's `transaction()`, `begin_test_transaction`, a raw
//! `BEGIN`), and anything it cannot parse. It cannot know what the application's
//! own functions do: `SELECT my_function()` goes to a replica unless declared with
//! [`classify::ClassifierBuilder::write_function`]. Replica sessions are read-only at
//! the server as a second line of defence: such a write is refused with SQLSTATE
//! 25006 instead of landing on a replica, and in `Switch` mode runs again on the
//! primary (see "Failure behaviour").
//!
//! ## Failure behaviour
//!
//! - **Start-up degrades.** A replica unreachable at [`SwitchablePoolBuilder::build`]
//!   starts out of rotation and is probed until it serves a session. An unreachable
//!   primary fails the build with [`Error::Node`] unless
//!   [`SwitchablePoolBuilder::require_primary_at_build`] is `false` (reads-only start).
//! - **Busy is not dead.** A replica checkout that waits its whole timeout while the
//!   replica answers is *saturation* ([`StatsSnapshot::replica_saturations`]): the
//!   next replica is tried, then the primary (counted), never an ejection. A replica
//!   is ejected when it does not serve a new session: refused, reset, not answered
//!   within the connect timeout, refused because the server is shutting down or
//!   starting up (SQLSTATE 57P01-57P03), bad credentials, or an error setting the
//!   session up (a missing database). One lost session
//!   (a `pg_terminate_backend`, an `idle_session_timeout`) only makes the replica
//!   *suspect*: one new session is opened to decide. Ejected replicas are probed
//!   with exponential backoff and re-admitted when they answer. The primary is
//!   never ejected. Errors are classified by SQLSTATE (through diesel's error kinds)
//!   and I/O error kinds, never by message text; see [`FailureKind`].
//! - **Read retry.** A read whose session was lost, or that a hot standby cancelled
//!   for a recovery conflict, before any row came back is run once more on another
//!   replica or the primary (counted); a write is never retried.
//! - **A hung replica cannot hold a read.** With
//!   [`SwitchablePoolBuilder::replica_statement_timeout`], a replica read that has no
//!   first row after that timeout plus [`REPLICA_READ_GRACE`] is given up on: a
//!   cancel request is sent, the session discarded, the replica suspected, and the
//!   read retried elsewhere; rows after the first must come within the bound again.
//!   Every session the crate opens has TCP keepalives on.
//! - **A primary outage is not a read outage.** Reads stay on the replicas; writes
//!   fail after [`SwitchablePoolBuilder::primary_checkout_timeout`] with
//!   [`Error::PrimaryUnavailable`], which says why (refused, no answer, ...).
//! - **Self-healing misroutes.** A statement a replica refuses as a write
//!   (SQLSTATE 25006: a function of yours that writes, an extension the classifier
//!   does not know) runs again on the primary in `Switch` mode, counted under
//!   [`SwitchReason::ReplicaRefused`] with its fingerprint (it shows in the audit
//!   report); later statements with that fingerprint go to the primary directly.
//!   The write itself never ran: a read-only session refuses it before doing it and
//!   the statement's transaction is rolled back (effects outside it, such as a
//!   session advisory lock or `dblink`, are not; the refusing session is
//!   discarded). `Raise` mode returns the error. (This needs the statement rendered to
//!   owned data, as read retry does: with `read_retry(false)` and no replica
//!   statement timeout the error is returned.) Declare such functions with
//!   [`classify::ClassifierBuilder::write_function`] to save the round trip.
//! - **Cancellation.** Every future of the crate can be dropped at any await point:
//!   nodes are swapped only once the new one is in hand, counters are kept by drop
//!   guards, and a session in an unknown state is marked broken so that its pool
//!   discards it.
//! - **Errors** name the node and the step (never a password) and chain their
//!   causes. A statement's own failures of the crate (an unavailable primary, a read
//!   timed out on the client, an interlock refusal) come inside
//!   `diesel::result::Error::QueryBuilderError`; [`rwsplit_error`] gets them out.
//!
//! ## Production connections: TLS and credentials
//!
//! Connection URLs are read as libpq reads them, so a `DATABASE_URL` copied from a
//! provider works as it is: `sslmode=disable|allow|prefer|require|verify-ca|verify-full`
//! with libpq's meaning of each (`prefer`, the default, and `require` encrypt without
//! verifying the server, unless `sslrootcert` is given: then `require` verifies the
//! chain as `verify-ca` does), `sslrootcert=PATH` or `sslrootcert=system` (the
//! operating system's roots; it implies `verify-full`), `sslcert` and `sslkey` for
//! client-certificate authentication, `sslsni`, `ssl_min_protocol_version` and
//! `ssl_max_protocol_version`. Both the URL and the `key=value` forms are read. The
//! certificate files are read when the pool is built. Unsupported options are refused
//! by name: `sslpassword` (encrypted keys), `sslcrl`/`sslcrldir`. Verification is
//! webpki's, a little stricter than OpenSSL's: a server certificate must carry its
//! names as subjectAltNames (a name only in the CN does not match), a CA certificate
//! cannot be used as its own server certificate, and the serverAuth extended key
//! usage is required where the certificate lists extended key usages.
//!
//! ```no_run
//! # async fn demo() -> Result<(), diesel_rwsplit::Error> {
//! use diesel_async::AsyncPgConnection;
//! use diesel_rwsplit::SwitchablePool;
//!
//! let tls = "sslmode=verify-full&sslrootcert=/etc/ssl/rds-global-bundle.pem";
//! let pool = SwitchablePool::<AsyncPgConnection>::builder()
//!     .primary(format!("postgres://app:secret@writer.example.com/app?{tls}"))
//!     .replicas([format!("postgres://app:secret@reader.example.com/app?{tls}")])
//!     .build()
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! Every connection the crate opens honours them: the node pools, health probes,
//! causal-read checks, the lag monitor, [`volatile_user_functions`] and
//! `SwitchableConnection::establish` (diesel-async's [`AsyncConnection::establish`](diesel_async::AsyncConnection::establish)). What a URL cannot say goes on the builder:
//! [`tls_config`](SwitchablePoolBuilder::tls_config) (a rustls configuration of your
//! own: roots from a secrets store, ALPN),
//! [`credentials`](SwitchablePoolBuilder::credentials) (an async
//! [`CredentialsProvider`] asked for every new session: RDS IAM tokens, Vault
//! leases) and [`on_connect`](SwitchablePoolBuilder::on_connect) (per-session set-up,
//! like diesel-async's `custom_setup`).
//!
//! Failures say what went wrong in TLS terms ([`Error::tls_failure`]: the server
//! offers no TLS, its certificate is not trusted or does not name the host, the
//! client certificate was refused), with kind [`FailureKind::Tls`], and the primary's
//! checkouts do not wait out their timeout after one (no retry mends it). Passwords,
//! tokens and keys appear in no error, log, `Debug` output or metric. Cancel requests
//! (for a replica read given up on) carry only the session's cancel key and go over
//! TLS, unverified, when the session used TLS; libpq sends them in plain text.
//!
//! ## Following the cluster (switchover and failover)
//!
//! With [`SwitchablePoolBuilder::nodes`] instead of `primary`/`replicas`, the pool is
//! given the members of one replicated cluster and finds the primary itself: the one
//! member not in recovery, asked every monitor interval and at once when a primary
//! checkout fails. The HA engine (Patroni, repmgr, pg_auto_failover, a cloud
//! provider) decides; the pool follows, as libpq's `target_session_attrs` clients do,
//! without a proxy. During a change, statements that need the primary wait for the
//! new one (up to the primary checkout timeout, then [`Error::NoPrimary`]); reads go
//! on on the replicas; the old primary's sessions are never handed out again, and
//! once it streams as a replica it serves reads. With feature `patroni`,
//! [`SwitchablePoolBuilder::patroni`] follows Patroni's REST API instead, which
//! notices a change sooner and honours `noloadbalance`. Who the primary is, is one
//! value ([`SwitchablePool::topology`]); changes are counted
//! ([`StatsSnapshot::topology_changes`], [`StatsSnapshot::primary_gaps`]) and traced.
//!
//! ```no_run
//! # async fn demo() -> Result<(), diesel_rwsplit::Error> {
//! use diesel_async::AsyncPgConnection;
//! use diesel_rwsplit::SwitchablePool;
//!
//! let pool = SwitchablePool::<AsyncPgConnection>::builder()
//!     .nodes(["postgres://app@db-1/app", "postgres://app@db-2/app", "postgres://app@db-3/app"])
//!     .build()
//!     .await?;
//! println!("primary: {:?}", pool.topology().primary);
//! # Ok(()) }
//! ```
//!
//! A primary URL may also name an endpoint that moves at failover (an RDS or Aurora
//! writer endpoint): primary sessions are checked read-write at connect, so one that
//! lands on a replica is refused, never used.
//!
//! ## Sizing the pools
//!
//! A replica-first connection holds a primary connection only from its first flip to
//! the end of its unit of work, so size the primary pool for the writing units that
//! run at once, not for the handlers: [`SwitchablePoolBuilder::primary_max_size`]
//! about `handlers x share of writing units`, with headroom for bursts (8 for 64
//! handlers of which 10% write). Like any bb8 pool, a pool opens a connection
//! whenever all of its connections are busy and keeps it, so an oversized primary
//! pool ends up as large as the largest burst of writers ever seen; a pool sized for
//! the writes makes a rare burst wait a few milliseconds instead. Replicas take the
//! reads: [`SwitchablePoolBuilder::replica_max_size`] about `handlers / replicas`.
//! The lag monitor keeps one more connection per node. `BENCHMARKS.md` measures
//! both sizings: 64 handlers used 9 primary connections with the pool sized for the
//! writes and 18-24 with it sized for the handlers, against 64 with everything on the
//! primary.
//!
//! ## MySQL and MariaDB
//!
//! With feature `mysql`, `SwitchablePool<AsyncMysqlConnection>` and
//! `SwitchableConnection<AsyncMysqlConnection>` have the same API and guarantees as
//! the PostgreSQL ones, from `mysql://` URLs. What differs:
//!
//! * **Read-only replica sessions**: `SET SESSION TRANSACTION READ ONLY` (a write
//!   fails with 1792). Run replicas with `read_only = ON` too, and give the
//!   application an account without `SUPER` or (MariaDB 10.11) `READ ONLY ADMIN`:
//!   those privileges write past `read_only`, so `read_only` alone does not stop
//!   such an account (MySQL's `super_read_only` does; MariaDB 10.11 has none).
//!   MariaDB checks `read_only` first: the app account's write on a replica fails
//!   with 1290.
//! * **Errors by code**: diesel-async keeps only the message of a MySQL server
//!   error (it types 1792 alone), so after an untyped error on a replica the session's
//!   own diagnostics area (`SHOW ERRORS`) gives the code: 1290, 1836 and 1792 are a
//!   read-only refusal (the statement did not run and runs again on the primary,
//!   counted as [`SwitchReason::ReplicaRefused`]); a session that does not answer
//!   is lost (2006, 2013, 1927), and a read may run again elsewhere.
//! * **Positions are GTIDs**: MariaDB's `@@gtid_binlog_pos` (primary) and
//!   `@@gtid_slave_pos` (replicas), MySQL's `@@gtid_executed`. The lag monitor reduces
//!   them to one number per node (sequence numbers summed over domains; MySQL: the
//!   count of transactions), so [`ReplicaStatus::replay_lag_bytes`], `max_lag_bytes` and
//!   [`Balance::LeastLag`] count *transactions* on this backend; lag in time is
//!   dated as on PostgreSQL. A member is a standby when `@@read_only` is on.
//!   [`CausalToken`]s carry the GTID position (`rw1m.0-1-42`) and
//!   [`SwitchablePool::get_after`] checks it on a replica with one server-side wait
//!   (`MASTER_GTID_WAIT`; MySQL `WAIT_FOR_EXECUTED_GTID_SET`).
//! * **TLS** (feature `tls`): mysql_async's URL parameters `require_ssl`,
//!   `verify_ca`, `verify_identity`, `built_in_roots`, plus this crate's
//!   `ssl_ca=PATH` (a PEM file of trusted roots), e.g.
//!   `mysql://app:secret@db/app?require_ssl=true&built_in_roots=false&ssl_ca=%2Fetc%2Fssl%2Fca.pem`;
//!   failures are typed ([`Error::tls_failure`]) as on PostgreSQL. A session over
//!   a Unix socket is never encrypted.
//! * **Statement timeouts**: `max_statement_time` on MariaDB (every statement),
//!   `max_execution_time` on MySQL (read-only `SELECT`s only).
//! * **Rows of re-runnable reads**: diesel-async's MySQL row stream borrows its
//!   session, so a statement run from its rendering (a read with read retry on, a
//!   statement that waited for the primary) has its rows collected before they are
//!   yielded; `load` collects them anyway, `load_stream` sees them arrive at once.
//!
//! Tested on MariaDB 10.11 ([`testing::MariaCluster`] starts a primary + GTID
//! replicas); MySQL 8's paths (flavour from `@@version`) follow its documentation.
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

#[cfg(feature = "axum")]
pub mod axum;
mod backend;
mod catalog;
pub mod classify;
mod connect;
mod connection;
#[cfg(feature = "deadpool")]
mod deadpool;
mod error;
mod families;
mod gtid;
mod lsn;
mod manager;
mod pool;
mod report;
mod route;
mod router;
mod stats;
#[cfg(feature = "testing")]
pub mod testing;

/// The rustls this crate was built with (feature `tls`), for
/// [`SwitchablePoolBuilder::tls_config`].
#[cfg(feature = "tls")]
pub use rustls;

/// Types that appear in the signatures of the sealed [`SwitchTarget`] trait; not
/// part of the supported API.
#[doc(hidden)]
pub mod __private {
    pub use crate::backend::{NodeEndpoint, ProbeSession, ProbeTarget, ReplicaSample};
    pub use crate::connect::ConnectSettings;
    pub use crate::connection::{
        LoadFut, NodeConnection, NodeFailure, NodePool, NodePoolSettings, OnConnect, RowStream,
        SqlText, StatementFailure,
    };
}

#[cfg(feature = "deadpool")]
pub use crate::deadpool::{SwitchableDeadpool, SwitchableDeadpoolManager, SwitchableObject};
pub use connect::cancel_query;
pub use connect::{Credentials, CredentialsProvider, NodeAddress, TlsFailure};
pub use connection::{
    interlock_refusal, InterlockMode, PgRow, SwitchTarget, SwitchTransactionManager,
    SwitchableConnection, TransactionBuilder, TransactionFn,
};
#[cfg(feature = "testing")]
pub use error::ClusterStep;
pub use error::{rwsplit_error, BoxError, Error, FailureKind, NodeStep, Result};
pub use lsn::{Lsn, ParseLsnError};
pub use manager::SwitchableManager;
pub use pool::{
    Balance, PooledConnection, SwitchablePool, SwitchablePoolBuilder, REPLICA_READ_GRACE,
};
pub use report::{AuditEntry, AuditReport};
pub use route::{Route, SwitchReason, Target};
pub use stats::{CausalOutcome, FingerprintCount, GroupCount, StatsSnapshot};
mod consistency;
mod monitor;
#[cfg(feature = "mysql")]
pub use backend::mysql::MysqlRow;
pub use catalog::volatile_user_functions;
pub use consistency::CausalToken;
pub use monitor::{MemberRole, ReplicaStatus};
pub use pool::Topology;
