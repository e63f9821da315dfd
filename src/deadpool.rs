//! A deadpool `Manager` adapter, for services that keep a deadpool `Pool`.

use std::fmt;
use std::ops::{Deref, DerefMut};

use ::deadpool::managed::{Manager, Metrics, Object, Pool, RecycleError, RecycleResult};
use diesel_async::AsyncPgConnection;

use crate::connection::{SwitchTarget, SwitchableConnection};
use crate::{Error, SwitchablePool};

/// A deadpool pool of switchable connections: what a service that holds a
/// `diesel_async::pooled_connection::deadpool::Pool<AsyncPgConnection>` changes its
/// type to.
///
/// ```no_run
/// # async fn demo(primary_url: &str, replica_urls: Vec<String>) -> Result<(), Box<dyn std::error::Error>> {
/// use diesel_async::{AsyncPgConnection, RunQueryDsl};
/// use diesel_rwsplit::{SwitchableDeadpool, SwitchableDeadpoolManager, Target};
///
/// // before:
/// //   use diesel_async::pooled_connection::{deadpool::Pool, AsyncDieselConnectionManager};
/// //   let pool: Pool<AsyncPgConnection> =
/// //       Pool::builder(AsyncDieselConnectionManager::new(primary_url)).max_size(16).build()?;
/// let pool: SwitchableDeadpool<AsyncPgConnection> =
///     SwitchableDeadpool::builder(SwitchableDeadpoolManager::new(primary_url, replica_urls).await?)
///         .max_size(16)
///         .build()?;
///
/// let mut conn = pool.get().await?; // derefs to SwitchableConnection: replica first
/// diesel::sql_query("SELECT 1").execute(&mut conn).await?;
/// assert_eq!(conn.target(), Target::Replica);
/// # Ok(()) }
/// ```
///
/// It is a plain `deadpool::managed::Pool` (builder, `status`, `resize`, `retain`,
/// hooks, timeouts) whose objects are [`SwitchableObject`]s, so that an item is reset
/// when it is returned, as the bb8 adapter's are. A
/// `deadpool::managed::Pool<SwitchableDeadpoolManager<C>>` with deadpool's own
/// `Object` also works, but deadpool runs nothing when its `Object` is returned: such
/// an item is reset only at its next checkout, keeping its primary connection while
/// it waits in the pool, and a panic while it was out goes unseen.
pub type SwitchableDeadpool<C = AsyncPgConnection> =
    Pool<SwitchableDeadpoolManager<C>, SwitchableObject<C>>;

/// The deadpool [`Manager`] behind [`SwitchableDeadpool`]: lets a service that holds
/// a deadpool pool of diesel-async connections adopt read/write splitting by changing
/// one type and one constructor (see [`SwitchableDeadpool`] for the example).
///
/// Each pooled item is a [`SwitchableConnection`] holding a replica connection (from
/// an inner [`SwitchablePool`]); the primary is checked out at its first flip. When
/// the item is returned (a [`SwitchableObject`] dropped) the primary connection goes
/// back to the inner pool and the routing state is reset, so the next checkout starts
/// on a replica again; an item returned while panicking, with a transaction possibly
/// left open by raw SQL, or broken, is removed from the pool and its node
/// connections are discarded by their pools. At checkout an idle item is checked
/// again and validated with `SELECT 1` (on its replica); one that fails is dropped
/// and another one taken or made.
///
/// Cancellation: a checkout (`pool.get()`) can be dropped at any await point. While
/// it waits for a free slot it holds nothing; dropped while an item is being made,
/// the inner pool's checkout gives back what it had; dropped while an idle item is
/// validated, that item is removed from the pool and its node connections go back
/// to their pools as when any switchable connection is dropped. Nothing stays
/// checked out of the inner pool and deadpool's slot count stays right.
pub struct SwitchableDeadpoolManager<C: SwitchTarget = AsyncPgConnection> {
    pool: SwitchablePool<C>,
}

impl<C: SwitchTarget> fmt::Debug for SwitchableDeadpoolManager<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SwitchableDeadpoolManager")
            .field("pool", &self.pool)
            .finish()
    }
}

impl<C: SwitchTarget> SwitchableDeadpoolManager<C> {
    /// A manager over a primary and its replicas with every other setting at its
    /// default (see [`SwitchablePoolBuilder`](crate::SwitchablePoolBuilder)).
    pub async fn new<I, S>(primary_url: &str, replica_urls: I) -> Result<Self, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Ok(SwitchableDeadpoolManager {
            pool: crate::manager::default_pool(primary_url, replica_urls).await?,
        })
    }

    /// A manager over an already configured pool (interlock mode, balancing, ...).
    pub fn from_pool(pool: SwitchablePool<C>) -> Self {
        SwitchableDeadpoolManager { pool }
    }

    /// The inner pool, for its [`stats`](SwitchablePool::stats) (reach it from a
    /// deadpool pool with `pool.manager().pool()`).
    pub fn pool(&self) -> &SwitchablePool<C> {
        &self.pool
    }
}

impl<C: SwitchTarget> Manager for SwitchableDeadpoolManager<C> {
    type Type = SwitchableConnection<C>;
    type Error = Error;

    async fn create(&self) -> Result<Self::Type, Self::Error> {
        Ok(self.pool.get().await?.into_inner())
    }

    /// At checkout: reset the item if it was not reset on return (deadpool's own
    /// `Object`), refuse it if it may not be reused, then validate it.
    async fn recycle(&self, conn: &mut Self::Type, _: &Metrics) -> RecycleResult<Self::Error> {
        if !conn.recycle() {
            return Err(RecycleError::message(
                "switchable connection broken or with a transaction possibly open",
            ));
        }
        crate::manager::validate(conn).await?;
        Ok(())
    }
}

/// A connection checked out of a [`SwitchableDeadpool`]: derefs to the
/// [`SwitchableConnection`] and is itself a diesel-async `AsyncConnection`, so
/// `RunQueryDsl` methods take `&mut conn` directly.
///
/// Dropping it returns the item to the pool with its primary connection given back
/// to the inner pool and its routing state reset; an item dropped while panicking,
/// with a transaction possibly left open by raw SQL, or broken, is taken out of the
/// pool instead (and a new one made when needed).
pub struct SwitchableObject<C: SwitchTarget = AsyncPgConnection> {
    /// `None` only once dropped or taken.
    object: Option<Object<SwitchableDeadpoolManager<C>>>,
}

impl<C: SwitchTarget> SwitchableObject<C> {
    /// deadpool's `Object` underneath (for `Object::id`, `Object::metrics`,
    /// `Object::pool`).
    pub fn object(this: &Self) -> &Object<SwitchableDeadpoolManager<C>> {
        this.object.as_ref().expect("present until dropped")
    }

    /// Takes the connection out of its pool for good (deadpool's `Object::take`);
    /// dropping it returns its node connections to the inner pools.
    pub fn take(mut this: Self) -> SwitchableConnection<C> {
        Object::take(this.object.take().expect("present until dropped"))
    }
}

impl<C: SwitchTarget> From<Object<SwitchableDeadpoolManager<C>>> for SwitchableObject<C> {
    fn from(object: Object<SwitchableDeadpoolManager<C>>) -> Self {
        SwitchableObject {
            object: Some(object),
        }
    }
}

impl<C: SwitchTarget> Drop for SwitchableObject<C> {
    fn drop(&mut self) {
        if let Some(mut object) = self.object.take() {
            if !SwitchableConnection::recycle(&mut object) {
                // Out of the deadpool pool for good; dropping the connection hands its
                // node connections to their pools, which discard the broken ones.
                drop(Object::take(object));
            }
        }
    }
}

impl<C: SwitchTarget> Deref for SwitchableObject<C> {
    type Target = SwitchableConnection<C>;

    fn deref(&self) -> &Self::Target {
        Self::object(self)
    }
}

impl<C: SwitchTarget> DerefMut for SwitchableObject<C> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.object.as_mut().expect("present until dropped")
    }
}

impl<C: SwitchTarget> fmt::Debug for SwitchableObject<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("SwitchableObject");
        if let Some(object) = &self.object {
            s.field("id", &Object::id(object)).field("conn", &**object);
        }
        s.finish()
    }
}
