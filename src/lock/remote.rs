//! The registry side of `lock` and `check`, behind four calls over the
//! `registry` module: resolve a reference to a platform manifest digest (and
//! keep the image in the blob store), make sure a pinned base is in the
//! store, push a built image, confirm a pushed manifest is still there.

use super::LockError;
use crate::oci::{BlobStore, BuiltImage, Platform};
use crate::progress::Progress;
use crate::registry::{self, RegistryError};

/// What a push moved over the wire.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PushStats {
    pub blobs_uploaded: usize,
    pub blobs_skipped: usize,
    pub bytes_uploaded: u64,
    /// Whether the manifest itself had to be uploaded.
    pub manifest_uploaded: bool,
}

/// Tag that points at the newest lock of an agent (the digest is what counts).
pub const TAG: &str = "latest";

/// Manifest digest of `reference` for `platform`; the image lands in the store.
pub async fn resolve_digest(
    reference: &str,
    platform: &str,
    store: &BlobStore,
) -> Result<String, LockError> {
    let platform = Platform::parse(platform)?;
    let pulled = registry::pull_image(reference, &platform, store, &Progress::auto())
        .await
        .map_err(|e| network(format!("pin `{reference}` ({platform})"), e))?;
    Ok(pulled.manifest_digest)
}

/// A pull from the reference's own registry (Docker Hub, ghcr.io, …) that
/// cannot connect is a network problem, not a missing local registry: say so
/// instead of suggesting to start one.
fn network(what: String, e: RegistryError) -> LockError {
    match e {
        RegistryError::Unreachable { .. } => {
            let mut reason = e.to_string();
            if let Some(i) = reason.find("; start one") {
                reason.truncate(i);
            }
            let mut src = std::error::Error::source(&e);
            while let Some(c) = src {
                reason.push_str(": ");
                reason.push_str(&c.to_string());
                src = c.source();
            }
            LockError::Network { what, reason }
        }
        other => other.into(),
    }
}

/// Make sure the base image `reference` pinned at `digest` is in the store.
pub async fn ensure_base(
    reference: &str,
    digest: &str,
    platform: &str,
    store: &BlobStore,
    offline: bool,
) -> Result<(), LockError> {
    if let Ok(img) = BuiltImage::from_store(digest, store) {
        if img.layers.iter().all(|l| store.has(&l.digest)) {
            return Ok(());
        }
    }
    if offline {
        return Err(LockError::Offline {
            what: format!("pulling base image {reference}@{digest}"),
        });
    }
    let parsed = registry::parse_reference(reference)?;
    let by_digest = format!("{}/{}@{digest}", parsed.registry(), parsed.repository());
    let platform = Platform::parse(platform)?;
    let pulled = registry::pull_image(&by_digest, &platform, store, &Progress::auto())
        .await
        .map_err(|e| network(format!("pull base image `{by_digest}`"), e))?;
    if pulled.manifest_digest != digest {
        return Err(LockError::Internal(format!(
            "pulled {by_digest} but got manifest {}",
            pulled.manifest_digest
        )));
    }
    Ok(())
}

/// Push a built image to `registry/repo` (blobs the registry has are skipped).
pub async fn push(
    registry: &str,
    repo: &str,
    built: &BuiltImage,
    store: &BlobStore,
) -> Result<PushStats, LockError> {
    let s = registry::push(registry, repo, Some(TAG), built, store, &Progress::auto()).await?;
    Ok(PushStats {
        blobs_uploaded: s.blobs_uploaded,
        blobs_skipped: s.blobs_skipped,
        bytes_uploaded: s.bytes_uploaded,
        manifest_uploaded: true,
    })
}

/// Confirm `registry/repo@digest` exists; push it again from the store when
/// the registry lost it. `Ok(None)`: lost and not in the store either (the
/// caller rebuilds).
pub async fn ensure_manifest(
    registry: &str,
    repo: &str,
    digest: &str,
    store: &BlobStore,
) -> Result<Option<PushStats>, LockError> {
    let exists = registry::manifest_exists(registry, repo, digest).await?;
    if exists {
        return Ok(Some(PushStats::default()));
    }
    match BuiltImage::from_store(digest, store) {
        Ok(img) if img.layers.iter().all(|l| store.has(&l.digest)) => {
            push(registry, repo, &img, store).await.map(Some)
        }
        _ => Ok(None),
    }
}
