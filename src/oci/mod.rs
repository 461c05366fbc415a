//! OCI images: deterministic layers, image config and manifest, digests, and
//! the local blob store. No registry and no engine in here (ko's seam: the
//! builder returns an image and its digest; `registry` publishes it).
//!
//! Invariants: the same [`spec::ImageSpec`] gives the same bytes and digests on
//! any machine, in any directory, under any umask, TZ or user ([`image::build`]
//! is the one code path that computes them); a blob in the [`store::BlobStore`]
//! always hashes to its name.

pub mod archive;
pub mod diff;
pub mod digest;
pub mod image;
pub mod layer;
pub mod spec;
pub mod store;

use std::path::PathBuf;

use crate::error::{Classify, ExitKind};

pub use digest::Sha256Writer;
pub use image::{BuiltImage, LayerRef, Platform, build};
pub use layer::Layer;
pub use store::BlobStore;

/// Media types this crate writes (and the Docker equivalents it accepts when
/// reusing base images).
pub mod media {
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
}

/// Everything that can go wrong turning a spec into bytes, or keeping blobs.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("layer `{layer}`: entry path `{path}` is invalid: {reason}")]
    InvalidPath {
        layer: String,
        path: String,
        reason: &'static str,
    },
    #[error("layer `{layer}`: path `{path}` appears twice; each path may be listed once")]
    DuplicatePath { layer: String, path: String },
    #[error(
        "layer `{layer}`: symlink `{path}` -> `{target}` points outside the image root; \
         use a target that stays inside the image"
    )]
    SymlinkEscape {
        layer: String,
        path: String,
        target: String,
    },
    #[error(
        "layer `{layer}`: entry `{path}` reads {source_path}, which is {kind}, not a regular file \
         (device files, fifos and sockets are never put in images)"
    )]
    NotRegularFile {
        layer: String,
        path: String,
        source_path: PathBuf,
        kind: &'static str,
    },
    #[error(
        "layer `{layer}`: {source_path} changed while it was being read (expected {expected} bytes, \
         read {actual}); re-run once the file is stable"
    )]
    FileChanged {
        layer: String,
        source_path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("{what}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("`{0}` is not a digest; expected `sha256:` followed by 64 lowercase hex digits")]
    InvalidDigest(String),
    #[error(
        "blob {digest} ({what}) is not in the blob store at {store}; \
         run `bottle lock` (which pulls bases) or check the registry"
    )]
    MissingBlob {
        digest: String,
        what: String,
        store: PathBuf,
    },
    #[error("{what} is not valid JSON of the expected shape: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what}: {reason}")]
    Unsupported { what: String, reason: String },
    #[error(
        "blob {digest} ({what}) in the blob store at {} is corrupt: its bytes hash to {actual}; \
         it was removed from the store, so running the command again builds or fetches it anew",
        .store.display()
    )]
    CorruptBlob {
        digest: String,
        what: String,
        actual: String,
        store: PathBuf,
    },
}

impl OciError {
    /// An I/O error on `path`; a read that failed because the blob being
    /// read turned out corrupt (see [`store::BlobReader`]) stays that error.
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        let source = match source.downcast::<OciError>() {
            Ok(e) => return e,
            Err(source) => source,
        };
        OciError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

impl Classify for OciError {
    fn exit_kind(&self) -> ExitKind {
        match self {
            OciError::Io { .. } | OciError::MissingBlob { .. } => ExitKind::Environment,
            OciError::InvalidPath { .. }
            | OciError::DuplicatePath { .. }
            | OciError::SymlinkEscape { .. }
            | OciError::NotRegularFile { .. }
            | OciError::InvalidDigest(_)
            | OciError::Unsupported { .. } => ExitKind::BadInput,
            OciError::FileChanged { .. }
            | OciError::DigestMismatch { .. }
            | OciError::CorruptBlob { .. }
            | OciError::Json { .. } => ExitKind::Failure,
        }
    }
}
