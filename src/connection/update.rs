//! `save_changes` support: diesel-async's `UpdateAndFetchResults` is implemented per concrete
//! connection (Pg: `UPDATE .. RETURNING`; MySQL: UPDATE then SELECT by id). Its blanket impl is
//! for `DerefMut` wrappers only, so we mirror the `AsyncPgConnection` impl
//! (run_query_dsl/mod.rs) with `Self = SwitchableConnection<AsyncPgConnection>`.
//! The MySQL impl mirrors diesel-async's MySQL one on
//! `SwitchableConnection<AsyncMysqlConnection>`; the two concrete impls do not overlap.

use diesel::query_builder::IntoUpdateTarget;
use diesel::{AsChangeset, QueryResult};
use diesel_async::methods::LoadQuery;
use diesel_async::{AsyncPgConnection, RunQueryDsl, UpdateAndFetchResults};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use super::SwitchableConnection;

impl<'b, Changes, Output, Tab, V> UpdateAndFetchResults<Changes, Output>
    for SwitchableConnection<AsyncPgConnection>
where
    Output: Send + 'static,
    Changes:
        Copy + AsChangeset<Target = Tab> + Send + diesel::associations::Identifiable<Table = Tab>,
    Tab: diesel::Table + diesel::query_dsl::methods::FindDsl<Changes::Id> + 'b,
    diesel::dsl::Find<Tab, Changes::Id>: IntoUpdateTarget<Table = Tab, WhereClause = V>,
    diesel::query_builder::UpdateStatement<Tab, V, Changes::Changeset>:
        diesel::query_builder::AsQuery,
    diesel::dsl::Update<Changes, Changes>: LoadQuery<'b, Self, Output>,
    V: Send + 'b,
    Changes::Changeset: Send + 'b,
    Tab::FromClause: Send,
{
    fn update_and_fetch<'conn, 'changes>(
        &'conn mut self,
        changeset: Changes,
    ) -> BoxFuture<'changes, QueryResult<Output>>
    where
        Changes: 'changes,
        Changes::Changeset: 'changes,
        'conn: 'changes,
        Self: 'changes,
    {
        async move {
            diesel::update(changeset)
                .set(changeset)
                .get_result(self)
                .await
        }
        .boxed()
    }
}

/// MySQL has no `RETURNING`: the row is updated, then read back by its id. The
/// update flips the connection to the primary, so the read-back runs there too and
/// sees the update.
#[cfg(feature = "mysql")]
impl<'b, Changes, Output, Tab, V> UpdateAndFetchResults<Changes, Output>
    for SwitchableConnection<diesel_async::AsyncMysqlConnection>
where
    Output: Send + 'static,
    Changes:
        Copy + AsChangeset<Target = Tab> + Send + diesel::associations::Identifiable<Table = Tab>,
    Tab: diesel::Table + diesel::query_dsl::methods::FindDsl<Changes::Id> + 'b,
    diesel::dsl::Find<Tab, Changes::Id>: IntoUpdateTarget<Table = Tab, WhereClause = V>,
    diesel::query_builder::UpdateStatement<Tab, V, Changes::Changeset>:
        diesel::query_builder::AsQuery,
    diesel::dsl::Update<Changes, Changes>: diesel_async::methods::ExecuteDsl<Self>,
    V: Send + 'b,
    Changes::Changeset: Send + 'b,
    Changes::Id: 'b,
    Tab::FromClause: Send,
    diesel::dsl::Find<Changes::Table, Changes::Id>: LoadQuery<'b, Self, Output> + Send,
{
    fn update_and_fetch<'conn, 'changes>(
        &'conn mut self,
        changeset: Changes,
    ) -> BoxFuture<'changes, QueryResult<Output>>
    where
        Changes: 'changes,
        Changes::Changeset: 'changes,
        'conn: 'changes,
        Self: 'changes,
    {
        async move {
            diesel::update(changeset)
                .set(changeset)
                .execute(self)
                .await?;
            Changes::table().find(changeset.id()).get_result(self).await
        }
        .boxed()
    }
}
