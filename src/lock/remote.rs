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

/// One HEAD: the fast loopback path when it gives a clear answer, else the
/// registry client (which reports errors properly).
async fn head(registry: &str, repo: &str, kind: &str, digest: &str) -> Result<bool, LockError> {
    if let Some(answer) = loopback_exists(registry, repo, kind, digest).await {
        return Ok(answer);
    }
    let client = registry::RegistryClient::new(registry)?;
    Ok(if kind == "manifests" {
        client.manifest_exists(repo, digest).await?
    } else {
        client.blob_exists(repo, digest).await?
    })
}

/// A plain-HTTP `HEAD /v2/<repo>/<kind>/<digest>` for loopback
/// registries: the no-op `lock` asks only these questions, and building a
/// full registry client (which loads and parses the system's CA store) would
/// cost more than the rest of the no-op put together. `None` when the answer
/// is not a clear yes or no (not loopback, auth required, connection
/// trouble): the caller then asks through the `registry` module, which
/// reports errors properly.
async fn loopback_exists(registry: &str, repo: &str, kind: &str, digest: &str) -> Option<bool> {
    use http_body_util::Empty;
    use hyper::body::Bytes;

    if !registry::is_loopback(registry) {
        return None;
    }
    let addr = if registry.contains(':') {
        registry.to_string()
    } else {
        format!("{registry}:80")
    };
    let connect = tokio::net::TcpStream::connect(addr.replace("localhost", "127.0.0.1"));
    let stream = tokio::time::timeout(std::time::Duration::from_secs(2), connect)
        .await
        .ok()?
        .ok()?;
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(io)
        .await
        .ok()?;
    let driver = tokio::spawn(conn);
    let accept = [
        crate::oci::media::OCI_MANIFEST,
        crate::oci::media::OCI_INDEX,
        crate::oci::media::DOCKER_MANIFEST,
        crate::oci::media::DOCKER_MANIFEST_LIST,
    ]
    .join(", ");
    let req = hyper::Request::head(format!("/v2/{repo}/{kind}/{digest}"))
        .header(hyper::header::HOST, registry)
        .header(hyper::header::ACCEPT, accept)
        .body(Empty::new())
        .ok()?;
    let resp = tokio::time::timeout(std::time::Duration::from_secs(5), sender.send_request(req))
        .await
        .ok()?
        .ok()?;
    driver.abort();
    match resp.status().as_u16() {
        200 => Some(
            resp.headers()
                .get("docker-content-digest")
                .is_none_or(|d| d.as_bytes() == digest.as_bytes()),
        ),
        404 => Some(false),
        _ => None,
    }
}
