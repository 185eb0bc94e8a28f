//! Hook specifications: commands run in application containers around snapshots and after restores.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Duration, LabelSelector};

/// Hooks of a Backup: rules that select pods and the commands to run in them.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupHooks {
    /// Rules, each selecting pods and naming the commands run before and after the snapshot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub rules: Vec<BackupHookRule>,
}

/// Selects pods and the hooks run in them around the snapshot of their volumes.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.pre) && size(self.pre) > 0) || (has(self.post) && size(self.post) > 0)").message("a hook rule needs at least one pre or post hook"))]
pub struct BackupHookRule {
    /// Name of the rule, shown in status and Events.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Namespaces whose pods this rule applies to (default: all namespaces of the backup).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub included_namespaces: Vec<String>,
    /// Namespaces excluded from this rule.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub excluded_namespaces: Vec<String>,
    /// Pods whose labels match this selector (default: all pods of the selected namespaces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<LabelSelector>,
    /// Commands run, in order, before the snapshots are taken.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub pre: Vec<Hook>,
    /// Commands run, in order, after the snapshots are taken (even when a snapshot failed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub post: Vec<Hook>,
}

/// One hook.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Hook {
    /// Run a command in a container of the pod.
    pub exec: ExecHook,
}

/// A command run inside an application container.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecHook {
    /// Container to run in (default: the pod's first container).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub container: Option<String>,
    /// Command and arguments; not run through a shell unless you name one.
    #[schemars(length(min = 1, max = 64))]
    pub command: Vec<String>,
    /// What a failing hook does: `Fail` (default) fails the backup, `Continue` records the failure and goes on.
    #[serde(default)]
    pub on_error: HookErrorMode,
    /// How long the command may run (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

/// What a failing hook does to the operation.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum HookErrorMode {
    /// The operation fails (post hooks still run).
    #[default]
    Fail,
    /// The failure is recorded and the operation continues.
    Continue,
}

/// Hooks of a Restore.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreHooks {
    /// Rules selecting restored pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub rules: Vec<RestoreHookRule>,
}

/// Selects restored pods and what to run in them.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.initContainers) && size(self.initContainers) > 0) || (has(self.postExec) && size(self.postExec) > 0)").message("a restore hook rule needs initContainers or postExec"))]
pub struct RestoreHookRule {
    /// Name of the rule.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Namespaces (after mapping) whose restored pods this rule applies to (default: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub included_namespaces: Vec<String>,
    /// Restored pods whose labels match this selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<LabelSelector>,
    /// Init containers added to restored pods, run before their own init containers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub init_containers: Vec<k8s_openapi::api::core::v1::Container>,
    /// Commands run in restored pods once they are Ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub post_exec: Vec<ExecHook>,
    /// How long `postExec` waits for a restored pod to be Ready before the hook fails
    /// (default 10m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_timeout: Option<Duration>,
}
