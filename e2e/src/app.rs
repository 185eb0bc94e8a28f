//! A sample application with data in PersistentVolumeClaims, and ways to look at that data:
//! what the backup and restore scenarios protect and compare.

use std::time::Duration;

use holdfast_store::{S3Config, S3Store};

use crate::{env, wait_until};

/// A store over bucket `bucket` of the testbed's MinIO (keys from the bucket's root).
pub async fn s3_store(bucket: &str) -> S3Store {
    let s3 = env().s3();
    S3Store::new(S3Config {
        endpoint: Some(s3.endpoint.clone()),
        region: Some(s3.region.clone()),
        bucket: bucket.to_string(),
        prefix: String::new(),
        path_style: true,
        ca_bundle: None,
        insecure_skip_tls_verify: false,
        access_key_id: Some(s3.access_key.clone()),
        secret_access_key: Some(s3.secret_key.clone()),
        session_token: None,
        storage_class: None,
        retry: Default::default(),
        payload: Default::default(),
    })
    .await
    .expect("s3 client")
}

/// Creates bucket `name` on the testbed's MinIO.
pub async fn make_bucket(name: &str) {
    s3_store(name)
        .await
        .ensure_bucket()
        .await
        .expect("create bucket");
}

/// A location `name` in namespace `ns` on `bucket` (prefix `e2e`), marked default, with its
/// credentials Secret.
pub fn location_yaml(name: &str, bucket: &str) -> String {
    let s3 = env().s3();
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}-credentials}}\nstringData: {{accessKeyId: {}, secretAccessKey: {}}}\n---\napiVersion: holdfast.dev/v1alpha1\nkind: BackupStorageLocation\nmetadata: {{name: {name}}}\nspec:\n  default: true\n  s3: {{bucket: {bucket}, endpoint: \"{}\", region: {}, forcePathStyle: true, prefix: e2e}}\n  credentials: {{secretRef: {{name: {name}-credentials}}}}\n  validationInterval: 10s\n",
        s3.access_key, s3.secret_key, s3.endpoint, s3.region
    )
}

/// The BackupStorageLocation of [`location_yaml`], as an object (for the bucket layout).
pub fn location(name: &str, bucket: &str) -> holdfast_api::BackupStorageLocation {
    let yaml = location_yaml(name, bucket);
    let doc = yaml.split("---\n").nth(1).expect("location document");
    serde_yaml::from_str(doc).expect("location yaml")
}

/// Shell run by the sample pods: seed `/data` once (random blob of `mib` MiB, 200 small
/// text files, a nested file, a symlink), then wait.
fn seed_script(mib: u32) -> String {
    format!(
        "set -e; if [ ! -f /data/.seeded ]; then head -c {mib}M /dev/urandom > /data/blob; mkdir -p /data/dir/sub; echo hello > /data/dir/sub/hello.txt; i=0; while [ $i -lt 200 ]; do echo \"line $i of $HOSTNAME\" > /data/dir/f$i.txt; i=$((i+1)); done; ln -sf dir/sub/hello.txt /data/link; touch /data/.seeded; fi; exec sleep 100000"
    )
}

/// The sample application: ConfigMap, Secret, Service, a Deployment `writer` with claim
/// `writer-data`, and a StatefulSet `web` whose claim template gives `data-web-0`. Every
/// object carries `app.kubernetes.io/part-of: shop`.
pub fn sample_app_yaml(mib: u32) -> String {
    let script = seed_script(mib).replace('"', "\\\"");
    format!(
        r#"apiVersion: v1
kind: ConfigMap
metadata: {{name: settings, labels: {{app.kubernetes.io/part-of: shop}}}}
data: {{greeting: hello, mode: production}}
---
apiVersion: v1
kind: Secret
metadata: {{name: db-password, labels: {{app.kubernetes.io/part-of: shop}}}}
stringData: {{password: s3cr3t-value}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, labels: {{app.kubernetes.io/part-of: shop}}}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: writer-data, labels: {{app.kubernetes.io/part-of: shop}}}}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: standard
  resources: {{requests: {{storage: 256Mi}}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: writer, labels: {{app.kubernetes.io/part-of: shop}}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: writer}}}}
  template:
    metadata: {{labels: {{app: writer, app.kubernetes.io/part-of: shop}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: busybox
        command: [sh, -c, "{script}"]
        volumeMounts: [{{name: data, mountPath: /data}}]
      volumes:
      - name: data
        persistentVolumeClaim: {{claimName: writer-data}}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: web, labels: {{app.kubernetes.io/part-of: shop}}}}
spec:
  serviceName: web
  replicas: 1
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web, app.kubernetes.io/part-of: shop}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: busybox
        command: [sh, -c, "{script}"]
        volumeMounts: [{{name: data, mountPath: /data}}]
  volumeClaimTemplates:
  - metadata: {{name: data, labels: {{app.kubernetes.io/part-of: shop}}}}
    spec:
      accessModes: [ReadWriteOnce]
      storageClassName: standard
      resources: {{requests: {{storage: 256Mi}}}}
"#
    )
}

/// A volume no CSI driver manages (so it has no snapshot class): a `local` PersistentVolume
/// `pv` at `dir` on node `node` (required node affinity), StorageClass name `manual`, bound
/// to claim `live-data`, written by a Deployment `live` (exec target `deploy/live`) with the
/// same seed as the sample app.
pub fn live_app_yaml(pv: &str, dir: &str, node: &str, mib: u32) -> String {
    let script = seed_script(mib).replace('"', "\\\"");
    format!(
        r#"apiVersion: v1
kind: PersistentVolume
metadata: {{name: {pv}, labels: {{holdfast.dev/e2e: "true"}}}}
spec:
  capacity: {{storage: 256Mi}}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: manual
  local: {{path: {dir}}}
  nodeAffinity:
    required:
      nodeSelectorTerms:
      - matchExpressions: [{{key: kubernetes.io/hostname, operator: In, values: [{node}]}}]
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: live-data}}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: manual
  volumeName: {pv}
  resources: {{requests: {{storage: 256Mi}}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: live}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: live}}}}
  template:
    metadata: {{labels: {{app: live}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: busybox
        command: [sh, -c, "{script}"]
        volumeMounts: [{{name: data, mountPath: /data}}]
      volumes:
      - name: data
        persistentVolumeClaim: {{claimName: live-data}}
"#
    )
}

/// A `hostPath` PersistentVolume `pv` at `dir` (StorageClass name `manual`) bound to claim
/// `host-data`, with no pod using it.
pub fn host_path_claim_yaml(pv: &str, dir: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: PersistentVolume
metadata: {{name: {pv}, labels: {{holdfast.dev/e2e: "true"}}}}
spec:
  capacity: {{storage: 64Mi}}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: manual
  hostPath: {{path: {dir}, type: DirectoryOrCreate}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: host-data}}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: manual
  volumeName: {pv}
  resources: {{requests: {{storage: 64Mi}}}}
"#
    )
}

/// The two workloads of the sample app, as `kubectl exec` targets.
pub const WORKLOADS: [&str; 2] = ["deploy/writer", "statefulset/web"];

/// Waits until `target`'s pod has seeded its data.
pub async fn wait_seeded(ns: &str, target: &str) {
    wait_seeded_on(env(), ns, target).await
}

/// [`wait_seeded`] on the cluster of `e`.
pub async fn wait_seeded_on(e: &crate::Env, ns: &str, target: &str) {
    wait_until(
        &format!("{target} in {ns} to seed its volume"),
        Duration::from_secs(180),
        Some(ns),
        || async move {
            let o = e.kubectl([
                "exec",
                "-n",
                ns,
                target,
                "--",
                "test",
                "-f",
                "/data/.seeded",
            ]);
            o.status.success().then_some(())
        },
    )
    .await;
}

/// `sha256sum` of every file under `/data` of `target`'s pod, sorted by path, plus the
/// symlink targets: equal lists mean byte-identical contents.
pub fn volume_checksums(ns: &str, target: &str) -> String {
    volume_checksums_on(env(), ns, target)
}

/// [`volume_checksums`] on the cluster of `e`.
pub fn volume_checksums_on(e: &crate::Env, ns: &str, target: &str) -> String {
    e.kubectl_ok([
        "exec",
        "-n",
        ns,
        target,
        "--",
        "sh",
        "-c",
        "cd /data && find . -type f ! -name .seeded | LC_ALL=C sort | while read -r f; do sha256sum \"$f\"; done; for l in $(find . -type l | LC_ALL=C sort); do echo \"$l -> $(readlink \"$l\")\"; done",
    ])
}

/// Runs a shell command in `target`'s pod.
pub fn sh(ns: &str, target: &str, script: &str) -> String {
    env().kubectl_ok(["exec", "-n", ns, target, "--", "sh", "-c", script])
}

/// `restic snapshots --json` of the repository of `source_ns` in `bucket` (prefix `e2e`).
pub fn restic_snapshots(bucket: &str, source_ns: &str, password: &str) -> serde_json::Value {
    let out = restic(
        bucket,
        source_ns,
        password,
        &["snapshots", "--json", "--no-lock"],
    );
    assert!(
        out.status.success(),
        "restic snapshots failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("restic json")
}

/// Restores the catalog record of the Backup with uid `uid` (its `metadata.json` and object
/// archive) from `bucket` into `dir` with the stock `restic` and `password`.
pub fn restore_record(bucket: &str, password: &str, uid: &str, dir: &std::path::Path) {
    let tag = format!("uid:{uid}");
    let out = restic(
        bucket,
        holdfast::storage::layout::CATALOG,
        password,
        &[
            "restore",
            "latest",
            "--no-lock",
            "--tag",
            &tag,
            "--target",
            dir.to_str().expect("utf-8"),
        ],
    );
    assert!(
        out.status.success(),
        "restic restore of the record of {uid} from the catalog: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs the stock `restic` on the repository of `source_ns` in `bucket`.
pub fn restic(
    bucket: &str,
    source_ns: &str,
    password: &str,
    args: &[&str],
) -> std::process::Output {
    let s3 = env().s3();
    std::process::Command::new("restic")
        .args(args)
        .env(
            "RESTIC_REPOSITORY",
            holdfast::storage::layout::repository_url(&location("primary", bucket), source_ns),
        )
        .env("RESTIC_PASSWORD", password)
        .env("AWS_ACCESS_KEY_ID", &s3.access_key)
        .env("AWS_SECRET_ACCESS_KEY", &s3.secret_key)
        .output()
        .expect("run restic")
}

/// Deploys the sample application into `ns` (`mib` MiB in each claim) and waits until both
/// workloads wrote their data.
pub async fn deploy_seeded(ns: &str, mib: u32) {
    deploy_seeded_on(env(), ns, mib).await
}

/// [`deploy_seeded`] on the cluster of `e`.
pub async fn deploy_seeded_on(e: &crate::Env, ns: &str, mib: u32) {
    e.apply_yaml(ns, &sample_app_yaml(mib));
    for w in WORKLOADS {
        wait_seeded_on(e, ns, w).await;
    }
}

/// Creates the BackupStorageLocation `primary` on `bucket` in `ns` (an operator namespace)
/// and waits until it is Available.
pub async fn primary_location(client: &kube::Client, ns: &str, bucket: &str) {
    crate::env().apply_yaml(ns, &location_yaml("primary", bucket));
    crate::wait_location(
        client,
        ns,
        "primary",
        holdfast_api::location::LocationPhase::Available,
        None,
    )
    .await;
}
