//! Compile-time guarantees: what may cross threads and be shared.

use diesel_async::AsyncPgConnection;
use diesel_rwsplit::classify::{Classifier, Verdict};
use diesel_rwsplit::testing::{LocalCluster, MariaCluster};
use diesel_rwsplit::{
    Error, InterlockMode, PooledConnection, StatsSnapshot, SwitchableConnection, SwitchablePool,
};

fn send_sync<T: Send + Sync>() {}
fn send<T: Send>(_: &T) {}

#[test]
fn pools_connections_and_values_are_send_and_sync() {
    send_sync::<SwitchablePool<AsyncPgConnection>>();
    send_sync::<SwitchableConnection<AsyncPgConnection>>();
    send_sync::<PooledConnection<AsyncPgConnection>>();
    send_sync::<Classifier>();
    send_sync::<Verdict>();
    send_sync::<InterlockMode>();
    send_sync::<StatsSnapshot>();
    send_sync::<Error>();
    send_sync::<LocalCluster>();
    send_sync::<MariaCluster>();
}

/// Futures a handler awaits must be `Send` to run on a multi-threaded runtime.
#[allow(dead_code)]
async fn futures_are_send(
    pool: SwitchablePool<AsyncPgConnection>,
    mut conn: PooledConnection<AsyncPgConnection>,
) {
    send(&pool.get());
    send(&pool.get_primary());
    send(&pool.get_replica());
    send(&conn.switch_to_primary());
    send(&conn.before_save());
    send(&tokio::spawn(async move {
        let mut conn = pool.get().await.unwrap();
        diesel_async::RunQueryDsl::execute(diesel::sql_query("SELECT 1"), &mut conn)
            .await
            .unwrap();
        conn.before_delete().await.unwrap();
    }));
}
