//! One node's pool of inner connections, and what its failures mean.
//!
//! bb8 never hands a connect error to a waiting `get()`: it retries or forwards the
//! error to the pool's error sink, and the getter sees only "timed out". That
//! would make a dead node and a busy one look alike. So each node pool keeps its
//! own error sink that remembers the last connect or validation failure and
//! wakes the checkouts waiting on it: a checkout that timed out with no failure
//! seen meanwhile was *saturated* (the node answers, every connection was busy);
//! one that saw a failure reports that failure, typed. Replica checkouts do not
//! even wait for the timeout: the first failure ends them (fail fast), because
//! another node can serve the read. The primary's checkouts wait while bb8 retries
//! its connects, except after a TLS failure, which no retry mends.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::sync::watch;

use super::SwitchTarget;
use crate::{BoxError, FailureKind};

/// An inner connection checked out of a node's pool (or owned).
pub type NodeConnection<C> = Box<dyn std::ops::DerefMut<Target = C> + Send>;

/// A failure of one node, typed, with its cause shared (several checkouts waiting
/// on one node may all report the same connect error).
#[derive(Debug, Clone)]
pub struct NodeFailure {
    /// What kind of failure it was.
    pub kind: FailureKind,
    /// The cause (a driver or I/O error, or a sentence). Never holds a password.
    pub source: Arc<dyn std::error::Error + Send + Sync>,
    /// One pooled session was found dead (closed by the server, an idle timeout, a
    /// `pg_terminate_backend`): evidence against that session, not the node.
    stale_session: bool,
}

impl NodeFailure {
    /// A failure from its kind and cause.
    pub fn new(kind: FailureKind, source: impl Into<BoxError>) -> Self {
        NodeFailure {
            kind,
            source: Arc::from(source.into()),
            stale_session: false,
        }
    }

    fn stale_session(source: impl Into<BoxError>) -> Self {
        NodeFailure {
            stale_session: true,
            ..NodeFailure::new(FailureKind::NotAccepting, source)
        }
    }

    /// The cause as a `BoxError`, for an [`Error`](crate::Error)'s `source`.
    pub(crate) fn into_source(self) -> BoxError {
        Box::new(SharedError(self.source))
    }
}

impl std::fmt::Display for NodeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.source)
    }
}

impl std::error::Error for NodeFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// A shared cause that keeps the chain below it (it stands for the error it holds:
/// its `Display` is that error's, its `source` that error's source).
#[derive(Debug)]
pub(crate) struct SharedError(pub(crate) Arc<dyn std::error::Error + Send + Sync>);

impl std::fmt::Display for SharedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SharedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// One node's pool of inner connections: hidden plumbing between
/// [`SwitchTarget`] and the switchable pool.
#[doc(hidden)]
pub trait NodePool<C>: Send + Sync + 'static {
    /// Check a connection out (connecting if needed, within the checkout timeout).
    /// Cancel-safe: dropped, it leaves the pool as it was.
    fn checkout(&self) -> BoxFuture<'_, Result<NodeConnection<C>, NodeFailure>>;

    /// Open one fresh session with the pool's settings and close it again: does the
    /// node serve new sessions now? Bounded by the connect timeout.
    fn probe(&self) -> BoxFuture<'_, Result<(), NodeFailure>>;
}

/// Runs on every new session of a node pool (see
/// [`SwitchablePoolBuilder::on_connect`](crate::SwitchablePoolBuilder::on_connect)).
pub type OnConnect<C> =
    Arc<dyn for<'c> Fn(&'c mut C) -> BoxFuture<'c, diesel::QueryResult<()>> + Send + Sync>;

/// How to build one node's pool (hidden plumbing).
#[doc(hidden)]
pub struct NodePoolSettings<C: SwitchTarget> {
    /// How sessions to the node are opened (TLS, credentials, keepalives).
    pub(crate) endpoint: Arc<C::Endpoint>,
    /// The application's per-session set-up, run before the crate's session SQL.
    pub(crate) on_connect: Option<OnConnect<C>>,
    /// Sessions are made read-only at the server (replicas).
    pub(crate) read_only: bool,
    /// Every statement of a session is bounded to this at the server.
    pub(crate) statement_timeout: Option<Duration>,
    /// Pool size.
    pub max_size: u32,
    /// Bound on establishing one connection, and on validating a pooled one.
    pub connect_timeout: Duration,
    /// Bound on a checkout, waiting included.
    pub checkout_timeout: Duration,
    /// Primary: bb8 retries failed connects within the checkout timeout and the
    /// checkout waits for it. Replicas: the first failure ends the checkout.
    pub retry_connect: bool,
}

impl<C: SwitchTarget> std::fmt::Debug for NodePoolSettings<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The endpoint's configuration holds the password: only its name shows.
        f.debug_struct("NodePoolSettings")
            .field("endpoint", &self.endpoint)
            .field("on_connect", &self.on_connect.is_some())
            .field("max_size", &self.max_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("checkout_timeout", &self.checkout_timeout)
            .field("retry_connect", &self.retry_connect)
            .finish_non_exhaustive()
    }
}

/// The last failure of a node's connects and validations, numbered.
struct Failures {
    /// How many failures so far: a checkout compares it before and after.
    count: watch::Sender<u64>,
    last: Mutex<Option<NodeFailure>>,
}

impl Failures {
    fn record(&self, failure: NodeFailure) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(failure);
        self.count.send_modify(|n| *n += 1);
    }

    fn count(&self) -> u64 {
        *self.count.borrow()
    }

    fn last(&self) -> Option<NodeFailure> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The first failure after `seen` failures that `matches`. Cancel-safe.
    async fn first_after(&self, mut seen: u64, matches: fn(&NodeFailure) -> bool) -> NodeFailure {
        loop {
            let failure = self.after(seen).await;
            if matches(&failure) {
                return failure;
            }
            seen = self.count();
        }
    }

    /// The first failure recorded after `seen` failures. Cancel-safe.
    async fn after(&self, seen: u64) -> NodeFailure {
        let mut count = self.count.subscribe();
        // The sender lives as long as `self`: `wait_for` cannot fail here.
        let _ = count.wait_for(|n| *n > seen).await;
        self.last().unwrap_or_else(|| {
            NodeFailure::new(FailureKind::Other, "a connection to the node failed")
        })
    }
}

#[derive(Clone)]
struct Sink(Arc<Failures>);

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sink")
    }
}

impl bb8::ErrorSink<NodeFailure> for Sink {
    /// A dead pooled session is not recorded: bb8 discards it and opens another,
    /// whose own failure, if the node is down, is the evidence.
    fn sink(&self, failure: NodeFailure) {
        if !failure.stale_session {
            self.0.record(failure);
        }
    }

    fn boxed_clone(&self) -> Box<dyn bb8::ErrorSink<NodeFailure>> {
        Box::new(self.clone())
    }
}

/// bb8's manager for one node: connects through the backend (keepalives, session
/// SQL), validates with a bounded round trip, and discards broken connections.
struct Manager<C: SwitchTarget> {
    settings: Arc<NodePoolSettings<C>>,
    _connection: std::marker::PhantomData<fn() -> C>,
}

impl<C: SwitchTarget> bb8::ManageConnection for Manager<C> {
    type Connection = C;
    type Error = NodeFailure;

    async fn connect(&self) -> Result<C, NodeFailure> {
        connect::<C>(&self.settings).await
    }

    /// Bounded: a frozen node must not hold a checkout for the whole checkout
    /// timeout and then pass for a merely busy one.
    async fn is_valid(&self, conn: &mut C) -> Result<(), NodeFailure> {
        let bound = self.settings.connect_timeout;
        match tokio::time::timeout(bound, conn.batch_execute("SELECT 1")).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(NodeFailure::stale_session(e)),
            Err(_) => {
                // The session's state is unknown now: never hand it out again. It is
                // evidence against that session only; if the node is hung, the new
                // session bb8 opens next fails to connect, and that is recorded.
                super::mark_broken(conn);
                Err(NodeFailure::stale_session(format!(
                    "a pooled session did not answer its validation within {bound:?}"
                )))
            }
        }
    }

    /// A connection handed back by a panicking thread may be mid-anything: discarded.
    fn has_broken(&self, conn: &mut C) -> bool {
        std::thread::panicking() || C::inner_is_broken(conn)
    }
}

/// One new session with the node's settings, bounded by the connect timeout.
async fn connect<C: SwitchTarget>(settings: &NodePoolSettings<C>) -> Result<C, NodeFailure> {
    let bound = settings.connect_timeout;
    match tokio::time::timeout(bound, C::connect_node(settings)).await {
        Ok(result) => result,
        Err(_) => Err(NodeFailure::new(
            FailureKind::NoAnswer,
            format!("no connection within the connect timeout of {bound:?}"),
        )),
    }
}

/// A node's bb8 pool with its failure sink.
pub(crate) struct BbNodePool<C: SwitchTarget> {
    pool: bb8::Pool<Manager<C>>,
    failures: Arc<Failures>,
    settings: Arc<NodePoolSettings<C>>,
}

impl<C: SwitchTarget> BbNodePool<C> {
    pub(crate) fn new(settings: NodePoolSettings<C>) -> Self {
        let settings = Arc::new(settings);
        let failures = Arc::new(Failures {
            count: watch::channel(0).0,
            last: Mutex::new(None),
        });
        let pool = bb8::Pool::builder()
            .max_size(settings.max_size)
            .connection_timeout(settings.checkout_timeout)
            .retry_connection(settings.retry_connect)
            .error_sink(Box::new(Sink(Arc::clone(&failures))))
            .build_unchecked(Manager {
                settings: Arc::clone(&settings),
                _connection: std::marker::PhantomData,
            });
        BbNodePool {
            pool,
            failures,
            settings,
        }
    }
}

impl<C: SwitchTarget> NodePool<C> for BbNodePool<C> {
    fn checkout(&self) -> BoxFuture<'_, Result<NodeConnection<C>, NodeFailure>> {
        async move {
            let seen = self.failures.count();
            let get = self.pool.get_owned();
            let got = if self.settings.retry_connect {
                // Retrying cannot fix TLS (no TLS on the server, a certificate not
                // trusted): say so now rather than after the checkout timeout.
                tokio::select! {
                    biased;
                    got = get => got,
                    failure = self.failures.first_after(seen, |f| f.kind == FailureKind::Tls) => {
                        return Err(failure)
                    }
                }
            } else {
                tokio::select! {
                    biased;
                    got = get => got,
                    failure = self.failures.after(seen) => return Err(failure),
                }
            };
            match got {
                Ok(conn) => Ok(Box::new(conn) as NodeConnection<C>),
                Err(bb8::RunError::User(failure)) => Err(failure),
                Err(bb8::RunError::TimedOut) => Err(match self.failures.count() > seen {
                    // A connect or validation failed while this checkout waited: the
                    // node, not the load, is why nothing came.
                    true => self
                        .failures
                        .last()
                        .unwrap_or_else(|| saturated(&self.settings)),
                    false => saturated(&self.settings),
                }),
            }
        }
        .boxed()
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), NodeFailure>> {
        async move { connect::<C>(&self.settings).await.map(drop) }.boxed()
    }
}

fn saturated<C: SwitchTarget>(settings: &NodePoolSettings<C>) -> NodeFailure {
    NodeFailure::new(
        FailureKind::Saturated,
        format!(
            "all {} connections stayed busy for the checkout timeout of {:?}",
            settings.max_size, settings.checkout_timeout
        ),
    )
}
