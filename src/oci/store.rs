//! The local blob store: an OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/<hex>`) under `$BOTTLE_CACHE_DIR/oci`, or the user's cache
//! directory (`~/.cache/bottle/oci` on Linux), shared by every agent.
//!
//! Invariant: a file under `blobs/sha256/<hex>` always hashes to `<hex>`.
//! Every blob is written to a temp file in the same directory, fsynced,
//! hashed while written, compared with the expected digest, and only then
//! renamed into place; a killed process leaves at most a `.tmp-*` file, never
//! a corrupt blob under a digest name. A blob already present is never
//! rewritten.
//!
//! Beside the layout, `cache/layers/<key>.json` maps a layer spec's content
//! hash to the layer it produced, so an unchanged layer is not even
//! recompressed.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::OciError;
use super::digest::{Sha256Writer, hex_part};
use super::spec::Digest;

/// Handle on one OCI image layout directory.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

/// What a layer spec produced, remembered by the spec's content hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedLayer {
    pub digest: Digest,
    pub diff_id: Digest,
    pub size: u64,
}

/// bottle's cache root, shared by the blob store and the fetch cache:
/// `$BOTTLE_CACHE_DIR`, else `<XDG cache>/bottle`, else `./.bottle-cache`.
pub fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("BOTTLE_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    match dirs::cache_dir() {
        Some(dir) => dir.join("bottle"),
        None => PathBuf::from(".bottle-cache"),
    }
}

/// Where the store lives when nothing else is said: `oci/` under
/// [`cache_root`].
pub fn default_root() -> PathBuf {
    cache_root().join("oci")
}

impl BlobStore {
    /// Open (creating if needed) the layout at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, OciError> {
        let root = root.into();
        let blobs = root.join("blobs").join("sha256");
        fs::create_dir_all(&blobs).map_err(|e| OciError::io("cannot create", &blobs, e))?;
        let cache = root.join("cache").join("layers");
        fs::create_dir_all(&cache).map_err(|e| OciError::io("cannot create", &cache, e))?;
        let store = BlobStore { root };
        store.write_if_missing("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        store.write_if_missing("index.json", br#"{"manifests":[],"schemaVersion":2}"#)?;
        Ok(store)
    }

    /// Open the store at [`default_root`].
    pub fn open_default() -> Result<Self, OciError> {
        Self::open(default_root())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn write_if_missing(&self, name: &str, bytes: &[u8]) -> Result<(), OciError> {
        let path = self.root.join(name);
        if path.exists() {
            return Ok(());
        }
        write_atomic(&path, bytes)
    }

    fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    /// Path of a blob (whether or not it exists).
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, OciError> {
        Ok(self.blobs_dir().join(hex_part(digest)?))
    }

    pub fn has(&self, digest: &str) -> bool {
        self.blob_path(digest).map(|p| p.is_file()).unwrap_or(false)
    }

    fn missing(&self, digest: &str, what: &str) -> OciError {
        OciError::MissingBlob {
            digest: digest.to_string(),
            what: what.to_string(),
            store: self.root.clone(),
        }
    }

    /// Size in bytes of a stored blob.
    pub fn size(&self, digest: &str) -> Result<u64, OciError> {
        let path = self.blob_path(digest)?;
        match fs::metadata(&path) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(self.missing(digest, "blob")),
            Err(e) => Err(OciError::io("cannot stat", path, e)),
        }
    }

    /// Open a stored blob for reading.
    pub fn open_blob(&self, digest: &str, what: &str) -> Result<File, OciError> {
        let path = self.blob_path(digest)?;
        match File::open(&path) {
            Ok(f) => Ok(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(self.missing(digest, what)),
            Err(e) => Err(OciError::io("cannot open", path, e)),
        }
    }

    /// Read a whole blob (configs, manifests, or a layer to upload).
    pub fn read(&self, digest: &str, what: &str) -> Result<Vec<u8>, OciError> {
        let path = self.blob_path(digest)?;
        let mut bytes = Vec::new();
        self.open_blob(digest, what)?
            .read_to_end(&mut bytes)
            .map_err(|e| OciError::io("cannot read", &path, e))?;
        Ok(bytes)
    }

    /// Re-hash a stored blob and compare it with its name.
    pub fn verify(&self, digest: &str) -> Result<(), OciError> {
        let path = self.blob_path(digest)?;
        let mut file = self.open_blob(digest, "blob")?;
        let mut w = Sha256Writer::new(io::sink());
        io::copy(&mut file, &mut w).map_err(|e| OciError::io("cannot read", &path, e))?;
        let (_, actual, _) = w.finish();
        if actual != digest {
            return Err(OciError::DigestMismatch {
                what: format!("stored blob {}", path.display()),
                expected: digest.to_string(),
                actual,
            });
        }
        Ok(())
    }

    /// Store bytes under their digest (no-op if present).
    pub fn put(&self, bytes: &[u8]) -> Result<Digest, OciError> {
        let mut w = self.writer()?;
        w.write_all(bytes)
            .map_err(|e| OciError::io("cannot write", w.temp_path(), e))?;
        Ok(w.commit(None)?.0)
    }

    /// Store bytes that must hash to `expected` (e.g. fetched from a registry).
    pub fn put_expected(&self, expected: &str, bytes: &[u8]) -> Result<(), OciError> {
        hex_part(expected)?;
        let mut w = self.writer()?;
        w.write_all(bytes)
            .map_err(|e| OciError::io("cannot write", w.temp_path(), e))?;
        w.commit(Some(expected))?;
        Ok(())
    }

    /// A streaming writer for a new blob; nothing is visible until
    /// [`BlobWriter::commit`] succeeds.
    pub fn writer(&self) -> Result<BlobWriter, OciError> {
        let dir = self.blobs_dir();
        let temp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(&dir)
            .map_err(|e| OciError::io("cannot create a temp file in", &dir, e))?;
        let path = temp.path().to_path_buf();
        Ok(BlobWriter {
            dir,
            path,
            inner: Sha256Writer::new(BufWriter::with_capacity(256 * 1024, temp)),
        })
    }

    /// Remove `.tmp-*` files older than `min_age` that killed writers left
    /// behind (never a blob: those have digest names). Returns how many
    /// went. For `gc`; a live writer's temp file is younger than any sane
    /// `min_age`.
    pub fn remove_stale_temps(&self, min_age: std::time::Duration) -> Result<usize, OciError> {
        let mut removed = 0;
        for dir in [
            self.blobs_dir(),
            self.root.join("cache").join("layers"),
            self.root.clone(),
        ] {
            let entries = fs::read_dir(&dir).map_err(|e| OciError::io("cannot list", &dir, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| OciError::io("cannot list", &dir, e))?;
                if !entry.file_name().to_string_lossy().starts_with(".tmp-") {
                    continue;
                }
                let old_enough = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age >= min_age);
                if old_enough && fs::remove_file(entry.path()).is_ok() {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    fn layer_cache_path(&self, key: &str) -> PathBuf {
        self.root
            .join("cache")
            .join("layers")
            .join(format!("{key}.json"))
    }

    /// The layer a spec with this content hash produced before, if its blob
    /// is still in the store.
    pub fn cached_layer(&self, key: &str) -> Option<CachedLayer> {
        let bytes = fs::read(self.layer_cache_path(key)).ok()?;
        let cached: CachedLayer = serde_json::from_slice(&bytes).ok()?;
        if hex_part(&cached.digest).is_err() || hex_part(&cached.diff_id).is_err() {
            return None;
        }
        match self.size(&cached.digest) {
            Ok(size) if size == cached.size => Some(cached),
            _ => None,
        }
    }

    pub fn remember_layer(&self, key: &str, layer: &CachedLayer) -> Result<(), OciError> {
        let bytes = serde_json::to_vec(layer).map_err(|e| OciError::Json {
            what: "layer cache entry".into(),
            source: e,
        })?;
        write_atomic(&self.layer_cache_path(key), &bytes)
    }
}

/// A blob being written: a temp file beside the final place, hashed as it
/// is written.
pub struct BlobWriter {
    dir: PathBuf,
    path: PathBuf,
    inner: Sha256Writer<BufWriter<tempfile::NamedTempFile>>,
}

impl BlobWriter {
    pub fn temp_path(&self) -> &Path {
        &self.path
    }

    /// Flush, fsync, check the digest against `expected` (if any) and rename
    /// into place. Returns the digest and size. On a mismatch the temp file is
    /// removed and nothing becomes visible.
    pub fn commit(self, expected: Option<&str>) -> Result<(Digest, u64), OciError> {
        let BlobWriter { dir, path, inner } = self;
        let (buf, digest, len) = inner.finish();
        let temp = buf
            .into_inner()
            .map_err(|e| OciError::io("cannot write", &path, e.into_error()))?;
        if let Some(expected) = expected
            && expected != digest
        {
            return Err(OciError::DigestMismatch {
                what: format!("blob written to {}", dir.display()),
                expected: expected.to_string(),
                actual: digest,
            });
        }
        let target = dir.join(hex_part(&digest)?);
        if target.is_file() {
            // Present already: identical by construction; keep the old file.
            return Ok((digest, len));
        }
        temp.as_file()
            .sync_all()
            .map_err(|e| OciError::io("cannot fsync", &path, e))?;
        temp.persist(&target)
            .map_err(|e| OciError::io("cannot rename into", &target, e.error))?;
        crate::fsutil::sync_dir(&dir);
        Ok((digest, len))
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Write a small file atomically (see [`crate::fsutil::write_atomic`]);
/// private like the blobs beside it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), OciError> {
    crate::fsutil::write_atomic(path, bytes, 0o600)
        .map_err(|e| OciError::io(e.action, e.path, e.source))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::digest::sha256_digest;

    #[test]
    fn put_then_read_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let d = store.put(b"abc").unwrap();
        assert_eq!(d, sha256_digest(b"abc"));
        assert!(store.has(&d));
        assert_eq!(store.read(&d, "t").unwrap(), b"abc");
        store.verify(&d).unwrap();
        assert!(dir.path().join("oci-layout").is_file());
        assert!(dir.path().join("index.json").is_file());
    }

    #[test]
    fn mismatched_bytes_never_become_visible() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let claimed = sha256_digest(b"the real content");
        let err = store.put_expected(&claimed, b"something else").unwrap_err();
        assert!(matches!(err, OciError::DigestMismatch { .. }), "{err}");
        assert!(!store.has(&claimed));
        assert!(!store.has(&sha256_digest(b"something else")));
        // No temp file left either.
        let left: Vec<_> = fs::read_dir(store.blobs_dir()).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn an_uncommitted_writer_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        {
            let mut w = store.writer().unwrap();
            w.write_all(b"half a blob").unwrap();
            // dropped without commit, as when a build fails midway
        }
        let left: Vec<_> = fs::read_dir(store.blobs_dir()).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn verify_detects_a_corrupted_blob() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let d = store.put(b"abc").unwrap();
        fs::write(store.blob_path(&d).unwrap(), b"abd").unwrap();
        assert!(matches!(
            store.verify(&d).unwrap_err(),
            OciError::DigestMismatch { .. }
        ));
    }

    #[test]
    fn layer_cache_ignores_entries_whose_blob_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let d = store.put(b"layer").unwrap();
        let entry = CachedLayer {
            digest: d.clone(),
            diff_id: sha256_digest(b"x"),
            size: 5,
        };
        store.remember_layer("k", &entry).unwrap();
        assert_eq!(store.cached_layer("k"), Some(entry));
        fs::remove_file(store.blob_path(&d).unwrap()).unwrap();
        assert_eq!(store.cached_layer("k"), None);
    }
}
