//! The location's passphrase (issue 15, item 1): every repository on a location opens with a
//! passphrase the user keeps outside the cluster, generated when the location names none.

use holdfast_api::location::BackupStorageLocation;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams};

use super::{Share, app, completed_backup, env, repo_password, setup};
use holdfast::storage::repository::REPOSITORY_NAMESPACE_LABEL;

/// restic's snapshot count of the app namespace's repository with `password`, or its error.
fn snapshot_count(bucket: &str, ns: &str, password: &str) -> Result<usize, String> {
    let out = app::restic(bucket, ns, password, &["snapshots", "--json", "--no-lock"]);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    Ok(v.as_array().map(Vec::len).unwrap_or(0))
}

async fn location(s: &super::Setup) -> BackupStorageLocation {
    Api::<BackupStorageLocation>::namespaced(s.client.clone(), &s.opns.name)
        .get("primary")
        .await
        .expect("get location")
}

async fn secret_value(s: &super::Setup, name: &str, key: &str) -> String {
    let sec = Api::<Secret>::namespaced(s.client.clone(), &s.opns.name)
        .get(name)
        .await
        .expect("get Secret");
    String::from_utf8(sec.data.expect("data")[key].0.clone()).expect("utf-8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repositories_open_with_the_locations_passphrase() {
    let s = setup("key", 2, &[], Share::Together).await;
    let e = env();
    let (opns, app_ns) = (s.opns.name.clone(), s.app_ns.name.clone());
    completed_backup(&s, "k1", "").await;

    // No spec.encryption: a generated passphrase, said loudly, with the export command.
    let bsl = location(&s).await;
    let st = bsl.status.expect("status");
    assert_eq!(
        st.passphrase.as_deref(),
        Some("holdfast-passphrase-primary/passphrase")
    );
    let cond = st
        .conditions
        .iter()
        .find(|c| c.type_ == "PassphraseGenerated")
        .expect("PassphraseGenerated condition");
    assert_eq!(cond.status, "True");
    assert!(
        cond.message.contains(&format!(
            "kubectl get secret -n {opns} holdfast-passphrase-primary"
        )),
        "{}",
        cond.message
    );
    let generated = secret_value(&s, "holdfast-passphrase-primary", "passphrase").await;
    // The stock restic opens the repository with it, as with the operator's own password.
    // (one repository snapshot per volume: the app has two claims)
    assert_eq!(snapshot_count(&s.bucket, &app_ns, &generated), Ok(2));
    let own = repo_password(&s.client, &opns, &app_ns).await;
    assert_ne!(own, generated);
    assert_eq!(snapshot_count(&s.bucket, &app_ns, &own), Ok(2));

    // The user's own passphrase: named by the location, added to the repository with the
    // next backup; the condition goes.
    let user = "a passphrase the administrator keeps in a safe";
    e.kubectl_ok([
        "create",
        "secret",
        "generic",
        "holdfast-location-key",
        "-n",
        &opns,
        &format!("--from-literal=passphrase={user}"),
    ]);
    e.kubectl_ok([
        "patch",
        "backupstoragelocation",
        "primary",
        "-n",
        &opns,
        "--type=merge",
        "-p",
        r#"{"spec":{"encryption":{"passphraseSecretRef":{"name":"holdfast-location-key","key":"passphrase"}}}}"#,
    ]);
    holdfast_e2e::wait_until(
        "the location to take the user's passphrase",
        std::time::Duration::from_secs(60),
        Some(&opns),
        || async {
            let st = location(&s).await.status?;
            (st.passphrase.as_deref() == Some("holdfast-location-key/passphrase")
                && !st
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "PassphraseGenerated"))
            .then_some(())
        },
    )
    .await;
    completed_backup(&s, "k2", "").await;
    assert_eq!(snapshot_count(&s.bucket, &app_ns, user), Ok(4));

    // The repository's password Secret lost (as on a new cluster): the next backup opens the
    // repository with the passphrase, which becomes its password.
    let secrets: Api<Secret> = Api::namespaced(s.client.clone(), &opns);
    let lp = ListParams::default().labels(&format!("{REPOSITORY_NAMESPACE_LABEL}={app_ns}"));
    for sec in secrets.list(&lp).await.expect("list").items {
        secrets
            .delete(
                sec.metadata.name.as_deref().expect("name"),
                &DeleteParams::default(),
            )
            .await
            .expect("delete repository Secret");
    }
    completed_backup(&s, "k3", "").await;
    assert_eq!(repo_password(&s.client, &opns, &app_ns).await, user);
    assert_eq!(snapshot_count(&s.bucket, &app_ns, user), Ok(6));
    super::delete_all(&s.client, &opns).await;
}
