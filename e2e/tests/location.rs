//! The BackupStorageLocation controller against the real API server and MinIO: Available,
//! each failure reason, and recovery when the Secret is fixed, without restarting; which
//! namespaces may use a location; a location over TLS with a private CA.

use std::time::Duration;

use holdfast_api::backup::{Backup, BackupPhase, VolumePhase};
use holdfast_api::location::{BackupStorageLocation, LocationPhase};
use holdfast_api::restore::RestorePhase;
use holdfast_api::schedule::{Schedule, SchedulePhase};
use holdfast_e2e::operator::Operator;
use holdfast_e2e::ops::{wait_backup, wait_restore};
use holdfast_e2e::{TestNamespace, ensure_crds, env, wait_until};
use holdfast_store::Store;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};

async fn make_bucket(name: &str) {
    holdfast_e2e::app::make_bucket(name).await;
}

fn apply(ns: &str, yaml: &str) {
    env().apply_yaml(ns, yaml);
}

fn secret(name: &str, access: &str, secret: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}}}\nstringData: {{accessKeyId: {access}, secretAccessKey: {secret}}}\n"
    )
}

fn location(name: &str, bucket: &str, endpoint: &str, secret: &str) -> String {
    format!(
        "apiVersion: holdfast.dev/v1alpha1\nkind: BackupStorageLocation\nmetadata: {{name: {name}}}\nspec:\n  s3: {{bucket: {bucket}, endpoint: \"{endpoint}\", forcePathStyle: true, prefix: e2e}}\n  credentials: {{secretRef: {{name: {secret}}}}}\n  validationInterval: 5s\n"
    )
}

async fn wait_phase(
    client: &Client,
    ns: &str,
    name: &str,
    phase: LocationPhase,
    reason: Option<&str>,
) -> BackupStorageLocation {
    holdfast_e2e::wait_location(client, ns, name, phase, Some(reason)).await
}

#[tokio::test]
async fn location_reports_availability_and_specific_reasons() {
    ensure_crds();
    let e = env();
    let s3 = e.s3().clone();
    let client = e.client().await;
    let ns = TestNamespace::new(&client, "location").await;
    let bucket = format!("hf-loc-{}", holdfast_e2e::random_suffix());
    make_bucket(&bucket).await;
    // Its own namespace only: the other tests of this file run operators for other
    // namespaces at the same time, whose Backups this one must not take.
    let own = format!("--watch-namespaces={}", ns.name);
    let op = Operator::start(&ns.name, "loc-0", &[&own]);
    op.wait_ready().await;

    apply(&ns.name, &secret("good", &s3.access_key, &s3.secret_key));
    apply(&ns.name, &secret("bad", &s3.access_key, "wrong-secret-key"));
    apply(&ns.name, &location("ok", &bucket, &s3.endpoint, "good"));
    apply(
        &ns.name,
        &location("wrong-keys", &bucket, &s3.endpoint, "bad"),
    );
    apply(
        &ns.name,
        &location("no-bucket", "hf-does-not-exist", &s3.endpoint, "good"),
    );
    apply(
        &ns.name,
        &location("dead-endpoint", &bucket, "http://127.0.0.1:9", "good"),
    );
    apply(
        &ns.name,
        &location("no-secret", &bucket, &s3.endpoint, "missing"),
    );
    // MinIO knows STANDARD and REDUCED_REDUNDANCY only: the validation write says so.
    apply(
        &ns.name,
        &location("infrequent", &bucket, &s3.endpoint, "good").replace(
            "forcePathStyle: true,",
            "forcePathStyle: true, storageClass: STANDARD_IA,",
        ),
    );
    // TLS spoken to a plain-HTTP server: the handshake fails.
    let tls_endpoint = s3.endpoint.replacen("http://", "https://", 1);
    apply(
        &ns.name,
        &location("tls-mismatch", &bucket, &tls_endpoint, "good"),
    );

    let ok = wait_phase(&client, &ns.name, "ok", LocationPhase::Available, None).await;
    let status = ok.status.expect("status");
    assert!(status.last_validation_time.is_some());
    assert_eq!(status.observed_generation, ok.metadata.generation);
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready condition");
    assert_eq!(ready.status, "True");

    let bad = wait_phase(
        &client,
        &ns.name,
        "wrong-keys",
        LocationPhase::Unavailable,
        Some("InvalidCredentials"),
    )
    .await;
    let msg = bad.status.and_then(|s| s.message).unwrap_or_default();
    assert!(
        msg.contains("secretRef"),
        "message should say what to fix: {msg}"
    );
    wait_phase(
        &client,
        &ns.name,
        "no-bucket",
        LocationPhase::Unavailable,
        Some("BucketNotFound"),
    )
    .await;
    wait_phase(
        &client,
        &ns.name,
        "dead-endpoint",
        LocationPhase::Unavailable,
        Some("EndpointUnreachable"),
    )
    .await;
    wait_phase(
        &client,
        &ns.name,
        "no-secret",
        LocationPhase::Unavailable,
        Some("MissingCredentials"),
    )
    .await;
    let tls = wait_phase(
        &client,
        &ns.name,
        "tls-mismatch",
        LocationPhase::Unavailable,
        Some("TLSError"),
    )
    .await;
    let msg = tls.status.and_then(|s| s.message).unwrap_or_default();
    assert!(
        msg.contains("caBundle"),
        "TLS message should point at spec.s3.caBundle: {msg}"
    );

    let class = wait_phase(
        &client,
        &ns.name,
        "infrequent",
        LocationPhase::Unavailable,
        Some("InvalidStorageClass"),
    )
    .await;
    let msg = class.status.and_then(|s| s.message).unwrap_or_default();
    assert!(msg.contains("spec.s3.storageClass"), "{msg}");
    println!("storage class refused: {msg}");

    // Fixing the Secret makes the location Available again, without restarting the operator.
    apply(&ns.name, &secret("bad", &s3.access_key, &s3.secret_key));
    wait_phase(
        &client,
        &ns.name,
        "wrong-keys",
        LocationPhase::Available,
        None,
    )
    .await;

    // Events explain the transitions.
    let events = e.kubectl_ok([
        "get",
        "events",
        "-n",
        &ns.name,
        "-o",
        "jsonpath={range .items[*]}{.reason}{\"\\n\"}{end}",
    ]);
    assert!(
        events.contains("InvalidCredentials") && events.contains("Available"),
        "events: {events}"
    );
    // The marker object used to test write access is gone again.
    assert!(
        op.metric("holdfast_location_available{location=\"ok\"}") == Some(1.0),
        "metrics: {:?}",
        op.http_get("/metrics")
    );
}

#[tokio::test]
async fn only_the_oldest_default_location_is_the_default() {
    ensure_crds();
    let e = env();
    let s3 = e.s3().clone();
    let client = e.client().await;
    let ns = TestNamespace::new(&client, "default").await;
    let bucket = format!("hf-def-{}", holdfast_e2e::random_suffix());
    make_bucket(&bucket).await;
    // Its own namespace only: the other tests of this file run operators for other
    // namespaces at the same time, whose Backups this one must not take.
    let own = format!("--watch-namespaces={}", ns.name);
    let op = Operator::start(&ns.name, "def-0", &[&own]);
    op.wait_ready().await;
    apply(&ns.name, &secret("good", &s3.access_key, &s3.secret_key));
    apply(&ns.name, &location("first", &bucket, &s3.endpoint, "good"));
    apply(&ns.name, &location("second", &bucket, &s3.endpoint, "good"));
    let api: Api<BackupStorageLocation> = Api::namespaced(client.clone(), &ns.name);
    let pp = PatchParams::default();
    api.patch(
        "first",
        &pp,
        &Patch::Merge(serde_json::json!({"spec": {"default": true}})),
    )
    .await
    .expect("patch");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    api.patch(
        "second",
        &pp,
        &Patch::Merge(serde_json::json!({"spec": {"default": true}})),
    )
    .await
    .expect("patch");
    wait_until(
        "second to report DefaultConflict",
        Duration::from_secs(60),
        Some(&ns.name),
        || {
            let api = api.clone();
            async move {
                let l = api.get("second").await.ok()?;
                l.status?
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "DefaultConflict" && c.status == "True")
                    .then_some(())
            }
        },
    )
    .await;
    let first = api.get("first").await.expect("get first");
    assert!(
        !first
            .status
            .unwrap_or_default()
            .conditions
            .iter()
            .any(|c| c.type_ == "DefaultConflict"),
        "the oldest default must not report a conflict"
    );
}

/// A location's `allowedNamespaces` (names, or a selector on the namespace's labels) refuses
/// Backups, Restores and Schedules of other namespaces with `LocationNotAllowed`, naming the
/// location, the namespace and the field; the operator namespace (administrators) always may.
#[tokio::test]
async fn location_allowed_namespaces_refuse_other_namespaces() {
    ensure_crds();
    let e = env();
    let client = e.client().await;
    let opns = TestNamespace::new(&client, "allow-op").await;
    let named = TestNamespace::new(&client, "allow-named").await;
    let labelled = TestNamespace::new(&client, "allow-label").await;
    let other = TestNamespace::new(&client, "allow-other").await;
    let mark = holdfast_e2e::random_suffix();
    e.kubectl_ok([
        "label",
        "namespace",
        &labelled.name,
        &format!("holdfast-e2e-allowed={mark}"),
    ]);
    let bucket = format!("hf-allow-{}", holdfast_e2e::random_suffix());
    make_bucket(&bucket).await;
    let watch = format!(
        "--watch-namespaces={},{},{}",
        named.name, labelled.name, other.name
    );
    let op = Operator::start(&opns.name, "allow-0", &[&watch]);
    op.wait_ready().await;
    // The default location, allowing `named` by name and `labelled` by its label.
    let yaml = holdfast_e2e::app::location_yaml("primary", &bucket).replace(
        "  validationInterval: 10s\n",
        &format!(
            "  validationInterval: 10s\n  allowedNamespaces:\n    names: [{}]\n    selector: {{matchLabels: {{holdfast-e2e-allowed: \"{mark}\"}}}}\n",
            named.name
        ),
    );
    apply(&opns.name, &yaml);
    holdfast_e2e::wait_location(
        &client,
        &opns.name,
        "primary",
        LocationPhase::Available,
        None,
    )
    .await;
    for ns in [&named.name, &labelled.name, &other.name] {
        apply(
            ns,
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {a: b}\n",
        );
    }
    let backup = |name: &str, extra: &str| {
        format!(
            "apiVersion: holdfast.dev/v1alpha1\nkind: Backup\nmetadata: {{name: {name}}}\nspec: {{{extra}}}\n"
        )
    };
    apply(&named.name, &backup("mine", ""));
    apply(&labelled.name, &backup("mine", ""));
    apply(&other.name, &backup("mine", ""));
    // An administrator's backup of the refused namespace is allowed.
    apply(
        &opns.name,
        &backup("admin", &format!("includedNamespaces: [{}]", other.name)),
    );
    apply(
        &other.name,
        &format!(
            "apiVersion: holdfast.dev/v1alpha1\nkind: Schedule\nmetadata: {{name: nightly}}\nspec:\n  schedule: \"* * * * *\"\n  keep: {{last: 2}}\n  template: {{spec: {{includedNamespaces: [{}]}}}}\n",
            other.name
        ),
    );

    let t = Duration::from_secs(180);
    for ns in [&named.name, &labelled.name] {
        let b = wait_backup(&client, ns, "mine", t).await;
        let st = b.status.expect("status");
        assert_eq!(st.phase, Some(BackupPhase::Completed), "{ns}: {st:#?}");
    }
    let admin = wait_backup(&client, &opns.name, "admin", t).await;
    let st = admin.status.expect("status");
    assert_eq!(st.phase, Some(BackupPhase::Completed), "{st:#?}");

    let refused = wait_backup(&client, &other.name, "mine", t).await;
    let st = refused.status.expect("status");
    assert_eq!(st.phase, Some(BackupPhase::Failed), "{st:#?}");
    assert_eq!(st.reason.as_deref(), Some("LocationNotAllowed"), "{st:#?}");
    let msg = st.message.unwrap_or_default();
    for part in ["primary", other.name.as_str(), "spec.allowedNamespaces"] {
        assert!(msg.contains(part), "message should name {part}: {msg}");
    }
    println!("refused backup: {msg}");

    // The Schedule starts nothing and says why.
    let schedules: Api<Schedule> = Api::namespaced(client.clone(), &other.name);
    let s = wait_until(
        "schedule nightly to be refused",
        Duration::from_secs(60),
        Some(&other.name),
        || {
            let api = schedules.clone();
            async move {
                let s = api.get("nightly").await.ok()?;
                let st = s.status.clone()?;
                (st.reason.as_deref() == Some("LocationNotAllowed")).then_some(st)
            }
        },
    )
    .await;
    assert_eq!(s.phase, Some(SchedulePhase::Invalid), "{s:#?}");
    assert!(
        s.message
            .as_deref()
            .is_some_and(|m| m.contains("spec.allowedNamespaces")),
        "{s:#?}"
    );
    let backups: Api<Backup> = Api::namespaced(client.clone(), &other.name);
    let names: Vec<String> = backups
        .list(&Default::default())
        .await
        .expect("list backups")
        .items
        .iter()
        .map(|b| b.name_any())
        .collect();
    assert_eq!(names, ["mine"], "the schedule must not start runs");

    // A Restore in a namespace the location no longer allows is refused too: `named` made a
    // backup while allowed, then loses its place.
    api_patch_allowed(&client, &opns.name, &format!("[{}]", labelled.name)).await;
    apply(
        &named.name,
        "apiVersion: holdfast.dev/v1alpha1\nkind: Restore\nmetadata: {name: back}\nspec:\n  source: {backup: mine}\n",
    );
    let r = wait_restore(&client, &named.name, "back").await;
    let st = r.status.expect("status");
    assert_eq!(st.phase, Some(RestorePhase::Failed), "{st:#?}");
    assert_eq!(st.reason.as_deref(), Some("LocationNotAllowed"), "{st:#?}");
    let msg = st.message.unwrap_or_default();
    assert!(
        msg.contains(&named.name) && msg.contains("spec.allowedNamespaces"),
        "{msg}"
    );
    println!("refused restore: {msg}");

    for ns in [&named.name, &labelled.name, &other.name, &opns.name] {
        e.kubectl_ok([
            "delete",
            "backups,restores,schedules",
            "--all",
            "-n",
            ns,
            "--wait=true",
        ]);
    }
    drop(op);
}

/// Replaces the names `primary` allows.
async fn api_patch_allowed(client: &Client, ns: &str, names: &str) {
    let api: Api<BackupStorageLocation> = Api::namespaced(client.clone(), ns);
    let names: serde_json::Value = serde_yaml::from_str(names).expect("names");
    api.patch(
        "primary",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"allowedNamespaces": {"names": names}}})),
    )
    .await
    .expect("patch allowedNamespaces");
}

/// A MinIO serving TLS with a certificate for 127.0.0.1 from a throw-away CA; stopped and its
/// files removed on drop.
struct TlsMinio {
    child: std::process::Child,
    dir: std::path::PathBuf,
    endpoint: String,
    /// The CA certificate (PEM).
    ca: String,
}

impl Drop for TlsMinio {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let o = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

impl TlsMinio {
    /// Starts the server (`None` when there is no MinIO binary, after saying so).
    async fn start() -> Option<TlsMinio> {
        let Some(bin) = holdfast_store::testing::find_minio() else {
            holdfast_store::testing::prerequisite_missing("no minio binary for the TLS MinIO");
            return None;
        };
        let dir =
            std::env::temp_dir().join(format!("hf-tls-minio-{}", holdfast_e2e::random_suffix()));
        let certs = dir.join("certs");
        std::fs::create_dir_all(&certs).expect("mkdir");
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca_args = vec!["req", "-x509"];
        ca_args.extend(ec);
        ca_args.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=holdfast e2e CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(&dir, &ca_args);
        let mut csr_args = vec!["req"];
        csr_args.extend(ec);
        csr_args.extend([
            "-keyout",
            "certs/private.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        openssl(&dir, &csr_args);
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write ext");
        openssl(
            &dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "certs/public.crt",
                "-days",
                "2",
                "-extfile",
                "server.ext",
            ],
        );
        let ca = std::fs::read_to_string(dir.join("ca.crt")).expect("ca");
        let port = holdfast_store::testing::free_port().expect("port");
        let console = holdfast_store::testing::free_port().expect("port");
        let s3 = env().s3();
        let child = std::process::Command::new(bin)
            .args(["server", "--quiet", "--address"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--console-address")
            .arg(format!("127.0.0.1:{console}"))
            .arg("--certs-dir")
            .arg(&certs)
            .arg(dir.join("data"))
            .env("MINIO_ROOT_USER", &s3.access_key)
            .env("MINIO_ROOT_PASSWORD", &s3.secret_key)
            .env("MINIO_BROWSER", "off")
            .env("HOME", &dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("minio.log")).expect("log"))
            .spawn()
            .expect("start minio");
        let server = TlsMinio {
            child,
            endpoint: format!("https://127.0.0.1:{port}"),
            dir,
            ca,
        };
        Some(server)
    }

    /// A store on `bucket` of this server, trusting its CA.
    async fn store(&self, bucket: &str) -> holdfast_store::S3Store {
        let s3 = env().s3();
        let ca = self.dir.join("ca.crt");
        holdfast_store::S3Store::new(holdfast_store::S3Config {
            endpoint: Some(self.endpoint.clone()),
            region: Some(s3.region.clone()),
            bucket: bucket.into(),
            path_style: true,
            ca_bundle: Some(ca),
            access_key_id: Some(s3.access_key.clone()),
            secret_access_key: Some(s3.secret_key.clone()),
            ..Default::default()
        })
        .await
        .expect("s3 client")
    }
}

/// A location on an HTTPS MinIO whose certificate a private CA signed: with `s3.caBundle` it
/// is Available and a backup through it completes (the mover pods trust the CA too); without
/// it the location is Unavailable with `TLSError`; with `insecureSkipTlsVerify` it is Available
/// with the `InsecureTLS` warning, and its movers connect without verifying too.
#[tokio::test]
async fn location_over_tls_with_a_custom_ca() {
    ensure_crds();
    let Some(minio) = TlsMinio::start().await else {
        return;
    };
    let e = env();
    let s3 = e.s3().clone();
    let client = e.client().await;
    let opns = TestNamespace::new(&client, "tls-op").await;
    let app_ns = TestNamespace::new(&client, "tls-app").await;
    let bucket = format!("hf-tls-{}", holdfast_e2e::random_suffix());
    let store = minio.store(&bucket).await;
    wait_until(
        "the TLS MinIO to create a bucket",
        Duration::from_secs(60),
        None,
        || async { store.ensure_bucket().await.ok() },
    )
    .await;
    let watch = format!("--watch-namespaces={}", app_ns.name);
    let op = Operator::start(&opns.name, "tls-0", &[&watch]);
    op.wait_ready().await;
    apply(&opns.name, &secret("keys", &s3.access_key, &s3.secret_key));
    let ca_secret = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "minio-ca"},
        "stringData": {"ca.pem": minio.ca},
    });
    apply(
        &opns.name,
        &serde_json::to_string(&ca_secret).expect("json"),
    );
    // Each location its own prefix: a repository opens only with its location's password.
    let tls_location = |name: &str, extra: &str| {
        location(name, &bucket, &minio.endpoint, "keys").replace(
            "forcePathStyle: true, prefix: e2e",
            &format!("forcePathStyle: true, {extra} prefix: {name}"),
        )
    };
    apply(
        &opns.name,
        &tls_location(
            "with-ca",
            "caBundle: {secretRef: {name: minio-ca, key: ca.pem}},",
        ),
    );
    apply(&opns.name, &tls_location("without-ca", ""));
    apply(
        &opns.name,
        &tls_location("insecure", "insecureSkipTlsVerify: true,"),
    );

    let ok = wait_phase(
        &client,
        &opns.name,
        "with-ca",
        LocationPhase::Available,
        None,
    )
    .await;
    let conditions = ok.status.expect("status").conditions;
    assert!(
        !conditions.iter().any(|c| c.type_ == "InsecureTLS"),
        "{conditions:#?}"
    );
    let bad = wait_phase(
        &client,
        &opns.name,
        "without-ca",
        LocationPhase::Unavailable,
        Some("TLSError"),
    )
    .await;
    let msg = bad.status.and_then(|s| s.message).unwrap_or_default();
    assert!(msg.contains("caBundle"), "{msg}");
    println!("without the CA: {msg}");
    let insecure = wait_phase(
        &client,
        &opns.name,
        "insecure",
        LocationPhase::Available,
        None,
    )
    .await;
    let conditions = insecure.status.expect("status").conditions;
    let warning = conditions
        .iter()
        .find(|c| c.type_ == "InsecureTLS")
        .unwrap_or_else(|| panic!("InsecureTLS condition: {conditions:#?}"));
    assert_eq!(warning.status, "True");
    assert_eq!(warning.reason, "InsecureSkipTlsVerify");
    println!("insecure: {}: {}", warning.reason, warning.message);
    let events = e.kubectl_ok([
        "get",
        "events",
        "-n",
        &opns.name,
        "--field-selector",
        "involvedObject.name=insecure,type=Warning",
        "-o",
        "jsonpath={range .items[*]}{.reason}{\"\\n\"}{end}",
    ]);
    assert!(events.contains("InsecureSkipTlsVerify"), "events: {events}");

    // Backups through both usable locations: the mover pods reach the server as well.
    holdfast_e2e::app::deploy_seeded(&app_ns.name, 1).await;
    for loc in ["with-ca", "insecure"] {
        apply(
            &opns.name,
            &format!(
                "apiVersion: holdfast.dev/v1alpha1\nkind: Backup\nmetadata: {{name: via-{loc}}}\nspec:\n  storageLocation: {loc}\n  includedNamespaces: [{}]\n",
                app_ns.name
            ),
        );
    }
    for loc in ["with-ca", "insecure"] {
        let b = wait_backup(
            &client,
            &opns.name,
            &format!("via-{loc}"),
            Duration::from_secs(300),
        )
        .await;
        let st = b.status.expect("status");
        assert_eq!(
            st.phase,
            Some(BackupPhase::Completed),
            "{loc}: {st:#?}\n{}",
            holdfast_e2e::dump_namespace(&opns.name)
        );
        assert!(
            st.volumes.len() == 2 && st.volumes.iter().all(|v| v.phase == VolumePhase::Completed),
            "{loc}: {st:#?}"
        );
    }
    // The data is in the TLS server's bucket.
    let objects = store.list("").await.expect("list");
    assert!(
        objects.iter().any(|o| o.key.contains("/data/")),
        "no pack files in the TLS bucket: {:?}",
        objects.iter().map(|o| &o.key).collect::<Vec<_>>()
    );
    e.kubectl_ok([
        "delete",
        "backups",
        "--all",
        "-n",
        &opns.name,
        "--wait=true",
    ]);
    drop(op);
}

/// Temporary credentials from MinIO's STS (AssumeRole, signed with the testbed's keys):
/// access key id, secret and session token.
fn temporary_credentials() -> (String, String, String) {
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
    use std::io::{Read, Write};
    let s3 = env().s3();
    let body = "Action=AssumeRole&Version=2011-06-15&DurationSeconds=3600";
    let identity = aws_credential_types::Credentials::new(
        s3.access_key.clone(),
        s3.secret_key.clone(),
        None,
        None,
        "e2e",
    )
    .into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(&s3.region)
        .name("sts")
        .time(std::time::SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .expect("signing parameters")
        .into();
    let host = s3
        .endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let content_type = "application/x-www-form-urlencoded";
    let headers = [("host", host.as_str()), ("content-type", content_type)];
    let request = SignableRequest::new(
        "POST",
        format!("http://{host}/"),
        headers.into_iter(),
        SignableBody::Bytes(body.as_bytes()),
    )
    .expect("signable request");
    let (instructions, _) = sign(request, &params).expect("sign").into_parts();
    let mut raw = format!(
        "POST / HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in instructions.headers() {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    raw.push_str("\r\n");
    raw.push_str(body);
    let mut conn = std::net::TcpStream::connect(&host).expect("connect to MinIO");
    conn.write_all(raw.as_bytes()).expect("send AssumeRole");
    let mut answer = String::new();
    conn.read_to_string(&mut answer).expect("read AssumeRole");
    let tag = |t: &str| {
        let open = format!("<{t}>");
        let start = answer
            .find(&open)
            .unwrap_or_else(|| panic!("no {t} in the AssumeRole answer: {answer}"))
            + open.len();
        let end = answer[start..].find('<').expect("closing tag") + start;
        answer[start..end].to_string()
    };
    (
        tag("AccessKeyId"),
        tag("SecretAccessKey"),
        tag("SessionToken"),
    )
}

/// A credentials Secret with temporary credentials (`sessionToken`): the location is
/// Available and a backup through it completes, so the mover pods got the token too; the
/// same keys without the token are refused.
#[tokio::test]
async fn location_with_temporary_credentials_reaches_the_movers() {
    ensure_crds();
    let e = env();
    let client = e.client().await;
    let opns = TestNamespace::new(&client, "sts-op").await;
    let app_ns = TestNamespace::new(&client, "sts-app").await;
    let bucket = format!("hf-sts-{}", holdfast_e2e::random_suffix());
    make_bucket(&bucket).await;
    let watch = format!("--watch-namespaces={}", app_ns.name);
    let op = Operator::start(&opns.name, "sts-0", &[&watch]);
    op.wait_ready().await;
    let (access, secret_key, token) = temporary_credentials();
    let with_token = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "temporary"},
        "stringData": {"accessKeyId": access, "secretAccessKey": secret_key, "sessionToken": token},
    });
    apply(
        &opns.name,
        &serde_json::to_string(&with_token).expect("json"),
    );
    apply(&opns.name, &secret("no-token", &access, &secret_key));
    let s3 = e.s3().clone();
    apply(
        &opns.name,
        &location("sts", &bucket, &s3.endpoint, "temporary"),
    );
    apply(
        &opns.name,
        &location("sts-no-token", &bucket, &s3.endpoint, "no-token"),
    );
    wait_phase(&client, &opns.name, "sts", LocationPhase::Available, None).await;
    let refused = wait_phase(
        &client,
        &opns.name,
        "sts-no-token",
        LocationPhase::Unavailable,
        Some("InvalidCredentials"),
    )
    .await;
    println!(
        "without the token: {}",
        refused.status.and_then(|s| s.message).unwrap_or_default()
    );
    holdfast_e2e::app::deploy_seeded(&app_ns.name, 1).await;
    apply(
        &opns.name,
        &format!(
            "apiVersion: holdfast.dev/v1alpha1\nkind: Backup\nmetadata: {{name: temporary}}\nspec:\n  storageLocation: sts\n  includedNamespaces: [{}]\n",
            app_ns.name
        ),
    );
    let b = wait_backup(&client, &opns.name, "temporary", Duration::from_secs(300)).await;
    let st = b.status.expect("status");
    assert_eq!(
        st.phase,
        Some(BackupPhase::Completed),
        "{st:#?}\n{}",
        holdfast_e2e::dump_namespace(&opns.name)
    );
    assert!(
        st.volumes.len() == 2 && st.volumes.iter().all(|v| v.phase == VolumePhase::Completed),
        "{st:#?}"
    );
    e.kubectl_ok([
        "delete",
        "backups",
        "--all",
        "-n",
        &opns.name,
        "--wait=true",
    ]);
    drop(op);
}
