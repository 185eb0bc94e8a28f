//! The bucket layout of DESIGN.md: where a location keeps repositories and backup objects,
//! and the names of repository password Secrets. Pure; the e2e tests use it too.

use holdfast_api::location::BackupStorageLocation;
use kube::ResourceExt;

/// Key prefix of everything Holdfast writes under a location's prefix.
pub const ROOT: &str = "holdfast";
/// Name of a backup's metadata object (written last).
pub const METADATA: &str = "metadata.json";
/// Name of a backup's object archive.
pub const RESOURCES: &str = "resources.tar.gz";
/// Key of the password in a repository Secret.
pub const PASSWORD_KEY: &str = "password";

/// The location's own prefix inside its bucket (no slashes at either end; may be empty).
pub fn location_prefix(bsl: &BackupStorageLocation) -> String {
    bsl.spec
        .s3
        .prefix
        .as_deref()
        .unwrap_or("")
        .trim_matches('/')
        .to_string()
}

fn join(prefix: &str, rest: &str) -> String {
    if prefix.is_empty() {
        rest.to_string()
    } else {
        format!("{prefix}/{rest}")
    }
}

/// Key prefix of everything Holdfast keeps on the location (`<prefix>/holdfast`).
pub fn holdfast_prefix(bsl: &BackupStorageLocation) -> String {
    join(&location_prefix(bsl), ROOT)
}

/// Key prefix (inside the bucket) of one backup's metadata and objects.
pub fn backup_prefix(bsl: &BackupStorageLocation, namespace: &str, backup: &str) -> String {
    format!("{}/backups/{namespace}/{backup}", holdfast_prefix(bsl))
}

/// The name under which the location's catalog repository (every backup's object archive
/// and metadata, see `storage::catalog`) is handled like a namespace's repository: a
/// Kubernetes namespace name has no dots, so it names no namespace.
pub const CATALOG: &str = "holdfast.catalog";

/// Key prefix (inside the bucket) of the repository of a source namespace (of the catalog
/// for [`CATALOG`]).
pub fn repository_prefix(bsl: &BackupStorageLocation, namespace: &str) -> String {
    if namespace == CATALOG {
        return format!("{}/catalog", holdfast_prefix(bsl));
    }
    format!("{}/repo/{namespace}", holdfast_prefix(bsl))
}

/// The S3 endpoint URL of the location (AWS's regional endpoint when none is set).
pub fn endpoint(bsl: &BackupStorageLocation) -> String {
    match &bsl.spec.s3.endpoint {
        Some(e) => e.trim_end_matches('/').to_string(),
        None => format!(
            "https://s3.{}.amazonaws.com",
            bsl.spec.s3.region.as_deref().unwrap_or("us-east-1")
        ),
    }
}

/// The `--repository` URL of a namespace's repository for `holdfast mover`.
pub fn repository_url(bsl: &BackupStorageLocation, namespace: &str) -> String {
    format!(
        "s3:{}/{}/{}",
        endpoint(bsl),
        bsl.spec.s3.bucket,
        repository_prefix(bsl, namespace)
    )
}

/// Name of the Secret holding the password of the repository of `namespace` on `location`.
pub fn password_secret_name(location: &str, namespace: &str) -> String {
    format!(
        "holdfast-repo-{}",
        crate::runtime::names::short_hash(&[location, namespace])
    )
}

/// [`password_secret_name`] for a location object.
pub fn password_secret_of(bsl: &BackupStorageLocation, namespace: &str) -> String {
    password_secret_name(&bsl.name_any(), namespace)
}

#[cfg(test)]
mod tests {
    use super::*;
    use holdfast_api::location::BackupStorageLocationSpec;

    fn bsl(prefix: Option<&str>, endpoint: Option<&str>) -> BackupStorageLocation {
        let mut spec: BackupStorageLocationSpec =
            serde_json::from_value(serde_json::json!({"s3": {"bucket": "b"}})).expect("spec");
        spec.s3.prefix = prefix.map(Into::into);
        spec.s3.endpoint = endpoint.map(Into::into);
        BackupStorageLocation::new("primary", spec)
    }

    #[test]
    fn layout_follows_the_design() {
        let b = bsl(Some("/prod/"), Some("http://minio:9000/"));
        assert_eq!(
            backup_prefix(&b, "shop", "b1"),
            "prod/holdfast/backups/shop/b1"
        );
        assert_eq!(repository_prefix(&b, "shop"), "prod/holdfast/repo/shop");
        assert_eq!(repository_prefix(&b, CATALOG), "prod/holdfast/catalog");
        assert_eq!(
            repository_url(&b, "shop"),
            "s3:http://minio:9000/b/prod/holdfast/repo/shop"
        );
        let b = bsl(None, None);
        assert_eq!(repository_prefix(&b, "shop"), "holdfast/repo/shop");
        assert_eq!(
            repository_url(&b, "shop"),
            "s3:https://s3.us-east-1.amazonaws.com/b/holdfast/repo/shop"
        );
        let l = holdfast_store::Location::parse(&repository_url(&b, "shop")).expect("parses");
        assert!(
            matches!(l, holdfast_store::Location::S3 { prefix, .. } if prefix == "holdfast/repo/shop")
        );
    }

    #[test]
    fn password_secret_names_are_stable_and_distinct() {
        assert_eq!(
            password_secret_name("a", "b"),
            password_secret_name("a", "b")
        );
        assert_ne!(
            password_secret_name("a", "b"),
            password_secret_name("a", "c")
        );
        assert_ne!(
            password_secret_name("ab", "c"),
            password_secret_name("a", "bc")
        );
    }
}
