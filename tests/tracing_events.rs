//! One `tracing` event per flip, with reason and fingerprint and never a bind value;
//! a span per statement naming the node.

mod common;

use std::sync::{Arc, Mutex};

use common::{create_table, shared_cluster};
use diesel::sql_types::Text;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use diesel_rwsplit::SwitchablePool;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

/// The fields of one event or span, as (name, value) pairs.
type Record = Vec<(String, String)>;

#[derive(Default, Clone)]
struct Captured {
    events: Arc<Mutex<Vec<Record>>>,
    spans: Arc<Mutex<Vec<Record>>>,
}

struct Fields(Vec<(String, String)>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push((
            field.name().to_owned(),
            format!("{value:?}").trim_matches('"').to_owned(),
        ));
    }
}

impl<S: tracing::Subscriber> Layer<S> for Captured {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if event.metadata().target().starts_with("diesel_rwsplit") {
            let mut fields = Fields(vec![("target".into(), event.metadata().target().into())]);
            event.record(&mut fields);
            self.events.lock().unwrap().push(fields.0);
        }
    }

    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _: &tracing::span::Id,
        _: Context<'_, S>,
    ) {
        let mut fields = Fields(vec![("name".into(), attrs.metadata().name().into())]);
        attrs.record(&mut fields);
        self.spans.lock().unwrap().push(fields.0);
    }
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "current_thread")]
async fn every_flip_emits_one_event_with_reason_and_fingerprint_and_no_bind_value() {
    let cluster = shared_cluster();
    create_table(
        cluster,
        "CREATE TABLE traced (id SERIAL PRIMARY KEY, secret TEXT)",
    )
    .await;
    let captured = Captured::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(captured.clone()));

    let pool = SwitchablePool::<AsyncPgConnection>::builder()
        .primary(cluster.primary_url())
        .replicas(cluster.replica_urls())
        .build()
        .await
        .unwrap();
    {
        let mut conn = pool.get().await.unwrap();
        diesel::sql_query("SELECT count(*) FROM traced")
            .execute(&mut conn)
            .await
            .unwrap();
        diesel::sql_query("INSERT INTO traced (secret) VALUES ($1)")
            .bind::<Text, _>("bind-value-hunter2")
            .execute(&mut conn)
            .await
            .unwrap();
        diesel::sql_query("INSERT INTO traced (secret) VALUES ('literal-hunter2')")
            .execute(&mut conn)
            .await
            .unwrap();
    }
    {
        let mut conn = pool.get().await.unwrap();
        conn.transaction::<_, diesel::result::Error, _>(async |c| {
            diesel::sql_query("SELECT 1").execute(c).await
        })
        .await
        .unwrap();
    }
    {
        let mut conn = pool.get().await.unwrap();
        conn.before_delete().await.unwrap();
    }

    let events = captured.events.lock().unwrap().clone();
    let flips: Vec<_> = events
        .iter()
        .filter(|e| field(e, "message") == Some("switched to the primary"))
        .collect();
    let reasons: Vec<_> = flips.iter().map(|e| field(e, "reason").unwrap()).collect();
    assert_eq!(
        reasons,
        ["write_statement", "transaction_begin", "delete_hook"],
        "{events:#?}"
    );
    assert_eq!(field(flips[0], "target"), Some("diesel_rwsplit::interlock"));
    assert!(
        field(flips[0], "fingerprint")
            .unwrap()
            .starts_with("insert into traced"),
        "{:?}",
        flips[0]
    );
    assert_eq!(field(flips[1], "fingerprint"), Some("begin"));
    let everything = format!("{events:?}{:?}", captured.spans.lock().unwrap());
    assert!(
        !everything.contains("hunter2"),
        "a bind value or literal leaked: {everything}"
    );
    assert_eq!(pool.stats().total_switches(), 3);

    let spans = captured.spans.lock().unwrap().clone();
    let nodes: Vec<_> = spans
        .iter()
        .filter(|s| field(s, "name") == Some("rwsplit.statement"))
        .map(|s| field(s, "node").unwrap())
        .collect();
    assert_eq!(<[&str]>::first(&nodes), Some(&"replica"), "{spans:?}");
    assert!(nodes.contains(&"primary"));
}
