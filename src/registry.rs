//! Publishing and fetching images (ko's publisher half): push a
//! [`BuiltImage`] from the blob store to a registry, check a manifest is
//! there, pull an image (resolving tags and image indexes to one platform's
//! manifest digest) into the blob store.
//!
//! Invariants: blobs the registry already has are not uploaded (HEAD first);
//! the manifest is pushed by digest before any tag, so a tag never names a
//! manifest that is not there; every fetched manifest and blob is hashed and
//! compared with the digest that named it before it lands in the store.
//! Loopback registries (`localhost`, `127.0.0.0/8`, `::1`) are spoken to
//! over plain HTTP, everything else over HTTPS.
//!
//! Every request to a registry goes through this module, and every one is
//! idempotent (HEADs, GETs, digest-addressed PUTs; an upload starts a new
//! session each time), so a transient failure (5xx, 408, 429, a connection
//! reset or cut mid-transfer) is retried with a doubling pause, at most
//! [`ATTEMPTS`] times in all, as `docker` and `crane` do; the error after the
//! last attempt says how many were made. A refused connection is not retried:
//! nothing is listening, and saying so at once is more useful.

use std::io::Read;
use std::net::IpAddr;
use std::time::Duration;

use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde_json::Value;

use crate::error::{Classify, ExitKind};
use crate::oci::digest::{hex_part, sha256_digest};
use crate::oci::image::{Platform, parse_manifest};
use crate::oci::spec::Digest;
use crate::oci::{BlobStore, BuiltImage, OciError, media};
use crate::progress::Progress;

const MANIFEST_TYPES: &[&str] = &[
    media::OCI_MANIFEST,
    media::OCI_INDEX,
    media::DOCKER_MANIFEST,
    media::DOCKER_MANIFEST_LIST,
];

const HOW_TO_START: &str = "start one with `docker-registry serve <config.yml>` \
(Debian: `apt-get install docker-registry`; config: `http.addr: 127.0.0.1:5000`, \
filesystem storage), or point --registry / BOTTLE_REGISTRY at a registry that is running";

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("bad registry `{registry}`: {reason}")]
    BadRegistry { registry: String, reason: String },
    #[error("bad image reference `{reference}`: {reason}")]
    BadReference { reference: String, reason: String },
    #[error("registry {registry} is unreachable while trying to {action}; {HOW_TO_START}")]
    Unreachable {
        registry: String,
        action: String,
        #[source]
        source: OciDistributionError,
    },
    #[error("{what}: not found in registry {registry}")]
    NotFound { registry: String, what: String },
    #[error("{what}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("{reference} has no image for platform {platform} (available: {available})")]
    NoPlatform {
        reference: String,
        platform: String,
        available: String,
    },
    #[error("registry {registry} failed to {action}")]
    Protocol {
        registry: String,
        action: String,
        #[source]
        source: OciDistributionError,
    },
    #[error(
        "registry {registry} failed to {action} after {attempts} attempts (transient errors \
         are retried with a growing pause); check that the registry and any proxy in front \
         of it are healthy, then run the command again"
    )]
    GaveUp {
        registry: String,
        action: String,
        attempts: u32,
        #[source]
        source: OciDistributionError,
    },
    #[error(transparent)]
    Oci(#[from] OciError),
}

/// How many times a request is tried in all before a transient failure is
/// reported, and the pause before the first retry (doubled before each next
/// one: 0.2 + 0.4 + 0.8 s at most, so a registry that is down for good is
/// still reported within seconds).
pub const ATTEMPTS: u32 = 4;
const FIRST_PAUSE: Duration = Duration::from_millis(200);

/// How one try of a request ended badly: a registry error that may be
/// retried (when transient), or an error that ends the operation at once.
enum Attempt {
    Remote(OciDistributionError),
    Final(RegistryError),
}

impl From<OciDistributionError> for Attempt {
    fn from(e: OciDistributionError) -> Self {
        Attempt::Remote(e)
    }
}

impl From<RegistryError> for Attempt {
    fn from(e: RegistryError) -> Self {
        Attempt::Final(e)
    }
}

impl From<OciError> for Attempt {
    fn from(e: OciError) -> Self {
        Attempt::Final(e.into())
    }
}

impl Classify for RegistryError {
    fn exit_kind(&self) -> ExitKind {
        match self {
            RegistryError::BadRegistry { .. }
            | RegistryError::BadReference { .. }
            | RegistryError::NoPlatform { .. } => ExitKind::BadInput,
            RegistryError::Unreachable { .. }
            | RegistryError::Protocol { .. }
            | RegistryError::GaveUp { .. } => ExitKind::Environment,
            RegistryError::NotFound { .. } | RegistryError::DigestMismatch { .. } => {
                ExitKind::Failure
            }
            RegistryError::Oci(e) => e.exit_kind(),
        }
    }
}

/// What a push did (the "bytes uploaded" the benchmarks report).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PushStats {
    pub blobs_uploaded: usize,
    pub bytes_uploaded: u64,
    /// Already in the target repository (HEAD said so).
    pub blobs_skipped: usize,
    /// Linked from another repository of the same registry, no upload.
    pub blobs_mounted: usize,
}

/// Knobs for [`RegistryClient::push_with`].
#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    /// Repositories on the same registry that may hold some blobs already
    /// (e.g. the base image's); missing blobs are cross-mounted from them
    /// before falling back to an upload.
    pub mount_from: Vec<String>,
}

/// Where a pull ended: the platform manifest now in the blob store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledImage {
    /// The registry host the image came from (`docker.io` for short names).
    pub registry: String,
    pub repository: String,
    /// Digest of the platform's image manifest (what a lockfile pins).
    pub manifest_digest: Digest,
    /// Digest of the image index, when the reference named one.
    pub index_digest: Option<Digest>,
    pub platform: Platform,
    pub blobs_downloaded: usize,
}

/// True for `localhost`, `127.0.0.0/8` and `::1` (with or without port).
pub fn is_loopback(registry: &str) -> bool {
    let host = host_part(registry);
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .map(|ip| ip.is_loopback())
        .unwrap_or(false)
}

fn host_part(registry: &str) -> &str {
    if registry.parse::<IpAddr>().is_ok() {
        // A bare IPv6 address: its colons are not a port separator.
        return registry;
    }
    if let Some(rest) = registry.strip_prefix('[') {
        // [v6]:port
        return rest.split(']').next().unwrap_or(rest);
    }
    match registry.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => registry,
    }
}

fn validate_registry(registry: &str) -> Result<(), RegistryError> {
    let bad = |reason: &str| RegistryError::BadRegistry {
        registry: registry.to_string(),
        reason: reason.to_string(),
    };
    if registry.is_empty() {
        return Err(bad("it is empty; give HOST[:PORT], e.g. localhost:5000"));
    }
    if registry.contains("://") {
        return Err(bad(
            "give HOST[:PORT] without a scheme; loopback hosts use HTTP, others HTTPS",
        ));
    }
    if registry.contains('/') || registry.contains('@') || registry.chars().any(char::is_whitespace)
    {
        return Err(bad("give HOST[:PORT] only (no path, user or spaces)"));
    }
    Ok(())
}

/// A client for one registry host.
pub struct RegistryClient {
    registry: String,
    client: Client,
}

impl RegistryClient {
    /// `registry` is `HOST[:PORT]` (e.g. `localhost:5000`, `127.0.0.1:5001`).
    pub fn new(registry: &str) -> Result<Self, RegistryError> {
        validate_registry(registry)?;
        let loopback = is_loopback(registry);
        let protocol = if loopback {
            ClientProtocol::HttpsExcept(vec![registry.to_string()])
        } else {
            ClientProtocol::Https
        };
        let config = ClientConfig {
            protocol,
            tls_certs_only: if loopback {
                unused_trust_root()
            } else {
                Vec::new()
            },
            // One PUT per blob: fewer round trips than chunked PATCHes.
            use_monolithic_push: true,
            connect_timeout: Some(Duration::from_secs(10)),
            ..ClientConfig::default()
        };
        Ok(RegistryClient {
            registry: registry.to_string(),
            client: Client::new(config),
        })
    }

    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// `<registry>/<repo>@<digest>` or `<registry>/<repo>:<tag>`, as text
    /// (for messages) and parsed.
    fn parse_at(
        &self,
        repo: &str,
        tag_or_digest: &str,
    ) -> Result<(String, Reference), RegistryError> {
        let sep = if tag_or_digest.starts_with("sha256:") {
            "@"
        } else {
            ":"
        };
        let text = format!("{}/{repo}{sep}{tag_or_digest}", self.registry);
        let r = parse_reference(&text)?;
        Ok((text, r))
    }

    /// `repo@digest`, refused unless `repo` is already canonical (so what is
    /// looked up is exactly what the caller named).
    fn reference(&self, repo: &str, digest: &str) -> Result<Reference, RegistryError> {
        let (text, r) = self.parse_at(repo, digest)?;
        if r.repository() != repo {
            return Err(RegistryError::BadReference {
                reference: text,
                reason: "the repository name is not in canonical form (lowercase, `/`-separated)"
                    .into(),
            });
        }
        Ok(r)
    }

    fn classify(&self, action: impl Into<String>, e: OciDistributionError) -> RegistryError {
        let action = action.into();
        if is_unreachable(&e) {
            RegistryError::Unreachable {
                registry: self.registry.clone(),
                action,
                source: e,
            }
        } else if is_not_found(&e) {
            RegistryError::NotFound {
                registry: self.registry.clone(),
                what: action,
            }
        } else if has_error_code(&e, "DIGEST_INVALID") {
            RegistryError::DigestMismatch {
                what: format!(
                    "{action}: the registry computed another digest for the bytes sent \
                     (a corrupted local blob? delete it from the blob store and rebuild)"
                ),
                expected: "bytes that hash to the blob's name".into(),
                actual: "bytes that do not (registry: DIGEST_INVALID)".into(),
            }
        } else if let OciDistributionError::DigestError(
            oci_client::errors::DigestError::VerificationError { expected, actual },
        ) = &e
        {
            RegistryError::DigestMismatch {
                what: action,
                expected: expected.clone(),
                actual: actual.clone(),
            }
        } else {
            RegistryError::Protocol {
                registry: self.registry.clone(),
                action,
                source: e,
            }
        }
    }

    /// Run one request (`op` makes a fresh try each time) until it succeeds,
    /// fails for good, or has failed transiently [`ATTEMPTS`] times.
    async fn retry<T, F, Fut>(&self, action: &str, mut op: F) -> Result<T, RegistryError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Attempt>>,
    {
        let mut pause = FIRST_PAUSE;
        let mut attempt = 1;
        loop {
            let e = match op().await {
                Ok(v) => return Ok(v),
                Err(Attempt::Final(e)) => return Err(e),
                Err(Attempt::Remote(e)) => e,
            };
            if !is_transient(&e) {
                return Err(self.classify(action, e));
            }
            if attempt == ATTEMPTS {
                return Err(RegistryError::GaveUp {
                    registry: self.registry.clone(),
                    action: action.to_string(),
                    attempts: ATTEMPTS,
                    source: e,
                });
            }
            tokio::time::sleep(pause).await;
            pause *= 2;
            attempt += 1;
        }
    }

    /// Push every blob the registry lacks, then the manifest by digest, then
    /// `tag` (if any). Blobs are read from `store`.
    pub async fn push(
        &self,
        repo: &str,
        tag: Option<&str>,
        image: &BuiltImage,
        store: &BlobStore,
        progress: &Progress,
    ) -> Result<PushStats, RegistryError> {
        self.push_with(repo, tag, image, store, progress, &PushOptions::default())
            .await
    }

    /// [`RegistryClient::push`] with options (cross-repository mounts).
    pub async fn push_with(
        &self,
        repo: &str,
        tag: Option<&str>,
        image: &BuiltImage,
        store: &BlobStore,
        progress: &Progress,
        options: &PushOptions,
    ) -> Result<PushStats, RegistryError> {
        let mount_sources = options
            .mount_from
            .iter()
            .filter(|r| r.as_str() != repo)
            .map(|r| self.reference(r, &image.manifest_digest))
            .collect::<Result<Vec<_>, _>>()?;
        let by_digest = self.reference(repo, &image.manifest_digest)?;
        let tagged = match tag {
            Some(t) => Some(parse_reference(&format!("{}/{repo}:{t}", self.registry))?),
            None => None,
        };
        self.client
            .store_auth_if_needed(&self.registry, &RegistryAuth::Anonymous)
            .await;

        let mut blobs: Vec<(&str, &str)> = image
            .layers
            .iter()
            .map(|l| (l.digest.as_str(), l.name.as_str()))
            .collect();
        blobs.push((image.config_digest.as_str(), "config"));
        let mut seen = std::collections::BTreeSet::new();
        let mut stats = PushStats::default();
        for (digest, name) in blobs {
            if !seen.insert(digest) {
                continue;
            }
            let present = self
                .retry(&format!("check blob {digest} in {repo}"), || async {
                    Ok(self.client.blob_exists(&by_digest, digest).await?)
                })
                .await?;
            if present {
                stats.blobs_skipped += 1;
                continue;
            }
            let mut mounted = false;
            for source in &mount_sources {
                // A refused mount (202 + upload session) just means "upload it".
                if self
                    .client
                    .mount_blob(&by_digest, source, digest)
                    .await
                    .is_ok()
                {
                    mounted = true;
                    break;
                }
            }
            if mounted {
                stats.blobs_mounted += 1;
                continue;
            }
            let size = self
                .upload_blob(&by_digest, repo, digest, name, store, progress)
                .await?;
            stats.blobs_uploaded += 1;
            stats.bytes_uploaded += size;
        }

        let media_type = image.manifest_media_type();
        let content_type = hyper::header::HeaderValue::from_str(&media_type).map_err(|_| {
            OciError::Unsupported {
                what: format!("manifest {}", image.manifest_digest),
                reason: format!("media type `{media_type}` is not a valid header value"),
            }
        })?;
        let action = format!("push manifest {} to {repo}", image.manifest_digest);
        self.retry(&action, || async {
            let bytes = image.manifest.clone();
            Ok(self
                .client
                .push_manifest_raw(&by_digest, bytes, content_type.clone())
                .await?)
        })
        .await?;
        stats.bytes_uploaded += image.manifest.len() as u64;
        if let Some(tagged) = tagged {
            let action = format!("tag {repo}:{}", tag.unwrap_or_default());
            self.retry(&action, || async {
                let bytes = image.manifest.clone();
                Ok(self
                    .client
                    .push_manifest_raw(&tagged, bytes, content_type.clone())
                    .await?)
            })
            .await?;
        }
        Ok(stats)
    }

    /// Upload one stored blob (verified as it is read); a fresh read and a
    /// fresh upload session for each try. Returns its size.
    async fn upload_blob(
        &self,
        by_digest: &Reference,
        repo: &str,
        digest: &str,
        name: &str,
        store: &BlobStore,
        progress: &Progress,
    ) -> Result<u64, RegistryError> {
        let path = store.blob_path(digest)?;
        let size = store.size(digest)?;
        let bar = progress.bytes(size, name);
        let read_error = ReadError::default();
        let action = format!("upload blob {digest} ({name}) to {repo}");
        let pushed = self
            .retry(&action, || async {
                let blob = store.open_blob(digest, name)?;
                let stream = file_chunks(blob, path.clone(), bar.clone(), read_error.clone());
                let pushed = self
                    .client
                    .push_blob_stream(by_digest, stream, digest, Some(size))
                    .await;
                match pushed {
                    // Our own read failed (a corrupt blob: the upload stopped
                    // before its last byte): no retry, that error below.
                    Err(_) if read_error.is_set() => Err(Attempt::Final(RegistryError::Protocol {
                        registry: self.registry.clone(),
                        action: action.clone(),
                        source: OciDistributionError::GenericError(None),
                    })),
                    other => Ok(other?),
                }
            })
            .await;
        if let Some(e) = read_error.take() {
            return Err(OciError::io("cannot read", path, e).into());
        }
        pushed?;
        bar.finish("uploaded");
        Ok(size)
    }

    /// Push raw manifest (or image index) bytes to `repo` under `reference`
    /// (a tag, or the bytes' own `sha256:` digest). Returns the digest of
    /// the bytes. The blobs it names must already be in the registry.
    pub async fn push_manifest_bytes(
        &self,
        repo: &str,
        reference: &str,
        bytes: &[u8],
        media_type: &str,
    ) -> Result<Digest, RegistryError> {
        let digest = sha256_digest(bytes);
        let (text, r) = self.parse_at(repo, reference)?;
        let content_type = hyper::header::HeaderValue::from_str(media_type).map_err(|_| {
            RegistryError::BadReference {
                reference: text.clone(),
                reason: format!("media type `{media_type}` is not a valid header value"),
            }
        })?;
        self.client
            .store_auth_if_needed(&self.registry, &RegistryAuth::Anonymous)
            .await;
        self.retry(&format!("push manifest {text}"), || async {
            Ok(self
                .client
                .push_manifest_raw(&r, bytes.to_vec(), content_type.clone())
                .await?)
        })
        .await?;
        Ok(digest)
    }

    /// Is the manifest `digest` in `repo`? (A HEAD; `lock` uses it to see
    /// whether the registry lost an image it should have.)
    pub async fn manifest_exists(&self, repo: &str, digest: &str) -> Result<bool, RegistryError> {
        hex_part(digest)?;
        let r = self.reference(repo, digest)?;
        let found = self
            .retry(&format!("look up manifest {repo}@{digest}"), || async {
                match self
                    .client
                    .fetch_manifest_digest(&r, &RegistryAuth::Anonymous)
                    .await
                {
                    Ok(found) => Ok(Some(found)),
                    Err(e) if is_not_found(&e) => Ok(None),
                    Err(e) => Err(e.into()),
                }
            })
            .await?;
        match found {
            None => Ok(false),
            Some(found) if found == digest => Ok(true),
            Some(found) => Err(RegistryError::DigestMismatch {
                what: format!("manifest {repo}@{digest} in {}", self.registry),
                expected: digest.to_string(),
                actual: found,
            }),
        }
    }

    /// Is the blob `digest` in `repo`? (A HEAD; the no-op `lock` asks it for
    /// every blob of the image, so a registry that lost one layer is seen.)
    pub async fn blob_exists(&self, repo: &str, digest: &str) -> Result<bool, RegistryError> {
        hex_part(digest)?;
        let r = self.reference(repo, digest)?;
        self.client
            .store_auth_if_needed(&self.registry, &RegistryAuth::Anonymous)
            .await;
        self.retry(&format!("look up blob {repo}@{digest}"), || async {
            match self.client.blob_exists(&r, digest).await {
                Ok(b) => Ok(b),
                Err(e) if is_not_found(&e) => Ok(false),
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    /// Pull `repo` at `tag_or_digest` (`latest`, `sha256:…`) for `platform`
    /// into the store; every blob verified. Blobs already in the store are
    /// not fetched again.
    pub async fn pull(
        &self,
        repo: &str,
        tag_or_digest: &str,
        platform: &Platform,
        store: &BlobStore,
        progress: &Progress,
    ) -> Result<PulledImage, RegistryError> {
        let (text, reference) = self.parse_at(repo, tag_or_digest)?;
        self.pull_reference(&reference, &text, platform, store, progress)
            .await
    }

    /// Fetch the image manifest `digest` (not an index) and every blob it
    /// names into the store, whatever its platform. Returns the digest.
    async fn pull_manifest_only(
        &self,
        repo: &str,
        digest: &str,
        store: &BlobStore,
        progress: &Progress,
    ) -> Result<Digest, RegistryError> {
        let reference = self.reference(repo, digest)?;
        let shown = format!("{}/{repo}@{digest}", self.registry);
        let bytes = self.fetch_manifest_bytes(&reference, &shown).await?;
        let parsed = parse_manifest(&bytes, digest)?;
        let mut wanted = vec![(parsed.config_digest.clone(), 0u64, "config".to_string())];
        for (i, l) in parsed.layers.iter().enumerate() {
            wanted.push((l.digest.clone(), l.size, format!("layer {i}")));
        }
        for (d, size, name) in &wanted {
            if !store.has(d) {
                self.fetch_blob(&reference, d, *size, name, &shown, store, progress)
                    .await?;
            }
        }
        store.put_expected(digest, &bytes)?;
        Ok(digest.to_string())
    }

    /// GET a manifest and check it hashes to the digest the reference names.
    async fn fetch_manifest_bytes(
        &self,
        reference: &Reference,
        shown: &str,
    ) -> Result<Vec<u8>, RegistryError> {
        self.client
            .store_auth_if_needed(reference.resolve_registry(), &RegistryAuth::Anonymous)
            .await;
        let (bytes, _) = self
            .retry(&format!("fetch manifest {shown}"), || async {
                Ok(self
                    .client
                    .pull_manifest_raw(reference, &RegistryAuth::Anonymous, MANIFEST_TYPES)
                    .await?)
            })
            .await?;
        let got = sha256_digest(&bytes);
        if let Some(want) = reference.digest()
            && want != got
        {
            return Err(RegistryError::DigestMismatch {
                what: format!("manifest {shown}"),
                expected: want.to_string(),
                actual: got,
            });
        }
        Ok(bytes.to_vec())
    }

    async fn pull_reference(
        &self,
        reference: &Reference,
        shown: &str,
        platform: &Platform,
        store: &BlobStore,
        progress: &Progress,
    ) -> Result<PulledImage, RegistryError> {
        let bytes = self.fetch_manifest_bytes(reference, shown).await?;
        let first_digest = sha256_digest(&bytes);
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| OciError::Json {
            what: format!("manifest {shown}"),
            source: e,
        })?;
        let (manifest, manifest_digest, index_digest) = if is_index(&value) {
            let chosen = choose_platform(&value, platform, shown)?;
            store.put_expected(&first_digest, &bytes)?;
            let by_digest = Reference::with_digest(
                reference.registry().to_string(),
                reference.repository().to_string(),
                chosen.clone(),
            );
            let m = self
                .fetch_manifest_bytes(&by_digest, &format!("{shown} ({platform})"))
                .await?;
            (m, chosen, Some(first_digest))
        } else {
            (bytes, first_digest, None)
        };

        let parsed = parse_manifest(&manifest, &manifest_digest)?;
        let mut downloaded = 0;
        let config_desc = (parsed.config_digest.clone(), 0u64, "config".to_string());
        let mut wanted = vec![config_desc];
        for (i, l) in parsed.layers.iter().enumerate() {
            wanted.push((l.digest.clone(), l.size, format!("layer {i}")));
        }
        let blob_ref = Reference::with_digest(
            reference.registry().to_string(),
            reference.repository().to_string(),
            manifest_digest.clone(),
        );
        for (digest, size, name) in &wanted {
            if store.has(digest) {
                continue;
            }
            self.fetch_blob(&blob_ref, digest, *size, name, shown, store, progress)
                .await?;
            downloaded += 1;
        }
        // The manifest goes in last: its presence means the whole image is.
        store.put_expected(&manifest_digest, &manifest)?;
        let image = BuiltImage::from_store(&manifest_digest, store)?;
        if image.platform.os != platform.os || image.platform.architecture != platform.architecture
        {
            return Err(RegistryError::NoPlatform {
                reference: shown.to_string(),
                platform: platform.to_string(),
                available: image.platform.to_string(),
            });
        }
        Ok(PulledImage {
            registry: reference.registry().to_string(),
            repository: reference.repository().to_string(),
            manifest_digest,
            index_digest,
            platform: image.platform,
            blobs_downloaded: downloaded,
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn fetch_blob(
        &self,
        reference: &Reference,
        digest: &str,
        size: u64,
        name: &str,
        shown: &str,
        store: &BlobStore,
        progress: &Progress,
    ) -> Result<(), RegistryError> {
        let desc = OciDescriptor {
            digest: digest.to_string(),
            size: size as i64,
            ..OciDescriptor::default()
        };
        let what = format!("{name} {digest} of {shown}");
        // A cut mid-download starts the blob over in a new temp file.
        let (w, bar) = self
            .retry(&format!("fetch {what}"), || async {
                let sized = self.client.pull_blob_stream(reference, &desc).await?;
                let bar = progress.bytes(sized.content_length.unwrap_or(size), name);
                let mut stream = sized.stream;
                let mut w = store.writer()?;
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(|e| {
                        if let Some(oci_client::errors::DigestError::VerificationError {
                            expected,
                            actual,
                        }) = e.get_ref().and_then(|x| x.downcast_ref())
                        {
                            return Attempt::Final(RegistryError::DigestMismatch {
                                what: what.clone(),
                                expected: expected.clone(),
                                actual: actual.clone(),
                            });
                        }
                        Attempt::Remote(OciDistributionError::IoError(e))
                    })?;
                    std::io::Write::write_all(&mut w, &chunk).map_err(|e| {
                        OciError::io("cannot write", w.temp_path().to_path_buf(), e)
                    })?;
                    bar.inc(chunk.len() as u64);
                }
                Ok((w, bar))
            })
            .await?;
        w.commit(Some(digest)).map_err(|e| match e {
            OciError::DigestMismatch {
                expected, actual, ..
            } => RegistryError::DigestMismatch {
                what: what.clone(),
                expected,
                actual,
            },
            other => other.into(),
        })?;
        bar.finish("fetched");
        Ok(())
    }
}

/// Push `image` to `registry/repo` (and tag it); see [`RegistryClient::push`].
pub async fn push(
    registry: &str,
    repo: &str,
    tag: Option<&str>,
    image: &BuiltImage,
    store: &BlobStore,
    progress: &Progress,
) -> Result<PushStats, RegistryError> {
    RegistryClient::new(registry)?
        .push(repo, tag, image, store, progress)
        .await
}

/// Copy one image by digest between repositories or registries (for
/// `bottle push <ref> --to <repo>`): fetch what the blob store lacks from
/// `from` (verified), push to `to`. The digest cannot change: the manifest
/// bytes are copied as they are.
pub async fn copy(
    from: (&str, &str),
    digest: &str,
    to: (&str, &str),
    tag: Option<&str>,
    store: &BlobStore,
    progress: &Progress,
) -> Result<PushStats, RegistryError> {
    let (from_registry, from_repo) = from;
    let (to_registry, to_repo) = to;
    hex_part(digest)?;
    let image = match BuiltImage::from_store(digest, store) {
        Ok(image) if image.layers.iter().all(|l| store.has(&l.digest)) => image,
        _ => {
            let pulled = RegistryClient::new(from_registry)?
                .pull_manifest_only(from_repo, digest, store, progress)
                .await?;
            BuiltImage::from_store(&pulled, store)?
        }
    };
    let target = RegistryClient::new(to_registry)?;
    let options = PushOptions {
        mount_from: if from_registry == to_registry {
            vec![from_repo.to_string()]
        } else {
            Vec::new()
        },
    };
    target
        .push_with(to_repo, tag, &image, store, progress, &options)
        .await
}

/// Is `registry/repo@digest` there? A loopback registry is asked with one
/// bare HEAD first (see [`loopback_manifest_exists`]); anything but a clear
/// answer goes through the full client, with its retries and error reports.
pub async fn manifest_exists(
    registry: &str,
    repo: &str,
    digest: &str,
) -> Result<bool, RegistryError> {
    hex_part(digest)?;
    if let Some(answer) = loopback_exists(registry, repo, "manifests", digest).await {
        return Ok(answer);
    }
    RegistryClient::new(registry)?
        .manifest_exists(repo, digest)
        .await
}

/// Is blob `digest` in `registry/repo`? Asked like [`manifest_exists`].
pub async fn blob_exists(registry: &str, repo: &str, digest: &str) -> Result<bool, RegistryError> {
    hex_part(digest)?;
    if let Some(answer) = loopback_exists(registry, repo, "blobs", digest).await {
        return Ok(answer);
    }
    RegistryClient::new(registry)?
        .blob_exists(repo, digest)
        .await
}

/// A plain-HTTP `HEAD /v2/<repo>/manifests/<digest>` for loopback
/// registries: the no-op `lock` asks only this one question, and building a
/// full registry client (which loads and parses the system's CA store) would
/// cost more than the rest of the no-op put together. `None` when the answer
/// is not a clear yes or no (not loopback, auth required, connection
/// trouble): the caller then asks through the full client, which retries
/// and reports errors properly.
async fn loopback_exists(registry: &str, repo: &str, kind: &str, digest: &str) -> Option<bool> {
    use http_body_util::Empty;
    use hyper::body::Bytes;

    if !is_loopback(registry) {
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
    let accept = MANIFEST_TYPES.join(", ");
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

/// Pull a full reference (`host[:port]/repo:tag`, `…@sha256:…`, or a short
/// Docker Hub name) for `platform` into the store.
pub async fn pull_image(
    reference: &str,
    platform: &Platform,
    store: &BlobStore,
    progress: &Progress,
) -> Result<PulledImage, RegistryError> {
    let parsed = parse_reference(reference)?;
    let client = RegistryClient::new(parsed.registry())?;
    client
        .pull_reference(&parsed, reference, platform, store, progress)
        .await
}

/// Parse an image reference; the error names it.
pub fn parse_reference(text: &str) -> Result<Reference, RegistryError> {
    text.parse()
        .map_err(|e: oci_client::ParseError| RegistryError::BadReference {
            reference: text.to_string(),
            reason: e.to_string(),
        })
}

/// A plain-HTTP loopback registry needs no TLS trust at all, but building
/// the HTTP client loads the platform's root store anyway (10-20 ms, a big
/// slice of a no-op `lock`). Trusting only a throwaway self-signed root
/// skips that; it is never used to verify anything because no TLS happens.
fn unused_trust_root() -> Vec<oci_client::client::Certificate> {
    match rcgen::generate_simple_self_signed(vec!["bottle.invalid".to_string()]) {
        Ok(ck) => vec![oci_client::client::Certificate {
            encoding: oci_client::client::CertificateEncoding::Der,
            data: ck.cert.der().to_vec(),
        }],
        // Falling back to the platform roots is only slower, never wrong.
        Err(_) => Vec::new(),
    }
}

fn is_index(v: &Value) -> bool {
    let mt = v.get("mediaType").and_then(Value::as_str).unwrap_or("");
    mt == media::OCI_INDEX || mt == media::DOCKER_MANIFEST_LIST || v.get("manifests").is_some()
}

/// The manifest digest for `platform` in an image index. An entry without a
/// variant matches any variant request only when no entry names it exactly.
fn choose_platform(
    index: &Value,
    platform: &Platform,
    shown: &str,
) -> Result<Digest, RegistryError> {
    let entries = index
        .get("manifests")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut available = Vec::new();
    let mut loose = None;
    for e in &entries {
        let p = e.get("platform");
        let s = |k: &str| p.and_then(|p| p.get(k)).and_then(Value::as_str);
        let (Some(os), Some(arch), Some(digest)) = (
            s("os"),
            s("architecture"),
            e.get("digest").and_then(Value::as_str),
        ) else {
            continue;
        };
        let variant = s("variant");
        available.push(match variant {
            Some(v) => format!("{os}/{arch}/{v}"),
            None => format!("{os}/{arch}"),
        });
        if os != platform.os || arch != platform.architecture {
            continue;
        }
        hex_part(digest)?;
        match (&platform.variant, variant) {
            (Some(want), Some(v)) if want == v => return Ok(digest.to_string()),
            (None, None) => return Ok(digest.to_string()),
            _ => {
                loose.get_or_insert_with(|| digest.to_string());
            }
        }
    }
    loose.ok_or_else(|| RegistryError::NoPlatform {
        reference: shown.to_string(),
        platform: platform.to_string(),
        available: if available.is_empty() {
            "none".into()
        } else {
            available.join(", ")
        },
    })
}

/// The read error that ended a [`file_chunks`] stream, kept for the caller
/// (the HTTP client only sees that the body failed).
#[derive(Clone, Default)]
struct ReadError(std::sync::Arc<std::sync::Mutex<Option<std::io::Error>>>);

impl ReadError {
    fn set(&self, e: std::io::Error) {
        if let Ok(mut slot) = self.0.lock() {
            slot.get_or_insert(e);
        }
    }

    fn take(&self) -> Option<std::io::Error> {
        self.0.lock().ok().and_then(|mut slot| slot.take())
    }

    fn is_set(&self) -> bool {
        self.0.lock().is_ok_and(|slot| slot.is_some())
    }
}

/// Read a blob in 1 MiB chunks as a stream, ticking the bar; a read error
/// ends the stream and is kept in `error`.
fn file_chunks(
    mut file: impl Read + Send + 'static,
    path: std::path::PathBuf,
    bar: crate::progress::Bar,
    error: ReadError,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, OciDistributionError>> + Send + 'static {
    let mut done = false;
    futures_util::stream::iter(std::iter::from_fn(move || {
        if done {
            return None;
        }
        let mut buf = vec![0u8; 1 << 20];
        match file.read(&mut buf) {
            Ok(0) => {
                done = true;
                None
            }
            Ok(n) => {
                buf.truncate(n);
                bar.inc(n as u64);
                Some(Ok(bytes::Bytes::from(buf)))
            }
            Err(e) => {
                done = true;
                let shown =
                    std::io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display()));
                error.set(e);
                Some(Err(OciDistributionError::IoError(shown)))
            }
        }
    }))
}

/// Does the registry's error body carry this OCI error `code`? oci-client
/// parses the body on some paths (`RegistryError`) and passes it as text on
/// others (`ServerError`); look in both.
fn has_error_code(e: &OciDistributionError, code: &str) -> bool {
    let body = match e {
        OciDistributionError::RegistryError { envelope, .. } => serde_json::to_value(envelope).ok(),
        OciDistributionError::ServerError { message, .. } => serde_json::from_str(message).ok(),
        _ => None,
    };
    body.and_then(|v| v.get("errors").and_then(Value::as_array).cloned())
        .into_iter()
        .flatten()
        .any(|x| x.get("code").and_then(Value::as_str) == Some(code))
}

/// Worth another try: the registry (or something in front of it) failed
/// this once (5xx, 408, 429; a connection reset, cut or timed out after it
/// was made). Not a refused connection, and not a 4xx that would only be
/// answered the same way again.
fn is_transient(e: &OciDistributionError) -> bool {
    let status = |code: u16| matches!(code, 408 | 429 | 500 | 502 | 503 | 504);
    match e {
        OciDistributionError::ServerError { code, .. } => status(*code),
        OciDistributionError::RequestError(r) => match r.status() {
            Some(s) => status(s.as_u16()),
            None => !r.is_connect() && !r.is_builder() && !r.is_redirect() || r.is_timeout(),
        },
        OciDistributionError::IoError(io) => {
            use std::io::ErrorKind::*;
            matches!(
                io.kind(),
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof | TimedOut
            ) || io
                .get_ref()
                .and_then(|x| x.downcast_ref::<reqwest::Error>())
                .is_some_and(|r| r.status().is_none() && !r.is_connect())
        }
        _ => false,
    }
}

fn is_unreachable(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::RequestError(r) => r.is_connect() || r.is_timeout(),
        _ => false,
    }
}

fn is_not_found(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        OciDistributionError::ServerError { code: 404, .. } => true,
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|x| {
            matches!(
                x.code,
                OciErrorCode::ManifestUnknown
                    | OciErrorCode::NameUnknown
                    | OciErrorCode::BlobUnknown
            )
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_detection() {
        for r in [
            "localhost:5000",
            "LOCALHOST",
            "127.0.0.1:5001",
            "127.1.2.3",
            "[::1]:5000",
            "::1",
        ] {
            assert!(is_loopback(r), "{r}");
        }
        for r in [
            "registry.example.com:5000",
            "10.0.0.1:5000",
            "localhost.example.com",
            "[::2]:5000",
        ] {
            assert!(!is_loopback(r), "{r}");
        }
    }

    #[test]
    fn only_transient_failures_are_retried() {
        let server = |code| OciDistributionError::ServerError {
            code,
            url: "http://127.0.0.1:5000/v2/".into(),
            message: String::new(),
        };
        for code in [408, 429, 500, 502, 503, 504] {
            assert!(is_transient(&server(code)), "{code}");
        }
        for code in [400, 401, 403, 404, 405, 501] {
            assert!(!is_transient(&server(code)), "{code}");
        }
        let io = |kind| OciDistributionError::IoError(std::io::Error::from(kind));
        assert!(is_transient(&io(std::io::ErrorKind::ConnectionReset)));
        assert!(is_transient(&io(std::io::ErrorKind::UnexpectedEof)));
        assert!(!is_transient(&io(std::io::ErrorKind::PermissionDenied)));
        assert!(!is_transient(&OciDistributionError::DigestError(
            oci_client::errors::DigestError::VerificationError {
                expected: "a".into(),
                actual: "b".into(),
            }
        )));
    }

    #[test]
    fn bad_registries_are_bad_input() {
        for r in ["", "http://localhost:5000", "localhost:5000/x", "a b"] {
            let e = RegistryClient::new(r).err().unwrap();
            assert_eq!(e.exit_kind(), ExitKind::BadInput, "{r}: {e}");
        }
    }

    #[test]
    fn index_platform_choice() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let index = serde_json::json!({"manifests": [
            {"digest": d('a'), "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"digest": d('b'), "platform": {"os": "linux", "architecture": "amd64"}},
        ]});
        let amd = Platform::default();
        assert_eq!(choose_platform(&index, &amd, "x").unwrap(), d('b'));
        let arm = Platform::parse("linux/arm64").unwrap();
        assert_eq!(choose_platform(&index, &arm, "x").unwrap(), d('a'));
        let e = choose_platform(&index, &Platform::parse("linux/s390x").unwrap(), "x").unwrap_err();
        assert!(e.to_string().contains("linux/arm64/v8, linux/amd64"), "{e}");
        assert_eq!(e.exit_kind(), ExitKind::BadInput);
    }
}
