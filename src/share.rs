//! Sharing a locked bottle between machines by digest: copy it to a
//! registry (`push`), write it to one archive file (`export`), and load such
//! a file into the local store and, when one is named, a registry
//! (`import`). The image comes through `acquire` (store, registry, or
//! realized from the lockfile).
//!
//! Invariants: the manifest bytes travel unchanged, so the digest on the
//! other side is the digest that was locked; nothing is taken by tag; every
//! blob is verified against its digest on its way in (registry pulls by
//! `registry`, archives here before anything is stored or pushed); a
//! corrupt or truncated archive is bad input naming the file and leaves the
//! destination registry untouched; archive files are written atomically and
//! are byte-identical for the same digest.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Classify, ExitKind};
use crate::lock::LockError;
use crate::oci::archive::{read_archive_file, write_archive_file};
use crate::oci::digest::{Sha256Writer, hex_part};
use crate::oci::{BlobStore, BuiltImage, OciError};
use crate::policy::{POLICY_LABEL, Policy, PolicyError};
use crate::progress::Progress;
use crate::reference::{Reference, ReferenceError};
use crate::registry::{self, PushStats, RegistryClient, RegistryError};

#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error(transparent)]
    Acquire(#[from] crate::acquire::AcquireError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Oci(#[from] OciError),
    #[error(transparent)]
    Manifest(#[from] crate::manifest::ManifestError),
    #[error(
        "destination `{to}`: {reason}; expected <registry>/<repo> without tag or digest \
         (e.g. localhost:5001/team/hello)"
    )]
    Destination { to: String, reason: String },
    // The cause is in the message itself (not a `#[source]`), so the
    // report does not print it twice.
    #[error(
        "archive {}: {cause}\n  help: the file is damaged or not written by `bottle export`; \
         export it again and copy it whole; nothing was stored or pushed",
        .path.display()
    )]
    Archive { path: PathBuf, cause: OciError },
    #[error("cannot open the archive {}: {cause}", .path.display())]
    NoArchive { path: PathBuf, cause: io::Error },
    #[error(
        "archive {}: {reason}\n  help: export one image per file with `bottle export`; nothing was pushed",
        .path.display()
    )]
    ArchiveShape { path: PathBuf, reason: String },
    #[error(
        "image {digest} has no usable `{POLICY_LABEL}` label ({source}), so its agent and \
         default repository are unknown; pass --to <registry>/<repo>"
    )]
    NoAgent {
        digest: String,
        #[source]
        source: PolicyError,
    },
}

impl Classify for ShareError {
    fn exit_kind(&self) -> ExitKind {
        match self {
            ShareError::Reference(e) => e.exit_kind(),
            ShareError::Acquire(e) => e.exit_kind(),
            ShareError::Lock(e) => e.exit_kind(),
            ShareError::Registry(e) => e.exit_kind(),
            ShareError::Oci(e) => e.exit_kind(),
            ShareError::Manifest(e) => e.exit_kind(),
            ShareError::Destination { .. }
            | ShareError::Archive { .. }
            | ShareError::NoArchive { .. }
            | ShareError::ArchiveShape { .. }
            | ShareError::NoAgent { .. } => ExitKind::BadInput,
        }
    }
}

pub use crate::acquire::Located;

/// Where a reference's image lives (see [`crate::acquire::locate`]).
pub fn locate(
    reference: &str,
    registry: Option<&str>,
    root: Option<&Path>,
) -> Result<Located, ShareError> {
    let parsed = Reference::parse(reference)?;
    Ok(crate::acquire::locate(&parsed, registry, || {
        crate::acquire::project_root(root)
    })?)
}

/// Parse `--to <registry>/<repo>`.
pub fn destination(to: &str) -> Result<(String, String), ShareError> {
    let bad = |reason: &str| ShareError::Destination {
        to: to.to_string(),
        reason: reason.to_string(),
    };
    if to.contains('@') {
        return Err(bad("it carries a digest; the digest is the source image's"));
    }
    let Some((registry, repo)) = to.split_once('/') else {
        return Err(bad("it has no repository path"));
    };
    let looks_like_host = registry == "localhost"
        || registry.contains('.')
        || registry.contains(':')
        || registry.starts_with('[');
    if !looks_like_host {
        return Err(bad(
            "its first component is not a registry host (localhost, or a name with `.` or `:port`)",
        ));
    }
    if repo
        .rsplit('/')
        .next()
        .is_some_and(|last| last.contains(':'))
    {
        return Err(bad("it names a tag; images are shared by digest only"));
    }
    let component_ok = |c: &str| {
        let b = c.as_bytes();
        !b.is_empty()
            && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
            && b.iter()
                .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(&c))
    };
    if !repo.split('/').all(component_ok) {
        return Err(bad(
            "repository path components are lowercase letters, digits, `.`, `_`, `-`",
        ));
    }
    if !registry
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || b".-:[]".contains(&c))
    {
        return Err(bad(
            "the registry is HOST[:PORT] (letters, digits, `.`, `-`, `:`)",
        ));
    }
    Ok((registry.to_string(), repo.to_string()))
}

/// The blob store every command shares (`$BOTTLE_CACHE_DIR/oci`).
pub fn open_store() -> Result<BlobStore, ShareError> {
    Ok(BlobStore::open(
        crate::lock::fetch::default_cache_root().join("oci"),
    )?)
}

/// Copy `source` to `to_registry/to_repo`; the digest does not change.
/// The image comes from the local store, else its registry, else is
/// realized from its lockfile ([`crate::acquire::to_store`]).
pub async fn push(
    source: &Located,
    to_registry: &str,
    to_repo: &str,
    store: &BlobStore,
    progress: &Progress,
) -> Result<(Located, PushStats), ShareError> {
    let options = registry::PushOptions {
        mount_from: match &source.registry {
            Some(r) if r == to_registry => vec![source.repository.clone()],
            _ => Vec::new(),
        },
    };
    let client = RegistryClient::new(to_registry)?;
    let copy = || async {
        let image = fetch(source, store, progress).await?;
        let stats = client
            .push_with(to_repo, None, &image, store, progress, &options)
            .await?;
        Ok::<_, ShareError>(stats)
    };
    let stats = match copy().await {
        // The corrupt blob is gone from the store now: the copy fetches it
        // again (verified) and goes on; if that fails too, the corruption
        // is the error to show.
        Err(first) if is_corrupt_blob(&first) => copy().await.map_err(|_| first)?,
        other => other?,
    };
    let mut dest = source.clone();
    dest.registry = Some(to_registry.to_string());
    dest.repository = to_repo.to_string();
    Ok((dest, stats))
}

/// The image `source` names, in the store (see [`crate::acquire::to_store`]).
pub async fn fetch(
    source: &Located,
    store: &BlobStore,
    progress: &Progress,
) -> Result<BuiltImage, ShareError> {
    Ok(crate::acquire::to_store(source, store, progress).await?.0)
}

/// The bottle policy in an image's config label.
pub fn policy_of(image: &BuiltImage) -> Result<Policy, ShareError> {
    let config: Value = serde_json::from_slice(&image.config).map_err(|e| OciError::Json {
        what: format!("image config {}", image.config_digest),
        source: e,
    })?;
    let label = config
        .pointer("/config/Labels")
        .and_then(|l| l.get(POLICY_LABEL))
        .and_then(Value::as_str);
    Policy::from_label(label).map_err(|source| ShareError::NoAgent {
        digest: image.manifest_digest.clone(),
        source,
    })
}

/// The image `source` names written to `path` ([`fetch`], then
/// [`export`]). A blob found corrupt while it is written has been removed
/// from the store: it is fetched again from the registry (verified) and the
/// archive written anew; when that fails, the corruption is the error.
pub async fn fetch_and_export(
    source: &Located,
    store: &BlobStore,
    path: &Path,
    progress: &Progress,
) -> Result<BuiltImage, ShareError> {
    let image = fetch(source, store, progress).await?;
    match export(&image, store, path) {
        Err(ShareError::Oci(first @ OciError::CorruptBlob { .. })) => {
            let again = async {
                let image = fetch(source, store, progress).await?;
                export(&image, store, path)?;
                Ok::<_, ShareError>(image)
            };
            again.await.map_err(|_| ShareError::Oci(first))
        }
        Err(e) => Err(e),
        Ok(()) => Ok(image),
    }
}

fn is_corrupt_blob(e: &ShareError) -> bool {
    matches!(
        e,
        ShareError::Registry(RegistryError::Oci(OciError::CorruptBlob { .. }))
            | ShareError::Oci(OciError::CorruptBlob { .. })
    )
}

/// Write `image` to `path` (atomically). The `docker load` name is derived
/// from the image alone (`bottle/<agent>:sha256-<hex>`), so the same digest
/// always gives the same bytes.
pub fn export(image: &BuiltImage, store: &BlobStore, path: &Path) -> Result<(), ShareError> {
    let tags = match policy_of(image) {
        Ok(p) => vec![format!(
            "{}:sha256-{}",
            crate::lock::repository(&p.agent),
            hex_part(&image.manifest_digest)?
        )],
        Err(_) => Vec::new(),
    };
    write_archive_file(image, store, &tags, path)?;
    // The temp file behind the atomic write is 0600; an image archive is
    // meant to be copied and loaded by others, like a lockfile.
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644));
    }
    Ok(())
}

/// Hash every blob in the archive without storing anything, so a damaged
/// file is refused before the store or a registry sees any of it (the
/// store would skip blobs it already holds, and never look at them).
fn verify_archive(path: &Path) -> Result<(), ShareError> {
    let archive_err = |source: OciError| ShareError::Archive {
        path: path.to_path_buf(),
        cause: source,
    };
    let io_err = |e: io::Error| {
        archive_err(OciError::Io {
            action: "cannot read",
            path: path.to_path_buf(),
            source: e,
        })
    };
    let file = File::open(path).map_err(|cause| ShareError::NoArchive {
        path: path.to_path_buf(),
        cause,
    })?;
    let mut ar = tar::Archive::new(BufReader::new(file));
    for entry in ar.entries().map_err(io_err)? {
        let mut entry = entry.map_err(io_err)?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let name = entry.path().map_err(io_err)?.to_string_lossy().into_owned();
        let Some(hex) = name.trim_start_matches("./").strip_prefix("blobs/sha256/") else {
            continue;
        };
        let expected = format!("sha256:{hex}");
        hex_part(&expected).map_err(archive_err)?;
        let declared = entry.header().size().map_err(io_err)?;
        let mut w = Sha256Writer::new(io::sink());
        let copied = io::copy(&mut entry.by_ref().take(declared), &mut w).map_err(io_err)?;
        let (_, actual, _) = w.finish();
        if copied != declared {
            return Err(io_err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{name} is cut short ({copied} of {declared} bytes)"),
            )));
        }
        if actual != expected {
            return Err(archive_err(OciError::DigestMismatch {
                what: name,
                expected,
                actual,
            }));
        }
    }
    Ok(())
}

/// Read and verify an archive written by [`export`] into `store`; returns
/// the one image it holds.
pub fn read(path: &Path, store: &BlobStore) -> Result<BuiltImage, ShareError> {
    verify_archive(path)?;
    let archive_err = |source: OciError| ShareError::Archive {
        path: path.to_path_buf(),
        cause: source,
    };
    let digests = read_archive_file(path, store).map_err(|e| match e {
        // Failures to write the store are the machine's, not the file's.
        OciError::Io { ref path, .. } if path.starts_with(store.root()) => ShareError::Oci(e),
        other => archive_err(other),
    })?;
    let digest = match digests.as_slice() {
        [one] => one.clone(),
        [] => {
            return Err(ShareError::ArchiveShape {
                path: path.to_path_buf(),
                reason: "index.json names no image".into(),
            });
        }
        many => {
            return Err(ShareError::ArchiveShape {
                path: path.to_path_buf(),
                reason: format!("index.json names {} images, expected one", many.len()),
            });
        }
    };
    let image = BuiltImage::from_store(&digest, store).map_err(archive_err)?;
    if let Some(l) = image.layers.iter().find(|l| !store.has(&l.digest)) {
        return Err(ShareError::ArchiveShape {
            path: path.to_path_buf(),
            reason: format!(
                "layer {} named by the manifest is not in the file",
                l.digest
            ),
        });
    }
    Ok(image)
}

/// Push an imported image to `to` (default: `<registry>/bottle/<agent>`,
/// the agent read from the image's policy label). `Ok(None)` when neither
/// is given: the image stays in the local store, where `run` finds it.
pub async fn import(
    image: &BuiltImage,
    store: &BlobStore,
    to: Option<(String, String)>,
    default_registry: Option<&str>,
    progress: &Progress,
) -> Result<Option<(Located, PushStats)>, ShareError> {
    let (registry, repository) = match (to, default_registry) {
        (Some(t), _) => t,
        (None, Some(r)) => {
            let policy = policy_of(image)?;
            (r.to_string(), crate::lock::repository(&policy.agent))
        }
        (None, None) => return Ok(None),
    };
    let stats = RegistryClient::new(&registry)?
        .push(&repository, None, image, store, progress)
        .await?;
    Ok(Some((
        Located {
            registry: Some(registry),
            repository,
            digest: image.manifest_digest.clone(),
            config_digest: Some(image.config_digest.clone()),
            policy: None,
            realizable: None,
        },
        stats,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn destinations() {
        assert_eq!(
            destination("localhost:5001/team/hello").unwrap(),
            ("localhost:5001".into(), "team/hello".into())
        );
        for bad in [
            "localhost:5001/hello:v1",
            &format!("localhost:5001/hello@{D}"),
            "team/hello",
            "localhost:5001",
            "localhost:5001/Hello",
            "localhost:5001/a//b",
            "http://localhost:5001/a",
            "local_host:5001/a",
        ] {
            let e = destination(bad).unwrap_err();
            assert_eq!(e.exit_kind(), ExitKind::BadInput, "{bad}: {e}");
        }
    }
}
