//! The location's passphrase (issue 15, item 1): every repository on a location opens with a
//! passphrase the user keeps outside the cluster, generated when the location names none.

use holdfast::storage::layout::CATALOG;
use holdfast_api::location::{BackupStorageLocation, RotationPhase};
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
    let generated = holdfast_e2e::secret_value(
        &s.client,
        &opns,
        "holdfast-passphrase-primary",
        "passphrase",
    )
    .await;
    // The stock restic opens the repository with it, as with the operator's own password.
    // (one repository snapshot per volume: the app has two claims)
    assert_eq!(snapshot_count(&s.bucket, &app_ns, &generated), Ok(2));
    let own = repo_password(&s.client, &opns, &app_ns).await;
    assert_ne!(own, generated);
    assert_eq!(snapshot_count(&s.bucket, &app_ns, &own), Ok(2));

    // The user's own passphrase: named by the location, it replaces the generated one in
    // every repository (added first, then the old key files removed); the condition goes.
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
    let rot = location(&s)
        .await
        .status
        .and_then(|s| s.rotation)
        .expect("status.rotation");
    assert_eq!(rot.phase, RotationPhase::Completed, "{rot:#?}");
    assert_eq!(
        (rot.from.as_str(), rot.to.as_str()),
        (
            "holdfast-passphrase-primary/passphrase",
            "holdfast-location-key/passphrase"
        )
    );
    // The app's repository and the catalog.
    assert_eq!((rot.repositories, rot.rotated), (2, 2), "{rot:#?}");
    for repo in [app_ns.as_str(), CATALOG] {
        assert!(
            snapshot_count(&s.bucket, repo, user).is_ok(),
            "{repo} opens with the new passphrase"
        );
        let old = snapshot_count(&s.bucket, repo, &generated);
        assert!(
            old.is_err(),
            "{repo} still opens with the old passphrase: {old:?}"
        );
    }
    assert_eq!(
        snapshot_count(&s.bucket, &app_ns, &own),
        Ok(2),
        "the operator's own password stays"
    );
    completed_backup(&s, "k2", "").await;
    assert_eq!(snapshot_count(&s.bucket, &app_ns, user), Ok(4));

    // Rotated again, the old Secret deleted meanwhile: the new passphrase is added, the old
    // key files cannot be found without it and stay, and the status says so.
    let user2 = "the passphrase of next year, also in the safe";
    e.kubectl_ok([
        "create",
        "secret",
        "generic",
        "holdfast-location-key-2",
        "-n",
        &opns,
        &format!("--from-literal=passphrase={user2}"),
    ]);
    e.kubectl_ok(["delete", "secret", "holdfast-location-key", "-n", &opns]);
    e.kubectl_ok([
        "patch",
        "backupstoragelocation",
        "primary",
        "-n",
        &opns,
        "--type=merge",
        "-p",
        r#"{"spec":{"encryption":{"passphraseSecretRef":{"name":"holdfast-location-key-2","key":"passphrase"}}}}"#,
    ]);
    let rot = holdfast_e2e::wait_until(
        "the second rotation",
        std::time::Duration::from_secs(60),
        Some(&opns),
        || async {
            let st = location(&s).await.status?;
            let r = st.rotation?;
            (st.passphrase.as_deref() == Some("holdfast-location-key-2/passphrase")
                && r.phase == RotationPhase::Completed)
                .then_some(r)
        },
    )
    .await;
    let m = rot.message.unwrap_or_default();
    assert!(
        m.contains("is gone") && m.contains("restic key remove"),
        "{m}"
    );
    assert_eq!(snapshot_count(&s.bucket, &app_ns, user2), Ok(4));
    assert_eq!(
        snapshot_count(&s.bucket, &app_ns, user),
        Ok(4),
        "the old key files stay"
    );

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
    assert_eq!(repo_password(&s.client, &opns, &app_ns).await, user2);
    assert_eq!(snapshot_count(&s.bucket, &app_ns, user2), Ok(6));
    super::delete_all(&s.client, &opns).await;
}
