//! The stored-bytes quota of a namespace (design record 0016). A cluster administrator sets
//! the annotation `holdfast.dev/stored-bytes-limit` on a Namespace; a Backup of that namespace
//! that starts while the namespace's stored bytes are at or over the limit fails with reason
//! `QuotaExceeded`. Stored bytes: the sum, over the Backups that exist in the namespace, of the
//! bytes each added to its repository (`status.volumes[].copy.bytesUploaded`). The check runs
//! when a Backup starts (backup controller) and before a Schedule creates a run's Backup
//! (schedule controller), so a schedule over its quota reports it instead of piling up failed
//! Backups. Pure but for [`check`].

use holdfast_api::backup::{Backup, BackupStatus, STORED_BYTES_LIMIT};
use holdfast_api::reasons::BackupReason;
use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::api::{Api, ListParams};

use crate::cli::plugin::progress::human;
use crate::runtime::error::{Refusable, Refusal};
use crate::runtime::names::parse_quantity;
use crate::runtime::{Context, Error};

/// What the Backups of a namespace store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Sum of the bytes the counted Backups added to their repositories.
    pub bytes: u64,
    /// Backups counted.
    pub backups: usize,
}

/// The bytes one backup added to the repositories of its location: the new (deduplicated,
/// compressed, encrypted) bytes its copies uploaded. Snapshot-only volumes add nothing. Pure.
pub fn stored_bytes(st: &BackupStatus) -> u64 {
    st.volumes
        .iter()
        .filter_map(|v| v.copy.as_ref())
        .fold(0u64, |sum, c| sum.saturating_add(c.bytes_uploaded))
}

/// The usage of a namespace's `backups`, the one with uid `except` (the backup being admitted)
/// left out. Every Backup that exists counts, whatever its phase: a failed or cancelled one
/// may have uploaded data, and one being deleted counts until it is gone. Pure.
pub fn usage(backups: &[Backup], except: Option<&str>) -> Usage {
    backups
        .iter()
        .filter(|b| except.is_none() || b.metadata.uid.as_deref() != except)
        .fold(Usage::default(), |u, b| Usage {
            bytes: u
                .bytes
                .saturating_add(b.status.as_ref().map_or(0, stored_bytes)),
            backups: u.backups + 1,
        })
}

/// A namespace's limit as its annotation says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    /// The annotation's text, as the administrator wrote it.
    pub text: String,
    /// Bytes; `None`: the text is not a quantity.
    pub bytes: Option<u64>,
}

/// The limit set on a Namespace (`None`: no limit). Pure.
pub fn limit(ns: &Namespace) -> Option<Limit> {
    let text = ns.annotations().get(STORED_BYTES_LIMIT)?.clone();
    let bytes = parse_quantity(&text).filter(|_| !text.trim().is_empty());
    Some(Limit { text, bytes })
}

/// Whether a new Backup of namespace `ns` may start: refused when the namespace stores at
/// least its limit, or when the limit cannot be read (an administrator who set a limit meant
/// one; a typo must not let the namespace grow without bound). Pure.
pub fn admit(ns: &str, limit: Option<&Limit>, usage: Usage) -> Result<(), Refusal> {
    let Some(limit) = limit else {
        return Ok(());
    };
    let Some(max) = limit.bytes else {
        return Err(Refusal::new(
            BackupReason::QuotaInvalid,
            format!(
                "the annotation {STORED_BYTES_LIMIT}={:?} on Namespace {ns} is not a byte quantity (such as 50Gi, 500M or 1048576); a cluster administrator must correct it (backups of {ns} are refused until then)",
                limit.text
            ),
        ));
    };
    if usage.bytes < max {
        return Ok(());
    }
    let n = usage.backups;
    Err(Refusal::new(
        BackupReason::QuotaExceeded,
        format!(
            "namespace {ns} stores {} ({} bytes) in its {n} Backup{}, at or over its limit of {} ({max} bytes) set by the annotation {STORED_BYTES_LIMIT}={:?} on Namespace {ns}; delete Backups of {ns} that are no longer needed (the bytes they stored stop counting) or ask a cluster administrator to raise the limit",
            human(usage.bytes),
            usage.bytes,
            if n == 1 { "" } else { "s" },
            human(max),
            limit.text,
        ),
    ))
}

/// Reads the limit of namespace `ns` and what its Backups store (leaving out the Backup with
/// uid `except`), and says whether a new Backup may start there. Talks to the cluster.
pub async fn check(ctx: &Context, ns: &str, except: Option<&str>) -> Refusable<()> {
    let namespace = Api::<Namespace>::all(ctx.client.clone())
        .get_opt(ns)
        .await
        .map_err(Error::kube("get the Namespace for its stored-bytes limit"))?;
    let Some(limit) = namespace.as_ref().and_then(limit) else {
        return Ok(Ok(()));
    };
    let backups = Api::<Backup>::namespaced(ctx.client.clone(), ns)
        .list(&ListParams::default())
        .await
        .map_err(Error::kube(
            "list the namespace's Backups for its stored bytes",
        ))?
        .items;
    Ok(admit(ns, Some(&limit), usage(&backups, except)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use holdfast_api::backup::{CopyStatus, VolumeStatus};

    fn backup(uid: &str, uploaded: &[u64]) -> Backup {
        let mut b = Backup::new(uid, Default::default());
        b.metadata.uid = Some(uid.into());
        b.status = Some(BackupStatus {
            volumes: uploaded
                .iter()
                .map(|&n| VolumeStatus {
                    copy: Some(CopyStatus {
                        bytes_uploaded: n,
                        bytes_total: n.saturating_mul(10),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        });
        b
    }

    fn namespace(annotation: Option<&str>) -> Namespace {
        let mut ns = Namespace::default();
        ns.metadata.name = Some("shop".into());
        if let Some(a) = annotation {
            ns.metadata.annotations =
                Some([(STORED_BYTES_LIMIT.to_string(), a.to_string())].into());
        }
        ns
    }

    #[test]
    fn stored_bytes_are_the_bytes_uploaded_by_every_backup_that_exists() {
        let mut snapshot_only = backup("s", &[]);
        snapshot_only
            .status
            .as_mut()
            .expect("status")
            .volumes
            .push(VolumeStatus::default());
        let mut fresh = Backup::new("new", Default::default());
        fresh.metadata.uid = Some("new".into());
        let all = [
            backup("a", &[100, 23]),
            backup("b", &[7]),
            snapshot_only,
            fresh,
        ];
        assert_eq!(
            usage(&all, None),
            Usage {
                bytes: 130,
                backups: 4
            }
        );
        assert_eq!(
            usage(&all, Some("a")),
            Usage {
                bytes: 7,
                backups: 3
            }
        );
        assert_eq!(usage(&[backup("x", &[u64::MAX, 5])], None).bytes, u64::MAX);
    }

    #[test]
    fn the_limit_comes_from_the_namespace_annotation() {
        assert_eq!(limit(&namespace(None)), None);
        let l = limit(&namespace(Some("2Gi"))).expect("limit");
        assert_eq!(l.bytes, Some(2 << 30));
        assert_eq!(l.text, "2Gi");
        assert_eq!(
            limit(&namespace(Some("1500"))).and_then(|l| l.bytes),
            Some(1500)
        );
        for bad in ["", "ten", "10 Gi", "-1", "5Gb"] {
            let l = limit(&namespace(Some(bad))).expect("limit");
            assert_eq!(l.bytes, None, "{bad:?}");
        }
    }

    #[test]
    fn a_namespace_at_or_over_its_limit_gets_no_new_backup() {
        let l = |s: &str| limit(&namespace(Some(s))).expect("limit");
        let u = |bytes| Usage { bytes, backups: 2 };
        assert!(admit("shop", None, u(u64::MAX)).is_ok());
        assert!(admit("shop", Some(&l("1Ki")), u(1023)).is_ok());
        let r = admit("shop", Some(&l("1Ki")), u(1024)).expect_err("at the limit");
        assert_eq!(r.reason, "QuotaExceeded");
        for part in [
            "namespace shop stores 1.0 KiB (1024 bytes) in its 2 Backups",
            "limit of 1.0 KiB (1024 bytes)",
            "holdfast.dev/stored-bytes-limit=\"1Ki\" on Namespace shop",
            "delete Backups of shop",
            "raise the limit",
        ] {
            assert!(r.message.contains(part), "{part:?} not in {}", r.message);
        }
        let r = admit("shop", Some(&l("0")), Usage::default()).expect_err("zero");
        assert_eq!(r.reason, "QuotaExceeded");
        assert!(r.message.contains("in its 0 Backups"), "{}", r.message);
        let r = admit("shop", Some(&l("10 Gi")), Usage::default()).expect_err("bad");
        assert_eq!(r.reason, "QuotaInvalid");
        assert!(
            r.message
                .contains("holdfast.dev/stored-bytes-limit=\"10 Gi\" on Namespace shop"),
            "{}",
            r.message
        );
    }
}
