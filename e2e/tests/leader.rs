//! Leader election with two operator replicas against the real API server: only the leader
//! reconciles, and when it is killed the other takes over within the lease time.

use std::time::{Duration, Instant};

use holdfast_api::location::{BackupStorageLocation, LocationPhase};
use holdfast_e2e::operator::Operator;
use holdfast_e2e::{TestNamespace, ensure_crds, env, wait_until};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;

const LEASE_SECONDS: u64 = 8;

fn location(name: &str) -> String {
    // Endpoint that refuses connections: reconciling it is quick and visible in status.
    format!(
        "apiVersion: holdfast.dev/v1alpha1\nkind: BackupStorageLocation\nmetadata: {{name: {name}}}\nspec:\n  s3: {{bucket: unused, endpoint: \"http://127.0.0.1:9\"}}\n"
    )
}

async fn reconciled(api: &Api<BackupStorageLocation>, name: &str, ns: &str) {
    let client = api.clone().into_client();
    holdfast_e2e::wait_location(&client, ns, name, LocationPhase::Unavailable, None).await;
}

#[tokio::test]
async fn only_the_leader_reconciles_and_a_standby_takes_over() {
    ensure_crds();
    let e = env();
    let client = e.client().await;
    let ns = TestNamespace::new(&client, "leader").await;
    let lease_arg = format!("{LEASE_SECONDS}s");
    let args = ["--lease-duration", lease_arg.as_str()];
    let mut a = Operator::start(&ns.name, "replica-a", &args);
    a.wait_ready().await;
    let b = Operator::start(&ns.name, "replica-b", &args);
    b.wait_ready().await;

    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns.name);
    let holder = wait_until(
        "a lease holder",
        Duration::from_secs(30),
        Some(&ns.name),
        || {
            let leases = leases.clone();
            async move {
                leases
                    .get_opt("holdfast-controller")
                    .await
                    .ok()??
                    .spec?
                    .holder_identity
                    .filter(|h| !h.is_empty())
            }
        },
    )
    .await;
    assert_eq!(holder, "replica-a", "the first replica should lead");

    e.apply_yaml(&ns.name, &location("one"));
    let bsl: Api<BackupStorageLocation> = Api::namespaced(client.clone(), &ns.name);
    reconciled(&bsl, "one", &ns.name).await;

    assert_eq!(
        a.metric("holdfast_leader "),
        Some(1.0),
        "leader metric of a"
    );
    assert_eq!(
        b.metric("holdfast_leader "),
        Some(0.0),
        "leader metric of b"
    );
    assert!(
        a.metric("holdfast_reconciles_total{controller=\"location\"}")
            .unwrap_or(0.0)
            >= 1.0,
        "leader reconciled"
    );
    // The series exists from start-up, at zero.
    assert_eq!(
        b.metric("holdfast_reconciles_total{controller=\"location\"}"),
        Some(0.0),
        "the standby must not reconcile:\n{}",
        b.logs()
    );

    // Crash the leader: no release, the lease has to expire.
    let killed = Instant::now();
    a.kill();
    let b_port = b.http_port;
    wait_until(
        "replica-b to take over",
        Duration::from_secs(LEASE_SECONDS * 3),
        Some(&ns.name),
        || async move {
            holdfast_e2e::operator::http_get(b_port, "/metrics")
                .filter(|(_, body)| body.lines().any(|l| l == "holdfast_leader 1"))
                .map(|_| ())
        },
    )
    .await;
    let took = killed.elapsed();
    // Expiry of the lease plus one retry interval (lease/5) is the most it may take.
    let bound = Duration::from_secs(LEASE_SECONDS)
        + Duration::from_secs(LEASE_SECONDS) / 5
        + Duration::from_secs(2);
    assert!(
        took <= bound,
        "takeover took {took:?}, more than the lease time bound {bound:?}"
    );
    eprintln!("takeover after leader crash: {took:?} (lease {LEASE_SECONDS}s)");

    e.apply_yaml(&ns.name, &location("two"));
    reconciled(&bsl, "two", &ns.name).await;
    let holder = leases
        .get("holdfast-controller")
        .await
        .expect("lease")
        .spec
        .and_then(|s| s.holder_identity);
    assert_eq!(holder.as_deref(), Some("replica-b"));
}

#[tokio::test]
async fn a_graceful_stop_hands_over_at_once() {
    ensure_crds();
    let e = env();
    let client = e.client().await;
    let ns = TestNamespace::new(&client, "handover").await;
    let args = ["--lease-duration", "30s"];
    let a = Operator::start(&ns.name, "replica-a", &args);
    a.wait_ready().await;
    let b = Operator::start(&ns.name, "replica-b", &args);
    b.wait_ready().await;
    let a_port = a.http_port;
    wait_until(
        "replica-a to lead",
        Duration::from_secs(30),
        Some(&ns.name),
        || async move {
            holdfast_e2e::operator::http_get(a_port, "/metrics")
                .filter(|(_, b)| b.lines().any(|l| l == "holdfast_leader 1"))
                .map(|_| ())
        },
    )
    .await;
    // SIGTERM: the leader releases the lease, so the standby does not wait 30s.
    let pid = a.child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let start = Instant::now();
    let b_port = b.http_port;
    wait_until(
        "replica-b to take over after a graceful stop",
        Duration::from_secs(20),
        Some(&ns.name),
        || async move {
            holdfast_e2e::operator::http_get(b_port, "/metrics")
                .filter(|(_, b)| b.lines().any(|l| l == "holdfast_leader 1"))
                .map(|_| ())
        },
    )
    .await;
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "handover took {:?}; the lease was not released",
        start.elapsed()
    );
    drop(a);
}
