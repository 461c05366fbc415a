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
//! Every read is verified: [`BlobStore::open_blob`] hands out a
//! [`BlobReader`] that hashes as it reads and, at the blob's last byte,
//! compares with the name; a blob that does not match (a flipped bit on
//! disk, a hand edit) is removed, the read fails with
//! [`OciError::CorruptBlob`], and the removal is recorded for the CLI to
//! report ([`take_removed`]). A layer found through the layer cache is
//! re-hashed before it is trusted, so a rebuild rebuilds a corrupt layer.
//!
//! Beside the layout, `cache/layers/<key>.json` maps a layer spec's content
//! hash to the layer it produced, so an unchanged layer is not even
//! recompressed.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use sha2::{Digest as _, Sha256};

use super::OciError;
use super::digest::{Sha256Writer, hex_part};
use super::spec::Digest;

/// Corrupt blobs removed by this process, in order, for the CLI to report
/// once at the end (a library does not print; the removal happens deep in a
/// read that may belong to any command).
static REMOVED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// The corrupt blobs this process removed from a store (one line each), and
/// forget them.
pub(crate) fn take_removed() -> Vec<String> {
    REMOVED
        .lock()
        .map(|mut v| std::mem::take(&mut *v))
        .unwrap_or_default()
}

/// How the temp files of the store's writers start (blobs being written,
/// and [`write_atomic`]'s).
pub const TEMP_PREFIX: &str = ".tmp-";

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

    /// Open a stored blob for reading, verified as it is read (see
    /// [`BlobReader`]); `what` names it in errors (`layer`, `config`).
    pub fn open_blob(&self, digest: &str, what: &str) -> Result<BlobReader, OciError> {
        let path = self.blob_path(digest)?;
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(self.missing(digest, what)),
            Err(e) => return Err(OciError::io("cannot open", path, e)),
        };
        let len = file
            .metadata()
            .map_err(|e| OciError::io("cannot stat", &path, e))?
            .len();
        Ok(BlobReader {
            file,
            hasher: Sha256::new(),
            left: len,
            len,
            digest: digest.to_string(),
            what: what.to_string(),
            path,
            store: self.root.clone(),
        })
    }

    /// Read a whole blob (configs, manifests), verified.
    pub fn read(&self, digest: &str, what: &str) -> Result<Vec<u8>, OciError> {
        let mut r = self.open_blob(digest, what)?;
        let mut bytes = Vec::with_capacity(usize::try_from(r.len()).unwrap_or(0));
        let path = r.path.clone();
        r.read_to_end(&mut bytes)
            .map_err(|e| OciError::io("cannot read", &path, e))?;
        Ok(bytes)
    }

    /// Re-hash a stored blob and compare it with its name; a corrupt blob is
    /// removed ([`OciError::CorruptBlob`]).
    pub fn verify(&self, digest: &str) -> Result<(), OciError> {
        self.open_blob(digest, "blob")?.finish()
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
        // The writer's pid is in the name, so `gc` removes it only once
        // this process is gone (a killed `lock` leaves it behind).
        let prefix = crate::runner::owner::stamp(TEMP_PREFIX);
        let temp = tempfile::Builder::new()
            .prefix(&prefix)
            .tempfile_in(&dir)
            .map_err(|e| OciError::io("cannot create a temp file in", &dir, e))?;
        let path = temp.path().to_path_buf();
        Ok(BlobWriter {
            dir,
            path,
            inner: Sha256Writer::new(BufWriter::with_capacity(256 * 1024, temp)),
        })
    }

    /// The folders where writers of this store keep their temp files
    /// (named [`TEMP_PREFIX`]`…`), for `gc`.
    pub fn temp_dirs(&self) -> [PathBuf; 3] {
        [
            self.blobs_dir(),
            self.root.join("cache").join("layers"),
            self.root.clone(),
        ]
    }

    fn layer_cache_path(&self, key: &str) -> PathBuf {
        self.root
            .join("cache")
            .join("layers")
            .join(format!("{key}.json"))
    }

    /// The layer a spec with this content hash produced before, if its blob
    /// is still in the store and still hashes to its name (a corrupt one is
    /// removed, so the caller builds it again). Hashing costs far less than
    /// the compression it saves.
    pub fn cached_layer(&self, key: &str) -> Option<CachedLayer> {
        let bytes = fs::read(self.layer_cache_path(key)).ok()?;
        let cached: CachedLayer = serde_json::from_slice(&bytes).ok()?;
        if hex_part(&cached.digest).is_err() || hex_part(&cached.diff_id).is_err() {
            return None;
        }
        match self.size(&cached.digest) {
            Ok(size) if size == cached.size => {}
            _ => return None,
        }
        self.open_blob(&cached.digest, "cached layer")
            .and_then(BlobReader::finish)
            .ok()
            .map(|()| cached)
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
        if fs::metadata(&target).is_ok_and(|m| m.is_file() && m.len() == len) {
            // Present already: identical by construction (a same-size
            // corruption is caught by the next verified read); keep it. A
            // wrong size is corrupt for sure: replace it below.
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

/// A stored blob being read: hashed as it goes, and compared with its name
/// when its last byte is read, before that byte is handed out. On a
/// mismatch the blob is removed and the read fails with an `InvalidData`
/// error carrying [`OciError::CorruptBlob`] ([`OciError::io`] unwraps it),
/// so no consumer ever sees the whole of a corrupt blob. A consumer that
/// may stop early (a tar reader) calls [`BlobReader::finish`].
pub struct BlobReader {
    file: File,
    hasher: Sha256,
    /// Bytes not read yet (the size when opened; blobs never change size).
    left: u64,
    len: u64,
    digest: String,
    what: String,
    path: PathBuf,
    store: PathBuf,
}

impl BlobReader {
    /// The blob's size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Read what is left and verify the whole blob.
    pub fn finish(mut self) -> Result<(), OciError> {
        let path = self.path.clone();
        io::copy(&mut self, &mut io::sink()).map_err(|e| OciError::io("cannot read", &path, e))?;
        if self.len == 0 {
            // `read` never saw a last byte: check the empty blob here.
            return self
                .check()
                .map_err(|e| OciError::io("cannot read", &path, e));
        }
        Ok(())
    }

    fn check(&mut self) -> io::Result<()> {
        let actual = format!(
            "sha256:{}",
            hex::encode(std::mem::take(&mut self.hasher).finalize())
        );
        if actual == self.digest {
            return Ok(());
        }
        // Remove it so the next build or pull writes it anew; keep going if
        // that fails too (the error below still names it).
        let _ = fs::remove_file(&self.path);
        let err = OciError::CorruptBlob {
            digest: self.digest.clone(),
            what: self.what.clone(),
            actual,
            store: self.store.clone(),
        };
        if let Ok(mut v) = REMOVED.lock() {
            v.push(format!(
                "removed corrupt blob {} ({}) from the blob store at {}",
                self.digest,
                self.what,
                self.store.display()
            ));
        }
        Err(io::Error::new(io::ErrorKind::InvalidData, err))
    }
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.file.read(&mut buf[..want])?;
        if n == 0 {
            // Shorter than when it was opened: truncated under us.
            self.left = 0;
            self.check()?;
            return Ok(0);
        }
        self.hasher.update(&buf[..n]);
        self.left -= n as u64;
        if self.left == 0 {
            self.check()?;
        }
        Ok(n)
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
        let e = store.verify(&d).unwrap_err();
        assert!(matches!(e, OciError::CorruptBlob { .. }), "{e}");
        assert!(!store.has(&d), "a corrupt blob stays in the store");
    }

    #[test]
    fn every_read_is_verified_and_a_corrupt_blob_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let d = store.put(b"hello world").unwrap();
        fs::write(store.blob_path(&d).unwrap(), b"hello_world").unwrap();
        let e = store.read(&d, "config").unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "blob {d} (config) in the blob store at {} is corrupt: its bytes hash to {}; \
                 it was removed from the store, so running the command again builds or \
                 fetches it anew",
                dir.path().display(),
                sha256_digest(b"hello_world")
            )
        );
        assert!(!store.has(&d));
        // Other tests in this process may have recorded removals too.
        assert!(take_removed().iter().any(|l| l.contains(&d)));

        // A streaming reader never hands out the last byte of a corrupt blob.
        let d = store.put(b"0123456789").unwrap();
        fs::write(store.blob_path(&d).unwrap(), b"0123456780").unwrap();
        let mut r = store.open_blob(&d, "layer").unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4];
        let err = loop {
            match r.read(&mut buf) {
                Ok(0) => panic!("read the whole corrupt blob: {got:?}"),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => break e,
            }
        };
        assert_eq!(got, b"01234567");
        assert!(matches!(
            OciError::io("cannot read", "x", err),
            OciError::CorruptBlob { .. }
        ));
        assert!(!store.has(&d));
    }

    #[test]
    fn a_corrupt_cached_layer_is_not_used_and_a_wrong_size_blob_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let d = store.put(b"layer").unwrap();
        let entry = CachedLayer {
            digest: d.clone(),
            diff_id: sha256_digest(b"x"),
            size: 5,
        };
        store.remember_layer("k", &entry).unwrap();
        fs::write(store.blob_path(&d).unwrap(), b"lazer").unwrap();
        assert_eq!(store.cached_layer("k"), None);
        assert!(!store.has(&d));

        // A truncated blob under the right name is overwritten by a put.
        fs::write(store.blob_path(&d).unwrap(), b"lay").unwrap();
        store.put(b"layer").unwrap();
        assert_eq!(fs::read(store.blob_path(&d).unwrap()).unwrap(), b"layer");
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
