//! Admission of transfers: a mover slot (`--max-movers`) and a node (`--max-movers-per-node`)
//! for each new mover pod, decided from the watched caches instead of lists.
//!
//! A cache shows this process's own decisions a moment late (a status write or a pod
//! creation reaches the watch after the reconcile that made it). So that two decisions in a
//! row never both see a free slot that only one may take, decisions are made one at a time
//! under a lock, and each is kept in a ledger until the cache shows it (or
//! [`LEDGER_TTL`] passes, when the decision was never carried out). Only the leader
//! reconciles, so one process's ledger is enough.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use holdfast_api::backup::TransferPhase;
use holdfast_api::transfer::TransferStatus;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action;

use super::placement::{self, ActiveMover, Placement};
use super::{holds_slot, slot_decision};
use crate::runtime::Context;

/// How long a decision the cache has not shown yet is counted.
pub const LEDGER_TTL: Duration = Duration::from_secs(30);

/// The transfers' shared admission state.
#[derive(Default)]
pub struct Admission {
    ledger: tokio::sync::Mutex<Ledger>,
}

#[derive(Default)]
struct Ledger {
    /// Transfers (`kind/name`) given a slot, while the cache still shows them Pending (or
    /// not at all yet).
    slots: HashMap<String, Instant>,
    /// Mover pods placed (name → the node they were pinned to), until the cache has them.
    pods: HashMap<String, (Option<String>, Instant)>,
}

impl Ledger {
    /// Mover slots held: transfers the cache shows holding one, and those this process
    /// admitted that the cache does not show yet (other than `key`'s own). Forgets what the
    /// cache has caught up with. Pure but for `now`.
    fn slots_taken(
        &mut self,
        phases: &HashMap<String, TransferPhase>,
        key: &str,
        now: Instant,
    ) -> usize {
        self.slots.retain(|k, at| {
            k != key
                && now.duration_since(*at) < LEDGER_TTL
                && phases.get(k).is_none_or(|p| *p == TransferPhase::Pending)
        });
        phases.values().filter(|p| holds_slot(**p)).count() + self.slots.len()
    }

    /// The cached mover pods plus those this process placed that the cache does not have
    /// yet (unscheduled, so they hold back placements until they are). Pure but for `now`.
    fn movers(&mut self, cached: Vec<ActiveMover>, now: Instant) -> Vec<ActiveMover> {
        let known: HashSet<String> = cached.iter().map(|m| m.name.clone()).collect();
        self.pods
            .retain(|name, (_, at)| now.duration_since(*at) < LEDGER_TTL && !known.contains(name));
        let mut all = cached;
        all.extend(self.pods.iter().map(|(name, (node, _))| ActiveMover {
            name: name.clone(),
            node: node.clone(),
            fresh: true,
        }));
        all
    }
}

/// A transfer's key in the ledger.
pub fn key(kind: &str, name: &str) -> String {
    format!("{kind}/{name}")
}

impl Admission {
    /// Pending → Preparing once fewer than `--max-movers` transfers hold a mover slot.
    pub async fn take_slot(&self, ctx: &Context, key: &str, st: &mut TransferStatus) -> Action {
        let mut ledger = self.ledger.lock().await;
        let now = Instant::now();
        let taken = ledger.slots_taken(&cached_phases(ctx), key, now);
        let action = slot_decision(st, taken, ctx.max_movers, Timestamp::now());
        if st.phase == TransferPhase::Preparing {
            ledger.slots.insert(key.to_string(), now);
        }
        action
    }

    /// Where a new mover pod named `own` may run, under the per-node limit.
    pub async fn place(&self, ctx: &Context, pinned: Option<&str>, own: &str) -> Placement {
        let limit = ctx.max_movers_per_node;
        if limit == 0 {
            return placement::place(0, &[], &[], pinned, own);
        }
        let mut ledger = self.ledger.lock().await;
        let cached = placement::active_movers(&ctx.caches.movers.state(), Timestamp::now());
        let known = cached.iter().any(|m| m.name == own);
        let active = ledger.movers(cached, Instant::now());
        let nodes = placement::schedulable_nodes(&ctx.caches.nodes.state());
        let decision = placement::place(limit, &active, &nodes, pinned, own);
        if !matches!(decision, Placement::Wait(_)) && !known {
            let pin = pinned.map(String::from);
            ledger.pods.insert(own.to_string(), (pin, Instant::now()));
        }
        decision
    }
}

/// The phase of every transfer in the caches, by ledger key.
fn cached_phases(ctx: &Context) -> HashMap<String, TransferPhase> {
    let phase = |s: Option<&TransferStatus>| s.map(|s| s.phase).unwrap_or_default();
    let ups = ctx.caches.uploads.state();
    let downs = ctx.caches.downloads.state();
    ups.iter()
        .map(|u| (key("DataUpload", &u.name_any()), phase(u.status.as_ref())))
        .chain(
            downs
                .iter()
                .map(|d| (key("DataDownload", &d.name_any()), phase(d.status.as_ref()))),
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_counts_until_the_cache_shows_it() {
        let mut l = Ledger::default();
        let t0 = Instant::now();
        let mut phases = HashMap::from([
            ("DataUpload/a".to_string(), TransferPhase::InProgress),
            ("DataUpload/b".to_string(), TransferPhase::Pending),
        ]);
        assert_eq!(l.slots_taken(&phases, "DataUpload/b", t0), 1);
        // b was admitted; the cache still shows it Pending, or not at all for a new one.
        l.slots.insert("DataUpload/b".into(), t0);
        l.slots.insert("DataUpload/new".into(), t0);
        assert_eq!(l.slots_taken(&phases, "DataUpload/c", t0), 3);
        // Once the cache shows b Preparing it is counted there, not twice.
        phases.insert("DataUpload/b".into(), TransferPhase::Preparing);
        assert_eq!(l.slots_taken(&phases, "DataUpload/c", t0), 3);
        assert_eq!(l.slots.len(), 1);
        // A decision never carried out stops counting after the TTL.
        assert_eq!(l.slots_taken(&phases, "DataUpload/c", t0 + LEDGER_TTL), 2);
    }

    #[test]
    fn a_placed_pod_holds_back_others_until_the_cache_has_it() {
        let mut l = Ledger::default();
        let t0 = Instant::now();
        l.pods.insert("m1".into(), (None, t0));
        let active = l.movers(Vec::new(), t0);
        assert_eq!(active.len(), 1);
        let nodes = vec!["n1".to_string(), "n2".to_string()];
        assert!(matches!(
            placement::place(1, &active, &nodes, None, "m2"),
            Placement::Wait(_)
        ));
        let scheduled = vec![ActiveMover {
            name: "m1".into(),
            node: Some("n1".into()),
            fresh: true,
        }];
        let active = l.movers(scheduled, t0);
        assert_eq!(active.len(), 1);
        assert_eq!(
            placement::place(1, &active, &nodes, None, "m2"),
            Placement::Avoid(vec!["n1".into()])
        );
    }
}
