//! Patroni's REST API as the source of who the primary is (feature `patroni`).
//!
//! With [`SwitchablePoolBuilder::patroni`](crate::SwitchablePoolBuilder::patroni),
//! a task asks `GET /cluster` of the first Patroni member that answers, every
//! `patroni_interval` (default 200 ms): the member Patroni calls `leader` (state
//! `running`) is the primary, matched to the pool's members by host and port;
//! while Patroni names no leader (a failover being decided), there is none and
//! writes wait. Patroni changes the leader key before the old leader's PostgreSQL
//! stops answering as a primary, so the pool stops sending writes there sooner than
//! SQL polling would notice; a failed primary checkout makes it ask at once. Members tagged `noloadbalance` get no reads. When no
//! Patroni member answers, the pool falls back to the members' own answers
//! (`pg_is_in_recovery()`, as without Patroni).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde::Deserialize;

use super::PoolInner;
use crate::connection::SwitchTarget;

/// How long one `GET /cluster` may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Deserialize)]
struct Cluster {
    #[serde(default)]
    members: Vec<Member>,
}

#[derive(Debug, Deserialize)]
struct Member {
    #[serde(default)]
    role: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    host: String,
    #[serde(default)]
    port: u16,
    #[serde(default)]
    tags: serde_json::Map<String, serde_json::Value>,
}

/// What one answer of Patroni says, in the pool's member indexes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct View {
    leader: Option<usize>,
    no_load_balance: Vec<bool>,
}

/// Patroni's tags are YAML values: `true` or the string "true".
fn tag_is_true(tags: &serde_json::Map<String, serde_json::Value>, tag: &str) -> bool {
    match tags.get(tag) {
        Some(serde_json::Value::Bool(value)) => *value,
        Some(serde_json::Value::String(text)) => text.eq_ignore_ascii_case("true"),
        _ => false,
    }
}

/// Patroni's answer mapped onto `members` (host, port) of the pool.
fn view(cluster: &Cluster, members: &[(String, u16)]) -> View {
    let index_of = |m: &Member| {
        members
            .iter()
            .position(|(host, port)| *host == m.host && *port == m.port)
    };
    let leader = cluster
        .members
        .iter()
        .filter(|m| m.role == "leader" && m.state == "running")
        .find_map(index_of);
    let mut no_load_balance = vec![false; members.len()];
    for member in &cluster.members {
        if let Some(index) = index_of(member) {
            no_load_balance[index] = tag_is_true(&member.tags, "noloadbalance");
        }
    }
    View {
        leader,
        no_load_balance,
    }
}

impl<C: SwitchTarget> PoolInner<C> {
    /// Follow Patroni until the pool is dropped.
    pub(super) async fn follow_patroni(
        pool: Weak<Self>,
        rest_urls: Vec<String>,
        members: Vec<(String, u16)>,
        interval: Duration,
    ) {
        let client = match reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build() {
            Ok(client) => client,
            Err(error) => {
                tracing::error!(target: "diesel_rwsplit::pool", %error, "cannot make an HTTP client for Patroni's REST API: following the members' own answers");
                return;
            }
        };
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reachable = true;
        // Held apart from the pool, so that waiting does not keep a dropped pool alive.
        let Some(wake) = pool.upgrade().map(|pool| Arc::clone(&pool.rediscover_now)) else {
            return;
        };
        loop {
            // A failed primary checkout asks at once, not at the next tick.
            tokio::select! {
                _ = ticker.tick() => {}
                () = wake.notified() => {}
            }
            let mut answer = None;
            for url in &rest_urls {
                let request = client.get(format!("{}/cluster", url.trim_end_matches('/')));
                if let Ok(response) = request.send().await {
                    if let Ok(cluster) = response.json::<Cluster>().await {
                        answer = Some(view(&cluster, &members));
                        break;
                    }
                }
            }
            let Some(pool) = pool.upgrade() else { return };
            match answer {
                Some(view) => {
                    if !reachable {
                        tracing::info!(target: "diesel_rwsplit::pool", "Patroni's REST API answers again: following it");
                        reachable = true;
                    }
                    for (replica, excluded) in pool.replicas.iter().zip(&view.no_load_balance) {
                        replica
                            .health()
                            .no_load_balance
                            .store(*excluded, Ordering::Relaxed);
                    }
                    pool.apply_leader(view.leader);
                }
                None => {
                    if reachable {
                        tracing::warn!(target: "diesel_rwsplit::pool", "no Patroni member answers GET /cluster: following the members' own answers");
                        reachable = false;
                    }
                    if let Some(monitor) = &pool.monitor {
                        pool.apply_leader(monitor.leader());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patroni_answers_in_member_indexes() {
        let members = vec![
            ("127.0.0.1".to_owned(), 5001),
            ("127.0.0.1".to_owned(), 5002),
            ("127.0.0.1".to_owned(), 5003),
        ];
        let cases = [
            (
                r#"{"members":[{"name":"a","role":"replica","state":"streaming","host":"127.0.0.1","port":5001},
                    {"name":"b","role":"leader","state":"running","host":"127.0.0.1","port":5002,"tags":{"nofailover":true}},
                    {"name":"c","role":"sync_standby","state":"streaming","host":"127.0.0.1","port":5003,"tags":{"noloadbalance":"true"}}]}"#,
                Some(1),
                vec![false, false, true],
            ),
            // A leader being demoted, or an unknown one, is no primary.
            (
                r#"{"members":[{"role":"leader","state":"stopping","host":"127.0.0.1","port":5001}]}"#,
                None,
                vec![false; 3],
            ),
            (
                r#"{"members":[{"role":"leader","state":"running","host":"10.0.0.9","port":5001}]}"#,
                None,
                vec![false; 3],
            ),
            (r#"{"members":[]}"#, None, vec![false; 3]),
        ];
        for (json, leader, no_load_balance) in cases {
            let cluster: Cluster = serde_json::from_str(json).unwrap();
            assert_eq!(
                view(&cluster, &members),
                View {
                    leader,
                    no_load_balance
                },
                "{json}"
            );
        }
    }
}
