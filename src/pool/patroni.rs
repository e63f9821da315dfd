//! Patroni's REST API as the source of who the primary is (feature `patroni`).
//!
//! With [`SwitchablePoolBuilder::patroni`](crate::SwitchablePoolBuilder::patroni),
//! a task asks `GET /cluster` of the first Patroni member that answers, every
//! `patroni_interval` (default 200 ms): the member Patroni calls `leader` (state
//! `running`) is the primary, matched to the pool's members by host and port;
//! while Patroni names no leader (a failover being decided), there is none and
//! writes wait. Patroni changes the leader key before the old leader's PostgreSQL
//! stops answering as a primary, so the pool stops sending writes there sooner than
//! SQL polling would notice; a failed primary checkout makes it ask at once.
//! Members tagged `noloadbalance` get no reads; a member's `group` tag puts it in
//! that replica group (when the configuration gives it none and the pool knows the
//! group: [`replica_group`](crate::SwitchablePoolBuilder::replica_group) or a
//! classifier rule names it). When no
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
    /// Patroni names a running leader (matched to a member or not).
    named_leader: bool,
    no_load_balance: Vec<bool>,
    /// Each member's `group` tag.
    groups: Vec<Option<String>>,
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
    let running_leader = |m: &&Member| m.role == "leader" && m.state == "running";
    let named_leader = cluster.members.iter().any(|m| running_leader(&m));
    let leader = cluster
        .members
        .iter()
        .filter(running_leader)
        .find_map(index_of);
    let mut no_load_balance = vec![false; members.len()];
    let mut groups = vec![None; members.len()];
    for member in &cluster.members {
        if let Some(index) = index_of(member) {
            no_load_balance[index] = tag_is_true(&member.tags, "noloadbalance");
            groups[index] = member
                .tags
                .get("group")
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned);
        }
    }
    View {
        leader,
        named_leader,
        no_load_balance,
        groups,
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
        let mut unmatched_warned = false;
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
                    for ((replica, excluded), group) in pool
                        .replicas
                        .iter()
                        .zip(&view.no_load_balance)
                        .zip(&view.groups)
                    {
                        replica
                            .health()
                            .no_load_balance
                            .store(*excluded, Ordering::Relaxed);
                        // Only groups the pool knows (its configuration or its
                        // classifier's rules name them) can route reads.
                        let id = group.as_deref().and_then(|g| {
                            let id = pool.group_names.iter().position(|n| &**n == g);
                            if id.is_none() {
                                tracing::debug!(target: "diesel_rwsplit::pool", group = g, "a Patroni group tag names a group no rule routes to: ignored");
                            }
                            id
                        });
                        replica
                            .health()
                            .tag_group
                            .store(id.unwrap_or(super::NO_GROUP), Ordering::Relaxed);
                        if id.is_some() {
                            pool.grouped.store(true, Ordering::Relaxed);
                        }
                    }
                    match view.leader {
                        // Cross-checked with what the member itself last said: a
                        // member Patroni calls leader that still answered as a
                        // standby (a promotion under way, or a stale Patroni view)
                        // is asked again first, with no primary meanwhile; a write
                        // never goes to a standby.
                        Some(index)
                            if pool.monitor.as_ref().is_some_and(|m| {
                                m.status()
                                    .get(index)
                                    .is_some_and(|s| s.role() == crate::MemberRole::Replica)
                            }) =>
                        {
                            // Patroni no longer names the old leader: no writes there
                            // either, until the new one answers as the primary.
                            pool.apply_leader(None);
                            if let Some(monitor) = &pool.monitor {
                                monitor.poll_now();
                            }
                        }
                        Some(index) => pool.apply_leader(Some(index)),
                        None if view.named_leader => {
                            if !unmatched_warned {
                                tracing::warn!(target: "diesel_rwsplit::pool", "Patroni names a leader whose host and port match none of the nodes() URLs: following the members' own answers");
                                unmatched_warned = true;
                            }
                            if let Some(monitor) = &pool.monitor {
                                pool.apply_leader(monitor.leader());
                            }
                        }
                        None => pool.apply_leader(None),
                    }
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
                true,
                vec![false, false, true],
                vec![None, None, None],
            ),
            // A leader being demoted, or an unknown one, is no primary.
            (
                r#"{"members":[{"role":"leader","state":"stopping","host":"127.0.0.1","port":5001}]}"#,
                None,
                false,
                vec![false; 3],
                vec![None; 3],
            ),
            (
                r#"{"members":[{"role":"leader","state":"running","host":"10.0.0.9","port":5001}]}"#,
                None,
                true,
                vec![false; 3],
                vec![None; 3],
            ),
            (
                r#"{"members":[]}"#,
                None,
                false,
                vec![false; 3],
                vec![None; 3],
            ),
            (
                r#"{"members":[{"role":"replica","state":"streaming","host":"127.0.0.1","port":5003,"tags":{"group":"analytics"}}]}"#,
                None,
                false,
                vec![false; 3],
                vec![None, None, Some("analytics".to_owned())],
            ),
        ];
        for (json, leader, named_leader, no_load_balance, groups) in cases {
            let cluster: Cluster = serde_json::from_str(json).unwrap();
            assert_eq!(
                view(&cluster, &members),
                View {
                    leader,
                    named_leader,
                    no_load_balance,
                    groups,
                },
                "{json}"
            );
        }
    }
}
