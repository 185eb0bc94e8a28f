//! Nothing readable in the bucket (issue 15, item 2): after a backup of a namespace holding a
//! Secret, a ConfigMap and a file that carry a marker, no object in the bucket holds the
//! marker (plain, base64 at any alignment, inside a gzip or zstd stream) nor the captured
//! object's name, in its content or its key. The stock restic restores the objects from the
//! location's catalog, where the marker is (so the scan looks for what was backed up).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use holdfast::storage::layout::CATALOG;
use holdfast_api::restore::RestorePhase;
use holdfast_store::Store;
use std::io::Read;

use super::{Share, app, completed_backup, env, repo_password, setup};

/// The strings that give `needle` away: itself and its base64 encodings at the three byte
/// alignments (without the characters its neighbours change).
fn giveaways(needle: &str) -> Vec<Vec<u8>> {
    let mut out = vec![needle.as_bytes().to_vec()];
    for k in 0..3 {
        let mut b = vec![0u8; k];
        b.extend_from_slice(needle.as_bytes());
        let enc = B64.encode(&b);
        let skip = if k == 0 { 0 } else { 4 };
        out.push(enc.as_bytes()[skip..enc.len() - 4].to_vec());
    }
    out
}

/// The object and what a gzip or zstd stream at its start decodes to.
fn readings(data: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![data.to_vec()];
    if data.starts_with(&[0x1f, 0x8b]) {
        let mut d = Vec::new();
        if flate2::read::GzDecoder::new(data)
            .read_to_end(&mut d)
            .is_ok()
        {
            out.push(d);
        }
    }
    if data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
        && let Ok(d) = zstd::stream::decode_all(data)
    {
        out.push(d);
    }
    out
}

fn holds(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_readable_in_the_bucket() {
    let s = setup("conf", 2, &[], Share::Together).await;
    let e = env();
    let (opns, app_ns) = (s.opns.name.clone(), s.app_ns.name.clone());
    let marker = format!("marker-{}-do-not-leak", holdfast_e2e::random_suffix());
    let object = format!("confidential-{}", holdfast_e2e::random_suffix());
    e.apply_yaml(
        &app_ns,
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: {object}}}\nstringData: {{token: {marker}}}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {object}}}\ndata: {{note: {marker}}}\n"
        ),
    );
    app::sh(
        &app_ns,
        "deploy/writer",
        &format!("echo {marker} > /data/marker.txt && sync"),
    );
    let b = completed_backup(&s, "conf", "").await;

    let store = app::s3_store(&s.bucket).await;
    let keys = store.list("").await.expect("list the bucket");
    assert!(keys.len() > 10, "{} objects", keys.len());
    let needles: Vec<Vec<u8>> = giveaways(&marker)
        .into_iter()
        .chain(giveaways(&object))
        .collect();
    let mut scanned = 0u64;
    for o in &keys {
        assert!(
            !o.key.contains(&object) && !o.key.contains("conf/"),
            "an object name gives the backup away: {}",
            o.key
        );
        let data = store.get(&o.key).await.expect("get");
        scanned += data.len() as u64;
        for r in readings(&data) {
            for n in &needles {
                assert!(
                    !holds(&r, n),
                    "{} holds {:?} in the clear",
                    o.key,
                    String::from_utf8_lossy(n)
                );
            }
        }
    }
    eprintln!("scanned {} objects, {scanned} bytes", keys.len());

    // The stock restic restores the objects from the catalog: the Secret is there.
    // With the user's passphrase alone (the catalog's own password is another key).
    let password = holdfast_e2e::secret_value(
        &s.client,
        &opns,
        "holdfast-passphrase-primary",
        "passphrase",
    )
    .await;
    let dir = std::env::temp_dir().join(format!("hf-conf-{}", holdfast_e2e::random_suffix()));
    let uid = b.metadata.uid.clone().unwrap_or_default();
    app::restore_record(&s.bucket, &password, &uid, &dir);
    let tar_bytes = std::fs::read(dir.join("resources.tar")).expect("resources.tar restored");
    let mut secret = None;
    let mut archive = tar::Archive::new(tar_bytes.as_slice());
    for entry in archive.entries().expect("tar") {
        let mut entry = entry.expect("entry");
        let path = entry.path().expect("path").to_string_lossy().into_owned();
        if path.contains("secrets.core") && path.ends_with(&format!("{object}.json")) {
            let mut v = String::new();
            entry.read_to_string(&mut v).expect("read");
            secret = Some(v);
        }
    }
    let secret = secret.expect("the Secret in the restored archive");
    assert!(secret.contains(&B64.encode(&marker)), "{secret}");
    let md = std::fs::read_to_string(dir.join("metadata.json")).expect("metadata.json restored");
    assert!(md.contains("\"Completed\""), "{md}");

    // The user's passphrase alone: restic checks every byte of the catalog and of the
    // volumes' repository, and restores the volume with the marked file.
    for repo in [CATALOG, app_ns.as_str()] {
        let out = app::restic(&s.bucket, repo, &password, &["check", "--read-data"]);
        assert!(
            out.status.success(),
            "restic check --read-data of {repo} with the passphrase: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let writer = b
        .status
        .as_ref()
        .expect("status")
        .volumes
        .iter()
        .find(|v| v.pvc.name == "writer-data")
        .and_then(|v| v.copy.as_ref())
        .and_then(|c| c.snapshot_id.clone())
        .expect("the writer volume's copy");
    let vol = dir.join("volume");
    let out = app::restic(
        &s.bucket,
        &app_ns,
        &password,
        &["restore", &writer, "--target", vol.to_str().expect("utf-8")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let found = std::fs::read_to_string(vol.join("marker.txt")).expect("marker.txt restored");
    assert_eq!(found.trim(), marker);
    let _ = std::fs::remove_dir_all(&dir);

    // A flipped byte in the record's objects: the restore fails naming what is damaged, and
    // restores nothing.
    let catalog = format!(
        "{}/data/",
        holdfast::storage::layout::repository_prefix(&app::location("primary", &s.bucket), CATALOG)
    );
    let packs = store.list(&catalog).await.expect("list catalog packs");
    let biggest = packs.iter().max_by_key(|o| o.size).expect("a catalog pack");
    let mut bytes = store.get(&biggest.key).await.expect("get pack").to_vec();
    bytes[100] ^= 0x20;
    store
        .put(&biggest.key, bytes.into())
        .await
        .expect("put damaged pack");
    let target = format!("{app_ns}-again");
    e.apply_yaml(
        &opns,
        &super::restore_yaml(
            "damaged",
            &format!("  source: {{backup: conf}}\n  namespaceMapping: {{{app_ns}: {target}}}\n"),
        ),
    );
    let r = super::wait_restore(&s.client, &opns, "damaged").await;
    let st = r.status.expect("status");
    assert_eq!(
        (st.phase, st.reason.as_deref()),
        (Some(RestorePhase::Failed), Some("BackupCorrupt")),
        "{st:#?}"
    );
    let why = st.message.unwrap_or_default();
    assert!(
        why.contains("resources.tar")
            && why.contains(biggest.key.rsplit('/').next().unwrap_or("?")),
        "{why}"
    );
    let created = e.kubectl(["get", "namespace", &target]);
    assert!(
        !created.status.success(),
        "a damaged backup restored namespace {target}"
    );
}

/// A backup written before the catalog (its `metadata.json` and `resources.tar.gz` plain in
/// the bucket, no record in the catalog) still restores, byte for byte, and deleting it
/// removes those objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_written_before_the_catalog_still_restore() {
    let s = setup("legacy", 2, &[], Share::Together).await;
    let e = env();
    let (opns, app_ns) = (s.opns.name.clone(), s.app_ns.name.clone());
    let b = completed_backup(&s, "old", "").await;
    let before = super::checksums(&app_ns);
    // Turn it into the old layout: its record's two files go plain into the bucket under the
    // backup's prefix, and the record leaves the catalog.
    let password = repo_password(&s.client, &opns, CATALOG).await;
    let uid = b.metadata.uid.clone().unwrap_or_default();
    let dir = std::env::temp_dir().join(format!("hf-legacy-{}", holdfast_e2e::random_suffix()));
    app::restore_record(&s.bucket, &password, &uid, &dir);
    let uid = format!("uid:{uid}");
    let tar = std::fs::read(dir.join("resources.tar")).expect("resources.tar");
    let md = std::fs::read(dir.join("metadata.json")).expect("metadata.json");
    let _ = std::fs::remove_dir_all(&dir);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &tar).expect("gzip");
    let gz = gz.finish().expect("gzip");
    let store = app::s3_store(&s.bucket).await;
    let prefix = super::backup_prefix(&s, &opns, "old");
    store
        .put(&format!("{prefix}resources.tar.gz"), gz.into())
        .await
        .expect("put archive");
    store
        .put(&format!("{prefix}metadata.json"), md.into())
        .await
        .expect("put metadata");
    let listed = app::restic(
        &s.bucket,
        CATALOG,
        &password,
        &["snapshots", "--json", "--no-lock", "--tag", &uid],
    );
    let snaps: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("json");
    for id in snaps
        .as_array()
        .expect("snapshots")
        .iter()
        .filter_map(|v| v["id"].as_str())
    {
        let out = app::restic(&s.bucket, CATALOG, &password, &["forget", id]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let target = format!("{app_ns}-legacy");
    e.apply_yaml(
        &opns,
        &super::restore_yaml(
            "from-old",
            &format!("  source: {{backup: old}}\n  namespaceMapping: {{{app_ns}: {target}}}\n"),
        ),
    );
    let r = super::wait_restore(&s.client, &opns, "from-old").await;
    assert_eq!(
        r.status.as_ref().and_then(|s| s.phase),
        Some(RestorePhase::Completed),
        "{:#?}\n{}",
        r.status,
        s.op.logs()
    );
    for w in app::WORKLOADS {
        app::wait_seeded(&target, w).await;
    }
    assert_eq!(
        super::checksums(&target),
        before,
        "restored from the old layout"
    );

    // Deleted (deletionPolicy Delete): its plain objects go from the bucket.
    e.kubectl_ok([
        "delete",
        "backup",
        "old",
        "-n",
        &opns,
        "--wait=true",
        "--timeout=60s",
    ]);
    holdfast_e2e::wait_until(
        "the old layout's objects to be removed",
        std::time::Duration::from_secs(120),
        Some(&opns),
        || async {
            super::bucket_keys(&s, &prefix)
                .await
                .is_empty()
                .then_some(())
        },
    )
    .await;
    e.kubectl(["delete", "namespace", &target, "--wait=false"]);
}
