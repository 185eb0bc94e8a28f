//! Where a mover pod may run: the per-node limit (`--max-movers-per-node`).
//!
//! The scheduler places mover pods; the operator only narrows where they may go. Before a
//! mover pod is created, the operator counts the mover pods (label `holdfast.dev/transfer`, all
//! namespaces, not finished) on each node, from the watched cache plus the pods it placed
//! that the cache does not show yet (`admission.rs`). Nodes at the limit are excluded through a required
//! node affinity (`metadata.name NotIn [...]`); a pod that must run on one node (a live copy
//! next to the pod that mounts its claim) waits while that node is full. While a mover pod is
//! still unscheduled its node is unknown, so no other unpinned pod is placed until it is: this
//! keeps the count exact at the price of placing one pod per scheduling round-trip. A pod left
//! unscheduled for longer than [`STUCK_UNSCHEDULED`] stops blocking others.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
};
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;

use crate::runtime::Error;

/// An unscheduled mover pod older than this no longer holds back the placement of others.
pub const STUCK_UNSCHEDULED: Duration = Duration::from_secs(120);

/// A mover pod that has not finished: its node, if scheduled, and whether it was created
/// recently enough to count while unscheduled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActiveMover {
    pub name: String,
    pub node: Option<String>,
    pub fresh: bool,
}

/// The decision for one new mover pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Anywhere but these nodes (empty: no constraint).
    Avoid(Vec<String>),
    /// On this node only.
    On(String),
    /// Not now; the message says why.
    Wait(String),
}

/// Decides where a new mover pod may run. `limit` 0 means no per-node limit; `nodes` are the
/// schedulable nodes; `pinned` is the node the pod must run on, if any; `own` is the pod's own
/// name (a pod that already exists is not counted against itself).
pub fn place(
    limit: usize,
    active: &[ActiveMover],
    nodes: &[String],
    pinned: Option<&str>,
    own: &str,
) -> Placement {
    if limit == 0 {
        return pinned.map_or(Placement::Avoid(Vec::new()), |n| Placement::On(n.into()));
    }
    let others: Vec<&ActiveMover> = active.iter().filter(|m| m.name != own).collect();
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for m in &others {
        if let Some(n) = &m.node {
            *per_node.entry(n.as_str()).or_default() += 1;
        }
    }
    let full: Vec<String> = per_node
        .iter()
        .filter(|(_, c)| **c >= limit)
        .map(|(n, _)| n.to_string())
        .collect();
    if let Some(n) = pinned {
        return if full.iter().any(|f| f == n) {
            Placement::Wait(format!(
                "node {n} already runs {} mover pods (limit --max-movers-per-node={limit})",
                per_node.get(n).copied().unwrap_or(0)
            ))
        } else {
            Placement::On(n.into())
        };
    }
    if let Some(m) = others.iter().find(|m| m.node.is_none() && m.fresh) {
        return Placement::Wait(format!(
            "waiting until mover pod {} is scheduled to count the mover pods per node",
            m.name
        ));
    }
    if !nodes.is_empty() && nodes.iter().all(|n| full.contains(n)) {
        return Placement::Wait(format!(
            "every schedulable node already runs {limit} mover pods (limit --max-movers-per-node={limit})"
        ));
    }
    Placement::Avoid(full)
}

/// The required node affinity expressing a placement (`None` for no constraint).
pub fn affinity(p: &Placement) -> Option<Affinity> {
    let (operator, values) = match p {
        Placement::Avoid(v) if v.is_empty() => return None,
        Placement::Avoid(v) => ("NotIn", v.clone()),
        Placement::On(n) => ("In", vec![n.clone()]),
        Placement::Wait(_) => return None,
    };
    Some(Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_fields: Some(vec![NodeSelectorRequirement {
                        key: "metadata.name".into(),
                        operator: operator.into(),
                        values: Some(values),
                    }]),
                    ..Default::default()
                }],
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// A mover pod that the scheduler could not place for [`STUCK_UNSCHEDULED`] while the
/// operator had excluded nodes for it: it is deleted and placed again with a fresh count (the
/// nodes it could use, say for the topology of its volume, may have been full then).
pub fn stuck(p: &Pod) -> bool {
    let spec = p.spec.as_ref();
    if spec.and_then(|s| s.node_name.as_ref()).is_some() {
        return false;
    }
    let excluded = spec
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .is_some_and(|r| {
            r.node_selector_terms.iter().any(|t| {
                t.match_fields
                    .iter()
                    .flatten()
                    .any(|f| f.key == "metadata.name" && f.operator == "NotIn")
            })
        });
    let unschedulable_since = p
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| {
            c.iter().find(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
            })
        })
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| Timestamp::now().duration_since(t.0).unsigned_abs());
    excluded && unschedulable_since.is_some_and(|d| d > STUCK_UNSCHEDULED)
}

/// Deletes mover pod `p` when it is [`stuck`], so that the transfer places it again (with a
/// fresh count of the nodes). True when it was deleted.
pub async fn delete_if_stuck(pods: &Api<Pod>, p: &Pod) -> Result<bool, Error> {
    if !stuck(p) {
        return Ok(false);
    }
    let name = p.metadata.name.clone().unwrap_or_default();
    let dp = kube::api::DeleteParams::default();
    crate::runtime::kube_ext::delete(pods, &name, &dp, "delete unschedulable mover Pod").await?;
    Ok(true)
}

/// The mover pods that have not finished, from the watched pods. Pure.
pub fn active_movers(pods: &[std::sync::Arc<Pod>], now: Timestamp) -> Vec<ActiveMover> {
    pods.iter()
        .filter(|p| {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            !matches!(phase, Some("Succeeded") | Some("Failed"))
        })
        .map(|p| {
            let age = p
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| now.duration_since(t.0).unsigned_abs())
                .unwrap_or_default();
            ActiveMover {
                name: p.metadata.name.clone().unwrap_or_default(),
                node: p.spec.as_ref().and_then(|s| s.node_name.clone()),
                fresh: age < STUCK_UNSCHEDULED,
            }
        })
        .collect()
}

/// Names of the nodes that take new pods (Ready and not cordoned). Pure.
pub fn schedulable_nodes(nodes: &[std::sync::Arc<Node>]) -> Vec<String> {
    nodes
        .iter()
        .filter(|n| {
            !n.spec
                .as_ref()
                .and_then(|s| s.unschedulable)
                .unwrap_or(false)
        })
        .filter(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .filter_map(|n| n.metadata.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, node: Option<&str>) -> ActiveMover {
        ActiveMover {
            name: name.into(),
            node: node.map(Into::into),
            fresh: true,
        }
    }

    fn nodes() -> Vec<String> {
        vec!["n1".into(), "n2".into(), "n3".into()]
    }

    #[test]
    fn no_limit_places_anywhere_or_where_pinned() {
        let busy = [m("a", Some("n1")), m("b", Some("n1"))];
        assert_eq!(
            place(0, &busy, &nodes(), None, "x"),
            Placement::Avoid(vec![])
        );
        assert_eq!(
            place(0, &busy, &nodes(), Some("n1"), "x"),
            Placement::On("n1".into())
        );
    }

    #[test]
    fn full_nodes_are_avoided() {
        let busy = [m("a", Some("n1")), m("b", Some("n1")), m("c", Some("n2"))];
        assert_eq!(
            place(2, &busy, &nodes(), None, "x"),
            Placement::Avoid(vec!["n1".into()])
        );
        assert_eq!(
            place(1, &busy, &nodes(), None, "x"),
            Placement::Avoid(vec!["n1".into(), "n2".into()])
        );
    }

    #[test]
    fn waits_when_every_node_is_full() {
        let busy = [m("a", Some("n1")), m("b", Some("n2")), m("c", Some("n3"))];
        assert!(matches!(
            place(1, &busy, &nodes(), None, "x"),
            Placement::Wait(w) if w.contains("every schedulable node")
        ));
    }

    #[test]
    fn a_pinned_pod_waits_for_its_node_only() {
        let busy = [m("a", Some("n1"))];
        assert!(matches!(
            place(1, &busy, &nodes(), Some("n1"), "x"),
            Placement::Wait(w) if w.contains("node n1")
        ));
        assert_eq!(
            place(1, &busy, &nodes(), Some("n2"), "x"),
            Placement::On("n2".into())
        );
    }

    #[test]
    fn an_unscheduled_pod_holds_back_unpinned_ones_until_it_is_stale() {
        let mut busy = vec![m("a", None)];
        assert!(matches!(
            place(2, &busy, &nodes(), None, "x"),
            Placement::Wait(w) if w.contains("mover pod a")
        ));
        // A pinned pod does not need the count of the unknown node.
        assert_eq!(
            place(2, &busy, &nodes(), Some("n1"), "x"),
            Placement::On("n1".into())
        );
        busy[0].fresh = false;
        assert_eq!(
            place(2, &busy, &nodes(), None, "x"),
            Placement::Avoid(vec![])
        );
    }

    #[test]
    fn the_pod_itself_is_not_counted() {
        let busy = [m("x", Some("n1")), m("y", None)];
        assert!(matches!(place(1, &busy, &nodes(), None, "y"), Placement::Avoid(v) if v == ["n1"]));
        assert_eq!(
            place(1, &busy, &nodes(), Some("n1"), "x"),
            Placement::On("n1".into())
        );
    }

    #[test]
    fn affinity_terms_match_the_decision() {
        assert!(affinity(&Placement::Avoid(vec![])).is_none());
        let a = affinity(&Placement::Avoid(vec!["n1".into()])).expect("affinity");
        let req = a
            .node_affinity
            .and_then(|n| n.required_during_scheduling_ignored_during_execution)
            .expect("required");
        let f = &req.node_selector_terms[0]
            .match_fields
            .as_ref()
            .expect("fields")[0];
        assert_eq!(
            (f.key.as_str(), f.operator.as_str()),
            ("metadata.name", "NotIn")
        );
        assert_eq!(f.values.as_deref(), Some(&["n1".to_string()][..]));
        let on = affinity(&Placement::On("n2".into())).expect("affinity");
        let f = on
            .node_affinity
            .and_then(|n| n.required_during_scheduling_ignored_during_execution)
            .expect("required")
            .node_selector_terms[0]
            .match_fields
            .clone()
            .expect("fields")[0]
            .clone();
        assert_eq!(
            (f.operator.as_str(), f.values),
            ("In", Some(vec!["n2".to_string()]))
        );
    }
}
