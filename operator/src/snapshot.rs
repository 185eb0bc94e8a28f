//! The CSI snapshot API (snapshot.storage.k8s.io/v1, groupsnapshot.storage.k8s.io/v1) as far
//! as Holdfast uses it. These CRDs belong to the external-snapshotter project; we only declare
//! the fields we read and write.

use std::collections::BTreeMap;

use kube::CustomResource;
use serde::{Deserialize, Serialize};

/// `VolumeSnapshot`: a request for a snapshot of a claim, or a handle on an existing content.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default)]
#[kube(
    group = "snapshot.storage.k8s.io",
    version = "v1",
    kind = "VolumeSnapshot",
    namespaced,
    status = "VolumeSnapshotStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotSpec {
    pub source: VolumeSnapshotSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot_class_name: Option<String>,
}

/// Exactly one of the two.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot_content_name: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound_volume_snapshot_content_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_to_use: Option<bool>,
    /// When the driver cut the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_size: Option<k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<SnapshotError>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct SnapshotError {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `VolumeSnapshotContent`: the cluster-scoped record of a snapshot in the storage system.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default)]
#[kube(
    group = "snapshot.storage.k8s.io",
    version = "v1",
    kind = "VolumeSnapshotContent",
    status = "VolumeSnapshotContentStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotContentSpec {
    pub deletion_policy: String,
    pub driver: String,
    pub source: ContentSource,
    pub volume_snapshot_ref: SnapshotRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot_class_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_volume_mode: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct ContentSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_handle: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_handle: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotRef {
    pub name: String,
    pub namespace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotContentStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_handle: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_to_use: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_size: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<SnapshotError>,
}

/// `VolumeSnapshotClass`: how a driver takes snapshots. Not a spec/status object.
#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotClass {
    pub metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    pub driver: String,
    #[serde(default)]
    pub deletion_policy: String,
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
}

impl kube::Resource for VolumeSnapshotClass {
    type DynamicType = ();
    type Scope = kube::core::ClusterResourceScope;
    fn kind(_: &()) -> std::borrow::Cow<'_, str> {
        "VolumeSnapshotClass".into()
    }
    fn group(_: &()) -> std::borrow::Cow<'_, str> {
        "snapshot.storage.k8s.io".into()
    }
    fn version(_: &()) -> std::borrow::Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> std::borrow::Cow<'_, str> {
        "volumesnapshotclasses".into()
    }
    fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        &mut self.metadata
    }
}

/// `VolumeGroupSnapshot` (groupsnapshot.storage.k8s.io/v1, external-snapshotter v8.6): one cut
/// of every claim its selector matches. The snapshot controller makes a member VolumeSnapshot
/// per claim, owned by the group; members are deleted with the group, never alone.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default)]
#[kube(
    group = "groupsnapshot.storage.k8s.io",
    version = "v1",
    kind = "VolumeGroupSnapshot",
    namespaced,
    status = "VolumeGroupSnapshotStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct VolumeGroupSnapshotSpec {
    pub source: GroupSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_group_snapshot_class_name: Option<String>,
}

/// The claims of a group: a label selector (v8.6 reads `matchLabels` only).
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct GroupSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct VolumeGroupSnapshotStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound_volume_group_snapshot_content_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_to_use: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<SnapshotError>,
}

/// `VolumeGroupSnapshotClass`: how a driver takes group snapshots.
#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct VolumeGroupSnapshotClass {
    pub metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    pub driver: String,
    #[serde(default)]
    pub deletion_policy: String,
}

impl kube::Resource for VolumeGroupSnapshotClass {
    type DynamicType = ();
    type Scope = kube::core::ClusterResourceScope;
    fn kind(_: &()) -> std::borrow::Cow<'_, str> {
        "VolumeGroupSnapshotClass".into()
    }
    fn group(_: &()) -> std::borrow::Cow<'_, str> {
        "groupsnapshot.storage.k8s.io".into()
    }
    fn version(_: &()) -> std::borrow::Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> std::borrow::Cow<'_, str> {
        "volumegroupsnapshotclasses".into()
    }
    fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        &mut self.metadata
    }
}

/// The label that marks a driver's default group snapshot class for Holdfast.
pub const DEFAULT_GROUP_CLASS_LABEL: &str = "holdfast.dev/default-group-snapshot-class";

/// The group snapshot class for `driver`: the one labelled as Holdfast's default (oldest name
/// first), else the one annotated as the cluster default
/// (`groupsnapshot.storage.kubernetes.io/is-default-class`). Pure.
pub fn choose_group_class(classes: &[VolumeGroupSnapshotClass], driver: &str) -> Option<String> {
    let mut of_driver: Vec<&VolumeGroupSnapshotClass> =
        classes.iter().filter(|c| c.driver == driver).collect();
    of_driver.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let marked = |c: &&&VolumeGroupSnapshotClass, label: bool| {
        let m = if label {
            c.metadata.labels.as_ref()
        } else {
            c.metadata.annotations.as_ref()
        };
        let key = if label {
            DEFAULT_GROUP_CLASS_LABEL
        } else {
            "groupsnapshot.storage.kubernetes.io/is-default-class"
        };
        m.and_then(|m| m.get(key)).is_some_and(|v| v == "true")
    };
    of_driver
        .iter()
        .find(|c| marked(c, true))
        .or_else(|| of_driver.iter().find(|c| marked(c, false)))
        .and_then(|c| c.metadata.name.clone())
}

/// The label that marks a driver's default class for Holdfast.
pub const DEFAULT_CLASS_LABEL: &str = "holdfast.dev/default-snapshot-class";

/// The class to use for `driver`: an explicit override, else the class of that driver labelled
/// as default (the oldest name wins when several are), else the class annotated as the
/// cluster default by the snapshotter (`snapshot.storage.kubernetes.io/is-default-class`).
pub fn choose_class(
    classes: &[VolumeSnapshotClass],
    driver: &str,
    overrides: &BTreeMap<String, String>,
) -> Option<String> {
    if let Some(c) = overrides.get(driver) {
        return Some(c.clone());
    }
    let mut of_driver: Vec<&VolumeSnapshotClass> =
        classes.iter().filter(|c| c.driver == driver).collect();
    of_driver.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let labelled = |c: &&VolumeSnapshotClass| {
        c.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(DEFAULT_CLASS_LABEL))
            .is_some_and(|v| v == "true")
    };
    let annotated = |c: &&VolumeSnapshotClass| {
        c.metadata
            .annotations
            .as_ref()
            .and_then(|l| l.get("snapshot.storage.kubernetes.io/is-default-class"))
            .is_some_and(|v| v == "true")
    };
    of_driver
        .iter()
        .find(|c| labelled(c))
        .or_else(|| of_driver.iter().find(|c| annotated(c)))
        .and_then(|c| c.metadata.name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(name: &str, driver: &str, label: bool, annotation: bool) -> VolumeSnapshotClass {
        let mut metadata = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        };
        if label {
            metadata.labels = Some([(DEFAULT_CLASS_LABEL.to_string(), "true".to_string())].into());
        }
        if annotation {
            metadata.annotations = Some(
                [(
                    "snapshot.storage.kubernetes.io/is-default-class".to_string(),
                    "true".to_string(),
                )]
                .into(),
            );
        }
        VolumeSnapshotClass {
            metadata,
            driver: driver.into(),
            deletion_policy: "Delete".into(),
            parameters: BTreeMap::new(),
        }
    }

    #[test]
    fn label_beats_annotation_and_override_beats_both() {
        let classes = vec![
            class("a", "d1", false, true),
            class("b", "d1", true, false),
            class("c", "d2", false, false),
        ];
        let none = BTreeMap::new();
        assert_eq!(choose_class(&classes, "d1", &none).as_deref(), Some("b"));
        assert_eq!(choose_class(&classes, "d2", &none), None);
        assert_eq!(choose_class(&classes, "d3", &none), None);
        let o = BTreeMap::from([("d2".to_string(), "x".to_string())]);
        assert_eq!(choose_class(&classes, "d2", &o).as_deref(), Some("x"));
        let only_annotated = vec![class("a", "d1", false, true)];
        assert_eq!(
            choose_class(&only_annotated, "d1", &none).as_deref(),
            Some("a")
        );
    }
}
