//! The registry side of `lock` and `check`, behind four calls over the
//! `registry` module: resolve a reference to a platform manifest digest (and
//! keep the image in the blob store), make sure a pinned base is in the
//! store, push a built image, confirm a pushed image (manifest and every
//! blob) is still there.

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

/// What the no-op `lock` found in the registry for the locked image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presence {
    /// The manifest and every blob it names answer HEAD.
    Complete,
    /// Some were missing and were pushed again from the blob store.
    Repaired {
        missing: Vec<String>,
        push: PushStats,
    },
    /// Missing, and the blob store cannot supply them: the caller rebuilds.
    Missing(Vec<String>),
}

/// Confirm `registry/repo@image.manifest_digest` and every blob it names
/// (config and layers, one HEAD each: a registry that lost one layer would
/// otherwise pass here and fail at `run` with "unknown blob"). What is
/// missing is pushed again from the store when the store has the image.
pub async fn ensure_image(
    registry: &str,
    repo: &str,
    image: &super::lockfile::LockedImage,
    store: &BlobStore,
) -> Result<Presence, LockError> {
    let digest = &image.manifest_digest;
    let mut missing = Vec::new();
    if !head(registry, repo, "manifests", digest).await? {
        missing.push(format!("manifest {digest}"));
    }
    let blobs = std::iter::once(("config", &image.config_digest))
        .chain(image.layers.iter().map(|l| (l.name.as_str(), &l.digest)));
    let mut seen = std::collections::BTreeSet::new();
    for (name, d) in blobs {
        if seen.insert(d.clone()) && !head(registry, repo, "blobs", d).await? {
            missing.push(format!("{name} {d}"));
        }
    }
    if missing.is_empty() {
        return Ok(Presence::Complete);
    }
    match BuiltImage::from_store(digest, store) {
        Ok(img) if img.layers.iter().all(|l| store.has(&l.digest)) => {
            let push = push(registry, repo, &img, store).await?;
            Ok(Presence::Repaired { missing, push })
        }
        _ => Ok(Presence::Missing(missing)),
    }
}

/// One HEAD, through the `registry` module (a bare loopback HEAD when that
/// gives a clear answer, else the full client with its retries).
async fn head(registry: &str, repo: &str, kind: &str, digest: &str) -> Result<bool, LockError> {
    Ok(if kind == "manifests" {
        registry::manifest_exists(registry, repo, digest).await?
    } else {
        registry::blob_exists(registry, repo, digest).await?
    })
}
