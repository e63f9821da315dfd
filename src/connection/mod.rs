//! `SwitchableConnection`: starts on a replica, flips to the primary, counts every flip.
//!
//! The connection implements diesel-async's `AsyncConnection` by delegating each
//! statement to the active inner connection. Before a statement runs it is judged
//! (by diesel's static query id when the type has one, else by classifying its
//! rendered SQL); a statement that must not run on a replica flips the connection to
//! the primary, which is checked out lazily at that moment and kept until the
//! connection goes back to the pool.
//!
//! It deliberately does not implement `Deref`/`DerefMut` to the inner connection:
//! diesel-async has blanket `AsyncConnection` impls for `DerefMut` wrappers, which
//! would both clash with ours and bypass the interlock.

mod build_transaction;
mod node;

mod pg_api;
mod transaction;
mod update;

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use diesel::connection::{CacheSize, Instrumentation, InstrumentationEvent};
use diesel::query_builder::{AsQuery, QueryFragment, QueryId};
use diesel::result::Error as DieselError;
use diesel::{ConnectionResult, QueryResult};
use diesel_async::{
    AsyncConnection, AsyncConnectionCore, SimpleAsyncConnection, TransactionManager,
};
use futures_util::future::{self, BoxFuture};
use futures_util::{FutureExt, StreamExt};
use tracing::Instrument;

use crate::classify::{Classifier, Verdict};
use crate::router::{GroupId, Router};
use crate::{rwsplit_error, Error, SwitchReason, Target};

pub use crate::backend::{LoadFut, PgRow, RowStream, SqlText, StatementFailure, SwitchTarget};
pub use build_transaction::{TransactionBuilder, TransactionFn};
pub(crate) use node::BbNodePool;
pub(crate) use node::SharedError;
pub use node::{NodeConnection, NodeFailure, NodePool, NodePoolSettings, OnConnect};
pub use transaction::SwitchTransactionManager;

/// What the safety interlock does when a connection on a replica meets a statement,
/// a transaction or a hook that needs the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum InterlockMode {
    /// Flip to the primary and run it there; stay there until the connection goes
    /// back to the pool (default).
    #[default]
    Switch,
    /// Refuse: return [`Error::InterlockRefused`] (inside
    /// `diesel::result::Error::QueryBuilderError`) and run nothing. For strict
    /// replica-only scopes and tests.
    Raise,
    /// Run every statement on the primary and only record what `Switch` would have
    /// done: for measuring an application before turning routing on.
    Observe,
}

/// One run of a rendered statement on one inner connection. A trait rather than
/// a function pointer, so that a read's future is not boxed once more per attempt.
trait Attempt<C: SwitchTarget> {
    type Output;

    fn run<'c>(
        conn: &'c mut C,
        rendered: &'c mut C::Rendered,
        ctx: &'c C::RenderCtx,
    ) -> impl std::future::Future<Output = QueryResult<Self::Output>> + Send + 'c;
}

/// A load, up to its first row: a server going away mid-query shows up as the
/// stream's first item, and a read may run elsewhere only while no row has come
/// back. Fused: an empty result ends the stream, and `chain` polls it again; a row
/// stream polled past its end says "connection closed".
struct LoadFirstRow;

impl<C: SwitchTarget> Attempt<C> for LoadFirstRow {
    type Output = RowStream<'static, C::OwnedRow>;

    async fn run<'c>(
        conn: &'c mut C,
        rendered: &'c mut C::Rendered,
        ctx: &'c C::RenderCtx,
    ) -> QueryResult<Self::Output> {
        if C::ROWS_COLLECTED {
            return C::load_rendered(conn, rendered, ctx).await;
        }
        let mut rows = C::load_rendered(conn, rendered, ctx).await?.fuse();
        match rows.next().await {
            Some(Err(e)) => Err(e),
            first => Ok(futures_util::stream::iter(first).chain(rows).boxed()),
        }
    }
}

/// A statement that returns a row count.
struct ExecuteCount;

impl<C: SwitchTarget> Attempt<C> for ExecuteCount {
    type Output = usize;

    fn run<'c>(
        conn: &'c mut C,
        rendered: &'c mut C::Rendered,
        ctx: &'c C::RenderCtx,
    ) -> impl std::future::Future<Output = QueryResult<usize>> + Send + 'c {
        C::execute_rendered(conn, rendered, ctx)
    }
}

/// A handle to an inner connection: owned (`Box<C>`) or checked out of a pool.
///
/// Reached only through `&mut`, so that a switchable connection may be `Sync`
/// (shared by reference between threads) whatever its inner connection:
/// `AsyncMysqlConnection` is not `Sync`, and nothing needs `&C` from `&self`.
pub(crate) struct Handle<C>(sync_wrapper::SyncWrapper<NodeConnection<C>>);

impl<C> Handle<C> {
    pub(crate) fn new(conn: NodeConnection<C>) -> Self {
        Handle(sync_wrapper::SyncWrapper::new(conn))
    }

    pub(crate) fn get_mut(&mut self) -> &mut C {
        self.0.get_mut()
    }
}

/// Where a connection gets nodes from (its pool): the primary at the first flip,
/// another replica when a read must be retried.
pub(crate) trait NodeSource<C>: Send + Sync + 'static {
    /// A primary session and the topology generation it was checked out in.
    fn acquire_primary(&self) -> BoxFuture<'static, Result<(Handle<C>, u64), Error>>;
    /// An admitted replica other than `failed`, or `None` when there is none.
    fn acquire_other_replica(&self, failed: usize) -> BoxFuture<'static, Option<ReplicaLease<C>>>;
    /// A replica lost a session or did not answer a read: probe it with a new
    /// session in the background and eject it if it does not serve one.
    fn replica_suspect(&self, index: usize, why: &str);
    /// A replica of replica group `group`, or `None` when none of them can serve.
    fn acquire_group_replica(&self, group: GroupId) -> BoxFuture<'static, Option<ReplicaLease<C>>>;
    /// The generation of the pool's topology (who the primary is); 0 with a fixed primary.
    fn primary_generation(&self) -> u64;
}

/// Mark an inner session as not to be reused: its pool discards it when it comes
/// back. For a session whose state is unknown (a read given up on mid-flight).
pub(crate) fn mark_broken<C: SwitchTarget>(conn: &mut C) {
    <C::TransactionManager as TransactionManager<C>>::transaction_manager_status_mut(conn)
        .set_in_error();
}

/// A replica connection and which replica it is.
pub(crate) struct ReplicaLease<C> {
    pub(crate) handle: Handle<C>,
    pub(crate) index: usize,
    pub(crate) name: Arc<str>,
    /// The replica's group (`None`: the default group).
    pub(crate) group: Option<GroupId>,
}

/// A user instrumentation shared by the replica and the later primary connection.
#[derive(Clone)]
struct SharedInstrumentation(Arc<Mutex<Box<dyn Instrumentation>>>);

impl Instrumentation for SharedInstrumentation {
    fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .on_connection_event(event)
    }
}

/// A connection that starts on a replica and flips to the primary when it must.
///
/// Use it wherever diesel-async wants an `AsyncConnection`: `RunQueryDsl`,
/// `transaction()`, `save_changes`, `AsyncConnectionWrapper` for migrations. It is
/// normally obtained from [`SwitchablePool::get`](crate::SwitchablePool::get).
///
/// It flips to the primary, and stays there until dropped, when
/// - the classifier sends a statement to the primary (writes, locking reads,
///   side-effect functions, session state, anything it cannot prove read-only);
/// - a transaction begins, whichever way (`transaction()`, `begin_test_transaction`,
///   a raw `BEGIN`): the whole transaction runs on the primary;
/// - [`before_save`](Self::before_save), [`before_delete`](Self::before_delete) or
///   [`switch_to_primary`](Self::switch_to_primary) is called.
///
/// Every flip is counted by reason and statement fingerprint in the pool's
/// [`stats`](crate::SwitchablePool::stats) and emits one `tracing` event (target
/// `diesel_rwsplit::interlock`, level DEBUG) with the reason and the fingerprint,
/// never bind values. Each statement runs inside a TRACE span `rwsplit.statement`
/// whose `node` field says where it ran.
///
/// Cancellation: a statement's future may be dropped at any await point. Dropped
/// while the primary (or, for a read retry, another replica) is being checked
/// out, nothing has changed: nodes are swapped only once the new one is in hand.
/// Dropped while the statement runs, the inner connection behaves as diesel-async
/// documents for a cancelled query (tokio-postgres discards the answer). A replica
/// session that a read gave up on is marked broken, so its pool discards it.
///
/// Failures on a replica (with [`read_retry`](crate::SwitchablePoolBuilder::read_retry),
/// the default):
/// - a read whose session was lost, or that a hot standby cancelled for a recovery
///   conflict, before any row came back, runs once more on another replica or the
///   primary; the replica is probed and ejected only if it does not serve a new
///   session (one terminated session is not a dead node);
/// - a read that passes its client-side bound (the replica statement timeout plus
///   one second) is given up on: a cancel request is sent, the session discarded,
///   the replica probed, and the read runs once more elsewhere;
/// - a statement the replica refuses as a write (SQLSTATE 25006, e.g. a user
///   function that writes) runs again on the primary in `Switch` mode, counted under
///   [`SwitchReason::ReplicaRefused`]; its fingerprint is remembered so that later
///   statements like it go to the primary directly. The write itself did not run:
///   a read-only session refuses it before doing it, and the statement's
///   transaction is rolled back. Effects outside that transaction that a function
///   had before its write (a session advisory lock, `dblink`) are not undone; the
///   refusing session is discarded so that nothing lingers in the pool.
pub struct SwitchableConnection<C: SwitchTarget> {
    /// `None` when the connection was made primary-only (default route primary,
    /// `get_primary`, Observe mode, a single-node `establish`).
    replica: Option<Handle<C>>,
    /// Once `Some`, every statement goes here until the connection is dropped.
    primary: Option<Handle<C>>,
    /// `None` for a single-node connection: nothing to switch to.
    source: Option<Arc<dyn NodeSource<C>>>,
    router: Arc<Router<C>>,
    replica_name: Option<Arc<str>>,
    replica_index: Option<usize>,
    /// The replica group of the replica it is on (`None`: the default group).
    replica_group: Option<GroupId>,
    switch_reason: Option<SwitchReason>,
    /// Observe mode: where `Switch` mode would be by now, and why.
    would_switch: Option<SwitchReason>,
    instrumentation: Option<SharedInstrumentation>,
    cache_size: Option<CacheSize>,
    /// A raw `BEGIN`/`COMMIT`/... went through `batch_execute`: diesel's transaction
    /// manager did not see it, so whether a transaction is still open is unknown.
    raw_transaction_control: bool,
    /// Run when the connection is dropped after it wrote (session read-your-writes
    /// windows). While it is set, statements on the primary are judged too, so that
    /// a connection that started on the primary knows whether it wrote.
    after_write: Option<Box<dyn FnOnce() + Send + Sync>>,
    /// A statement or hook that needs the primary ran (or was about to).
    wrote: bool,
    /// Observe mode: at least one statement ran in this unit of work.
    observed_any: bool,
    /// Set by a bounded row stream whose rows stopped coming (see
    /// `bound_rest_of_read`); made on first use, only with a read bound.
    hung_replica_session: Option<Arc<AtomicBool>>,
    /// A read-only transaction is open on the replica: every statement runs there
    /// or is refused, until it ends (a transaction runs on one node).
    in_replica_transaction: bool,
    /// That transaction was begun by a raw `BEGIN … READ ONLY` (only a raw
    /// `COMMIT`/`ROLLBACK` ends it), not by `build_transaction`.
    raw_replica_transaction: bool,
    /// The topology generation the primary session was checked out in: a connection
    /// kept by an adapter across units of work is discarded once it changes.
    primary_generation: u64,
}

impl<C: SwitchTarget> fmt::Debug for SwitchableConnection<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SwitchableConnection")
            .field("target", &self.target())
            .field("replica", &self.replica_name)
            .field("switch_reason", &self.switch_reason)
            .field("mode", &self.router.mode)
            .finish_non_exhaustive()
    }
}

/// Where a statement will run.
enum Plan {
    /// On the active connection, without waiting for anything first. Carries the
    /// SQL if judging it rendered it or found it shared, so that it is not built twice.
    Direct(Target, Option<SqlText>),
    /// Check out the primary first; the statement must be rendered to owned data.
    AcquireFirst(Option<Flip>, Option<SqlText>),
}

/// A flip about to happen, with what it is counted under.
struct Flip {
    reason: SwitchReason,
    fingerprint: Option<(u64, String)>,
}

impl<C: SwitchTarget> SwitchableConnection<C> {
    /// A replica-first connection with a lazily acquired primary.
    pub(crate) fn replica_first(
        replica: ReplicaLease<C>,
        source: Arc<dyn NodeSource<C>>,
        router: Arc<Router<C>>,
    ) -> Self {
        let mut conn = Self::assemble(
            Some(replica.handle),
            None,
            Some(source),
            Some(replica.name),
            router,
        );
        conn.replica_index = Some(replica.index);
        conn.replica_group = replica.group;
        conn
    }

    /// A connection already on the primary (it can still record Observe verdicts).
    pub(crate) fn on_primary(
        primary: Handle<C>,
        source: Option<Arc<dyn NodeSource<C>>>,
        router: Arc<Router<C>>,
        generation: u64,
    ) -> Self {
        let mut conn = Self::assemble(None, Some(primary), source, None, router);
        conn.primary_generation = generation;
        conn
    }

    fn assemble(
        replica: Option<Handle<C>>,
        primary: Option<Handle<C>>,
        source: Option<Arc<dyn NodeSource<C>>>,
        replica_name: Option<Arc<str>>,
        router: Arc<Router<C>>,
    ) -> Self {
        SwitchableConnection {
            replica,
            primary,
            source,
            router,
            replica_name,
            replica_index: None,
            replica_group: None,
            switch_reason: None,
            would_switch: None,
            instrumentation: None,
            cache_size: None,
            raw_transaction_control: false,
            after_write: None,
            wrote: false,
            observed_any: false,
            hung_replica_session: None,
            in_replica_transaction: false,
            raw_replica_transaction: false,
            primary_generation: 0,
        }
    }

    pub(crate) fn set_after_write(&mut self, hook: Box<dyn FnOnce() + Send + Sync>) {
        self.after_write = Some(hook);
    }

    /// Where statements go now.
    pub fn target(&self) -> Target {
        if self.primary.is_none() && self.replica.is_some() {
            Target::Replica
        } else {
            Target::Primary
        }
    }

    /// Why the connection flipped to the primary (`None` if it has not flipped, or
    /// started there).
    pub fn switch_reason(&self) -> Option<SwitchReason> {
        self.switch_reason
    }

    /// In `Observe` mode: why `Switch` mode would have flipped by now, if it would.
    pub fn would_switch_reason(&self) -> Option<SwitchReason> {
        self.would_switch
    }

    /// The interlock mode this connection runs under.
    pub fn interlock_mode(&self) -> InterlockMode {
        self.router.mode
    }

    /// A token for reading this unit of work's writes elsewhere (another connection,
    /// request or service): the primary's position now (its WAL position; on MySQL
    /// and MariaDB its GTID position, read in two round trips: the server's kind,
    /// then the position). Call it after the writes
    /// are committed; pass it to [`SwitchablePool::get_after`](crate::SwitchablePool::get_after),
    /// or serialise it (`to_string()`) into a cookie or header.
    ///
    /// `None` when the connection never used the primary: it wrote nothing, and
    /// any replica is as fresh as it needs to be.
    pub async fn causal_token(&mut self) -> QueryResult<Option<crate::CausalToken>> {
        match self.primary.as_mut() {
            Some(primary) => Ok(Some(C::current_position(primary.get_mut()).await?)),
            None => Ok(None),
        }
    }

    /// The model layer is about to save a record: go to the primary now.
    ///
    /// Counted under [`SwitchReason::SaveHook`]. In `Raise` mode on a replica this
    /// returns the refusal instead. A no-op once on the primary.
    pub async fn before_save(&mut self) -> QueryResult<()> {
        self.hook(SwitchReason::SaveHook).await
    }

    /// The model layer is about to delete a record: go to the primary now.
    /// Counted under [`SwitchReason::DeleteHook`]; otherwise as [`before_save`](Self::before_save).
    pub async fn before_delete(&mut self) -> QueryResult<()> {
        self.hook(SwitchReason::DeleteHook).await
    }

    /// Application code knows it is about to write: go to the primary now.
    /// Counted under [`SwitchReason::Explicit`]; otherwise as [`before_save`](Self::before_save).
    pub async fn switch_to_primary(&mut self) -> QueryResult<()> {
        self.hook(SwitchReason::Explicit).await
    }

    /// A transaction begins: the whole of it runs on the primary (inside a
    /// read-only transaction on a replica, a nested one is a savepoint there).
    pub(crate) async fn begin_hook(&mut self) -> QueryResult<()> {
        if self.in_replica_transaction {
            return Ok(());
        }
        let judge = |_: &Self| {
            Ok((
                Verdict::Primary(SwitchReason::TransactionBegin),
                Some(SqlText::Owned("BEGIN".to_owned())),
            ))
        };
        match self.decide(judge, true)? {
            Plan::Direct(..) => Ok(()),
            Plan::AcquireFirst(flip, _) => self.acquire_primary(flip).await,
        }
    }

    async fn hook(&mut self, reason: SwitchReason) -> QueryResult<()> {
        match self.decide(|_| Ok((Verdict::Primary(reason), None)), true)? {
            Plan::Direct(..) => Ok(()),
            Plan::AcquireFirst(flip, _) => self.acquire_primary(flip).await,
        }
    }

    /// Decide where the next statement runs. Synchronous, never awaits; `judge` is
    /// called only when the answer matters. `hook` marks a hook call, which is
    /// not a statement.
    fn decide(
        &mut self,
        judge: impl FnOnce(&Self) -> QueryResult<(Verdict, Option<SqlText>)>,
        hook: bool,
    ) -> QueryResult<Plan> {
        let stats = &self.router.stats;
        if self.router.mode == InterlockMode::Observe && self.source.is_some() {
            let mut rendered = None;
            if self.would_switch.is_none() {
                let (verdict, sql) = judge(self)?;
                if let Verdict::Primary(reason) = verdict {
                    let fingerprint = self.fingerprint(sql.as_deref());
                    stats.record_would_switch(
                        reason,
                        fingerprint.as_ref().map(|(h, t)| (*h, t.as_str())),
                    );
                    self.would_switch = Some(reason);
                }
                rendered = sql;
            }
            if !hook {
                self.observed_any = true;
                let would_be = if self.would_switch.is_some() {
                    Target::Primary
                } else {
                    Target::Replica
                };
                stats.record_would_be(would_be);
                stats.record_statement(Target::Primary);
            }
            return Ok(if self.primary.is_some() {
                Plan::Direct(Target::Primary, rendered)
            } else {
                Plan::AcquireFirst(None, rendered)
            });
        }
        if self.in_replica_transaction {
            return self.decide_in_replica_transaction(judge, hook);
        }
        if self.target() == Target::Primary || self.source.is_none() {
            if self.after_write.is_some() && !self.wrote {
                if let (Verdict::Primary(_), _) = judge(self)? {
                    self.wrote = true;
                }
            }
            if !hook {
                stats.record_statement(Target::Primary);
            }
            return Ok(Plan::Direct(Target::Primary, None));
        }
        match judge(self)? {
            (Verdict::Replica, sql) => {
                stats.record_statement(Target::Replica);
                Ok(Plan::Direct(Target::Replica, sql))
            }
            (Verdict::Primary(reason), sql) => {
                let fingerprint = self.fingerprint(sql.as_deref());
                if self.router.mode == InterlockMode::Raise {
                    return Err(self.refuse(reason, fingerprint));
                }
                if !hook {
                    stats.record_statement(Target::Primary);
                }
                Ok(Plan::AcquireFirst(
                    Some(Flip {
                        reason,
                        fingerprint,
                    }),
                    sql,
                ))
            }
        }
    }

    /// Inside a read-only transaction pinned to the replica, statements are still
    /// judged. Reads run. Statements whose effect ends with the transaction
    /// (`SET LOCAL`, `SAVEPOINT`, cursors, `SET TRANSACTION`) run. Writes run and
    /// PostgreSQL refuses them as in any read-only transaction (25006); whatever
    /// else such a statement (`DO`, `CALL`, a function) may have changed cannot be
    /// known, so the session is discarded when the connection goes back. Refused
    /// before they run: hooks, session state that would outlive the transaction
    /// (`SET`, `LISTEN`), and transaction control that would begin or end a
    /// transaction behind diesel's back.
    fn decide_in_replica_transaction(
        &mut self,
        judge: impl FnOnce(&Self) -> QueryResult<(Verdict, Option<SqlText>)>,
        hook: bool,
    ) -> QueryResult<Plan> {
        use crate::classify::TransactionStatement;
        let (verdict, sql) = judge(self)?;
        let scoped = sql.as_deref().is_some_and(|sql| {
            crate::classify::transaction_statement(sql, C::DIALECT)
                == Some(TransactionStatement::Scoped)
        });
        let refused = match verdict {
            _ if hook => Some(verdict.reason().unwrap_or(SwitchReason::Explicit)),
            Verdict::Replica => None,
            Verdict::Primary(
                SwitchReason::TransactionBegin
                | SwitchReason::TransactionControl
                | SwitchReason::SessionState,
            ) if scoped => None,
            Verdict::Primary(
                reason @ (SwitchReason::TransactionBegin
                | SwitchReason::TransactionControl
                | SwitchReason::SessionState),
            ) => Some(reason),
            Verdict::Primary(_) => {
                self.raw_transaction_control = true;
                None
            }
        };
        match refused {
            Some(reason) => Err(DieselError::QueryBuilderError(Box::new(
                Error::InReplicaTransaction { reason },
            ))),
            None => {
                self.router.stats.record_statement(Target::Replica);
                Ok(Plan::Direct(Target::Replica, None))
            }
        }
    }

    fn fingerprint(&self, sql: Option<&str>) -> Option<(u64, String)> {
        sql.map(|sql| {
            let fingerprint = self.router.classifier.fingerprint(sql);
            (fingerprint.hash(), fingerprint.text().to_owned())
        })
    }

    /// Raise mode: count, log and build the refusal; nothing runs.
    fn refuse(&self, reason: SwitchReason, fingerprint: Option<(u64, String)>) -> DieselError {
        self.router.stats.record_refusal(reason);
        let text = fingerprint.map(|(_, text)| text);
        tracing::debug!(
            target: "diesel_rwsplit::interlock",
            reason = reason.as_str(),
            fingerprint = text.as_deref().unwrap_or(""),
            "refused (Raise mode): needs the primary"
        );
        DieselError::QueryBuilderError(Box::new(Error::InterlockRefused {
            reason,
            fingerprint: text,
        }))
    }

    /// Check out the primary (if not held) and, for a flip, record it. Cancel-safe:
    /// dropped while waiting on the pool, it leaves the connection unchanged.
    async fn acquire_primary(&mut self, flip: Option<Flip>) -> QueryResult<()> {
        if self.primary.is_some() {
            return Ok(());
        }
        let Some(source) = self.source.clone() else {
            return Ok(());
        };
        let (mut primary, generation) = source
            .acquire_primary()
            .await
            .map_err(primary_unavailable)?;
        self.adopt(&mut primary);
        self.primary = Some(primary);
        self.primary_generation = generation;
        if flip.is_some() {
            self.wrote = true;
        }
        if let Some(Flip {
            reason,
            fingerprint,
        }) = flip
        {
            self.switch_reason = Some(reason);
            let (hash, text) = fingerprint
                .as_ref()
                .map_or((0, ""), |(h, t)| (*h, t.as_str()));
            self.router
                .stats
                .record_switch(reason, fingerprint.as_ref().map(|_| (hash, text)));
            tracing::debug!(
                target: "diesel_rwsplit::interlock",
                reason = reason.as_str(),
                fingerprint = text,
                fingerprint_hash = hash,
                replica = self.replica_name.as_deref().unwrap_or(""),
                "switched to the primary"
            );
        }
        Ok(())
    }

    /// Give a node connection that joins this connection its settings.
    fn adopt(&self, conn: &mut Handle<C>) {
        if let Some(instrumentation) = &self.instrumentation {
            conn.get_mut().set_instrumentation(instrumentation.clone());
        }
        if let Some(size) = self.cache_size {
            conn.get_mut().set_prepared_statement_cache_size(size);
        }
    }

    /// Whether reads on the replica are rendered to owned data, so that they can
    /// run again elsewhere (retry, self-healing) and be given up on safely (bound).
    /// Not inside a read-only transaction: a statement there cannot run again
    /// elsewhere, and the server refuses its writes as PostgreSQL does.
    fn owns_replica_reads(&self) -> bool {
        self.replica_index.is_some()
            && !self.in_replica_transaction
            && (self.router.read_retry || self.router.replica_read_timeout.is_some())
    }

    /// Whether a read-only transaction begun now can run on the replica: the
    /// connection is on one, routes (not Observe), and is not in a transaction.
    pub(crate) fn can_begin_on_replica(&mut self) -> bool {
        self.primary.is_none()
            && self.source.is_some()
            && self.router.mode != InterlockMode::Observe
            && !self.in_replica_transaction
            && self.replica.as_mut().is_some_and(|replica| {
                matches!(
                    <C::TransactionManager as TransactionManager<C>>::transaction_manager_status_mut(replica.get_mut())
                        .transaction_depth(),
                    Ok(None)
                )
            })
    }

    /// A read-only transaction is beginning on the replica: pin the connection there.
    pub(crate) fn pin_to_replica_transaction(&mut self) {
        self.in_replica_transaction = true;
        self.raw_replica_transaction = false;
        self.router.stats.record_replica_read_only_transaction();
    }

    /// The transaction of the active connection may have ended: unpin.
    pub(crate) fn transaction_may_have_ended(&mut self) {
        if self.in_replica_transaction {
            let status =
                <C::TransactionManager as TransactionManager<C>>::transaction_manager_status_mut(
                    self.active_mut(),
                );
            // A transaction manager in error (a COMMIT that failed on a lost
            // session) has no transaction to stay pinned for either.
            if !matches!(status.transaction_depth(), Ok(Some(_))) {
                self.in_replica_transaction = false;
            }
        }
    }

    /// Run a rendered statement on the replica: bounded on the client, retried once
    /// elsewhere after a lost session or a recovery conflict, run again on the
    /// primary after a read-only refusal (see the type's docs). Swaps nodes only
    /// once the new one is in hand, so it can be dropped at any await point.
    async fn run_on_replica<A: Attempt<C>>(
        &mut self,
        rendered: &mut C::Rendered,
    ) -> QueryResult<A::Output> {
        let mut retried = false;
        if self
            .hung_replica_session
            .as_ref()
            .is_some_and(|hung| hung.load(Ordering::Acquire))
        {
            // An earlier read's rows stopped coming on this session: it may still
            // be busy (or get the cancel sent for it). Never run anything on it.
            self.discard_hung_replica_session();
            retried = true;
            self.move_after_failed_read("an earlier read on this session hung")
                .boxed()
                .await?;
        }
        loop {
            let on_replica = self.primary.is_none();
            let bound = self.router.replica_read_timeout.filter(|_| on_replica);
            let (conn, ctx) = self.active_with_ctx();
            let result = match bound {
                None => A::run(conn, rendered, ctx).await,
                // Boxed: the timer would otherwise enlarge every read's future,
                // bounded or not.
                Some(bound) => match tokio::time::timeout(bound, A::run(conn, rendered, ctx))
                    .boxed()
                    .await
                {
                    Ok(result) => result,
                    Err(_) => Err(self.abandon_replica_session(bound)),
                },
            };
            match result {
                Ok(value) => return Ok(value),
                Err(error) if on_replica => {
                    // Boxed: the failure paths' futures would otherwise make every
                    // read's future larger (and its copies dearer).
                    let sql = C::rendered_sql(rendered);
                    self.after_replica_error(error, sql, &mut retried)
                        .boxed()
                        .await?;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// A replica statement failed: `Ok` to run it again (on another replica, or on
    /// the primary it has flipped to), `Err` to return that error.
    async fn after_replica_error(
        &mut self,
        error: DieselError,
        sql: &str,
        retried: &mut bool,
    ) -> QueryResult<()> {
        let may_retry = self.router.read_retry && !*retried;
        if matches!(rwsplit_error(&error), Some(Error::ReadTimedOut { .. })) {
            if !may_retry {
                return Err(error);
            }
            *retried = true;
            return self.move_after_failed_read(&error.to_string()).await;
        }
        match self.replica_failure(&error, may_retry).await {
            StatementFailure::ReadOnlyRefused if self.router.mode == InterlockMode::Switch => {
                self.heal_refused(sql).await
            }
            failure @ (StatementFailure::SessionLost | StatementFailure::RecoveryConflict)
                if may_retry =>
            {
                *retried = true;
                if failure == StatementFailure::SessionLost {
                    self.suspect_replica(&error);
                }
                self.move_after_failed_read(&error.to_string()).await
            }
            StatementFailure::SessionLost => {
                self.suspect_replica(&error);
                Err(error)
            }
            _ => Err(error),
        }
    }

    /// The rows after a replica read's first one are bounded too: they must all
    /// have come within the client-side bound again. On expiry the stream ends with
    /// [`Error::ReadTimedOut`] (rows came back, so nothing is retried), a cancel
    /// request is sent, and the session is discarded when the connection next
    /// checks its health or goes back to its pool.
    fn bound_rest_of_read(
        &mut self,
        rows: RowStream<'static, C::OwnedRow>,
    ) -> RowStream<'static, C::OwnedRow> {
        let (Some(bound), None, Some(replica)) = (
            self.router.replica_read_timeout,
            &self.primary,
            self.replica.as_mut(),
        ) else {
            return rows;
        };
        let hung = Arc::clone(
            self.hung_replica_session
                .get_or_insert_with(|| Arc::new(AtomicBool::new(false))),
        );
        let node = self.replica_name.as_deref().unwrap_or("replica").to_owned();
        let cancel = C::cancel_request(replica.get_mut());
        let router = Arc::clone(&self.router);
        let deadline = tokio::time::sleep(bound);
        futures_util::stream::unfold(
            (rows, Box::pin(deadline), Some((cancel, node, hung, router))),
            move |(mut rows, mut deadline, mut armed)| async move {
                tokio::select! {
                    biased;
                    row = rows.next() => row.map(|row| (row, (rows, deadline, armed))),
                    () = &mut deadline, if armed.is_some() => {
                        let (cancel, node, hung, router) = armed.take()?;
                        hung.store(true, Ordering::Release);
                        router.stats.record_read_timeout();
                        if let Some(cancel) = cancel {
                            tokio::spawn(cancel);
                        }
                        tracing::warn!(target: "diesel_rwsplit::pool", replica = %node, bound = ?bound, "a replica read's rows did not all come within the client-side bound; session discarded");
                        let error = DieselError::QueryBuilderError(Box::new(Error::ReadTimedOut {
                            node,
                            timeout: bound,
                        }));
                        // The stream ends after the error: a hung session sends nothing more.
                        Some((Err(error), (Box::pin(futures_util::stream::empty()) as RowStream<'static, C::OwnedRow>, deadline, None)))
                    }
                }
            },
        )
        .boxed()
    }

    /// A read's rows stopped coming within the bound: never reuse that session.
    fn discard_hung_replica_session(&mut self) {
        if let (Some(hung), Some(replica)) = (&self.hung_replica_session, self.replica.as_mut()) {
            if hung.swap(false, Ordering::AcqRel) {
                mark_broken::<C>(replica.get_mut());
                self.suspect_replica(&"a read's rows stopped coming");
            }
        }
    }

    /// What a replica statement's error says. A server error of no typed kind is
    /// either the statement's own or the last word of a session being terminated
    /// (57P01 and the like, which diesel does not type): when a retry would follow
    /// (always, on a backend whose driver drops error codes), the session is asked,
    /// with a bounded round trip, what it was ([`SwitchTarget::diagnose`]).
    async fn replica_failure(&mut self, error: &DieselError, may_retry: bool) -> StatementFailure {
        let failure = C::statement_failure(error);
        if failure != StatementFailure::Other || !matches!(error, DieselError::DatabaseError(..)) {
            return failure;
        }
        let bound = self
            .router
            .replica_read_timeout
            .unwrap_or(SESSION_CHECK_BOUND);
        let conn = self.active_mut();
        if C::inner_is_broken(conn) {
            return StatementFailure::SessionLost;
        }
        if !may_retry && !C::DIAGNOSE_UNTYPED {
            return failure;
        }
        match tokio::time::timeout(bound, C::diagnose(conn)).await {
            Ok(Ok(failure)) => failure,
            Ok(Err(_)) => StatementFailure::SessionLost,
            Err(_) => {
                mark_broken(conn);
                StatementFailure::SessionLost
            }
        }
    }

    fn suspect_replica(&self, why: &dyn fmt::Display) {
        if let (Some(source), Some(index)) = (&self.source, self.replica_index) {
            source.replica_suspect(index, &why.to_string());
        }
    }

    /// Give up on the replica session a read hangs on: cancel what it runs (best
    /// effort), never reuse it, suspect its node. Returns the read's error.
    fn abandon_replica_session(&mut self, bound: std::time::Duration) -> DieselError {
        let conn = self.active_mut();
        if let Some(cancel) = C::cancel_request(conn) {
            tokio::spawn(cancel);
        }
        mark_broken(conn);
        self.router.stats.record_read_timeout();
        let node = self.replica_name.as_deref().unwrap_or("replica").to_owned();
        tracing::warn!(
            target: "diesel_rwsplit::pool",
            replica = %node,
            bound = ?bound,
            "a replica read passed its client-side bound; session discarded"
        );
        self.suspect_replica(&format!("no answer to a read within {bound:?}"));
        DieselError::QueryBuilderError(Box::new(Error::ReadTimedOut {
            node,
            timeout: bound,
        }))
    }

    /// A replica refused a statement as a write (25006): remember its fingerprint
    /// and flip to the primary, where the caller runs it again.
    async fn heal_refused(&mut self, sql: &str) -> QueryResult<()> {
        let fingerprint = self.router.classifier.fingerprint(sql);
        let (hash, text) = (fingerprint.hash(), fingerprint.text().to_owned());
        tracing::warn!(
            target: "diesel_rwsplit::pool",
            replica = self.replica_name.as_deref().unwrap_or(""),
            fingerprint = %text,
            "a replica refused a statement as a write (SQLSTATE 25006): running it on the primary; \
             declare the function with ClassifierBuilder::write_function"
        );
        self.acquire_primary(Some(Flip {
            reason: SwitchReason::ReplicaRefused,
            fingerprint: Some((hash, text)),
        }))
        .await?;
        if self.primary.is_none() {
            // No node to go to (cannot happen for pooled connections): running it
            // again here would only be refused again.
            return Err(DieselError::QueryBuilderError(
                "a replica refused a write and the connection has no primary".into(),
            ));
        }
        self.router.remember_refused(hash);
        self.router.stats.record_statement(Target::Primary);
        // What the refused statement did before its write (an advisory lock, say)
        // may linger in that session: never hand it out again.
        if let Some(replica) = self.replica.as_mut() {
            mark_broken::<C>(replica.get_mut());
        }
        Ok(())
    }

    /// A replica read failed before any row came back: move to another replica or,
    /// if none is admitted, to the primary. Counted; the caller runs the read once
    /// more. The failed replica is let go only once the new node is in hand.
    async fn move_after_failed_read(&mut self, error: &str) -> QueryResult<()> {
        let (Some(source), Some(index)) = (self.source.clone(), self.replica_index) else {
            return Err(DieselError::QueryBuilderError(
                "a read failed on a connection that has no other node to go to".into(),
            ));
        };
        self.router.stats.record_read_retry();
        tracing::warn!(
            target: "diesel_rwsplit::pool",
            replica = self.replica_name.as_deref().unwrap_or(""),
            error = %error,
            "read failed on a replica before any row came back; retrying once elsewhere"
        );
        match source.acquire_other_replica(index).await {
            Some(mut lease) => {
                self.discard_hung_replica_session();
                self.adopt(&mut lease.handle);
                self.replica = Some(lease.handle);
                self.replica_index = Some(lease.index);
                self.replica_name = Some(lease.name);
                self.replica_group = lease.group;
            }
            None => {
                self.router.stats.record_replica_fallback();
                self.acquire_primary(None).await?;
                self.replica = None;
                self.replica_index = None;
                self.replica_group = None;
            }
        }
        Ok(())
    }

    /// Whether replica reads may be routed to replica groups: the pool's classifier
    /// has group rules (checked first: the only cost to a plain read), and the
    /// connection is on a replica outside a read-only transaction.
    fn routes_group_reads(&self) -> bool {
        self.router.groups.is_some() && self.replica_index.is_some() && !self.in_replica_transaction
    }

    /// The replica group a replica read is routed to, if any.
    fn read_group(&self, sql: Option<&str>) -> Option<GroupId> {
        let groups = self.router.groups.as_ref()?;
        self.router.read_group(groups, sql?)
    }

    /// A read routed to replica group `group`: if the connection's replica is not
    /// one of the group's, move to one of the group's (the old replica goes back to
    /// its pool once the new one is in hand, as for a read retry) and stay there;
    /// if none of the group's can serve, stay where it is (a group fallback).
    /// Counted either way.
    async fn route_to_group(&mut self, group: GroupId) -> QueryResult<()> {
        if self.replica_group == Some(group) {
            self.router.stats.record_group_read(group);
            return Ok(());
        }
        let Some(source) = self.source.clone() else {
            return Ok(());
        };
        match source.acquire_group_replica(group).await {
            Some(mut lease) => {
                self.discard_hung_replica_session();
                self.adopt(&mut lease.handle);
                tracing::debug!(
                    target: "diesel_rwsplit::pool",
                    from = self.replica_name.as_deref().unwrap_or(""),
                    to = &*lease.name,
                    "a read routed to a replica group moves the connection to one of its replicas"
                );
                self.replica = Some(lease.handle);
                self.replica_index = Some(lease.index);
                self.replica_name = Some(lease.name);
                self.replica_group = lease.group;
                self.router.stats.record_group_read(group);
            }
            None => {
                tracing::debug!(
                    target: "diesel_rwsplit::pool",
                    replica = self.replica_name.as_deref().unwrap_or(""),
                    "no replica of the read's group can serve: it runs on the connection's replica"
                );
                self.router.stats.record_group_fallback(group);
            }
        }
        Ok(())
    }

    /// The statement as owned SQL + binds, reusing the SQL text if judging it
    /// already produced it.
    fn render_owned<Q>(&self, query: &Q, sql: Option<SqlText>) -> QueryResult<C::Rendered>
    where
        Q: QueryFragment<C::Backend> + QueryId,
    {
        C::render(query, sql, &self.router.render_ctx)
    }

    /// The verdict for a diesel query: cached by static query id, else classified
    /// from its rendered SQL. Returns the SQL when it is at hand (for a fingerprint,
    /// or for rendering it to owned data without building the text again).
    fn judge_query<Q>(&self, query: &Q) -> QueryResult<(Verdict, Option<SqlText>)>
    where
        Q: QueryFragment<C::Backend> + QueryId,
    {
        let id = Q::query_id();
        // A type's verdict and SQL hold only for its instances that are safe to cache
        // prepared (diesel's own rule for sharing a prepared statement by type); any
        // other instance may render other SQL, so it is classified afresh.
        let typed = match id {
            Some(_) => C::is_safe_to_cache(query)?,
            None => false,
        };
        if let (true, Some((verdict, sql))) =
            (typed, id.and_then(|id| self.router.cached_verdict(id)))
        {
            return Ok((verdict, Some(sql)));
        }
        let sql = C::render_sql(query)?;
        let verdict = self
            .router
            .remembered(self.router.classifier.classify(&sql), &sql);
        // Only replica verdicts are cached: a primary verdict needs the statement for
        // its fingerprint (flip, refusal or would-be flip), and a flip renders it anyway.
        if let (Some(id), Verdict::Replica, true) = (id, verdict, typed) {
            self.router.cache_verdict(id, verdict, &sql);
        }
        Ok((verdict, Some(SqlText::Owned(sql))))
    }

    /// The active connection and the router's rendering context, borrowed apart
    /// (no reference-count traffic on the shared router per statement).
    fn active_with_ctx(&mut self) -> (&mut C, &C::RenderCtx) {
        let ctx = &self.router.render_ctx;
        let conn: &mut C = match (&mut self.primary, &mut self.replica) {
            (Some(primary), _) => primary.get_mut(),
            (None, Some(replica)) => replica.get_mut(),
            (None, None) => unreachable!("statements run only after a connection is in hand"),
        };
        (conn, ctx)
    }

    pub(crate) fn active_mut(&mut self) -> &mut C {
        self.active_with_ctx().0
    }

    pub(crate) fn any_broken(&mut self) -> bool {
        self.discard_hung_replica_session();
        let replica = self
            .replica
            .as_mut()
            .is_some_and(|r| C::inner_is_broken(r.get_mut()));
        let primary = self
            .primary
            .as_mut()
            .is_some_and(|p| C::inner_is_broken(p.get_mut()));
        replica || primary
    }
}

impl<C: SwitchTarget> SwitchableConnection<C> {
    /// End of a unit of work when the connection itself is kept for the next one
    /// (the bb8 adapter): decide whether it may be reused and, if so, put it back
    /// on its replica with all routing state reset. Returns `false` when it must be
    /// discarded: a panic, a possibly open raw transaction, or a broken connection.
    pub(crate) fn recycle(&mut self) -> bool {
        if std::thread::panicking() || self.raw_transaction_control || self.any_broken() {
            return false;
        }
        if self.holds_stale_primary() {
            return false;
        }
        self.record_observed_unit();
        if self.replica.is_some() {
            if let Some(mut primary) = self.primary.take() {
                // Do not leak this connection's settings into the primary's pool.
                if self.instrumentation.is_some() {
                    primary
                        .get_mut()
                        .set_instrumentation(None::<Box<dyn Instrumentation>>);
                }
                if self.cache_size.is_some() {
                    primary
                        .get_mut()
                        .set_prepared_statement_cache_size(CacheSize::Unbounded);
                }
            }
            self.switch_reason = None;
        }
        self.wrote = false;
        self.in_replica_transaction = false;
        self.raw_replica_transaction = false;
        true
    }

    /// It holds a primary session from before the primary moved: never kept, never
    /// handed out again (the adapters check it when a connection comes back and
    /// before they hand it out).
    pub(crate) fn holds_stale_primary(&self) -> bool {
        self.primary.is_some()
            && self
                .source
                .as_ref()
                .is_some_and(|s| s.primary_generation() != self.primary_generation)
    }

    fn record_observed_unit(&mut self) {
        if self.router.mode == InterlockMode::Observe && self.source.is_some() && self.observed_any
        {
            self.router
                .stats
                .record_observed_unit(self.would_switch.is_none());
        }
        self.would_switch = None;
        self.observed_any = false;
    }
}

impl<C: SwitchTarget> Drop for SwitchableConnection<C> {
    fn drop(&mut self) {
        self.discard_hung_replica_session();
        if self.wrote {
            if let Some(hook) = self.after_write.take() {
                hook();
            }
        }
        if self.raw_transaction_control {
            // A transaction begun by raw SQL may still be open; diesel's transaction
            // manager cannot tell. Mark the connection broken so its pool discards it
            // rather than hand an open transaction to the next user. Doubt costs a
            // reconnect, never a leaked transaction.
            for conn in [&mut self.primary, &mut self.replica].into_iter().flatten() {
                <C::TransactionManager as TransactionManager<C>>::transaction_manager_status_mut(
                    conn.get_mut(),
                )
                .set_in_error();
            }
        }
        self.record_observed_unit();
    }
}

impl<C: SwitchTarget> diesel_async::pooled_connection::PoolableConnection
    for SwitchableConnection<C>
{
    /// Broken if either held connection is: an open transaction, a transaction
    /// manager in error, or a closed socket. A broken connection is not reused.
    fn is_broken(&mut self) -> bool {
        self.any_broken()
    }
}

/// How long a session may take to prove it is alive after an untyped error.
const SESSION_CHECK_BOUND: std::time::Duration = std::time::Duration::from_secs(2);

/// The pool's typed error, inside the diesel error a statement returns
/// (see [`rwsplit_error`](crate::rwsplit_error)).
fn primary_unavailable(error: Error) -> DieselError {
    DieselError::QueryBuilderError(Box::new(error))
}

fn statement_span(target: Target) -> tracing::Span {
    tracing::trace_span!("rwsplit.statement", node = target.as_str())
}

impl<C: SwitchTarget> SwitchableConnection<C> {
    /// A raw `BEGIN … READ ONLY` on a replica connection runs there and pins the
    /// connection to it; the raw statement that ends it runs there too and unpins.
    /// `None`: not such a case, route the statement as any other.
    async fn raw_replica_transaction(
        &mut self,
        statement: crate::classify::TransactionStatement,
        query: &str,
    ) -> Option<QueryResult<()>> {
        use crate::classify::TransactionStatement;
        match statement {
            TransactionStatement::BeginReadOnly if self.can_begin_on_replica() => {
                // diesel's transaction manager does not see raw SQL: the session is
                // discarded at the end of the unit of work unless it is certain.
                self.raw_transaction_control = true;
                self.router.stats.record_statement(Target::Replica);
                let result = self
                    .active_mut()
                    .batch_execute(query)
                    .instrument(statement_span(Target::Replica))
                    .await;
                if result.is_ok() {
                    self.pin_to_replica_transaction();
                    self.raw_replica_transaction = true;
                }
                Some(result)
            }
            // A raw COMMIT inside `build_transaction` would end its transaction
            // behind diesel's transaction manager.
            TransactionStatement::End
                if self.in_replica_transaction && !self.raw_replica_transaction =>
            {
                Some(Err(DieselError::QueryBuilderError(Box::new(
                    Error::InReplicaTransaction {
                        reason: SwitchReason::TransactionControl,
                    },
                ))))
            }
            TransactionStatement::End if self.in_replica_transaction => {
                self.router.stats.record_statement(Target::Replica);
                let result = self
                    .active_mut()
                    .batch_execute(query)
                    .instrument(statement_span(Target::Replica))
                    .await;
                // Ended either way: a failed COMMIT aborts the transaction.
                self.in_replica_transaction = false;
                self.raw_replica_transaction = false;
                Some(result)
            }
            _ => None,
        }
    }
}

impl<C: SwitchTarget> SimpleAsyncConnection for SwitchableConnection<C> {
    /// Raw SQL, including a raw `BEGIN`, is classified as a whole string. On a
    /// replica it is bounded like a read and, refused as a write (25006), run
    /// again on the primary; it is not retried after a lost session.
    async fn batch_execute(&mut self, query: &str) -> QueryResult<()> {
        if let Some(statement) = crate::classify::transaction_statement(query, C::DIALECT) {
            if let Some(result) = self.raw_replica_transaction(statement, query).await {
                return result;
            }
        }
        let classifier = &self.router.classifier;
        let verdict = self.router.remembered(classifier.classify(query), query);
        if matches!(
            verdict.reason(),
            Some(SwitchReason::TransactionBegin | SwitchReason::TransactionControl)
        ) {
            self.raw_transaction_control = true;
        }
        let judged = |_: &Self| Ok((verdict, Some(SqlText::Owned(query.to_owned()))));
        let target = match self.decide(judged, false)? {
            Plan::Direct(target, _) => target,
            Plan::AcquireFirst(flip, _) => {
                self.acquire_primary(flip).await?;
                Target::Primary
            }
        };
        let bound = self.router.replica_read_timeout.filter(|_| {
            target == Target::Replica
                && self.replica_index.is_some()
                && !self.in_replica_transaction
        });
        let run = self.active_mut().batch_execute(query);
        let result = match bound {
            None => run.instrument(statement_span(target)).await,
            Some(bound) => match tokio::time::timeout(bound, run)
                .instrument(statement_span(target))
                .await
            {
                Ok(result) => result,
                Err(_) => return Err(self.abandon_replica_session(bound)),
            },
        };
        let refused = match &result {
            Err(error)
                if target == Target::Replica
                    && self.router.mode == InterlockMode::Switch
                    && self.replica_index.is_some()
                    && !self.in_replica_transaction =>
            {
                match C::statement_failure(error) {
                    StatementFailure::Other
                        if C::DIAGNOSE_UNTYPED
                            && matches!(error, DieselError::DatabaseError(..)) =>
                    {
                        let diagnosis = C::diagnose(self.active_mut());
                        matches!(
                            tokio::time::timeout(SESSION_CHECK_BOUND, diagnosis).await,
                            Ok(Ok(StatementFailure::ReadOnlyRefused))
                        )
                    }
                    failure => failure == StatementFailure::ReadOnlyRefused,
                }
            }
            _ => false,
        };
        match result {
            Err(_) if refused => {
                self.heal_refused(query).await?;
                self.active_mut()
                    .batch_execute(query)
                    .instrument(statement_span(Target::Primary))
                    .await
            }
            Err(error) => {
                if target == Target::Replica && C::inner_is_broken(self.active_mut()) {
                    self.suspect_replica(&error);
                }
                Err(error)
            }
            Ok(()) => Ok(()),
        }
    }
}

impl<C: SwitchTarget> AsyncConnectionCore for SwitchableConnection<C> {
    // Boxed and tied to 'conn only: the owned path holds `&'conn mut self` across
    // the primary checkout, and neither path may capture 'query.
    type ExecuteFuture<'conn, 'query> = BoxFuture<'conn, QueryResult<usize>>;
    type LoadFuture<'conn, 'query> = LoadFut<'conn, C::OwnedRow>;
    type Stream<'conn, 'query> = RowStream<'conn, C::OwnedRow>;
    type Row<'conn, 'query> = C::OwnedRow;
    type Backend = C::Backend;

    fn load<'conn, 'query, T>(&'conn mut self, source: T) -> Self::LoadFuture<'conn, 'query>
    where
        T: AsQuery + 'query,
        T::Query: QueryFragment<Self::Backend> + QueryId + 'query,
    {
        let query = source.as_query();
        match self.decide(|conn| conn.judge_query(&query), false) {
            Err(e) => future::ready(Err(e)).boxed(),
            Ok(Plan::Direct(Target::Replica, sql))
                if self.owns_replica_reads() || self.routes_group_reads() =>
            {
                // Rendered to owned SQL + binds: it may run a second time, or wait
                // for a replica of its group.
                let group = self.read_group(sql.as_deref());
                let rendered = self.render_owned(&query, sql);
                drop(query);
                let read = async move {
                    let mut rendered = rendered?;
                    if let Some(group) = group {
                        self.route_to_group(group).boxed().await?;
                    }
                    let rows = self.run_on_replica::<LoadFirstRow>(&mut rendered).await?;
                    Ok(self.bound_rest_of_read(rows) as RowStream<'conn, C::OwnedRow>)
                };
                with_span(read.boxed(), Target::Replica)
            }
            Ok(Plan::Direct(target, _)) => {
                with_span(C::load_direct(self.active_mut(), query), target)
            }
            Ok(Plan::AcquireFirst(flip, sql)) => {
                // The query is not Send: render it now, before the await.
                let rendered = self.render_owned(&query, sql);
                drop(query);
                async move {
                    let mut rendered = rendered?;
                    self.acquire_primary(flip).await?;
                    let (conn, ctx) = self.active_with_ctx();
                    let stream = C::load_rendered(conn, &mut rendered, ctx).await?;
                    Ok(stream as RowStream<'conn, C::OwnedRow>)
                }
                .instrument(statement_span(Target::Primary))
                .boxed()
            }
        }
    }

    fn execute_returning_count<'conn, 'query, T>(
        &'conn mut self,
        source: T,
    ) -> Self::ExecuteFuture<'conn, 'query>
    where
        T: QueryFragment<Self::Backend> + QueryId + 'query,
    {
        match self.decide(|conn| conn.judge_query(&source), false) {
            Err(e) => future::ready(Err(e)).boxed(),
            Ok(Plan::Direct(Target::Replica, sql))
                if self.owns_replica_reads() || self.routes_group_reads() =>
            {
                let group = self.read_group(sql.as_deref());
                let rendered = self.render_owned(&source, sql);
                drop(source);
                let read = async move {
                    let mut rendered = rendered?;
                    if let Some(group) = group {
                        self.route_to_group(group).boxed().await?;
                    }
                    self.run_on_replica::<ExecuteCount>(&mut rendered).await
                };
                with_span(read.boxed(), Target::Replica)
            }
            Ok(Plan::Direct(target, _)) => {
                with_span(C::execute_direct(self.active_mut(), source), target)
            }
            Ok(Plan::AcquireFirst(flip, sql)) => {
                let rendered = self.render_owned(&source, sql);
                drop(source);
                async move {
                    let mut rendered = rendered?;
                    self.acquire_primary(flip).await?;
                    let (conn, ctx) = self.active_with_ctx();
                    C::execute_rendered(conn, &mut rendered, ctx).await
                }
                .instrument(statement_span(Target::Primary))
                .boxed()
            }
        }
    }
}

/// Attach the statement span only when someone listens: an instrumented future
/// costs one more allocation.
fn with_span<'a, T: Send + 'a>(future: BoxFuture<'a, T>, target: Target) -> BoxFuture<'a, T> {
    let span = statement_span(target);
    if span.is_disabled() {
        future
    } else {
        future.instrument(span).boxed()
    }
}

impl<C: SwitchTarget> AsyncConnection for SwitchableConnection<C> {
    type TransactionManager = SwitchTransactionManager<C>;

    /// A single-node connection to `database_url`: no replica, no flips, everything
    /// runs there. It exists so that diesel-async's URL-based constructors
    /// (`AsyncConnectionWrapper::establish`, `AsyncDieselConnectionManager::new`)
    /// work; point it at the primary. Read/write splitting comes from
    /// [`SwitchablePool`](crate::SwitchablePool).
    ///
    /// The URL's TLS settings apply (`sslmode`, `sslrootcert`, ...), as for the pool.
    async fn establish(database_url: &str) -> ConnectionResult<Self> {
        let conn = C::establish_direct(database_url).await?;
        let router = Router::new(
            Classifier::new(C::DIALECT),
            InterlockMode::Switch,
            false,
            None,
            &[],
        );
        Ok(Self::on_primary(
            Handle::new(Box::new(Box::new(conn))),
            None,
            router,
            0,
        ))
    }

    fn transaction_state(
        &mut self,
    ) -> &mut <Self::TransactionManager as TransactionManager<Self>>::TransactionStateData {
        self.active_mut().transaction_state()
    }

    fn instrumentation(&mut self) -> &mut dyn Instrumentation {
        self.active_mut().instrumentation()
    }

    fn set_instrumentation(&mut self, instrumentation: impl Instrumentation) {
        let shared = SharedInstrumentation(Arc::new(Mutex::new(Box::new(instrumentation))));
        for conn in [&mut self.replica, &mut self.primary].into_iter().flatten() {
            conn.get_mut().set_instrumentation(shared.clone());
        }
        self.instrumentation = Some(shared);
    }

    fn set_prepared_statement_cache_size(&mut self, size: CacheSize) {
        for conn in [&mut self.replica, &mut self.primary].into_iter().flatten() {
            conn.get_mut().set_prepared_statement_cache_size(size);
        }
        self.cache_size = Some(size);
    }
}

/// If `error` is the safety interlock refusing a statement in `Raise` mode, why.
///
/// ```
/// # use diesel_rwsplit::{interlock_refusal, Error, SwitchReason};
/// let refused = diesel::result::Error::QueryBuilderError(Box::new(Error::InterlockRefused {
///     reason: SwitchReason::WriteStatement,
///     fingerprint: None,
/// }));
/// assert_eq!(interlock_refusal(&refused), Some(SwitchReason::WriteStatement));
/// assert_eq!(interlock_refusal(&diesel::result::Error::NotFound), None);
/// ```
pub fn interlock_refusal(error: &DieselError) -> Option<SwitchReason> {
    match error {
        DieselError::QueryBuilderError(inner) => match inner.downcast_ref::<Error>() {
            Some(Error::InterlockRefused { reason, .. }) => Some(*reason),
            _ => None,
        },
        _ => None,
    }
}
