//! Sharing a locked bottle between machines by digest: copy it to another
//! registry (`push`), write it to one archive file (`export`), and load such
//! a file into a registry (`import`).
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
use crate::lock::lockfile::Lockfile;
use crate::oci::archive::{read_archive_file, write_archive_file};
use crate::oci::digest::{Sha256Writer, hex_part};
use crate::oci::{BlobStore, BuiltImage, OciError, Platform};
use crate::policy::{POLICY_LABEL, Policy, PolicyError};
use crate::progress::Progress;
use crate::reference::{Reference, ReferenceError};
use crate::registry::{self, PushStats, RegistryClient, RegistryError};

#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Oci(#[from] OciError),
    #[error(transparent)]
    Manifest(#[from] crate::manifest::ManifestError),
    #[error("cannot read the current directory: {0}")]
    Cwd(#[source] io::Error),
    #[error(
        "no lockfile lockfiles/{agent}.lock.json in {root}; run `bottle lock {agent}` first, \
         or pass {agent}@sha256:… or <registry>/<repo>@sha256:…"
    )]
    NoLockfile { agent: String, root: PathBuf },
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
            ShareError::Lock(e) => e.exit_kind(),
            ShareError::Registry(e) => e.exit_kind(),
            ShareError::Oci(e) => e.exit_kind(),
            ShareError::Manifest(e) => e.exit_kind(),
            ShareError::Cwd(_) => ExitKind::Environment,
            ShareError::NoLockfile { .. }
            | ShareError::Destination { .. }
            | ShareError::Archive { .. }
            | ShareError::NoArchive { .. }
            | ShareError::ArchiveShape { .. }
            | ShareError::NoAgent { .. } => ExitKind::BadInput,
        }
    }
}

/// One image in one registry repository, named by digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub registry: String,
    pub repository: String,
    pub digest: String,
}

impl std::fmt::Display for Located {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}@{}", self.registry, self.repository, self.digest)
    }
}

/// Where a reference's image lives. `<agent>` takes digest and repository
/// from the lockfile under `root`; `<agent>@sha256:…` takes the repository
/// from the lockfile when there is one (else `bottle/<agent>`); both use
/// `registry`. A full reference names its own registry.
pub fn locate(
    reference: &str,
    registry: &str,
    root: impl FnOnce() -> Result<PathBuf, ShareError>,
) -> Result<Located, ShareError> {
    let parsed = Reference::parse(reference)?;
    let lockfile = |agent: &str, root: &Path| Lockfile::read(root, agent);
    match parsed {
        Reference::Agent(agent) => {
            let root = root()?;
            let lock = lockfile(&agent, &root)?.ok_or_else(|| ShareError::NoLockfile {
                agent: agent.clone(),
                root: root.clone(),
            })?;
            Ok(Located {
                registry: registry.to_string(),
                repository: lock.image.repository,
                digest: lock.image.manifest_digest,
            })
        }
        Reference::AgentDigest { agent, digest } => {
            // The lockfile only names the repository path here; the digest
            // is the caller's, and no project is needed at all.
            let repository = root()
                .ok()
                .and_then(|r| lockfile(&agent, &r).ok().flatten())
                .map(|l| l.image.repository)
                .unwrap_or_else(|| crate::lock::repository(&agent));
            Ok(Located {
                registry: registry.to_string(),
                repository,
                digest,
            })
        }
        Reference::Full {
            registry,
            repository,
            digest,
        } => Ok(Located {
            registry,
            repository,
            digest,
        }),
    }
}

/// The project root: `explicit`, or the nearest ancestor of the current
/// directory holding `agents/`.
pub fn project_root(explicit: Option<&Path>) -> Result<PathBuf, ShareError> {
    let cwd = std::env::current_dir().map_err(ShareError::Cwd)?;
    Ok(crate::manifest::find_root(explicit, &cwd)?)
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
pub async fn push(
    source: &Located,
    to_registry: &str,
    to_repo: &str,
    store: &BlobStore,
    progress: &Progress,
) -> Result<(Located, PushStats), ShareError> {
    let copy = || {
        registry::copy(
            (&source.registry, &source.repository),
            &source.digest,
            (to_registry, to_repo),
            None,
            store,
            progress,
        )
    };
    let stats = match copy().await {
        // The corrupt blob is gone from the store now: the copy fetches it
        // from the source registry (verified) and goes on; if that fails
        // too, the corruption is the error to show.
        Err(first) if is_corrupt_blob(&first) => copy().await.map_err(|_| first)?,
        other => other?,
    };
    Ok((
        Located {
            registry: to_registry.to_string(),
            repository: to_repo.to_string(),
            digest: source.digest.clone(),
        },
        stats,
    ))
}

/// The image `source` names, from the store when it is all there, else
/// pulled from its registry by digest (every blob verified on the way in).
pub async fn fetch(
    source: &Located,
    store: &BlobStore,
    progress: &Progress,
) -> Result<BuiltImage, ShareError> {
    hex_part(&source.digest)?;
    if let Ok(image) = BuiltImage::from_store(&source.digest, store)
        && image.layers.iter().all(|l| store.has(&l.digest))
    {
        return Ok(image);
    }
    let client = RegistryClient::new(&source.registry)?;
    match client
        .pull(
            &source.repository,
            &source.digest,
            &Platform::default(),
            store,
            progress,
        )
        .await
    {
        Ok(_) => {}
        // The digest already fixes the platform; a non-amd64 image is still
        // the image asked for, and the pull stored it before complaining.
        Err(RegistryError::NoPlatform { .. }) if store.has(&source.digest) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(BuiltImage::from_store(&source.digest, store)?)
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

fn is_corrupt_blob(e: &RegistryError) -> bool {
    matches!(e, RegistryError::Oci(OciError::CorruptBlob { .. }))
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
/// the agent read from the image's policy label).
pub async fn import(
    image: &BuiltImage,
    store: &BlobStore,
    to: Option<(String, String)>,
    default_registry: &str,
    progress: &Progress,
) -> Result<(Located, PushStats), ShareError> {
    let (registry, repository) = match to {
        Some(t) => t,
        None => {
            let policy = policy_of(image)?;
            (
                default_registry.to_string(),
                crate::lock::repository(&policy.agent),
            )
        }
    };
    let stats = RegistryClient::new(&registry)?
        .push(&repository, None, image, store, progress)
        .await?;
    Ok((
        Located {
            registry,
            repository,
            digest: image.manifest_digest.clone(),
        },
        stats,
    ))
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

    #[test]
    fn locate_full_and_agent_digest_need_no_project() {
        let no_root = || -> Result<PathBuf, ShareError> {
            Err(ShareError::NoLockfile {
                agent: "x".into(),
                root: PathBuf::from("/nowhere"),
            })
        };
        let l = locate(&format!("localhost:5000/a/b@{D}"), "ignored:1", no_root).unwrap();
        assert_eq!(l.to_string(), format!("localhost:5000/a/b@{D}"));
        let l = locate(&format!("hello@{D}"), "127.0.0.1:5002", no_root).unwrap();
        assert_eq!(l.to_string(), format!("127.0.0.1:5002/bottle/hello@{D}"));
        let e = locate("hello:latest", "r:1", no_root).unwrap_err();
        assert_eq!(e.exit_kind(), ExitKind::BadInput);
        let e = locate("hello", "r:1", no_root).unwrap_err();
        assert_eq!(e.exit_kind(), ExitKind::BadInput);
    }
}
