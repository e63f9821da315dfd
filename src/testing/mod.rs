//! Real replicated PostgreSQL for tests, examples and benchmarks (feature `testing`).
//!
//! [`LocalCluster`] starts a throwaway primary plus N hot-standby streaming
//! replicas from the machine's PostgreSQL server binaries, with fault injection
//! (pause/resume replay, apply delay, stop/start, freeze/thaw, promote), and stops
//! them all when dropped. Use it to test your own application's routing against
//! real replication:
//!
//! ```no_run
//! # async fn demo() -> Result<(), diesel_rwsplit::Error> {
//! use std::time::Duration;
//! use diesel_rwsplit::testing::LocalCluster;
//!
//! let cluster = LocalCluster::builder().replicas(2).start().await?; // ~2 s
//! cluster.apply_example_schema().await?;
//! cluster.pause_replay(0).await?;            // replica 0 stops showing new rows
//! // ... write on cluster.primary_url(), observe staleness on replica 0 ...
//! cluster.resume_replay(0).await?;
//! cluster.wait_for_replica(0, Duration::from_secs(5)).await?;
//! # Ok(()) }
//! ```
//!
//! For tests that need what production has, the builder adds TLS with a CA made
//! per cluster, TLS-only TCP, SCRAM passwords, roles and client-certificate
//! logins (checked here with tokio-postgres and rustls):
//!
//! ```no_run
//! # async fn demo() -> Result<(), diesel_rwsplit::Error> {
//! use diesel_rwsplit::testing::LocalCluster;
//!
//! let cluster = LocalCluster::builder()
//!     .replicas(1)
//!     .tls_only(true)            // plaintext TCP logins fail with 28000
//!     .password_auth(true)       // scram-sha-256
//!     .role("app", "app-pw")     // a login role that may create tables in public
//!     .cert_role("batch")        // logs in with a client certificate only
//!     .start()
//!     .await?;
//! let ca = cluster.ca_cert_path().expect("TLS is on");
//! let url = format!("{}?sslmode=require", cluster.primary_url_as("app", Some("app-pw")));
//! let (cert, key) = cluster.client_cert("batch").expect("a cert role");
//! // The harness's own URL (superuser, Unix socket here) still needs no TLS:
//! let admin = cluster.primary_url();
//! # let _ = (ca, url, cert, key, admin); Ok(()) }
//! ```
//!
//! [`PatroniCluster`] runs the same servers under a real HA engine (Patroni over
//! etcd, three members by default) for tests of planned switchovers and
//! unplanned failovers:
//!
//! ```no_run
//! # async fn demo() -> Result<(), diesel_rwsplit::Error> {
//! use std::time::Duration;
//! use diesel_rwsplit::testing::PatroniCluster;
//!
//! let cluster = PatroniCluster::builder().members(3).start().await?; // 10-18 s
//! let urls = cluster.member_urls();          // stable per member, whatever its role
//! let killed = cluster.kill_leader().await?; // SIGKILL Patroni and PostgreSQL
//! let (leader, _seen) = cluster.wait_for_leader(Duration::from_secs(60), Some(killed)).await?;
//! # let _ = (urls, leader); Ok(()) }
//! ```
//!
//! [`MariaCluster`] is the same kind of throwaway for MySQL-protocol code: a
//! MariaDB primary and GTID replicas, with an unprivileged application account
//! that `read_only` really stops on the replicas:
//!
//! ```no_run
//! # async fn demo() -> Result<(), diesel_rwsplit::Error> {
//! use std::time::Duration;
//! use diesel_rwsplit::testing::MariaCluster;
//!
//! let cluster = MariaCluster::builder().replicas(2).start().await?; // ~1.5 s
//! let url = cluster.primary_url(); // mysql://app:PASSWORD@127.0.0.1:PORT/test
//! cluster.pause_replication(1).await?;
//! cluster.resume_replication(1).await?;
//! cluster.wait_for_replicas(Duration::from_secs(5)).await?;
//! # let _ = url; Ok(()) }
//! ```
//!
//! Requirements: PostgreSQL server binaries (`initdb`, `postgres`,
//! `pg_basebackup`); see [`LocalClusterBuilder::pg_bindir`] for where they are
//! looked for. On Debian/Ubuntu: `apt-get install postgresql`. `MariaCluster`
//! needs `mariadbd` and `mariadb-install-db` (`apt-get install mariadb-server`;
//! see [`MariaClusterBuilder::mariadb_bindir`]).

mod binaries;
mod cluster;
mod example;
mod faults;
mod mariadb;
mod node;
mod patroni;
mod process;
mod template;
mod tls;

pub use binaries::{BINDIR_ENV, DEFAULT_PATRONI_VENV, MARIADB_BINDIR_ENV, PATRONI_BIN_ENV};
pub use cluster::{ClusterUrls, LocalCluster, LocalClusterBuilder, NodeStatus};
pub use example::{run_example_migrations, schema, EXAMPLE_MIGRATIONS};
pub use faults::{Fault, FaultNode, FaultStep, Faults};
pub use mariadb::{MariaCluster, MariaClusterBuilder};
pub use patroni::{PatroniCluster, PatroniClusterBuilder, PatroniMember, PatroniStatus};
pub use process::is_gone as process_is_gone;
pub use tls::other_ca_pem;
