//! The BackupStorageLocation controller against the real API server and MinIO: Available,
//! each failure reason, and recovery when the Secret is fixed, without restarting.

use std::time::Duration;

use holdfast_api::location::{BackupStorageLocation, LocationPhase};
use holdfast_e2e::operator::Operator;
use holdfast_e2e::{TestNamespace, ensure_crds, env, wait_until};
use kube::Client;
use kube::api::{Api, Patch, PatchParams};

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
    let op = Operator::start(&ns.name, "loc-0", &[]);
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
    let op = Operator::start(&ns.name, "def-0", &[]);
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
