//! The registry side of `lock` and `check`, behind a few calls: resolve a
//! reference to a manifest digest, make sure a base image is in the blob
//! store, push a built image, confirm a pushed manifest is still there.

use super::LockError;
use crate::oci::{BlobStore, BuiltImage};

/// What a push moved over the wire.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PushStats {
    pub blobs_uploaded: usize,
    pub blobs_skipped: usize,
    pub bytes_uploaded: u64,
    pub manifest_uploaded: bool,
}

fn unavailable(what: &str) -> LockError {
    LockError::Network {
        what: what.to_string(),
        reason: "registry support is not built into this version yet".into(),
    }
}

/// Manifest digest of `reference` for `platform`.
pub async fn resolve_digest(reference: &str, _platform: &str) -> Result<String, LockError> {
    Err(unavailable(&format!("resolve {reference}")))
}

/// Make sure the base image `reference@digest` is in the store.
pub async fn ensure_base(
    _registry: &str,
    reference: &str,
    digest: &str,
    store: &BlobStore,
    _offline: bool,
) -> Result<(), LockError> {
    if store.has(digest) {
        return Ok(());
    }
    Err(unavailable(&format!("pull {reference}@{digest}")))
}

pub async fn push(
    registry: &str,
    repo: &str,
    _built: &BuiltImage,
    _store: &BlobStore,
) -> Result<PushStats, LockError> {
    Err(unavailable(&format!("push to {registry}/{repo}")))
}

pub async fn ensure_manifest(
    registry: &str,
    repo: &str,
    digest: &str,
    _store: &BlobStore,
) -> Result<PushStats, LockError> {
    Err(unavailable(&format!("confirm {registry}/{repo}@{digest}")))
}
