//! Bodies of the operator's fuzz targets: the backup record (`metadata.json`) and the
//! captured objects (`resources.tar.gz`) that a restore reads from object storage. Included
//! by path from `operator/tests/fuzz_corpus.rs`.

use holdfast::objects::archive;
use holdfast::storage::metadata::BackupMetadata;

/// `metadata.json`, parsed as a restore does; what is read must serialize again.
pub fn metadata(data: &[u8]) {
    if let Ok(md) = serde_json::from_slice::<BackupMetadata>(data) {
        serde_json::to_vec(&md).expect("metadata serializes");
    }
}

/// `resources.tar.gz`, read as a restore does.
pub fn archive(data: &[u8]) {
    if let Ok(items) = archive::read(data) {
        for item in &items {
            let _ = item.path();
            let _ = item.describe();
        }
    }
}
